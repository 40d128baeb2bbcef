/*
 * adamw.c — AdamW (Loshchilov & Hutter) over the trainable span, with global grad-norm
 * clipping and Hugging Face's learning-rate schedules. Matches torch.optim.AdamW and
 * torch.nn.utils.clip_grad_norm_ step for step.
 */
#include "core/error.h"
#include "core/profile.h"
#include "model/gpt2.h"
#include "peft/peft.h"

#include <math.h>
#include <string.h>

lora_optim_params lora_optim_params_default(void) {
    lora_optim_params p;
    memset(&p, 0, sizeof p);
    p.lr           = 2e-4f;
    p.beta1        = 0.9f;
    p.beta2        = 0.999f;
    p.eps          = 1e-8f;
    p.weight_decay = 0.01f;
    p.clip         = 1.0f;
    p.schedule     = LORA_SCHEDULE_LINEAR;
    p.warmup_steps = 500;
    p.total_steps  = 0;
    return p;
}

float lora_schedule_lr(const lora_optim_params *p, int64_t step) {
    double  w = (double)p->warmup_steps, t = (double)p->total_steps, s = (double)step;
    double  mult;
    if (step < p->warmup_steps) {
        mult = s / (w > 1 ? w : 1);
    } else if (p->schedule == LORA_SCHEDULE_LINEAR) {
        double span = t - w > 1 ? t - w : 1;
        mult        = (t - s) / span;
        if (mult < 0) mult = 0;
    } else if (p->schedule == LORA_SCHEDULE_COSINE) {
        double span = t - w > 1 ? t - w : 1;
        mult        = 0.5 * (1.0 + cos(3.14159265358979323846 * (s - w) / span));
        if (mult < 0) mult = 0;
    } else {
        mult = 1.0;
    }
    return (float)(p->lr * mult);
}

/* The step proper (lora_model_step times it when profiling). */
static lora_status adamw_step(lora_model *m, const lora_optim_params *p, float lr,
                              float *grad_norm, lora_error *err) {
    if (m->attached <= 0)
        return lora_errorf(err, LORA_ERR_STATE, "step: no trainable parameters");
    if (m->merged)
        return lora_errorf(err, LORA_ERR_STATE, "step: the model is merged, it cannot be "
                           "trained (hint: lora_model_unmerge first)");
    if (!(p->beta1 >= 0 && p->beta1 < 1 && p->beta2 >= 0 && p->beta2 < 1 && p->eps > 0))
        return lora_errorf(err, LORA_ERR_ARG, "step: invalid AdamW betas/eps");
    tparams *tp = &m->tp;
    size_t   n  = tp->total;
    double   sq = 0;
#pragma omp parallel for reduction(+ : sq) schedule(static)
    for (size_t i = 0; i < n; i++) sq += (double)tp->grad[i] * tp->grad[i];
    double norm = sqrt(sq);
    if (grad_norm) *grad_norm = (float)norm;
    if (p->clip > 0) {
        double coef = (double)p->clip / (norm + 1e-6); /* as clip_grad_norm_ */
        if (coef < 1.0) {
            float c = (float)coef;
#pragma omp parallel for schedule(static)
            for (size_t i = 0; i < n; i++) tp->grad[i] *= c;
        }
    }
    tp->adam_t++;
    float b1 = p->beta1, b2 = p->beta2;
    float bc1 = 1.0f - powf(b1, (float)tp->adam_t);
    float bc2_sqrt = sqrtf(1.0f - powf(b2, (float)tp->adam_t));
    float step_size = lr / bc1;
    for (int32_t k = 0; k < tp->n; k++) {
        const tparam *t     = &tp->items[k];
        float        *w     = tp->data + t->offset;
        const float  *g     = tp->grad + t->offset;
        float        *mm    = tp->m + t->offset;
        float        *vv    = tp->v + t->offset;
        float         decay = t->decay ? 1.0f - lr * p->weight_decay : 1.0f;
        int64_t       cnt   = t->numel;
#pragma omp parallel for schedule(static) if (cnt > 4096)
        for (int64_t i = 0; i < cnt; i++) {
            w[i] *= decay;
            mm[i]       = b1 * mm[i] + (1.0f - b1) * g[i];
            vv[i]       = b2 * vv[i] + (1.0f - b2) * g[i] * g[i];
            float denom = sqrtf(vv[i]) / bc2_sqrt + p->eps;
            w[i] -= step_size * mm[i] / denom;
        }
    }
    if (m->method && m->method->after_step) return m->method->after_step(m, tp->adam_t - 1, err);
    return LORA_OK;
}

lora_status lora_model_step(lora_model *m, const lora_optim_params *p, float lr,
                            float *grad_norm, lora_error *err) {
    double      t0 = m->ctx.prof ? prof_now() : 0.0;
    lora_status st = adamw_step(m, p, lr, grad_norm, err);
    if (m->ctx.prof) {
        double dt = prof_now() - t0;
        m->ctx.prof->op_s[LORA_PROF_STEP][LORA_PROF_OPTIMIZER] += dt;
        m->ctx.prof->phase_s[LORA_PROF_STEP] += dt;
        m->ctx.prof->n_calls[LORA_PROF_STEP]++;
    }
    return st;
}

void lora_model_scale_grad(lora_model *m, float factor) {
    tparams *tp = &m->tp;
    if (!tp->grad) return;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < tp->total; i++) tp->grad[i] *= factor;
}
