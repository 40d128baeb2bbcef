/*
 * dataset.h — JSONL training data: validation, tokenization (cached), truncation, padding or
 * packing into (B, T) batches, seeded shuffling that resumes exactly.
 *
 * Lines are either {"text": "..."} (loss on every token) or {"prompt": "...", "completion":
 * "..."} (loss on the completion only). Each example becomes ids = encode(text) + [eos] or
 * encode(prompt) + encode(completion) + [eos]; the model sees ids[0..n-2] and predicts
 * ids[1..n-1]; positions predicting prompt tokens get target -1 (no loss).
 *
 * Not thread-safe; the library never prints: counts come back in lora_dataset_stats.
 */
#ifndef LORA_DATA_DATASET_H
#define LORA_DATA_DATASET_H

#include "lora.h"
#include "tokenizer/tokenizer.h"

#include <stdint.h>

typedef struct lora_dataset lora_dataset;

typedef struct lora_dataset_params {
    int32_t     seq_len;   /* T: examples longer than T + 1 ids are truncated (and counted) */
    int32_t     skip_bad;  /* 1: malformed lines are counted and skipped instead of an error */
    const char *cache_dir; /* tokenized cache goes here (created); NULL: no cache */
} lora_dataset_params;

typedef struct lora_dataset_stats {
    int64_t n_lines;       /* non-empty lines read */
    int64_t n_examples;    /* examples kept */
    int64_t n_bad;         /* malformed lines skipped (skip_bad) */
    int64_t n_truncated;   /* examples cut to seq_len + 1 ids, including those dropped
                              because their prompt alone fills seq_len + 1 ids (no loss
                              position would remain: not in n_examples) */
    int64_t n_tokens;      /* ids kept, all examples */
    int64_t n_loss_tokens; /* positions with a target >= 0 */
    int32_t from_cache;    /* 1 when the tokenized cache was used */
} lora_dataset_stats;

/*
 * Reads and tokenizes a JSONL file. A malformed line (not JSON, not an object, neither "text"
 * nor "prompt"+"completion" strings, an empty example) is LORA_ERR_FORMAT with
 * "<file>:<line>: <problem>" unless skip_bad. A file with no usable example is LORA_ERR_FORMAT
 * ("<file>: no examples"). With cache_dir, the token ids are stored there keyed by the file's
 * contents and the tokenizer's vocabulary, and reused when both are unchanged (written
 * atomically; a corrupt cache is ignored and rebuilt). *out owns the dataset.
 *
 * Details: blank lines are skipped without counting; special tokens inside the text are plain
 * text (only the appended eos is one); bytes that are not UTF-8 pass through, but a string
 * holding \u0000 is a malformed line; the untruncated ids are cached, so another seq_len
 * reuses the cache; a cache that cannot be written is LORA_ERR_IO; a tokenizer without
 * "<|endoftext|>" is LORA_ERR_UNSUPPORTED.
 */
lora_status lora_dataset_load(const char *path, lora_tokenizer *tok,
                              const lora_dataset_params *p, lora_dataset **out,
                              lora_dataset_stats *stats, lora_error *err);
void        lora_dataset_free(lora_dataset *d);

int64_t lora_dataset_n_examples(const lora_dataset *d);

/* Ids held by all examples (after truncation). */
int64_t lora_dataset_n_tokens(const lora_dataset *d);

/*
 * Example i: *ids (borrowed, valid while d lives and until the next lora_dataset_split) holds
 * *n_ids ids, of which the first *prompt_len are prompt (no loss when predicted); any output
 * may be NULL. LORA_ERR_ARG when i is outside [0, n_examples).
 */
lora_status lora_dataset_example(const lora_dataset *d, int64_t i, const int32_t **ids,
                                 int64_t *n_ids, int32_t *prompt_len, lora_error *err);

/*
 * Moves a seeded random fraction (0 < frac < 1, at least one example each side) of d's
 * examples into a new dataset *val (owned by the caller).
 * round(frac * n) examples move; both sides keep the file order. LORA_ERR_ARG for frac outside
 * (0, 1) or fewer than 2 examples; on any failure d is unchanged. A batcher over d must be
 * created after the split.
 */
lora_status lora_dataset_split(lora_dataset *d, float frac, uint64_t seed, lora_dataset **val,
                               lora_error *err);

/* ---- batching ---- */

typedef struct lora_batcher lora_batcher;

/* Where a batcher stands; save it in a checkpoint to resume the exact same batches. */
typedef struct lora_batcher_state {
    uint64_t seed;
    int64_t  epoch;  /* completed passes over the data */
    int64_t  cursor; /* examples (padding) or tokens (packing) consumed in this epoch */
} lora_batcher_state;

/*
 * A batcher over d (borrowed) producing (B, T) batches. pack = 0: one example per row, padded
 * with eos, padding targets -1. pack = 1: examples concatenated (each ending in eos) and cut
 * into rows of T inputs, every row full except possibly at the end of an epoch (padded).
 * shuffle = 1: the example order of each epoch is a permutation drawn from (seed, epoch).
 *
 * Targets: the id following each input, or -1 for padding, prompt ids and the first id of an
 * example (in packing too: it is not predicted from the previous example), so both modes give
 * every example the same loss positions. Packed rows overlap by one id (a row's last target is
 * the next row's first input); attention is not masked between packed examples. With
 * pack = 0 and T below the dataset's seq_len, rows keep an example's first T + 1 ids.
 * The batcher allocates everything here (LORA_ERR_ARG for B or T < 1 or an empty dataset,
 * LORA_ERR_NOMEM); *out is owned: free with lora_batcher_free, before d.
 */
lora_status lora_batcher_new(const lora_dataset *d, int32_t B, int32_t T, int32_t pack,
                             int32_t shuffle, uint64_t seed, lora_batcher **out, lora_error *err);
void lora_batcher_free(lora_batcher *b);

/*
 * Fills tokens and targets (B * T each). Wraps to the next epoch when the data runs out (a
 * batch never mixes epochs: the last batch of an epoch may have padding rows, targets -1).
 * *n_loss receives the number of targets >= 0. Returns the epoch of this batch.
 */
int64_t lora_batcher_next(lora_batcher *b, int32_t *tokens, int32_t *targets, int64_t *n_loss);

/* Batches per epoch (ceil). */
int64_t lora_batcher_batches_per_epoch(const lora_batcher *b);

/*
 * The state after the last batch (an epoch that has just ended reads as the next one at cursor
 * 0). set_state takes the seed from s as well, accepts any cursor within the epoch (so a run may
 * resume with another B), and fails with LORA_ERR_ARG, the batcher unchanged, when the epoch is
 * negative or the cursor lies past this dataset's epoch.
 */
void        lora_batcher_get_state(const lora_batcher *b, lora_batcher_state *s);
lora_status lora_batcher_set_state(lora_batcher *b, const lora_batcher_state *s, lora_error *err);

#endif
