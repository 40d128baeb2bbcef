/*
 * dataset_cache.c — the tokenized-dataset cache: a content hash of the JSONL file, a fingerprint
 * of the tokenizer, and a small binary file holding the untruncated ids so that a second run
 * (even with another seq_len) skips JSON parsing and BPE.
 *
 * What it is not: a portable interchange format. Numbers are in host byte order (a byte-order
 * mark in the header makes a foreign file merely stale), and the file is rebuilt, never repaired.
 *
 * File layout (all offsets in bytes):
 *    0  magic "LORATOKC"          48  i64 n_lines
 *    8  u32 version (1)           56  i64 n_bad
 *   12  u32 byte-order mark       64  i64 n_examples (N)
 *   16  u64 file_hash             72  i64 n_ids
 *   24  u64 file_len              80  i64 off[N + 1]
 *   32  u64 tok_hash                  i32 prompt_len[N]
 *   40  i32 n_vocab                   i32 ids[n_ids]
 *   44  i32 eos                       u64 checksum of everything before it
 * A reader checks every field against the expected key, the counts against the file size
 * (before multiplying), the checksum, and the dataset invariants of dataset_internal.h.
 */
#include "data/dataset_internal.h"

#include "core/error.h"
#include "core/rng.h"
#include "io/fileutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_MAGIC "LORATOKC"
#define CACHE_VERSION 1u
#define CACHE_BOM 0x01020304u
#define CACHE_HEADER 80u

/* ---- hashing ---- */

static inline uint64_t rotl64(uint64_t x, int r) {
    return (x << r) | (x >> (64 - r));
}

static inline uint64_t load64(const unsigned char *p) {
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

#define H_P1 0x9e3779b185ebca87ull
#define H_P2 0xc2b2ae3d27d4eb4full

static inline uint64_t h_round(uint64_t acc, uint64_t w) {
    return rotl64(acc + w * H_P2, 31) * H_P1;
}

/* Four independent lanes over 32-byte blocks, then the tail; finished with splitmix64. */
uint64_t ds_hash_bytes(uint64_t seed, const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t             a = seed + H_P1 + H_P2, b = seed + H_P2, c = seed, dd = seed - H_P1;
    size_t               i = 0;
    for (; i + 32 <= n; i += 32) {
        a  = h_round(a, load64(s + i));
        b  = h_round(b, load64(s + i + 8));
        c  = h_round(c, load64(s + i + 16));
        dd = h_round(dd, load64(s + i + 24));
    }
    uint64_t h = rotl64(a, 1) + rotl64(b, 7) + rotl64(c, 12) + rotl64(dd, 18);
    h ^= (uint64_t)n * H_P1;
    for (; i + 8 <= n; i += 8)
        h = rotl64(h ^ h_round(0, load64(s + i)), 27) * H_P1 + H_P2;
    if (i < n) {
        uint64_t w = 0;
        memcpy(&w, s + i, n - i);
        h = rotl64(h ^ h_round(0, w ^ (uint64_t)(n - i)), 27) * H_P1 + H_P2;
    }
    return rng_mix64(h);
}

/* A fixed text whose ids change when the merges do: words, spaces, digits, punctuation,
 * contractions and a little non-ASCII. */
static const char probe_text[] =
    "The quick brown fox jumps over the lazy dog. It's 1234567 o'clock; they'll say \"hello\"\n"
    "  world\t--  name[The Eagle], eatType[coffee shop], priceRange[less than \xc2\xa3"
    "20] ||"
    " Caf\xc3\xa9 Rouge isn't near the riverside!? ... 3.14159 and 2,718 ##@@ \xe2\x80\x94 end.";

lora_status ds_tokenizer_fingerprint(lora_tokenizer *tok, uint64_t *out, lora_error *err) {
    int32_t  n_vocab = lora_tokenizer_n_vocab(tok);
    int32_t  eos     = lora_tokenizer_eos(tok);
    uint64_t h =
        rng_key(0x746f6b656e697a65ull, (uint64_t)(uint32_t)n_vocab, (uint64_t)(uint32_t)eos);
    for (int32_t id = 0; id < n_vocab; id++) {
        size_t      len = 0;
        const char *b   = lora_tokenizer_id_to_bytes(tok, id, &len);
        if (!b)
            h = rng_mix64(h ^ 0x6e6f6e65ull); /* a hole in the id space */
        else
            h = ds_hash_bytes(h ^ (uint64_t)len, b, len);
    }
    /* the probe text fingerprints the merges; a vocabulary without some byte tokens cannot
     * encode it (its own data may still be encodable), and then the vocabulary alone counts */
    int32_t    *ids = NULL;
    size_t      n   = 0;
    lora_error  probe_err;
    lora_status st =
        lora_tokenizer_encode(tok, probe_text, sizeof probe_text - 1, 0, &ids, &n, &probe_err);
    if (st == LORA_ERR_NOMEM) return lora_errorf(err, st, "%s", probe_err.msg);
    if (st == LORA_OK)
        h = ds_hash_bytes(h, ids, n * sizeof(int32_t));
    else
        h = rng_mix64(h ^ 0x70726f6265ull); /* "probe" not encodable */
    free(ids);
    *out = h;
    return LORA_OK;
}

/* ---- naming ---- */

static uint64_t key_hash(const ds_cache_key *k) {
    uint64_t h = rng_key(k->file_hash, k->tok_hash, k->file_len);
    h = rng_key(h, CACHE_VERSION, ((uint64_t)(uint32_t)k->n_vocab << 32) | (uint32_t)k->eos);
    return h;
}

lora_status ds_cache_path(char *out, size_t outsz, const char *cache_dir, const char *path,
                          const ds_cache_key *key, lora_error *err) {
    const char *base = strrchr(path, '/');
    base             = base ? base + 1 : path;
    if (*base == '\0') base = "data";
    char name[512];
    int  n = snprintf(name, sizeof name, "%.400s.%016llx.tokens", base,
                      (unsigned long long)key_hash(key));
    if (n < 0 || (size_t)n >= sizeof name)
        return lora_errorf(err, LORA_ERR_ARG, "%s: file name too long for the cache", path);
    return lora_path_join(out, outsz, cache_dir, name, err);
}

/* ---- header ---- */

typedef struct cache_header {
    uint64_t file_hash, file_len, tok_hash;
    int32_t  n_vocab, eos;
    int64_t  n_lines, n_bad, n_examples, n_ids;
} cache_header;

static void header_pack(unsigned char *h, const cache_header *c) {
    uint32_t version = CACHE_VERSION, bom = CACHE_BOM;
    memcpy(h, CACHE_MAGIC, 8);
    memcpy(h + 8, &version, 4);
    memcpy(h + 12, &bom, 4);
    memcpy(h + 16, &c->file_hash, 8);
    memcpy(h + 24, &c->file_len, 8);
    memcpy(h + 32, &c->tok_hash, 8);
    memcpy(h + 40, &c->n_vocab, 4);
    memcpy(h + 44, &c->eos, 4);
    memcpy(h + 48, &c->n_lines, 8);
    memcpy(h + 56, &c->n_bad, 8);
    memcpy(h + 64, &c->n_examples, 8);
    memcpy(h + 72, &c->n_ids, 8);
}

/* 0 when the magic, version or byte order differ. */
static int header_unpack(const unsigned char *h, cache_header *c) {
    uint32_t version, bom;
    if (memcmp(h, CACHE_MAGIC, 8) != 0) return 0;
    memcpy(&version, h + 8, 4);
    memcpy(&bom, h + 12, 4);
    if (version != CACHE_VERSION || bom != CACHE_BOM) return 0;
    memcpy(&c->file_hash, h + 16, 8);
    memcpy(&c->file_len, h + 24, 8);
    memcpy(&c->tok_hash, h + 32, 8);
    memcpy(&c->n_vocab, h + 40, 4);
    memcpy(&c->eos, h + 44, 4);
    memcpy(&c->n_lines, h + 48, 8);
    memcpy(&c->n_bad, h + 56, 8);
    memcpy(&c->n_examples, h + 64, 8);
    memcpy(&c->n_ids, h + 72, 8);
    return 1;
}

static uint64_t payload_checksum(const unsigned char *hdr, const void *off, size_t off_bytes,
                                 const void *plen, size_t plen_bytes, const void *ids,
                                 size_t ids_bytes) {
    uint64_t h = ds_hash_bytes(0x636163686573756dull, hdr, CACHE_HEADER);
    h          = ds_hash_bytes(h, off, off_bytes);
    h          = ds_hash_bytes(h, plen, plen_bytes);
    return ds_hash_bytes(h, ids, ids_bytes);
}

/* ---- reading ---- */

/* Checks the dataset invariants on arrays read from the file. */
static int raw_valid(const lora_dataset *r) {
    if (r->off[0] != 0 || r->off[r->n_examples] != r->n_ids) return 0;
    for (int64_t i = 0; i < r->n_examples; i++) {
        int64_t len = r->off[i + 1] - r->off[i];
        if (r->off[i + 1] < r->off[i] || len < 2 || len > r->n_ids) return 0;
        if (r->prompt_len[i] < 0 || r->prompt_len[i] >= len) return 0;
    }
    for (int64_t i = 0; i < r->n_ids; i++)
        if (r->ids[i] < 0 || r->ids[i] >= r->n_vocab) return 0;
    return 1;
}

int ds_cache_read(const char *cpath, const ds_cache_key *key, lora_dataset *raw) {
    memset(raw, 0, sizeof *raw);
    char  *buf  = NULL;
    size_t size = 0;
    if (lora_read_file(cpath, &buf, &size, NULL) != LORA_OK) return 0;

    const unsigned char *u = (const unsigned char *)buf;
    cache_header         h;
    if (size < CACHE_HEADER + 8 || !header_unpack(u, &h)) goto fail;
    if (h.file_hash != key->file_hash || h.file_len != key->file_len ||
        h.tok_hash != key->tok_hash || h.n_vocab != key->n_vocab || h.eos != key->eos)
        goto fail;
    if (h.n_examples < 1 || h.n_ids < 2 || h.n_lines < 1 || h.n_bad < 0 || h.n_bad > h.n_lines ||
        h.n_examples != h.n_lines - h.n_bad)
        goto fail;

    /* Every count is bounded by the bytes present before anything is multiplied. */
    size_t rest = size - CACHE_HEADER - 8;
    if ((uint64_t)h.n_examples > rest / 12 || (uint64_t)h.n_ids > rest / 4) goto fail;
    size_t n_ex = (size_t)h.n_examples, n_ids = (size_t)h.n_ids;
    size_t off_bytes  = (n_ex + 1) * sizeof(int64_t);
    size_t plen_bytes = n_ex * sizeof(int32_t);
    size_t ids_bytes  = n_ids * sizeof(int32_t);
    if (off_bytes > rest || plen_bytes > rest - off_bytes ||
        ids_bytes != rest - off_bytes - plen_bytes)
        goto fail;

    const unsigned char *p_off  = u + CACHE_HEADER;
    const unsigned char *p_plen = p_off + off_bytes;
    const unsigned char *p_ids  = p_plen + plen_bytes;
    uint64_t             want;
    memcpy(&want, p_ids + ids_bytes, 8);
    if (payload_checksum(u, p_off, off_bytes, p_plen, plen_bytes, p_ids, ids_bytes) != want)
        goto fail;

    raw->off        = malloc(off_bytes);
    raw->prompt_len = malloc(plen_bytes);
    raw->ids        = malloc(ids_bytes);
    if (!raw->off || !raw->prompt_len || !raw->ids) goto fail;
    memcpy(raw->off, p_off, off_bytes);
    memcpy(raw->prompt_len, p_plen, plen_bytes);
    memcpy(raw->ids, p_ids, ids_bytes);
    raw->n_examples = h.n_examples;
    raw->n_ids      = h.n_ids;
    raw->n_lines    = h.n_lines;
    raw->n_bad      = h.n_bad;
    raw->n_vocab    = h.n_vocab;
    raw->eos        = h.eos;
    raw->seq_len    = 0;
    if (!raw_valid(raw)) goto fail;
    free(buf);
    return 1;

fail:
    free(raw->ids);
    free(raw->prompt_len);
    free(raw->off);
    memset(raw, 0, sizeof *raw);
    free(buf);
    return 0;
}

/* ---- writing ---- */

lora_status ds_cache_write(const char *cpath, const char *cache_dir, const ds_cache_key *key,
                           const lora_dataset *raw, lora_error *err) {
    lora_status st = lora_mkdirs(cache_dir, err);
    if (st != LORA_OK) return st;

    cache_header  h = {key->file_hash, key->file_len, key->tok_hash,   key->n_vocab, key->eos,
                       raw->n_lines,   raw->n_bad,    raw->n_examples, raw->n_ids};
    unsigned char hdr[CACHE_HEADER];
    header_pack(hdr, &h);
    size_t   off_bytes  = (size_t)(raw->n_examples + 1) * sizeof(int64_t);
    size_t   plen_bytes = (size_t)raw->n_examples * sizeof(int32_t);
    size_t   ids_bytes  = (size_t)raw->n_ids * sizeof(int32_t);
    uint64_t sum = payload_checksum(hdr, raw->off, off_bytes, raw->prompt_len, plen_bytes, raw->ids,
                                    ids_bytes);

    lora_atomic_file af;
    if ((st = lora_atomic_open(&af, cpath, err)) != LORA_OK) return st;
    if (fwrite(hdr, 1, sizeof hdr, af.fp) != sizeof hdr ||
        fwrite(raw->off, 1, off_bytes, af.fp) != off_bytes ||
        fwrite(raw->prompt_len, 1, plen_bytes, af.fp) != plen_bytes ||
        fwrite(raw->ids, 1, ids_bytes, af.fp) != ids_bytes ||
        fwrite(&sum, 1, sizeof sum, af.fp) != sizeof sum) {
        lora_atomic_abort(&af);
        return lora_errorf(err, LORA_ERR_IO, "%s: cannot write the token cache", cpath);
    }
    return lora_atomic_commit(&af, err);
}
