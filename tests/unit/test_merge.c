/*
 * test_merge.c — inference adapters, merge, unmerge and switch on tiny models, with adapters
 * written by our own code (random values set through lora_model_trainable, then
 * lora_adapter_save):
 *  - merged logits equal unmerged base + adapter logits (max-abs <= 1e-5) for LoRA on q,v,
 *    LoRA on every linear, rsLoRA, AdaLoRA with pruned triplets, two adapters at 0.7 and 0.3;
 *  - unmerge gives back every base weight bit-identical to the file's (memcmp) and logits
 *    bit-identical to a fresh model's once the adapters are removed;
 *  - an inference LoRA adapter gives the same logits as the same directory attached as the
 *    training method (bit-identical), AdaLoRA folded to low rank within 1e-5;
 *  - 100 switches leave the base bit-identical and equal a single merge of the last adapter;
 *  - the decoder, lora_model_save_hf(_atomic) and lora_model_save_gguf use merged weights;
 *  - a frozen inference adapter passes the right dX to a trained method (gradients equal
 *    those of a base with the adapter merged into its file);
 *  - errors: another base model, missing dir, malformed adapter_config.json, unknown or
 *    duplicate names, a full site, training while merged, a full disk during the atomic save.
 */
#include "io/fileutil.h"
#include "io/safetensors.h"
#include "model/gpt2.h"
#include "peft/adalora.h"
#include "test_helper.h"
#include "tiny_model.h"

#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

enum { B = 2, T = 12 };

static char root[2048], base_dir[3072];
static int32_t tokens[B * T], targets[B * T];

/* ---- fixtures ---- */

static void dpath(char *out, size_t n, const char *name) {
    snprintf(out, n, "%s/%s", root, name);
}

/* A LoRA adapter of base `base` with random A and B, saved to DIR. */
static void make_lora(const char *base, const char *dir, uint32_t targets_bits, int32_t r,
                      float alpha, int rslora, uint64_t seed) {
    lora_model         *m = tiny_load(base);
    lora_adapter_params p = lora_adapter_params_default();
    lora_error          err;
    p.targets    = targets_bits;
    p.r          = r;
    p.alpha      = alpha;
    p.use_rslora = rslora;
    p.dropout    = 0.0f;
    test_condf(m && lora_model_attach(m, &p, &err) == LORA_OK, "attach: %s", err.msg);
    tiny_fill_trainable(m, seed, 0.1f);
    test_condf(lora_adapter_save(m, dir, "tiny", &err) == LORA_OK, "save %s: %s", dir, err.msg);
    lora_model_free(m);
}

/* An AdaLoRA adapter (q, v, c_fc; r 4) with random P, Λ, Q and a frozen rank pattern that
 * prunes every third triplet, saved to DIR. */
static void make_adalora(const char *base, const char *dir, uint64_t seed) {
    lora_model         *m = tiny_load(base);
    lora_adapter_params p = lora_adapter_params_default();
    lora_error          err;
    p.method             = LORA_METHOD_ADALORA;
    p.r                  = 4;
    p.alpha              = 6.0f;
    p.dropout            = 0.0f;
    p.targets            = LORA_TARGET_Q | LORA_TARGET_V | LORA_TARGET_MLP_FC;
    p.adalora.target_r   = 2;
    p.adalora.total_step = 10;
    test_condf(m && lora_model_attach(m, &p, &err) == LORA_OK, "attach AdaLoRA: %s", err.msg);
    tiny_fill_trainable(m, seed, 0.1f);
    adalora_status as;
    adalora_get_status(m, &as);
    uint8_t mask[256];
    int     pruned = 0;
    for (int32_t i = 0; i < as.init_bgt && i < 256; i++) {
        mask[i] = i % 3 != 1;
        pruned += !mask[i];
    }
    test_condf(adalora_set_masks(m, mask, as.init_bgt, &err) == LORA_OK, "masks: %s", err.msg);
    test_condf(pruned > 0, "no pruned triplet");
    test_condf(lora_adapter_save(m, dir, "tiny", &err) == LORA_OK, "save %s: %s", dir, err.msg);
    lora_model_free(m);
}

static void write_text(const char *dir, const char *name, const char *text) {
    char path[4096];
    lora_path_join(path, sizeof path, dir, name, NULL);
    lora_write_file_atomic(path, text, strlen(text), NULL);
}

/* logits (B, T, V) of a forward over the fixed tokens, into out */
static void logits_of(lora_model *m, float *out) {
    lora_error err;
    size_t     n = (size_t)B * T * lora_model_config(m)->vocab_size;
    if (lora_model_forward(m, tokens, NULL, B, T, NULL, &err) != LORA_OK) {
        test_condf(0, "forward: %s", err.msg);
        memset(out, 0, n * sizeof(float));
        return;
    }
    memcpy(out, lora_model_logits(m), n * sizeof(float));
}

static size_t n_logits(void) {
    return (size_t)B * T * tiny_config().vocab_size;
}

static linear *site_at(lora_model *m, int32_t l, int k) {
    gpt2_layer *ly = &m->layers[l];
    return k == 0 ? &ly->c_attn : k == 1 ? &ly->attn_proj : k == 2 ? &ly->c_fc : &ly->mlp_proj;
}

/* Every linear weight the sites use is byte-identical to the file's and the pointer is the
 * original one. */
static int base_intact(lora_model *m, const float *const *orig) {
    static const char *nm[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
    char               path[4096];
    st_file            f;
    lora_path_join(path, sizeof path, base_dir, "model.safetensors", NULL);
    if (st_open(&f, path, NULL) != LORA_OK) return 0;
    int ok = 1;
    for (int32_t l = 0; l < m->cfg.n_layer; l++)
        for (int k = 0; k < 4; k++) {
            char name[128];
            snprintf(name, sizeof name, "transformer.h.%d.%s.weight", (int)l, nm[k]);
            const st_tensor *t    = st_find(&f, name);
            linear          *site = site_at(m, l, k);
            ok &= t && site->w == orig[4 * l + k] && site->w0 == NULL &&
                  t->nbytes == (size_t)site->in * site->out * sizeof(float) &&
                  !memcmp(t->data, site->w, t->nbytes);
        }
    st_close(&f);
    return ok;
}

static void save_ptrs(lora_model *m, const float **out) {
    for (int32_t l = 0; l < m->cfg.n_layer; l++)
        for (int k = 0; k < 4; k++) out[4 * l + k] = site_at(m, l, k)->w;
}

/* ---- merged == unmerged, and back ---- */

typedef struct variant {
    const char *what;
    const char *dirs[2];
    float       scales[2];
    int         n;
    int         same_as_method; /* 1: lora_adapter_load gives bit-identical logits; 2: <= 1e-5 */
} variant;

static void test_variant(const variant *v, const float *fresh) {
    size_t       n        = n_logits();
    float       *base     = malloc(n * sizeof(float)), *unmerged = malloc(n * sizeof(float));
    float       *merged   = malloc(n * sizeof(float)), *again = malloc(n * sizeof(float));
    const float *orig[64] = {0};
    lora_error   err;
    lora_model  *m = tiny_load(base_dir);
    if (!m) goto done;
    save_ptrs(m, orig);
    logits_of(m, base);
    test_condf(!memcmp(base, fresh, n * sizeof(float)), "%s: base logits differ", v->what);
    for (int i = 0; i < v->n; i++) {
        char name[16];
        snprintf(name, sizeof name, "a%d", i);
        test_condf(lora_adapter_add(m, v->dirs[i], name, v->scales[i], &err) == LORA_OK,
                   "%s: add %s: %s", v->what, v->dirs[i], err.msg);
    }
    logits_of(m, unmerged);
    double effect = test_max_abs_diff(unmerged, base, n);
    test_condf(effect > 1e-3, "%s: the adapter changes the logits by only %.2e", v->what, effect);

    test_condf(lora_model_merge(m, &err) == LORA_OK, "%s: merge: %s", v->what, err.msg);
    test_condf(lora_model_is_merged(m), "%s: not merged", v->what);
    int copied = 0;
    for (int32_t i = 0; i < 4 * m->cfg.n_layer; i++) {
        linear *site = site_at(m, i / 4, i % 4);
        if (site->n_adapters) copied += site->w != orig[i] && site->w0 == orig[i];
        else test_condf(site->w == orig[i], "%s: an unadapted site was copied", v->what);
    }
    test_condf(copied > 0, "%s: no site got a merged copy", v->what);
    logits_of(m, merged);
    double d = test_max_abs_diff(merged, unmerged, n);
    printf("  %-34s merged vs unmerged logits max-abs %.3e (adapter effect %.3f)\n", v->what, d,
           effect);
    test_condf(d <= 1e-5, "%s: merged logits differ by %.3e > 1e-5", v->what, d);

    test_condf(lora_model_unmerge(m, &err) == LORA_OK, "%s: unmerge: %s", v->what, err.msg);
    test_condf(base_intact(m, orig), "%s: base weights not bit-identical after unmerge", v->what);
    logits_of(m, again);
    test_condf(!memcmp(again, unmerged, n * sizeof(float)),
               "%s: unmerged logits changed by a merge/unmerge", v->what);
    for (int i = 0; i < v->n; i++) {
        char name[16];
        snprintf(name, sizeof name, "a%d", i);
        test_condf(lora_adapter_remove(m, name, &err) == LORA_OK, "%s: remove: %s", v->what,
                   err.msg);
    }
    logits_of(m, again);
    test_condf(!memcmp(again, fresh, n * sizeof(float)),
               "%s: logits after removing the adapters are not a fresh model's", v->what);
    lora_model_free(m);

    /* the same directory as the training method */
    if (v->same_as_method) {
        m = tiny_load(base_dir);
        test_condf(m && lora_adapter_load(m, v->dirs[0], &err) == LORA_OK, "%s: load: %s",
                   v->what, err.msg);
        logits_of(m, again);
        double dm = test_max_abs_diff(again, unmerged, n);
        if (v->same_as_method == 1)
            test_condf(dm == 0, "%s: inference adapter vs attached method: %.3e", v->what, dm);
        else
            test_condf(dm <= 1e-5, "%s: folded vs attached AdaLoRA: %.3e", v->what, dm);
        printf("  %-34s inference adapter vs attached method max-abs %.3e\n", v->what, dm);
        /* the method's adapter merges too */
        test_condf(lora_model_merge(m, &err) == LORA_OK, "%s: merge method: %s", v->what,
                   err.msg);
        logits_of(m, merged);
        double dmm = test_max_abs_diff(merged, again, n);
        test_condf(dmm <= 1e-5, "%s: merged method adapter differs by %.3e", v->what, dmm);
        lora_model_free(m);
    }
done:
    free(base);
    free(unmerged);
    free(merged);
    free(again);
}

/* ---- switching ---- */

static void test_switch(const char *dir_a, const char *dir_b, const float *fresh) {
    size_t       n = n_logits();
    float       *after = malloc(n * sizeof(float)), *single = malloc(n * sizeof(float));
    float       *cur = malloc(n * sizeof(float));
    const float *orig[64];
    lora_error   err;
    lora_model  *m = tiny_load(base_dir);
    save_ptrs(m, orig);
    test_condf(lora_adapter_add(m, dir_a, "live", 1.0f, &err) == LORA_OK, "add: %s", err.msg);
    test_condf(lora_model_merge(m, &err) == LORA_OK, "merge: %s", err.msg);
    int bad = 0, intact = 1;
    for (int i = 0; i < 100; i++) {
        const char *next = i % 2 ? dir_a : dir_b;
        bad += lora_adapter_switch(m, "live", next, "live", 1.0f, &err) != LORA_OK;
        bad += !lora_model_is_merged(m);
        for (int32_t k = 0; k < 4 * m->cfg.n_layer; k++) {
            linear *site = site_at(m, k / 4, k % 4);
            intact &= (site->w0 ? site->w0 : site->w) == orig[k];
        }
        if (i % 25 == 24) { /* the bytes too, now and then */
            lora_model_unmerge(m, NULL);
            intact &= base_intact(m, orig);
            lora_model_merge(m, NULL);
        }
    }
    test_condf(bad == 0, "100 switches: %d failures (%s)", bad, err.msg);
    test_condf(intact, "100 switches: a base pointer or byte changed");
    logits_of(m, after);
    lora_model_unmerge(m, NULL);
    test_condf(base_intact(m, orig), "base not bit-identical after 100 switches");
    lora_model_free(m);

    m = tiny_load(base_dir);
    lora_adapter_add(m, dir_a, "one", 1.0f, NULL);
    lora_model_merge(m, NULL);
    logits_of(m, single);
    double d = test_max_abs_diff(after, single, n);
    printf("  100 switches, then vs a single merge of the last adapter: max-abs %.3e\n", d);
    test_condf(d == 0, "logits after 100 switches differ from one merge by %.3e", d);
    lora_model_free(m);

    /* unmerged switching with a live decoder: the new adapter's buffers are reserved */
    m = tiny_load(base_dir);
    lora_decoder *dec = NULL;
    lora_adapter_add(m, dir_a, "live", 1.0f, NULL);
    test_condf(lora_decoder_init(m, 1, 0, &dec, &err) == LORA_OK, "decoder: %s", err.msg);
    test_condf(lora_adapter_switch(m, "live", dir_b, "b", 0.5f, &err) == LORA_OK, "switch: %s",
               err.msg);
    test_condf(lora_decoder_feed(dec, 0, tokens, T, &err) == LORA_OK, "feed: %s", err.msg);
    logits_of(m, cur);
    int32_t V  = m->cfg.vocab_size;
    double  dd = test_max_abs_diff(lora_decoder_logits(dec, 0), cur + (size_t)(T - 1) * V,
                                   (size_t)V);
    test_condf(dd <= 1e-5, "decoder after an unmerged switch differs by %.3e", dd);
    lora_adapter_info info;
    test_condf(lora_model_n_adapters(m) == 1 && lora_model_adapter(m, 0, &info) == LORA_OK &&
                   !strcmp(info.name, "b") && info.scale == 0.5f && !strcmp(info.dir, dir_b),
               "the adapter list after a switch");
    /* a switch to a bad directory changes nothing */
    test_condf(lora_adapter_switch(m, "b", "/nonexistent/adapter", NULL, 1.0f, &err) ==
                   LORA_ERR_MISSING,
               "switch to a missing directory");
    logits_of(m, after);
    test_condf(!memcmp(after, cur, n * sizeof(float)), "a failed switch changed the logits");
    lora_decoder_free(dec);
    lora_model_free(m);
    (void)fresh;
    free(after);
    free(single);
    free(cur);
}

/* ---- the decoder, saving ---- */

static int same_file(const char *a, const char *b) {
    char  *x = NULL, *y = NULL;
    size_t nx, ny;
    int    ok = lora_read_file(a, &x, &nx, NULL) == LORA_OK &&
             lora_read_file(b, &y, &ny, NULL) == LORA_OK && nx == ny && !memcmp(x, y, nx);
    free(x);
    free(y);
    return ok;
}

static void test_outputs(const char *dir_a, const char *dir_b) {
    size_t      n = n_logits();
    float      *unmerged = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
    lora_error  err;
    lora_model *m = tiny_load(base_dir);
    int32_t     V = m->cfg.vocab_size;
    lora_adapter_add(m, dir_a, "a", 0.7f, NULL);
    lora_adapter_add(m, dir_b, "b", 0.3f, NULL);
    logits_of(m, unmerged);

    /* decoder: unmerged, then merged */
    lora_decoder *dec = NULL;
    float         last_u[256], last_m[256];
    test_condf(lora_decoder_init(m, 1, 0, &dec, &err) == LORA_OK, "decoder: %s", err.msg);
    lora_decoder_feed(dec, 0, tokens, T, NULL);
    memcpy(last_u, lora_decoder_logits(dec, 0), (size_t)V * sizeof(float));
    lora_model_merge(m, NULL);
    lora_decoder_reset(dec, -1);
    test_condf(lora_decoder_feed(dec, 0, tokens, T, &err) == LORA_OK, "feed: %s", err.msg);
    memcpy(last_m, lora_decoder_logits(dec, 0), (size_t)V * sizeof(float));
    double dd = test_max_abs_diff(last_m, last_u, (size_t)V);
    printf("  decoder merged vs unmerged: max-abs %.3e\n", dd);
    test_condf(dd <= 1e-5, "decoder merged vs unmerged: %.3e", dd);
    lora_decoder_free(dec);

    /* a Hugging Face directory, atomically, with the tokenizer files */
    char out[3072], out16[3072], gguf[3072], path[4096], src[4096];
    dpath(out, sizeof out, "merged_out");
    dpath(out16, sizeof out16, "merged_out16");
    dpath(gguf, sizeof gguf, "merged.gguf");
    test_condf(lora_model_save_hf_atomic(m, out, LORA_DTYPE_F32, &err) == LORA_OK, "save: %s",
               err.msg);
    static const char *tok_files[] = {"vocab.json", "merges.txt", "tokenizer_config.json",
                                      "special_tokens_map.json", "generation_config.json"};
    for (size_t i = 0; i < sizeof tok_files / sizeof *tok_files; i++) {
        lora_path_join(src, sizeof src, base_dir, tok_files[i], NULL);
        lora_path_join(path, sizeof path, out, tok_files[i], NULL);
        test_condf(same_file(src, path), "%s not copied", tok_files[i]);
    }
    lora_model *mm = tiny_load(out);
    if (mm) {
        logits_of(mm, got);
        double d = test_max_abs_diff(got, unmerged, n);
        printf("  saved merged model (F32) vs base + adapters: max-abs %.3e\n", d);
        test_condf(d <= 1e-5, "saved merged model differs by %.3e", d);
        test_condf(lora_model_n_adapters(mm) == 0, "the saved model has adapters");
        lora_model_free(mm);
    }
    test_condf(lora_model_save_hf_atomic(m, out, LORA_DTYPE_F32, &err) == LORA_ERR_STATE &&
                   strstr(err.msg, "not empty"),
               "saving over a non-empty directory: %s", err.msg);
    test_condf(lora_model_save_hf_atomic(m, out16, LORA_DTYPE_F16, &err) == LORA_OK,
               "save f16: %s", err.msg);
    if ((mm = tiny_load(out16)) != NULL) {
        int all16 = lora_model_n_file_tensors(mm) > 0;
        for (int32_t i = 0; i < lora_model_n_file_tensors(mm); i++) {
            lora_file_tensor t;
            lora_model_file_tensor(mm, i, &t);
            all16 &= !strcmp(t.dtype, "F16");
        }
        test_cond("the f16 merged model is F16 on disk", all16);
        logits_of(mm, got);
        double d = test_max_abs_diff(got, unmerged, n);
        printf("  saved merged model (F16) vs base + adapters: max-abs %.3e\n", d);
        test_condf(d <= 2e-2, "f16 merged model differs by %.3e", d);
        lora_model_free(mm);
    }

    /* GGUF of the merged model */
    test_condf(lora_model_save_gguf(m, gguf, LORA_DTYPE_F32, base_dir, &err) == LORA_OK,
               "gguf: %s", err.msg);
    if ((mm = tiny_load(gguf)) != NULL) {
        logits_of(mm, got);
        double d = test_max_abs_diff(got, unmerged, n);
        printf("  GGUF of the merged model vs base + adapters: max-abs %.3e\n", d);
        test_condf(d <= 1e-5, "merged GGUF differs by %.3e", d);
        lora_model_free(mm);
    }
    lora_model_free(m);
    free(unmerged);
    free(got);
}

/* ---- a frozen inference adapter under a trained method ---- */

static void test_coexist(const char *dir_qv, const char *dir_all) {
    size_t      n = n_logits();
    float      *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    lora_error  err;
    lora_model *m = tiny_load(base_dir);
    /* method first, then an inference adapter */
    test_condf(lora_adapter_load(m, dir_qv, &err) == LORA_OK, "method: %s", err.msg);
    test_condf(lora_adapter_add(m, dir_all, "frozen", 1.0f, &err) == LORA_OK, "add: %s",
               err.msg);
    logits_of(m, a);
    lora_model *m2 = tiny_load(base_dir);
    lora_adapter_add(m2, dir_qv, "x", 1.0f, NULL);
    lora_adapter_add(m2, dir_all, "y", 1.0f, NULL);
    logits_of(m2, b);
    test_condf(!memcmp(a, b, n * sizeof(float)),
               "method + inference adapter differs from two inference adapters");
    lora_model_free(m2);

    /* gradients of the method's tensors == on a base with the frozen adapter merged in */
    char fused[3072];
    dpath(fused, sizeof fused, "base_plus_all");
    lora_model *m3 = tiny_load(base_dir);
    lora_adapter_add(m3, dir_all, "y", 1.0f, NULL);
    lora_model_merge(m3, NULL);
    test_condf(lora_model_save_hf_atomic(m3, fused, LORA_DTYPE_F32, &err) == LORA_OK,
               "save fused: %s", err.msg);
    lora_model_free(m3);
    m3 = tiny_load(fused);
    test_condf(m3 && lora_adapter_load(m3, dir_qv, &err) == LORA_OK, "method on fused: %s",
               err.msg);
    float      loss1 = 0, loss2 = 0;
    lora_model *ms[2] = {m, m3};
    for (int i = 0; i < 2; i++) {
        lora_model_zero_grad(ms[i]);
        test_condf(lora_model_forward(ms[i], tokens, targets, B, T, i ? &loss2 : &loss1, &err) ==
                       LORA_OK,
                   "forward with targets: %s", err.msg);
        test_condf(lora_model_backward(ms[i], &err) == LORA_OK, "backward: %s", err.msg);
    }
    double worst = 0, gmax = 0;
    for (int32_t i = 0; i < lora_model_n_trainable(m); i++) {
        lora_tensor_info t1, t2;
        lora_model_trainable(m, i, &t1);
        lora_model_trainable_find(m3, t1.name, &t2);
        double rel = test_rel_norm_diff(t1.grad, t2.grad, (size_t)t1.numel);
        if (rel > worst) worst = rel;
        for (int64_t j = 0; j < t1.numel; j++)
            if (fabs(t1.grad[j]) > gmax) gmax = fabs(t1.grad[j]);
    }
    printf("  method gradients with a frozen adapter vs on the merged base: rel %.3e "
           "(loss %.6f vs %.6f)\n", worst, loss1, loss2);
    test_condf(gmax > 0 && worst <= 1e-4, "gradients differ: rel %.3e (max |g| %.3e)", worst,
               gmax);
    test_condf(fabsf(loss1 - loss2) <= 1e-5f, "losses differ: %g vs %g", loss1, loss2);
    lora_model_free(m3);

    /* while merged: no training, no adapter changes */
    lora_optim_params op = lora_optim_params_default();
    test_condf(lora_model_merge(m, &err) == LORA_OK, "merge: %s", err.msg);
    test_condf(lora_model_merge(m, &err) == LORA_ERR_STATE, "merging twice");
    lora_model_set_training(m, 1);
    test_condf(lora_model_forward(m, tokens, targets, B, T, &loss1, &err) == LORA_ERR_STATE &&
                   strstr(err.msg, "merged"),
               "training forward while merged: %s", err.msg);
    lora_model_set_training(m, 0);
    test_condf(lora_model_forward(m, tokens, targets, B, T, &loss1, &err) == LORA_OK,
               "evaluation loss while merged: %s", err.msg);
    test_condf(fabsf(loss1 - loss2) <= 1e-5f, "merged loss %g vs %g", loss1, loss2);
    test_condf(lora_model_backward(m, &err) == LORA_ERR_STATE, "backward while merged");
    test_condf(lora_model_step(m, &op, 1e-3f, NULL, &err) == LORA_ERR_STATE,
               "step while merged");
    test_condf(lora_adapter_add(m, dir_qv, "z", 1.0f, &err) == LORA_ERR_STATE &&
                   strstr(err.msg, "unmerge"),
               "add while merged: %s", err.msg);
    test_condf(lora_adapter_remove(m, "frozen", &err) == LORA_ERR_STATE, "remove while merged");
    test_condf(lora_adapter_set_scale(m, "frozen", 2.0f, &err) == LORA_ERR_STATE,
               "set_scale while merged");
    char tp[3072];
    dpath(tp, sizeof tp, "trainable.safetensors");
    lora_model_save_trainable(m, tp, NULL);
    test_condf(lora_model_load_trainable(m, tp, &err) == LORA_ERR_STATE,
               "loading trainable values while merged");
    test_condf(lora_model_unmerge(m, &err) == LORA_OK, "unmerge: %s", err.msg);
    test_condf(lora_model_unmerge(m, &err) == LORA_ERR_STATE, "unmerging twice");
    /* and training works again */
    lora_model_set_training(m, 1);
    test_condf(lora_model_forward(m, tokens, targets, B, T, &loss1, &err) == LORA_OK &&
                   lora_model_backward(m, &err) == LORA_OK &&
                   lora_model_step(m, &op, 1e-3f, NULL, &err) == LORA_OK,
               "training after unmerge: %s", err.msg);
    lora_model_free(m);

    /* attaching a method while merged */
    m = tiny_load(base_dir);
    lora_adapter_add(m, dir_all, "y", 1.0f, NULL);
    lora_model_merge(m, NULL);
    lora_adapter_params p = lora_adapter_params_default();
    test_condf(lora_model_attach(m, &p, &err) == LORA_ERR_STATE, "attach while merged");
    lora_model_unmerge(m, NULL);
    /* after: the failed attach of a too-full site keeps the inference adapters */
    lora_model_free(m);
    free(a);
    free(b);
}

/* ---- bad input ---- */

static void test_errors(const char *dir_qv, const float *fresh) {
    size_t      n = n_logits();
    float      *got = malloc(n * sizeof(float)), *before = malloc(n * sizeof(float));
    lora_error  err;
    lora_model *m = tiny_load(base_dir);
    char        other_base[3072], other[3072], bad[3072], path[4096];

    /* an adapter for another base model (n_embd 48) */
    lora_config c2 = tiny_config();
    c2.n_embd      = 48;
    c2.n_inner     = 192;
    dpath(other_base, sizeof other_base, "other_base");
    dpath(other, sizeof other, "other_adapter");
    tiny_write(other_base, &c2, NULL, 9);
    make_lora(other_base, other, LORA_TARGET_Q | LORA_TARGET_V, 4, 8.0f, 0, 5);
    lora_status st = lora_adapter_add(m, other, NULL, 1.0f, &err);
    printf("  another base model: %s\n", err.msg);
    test_condf(st == LORA_ERR_SHAPE && strstr(err.msg, "c_attn.lora_A") &&
                   strstr(err.msg, "(8, 48)") && strstr(err.msg, "(8, 32)") &&
                   strstr(err.msg, "another base model"),
               "another base model: %d %s", (int)st, err.msg);
    test_condf(lora_model_n_adapters(m) == 0, "a failed add left an adapter");

    /* a missing directory */
    st = lora_adapter_add(m, "/nonexistent/adapter", NULL, 1.0f, &err);
    test_condf(st == LORA_ERR_MISSING && strstr(err.msg, "/nonexistent/adapter"),
               "missing dir: %d %s", (int)st, err.msg);

    /* malformed adapter_config.json: not JSON, then a bad field */
    dpath(bad, sizeof bad, "bad_adapter");
    make_lora(base_dir, bad, LORA_TARGET_Q | LORA_TARGET_V, 2, 4.0f, 0, 6);
    write_text(bad, "adapter_config.json", "{\"peft_type\": \"LORA\", \"r\": ");
    st = lora_adapter_add(m, bad, NULL, 1.0f, &err);
    test_condf(st == LORA_ERR_FORMAT && strstr(err.msg, "adapter_config.json"),
               "malformed config: %d %s", (int)st, err.msg);
    write_text(bad, "adapter_config.json", "{\"peft_type\": \"LORA\", \"r\": \"four\", "
                                           "\"lora_alpha\": 8}");
    st = lora_adapter_add(m, bad, NULL, 1.0f, &err);
    test_condf(st == LORA_ERR_FORMAT && strstr(err.msg, "'r'"), "bad r: %d %s", (int)st,
               err.msg);

    /* names and scales */
    test_condf(lora_adapter_add(m, dir_qv, "one", 1.0f, &err) == LORA_OK, "add: %s", err.msg);
    test_condf(lora_adapter_add(m, dir_qv, "one", 1.0f, &err) == LORA_ERR_ARG &&
                   strstr(err.msg, "already loaded"),
               "duplicate name: %s", err.msg);
    test_condf(lora_adapter_add(m, dir_qv, "two", NAN, &err) == LORA_ERR_ARG, "NaN scale");
    st = lora_adapter_remove(m, "nope", &err);
    test_condf(st == LORA_ERR_MISSING && strstr(err.msg, "'nope'") && strstr(err.msg, "one"),
               "unknown name: %d %s", (int)st, err.msg);
    test_condf(lora_adapter_set_scale(m, "nope", 1.0f, &err) == LORA_ERR_MISSING,
               "set_scale of an unknown name");
    test_condf(lora_adapter_switch(m, "nope", dir_qv, NULL, 1.0f, &err) == LORA_ERR_MISSING,
               "switch of an unknown name");
    /* scale 0 is the base, exactly */
    test_condf(lora_adapter_set_scale(m, "one", 0.0f, &err) == LORA_OK, "scale 0: %s", err.msg);
    logits_of(m, got);
    test_condf(!memcmp(got, fresh, n * sizeof(float)), "scale 0 is not the base");
    lora_adapter_set_scale(m, "one", 1.0f, NULL);

    /* a full site: q and v slices count one each on c_attn (8 = 4 q/v adapters) */
    for (int i = 0; i < 3; i++) {
        char name[16];
        snprintf(name, sizeof name, "more%d", i);
        test_condf(lora_adapter_add(m, dir_qv, name, 0.1f, &err) == LORA_OK, "add %s: %s", name,
                   err.msg);
    }
    logits_of(m, before);
    st = lora_adapter_add(m, dir_qv, "too_many", 1.0f, &err);
    printf("  a full site: %s\n", err.msg);
    test_condf(st == LORA_ERR_STATE && strstr(err.msg, "too many adapters") &&
                   strstr(err.msg, "h.0.attn.c_attn"),
               "too many: %d %s", (int)st, err.msg);
    logits_of(m, got);
    test_condf(lora_model_n_adapters(m) == 4 && !memcmp(got, before, n * sizeof(float)),
               "a refused add changed the model");
    /* a method attach that does not fit leaves the inference adapters in place */
    lora_adapter_params p = lora_adapter_params_default();
    test_condf(lora_model_attach(m, &p, &err) == LORA_ERR_STATE, "attach on a full site: %s",
               err.msg);
    logits_of(m, got);
    test_condf(lora_model_n_adapters(m) == 4 && !memcmp(got, before, n * sizeof(float)),
               "a failed attach changed the inference adapters");
    lora_model_free(m);

    /* the same directory under two names is two adapters: scale 0.5 twice == scale 1 */
    m = tiny_load(base_dir);
    lora_adapter_add(m, dir_qv, "h1", 0.5f, NULL);
    lora_adapter_add(m, dir_qv, "h2", 0.5f, NULL);
    logits_of(m, got);
    lora_model_free(m);
    m = tiny_load(base_dir);
    lora_adapter_add(m, dir_qv, "w", 1.0f, NULL);
    logits_of(m, before);
    double d = test_max_abs_diff(got, before, n);
    test_condf(d <= 1e-5, "two halves vs one whole: %.3e", d);
    lora_model_free(m);
    (void)path;
    free(got);
    free(before);
}

/* ---- a full disk ---- */

static int count_prefixed(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    int  n = 0;
    if (!d) return -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) n += !strncmp(e->d_name, prefix, strlen(prefix));
    closedir(d);
    return n;
}

static void test_full_disk(const char *dir_a) {
    char out[3072];
    dpath(out, sizeof out, "full_disk_out");
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        lora_error  err;
        lora_model *m = NULL;
        if (lora_model_load(base_dir, &m, &err) != LORA_OK) _exit(10);
        if (lora_adapter_add(m, dir_a, "a", 1.0f, &err) != LORA_OK) _exit(11);
        if (lora_model_merge(m, &err) != LORA_OK) _exit(12);
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {16384, 16384}; /* config.json fits, model.safetensors does not */
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(13);
        lora_status st = lora_model_save_hf_atomic(m, out, LORA_DTYPE_F32, &err);
        if (st != LORA_ERR_IO) _exit(14);
        if (!strstr(err.msg, "model.safetensors")) _exit(15);
        lora_model_free(m);
        _exit(0);
    }
    int status = 0;
    test_cond("fork", pid > 0 && waitpid(pid, &status, 0) == pid);
    test_condf(WIFEXITED(status) && WEXITSTATUS(status) == 0,
               "full-disk child: exit %d (10-13 setup, 14 status not IO, 15 message)",
               WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    struct stat sb;
    test_cond("no output directory after a full disk", stat(out, &sb) != 0);
    test_condf(count_prefixed(root, "full_disk_out") == 0,
               "a temporary directory was left after a full disk (%d)",
               count_prefixed(root, "full_disk_out"));
}

int main(void) {
    const char *tmp = getenv("LORA_TEST_TMP");
    snprintf(root, sizeof root, "%s/test_merge.%d", tmp ? tmp : "/tmp", (int)getpid());
    lora_mkdirs(root, NULL);
    dpath(base_dir, sizeof base_dir, "base");
    lora_config c = tiny_config();
    tiny_write(base_dir, &c, NULL, 3);
    /* tokenizer-side files a merged directory must carry over (contents not parsed here) */
    write_text(base_dir, "vocab.json", "{\"a\": 0}");
    write_text(base_dir, "merges.txt", "#version: 0.2\n");
    write_text(base_dir, "tokenizer_config.json", "{\"model_max_length\": 16}");
    write_text(base_dir, "special_tokens_map.json", "{}");
    write_text(base_dir, "generation_config.json", "{\"eos_token_id\": 60}");
    for (int i = 0; i < B * T; i++) {
        tokens[i]  = (int32_t)((i * 7 + 3) % c.vocab_size);
        targets[i] = (i % T) < 2 ? -1 : (int32_t)((i * 5 + 1) % c.vocab_size);
    }

    char qv[3072], all[3072], rs[3072], ada[3072], qv2[3072];
    dpath(qv, sizeof qv, "ad_qv");
    dpath(all, sizeof all, "ad_all");
    dpath(rs, sizeof rs, "ad_rslora");
    dpath(ada, sizeof ada, "ad_adalora");
    dpath(qv2, sizeof qv2, "ad_qv2");
    make_lora(base_dir, qv, LORA_TARGET_Q | LORA_TARGET_V, 4, 8.0f, 0, 1);
    make_lora(base_dir, all, LORA_TARGET_ALL_LINEAR, 2, 4.0f, 0, 2);
    make_lora(base_dir, rs, LORA_TARGET_ALL_LINEAR, 4, 2.0f, 1, 3);
    make_adalora(base_dir, ada, 4);
    make_lora(base_dir, qv2, LORA_TARGET_Q | LORA_TARGET_K | LORA_TARGET_V, 3, 6.0f, 0, 7);

    size_t      n     = n_logits();
    float      *fresh = malloc(n * sizeof(float));
    lora_model *m     = tiny_load(base_dir);
    logits_of(m, fresh);
    lora_model_free(m);

    variant vs[] = {
        {"LoRA q,v (r 4)", {qv, NULL}, {1.0f, 0}, 1, 1},
        {"LoRA on all linears (r 2)", {all, NULL}, {1.0f, 0}, 1, 1},
        {"rsLoRA on all linears (r 4)", {rs, NULL}, {1.0f, 0}, 1, 1},
        {"AdaLoRA, pruned triplets", {ada, NULL}, {1.0f, 0}, 1, 2},
        {"two adapters at 0.7 and 0.3", {all, qv2}, {0.7f, 0.3f}, 2, 0},
    };
    for (size_t i = 0; i < sizeof vs / sizeof *vs; i++) test_variant(&vs[i], fresh);
    test_switch(qv, all, fresh);
    test_outputs(all, qv2);
    test_coexist(qv, all);
    test_errors(qv, fresh);
    test_full_disk(all);
    free(fresh);
    return test_report("test_merge");
}
