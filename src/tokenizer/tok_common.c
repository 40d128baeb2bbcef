/*
 * tok_common.c — the parts of tokenization that do not depend on a vocabulary: GPT-2's byte <->
 * unicode map, UTF-8 checks, the pre-tokenizer regex (PCRE2) and the hash maps used by the
 * tokenizer and the BPE trainer. See tok_internal.h. No BPE here.
 */
#include "tokenizer/tok_internal.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

/* ---- GPT-2's byte <-> unicode map ---- */

static int byte_is_printable(int b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

void tok_bytemap_init(tok_bytemap *bm) {
    int n_base = 0, n_extra = 0;
    for (int b = 0; b < 256; b++) {
        if (byte_is_printable(b)) {
            bm->byte_cp[b]           = (uint32_t)b;
            bm->base_order[n_base++] = (uint8_t)b;
        }
    }
    for (int b = 0; b < 256; b++) {
        if (!byte_is_printable(b)) {
            bm->byte_cp[b]           = 256u + (uint32_t)n_extra++;
            bm->base_order[n_base++] = (uint8_t)b;
        }
    }
    for (int c = 0; c < 324; c++)
        bm->cp_byte[c] = -1;
    for (int b = 0; b < 256; b++)
        bm->cp_byte[bm->byte_cp[b]] = (int16_t)b;
}

size_t tok_bytes_to_form(const tok_bytemap *bm, const unsigned char *bytes, size_t n, char *out) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += tok_utf8_put(bm->byte_cp[bytes[i]], out + k);
    return k;
}

long tok_form_to_bytes(const tok_bytemap *bm, const char *form, size_t n, unsigned char *out) {
    const unsigned char *s = (const unsigned char *)form;
    size_t               k = 0;
    for (size_t i = 0; i < n;) {
        size_t   len = tok_utf8_seq_len(s + i, n - i);
        uint32_t cp;
        if (len == 1) {
            cp = s[i];
        } else if (len == 2) {
            cp = ((uint32_t)(s[i] & 0x1F) << 6) | (s[i + 1] & 0x3F);
        } else {
            return -1; /* invalid, or a 3/4-byte code point: never in the map */
        }
        if (cp >= 324 || bm->cp_byte[cp] < 0) return -1;
        out[k++] = (unsigned char)bm->cp_byte[cp];
        i += len;
    }
    return (long)k;
}

/* ---- UTF-8 ---- */

static int is_cont(unsigned char c) {
    return (c & 0xC0) == 0x80;
}

size_t tok_utf8_seq_len(const unsigned char *s, size_t n) {
    unsigned char b0 = s[0];
    if (b0 < 0x80) return 1;
    if (b0 < 0xC2) return 0; /* continuation byte, or an overlong 2-byte lead */
    if (b0 < 0xE0) return n >= 2 && is_cont(s[1]) ? 2 : 0;
    if (b0 < 0xF0) {
        unsigned char lo = b0 == 0xE0 ? 0xA0 : 0x80; /* no overlongs */
        unsigned char hi = b0 == 0xED ? 0x9F : 0xBF; /* no surrogates */
        return n >= 3 && s[1] >= lo && s[1] <= hi && is_cont(s[2]) ? 3 : 0;
    }
    if (b0 < 0xF5) {
        unsigned char lo = b0 == 0xF0 ? 0x90 : 0x80; /* no overlongs */
        unsigned char hi = b0 == 0xF4 ? 0x8F : 0xBF; /* nothing above U+10FFFF */
        return n >= 4 && s[1] >= lo && s[1] <= hi && is_cont(s[2]) && is_cont(s[3]) ? 4 : 0;
    }
    return 0;
}

size_t tok_utf8_put(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- pre-tokenizer ---- */

/* GPT-2's pattern
 *     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * with \s spelled out as the white space of JavaScript's /u regexes, which the reference encoder
 * (npm gpt-3-encoder) uses: PCRE2's own \s under UCP also takes U+0085 and U+180E and leaves out
 * U+FEFF. (Encoders built on other regex engines may differ from the reference there too.) */
#define WS                                                                                         \
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"              \
    "\\x{202F}\\x{205F}\\x{3000}\\x{FEFF}"
static const char GPT2_PATTERN[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+"
                                   "| ?[^" WS "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])|[" WS "]+";
#undef WS

/* Stand-in for a byte that is not well-formed UTF-8 while the regex runs. The reference decodes
 * such bytes to U+FFFD, a symbol (category So): for this pattern every ASCII punctuation mark
 * but the apostrophe falls in exactly the same alternatives as U+FFFD does. */
#define INVALID_STANDIN '!'

lora_status tok_pretok_init(tok_pretok *p, lora_error *err) {
    memset(p, 0, sizeof *p);
    int        code;
    PCRE2_SIZE off;
    p->re = pcre2_compile((PCRE2_SPTR)GPT2_PATTERN, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                          &code, &off, NULL);
    if (!p->re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                           "tokenizer: PCRE2 rejects the pre-tokenizer pattern at %zu: %s",
                           (size_t)off, (const char *)msg);
    }
    p->jit = pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE) == 0;
    p->md  = pcre2_match_data_create_from_pattern(p->re, NULL);
    if (!p->md) {
        tok_pretok_free(p);
        return lora_errorf(err, LORA_ERR_NOMEM, "tokenizer: cannot allocate PCRE2 match data");
    }
    return LORA_OK;
}

void tok_pretok_free(tok_pretok *p) {
    if (!p) return;
    pcre2_match_data_free(p->md);
    pcre2_code_free(p->re);
    free(p->scratch);
    memset(p, 0, sizeof *p);
}

/* Returns the regex subject for text: text itself when it is all well-formed UTF-8, else a
 * same-length copy with each bad byte replaced by INVALID_STANDIN; NULL on out of memory. */
static const char *pretok_subject(tok_pretok *p, const char *text, size_t n) {
    const unsigned char *s = (const unsigned char *)text;
    size_t               i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t len = tok_utf8_seq_len(s + i, n - i);
        if (len == 0) break;
        i += len;
    }
    if (i == n) return text;

    if (p->scratch_cap < n) {
        char *nb = realloc(p->scratch, n);
        if (!nb) return NULL;
        p->scratch     = nb;
        p->scratch_cap = n;
    }
    memcpy(p->scratch, text, n);
    while (i < n) {
        size_t len = s[i] < 0x80 ? 1 : tok_utf8_seq_len(s + i, n - i);
        if (len == 0) {
            p->scratch[i] = INVALID_STANDIN;
            len           = 1;
        }
        i += len;
    }
    return p->scratch;
}

lora_status tok_pretok_run(tok_pretok *p, const char *text, size_t n, tok_piece_fn fn, void *ud,
                           lora_error *err) {
    if (n == 0) return LORA_OK;
    const char *subj = pretok_subject(p, text, n);
    if (!subj) {
        return lora_errorf(err, LORA_ERR_NOMEM, "tokenizer: cannot allocate %zu bytes", n);
    }
    PCRE2_SIZE *ov  = pcre2_get_ovector_pointer(p->md);
    size_t      off = 0;
    while (off < n) {
        int rc =
            p->jit ? pcre2_jit_match(p->re, (PCRE2_SPTR)subj, n, off, 0, p->md, NULL)
                   : pcre2_match(p->re, (PCRE2_SPTR)subj, n, off, PCRE2_NO_UTF_CHECK, p->md, NULL);
        size_t s = n, e = n;
        if (rc >= 0) {
            s = ov[0];
            e = ov[1];
        } else if (rc != PCRE2_ERROR_NOMATCH) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                               "tokenizer: pre-tokenizer failed at byte %zu: %s", off,
                               (const char *)msg);
        }
        /* The pattern matches every character, so gaps and empty matches cannot happen;
         * should they, the bytes still go out in order so decoding stays exact. */
        lora_status st;
        if (s > off && (st = fn(ud, text + off, s - off, err)) != LORA_OK) return st;
        if (e <= s) {
            if (s >= n) break;
            e = s + 1;
        }
        if ((st = fn(ud, text + s, e - s, err)) != LORA_OK) return st;
        off = e;
    }
    return LORA_OK;
}

/* ---- hashing ---- */

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    x ^= x >> 31;
    return x;
}

uint64_t tok_hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t             h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v |= (uint64_t)s[i] << (8 * i);
    return mix64(h ^ v);
}

/* ---- byte string -> int64 map ---- */

void tok_strmap_free(tok_strmap *m) {
    if (!m) return;
    free(m->ents);
    free(m->slots);
    free(m->keys);
    memset(m, 0, sizeof *m);
}

void tok_strmap_clear(tok_strmap *m) {
    m->n        = 0;
    m->keys_len = 0;
    if (m->slots) memset(m->slots, 0xFF, ((size_t)m->mask + 1) * sizeof *m->slots);
}

tok_strent *tok_strmap_get(const tok_strmap *m, const char *key, size_t n) {
    if (!m->slots) return NULL;
    uint64_t h = tok_hash_bytes(key, n);
    for (uint32_t i = (uint32_t)h & m->mask;; i = (i + 1) & m->mask) {
        int32_t s = m->slots[i];
        if (s < 0) return NULL;
        tok_strent *e = &m->ents[s];
        if (e->hash == h && e->len == n && memcmp(m->keys + e->off, key, n) == 0) return e;
    }
}

static int strmap_grow_slots(tok_strmap *m) {
    size_t nslots = m->slots ? ((size_t)m->mask + 1) * 2 : 64;
    if (nslots > ((size_t)1 << 31)) return -1;
    int32_t *slots = malloc(nslots * sizeof *slots);
    if (!slots) return -1;
    memset(slots, 0xFF, nslots * sizeof *slots);
    uint32_t mask = (uint32_t)(nslots - 1);
    for (uint32_t k = 0; k < m->n; k++) {
        uint32_t i = (uint32_t)m->ents[k].hash & mask;
        while (slots[i] >= 0)
            i = (i + 1) & mask;
        slots[i] = (int32_t)k;
    }
    free(m->slots);
    m->slots = slots;
    m->mask  = mask;
    return 0;
}

tok_strent *tok_strmap_upsert(tok_strmap *m, const char *key, size_t n, int *added) {
    *added = 0;
    if (n > UINT32_MAX) return NULL;
    tok_strent *found = tok_strmap_get(m, key, n);
    if (found) return found;

    if (m->n >= INT32_MAX - 1) return NULL;
    if (!m->slots || ((size_t)m->n + 1) * 2 > (size_t)m->mask + 1) {
        if (strmap_grow_slots(m) != 0) return NULL;
    }
    if (m->n == m->ents_cap) {
        uint32_t    cap  = m->ents_cap ? m->ents_cap * 2 : 64;
        tok_strent *ents = realloc(m->ents, (size_t)cap * sizeof *ents);
        if (!ents) return NULL;
        m->ents     = ents;
        m->ents_cap = cap;
    }
    if (n + 1 > SIZE_MAX - m->keys_len) return NULL;
    if (m->keys_len + n + 1 > m->keys_cap) {
        size_t cap = m->keys_cap ? m->keys_cap : 1024;
        while (cap < m->keys_len + n + 1) {
            if (cap > SIZE_MAX / 2) return NULL;
            cap *= 2;
        }
        char *keys = realloc(m->keys, cap);
        if (!keys) return NULL;
        m->keys     = keys;
        m->keys_cap = cap;
    }
    tok_strent *e = &m->ents[m->n];
    e->hash       = tok_hash_bytes(key, n);
    e->off        = m->keys_len;
    e->len        = (uint32_t)n;
    e->val        = 0;
    if (n) memcpy(m->keys + m->keys_len, key, n);
    m->keys[m->keys_len + n] = '\0';
    m->keys_len += n + 1;

    uint32_t i = (uint32_t)e->hash & m->mask;
    while (m->slots[i] >= 0)
        i = (i + 1) & m->mask;
    m->slots[i] = (int32_t)m->n;
    m->n++;
    *added = 1;
    return e;
}

/* ---- uint64 -> int32 map ---- */

void tok_pairmap_free(tok_pairmap *m) {
    if (!m) return;
    free(m->slots);
    memset(m, 0, sizeof *m);
}

int32_t tok_pairmap_get(const tok_pairmap *m, uint64_t key) {
    if (!m->slots) return -1;
    for (uint32_t i = (uint32_t)mix64(key) & m->mask;; i = (i + 1) & m->mask) {
        const tok_pairslot *s = &m->slots[i];
        if (s->val < 0) return -1;
        if (s->key == key) return s->val;
    }
}

static int pairmap_grow(tok_pairmap *m) {
    size_t nslots = m->slots ? ((size_t)m->mask + 1) * 2 : 64;
    if (nslots > ((size_t)1 << 31)) return -1;
    tok_pairslot *slots = malloc(nslots * sizeof *slots);
    if (!slots) return -1;
    for (size_t i = 0; i < nslots; i++)
        slots[i].val = -1;
    uint32_t mask = (uint32_t)(nslots - 1);
    if (m->slots) {
        for (size_t k = 0; k <= m->mask; k++) {
            if (m->slots[k].val < 0) continue;
            uint32_t i = (uint32_t)mix64(m->slots[k].key) & mask;
            while (slots[i].val >= 0)
                i = (i + 1) & mask;
            slots[i] = m->slots[k];
        }
    }
    free(m->slots);
    m->slots = slots;
    m->mask  = mask;
    return 0;
}

int tok_pairmap_put(tok_pairmap *m, uint64_t key, int32_t val) {
    if (!m->slots || ((size_t)m->n + 1) * 2 > (size_t)m->mask + 1) {
        if (pairmap_grow(m) != 0) return -1;
    }
    uint32_t i = (uint32_t)mix64(key) & m->mask;
    while (m->slots[i].val >= 0 && m->slots[i].key != key)
        i = (i + 1) & m->mask;
    if (m->slots[i].val < 0) m->n++;
    m->slots[i].key = key;
    m->slots[i].val = val;
    return 0;
}
