/*
 * batcher.c — (B, T) batches from a tokenized dataset: one example per row padded with EOS, or
 * examples packed back to back; the example order of each epoch optionally a seeded
 * permutation; a position (seed, epoch, cursor) that restores the exact batch sequence.
 *
 * What it is not: a loader with threads or prefetching. lora_batcher_next allocates nothing:
 * the permutation array is allocated once and redrawn in place at each epoch.
 *
 * Row layout (both modes): inputs tokens[t] and targets[t] = the id that follows tokens[t], or
 * -1 where there is no loss: a prompt id, the first id of an example (nothing before it in the
 * example predicts it), padding. Padding inputs are EOS.
 *
 * Packing: the epoch is one stream s of S ids, the examples in epoch order (each ending in its
 * EOS unless truncated). A row starting at stream position p holds inputs s[p .. p+T) and
 * targets s[p+1 .. p+T]; the next row starts at p + T. An epoch has ceil((S - 1) / T) rows; the
 * last input with a successor is s[S-2], so the final row is padded after it. Attention is not
 * masked at example boundaries (GPT-2's own pre-training packing).
 */
#include "data/dataset_internal.h"

#include "core/error.h"
#include "core/rng.h"

#include <stdlib.h>
#include <string.h>

#define SHUFFLE_STREAM 0x73687566666c65ull /* "shuffle" */

struct lora_batcher {
    const lora_dataset *d; /* borrowed */
    int32_t             B, T;
    int32_t             pack, shuffle;
    int64_t             n;    /* examples per epoch */
    int64_t             s;    /* ids per epoch: the packing stream's length */
    int64_t            *perm; /* (n) this epoch's order; NULL without shuffle */
    lora_batcher_state  st;
    int64_t             pk, po; /* packing: stream position st.cursor is id po of order[pk] */
};

/* ---- epoch order ---- */

static inline int64_t order_at(const lora_batcher *b, int64_t k) {
    return b->perm ? b->perm[k] : k;
}

/* Fisher-Yates from the counter-based stream of (seed, epoch): any epoch is drawn directly. */
static void draw_perm(lora_batcher *b) {
    if (!b->perm) return;
    uint64_t key = rng_key(b->st.seed, SHUFFLE_STREAM, (uint64_t)b->st.epoch);
    for (int64_t i = 0; i < b->n; i++)
        b->perm[i] = i;
    for (int64_t i = b->n - 1; i > 0; i--) {
        int64_t j  = (int64_t)ds_draw_below(key, (uint64_t)i, (uint64_t)i + 1);
        int64_t t  = b->perm[i];
        b->perm[i] = b->perm[j];
        b->perm[j] = t;
    }
}

/* Where the packing stream's id number cursor lies: example order[pk], offset po. */
static void locate(lora_batcher *b) {
    int64_t k = 0, acc = 0;
    while (k < b->n && acc + ds_len(b->d, order_at(b, k)) <= b->st.cursor) {
        acc += ds_len(b->d, order_at(b, k));
        k++;
    }
    b->pk = k;
    b->po = b->st.cursor - acc;
}

/* The cursor past which an epoch has nothing left to give. */
static int64_t epoch_end(const lora_batcher *b) {
    return b->pack ? b->s - 1 : b->n;
}

static void next_epoch(lora_batcher *b) {
    b->st.epoch++;
    b->st.cursor = 0;
    b->pk = b->po = 0;
    draw_perm(b);
}

/* ---- lifetime ---- */

lora_status lora_batcher_new(const lora_dataset *d, int32_t B, int32_t T, int32_t pack,
                             int32_t shuffle, uint64_t seed, lora_batcher **out, lora_error *err) {
    if (out) *out = NULL;
    if (!d || !out) return lora_errorf(err, LORA_ERR_ARG, "batcher: dataset and out are required");
    if (B < 1 || T < 1 || (int64_t)B * T > INT32_MAX)
        return lora_errorf(err, LORA_ERR_ARG, "batcher: batch %d x %d is not a valid shape", (int)B,
                           (int)T);
    if (d->n_examples < 1)
        return lora_errorf(err, LORA_ERR_ARG, "batcher: the dataset has no examples");
    lora_batcher *b = calloc(1, sizeof *b);
    if (!b) return lora_errorf(err, LORA_ERR_NOMEM, "batcher: out of memory");
    b->d       = d;
    b->B       = B;
    b->T       = T;
    b->pack    = pack != 0;
    b->shuffle = shuffle != 0;
    b->n       = d->n_examples;
    b->s       = d->n_ids;
    b->st.seed = seed;
    if (b->shuffle) {
        b->perm = malloc((size_t)b->n * sizeof *b->perm);
        if (!b->perm) {
            free(b);
            return lora_errorf(err, LORA_ERR_NOMEM, "batcher: out of memory for %lld examples",
                               (long long)d->n_examples);
        }
    }
    draw_perm(b);
    *out = b;
    return LORA_OK;
}

void lora_batcher_free(lora_batcher *b) {
    if (!b) return;
    free(b->perm);
    free(b);
}

/* ---- rows ---- */

static void pad_row(int32_t *tok, int32_t *tgt, int32_t T, int32_t eos) {
    for (int32_t t = 0; t < T; t++) {
        tok[t] = eos;
        tgt[t] = -1;
    }
}

/* One example in a row; cut at T + 1 ids if the batcher's T is below the dataset's. */
static int64_t example_row(const lora_batcher *b, int64_t e, int32_t *tok, int32_t *tgt) {
    const lora_dataset *d   = b->d;
    const int32_t      *ids = d->ids + d->off[e];
    int64_t             len = ds_len(d, e), first = ds_first_target(d, e), n_loss = 0;
    if (len > (int64_t)b->T + 1) len = (int64_t)b->T + 1;
    for (int32_t t = 0; t < b->T; t++) {
        if (t < len - 1) {
            tok[t] = ids[t];
            tgt[t] = t + 1 >= first ? ids[t + 1] : -1;
            n_loss += tgt[t] >= 0;
        } else {
            tok[t] = d->eos;
            tgt[t] = -1;
        }
    }
    return n_loss;
}

/* One packed row from stream position st.cursor; advances the position by T. */
static int64_t packed_row(lora_batcher *b, int32_t *tok, int32_t *tgt) {
    const lora_dataset *d = b->d;
    int64_t             k = b->pk, o = b->po, nk = k, no = o, n_loss = 0, p = b->st.cursor;
    for (int32_t t = 0; t <= b->T; t++) {
        int64_t pos  = p + t;
        int32_t id   = d->eos;
        int     loss = 0;
        if (pos < b->s) {
            int64_t e = order_at(b, k);
            id        = d->ids[d->off[e] + o];
            loss      = o >= ds_first_target(d, e);
            if (++o == ds_len(d, e)) {
                k++;
                o = 0;
            }
        }
        if (t < b->T) tok[t] = pos < b->s - 1 ? id : d->eos;
        if (t > 0) {
            tgt[t - 1] = pos < b->s && loss ? id : -1;
            n_loss += tgt[t - 1] >= 0;
        }
        if (t == b->T - 1) {
            nk = k;
            no = o;
        }
    }
    b->pk = nk;
    b->po = no;
    b->st.cursor += b->T;
    return n_loss;
}

int64_t lora_batcher_next(lora_batcher *b, int32_t *tokens, int32_t *targets, int64_t *n_loss) {
    int64_t epoch = b->st.epoch, total = 0, end = epoch_end(b);
    for (int32_t r = 0; r < b->B; r++) {
        int32_t *tok = tokens + (size_t)r * b->T, *tgt = targets + (size_t)r * b->T;
        if (b->st.cursor >= end)
            pad_row(tok, tgt, b->T, b->d->eos);
        else if (b->pack)
            total += packed_row(b, tok, tgt);
        else
            total += example_row(b, order_at(b, b->st.cursor++), tok, tgt);
    }
    if (b->st.cursor >= end) next_epoch(b);
    if (n_loss) *n_loss = total;
    return epoch;
}

int64_t lora_batcher_batches_per_epoch(const lora_batcher *b) {
    int64_t rows = b->pack ? (b->s - 1 + b->T - 1) / b->T : b->n;
    return (rows + b->B - 1) / b->B;
}

/* ---- state ---- */

void lora_batcher_get_state(const lora_batcher *b, lora_batcher_state *s) {
    *s = b->st;
}

lora_status lora_batcher_set_state(lora_batcher *b, const lora_batcher_state *s, lora_error *err) {
    int64_t end = epoch_end(b);
    if (s->epoch < 0 || s->epoch == INT64_MAX || s->cursor < 0 ||
        s->cursor > (b->pack ? b->s : b->n))
        return lora_errorf(err, LORA_ERR_ARG,
                           "batcher state: epoch %lld, cursor %lld is outside this dataset "
                           "(%lld %s per epoch; hint: was it saved for other data?)",
                           (long long)s->epoch, (long long)s->cursor,
                           (long long)(b->pack ? b->s : b->n), b->pack ? "tokens" : "examples");
    b->st = *s;
    draw_perm(b);
    if (b->st.cursor >= end) {
        next_epoch(b);
        return LORA_OK;
    }
    if (b->pack) locate(b);
    return LORA_OK;
}
