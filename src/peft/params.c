/* params.c — the trainable-parameter registry (see params.h). */
#include "peft/params.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

int tparams_add(tparams *tp, const char *name, int32_t ndim, const int64_t *shape,
                const float *init_src, float **bind_data, const float **bind_const,
                float **bind_grad, lora_error *err) {
    LORA_ASSERT(tp->data == NULL && (ndim == 1 || ndim == 2));
    if (strlen(name) >= TPARAM_NAME_MAX)
        return lora_errorf(err, LORA_ERR_ARG, "%s: tensor name too long", name);
    if (tp->n == tp->cap) {
        int32_t cap   = tp->cap ? tp->cap * 2 : 64;
        tparam *items = realloc(tp->items, (size_t)cap * sizeof *items);
        if (!items) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", name);
        tp->items = items;
        tp->cap   = cap;
    }
    tparam *p = &tp->items[tp->n];
    memset(p, 0, sizeof *p);
    strcpy(p->name, name);
    p->ndim     = ndim;
    p->shape[0] = shape[0];
    p->shape[1] = ndim == 2 ? shape[1] : 1;
    p->numel    = p->shape[0] * p->shape[1];
    p->decay    = ndim >= 2;
    p->offset   = tp->total;
    /* keep every tensor 64-byte aligned inside the spans */
    tp->total += ((size_t)p->numel + 15) & ~(size_t)15;
    p->init_src   = init_src;
    p->bind_data  = bind_data;
    p->bind_const = bind_const;
    p->bind_grad  = bind_grad;
    return tp->n++;
}

lora_status tparams_alloc(tparams *tp, lora_error *err) {
    LORA_ASSERT(tp->data == NULL);
    size_t n = tp->total ? tp->total : 16, bytes;
    if (!lora_mul_ok(n, 4 * sizeof(float), &bytes))
        return lora_errorf(err, LORA_ERR_NOMEM, "trainable parameters: size overflow");
    float *all = aligned_alloc(64, bytes);
    if (!all)
        return lora_errorf(err, LORA_ERR_NOMEM, "trainable parameters: cannot allocate %zu bytes",
                           bytes);
    memset(all, 0, bytes);
    tp->data = all;
    tp->grad = all + n;
    tp->m    = all + 2 * n;
    tp->v    = all + 3 * n;
    for (int32_t i = 0; i < tp->n; i++) {
        tparam *p = &tp->items[i];
        float  *d = tp->data + p->offset;
        if (p->init_src) memcpy(d, p->init_src, (size_t)p->numel * sizeof(float));
        if (p->bind_data) *p->bind_data = d;
        if (p->bind_const) *p->bind_const = d;
        if (p->bind_grad) *p->bind_grad = tp->grad + p->offset;
    }
    return LORA_OK;
}

void tparams_free(tparams *tp) {
    if (!tp) return;
    free(tp->items);
    free(tp->data);
    memset(tp, 0, sizeof *tp);
}

int tparams_find(const tparams *tp, const char *name) {
    for (int32_t i = 0; i < tp->n; i++)
        if (!strcmp(tp->items[i].name, name)) return i;
    return -1;
}
