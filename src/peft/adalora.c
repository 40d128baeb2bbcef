/*
 * adalora.c — AdaLoRA (Zhang et al., ICLR 2023) as PEFT implements it: every adapted weight
 * gets an SVD-shaped update ΔW = P·Λ·Q, an orthogonality penalty keeps P and Q near
 * orthonormal, and a rank allocator scores every singular triplet (P_:i, λ_i, Q_i:) by its
 * smoothed sensitivity and prunes the total rank on a cubic schedule.
 *
 *   h = W0·x + b + alpha / (ranknum + 1e-5) · P·(Λ ⊙ (Q·dropout(x)))
 *
 * P = lora_B (len, r), Λ = lora_E (r, 1), Q = lora_A (r, in); ranknum is the initial r and is
 * never changed by pruning (PEFT's scaling = lora_alpha, divided by ranknum + 1e-5). Pruning
 * sets λ_i to zero and keeps P_:i and Q_i:, so a pruned triplet can come back at the next
 * reallocation. Init as PEFT: Λ = 0, P and Q ~ N(0, 0.02).
 *
 * Where PEFT and the paper differ, this follows PEFT (for file and behaviour compatibility):
 *  - the penalty is ‖PᵀP − I‖_F + ‖QQᵀ − I‖_F, not squared (paper eq. (4) squares it), and is
 *    averaged over the 2 × n_sites matrices before the weight γ;
 *  - the sensitivity of a step is taken after the optimizer update (PEFT's
 *    update_and_allocate runs after optimizer.step()): I = |w_{t+1} · g_t| with g_t the
 *    gradient the step used, i.e. after gradient clipping (clip_grad_norm_ scales p.grad in
 *    place before the step); the paper writes I = |w_t · g_t|;
 *  - the budget is an int() of the cubic, masking happens when step % ΔT == 0, and the
 *    threshold is the (b(0) − b(t))-th smallest score with every score <= it pruned (ties
 *    prune more).
 *
 * This file is the method table and its site operations. It is not the PEFT file format
 * (adalora_io.c) and not the optimizer: AdamW calls after_step, the model calls the penalty.
 *
 * N = rows (B*T), r = initial rank, in = site input width, len = output slice width.
 */
#include "peft/adalora.h"

#include "core/error.h"
#include "core/kernels.h"
#include "core/rng.h"
#include "peft/peft.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- one site ---- */

typedef struct ada_site {
    int32_t  r, in, len;
    float    scale;   /* alpha / (r + 1e-5) */
    float    dropout; /* probability of zeroing an input element, training only */
    float   *A, *dA;  /* (r, in)  Q, bound by the registry */
    float   *E, *dE;  /* (r)      Λ */
    float   *B, *dB;  /* (len, r) P */
    float   *u;       /* (n_max, r) saved Q·dropout(x), owned */
    int32_t  n_max;
    int32_t  layer;
    uint32_t target;
} ada_site;

/* w (N, r) = u ⊙ Λ, Λ broadcast over rows */
static void scale_columns(float *w, const float *u, const float *E, int N, int r) {
#pragma omp parallel for schedule(static) if ((size_t)N * (size_t)r > 65536)
    for (int n = 0; n < N; n++)
        for (int i = 0; i < r; i++)
            w[(size_t)n * r + i] = u[(size_t)n * r + i] * E[i];
}

static void ada_forward(adapter *a, const linear *site, float *out, const float *inp, int N,
                        const peft_ctx *ctx) {
    ada_site *s = a->state;
    float    *w = ctx->scratch; /* (N, r) */
    LORA_ASSERT(N <= s->n_max);
    /* u (N,r) = dropout(x) · Qᵀ;  w = u ⊙ Λ;  out[:, off:off+len] += scale · w · Pᵀ */
    adapter_down(s->u, inp, s->A, N, s->r, s->in, adapter_dropout_on(ctx, s->dropout),
                 s->dropout, adapter_dropout_key(a, ctx));
    scale_columns(w, s->u, s->E, N, s->r);
    gemm(0, 1, N, s->len, s->r, s->scale, w, s->r, s->B, s->r, 1.0f, out + a->off, site->out);
}

/* Accumulates dP, dΛ, dQ and (if dinp) dX. */
static void ada_backward(adapter *a, const linear *site, float *dinp, const float *dout,
                         const float *inp, int N, const peft_ctx *ctx) {
    ada_site    *s       = a->state;
    int          dropped = adapter_dropout_on(ctx, s->dropout);
    int          r       = s->r;
    float       *dw      = ctx->scratch;         /* (N, r) */
    float       *w       = dw + (size_t)N * r;   /* (N, r) */
    const float *dslice  = dout + a->off;        /* (N, len), row stride site->out */
    /* dP (len,r) += scale · dsliceᵀ · (u ⊙ Λ) */
    scale_columns(w, s->u, s->E, N, r);
    gemm(1, 0, s->len, r, N, s->scale, dslice, site->out, w, r, 1.0f, s->dB, r);
    /* dw (N,r) = scale · dslice · P;  dΛ_i += Σ_n dw[n,i] u[n,i];  du = dw ⊙ Λ */
    gemm(0, 0, N, r, s->len, s->scale, dslice, site->out, s->B, r, 0.0f, dw, r);
    for (int i = 0; i < r; i++) {
        double acc = 0;
        for (int n = 0; n < N; n++)
            acc += (double)dw[(size_t)n * r + i] * s->u[(size_t)n * r + i];
        s->dE[i] += (float)acc;
    }
    scale_columns(dw, dw, s->E, N, r);
    /* dQ (r,in) += duᵀ · dropout(x);  dx += (du · Q) ⊙ mask / (1 - p) */
    adapter_up_grads(s->dA, dinp, dw, inp, s->A, N, r, s->in, dropped, s->dropout,
                     adapter_dropout_key(a, ctx));
}

static lora_status ada_reserve(adapter *a, const linear *site, int N, size_t *scratch,
                               lora_error *err) {
    ada_site *s = a->state;
    lora_status st = adapter_reserve_rows(&s->u, &s->n_max, N, s->r, site, err);
    if (st != LORA_OK) return st;
    *scratch = (size_t)N * (size_t)(2 * s->r);
    return LORA_OK;
}

/* W[:, off:off+len] += scale · Qᵀ · diag(Λ) · Pᵀ, one rank-1 product per kept triplet (a
 * pruned triplet has λ_i = 0 and adds nothing) */
static void ada_merge(const adapter *a, const linear *site, float *w) {
    const ada_site *s = a->state;
    for (int32_t i = 0; i < s->r; i++) {
        if (s->E[i] == 0.0f) continue;
        gemm(1, 1, s->in, s->len, 1, s->scale * s->E[i], s->A + (size_t)i * s->in, s->in,
             s->B + i, s->r, 1.0f, w + a->off, site->out);
    }
}

static void ada_free_site(adapter *a) {
    ada_site *s = a->state;
    if (s) free(s->u);
    free(s);
    a->state = NULL;
}

static const adapter_ops adalora_adapter_ops = {
    .name     = "adalora",
    .forward  = ada_forward,
    .backward = ada_backward,
    .reserve  = ada_reserve,
    .free     = ada_free_site,
    .merge    = ada_merge,
};

/* ---- the model-level state: the rank allocator ---- */

typedef struct ada_model {
    lora_adalora_params cfg;
    int32_t             n_sites;
    ada_site          **sites;      /* (n_sites) borrowed from the adapters, allocator order */
    int32_t            *first;      /* (n_sites) index of each site's first triplet */
    int32_t             init_bgt;   /* Σ r */
    int32_t             target_bgt; /* target_r × n_sites */
    int32_t             r_max;
    float              *ipt_avg; /* (tp.total) Ī, the registry's layout */
    float              *unc_avg; /* (tp.total) Ū */
    float              *mask;    /* (init_bgt) 1 kept, 0 pruned */
    float              *final;   /* (1) 1 once the mask is frozen */
    float              *cov;     /* (r_max, r_max) scratch of the penalty */
    double             *score;   /* (init_bgt) scratch */
    double             *sorted;  /* (init_bgt) scratch */
    int64_t             last_step;
    int32_t             last_budget, last_masked;
} ada_model;

static ada_model *ada_of(const lora_model *m) {
    return m->attached > 0 && m->method == &peft_method_adalora ? m->method_state : NULL;
}

/* PEFT's budget_schedule (tinit < total - tfinal is checked at attach). */
static int32_t budget_schedule(const ada_model *am, int64_t step, int *mask_ind) {
    const lora_adalora_params *c = &am->cfg;
    if (step <= c->tinit) {
        *mask_ind = 0;
        return am->init_bgt;
    }
    if (step > c->total_step - c->tfinal) {
        *mask_ind = 1;
        return am->target_bgt;
    }
    /* AdaLoRA eq. (12): b(t) = b_T + (b_0 − b_T)·(1 − (t − t_i)/(T − t_i − t_f))³ */
    double mul = 1.0 - (double)(step - c->tinit) / (double)(c->total_step - c->tfinal - c->tinit);
    double b   = (double)(am->init_bgt - am->target_bgt) * pow(mul, 3.0) + am->target_bgt;
    *mask_ind  = step % c->delta_t == 0;
    return (int32_t)b; /* Python's int(): toward zero, b >= 0 */
}

/* AdaLoRA eqs. (8)-(10) as PEFT's update_ipt: I = |w · g|, Ī ← β1 Ī + (1−β1) I,
 * Ū ← β2 Ū + (1−β2) |I − Ī| (with the updated Ī), over every trainable entry. PEFT does this
 * in float32, as here. */
static void update_ipt(ada_model *am, const tparams *tp) {
    float  b1 = am->cfg.beta1, b2 = am->cfg.beta2;
    size_t n = tp->total;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float ipt      = fabsf(tp->data[i] * tp->grad[i]);
        float avg      = b1 * am->ipt_avg[i] + (1.0f - b1) * ipt;
        am->ipt_avg[i] = avg;
        am->unc_avg[i] = b2 * am->unc_avg[i] + (1.0f - b2) * fabsf(ipt - avg);
    }
}

/* AdaLoRA eq. (7) with s = Ī·Ū: S_i = s(λ_i) + mean_j s(Q_ij) + mean_j s(P_ji). */
static void triplet_scores(const ada_model *am, const tparams *tp, double *out) {
    for (int32_t k = 0; k < am->n_sites; k++) {
        const ada_site *s  = am->sites[k];
        size_t          oa = (size_t)(s->A - tp->data), oe = (size_t)(s->E - tp->data);
        size_t          ob = (size_t)(s->B - tp->data);
        for (int32_t i = 0; i < s->r; i++) {
            double sa = 0, sb = 0;
            for (int32_t j = 0; j < s->in; j++) {
                size_t x = oa + (size_t)i * s->in + j;
                sa += (double)am->ipt_avg[x] * am->unc_avg[x];
            }
            for (int32_t j = 0; j < s->len; j++) {
                size_t x = ob + (size_t)j * s->r + i;
                sb += (double)am->ipt_avg[x] * am->unc_avg[x];
            }
            double se             = (double)am->ipt_avg[oe + i] * am->unc_avg[oe + i];
            out[am->first[k] + i] = se + sa / s->in + sb / s->len;
        }
    }
}

/* Zeroes Λ entries whose mask is 0. */
static void apply_mask(ada_model *am) {
    for (int32_t k = 0; k < am->n_sites; k++) {
        ada_site *s = am->sites[k];
        for (int32_t i = 0; i < s->r; i++)
            if (am->mask[am->first[k] + i] == 0.0f) s->E[i] = 0.0f;
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* PEFT's mask_to_budget: prune every triplet whose score is <= the (b(0) − budget)-th
 * smallest score over all sites. A budget that allows every triplet prunes none. */
static void mask_to_budget(ada_model *am, const tparams *tp, int32_t budget) {
    int32_t k = am->init_bgt - budget;
    if (k <= 0) {
        for (int32_t i = 0; i < am->init_bgt; i++)
            am->mask[i] = 1.0f;
        return;
    }
    if (k > am->init_bgt) k = am->init_bgt;
    triplet_scores(am, tp, am->score);
    memcpy(am->sorted, am->score, (size_t)am->init_bgt * sizeof(double));
    qsort(am->sorted, (size_t)am->init_bgt, sizeof(double), cmp_double);
    double threshold = am->sorted[k - 1];
    for (int32_t i = 0; i < am->init_bgt; i++)
        am->mask[i] = am->score[i] <= threshold ? 0.0f : 1.0f;
    apply_mask(am);
}

/* PEFT's update_and_allocate(global_step), run after every optimizer step. */
static lora_status ada_after_step(lora_model *m, int64_t step, lora_error *err) {
    (void)err;
    ada_model *am = m->method_state;
    if (!am) return LORA_OK;
    int64_t t_final  = am->cfg.total_step - am->cfg.tfinal;
    int     mask_ind = 0;
    am->last_step    = step;
    am->last_masked  = 0;
    if (am->final[0] != 0.0f || step > t_final) {
        /* the final phase: the frozen pattern, re-applied after every update */
        apply_mask(am);
        am->last_budget = am->target_bgt;
        am->last_masked = 1;
        if (am->final[0] != 0.0f && step <= t_final) {
            int32_t kept = 0;
            for (int32_t i = 0; i < am->init_bgt; i++)
                kept += am->mask[i] != 0.0f;
            am->last_budget = kept; /* a loaded pattern: its own budget */
        }
        return LORA_OK;
    }
    if (step < t_final) update_ipt(am, &m->tp);
    am->last_budget = budget_schedule(am, step, &mask_ind);
    if (step == t_final) mask_ind = 1; /* force the final allocation */
    if (mask_ind) {
        mask_to_budget(am, &m->tp, am->last_budget);
        am->last_masked = 1;
    }
    if (step == t_final) { /* freeze the pattern; PEFT resets the EMAs here */
        am->final[0] = 1.0f;
        memset(am->ipt_avg, 0, m->tp.total * sizeof(float));
        memset(am->unc_avg, 0, m->tp.total * sizeof(float));
    }
    return LORA_OK;
}

/* ---- the orthogonality penalty ---- */

/*
 * cov (r, r) = X·Xᵀ (rows of X (r, n) when trans == 0) or Xᵀ·X (X (n, r), trans == 1), then
 * cov − I; returns ‖cov − I‖_F (AdaLoRA eq. (4) without the square, as PEFT).
 */
static double cov_minus_eye(float *cov, const float *X, int r, int n, int trans) {
    if (!trans)
        gemm(0, 1, r, r, n, 1.0f, X, n, X, n, 0.0f, cov, r);
    else
        gemm(1, 0, r, r, n, 1.0f, X, r, X, r, 0.0f, cov, r);
    double sq = 0;
    for (int i = 0; i < r; i++) {
        cov[(size_t)i * r + i] -= 1.0f;
        for (int j = 0; j < r; j++)
            sq += (double)cov[(size_t)i * r + j] * cov[(size_t)i * r + j];
    }
    return sqrt(sq);
}

/*
 * R = γ / n Σ_sites (‖QQᵀ − I‖_F + ‖PᵀP − I‖_F), n = 2 × sites. With grad: since
 * d‖M‖_F = ⟨M, dM⟩ / ‖M‖_F and M symmetric, dQ += γ/n · 2(QQᵀ − I)Q / ‖QQᵀ − I‖_F and
 * dP += γ/n · 2P(PᵀP − I) / ‖PᵀP − I‖_F (no gradient where the norm is 0, as torch).
 */
static float ada_regularizer(lora_model *m, int grad) {
    ada_model *am = m->method_state;
    if (!am || am->n_sites == 0 || !(am->cfg.orth_reg > 0.0f)) return 0.0f;
    double n     = 2.0 * am->n_sites;
    double gamma = am->cfg.orth_reg;
    double total = 0;
    for (int32_t k = 0; k < am->n_sites; k++) {
        ada_site *s  = am->sites[k];
        double    na = cov_minus_eye(am->cov, s->A, s->r, s->in, 0);
        total += na;
        if (grad && na > 0) /* dQ (r,in) += c · M · Q */
            gemm(0, 0, s->r, s->in, s->r, (float)(2.0 * gamma / (n * na)), am->cov, s->r, s->A,
                 s->in, 1.0f, s->dA, s->in);
        double nb = cov_minus_eye(am->cov, s->B, s->r, s->len, 1);
        total += nb;
        if (grad && nb > 0) /* dP (len,r) += c · P · M */
            gemm(0, 0, s->len, s->r, s->r, (float)(2.0 * gamma / (n * nb)), s->B, s->r, am->cov,
                 s->r, 1.0f, s->dB, s->r);
    }
    return (float)(gamma * total / n);
}

/* ---- planning and initialisation ---- */

typedef struct ada_slot {
    uint32_t bit;
    int      site;  /* 0 c_attn, 1 attn_proj, 2 c_fc, 3 mlp_proj */
    int      slice; /* -1 whole site, else the q/k/v third of c_attn */
} ada_slot;

/* The allocator (and file) order of targets within a layer, as LoRA's. */
static const ada_slot ada_slots[] = {
    {LORA_TARGET_Q, 0, 0},         {LORA_TARGET_K, 0, 1},          {LORA_TARGET_V, 0, 2},
    {LORA_TARGET_C_ATTN, 0, -1},   {LORA_TARGET_ATTN_PROJ, 1, -1}, {LORA_TARGET_MLP_FC, 2, -1},
    {LORA_TARGET_MLP_PROJ, 3, -1},
};
#define N_SLOTS (sizeof ada_slots / sizeof ada_slots[0])

static const ada_slot *ada_slot_for(uint32_t bit) {
    for (size_t k = 0; k < N_SLOTS; k++)
        if (ada_slots[k].bit == bit) return &ada_slots[k];
    return NULL;
}

static linear *site_linear(lora_model *m, int32_t layer, int site) {
    gpt2_layer *ly   = &m->layers[layer];
    linear     *s[4] = {&ly->c_attn, &ly->attn_proj, &ly->c_fc, &ly->mlp_proj};
    return s[site];
}

static lora_status plan_site(lora_model *m, const lora_site_spec *sp, float dropout, uint32_t uid,
                             lora_error *err) {
    const ada_slot *sl = ada_slot_for(sp->target);
    if (!sl || sp->layer < 0 || sp->layer >= m->cfg.n_layer || sp->r <= 0 || sp->r > 65536)
        return lora_errorf(err, LORA_ERR_ARG, "AdaLoRA: invalid site (layer %d, target %#x, r %d)",
                           (int)sp->layer, (unsigned)sp->target, (int)sp->r);
    linear   *site = site_linear(m, sp->layer, sl->site);
    int32_t   C    = m->cfg.n_embd;
    ada_site *s    = calloc(1, sizeof *s);
    if (!s) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", site->name);
    s->r           = sp->r;
    s->in          = site->in;
    s->len         = sl->slice < 0 ? site->out : C;
    s->scale       = sp->scale;
    s->dropout     = dropout;
    s->layer       = sp->layer;
    s->target      = sp->target;
    adapter     a  = {&adalora_adapter_ops, sl->slice < 0 ? 0 : sl->slice * C, s->len, uid, s};
    lora_status st = linear_attach(site, &a, err);
    if (st != LORA_OK) {
        free(s);
        return st;
    }
    const char *suffix = lora_target_suffix(sp->target);
    char        name[TPARAM_NAME_MAX];
    int64_t     shape_a[2] = {s->r, s->in}, shape_e[2] = {s->r, 1}, shape_b[2] = {s->len, s->r};
    /* Λ is (r, 1) as in PEFT, so AdamW's "2-D tensors decay" rule treats it as PEFT + HF's
     * Trainer do (weight decay on every non-bias parameter) */
    snprintf(name, sizeof name, "h.%d.%s.lora_A", (int)sp->layer, suffix);
    int rc = tparams_add(&m->tp, name, 2, shape_a, NULL, &s->A, NULL, &s->dA, err);
    if (rc < 0) return (lora_status)rc;
    snprintf(name, sizeof name, "h.%d.%s.lora_E", (int)sp->layer, suffix);
    rc = tparams_add(&m->tp, name, 2, shape_e, NULL, &s->E, NULL, &s->dE, err);
    if (rc < 0) return (lora_status)rc;
    snprintf(name, sizeof name, "h.%d.%s.lora_B", (int)sp->layer, suffix);
    rc = tparams_add(&m->tp, name, 2, shape_b, NULL, &s->B, NULL, &s->dB, err);
    return rc < 0 ? (lora_status)rc : LORA_OK;
}

/* The output scale of a site of initial rank r: PEFT's scaling (lora_alpha, or r when alpha
 * is not positive) / (ranknum + 1e-5). */
static float ada_scale(float alpha, int32_t r) {
    double scaling = alpha > 0.0f ? (double)alpha : (double)r;
    return (float)(scaling / ((double)r + 1e-5));
}

static lora_status check_params(const lora_adapter_params *p, lora_error *err) {
    const lora_adalora_params *c = &p->adalora;
    if (!(p->dropout >= 0.0f && p->dropout < 1.0f))
        return lora_errorf(err, LORA_ERR_ARG, "AdaLoRA dropout %g must be in [0, 1)", p->dropout);
    if (c->total_step <= 0)
        return lora_errorf(err, LORA_ERR_ARG,
                           "AdaLoRA needs the planned number of steps "
                           "(total_step %lld; hint: the trainer sets it from --steps)",
                           (long long)c->total_step);
    if (c->tinit < 0 || c->tfinal < 0 || c->tinit >= c->total_step - c->tfinal)
        return lora_errorf(err, LORA_ERR_ARG,
                           "AdaLoRA schedule leaves no budgeting phase: "
                           "tinit %lld, tfinal %lld, total %lld steps (hint: tinit + tfinal must "
                           "be below the step count)",
                           (long long)c->tinit, (long long)c->tfinal, (long long)c->total_step);
    if (c->delta_t < 1)
        return lora_errorf(err, LORA_ERR_ARG, "AdaLoRA delta_t %lld must be >= 1",
                           (long long)c->delta_t);
    if (!(c->beta1 > 0.0f && c->beta1 < 1.0f && c->beta2 > 0.0f && c->beta2 < 1.0f))
        return lora_errorf(err, LORA_ERR_ARG, "AdaLoRA beta1 %g and beta2 %g must be in (0, 1)",
                           c->beta1, c->beta2);
    if (!(c->orth_reg >= 0.0f) || isinf(c->orth_reg))
        return lora_errorf(err, LORA_ERR_ARG, "AdaLoRA orth_reg %g must be >= 0", c->orth_reg);
    return LORA_OK;
}

static lora_status ada_plan(lora_model *m, const lora_adapter_params *p,
                            const lora_site_spec *specs, int32_t n_specs, lora_error *err) {
    lora_status st = check_params(p, err);
    if (st != LORA_OK) return st;
    lora_site_spec *own = NULL;
    if (!specs) {
        if (p->r <= 0)
            return lora_errorf(err, LORA_ERR_ARG, "AdaLoRA initial rank %d must be positive", p->r);
        if (!p->targets) return lora_errorf(err, LORA_ERR_ARG, "AdaLoRA: no target modules");
        if ((p->targets & LORA_TARGET_C_ATTN) &&
            (p->targets & (LORA_TARGET_Q | LORA_TARGET_K | LORA_TARGET_V)))
            return lora_errorf(err, LORA_ERR_ARG,
                               "AdaLoRA targets: c_attn (the whole fused projection) and its "
                               "q/k/v slices cannot both be targeted");
        n_specs = lora_specs_from_params(m, p, NULL, 0);
        own     = calloc((size_t)n_specs + 1, sizeof *own);
        if (!own) return lora_errorf(err, LORA_ERR_NOMEM, "AdaLoRA: out of memory");
        lora_specs_from_params(m, p, own, n_specs);
        for (int32_t i = 0; i < n_specs; i++)
            own[i].scale = ada_scale(p->alpha, own[i].r);
        specs = own;
    }
    int64_t init_bgt = 0;
    for (int32_t i = 0; i < n_specs; i++)
        init_bgt += specs[i].r > 0 ? specs[i].r : 0;
    if (p->adalora.target_r < 0 || (int64_t)p->adalora.target_r * n_specs > init_bgt)
        st = lora_errorf(err, LORA_ERR_ARG,
                         "AdaLoRA target rank %d must be in [0, the initial "
                         "rank %d]",
                         (int)p->adalora.target_r, n_specs ? (int)(init_bgt / n_specs) : 0);
    for (int32_t i = 0; i < n_specs && st == LORA_OK; i++)
        st = plan_site(m, &specs[i], p->dropout, (uint32_t)i, err);
    free(own);
    return st;
}

static void ada_free_model(lora_model *m) {
    ada_model *am = m->method_state;
    if (!am) return;
    free(am->sites);
    free(am->first);
    free(am->ipt_avg);
    free(am->score);
    free(am->cov);
    free(am);
    m->method_state = NULL;
}

/* Builds the allocator over the attached sites (allocator order) and initialises Q, Λ, P. */
static lora_status ada_init(lora_model *m, const lora_adapter_params *p, lora_error *err) {
    ada_model *am = calloc(1, sizeof *am);
    if (!am) return lora_errorf(err, LORA_ERR_NOMEM, "AdaLoRA: out of memory");
    m->method_state = am;
    am->cfg         = p->adalora;
    am->last_step   = -1;
    int32_t n       = 0;
    for (int pass = 0; pass < 2; pass++) {
        n = 0;
        for (int32_t l = 0; l < m->cfg.n_layer; l++)
            for (int k = 0; k < 4; k++) {
                linear *site = site_linear(m, l, k);
                for (int32_t i = 0; i < site->n_adapters; i++) {
                    if (site->adapters[i].ops != &adalora_adapter_ops) continue;
                    if (pass) am->sites[n] = site->adapters[i].state;
                    n++;
                }
            }
        if (!pass && !(am->sites = calloc((size_t)n + 1, sizeof *am->sites))) goto nomem;
    }
    /* sites of one c_attn attach in spec order; keep q, k, v order within a layer */
    am->n_sites = n;
    if (!(am->first = calloc((size_t)n + 1, sizeof *am->first))) goto nomem;
    for (int32_t k = 0; k < n; k++) {
        am->first[k] = am->init_bgt;
        am->init_bgt += am->sites[k]->r;
        if (am->sites[k]->r > am->r_max) am->r_max = am->sites[k]->r;
    }
    am->target_bgt = p->adalora.target_r * n;
    size_t total = m->tp.total ? m->tp.total : 1, nb = (size_t)am->init_bgt + 1;
    am->ipt_avg = calloc(2 * total + nb + 1, sizeof(float));
    am->score   = calloc(2 * nb, sizeof(double));
    am->cov     = calloc((size_t)am->r_max * (size_t)am->r_max + 1, sizeof(float));
    if (!am->ipt_avg || !am->score || !am->cov) goto nomem;
    am->unc_avg = am->ipt_avg + total;
    am->mask    = am->unc_avg + total;
    am->final   = am->mask + am->init_bgt;
    am->sorted  = am->score + nb;
    for (int32_t i = 0; i < am->init_bgt; i++)
        am->mask[i] = 1.0f;

    /* PEFT's reset_lora_parameters: Λ = 0, Q and P ~ N(0, 0.02) */
    for (int32_t k = 0; k < n; k++) {
        ada_site *s   = am->sites[k];
        uint64_t  uid = (uint64_t)k;
        uint64_t  ka  = rng_key(p->seed, 0x20000u + uid, 1);
        uint64_t  kb  = rng_key(p->seed, 0x20000u + uid, 2);
        size_t    na = (size_t)s->r * (size_t)s->in, nbb = (size_t)s->len * (size_t)s->r;
        for (size_t j = 0; j < na; j++)
            s->A[j] = 0.02f * rng_normal(ka, j);
        for (size_t j = 0; j < nbb; j++)
            s->B[j] = 0.02f * rng_normal(kb, j);
        memset(s->E, 0, (size_t)s->r * sizeof(float));
    }
    return LORA_OK;
nomem:
    ada_free_model(m);
    return lora_errorf(err, LORA_ERR_NOMEM, "AdaLoRA: out of memory");
}

static int32_t ada_state_views(lora_model *m, peft_state_view *out, int32_t cap) {
    ada_model *am = m->method_state;
    if (!am) return 0;
    peft_state_view v[4] = {{"adalora.exp_avg_ipt", am->ipt_avg, (int64_t)m->tp.total},
                            {"adalora.exp_avg_unc", am->unc_avg, (int64_t)m->tp.total},
                            {"adalora.mask", am->mask, am->init_bgt},
                            {"adalora.final", am->final, 1}};
    for (int32_t i = 0; i < 4 && i < cap; i++)
        out[i] = v[i];
    return 4;
}

const peft_method peft_method_adalora = {
    .name        = "adalora",
    .plan        = ada_plan,
    .init        = ada_init,
    .regularizer = ada_regularizer,
    .after_step  = ada_after_step,
    .state       = ada_state_views,
    .free        = ada_free_model,
};

/* ---- inspection (adalora.h) ---- */

int32_t adalora_sites_list(lora_model *m, adalora_site_view *out, int32_t cap) {
    ada_model *am = ada_of(m);
    if (!am) return 0;
    for (int32_t k = 0; k < am->n_sites && k < cap; k++) {
        ada_site *s  = am->sites[k];
        float    *mk = am->mask + am->first[k];
        out[k]       = (adalora_site_view){s->layer, s->target, s->r, s->in, s->len,
                                           s->scale, s->A,      s->E, s->B,  mk};
    }
    return am->n_sites;
}

lora_status adalora_get_status(const lora_model *m, adalora_status *out) {
    const ada_model *am = ada_of(m);
    if (!am) return LORA_ERR_STATE;
    out->step       = am->last_step;
    out->budget     = am->last_step < 0 ? am->init_bgt : am->last_budget;
    out->masked     = am->last_masked;
    out->init_bgt   = am->init_bgt;
    out->target_bgt = am->target_bgt;
    out->n_sites    = am->n_sites;
    out->kept       = 0;
    for (int32_t i = 0; i < am->init_bgt; i++)
        out->kept += am->mask[i] != 0.0f;
    return LORA_OK;
}

int32_t adalora_budget_at(const lora_model *m, int64_t step, int *mask_ind) {
    const ada_model *am = ada_of(m);
    int              dummy;
    if (!am) return -1;
    return budget_schedule(am, step, mask_ind ? mask_ind : &dummy);
}

int32_t adalora_scores(const lora_model *m, double *out, int32_t cap) {
    const ada_model *am = ada_of(m);
    if (!am || cap < am->init_bgt) return -1;
    triplet_scores(am, &m->tp, out);
    return am->init_bgt;
}

int32_t adalora_masks(const lora_model *m, uint8_t *out, int32_t cap) {
    const ada_model *am = ada_of(m);
    if (!am || cap < am->init_bgt) return -1;
    for (int32_t i = 0; i < am->init_bgt; i++)
        out[i] = am->mask[i] != 0.0f;
    return am->init_bgt;
}

lora_status adalora_set_masks(lora_model *m, const uint8_t *mask, int32_t n, lora_error *err) {
    ada_model *am = ada_of(m);
    if (!am) return lora_errorf(err, LORA_ERR_STATE, "AdaLoRA is not attached");
    if (n != am->init_bgt)
        return lora_errorf(err, LORA_ERR_SHAPE,
                           "AdaLoRA rank pattern has %d entries, the "
                           "adapter %d triplets",
                           (int)n, (int)am->init_bgt);
    for (int32_t i = 0; i < n; i++)
        am->mask[i] = mask[i] ? 1.0f : 0.0f;
    am->final[0] = 1.0f;
    apply_mask(am);
    return LORA_OK;
}

int adalora_mask_is_final(const lora_model *m) {
    const ada_model *am = ada_of(m);
    return am && am->final[0] != 0.0f;
}

float adalora_orth_penalty(lora_model *m) {
    return ada_of(m) ? ada_regularizer(m, 0) : 0.0f;
}
