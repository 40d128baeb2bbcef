/*
 * peft.h — PEFT methods as tables, not branches.
 *
 * A method (LoRA, full fine-tuning, BitFit; AdaLoRA later) fills one `peft_method`: it plans
 * its trainable tensors in the registry and, for adapter methods, attaches `adapter_ops`
 * instances to linear sites. The model code never asks which method is in use: it calls
 * linear_forward / linear_backward, and kernels skip gradients whose pointers are NULL.
 */
#ifndef LORA_PEFT_PEFT_H
#define LORA_PEFT_PEFT_H

#include "lora.h"
#include "model/gpt2.h"

typedef struct peft_method {
    const char *name;
    /* Plans trainable tensors (tparams_add) and attaches adapters; runs before allocation. */
    lora_status (*plan)(lora_model *m, const lora_adapter_params *p, lora_error *err);
    /* Initialises parameters after the registry is allocated and bound (may be NULL). */
    lora_status (*init)(lora_model *m, const lora_adapter_params *p, lora_error *err);
} peft_method;

extern const peft_method peft_method_lora;
extern const peft_method peft_method_full;
extern const peft_method peft_method_bitfit;

/* The site-level operations of a LoRA adapter (also used by tests). */
extern const adapter_ops lora_adapter_ops;

#endif
