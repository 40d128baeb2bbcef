/*
 * lora.c — LoRA (Hu et al., 2022): h = W0·x + s·B·(A·dropout(x)), s = alpha / r
 * (rsLoRA: alpha / sqrt(r)). A (r, in) is Kaiming-uniform (a = sqrt 5, as PEFT) or Gaussian
 * N(0, 1/r); B (len, r) starts at zero so that ΔW = 0 at step 0. Only A and B are trainable.
 *
 * Per pass an adapter keeps u = A·dropout(x) (N, r) for backward; dropout masks are not stored
 * but regenerated from (seed, adapter id, pass) in backward.
 *
 * N = rows (B*T), r = rank, in = site input width, len = output slice width.
 */
#include "core/error.h"
#include "core/kernels.h"
#include "core/rng.h"
#include "peft/peft.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct lora_state {
    int32_t r, in, len;
    float   scale;   /* alpha / r, or alpha / sqrt(r) */
    float   dropout; /* probability of zeroing an input element, training only */
    float  *A, *dA;  /* (r, in), bound by the registry */
    float  *B, *dB;  /* (len, r) */
    float  *u;       /* (n_max, r) saved A·x, owned */
    int32_t n_max;
} lora_state;

static void lora_forward(adapter *a, const linear *site, float *out, const float *inp, int N,
                         const peft_ctx *ctx) {
    lora_state *s = a->state;
    LORA_ASSERT(N <= s->n_max);
    /* u (N,r) = dropout(x) · Aᵀ;  out[:, off:off+len] += s · u · Bᵀ */
    adapter_down(s->u, inp, s->A, N, s->r, s->in, adapter_dropout_on(ctx, s->dropout),
                 s->dropout, adapter_dropout_key(a, ctx));
    gemm(0, 1, N, s->len, s->r, s->scale, s->u, s->r, s->B, s->r, 1.0f, out + a->off, site->out);
}

static void lora_backward(adapter *a, const linear *site, float *dinp, const float *dout,
                          const float *inp, int N, const peft_ctx *ctx) {
    lora_state  *s      = a->state;
    float       *du     = ctx->scratch;   /* (N, r) */
    const float *dslice = dout + a->off; /* (N, len), row stride site->out */
    /* du (N,r) = s · dout_slice · B;  dB (len,r) += s · dout_sliceᵀ · u */
    gemm(0, 0, N, s->r, s->len, s->scale, dslice, site->out, s->B, s->r, 0.0f, du, s->r);
    gemm(1, 0, s->len, s->r, N, s->scale, dslice, site->out, s->u, s->r, 1.0f, s->dB, s->r);
    /* dA (r,in) += duᵀ · dropout(x);  dx += (du · A) ⊙ mask / (1 - p) */
    adapter_up_grads(s->dA, dinp, du, inp, s->A, N, s->r, s->in,
                     adapter_dropout_on(ctx, s->dropout), s->dropout,
                     adapter_dropout_key(a, ctx));
}

static lora_status lora_reserve(adapter *a, const linear *site, int N, size_t *scratch,
                                lora_error *err) {
    lora_state *s = a->state;
    lora_status st = adapter_reserve_rows(&s->u, &s->n_max, N, s->r, site, err);
    if (st != LORA_OK) return st;
    *scratch = (size_t)N * (size_t)s->r;
    return LORA_OK;
}

/* W[:, off:off+len] (in, len) += s · Aᵀ (in, r) · Bᵀ (r, len) */
static void lora_merge(const adapter *a, const linear *site, float *w) {
    const lora_state *s = a->state;
    gemm(1, 1, s->in, s->len, s->r, s->scale, s->A, s->in, s->B, s->r, 1.0f, w + a->off,
         site->out);
}

static void lora_free_state(adapter *a) {
    lora_state *s = a->state;
    if (s) free(s->u);
    free(s);
    a->state = NULL;
}

const adapter_ops lora_adapter_ops = {
    .name     = "lora",
    .forward  = lora_forward,
    .backward = lora_backward,
    .reserve  = lora_reserve,
    .free     = lora_free_state,
    .merge    = lora_merge,
};

/* ---- the model-level method ---- */

typedef struct lora_slot {
    uint32_t    bit;
    const char *suffix; /* name under the layer: "attn.c_attn.q" */
    int         site;   /* 0 c_attn, 1 attn_proj, 2 c_fc, 3 mlp_proj */
    int         slice;  /* -1 whole site, else q/k/v third of c_attn */
} lora_slot;

static const lora_slot lora_slots[] = {
    {LORA_TARGET_C_ATTN, "attn.c_attn", 0, -1},    {LORA_TARGET_Q, "attn.c_attn.q", 0, 0},
    {LORA_TARGET_K, "attn.c_attn.k", 0, 1},        {LORA_TARGET_V, "attn.c_attn.v", 0, 2},
    {LORA_TARGET_ATTN_PROJ, "attn.c_proj", 1, -1}, {LORA_TARGET_MLP_FC, "mlp.c_fc", 2, -1},
    {LORA_TARGET_MLP_PROJ, "mlp.c_proj", 3, -1},
};

static const lora_slot *slot_for(uint32_t bit) {
    for (size_t k = 0; k < sizeof lora_slots / sizeof lora_slots[0]; k++)
        if (lora_slots[k].bit == bit) return &lora_slots[k];
    return NULL;
}

/* Plans one adapter: attaches it to its site and registers A and B. */
static lora_status plan_site(lora_model *m, const lora_site_spec *sp, float dropout,
                             uint32_t uid, lora_error *err) {
    const lora_slot *sl = slot_for(sp->target);
    if (!sl || sp->layer < 0 || sp->layer >= m->cfg.n_layer || sp->r <= 0)
        return lora_errorf(err, LORA_ERR_ARG, "LoRA: invalid site (layer %d, target %#x, r %d)",
                           (int)sp->layer, (unsigned)sp->target, (int)sp->r);
    gpt2_layer *ly       = &m->layers[sp->layer];
    linear     *sites[4] = {&ly->c_attn, &ly->attn_proj, &ly->c_fc, &ly->mlp_proj};
    linear     *site     = sites[sl->site];
    int32_t     C        = m->cfg.n_embd;
    lora_state *s        = calloc(1, sizeof *s);
    if (!s) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", site->name);
    s->r       = sp->r;
    s->in      = site->in;
    s->len     = sl->slice < 0 ? site->out : C;
    s->scale   = sp->scale;
    s->dropout = dropout;
    adapter     a  = {&lora_adapter_ops, sl->slice < 0 ? 0 : sl->slice * C, s->len, uid, s};
    lora_status st = linear_attach(site, &a, err);
    if (st != LORA_OK) {
        free(s);
        return st;
    }
    char    name[TPARAM_NAME_MAX];
    int64_t shape_a[2] = {s->r, s->in}, shape_b[2] = {s->len, s->r};
    snprintf(name, sizeof name, "h.%d.%s.lora_A", (int)sp->layer, sl->suffix);
    int rc = tparams_add(&m->tp, name, 2, shape_a, NULL, &s->A, NULL, &s->dA, err);
    if (rc < 0) return (lora_status)rc;
    snprintf(name, sizeof name, "h.%d.%s.lora_B", (int)sp->layer, sl->suffix);
    rc = tparams_add(&m->tp, name, 2, shape_b, NULL, &s->B, NULL, &s->dB, err);
    return rc < 0 ? (lora_status)rc : LORA_OK;
}

int32_t lora_specs_from_params(const lora_model *m, const lora_adapter_params *p,
                               lora_site_spec *specs, int32_t cap) {
    int32_t n     = 0;
    float   scale = p->use_rslora ? p->alpha / sqrtf((float)p->r) : p->alpha / (float)p->r;
    for (int32_t l = 0; l < m->cfg.n_layer; l++)
        for (size_t k = 0; k < sizeof lora_slots / sizeof lora_slots[0]; k++) {
            if (!(p->targets & lora_slots[k].bit)) continue;
            if (n < cap) specs[n] = (lora_site_spec){l, lora_slots[k].bit, p->r, scale};
            n++;
        }
    return n;
}

static lora_status lora_plan(lora_model *m, const lora_adapter_params *p,
                             const lora_site_spec *specs, int32_t n_specs, lora_error *err) {
    if (!(p->dropout >= 0.0f && p->dropout < 1.0f))
        return lora_errorf(err, LORA_ERR_ARG, "LoRA dropout %g must be in [0, 1)", p->dropout);
    lora_site_spec *own = NULL;
    if (!specs) {
        if (p->r <= 0)
            return lora_errorf(err, LORA_ERR_ARG, "LoRA rank r=%d must be positive", p->r);
        if (!p->targets) return lora_errorf(err, LORA_ERR_ARG, "LoRA: no target modules");
        if ((p->targets & LORA_TARGET_C_ATTN) &&
            (p->targets & (LORA_TARGET_Q | LORA_TARGET_K | LORA_TARGET_V)))
            return lora_errorf(err, LORA_ERR_ARG,
                               "LoRA targets: c_attn (the whole fused projection) and its q/k/v "
                               "slices cannot both be targeted");
        n_specs = lora_specs_from_params(m, p, NULL, 0);
        own     = calloc((size_t)n_specs, sizeof *own);
        if (!own) return lora_errorf(err, LORA_ERR_NOMEM, "LoRA: out of memory");
        lora_specs_from_params(m, p, own, n_specs);
        specs = own;
    }
    lora_status st = LORA_OK;
    for (int32_t i = 0; i < n_specs && st == LORA_OK; i++)
        st = plan_site(m, &specs[i], p->dropout, (uint32_t)i, err);
    free(own);
    return st;
}

static lora_status lora_init_params(lora_model *m, const lora_adapter_params *p,
                                    lora_error *err) {
    (void)err;
    for (int32_t l = 0; l < m->cfg.n_layer; l++) {
        gpt2_layer *ly       = &m->layers[l];
        linear     *sites[4] = {&ly->c_attn, &ly->attn_proj, &ly->c_fc, &ly->mlp_proj};
        for (int k = 0; k < 4; k++)
            for (int32_t i = 0; i < sites[k]->n_adapters; i++) {
                adapter *a = &sites[k]->adapters[i];
                if (a->ops != &lora_adapter_ops) continue;
                lora_state *s   = a->state;
                uint64_t    key = rng_key(p->seed, a->uid, 0);
                size_t      n   = (size_t)s->r * (size_t)s->in;
                if (p->init == LORA_INIT_GAUSSIAN) {
                    float std = 1.0f / (float)s->r;
                    for (size_t j = 0; j < n; j++) s->A[j] = std * rng_normal(key, j);
                } else {
                    float bound = 1.0f / sqrtf((float)s->in);
                    for (size_t j = 0; j < n; j++)
                        s->A[j] = bound * (2.0f * rng_uniform(key, j) - 1.0f);
                }
                memset(s->B, 0, (size_t)s->len * (size_t)s->r * sizeof(float));
            }
    }
    return LORA_OK;
}

const peft_method peft_method_lora = {.name = "lora", .plan = lora_plan, .init = lora_init_params};

int32_t lora_sites_list(const lora_model *m, lora_site_view *out, int32_t cap) {
    static const uint32_t site_bits[4] = {LORA_TARGET_C_ATTN, LORA_TARGET_ATTN_PROJ,
                                          LORA_TARGET_MLP_FC, LORA_TARGET_MLP_PROJ};
    static const uint32_t slice_bits[3] = {LORA_TARGET_Q, LORA_TARGET_K, LORA_TARGET_V};
    int32_t n = 0, C = m->cfg.n_embd;
    for (int32_t l = 0; l < m->cfg.n_layer; l++) {
        const gpt2_layer *ly = &m->layers[l];
        const linear *sites[4] = {&ly->c_attn, &ly->attn_proj, &ly->c_fc, &ly->mlp_proj};
        for (int k = 0; k < 4; k++)
            for (int32_t i = 0; i < sites[k]->n_adapters; i++) {
                const adapter *a = &sites[k]->adapters[i];
                if (a->ops != &lora_adapter_ops) continue;
                const lora_state *s = a->state;
                if (n < cap) {
                    lora_site_view *v = &out[n];
                    v->layer  = l;
                    v->target = (k == 0 && a->len != sites[k]->out) ? slice_bits[a->off / C]
                                                                    : site_bits[k];
                    v->r      = s->r;
                    v->in     = s->in;
                    v->len    = s->len;
                    v->scale  = s->scale;
                    v->A      = s->A;
                    v->B      = s->B;
                }
                n++;
            }
    }
    return n;
}

const char *lora_target_suffix(uint32_t target) {
    const lora_slot *sl = slot_for(target);
    return sl ? sl->suffix : NULL;
}
