/*
 * gpt2.c — loading a Hugging Face GPT-2 directory and running the forward and backward passes.
 *
 * Weights: F32 tensors are used in place from the read-only mapping; F16/BF16 (and, from a
 * hostile file, unaligned F32) tensors are converted once into one owned F32 buffer.
 * Activations: one allocation for the largest (B, T) reserved; no allocation inside a step.
 * Backward keeps rolling (B,T,·) gradient buffers instead of a mirror of every activation.
 *
 * B = batch, T = time, C = n_embd, NH = n_head, F = n_inner, V = vocab, L = layers, N = B*T.
 */
#include "model/gpt2.h"

#include "core/dtype.h"
#include "core/error.h"
#include "core/kernels.h"
#include "core/memory.h"
#include "core/profile.h"
#include "io/fileutil.h"
#include "io/hf_config.h"
#include "peft/adapters.h"
#include "peft/peft.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- loading ---- */

typedef struct weight_slot {
    char          name[80]; /* without the "transformer." prefix */
    int32_t       ndim;
    int64_t       shape[2];
    const float **slot;
    const st_tensor *t;
    const st_file   *file;
} weight_slot;

static void slot_set(weight_slot *s, const char *name, int32_t ndim, int64_t d0, int64_t d1,
                     const float **slot) {
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    s->ndim     = ndim;
    s->shape[0] = d0;
    s->shape[1] = d1;
    s->slot     = slot;
}

static int needs_conversion(const st_tensor *t) {
    return t->dtype != ST_F32 || ((uintptr_t)t->data % sizeof(float)) != 0;
}

static void shape_str(char *buf, size_t n, int32_t ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, n, "(");
    for (int32_t i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, ")");
}

/* Finds, type-checks and shape-checks one tensor. */
static lora_status resolve_slot(lora_model *m, weight_slot *s, lora_error *err) {
    char prefixed[96];
    snprintf(prefixed, sizeof prefixed, "transformer.%s", s->name);
    s->t = st_set_find(&m->files, prefixed, &s->file);
    if (!s->t) s->t = st_set_find(&m->files, s->name, &s->file);
    if (!s->t)
        return lora_errorf(err, LORA_ERR_MISSING,
                           "%s: tensor '%s' not found (hint: is this a GPT-2 checkpoint?)",
                           m->dir, s->name);
    const st_tensor *t = s->t;
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                           "%s: tensor '%s' has dtype %s (supported: F32, F16, BF16)",
                           s->file->path, t->name, st_dtype_name(t->dtype));
    int ok = t->ndim == s->ndim;
    for (int32_t i = 0; ok && i < s->ndim; i++) ok = t->shape[i] == s->shape[i];
    if (!ok) {
        char want[64], got[64];
        shape_str(want, sizeof want, s->ndim, s->shape);
        shape_str(got, sizeof got, t->ndim, t->shape);
        return lora_errorf(err, LORA_ERR_SHAPE,
                           "%s: tensor '%s' has shape %s but config.json implies %s",
                           s->file->path, t->name, got, want);
    }
    return LORA_OK;
}

/* The model's tensors in checkpoint order (HF names without "transformer."), with the slot each
 * one's F32 data lives in. Returns the count; slots may be NULL to count only. */
static size_t weight_slots(lora_model *m, weight_slot *slots) {
    const lora_config *c = &m->cfg;
    int64_t C = c->n_embd, F = c->n_inner, V = c->vocab_size, P = c->n_positions;
    size_t  n = 4 + (size_t)c->n_layer * 12 + (c->tie_word_embeddings ? 0 : 1);
    if (!slots) return n;
    size_t k = 0;
    slot_set(&slots[k++], "wte.weight", 2, V, C, &m->wte);
    slot_set(&slots[k++], "wpe.weight", 2, P, C, &m->wpe);
    for (int32_t l = 0; l < c->n_layer; l++) {
        gpt2_layer *ly = &m->layers[l];
        char        nm[80];
#define SLOT(suffix, nd, d0, d1, ptr)                                                          \
    snprintf(nm, sizeof nm, "h.%d.%s", (int)l, suffix);                                        \
    slot_set(&slots[k++], nm, nd, d0, d1, ptr)
        SLOT("ln_1.weight", 1, C, 0, &ly->ln_1_w);
        SLOT("ln_1.bias", 1, C, 0, &ly->ln_1_b);
        SLOT("attn.c_attn.weight", 2, C, 3 * C, &ly->c_attn.w);
        SLOT("attn.c_attn.bias", 1, 3 * C, 0, &ly->c_attn.b);
        SLOT("attn.c_proj.weight", 2, C, C, &ly->attn_proj.w);
        SLOT("attn.c_proj.bias", 1, C, 0, &ly->attn_proj.b);
        SLOT("ln_2.weight", 1, C, 0, &ly->ln_2_w);
        SLOT("ln_2.bias", 1, C, 0, &ly->ln_2_b);
        SLOT("mlp.c_fc.weight", 2, C, F, &ly->c_fc.w);
        SLOT("mlp.c_fc.bias", 1, F, 0, &ly->c_fc.b);
        SLOT("mlp.c_proj.weight", 2, F, C, &ly->mlp_proj.w);
        SLOT("mlp.c_proj.bias", 1, C, 0, &ly->mlp_proj.b);
#undef SLOT
    }
    slot_set(&slots[k++], "ln_f.weight", 1, C, 0, &m->ln_f_w);
    slot_set(&slots[k++], "ln_f.bias", 1, C, 0, &m->ln_f_b);
    if (!c->tie_word_embeddings) slot_set(&slots[k++], "lm_head.weight", 2, V, C, &m->lm_head);
    LORA_ASSERT(k == n);
    return n;
}

static lora_status load_weights(lora_model *m, lora_error *err) {
    const lora_config *c       = &m->cfg;
    size_t             n_slots = weight_slots(m, NULL);
    weight_slot       *slots   = calloc(n_slots, sizeof *slots);
    if (!slots) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", m->dir);
    weight_slots(m, slots);
    lora_status st = LORA_OK;

    size_t conv_floats = 0;
    for (size_t i = 0; i < n_slots; i++) {
        if ((st = resolve_slot(m, &slots[i], err)) != LORA_OK) goto done;
        m->weights_bytes += (int64_t)slots[i].t->numel * (int64_t)sizeof(float);
        if (needs_conversion(slots[i].t)) conv_floats += (size_t)slots[i].t->numel;
    }
    m->converted_floats = conv_floats;
    if (conv_floats) {
        m->converted = lora_alloc_streamed(conv_floats * sizeof(float));
        if (!m->converted) {
            st = lora_errorf(err, LORA_ERR_NOMEM, "%s: cannot allocate %zu bytes for F32 weights",
                             m->dir, conv_floats * sizeof(float));
            goto done;
        }
    }
    float *cur = m->converted;
    for (size_t i = 0; i < n_slots; i++) {
        const st_tensor *t = slots[i].t;
        if (needs_conversion(t)) {
            if ((st = st_to_f32(cur, t, slots[i].file->path, err)) != LORA_OK) goto done;
            st_tensor_release(t); /* the F16/BF16 bytes are not read again */
            *slots[i].slot = cur;
            cur += t->numel;
        } else {
            *slots[i].slot = (const float *)t->data;
        }
    }
    if (c->tie_word_embeddings) m->lm_head = m->wte;
done:
    free(slots);
    return st;
}

void gpt2_init_sites(lora_model *m) {
    const lora_config *c = &m->cfg;
    for (int32_t l = 0; l < c->n_layer; l++) {
        gpt2_layer *ly = &m->layers[l];
        struct {
            linear *s;
            const char *nm;
            int32_t in, out;
        } sites[4] = {{&ly->c_attn, "attn.c_attn", c->n_embd, 3 * c->n_embd},
                      {&ly->attn_proj, "attn.c_proj", c->n_embd, c->n_embd},
                      {&ly->c_fc, "mlp.c_fc", c->n_embd, c->n_inner},
                      {&ly->mlp_proj, "mlp.c_proj", c->n_inner, c->n_embd}};
        for (int i = 0; i < 4; i++) {
            snprintf(sites[i].s->name, LINEAR_NAME_MAX, "h.%d.%s", (int)l, sites[i].nm);
            sites[i].s->in  = sites[i].in;
            sites[i].s->out = sites[i].out;
        }
    }
}

lora_status lora_model_load(const char *dir, lora_model **out, lora_error *err) {
    if (!dir || !out) return lora_errorf(err, LORA_ERR_ARG, "lora_model_load: NULL argument");
    size_t dir_len = strlen(dir); /* a GGUF file rather than a directory: gguf_model.c */
    if (dir_len > 5 && !strcmp(dir + dir_len - 5, ".gguf"))
        return lora_model_load_gguf(dir, out, err);
    *out = NULL;
    lora_model *m = calloc(1, sizeof *m);
    if (!m) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", dir);
    lora_status st;
    char        path[4096];
    if (!(m->dir = strdup(dir))) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", dir);
        goto fail;
    }
    if ((st = lora_path_join(path, sizeof path, dir, "config.json", err)) != LORA_OK) goto fail;
    if ((st = hf_config_load(path, &m->cfg, err)) != LORA_OK) goto fail;
    if ((st = st_set_open_dir(&m->files, dir, err)) != LORA_OK) goto fail;
    m->layers = calloc((size_t)m->cfg.n_layer, sizeof *m->layers);
    if (!m->layers) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", dir);
        goto fail;
    }
    gpt2_init_sites(m);
    if ((st = load_weights(m, err)) != LORA_OK) goto fail;
    m->ctx.seed = 42;
    *out        = m;
    return LORA_OK;
fail:
    lora_model_free(m);
    return st;
}

void lora_model_free(lora_model *m) {
    if (!m) return;
    adapters_release(m); /* merged copies and the inference adapters' names */
    if (m->layers) {
        for (int32_t l = 0; l < m->cfg.n_layer; l++) {
            linear_free_adapters(&m->layers[l].c_attn);
            linear_free_adapters(&m->layers[l].attn_proj);
            linear_free_adapters(&m->layers[l].c_fc);
            linear_free_adapters(&m->layers[l].mlp_proj);
        }
    }
    if (m->method && m->method->free) m->method->free(m);
    tparams_free(&m->tp);
    free(m->ctx.prof);
    free(m->act_mem);
    free(m->la);
    free(m->tokens); /* targets share its block */
    free(m->layers);
    free(m->converted);
    st_set_close(&m->files);
    free(m->dir);
    free(m);
}

const lora_config *lora_model_config(const lora_model *m) {
    return &m->cfg;
}

int64_t lora_model_n_base_params(const lora_model *m) {
    const lora_config *c = &m->cfg;
    int64_t C = c->n_embd, F = c->n_inner;
    int64_t per_layer = 4 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * F + F) + (F * C + C);
    int64_t n = (int64_t)c->vocab_size * C + (int64_t)c->n_positions * C + 2 * C +
                c->n_layer * per_layer;
    if (!c->tie_word_embeddings) n += (int64_t)c->vocab_size * C;
    return n;
}

/* ---- activation planning ---- */

/*
 * Which linear inputs a layer keeps for backward. A site needs its input after the forward pass
 * only for a weight gradient (dW, or an adapter's dA); a frozen site without adapters computes
 * dX = dY · W0ᵀ alone, so its input (ln1, atty, ln2, gelu(fch)) can live in one buffer shared by
 * every layer. For LoRA on q,v that drops 6 of every 16 per-token floats of a layer.
 */
enum { KEEP_LN1 = GPT2_KEEP_LN1, KEEP_ATTY = GPT2_KEEP_ATTY, KEEP_LN2 = GPT2_KEEP_LN2,
       KEEP_GELU = GPT2_KEEP_GELU, KEEP_ALL = GPT2_KEEP_ALL };

static int site_needs_input(const linear *s) {
    return s->dw != NULL || s->n_adapters > 0;
}

static uint8_t layer_keep(const gpt2_layer *ly) {
    return (uint8_t)((site_needs_input(&ly->c_attn) ? KEEP_LN1 : 0) |
                     (site_needs_input(&ly->attn_proj) ? KEEP_ATTY : 0) |
                     (site_needs_input(&ly->c_fc) ? KEEP_LN2 : 0) |
                     (site_needs_input(&ly->mlp_proj) ? KEEP_GELU : 0));
}

/* Floats of one layer's kept activations per row, given its keep mask. */
static size_t layer_row_floats(size_t C, size_t F, unsigned keep) {
    size_t n = 2 + 3 * C + C + 2 + F + C; /* ln1 stats, qkv, res2, ln2 stats, fch, res3 */
    if (keep & KEEP_LN1) n += C;
    if (keep & KEEP_ATTY) n += C;
    if (keep & KEEP_LN2) n += C;
    if (keep & KEEP_GELU) n += F;
    return n;
}

/* The union of the layers' keep masks: what the one set of insides keeps under
 * checkpointing. */
static unsigned keep_union(const uint8_t *keep, int32_t n_layer) {
    unsigned u = 0;
    for (int32_t l = 0; l < n_layer; l++)
        u |= keep ? keep[l] : KEEP_ALL;
    return u;
}

/*
 * Floats of activations per (B, T) with per-layer keep masks (NULL: keep everything), with or
 * without checkpointing; the single source for reserve and the memory estimate.
 */
static size_t act_floats_for(const lora_config *c, size_t B, size_t T, size_t peft_scratch,
                             const uint8_t *keep, int checkpoint) {
    size_t N = B * T, C = (size_t)c->n_embd, F = (size_t)c->n_inner, NH = (size_t)c->n_head;
    size_t V = (size_t)c->vocab_size;
    size_t total = N * C + N * (C + 2) + N * V + 2 * N;
    if (checkpoint && c->n_layer > 0) {
        /* every layer's output (res3), and one layer's insides without its res3 */
        total += (size_t)c->n_layer * N * C;
        total += N * (layer_row_floats(C, F, keep_union(keep, c->n_layer)) - C) + B * NH * T * T;
    } else {
        for (int32_t l = 0; l < c->n_layer; l++)
            total += N * layer_row_floats(C, F, keep ? keep[l] : KEEP_ALL) + B * NH * T * T;
    }
    total += N * (C + F); /* the shared inputs of frozen sites: one (N, C) and one (N, F) */
    /* backward: dres, dln, dqkv, datty, dfch_a, dfch_b, attention scratch, peft scratch */
    total += N * (C + C + 3 * C + C + 2 * F) + attention_scratch_floats((int)B, (int)T, (int)NH);
    total += peft_scratch;
    return total;
}

/* Points a's insides (every buffer but res3) into memory from p on, the frozen sites' inputs
 * at the shared buffers unless keep mask k keeps them; returns the next free float. */
static float *take_insides(gpt2_layer_acts *a, unsigned k, float *p, float *shared_c,
                           float *shared_f, size_t B, size_t T, const lora_config *c) {
    size_t N = B * T, C = (size_t)c->n_embd, F = (size_t)c->n_inner, NH = (size_t)c->n_head;
#define TAKE(ptr, n) (ptr = p, p += (n))
    if (k & KEEP_LN1) TAKE(a->ln1, N * C); else a->ln1 = shared_c;
    TAKE(a->ln1_mean, N);
    TAKE(a->ln1_rstd, N);
    TAKE(a->qkv, N * 3 * C);
    if (k & KEEP_ATTY) TAKE(a->atty, N * C); else a->atty = shared_c;
    TAKE(a->att, B * NH * T * T);
    TAKE(a->res2, N * C);
    if (k & KEEP_LN2) TAKE(a->ln2, N * C); else a->ln2 = shared_c;
    TAKE(a->ln2_mean, N);
    TAKE(a->ln2_rstd, N);
    TAKE(a->fch, N * F);
    if (k & KEEP_GELU) TAKE(a->fch_gelu, N * F); else a->fch_gelu = shared_f;
#undef TAKE
    return p;
}

static lora_status plan_activations(lora_model *m, int32_t B, int32_t T, lora_error *err) {
    const lora_config *c = &m->cfg;
    size_t N = (size_t)B * (size_t)T, C = (size_t)c->n_embd, F = (size_t)c->n_inner;
    size_t NH = (size_t)c->n_head, V = (size_t)c->vocab_size;

    /* the adapters' per-pass storage and the scratch they share */
    size_t scratch = 0;
    for (int32_t l = 0; l < c->n_layer; l++) {
        linear *sites[4] = {&m->layers[l].c_attn, &m->layers[l].attn_proj, &m->layers[l].c_fc,
                            &m->layers[l].mlp_proj};
        for (int s = 0; s < 4; s++)
            for (int32_t i = 0; i < sites[s]->n_adapters; i++) {
                adapter    *a    = &sites[s]->adapters[i];
                size_t      need = 0;
                lora_status st   = a->ops->reserve(a, sites[s], (int)N, &need, err);
                if (st != LORA_OK) return st;
                if (need > scratch) scratch = need;
            }
    }

    uint8_t *keep = malloc(c->n_layer > 0 ? (size_t)c->n_layer : 1);
    if (!keep) return lora_errorf(err, LORA_ERR_NOMEM, "activations: out of memory");
    for (int32_t l = 0; l < c->n_layer; l++)
        keep[l] = layer_keep(&m->layers[l]);
    size_t total = act_floats_for(c, (size_t)B, (size_t)T, scratch, keep, m->checkpoint), bytes;
    if (!lora_mul_ok(total, sizeof(float), &bytes)) {
        free(keep);
        return lora_errorf(err, LORA_ERR_NOMEM, "activations for B=%d T=%d overflow", (int)B,
                           (int)T);
    }
    float           *mem  = malloc(bytes);
    gpt2_layer_acts *la   = calloc((size_t)c->n_layer, sizeof *la);
    int32_t         *toks = malloc(N * 2 * sizeof(int32_t));
    if (!mem || !la || !toks) {
        free(mem);
        free(la);
        free(toks);
        free(keep);
        return lora_errorf(err, LORA_ERR_NOMEM,
                           "cannot allocate %.1f MiB of activations for B=%d T=%d (hint: lower "
                           "--batch or --seq-len%s)",
                           (double)bytes / 1048576.0, (int)B, (int)T,
                           m->checkpoint ? "" : ", or --checkpoint-activations");
    }
    free(m->act_mem);
    free(m->la);
    free(m->tokens);
    m->act_mem    = mem;
    m->act_floats = total;
    m->la         = la;
    m->tokens     = toks;
    m->targets    = toks + N; /* same block as tokens */

    float *p = mem;
#define TAKE(ptr, n) (ptr = p, p += (n))
    TAKE(m->encoded, N * C);
    float *shared_c, *shared_f; /* inputs of frozen sites, overwritten layer after layer */
    TAKE(shared_c, N * C);
    TAKE(shared_f, N * F);
    if (m->checkpoint && c->n_layer > 0) {
        /* one set of insides for every layer (the forward overwrites it layer after layer,
         * backward recomputes it), and every layer's own output */
        gpt2_layer_acts insides;
        p = take_insides(&insides, keep_union(keep, c->n_layer), p, shared_c, shared_f, B, T,
                         c);
        for (int32_t l = 0; l < c->n_layer; l++) {
            la[l] = insides;
            TAKE(la[l].res3, N * C);
        }
    } else {
        for (int32_t l = 0; l < c->n_layer; l++) {
            p = take_insides(&la[l], keep[l], p, shared_c, shared_f, B, T, c);
            TAKE(la[l].res3, N * C);
        }
    }
    TAKE(m->lnf, N * C);
    TAKE(m->lnf_mean, N);
    TAKE(m->lnf_rstd, N);
    TAKE(m->logits, N * V);
    TAKE(m->losses, N);
    TAKE(m->lse, N);
    TAKE(m->dres, N * C);
    TAKE(m->dln, N * C);
    TAKE(m->dqkv, N * 3 * C);
    TAKE(m->datty, N * C);
    TAKE(m->dfch_a, N * F);
    TAKE(m->dfch_b, N * F);
    TAKE(m->att_scratch, attention_scratch_floats((int)B, (int)T, (int)NH));
    TAKE(m->peft_scratch, scratch);
#undef TAKE
    free(keep);
    LORA_ASSERT((size_t)(p - mem) == total);
    m->peft_scratch_floats = scratch;
    m->ctx.scratch         = m->peft_scratch;
    m->ctx.scratch_floats  = scratch;
    m->B_max               = B;
    m->T_max               = T;
    m->logits_valid        = 0;
    m->have_targets        = 0;
    return LORA_OK;
}

lora_status lora_model_reserve(lora_model *m, int32_t B, int32_t T, lora_error *err) {
    if (B <= 0 || T <= 0)
        return lora_errorf(err, LORA_ERR_ARG, "batch shape B=%d T=%d must be positive", (int)B,
                           (int)T);
    if (T > m->cfg.n_positions)
        return lora_errorf(err, LORA_ERR_ARG,
                           "sequence length %d exceeds the model's context n_positions=%d",
                           (int)T, (int)m->cfg.n_positions);
    if (m->act_mem && B <= m->B_max && T <= m->T_max) return LORA_OK;
    int32_t nb = B > m->B_max ? B : m->B_max, nt = T > m->T_max ? T : m->T_max;
    return plan_activations(m, nb, nt, err);
}

lora_status gpt2_replan(lora_model *m, lora_error *err) {
    if (!m->act_mem) return LORA_OK;
    return plan_activations(m, m->B_max, m->T_max, err);
}

int64_t gpt2_activation_bytes(const lora_config *c, int32_t B, int32_t T, size_t peft_scratch,
                              const uint8_t *keep, int checkpoint) {
    return (int64_t)(act_floats_for(c, (size_t)B, (size_t)T, peft_scratch, keep, checkpoint) *
                     sizeof(float));
}

lora_status lora_model_set_checkpointing(lora_model *m, int on, lora_error *err) {
    on = on != 0;
    if (m->checkpoint == on) return LORA_OK;
    m->checkpoint = on;
    if (!m->act_mem) return LORA_OK;
    lora_status st = plan_activations(m, m->B_max, m->T_max, err);
    if (st != LORA_OK) m->checkpoint = !on; /* the old plan stays in place */
    return st;
}

/* ---- forward ---- */

void lora_model_set_training(lora_model *m, int training) {
    m->ctx.training = training != 0;
}

void lora_model_set_label_smoothing(lora_model *m, float label_smoothing) {
    m->label_smoothing = label_smoothing;
}

const float *lora_model_logits(const lora_model *m) {
    return m->logits_valid ? m->logits : NULL;
}

/*
 * Layer l of the last forward's batch (m->B, m->T) from its input residual, into m->la[l].
 * With insides_only, it stops before mlp.c_proj: backward needs everything up to the MLP's
 * hidden activation but not the layer's output, and under checkpointing recomputes that much.
 * The same inputs give the same bits (the adapters' dropout masks follow m->ctx.pass).
 */
static void layer_forward(lora_model *m, int32_t l, const float *residual, int insides_only) {
    const lora_config *c  = &m->cfg;
    gpt2_layer        *ly = &m->layers[l];
    gpt2_layer_acts   *a  = &m->la[l];
    int                B = m->B, T = m->T, N = B * T;
    int                C = c->n_embd, F = c->n_inner, NH = c->n_head;
    float              eps = c->layer_norm_epsilon;
#define P(op, stmt) PROF_OP(m->ctx.prof, m->ctx.prof_phase, op, stmt)
    P(LORA_PROF_LAYERNORM, layernorm_forward(a->ln1, a->ln1_mean, a->ln1_rstd, residual, ly->ln_1_w,
                                             ly->ln_1_b, N, C, eps));
    linear_forward(&ly->c_attn, a->qkv, a->ln1, N, &m->ctx);
    P(LORA_PROF_ATTENTION, attention_forward(a->atty, a->att, a->qkv, B, T, C, NH));
    linear_forward(&ly->attn_proj, a->res2, a->atty, N, &m->ctx);
    P(LORA_PROF_RESIDUAL, residual_forward(a->res2, a->res2, residual, (size_t)N * C));
    P(LORA_PROF_LAYERNORM, layernorm_forward(a->ln2, a->ln2_mean, a->ln2_rstd, a->res2, ly->ln_2_w,
                                             ly->ln_2_b, N, C, eps));
    linear_forward(&ly->c_fc, a->fch, a->ln2, N, &m->ctx);
    if (c->activation == LORA_ACT_GELU_ERF)
        P(LORA_PROF_GELU, gelu_erf_forward(a->fch_gelu, a->fch, (size_t)N * F));
    else
        P(LORA_PROF_GELU, gelu_forward(a->fch_gelu, a->fch, (size_t)N * F));
    if (insides_only) return;
    linear_forward(&ly->mlp_proj, a->res3, a->fch_gelu, N, &m->ctx);
    P(LORA_PROF_RESIDUAL, residual_forward(a->res3, a->res3, a->res2, (size_t)N * C));
#undef P
}

lora_status lora_model_forward(lora_model *m, const int32_t *tokens, const int32_t *targets,
                               int32_t B, int32_t T, float *loss, lora_error *err) {
    const lora_config *c       = &m->cfg;
    double             prof_t0 = m->ctx.prof ? prof_now() : 0.0;
    lora_status        st;
    if (!tokens) return lora_errorf(err, LORA_ERR_ARG, "forward: tokens is NULL");
    if (m->merged && targets && m->ctx.training)
        return lora_errorf(err, LORA_ERR_STATE, "forward: the model is merged, it cannot be "
                           "trained (hint: lora_model_unmerge first)");
    if ((st = lora_model_reserve(m, B, T, err)) != LORA_OK) return st;
    int N = B * T, C = c->n_embd, V = c->vocab_size;
    for (int i = 0; i < N; i++) {
        if (tokens[i] < 0 || tokens[i] >= V)
            return lora_errorf(err, LORA_ERR_ARG, "forward: token id %d at position %d is "
                               "outside the vocabulary [0, %d)", (int)tokens[i], i, V);
        if (targets && targets[i] >= V)
            return lora_errorf(err, LORA_ERR_ARG, "forward: target id %d at position %d is "
                               "outside the vocabulary [0, %d)", (int)targets[i], i, V);
    }
    memcpy(m->tokens, tokens, (size_t)N * sizeof(int32_t));
    m->B = B;
    m->T = T;
    m->ctx.pass++;

    m->ctx.prof_phase = LORA_PROF_FORWARD;
#define P(op, stmt) PROF_OP(m->ctx.prof, LORA_PROF_FORWARD, op, stmt)
    P(LORA_PROF_EMBEDDING, encoder_forward(m->encoded, tokens, m->wte, m->wpe, B, T, C));
    const float *residual = m->encoded;
    for (int32_t l = 0; l < c->n_layer; l++) {
        layer_forward(m, l, residual, 0);
        residual = m->la[l].res3;
    }
    P(LORA_PROF_LAYERNORM, layernorm_forward(m->lnf, m->lnf_mean, m->lnf_rstd, residual,
                                             m->ln_f_w, m->ln_f_b, N, C,
                                             c->layer_norm_epsilon));
    /* logits (N,V) = lnf (N,C) · lm_headᵀ, lm_head (V,C) */
    P(LORA_PROF_LM_HEAD, gemm(0, 1, N, V, C, 1.0f, m->lnf, C, m->lm_head, C, 0.0f, m->logits, V));
    m->logits_valid = 1;
    m->have_targets = targets != NULL;
    m->n_counted    = 0;
    if (targets) {
        memcpy(m->targets, targets, (size_t)N * sizeof(int32_t));
        P(LORA_PROF_CROSS_ENTROPY,
          m->n_counted = crossentropy_forward(m->losses, m->lse, m->logits, targets, N, V,
                                              m->label_smoothing));
        if (loss) {
            double sum = 0;
            for (int i = 0; i < N; i++) sum += m->losses[i];
            *loss = m->n_counted ? (float)(sum / m->n_counted) : 0.0f;
            /* a method's penalty (AdaLoRA) is part of the training loss only: validation
             * losses stay the plain cross-entropy, comparable across methods */
            if (m->ctx.training && m->method && m->method->regularizer)
                P(LORA_PROF_ADAPTER, *loss += m->method->regularizer(m, 0));
        }
    } else if (loss) {
        *loss = 0.0f;
    }
#undef P
    if (m->ctx.prof) {
        m->ctx.prof->phase_s[LORA_PROF_FORWARD] += prof_now() - prof_t0;
        m->ctx.prof->n_calls[LORA_PROF_FORWARD]++;
    }
    return LORA_OK;
}

/* ---- backward ---- */

/* Whether backward accumulates any gradient inside the layer. */
static int layer_has_grad(const gpt2_layer *ly) {
    return ly->dln_1_w || ly->dln_1_b || ly->dln_2_w || ly->dln_2_b ||
           linear_has_grad(&ly->c_attn) || linear_has_grad(&ly->attn_proj) ||
           linear_has_grad(&ly->c_fc) || linear_has_grad(&ly->mlp_proj);
}

/* The backward pass proper (lora_model_backward times it when profiling). */
static lora_status backward_pass(lora_model *m, lora_error *err) {
    const lora_config *c = &m->cfg;
    if (!m->have_targets || !m->logits_valid)
        return lora_errorf(err, LORA_ERR_STATE,
                           "backward: needs a preceding forward with targets");
    if (!m->attached)
        return lora_errorf(err, LORA_ERR_STATE,
                           "backward: no trainable parameters (attach a method first)");
    if (m->merged)
        return lora_errorf(err, LORA_ERR_STATE, "backward: the model is merged, it cannot be "
                           "trained (hint: lora_model_unmerge first)");
    int B = m->B, T = m->T, N = B * T, C = c->n_embd, F = c->n_inner, NH = c->n_head;
    int V = c->vocab_size;
    size_t NC = (size_t)N * C, NF = (size_t)N * F;
    m->have_targets = 0;
    m->logits_valid = 0; /* the logits buffer becomes dlogits */
#define P(op, stmt) PROF_OP(m->ctx.prof, LORA_PROF_BACKWARD, op, stmt)
    if (m->ctx.training && m->method && m->method->regularizer)
        P(LORA_PROF_ADAPTER, m->method->regularizer(m, 1));
    if (m->n_counted == 0) return LORA_OK; /* mean over nothing: zero gradient */

    float *dlogits = m->logits;
    P(LORA_PROF_CROSS_ENTROPY,
      crossentropy_backward(dlogits, m->logits, m->lse, m->targets, N, V, m->label_smoothing,
                            1.0f / (float)m->n_counted));
    /* dlnf (N,C) = dlogits (N,V) · lm_head (V,C); dlm_head (V,C) += dlogitsᵀ · lnf */
    P(LORA_PROF_LM_HEAD, gemm(0, 0, N, C, V, 1.0f, dlogits, V, m->lm_head, C, 0.0f, m->dln, C));
    if (m->dlm_head)
        P(LORA_PROF_LM_HEAD,
          gemm(1, 0, V, C, N, 1.0f, dlogits, V, m->lnf, C, 1.0f, m->dlm_head, C));

    /* As autograd does, backward goes no lower than a gradient is wanted: below the lowest
     * layer with something trainable nothing is computed, and that layer's input gradient
     * (its c_attn dX and ln_1's dinp) only when the embeddings are trainable. */
    int32_t lowest = c->n_layer; /* lowest layer with a trainable parameter */
    for (int32_t l = 0; l < c->n_layer && lowest == c->n_layer; l++)
        if (layer_has_grad(&m->layers[l])) lowest = l;
    int below = m->dwte || m->dwpe; /* whether the embeddings want dL/d(encoded) */
    if (below) lowest = 0;
    const float *last = c->n_layer ? m->la[c->n_layer - 1].res3 : m->encoded;
    P(LORA_PROF_RESIDUAL, memset(m->dres, 0, NC * sizeof(float)));
    P(LORA_PROF_LAYERNORM, layernorm_backward(m->dres, m->dln_f_w, m->dln_f_b, m->dln, last,
                                              m->ln_f_w, m->lnf_mean, m->lnf_rstd, N, C));
    for (int32_t l = c->n_layer - 1; l >= lowest; l--) {
        gpt2_layer      *ly       = &m->layers[l];
        int              need_dx  = l > lowest || below; /* dL/d(this layer's input) */
        gpt2_layer_acts *a        = &m->la[l];
        const float     *residual = l ? m->la[l - 1].res3 : m->encoded;
        /* the layer's insides again; the top layer's are still there from the forward, which
         * ends with it (a backward always follows its forward: have_targets) */
        if (m->checkpoint && l < c->n_layer - 1) layer_forward(m, l, residual, 1);
        /* dres holds dL/d res3: it flows unchanged into res2 and into the MLP's output */
        linear_backward_set(&ly->mlp_proj, m->dfch_a, m->dres, a->fch_gelu, N, &m->ctx);
        P(LORA_PROF_RESIDUAL, memset(m->dfch_b, 0, NF * sizeof(float)));
        if (c->activation == LORA_ACT_GELU_ERF)
            P(LORA_PROF_GELU, gelu_erf_backward(m->dfch_b, a->fch, m->dfch_a, NF));
        else
            P(LORA_PROF_GELU, gelu_backward(m->dfch_b, a->fch, m->dfch_a, NF));
        linear_backward_set(&ly->c_fc, m->dln, m->dfch_b, a->ln2, N, &m->ctx);
        P(LORA_PROF_LAYERNORM, layernorm_backward(m->dres, ly->dln_2_w, ly->dln_2_b, m->dln,
                                                  a->res2, ly->ln_2_w, a->ln2_mean, a->ln2_rstd,
                                                  N, C));
        /* dres now holds dL/d res2 */
        linear_backward_set(&ly->attn_proj, m->datty, m->dres, a->atty, N, &m->ctx);
        P(LORA_PROF_RESIDUAL, memset(m->dqkv, 0, 3 * NC * sizeof(float)));
        P(LORA_PROF_ATTENTION, attention_backward(m->dqkv, m->att_scratch, m->datty, a->qkv,
                                                  a->att, B, T, C, NH));
        /* dln (dL/d ln_1's output) is wanted by ln_1's own gradients or by the layer below */
        int need_dln = need_dx || ly->dln_1_w || ly->dln_1_b;
        if (need_dln) {
            linear_backward_set(&ly->c_attn, m->dln, m->dqkv, a->ln1, N, &m->ctx);
            P(LORA_PROF_LAYERNORM,
              layernorm_backward(need_dx ? m->dres : NULL, ly->dln_1_w, ly->dln_1_b, m->dln,
                                 residual, ly->ln_1_w, a->ln1_mean, a->ln1_rstd, N, C));
        } else {
            linear_backward(&ly->c_attn, NULL, m->dqkv, a->ln1, N, &m->ctx);
        }
        /* dres now holds dL/d (this layer's input) */
    }
    if (m->dwte || m->dwpe)
        P(LORA_PROF_EMBEDDING, encoder_backward(m->dwte, m->dwpe, m->dres, m->tokens, B, T, C));
#undef P
    return LORA_OK;
}

lora_status lora_model_backward(lora_model *m, lora_error *err) {
    double prof_t0    = m->ctx.prof ? prof_now() : 0.0;
    m->ctx.prof_phase = LORA_PROF_BACKWARD;
    lora_status st    = backward_pass(m, err);
    m->ctx.prof_phase = LORA_PROF_FORWARD;
    if (m->ctx.prof) {
        m->ctx.prof->phase_s[LORA_PROF_BACKWARD] += prof_now() - prof_t0;
        m->ctx.prof->n_calls[LORA_PROF_BACKWARD]++;
    }
    return st;
}

void lora_model_zero_grad(lora_model *m) {
    double prof_t0 = m->ctx.prof ? prof_now() : 0.0;
    if (m->tp.grad) memset(m->tp.grad, 0, m->tp.total * sizeof(float));
    if (m->ctx.prof) {
        double dt = prof_now() - prof_t0;
        m->ctx.prof->op_s[LORA_PROF_STEP][LORA_PROF_OPTIMIZER] += dt;
        m->ctx.prof->phase_s[LORA_PROF_STEP] += dt;
    }
}

/* ---- profiling ---- */

lora_status lora_model_set_profiling(lora_model *m, int on, lora_error *err) {
    if (!on) {
        free(m->ctx.prof);
        m->ctx.prof = NULL;
        return LORA_OK;
    }
    if (!m->ctx.prof && !(m->ctx.prof = malloc(sizeof *m->ctx.prof)))
        return lora_errorf(err, LORA_ERR_NOMEM, "profiling: out of memory");
    memset(m->ctx.prof, 0, sizeof *m->ctx.prof);
    return LORA_OK;
}

void lora_model_profile(const lora_model *m, lora_profile *out) {
    if (m->ctx.prof) *out = *m->ctx.prof;
    else memset(out, 0, sizeof *out);
}

const char *lora_profile_op_name(int32_t op) {
    static const char *const names[LORA_PROF_N_OPS] = {
        "embedding", "layernorm", "matmul", "matmul_dw", "attention", "gelu",
        "residual",  "lm_head",   "cross_entropy", "adapter", "optimizer"};
    return op >= 0 && op < LORA_PROF_N_OPS ? names[op] : NULL;
}

/* ---- introspection ---- */

int32_t lora_model_n_file_tensors(const lora_model *m) {
    int32_t n = 0;
    for (int32_t i = 0; i < m->files.n_files; i++) n += m->files.files[i].n_tensors;
    return n;
}

lora_status lora_model_file_tensor(const lora_model *m, int32_t i, lora_file_tensor *info) {
    for (int32_t f = 0; f < m->files.n_files; f++) {
        const st_file *sf = &m->files.files[f];
        if (i >= sf->n_tensors) {
            i -= sf->n_tensors;
            continue;
        }
        if (i < 0) break;
        const st_tensor *t = &sf->tensors[i];
        info->name         = t->name;
        info->dtype        = st_dtype_name(t->dtype);
        info->file         = sf->path;
        info->ndim         = t->ndim;
        for (int32_t d = 0; d < 8; d++) info->shape[d] = d < t->ndim ? t->shape[d] : 0;
        info->nbytes = (int64_t)t->nbytes;
        return LORA_OK;
    }
    return LORA_ERR_ARG;
}

void lora_model_weight_bytes(const lora_model *m, int64_t *mapped, int64_t *converted) {
    int64_t conv = (int64_t)m->converted_floats * (int64_t)sizeof(float);
    if (converted) *converted = conv;
    if (mapped) *mapped = m->weights_bytes - conv;
}

/* ---- writing a Hugging Face directory ---- */

static const char *const tokenizer_files[] = {"tokenizer.json",        "vocab.json",
                                              "merges.txt",            "tokenizer_config.json",
                                              "special_tokens_map.json", "generation_config.json"};

lora_status lora_model_save_hf(lora_model *m, const char *dir, lora_dtype dtype,
                               lora_error *err) {
    size_t       n_slots = weight_slots(m, NULL);
    weight_slot *slots   = calloc(n_slots, sizeof *slots);
    void       **conv    = calloc(n_slots, sizeof *conv);
    st_writer   *w       = st_writer_new();
    lora_status  st      = LORA_OK;
    char         path[4096];
    if (!slots || !conv || !w) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    weight_slots(m, slots);
    st_dtype sd = dtype == LORA_DTYPE_F16 ? ST_F16 : dtype == LORA_DTYPE_BF16 ? ST_BF16 : ST_F32;
    for (size_t i = 0; i < n_slots && st == LORA_OK; i++) {
        weight_slot *s     = &slots[i];
        int64_t      numel = s->shape[0] * (s->ndim == 2 ? s->shape[1] : 1);
        const void  *data  = *s->slot;
        if (sd != ST_F32) {
            uint16_t *h = malloc((size_t)numel * sizeof(uint16_t));
            if (!h) {
                st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", dir);
                break;
            }
            if (sd == ST_F16) lora_f32_to_f16_n(h, *s->slot, (size_t)numel);
            else lora_f32_to_bf16_n(h, *s->slot, (size_t)numel);
            conv[i] = h;
            data    = h;
        }
        char name[96];
        if (!strcmp(s->name, "lm_head.weight")) snprintf(name, sizeof name, "%s", s->name);
        else snprintf(name, sizeof name, "transformer.%s", s->name);
        st = st_writer_add(w, name, sd, s->ndim, s->shape, data, err);
    }
    if (st == LORA_OK) st = st_writer_meta(w, "format", "pt", err);
    if (st == LORA_OK) st = lora_mkdirs(dir, err);
    if (st == LORA_OK) st = lora_path_join(path, sizeof path, dir, "model.safetensors", err);
    if (st == LORA_OK) st = st_writer_write(w, path, err);
    if (st == LORA_OK) st = lora_path_join(path, sizeof path, dir, "config.json", err);
    if (st == LORA_OK)
        st = hf_config_write(path, &m->cfg,
                             sd == ST_F16 ? "float16" : sd == ST_BF16 ? "bfloat16" : "float32",
                             err);
    for (size_t i = 0; st == LORA_OK && i < sizeof tokenizer_files / sizeof *tokenizer_files;
         i++) {
        char   src[4096], *text = NULL;
        size_t len;
        if (lora_path_join(src, sizeof src, m->dir, tokenizer_files[i], err) != LORA_OK) continue;
        if (lora_read_file(src, &text, &len, NULL) != LORA_OK) continue; /* absent: fine */
        st = lora_path_join(path, sizeof path, dir, tokenizer_files[i], err);
        if (st == LORA_OK) st = lora_write_file_atomic(path, text, len, err);
        free(text);
    }
done:
    for (size_t i = 0; conv && i < n_slots; i++) free(conv[i]);
    free(conv);
    free(slots);
    st_writer_free(w);
    return st;
}
