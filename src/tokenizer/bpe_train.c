/*
 * bpe_train.c — learns a GPT-2-style byte-level BPE from text (Sennrich et al. 2016, on bytes as
 * in GPT-2): pre-tokenize with GPT-2's regex, count distinct words, start from the 256 byte
 * tokens, repeatedly merge the most frequent adjacent pair. Writes vocab.json, merges.txt and a
 * Hugging Face tokenizer.json that tokenizer.c loads. See tokenizer.h for the contract.
 *
 * Cost: pair counts are kept incrementally. Each pair knows the words it occurs in, so a merge
 * touches only those words; a max-heap with lazy deletion picks the next pair. Not here:
 * parallel counting, or Unicode-aware alphabets (the alphabet is always the 256 bytes).
 */
#include "tokenizer/tokenizer.h"

#include "core/error.h"
#include "io/fileutil.h"
#include "tokenizer/tok_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_VOCAB (1 << 24)
#define READ_BLOCK ((size_t)1 << 22) /* feed_file reads 4 MiB at a time */

typedef struct pair_rec {
    int32_t  left, right;
    int64_t  count; /* occurrences, weighted by word frequency */
    int32_t *words; /* words it (may) occur in; stale entries are skipped */
    int32_t  n_words, cap_words;
    int32_t  touched; /* last merge step that queued it */
} pair_rec;

typedef struct heap_ent {
    int64_t count;
    int32_t left, right;
    int32_t pair;
} heap_ent;

struct lora_bpe_trainer {
    tok_bytemap bm;
    tok_pretok  pretok;
    tok_strmap  words; /* pre-token bytes -> occurrences */
    int64_t     n_bytes, n_words;
    int         trained;

    /* result: symbols 0..255 are the bytes in GPT-2's base order, then merge results */
    int32_t   n_syms, cap_syms;
    char     *sym_bytes;
    size_t    sym_bytes_len, sym_bytes_cap;
    size_t   *sym_off; /* (n_syms) */
    uint32_t *sym_len; /* (n_syms) */
    int32_t   n_merges, cap_merges;
    int32_t  *merge_left, *merge_right; /* (n_merges) symbol ids */
};

/* ---- lifetime and counting ---- */

lora_status lora_bpe_trainer_init(lora_bpe_trainer **out, lora_error *err) {
    *out                = NULL;
    lora_bpe_trainer *t = calloc(1, sizeof *t);
    if (!t) return lora_errorf(err, LORA_ERR_NOMEM, "bpe: out of memory");
    tok_bytemap_init(&t->bm);
    lora_status st = tok_pretok_init(&t->pretok, err);
    if (st != LORA_OK) {
        free(t);
        return st;
    }
    *out = t;
    return LORA_OK;
}

void lora_bpe_trainer_free(lora_bpe_trainer *t) {
    if (!t) return;
    tok_pretok_free(&t->pretok);
    tok_strmap_free(&t->words);
    free(t->sym_bytes);
    free(t->sym_off);
    free(t->sym_len);
    free(t->merge_left);
    free(t->merge_right);
    free(t);
}

static lora_status count_piece(void *ud, const char *piece, size_t n, lora_error *err) {
    lora_bpe_trainer *t = ud;
    int               added;
    tok_strent       *e = tok_strmap_upsert(&t->words, piece, n, &added);
    if (!e) return lora_errorf(err, LORA_ERR_NOMEM, "bpe: out of memory counting words");
    e->val++;
    t->n_words++;
    return LORA_OK;
}

lora_status lora_bpe_trainer_feed(lora_bpe_trainer *t, const char *text, size_t len,
                                  lora_error *err) {
    if (t->trained) return lora_errorf(err, LORA_ERR_STATE, "bpe: already trained");
    t->n_bytes += (int64_t)len;
    size_t pos = 0;
    while (pos < len) {
        const char *hit = memmem(text + pos, len - pos, TOK_EOT, TOK_EOT_LEN);
        size_t      end = hit ? (size_t)(hit - text) : len;
        lora_status st  = tok_pretok_run(&t->pretok, text + pos, end - pos, count_piece, t, err);
        if (st != LORA_OK) return st;
        pos = hit ? end + TOK_EOT_LEN : len;
    }
    return LORA_OK;
}

/* The last offset p in buf[0..n) where the text may be cut without changing its pre-tokens:
 * buf[p-1] is '\n' between two printable ASCII characters. A pre-token holding the first one
 * cannot take in the newline, the newline is a pre-token of its own (a non-space follows), and
 * the regex has no look-behind, so the pieces on each side split exactly as in the whole text.
 * 0 when there is no such place. */
static size_t safe_cut(const char *buf, size_t n) {
    for (size_t p = n - 1; p >= 2 && p < n; p--) {
        if (buf[p - 1] == '\n' && buf[p] > 0x20 && buf[p] < 0x7F && buf[p - 2] > 0x20 &&
            buf[p - 2] < 0x7F)
            return p;
    }
    return 0;
}

lora_status lora_bpe_trainer_feed_file(lora_bpe_trainer *t, const char *path, lora_error *err) {
    if (t->trained) return lora_errorf(err, LORA_ERR_STATE, "bpe: already trained");
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        int e = errno;
        return lora_errorf(err, e == ENOENT ? LORA_ERR_MISSING : LORA_ERR_IO, "%s: cannot open: %s",
                           path, strerror(e));
    }
    lora_status st  = LORA_OK;
    size_t      cap = READ_BLOCK, have = 0;
    char       *buf = malloc(cap);
    if (!buf) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (;;) {
        if (have == cap) { /* no place to cut yet: read on */
            char *nb = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
            if (!nb) {
                st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
                goto done;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + have, 1, cap - have, fp);
        have += got;
        if (got == 0) {
            if (ferror(fp)) {
                st = lora_errorf(err, LORA_ERR_IO, "%s: read failed", path);
                goto done;
            }
            st = lora_bpe_trainer_feed(t, buf, have, err);
            goto done;
        }
        size_t cut = have >= READ_BLOCK / 2 ? safe_cut(buf, have) : 0;
        if (cut > 0) {
            if ((st = lora_bpe_trainer_feed(t, buf, cut, err)) != LORA_OK) goto done;
            memmove(buf, buf + cut, have - cut);
            have -= cut;
        }
    }
done:
    free(buf);
    fclose(fp);
    return st;
}

void lora_bpe_trainer_stats(const lora_bpe_trainer *t, int64_t *n_bytes, int64_t *n_words,
                            int64_t *n_unique) {
    if (n_bytes) *n_bytes = t->n_bytes;
    if (n_words) *n_words = t->n_words;
    if (n_unique) *n_unique = t->words.n;
}

/* ---- training state ---- */

typedef struct train {
    lora_bpe_trainer *t;
    /* words as symbol sequences */
    int32_t  n_words;
    int32_t *syms;      /* all words' symbols, each word at word_off */
    size_t  *word_off;  /* (n_words) */
    int32_t *word_len;  /* (n_words), shrinks as merges apply */
    int64_t *word_cnt;  /* (n_words) */
    int32_t *word_mark; /* (n_words) last step that merged inside the word */
    /* pairs */
    tok_pairmap pair_ix; /* (left, right) -> index into pairs */
    pair_rec   *pairs;
    int32_t     n_pairs, cap_pairs;
    tok_pairmap merged; /* pairs already merged -> 1 */
    /* heap */
    heap_ent *heap;
    size_t    n_heap, cap_heap;
    /* pairs whose count grew in this step */
    int32_t   *touched;
    size_t     n_touched, cap_touched;
    tok_strmap sym_ix; /* symbol bytes -> symbol id */
} train;

static int heap_better(const heap_ent *x, const heap_ent *y) {
    if (x->count != y->count) return x->count > y->count;
    if (x->left != y->left) return x->left < y->left;
    return x->right < y->right;
}

static int heap_push(train *tr, heap_ent e) {
    if (tr->n_heap == tr->cap_heap) {
        size_t    cap = tr->cap_heap ? tr->cap_heap * 2 : 1024;
        heap_ent *nh  = realloc(tr->heap, cap * sizeof *nh);
        if (!nh) return -1;
        tr->heap     = nh;
        tr->cap_heap = cap;
    }
    size_t i = tr->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_better(&e, &tr->heap[p])) break;
        tr->heap[i] = tr->heap[p];
        i           = p;
    }
    tr->heap[i] = e;
    return 0;
}

static heap_ent heap_pop(train *tr) {
    heap_ent top  = tr->heap[0];
    heap_ent last = tr->heap[--tr->n_heap];
    size_t   i = 0, n = tr->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_better(&tr->heap[c + 1], &tr->heap[c])) c++;
        if (!heap_better(&tr->heap[c], &last)) break;
        tr->heap[i] = tr->heap[c];
        i           = c;
    }
    if (n > 0) tr->heap[i] = last;
    return top;
}

/* Index of pair (a, b), created with count 0 when new; -1 on out of memory. */
static int32_t pair_get(train *tr, int32_t a, int32_t b) {
    uint64_t key = tok_pair_key(a, b);
    int32_t  ix  = tok_pairmap_get(&tr->pair_ix, key);
    if (ix >= 0) return ix;
    if (tr->n_pairs == tr->cap_pairs) {
        if (tr->cap_pairs > INT32_MAX / 2) return -1;
        int32_t   cap = tr->cap_pairs ? tr->cap_pairs * 2 : 4096;
        pair_rec *np  = realloc(tr->pairs, (size_t)cap * sizeof *np);
        if (!np) return -1;
        tr->pairs     = np;
        tr->cap_pairs = cap;
    }
    ix            = tr->n_pairs;
    tr->pairs[ix] = (pair_rec){.left = a, .right = b, .touched = -1};
    if (tok_pairmap_put(&tr->pair_ix, key, ix) != 0) return -1;
    tr->n_pairs++;
    return ix;
}

static int pair_add_word(pair_rec *p, int32_t w) {
    if (p->n_words > 0 && p->words[p->n_words - 1] == w) return 0;
    if (p->n_words == p->cap_words) {
        if (p->cap_words > INT32_MAX / 2) return -1;
        int32_t  cap = p->cap_words ? p->cap_words * 2 : 4;
        int32_t *nw  = realloc(p->words, (size_t)cap * sizeof *nw);
        if (!nw) return -1;
        p->words     = nw;
        p->cap_words = cap;
    }
    p->words[p->n_words++] = w;
    return 0;
}

static int touch(train *tr, int32_t ix, int32_t step) {
    if (tr->pairs[ix].touched == step) return 0;
    tr->pairs[ix].touched = step;
    if (tr->n_touched == tr->cap_touched) {
        size_t   cap = tr->cap_touched ? tr->cap_touched * 2 : 256;
        int32_t *nt  = realloc(tr->touched, cap * sizeof *nt);
        if (!nt) return -1;
        tr->touched     = nt;
        tr->cap_touched = cap;
    }
    tr->touched[tr->n_touched++] = ix;
    return 0;
}

/* Adds symbol bytes; returns its id (an existing one when the bytes are known), -1 on OOM. */
static int32_t sym_add(train *tr, const char *bytes, size_t n, int *is_new) {
    lora_bpe_trainer *t = tr->t;
    int               added;
    tok_strent       *e = tok_strmap_upsert(&tr->sym_ix, bytes, n, &added);
    if (!e) return -1;
    *is_new = added;
    if (!added) return (int32_t)e->val;
    int32_t id = t->n_syms;
    if (id == t->cap_syms) {
        size_t  cap = t->cap_syms ? (size_t)t->cap_syms * 2 : 1024;
        size_t *no  = realloc(t->sym_off, cap * sizeof *no);
        if (no) t->sym_off = no;
        uint32_t *nl = realloc(t->sym_len, cap * sizeof *nl);
        if (nl) t->sym_len = nl;
        if (!no || !nl || cap > INT32_MAX) return -1;
        t->cap_syms = (int32_t)cap;
    }
    if (t->sym_bytes_len + n > t->sym_bytes_cap) {
        size_t cap = t->sym_bytes_cap ? t->sym_bytes_cap : 4096;
        while (cap < t->sym_bytes_len + n)
            cap *= 2;
        char *nb = realloc(t->sym_bytes, cap);
        if (!nb) return -1;
        t->sym_bytes     = nb;
        t->sym_bytes_cap = cap;
    }
    memcpy(t->sym_bytes + t->sym_bytes_len, bytes, n);
    t->sym_off[id] = t->sym_bytes_len;
    t->sym_len[id] = (uint32_t)n;
    t->sym_bytes_len += n;
    t->n_syms++;
    e->val = id;
    return id;
}

static void train_free(train *tr) {
    free(tr->syms);
    free(tr->word_off);
    free(tr->word_len);
    free(tr->word_cnt);
    free(tr->word_mark);
    for (int32_t i = 0; i < tr->n_pairs; i++)
        free(tr->pairs[i].words);
    free(tr->pairs);
    tok_pairmap_free(&tr->pair_ix);
    tok_pairmap_free(&tr->merged);
    free(tr->heap);
    free(tr->touched);
    tok_strmap_free(&tr->sym_ix);
}

/* Words -> symbol sequences, the 256 byte symbols, and the initial pair counts. */
static int train_setup(train *tr) {
    lora_bpe_trainer *t = tr->t;
    tr->n_words         = (int32_t)t->words.n;
    size_t n_syms       = t->words.keys_len; /* bytes of all words, plus one NUL each */
    size_t nw           = tr->n_words ? (size_t)tr->n_words : 1;
    tr->syms            = malloc((n_syms ? n_syms : 1) * sizeof *tr->syms);
    tr->word_off        = malloc(nw * sizeof *tr->word_off);
    tr->word_len        = malloc(nw * sizeof *tr->word_len);
    tr->word_cnt        = malloc(nw * sizeof *tr->word_cnt);
    tr->word_mark       = malloc(nw * sizeof *tr->word_mark);
    if (!tr->syms || !tr->word_off || !tr->word_len || !tr->word_cnt || !tr->word_mark) return -1;

    int32_t byte_sym[256];
    for (int i = 0; i < 256; i++) {
        char    b = (char)t->bm.base_order[i];
        int     is_new;
        int32_t id = sym_add(tr, &b, 1, &is_new);
        if (id != i) return -1;
        byte_sym[t->bm.base_order[i]] = i;
    }

    size_t pos = 0;
    for (int32_t w = 0; w < tr->n_words; w++) {
        const tok_strent    *e = &t->words.ents[w];
        const unsigned char *k = (const unsigned char *)tok_strmap_key(&t->words, e);
        tr->word_off[w]        = pos;
        tr->word_len[w]        = (int32_t)e->len;
        tr->word_cnt[w]        = e->val;
        tr->word_mark[w]       = -1;
        for (uint32_t i = 0; i < e->len; i++)
            tr->syms[pos + i] = byte_sym[k[i]];
        for (uint32_t i = 0; i + 1 < e->len; i++) {
            int32_t ix = pair_get(tr, tr->syms[pos + i], tr->syms[pos + i + 1]);
            if (ix < 0) return -1;
            tr->pairs[ix].count += e->val;
            if (pair_add_word(&tr->pairs[ix], w) != 0) return -1;
        }
        pos += e->len;
    }
    for (int32_t i = 0; i < tr->n_pairs; i++) {
        const pair_rec *p = &tr->pairs[i];
        if (heap_push(tr, (heap_ent){p->count, p->left, p->right, i}) != 0) return -1;
    }
    return 0;
}

/* Replaces every (a, b) in word w by c, left to right, updating pair counts and indexes. */
static int merge_in_word(train *tr, int32_t w, int32_t a, int32_t b, int32_t c, int32_t step) {
    int32_t *s     = tr->syms + tr->word_off[w];
    int32_t  n     = tr->word_len[w];
    int64_t  f     = tr->word_cnt[w];
    int      found = 0;
    for (int32_t i = 0; i + 1 < n && !found; i++)
        found = s[i] == a && s[i + 1] == b;
    if (!found) return 0;

    for (int32_t i = 0; i + 1 < n; i++) {
        tr->pairs[tok_pairmap_get(&tr->pair_ix, tok_pair_key(s[i], s[i + 1]))].count -= f;
    }
    int32_t j = 0;
    for (int32_t i = 0; i < n;) {
        if (i + 1 < n && s[i] == a && s[i + 1] == b) {
            s[j++] = c;
            i += 2;
        } else {
            s[j++] = s[i++];
        }
    }
    tr->word_len[w] = j;
    for (int32_t i = 0; i + 1 < j; i++) {
        int32_t ix = pair_get(tr, s[i], s[i + 1]);
        if (ix < 0) return -1;
        tr->pairs[ix].count += f;
        if (s[i] == c || s[i + 1] == c) {
            if (pair_add_word(&tr->pairs[ix], w) != 0 || touch(tr, ix, step) != 0) return -1;
        }
    }
    return 0;
}

static int record_merge(lora_bpe_trainer *t, int32_t a, int32_t b) {
    if (t->n_merges == t->cap_merges) {
        size_t   cap = t->cap_merges ? (size_t)t->cap_merges * 2 : 1024;
        int32_t *nl  = realloc(t->merge_left, cap * sizeof *nl);
        if (nl) t->merge_left = nl;
        int32_t *nr = realloc(t->merge_right, cap * sizeof *nr);
        if (nr) t->merge_right = nr;
        if (!nl || !nr || cap > INT32_MAX) return -1;
        t->cap_merges = (int32_t)cap;
    }
    t->merge_left[t->n_merges]  = a;
    t->merge_right[t->n_merges] = b;
    t->n_merges++;
    return 0;
}

lora_status lora_bpe_trainer_train(lora_bpe_trainer *t, const lora_bpe_params *p, lora_error *err) {
    if (t->trained) return lora_errorf(err, LORA_ERR_STATE, "bpe: already trained");
    if (p->vocab_size < 257 || p->vocab_size > MAX_VOCAB || p->min_freq < 1) {
        return lora_errorf(err, LORA_ERR_ARG,
                           "bpe: vocab_size must be in [257, %d] and min_freq >= 1 (got %d, %lld)",
                           MAX_VOCAB, (int)p->vocab_size, (long long)p->min_freq);
    }
    t->trained       = 1;
    train       tr   = {.t = t};
    lora_status st   = LORA_OK;
    int32_t     want = p->vocab_size - 1 - 256; /* new tokens, "<|endoftext|>" aside */
    int32_t     made = 0, step = 0;
    char       *cat     = NULL;
    size_t      cat_cap = 0;
    if (train_setup(&tr) != 0) goto oom;

    while (made < want && tr.n_heap > 0) {
        heap_ent  top = heap_pop(&tr);
        pair_rec *pr  = &tr.pairs[top.pair];
        if (pr->count != top.count) { /* stale: requeue with the count it has now */
            if (pr->count > 0 &&
                heap_push(&tr, (heap_ent){pr->count, pr->left, pr->right, top.pair}) != 0)
                goto oom;
            continue;
        }
        if (top.count < p->min_freq) break;

        int32_t a = top.left, b = top.right;
        size_t  na = t->sym_len[a], nb = t->sym_len[b];
        if (na + nb > cat_cap) {
            cat_cap  = (na + nb) * 2;
            char *nc = realloc(cat, cat_cap);
            if (!nc) goto oom;
            cat = nc;
        }
        memcpy(cat, t->sym_bytes + t->sym_off[a], na);
        memcpy(cat + na, t->sym_bytes + t->sym_off[b], nb);
        int     is_new;
        int32_t c = sym_add(&tr, cat, na + nb, &is_new);
        if (c < 0) goto oom;
        /* A pair merged before can come back once a merge re-creates an existing token; its
         * occurrences are merged again (the encoder would), but it is listed once. */
        if (tok_pairmap_get(&tr.merged, tok_pair_key(a, b)) < 0) {
            if (record_merge(t, a, b) != 0 || tok_pairmap_put(&tr.merged, tok_pair_key(a, b), 1))
                goto oom;
            made += is_new;
        }

        int32_t *list = pr->words, n_list = pr->n_words;
        pr->words   = NULL;
        pr->n_words = pr->cap_words = 0;
        tr.n_touched                = 0;
        int fail                    = 0;
        for (int32_t k = 0; k < n_list && !fail; k++) {
            int32_t w = list[k];
            if (tr.word_mark[w] == step) continue;
            tr.word_mark[w] = step;
            fail            = merge_in_word(&tr, w, a, b, c, step) != 0;
        }
        free(list);
        if (fail) goto oom;
        for (size_t k = 0; k < tr.n_touched; k++) {
            const pair_rec *q = &tr.pairs[tr.touched[k]];
            if (q->count > 0 &&
                heap_push(&tr, (heap_ent){q->count, q->left, q->right, tr.touched[k]}) != 0)
                goto oom;
        }
        step++;
        if (p->progress && (made % 256 == 0 || made == want) && is_new) {
            p->progress(p->user, made, want, top.count);
        }
    }
    goto done;
oom:
    st = lora_errorf(err, LORA_ERR_NOMEM, "bpe: out of memory while training");
done:
    free(cat);
    train_free(&tr);
    return st;
}

int32_t lora_bpe_trainer_n_merges(const lora_bpe_trainer *t) {
    return t->n_merges;
}

int32_t lora_bpe_trainer_n_vocab(const lora_bpe_trainer *t) {
    return t->trained ? t->n_syms + 1 : 0;
}

lora_status lora_bpe_trainer_merge(const lora_bpe_trainer *t, int32_t i, const char **left,
                                   size_t *left_len, const char **right, size_t *right_len) {
    if (i < 0 || i >= t->n_merges) return LORA_ERR_ARG;
    int32_t a = t->merge_left[i], b = t->merge_right[i];
    *left      = t->sym_bytes + t->sym_off[a];
    *left_len  = t->sym_len[a];
    *right     = t->sym_bytes + t->sym_off[b];
    *right_len = t->sym_len[b];
    return LORA_OK;
}

/* ---- output ---- */

/* Writes symbol id's byte-level form as a JSON string body (no quotes) or a bare merges.txt
 * token. Forms hold only the printable code points of GPT-2's map: '"' and '\\' are the only
 * characters JSON needs escaped. */
static void put_form(FILE *fp, const lora_bpe_trainer *t, int32_t id, int json) {
    const unsigned char *b = (const unsigned char *)t->sym_bytes + t->sym_off[id];
    for (uint32_t i = 0; i < t->sym_len[id]; i++) {
        char   u[4];
        size_t k = tok_utf8_put(t->bm.byte_cp[b[i]], u);
        if (json && (u[0] == '"' || u[0] == '\\')) fputc('\\', fp);
        fwrite(u, 1, k, fp);
    }
}

static void put_vocab_body(FILE *fp, const lora_bpe_trainer *t, const char *indent) {
    for (int32_t id = 0; id < t->n_syms; id++) {
        fprintf(fp, "%s\"", indent);
        put_form(fp, t, id, 1);
        fprintf(fp, "\": %d,\n", (int)id);
    }
    fprintf(fp, "%s\"" TOK_EOT "\": %d\n", indent, (int)t->n_syms);
}

static lora_status write_vocab_json(const lora_bpe_trainer *t, const char *path, lora_error *err) {
    lora_atomic_file af;
    lora_status      st = lora_atomic_open(&af, path, err);
    if (st != LORA_OK) return st;
    fputs("{\n", af.fp);
    put_vocab_body(af.fp, t, "  ");
    fputs("}\n", af.fp);
    return lora_atomic_commit(&af, err);
}

static lora_status write_merges_txt(const lora_bpe_trainer *t, const char *path, lora_error *err) {
    lora_atomic_file af;
    lora_status      st = lora_atomic_open(&af, path, err);
    if (st != LORA_OK) return st;
    fputs("#version: 0.2\n", af.fp);
    for (int32_t i = 0; i < t->n_merges; i++) {
        put_form(af.fp, t, t->merge_left[i], 0);
        fputc(' ', af.fp);
        put_form(af.fp, t, t->merge_right[i], 0);
        fputc('\n', af.fp);
    }
    return lora_atomic_commit(&af, err);
}

static lora_status write_tokenizer_json(const lora_bpe_trainer *t, const char *path,
                                        lora_error *err) {
    lora_atomic_file af;
    lora_status      st = lora_atomic_open(&af, path, err);
    if (st != LORA_OK) return st;
    FILE *fp = af.fp;
    fprintf(fp,
            "{\n"
            "  \"version\": \"1.0\",\n"
            "  \"truncation\": null,\n"
            "  \"padding\": null,\n"
            "  \"added_tokens\": [\n"
            "    {\"id\": %d, \"content\": \"" TOK_EOT "\", \"single_word\": false, "
            "\"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}\n"
            "  ],\n"
            "  \"normalizer\": null,\n"
            "  \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, "
            "\"trim_offsets\": true, \"use_regex\": true},\n"
            "  \"post_processor\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, "
            "\"trim_offsets\": false, \"use_regex\": true},\n"
            "  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, "
            "\"trim_offsets\": true, \"use_regex\": true},\n"
            "  \"model\": {\n"
            "    \"type\": \"BPE\",\n"
            "    \"dropout\": null,\n"
            "    \"unk_token\": null,\n"
            "    \"continuing_subword_prefix\": \"\",\n"
            "    \"end_of_word_suffix\": \"\",\n"
            "    \"fuse_unk\": false,\n"
            "    \"byte_fallback\": false,\n"
            "    \"vocab\": {\n",
            (int)t->n_syms);
    put_vocab_body(fp, t, "      ");
    fputs("    },\n    \"merges\": [\n", fp);
    for (int32_t i = 0; i < t->n_merges; i++) {
        fputs("      \"", fp);
        put_form(fp, t, t->merge_left[i], 1);
        fputc(' ', fp);
        put_form(fp, t, t->merge_right[i], 1);
        fputs(i + 1 < t->n_merges ? "\",\n" : "\"\n", fp);
    }
    fputs("    ]\n  }\n}\n", fp);
    return lora_atomic_commit(&af, err);
}

lora_status lora_bpe_trainer_save(const lora_bpe_trainer *t, const char *dir, lora_error *err) {
    if (!t->trained) return lora_errorf(err, LORA_ERR_STATE, "bpe: nothing trained to save");
    char        path[PATH_MAX];
    lora_status st = lora_mkdirs(dir, err);
    if (st != LORA_OK) return st;
    if ((st = lora_path_join(path, sizeof path, dir, "vocab.json", err)) != LORA_OK ||
        (st = write_vocab_json(t, path, err)) != LORA_OK)
        return st;
    if ((st = lora_path_join(path, sizeof path, dir, "merges.txt", err)) != LORA_OK ||
        (st = write_merges_txt(t, path, err)) != LORA_OK)
        return st;
    if ((st = lora_path_join(path, sizeof path, dir, "tokenizer.json", err)) != LORA_OK ||
        (st = write_tokenizer_json(t, path, err)) != LORA_OK)
        return st;
    return LORA_OK;
}
