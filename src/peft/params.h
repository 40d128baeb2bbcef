/*
 * params.h — the trainable-parameter registry.
 *
 * Methods first *plan* their trainable tensors (name, shape, where to bind the pointers), then
 * the registry allocates four contiguous, 64-byte-aligned spans — parameters, gradients, AdamW
 * m and v — lays every tensor at the same offset in each, copies initial values, and writes the
 * pointers back into the plan's bind addresses. AdamW, clipping and (later) an all-reduce are
 * each one loop over one span.
 */
#ifndef LORA_PEFT_PARAMS_H
#define LORA_PEFT_PARAMS_H

#include "lora.h"

#include <stddef.h>
#include <stdint.h>

#define TPARAM_NAME_MAX 96

typedef struct tparam {
    char         name[TPARAM_NAME_MAX];
    int32_t      ndim;
    int64_t      shape[2];
    int64_t      numel;
    size_t       offset;      /* in floats, same in every span */
    int          decay;       /* AdamW weight decay applies (2-D tensors) */
    const float *init_src;    /* copied into the parameter at allocation, or NULL (zeros) */
    float      **bind_data;   /* receive the parameter pointer (may be NULL) */
    const float **bind_const; /* receive it as const (the frozen-weight slot it replaces) */
    float      **bind_grad;   /* receive the gradient pointer (may be NULL) */
} tparam;

typedef struct tparams {
    tparam *items;
    int32_t n, cap;
    size_t  total; /* floats per span */
    float  *data;  /* (total) owned, one allocation holds all four spans */
    float  *grad;
    float  *m;
    float  *v;
    int64_t adam_t; /* AdamW steps taken */
} tparams;

/* Plans a tensor; returns its index or a negative status. shape[1] ignored when ndim == 1. */
int tparams_add(tparams *tp, const char *name, int32_t ndim, const int64_t *shape,
                const float *init_src, float **bind_data, const float **bind_const,
                float **bind_grad, lora_error *err);
/* Allocates the spans, copies initial values, binds pointers. */
lora_status tparams_alloc(tparams *tp, lora_error *err);
void        tparams_free(tparams *tp);
/* Index of a tensor by name, or -1. */
int tparams_find(const tparams *tp, const char *name);

#endif
