/* linear.c — the linear site (see linear.h). */
#include "peft/linear.h"

#include "core/error.h"
#include "core/kernels.h"
#include "core/profile.h"
#include "core/rng.h"

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

void adapter_input_grad(float *dinp, const float *du, const float *A, int N, int r, int in,
                        int dropped, float p, uint64_t key, float *scratch) {
    if (!dropped) {
        gemm(0, 0, N, in, r, 1.0f, du, r, A, in, 1.0f, dinp, in);
        return;
    }
    gemm(0, 0, N, in, r, 1.0f, du, r, A, in, 0.0f, scratch, in);
    float    keep = 1.0f / (1.0f - p);
    size_t   n    = (size_t)N * (size_t)in;
    uint32_t thr  = rng_drop_threshold(p);
    LORA_ASSERT(n <= UINT32_MAX);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        dinp[i] += rng_keep24(key, (uint32_t)i) >= thr ? scratch[i] * keep : 0.0f;
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
