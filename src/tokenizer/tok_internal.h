/*
 * tok_internal.h — pieces shared by the tokenizer (tokenizer.c) and the BPE trainer
 * (bpe_train.c): GPT-2's byte <-> unicode map, UTF-8 checks, the PCRE2 pre-tokenizer, and two
 * open-addressing hash maps (byte strings -> int64, uint64 pairs -> int32).
 *
 * Not a public interface: nothing outside src/tokenizer/ includes this file.
 */
#ifndef LORA_TOKENIZER_TOK_INTERNAL_H
#define LORA_TOKENIZER_TOK_INTERNAL_H

#include "lora.h"
#include "tokenizer/tokenizer.h"

#include <stddef.h>
#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* The special token GPT-2 uses as end-of-text and document separator. */
#define TOK_EOT "<|endoftext|>"
#define TOK_EOT_LEN 13

/* ---- GPT-2's byte <-> unicode map ---- */

/* GPT-2 shows every byte as a printable code point: the printable bytes '!'..'~', U+00A1..U+00AC
 * and U+00AE..U+00FF stand for themselves; the 68 others map, in byte order, to U+0100.. .
 * byte_cp[b] is that code point; base_order[i] is the byte of base token i (GPT-2's vocabulary
 * lists the 188 printable bytes first, then the others). */
typedef struct tok_bytemap {
    uint32_t byte_cp[256];
    uint8_t  base_order[256];
    int16_t  cp_byte[324]; /* inverse for code points < 324; -1 elsewhere */
} tok_bytemap;

void tok_bytemap_init(tok_bytemap *bm);

/* Writes the byte-level form of bytes[0..n) (each byte as the UTF-8 of its code point, at most
 * 2 bytes each) to out, which must hold 2 * n bytes; returns the length written. */
size_t tok_bytes_to_form(const tok_bytemap *bm, const unsigned char *bytes, size_t n, char *out);

/* Decodes a byte-level token form back to raw bytes into out (capacity >= n). Returns the byte
 * count, or -1 when the form holds a code point outside the map or is not valid UTF-8. */
long tok_form_to_bytes(const tok_bytemap *bm, const char *form, size_t n, unsigned char *out);

/* ---- UTF-8 ---- */

/* Length (1..4) of the well-formed UTF-8 sequence starting at s[0] (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF), or 0 when s[0] does not start one. */
size_t tok_utf8_seq_len(const unsigned char *s, size_t n);

/* Appends the UTF-8 of code point cp to out; returns the number of bytes (1..4). */
size_t tok_utf8_put(uint32_t cp, char *out);

/* ---- pre-tokenizer ---- */

/* GPT-2's pattern, compiled once. Not thread-safe: the match data is shared. */
typedef struct tok_pretok {
    pcre2_code       *re;
    pcre2_match_data *md;
    int               jit;     /* 1 when JIT compilation succeeded */
    char             *scratch; /* a copy of a segment holding invalid UTF-8 */
    size_t            scratch_cap;
} tok_pretok;

lora_status tok_pretok_init(tok_pretok *p, lora_error *err);
void        tok_pretok_free(tok_pretok *p);

/* Called once per pre-token with its bytes (borrowed from the caller's text). Returns LORA_OK
 * to continue; anything else stops the walk and is returned by tok_pretok_run. */
typedef lora_status (*tok_piece_fn)(void *ud, const char *piece, size_t n, lora_error *err);

/* Splits text[0..n) into GPT-2 pre-tokens, in order, covering every byte exactly once.
 * Bytes that are not well-formed UTF-8 are segmented as the reference encoder segments the
 * U+FFFD it decodes them to (a symbol: it joins neighbouring punctuation); the pieces handed to
 * fn still hold the original bytes. */
lora_status tok_pretok_run(tok_pretok *p, const char *text, size_t n, tok_piece_fn fn, void *ud,
                           lora_error *err);

/* ---- byte string -> int64 map, insertion-ordered ---- */

typedef struct tok_strent {
    uint64_t hash;
    size_t   off; /* key bytes at keys + off, NUL-terminated */
    uint32_t len;
    int64_t  val;
} tok_strent;

typedef struct tok_strmap {
    tok_strent *ents; /* in insertion order */
    uint32_t    n, ents_cap;
    int32_t    *slots; /* index into ents, -1 empty */
    uint32_t    mask;  /* slot count - 1 */
    char       *keys;
    size_t      keys_len, keys_cap;
} tok_strmap;

uint64_t tok_hash_bytes(const void *p, size_t n);
/* Zero-initialised map is valid and empty. */
void tok_strmap_free(tok_strmap *m);
void tok_strmap_clear(tok_strmap *m);
/* Returns the entry for key, or NULL. */
tok_strent *tok_strmap_get(const tok_strmap *m, const char *key, size_t n);
/* Finds or inserts key (val 0 when new, *added = 1). NULL on out of memory or a key longer than
 * UINT32_MAX. The pointer is valid until the next insertion. */
tok_strent               *tok_strmap_upsert(tok_strmap *m, const char *key, size_t n, int *added);
static inline const char *tok_strmap_key(const tok_strmap *m, const tok_strent *e) {
    return m->keys + e->off;
}

/* ---- uint64 -> int32 map (pairs of token ids) ---- */

typedef struct tok_pairslot {
    uint64_t key;
    int32_t  val; /* -1: empty */
} tok_pairslot;

typedef struct tok_pairmap {
    tok_pairslot *slots;
    uint32_t      n, mask;
} tok_pairmap;

static inline uint64_t tok_pair_key(int32_t a, int32_t b) {
    return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}
void tok_pairmap_free(tok_pairmap *m);
/* Returns the value, or -1 when absent. */
int32_t tok_pairmap_get(const tok_pairmap *m, uint64_t key);
/* Sets key to val (val >= 0); -1 on out of memory. */
int tok_pairmap_put(tok_pairmap *m, uint64_t key, int32_t val);

/* ---- the tokenizer object (tokenizer.h) ---- */

typedef struct tok_special {
    char   *text; /* owned */
    size_t  len;
    int32_t id;
    size_t  next; /* encode scratch: where it next occurs */
} tok_special;

typedef struct tok_heapent {
    int32_t rank;
    int32_t pos;
} tok_heapent;

typedef struct tok_sym {
    int32_t id; /* -1 once merged into its left neighbour */
    int32_t prev, next;
} tok_sym;

struct lora_tokenizer {
    tok_bytemap bm;
    int32_t     n_vocab;      /* 1 + largest id */
    int32_t     eos;          /* -1: none */
    tok_strmap  vocab;        /* vocabulary form -> id */
    int32_t    *form_ent;     /* (n_vocab) entry of vocab holding the id's form; -1: no token */
    char       *dec;          /* decoded bytes of every id, concatenated */
    size_t     *dec_off;      /* (n_vocab) */
    uint32_t   *dec_len;      /* (n_vocab) */
    int32_t     byte_id[256]; /* id of each byte's single-byte token; -1: none */

    tok_pairmap ranks;        /* (left id, right id) -> merge rank */
    int32_t    *merge_left;   /* (n_merges) */
    int32_t    *merge_right;  /* (n_merges) */
    int32_t    *merge_result; /* (n_merges) */
    int32_t     n_merges;

    tok_special *specials; /* (n_specials) */
    int32_t      n_specials;

    tok_pretok pretok;

    /* encode state: word cache and scratch */
    tok_strmap   cache; /* pre-token bytes -> (offset into cache_ids << 8) | count */
    int32_t     *cache_ids;
    size_t       cache_ids_len, cache_ids_cap;
    tok_sym     *syms;
    tok_heapent *heap;
    int32_t     *merged;
    size_t       word_cap; /* capacity of syms and merged; heap holds 3x */
    int32_t     *out;
    size_t       out_len, out_cap;
};

/* Fills a zeroed tokenizer from the files in dir (tok_load.c). */
lora_status tok_load_dir(lora_tokenizer *tok, const char *dir, lora_error *err);

#endif
