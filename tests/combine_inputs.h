/*
 * combine_inputs.h — input adapters for the `lora combine` tests, made with the engine itself:
 * a model loaded, a method attached, every trainable tensor filled with random values (B not
 * zero), saved as a PEFT directory. Also the delta W an attached LoRA adapter represents,
 * computed from the live slices (not from the file), for reference values.
 */
#ifndef LORA_TEST_COMBINE_INPUTS_H
#define LORA_TEST_COMBINE_INPUTS_H

#include "core/rng.h"
#include "lora.h"
#include "peft/peft.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every trainable tensor of m filled with amp * N(0, 1) from seed. */
static inline void combine_fill(lora_model *m, uint64_t seed, float amp) {
    for (int32_t i = 0; i < lora_model_n_trainable(m); i++) {
        lora_tensor_info t;
        lora_model_trainable(m, i, &t);
        uint64_t key = rng_key(seed, (uint64_t)i, 23);
        for (int64_t j = 0; j < t.numel; j++)
            t.data[j] = amp * rng_normal(key, (uint64_t)j);
    }
}

/*
 * Loads model_dir, attaches `method` on `targets` ("q,v", "q,v,c_proj,c_fc", ...) with rank r
 * and alpha, fills it randomly and saves it to out_dir. With keep non-NULL the model stays
 * attached in *keep (free it), else it is freed. Returns 0 on success, else prints why.
 */
static inline int combine_make_adapter(const char *model_dir, const char *out_dir,
                                       lora_method method, const char *targets, int32_t r,
                                       float alpha, int rslora, uint64_t seed, lora_model **keep) {
    lora_model         *m = NULL;
    lora_error          err;
    lora_adapter_params p = lora_adapter_params_default();
    p.method              = method;
    p.r                   = r;
    p.alpha               = alpha;
    p.use_rslora          = rslora;
    p.dropout             = 0.0f;
    p.seed                = seed;
    if (method == LORA_METHOD_ADALORA) {
        p.adalora.target_r   = r / 2 > 0 ? r / 2 : 1;
        p.adalora.total_step = 10;
    }
    if (lora_model_load(model_dir, &m, &err) != LORA_OK ||
        lora_targets_parse(targets, &p.targets, &err) != LORA_OK ||
        lora_model_attach(m, &p, &err) != LORA_OK) {
        fprintf(stderr, "combine_make_adapter %s: %s\n", out_dir, err.msg);
        lora_model_free(m);
        return -1;
    }
    combine_fill(m, seed, 0.1f);
    if (lora_adapter_save(m, out_dir, "tiny", &err) != LORA_OK) {
        fprintf(stderr, "combine_make_adapter %s: %s\n", out_dir, err.msg);
        lora_model_free(m);
        return -1;
    }
    if (keep)
        *keep = m;
    else
        lora_model_free(m);
    return 0;
}

/* Module index of a LoRA site in a (L, 4) table: c_attn (its slices too), attn.c_proj,
 * mlp.c_fc, mlp.c_proj. */
static inline int combine_module_index(uint32_t target) {
    return target == LORA_TARGET_ATTN_PROJ  ? 1
           : target == LORA_TARGET_MLP_FC   ? 2
           : target == LORA_TARGET_MLP_PROJ ? 3
                                            : 0;
}

/*
 * Adds w * s * B A of every LoRA adapter attached to m into dw[layer][module], each a
 * row-major (out, in) double matrix (allocated by the caller, out = 3C for c_attn; a slice
 * adds into its third of the rows).
 */
static inline void combine_add_delta(double **dw, const lora_model *m, double w, int32_t C) {
    int32_t         n     = lora_sites_list(m, NULL, 0);
    lora_site_view *sites = calloc((size_t)n + 1, sizeof *sites);
    lora_sites_list(m, sites, n);
    for (int32_t i = 0; i < n; i++) {
        const lora_site_view *v = &sites[i];
        int32_t row0 = v->target == LORA_TARGET_K ? C : v->target == LORA_TARGET_V ? 2 * C : 0;
        double *d    = dw[v->layer * 4 + combine_module_index(v->target)];
        for (int32_t o = 0; o < v->len; o++)
            for (int32_t j = 0; j < v->in; j++) {
                double acc = 0;
                for (int32_t k = 0; k < v->r; k++)
                    acc += (double)v->B[(size_t)o * v->r + k] * (double)v->A[(size_t)k * v->in + j];
                d[(size_t)(row0 + o) * v->in + j] += w * (double)v->scale * acc;
            }
    }
    free(sites);
}

#endif
