/*
 * adapters.h — what the model needs of the inference adapters (adapters.c) and of merging
 * (merge.c); the API itself is in lora.h (lora_adapter_add, lora_model_merge, ...).
 */
#ifndef LORA_PEFT_ADAPTERS_H
#define LORA_PEFT_ADAPTERS_H

#include "model/gpt2.h"

/* Restores every merged site's W0 and frees the copies; m->merged becomes 0. */
void merge_undo(lora_model *m);

/* For lora_model_free: merge_undo, then frees the names of the inference adapters. The
 * adapters themselves stay on the sites, which free them (their ops->free). */
void adapters_release(lora_model *m);

#endif
