/*
 * combine.c — a weighted combination of LoRA adapters (PEFT directories) written as one new
 * PEFT directory, with the semantics of PEFT's LoraModel.add_weighted_adapter for the
 * combination types linear, cat and svd (ties, dare and magnitude pruning are not done here).
 *
 * It works on files only: no base model is loaded. Each adapter i brings, per module (a layer's
 * c_attn, attn.c_proj, mlp.c_fc or mlp.c_proj), A_i (r_i, in), B_i (out, r_i) and its scale
 * s_i = alpha_i / r_i (alpha_i / sqrt(r_i) with rsLoRA). With weights w_i the new module is
 *   linear: A = sum sgn(w_i s_i) sqrt|w_i s_i| A_i,  B = sum sqrt|w_i s_i| B_i   (equal ranks)
 *   cat:    A = [w_1 s_1 A_1; w_2 s_2 A_2; ...],    B = [B_1 B_2 ...]          (ranks add up)
 *   svd:    dW = sum w_i s_i B_i A_i = U S V^T, B = U_R S_R, A = V_R^T          (rank R)
 * and the new adapter's scale is 1 (r = lora_alpha = R). PEFT's linear is surprising and kept
 * as is: B A = sum_ij sgn(w_j s_j) sqrt|w_i s_i w_j s_j| B_i A_j holds cross terms, so it is
 * sum w_i s_i B_i A_i only for one adapter (or adapters whose A or B coincide). Only cat is the
 * exact weighted sum; svd is its best rank-R approximation (Eckart-Young).
 *
 * It is not a loader: the result is a directory that lora_adapter_load (or PEFT) reads.
 */
#include "core/error.h"
#include "io/fileutil.h"
#include "io/safetensors.h"
#include "peft/adalora.h"
#include "peft/peft.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* R = rank, in / out = the module's input / output width, C = n_embd, F = n_inner */

/* LAPACK as OpenBLAS exports it (Fortran convention: every argument by reference, the hidden
 * length of the character argument last). */
extern void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda,
                    double *s, double *u, const int *ldu, double *vt, const int *ldvt, double *work,
                    const int *lwork, int *iwork, int *info, size_t jobz_len);

#define MAX_RANK 65536

typedef struct cmb_module {
    int32_t  layer;
    uint32_t target; /* LORA_TARGET_C_ATTN, _ATTN_PROJ, _MLP_FC or _MLP_PROJ */
    int32_t  R, in, out;
    double   scale;    /* the adapter's alpha / R (or / sqrt R); 1 for an output module */
    float   *A;        /* (R, in), owned */
    float   *B;        /* (out, R), owned */
    char     hint[16]; /* c_attn slices from the metadata ("q,v"), "" when none */
} cmb_module;

typedef struct cmb_adapter {
    const char *dir;   /* borrowed */
    cJSON      *cfg;   /* adapter_config.json, owned */
    int32_t     r_cfg; /* r, or the largest of r and rank_pattern's values (PEFT's rank) */
    int32_t     C, F;  /* base widths seen in the tensors; 0 when no module tells */
    cmb_module *mods;  /* sorted by (layer, target), owned */
    int32_t     n_mods;
} cmb_adapter;

static const char *how_name(lora_combine_how how) {
    return how == LORA_COMBINE_LINEAR ? "linear" : how == LORA_COMBINE_CAT ? "cat" : "svd";
}

lora_status lora_combine_how_parse(const char *s, lora_combine_how *out, lora_error *err) {
    static const lora_combine_how all[3] = {LORA_COMBINE_LINEAR, LORA_COMBINE_CAT,
                                            LORA_COMBINE_SVD};
    for (int i = 0; s && i < 3; i++)
        if (!strcmp(s, how_name(all[i]))) {
            *out = all[i];
            return LORA_OK;
        }
    return lora_errorf(err, LORA_ERR_ARG, "unknown combination '%s' (linear, cat or svd)",
                       s ? s : "(null)");
}

static void module_key(char *buf, size_t n, int32_t layer, uint32_t target) {
    snprintf(buf, n, "h.%d.%s", (int)layer, peft_module_name(target));
}

static int module_cmp(const void *a, const void *b) {
    const cmb_module *x = a, *y = b;
    if (x->layer != y->layer) return x->layer < y->layer ? -1 : 1;
    return x->target < y->target ? -1 : x->target > y->target;
}

static const cmb_module *find_module(const cmb_adapter *a, int32_t layer, uint32_t target) {
    cmb_module key = {0};
    key.layer      = layer;
    key.target     = target;
    return bsearch(&key, a->mods, (size_t)a->n_mods, sizeof key, module_cmp);
}

static void modules_free(cmb_module *mods, int32_t n) {
    for (int32_t i = 0; mods && i < n; i++) {
        free(mods[i].A);
        free(mods[i].B);
    }
    free(mods);
}

static void adapter_free(cmb_adapter *a) {
    modules_free(a->mods, a->n_mods);
    cJSON_Delete(a->cfg);
    memset(a, 0, sizeof *a);
}

/* ---- reading one adapter ---- */

/* A module's tensors while the file is open. */
typedef struct raw_module {
    int32_t          layer;
    uint32_t         target;
    const st_tensor *A, *B;
} raw_module;

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* Copies one tensor to owned F32, refusing NaN and infinities. */
static lora_status tensor_copy(float **out, const st_tensor *t, const char *path, lora_error *err) {
    *out = malloc((size_t)t->numel * sizeof(float));
    if (!*out) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
    lora_status st = st_to_f32(*out, t, path, err);
    if (st == LORA_OK && !all_finite(*out, (size_t)t->numel))
        st = lora_errorf(err, LORA_ERR_FORMAT, "%s: tensor '%s' holds NaN or infinite values", path,
                         t->name);
    return st;
}

/* Records the base widths a module implies: c_attn (C -> 3C), attn.c_proj (C -> C),
 * mlp.c_fc (C -> F), mlp.c_proj (F -> C). */
static lora_status note_widths(cmb_adapter *a, const cmb_module *mo, const char *path,
                               lora_error *err) {
    char    mod[64];
    int32_t C = 0, F = 0;
    module_key(mod, sizeof mod, mo->layer, mo->target);
    switch (mo->target) {
    case LORA_TARGET_C_ATTN:
        if ((int64_t)mo->out != 3 * (int64_t)mo->in)
            return lora_errorf(err, LORA_ERR_SHAPE,
                               "%s: %s maps %d inputs to %d outputs, not to "
                               "3 x %d (hint: not a GPT-2 adapter?)",
                               path, mod, (int)mo->in, (int)mo->out, (int)mo->in);
        C = mo->in;
        break;
    case LORA_TARGET_ATTN_PROJ:
        if (mo->out != mo->in)
            return lora_errorf(err, LORA_ERR_SHAPE,
                               "%s: %s maps %d inputs to %d outputs (hint: "
                               "not a GPT-2 adapter?)",
                               path, mod, (int)mo->in, (int)mo->out);
        C = mo->in;
        break;
    case LORA_TARGET_MLP_FC:
        C = mo->in, F = mo->out;
        break;
    default:
        F = mo->in, C = mo->out;
        break;
    }
    if ((a->C && a->C != C) || (F && a->F && a->F != F))
        return lora_errorf(err, LORA_ERR_SHAPE,
                           "%s: %s implies n_embd %d, n_inner %d but other "
                           "modules say n_embd %d, n_inner %d",
                           path, mod, (int)C, (int)(F ? F : a->F), (int)a->C, (int)a->F);
    a->C = C;
    if (F) a->F = F;
    return LORA_OK;
}

/* Pairs the file's lora_A / lora_B tensors per module; *raw is owned. */
static lora_status pair_tensors(const st_file *f, raw_module **raw, int32_t *n_raw,
                                lora_error *err) {
    raw_module *r = calloc((size_t)f->n_tensors + 1, sizeof *r);
    int32_t     n = 0;
    if (!r) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", f->path);
    for (int32_t i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        int32_t          layer;
        uint32_t         target;
        int              is_b;
        if (!peft_key_parse(t->name, &layer, &target, &is_b)) {
            free(r);
            return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                               "%s: tensor '%s' is not a LoRA weight "
                               "of a GPT-2 linear (c_attn, c_proj, c_fc)",
                               f->path, t->name);
        }
        int32_t k = 0;
        while (k < n && !(r[k].layer == layer && r[k].target == target))
            k++;
        if (k == n) r[n++] = (raw_module){layer, target, NULL, NULL};
        const st_tensor **slot = is_b ? &r[k].B : &r[k].A;
        if (*slot) {
            char mod[64];
            module_key(mod, sizeof mod, layer, target);
            free(r);
            return lora_errorf(err, LORA_ERR_FORMAT,
                               "%s: %s has two lora_%c tensors ('%s' and "
                               "'%s')",
                               f->path, mod, is_b ? 'B' : 'A', (*slot)->name, t->name);
        }
        *slot = t;
    }
    *raw   = r;
    *n_raw = n;
    return LORA_OK;
}

/* Checks one module's shapes against each other and the config; fills mo (A and B copied). */
static lora_status read_module(cmb_module *mo, const raw_module *rm, const st_file *f,
                               const cJSON *cfg, const lora_adapter_params *p, lora_error *err) {
    char mod[64];
    module_key(mod, sizeof mod, rm->layer, rm->target);
    if (!rm->A || !rm->B)
        return lora_errorf(err, LORA_ERR_MISSING, "%s: %s has lora_%s but no lora_%s", f->path, mod,
                           rm->A ? "A" : "B", rm->A ? "B" : "A");
    const st_tensor *A = rm->A, *B = rm->B;
    if (A->ndim != 2 || A->shape[0] < 1 || A->shape[0] > MAX_RANK || A->shape[1] < 1 ||
        A->shape[1] > INT32_MAX)
        return lora_errorf(err, LORA_ERR_SHAPE,
                           "%s: tensor '%s' must be (r, in) with 1 <= r <= "
                           "%d",
                           f->path, A->name, MAX_RANK);
    if (B->ndim != 2 || B->shape[1] != A->shape[0] || B->shape[0] < 1 || B->shape[0] > INT32_MAX)
        return lora_errorf(err, LORA_ERR_SHAPE,
                           "%s: tensor '%s' must be (out, %lld) to match "
                           "'%s'",
                           f->path, B->name, (long long)A->shape[0], A->name);
    int32_t R = (int32_t)A->shape[0];
    double  prank =
        peft_pattern_number(cJSON_GetObjectItemCaseSensitive(cfg, "rank_pattern"), mod, p->r);
    if ((double)R != prank)
        return lora_errorf(err, LORA_ERR_SHAPE,
                           "%s: %s has rank %d but adapter_config.json says "
                           "%g",
                           f->path, mod, (int)R, prank);
    double alpha =
        peft_pattern_number(cJSON_GetObjectItemCaseSensitive(cfg, "alpha_pattern"), mod, p->alpha);
    *mo            = (cmb_module){rm->layer,
                                  rm->target,
                                  R,
                                  (int32_t)A->shape[1],
                                  (int32_t)B->shape[0],
                       p->use_rslora ? alpha / sqrt((double)R) : alpha / (double)R,
                                  NULL,
                                  NULL,
                                  ""};
    lora_status st = tensor_copy(&mo->A, A, f->path, err);
    if (st == LORA_OK) st = tensor_copy(&mo->B, B, f->path, err);
    if (st == LORA_OK && rm->target == LORA_TARGET_C_ATTN &&
        !peft_slices_hint(st_meta(f, PEFT_SLICES_META), rm->layer, mo->hint, sizeof mo->hint))
        mo->hint[0] = '\0';
    return st;
}

/* PEFT's rank of an adapter for the rank checks: r, or the largest of r and rank_pattern. */
static int32_t config_rank(const cJSON *cfg, int32_t r) {
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(cfg, "rank_pattern")) {
        if (cJSON_IsNumber(it) && it->valuedouble > r && it->valuedouble <= MAX_RANK)
            r = (int32_t)it->valuedouble;
    }
    return r;
}

static lora_status read_adapter(cmb_adapter *a, const char *dir, lora_error *err) {
    char                cfg_path[4096], st_path[4096];
    lora_adapter_params p;
    st_file             f;
    raw_module         *raw   = NULL;
    int32_t             n_raw = 0;
    lora_status         st;
    memset(&f, 0, sizeof f);
    memset(a, 0, sizeof *a);
    a->dir = dir;
    if ((st = lora_path_join(cfg_path, sizeof cfg_path, dir, "adapter_config.json", err)) ||
        (st = lora_path_join(st_path, sizeof st_path, dir, "adapter_model.safetensors", err)))
        return st;
    if (adalora_dir_is_adalora(dir))
        return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                           "%s: an AdaLoRA adapter; only plain LoRA "
                           "adapters can be combined (PEFT's add_weighted_adapter refuses AdaLoRA "
                           "too)",
                           cfg_path);
    if ((st = peft_config_read(cfg_path, &p, &a->cfg, err)) != LORA_OK) return st;
    a->r_cfg = config_rank(a->cfg, p.r);
    if ((st = st_open(&f, st_path, err)) != LORA_OK) goto done;
    if ((st = pair_tensors(&f, &raw, &n_raw, err)) != LORA_OK) goto done;
    if (n_raw == 0) {
        st = lora_errorf(err, LORA_ERR_FORMAT, "%s: no LoRA tensors", st_path);
        goto done;
    }
    a->mods = calloc((size_t)n_raw, sizeof *a->mods);
    if (!a->mods) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", st_path);
        goto done;
    }
    for (int32_t k = 0; k < n_raw && st == LORA_OK; k++) {
        st        = read_module(&a->mods[k], &raw[k], &f, a->cfg, &p, err);
        a->n_mods = k + 1;
        if (st == LORA_OK) st = note_widths(a, &a->mods[k], st_path, err);
    }
    qsort(a->mods, (size_t)a->n_mods, sizeof *a->mods, module_cmp);
done:
    free(raw);
    st_close(&f);
    if (st != LORA_OK) adapter_free(a);
    return st;
}

/* Adapters of one combination must come from one base model. */
static lora_status check_same_base(const cmb_adapter *ad, int32_t n, lora_error *err) {
    for (int32_t i = 1; i < n; i++)
        for (int32_t j = 0; j < i; j++) {
            const cmb_adapter *x = &ad[j], *y = &ad[i];
            const char        *what = NULL;
            int32_t            vx = 0, vy = 0;
            if (x->C && y->C && x->C != y->C)
                what = "n_embd", vx = x->C, vy = y->C;
            else if (x->F && y->F && x->F != y->F)
                what = "n_inner", vx = x->F, vy = y->F;
            if (what)
                return lora_errorf(err, LORA_ERR_SHAPE,
                                   "%s: adapter for a base model with %s "
                                   "%d, but %s is for %s %d (hint: combine adapters of one base "
                                   "model)",
                                   y->dir, what, (int)vy, x->dir, what, (int)vx);
        }
    return LORA_OK;
}

/* ---- the three combinations, one module at a time ---- */

/* The adapters that have the module, their weights and scales. */
typedef struct present {
    const cmb_module *mo;
    double            w;   /* the user's weight */
    const char       *dir; /* the adapter's directory, for messages */
} present;

static lora_status alloc_out(cmb_module *out, int32_t R, lora_error *err) {
    out->R = R;
    out->A = calloc((size_t)R * (size_t)out->in, sizeof(float));
    out->B = calloc((size_t)out->out * (size_t)R, sizeof(float));
    if (!out->A || !out->B) return lora_errorf(err, LORA_ERR_NOMEM, "out of memory");
    return LORA_OK;
}

/* PEFT's linear: sqrt|w s| on both factors, the sign of w s on A only. */
static lora_status combine_linear(cmb_module *out, const present *p, int32_t np, lora_error *err) {
    int32_t R = p[0].mo->R;
    for (int32_t k = 1; k < np; k++)
        if (p[k].mo->R != R) {
            char mod[64];
            module_key(mod, sizeof mod, out->layer, out->target);
            return lora_errorf(err, LORA_ERR_SHAPE,
                               "%s: %s has rank %d but %s has rank %d "
                               "there; linear needs equal ranks (hint: use cat or svd)",
                               p[k].dir, mod, (int)p[k].mo->R, p[0].dir, (int)R);
        }
    lora_status st = alloc_out(out, R, err);
    if (st != LORA_OK) return st;
    size_t  na = (size_t)R * (size_t)out->in, nb = (size_t)out->out * (size_t)R;
    double *acc = calloc(na > nb ? na : nb, sizeof(double));
    if (!acc) return lora_errorf(err, LORA_ERR_NOMEM, "out of memory");
    for (int side = 0; side < 2; side++) {
        size_t n = side ? nb : na;
        memset(acc, 0, n * sizeof(double));
        for (int32_t k = 0; k < np; k++) {
            double       ws = p[k].w * p[k].mo->scale;
            double       c  = sqrt(fabs(ws)) * (side == 0 && ws < 0 ? -1.0 : 1.0);
            const float *x  = side ? p[k].mo->B : p[k].mo->A;
            for (size_t i = 0; i < n; i++)
                acc[i] += c * (double)x[i];
        }
        float *y = side ? out->B : out->A;
        for (size_t i = 0; i < n; i++)
            y[i] = (float)acc[i];
    }
    free(acc);
    return LORA_OK;
}

/* PEFT's cat: w s folded into each A, the adapters' ranks stacked in order, zeros after. */
static lora_status combine_cat(cmb_module *out, const present *p, int32_t np, int32_t R,
                               lora_error *err) {
    lora_status st = alloc_out(out, R, err);
    if (st != LORA_OK) return st;
    int32_t k0 = 0;
    for (int32_t k = 0; k < np; k++) {
        const cmb_module *mo = p[k].mo;
        double            ws = p[k].w * mo->scale;
        LORA_ASSERT(k0 + mo->R <= R);
        for (size_t i = 0; i < (size_t)mo->R * (size_t)out->in; i++)
            out->A[(size_t)k0 * (size_t)out->in + i] = (float)(ws * (double)mo->A[i]);
        for (int32_t row = 0; row < out->out; row++)
            memcpy(out->B + (size_t)row * (size_t)R + (size_t)k0, mo->B + (size_t)row * mo->R,
                   (size_t)mo->R * sizeof(float));
        k0 += mo->R;
    }
    return LORA_OK;
}

/*
 * PEFT's svd takes the SVD of the whole weighted dW = sum w_i s_i B_i A_i (out, in). That matrix
 * is the product Bc Ac of the stacked factors Bc = [w_1 s_1 B_1 ...] (out, K) and
 * Ac = [A_1; ...] (K, in), K = sum r_i, so when K <= min(in, out) the same singular triplets
 * come from QR factorisations and the SVD of a K x K matrix (LAPACK's dgeqrf, dorgqr, dgesdd):
 *   Bc = Qb Rb, Ac^T = Qa Ra, dW = Qb (Rb Ra^T) Qa^T, Rb Ra^T = Um S Vm^T,
 *   U = Qb Um, V = Qa Vm
 * — O((in + out) K^2) instead of O(in out min(in, out)), which on GPT-2 small's shapes is the
 * difference between seconds per module and microseconds. Otherwise (or for R > K, where the
 * vectors past dW's rank must complete a basis as PEFT's full SVD does) dW is formed and
 * factored whole. Everything here is column-major, as LAPACK wants, and in double.
 */
extern void dgeqrf_(const int *m, const int *n, double *a, const int *lda, double *tau,
                    double *work, const int *lwork, int *info);
extern void dorgqr_(const int *m, const int *n, const int *k, double *a, const int *lda,
                    const double *tau, double *work, const int *lwork, int *info);

/* The LAPACK routines' optimal workspace, from a query's result. */
static double *lapack_work(double query, int *lwork) {
    *lwork = query >= 1 && query < 2e9 ? (int)query : 1;
    return malloc((size_t)*lwork * sizeof(double));
}

/* a (m, n) column-major, destroyed = u (m, k) diag(s) vt (k, n), k = min(m, n). Returns
 * LAPACK's info (0 ok), or -1 when out of memory. */
static int svd_thin(double *a, int m, int n, double *s, double *u, double *vt) {
    int    k = m < n ? m : n, lwork = -1, info = 0;
    double q     = 0;
    int   *iwork = malloc((size_t)8 * (size_t)k * sizeof(int));
    if (!iwork) return -1;
    dgesdd_("S", &m, &n, a, &m, s, u, &m, vt, &k, &q, &lwork, iwork, &info, 1);
    double *work = info == 0 ? lapack_work(q, &lwork) : NULL;
    if (work)
        dgesdd_("S", &m, &n, a, &m, s, u, &m, vt, &k, work, &lwork, iwork, &info, 1);
    else if (info == 0)
        info = -1;
    free(work);
    free(iwork);
    return info;
}

/* a (m, n), m >= n, column-major: replaced by Q (m, n) with orthonormal columns; r (n, n)
 * receives R (zeros below the diagonal). Returns LAPACK's info, or -1 when out of memory. */
static int qr_thin(double *a, int m, int n, double *r) {
    int    lwork = -1, info = 0;
    double q = 0, *tau = malloc((size_t)n * sizeof(double)), *work = NULL;
    if (!tau) return -1;
    dgeqrf_(&m, &n, a, &m, tau, &q, &lwork, &info);
    if (info == 0 && (work = lapack_work(q, &lwork)) != NULL)
        dgeqrf_(&m, &n, a, &m, tau, work, &lwork, &info);
    else if (info == 0)
        info = -1;
    for (int j = 0; info == 0 && j < n; j++)
        for (int i = 0; i < n; i++)
            r[i + (size_t)j * n] = i <= j ? a[i + (size_t)j * m] : 0.0;
    free(work);
    work  = NULL;
    lwork = -1;
    if (info == 0) dorgqr_(&m, &n, &n, a, &m, tau, &q, &lwork, &info);
    if (info == 0 && (work = lapack_work(q, &lwork)) != NULL)
        dorgqr_(&m, &n, &n, a, &m, tau, work, &lwork, &info);
    else if (info == 0)
        info = -1;
    free(work);
    free(tau);
    return info;
}

/* The stacked factors, column-major: bc (out, K) = [w_1 s_1 B_1 ...] and act (in, K) = Ac^T
 * (the rows of every A_i, i.e. Ac row-major). */
static void stack_factors(const cmb_module *out, const present *p, int32_t np, double *bc,
                          double *act) {
    int32_t k0 = 0;
    for (int32_t k = 0; k < np; k++) {
        const cmb_module *mo = p[k].mo;
        double            ws = p[k].w * mo->scale;
        for (int32_t j = 0; j < mo->R; j++) {
            for (int32_t o = 0; o < out->out; o++)
                bc[(size_t)o + (size_t)(k0 + j) * out->out] = ws * mo->B[(size_t)o * mo->R + j];
            for (int32_t i = 0; i < out->in; i++)
                act[(size_t)i + (size_t)(k0 + j) * out->in] = mo->A[(size_t)j * out->in + i];
        }
        k0 += mo->R;
    }
}

/* U (out, k) and V (in, k), column-major, of dW's SVD through the QR route; K columns. */
static int svd_low_rank(int in, int o, int K, double *bc, double *act, double *s, double *U,
                        double *V) {
    double *rb   = malloc((size_t)K * K * sizeof(double)),
           *ra   = malloc((size_t)K * K * sizeof(double));
    double *mm   = malloc((size_t)K * K * sizeof(double)),
           *um   = malloc((size_t)K * K * sizeof(double));
    double *vtm  = malloc((size_t)K * K * sizeof(double));
    int     info = rb && ra && mm && um && vtm ? 0 : -1;
    if (info == 0) info = qr_thin(bc, o, K, rb);   /* bc becomes Qb */
    if (info == 0) info = qr_thin(act, in, K, ra); /* act becomes Qa */
    if (info == 0) {
        cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, K, K, K, 1.0, rb, K, ra, K, 0.0, mm,
                    K);
        info = svd_thin(mm, K, K, s, um, vtm);
    }
    if (info == 0) {
        cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, o, K, K, 1.0, bc, o, um, K, 0.0, U,
                    o);
        cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, in, K, K, 1.0, act, in, vtm, K, 0.0, V,
                    in);
    }
    free(vtm);
    free(um);
    free(mm);
    free(ra);
    free(rb);
    return info;
}

/* U (out, k) and V (in, k), column-major, k = min(in, out), of dW = bc act^T formed whole. */
static int svd_full(int in, int o, int K, const double *bc, const double *act, double *s, double *U,
                    double *V) {
    int     k  = in < o ? in : o;
    double *dw = malloc((size_t)o * in * sizeof(double)),
           *vt = malloc((size_t)k * o * sizeof(double));
    int info   = dw && vt ? 0 : -1;
    if (info == 0) {
        /* X = dW^T = act bc^T (in, out) = V' S U'^T: V' is V, and U'^T = vt */
        cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, in, o, K, 1.0, act, in, bc, o, 0.0, dw,
                    in);
        info = svd_thin(dw, in, o, s, V, vt);
    }
    for (int j = 0; info == 0 && j < k; j++)
        for (int r = 0; r < o; r++)
            U[(size_t)r + (size_t)j * o] = vt[(size_t)j + (size_t)r * k];
    free(vt);
    free(dw);
    return info;
}

/* PEFT's svd: the weighted dW factored and cut to rank R (B = U_R S_R, A = V_R^T). */
static lora_status combine_svd(cmb_module *out, const present *p, int32_t np, int32_t R,
                               lora_error *err) {
    int in = out->in, o = out->out, kmin = in < o ? in : o, K = 0;
    for (int32_t k = 0; k < np; k++)
        K += p[k].mo->R;
    int     low = K <= kmin && R <= K, k = low ? K : kmin;
    double *bc    = malloc((size_t)o * K * sizeof(double)),
           *act   = malloc((size_t)in * K * sizeof(double));
    double     *s = malloc((size_t)k * sizeof(double)), *U = malloc((size_t)o * k * sizeof(double));
    double     *V    = malloc((size_t)in * k * sizeof(double));
    lora_status st   = LORA_OK;
    int         info = bc && act && s && U && V ? 0 : -1;
    LORA_ASSERT(R >= 1 && R <= kmin);
    if (info == 0) {
        stack_factors(out, p, np, bc, act);
        info =
            low ? svd_low_rank(in, o, K, bc, act, s, U, V) : svd_full(in, o, K, bc, act, s, U, V);
    }
    if (info != 0) {
        char mod[64];
        module_key(mod, sizeof mod, out->layer, out->target);
        st = info < 0 ? lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory for the SVD of %s",
                                    p[0].dir, mod)
                      : lora_errorf(err, LORA_ERR_FORMAT,
                                    "%s: the SVD of the combined %s did "
                                    "not converge (LAPACK info %d)",
                                    p[0].dir, mod, info);
    }
    if (st == LORA_OK) st = alloc_out(out, R, err);
    if (st == LORA_OK) {
        for (int32_t r = 0; r < o; r++)
            for (int32_t j = 0; j < R; j++)
                out->B[(size_t)r * R + j] = (float)(U[(size_t)r + (size_t)j * o] * s[j]);
        for (int32_t j = 0; j < R; j++)
            for (int32_t i = 0; i < in; i++)
                out->A[(size_t)j * in + i] = (float)V[(size_t)i + (size_t)j * in];
    }
    free(V);
    free(U);
    free(s);
    free(act);
    free(bc);
    return st;
}

/* Keeps the c_attn slice metadata only when every input has the same slices for the layer and
 * the combined B still has their block structure (checked on the values written). */
static void keep_slices(cmb_module *out, const present *p, int32_t np) {
    out->hint[0] = '\0';
    if (out->target != LORA_TARGET_C_ATTN || !p[0].mo->hint[0]) return;
    for (int32_t k = 1; k < np; k++)
        if (strcmp(p[k].mo->hint, p[0].mo->hint)) return;
    if (peft_c_attn_slices(out->B, out->in, out->R, p[0].mo->hint))
        memcpy(out->hint, p[0].mo->hint, sizeof out->hint);
}

/* ---- the new adapter's config ---- */

static int set_item(cJSON *obj, const char *key, cJSON *item) {
    if (!item) return 0;
    if (cJSON_GetObjectItemCaseSensitive(obj, key))
        return cJSON_ReplaceItemInObjectCaseSensitive(obj, key, item);
    return cJSON_AddItemToObject(obj, key, item);
}

/* PEFT's union of target_modules: lists are merged (first appearance order), regular
 * expressions joined as "(a)|(b)"; a missing list is the modules the adapter holds. */
static lora_status union_targets(const cmb_adapter *ad, int32_t n, cJSON **out, lora_error *err) {
    int    n_str       = 0;
    cJSON *list        = cJSON_CreateArray();
    char   regex[4096] = "";
    size_t rl          = 0;
    *out               = NULL;
    if (!list) return lora_errorf(err, LORA_ERR_NOMEM, "out of memory");
    for (int32_t i = 0; i < n; i++) {
        const cJSON *tm = cJSON_GetObjectItemCaseSensitive(ad[i].cfg, "target_modules");
        if (cJSON_IsString(tm)) {
            n_str++;
            rl += (size_t)snprintf(regex + rl, rl < sizeof regex ? sizeof regex - rl : 0, "%s(%s)",
                                   i ? "|" : "", tm->valuestring);
            continue;
        }
        cJSON *names = cJSON_CreateArray();
        if (!names) break;
        if (cJSON_IsArray(tm)) {
            const cJSON *it;
            cJSON_ArrayForEach(it, tm) {
                if (!cJSON_IsString(it)) {
                    cJSON_Delete(names);
                    cJSON_Delete(list);
                    return lora_errorf(err, LORA_ERR_FORMAT,
                                       "%s: target_modules holds a "
                                       "non-string",
                                       ad[i].dir);
                }
                cJSON_AddItemToArray(names, cJSON_CreateString(it->valuestring));
            }
        } else {
            for (int32_t k = 0; k < ad[i].n_mods; k++)
                cJSON_AddItemToArray(names,
                                     cJSON_CreateString(peft_target_entry(ad[i].mods[k].target)));
        }
        const cJSON *it;
        cJSON_ArrayForEach(it, names) {
            int          dup = 0;
            const cJSON *have;
            cJSON_ArrayForEach(have, list) dup |= !strcmp(have->valuestring, it->valuestring);
            if (!dup) cJSON_AddItemToArray(list, cJSON_CreateString(it->valuestring));
        }
        cJSON_Delete(names);
    }
    if (n_str && n_str != n) {
        cJSON_Delete(list);
        return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                           "%s: target_modules mix regular "
                           "expressions and lists of names across the adapters; PEFT cannot "
                           "combine them",
                           ad[0].dir);
    }
    if (n_str) {
        cJSON_Delete(list);
        if (rl >= sizeof regex)
            return lora_errorf(err, LORA_ERR_ARG, "%s: the joined target_modules are too long",
                               ad[0].dir);
        list = cJSON_CreateString(regex);
    }
    if (!list) return lora_errorf(err, LORA_ERR_NOMEM, "out of memory");
    *out = list;
    return LORA_OK;
}

static lora_status make_config(const cmb_adapter *ad, int32_t n, const cmb_module *mods,
                               int32_t n_mods, int32_t R, char **json, lora_error *err) {
    cJSON      *cfg = cJSON_Duplicate(ad[0].cfg, 1), *targets = NULL;
    cJSON      *rank_pat = cJSON_CreateObject(), *alpha_pat = cJSON_CreateObject();
    lora_status st = union_targets(ad, n, &targets, err);
    *json          = NULL;
    if (st == LORA_OK && (!cfg || !rank_pat || !alpha_pat))
        st = lora_errorf(err, LORA_ERR_NOMEM, "out of memory");
    for (int32_t i = 0; st == LORA_OK && i < n_mods; i++)
        if (mods[i].R != R) { /* a linear module of another rank than the config's */
            char mod[64];
            module_key(mod, sizeof mod, mods[i].layer, mods[i].target);
            cJSON_AddNumberToObject(rank_pat, mod, mods[i].R);
            cJSON_AddNumberToObject(alpha_pat, mod, mods[i].R);
        }
    if (st == LORA_OK) {
        /* Scale 1 everywhere: r = lora_alpha and use_rslora false. PEFT's older releases kept
         * the first adapter's use_rslora, which made the scale alpha / sqrt(r) = sqrt(r) for
         * rsLoRA inputs; PEFT has since fixed that, and this follows the fix.
         * Each item belongs to cfg once set_item succeeds; the rest are freed below. */
        int ok = set_item(cfg, "r", cJSON_CreateNumber(R)) &&
                 set_item(cfg, "lora_alpha", cJSON_CreateNumber(R)) &&
                 set_item(cfg, "use_rslora", cJSON_CreateFalse()) &&
                 set_item(cfg, "inference_mode", cJSON_CreateTrue());
        if (ok && (ok = set_item(cfg, "target_modules", targets))) targets = NULL;
        if (ok && (ok = set_item(cfg, "rank_pattern", rank_pat))) rank_pat = NULL;
        if (ok && (ok = set_item(cfg, "alpha_pattern", alpha_pat))) alpha_pat = NULL;
        *json = ok ? cJSON_Print(cfg) : NULL;
        if (!*json) st = lora_errorf(err, LORA_ERR_NOMEM, "out of memory");
    }
    cJSON_Delete(targets);
    cJSON_Delete(rank_pat);
    cJSON_Delete(alpha_pat);
    cJSON_Delete(cfg);
    return st;
}

static lora_status make_tensors(st_writer *w, const cmb_module *mods, int32_t n_mods,
                                lora_error *err) {
    char        slices[1024] = "", key[160], mod[64];
    size_t      sl           = 0;
    lora_status st           = LORA_OK;
    for (int32_t i = 0; st == LORA_OK && i < n_mods; i++) {
        const cmb_module *o     = &mods[i];
        int64_t           sa[2] = {o->R, o->in}, sb[2] = {o->out, o->R};
        module_key(mod, sizeof mod, o->layer, o->target);
        snprintf(key, sizeof key, "base_model.model.transformer.%s.lora_A.weight", mod);
        st = st_writer_add(w, key, ST_F32, 2, sa, o->A, err);
        snprintf(key, sizeof key, "base_model.model.transformer.%s.lora_B.weight", mod);
        if (st == LORA_OK) st = st_writer_add(w, key, ST_F32, 2, sb, o->B, err);
        if (o->hint[0] && sl < sizeof slices)
            sl += (size_t)snprintf(slices + sl, sizeof slices - sl, "%s%d:%s", sl ? ";" : "",
                                   (int)o->layer, o->hint);
    }
    if (st == LORA_OK) st = st_writer_meta(w, "format", "pt", err);
    if (st == LORA_OK && sl && sl < sizeof slices)
        st = st_writer_meta(w, PEFT_SLICES_META, slices, err);
    return st;
}

/* ---- writing the directory atomically ---- */

static void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    (void)fsync(fd);
    close(fd);
}

static void remove_tmp_dir(const char *tmp) {
    char path[4300];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", tmp);
    unlink(path);
    snprintf(path, sizeof path, "%s/adapter_config.json", tmp);
    unlink(path);
    rmdir(tmp);
}

/* 1 when dir has no entries besides "." and "..". */
static int dir_is_empty(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int            empty = 1;
    while (empty && (e = readdir(d)))
        empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
    closedir(d);
    return empty;
}

/* Writes both files into OUT.tmp.<pid>, then renames that directory onto OUT (which may exist
 * only as an empty directory). */
static lora_status write_dir(const char *out_dir, st_writer *w, const char *json, lora_error *err) {
    char        out[4096], tmp[4200], path[4300];
    size_t      len = strlen(out_dir);
    struct stat sb;
    while (len > 1 && out_dir[len - 1] == '/')
        len--;
    if (len == 0 || len >= sizeof out || (len == 1 && out_dir[0] == '/'))
        return lora_errorf(err, LORA_ERR_ARG, "%s: not a usable output directory", out_dir);
    memcpy(out, out_dir, len);
    out[len] = '\0';
    if (stat(out, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode))
            return lora_errorf(err, LORA_ERR_IO, "%s: exists and is not a directory", out);
        if (!dir_is_empty(out))
            return lora_errorf(err, LORA_ERR_ARG,
                               "%s: exists and is not empty (hint: choose a "
                               "new output directory)",
                               out);
    }
    char *slash = strrchr(out, '/');
    if (slash && slash != out) {
        *slash         = '\0';
        lora_status st = lora_mkdirs(out, err);
        *slash         = '/';
        if (st != LORA_OK) return st;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", out, (int)getpid());
    remove_tmp_dir(tmp); /* a leftover of an earlier run with this pid */
    if (mkdir(tmp, 0755) != 0)
        return lora_errorf(err, LORA_ERR_IO, "%s: cannot create directory: %s", tmp,
                           strerror(errno));
    lora_status st;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", tmp);
    st = st_writer_write(w, path, err);
    snprintf(path, sizeof path, "%s/adapter_config.json", tmp);
    if (st == LORA_OK) st = lora_write_file_atomic(path, json, strlen(json), err);
    if (st == LORA_OK) {
        fsync_dir(tmp);
        if (rename(tmp, out) != 0)
            st = lora_errorf(err, LORA_ERR_IO, "%s: cannot rename %s into place: %s", out, tmp,
                             strerror(errno));
    }
    if (st != LORA_OK) {
        remove_tmp_dir(tmp);
        return st;
    }
    if (slash && slash != out) *slash = '\0';
    fsync_dir(slash == out ? "/" : slash ? out : ".");
    return LORA_OK;
}

/* ---- the whole combination ---- */

/* The new rank, checked as PEFT checks it. */
static lora_status new_rank(const cmb_adapter *ad, int32_t n, lora_combine_how how,
                            int32_t svd_rank, int32_t *R, lora_error *err) {
    int64_t sum = 0;
    int32_t max = 0;
    for (int32_t i = 0; i < n; i++) {
        if (how == LORA_COMBINE_LINEAR && ad[i].r_cfg != ad[0].r_cfg)
            return lora_errorf(err, LORA_ERR_SHAPE,
                               "%s: r = %d but %s has r = %d; linear "
                               "needs equal ranks (hint: use cat or svd)",
                               ad[i].dir, (int)ad[i].r_cfg, ad[0].dir, (int)ad[0].r_cfg);
        sum += ad[i].r_cfg;
        if (ad[i].r_cfg > max) max = ad[i].r_cfg;
    }
    *R = how == LORA_COMBINE_LINEAR ? ad[0].r_cfg
         : how == LORA_COMBINE_CAT  ? (int32_t)(sum < MAX_RANK ? sum : MAX_RANK + 1)
         : svd_rank > 0             ? svd_rank
                                    : max;
    if (*R > MAX_RANK)
        return lora_errorf(err, LORA_ERR_SHAPE, "%s: the combined rank exceeds %d", ad[0].dir,
                           MAX_RANK);
    return LORA_OK;
}

static lora_status check_args(const char *const *dirs, const double *weights, int32_t n,
                              lora_combine_how *how, int32_t svd_rank, const char *out_dir,
                              lora_error *err) {
    if (!dirs || !weights || !out_dir || n < 1 || n > 4096)
        return lora_errorf(err, LORA_ERR_ARG,
                           "combine: need 1 to 4096 adapters, their weights "
                           "and an output directory");
    if (*how != LORA_COMBINE_LINEAR && *how != LORA_COMBINE_CAT && *how != LORA_COMBINE_SVD)
        return lora_errorf(err, LORA_ERR_ARG, "combine: unknown combination %d", (int)*how);
    for (int32_t i = 0; i < n; i++) {
        if (!dirs[i])
            return lora_errorf(err, LORA_ERR_ARG, "combine: adapter %d has no directory", (int)i);
        if (!isfinite(weights[i]))
            return lora_errorf(err, LORA_ERR_ARG, "%s: weight %g is not finite", dirs[i],
                               weights[i]);
    }
    if (svd_rank < 0 || svd_rank > MAX_RANK)
        return lora_errorf(err, LORA_ERR_ARG, "combine: svd rank %d is outside 1..%d",
                           (int)svd_rank, MAX_RANK);
    if (svd_rank && *how != LORA_COMBINE_SVD)
        return lora_errorf(err, LORA_ERR_ARG,
                           "combine: a rank for the SVD is given, but the "
                           "combination is %s (the rank follows from the inputs)",
                           how_name(*how));
    if (svd_rank && n == 1)
        return lora_errorf(err, LORA_ERR_ARG,
                           "%s: a single adapter is combined linearly, as "
                           "PEFT does, so the svd rank has no effect (hint: give it twice with "
                           "half the weight each)",
                           dirs[0]);
    if (n == 1) *how = LORA_COMBINE_LINEAR;
    return LORA_OK;
}

/* The sorted union of every adapter's modules; *out owned (A and B NULL). */
static lora_status union_modules(const cmb_adapter *ad, int32_t n, cmb_module **out, int32_t *n_out,
                                 lora_error *err) {
    int64_t total = 0;
    for (int32_t i = 0; i < n; i++)
        total += ad[i].n_mods;
    cmb_module *u = calloc((size_t)total + 1, sizeof *u);
    if (!u) return lora_errorf(err, LORA_ERR_NOMEM, "out of memory");
    int32_t m = 0;
    for (int32_t i = 0; i < n; i++)
        for (int32_t k = 0; k < ad[i].n_mods; k++) {
            const cmb_module *mo = &ad[i].mods[k];
            u[m++] = (cmb_module){mo->layer, mo->target, 0, mo->in, mo->out, 1.0, NULL, NULL, ""};
        }
    qsort(u, (size_t)m, sizeof *u, module_cmp);
    int32_t w = 0;
    for (int32_t i = 0; i < m; i++)
        if (w == 0 || module_cmp(&u[w - 1], &u[i])) u[w++] = u[i];
    *out   = u;
    *n_out = w;
    return LORA_OK;
}

lora_status lora_adapters_combine(const char *const *dirs, const double *weights, int32_t n,
                                  lora_combine_how how, int32_t svd_rank, const char *out_dir,
                                  lora_error *err) {
    lora_status  st     = check_args(dirs, weights, n, &how, svd_rank, out_dir, err);
    cmb_adapter *ad     = NULL;
    cmb_module  *mods   = NULL;
    present     *pr     = NULL;
    st_writer   *w      = NULL;
    char        *json   = NULL;
    int32_t      n_read = 0, n_mods = 0, R = 0;
    if (st != LORA_OK) return st;
    /* The products and factorisations here are small (rank-sized in the QR route): OpenBLAS's
     * threads cost more than they save (seconds instead of milliseconds for GPT-2 small's 48
     * modules on a busy 2-core machine), so they run on one thread, restored after. */
    int threads = lora_get_threads();
    lora_set_threads(1);
    ad = calloc((size_t)n, sizeof *ad);
    pr = calloc((size_t)n, sizeof *pr);
    w  = st_writer_new();
    if (!ad || !pr || !w) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", out_dir);
        goto done;
    }
    for (; n_read < n && st == LORA_OK; n_read++)
        st = read_adapter(&ad[n_read], dirs[n_read], err);
    if (st == LORA_OK) st = check_same_base(ad, n, err);
    if (st == LORA_OK) st = new_rank(ad, n, how, svd_rank, &R, err);
    if (st == LORA_OK) st = union_modules(ad, n, &mods, &n_mods, err);
    for (int32_t i = 0; st == LORA_OK && i < n_mods; i++) {
        cmb_module *o  = &mods[i];
        int32_t     np = 0;
        for (int32_t k = 0; k < n; k++) {
            const cmb_module *mo = find_module(&ad[k], o->layer, o->target);
            if (mo) pr[np++] = (present){mo, weights[k], dirs[k]};
        }
        if (how == LORA_COMBINE_SVD && R > (o->in < o->out ? o->in : o->out)) {
            char mod[64];
            module_key(mod, sizeof mod, o->layer, o->target);
            st = lora_errorf(err, LORA_ERR_SHAPE,
                             "%s: svd rank %d is larger than %s allows "
                             "(min(in, out) = %d)",
                             pr[0].dir, (int)R, mod, (int)(o->in < o->out ? o->in : o->out));
            break;
        }
        st = how == LORA_COMBINE_LINEAR ? combine_linear(o, pr, np, err)
             : how == LORA_COMBINE_CAT  ? combine_cat(o, pr, np, R, err)
                                        : combine_svd(o, pr, np, R, err);
        if (st == LORA_OK) keep_slices(o, pr, np);
    }
    if (st == LORA_OK) st = make_config(ad, n, mods, n_mods, R, &json, err);
    if (st == LORA_OK) st = make_tensors(w, mods, n_mods, err);
    if (st == LORA_OK) st = write_dir(out_dir, w, json, err);
done:
    free(json);
    st_writer_free(w);
    modules_free(mods, n_mods);
    for (int32_t i = 0; ad && i < n_read; i++)
        adapter_free(&ad[i]);
    free(pr);
    free(ad);
    lora_set_threads(threads);
    return st;
}
