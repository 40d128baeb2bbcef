/*
 * test_combine.c — lora_adapters_combine without the PyTorch oracle: adapters made by the
 * engine are combined, the result is loaded with lora_adapter_load, and its logits are compared
 * with the same model whose base weights had the delta W the combination stands for added in
 * (through full fine-tuning's trainable weights): cat = sum w_i s_i B_i A_i exactly, svd at full
 * rank the same, linear PEFT's product with cross terms. Then every error: ranks linear cannot
 * mix, adapters of different base models, AdaLoRA, an svd rank out of range, bad arguments, an
 * output directory in the way — each naming the file, and none leaving an output behind.
 */
#include "combine_inputs.h"
#include "io/safetensors.h"
#include "test_helper.h"
#include "tiny_model.h"

#include <ftw.h>
#include <sys/stat.h>

#define NB 2
#define NT 8

static char root[2048], model_dir[2300], wide_dir[2300];
static int  C, F, L;

typedef struct src {
    const char *name;
    char        dir[2400];
    lora_model *m; /* the live model the adapter was saved from */
} src;

static src a_qv = {"a_qv", "", NULL}, b_qv = {"b_qv", "", NULL}, c_qk = {"c_qk", "", NULL},
           d_mix = {"d_mix", "", NULL}, e_qv2 = {"e_qv2", "", NULL}, f_proj = {"f_proj", "", NULL},
           w_qv = {"w_qv", "", NULL};
static char ada_dir[2400];

static int module_in(int mod) {
    return mod == 3 ? F : C;
}
static int module_out(int mod) {
    return mod == 0 ? 3 * C : mod == 2 ? F : C;
}

static double **delta_alloc(void) {
    double **dw = calloc((size_t)L * 4, sizeof *dw);
    for (int i = 0; i < L * 4; i++)
        dw[i] = calloc((size_t)module_in(i % 4) * (size_t)module_out(i % 4), sizeof(double));
    return dw;
}

static void delta_free(double **dw) {
    for (int i = 0; dw && i < L * 4; i++)
        free(dw[i]);
    free(dw);
}

/* Logits (NB, NT, V) of the model with the adapter in dir (NULL: none) and dw added to its base
 * weights (NULL: nothing). Owned by the caller. */
static float *logits_of(const char *dir, double **dw) {
    lora_model *m = NULL;
    lora_error  err;
    float      *out = NULL;
    int32_t     tok[NB * NT];
    test_condf(lora_model_load(model_dir, &m, &err) == LORA_OK, "load: %s", err.msg);
    if (!m) return NULL;
    int32_t V = lora_model_config(m)->vocab_size;
    for (int i = 0; i < NB * NT; i++)
        tok[i] = (int32_t)((i * 13 + 5) % V);
    if (dir) test_condf(lora_adapter_load(m, dir, &err) == LORA_OK, "load %s: %s", dir, err.msg);
    if (dw) {
        lora_adapter_params p = lora_adapter_params_default();
        p.method              = LORA_METHOD_FULL;
        p.dropout             = 0.0f;
        test_condf(lora_model_attach(m, &p, &err) == LORA_OK, "attach full: %s", err.msg);
        static const char *names[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
        for (int l = 0; l < L; l++)
            for (int mod = 0; mod < 4; mod++) {
                char             nm[64];
                lora_tensor_info t;
                snprintf(nm, sizeof nm, "h.%d.%s.weight", l, names[mod]);
                if (lora_model_trainable_find(m, nm, &t) != LORA_OK) continue;
                int in = module_in(mod), o = module_out(mod);
                for (int j = 0; j < in; j++) /* Conv1D weight (in, out) */
                    for (int k = 0; k < o; k++)
                        t.data[(size_t)j * o + k] += (float)dw[l * 4 + mod][(size_t)k * in + j];
            }
    }
    if (lora_model_forward(m, tok, NULL, NB, NT, NULL, &err) == LORA_OK) {
        size_t n = (size_t)NB * NT * V;
        out      = malloc(n * sizeof(float));
        memcpy(out, lora_model_logits(m), n * sizeof(float));
    } else {
        test_condf(0, "forward: %s", err.msg);
    }
    lora_model_free(m);
    return out;
}

static size_t n_logits(void) {
    return (size_t)NB * NT * 61;
}

/* The fused (c_attn: slices stacked) A (R, in) and B (out, R) of one module of a live model;
 * R = 0 when the model has no adapter there. */
static void fused(const lora_model *m, int layer, int mod, double **A, double **B, int *R,
                  double *scale) {
    int32_t         n     = lora_sites_list(m, NULL, 0);
    lora_site_view *sites = calloc((size_t)n + 1, sizeof *sites);
    int             in = module_in(mod), out = module_out(mod), k0 = 0;
    lora_sites_list(m, sites, n);
    *R = 0;
    for (int32_t i = 0; i < n; i++)
        if (sites[i].layer == layer && combine_module_index(sites[i].target) == mod)
            *R += sites[i].r;
    *A = calloc((size_t)(*R ? *R : 1) * in, sizeof(double));
    *B = calloc((size_t)out * (*R ? *R : 1), sizeof(double));
    for (int32_t i = 0; i < n; i++) {
        const lora_site_view *v = &sites[i];
        if (v->layer != layer || combine_module_index(v->target) != mod) continue;
        int row0 = v->target == LORA_TARGET_K ? C : v->target == LORA_TARGET_V ? 2 * C : 0;
        for (int k = 0; k < v->r; k++)
            for (int j = 0; j < in; j++)
                (*A)[(size_t)(k0 + k) * in + j] = v->A[(size_t)k * in + j];
        for (int o = 0; o < v->len; o++)
            for (int k = 0; k < v->r; k++)
                (*B)[(size_t)(row0 + o) * *R + k0 + k] = v->B[(size_t)o * v->r + k];
        *scale = v->scale;
        k0 += v->r;
    }
    free(sites);
}

/* PEFT's linear delta W of two live adapters (same rank per module): (sum b_i B_i)(sum a_i A_i)
 * with b_i = sqrt|w_i s_i|, a_i = sgn(w_i s_i) b_i. */
static double **linear_delta(const src *x, double wx, const src *y, double wy) {
    double **dw = delta_alloc();
    for (int l = 0; l < L; l++)
        for (int mod = 0; mod < 4; mod++) {
            double *A[2], *B[2], s[2] = {0, 0}, w[2] = {wx, wy};
            int     R[2];
            fused(x->m, l, mod, &A[0], &B[0], &R[0], &s[0]);
            fused(y->m, l, mod, &A[1], &B[1], &R[1], &s[1]);
            int in = module_in(mod), out = module_out(mod), r = R[0] ? R[0] : R[1];
            if (r) {
                double *sa = calloc((size_t)r * in, sizeof(double));
                double *sb = calloc((size_t)out * r, sizeof(double));
                for (int i = 0; i < 2; i++) {
                    if (!R[i]) continue;
                    double ws = w[i] * s[i], b = sqrt(fabs(ws)), a = ws < 0 ? -b : b;
                    for (size_t e = 0; e < (size_t)r * in; e++)
                        sa[e] += a * A[i][e];
                    for (size_t e = 0; e < (size_t)out * r; e++)
                        sb[e] += b * B[i][e];
                }
                for (int o = 0; o < out; o++)
                    for (int j = 0; j < in; j++)
                        for (int k = 0; k < r; k++)
                            dw[l * 4 + mod][(size_t)o * in + j] +=
                                sb[(size_t)o * r + k] * sa[(size_t)k * in + j];
                free(sa);
                free(sb);
            }
            for (int i = 0; i < 2; i++) {
                free(A[i]);
                free(B[i]);
            }
        }
    return dw;
}

static int combine2(const src *x, double wx, const src *y, double wy, lora_combine_how how,
                    int32_t R, const char *out, lora_error *err) {
    const char *dirs[2] = {x->dir, y ? y->dir : NULL};
    double      w[2]    = {wx, wy};
    return lora_adapters_combine(dirs, w, y ? 2 : 1, how, R, out, err);
}

static void out_path(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", root, name);
}

static int exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* A number from adapter_config.json (-1 when absent), by a plain text search. */
static double config_number(const char *dir, const char *key) {
    char   path[2600], *text = NULL, pat[64];
    size_t len;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if (lora_read_file(path, &text, &len, NULL) != LORA_OK) return -1;
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(text, pat);
    double      v = p ? strtod(p + strlen(pat), NULL) : -1;
    free(text);
    return v;
}

static int config_has(const char *dir, const char *needle) {
    char   path[2600], *text = NULL;
    size_t len;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if (lora_read_file(path, &text, &len, NULL) != LORA_OK) return 0;
    int has = strstr(text, needle) != NULL;
    free(text);
    return has;
}

/* The slice metadata of a written adapter ("" when absent). */
static void slices_meta(const char *dir, char *buf, size_t n) {
    char    path[2600];
    st_file f;
    memset(&f, 0, sizeof f);
    buf[0] = '\0';
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (st_open(&f, path, NULL) != LORA_OK) return;
    const char *v = st_meta(&f, PEFT_SLICES_META);
    if (v) snprintf(buf, n, "%s", v);
    st_close(&f);
}

static void check_logits(const char *what, const char *dir, double **dw, double tol) {
    float *got = logits_of(dir, NULL), *want = logits_of(NULL, dw), *base = logits_of(NULL, NULL);
    if (got && want && base) {
        double rel   = test_rel_norm_diff(got, want, n_logits());
        double moved = test_rel_norm_diff(base, want, n_logits());
        test_condf(rel < tol, "%s: logits differ from the weighted delta W by %.3g (rel)", what,
                   rel);
        test_condf(moved > 100 * tol, "%s: the adapters barely move the logits (%.3g)", what,
                   moved);
    }
    free(got);
    free(want);
    free(base);
}

static void test_cat(void) {
    char       out[2600], meta[256];
    lora_error err;
    out_path(out, sizeof out, "cat_ab");
    test_condf(combine2(&a_qv, 0.7, &b_qv, -0.3, LORA_COMBINE_CAT, 0, out, &err) == LORA_OK,
               "cat: %s", err.msg);
    test_cond("cat: r is the sum of the ranks", config_number(out, "r") == 16);
    test_cond("cat: lora_alpha = r", config_number(out, "lora_alpha") == 16);
    test_cond("cat: use_rslora false", config_has(out, "\"use_rslora\":\tfalse"));
    slices_meta(out, meta, sizeof meta);
    test_condf(meta[0] == '\0', "cat of two q,v adapters keeps slice metadata '%s'", meta);
    double **dw = delta_alloc();
    combine_add_delta(dw, a_qv.m, 0.7, C);
    combine_add_delta(dw, b_qv.m, -0.3, C);
    check_logits("cat", out, dw, 1e-5);
    delta_free(dw);

    /* a module only one adapter has: zero-padded to the summed rank */
    out_path(out, sizeof out, "cat_ad");
    test_condf(combine2(&a_qv, 0.5, &d_mix, 2.0, LORA_COMBINE_CAT, 0, out, &err) == LORA_OK,
               "cat with missing modules: %s", err.msg);
    test_cond("cat a+d: r = 8 + 4", config_number(out, "r") == 12);
    test_cond("cat a+d: no rank_pattern entries", config_has(out, "\"rank_pattern\":\t{\n\t}"));
    dw = delta_alloc();
    combine_add_delta(dw, a_qv.m, 0.5, C);
    combine_add_delta(dw, d_mix.m, 2.0, C);
    check_logits("cat with missing modules", out, dw, 1e-5);
    delta_free(dw);
}

static void test_svd(void) {
    char       out[2600];
    lora_error err;
    /* rank 16 >= rank(dW): the SVD reproduces dW */
    out_path(out, sizeof out, "svd_full");
    test_condf(combine2(&a_qv, 0.7, &b_qv, -0.3, LORA_COMBINE_SVD, 16, out, &err) == LORA_OK,
               "svd: %s", err.msg);
    test_cond("svd: r = 16", config_number(out, "r") == 16);
    double **dw = delta_alloc();
    combine_add_delta(dw, a_qv.m, 0.7, C);
    combine_add_delta(dw, b_qv.m, -0.3, C);
    check_logits("svd at full rank", out, dw, 1e-5);
    delta_free(dw);
    /* rank 12: c_attn (ranks 8 + 4) through the QR route, c_proj and c_fc (only d, rank 2)
     * through the SVD of the whole dW (R > their rank): both exact */
    out_path(out, sizeof out, "svd_routes");
    test_condf(combine2(&a_qv, 0.7, &d_mix, 1.5, LORA_COMBINE_SVD, 12, out, &err) == LORA_OK,
               "svd both routes: %s", err.msg);
    dw = delta_alloc();
    combine_add_delta(dw, a_qv.m, 0.7, C);
    combine_add_delta(dw, d_mix.m, 1.5, C);
    check_logits("svd through both routes", out, dw, 1e-5);
    delta_free(dw);
    /* default rank: the largest input rank */
    out_path(out, sizeof out, "svd_default");
    test_condf(combine2(&a_qv, 0.7, &e_qv2, 1.0, LORA_COMBINE_SVD, 0, out, &err) == LORA_OK,
               "svd default rank: %s", err.msg);
    test_cond("svd: default r = max rank 8", config_number(out, "r") == 8);
    /* one adapter is combined linearly whatever the combination says (as PEFT) */
    out_path(out, sizeof out, "svd_single");
    test_condf(combine2(&d_mix, -0.5, NULL, 0, LORA_COMBINE_SVD, 0, out, &err) == LORA_OK,
               "single: %s", err.msg);
    test_cond("single: r kept (linear)", config_number(out, "r") == 4);
    dw = delta_alloc();
    combine_add_delta(dw, d_mix.m, -0.5, C);
    check_logits("one adapter, weight -0.5", out, dw, 1e-5);
    delta_free(dw);
}

static void test_linear(void) {
    char       out[2600], meta[256];
    lora_error err;
    out_path(out, sizeof out, "lin_ab");
    test_condf(combine2(&a_qv, 0.7, &b_qv, -0.3, LORA_COMBINE_LINEAR, 0, out, &err) == LORA_OK,
               "linear: %s", err.msg);
    test_cond("linear: r kept",
              config_number(out, "r") == 8 && config_number(out, "lora_alpha") == 8);
    slices_meta(out, meta, sizeof meta);
    test_condf(!strcmp(meta, "0:q,v;1:q,v"), "linear of q,v adapters: slices '%s'", meta);
    lora_model *m = NULL;
    lora_error  e2;
    if (lora_model_load(model_dir, &m, &e2) == LORA_OK && lora_adapter_load(m, out, &e2) == LORA_OK)
        test_condf(lora_model_n_trainable(m) == 4 * L, "linear q,v: %d tensors, not q/v slices",
                   (int)lora_model_n_trainable(m));
    lora_model_free(m);
    double **dw = linear_delta(&a_qv, 0.7, &b_qv, -0.3);
    check_logits("linear", out, dw, 1e-5);
    /* PEFT's linear is not the weighted sum: the logits must differ from it */
    double **sum = delta_alloc();
    combine_add_delta(sum, a_qv.m, 0.7, C);
    combine_add_delta(sum, b_qv.m, -0.3, C);
    float *got = logits_of(out, NULL), *ws = logits_of(NULL, sum);
    if (got && ws)
        test_condf(test_rel_norm_diff(got, ws, n_logits()) > 1e-3,
                   "linear equals the weighted sum (%.3g): cross terms missing",
                   test_rel_norm_diff(got, ws, n_logits()));
    free(got);
    free(ws);
    delta_free(sum);
    delta_free(dw);

    /* q,v with q,k: equal ranks, different slices: no metadata, one fused c_attn */
    out_path(out, sizeof out, "lin_ac");
    test_condf(combine2(&a_qv, 1.0, &c_qk, 1.0, LORA_COMBINE_LINEAR, 0, out, &err) == LORA_OK,
               "linear q,v + q,k: %s", err.msg);
    slices_meta(out, meta, sizeof meta);
    test_condf(meta[0] == '\0', "linear q,v + q,k keeps slices '%s'", meta);
    dw = linear_delta(&a_qv, 1.0, &c_qk, 1.0);
    check_logits("linear q,v + q,k", out, dw, 1e-5);
    delta_free(dw);

    /* config ranks equal (4), a module only one has (c_proj, rank 2): its own rank pattern */
    out_path(out, sizeof out, "lin_de");
    test_condf(combine2(&d_mix, 0.6, &e_qv2, 0.4, LORA_COMBINE_LINEAR, 0, out, &err) == LORA_OK,
               "linear d + e: %s", err.msg);
    test_cond("linear d + e: rank pattern for c_proj",
              config_has(out, "\"h.0.attn.c_proj\":\t2") && config_number(out, "r") == 4);
    dw = linear_delta(&d_mix, 0.6, &e_qv2, 0.4);
    check_logits("linear with a module of another rank", out, dw, 1e-5);
    delta_free(dw);
}

/* An error: the status, a message naming `file` and holding `what`, and no output left. */
static void expect_error(const char *name, int st, lora_status want, const lora_error *err,
                         const char *file, const char *what, const char *out) {
    test_condf(st == want, "%s: status %d, want %d (%s)", name, st, (int)want, err->msg);
    test_condf(file == NULL || strstr(err->msg, file), "%s: message does not name %s: %s", name,
               file, err->msg);
    test_condf(strstr(err->msg, what), "%s: message lacks '%s': %s", name, what, err->msg);
    if (out) {
        char tmp[2700];
        snprintf(tmp, sizeof tmp, "%s.tmp.%d", out, (int)getpid());
        test_condf(!exists(out) && !exists(tmp), "%s: output left behind", name);
    }
}

/* A copy of adapter dir src in dst whose target_modules is the regular expression ".*c_attn". */
static int copy_with_regex(const char *src_dir, const char *dst) {
    char   path[2600], *text = NULL, *bin = NULL;
    size_t len, blen;
    int    rc = -1;
    lora_mkdirs(dst, NULL);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", src_dir);
    if (lora_read_file(path, &bin, &blen, NULL) != LORA_OK) return -1;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dst);
    if (lora_write_file_atomic(path, bin, blen, NULL) != LORA_OK) goto done;
    snprintf(path, sizeof path, "%s/adapter_config.json", src_dir);
    if (lora_read_file(path, &text, &len, NULL) != LORA_OK) goto done;
    char *p = strstr(text, "[\"c_attn\"]");
    if (!p) goto done;
    char out[8192];
    snprintf(out, sizeof out, "%.*s\".*c_attn\"%s", (int)(p - text), text, p + 10);
    snprintf(path, sizeof path, "%s/adapter_config.json", dst);
    rc = lora_write_file_atomic(path, out, strlen(out), NULL) == LORA_OK ? 0 : -1;
done:
    free(text);
    free(bin);
    return rc;
}

static void test_errors(void) {
    char       out[2600];
    lora_error err;
    int        st;
    out_path(out, sizeof out, "never");

    st = combine2(&a_qv, 1, &e_qv2, 1, LORA_COMBINE_LINEAR, 0, out, &err);
    expect_error("linear r 8 + r 4", st, LORA_ERR_SHAPE, &err, e_qv2.dir,
                 "linear needs equal ranks", out);
    st = combine2(&d_mix, 1, &f_proj, 1, LORA_COMBINE_LINEAR, 0, out, &err);
    expect_error("linear, c_proj rank 2 vs 4", st, LORA_ERR_SHAPE, &err, f_proj.dir,
                 "h.0.attn.c_proj has rank 4", out);
    st = combine2(&a_qv, 1, &w_qv, 1, LORA_COMBINE_CAT, 0, out, &err);
    expect_error("different base models", st, LORA_ERR_SHAPE, &err, w_qv.dir, "n_embd 48", out);

    src ada = {"ada", "", NULL};
    snprintf(ada.dir, sizeof ada.dir, "%s", ada_dir);
    st = combine2(&a_qv, 1, &ada, 1, LORA_COMBINE_CAT, 0, out, &err);
    expect_error("AdaLoRA", st, LORA_ERR_UNSUPPORTED, &err, ada_dir, "AdaLoRA", out);

    st = combine2(&a_qv, 1, &b_qv, 1, LORA_COMBINE_SVD, 33, out, &err);
    expect_error("svd rank > min(in, out)", st, LORA_ERR_SHAPE, &err, a_qv.dir, "min(in, out) = 32",
                 out);
    st = combine2(&a_qv, 1, &b_qv, 1, LORA_COMBINE_SVD, 70000, out, &err);
    expect_error("svd rank > 65536", st, LORA_ERR_ARG, &err, NULL, "outside 1..65536", out);
    st = combine2(&a_qv, 1, &b_qv, 1, LORA_COMBINE_CAT, 4, out, &err);
    expect_error("rank with cat", st, LORA_ERR_ARG, &err, NULL, "combination is cat", out);
    st = combine2(&a_qv, 1, NULL, 0, LORA_COMBINE_SVD, 4, out, &err);
    expect_error("rank with one adapter", st, LORA_ERR_ARG, &err, a_qv.dir, "single adapter", out);
    st = combine2(&a_qv, NAN, &b_qv, 1, LORA_COMBINE_CAT, 0, out, &err);
    expect_error("NaN weight", st, LORA_ERR_ARG, &err, a_qv.dir, "not finite", out);

    src missing = {"missing", "", NULL};
    snprintf(missing.dir, sizeof missing.dir, "%s/no_such_adapter", root);
    st = combine2(&a_qv, 1, &missing, 1, LORA_COMBINE_CAT, 0, out, &err);
    expect_error("missing adapter", st, LORA_ERR_MISSING, &err, missing.dir, "adapter_config.json",
                 out);

    /* target_modules as a regular expression in one adapter, a list in the other */
    src regex = {"regex", "", NULL};
    snprintf(regex.dir, sizeof regex.dir, "%s/regex_qv", root);
    test_cond("regex adapter", copy_with_regex(b_qv.dir, regex.dir) == 0);
    st = combine2(&a_qv, 1, &regex, 1, LORA_COMBINE_CAT, 0, out, &err);
    expect_error("regex and list", st, LORA_ERR_UNSUPPORTED, &err, a_qv.dir,
                 "mix regular expressions and lists", out);
    char both[2600];
    out_path(both, sizeof both, "regex_twice");
    const char *dirs[2] = {regex.dir, regex.dir};
    double      w[2]    = {0.5, 0.5};
    test_condf(lora_adapters_combine(dirs, w, 2, LORA_COMBINE_CAT, 0, both, &err) == LORA_OK,
               "regex twice: %s", err.msg);
    test_cond("regular expressions joined as PEFT does",
              config_has(both, "\"target_modules\":\t\"(.*c_attn)|(.*c_attn)\""));

    lora_combine_how how;
    st = lora_combine_how_parse("sum", &how, &err);
    expect_error("unknown combination", st, LORA_ERR_ARG, &err, NULL, "'sum' (linear, cat or svd)",
                 NULL);
    test_cond("parse cat",
              lora_combine_how_parse("cat", &how, NULL) == LORA_OK && how == LORA_COMBINE_CAT);

    /* an output directory in the way: an input itself, left intact */
    st = combine2(&a_qv, 1, &b_qv, 1, LORA_COMBINE_CAT, 0, b_qv.dir, &err);
    expect_error("out is an input", st, LORA_ERR_ARG, &err, b_qv.dir, "not empty", NULL);
    test_cond("input intact", config_number(b_qv.dir, "r") == 8);
    /* an empty directory is fine, a trailing slash too */
    char empty[2700];
    out_path(out, sizeof out, "empty_out");
    mkdir(out, 0755);
    snprintf(empty, sizeof empty, "%s/", out);
    test_condf(combine2(&a_qv, 1, &b_qv, 1, LORA_COMBINE_CAT, 0, empty, &err) == LORA_OK,
               "into an empty directory: %s", err.msg);
    test_cond("written into the empty directory", config_number(out, "r") == 16);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

int main(void) {
    tiny_tmpdir(root, sizeof root, "combine");
    snprintf(model_dir, sizeof model_dir, "%s/model", root);
    snprintf(wide_dir, sizeof wide_dir, "%s/model_wide", root);
    lora_config c = tiny_config();
    C = c.n_embd, F = c.n_inner, L = c.n_layer;
    if (tiny_write(model_dir, &c, NULL, 3) != 0) return 1;
    lora_config cw = c;
    cw.n_embd      = 48;
    if (tiny_write(wide_dir, &cw, NULL, 4) != 0) return 1;

    struct {
        src        *s;
        const char *model, *targets;
        int32_t     r;
        float       alpha;
        int         rslora;
    } mk[] = {
        {&a_qv, model_dir, "q,v", 4, 8.0f, 0},  {&b_qv, model_dir, "q,v", 4, 16.0f, 0},
        {&c_qk, model_dir, "q,k", 4, 4.0f, 0},  {&d_mix, model_dir, "q,v,c_proj,c_fc", 2, 4.0f, 1},
        {&e_qv2, model_dir, "q,v", 2, 2.0f, 0}, {&f_proj, model_dir, "c_proj", 4, 8.0f, 0},
        {&w_qv, wide_dir, "q,v", 4, 8.0f, 0}};
    for (size_t i = 0; i < sizeof mk / sizeof mk[0]; i++) {
        snprintf(mk[i].s->dir, sizeof mk[i].s->dir, "%s/%s", root, mk[i].s->name);
        if (combine_make_adapter(mk[i].model, mk[i].s->dir, LORA_METHOD_LORA, mk[i].targets,
                                 mk[i].r, mk[i].alpha, mk[i].rslora, 100 + i, &mk[i].s->m))
            return 1;
    }
    snprintf(ada_dir, sizeof ada_dir, "%s/ada", root);
    if (combine_make_adapter(model_dir, ada_dir, LORA_METHOD_ADALORA, "q,v", 4, 8.0f, 0, 9, NULL))
        return 1;

    test_cat();
    test_svd();
    test_linear();
    test_errors();

    for (size_t i = 0; i < sizeof mk / sizeof mk[0]; i++)
        lora_model_free(mk[i].s->m);
    int rc = test_report("test_combine");
    if (rc == 0) nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS); /* kept when a check failed */
    return rc;
}
