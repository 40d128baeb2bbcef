/*
 * hf_config.h — GPT-2 config.json (Hugging Face) to and from lora_config.
 *
 * Reads n_layer, n_head, n_embd, n_positions (or n_ctx), n_inner (null = 4 * n_embd),
 * vocab_size, layer_norm_epsilon, activation_function, tie_word_embeddings (default true).
 * Rejects: missing required fields, wrong JSON types, non-positive sizes, n_embd not divisible
 * by n_head, unknown activations, and options this engine does not implement
 * (scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn, scale_attn_weights = false) with
 * LORA_ERR_UNSUPPORTED. Errors read "<path>: <problem>".
 */
#ifndef LORA_IO_HF_CONFIG_H
#define LORA_IO_HF_CONFIG_H

#include "lora.h"

lora_status hf_config_load(const char *path, lora_config *cfg, lora_error *err);
/* Parses config text (path only names it in errors). */
lora_status hf_config_parse(const char *json, const char *path, lora_config *cfg,
                            lora_error *err);
/* Writes a config.json a Hugging Face GPT2LMHeadModel loads (atomic). torch_dtype is
 * "float32", "float16" or "bfloat16". */
lora_status hf_config_write(const char *path, const lora_config *cfg, const char *torch_dtype,
                            lora_error *err);

#endif
