/*
 * adapters.c — inference adapters: several PEFT adapter directories applied over one base at
 * once, each under a name with its own scale multiplier, summed unmerged in the forward or
 * folded into the weights by merge.c. Not the training registry: these adapters own their
 * tensors, are frozen (backward passes dX through them, no gradient) and are not saved.
 *
 * A directory is read by the same loaders as lora_adapter_load (peft_io.c, adalora_io.c),
 * attached to a weightless "shadow" of the model (same config, no weights), and its sites
 * are copied out, so every check and message of those loaders applies. LoRA sites keep their
 * A, B and alpha / r; AdaLoRA sites are folded to plain low rank over their kept triplets,
 * A' = diag(Λ ⊙ mask)·Q, B' = P, scale alpha / (ranknum + 1e-5).
 *
 * N = rows, r = rank, in = site input width, len = output slice width.
 */
#include "peft/adapters.h"

#include "core/error.h"
#include "core/kernels.h"
#include "peft/adalora.h"
#include "peft/peft.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- one site of an inference adapter ---- */

typedef struct infer_state {
    int32_t r, in, len;
    float   own_scale; /* the file's: alpha / r, alpha / sqrt(r), AdaLoRA's alpha / (R + 1e-5) */
    float   scale;     /* own_scale × the adapter's multiplier: what forward applies */
    float  *A;         /* (r, in) owned, one block with B */
    float  *B;         /* (len, r) */
    float  *u;         /* (n_max, r) this pass's A·x, owned */
    int32_t n_max;
} infer_state;

static void infer_forward(adapter *a, const linear *site, float *out, const float *inp, int N,
                          const peft_ctx *ctx) {
    infer_state *s = a->state;
    (void)ctx; /* frozen: no dropout */
    if (s->scale == 0.0f) return;
    LORA_ASSERT(N <= s->n_max);
    /* u (N,r) = x · Aᵀ;  out[:, off:off+len] += s · u · Bᵀ (as LoRA's forward, same bits) */
    adapter_down(s->u, inp, s->A, N, s->r, s->in, 0, 0.0f, 0);
    gemm(0, 1, N, s->len, s->r, s->scale, s->u, s->r, s->B, s->r, 1.0f, out + a->off, site->out);
}

/* Frozen: dX only. dinp (N,in) += (s · dout_slice · B) · A */
static void infer_backward(adapter *a, const linear *site, float *dinp, const float *dout,
                           const float *inp, int N, const peft_ctx *ctx) {
    infer_state *s = a->state;
    (void)inp;
    if (!dinp || s->scale == 0.0f) return;
    float *du = ctx->scratch; /* (N, r) */
    gemm(0, 0, N, s->r, s->len, s->scale, dout + a->off, site->out, s->B, s->r, 0.0f, du, s->r);
    gemm(0, 0, N, s->in, s->r, 1.0f, du, s->r, s->A, s->in, 1.0f, dinp, s->in);
}

static lora_status infer_reserve(adapter *a, const linear *site, int N, size_t *scratch,
                                 lora_error *err) {
    infer_state *s  = a->state;
    lora_status  st = adapter_reserve_rows(&s->u, &s->n_max, N, s->r, site, err);
    if (st != LORA_OK) return st;
    *scratch = (size_t)N * (size_t)s->r;
    return LORA_OK;
}

static void infer_state_free(infer_state *s) {
    if (!s) return;
    free(s->A);
    free(s->u);
    free(s);
}

static void infer_free(adapter *a) {
    infer_state_free(a->state);
    a->state = NULL;
}

/* W[:, off:off+len] (in, len) += s · Aᵀ (in, r) · Bᵀ (r, len) */
static void infer_merge(const adapter *a, const linear *site, float *w) {
    const infer_state *s = a->state;
    if (s->scale == 0.0f) return;
    gemm(1, 1, s->in, s->len, s->r, s->scale, s->A, s->in, s->B, s->r, 1.0f, w + a->off,
         site->out);
}

static const adapter_ops infer_adapter_ops = {
    .name     = "inference-lora",
    .forward  = infer_forward,
    .backward = infer_backward,
    .reserve  = infer_reserve,
    .free     = infer_free,
    .merge    = infer_merge,
    .frozen   = 1,
};

/* ---- the named set ---- */

typedef struct infer_part {
    linear      *site;
    int32_t      off;
    infer_state *s; /* owned by the site's adapter while attached, else by the part */
} infer_part;

typedef struct named_adapter {
    char       *name, *dir;
    const char *type; /* "lora" or "adalora" */
    float       scale;
    int32_t     n_parts;
    infer_part *parts;
    int64_t     n_params;
    int         attached;
} named_adapter;

struct named_set {
    named_adapter **items;
    int32_t         n, cap;
    uint32_t        next_uid;
};

static void named_free(named_adapter *na) {
    if (!na) return;
    if (!na->attached)
        for (int32_t i = 0; i < na->n_parts; i++) infer_state_free(na->parts[i].s);
    free(na->parts);
    free(na->name);
    free(na->dir);
    free(na);
}

static named_adapter *named_find(const lora_model *m, const char *name, int32_t *index) {
    for (int32_t i = 0; m->named && i < m->named->n; i++)
        if (!strcmp(m->named->items[i]->name, name)) {
            if (index) *index = i;
            return m->named->items[i];
        }
    return NULL;
}

static lora_status unknown_name(const lora_model *m, const char *name, lora_error *err) {
    char   list[256] = "";
    size_t k         = 0;
    for (int32_t i = 0; m->named && i < m->named->n && k < sizeof list; i++)
        k += (size_t)snprintf(list + k, sizeof list - k, "%s%s", i ? ", " : "",
                              m->named->items[i]->name);
    return lora_errorf(err, LORA_ERR_MISSING, "no adapter named '%s' is loaded (loaded: %s)", name,
                       k ? list : "none");
}

static lora_status refuse_merged(const lora_model *m, const char *what, lora_error *err) {
    return lora_errorf(err, LORA_ERR_STATE,
                       "%s: the model is merged (hint: lora_model_unmerge first, or "
                       "lora_adapter_switch)",
                       what ? what : m->dir);
}

/* ---- reading a directory into parts ---- */

/* The model's site for (layer, target bit) and the output offset of the slice. */
static linear *site_of(lora_model *m, int32_t layer, uint32_t target, int32_t *off) {
    gpt2_layer *ly = &m->layers[layer];
    int32_t     C  = m->cfg.n_embd;
    *off           = 0;
    switch (target) {
    case LORA_TARGET_Q: return &ly->c_attn;
    case LORA_TARGET_K: *off = C; return &ly->c_attn;
    case LORA_TARGET_V: *off = 2 * C; return &ly->c_attn;
    case LORA_TARGET_C_ATTN: return &ly->c_attn;
    case LORA_TARGET_ATTN_PROJ: return &ly->attn_proj;
    case LORA_TARGET_MLP_FC: return &ly->c_fc;
    default: return &ly->mlp_proj;
    }
}

/* A part of rank r: state allocated, A and B left for the caller to fill. */
static lora_status part_new(lora_model *m, const char *dir, int32_t layer, uint32_t target,
                            int32_t r, int32_t in, int32_t len, float scale, infer_part *out,
                            lora_error *err) {
    infer_state *s = calloc(1, sizeof *s);
    float       *AB = malloc(((size_t)r * in + (size_t)len * r) * sizeof(float));
    if (!s || !AB) {
        free(s);
        free(AB);
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", dir);
    }
    *s        = (infer_state){r, in, len, scale, scale, AB, AB + (size_t)r * in, NULL, 0};
    out->s    = s;
    out->site = site_of(m, layer, target, &out->off);
    return LORA_OK;
}

static lora_status parts_from_lora(lora_model *m, lora_model *sh, named_adapter *na,
                                   lora_error *err) {
    int32_t         n = lora_sites_list(sh, NULL, 0);
    lora_site_view *v = calloc((size_t)n + 1, sizeof *v);
    na->parts         = calloc((size_t)n + 1, sizeof *na->parts);
    if (!v || !na->parts) {
        free(v);
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", na->dir);
    }
    lora_sites_list(sh, v, n);
    lora_status st = LORA_OK;
    for (int32_t i = 0; i < n && st == LORA_OK; i++) {
        infer_part *p = &na->parts[na->n_parts];
        st = part_new(m, na->dir, v[i].layer, v[i].target, v[i].r, v[i].in, v[i].len, v[i].scale,
                      p, err);
        if (st != LORA_OK) break;
        na->n_parts++;
        memcpy(p->s->A, v[i].A, (size_t)v[i].r * v[i].in * sizeof(float));
        memcpy(p->s->B, v[i].B, (size_t)v[i].len * v[i].r * sizeof(float));
        na->n_params += (int64_t)v[i].r * (v[i].in + v[i].len);
    }
    free(v);
    return st;
}

/* AdaLoRA folded: the kept triplets i (mask and λ_i non-zero) become rows λ_i·Q_i of A' and
 * columns P_:i of B'; a site with none kept adds nothing and is dropped. */
static lora_status parts_from_adalora(lora_model *m, lora_model *sh, named_adapter *na,
                                      lora_error *err) {
    int32_t            n = adalora_sites_list(sh, NULL, 0);
    adalora_site_view *v = calloc((size_t)n + 1, sizeof *v);
    na->parts            = calloc((size_t)n + 1, sizeof *na->parts);
    if (!v || !na->parts) {
        free(v);
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", na->dir);
    }
    adalora_sites_list(sh, v, n);
    lora_status st = LORA_OK;
    for (int32_t i = 0; i < n && st == LORA_OK; i++) {
        const adalora_site_view *sv   = &v[i];
        int32_t                  kept = 0;
        for (int32_t t = 0; t < sv->r; t++) kept += sv->mask[t] != 0.0f && sv->E[t] != 0.0f;
        if (kept == 0) continue;
        infer_part *p = &na->parts[na->n_parts];
        st = part_new(m, na->dir, sv->layer, sv->target, kept, sv->in, sv->len, sv->scale, p, err);
        if (st != LORA_OK) break;
        na->n_parts++;
        for (int32_t t = 0, j = 0; t < sv->r; t++) {
            if (!(sv->mask[t] != 0.0f && sv->E[t] != 0.0f)) continue;
            for (int32_t c = 0; c < sv->in; c++)
                p->s->A[(size_t)j * sv->in + c] = sv->E[t] * sv->A[(size_t)t * sv->in + c];
            for (int32_t row = 0; row < sv->len; row++)
                p->s->B[(size_t)row * kept + j] = sv->B[(size_t)row * sv->r + t];
            j++;
        }
        na->n_params += (int64_t)kept * (sv->in + sv->len);
    }
    free(v);
    return st;
}

/* A weightless model of m's shape, with the adapter of dir attached by lora_adapter_load. */
static lora_status shadow_load(const lora_model *m, const char *dir, lora_model **out,
                               lora_error *err) {
    lora_model *sh = calloc(1, sizeof *sh);
    if (!sh || !(sh->dir = strdup(m->dir)) ||
        !(sh->layers = calloc((size_t)m->cfg.n_layer + 1, sizeof *sh->layers))) {
        lora_model_free(sh);
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", dir);
    }
    sh->cfg      = m->cfg;
    sh->ctx.seed = 42;
    gpt2_init_sites(sh);
    lora_status st = lora_adapter_load(sh, dir, err);
    if (st != LORA_OK) {
        lora_model_free(sh);
        return st;
    }
    *out = sh;
    return LORA_OK;
}

/* Reads dir into a new, detached named adapter. The model is not changed. */
static lora_status named_load(lora_model *m, const char *dir, const char *name, float scale,
                              named_adapter **out, lora_error *err) {
    named_adapter *na = calloc(1, sizeof *na);
    lora_model    *sh = NULL;
    lora_status    st;
    if (!na || !(na->name = strdup(name)) || !(na->dir = strdup(dir))) {
        named_free(na);
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", dir);
    }
    if ((st = shadow_load(m, dir, &sh, err)) != LORA_OK) {
        named_free(na);
        return st;
    }
    int ada  = sh->peft.method == LORA_METHOD_ADALORA;
    na->type = ada ? "adalora" : "lora";
    st = ada ? parts_from_adalora(m, sh, na, err) : parts_from_lora(m, sh, na, err);
    lora_model_free(sh);
    if (st != LORA_OK) {
        named_free(na);
        return st;
    }
    na->scale = scale;
    for (int32_t i = 0; i < na->n_parts; i++)
        na->parts[i].s->scale = na->parts[i].s->own_scale * scale;
    *out = na;
    return LORA_OK;
}

/* ---- attaching to the sites ---- */

static void detach_parts(lora_model *m, named_adapter *na) {
    for (int32_t i = 0; i < na->n_parts; i++) linear_detach(na->parts[i].site, na->parts[i].s);
    na->attached = 0;
    m->adapters_gen++;
}

/* Per-pass storage of the parts for the model's reserved batch; the shared scratch grows by a
 * re-plan only when a part needs more than it has. */
static lora_status reserve_parts(lora_model *m, named_adapter *na, lora_error *err) {
    if (!m->act_mem) return LORA_OK;
    size_t need = 0;
    int    N    = m->B_max * m->T_max;
    for (int32_t i = 0; i < na->n_parts; i++) {
        adapter     a = {&infer_adapter_ops, na->parts[i].off, na->parts[i].s->len, 0,
                         na->parts[i].s};
        size_t      n = 0;
        lora_status st = infer_reserve(&a, na->parts[i].site, N, &n, err);
        if (st != LORA_OK) return st;
        if (n > need) need = n;
    }
    return need > m->peft_scratch_floats ? gpt2_replan(m, err) : LORA_OK;
}

/* All parts or none: on failure the sites are as they were. */
static lora_status attach_parts(lora_model *m, named_adapter *na, lora_error *err) {
    struct named_set *set = m->named;
    int32_t           i;
    lora_status       st = LORA_OK;
    for (i = 0; i < na->n_parts; i++) {
        infer_part *p = &na->parts[i];
        if (p->site->n_adapters == LINEAR_MAX_ADAPTERS) {
            st = lora_errorf(err, LORA_ERR_STATE,
                             "%s: %s: too many adapters on one site (max %d, q/k/v slices and an "
                             "attached method's included) (hint: remove an adapter first)",
                             na->dir, p->site->name, LINEAR_MAX_ADAPTERS);
            break;
        }
        adapter a = {&infer_adapter_ops, p->off, p->s->len, 0x40000000u + set->next_uid++, p->s};
        if ((st = linear_attach(p->site, &a, err)) != LORA_OK) break;
    }
    if (st == LORA_OK) st = reserve_parts(m, na, err);
    if (st != LORA_OK) {
        for (int32_t j = 0; j < i && j < na->n_parts; j++)
            linear_detach(na->parts[j].site, na->parts[j].s);
        return st;
    }
    na->attached = 1;
    m->adapters_gen++;
    return LORA_OK;
}

static lora_status set_reserve(lora_model *m, lora_error *err) {
    if (!m->named && !(m->named = calloc(1, sizeof *m->named)))
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", m->dir);
    struct named_set *set = m->named;
    if (set->n < set->cap) return LORA_OK;
    int32_t         cap   = set->cap ? 2 * set->cap : 8;
    named_adapter **items = realloc(set->items, (size_t)cap * sizeof *items);
    if (!items) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", m->dir);
    set->items = items;
    set->cap   = cap;
    return LORA_OK;
}

/* ---- the API ---- */

lora_status lora_adapter_add(lora_model *m, const char *dir, const char *name, float scale,
                             lora_error *err) {
    if (!m || !dir) return lora_errorf(err, LORA_ERR_ARG, "lora_adapter_add: NULL argument");
    if (m->merged) return refuse_merged(m, dir, err);
    if (!name) name = dir;
    if (!*name) return lora_errorf(err, LORA_ERR_ARG, "%s: the adapter name is empty", dir);
    if (!isfinite(scale))
        return lora_errorf(err, LORA_ERR_ARG, "%s: adapter scale %g is not finite", dir,
                           (double)scale);
    if (named_find(m, name, NULL))
        return lora_errorf(err, LORA_ERR_ARG,
                           "an adapter named '%s' is already loaded (hint: give another name, "
                           "or remove it first)",
                           name);
    lora_status    st;
    named_adapter *na = NULL;
    if ((st = set_reserve(m, err)) != LORA_OK) return st;
    if ((st = named_load(m, dir, name, scale, &na, err)) != LORA_OK) return st;
    if ((st = attach_parts(m, na, err)) != LORA_OK) {
        named_free(na);
        return st;
    }
    m->named->items[m->named->n++] = na;
    return LORA_OK;
}

lora_status lora_adapter_remove(lora_model *m, const char *name, lora_error *err) {
    if (!m || !name) return lora_errorf(err, LORA_ERR_ARG, "lora_adapter_remove: NULL argument");
    if (m->merged) return refuse_merged(m, name, err);
    int32_t        idx;
    named_adapter *na = named_find(m, name, &idx);
    if (!na) return unknown_name(m, name, err);
    detach_parts(m, na);
    named_free(na);
    struct named_set *set = m->named;
    memmove(set->items + idx, set->items + idx + 1,
            (size_t)(set->n - idx - 1) * sizeof *set->items);
    set->n--;
    return LORA_OK;
}

lora_status lora_adapter_set_scale(lora_model *m, const char *name, float scale,
                                   lora_error *err) {
    if (!m || !name)
        return lora_errorf(err, LORA_ERR_ARG, "lora_adapter_set_scale: NULL argument");
    if (m->merged) return refuse_merged(m, name, err);
    named_adapter *na = named_find(m, name, NULL);
    if (!na) return unknown_name(m, name, err);
    if (!isfinite(scale))
        return lora_errorf(err, LORA_ERR_ARG, "%s: adapter scale %g is not finite", name,
                           (double)scale);
    na->scale = scale;
    for (int32_t i = 0; i < na->n_parts; i++)
        na->parts[i].s->scale = na->parts[i].s->own_scale * scale;
    return LORA_OK;
}

int32_t lora_model_n_adapters(const lora_model *m) {
    return m && m->named ? m->named->n : 0;
}

lora_status lora_model_adapter(const lora_model *m, int32_t i, lora_adapter_info *info) {
    if (!info || i < 0 || i >= lora_model_n_adapters(m)) return LORA_ERR_ARG;
    const named_adapter *na = m->named->items[i];
    *info = (lora_adapter_info){na->name, na->dir, na->type, na->scale, na->n_parts, na->n_params};
    return LORA_OK;
}

lora_status lora_adapter_switch(lora_model *m, const char *old_name, const char *dir,
                                const char *new_name, float scale, lora_error *err) {
    if (!m || !old_name || !dir)
        return lora_errorf(err, LORA_ERR_ARG, "lora_adapter_switch: NULL argument");
    int32_t        idx;
    named_adapter *old = named_find(m, old_name, &idx);
    if (!old) return unknown_name(m, old_name, err);
    if (!new_name) new_name = dir;
    if (!*new_name) return lora_errorf(err, LORA_ERR_ARG, "%s: the adapter name is empty", dir);
    if (!isfinite(scale))
        return lora_errorf(err, LORA_ERR_ARG, "%s: adapter scale %g is not finite", dir,
                           (double)scale);
    if (strcmp(new_name, old_name) && named_find(m, new_name, NULL))
        return lora_errorf(err, LORA_ERR_ARG, "an adapter named '%s' is already loaded",
                           new_name);
    named_adapter *na = NULL;
    lora_status    st = named_load(m, dir, new_name, scale, &na, err);
    if (st != LORA_OK) return st;
    int was_merged = m->merged;
    if (was_merged) merge_undo(m);
    detach_parts(m, old);
    if ((st = attach_parts(m, na, err)) != LORA_OK) {
        named_free(na);
        /* the old adapter goes back where it was taken from: its slots are free again */
        lora_status back = attach_parts(m, old, NULL);
        LORA_ASSERT(back == LORA_OK);
        if (was_merged) lora_model_merge(m, NULL);
        return st;
    }
    m->named->items[idx] = na;
    named_free(old); /* detached: it owns its states again */
    return was_merged ? lora_model_merge(m, err) : LORA_OK;
}

void adapters_release(lora_model *m) {
    merge_undo(m);
    struct named_set *set = m->named;
    if (!set) return;
    /* the parts' states stay on the sites, which free them */
    for (int32_t i = 0; i < set->n; i++) {
        set->items[i]->attached = 1;
        named_free(set->items[i]);
    }
    free(set->items);
    free(set);
    m->named = NULL;
}
