/* linear.c — the linear site (see linear.h). */
#include "peft/linear.h"

#include "core/error.h"
#include "core/kernels.h"
#include "core/profile.h"
#include "core/rng.h"

#include <math.h>
#include <stdlib.h>

/* out += every adapter's term, unless they are folded into w (merged) */
static void adapters_forward(linear *site, float *out, const float *inp, int N,
                             const peft_ctx *ctx) {
    if (site->w_merged) return;
    for (int32_t i = 0; i < site->n_adapters; i++) {
        adapter *a = &site->adapters[i];
        PROF_OP(ctx->prof, ctx->prof_phase, LORA_PROF_ADAPTER,
                a->ops->forward(a, site, out, inp, N, ctx));
    }
}

void linear_forward(linear *site, float *out, const float *inp, int N, const peft_ctx *ctx) {
    PROF_OP(ctx->prof, ctx->prof_phase, LORA_PROF_MATMUL,
            matmul_forward(out, inp, site->w, site->b, N, site->in, site->out));
    adapters_forward(site, out, inp, N, ctx);
}

void linear_forward_wt(linear *site, const float *wt, float *out, const float *inp, int N,
                       const peft_ctx *ctx) {
    PROF_OP(ctx->prof, ctx->prof_phase, LORA_PROF_MATMUL,
            matmul_forward_t(out, inp, wt, site->b, N, site->in, site->out));
    adapters_forward(site, out, inp, N, ctx);
}

/* linear_backward, with dinp = (overwrite) or += dout · W0ᵀ */
static void backward(linear *site, float *dinp, int overwrite, const float *dout,
                     const float *inp, int N, const peft_ctx *ctx) {
    /* frozen W0: dX only; dW and db exist only when a method made them trainable (two calls
     * give the same results as one: the products are independent) */
    if (dinp)
        PROF_OP(ctx->prof, ctx->prof_phase, LORA_PROF_MATMUL,
                gemm(0, 1, N, site->in, site->out, 1.0f, dout, site->out, site->w, site->out,
                     overwrite ? 0.0f : 1.0f, dinp, site->in));
    if (site->dw || site->db)
        PROF_OP(ctx->prof, ctx->prof_phase, LORA_PROF_MATMUL_DW,
                matmul_backward(NULL, site->dw, site->db, dout, inp, site->w, N, site->in,
                                site->out));
    for (int32_t i = 0; i < site->n_adapters; i++) {
        adapter *a = &site->adapters[i];
        PROF_OP(ctx->prof, ctx->prof_phase, LORA_PROF_ADAPTER,
                a->ops->backward(a, site, dinp, dout, inp, N, ctx));
    }
}

void linear_backward(linear *site, float *dinp, const float *dout, const float *inp, int N,
                     const peft_ctx *ctx) {
    backward(site, dinp, 0, dout, inp, N, ctx);
}

void linear_backward_set(linear *site, float *dinp, const float *dout, const float *inp, int N,
                         const peft_ctx *ctx) {
    backward(site, dinp, 1, dout, inp, N, ctx);
}

int linear_has_grad(const linear *site) {
    if (site->dw || site->db) return 1;
    for (int32_t i = 0; i < site->n_adapters; i++)
        if (!site->adapters[i].ops->frozen) return 1;
    return 0;
}

lora_status linear_attach(linear *site, const adapter *a, lora_error *err) {
    if (site->n_adapters == LINEAR_MAX_ADAPTERS)
        return lora_errorf(err, LORA_ERR_STATE, "%s: too many adapters on one site (max %d)",
                           site->name, LINEAR_MAX_ADAPTERS);
    LORA_ASSERT(a->off >= 0 && a->len > 0 && a->off + a->len <= site->out);
    site->adapters[site->n_adapters++] = *a;
    return LORA_OK;
}

void linear_free_adapters(linear *site) {
    linear_truncate_adapters(site, 0);
}

void linear_truncate_adapters(linear *site, int32_t n) {
    for (int32_t i = n; i < site->n_adapters; i++) {
        adapter *a = &site->adapters[i];
        if (a->ops && a->ops->free) a->ops->free(a);
    }
    if (n < site->n_adapters) site->n_adapters = n;
}

int linear_detach(linear *site, const void *state) {
    for (int32_t i = 0; i < site->n_adapters; i++) {
        if (site->adapters[i].state != state) continue;
        for (int32_t j = i + 1; j < site->n_adapters; j++)
            site->adapters[j - 1] = site->adapters[j];
        site->n_adapters--;
        return 1;
    }
    return 0;
}

/* ---- helpers shared by low-rank adapters ---- */

int adapter_dropout_on(const peft_ctx *ctx, float p) {
    return ctx->training && p > 0.0f;
}

uint64_t adapter_dropout_key(const adapter *a, const peft_ctx *ctx) {
    return rng_key(ctx->seed, 0x10000u + a->uid, ctx->pass);
}

void adapter_dropout_apply(float *out, const float *x, size_t n, float p, uint64_t key) {
    float    keep_scale = 1.0f / (1.0f - p);
    uint32_t thr        = rng_drop_threshold(p);
    LORA_ASSERT(n <= UINT32_MAX);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        out[i] = rng_keep24(key, (uint32_t)i) >= thr ? x[i] * keep_scale : 0.0f;
}

/* Rows and columns of x per step of adapter_down: a 4-row block's chunk of the masked input
 * (4 x 256 floats, 4 KiB) stays in L1 while every row of A passes over it. */
#define DOWN_ROWS 4
_Static_assert(DOWN_ROWS == 4, "adapter_down takes its rows four at a time (dot4)");
#define DOWN_COLS 256

/* Row n's columns [c0, c0 + w) of the masked input into xd (element index n·in + c draws the
 * mask, as adapter_dropout_apply does over the whole (N, in) matrix). */
static void mask_span(float *restrict xd, const float *restrict x, size_t at, int w,
                      uint32_t thr, float keep, uint64_t key) {
    for (int i = 0; i < w; i++)
        xd[i] = rng_keep24(key, (uint32_t)(at + (size_t)i)) >= thr ? x[i] * keep : 0.0f;
}

void adapter_down(float *u, const float *x, const float *A, int N, int r, int in, int dropped,
                  float p, uint64_t key) {
    static const float zeros[DOWN_COLS];
    float              keep = dropped ? 1.0f / (1.0f - p) : 1.0f;
    uint32_t           thr  = dropped ? rng_drop_threshold(p) : 0;
    long               nblk = (N + DOWN_ROWS - 1) / DOWN_ROWS;
    LORA_ASSERT((size_t)N * (size_t)in <= UINT32_MAX);
#pragma omp parallel for schedule(static)
    for (long b = 0; b < nblk; b++) {
        int    n0 = (int)b * DOWN_ROWS, nr = N - n0 < DOWN_ROWS ? N - n0 : DOWN_ROWS;
        float  xd[DOWN_ROWS][DOWN_COLS];
        float *ub = u + (size_t)n0 * r;
        for (int k = 0; k < nr * r; k++) ub[k] = 0.0f;
        for (int c0 = 0; c0 < in; c0 += DOWN_COLS) {
            int          w = in - c0 < DOWN_COLS ? in - c0 : DOWN_COLS;
            const float *xr[DOWN_ROWS];
            for (int q = 0; q < DOWN_ROWS; q++) {
                const float *src = x + (size_t)(n0 + q) * in + c0;
                if (q >= nr) {
                    xr[q] = zeros;
                } else if (dropped) {
                    mask_span(xd[q], src, (size_t)(n0 + q) * in + c0, w, thr, keep, key);
                    xr[q] = xd[q];
                } else {
                    xr[q] = src;
                }
            }
            for (int j = 0; j < r; j++) {
                float s[DOWN_ROWS];
                dot4(s, A + (size_t)j * in + c0, xr[0], xr[1], xr[2], xr[3], w);
                for (int q = 0; q < nr; q++) ub[(size_t)q * r + j] += s[q];
            }
        }
    }
}

/* Columns of x, dA and dinp per block of adapter_up_grads (a thread's unit of work), and rows
 * per step within it: four rows' masked inputs update a row of dA in one pass. */
#define UP_COLS 64
#define UP_ROWS 4

void adapter_up_grads(float *dA, float *dinp, const float *du, const float *x, const float *A,
                      int N, int r, int in, int dropped, float p, uint64_t key) {
    float    keep = dropped ? 1.0f / (1.0f - p) : 1.0f;
    uint32_t thr  = dropped ? rng_drop_threshold(p) : 0;
    long     nblk = (in + UP_COLS - 1) / UP_COLS;
    LORA_ASSERT((size_t)N * (size_t)in <= UINT32_MAX);
#pragma omp parallel for schedule(static)
    for (long b = 0; b < nblk; b++) {
        int   c0 = (int)b * UP_COLS, w = in - c0 < UP_COLS ? in - c0 : UP_COLS;
        float xd[UP_ROWS][UP_COLS], g[UP_ROWS][UP_COLS], mk[UP_ROWS][UP_COLS];
        for (int n0 = 0; n0 < N; n0 += UP_ROWS) {
            int   nr = N - n0 < UP_ROWS ? N - n0 : UP_ROWS;
            float d[UP_ROWS];
            /* the rows' masked inputs (mk: the factor, 0 or 1 / (1 - p)); absent rows zero */
            for (int q = 0; q < UP_ROWS; q++) {
                const float *xn = x + (size_t)(n0 + q) * in + c0;
                size_t       at = (size_t)(n0 + q) * in + (size_t)c0;
                for (int i = 0; i < w; i++) {
                    float f  = q >= nr ? 0.0f
                               : !dropped || rng_keep24(key, (uint32_t)(at + (size_t)i)) >= thr
                                   ? keep
                                   : 0.0f;
                    mk[q][i] = f;
                    xd[q][i] = f != 0.0f ? xn[i] * f : 0.0f;
                }
            }
            /* dA[j, c0:c0+w] += Σ_q du[n0+q, j] · xd[q], the rows in order */
            for (int j = 0; j < r; j++) {
                float *restrict a = dA + (size_t)j * in + c0;
                for (int q = 0; q < UP_ROWS; q++) d[q] = q < nr ? du[(size_t)(n0 + q) * r + j] : 0;
                const float *restrict x0 = xd[0], *restrict x1 = xd[1];
                const float *restrict x2 = xd[2], *restrict x3 = xd[3];
#pragma omp simd
                for (int i = 0; i < w; i++)
                    a[i] = fmaf(d[3], x3[i], fmaf(d[2], x2[i], fmaf(d[1], x1[i],
                                                                     fmaf(d[0], x0[i], a[i]))));
            }
            if (!dinp) continue;
            /* dinp[n, c0:c0+w] += (Σ_j du[n, j] · A[j, c0:c0+w]) ⊙ mask / (1 - p) */
            for (int q = 0; q < UP_ROWS; q++)
                for (int i = 0; i < w; i++) g[q][i] = 0.0f;
            for (int j = 0; j < r; j++) {
                const float *restrict a = A + (size_t)j * in + c0;
                for (int q = 0; q < UP_ROWS; q++) d[q] = q < nr ? du[(size_t)(n0 + q) * r + j] : 0;
                float *restrict g0 = g[0], *restrict g1 = g[1], *restrict g2 = g[2],
                                *restrict g3 = g[3];
#pragma omp simd
                for (int i = 0; i < w; i++) {
                    g0[i] = fmaf(d[0], a[i], g0[i]);
                    g1[i] = fmaf(d[1], a[i], g1[i]);
                    g2[i] = fmaf(d[2], a[i], g2[i]);
                    g3[i] = fmaf(d[3], a[i], g3[i]);
                }
            }
            for (int q = 0; q < nr; q++) {
                float *restrict o = dinp + (size_t)(n0 + q) * in + c0;
                for (int i = 0; i < w; i++) o[i] += g[q][i] * mk[q][i];
            }
        }
    }
}

lora_status adapter_reserve_rows(float **buf, int32_t *n_max, int N, int32_t r,
                                 const linear *site, lora_error *err) {
    if (N <= *n_max) return LORA_OK;
    float *u = realloc(*buf, (size_t)N * (size_t)r * sizeof(float));
    if (!u) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", site->name);
    *buf   = u;
    *n_max = N;
    return LORA_OK;
}
