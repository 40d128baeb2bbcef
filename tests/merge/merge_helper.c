/*
 * merge_helper.c — fixtures and checks for the `lora merge` tests (test_merge_cli.sh,
 * run_merge_oracle.sh):
 *
 *   merge_helper base DIR N_EMBD                 a tiny random model with that width
 *   merge_helper adapter BASE OUT KIND SEED      an adapter with random values, written by
 *                                                lora_adapter_save; KIND: qv, all, rslora, adalora
 *   merge_helper logits MODEL OUT [DIR[:S] ...]  tokens and logits of MODEL with the adapters
 *                                                (unmerged) as safetensors
 *   merge_helper compare MODEL EXPECTED TOL      MODEL's logits on EXPECTED's tokens; exit 1
 *                                                when max-abs > TOL
 *   merge_helper dtype MODEL                     the dtypes of MODEL's tensors, sorted, unique
 */
#include "peft/adalora.h"
#include "tiny_model.h"

#include <math.h>

enum { B = 2, T = 12 };

static int fail(const char *what, const lora_error *err) {
    fprintf(stderr, "merge_helper: %s: %s\n", what, err ? err->msg : "");
    return 1;
}

static int make_adapter(const char *base, const char *out, const char *kind, uint64_t seed) {
    lora_model         *m = NULL;
    lora_error          err;
    lora_adapter_params p = lora_adapter_params_default();
    p.dropout             = 0.0f;
    if (!strcmp(kind, "qv")) {
        p.r = 4, p.alpha = 8.0f, p.targets = LORA_TARGET_Q | LORA_TARGET_V;
    } else if (!strcmp(kind, "all")) {
        p.r = 2, p.alpha = 4.0f, p.targets = LORA_TARGET_ALL_LINEAR;
    } else if (!strcmp(kind, "rslora")) {
        p.r = 4, p.alpha = 2.0f, p.targets = LORA_TARGET_ALL_LINEAR, p.use_rslora = 1;
    } else if (!strcmp(kind, "adalora")) {
        p.method = LORA_METHOD_ADALORA, p.r = 4, p.alpha = 6.0f;
        p.targets            = LORA_TARGET_Q | LORA_TARGET_V | LORA_TARGET_MLP_FC;
        p.adalora.target_r   = 2;
        p.adalora.total_step = 10;
    } else {
        fprintf(stderr, "merge_helper: unknown adapter kind '%s'\n", kind);
        return 2;
    }
    if (lora_model_load(base, &m, &err) || lora_model_attach(m, &p, &err)) {
        lora_model_free(m);
        return fail(base, &err);
    }
    tiny_fill_trainable(m, seed, 0.1f);
    if (p.method == LORA_METHOD_ADALORA) { /* prune every third triplet, frozen */
        adalora_status as;
        uint8_t        mask[4096];
        adalora_get_status(m, &as);
        for (int32_t i = 0; i < as.init_bgt && i < 4096; i++) mask[i] = i % 3 != 1;
        if (adalora_set_masks(m, mask, as.init_bgt, &err)) return fail("masks", &err);
    }
    lora_status st = lora_adapter_save(m, out, "tiny", &err);
    lora_model_free(m);
    return st ? fail(out, &err) : 0;
}

static void batch(int32_t *tok, int32_t V) {
    for (int i = 0; i < B * T; i++) tok[i] = (int32_t)((i * 7 + 3) % V);
}

static int logits(const char *model, const char *out, int n_ad, char **ads) {
    lora_model *m = NULL;
    lora_error  err;
    if (lora_model_load(model, &m, &err)) return fail(model, &err);
    for (int i = 0; i < n_ad; i++) {
        char  *dir   = strdup(ads[i]), *colon = strrchr(dir, ':');
        float  scale = 1.0f;
        char   name[16];
        if (colon) {
            *colon = '\0';
            scale  = strtof(colon + 1, NULL);
        }
        snprintf(name, sizeof name, "a%d", i);
        lora_status st = lora_adapter_add(m, dir, name, scale, &err);
        free(dir);
        if (st) return fail(ads[i], &err);
    }
    int32_t V = lora_model_config(m)->vocab_size, tok[B * T];
    batch(tok, V);
    if (lora_model_forward(m, tok, NULL, B, T, NULL, &err)) return fail("forward", &err);
    st_writer *w    = st_writer_new();
    int64_t    st_[2] = {B, T}, sl[3] = {B, T, V};
    lora_status st  = st_writer_add(w, "tokens", ST_I32, 2, st_, tok, &err);
    if (!st) st = st_writer_add(w, "logits", ST_F32, 3, sl, lora_model_logits(m), &err);
    if (!st) st = st_writer_write(w, out, &err);
    st_writer_free(w);
    lora_model_free(m);
    return st ? fail(out, &err) : 0;
}

static int compare(const char *model, const char *expected, double tol) {
    lora_model *m = NULL;
    lora_error  err;
    st_file     f;
    if (st_open(&f, expected, &err)) return fail(expected, &err);
    if (lora_model_load(model, &m, &err)) return fail(model, &err);
    const st_tensor *tt = st_find(&f, "tokens"), *tl = st_find(&f, "logits");
    int32_t          V  = lora_model_config(m)->vocab_size;
    if (!tt || !tl || tt->numel != B * T || tl->numel != (int64_t)B * T * V)
        return fail("expected file: wrong tensors", NULL);
    int32_t tok[B * T];
    float  *want = malloc((size_t)tl->numel * sizeof(float));
    memcpy(tok, tt->data, sizeof tok);
    st_to_f32(want, tl, expected, NULL);
    if (lora_model_forward(m, tok, NULL, B, T, NULL, &err)) return fail("forward", &err);
    const float *got = lora_model_logits(m);
    double       d   = 0;
    for (int64_t i = 0; i < tl->numel; i++) {
        double x = fabs((double)got[i] - want[i]);
        if (!(x <= d)) d = x;
    }
    printf("%s vs %s: logits max-abs %.3e\n", model, expected, d);
    free(want);
    st_close(&f);
    lora_model_free(m);
    return d <= tol ? 0 : 1;
}

static int dtypes(const char *model) {
    lora_model *m = NULL;
    lora_error  err;
    if (lora_model_load(model, &m, &err)) return fail(model, &err);
    const char *seen[8];
    int         n = 0;
    for (int32_t i = 0; i < lora_model_n_file_tensors(m); i++) {
        lora_file_tensor t;
        lora_model_file_tensor(m, i, &t);
        int k = 0;
        while (k < n && strcmp(seen[k], t.dtype)) k++;
        if (k == n && n < 8) seen[n++] = t.dtype;
    }
    for (int k = 0; k < n; k++) printf("%s%s", k ? " " : "", seen[k]);
    printf("\n");
    lora_model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 4 && !strcmp(argv[1], "base")) {
        lora_config c = tiny_config();
        c.n_embd      = atoi(argv[3]);
        c.n_inner     = 4 * c.n_embd;
        return tiny_write(argv[2], &c, NULL, 9) ? 1 : 0;
    }
    if (argc == 6 && !strcmp(argv[1], "adapter"))
        return make_adapter(argv[2], argv[3], argv[4], strtoull(argv[5], NULL, 10));
    if (argc >= 4 && !strcmp(argv[1], "logits"))
        return logits(argv[2], argv[3], argc - 4, argv + 4);
    if (argc == 5 && !strcmp(argv[1], "compare")) return compare(argv[2], argv[3], atof(argv[4]));
    if (argc == 3 && !strcmp(argv[1], "dtype")) return dtypes(argv[2]);
    fprintf(stderr, "usage: see the comment at the top of merge_helper.c\n");
    return 2;
}
