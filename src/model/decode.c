/*
 * decode.c — incremental decoding with a KV cache, and drawing tokens from logits.
 *
 * What it is: the GPT-2 forward pass of gpt2.c run over only the new tokens of a sequence,
 * with every layer's keys and values kept per sequence so that attention for a token at
 * position p reads the cache [0, p] instead of recomputing it. A forward has R rows: the
 * new tokens of one sequence (lora_decoder_feed), or one token of every sequence
 * (lora_decoder_step_all). Rows go through the same linear sites as training, so adapters
 * attached to the model are applied (with training off: no dropout). Only the rows whose
 * logits are wanted go through ln_f and the LM head. The sampler turns logits into a token;
 * beam search (Hugging Face's semantics) runs the beams of one or several prompts as the rows
 * of each forward, reordering caches by copying positions past the shared prompt.
 * Optionally (lora_decoder_set_transposed) the decoder keeps a transposed copy Wᵀ of every
 * linear's weight and takes the base product of forwards of few rows from it, one dot product
 * per output (matmul_forward_t), which streams faster than the Conv1D layout's row sums; the
 * copy follows the model's weights (weights_gen) and is retransposed where they changed.
 * What it is not: a paged or shared-prefix cache, speculative decoding, or a second model
 * implementation — it uses the model's weights, sites and kernels.
 *
 * L = layers, S = n_seq, P = max_len, C = n_embd, NH = heads, hs = C / NH, F = n_inner,
 * V = vocab, R = rows of one forward, R_max = max(P, S).
 */
#include "model/gpt2.h"

#include "core/error.h"
#include "core/kernels.h"
#include "core/memory.h"
#include "core/rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Attention over the cache runs multi-threaded when a forward has at least this many
 * query-key multiply-adds (Σ_rows (pos + 1) · C); below it, starting the team costs more. */
#define ATTEND_PARALLEL_MIN (1L << 16)

/* With transposed weights on, forwards of up to this many rows take their base products from
 * the copies; longer ones (a prompt's prefill) keep sgemm on the Conv1D weights. Measured on
 * GPT-2 small's 48 linears (2 threads, a 2-core VM): the copies' dot products against the
 * Conv1D path take 0.9x its time at 1 row, 0.35x at 2, 0.45x at 4, 0.9x at 8; at 12 rows sgemm
 * on the copies is no faster than on the Conv1D weights. */
#define WT_ROWS_MAX MATMUL_T_ROWS

/* One linear's transposed copy. */
typedef struct wt_site {
    float       *wt;  /* (out, in) = wᵀ, within the decoder's wt_mem */
    const float *src; /* the site's w it was transposed from; NULL: not made (trainable w) */
} wt_site;

struct lora_decoder {
    lora_model *m; /* borrowed */
    int32_t     n_seq, max_len, rows_max;
    int32_t    *len; /* (S) tokens held per sequence; its logits are valid when > 0 */

    float *k_cache, *v_cache; /* (L, S, P, C) each, owned (one block) */
    float *logits;            /* (S, V) the last token's logits per sequence */

    /* per-forward activations, R_max rows, one block */
    float   *act;
    float   *x;              /* (R, C) residual stream */
    float   *ln;             /* (R, C) layer-norm output */
    float   *mean, *rstd;    /* (R) */
    float   *qkv;            /* (R, 3C) */
    float   *atty;           /* (R, C) attention output before c_proj */
    float   *proj;           /* (R, C) output of attn.c_proj / mlp.c_proj */
    float   *fch, *fch_gelu; /* (R, F) */
    int32_t *row_seq;        /* (R) sequence of each row */
    int32_t *row_pos;        /* (R) position of each row */

    int    n_threads;   /* threads the attention scratch was sized for */
    float *att_scratch; /* (n_threads, P) one score row per thread */

    peft_ctx ctx;             /* training 0; scratch for the adapters' forward */
    float   *peft_scratch;    /* owned */
    uint32_t adapters_seen; /* the model's adapters_gen when they were last reserved */

    /* transposed weights (lora_decoder_set_transposed); NULL when off */
    float   *wt_mem;       /* owned: every site's copy, one block (lora_alloc_streamed) */
    wt_site *wts;          /* (L · 4) c_attn, attn_proj, c_fc, mlp_proj of each layer, owned */
    uint32_t weights_seen; /* the model's weights_gen when the copies were last brought up */
};

/* ---- adapters' per-pass storage ---- */

/*
 * Makes every attached adapter's per-pass storage cover R_max rows (their reserve only ever
 * grows it, so the model's own plan is not disturbed) and sizes the shared scratch. Runs at
 * init and again only if the set of adapters changed since (a method attached, an adapter
 * added, removed or switched).
 */
static lora_status reserve_adapters(lora_decoder *d, lora_error *err) {
    lora_model *m    = d->m;
    size_t      need = 0;
    for (int32_t l = 0; l < m->cfg.n_layer; l++) {
        gpt2_layer *ly       = &m->layers[l];
        linear     *sites[4] = {&ly->c_attn, &ly->attn_proj, &ly->c_fc, &ly->mlp_proj};
        for (int s = 0; s < 4; s++)
            for (int32_t i = 0; i < sites[s]->n_adapters; i++) {
                adapter    *a  = &sites[s]->adapters[i];
                size_t      n  = 0;
                lora_status st = a->ops->reserve(a, sites[s], d->rows_max, &n, err);
                if (st != LORA_OK) return st;
                if (n > need) need = n;
            }
    }
    if (need > d->ctx.scratch_floats) {
        size_t bytes;
        float *p = NULL;
        if (lora_mul_ok(need, sizeof(float), &bytes)) p = realloc(d->peft_scratch, bytes);
        if (!p)
            return lora_errorf(err, LORA_ERR_NOMEM,
                               "decoder: cannot allocate %zu floats of adapter scratch", need);
        d->peft_scratch       = p;
        d->ctx.scratch        = p;
        d->ctx.scratch_floats = need;
    }
    d->adapters_seen = m->adapters_gen;
    return LORA_OK;
}

/* ---- creation ---- */

lora_status lora_decoder_init(lora_model *m, int32_t n_seq, int32_t max_len, lora_decoder **out,
                              lora_error *err) {
    if (!m || !out) return lora_errorf(err, LORA_ERR_ARG, "lora_decoder_init: NULL argument");
    *out                 = NULL;
    const lora_config *c = &m->cfg;
    if (n_seq < 1)
        return lora_errorf(err, LORA_ERR_ARG, "decoder: n_seq=%d must be at least 1", (int)n_seq);
    if (max_len <= 0) max_len = c->n_positions;
    if (max_len > c->n_positions)
        return lora_errorf(err, LORA_ERR_ARG,
                           "decoder: max_len=%d exceeds the model's context n_positions=%d",
                           (int)max_len, (int)c->n_positions);

    lora_decoder *d = calloc(1, sizeof *d);
    if (!d) return lora_errorf(err, LORA_ERR_NOMEM, "decoder: out of memory");
    lora_status st;
    d->m        = m;
    d->n_seq    = n_seq;
    d->max_len  = max_len;
    d->rows_max = max_len > n_seq ? max_len : n_seq;
#ifdef _OPENMP
    d->n_threads = omp_get_max_threads();
#else
    d->n_threads = 1;
#endif
    if (d->n_threads < 1) d->n_threads = 1;

    size_t S = (size_t)n_seq, P = (size_t)max_len, R = (size_t)d->rows_max;
    size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner, V = (size_t)c->vocab_size;
    size_t L = (size_t)c->n_layer;
    /* int32 sizes: the products below fit in 64 bits except the cache's, which is checked */
    size_t cache = 0, cache_bytes = 0;
    size_t act = R * (C + C + 2 + 3 * C + C + C + 2 * F) + (size_t)d->n_threads * P + S * V;
    int    ok =
        lora_mul_ok(L * S, P * C, &cache) && lora_mul_ok(cache, 2 * sizeof(float), &cache_bytes);
    if (ok) {
        d->k_cache = lora_alloc_streamed(cache_bytes);
        d->act     = malloc(act * sizeof(float));
        d->len     = calloc(S + 2 * R, sizeof(int32_t));
    }
    if (!ok || !d->k_cache || !d->act || !d->len) {
        st = lora_errorf(err, LORA_ERR_NOMEM,
                         "decoder: cannot allocate a KV cache of %.1f MiB for %d sequences of "
                         "%d tokens (hint: fewer sequences or a shorter max_len)",
                         (double)cache_bytes / 1048576.0, (int)n_seq, (int)max_len);
        goto fail;
    }
    d->v_cache = d->k_cache + cache;
    d->row_seq = d->len + S;
    d->row_pos = d->row_seq + R;

    float *p = d->act;
#define TAKE(ptr, n) (ptr = p, p += (n))
    TAKE(d->x, R * C);
    TAKE(d->ln, R * C);
    TAKE(d->mean, R);
    TAKE(d->rstd, R);
    TAKE(d->qkv, R * 3 * C);
    TAKE(d->atty, R * C);
    TAKE(d->proj, R * C);
    TAKE(d->fch, R * F);
    TAKE(d->fch_gelu, R * F);
    TAKE(d->att_scratch, (size_t)d->n_threads * P);
    TAKE(d->logits, S * V);
#undef TAKE
    LORA_ASSERT((size_t)(p - d->act) == act);

    d->ctx.training = 0;
    d->ctx.seed     = 0;
    if ((st = reserve_adapters(d, err)) != LORA_OK) goto fail;
    *out = d;
    return LORA_OK;
fail:
    lora_decoder_free(d);
    return st;
}

void lora_decoder_free(lora_decoder *d) {
    if (!d) return;
    free(d->wts);
    free(d->wt_mem);
    free(d->peft_scratch);
    free(d->len);
    free(d->act);
    free(d->k_cache);
    free(d);
}

/* ---- transposed weights ---- */

static linear *site_of(lora_model *m, int32_t i) {
    gpt2_layer *ly = &m->layers[i / 4];
    switch (i % 4) {
    case 0: return &ly->c_attn;
    case 1: return &ly->attn_proj;
    case 2: return &ly->c_fc;
    default: return &ly->mlp_proj;
    }
}

/*
 * Brings every copy up to its site's current w once the model's weights_gen has moved (a merge,
 * unmerge, switch or attach since the last forward). A copy is made again where w points
 * elsewhere, or where the site is merged (a re-merge may reuse the address of a freed copy);
 * a site whose w still points at the same base weight (mapped or converted, never written)
 * keeps its copy. A site whose w is trainable (full fine-tuning: an optimizer step rewrites it
 * in place) gets none: it keeps the normal product.
 */
static void sync_transposed(lora_decoder *d) {
    lora_model *m = d->m;
    if (!d->wts || d->weights_seen == m->weights_gen) return;
    for (int32_t i = 0; i < 4 * m->cfg.n_layer; i++) {
        linear  *site = site_of(m, i);
        wt_site *t    = &d->wts[i];
        if (site->dw) {
            t->src = NULL;
            continue;
        }
        if (t->src == site->w && !site->w_merged) continue;
        matrix_transpose(t->wt, site->w, site->in, site->out);
        t->src = site->w;
    }
    d->weights_seen = m->weights_gen;
}

lora_status lora_decoder_set_transposed(lora_decoder *d, int on, lora_error *err) {
    if (!d) return lora_errorf(err, LORA_ERR_ARG, "lora_decoder_set_transposed: NULL decoder");
    if (!on) {
        free(d->wts);
        free(d->wt_mem);
        d->wts    = NULL;
        d->wt_mem = NULL;
        return LORA_OK;
    }
    if (d->wts) return LORA_OK;
    lora_model *m      = d->m;
    size_t      n      = 4 * (size_t)(uint32_t)m->cfg.n_layer;
    size_t      floats = 0, bytes = 0;
    for (size_t i = 0; i < n; i++) {
        const linear *site = site_of(m, (int32_t)i);
        floats += (size_t)site->in * (size_t)site->out;
    }
    wt_site *wts = calloc(n, sizeof *wts);
    float   *mem = lora_mul_ok(floats, sizeof(float), &bytes) ? lora_alloc_streamed(bytes) : NULL;
    if (!wts || !mem) {
        free(wts);
        free(mem);
        return lora_errorf(err, LORA_ERR_NOMEM,
                           "decoder: cannot allocate %.1f MiB for the transposed weights (a "
                           "second copy of every linear's weight) (hint: decode without them)",
                           (double)floats * sizeof(float) / 1048576.0);
    }
    float *p = mem;
    for (size_t i = 0; i < n; i++) {
        const linear *site = site_of(m, (int32_t)i);
        wts[i].wt          = p;
        p += (size_t)site->in * (size_t)site->out;
    }
    d->wt_mem       = mem;
    d->wts          = wts;
    d->weights_seen = m->weights_gen - 1; /* every copy is made before the next forward */
    sync_transposed(d);
    return LORA_OK;
}

/* ---- attention over the cache ---- */

static inline float dot(const float *restrict a, const float *restrict b, int n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/*
 * One query row and head against keys and values [0, n) of its sequence (row stride C):
 * scores q·k / sqrt(hs), a max-shifted softmax summed in double, then out = Σ p · v — the
 * operations of attention_forward (which does the products as blocked sgemm calls, so results
 * agree to rounding). sc holds n floats of scratch.
 */
static void attend_one(float *out, float *sc, const float *q, const float *k, const float *v,
                       int n, int C, int hs, float scale) {
    float mx = -INFINITY;
    for (int t = 0; t < n; t++) {
        float s = dot(q, k + (size_t)t * C, hs) * scale;
        sc[t]   = s;
        mx      = s > mx ? s : mx;
    }
    double sum = 0.0;
    for (int t = 0; t < n; t++) {
        sc[t] = expf(sc[t] - mx);
        sum += sc[t];
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < hs; i++) out[i] = 0.0f;
    for (int t = 0; t < n; t++) {
        float        pt = sc[t] * inv;
        const float *vt = v + (size_t)t * C;
        for (int i = 0; i < hs; i++) out[i] += pt * vt[i];
    }
}

/* One work item of attend: query row r (of R) and head h, item = r · NH + h. */
static void attend_item(lora_decoder *d, float *sc, size_t layer, int C, int NH, float scale,
                        int item) {
    int    r = item / NH, h = item % NH, hs = C / NH, P = d->max_len;
    size_t base = layer + (size_t)d->row_seq[r] * P * C + (size_t)h * hs;
    attend_one(d->atty + (size_t)r * C + (size_t)h * hs, sc,
               d->qkv + (size_t)r * 3 * C + (size_t)h * hs, d->k_cache + base, d->v_cache + base,
               d->row_pos[r] + 1, C, hs, scale);
}

/* atty (R, C) for layer l: row r attends causally to [0, row_pos[r]] of sequence row_seq[r],
 * whose keys and values are already in the cache. Work items are (row, head) pairs; a small
 * forward runs them on the calling thread without entering OpenMP. */
static void attend(lora_decoder *d, int32_t l, int R) {
    const lora_config *c = &d->m->cfg;
    int                C = c->n_embd, NH = c->n_head, hs = C / NH, n_items = R * NH;
    float              scale = (float)(1.0 / sqrt((double)hs));
    size_t             layer = (size_t)l * d->n_seq * d->max_len * C;
    long               work  = 0;
    for (int r = 0; r < R; r++) work += (long)(d->row_pos[r] + 1) * C;
    if (work < ATTEND_PARALLEL_MIN || d->n_threads < 2) {
        for (int i = 0; i < n_items; i++) attend_item(d, d->att_scratch, layer, C, NH, scale, i);
        return;
    }
#pragma omp parallel num_threads(d->n_threads)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *sc = d->att_scratch + (size_t)tid * d->max_len;
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < n_items; i++) attend_item(d, sc, layer, C, NH, scale, i);
    }
}

/* ---- the forward pass over new rows ---- */

/* linear_forward of site i (site_of order) over R rows: from its transposed copy when the
 * decoder keeps one that is current (sync_transposed ran) and the forward is short. */
static void site_forward(lora_decoder *d, int32_t i, float *out, const float *inp, int R) {
    linear *site = site_of(d->m, i);
    if (d->wts && R <= WT_ROWS_MAX && d->wts[i].src && d->wts[i].src == site->w)
        linear_forward_wt(site, d->wts[i].wt, out, inp, R, &d->ctx);
    else
        linear_forward(site, out, inp, R, &d->ctx);
}

/*
 * Runs the transformer over R new tokens whose sequences and positions are in row_seq and
 * row_pos, appending their keys and values to the cache. Leaves the last layer's output in x.
 */
static void forward_rows(lora_decoder *d, const int32_t *tokens, int R) {
    lora_model        *m = d->m;
    const lora_config *c = &m->cfg;
    int                C = c->n_embd, F = c->n_inner, P = d->max_len;
    size_t             RC = (size_t)R * C, RF = (size_t)R * F;
    float              eps = c->layer_norm_epsilon;
    d->ctx.pass++;

    for (int r = 0; r < R; r++) {
        const float *we = m->wte + (size_t)tokens[r] * C;
        const float *pe = m->wpe + (size_t)d->row_pos[r] * C;
        float       *x  = d->x + (size_t)r * C;
        for (int i = 0; i < C; i++) x[i] = we[i] + pe[i];
    }
    for (int32_t l = 0; l < c->n_layer; l++) {
        gpt2_layer *ly = &m->layers[l];
        layernorm_forward(d->ln, d->mean, d->rstd, d->x, ly->ln_1_w, ly->ln_1_b, R, C, eps);
        site_forward(d, 4 * l + 0, d->qkv, d->ln, R);
        for (int r = 0; r < R; r++) {
            size_t at = (((size_t)l * d->n_seq + d->row_seq[r]) * P + d->row_pos[r]) * C;
            const float *row = d->qkv + (size_t)r * 3 * C;
            memcpy(d->k_cache + at, row + C, (size_t)C * sizeof(float));
            memcpy(d->v_cache + at, row + 2 * C, (size_t)C * sizeof(float));
        }
        attend(d, l, R);
        site_forward(d, 4 * l + 1, d->proj, d->atty, R);
        residual_forward(d->x, d->proj, d->x, RC);
        layernorm_forward(d->ln, d->mean, d->rstd, d->x, ly->ln_2_w, ly->ln_2_b, R, C, eps);
        site_forward(d, 4 * l + 2, d->fch, d->ln, R);
        if (c->activation == LORA_ACT_GELU_ERF)
            gelu_erf_forward(d->fch_gelu, d->fch, RF);
        else
            gelu_forward(d->fch_gelu, d->fch, RF);
        site_forward(d, 4 * l + 3, d->proj, d->fch_gelu, R);
        residual_forward(d->x, d->proj, d->x, RC);
    }
}

/* logits (n, V) at out = ln_f(x rows [first, first + n)) · lm_headᵀ */
static void head_rows(lora_decoder *d, float *out, int first, int n) {
    lora_model        *m = d->m;
    const lora_config *c = &m->cfg;
    int                C = c->n_embd, V = c->vocab_size;
    layernorm_forward(d->ln, d->mean, d->rstd, d->x + (size_t)first * C, m->ln_f_w, m->ln_f_b, n,
                      C, c->layer_norm_epsilon);
    /* the head is stored (V, C), the transposed layout: a few rows (beams, sequences of a
     * step) take matmul_forward_t's dot products, which read it once instead of packing it */
    matmul_forward_t(out, d->ln, m->lm_head, NULL, n, C, V);
}

/* The forward over R rows, then logits for rows [first, first + n_out) into out. */
static void run_rows(lora_decoder *d, const int32_t *tokens, int R, float *out, int first,
                     int n_out) {
    sync_transposed(d);
    forward_rows(d, tokens, R);
    head_rows(d, out, first, n_out);
}

/* Checks ids and re-reserves adapters attached since the last forward. */
static lora_status check_tokens(lora_decoder *d, const int32_t *tokens, int32_t n,
                                const char *what, lora_error *err) {
    int32_t V = d->m->cfg.vocab_size;
    if (!tokens) return lora_errorf(err, LORA_ERR_ARG, "decoder %s: tokens is NULL", what);
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return lora_errorf(err, LORA_ERR_ARG,
                               "decoder %s: token id %d at index %d is outside the vocabulary "
                               "[0, %d)",
                               what, (int)tokens[i], (int)i, (int)V);
    if (d->m->adapters_gen != d->adapters_seen) return reserve_adapters(d, err);
    return LORA_OK;
}

lora_status lora_decoder_feed(lora_decoder *d, int32_t seq, const int32_t *tokens, int32_t n,
                              lora_error *err) {
    if (!d) return lora_errorf(err, LORA_ERR_ARG, "decoder feed: NULL decoder");
    if (seq < 0 || seq >= d->n_seq)
        return lora_errorf(err, LORA_ERR_ARG, "decoder feed: sequence %d is outside [0, %d)",
                           (int)seq, (int)d->n_seq);
    if (n < 1)
        return lora_errorf(err, LORA_ERR_ARG, "decoder feed: n=%d tokens (at least 1)", (int)n);
    if (n > d->max_len - d->len[seq])
        return lora_errorf(err, LORA_ERR_STATE,
                           "decoder feed: sequence %d holds %d of max_len=%d tokens; %d more do "
                           "not fit (hint: reset the sequence or create a longer decoder)",
                           (int)seq, (int)d->len[seq], (int)d->max_len, (int)n);
    lora_status st = check_tokens(d, tokens, n, "feed", err);
    if (st != LORA_OK) return st;
    for (int32_t r = 0; r < n; r++) {
        d->row_seq[r] = seq;
        d->row_pos[r] = d->len[seq] + r;
    }
    run_rows(d, tokens, n, d->logits + (size_t)seq * d->m->cfg.vocab_size, n - 1, 1);
    d->len[seq] += n;
    return LORA_OK;
}

lora_status lora_decoder_step_all(lora_decoder *d, const int32_t *tokens, lora_error *err) {
    if (!d) return lora_errorf(err, LORA_ERR_ARG, "decoder step: NULL decoder");
    for (int32_t s = 0; s < d->n_seq; s++)
        if (d->len[s] >= d->max_len)
            return lora_errorf(err, LORA_ERR_STATE,
                               "decoder step: sequence %d is full (max_len=%d tokens) (hint: "
                               "reset it or create a longer decoder)",
                               (int)s, (int)d->max_len);
    lora_status st = check_tokens(d, tokens, d->n_seq, "step", err);
    if (st != LORA_OK) return st;
    for (int32_t s = 0; s < d->n_seq; s++) {
        d->row_seq[s] = s;
        d->row_pos[s] = d->len[s];
    }
    run_rows(d, tokens, d->n_seq, d->logits, 0, d->n_seq);
    for (int32_t s = 0; s < d->n_seq; s++) d->len[s]++;
    return LORA_OK;
}

/* ---- sequences ---- */

const float *lora_decoder_logits(const lora_decoder *d, int32_t seq) {
    if (!d || seq < 0 || seq >= d->n_seq || d->len[seq] == 0) return NULL;
    return d->logits + (size_t)seq * d->m->cfg.vocab_size;
}

int32_t lora_decoder_length(const lora_decoder *d, int32_t seq) {
    if (!d || seq < 0 || seq >= d->n_seq) return -1;
    return d->len[seq];
}

int32_t lora_decoder_max_len(const lora_decoder *d) {
    return d ? d->max_len : 0;
}

void lora_decoder_reset(lora_decoder *d, int32_t seq) {
    if (!d || seq >= d->n_seq) return;
    if (seq < 0)
        memset(d->len, 0, (size_t)d->n_seq * sizeof(int32_t));
    else
        d->len[seq] = 0;
}

/* Copies positions [from, length of src) of src's keys and values to dst and gives dst src's
 * length; dst's positions below from must already equal src's (a shared prompt). */
static void copy_positions(lora_decoder *d, int32_t dst, int32_t src, int32_t from) {
    const lora_config *c = &d->m->cfg;
    size_t             C = (size_t)c->n_embd, P = (size_t)d->max_len;
    size_t             at = (size_t)from * C;
    size_t             n  = d->len[src] > from ? (size_t)(d->len[src] - from) * C : 0;
    for (int32_t l = 0; l < c->n_layer; l++) {
        size_t layer = (size_t)l * d->n_seq * P * C;
        memcpy(d->k_cache + layer + dst * P * C + at, d->k_cache + layer + src * P * C + at,
               n * sizeof(float));
        memcpy(d->v_cache + layer + dst * P * C + at, d->v_cache + layer + src * P * C + at,
               n * sizeof(float));
    }
    d->len[dst] = d->len[src];
}

lora_status lora_decoder_copy_seq(lora_decoder *d, int32_t dst, int32_t src, lora_error *err) {
    if (!d) return lora_errorf(err, LORA_ERR_ARG, "decoder copy: NULL decoder");
    if (dst < 0 || dst >= d->n_seq || src < 0 || src >= d->n_seq)
        return lora_errorf(err, LORA_ERR_ARG,
                           "decoder copy: sequences %d <- %d must both be in [0, %d)", (int)dst,
                           (int)src, (int)d->n_seq);
    if (dst == src) return LORA_OK;
    size_t V = (size_t)d->m->cfg.vocab_size;
    copy_positions(d, dst, src, 0);
    memcpy(d->logits + dst * V, d->logits + src * V, V * sizeof(float));
    return LORA_OK;
}

/* ---- beam search ---- */

/*
 * Advances sequences seqs[0..n) (distinct, none full) by tokens[0..n) (valid ids) in one
 * forward. The logits of row r go to ROW r of d->logits, not to its sequence's row: the beam
 * search reads them by row and empties its sequences before it returns.
 */
static void step_rows(lora_decoder *d, const int32_t *seqs, const int32_t *tokens, int n) {
    for (int r = 0; r < n; r++) {
        d->row_seq[r] = seqs[r];
        d->row_pos[r] = d->len[seqs[r]];
    }
    run_rows(d, tokens, n, d->logits, 0, n);
    for (int r = 0; r < n; r++) d->len[seqs[r]]++;
}

lora_beam_params lora_beam_params_default(void) {
    lora_beam_params p;
    memset(&p, 0, sizeof p);
    p.n_beams         = 4;
    p.max_new         = 64;
    p.length_penalty  = 1.0f;
    p.no_repeat_ngram = 0;
    p.early_stopping  = LORA_BEAM_STOP_EXACT;
    p.eos             = -1;
    return p;
}

/* A candidate continuation: running beam `parent` extended by `tok`. */
typedef struct beam_cand {
    double  s;      /* the beam's sum of log-probabilities with tok */
    float   z;      /* tok's logit (a cheap first filter) */
    int32_t tok;
    int32_t parent; /* rank of the running beam it extends */
} beam_cand;

/* A finished hypothesis. */
typedef struct beam_hyp {
    double   score, sum;
    int64_t  order;    /* when it finished: among equal scores, earlier wins */
    int32_t  n;        /* tokens in toks */
    int32_t  length;   /* the length in the score */
    int32_t  finished; /* ended by eos or a stop id */
    int32_t *toks;     /* (M) */
} beam_hyp;

/* One prompt's search: K = beams, M = its max_new. Running beams are ranked (0 = best); the
 * sequence holding beam j's cache is slot[j], one of [first, first + K). */
typedef struct beam_group {
    const int32_t *prompt;
    int32_t        n_prompt, max_new, first;
    int32_t        n_run;      /* running beams */
    int32_t        row;        /* beam j's logits are row `row + j` of the decoder's logits */
    int32_t        done, n_hyp, n_steps;
    int32_t       *slot, *slot_next; /* (K) */
    int32_t       *tok_next, *parent_next; /* (K) the beams chosen by the last selection */
    int32_t       *claimed;    /* (K) scratch of the reordering */
    double        *sum, *sum_next; /* (K) */
    int32_t       *hist, *hist_next; /* (K, M) the generated tokens of each running beam */
    beam_cand     *cand;       /* (K, 2K) */
    beam_hyp      *hyp;        /* (K) */
} beam_group;

/* mark bits: a token banned for the beam at hand, a token that ends a hypothesis */
#define MARK_BANNED 1
#define MARK_END    2

/* Everything one search needs, allocated at its start. */
typedef struct beam_run {
    const lora_beam_params *p;
    int32_t                 K, V, G;
    int64_t                 n_finished; /* hypotheses finished so far, for their order */
    beam_group             *g;          /* (G) */
    unsigned char          *mark;       /* (V) MARK_END bits for the search, MARK_BANNED per use */
    int32_t                *end_ids;    /* eos and the stop ids, each once */
    int32_t                 n_end;
    int32_t                *seqs, *toks; /* (G K) one step's rows */
    void                   *blocks[6];
} beam_run;

static void beam_run_free(beam_run *b) {
    for (int i = 0; i < 6; i++) free(b->blocks[i]);
}

/* Allocates and lays out the scratch for G prompts of up to M new tokens; 0 on success, -1 on
 * failure (beam_run_free releases whatever was allocated). */
static int beam_run_alloc(beam_run *b, int32_t G, int32_t K, int32_t M, int32_t V) {
    size_t g = (size_t)G, k = (size_t)K, m = (size_t)(M > 0 ? M : 1), km;
    /* ints per group: slot, slot_next, tok_next, parent_next, claimed; hist x 2; hyp tokens */
    size_t n_int, n_dbl = g * 2 * k, n_cand, n_hyp = g * k;
    if (!lora_mul_ok(k, m, &km) || !lora_mul_ok(g, 5 * k + 3 * km, &n_int) ||
        !lora_mul_ok(g * k, 2 * k, &n_cand) || n_int > SIZE_MAX / 2)
        return -1;
    b->blocks[0] = calloc(g, sizeof(beam_group));
    b->blocks[1] = calloc(n_dbl, sizeof(double));
    b->blocks[2] = calloc(n_cand, sizeof(beam_cand));
    b->blocks[3] = calloc(n_hyp, sizeof(beam_hyp));
    b->blocks[4] = calloc(n_int + 2 * g * k, sizeof(int32_t));
    b->blocks[5] = calloc((size_t)V + sizeof(int32_t) * (1 + (size_t)b->p->n_stop_ids), 1);
    if (!b->blocks[0] || !b->blocks[1] || !b->blocks[2] || !b->blocks[3] || !b->blocks[4] ||
        !b->blocks[5])
        return -1;
    b->g          = b->blocks[0];
    b->end_ids    = b->blocks[5];
    b->mark       = (unsigned char *)(b->end_ids + 1 + b->p->n_stop_ids);
    double    *dp = b->blocks[1];
    beam_cand *cp = b->blocks[2];
    beam_hyp  *hp = b->blocks[3];
    int32_t   *ip = b->blocks[4];
    for (size_t i = 0; i < g; i++) {
        beam_group *gr = &b->g[i];
        gr->sum = dp, dp += k;
        gr->sum_next = dp, dp += k;
        gr->cand = cp, cp += 2 * k * k;
        gr->hyp = hp, hp += k;
        gr->slot = ip, ip += k;
        gr->slot_next = ip, ip += k;
        gr->tok_next = ip, ip += k;
        gr->parent_next = ip, ip += k;
        gr->claimed = ip, ip += k;
        gr->hist = ip, ip += km;
        gr->hist_next = ip, ip += km;
        for (size_t j = 0; j < k; j++) gr->hyp[j].toks = ip + j * m;
        ip += km;
    }
    b->seqs = ip, ip += g * k;
    b->toks = ip;
    return 0;
}

/* Token i of running beam j's sequence (the prompt, then its t generated tokens). */
static inline int32_t beam_token(const beam_group *gr, int32_t M, int32_t j, int32_t i) {
    return i < gr->n_prompt ? gr->prompt[i] : gr->hist[(size_t)j * M + (i - gr->n_prompt)];
}

/*
 * Sets (on) or clears MARK_BANNED on the tokens that would repeat an n-gram of running beam j's
 * sequence of L tokens: every token that followed an earlier occurrence of its last n - 1
 * tokens (HF's NoRepeatNGramLogitsProcessor; n = 1 bans every token seen).
 */
static void mark_ngram_bans(unsigned char *mark, const beam_group *gr, int32_t M, int32_t j,
                            int32_t L, int32_t n, int on) {
    if (n <= 0 || L + 1 < n) return;
    for (int32_t i = 0; i + n <= L; i++) {
        int32_t k = 0;
        while (k < n - 1 && beam_token(gr, M, j, i + k) == beam_token(gr, M, j, L - n + 1 + k))
            k++;
        if (k < n - 1) continue;
        unsigned char *m = &mark[beam_token(gr, M, j, i + n - 1)];
        *m = on ? (unsigned char)(*m | MARK_BANNED) : (unsigned char)(*m & ~MARK_BANNED);
    }
}

/* The candidate order within a beam: higher sum, then lower id. */
static inline int beam_before(double s, int32_t tok, const beam_cand *c) {
    return s > c->s || (s == c->s && tok < c->tok);
}

/* Inserts (s, tok) into the sorted list c of n (capacity cap) entries if it ranks in it. */
static void cand_insert(beam_cand *c, int32_t *n, int32_t cap, double s, float z, int32_t tok,
                        int32_t parent) {
    if (*n == cap && !beam_before(s, tok, &c[cap - 1])) return;
    int32_t at = *n < cap ? (*n)++ : cap - 1;
    while (at > 0 && beam_before(s, tok, &c[at - 1])) {
        c[at] = c[at - 1];
        at--;
    }
    c[at].s      = s;
    c[at].z      = z;
    c[at].tok    = tok;
    c[at].parent = parent;
}

/*
 * Fills c with running beam `parent`'s candidates: its K best continuations that do not end a
 * hypothesis, then its K best that do (eos, stop ids) — all that can matter (see beam_select).
 * log p = z - logsumexp(z) in double; banned tokens, NaN and -inf are left out. Returns how
 * many (at most 2K).
 */
static int32_t beam_top(beam_cand *c, const beam_run *b, const float *z, double sum,
                        int32_t parent) {
    int32_t K = b->K, V = b->V;
    float   mx = -INFINITY;
    for (int32_t v = 0; v < V; v++) mx = z[v] > mx ? z[v] : mx; /* NaN never compares true */
    if (!(mx > -INFINITY) || mx == INFINITY) return 0;
    double se = 0.0;
    for (int32_t v = 0; v < V; v++) se += expf(z[v] - mx);
    double lse = (double)mx + log(se);
    if (!isfinite(lse)) return 0; /* a NaN logit: nothing to rank */
    int32_t n    = 0;
    float   zthr = -INFINITY; /* once the list is full, a token must at least tie the last */
    for (int32_t v = 0; v < V; v++) {
        if (!(z[v] >= zthr) || b->mark[v]) continue;
        double s = sum + ((double)z[v] - lse);
        if (!(s > -INFINITY)) continue;
        cand_insert(c, &n, K, s, z[v], v, parent);
        if (n == K) zthr = c[K - 1].z;
    }
    int32_t ne = 0;
    for (int32_t i = 0; i < b->n_end; i++) {
        int32_t v = b->end_ids[i];
        double  s = sum + ((double)z[v] - lse);
        if ((b->mark[v] & MARK_BANNED) || !(s > -INFINITY)) continue;
        cand_insert(c + n, &ne, K, s, z[v], v, parent);
    }
    return n + ne;
}

/* The candidate order: higher s, then lower id, then the better-ranked parent. */
static int cand_cmp(const void *pa, const void *pb) {
    const beam_cand *a = pa, *b = pb;
    if (a->s != b->s) return a->s > b->s ? -1 : 1;
    if (a->tok != b->tok) return a->tok < b->tok ? -1 : 1;
    return (a->parent > b->parent) - (a->parent < b->parent);
}

/* The kept hypothesis with the lowest score (the earliest finished among equals). */
static int32_t worst_hyp(const beam_group *gr) {
    int32_t w = 0;
    for (int32_t i = 1; i < gr->n_hyp; i++) {
        const beam_hyp *a = &gr->hyp[i], *b = &gr->hyp[w];
        if (a->score < b->score || (a->score == b->score && a->order < b->order)) w = i;
    }
    return w;
}

/*
 * Offers a finished hypothesis: running beam j's t generated tokens, then `last` when >= 0,
 * of length `length` and log-probability sum. Kept when fewer than K are kept, or when its
 * score beats the worst kept strictly (which it then replaces).
 */
static void add_hyp(beam_run *b, beam_group *gr, int32_t j, int32_t t, int32_t last,
                    int32_t length, double sum, int32_t finished) {
    int32_t M     = gr->max_new; /* >= 1 while the group runs */
    double  score = sum / pow((double)length, (double)b->p->length_penalty);
    int32_t at;
    if (gr->n_hyp < b->K) {
        at = gr->n_hyp++;
    } else {
        at = worst_hyp(gr);
        if (!(score > gr->hyp[at].score)) return;
    }
    beam_hyp *h = &gr->hyp[at];
    memcpy(h->toks, gr->hist + (size_t)j * M, (size_t)t * sizeof(int32_t));
    h->n = t;
    if (last >= 0) h->toks[h->n++] = last;
    h->length   = length;
    h->sum      = sum;
    h->score    = score;
    h->finished = finished;
    h->order    = b->n_finished++;
}

/*
 * One step of one prompt's search, after its running beams' logits are computed: ranks the
 * candidates, finishes hypotheses, chooses the next beams (tok_next, parent_next, sum_next)
 * and decides whether the search is done (then adding the running beams at max_new).
 * t = tokens generated so far by each running beam.
 *
 * HF walks the best 2K candidates (more with several end tokens), finishing an ending one
 * ranked among the first K and keeping the others until K run. Walking the merged per-beam
 * lists instead is the same: a candidate missing from them has K listed ones of its own beam
 * above it, so every rank below K is exact and the K best continuing ones are all listed.
 */
static void beam_select(beam_run *b, beam_group *gr, const float *logits, int32_t t) {
    const lora_beam_params *p = b->p;
    int32_t                 K = b->K, V = b->V, M = gr->max_new;
    int32_t                 nc = 0;
    for (int32_t j = 0; j < gr->n_run; j++) {
        int32_t L = gr->n_prompt + t;
        mark_ngram_bans(b->mark, gr, M, j, L, p->no_repeat_ngram, 1);
        nc += beam_top(gr->cand + nc, b, logits + (size_t)(gr->row + j) * V, gr->sum[j], j);
        mark_ngram_bans(b->mark, gr, M, j, L, p->no_repeat_ngram, 0);
    }
    qsort(gr->cand, (size_t)nc, sizeof *gr->cand, cand_cmp);
    double  best_cand = nc > 0 ? gr->cand[0].s : -INFINITY;
    int32_t n_new     = 0;
    for (int32_t r = 0; r < nc && n_new < K; r++) {
        const beam_cand *c = &gr->cand[r];
        if (b->mark[c->tok] & MARK_END) {
            int32_t last = c->tok == p->eos ? -1 : c->tok; /* a stop id is part of the text */
            if (r < K) add_hyp(b, gr, c->parent, t, last, t + 1, c->s, 1);
            continue;
        }
        gr->tok_next[n_new]    = c->tok;
        gr->parent_next[n_new] = c->parent;
        gr->sum_next[n_new]    = c->s;
        n_new++;
    }

    int done = 0;
    if (gr->n_hyp == K) {
        double worst = gr->hyp[worst_hyp(gr)].score, lp = p->length_penalty;
        lora_beam_stop mode = K == 1 ? LORA_BEAM_STOP_FIRST_K : p->early_stopping;
        if (mode == LORA_BEAM_STOP_FIRST_K) {
            done = 1;
        } else if (mode == LORA_BEAM_STOP_HEURISTIC) {
            done = worst >= best_cand / pow((double)(t + 1), lp);
        } else if (n_new == 0) {
            done = 1;
        } else { /* the best a running beam can still reach: its sum only decreases */
            double len = lp > 0 ? (double)M : (double)(t + 2);
            done       = worst >= gr->sum_next[0] / pow(len, lp);
        }
    }
    if (!done && (t + 1 >= M || n_new == 0)) {
        for (int32_t j = 0; j < n_new; j++)
            add_hyp(b, gr, gr->parent_next[j], t, gr->tok_next[j], t + 1, gr->sum_next[j], 0);
        done = 1;
    }
    if (done) {
        gr->done  = 1;
        gr->n_run = 0;
        return;
    }
    gr->n_run = n_new;
}

/*
 * Makes the chosen beams the running ones: histories extended, and caches placed. A parent's
 * sequence stays in place for its first child; further children get a sequence no parent
 * uses and a copy of the parent's positions past the prompt (the prompt is already in every
 * sequence of the group).
 */
static void beam_commit(lora_decoder *d, beam_group *gr, int32_t K, int32_t t) {
    int32_t M = gr->max_new;
    memset(gr->claimed, 0, (size_t)K * sizeof(int32_t));
    for (int32_t j = 0; j < gr->n_run; j++) {
        int32_t ps = gr->slot[gr->parent_next[j]] - gr->first;
        gr->slot_next[j] = gr->claimed[ps] ? -1 : gr->first + ps;
        gr->claimed[ps]  = 1;
    }
    int32_t f = 0;
    for (int32_t j = 0; j < gr->n_run; j++) {
        if (gr->slot_next[j] >= 0) continue;
        while (gr->claimed[f]) f++;
        gr->claimed[f]   = 1;
        gr->slot_next[j] = gr->first + f;
        copy_positions(d, gr->first + f, gr->slot[gr->parent_next[j]], gr->n_prompt);
    }
    for (int32_t j = 0; j < gr->n_run; j++) {
        int32_t *h = gr->hist_next + (size_t)j * M;
        memcpy(h, gr->hist + (size_t)gr->parent_next[j] * M, (size_t)t * sizeof(int32_t));
        h[t] = gr->tok_next[j];
    }
    int32_t *ti = gr->slot, *th = gr->hist;
    double  *ts = gr->sum;
    gr->slot = gr->slot_next, gr->slot_next = ti;
    gr->hist = gr->hist_next, gr->hist_next = th;
    gr->sum = gr->sum_next, gr->sum_next = ts;
}

static lora_status check_beam_params(const lora_decoder *d, int32_t G, const lora_beam_params *p,
                                     lora_error *err) {
    int32_t V = d->m->cfg.vocab_size;
    if (p->n_beams < 1)
        return lora_errorf(err, LORA_ERR_ARG, "beam search: n_beams=%d must be at least 1",
                           (int)p->n_beams);
    if (p->max_new < 0)
        return lora_errorf(err, LORA_ERR_ARG, "beam search: max_new=%d is negative",
                           (int)p->max_new);
    if (!isfinite(p->length_penalty))
        return lora_errorf(err, LORA_ERR_ARG, "beam search: length_penalty is not finite");
    if (p->no_repeat_ngram < 0)
        return lora_errorf(err, LORA_ERR_ARG, "beam search: no_repeat_ngram=%d is negative",
                           (int)p->no_repeat_ngram);
    if (p->early_stopping != LORA_BEAM_STOP_EXACT &&
        p->early_stopping != LORA_BEAM_STOP_HEURISTIC &&
        p->early_stopping != LORA_BEAM_STOP_FIRST_K)
        return lora_errorf(err, LORA_ERR_ARG, "beam search: unknown early_stopping %d",
                           (int)p->early_stopping);
    if (p->eos >= V)
        return lora_errorf(err, LORA_ERR_ARG,
                           "beam search: eos=%d is outside the vocabulary [0, %d)", (int)p->eos,
                           (int)V);
    if (p->n_stop_ids < 0 || (p->n_stop_ids > 0 && !p->stop_ids))
        return lora_errorf(err, LORA_ERR_ARG, "beam search: stop_ids is NULL or n_stop_ids < 0");
    for (int32_t i = 0; i < p->n_stop_ids; i++)
        if (p->stop_ids[i] < 0 || p->stop_ids[i] >= V)
            return lora_errorf(err, LORA_ERR_ARG,
                               "beam search: stop id %d is outside the vocabulary [0, %d)",
                               (int)p->stop_ids[i], (int)V);
    if (G > d->n_seq / p->n_beams)
        return lora_errorf(err, LORA_ERR_ARG,
                           "beam search: %d prompt(s) x %d beams need %lld sequences, the "
                           "decoder has %d (hint: lora_decoder_init with n_seq >= %lld)",
                           (int)G, (int)p->n_beams, (long long)G * p->n_beams, (int)d->n_seq,
                           (long long)G * p->n_beams);
    return LORA_OK;
}

lora_status lora_beam_search_batch(lora_decoder *d, int32_t n_prompts,
                                   const int32_t *const *prompts, const int32_t *n_prompt,
                                   const lora_beam_params *p, int32_t *const *out,
                                   lora_beam_result *res, lora_error *err) {
    if (!d || !p || !prompts || !n_prompt || !out || !res)
        return lora_errorf(err, LORA_ERR_ARG, "beam search: NULL argument");
    if (n_prompts < 1)
        return lora_errorf(err, LORA_ERR_ARG, "beam search: n_prompts=%d must be at least 1",
                           (int)n_prompts);
    lora_status st = check_beam_params(d, n_prompts, p, err);
    if (st != LORA_OK) return st;
    for (int32_t i = 0; i < n_prompts; i++) {
        if (n_prompt[i] < 1 || n_prompt[i] > d->max_len)
            return lora_errorf(err, LORA_ERR_ARG,
                               "beam search: prompt %d has %d tokens; it needs 1 to max_len=%d "
                               "(hint: a shorter prompt or a longer decoder)",
                               (int)i, (int)n_prompt[i], (int)d->max_len);
        if (!out[i]) return lora_errorf(err, LORA_ERR_ARG, "beam search: out[%d] is NULL", (int)i);
        if ((st = check_tokens(d, prompts[i], n_prompt[i], "beam search", err)) != LORA_OK)
            return st;
    }

    int32_t  K = p->n_beams, G = n_prompts, V = d->m->cfg.vocab_size;
    beam_run b;
    memset(&b, 0, sizeof b);
    b.p = p, b.K = K, b.V = V, b.G = G;
    if (beam_run_alloc(&b, G, K, p->max_new, V)) {
        beam_run_free(&b);
        return lora_errorf(err, LORA_ERR_NOMEM,
                           "beam search: cannot allocate scratch for %d prompt(s) x %d beams x "
                           "%d tokens",
                           (int)G, (int)K, (int)p->max_new);
    }
    for (int32_t i = -1; i < p->n_stop_ids; i++) {
        int32_t v = i < 0 ? p->eos : p->stop_ids[i];
        if (v < 0 || (b.mark[v] & MARK_END)) continue;
        b.mark[v] |= MARK_END;
        b.end_ids[b.n_end++] = v;
    }
    for (int32_t s = 0; s < G * K; s++) d->len[s] = 0;

    /* prefill each prompt once into its first sequence, copy it to the others */
    for (int32_t i = 0; i < G; i++) {
        beam_group *gr = &b.g[i];
        int32_t     room = d->max_len - n_prompt[i] + 1; /* the last token is never fed */
        gr->prompt       = prompts[i];
        gr->n_prompt     = n_prompt[i];
        gr->max_new      = p->max_new < room ? p->max_new : room;
        gr->first        = i * K;
        if (gr->max_new == 0) {
            gr->done = 1;
            continue;
        }
        for (int32_t r = 0; r < gr->n_prompt; r++) {
            d->row_seq[r] = gr->first;
            d->row_pos[r] = r;
        }
        run_rows(d, gr->prompt, gr->n_prompt, d->logits + (size_t)gr->first * V,
                 gr->n_prompt - 1, 1);
        d->len[gr->first] = gr->n_prompt;
        for (int32_t j = 1; j < K; j++) copy_positions(d, gr->first + j, gr->first, 0);
        gr->n_run   = 1;
        gr->slot[0] = gr->first;
        gr->sum[0]  = 0.0;
        gr->row     = gr->first;
    }

    for (int32_t t = 0;; t++) {
        for (int32_t i = 0; i < G; i++)
            if (!b.g[i].done) beam_select(&b, &b.g[i], d->logits, t);
        int32_t R = 0;
        for (int32_t i = 0; i < G; i++) {
            beam_group *gr = &b.g[i];
            if (gr->done) continue;
            beam_commit(d, gr, K, t);
            gr->row = R;
            for (int32_t j = 0; j < gr->n_run; j++, R++) {
                b.seqs[R] = gr->slot[j];
                b.toks[R] = gr->hist[(size_t)j * gr->max_new + t];
            }
            gr->n_steps++;
        }
        if (R == 0) break;
        step_rows(d, b.seqs, b.toks, R);
    }

    for (int32_t i = 0; i < G; i++) {
        beam_group       *gr = &b.g[i];
        lora_beam_result *r  = &res[i];
        memset(r, 0, sizeof *r);
        r->n_steps = gr->n_steps;
        r->score   = p->max_new == 0 ? 0.0 : -INFINITY;
        if (gr->n_hyp == 0) continue;
        int32_t best = 0;
        for (int32_t h = 1; h < gr->n_hyp; h++) {
            const beam_hyp *a = &gr->hyp[h], *c = &gr->hyp[best];
            if (a->score > c->score || (a->score == c->score && a->order < c->order)) best = h;
        }
        const beam_hyp *h = &gr->hyp[best];
        memcpy(out[i], h->toks, (size_t)h->n * sizeof(int32_t));
        r->n_tokens     = h->n;
        r->finished     = h->finished;
        r->length       = h->length;
        r->sum_logprobs = h->sum;
        r->score        = h->score;
    }
    for (int32_t s = 0; s < G * K; s++) d->len[s] = 0;
    beam_run_free(&b);
    return LORA_OK;
}

lora_status lora_beam_search(lora_decoder *d, const int32_t *prompt, int32_t n_prompt,
                             const lora_beam_params *p, int32_t *out, lora_beam_result *res,
                             lora_error *err) {
    return lora_beam_search_batch(d, 1, &prompt, &n_prompt, p, &out, res, err);
}

/* ---- sampling ---- */

/* One candidate token: its (temperature-free) logit for ranking, then its weight. */
typedef struct cand {
    double  w;  /* exp((z - z_max) / temperature) */
    float   z;  /* the logit, NaN replaced by -inf */
    int32_t id;
} cand;

struct lora_sampler {
    lora_sampler_params p;
    int32_t             V;
    cand               *c; /* (V) scratch */
};

lora_sampler_params lora_sampler_params_default(void) {
    lora_sampler_params p;
    memset(&p, 0, sizeof p);
    p.temperature = 1.0f;
    p.top_k       = 0;
    p.top_p       = 1.0f;
    p.greedy      = 0;
    p.seed        = 42;
    return p;
}

lora_status lora_sampler_init(const lora_sampler_params *p, int32_t n_vocab, lora_sampler **out,
                              lora_error *err) {
    if (!p || !out) return lora_errorf(err, LORA_ERR_ARG, "lora_sampler_init: NULL argument");
    *out = NULL;
    if (n_vocab < 1)
        return lora_errorf(err, LORA_ERR_ARG, "sampler: vocabulary size %d must be positive",
                           (int)n_vocab);
    if (isnan(p->temperature))
        return lora_errorf(err, LORA_ERR_ARG, "sampler: temperature is NaN");
    if (!(p->top_p > 0.0f))
        return lora_errorf(err, LORA_ERR_ARG, "sampler: top_p=%g must be in (0, 1]",
                           (double)p->top_p);
    lora_sampler *s = calloc(1, sizeof *s);
    cand         *c = malloc((size_t)n_vocab * sizeof *c);
    if (!s || !c) {
        free(s);
        free(c);
        return lora_errorf(err, LORA_ERR_NOMEM, "sampler: out of memory");
    }
    s->p  = *p;
    s->V  = n_vocab;
    s->c  = c;
    *out  = s;
    return LORA_OK;
}

void lora_sampler_free(lora_sampler *s) {
    if (!s) return;
    free(s->c);
    free(s);
}

int32_t lora_argmax(const float *logits, int32_t n) {
    int32_t best = 0;
    float   bv   = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        if (logits[i] > bv) { /* NaN compares false: never chosen */
            bv   = logits[i];
            best = i;
        }
    return best;
}

/* The ranking: larger logit first, lower id among equal logits (a strict total order). */
static inline int cand_before(const cand *a, const cand *b) {
    return a->z > b->z || (a->z == b->z && a->id < b->id);
}

static inline void cand_swap(cand *a, cand *b) {
    cand t = *a;
    *a     = *b;
    *b     = t;
}

/* Partitions c[lo..hi] (inclusive, lo < hi) around a median-of-three pivot by the ranking:
 * better entries first. Returns the pivot's final index. Deterministic. */
static int32_t partition(cand *c, int32_t lo, int32_t hi) {
    int32_t mid = lo + (hi - lo) / 2;
    if (cand_before(&c[mid], &c[lo])) cand_swap(&c[mid], &c[lo]);
    if (cand_before(&c[hi], &c[lo])) cand_swap(&c[hi], &c[lo]);
    if (cand_before(&c[hi], &c[mid])) cand_swap(&c[hi], &c[mid]);
    cand_swap(&c[mid], &c[hi]); /* the median to the end */
    int32_t store = lo;
    for (int32_t i = lo; i < hi; i++)
        if (cand_before(&c[i], &c[hi])) cand_swap(&c[i], &c[store++]);
    cand_swap(&c[store], &c[hi]);
    return store;
}

/* Reorders c[0..n) so that its first k (0 < k < n) entries are the k best, in some order
 * (quickselect: O(n) expected). */
static void select_top(cand *c, int32_t n, int32_t k) {
    int32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        int32_t s = partition(c, lo, hi);
        if (s == k - 1 || s == k) return;
        if (s > k) hi = s - 1;
        else lo = s + 1;
    }
}

/*
 * Reorders c[0..n) so that its first m entries are the nucleus: the fewest best-ranked entries
 * whose weights sum to at least target. Returns m; *mass receives their weight. Quickselect on
 * mass instead of rank, O(n) expected: no sort of the vocabulary.
 * Invariant: c[0..lo) is in the nucleus with weight acc < target; c[lo..hi) ranks above
 * c[hi..n); the nucleus ends in (lo, hi].
 */
static int32_t select_nucleus(cand *c, int32_t n, double target, double *mass) {
    int32_t lo = 0, hi = n;
    double  acc = 0.0;
    while (hi - lo > 1) {
        int32_t s  = partition(c, lo, hi - 1);
        double  up = 0.0; /* weight of c[lo..s), the entries ranked above the pivot */
        for (int32_t j = lo; j < s; j++) up += c[j].w;
        if (acc + up >= target) {
            hi = s;
            continue;
        }
        acc += up + c[s].w;
        lo = s + 1;
        if (acc >= target) {
            *mass = acc;
            return lo;
        }
    }
    if (hi > lo) acc += c[lo].w;
    *mass = acc;
    return hi;
}

/* Uniform double in [0, 1), 53 bits, from (seed, draw). */
static double draw_uniform(uint64_t seed, uint64_t draw) {
    uint64_t h = rng_mix64(rng_key(seed, 0x73616d706c65ull /* "sample" */, draw));
    return (double)(h >> 11) * (1.0 / 9007199254740992.0);
}

/*
 * Three passes over the vocabulary at most, and no sort: top-k and the nucleus are found by
 * quickselect, and the draw walks the kept tokens in the (deterministic) order selection left
 * them in. The weights are exp((z - z_max) / temperature) in double.
 */
int32_t lora_sampler_sample(lora_sampler *s, const float *logits, uint64_t draw) {
    const lora_sampler_params *p = &s->p;
    int32_t                    V = s->V;
    if (p->greedy || !(p->temperature > 0.0f) || p->top_k == 1) return lora_argmax(logits, V);
    int32_t am   = lora_argmax(logits, V);
    float   zmax = logits[am];
    if (!(zmax > -INFINITY) || zmax == INFINITY) return am; /* nothing finite to weigh */

    double inv_t = 1.0 / (double)p->temperature;
    cand  *c     = s->c;
    for (int32_t i = 0; i < V; i++) {
        c[i].z  = logits[i] == logits[i] ? logits[i] : -INFINITY;
        c[i].id = i;
    }
    int32_t n = V;
    if (p->top_k > 0 && p->top_k < V) {
        select_top(c, V, p->top_k);
        n = p->top_k;
    }
    double norm = 0.0;
    for (int32_t j = 0; j < n; j++) {
        c[j].w = exp(((double)c[j].z - zmax) * inv_t);
        norm += c[j].w;
    }
    int32_t m    = n;
    double  mass = norm;
    if (p->top_p < 1.0f) m = select_nucleus(c, n, (double)p->top_p * norm, &mass);

    double  target = draw_uniform(p->seed, draw) * mass, acc = 0.0;
    int32_t last   = am;
    for (int32_t j = 0; j < m; j++) {
        if (c[j].w <= 0.0) continue;
        acc += c[j].w;
        last = c[j].id;
        if (acc > target) return last;
    }
    return last; /* rounding left the target at the sum */
}
