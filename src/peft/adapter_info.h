/*
 * adapter_info.h — what a PEFT adapter directory (LoRA or AdaLoRA, ours or PEFT's) holds, read
 * from its adapter_config.json and the safetensors header alone, without a model: the method,
 * alpha and scaling, the parameter count and the final rank of every site. For `lora inspect`.
 */
#ifndef LORA_PEFT_ADAPTER_INFO_H
#define LORA_PEFT_ADAPTER_INFO_H

#include "lora.h"

#include <stdint.h>

typedef struct adapter_site_info {
    int32_t  layer;
    uint32_t target; /* one LORA_TARGET_* bit; Q/K/V where our metadata names c_attn's slices */
    int32_t  rank;   /* final rank: the kept triplets (AdaLoRA) or r (LoRA) */
    int32_t  init_r; /* AdaLoRA: the site's initial rank; LoRA: r */
    double   scale;  /* the output scale of the site's B·A (AdaLoRA: of P·Λ·Q) */
} adapter_site_info;

typedef struct adapter_info {
    lora_method        method;     /* LORA_METHOD_LORA or LORA_METHOD_ADALORA */
    double             alpha;      /* the top-level lora_alpha */
    int32_t            r;          /* the top-level r (LoRA) or init_r (AdaLoRA) */
    int32_t            target_r;   /* AdaLoRA's target_r as written (per PEFT module); else 0 */
    int                use_rslora; /* LoRA: scale alpha / sqrt(r) */
    int                patterned;  /* LoRA: rank_pattern or alpha_pattern entries;
                                      AdaLoRA: a rank_pattern (a pruned adapter) */
    char               base_model[512];
    int64_t            n_params;   /* elements of every tensor in adapter_model.safetensors */
    int32_t            n_sites;
    adapter_site_info *sites; /* (n_sites) by layer, then q, k, v, c_attn, c_proj, c_fc,
                                 mlp.c_proj */
} adapter_info;

/* Reads DIR/adapter_config.json and DIR/adapter_model.safetensors (its header). On success
 * *out owns sites: free with adapter_info_free. LORA_ERR_UNSUPPORTED for other peft_types,
 * LORA_ERR_FORMAT for keys or patterns that are not a GPT-2 LoRA / AdaLoRA adapter's. */
lora_status adapter_info_read(const char *dir, adapter_info *out, lora_error *err);
void        adapter_info_free(adapter_info *info);

/* Short column name of a target bit: "q", "k", "v", "c_attn", "c_proj", "c_fc", "mlp.c_proj". */
const char *adapter_target_label(uint32_t target);

#endif
