/*
 * peft.c — attaching a PEFT method to a model, the trainable-tensor API, saving and loading
 * trainable tensors, and the training-memory and FLOP estimates.
 */
#include "peft/peft.h"

#include "core/error.h"
#include "io/safetensors.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

lora_adapter_params lora_adapter_params_default(void) {
    lora_adapter_params p;
    memset(&p, 0, sizeof p);
    p.method     = LORA_METHOD_LORA;
    p.r          = 8;
    p.alpha      = 16.0f;
    p.dropout    = 0.1f;
    p.targets    = LORA_TARGET_Q | LORA_TARGET_V;
    p.use_rslora = 0;
    p.init       = LORA_INIT_KAIMING;
    p.seed       = 42;
    p.adalora.target_r = 8;
    p.adalora.delta_t  = 1;
    p.adalora.beta1    = 0.85f;
    p.adalora.beta2    = 0.85f;
    p.adalora.orth_reg = 0.5f;
    return p;
}

static const struct {
    const char *name;
    uint32_t    bits;
} target_names[] = {
    {"q", LORA_TARGET_Q},
    {"k", LORA_TARGET_K},
    {"v", LORA_TARGET_V},
    {"c_attn", LORA_TARGET_C_ATTN},
    {"attn.c_attn", LORA_TARGET_C_ATTN},
    {"c_proj", LORA_TARGET_ATTN_PROJ},
    {"attn.c_proj", LORA_TARGET_ATTN_PROJ},
    {"c_fc", LORA_TARGET_MLP_FC},
    {"mlp.c_fc", LORA_TARGET_MLP_FC},
    {"mlp.c_proj", LORA_TARGET_MLP_PROJ},
    {"all", LORA_TARGET_ALL_LINEAR},
    {"all-linear", LORA_TARGET_ALL_LINEAR},
};

lora_status lora_targets_parse(const char *list, uint32_t *targets, lora_error *err) {
    *targets = 0;
    if (!list || !*list) return lora_errorf(err, LORA_ERR_ARG, "empty target list");
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t      n = e ? (size_t)(e - p) : strlen(p);
        while (n && isspace((unsigned char)*p)) p++, n--;
        while (n && isspace((unsigned char)p[n - 1])) n--;
        uint32_t bits = 0;
        for (size_t i = 0; i < sizeof target_names / sizeof target_names[0]; i++)
            if (strlen(target_names[i].name) == n && !strncmp(target_names[i].name, p, n))
                bits = target_names[i].bits;
        if (!bits)
            return lora_errorf(err, LORA_ERR_ARG,
                               "unknown target '%.*s' (known: q, k, v, c_attn, c_proj, c_fc, "
                               "mlp.c_proj, all)",
                               (int)n, p);
        *targets |= bits;
        p += n;
        while (*p && *p != ',') p++;
        if (*p == ',') p++;
    }
    return LORA_OK;
}

static const peft_method *method_table(lora_method m) {
    switch (m) {
    case LORA_METHOD_LORA: return &peft_method_lora;
    case LORA_METHOD_FULL: return &peft_method_full;
    case LORA_METHOD_BITFIT: return &peft_method_bitfit;
    case LORA_METHOD_ADALORA: return &peft_method_adalora;
    }
    return NULL;
}

lora_status lora_model_attach(lora_model *m, const lora_adapter_params *p, lora_error *err) {
    return peft_attach(m, p, NULL, 0, err);
}

lora_status peft_attach(lora_model *m, const lora_adapter_params *p,
                        const lora_site_spec *specs, int32_t n_specs, lora_error *err) {
    if (m->attached > 0)
        return lora_errorf(err, LORA_ERR_STATE, "%s: a PEFT method is already attached", m->dir);
    if (m->attached < 0)
        return lora_errorf(err, LORA_ERR_STATE, "%s: an earlier attach failed after its "
                           "allocation; load the model again", m->dir);
    if (m->merged)
        return lora_errorf(err, LORA_ERR_STATE, "%s: the model is merged (hint: "
                           "lora_model_unmerge before attaching a method)", m->dir);
    const peft_method *pm = method_table(p->method);
    if (!pm) return lora_errorf(err, LORA_ERR_ARG, "unknown PEFT method %d", (int)p->method);
    /* inference adapters (adapters.c) may sit on the sites already: a failure frees only ours */
    int32_t *kept = calloc((size_t)m->cfg.n_layer * 4 + 1, sizeof *kept);
    if (!kept) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", m->dir);
    for (int32_t l = 0; l < m->cfg.n_layer; l++) {
        kept[4 * l + 0] = m->layers[l].c_attn.n_adapters;
        kept[4 * l + 1] = m->layers[l].attn_proj.n_adapters;
        kept[4 * l + 2] = m->layers[l].c_fc.n_adapters;
        kept[4 * l + 3] = m->layers[l].mlp_proj.n_adapters;
    }
    lora_status st;
    m->adapters_gen++;
    m->weights_gen++; /* full fine-tuning and BitFit rebind the sites' w and b */
    if ((st = pm->plan(m, p, specs, n_specs, err)) != LORA_OK) goto fail;
    if ((st = tparams_alloc(&m->tp, err)) != LORA_OK) goto fail;
    if (pm->init && (st = pm->init(m, p, err)) != LORA_OK) goto fail;
    if ((st = gpt2_replan(m, err)) != LORA_OK) goto fail;
    m->peft     = *p;
    m->method   = pm;
    m->ctx.seed = p->seed;
    m->attached = 1;
    free(kept);
    return LORA_OK;
fail:
    /* leave the model as loaded: no method adapters, no registry, frozen slots restored by
     * reload */
    for (int32_t l = 0; l < m->cfg.n_layer; l++) {
        linear_truncate_adapters(&m->layers[l].c_attn, kept[4 * l + 0]);
        linear_truncate_adapters(&m->layers[l].attn_proj, kept[4 * l + 1]);
        linear_truncate_adapters(&m->layers[l].c_fc, kept[4 * l + 2]);
        linear_truncate_adapters(&m->layers[l].mlp_proj, kept[4 * l + 3]);
    }
    free(kept);
    if (m->tp.data) m->attached = -1; /* slots were rebound: the model is no longer usable */
    tparams_free(&m->tp);
    return st;
}

/* ---- trainable tensors ---- */

int32_t lora_model_n_trainable(const lora_model *m) {
    return m->attached > 0 ? m->tp.n : 0;
}

int64_t lora_model_n_trainable_params(const lora_model *m) {
    int64_t n = 0;
    for (int32_t i = 0; i < lora_model_n_trainable(m); i++) n += m->tp.items[i].numel;
    return n;
}

lora_status lora_model_trainable(lora_model *m, int32_t i, lora_tensor_info *info) {
    if (i < 0 || i >= lora_model_n_trainable(m)) return LORA_ERR_ARG;
    const tparam *p = &m->tp.items[i];
    info->name      = p->name;
    info->ndim      = p->ndim;
    info->shape[0]  = p->shape[0];
    info->shape[1]  = p->ndim == 2 ? p->shape[1] : 0;
    info->numel     = p->numel;
    info->data      = m->tp.data + p->offset;
    info->grad      = m->tp.grad + p->offset;
    return LORA_OK;
}

lora_status lora_model_trainable_find(lora_model *m, const char *name, lora_tensor_info *info) {
    if (m->attached <= 0) return LORA_ERR_MISSING;
    int i = tparams_find(&m->tp, name);
    return i < 0 ? LORA_ERR_MISSING : lora_model_trainable(m, i, info);
}

lora_status lora_model_save_trainable(lora_model *m, const char *path, lora_error *err) {
    if (m->attached <= 0)
        return lora_errorf(err, LORA_ERR_STATE, "%s: no trainable tensors to save", path);
    st_writer *w = st_writer_new();
    if (!w) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
    lora_status st = LORA_OK;
    for (int32_t i = 0; i < m->tp.n && st == LORA_OK; i++) {
        const tparam *p = &m->tp.items[i];
        st = st_writer_add(w, p->name, ST_F32, p->ndim, p->shape, m->tp.data + p->offset, err);
    }
    if (st == LORA_OK) st = st_writer_write(w, path, err);
    st_writer_free(w);
    return st;
}

lora_status lora_model_load_trainable(lora_model *m, const char *path, lora_error *err) {
    if (m->attached <= 0)
        return lora_errorf(err, LORA_ERR_STATE, "%s: attach a method before loading", path);
    if (m->merged)
        return lora_errorf(err, LORA_ERR_STATE, "%s: the model is merged (hint: "
                           "lora_model_unmerge first)", path);
    st_file     f;
    lora_status st = st_open(&f, path, err);
    if (st != LORA_OK) return st;
    for (int32_t i = 0; i < m->tp.n && st == LORA_OK; i++) {
        const tparam    *p = &m->tp.items[i];
        const st_tensor *t = st_find(&f, p->name);
        if (!t) {
            st = lora_errorf(err, LORA_ERR_MISSING, "%s: tensor '%s' not found", path, p->name);
            break;
        }
        int ok = t->ndim == p->ndim && t->shape[0] == p->shape[0] &&
                 (p->ndim == 1 || t->shape[1] == p->shape[1]);
        if (!ok) {
            st = lora_errorf(err, LORA_ERR_SHAPE,
                             "%s: tensor '%s' has shape (%lld%s%lld) but the model expects "
                             "(%lld%s%lld) (hint: is this file for another base model or rank?)",
                             path, p->name, (long long)t->shape[0], t->ndim > 1 ? ", " : "",
                             t->ndim > 1 ? (long long)t->shape[1] : 0LL, (long long)p->shape[0],
                             p->ndim > 1 ? ", " : "", p->ndim > 1 ? (long long)p->shape[1] : 0LL);
            break;
        }
        st = st_to_f32(m->tp.data + p->offset, t, path, err);
    }
    st_close(&f);
    return st;
}

/* ---- the memory and FLOP estimates ---- */

/* The input and output widths of the site each LORA_TARGET_* bit names. */
typedef struct target_dims {
    uint32_t bit;
    int64_t  in, len;
    unsigned keep; /* the GPT2_KEEP_* input an adapter there needs kept for backward */
} target_dims;

#define N_TARGET_DIMS 7

static void target_dims_of(const lora_config *c, target_dims out[N_TARGET_DIMS]) {
    int64_t C = c->n_embd, F = c->n_inner;
    const target_dims s[N_TARGET_DIMS] = {{LORA_TARGET_C_ATTN, C, 3 * C, GPT2_KEEP_LN1},
                                          {LORA_TARGET_Q, C, C, GPT2_KEEP_LN1},
                                          {LORA_TARGET_K, C, C, GPT2_KEEP_LN1},
                                          {LORA_TARGET_V, C, C, GPT2_KEEP_LN1},
                                          {LORA_TARGET_ATTN_PROJ, C, C, GPT2_KEEP_ATTY},
                                          {LORA_TARGET_MLP_FC, C, F, GPT2_KEEP_LN2},
                                          {LORA_TARGET_MLP_PROJ, F, C, GPT2_KEEP_GELU}};
    memcpy(out, s, sizeof s);
}

lora_status lora_estimate_memory(const lora_config *c, const lora_adapter_params *p, int32_t B,
                                 int32_t T, int checkpoint, lora_memory_estimate *out,
                                 lora_error *err) {
    if (B <= 0 || T <= 0 || T > c->n_positions)
        return lora_errorf(err, LORA_ERR_ARG, "estimate: invalid batch shape B=%d T=%d", (int)B,
                           (int)T);
    int64_t C = c->n_embd, F = c->n_inner, V = c->vocab_size, L = c->n_layer;
    int64_t N = (int64_t)B * T;
    int64_t base = V * C + (int64_t)c->n_positions * C + 2 * C +
                   L * (4 * C + 3 * C * C + 3 * C + C * C + C + 2 * C * F + F + C);
    if (!c->tie_word_embeddings) base += V * C;
    int64_t  trainable = 0, adapter_acts = 0, scratch = 0, method_state = 0;
    unsigned keep      = 0; /* GPT2_KEEP_* inputs every layer keeps for backward */
    if (p->method == LORA_METHOD_FULL) {
        trainable = base;
        keep      = GPT2_KEEP_ALL;
    } else if (p->method == LORA_METHOD_BITFIT) {
        trainable = C + L * (C + 3 * C + C + C + F + C);
    } else {
        /* LoRA: A (r, in), B (len, r) per site, a saved A·x (N, r) per pass, scratch N r.
         * AdaLoRA adds Λ (r) per site and needs N 2r of scratch. */
        int64_t     r = p->r, ada = p->method == LORA_METHOD_ADALORA, sites = 0;
        target_dims s[N_TARGET_DIMS];
        target_dims_of(c, s);
        for (size_t i = 0; i < N_TARGET_DIMS; i++)
            if (p->targets & s[i].bit) {
                keep |= s[i].keep;
                trainable += L * r * (s[i].in + s[i].len + ada);
                adapter_acts += L * N * r;
                sites += L;
                if (N * (1 + ada) * r > scratch) scratch = N * (1 + ada) * r;
            }
        /* AdaLoRA's rank allocator (adalora.c): the EMAs Ī and Ū of every trainable entry, the
         * mask (r per site) and the frozen flag, the triplet scores and their sorted copy
         * (doubles), the penalty's (r, r) scratch */
        if (ada)
            method_state = (2 * trainable + sites * r + 1 + r * r) * (int64_t)sizeof(float) +
                           2 * sites * r * (int64_t)sizeof(double);
    }
    out->weights_bytes    = base * (int64_t)sizeof(float); /* F16/BF16 become F32 at load */
    out->trainable_bytes  = trainable * 4 * (int64_t)sizeof(float) + method_state;
    uint8_t *keeps = malloc(L > 0 ? (size_t)L : 1);
    if (!keeps) return lora_errorf(err, LORA_ERR_NOMEM, "estimate: out of memory");
    memset(keeps, (int)keep, (size_t)L);
    out->activation_bytes = gpt2_activation_bytes(c, B, T, (size_t)scratch, keeps, checkpoint) +
                            adapter_acts * (int64_t)sizeof(float);
    free(keeps);
    out->total_bytes      = out->weights_bytes + out->trainable_bytes + out->activation_bytes;
    return LORA_OK;
}

lora_status lora_estimate_flops(const lora_config *c, const lora_adapter_params *p, int32_t B,
                                int32_t T, lora_flops *out, lora_error *err) {
    if (B <= 0 || T <= 0 || T > c->n_positions)
        return lora_errorf(err, LORA_ERR_ARG, "FLOPs: invalid batch shape B=%d T=%d", (int)B,
                           (int)T);
    double C = c->n_embd, F = c->n_inner, V = c->vocab_size, L = c->n_layer;
    double N = (double)B * T;
    int    full = p->method == LORA_METHOD_FULL;
    /* every linear of a layer: c_attn C->3C, attn c_proj C->C, c_fc C->F, mlp c_proj F->C */
    double lin_fwd  = 2.0 * N * (C * 3 * C + C * C + C * F + F * C) * L;
    double att_fwd  = 4.0 * B * (double)T * T * C * L; /* Q·Kᵀ and P·V, the full square */
    double head_fwd = 2.0 * N * C * V;
    double ad_fwd   = 0.0;
    if (p->method == LORA_METHOD_LORA || p->method == LORA_METHOD_ADALORA) {
        target_dims s[N_TARGET_DIMS];
        target_dims_of(c, s);
        for (size_t i = 0; i < N_TARGET_DIMS; i++)
            if (p->targets & s[i].bit) ad_fwd += 2.0 * N * p->r * (s[i].in + s[i].len) * L;
    }
    /* backward: dX always (every linear passes its gradient down); dW only when trainable */
    double lin_bwd  = lin_fwd * (full ? 2.0 : 1.0);
    double att_bwd  = 2.0 * att_fwd;
    double head_bwd = head_fwd * (full ? 2.0 : 1.0);
    double ad_bwd   = 2.0 * ad_fwd;
    out->linear     = lin_fwd + lin_bwd;
    out->attention  = att_fwd + att_bwd;
    out->lm_head    = head_fwd + head_bwd;
    out->adapter    = ad_fwd + ad_bwd;
    out->forward    = lin_fwd + att_fwd + head_fwd + ad_fwd;
    out->backward   = lin_bwd + att_bwd + head_bwd + ad_bwd;
    out->total      = out->forward + out->backward;
    return LORA_OK;
}
