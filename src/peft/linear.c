/* linear.c — the linear site (see linear.h). */
#include "peft/linear.h"

#include "core/error.h"
#include "core/kernels.h"

void linear_forward(linear *site, float *out, const float *inp, int N, const peft_ctx *ctx) {
    matmul_forward(out, inp, site->w, site->b, N, site->in, site->out);
    for (int32_t i = 0; i < site->n_adapters; i++) {
        adapter *a = &site->adapters[i];
        a->ops->forward(a, site, out, inp, N, ctx);
    }
}

void linear_backward(linear *site, float *dinp, const float *dout, const float *inp, int N,
                     const peft_ctx *ctx) {
    /* frozen W0: dX only; dW and db exist only when a method made them trainable */
    matmul_backward(dinp, site->dw, site->db, dout, inp, site->w, N, site->in, site->out);
    for (int32_t i = 0; i < site->n_adapters; i++) {
        adapter *a = &site->adapters[i];
        a->ops->backward(a, site, dinp, dout, inp, N, ctx);
    }
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
    for (int32_t i = 0; i < site->n_adapters; i++) {
        adapter *a = &site->adapters[i];
        if (a->ops && a->ops->free) a->ops->free(a);
    }
    site->n_adapters = 0;
}
