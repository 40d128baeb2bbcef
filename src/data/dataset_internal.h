/*
 * dataset_internal.h — the layout of a tokenized dataset, shared by the loader (dataset.c), the
 * token cache (dataset_cache.c) and the batcher (batcher.c). Not part of the API above src/data.
 */
#ifndef LORA_DATA_DATASET_INTERNAL_H
#define LORA_DATA_DATASET_INTERNAL_H

#include "core/rng.h"
#include "data/dataset.h"

#include <stddef.h>
#include <stdint.h>

/*
 * Every example's ids back to back: example i is ids[off[i] .. off[i + 1]), its first
 * prompt_len[i] ids are prompt (0 for {"text": ...}). Invariants (checked on every path that
 * builds one, the cache reader included): off[0] = 0, off[n_examples] = n_ids, every example
 * has >= 2 ids and prompt_len < its length, so it has at least one loss position; every id is in
 * [0, n_vocab).
 */
struct lora_dataset {
    int32_t *ids;        /* (n_ids) owned */
    int64_t *off;        /* (n_examples + 1) owned */
    int32_t *prompt_len; /* (n_examples) owned */
    int64_t  n_examples;
    int64_t  n_ids;
    int64_t  n_lines; /* non-empty lines of the source file */
    int64_t  n_bad;   /* of which malformed and skipped */
    int32_t  eos;     /* appended to every example; also the padding token */
    int32_t  n_vocab; /* the tokenizer's */
    int32_t  seq_len; /* examples hold at most seq_len + 1 ids; 0: not truncated yet */
};

static inline int64_t ds_len(const lora_dataset *d, int64_t i) {
    return d->off[i + 1] - d->off[i];
}

/* Index of the first id of example i that is a target (predicted with a loss): the first id
 * is never predicted, prompt ids are masked. */
static inline int64_t ds_first_target(const lora_dataset *d, int64_t i) {
    return d->prompt_len[i] > 1 ? d->prompt_len[i] : 1;
}

/* A draw in [0, bound) from element i of a counter-based stream: the 64-bit hash behind
 * rng_uniform (whose 24 bits could not reach every index of a large dataset) reduced modulo
 * bound, a bias of at most bound / 2^64. bound > 0. */
static inline uint64_t ds_draw_below(uint64_t key, uint64_t i, uint64_t bound) {
    return rng_mix64(key ^ rng_mix64(i)) % bound;
}

/* ---- hashing and the token cache (dataset_cache.c) ---- */

/* A 64-bit non-cryptographic hash of p[0..n), chained through seed. */
uint64_t ds_hash_bytes(uint64_t seed, const void *p, size_t n);

/* A hash of the tokenizer's behaviour: vocabulary size, eos, the bytes of every id, and the
 * ids of a fixed probe text (which changes when the merges do). LORA_ERR_NOMEM only. */
lora_status ds_tokenizer_fingerprint(lora_tokenizer *tok, uint64_t *out, lora_error *err);

/* What a cache file must match to be used. */
typedef struct ds_cache_key {
    uint64_t file_hash; /* ds_hash_bytes of the JSONL bytes */
    uint64_t file_len;
    uint64_t tok_hash; /* ds_tokenizer_fingerprint */
    int32_t  n_vocab;
    int32_t  eos;
} ds_cache_key;

/* The cache file's name for path under cache_dir: "<dir>/<basename>.<16 hex>.tokens". */
lora_status ds_cache_path(char *out, size_t outsz, const char *cache_dir, const char *path,
                          const ds_cache_key *key, lora_error *err);

/*
 * Reads an untruncated dataset (seq_len 0) from cache file cpath into *raw (zeroed first).
 * Returns 1 when the file exists, matches key and passes every check; 0 otherwise (missing,
 * unreadable, stale, corrupt or out of memory), with *raw empty. Never trusts the file.
 */
int ds_cache_read(const char *cpath, const ds_cache_key *key, lora_dataset *raw);

/* Writes raw (untruncated) to cpath atomically, creating its directory. LORA_ERR_IO. */
lora_status ds_cache_write(const char *cpath, const char *cache_dir, const ds_cache_key *key,
                           const lora_dataset *raw, lora_error *err);

#endif
