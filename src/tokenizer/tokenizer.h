/*
 * tokenizer.h — GPT-2's byte-level BPE tokenizer, and a trainer that learns such a tokenizer
 * from a corpus.
 *
 * What it is: the encoder of GPT-2 (Radford et al. 2019) — text is split into pre-tokens by
 * GPT-2's regex, each pre-token's bytes are shown as printable code points, and BPE merges are
 * applied by rank. Loads Hugging Face tokenizer.json (model "BPE", ByteLevel pre-tokenizer) or
 * the vocab.json + merges.txt pair. Ids equal those of the reference encoder (npm
 * gpt-3-encoder, a port of OpenAI's encoder.py) on well-formed UTF-8.
 * What it is not: SentencePiece, WordPiece, normalizers, or other pre-tokenizer regexes (Llama 3,
 * GPT-4): those files are refused with LORA_ERR_UNSUPPORTED.
 *
 * Self-contained (C11, lora_status / lora_error from lora.h only) so that it can move into the
 * public header as it is.
 *
 * Letters, digits and white space are classified as JavaScript's /u regexes classify them (the
 * reference encoder's engine), with the Unicode tables of the PCRE2 library in use: code points
 * assigned after that Unicode version may split differently.
 *
 * Bytes that are not well-formed UTF-8. The reference encoders take strings: bytes reach them
 * through a lossy decode that turns every ill-formed sequence into U+FFFD, so their ids decode
 * to different bytes. Here such bytes are pre-tokenized exactly as the reference pre-tokenizes
 * the U+FFFD standing for them (same pre-token boundaries everywhere), but the pre-token is then
 * encoded from its original bytes. Hence: decode(encode(x)) == x for every byte string x; every
 * pre-token made of well-formed text gets the reference's ids; a pre-token holding a bad byte
 * gets ids that spell that byte rather than U+FFFD.
 *
 * Thread safety: encoding uses a word cache and scratch buffers inside the tokenizer, so calls
 * to lora_tokenizer_encode on one tokenizer must not overlap; everything else is read-only and
 * may be called from several threads at once.
 */
#ifndef LORA_TOKENIZER_H
#define LORA_TOKENIZER_H

#include "lora.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the tokenizer ---- */

typedef struct lora_tokenizer lora_tokenizer;

/*
 * Loads the tokenizer in directory dir: tokenizer.json when present, else vocab.json +
 * merges.txt (the "#version" first line of merges.txt is optional). On success *out is owned by
 * the caller: free with lora_tokenizer_free.
 *
 * Special tokens: tokenizer.json's added_tokens; with vocab.json, "<|endoftext|>" when the
 * vocabulary has it (as GPT-2's tokenizer declares it).
 *
 * Fails with LORA_ERR_MISSING (no such file), LORA_ERR_IO, LORA_ERR_NOMEM, LORA_ERR_FORMAT
 * (malformed JSON, an id that is negative, fractional, too large or used twice, a merge that is
 * not two tokens or that names a token missing from the vocabulary) or LORA_ERR_UNSUPPORTED (a
 * model other than byte-level BPE); err gets "<file>: <problem>", "<file>:<line>: <problem>"
 * for merges.txt.
 */
lora_status lora_tokenizer_load(const char *dir, lora_tokenizer **out, lora_error *err);

/* Frees the tokenizer; NULL is a no-op. */
void lora_tokenizer_free(lora_tokenizer *tok);

/* Flags for lora_tokenizer_encode. */
enum lora_encode_flags {
    LORA_ENCODE_SPECIAL = 1u << 0 /* recognise special tokens ("<|endoftext|>") in the text */
};

/*
 * Encodes text[0..len) (any bytes; need not be NUL-terminated or valid UTF-8) into token ids.
 * With LORA_ENCODE_SPECIAL the text is first split at occurrences of the special tokens (the
 * longest one where several start at the same byte), each becoming its own id, and the pieces
 * between are encoded independently; without it special tokens are ordinary text.
 * On success *ids is a malloc'd array of *n_ids ids owned by the caller (free with free();
 * it may be NULL when *n_ids is 0).
 * Fails with LORA_ERR_NOMEM, or LORA_ERR_UNSUPPORTED when a byte of the text has no token in
 * the vocabulary (never with GPT-2's); *ids is NULL and *n_ids 0 then.
 */
lora_status lora_tokenizer_encode(lora_tokenizer *tok, const char *text, size_t len, uint32_t flags,
                                  int32_t **ids, size_t *n_ids, lora_error *err);

/*
 * Decodes ids[0..n_ids) into the bytes they stand for. On success *text is a malloc'd buffer
 * of *len bytes plus a terminating NUL (not counted), owned by the caller: free with free().
 * Fails with LORA_ERR_ARG when an id is outside [0, n_vocab) or names no token; LORA_ERR_NOMEM.
 */
lora_status lora_tokenizer_decode(const lora_tokenizer *tok, const int32_t *ids, size_t n_ids,
                                  char **text, size_t *len, lora_error *err);

/* 1 + the largest id: the embedding rows a model needs. */
int32_t lora_tokenizer_n_vocab(const lora_tokenizer *tok);

/* The id of "<|endoftext|>", or -1 when the vocabulary has none. */
int32_t lora_tokenizer_eos(const lora_tokenizer *tok);

/* The id of a token given in its vocabulary form (GPT-2's byte-level spelling, e.g. "\u0120the"
 * for " the"), or -1 when there is none. token is a NUL-terminated string. */
int32_t lora_tokenizer_token_to_id(const lora_tokenizer *tok, const char *token);

/* The vocabulary form of id, NUL-terminated; NULL when id names no token. Borrowed: valid while
 * the tokenizer lives. */
const char *lora_tokenizer_id_to_token(const lora_tokenizer *tok, int32_t id);

/* The bytes id decodes to (not NUL-terminated), their count in *len; NULL when id names no
 * token. Borrowed: valid while the tokenizer lives. */
const char *lora_tokenizer_id_to_bytes(const lora_tokenizer *tok, int32_t id, size_t *len);

/* Number of BPE merges, in rank order. */
int32_t lora_tokenizer_n_merges(const lora_tokenizer *tok);

/* Merge i (0-based rank) as the ids of its left and right tokens (spelled by
 * lora_tokenizer_id_to_token). LORA_ERR_ARG when i is out of range. */
lora_status lora_tokenizer_merge(const lora_tokenizer *tok, int32_t i, int32_t *left,
                                 int32_t *right);

/* ---- learning a tokenizer (byte-level BPE) ---- */

typedef struct lora_bpe_trainer lora_bpe_trainer;

/* Called during lora_bpe_trainer_train after every 256th merge and after the last:
 * n_done of n_total merges made, count = occurrences of the latest merged pair. */
typedef void (*lora_bpe_progress_fn)(void *user, int32_t n_done, int32_t n_total, int64_t count);

typedef struct lora_bpe_params {
    int32_t vocab_size;            /* tokens wanted, including the 256 byte tokens and
                                      "<|endoftext|>" (the last id); 257 .. 1<<24 */
    int64_t              min_freq; /* stop early when the best pair occurs fewer times; >= 1 */
    lora_bpe_progress_fn progress; /* may be NULL */
    void                *user;     /* handed to progress */
} lora_bpe_params;

/* Creates an empty trainer; *out is owned by the caller: free with lora_bpe_trainer_free. */
lora_status lora_bpe_trainer_init(lora_bpe_trainer **out, lora_error *err);
void        lora_bpe_trainer_free(lora_bpe_trainer *t);

/* Adds text to the word counts: split at "<|endoftext|>" (which is not counted), then into
 * pre-tokens with GPT-2's regex. Any bytes. Fails with LORA_ERR_NOMEM, or LORA_ERR_STATE after
 * lora_bpe_trainer_train. */
lora_status lora_bpe_trainer_feed(lora_bpe_trainer *t, const char *text, size_t len,
                                  lora_error *err);

/* Adds a file's text, read in blocks (cut only where pre-tokens cannot straddle the cut, so the
 * counts equal feeding the whole file at once). LORA_ERR_MISSING / LORA_ERR_IO on read errors. */
lora_status lora_bpe_trainer_feed_file(lora_bpe_trainer *t, const char *path, lora_error *err);

/* Bytes fed so far and pre-tokens counted (the distinct ones in *n_unique); any may be NULL. */
void lora_bpe_trainer_stats(const lora_bpe_trainer *t, int64_t *n_bytes, int64_t *n_words,
                            int64_t *n_unique);

/*
 * Learns merges: starting from the 256 byte tokens, repeatedly merges the most frequent adjacent
 * pair of tokens inside the counted words (ties: the pair whose left, then right token has the
 * smaller id) until the vocabulary has vocab_size tokens counting "<|endoftext|>", or the best
 * pair occurs fewer than min_freq times. A merge whose result spells an existing token reuses
 * that token's id. Deterministic: the same texts in the same order give the same merges.
 * Once only per trainer (LORA_ERR_STATE after); LORA_ERR_ARG for parameters out of range.
 */
lora_status lora_bpe_trainer_train(lora_bpe_trainer *t, const lora_bpe_params *p, lora_error *err);

/* Merges learned, and tokens in the vocabulary (bytes + merges' distinct results + 1). */
int32_t lora_bpe_trainer_n_merges(const lora_bpe_trainer *t);
int32_t lora_bpe_trainer_n_vocab(const lora_bpe_trainer *t);

/* Merge i (0-based rank) as the raw bytes of its two tokens, borrowed while the trainer lives.
 * LORA_ERR_ARG when i is out of range. */
lora_status lora_bpe_trainer_merge(const lora_bpe_trainer *t, int32_t i, const char **left,
                                   size_t *left_len, const char **right, size_t *right_len);

/* Writes vocab.json, merges.txt and tokenizer.json into dir (created if missing), each through
 * a temporary name and a rename. LORA_ERR_STATE before training; LORA_ERR_IO. */
lora_status lora_bpe_trainer_save(const lora_bpe_trainer *t, const char *dir, lora_error *err);

#ifdef __cplusplus
}
#endif

#endif
