/*
 * dataset.c — JSONL to token ids: line validation, tokenization (through the cache of
 * dataset_cache.c when asked), truncation to seq_len + 1 ids, and the seeded train/validation
 * split. Batching lives in batcher.c.
 *
 * What it is not: a streaming reader. The file is read whole, every example is tokenized once,
 * and all ids live in one array for the dataset's lifetime (4 bytes per token).
 *
 * Text is encoded without recognising special tokens: a literal "<|endoftext|>" inside a JSON
 * string is ordinary text, so data can never inject an EOS; the EOS that ends each example is
 * appended here.
 */
#include "data/dataset_internal.h"

#include "core/error.h"
#include "core/rng.h"
#include "io/fileutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SPLIT_STREAM 0x73706c6974ull /* "split" */

/* ---- lifetime ---- */

static void raw_clear(lora_dataset *d) {
    free(d->ids);
    free(d->off);
    free(d->prompt_len);
    memset(d, 0, sizeof *d);
}

void lora_dataset_free(lora_dataset *d) {
    if (!d) return;
    raw_clear(d);
    free(d);
}

int64_t lora_dataset_n_examples(const lora_dataset *d) {
    return d ? d->n_examples : 0;
}

int64_t lora_dataset_n_tokens(const lora_dataset *d) {
    return d ? d->n_ids : 0;
}

lora_status lora_dataset_example(const lora_dataset *d, int64_t i, const int32_t **ids,
                                 int64_t *n_ids, int32_t *prompt_len, lora_error *err) {
    if (!d || i < 0 || i >= d->n_examples)
        return lora_errorf(err, LORA_ERR_ARG, "dataset: example %lld out of range [0, %lld)",
                           (long long)i, (long long)(d ? d->n_examples : 0));
    if (ids) *ids = d->ids + d->off[i];
    if (n_ids) *n_ids = ds_len(d, i);
    if (prompt_len) *prompt_len = d->prompt_len[i];
    return LORA_OK;
}

/* ---- one line ---- */

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return 0;
    return 1;
}

/* 1 when the raw JSON holds the escape \u0000: cJSON would cut the string there. */
static int has_nul_escape(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\') continue;
        size_t j = i;
        while (j < n && s[j] == '\\')
            j++;
        if ((j - i) % 2 == 1 && n - j >= 5 && s[j] == 'u' && !memcmp(s + j + 1, "0000", 4))
            return 1;
        i = j - 1;
    }
    return 0;
}

/* What one line holds: text, or prompt + completion (NUL-terminated, borrowed from json). */
typedef struct line_example {
    cJSON      *json;
    const char *text;
    const char *prompt;
    const char *completion;
} line_example;

/* Parses a line; NULL on success, else the problem in a few words. */
static const char *parse_line(const char *s, size_t n, line_example *ex) {
    memset(ex, 0, sizeof *ex);
    if (memchr(s, '\0', n)) return "NUL byte in the line";
    if (has_nul_escape(s, n)) return "\\u0000 (NUL) inside a JSON string is not supported";
    const char *end = NULL;
    ex->json        = cJSON_ParseWithLengthOpts(s, n, &end, 0);
    if (!ex->json) return "not valid JSON";
    if (!end || end < s || end > s + n || !is_blank(end, (size_t)(s + n - end)))
        return "text after the JSON value";
    if (!cJSON_IsObject(ex->json)) return "not a JSON object";
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(ex->json, "text");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(ex->json, "prompt");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(ex->json, "completion");
    if (t && (p || c)) return "both \"text\" and \"prompt\"/\"completion\"";
    if (t) {
        if (!cJSON_IsString(t) || !t->valuestring) return "\"text\" is not a string";
        if (t->valuestring[0] == '\0') return "empty \"text\"";
        ex->text = t->valuestring;
        return NULL;
    }
    if (!p && !c) return "neither \"text\" nor \"prompt\" and \"completion\"";
    if (!c) return "\"prompt\" without \"completion\"";
    if (!p) return "\"completion\" without \"prompt\"";
    if (!cJSON_IsString(p) || !p->valuestring) return "\"prompt\" is not a string";
    if (!cJSON_IsString(c) || !c->valuestring) return "\"completion\" is not a string";
    if (p->valuestring[0] == '\0' && c->valuestring[0] == '\0')
        return "empty example (\"prompt\" and \"completion\" both empty)";
    ex->prompt     = p->valuestring;
    ex->completion = c->valuestring;
    return NULL;
}

/* ---- building the untruncated dataset ---- */

typedef struct builder {
    lora_dataset *d;
    size_t        ids_cap;
} builder;

static int ids_reserve(builder *b, size_t extra) {
    size_t need = (size_t)b->d->n_ids + extra;
    if (need < extra || need > (size_t)INT64_MAX / 2) return -1;
    if (need <= b->ids_cap) return 0;
    size_t cap = b->ids_cap ? b->ids_cap : 4096;
    while (cap < need)
        cap *= 2;
    size_t bytes;
    if (!lora_mul_ok(cap, sizeof(int32_t), &bytes)) return -1;
    int32_t *nb = realloc(b->d->ids, bytes);
    if (!nb) return -1;
    b->d->ids  = nb;
    b->ids_cap = cap;
    return 0;
}

/* Encodes one piece, reporting a failure as "<path>:<line>: <tokenizer's message>". */
static lora_status encode_piece(lora_tokenizer *tok, const char *s, int32_t **ids, size_t *n,
                                const char *path, long long line, lora_error *err) {
    lora_error  e;
    lora_status st = lora_tokenizer_encode(tok, s, strlen(s), 0, ids, n, &e);
    if (st != LORA_OK) return lora_errorf(err, st, "%s:%lld: %s", path, line, e.msg);
    return LORA_OK;
}

/* Appends the example of one valid line. */
static lora_status add_example(builder *b, lora_tokenizer *tok, const line_example *ex,
                               const char *path, long long line, lora_error *err) {
    lora_dataset *d = b->d;
    int32_t      *a = NULL, *c = NULL;
    size_t        na = 0, nc = 0;
    lora_status st = encode_piece(tok, ex->text ? ex->text : ex->prompt, &a, &na, path, line, err);
    if (st == LORA_OK && !ex->text)
        st = encode_piece(tok, ex->completion, &c, &nc, path, line, err);
    if (st != LORA_OK) goto done;
    size_t total = na + nc + 1;
    if (na + nc == 0) {
        st = lora_errorf(err, LORA_ERR_FORMAT, "%s:%lld: the example encodes to no tokens", path,
                         line);
        goto done;
    }
    if (na > INT32_MAX || ids_reserve(b, total) != 0) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s:%lld: out of memory for the token ids", path,
                         line);
        goto done;
    }
    int32_t *dst = d->ids + d->n_ids;
    if (na) memcpy(dst, a, na * sizeof *dst);
    if (nc) memcpy(dst + na, c, nc * sizeof *dst);
    dst[na + nc]                 = d->eos;
    d->off[d->n_examples]        = d->n_ids;
    d->prompt_len[d->n_examples] = ex->text ? 0 : (int32_t)na;
    d->n_examples++;
    d->n_ids += (int64_t)total;
done:
    free(a);
    free(c);
    return st;
}

/* Parses and tokenizes every line of buf into raw (untruncated). */
static lora_status parse_file(const char *path, const char *buf, size_t len, lora_tokenizer *tok,
                              int skip_bad, lora_dataset *raw, lora_error *err) {
    size_t n_phys = 1;
    for (const char *q = buf; (q = memchr(q, '\n', (size_t)(buf + len - q))) != NULL; q++)
        n_phys++;
    size_t off_bytes, plen_bytes;
    if (!lora_mul_ok(n_phys + 1, sizeof(int64_t), &off_bytes) ||
        !lora_mul_ok(n_phys, sizeof(int32_t), &plen_bytes))
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: too many lines", path);
    raw->off        = malloc(off_bytes);
    raw->prompt_len = malloc(plen_bytes);
    builder b       = {raw, 0};
    if (!raw->off || !raw->prompt_len || ids_reserve(&b, len / 3 + 16) != 0)
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory for %zu lines", path, n_phys);

    long long   line = 0;
    size_t      pos  = 0;
    lora_status st   = LORA_OK;
    while (pos < len) {
        const char *s  = buf + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t      n  = nl ? (size_t)(nl - s) : len - pos;
        pos += n + 1;
        line++;
        if (is_blank(s, n)) continue;
        raw->n_lines++;
        line_example ex;
        const char  *problem = parse_line(s, n, &ex);
        if (problem) {
            cJSON_Delete(ex.json);
            if (skip_bad) {
                raw->n_bad++;
                continue;
            }
            return lora_errorf(err, LORA_ERR_FORMAT, "%s:%lld: %s", path, line, problem);
        }
        st = add_example(&b, tok, &ex, path, line, err);
        cJSON_Delete(ex.json);
        if (st != LORA_OK) return st;
    }
    raw->off[raw->n_examples] = raw->n_ids;
    return LORA_OK;
}

/* ---- truncation ---- */

/*
 * Cuts every example of d (untruncated) to seq_len + 1 ids in place and drops those left
 * without a loss position (a prompt of seq_len + 1 ids or more); both count as truncated.
 */
static void truncate_in_place(lora_dataset *d, int32_t seq_len, lora_dataset_stats *s) {
    int64_t keep_max = (int64_t)seq_len + 1, w = 0, k = 0;
    for (int64_t i = 0; i < d->n_examples; i++) {
        int64_t start = d->off[i], len = d->off[i + 1] - start, keep = len;
        int32_t pl = d->prompt_len[i];
        if (keep > keep_max) {
            keep = keep_max;
            s->n_truncated++;
        }
        if (pl >= keep) continue; /* no target left: dropped (already counted) */
        if (w != start) memmove(d->ids + w, d->ids + start, (size_t)keep * sizeof(int32_t));
        d->off[k]        = w;
        d->prompt_len[k] = pl;
        w += keep;
        k++;
        s->n_loss_tokens += keep - (pl > 1 ? pl : 1);
    }
    d->off[k]     = w;
    d->n_examples = k;
    d->n_ids      = w;
    d->seq_len    = seq_len;
    s->n_examples = k;
    s->n_tokens   = w;
    /* Give back what truncation freed; keeping the larger block is harmless if this fails. */
    int32_t *ids = realloc(d->ids, (size_t)(w > 0 ? w : 1) * sizeof(int32_t));
    if (ids) d->ids = ids;
}

/* ---- loading ---- */

lora_status lora_dataset_load(const char *path, lora_tokenizer *tok, const lora_dataset_params *p,
                              lora_dataset **out, lora_dataset_stats *stats, lora_error *err) {
    lora_dataset_stats local;
    if (!stats) stats = &local;
    memset(stats, 0, sizeof *stats);
    if (out) *out = NULL;
    if (!path || !tok || !p || !out)
        return lora_errorf(err, LORA_ERR_ARG,
                           "dataset: path, tokenizer, params and out are "
                           "required");
    if (p->seq_len < 1)
        return lora_errorf(err, LORA_ERR_ARG, "%s: seq_len must be >= 1, got %d", path,
                           (int)p->seq_len);
    int32_t eos = lora_tokenizer_eos(tok), n_vocab = lora_tokenizer_n_vocab(tok);
    if (eos < 0)
        return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                           "%s: the tokenizer has no <|endoftext|> token to end examples with",
                           path);

    char         *buf = NULL;
    size_t        len = 0;
    lora_dataset *d   = NULL;
    lora_status   st  = lora_read_file(path, &buf, &len, err);
    if (st != LORA_OK) return st;
    d = calloc(1, sizeof *d);
    if (!d) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    d->eos     = eos;
    d->n_vocab = n_vocab;

    ds_cache_key key;
    char         cpath[4096];
    memset(&key, 0, sizeof key);
    if (p->cache_dir) {
        key.file_hash = ds_hash_bytes(0x6a736f6e6cull, buf, len);
        key.file_len  = (uint64_t)len;
        key.n_vocab   = n_vocab;
        key.eos       = eos;
        if ((st = ds_tokenizer_fingerprint(tok, &key.tok_hash, err)) != LORA_OK) goto fail;
        if ((st = ds_cache_path(cpath, sizeof cpath, p->cache_dir, path, &key, err)) != LORA_OK)
            goto fail;
        if (ds_cache_read(cpath, &key, d)) {
            if (d->n_bad == 0 || p->skip_bad)
                stats->from_cache = 1;
            else
                raw_clear(d); /* built with skip_bad: parse again to report the bad line */
        }
        d->eos     = eos; /* the reader zeroes *d on every path */
        d->n_vocab = n_vocab;
    }
    if (!stats->from_cache) {
        if ((st = parse_file(path, buf, len, tok, p->skip_bad != 0, d, err)) != LORA_OK) goto fail;
        if (d->n_examples > 0 && p->cache_dir &&
            (st = ds_cache_write(cpath, p->cache_dir, &key, d, err)) != LORA_OK)
            goto fail;
    }
    free(buf);
    buf = NULL;

    stats->n_lines = d->n_lines;
    stats->n_bad   = d->n_bad;
    int64_t before = d->n_examples;
    truncate_in_place(d, p->seq_len, stats);
    if (d->n_examples == 0) {
        if (before > 0)
            st = lora_errorf(err, LORA_ERR_FORMAT,
                             "%s: no examples (all %lld have a prompt of seq_len + 1 = %d "
                             "tokens or more)",
                             path, (long long)before, (int)p->seq_len + 1);
        else if (d->n_bad > 0)
            st = lora_errorf(err, LORA_ERR_FORMAT, "%s: no examples (all %lld lines malformed)",
                             path, (long long)d->n_bad);
        else
            st = lora_errorf(err, LORA_ERR_FORMAT, "%s: no examples", path);
        goto fail;
    }
    *out = d;
    return LORA_OK;

fail:
    lora_dataset_free(d);
    free(buf);
    return st;
}

/* ---- splitting ---- */

lora_status lora_dataset_split(lora_dataset *d, float frac, uint64_t seed, lora_dataset **val,
                               lora_error *err) {
    if (val) *val = NULL;
    if (!d || !val) return lora_errorf(err, LORA_ERR_ARG, "split: dataset and val are required");
    if (!(frac > 0.0f && frac < 1.0f))
        return lora_errorf(err, LORA_ERR_ARG, "split: fraction %g is not in (0, 1)", (double)frac);
    int64_t n = d->n_examples;
    if (n < 2)
        return lora_errorf(err, LORA_ERR_ARG,
                           "split: %lld example(s) cannot give both sides at least one",
                           (long long)n);
    int64_t n_val = (int64_t)llround((double)frac * (double)n);
    if (n_val < 1) n_val = 1;
    if (n_val > n - 1) n_val = n - 1;

    /* Everything is allocated before d changes, so a failure leaves it intact. */
    lora_status    st    = LORA_OK;
    int64_t       *order = malloc((size_t)n * sizeof *order);
    unsigned char *pick  = calloc((size_t)n, 1);
    lora_dataset  *v     = calloc(1, sizeof *v);
    if (!order || !pick || !v) goto nomem;

    /* The first n_val positions of a seeded Fisher-Yates shuffle go to validation. */
    uint64_t key = rng_key(seed, SPLIT_STREAM, 0);
    for (int64_t i = 0; i < n; i++)
        order[i] = i;
    for (int64_t i = 0; i < n_val; i++) {
        int64_t j      = i + (int64_t)ds_draw_below(key, (uint64_t)i, (uint64_t)(n - i));
        int64_t t      = order[i];
        order[i]       = order[j];
        order[j]       = t;
        pick[order[i]] = 1;
    }
    int64_t v_ids = 0;
    for (int64_t i = 0; i < n; i++)
        if (pick[i]) v_ids += ds_len(d, i);

    *v            = *d;
    v->n_lines    = 0;
    v->n_bad      = 0;
    v->ids        = malloc((size_t)v_ids * sizeof(int32_t));
    v->off        = malloc((size_t)(n_val + 1) * sizeof(int64_t));
    v->prompt_len = malloc((size_t)n_val * sizeof(int32_t));
    if (!v->ids || !v->off || !v->prompt_len) goto nomem;

    /* Both sides keep the file order. The training side is compacted in place. */
    int64_t kv = 0, kt = 0, wv = 0, wt = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t start = d->off[i], len = d->off[i + 1] - start;
        int32_t pl = d->prompt_len[i];
        if (pick[i]) {
            memcpy(v->ids + wv, d->ids + start, (size_t)len * sizeof(int32_t));
            v->off[kv]        = wv;
            v->prompt_len[kv] = pl;
            wv += len;
            kv++;
        } else {
            if (wt != start) memmove(d->ids + wt, d->ids + start, (size_t)len * sizeof(int32_t));
            d->off[kt]        = wt;
            d->prompt_len[kt] = pl;
            wt += len;
            kt++;
        }
    }
    v->off[kv]    = wv;
    v->n_examples = kv;
    v->n_ids      = wv;
    d->off[kt]    = wt;
    d->n_examples = kt;
    d->n_ids      = wt;
    free(order);
    free(pick);
    *val = v;
    return LORA_OK;

nomem:
    st = lora_errorf(err, LORA_ERR_NOMEM, "split: out of memory for %lld examples", (long long)n);
    if (v) {
        free(v->ids);
        free(v->off);
        free(v->prompt_len);
        free(v);
    }
    free(order);
    free(pick);
    return st;
}
