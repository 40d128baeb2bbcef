/*
 * test_bpe_train.c — the byte-level BPE trainer (lora_bpe_trainer_*, src/tokenizer/tokenizer.h):
 *  - every merge equals that of a naive trainer written here, which recounts all pairs before
 *    each merge (same tie-break), on generated text made of lower-case words and single spaces;
 *  - the result loads (tokenizer.json and vocab.json + merges.txt giving the same ids) and
 *    round-trips both the training text and random bytes;
 *  - training twice gives byte-identical files; feeding a file in blocks equals feeding it whole;
 *  - min_freq stops early; misuse and bad parameters are refused.
 * Files go to $LORA_TEST_TMP (or /tmp).
 */
#include "tokenizer/tokenizer.h"

#include "io/fileutil.h"
#include "test_helper.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t rng_state = 0x13198A2E03707344ull;

static uint32_t rng_u32(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

/* ---- generated text: words from a Zipf-like lexicon, separated by single spaces ---- */

#define N_LEX 400
static char lexicon[N_LEX][16];

static void make_lexicon(void) {
    static const char *syl[] = {"ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "e",
                                "a",  "an", "th", "er", "in", "qu", "o",  "zy", "x"};
    for (int i = 0; i < N_LEX; i++) {
        int n         = 1 + (int)(rng_u32() % 4);
        lexicon[i][0] = '\0';
        for (int k = 0; k < n; k++)
            strcat(lexicon[i], syl[rng_u32() % 18]);
    }
}

/* n_words words; a newline instead of the space every `line` words (0: never). */
static char *make_text(int n_words, int line, size_t *len) {
    char  *buf = malloc((size_t)n_words * 17 + 1);
    size_t k   = 0;
    for (int i = 0; i < n_words; i++) {
        uint32_t r = rng_u32() % (N_LEX * 4);
        int      w = (int)(r % N_LEX);
        if (r >= N_LEX) w = (int)(rng_u32() % 40); /* the 40 first words are frequent */
        if (i) buf[k++] = (line && i % line == 0) ? '\n' : ' ';
        size_t n = strlen(lexicon[w]);
        memcpy(buf + k, lexicon[w], n);
        k += n;
    }
    buf[k] = '\0';
    *len   = k;
    return buf;
}

/* ---- a naive trainer: full recount before every merge ---- */

typedef struct naive_word {
    int     sym[64];
    int     n;
    int64_t count;
} naive_word;

static int base_id(unsigned char b) { /* GPT-2's base order: printable bytes first */
    int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    int id        = 0;
    for (int c = 0; c < 256; c++) {
        int pc = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE);
        if (printable ? (pc && c < b) : (pc || c < b)) id++;
    }
    return id;
}

#define NAIVE_MAX_SYMS 700

/* Merges (as byte strings "left|right") of the naive trainer on the pre-tokens of text, which
 * holds only letters and single spaces (pre-tokens: the first word, then " word" each), until
 * n_new_max new tokens exist or no pair occurs min_freq times. */
static int naive_train(const char *text, int n_new_max, int64_t min_freq, char (*out)[64]) {
    static naive_word words[8192];
    static char       sym_bytes[NAIVE_MAX_SYMS][48];
    int               n_words = 0, n_syms = 256;
    for (int b = 0; b < 256; b++) {
        int id           = base_id((unsigned char)b);
        sym_bytes[id][0] = (char)b;
        sym_bytes[id][1] = '\0';
    }
    const char *p = text;
    while (*p) {
        const char *q = p + 1;
        while (*q && *q != ' ')
            q++;
        int n = (int)(q - p), found = -1;
        for (int w = 0; w < n_words && found < 0; w++) {
            if (words[w].n != n) continue;
            int same = 1;
            for (int i = 0; i < n && same; i++)
                same = words[w].sym[i] == base_id((unsigned char)p[i]);
            if (same) found = w;
        }
        if (found < 0) {
            found        = n_words++;
            words[found] = (naive_word){.n = n, .count = 0};
            for (int i = 0; i < n; i++)
                words[found].sym[i] = base_id((unsigned char)p[i]);
        }
        words[found].count++;
        p = q;
    }

    static int64_t count[NAIVE_MAX_SYMS][NAIVE_MAX_SYMS];
    int            n_merges = 0, n_new = 0;
    while (n_new < n_new_max) {
        for (int l = 0; l < n_syms; l++)
            memset(count[l], 0, (size_t)n_syms * sizeof count[l][0]);
        for (int w = 0; w < n_words; w++)
            for (int i = 0; i + 1 < words[w].n; i++)
                count[words[w].sym[i]][words[w].sym[i + 1]] += words[w].count;
        int64_t best = 0;
        int     bl = -1, br = -1;
        for (int l = 0; l < n_syms; l++) { /* ties: smaller left, then smaller right */
            for (int r = 0; r < n_syms; r++) {
                if (count[l][r] > best) {
                    best = count[l][r];
                    bl   = l;
                    br   = r;
                }
            }
        }
        if (best < min_freq || best == 0) break;
        char cat[48]; /* tokens here are at most one word: 17 bytes */
        snprintf(cat, sizeof cat, "%.23s%.23s", sym_bytes[bl], sym_bytes[br]);
        int c = -1;
        for (int s = 0; s < n_syms && c < 0; s++)
            if (!strcmp(sym_bytes[s], cat)) c = s;
        if (c < 0) {
            c = n_syms++;
            strcpy(sym_bytes[c], cat);
            n_new++;
        }
        snprintf(out[n_merges++], 64, "%.31s|%.31s", sym_bytes[bl], sym_bytes[br]);
        for (int w = 0; w < n_words; w++) {
            int j = 0;
            for (int i = 0; i < words[w].n;) {
                if (i + 1 < words[w].n && words[w].sym[i] == bl && words[w].sym[i + 1] == br) {
                    words[w].sym[j++] = c;
                    i += 2;
                } else {
                    words[w].sym[j++] = words[w].sym[i++];
                }
            }
            words[w].n = j;
        }
    }
    return n_merges;
}

/* ---- helpers ---- */

static char tmp_root[1024];

static char *read_all(const char *dir, const char *name, size_t *len) {
    char path[1200], *data = NULL;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (lora_read_file(path, &data, len, NULL) != LORA_OK) return NULL;
    return data;
}

static int same_file(const char *d1, const char *d2, const char *name) {
    size_t n1, n2;
    char  *a = read_all(d1, name, &n1), *b = read_all(d2, name, &n2);
    int    ok = a && b && n1 == n2 && memcmp(a, b, n1) == 0;
    free(a);
    free(b);
    return ok;
}

/* merges.txt line i (0-based, after the version line) as "left|right" with 'Ġ' read back as
 * a space; 0 when there is no such line. */
static int merge_line(const char *merges, int i, char *out, size_t outsz) {
    const char *p = strchr(merges, '\n');
    for (int k = 0; p && k < i; k++)
        p = strchr(p + 1, '\n');
    if (!p || !p[1]) return 0;
    p++;
    size_t k = 0;
    for (; *p && *p != '\n' && k + 1 < outsz; p++) {
        if ((unsigned char)p[0] == 0xC4 && (unsigned char)p[1] == 0xA0) {
            out[k++] = ' ';
            p++;
        } else {
            out[k++] = *p == ' ' ? '|' : *p;
        }
    }
    out[k] = '\0';
    return 1;
}

static lora_bpe_trainer *train_text(const char *text, size_t len, int32_t vocab, int64_t min_freq,
                                    const char *dir) {
    lora_bpe_trainer *t;
    lora_error        err;
    if (lora_bpe_trainer_init(&t, &err) != LORA_OK) return NULL;
    lora_bpe_params p = {.vocab_size = vocab, .min_freq = min_freq};
    size_t          h = len / 2;
    while (h < len && text[h] != ' ')
        h++; /* feed in two parts, cut before a space */
    lora_status st = lora_bpe_trainer_feed(t, text, h, &err);
    if (st == LORA_OK) st = lora_bpe_trainer_feed(t, text + h, len - h, &err);
    if (st == LORA_OK) st = lora_bpe_trainer_train(t, &p, &err);
    if (st == LORA_OK && dir) st = lora_bpe_trainer_save(t, dir, &err);
    test_condf(st == LORA_OK, "training: %s", st == LORA_OK ? "" : err.msg);
    return t;
}

static int round_trips(lora_tokenizer *tok, const char *text, size_t len, size_t *n_tokens) {
    int32_t   *ids;
    size_t     n, back_len;
    char      *back;
    lora_error err;
    if (lora_tokenizer_encode(tok, text, len, LORA_ENCODE_SPECIAL, &ids, &n, &err)) return 0;
    int ok = lora_tokenizer_decode(tok, ids, n, &back, &back_len, &err) == LORA_OK &&
             back_len == len && memcmp(back, text, len) == 0;
    if (ok) free(back);
    if (n_tokens) *n_tokens = n;
    free(ids);
    return ok;
}

/* ---- tests ---- */

static void test_against_naive(void) {
    size_t len;
    char  *text = make_text(6000, 0, &len);
    char   dir[1100];
    snprintf(dir, sizeof dir, "%s/bpe_a", tmp_root);
    lora_bpe_trainer *t = train_text(text, len, 600, 2, dir);
    if (!t) {
        free(text);
        return;
    }

    static char want[600][64];
    int         n_want = naive_train(text, 600 - 257, 2, want);
    test_condf(lora_bpe_trainer_n_merges(t) == n_want, "%d merges, naive trainer made %d",
               (int)lora_bpe_trainer_n_merges(t), n_want);
    size_t mlen;
    char  *merges = read_all(dir, "merges.txt", &mlen);
    test_cond("merges.txt written", merges != NULL);
    int first_bad = -1;
    for (int i = 0; merges && i < n_want && first_bad < 0; i++) {
        char got[64];
        if (!merge_line(merges, i, got, sizeof got) || strcmp(got, want[i]) != 0) first_bad = i;
    }
    test_condf(first_bad < 0, "merge %d differs from the naive trainer's ('%s')", first_bad,
               first_bad >= 0 ? want[first_bad] : "");
    test_cond("merges.txt starts with the version line",
              merges && strncmp(merges, "#version: 0.2\n", 14) == 0);
    free(merges);

    /* the result loads, from tokenizer.json and from vocab.json + merges.txt alike */
    lora_tokenizer *tok = NULL, *tok_vm = NULL;
    lora_error      err;
    test_cond("trained tokenizer.json loads", lora_tokenizer_load(dir, &tok, &err) == LORA_OK);
    char dir_vm[1100];
    snprintf(dir_vm, sizeof dir_vm, "%s/bpe_a_vm", tmp_root);
    lora_mkdirs(dir_vm, NULL);
    size_t n1, n2;
    char  *v = read_all(dir, "vocab.json", &n1), *m = read_all(dir, "merges.txt", &n2);
    char   path[1200];
    snprintf(path, sizeof path, "%s/vocab.json", dir_vm);
    lora_write_file_atomic(path, v, n1, NULL);
    snprintf(path, sizeof path, "%s/merges.txt", dir_vm);
    lora_write_file_atomic(path, m, n2, NULL);
    free(v);
    free(m);
    test_cond("trained vocab.json + merges.txt load",
              lora_tokenizer_load(dir_vm, &tok_vm, &err) == LORA_OK);
    if (tok && tok_vm) {
        int32_t nv = lora_bpe_trainer_n_vocab(t);
        test_cond("vocabulary size", lora_tokenizer_n_vocab(tok) == nv && nv == 600);
        test_cond("<|endoftext|> is the last id",
                  lora_tokenizer_eos(tok) == nv - 1 && lora_tokenizer_eos(tok_vm) == nv - 1);
        size_t n_tok = 0;
        test_cond("training text round-trips", round_trips(tok, text, len, &n_tok));
        test_condf(n_tok * 2 < len, "the text compresses: %zu tokens for %zu bytes", n_tok, len);

        int32_t *ia, *ib;
        size_t   na, nb;
        lora_tokenizer_encode(tok, text, len, LORA_ENCODE_SPECIAL, &ia, &na, &err);
        lora_tokenizer_encode(tok_vm, text, len, LORA_ENCODE_SPECIAL, &ib, &nb, &err);
        test_cond("tokenizer.json and vocab.json + merges.txt give the same ids",
                  na == nb && memcmp(ia, ib, na * sizeof *ia) == 0);
        free(ia);
        free(ib);

        int  failures = 0;
        char buf[256];
        for (int k = 0; k < 500; k++) {
            size_t n = rng_u32() % sizeof buf;
            for (size_t i = 0; i < n; i++)
                buf[i] = (char)(rng_u32() & 0xFF);
            failures += !round_trips(tok, buf, n, NULL);
        }
        test_condf(failures == 0, "%d random byte strings do not round-trip", failures);
        const char *eot = "ka<|endoftext|>lo";
        test_cond("<|endoftext|> round-trips", round_trips(tok, eot, strlen(eot), NULL));
    }
    lora_tokenizer_free(tok);
    lora_tokenizer_free(tok_vm);

    /* the same input again: byte-identical files */
    char dir2[1100];
    snprintf(dir2, sizeof dir2, "%s/bpe_b", tmp_root);
    lora_bpe_trainer *t2 = train_text(text, len, 600, 2, dir2);
    test_cond("deterministic vocab.json", same_file(dir, dir2, "vocab.json"));
    test_cond("deterministic merges.txt", same_file(dir, dir2, "merges.txt"));
    test_cond("deterministic tokenizer.json", same_file(dir, dir2, "tokenizer.json"));
    lora_bpe_trainer_free(t2);

    /* a high min_freq stops early */
    lora_bpe_trainer *t3 = train_text(text, len, 5000, 50, NULL);
    if (t3) {
        test_cond("min_freq stops training early",
                  lora_bpe_trainer_n_vocab(t3) < 5000 && lora_bpe_trainer_n_vocab(t3) > 257);
    }
    lora_bpe_trainer_free(t3);
    lora_bpe_trainer_free(t);
    free(text);
}

/* Tiny random corpora over three letters, trained to exhaustion: this is where a merge can
 * spell a token that already exists ("a"+"bc" after "ab"+"c"), which must reuse its id. */
static void test_tiny_corpora(void) {
    int mismatches = 0, reused = 0;
    for (int trial = 0; trial < 300; trial++) {
        char   text[600];
        size_t len     = 0;
        int    n_words = 5 + (int)(rng_u32() % 40);
        for (int w = 0; w < n_words; w++) {
            if (w) text[len++] = ' ';
            int n = 1 + (int)(rng_u32() % 9);
            for (int i = 0; i < n; i++)
                text[len++] = "abc"[rng_u32() % 3];
        }
        text[len]           = '\0';
        lora_bpe_trainer *t = train_text(text, len, 400, 1, NULL);
        if (!t) continue;
        static char want[400][64];
        int         n_want = naive_train(text, 400 - 257, 1, want);
        int         n      = lora_bpe_trainer_n_merges(t);
        reused += n > lora_bpe_trainer_n_vocab(t) - 257;
        int ok = n == n_want;
        for (int i = 0; ok && i < n; i++) {
            const char *l, *r;
            size_t      nl, nr;
            char        got[64];
            lora_bpe_trainer_merge(t, i, &l, &nl, &r, &nr);
            snprintf(got, sizeof got, "%.*s|%.*s", (int)nl, l, (int)nr, r);
            ok = strcmp(got, want[i]) == 0;
        }
        mismatches += !ok;
        lora_bpe_trainer_free(t);
    }
    test_condf(mismatches == 0, "%d of 300 tiny corpora train differently from the naive trainer",
               mismatches);
    printf("tiny corpora: %d of 300 reused an existing token\n", reused);
}

static void test_feed_file(void) {
    size_t len;
    char  *text = make_text(900000, 12, &len); /* ~5 MB: several read blocks */
    char   path[1200];
    snprintf(path, sizeof path, "%s/corpus.txt", tmp_root);
    test_cond("corpus written", lora_write_file_atomic(path, text, len, NULL) == LORA_OK);

    lora_bpe_trainer *a, *b;
    lora_error        err;
    lora_bpe_trainer_init(&a, &err);
    lora_bpe_trainer_init(&b, &err);
    test_cond("feed_file", lora_bpe_trainer_feed_file(a, path, &err) == LORA_OK);
    test_cond("feed", lora_bpe_trainer_feed(b, text, len, &err) == LORA_OK);
    int64_t by[2], wo[2], un[2];
    lora_bpe_trainer_stats(a, &by[0], &wo[0], &un[0]);
    lora_bpe_trainer_stats(b, &by[1], &wo[1], &un[1]);
    test_condf(by[0] == by[1] && wo[0] == wo[1] && un[0] == un[1] && by[0] == (int64_t)len,
               "block-wise file reading counts the same: %lld/%lld bytes, %lld/%lld words, "
               "%lld/%lld distinct",
               (long long)by[0], (long long)by[1], (long long)wo[0], (long long)wo[1],
               (long long)un[0], (long long)un[1]);
    lora_bpe_params p = {.vocab_size = 1000, .min_freq = 2};
    char            d1[1100], d2[1100];
    snprintf(d1, sizeof d1, "%s/bpe_file", tmp_root);
    snprintf(d2, sizeof d2, "%s/bpe_mem", tmp_root);
    test_cond("train a", lora_bpe_trainer_train(a, &p, &err) == LORA_OK &&
                             lora_bpe_trainer_save(a, d1, &err) == LORA_OK);
    test_cond("train b", lora_bpe_trainer_train(b, &p, &err) == LORA_OK &&
                             lora_bpe_trainer_save(b, d2, &err) == LORA_OK);
    test_cond("file and memory give the same merges", same_file(d1, d2, "merges.txt"));

    /* misuse */
    test_cond("training twice is LORA_ERR_STATE",
              lora_bpe_trainer_train(a, &p, &err) == LORA_ERR_STATE);
    test_cond("feeding after training is LORA_ERR_STATE",
              lora_bpe_trainer_feed(a, "x", 1, &err) == LORA_ERR_STATE);
    lora_bpe_trainer_free(a);
    lora_bpe_trainer_free(b);
    free(text);

    lora_bpe_trainer *c;
    lora_bpe_trainer_init(&c, &err);
    test_cond("saving before training is LORA_ERR_STATE",
              lora_bpe_trainer_save(c, d1, &err) == LORA_ERR_STATE);
    snprintf(path, sizeof path, "%s/no-such-file.txt", tmp_root);
    test_cond("a missing corpus is LORA_ERR_MISSING",
              lora_bpe_trainer_feed_file(c, path, &err) == LORA_ERR_MISSING &&
                  strstr(err.msg, "no-such-file.txt"));
    lora_bpe_params bad = {.vocab_size = 256, .min_freq = 2};
    test_cond("vocab_size 256 is LORA_ERR_ARG",
              lora_bpe_trainer_train(c, &bad, &err) == LORA_ERR_ARG);
    bad = (lora_bpe_params){.vocab_size = 300, .min_freq = 0};
    test_cond("min_freq 0 is LORA_ERR_ARG", lora_bpe_trainer_train(c, &bad, &err) == LORA_ERR_ARG);
    lora_bpe_trainer_free(c);
}

static void test_empty_corpus(void) {
    lora_bpe_trainer *t;
    lora_error        err;
    lora_bpe_trainer_init(&t, &err);
    lora_bpe_params p = {.vocab_size = 300, .min_freq = 1};
    char            dir[1100];
    snprintf(dir, sizeof dir, "%s/bpe_empty", tmp_root);
    test_cond("an empty corpus trains to the byte tokens",
              lora_bpe_trainer_train(t, &p, &err) == LORA_OK &&
                  lora_bpe_trainer_n_vocab(t) == 257 &&
                  lora_bpe_trainer_save(t, dir, &err) == LORA_OK);
    lora_tokenizer *tok = NULL;
    test_cond("and loads", lora_tokenizer_load(dir, &tok, &err) == LORA_OK);
    if (tok) test_cond("and round-trips", round_trips(tok, "any text \xFF", 10, NULL));
    lora_tokenizer_free(tok);
    lora_bpe_trainer_free(t);
}

int main(void) {
    const char *root = getenv("LORA_TEST_TMP");
    snprintf(tmp_root, sizeof tmp_root, "%s/test_bpe_train.%ld", root && *root ? root : "/tmp",
             (long)getpid());
    if (lora_mkdirs(tmp_root, NULL) != LORA_OK) {
        fprintf(stderr, "cannot create %s\n", tmp_root);
        return 1;
    }
    make_lexicon();
    test_against_naive();
    test_tiny_corpora();
    test_feed_file();
    test_empty_corpus();
    return test_report("test_bpe_train");
}
