/*
 * test_adalora_export.c — AdaLoRA's ways out as plain LoRA, and its memory estimate:
 *  - lora_adapter_save_lora folds a pruned AdaLoRA adapter (q/v slices of unequal kept rank in
 *    one layer, sites that keep nothing) into a PEFT LoRA directory with per-module ranks in
 *    rank_pattern; lora_adapter_load reads it as LoRA with those ranks and the same logits;
 *  - lora_adapter_save_gguf writes the same ΔW for llama.cpp: B·A·alpha / r read back from the
 *    GGUF equals P·diag(Λ ⊙ mask)·Q·scale at every adapted weight;
 *  - for LoRA, lora_adapter_save_lora writes exactly what lora_adapter_save writes; without an
 *    adapter it is refused;
 *  - lora_estimate_memory counts AdaLoRA's Λ, its allocator state and its larger scratch.
 */
#include "io/fileutil.h"
#include "io/gguf.h"
#include "model/gpt2.h"
#include "peft/adalora.h"
#include "peft/peft.h"
#include "test_helper.h"
#include "tiny_model.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>

enum { B = 2, T = 12, R = 4 };

static char root[2048];

static lora_model *load_tiny(const char *name) {
    lora_config c = tiny_config();
    char        dir[3072];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    tiny_write(dir, &c, NULL, 5);
    lora_model *m = NULL;
    lora_error  err;
    test_condf(lora_model_load(dir, &m, &err) == LORA_OK, "load %s: %s", dir, err.msg);
    return m;
}

static void make_tokens(int32_t *tok, int V) {
    for (int i = 0; i < B * T; i++)
        tok[i] = (int32_t)((i * 7 + 3) % V);
}

/* Every trainable tensor filled with a deterministic pattern in (-amp, amp). */
static void fill_all(lora_model *m, uint64_t seed, float amp) {
    for (int32_t i = 0; i < lora_model_n_trainable(m); i++) {
        lora_tensor_info t;
        lora_model_trainable(m, i, &t);
        uint64_t key = rng_key(seed, (uint64_t)i, 11);
        for (int64_t j = 0; j < t.numel; j++)
            t.data[j] = amp * (2.0f * rng_uniform(key, (uint64_t)j) - 1.0f);
    }
}

static cJSON *read_json(const char *dir, const char *file) {
    char   path[4200], *text = NULL;
    size_t len;
    snprintf(path, sizeof path, "%s/%s", dir, file);
    if (lora_read_file(path, &text, &len, NULL) != LORA_OK) return NULL;
    cJSON *c = cJSON_ParseWithLength(text, len);
    free(text);
    return c;
}

/* Sites per layer in allocator order: q, v, c_fc, mlp.c_proj. Kept triplets per site:
 * layer 0: q 3, v 1, c_fc 4, mlp.c_proj 0; layer 1: q 0, v 2, c_fc 1, mlp.c_proj 2. */
static const uint8_t masks[2][4][R] = {
    {{1, 0, 1, 1}, {0, 1, 0, 0}, {1, 1, 1, 1}, {0, 0, 0, 0}},
    {{0, 0, 0, 0}, {1, 1, 0, 0}, {0, 0, 1, 0}, {1, 0, 0, 1}},
};

static lora_model *pruned_adalora(const char *name) {
    lora_model *m = load_tiny(name);
    lora_error  err;
    if (!m) return NULL;
    lora_adapter_params p = lora_adapter_params_default();
    p.method              = LORA_METHOD_ADALORA;
    p.r                   = R;
    p.alpha               = 8.0f;
    p.dropout             = 0.0f;
    p.targets = LORA_TARGET_Q | LORA_TARGET_V | LORA_TARGET_MLP_FC | LORA_TARGET_MLP_PROJ;
    p.adalora.target_r   = 2;
    p.adalora.total_step = 10;
    test_condf(lora_model_attach(m, &p, &err) == LORA_OK, "attach: %s", err.msg);
    fill_all(m, 3, 0.3f);
    test_condf(adalora_set_masks(m, &masks[0][0][0], 2 * 4 * R, &err) == LORA_OK, "masks: %s",
               err.msg);
    return m;
}

static void logits_of(lora_model *m, const int32_t *tok, float *out) {
    lora_error err;
    float      loss;
    size_t     n = (size_t)B * T * (size_t)m->cfg.vocab_size;
    lora_model_set_training(m, 0);
    test_condf(lora_model_forward(m, tok, NULL, B, T, &loss, &err) == LORA_OK, "%s", err.msg);
    memcpy(out, lora_model_logits(m), n * sizeof(float));
}

/* ---- AdaLoRA -> PEFT LoRA directory ---- */

static void test_save_lora(void) {
    lora_model *a = pruned_adalora("fold_a"), *b = load_tiny("fold_b");
    lora_error  err;
    char        dir[3072];
    int32_t     tok[B * T];
    if (!a || !b) goto done;
    int    V = a->cfg.vocab_size, C = a->cfg.n_embd;
    size_t n = (size_t)B * T * (size_t)V;
    float *la = malloc(n * sizeof(float)), *lb = malloc(n * sizeof(float));
    make_tokens(tok, V);
    logits_of(a, tok, la);
    snprintf(dir, sizeof dir, "%s/folded", root);
    test_condf(lora_adapter_save_lora(a, dir, "tiny", &err) == LORA_OK, "save_lora: %s", err.msg);

    /* the config: plain LoRA, per-module ranks in rank_pattern, alphas keeping the scale */
    cJSON *c = read_json(dir, "adapter_config.json");
    test_cond("adapter_config.json", c != NULL);
    if (c) {
        const cJSON *t  = cJSON_GetObjectItemCaseSensitive(c, "peft_type");
        const cJSON *r  = cJSON_GetObjectItemCaseSensitive(c, "r");
        const cJSON *al = cJSON_GetObjectItemCaseSensitive(c, "lora_alpha");
        const cJSON *rp = cJSON_GetObjectItemCaseSensitive(c, "rank_pattern");
        const cJSON *ap = cJSON_GetObjectItemCaseSensitive(c, "alpha_pattern");
        test_cond("peft_type LORA", cJSON_IsString(t) && !strcmp(t->valuestring, "LORA"));
        /* the first module is layer 0's c_attn: q 3 + v 1 */
        test_condf(cJSON_IsNumber(r) && r->valueint == 4, "r %g", r ? r->valuedouble : -1);
        struct {
            const char *mod;
            int         rank;
        } want[] = {{"h.0.mlp.c_fc", 4},      {"h.0.mlp.c_proj", 1}, {"h.1.attn.c_attn", 3},
                    {"h.1.mlp.c_fc", 1},      {"h.1.mlp.c_proj", 2}};
        float scale = (float)(8.0 / (R + 1e-5));
        for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
            const cJSON *x = cJSON_GetObjectItemCaseSensitive(rp, want[i].mod);
            const cJSON *y = cJSON_GetObjectItemCaseSensitive(ap, want[i].mod);
            double       rank = x ? x->valuedouble : (r ? r->valuedouble : 0);
            double       alpha = y ? y->valuedouble : (al ? al->valuedouble : 0);
            test_condf(rank == want[i].rank, "%s: rank %g, want %d", want[i].mod, rank,
                       want[i].rank);
            test_condf(fabs(alpha / rank - scale) <= 1e-6 * scale, "%s: alpha / r = %g, want %g",
                       want[i].mod, alpha / rank, (double)scale);
        }
        cJSON_Delete(c);
    }
    char    path[4200];
    st_file f;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (st_open(&f, path, &err) == LORA_OK) {
        const char *meta = st_meta(&f, "lora.c_attn_slices");
        test_condf(meta && !strcmp(meta, "0:q=3,v=1;1:q=1,v=2"), "slices metadata '%s'",
                   meta ? meta : "(none)");
        test_cond("no lora_E in a LoRA file",
                  !st_find(&f, "base_model.model.transformer.h.0.attn.c_attn.lora_E"));
        st_close(&f);
    } else {
        test_condf(0, "%s", err.msg);
    }

    /* read back as LoRA: the slices with their own ranks, the same logits */
    test_condf(lora_adapter_load(b, dir, &err) == LORA_OK, "load: %s", err.msg);
    test_cond("loaded as LoRA", b->peft.method == LORA_METHOD_LORA);
    struct {
        const char *name;
        int64_t     rank;
        int         zero_b;
    } sites[] = {{"h.0.attn.c_attn.q", 3, 0}, {"h.0.attn.c_attn.v", 1, 0}, {"h.0.mlp.c_fc", 4, 0},
                 {"h.0.mlp.c_proj", 1, 1},    {"h.1.attn.c_attn.q", 1, 1}, {"h.1.attn.c_attn.v", 2, 0},
                 {"h.1.mlp.c_fc", 1, 0},      {"h.1.mlp.c_proj", 2, 0}};
    for (size_t i = 0; i < sizeof sites / sizeof sites[0]; i++) {
        char             name[128];
        lora_tensor_info ta, tb;
        snprintf(name, sizeof name, "%s.lora_A", sites[i].name);
        int ok = lora_model_trainable_find(b, name, &ta) == LORA_OK;
        snprintf(name, sizeof name, "%s.lora_B", sites[i].name);
        ok = ok && lora_model_trainable_find(b, name, &tb) == LORA_OK;
        test_condf(ok && ta.shape[0] == sites[i].rank && tb.shape[1] == sites[i].rank,
                   "%s: rank %lld, want %lld", sites[i].name, ok ? (long long)ta.shape[0] : -1LL,
                   (long long)sites[i].rank);
        if (!ok) continue;
        double bmax = 0;
        for (int64_t j = 0; j < tb.numel; j++)
            bmax = fmax(bmax, fabs(tb.data[j]));
        test_condf(sites[i].zero_b ? bmax == 0 : bmax > 0, "%s: max |B| %g", sites[i].name, bmax);
    }
    logits_of(b, tok, lb);
    double d = test_max_abs_diff(la, lb, n);
    printf("  AdaLoRA -> LoRA directory -> lora_adapter_load: logits max-abs %.2e (C %d)\n", d, C);
    test_condf(d <= 1e-5, "folded LoRA logits differ by %.3e", d);
    free(la);
    free(lb);
done:
    lora_model_free(a);
    lora_model_free(b);
}

/* ---- AdaLoRA -> llama.cpp GGUF: the same ΔW at every adapted weight ---- */

/* ΔW (out, in) of the AdaLoRA sites of one layer on one weight (site index k of 4). */
static void ada_delta(lora_model *m, int32_t layer, int k, float *dw, int32_t out, int32_t in) {
    adalora_site_view v[16];
    int32_t           n = adalora_sites_list(m, v, 16), C = m->cfg.n_embd;
    memset(dw, 0, (size_t)out * in * sizeof(float));
    for (int32_t s = 0; s < n; s++) {
        uint32_t t  = v[s].target;
        int      ks = (t & (LORA_TARGET_Q | LORA_TARGET_K | LORA_TARGET_V | LORA_TARGET_C_ATTN)) ? 0
                      : t == LORA_TARGET_ATTN_PROJ                                           ? 1
                      : t == LORA_TARGET_MLP_FC                                              ? 2
                                                                                             : 3;
        if (v[s].layer != layer || ks != k) continue;
        int32_t off = t == LORA_TARGET_K ? C : t == LORA_TARGET_V ? 2 * C : 0;
        for (int32_t row = 0; row < v[s].len; row++)
            for (int32_t j = 0; j < in; j++) {
                double acc = 0;
                for (int32_t i = 0; i < v[s].r; i++)
                    if (v[s].mask[i] != 0.0f)
                        acc += (double)v[s].B[(size_t)row * v[s].r + i] * v[s].E[i] *
                               v[s].A[(size_t)i * in + j];
                dw[(size_t)(off + row) * in + j] += (float)(v[s].scale * acc);
            }
    }
}

static void test_save_gguf(void) {
    lora_model *a = pruned_adalora("gguf_a");
    lora_error  err;
    char        path[3072];
    gguf_file   f;
    if (!a) return;
    snprintf(path, sizeof path, "%s/folded.gguf", root);
    test_condf(lora_adapter_save_gguf(a, path, LORA_DTYPE_F32, &err) == LORA_OK, "save: %s",
               err.msg);
    memset(&f, 0, sizeof f);
    if (gguf_open(&f, path, &err) != LORA_OK) {
        test_condf(0, "%s", err.msg);
        lora_model_free(a);
        return;
    }
    float alpha = 0;
    test_cond("adapter.lora.alpha", gguf_get_f32(&f, "adapter.lora.alpha", &alpha, &err) == LORA_OK);
    static const char *base[4] = {"attn_qkv", "attn_output", "ffn_up", "ffn_down"};
    int32_t            C = a->cfg.n_embd, F = a->cfg.n_inner;
    int32_t            outs[4] = {3 * C, C, F, C}, ins[4] = {C, C, C, F};
    double             worst = 0;
    int                modules = 0;
    for (int32_t l = 0; l < a->cfg.n_layer; l++)
        for (int k = 0; k < 4; k++) {
            char name[128];
            snprintf(name, sizeof name, "blk.%d.%s.weight.lora_a", (int)l, base[k]);
            const gguf_tensor *ta = gguf_find_tensor(&f, name);
            snprintf(name, sizeof name, "blk.%d.%s.weight.lora_b", (int)l, base[k]);
            const gguf_tensor *tb = gguf_find_tensor(&f, name);
            if (k == 1) { /* attn.c_proj is not targeted */
                test_cond("no attn_output adapter", !ta && !tb);
                continue;
            }
            int32_t out = outs[k], in = ins[k];
            if (!ta || !tb || ta->type != GGUF_TENSOR_F32 || ta->ne[0] != in || tb->ne[1] != out ||
                tb->ne[0] != ta->ne[1]) {
                test_condf(0, "layer %d %s: missing or misshapen lora_a / lora_b", (int)l, base[k]);
                continue;
            }
            int64_t      r  = tb->ne[0];
            const float *A  = ta->data, *Bm = tb->data;
            float       *dw = malloc((size_t)out * in * sizeof(float));
            ada_delta(a, l, k, dw, out, in);
            for (int32_t row = 0; row < out; row++)
                for (int32_t j = 0; j < in; j++) {
                    double acc = 0;
                    for (int64_t q = 0; q < r; q++)
                        acc += (double)Bm[(size_t)row * r + q] * A[(size_t)q * in + j];
                    double d = fabs(acc * alpha / (double)r - dw[(size_t)row * in + j]);
                    if (d > worst) worst = d;
                }
            free(dw);
            modules++;
        }
    printf("  AdaLoRA -> GGUF: %d modules, ΔW max-abs %.2e vs P·diag(Λ⊙mask)·Q·scale\n", modules,
           worst);
    test_condf(modules == 6 && worst <= 1e-6, "GGUF ΔW: %d modules, max-abs %.3e", modules, worst);
    gguf_close(&f);
    lora_model_free(a);
}

/* ---- LoRA: the same files as lora_adapter_save; refusals ---- */

static int same_file(const char *d1, const char *d2, const char *name) {
    char   p1[4200], p2[4200], *x = NULL, *y = NULL;
    size_t n1 = 0, n2 = 0;
    snprintf(p1, sizeof p1, "%s/%s", d1, name);
    snprintf(p2, sizeof p2, "%s/%s", d2, name);
    int ok = lora_read_file(p1, &x, &n1, NULL) == LORA_OK &&
             lora_read_file(p2, &y, &n2, NULL) == LORA_OK && n1 == n2 && !memcmp(x, y, n1);
    free(x);
    free(y);
    return ok;
}

static void test_lora_and_refusals(void) {
    lora_model *m = load_tiny("plain"), *f = load_tiny("bitfit");
    lora_error  err;
    char        d1[3072], d2[3072];
    if (!m || !f) goto done;
    snprintf(d1, sizeof d1, "%s/none", root);
    test_cond("no adapter: LORA_ERR_STATE",
              lora_adapter_save_lora(m, d1, "tiny", &err) == LORA_ERR_STATE);
    lora_adapter_params p = lora_adapter_params_default();
    p.targets = LORA_TARGET_Q | LORA_TARGET_V | LORA_TARGET_MLP_PROJ;
    test_condf(lora_model_attach(m, &p, &err) == LORA_OK, "attach: %s", err.msg);
    fill_all(m, 9, 0.1f);
    snprintf(d1, sizeof d1, "%s/plain_save", root);
    snprintf(d2, sizeof d2, "%s/plain_save_lora", root);
    test_condf(lora_adapter_save(m, d1, "tiny", &err) == LORA_OK, "save: %s", err.msg);
    test_condf(lora_adapter_save_lora(m, d2, "tiny", &err) == LORA_OK, "save_lora: %s", err.msg);
    test_cond("LoRA: save_lora writes what save writes",
              same_file(d1, d2, "adapter_config.json") &&
                  same_file(d1, d2, "adapter_model.safetensors"));
    p.method = LORA_METHOD_BITFIT;
    test_condf(lora_model_attach(f, &p, &err) == LORA_OK, "bitfit: %s", err.msg);
    snprintf(d1, sizeof d1, "%s/bitfit_out", root);
    test_cond("BitFit: LORA_ERR_STATE",
              lora_adapter_save_lora(f, d1, "tiny", &err) == LORA_ERR_STATE &&
                  strstr(err.msg, "AdaLoRA"));
    snprintf(d1, sizeof d1, "%s/bitfit.gguf", root);
    test_cond("BitFit GGUF: LORA_ERR_STATE",
              lora_adapter_save_gguf(f, d1, LORA_DTYPE_F32, &err) == LORA_ERR_STATE);
done:
    lora_model_free(m);
    lora_model_free(f);
}

/* ---- the memory estimate ---- */

static void test_estimate(void) {
    lora_config          c = tiny_config();
    lora_adapter_params  p = lora_adapter_params_default();
    lora_memory_estimate lo, ad;
    lora_error           err;
    p.r       = R;
    p.targets = LORA_TARGET_Q | LORA_TARGET_V | LORA_TARGET_MLP_FC;
    test_cond("estimate lora", lora_estimate_memory(&c, &p, 2, 16, 0, &lo, &err) == LORA_OK);
    lora_model *ml = load_tiny("est_lora");
    if (ml) test_condf(lora_model_attach(ml, &p, &err) == LORA_OK, "lora: %s", err.msg);
    p.method             = LORA_METHOD_ADALORA;
    p.adalora.target_r   = 2;
    p.adalora.total_step = 10;
    test_cond("estimate adalora", lora_estimate_memory(&c, &p, 2, 16, 0, &ad, &err) == LORA_OK);
    lora_model *ma = load_tiny("est_ada");
    if (!ml || !ma) goto done;
    test_condf(lora_model_attach(ma, &p, &err) == LORA_OK, "adalora: %s", err.msg);
    test_condf(lora_model_reserve(ma, 2, 16, &err) == LORA_OK, "reserve: %s", err.msg);
    adalora_status st;
    adalora_get_status(ma, &st);
    int64_t n_lora = lora_model_n_trainable_params(ml), n_ada = lora_model_n_trainable_params(ma);
    int64_t sites = st.n_sites, f4 = (int64_t)sizeof(float), f8 = (int64_t)sizeof(double);
    test_condf(n_ada == n_lora + sites * R, "Λ: %lld vs %lld + %lld", (long long)n_ada,
               (long long)n_lora, (long long)(sites * R));
    test_condf(lo.trainable_bytes == 4 * f4 * n_lora, "LoRA trainable %lld vs 16 x %lld",
               (long long)lo.trainable_bytes, (long long)n_lora);
    /* params, grads, AdamW m and v (Λ's included), the EMAs Ī and Ū of every entry, the mask and
     * frozen flag, the scores and their sorted copy, the penalty's (r, r) scratch */
    int64_t want = 4 * f4 * n_ada + (2 * n_ada + st.init_bgt + 1 + R * R) * f4 +
                   2 * (int64_t)st.init_bgt * f8;
    test_condf(ad.trainable_bytes == want, "AdaLoRA trainable + allocator %lld, want %lld",
               (long long)ad.trainable_bytes, (long long)want);
    test_condf(ad.trainable_bytes > lo.trainable_bytes * 3 / 2,
               "AdaLoRA's state (%lld) must show over LoRA's (%lld)",
               (long long)ad.trainable_bytes, (long long)lo.trainable_bytes);
    /* activations: the model's plan (scratch N (in + 2r)) plus the saved Q·x per site */
    int64_t u = (int64_t)2 * 16 * R * sites * f4;
    test_condf((int64_t)(ma->act_floats * sizeof(float)) + u == ad.activation_bytes,
               "AdaLoRA activation estimate %lld vs planned %lld", (long long)ad.activation_bytes,
               (long long)(ma->act_floats * sizeof(float)) + u);
    test_cond("total", ad.total_bytes == ad.weights_bytes + ad.trainable_bytes +
                                             ad.activation_bytes);
    printf("  estimate (tiny, r %d, q,v,c_fc, B 2, T 16): trainable state LoRA %lld B, AdaLoRA "
           "%lld B\n",
           R, (long long)lo.trainable_bytes, (long long)ad.trainable_bytes);
done:
    lora_model_free(ml);
    lora_model_free(ma);
}

int main(void) {
    tiny_tmpdir(root, sizeof root, "test_adalora_export");
    test_save_lora();
    test_save_gguf();
    test_lora_and_refusals();
    test_estimate();
    return test_report("test_adalora_export");
}
