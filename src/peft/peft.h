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

struct peft_state_view;

/* One adapter to attach: a layer, one LORA_TARGET_* bit, a rank and the output scale. */
typedef struct lora_site_spec {
    int32_t  layer;
    uint32_t target;
    int32_t  r;
    float    scale;
} lora_site_spec;

typedef struct peft_method {
    const char *name;
    /* Plans trainable tensors (tparams_add) and attaches adapters; runs before allocation.
     * Adapter methods attach at `specs` when given, else at every site p->targets names. */
    lora_status (*plan)(lora_model *m, const lora_adapter_params *p,
                        const lora_site_spec *specs, int32_t n_specs, lora_error *err);
    /* Initialises parameters after the registry is allocated and bound (may be NULL). */
    lora_status (*init)(lora_model *m, const lora_adapter_params *p, lora_error *err);
    /* A penalty added to the training loss (AdaLoRA's orthogonality regulariser): returns its
     * weighted value, and with grad != 0 also accumulates its gradient into the registry's
     * gradients. Called by forward (grad 0, when targets are given) and backward (grad 1).
     * NULL: none. */
    float (*regularizer)(lora_model *m, int grad);
    /* Runs after every optimizer step, with the 0-based index of the step just taken
     * (AdaLoRA's rank allocator). NULL: nothing. */
    lora_status (*after_step)(lora_model *m, int64_t step, lora_error *err);
    /* Named float arrays beyond the trainable tensors that a checkpoint must hold for an
     * exact resume (AdaLoRA's sensitivity EMAs and masks): fills up to cap views and returns
     * the count. The data pointers are live: a checkpoint reads them, a resume writes them.
     * NULL: none. */
    int32_t (*state)(lora_model *m, struct peft_state_view *out, int32_t cap);
    /* Frees the method's model-level state (m->method_state). NULL: nothing to free. */
    void (*free)(lora_model *m);
} peft_method;

typedef struct peft_state_view {
    const char *name; /* unique within the method, valid while the model lives */
    float      *data;
    int64_t     numel;
} peft_state_view;

extern const peft_method peft_method_lora;
extern const peft_method peft_method_full;
extern const peft_method peft_method_bitfit;
extern const peft_method peft_method_adalora;

/* The site-level operations of a LoRA adapter (also used by tests). */
extern const adapter_ops lora_adapter_ops;

/* The specs lora_model_attach uses for uniform params; returns the count (fills up to cap). */
int32_t lora_specs_from_params(const lora_model *m, const lora_adapter_params *p,
                               lora_site_spec *specs, int32_t cap);

/* lora_model_attach with explicit adapter sites (per-site rank and scale), e.g. from a file. */
lora_status peft_attach(lora_model *m, const lora_adapter_params *p,
                        const lora_site_spec *specs, int32_t n_specs, lora_error *err);

/* What the PEFT files need to know of one attached LoRA adapter. */
typedef struct lora_site_view {
    int32_t      layer;
    uint32_t     target;
    int32_t      r, in, len;
    float        scale;
    const float *A; /* (r, in) */
    const float *B; /* (len, r) */
} lora_site_view;

/* "attn.c_attn.q", "mlp.c_fc", ... for one LORA_TARGET_* bit; NULL for a combination. */
const char *lora_target_suffix(uint32_t target);

/* Lists the attached LoRA adapters in model order; returns the count (fills up to cap). */
int32_t lora_sites_list(const lora_model *m, lora_site_view *out, int32_t cap);

/* The attached adapter as plain LoRA sites in model order (lora_views.c): LoRA's own, or
 * AdaLoRA's folded into B·A of rank = kept triplets with the same ΔW (a site keeping none:
 * rank 1, B = 0). *out (one allocation: free it) holds the views and any folded tensors.
 * LORA_ERR_STATE when neither method is attached. */
lora_status peft_lora_views(lora_model *m, lora_site_view **out, int32_t *n, lora_error *err);

/* ---- PEFT directory pieces (peft_io.c), shared with combine.c ---- */

struct cJSON;

/* safetensors metadata key listing the q/k/v slices of fused c_attn adapters: "0:q,v;1:q,v" */
#define PEFT_SLICES_META "lora.c_attn_slices"

/* Strips "[base_model.model.][transformer.]h.N." from a PEFT tensor key: the rest of the key
 * and *layer = N, or NULL when the key does not start that way. */
const char *peft_key_layer(const char *key, int32_t *layer);
/* Splits "[base_model.model.][transformer.]h.N.<module>.lora_X<rest>" for the four linear modules
 * of a GPT-2 layer: returns rest (what follows the letter X), with *layer = N, *module = 0 for
 * attn.c_attn, 1 attn.c_proj, 2 mlp.c_fc, 3 mlp.c_proj, and *letter = X; NULL when the key is
 * not of that form. The callers check the letter and the rest their format allows. */
const char *peft_key_lora(const char *key, int32_t *layer, int *module, char *letter);
/* Parses "[base_model.model.][transformer.]h.N.<module>.lora_(A|B)[.name].weight": 1 and the
 * layer, the module's LORA_TARGET_* bit (C_ATTN for c_attn) and whether it is B; else 0. */
int peft_key_parse(const char *key, int32_t *layer, uint32_t *target, int *is_b);
/* Reads and checks adapter_config.json of a LoRA adapter (peft_type LORA, r, lora_alpha; no
 * bias training, DoRA or modules_to_save). On success *root is owned: cJSON_Delete it. */
lora_status peft_config_read(const char *path, lora_adapter_params *p, struct cJSON **root,
                             lora_error *err);
/* The value of PEFT's rank_pattern / alpha_pattern for module "h.N.attn.c_attn", or dflt. */
double peft_pattern_number(const struct cJSON *pat, const char *mod, double dflt);
/* "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj" for a module's target bit. */
const char *peft_module_name(uint32_t target);
/* The module's entry in PEFT's target_modules ("c_attn", "attn.c_proj", "c_fc", ...). */
const char *peft_target_entry(uint32_t target);
/* The Q|K|V bits of a fused c_attn B (3C, R) that is block-structured as lora_adapter_save
 * writes it (with hint "q,v" or "q=3,v=1" from the metadata: those slices and ranks, verified),
 * or 0 if it is not. */
uint32_t peft_c_attn_slices(const float *B, int32_t C, int32_t R, const char *hint);
/* The slices of one layer ("q,v") in PEFT_SLICES_META's value, copied to buf; NULL if absent. */
const char *peft_slices_hint(const char *meta, int32_t layer, char *buf, size_t n);

#endif
