/*
 * baselines.c — the LoRA paper's baselines through the same linear sites: full fine-tuning
 * (every base tensor trainable) and BitFit (only the bias vectors). Neither attaches an
 * adapter: each makes a frozen slot trainable by copying it into the registry and giving the
 * site a gradient pointer, so kernels compute dW or db only there.
 */
#include "core/error.h"
#include "peft/peft.h"

#include <stdio.h>

/* Plans one base tensor as trainable: its current (mapped) values are the initial values. */
static lora_status add_base(lora_model *m, const char *name, int32_t ndim, int64_t d0,
                            int64_t d1, const float **slot, float **grad, lora_error *err) {
    int64_t shape[2] = {d0, d1};
    int     rc = tparams_add(&m->tp, name, ndim, shape, *slot, NULL, slot, grad, err);
    return rc < 0 ? (lora_status)rc : LORA_OK;
}

#define TRY(expr)                                                                              \
    do {                                                                                       \
        lora_status st_ = (expr);                                                              \
        if (st_ != LORA_OK) return st_;                                                        \
    } while (0)

static lora_status plan_layer(lora_model *m, int32_t l, int weights, lora_error *err) {
    gpt2_layer *ly = &m->layers[l];
    int64_t     C = m->cfg.n_embd, F = m->cfg.n_inner;
    char        nm[TPARAM_NAME_MAX];
#define NAME(suffix) (snprintf(nm, sizeof nm, "h.%d.%s", (int)l, suffix), nm)
    if (weights) TRY(add_base(m, NAME("ln_1.weight"), 1, C, 0, &ly->ln_1_w, &ly->dln_1_w, err));
    TRY(add_base(m, NAME("ln_1.bias"), 1, C, 0, &ly->ln_1_b, &ly->dln_1_b, err));
    if (weights)
        TRY(add_base(m, NAME("attn.c_attn.weight"), 2, C, 3 * C, &ly->c_attn.w, &ly->c_attn.dw,
                     err));
    TRY(add_base(m, NAME("attn.c_attn.bias"), 1, 3 * C, 0, &ly->c_attn.b, &ly->c_attn.db, err));
    if (weights)
        TRY(add_base(m, NAME("attn.c_proj.weight"), 2, C, C, &ly->attn_proj.w,
                     &ly->attn_proj.dw, err));
    TRY(add_base(m, NAME("attn.c_proj.bias"), 1, C, 0, &ly->attn_proj.b, &ly->attn_proj.db,
                 err));
    if (weights) TRY(add_base(m, NAME("ln_2.weight"), 1, C, 0, &ly->ln_2_w, &ly->dln_2_w, err));
    TRY(add_base(m, NAME("ln_2.bias"), 1, C, 0, &ly->ln_2_b, &ly->dln_2_b, err));
    if (weights)
        TRY(add_base(m, NAME("mlp.c_fc.weight"), 2, C, F, &ly->c_fc.w, &ly->c_fc.dw, err));
    TRY(add_base(m, NAME("mlp.c_fc.bias"), 1, F, 0, &ly->c_fc.b, &ly->c_fc.db, err));
    if (weights)
        TRY(add_base(m, NAME("mlp.c_proj.weight"), 2, F, C, &ly->mlp_proj.w, &ly->mlp_proj.dw,
                     err));
    TRY(add_base(m, NAME("mlp.c_proj.bias"), 1, C, 0, &ly->mlp_proj.b, &ly->mlp_proj.db, err));
#undef NAME
    return LORA_OK;
}

static lora_status full_plan(lora_model *m, const lora_adapter_params *p,
                             const lora_site_spec *specs, int32_t n_specs, lora_error *err) {
    (void)p, (void)specs, (void)n_specs;
    int64_t C = m->cfg.n_embd, V = m->cfg.vocab_size, P = m->cfg.n_positions;
    TRY(add_base(m, "wte.weight", 2, V, C, &m->wte, &m->dwte, err));
    TRY(add_base(m, "wpe.weight", 2, P, C, &m->wpe, &m->dwpe, err));
    for (int32_t l = 0; l < m->cfg.n_layer; l++) TRY(plan_layer(m, l, 1, err));
    TRY(add_base(m, "ln_f.weight", 1, C, 0, &m->ln_f_w, &m->dln_f_w, err));
    TRY(add_base(m, "ln_f.bias", 1, C, 0, &m->ln_f_b, &m->dln_f_b, err));
    if (!m->cfg.tie_word_embeddings)
        TRY(add_base(m, "lm_head.weight", 2, V, C, &m->lm_head, &m->dlm_head, err));
    return LORA_OK;
}

static lora_status full_init(lora_model *m, const lora_adapter_params *p, lora_error *err) {
    (void)p;
    (void)err;
    if (m->cfg.tie_word_embeddings) { /* one tensor serves both ends */
        m->lm_head  = m->wte;
        m->dlm_head = m->dwte;
    }
    return LORA_OK;
}

static lora_status bitfit_plan(lora_model *m, const lora_adapter_params *p,
                               const lora_site_spec *specs, int32_t n_specs, lora_error *err) {
    (void)p, (void)specs, (void)n_specs;
    for (int32_t l = 0; l < m->cfg.n_layer; l++) TRY(plan_layer(m, l, 0, err));
    return add_base(m, "ln_f.bias", 1, m->cfg.n_embd, 0, &m->ln_f_b, &m->dln_f_b, err);
}

const peft_method peft_method_full   = {.name = "full", .plan = full_plan, .init = full_init};
const peft_method peft_method_bitfit = {.name = "bitfit", .plan = bitfit_plan};
