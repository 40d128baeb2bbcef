/*
 * decode.c — incremental decoding with a KV cache, and drawing tokens from logits.
 *
 * What it is: the GPT-2 forward pass of gpt2.c run over only the new tokens of a sequence,
 * with every layer's keys and values kept per sequence so that attention for a token at
 * position p reads the cache [0, p] instead of recomputing it. A forward has R rows: the
 * new tokens of one sequence (lora_decoder_feed), or one token of every sequence
 * (lora_decoder_step_all). Rows go through the same linear sites as training, so adapters
 * attached to the model are applied (with training off: no dropout). Only the rows whose
 * logits are wanted go through ln_f and the LM head. The sampler turns logits into a token.
 * What it is not: a paged or shared-prefix cache, speculative decoding, or a second model
 * implementation — it uses the model's weights, sites and kernels.
 *
 * L = layers, S = n_seq, P = max_len, C = n_embd, NH = heads, hs = C / NH, F = n_inner,
 * V = vocab, R = rows of one forward, R_max = max(P, S).
 */
#include "model/gpt2.h"

#include "core/error.h"
#include "core/kernels.h"
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
    int32_t  n_adapters_seen; /* adapters on the model when they were last reserved */
};

/* ---- adapters' per-pass storage ---- */

static int32_t count_adapters(const lora_model *m) {
    int32_t n = 0;
    for (int32_t l = 0; l < m->cfg.n_layer; l++) {
        const gpt2_layer *ly = &m->layers[l];
        n += ly->c_attn.n_adapters + ly->attn_proj.n_adapters + ly->c_fc.n_adapters +
             ly->mlp_proj.n_adapters;
    }
    return n;
}

/*
 * Makes every attached adapter's per-pass storage cover R_max rows (their reserve only ever
 * grows it, so the model's own plan is not disturbed) and sizes the shared scratch. Runs at
 * init and again only if the set of adapters changed since (a method attached afterwards).
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
    d->n_adapters_seen = count_adapters(m);
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
        d->k_cache = malloc(cache_bytes);
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
    free(d->peft_scratch);
    free(d->len);
    free(d->act);
    free(d->k_cache);
    free(d);
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
 * operations of attention_forward in the same order. sc holds n floats of scratch.
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
        linear_forward(&ly->c_attn, d->qkv, d->ln, R, &d->ctx);
        for (int r = 0; r < R; r++) {
            size_t at = (((size_t)l * d->n_seq + d->row_seq[r]) * P + d->row_pos[r]) * C;
            const float *row = d->qkv + (size_t)r * 3 * C;
            memcpy(d->k_cache + at, row + C, (size_t)C * sizeof(float));
            memcpy(d->v_cache + at, row + 2 * C, (size_t)C * sizeof(float));
        }
        attend(d, l, R);
        linear_forward(&ly->attn_proj, d->proj, d->atty, R, &d->ctx);
        residual_forward(d->x, d->proj, d->x, RC);
        layernorm_forward(d->ln, d->mean, d->rstd, d->x, ly->ln_2_w, ly->ln_2_b, R, C, eps);
        linear_forward(&ly->c_fc, d->fch, d->ln, R, &d->ctx);
        if (c->activation == LORA_ACT_GELU_ERF)
            gelu_erf_forward(d->fch_gelu, d->fch, RF);
        else
            gelu_forward(d->fch_gelu, d->fch, RF);
        linear_forward(&ly->mlp_proj, d->proj, d->fch_gelu, R, &d->ctx);
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
    gemm(0, 1, n, V, C, 1.0f, d->ln, C, m->lm_head, C, 0.0f, out, V);
}

/* The forward over R rows, then logits for rows [first, first + n_out) into out. */
static void run_rows(lora_decoder *d, const int32_t *tokens, int R, float *out, int first,
                     int n_out) {
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
    if (count_adapters(d->m) != d->n_adapters_seen) return reserve_adapters(d, err);
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

lora_status lora_decoder_copy_seq(lora_decoder *d, int32_t dst, int32_t src, lora_error *err) {
    if (!d) return lora_errorf(err, LORA_ERR_ARG, "decoder copy: NULL decoder");
    if (dst < 0 || dst >= d->n_seq || src < 0 || src >= d->n_seq)
        return lora_errorf(err, LORA_ERR_ARG,
                           "decoder copy: sequences %d <- %d must both be in [0, %d)", (int)dst,
                           (int)src, (int)d->n_seq);
    if (dst == src) return LORA_OK;
    const lora_config *c = &d->m->cfg;
    size_t C = (size_t)c->n_embd, P = (size_t)d->max_len, V = (size_t)c->vocab_size;
    size_t n = (size_t)d->len[src] * C * sizeof(float);
    for (int32_t l = 0; l < c->n_layer; l++) {
        size_t layer = (size_t)l * d->n_seq * P * C;
        memcpy(d->k_cache + layer + dst * P * C, d->k_cache + layer + src * P * C, n);
        memcpy(d->v_cache + layer + dst * P * C, d->v_cache + layer + src * P * C, n);
    }
    memcpy(d->logits + dst * V, d->logits + src * V, V * sizeof(float));
    d->len[dst] = d->len[src];
    return LORA_OK;
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
