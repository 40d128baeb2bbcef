/*
 * tokenizer.c — GPT-2 byte-level BPE: encoding (special-token split, regex pre-tokenization,
 * BPE by merge rank with a bounded word cache) and decoding. See tokenizer.h for the contract.
 * Loading lives in tok_load.c, the shared pieces in tok_common.c.
 *
 * BPE on one pre-token, as the reference encoder does it: find the adjacent pair with the lowest
 * merge rank, merge every occurrence of it left to right, repeat. Here the pairs sit in a
 * min-heap keyed (rank, position) over a linked list of symbols, and all occurrences of one rank
 * are merged before the pairs they create are queued — O(n log n) per pre-token with the same
 * result, so that a megabyte of digits or spaces does not take quadratic time.
 */
#include "tokenizer/tokenizer.h"

#include "core/error.h"
#include "tokenizer/tok_internal.h"

#include <stdlib.h>
#include <string.h>

#define CACHE_MAX_KEY 64            /* pre-tokens longer than this are not cached */
#define CACHE_MAX_ENTRIES (1 << 16) /* the cache is emptied when it holds this many */

/* ---- lifetime ---- */

lora_status lora_tokenizer_load(const char *dir, lora_tokenizer **out, lora_error *err) {
    *out                = NULL;
    lora_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", dir);
    tok->eos       = -1;
    lora_status st = tok_load_dir(tok, dir, err);
    if (st == LORA_OK) st = tok_pretok_init(&tok->pretok, err);
    if (st != LORA_OK) {
        lora_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return LORA_OK;
}

void lora_tokenizer_free(lora_tokenizer *tok) {
    if (!tok) return;
    tok_strmap_free(&tok->vocab);
    free(tok->form_ent);
    free(tok->dec);
    free(tok->dec_off);
    free(tok->dec_len);
    tok_pairmap_free(&tok->ranks);
    free(tok->merge_left);
    free(tok->merge_right);
    free(tok->merge_result);
    for (int32_t i = 0; i < tok->n_specials; i++)
        free(tok->specials[i].text);
    free(tok->specials);
    tok_pretok_free(&tok->pretok);
    tok_strmap_free(&tok->cache);
    free(tok->cache_ids);
    free(tok->syms);
    free(tok->heap);
    free(tok->merged);
    free(tok->out);
    free(tok);
}

/* ---- output buffer ---- */

static int out_reserve(lora_tokenizer *tok, size_t extra) {
    if (tok->out_len + extra <= tok->out_cap) return 0;
    size_t cap = tok->out_cap ? tok->out_cap : 256;
    while (cap < tok->out_len + extra) {
        if (cap > SIZE_MAX / 2 / sizeof(int32_t)) return -1;
        cap *= 2;
    }
    int32_t *nb = realloc(tok->out, cap * sizeof *nb);
    if (!nb) return -1;
    tok->out     = nb;
    tok->out_cap = cap;
    return 0;
}

/* ---- BPE on one pre-token ---- */

static void heap_push(tok_heapent *h, size_t *n, tok_heapent e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t      p  = (i - 1) / 2;
        tok_heapent pe = h[p];
        if (pe.rank < e.rank || (pe.rank == e.rank && pe.pos <= e.pos)) break;
        h[i] = pe;
        i    = p;
    }
    h[i] = e;
}

static tok_heapent heap_pop(tok_heapent *h, size_t *n) {
    tok_heapent top  = h[0];
    tok_heapent last = h[--(*n)];
    size_t      i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m &&
            (h[c + 1].rank < h[c].rank || (h[c + 1].rank == h[c].rank && h[c + 1].pos < h[c].pos)))
            c++;
        if (last.rank < h[c].rank || (last.rank == h[c].rank && last.pos <= h[c].pos)) break;
        h[i] = h[c];
        i    = c;
    }
    if (m > 0) h[i] = last;
    return top;
}

static int word_reserve(lora_tokenizer *tok, size_t n) {
    if (n <= tok->word_cap) return 0;
    size_t cap = tok->word_cap ? tok->word_cap : 64;
    while (cap < n)
        cap *= 2;
    if (cap > INT32_MAX / 3) return -1;
    tok_sym *syms = realloc(tok->syms, cap * sizeof *syms);
    if (syms) tok->syms = syms;
    tok_heapent *heap = realloc(tok->heap, 3 * cap * sizeof *heap);
    if (heap) tok->heap = heap;
    int32_t *merged = realloc(tok->merged, cap * sizeof *merged);
    if (merged) tok->merged = merged;
    if (!syms || !heap || !merged) return -1;
    tok->word_cap = cap;
    return 0;
}

static void push_pair(lora_tokenizer *tok, size_t *nh, int32_t left_pos) {
    int32_t right_pos = tok->syms[left_pos].next;
    if (right_pos < 0) return;
    int32_t rank =
        tok_pairmap_get(&tok->ranks, tok_pair_key(tok->syms[left_pos].id, tok->syms[right_pos].id));
    if (rank >= 0) heap_push(tok->heap, nh, (tok_heapent){rank, left_pos});
}

/* Appends the ids of word[0..n) to tok->out. */
static lora_status bpe_word(lora_tokenizer *tok, const unsigned char *word, size_t n,
                            lora_error *err) {
    if (word_reserve(tok, n) != 0 || out_reserve(tok, n) != 0) {
        return lora_errorf(err, LORA_ERR_NOMEM, "tokenizer: out of memory for a %zu-byte word", n);
    }
    tok_sym *sy = tok->syms;
    for (size_t i = 0; i < n; i++) {
        int32_t id = tok->byte_id[word[i]];
        if (id < 0) {
            return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                               "tokenizer: byte 0x%02X has no token in the vocabulary", word[i]);
        }
        sy[i] = (tok_sym){id, (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1};
    }
    size_t nh = 0;
    for (size_t i = 0; i + 1 < n; i++)
        push_pair(tok, &nh, (int32_t)i);

    while (nh > 0) {
        int32_t rank  = tok->heap[0].rank;
        int32_t left  = tok->merge_left[rank];
        int32_t right = tok->merge_right[rank];
        size_t  nm    = 0;
        /* every occurrence of this pair, left to right; stale entries are skipped */
        while (nh > 0 && tok->heap[0].rank == rank) {
            int32_t i = heap_pop(tok->heap, &nh).pos;
            int32_t j = sy[i].next;
            if (sy[i].id != left || j < 0 || sy[j].id != right) continue;
            sy[i].id   = tok->merge_result[rank];
            sy[i].next = sy[j].next;
            if (sy[j].next >= 0) sy[sy[j].next].prev = i;
            sy[j].id          = -1;
            tok->merged[nm++] = i;
        }
        for (size_t k = 0; k < nm; k++) {
            int32_t i = tok->merged[k];
            if (sy[i].prev >= 0) push_pair(tok, &nh, sy[i].prev);
            push_pair(tok, &nh, i);
        }
    }
    for (int32_t i = 0; i >= 0; i = sy[i].next)
        tok->out[tok->out_len++] = sy[i].id;
    return LORA_OK;
}

/* ---- encoding ---- */

static lora_status encode_piece(void *ud, const char *piece, size_t n, lora_error *err) {
    lora_tokenizer      *tok = ud;
    const unsigned char *w   = (const unsigned char *)piece;
    if (n == 1 && tok->byte_id[w[0]] >= 0) {
        if (out_reserve(tok, 1) != 0) {
            return lora_errorf(err, LORA_ERR_NOMEM, "tokenizer: out of memory");
        }
        tok->out[tok->out_len++] = tok->byte_id[w[0]];
        return LORA_OK;
    }
    if (n > CACHE_MAX_KEY) return bpe_word(tok, w, n, err);

    const tok_strent *hit = tok_strmap_get(&tok->cache, piece, n);
    if (hit) {
        size_t off = (size_t)(hit->val >> 8), cnt = (size_t)(hit->val & 0xFF);
        if (out_reserve(tok, cnt) != 0) {
            return lora_errorf(err, LORA_ERR_NOMEM, "tokenizer: out of memory");
        }
        memcpy(tok->out + tok->out_len, tok->cache_ids + off, cnt * sizeof(int32_t));
        tok->out_len += cnt;
        return LORA_OK;
    }

    size_t      start = tok->out_len;
    lora_status st    = bpe_word(tok, w, n, err);
    if (st != LORA_OK) return st;
    size_t cnt = tok->out_len - start; /* <= n <= CACHE_MAX_KEY < 256 */

    /* Remember it; a full cache is emptied (bounded memory). Out of memory here only costs the
     * cache entry. */
    if (tok->cache.n >= CACHE_MAX_ENTRIES) {
        tok_strmap_clear(&tok->cache);
        tok->cache_ids_len = 0;
    }
    if (tok->cache_ids_len + cnt > tok->cache_ids_cap) {
        size_t   cap = tok->cache_ids_cap ? tok->cache_ids_cap * 2 : 4096;
        int32_t *nb  = realloc(tok->cache_ids, cap * sizeof *nb);
        if (!nb) return LORA_OK;
        tok->cache_ids     = nb;
        tok->cache_ids_cap = cap;
    }
    int         added;
    tok_strent *e = tok_strmap_upsert(&tok->cache, piece, n, &added);
    if (!e) return LORA_OK;
    memcpy(tok->cache_ids + tok->cache_ids_len, tok->out + start, cnt * sizeof(int32_t));
    e->val = ((int64_t)tok->cache_ids_len << 8) | (int64_t)cnt;
    tok->cache_ids_len += cnt;
    return LORA_OK;
}

static lora_status encode_plain(lora_tokenizer *tok, const char *text, size_t len,
                                lora_error *err) {
    return tok_pretok_run(&tok->pretok, text, len, encode_piece, tok, err);
}

/* Splits at special tokens: the earliest occurrence, the longest of those starting there. */
static lora_status encode_special(lora_tokenizer *tok, const char *text, size_t len,
                                  lora_error *err) {
    for (int32_t k = 0; k < tok->n_specials; k++) {
        tok_special *sp  = &tok->specials[k];
        const char  *hit = memmem(text, len, sp->text, sp->len);
        sp->next         = hit ? (size_t)(hit - text) : SIZE_MAX;
    }
    size_t pos = 0;
    while (pos < len) {
        size_t  best = len, best_len = 0;
        int32_t best_id = -1;
        for (int32_t k = 0; k < tok->n_specials; k++) {
            tok_special *sp = &tok->specials[k];
            if (sp->next < pos) { /* passed over: look again from here */
                const char *hit = memmem(text + pos, len - pos, sp->text, sp->len);
                sp->next        = hit ? (size_t)(hit - text) : SIZE_MAX;
            }
            if (sp->next < best ||
                (sp->next == best && sp->next != SIZE_MAX && sp->len > best_len)) {
                best     = sp->next;
                best_len = sp->len;
                best_id  = sp->id;
            }
        }
        lora_status st = encode_plain(tok, text + pos, best - pos, err);
        if (st != LORA_OK) return st;
        if (best_id < 0) break;
        if (out_reserve(tok, 1) != 0) {
            return lora_errorf(err, LORA_ERR_NOMEM, "tokenizer: out of memory");
        }
        tok->out[tok->out_len++] = best_id;
        pos                      = best + best_len;
    }
    return LORA_OK;
}

lora_status lora_tokenizer_encode(lora_tokenizer *tok, const char *text, size_t len, uint32_t flags,
                                  int32_t **ids, size_t *n_ids, lora_error *err) {
    *ids   = NULL;
    *n_ids = 0;
    if (len == 0) return LORA_OK;
    tok->out     = NULL;
    tok->out_len = tok->out_cap = 0;
    lora_status st              = (flags & LORA_ENCODE_SPECIAL) && tok->n_specials > 0
                                      ? encode_special(tok, text, len, err)
                                      : encode_plain(tok, text, len, err);
    if (st != LORA_OK) {
        free(tok->out);
        tok->out = NULL;
        return st;
    }
    *ids   = tok->out;
    *n_ids = tok->out_len;
    if (tok->out_len > 0 && tok->out_len < tok->out_cap) {
        int32_t *shrunk = realloc(tok->out, tok->out_len * sizeof *shrunk);
        if (shrunk) *ids = shrunk;
    }
    tok->out = NULL;
    return LORA_OK;
}

/* ---- decoding and lookups ---- */

lora_status lora_tokenizer_decode(const lora_tokenizer *tok, const int32_t *ids, size_t n_ids,
                                  char **text, size_t *len, lora_error *err) {
    *text        = NULL;
    *len         = 0;
    size_t total = 0;
    for (size_t i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= tok->n_vocab || tok->form_ent[ids[i]] < 0) {
            return lora_errorf(err, LORA_ERR_ARG,
                               "tokenizer: id %ld at position %zu is not a "
                               "token (vocabulary size %d)",
                               (long)ids[i], i, (int)tok->n_vocab);
        }
        if (tok->dec_len[ids[i]] > SIZE_MAX - 1 - total) {
            return lora_errorf(err, LORA_ERR_NOMEM, "tokenizer: decoded text too large");
        }
        total += tok->dec_len[ids[i]];
    }
    char *buf = malloc(total + 1);
    if (!buf)
        return lora_errorf(err, LORA_ERR_NOMEM, "tokenizer: out of memory (%zu bytes)", total);
    size_t k = 0;
    for (size_t i = 0; i < n_ids; i++) {
        memcpy(buf + k, tok->dec + tok->dec_off[ids[i]], tok->dec_len[ids[i]]);
        k += tok->dec_len[ids[i]];
    }
    buf[k] = '\0';
    *text  = buf;
    *len   = k;
    return LORA_OK;
}

int32_t lora_tokenizer_n_vocab(const lora_tokenizer *tok) {
    return tok->n_vocab;
}

int32_t lora_tokenizer_eos(const lora_tokenizer *tok) {
    return tok->eos;
}

int32_t lora_tokenizer_token_to_id(const lora_tokenizer *tok, const char *token) {
    const tok_strent *e = tok_strmap_get(&tok->vocab, token, strlen(token));
    return e ? (int32_t)e->val : -1;
}

const char *lora_tokenizer_id_to_token(const lora_tokenizer *tok, int32_t id) {
    if (id < 0 || id >= tok->n_vocab || tok->form_ent[id] < 0) return NULL;
    return tok_strmap_key(&tok->vocab, &tok->vocab.ents[tok->form_ent[id]]);
}

int32_t lora_tokenizer_n_merges(const lora_tokenizer *tok) {
    return tok->n_merges;
}

lora_status lora_tokenizer_merge(const lora_tokenizer *tok, int32_t i, int32_t *left,
                                 int32_t *right) {
    if (i < 0 || i >= tok->n_merges) return LORA_ERR_ARG;
    *left  = tok->merge_left[i];
    *right = tok->merge_right[i];
    return LORA_OK;
}

const char *lora_tokenizer_id_to_bytes(const lora_tokenizer *tok, int32_t id, size_t *len) {
    if (id < 0 || id >= tok->n_vocab || tok->form_ent[id] < 0) return NULL;
    *len = tok->dec_len[id];
    return tok->dec + tok->dec_off[id];
}
