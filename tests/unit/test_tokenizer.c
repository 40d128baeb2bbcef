/*
 * test_tokenizer.c — the byte-level BPE tokenizer (src/tokenizer/tokenizer.h) on a small
 * hand-made vocabulary written to $LORA_TEST_TMP (or /tmp):
 *  - known encodings: merges, pre-token boundaries, contractions, white space runs, numbers,
 *    special tokens on and off, bytes that are not UTF-8;
 *  - the heap BPE against a naive rank-by-rank reference written here, on random words, with a
 *    merge table that is deliberately out of order;
 *  - decode(encode(x)) == x for thousands of random byte strings, and for long runs;
 *  - vocab.json + merges.txt, tokenizer.json with "a b" merges and with ["a", "b"] merges all
 *    giving the same ids;
 *  - each malformed-input error, with its status and the file (and line) in the message, and
 *    hundreds of randomly damaged files loading or failing cleanly.
 * The real GPT-2 vocabulary is checked against the reference encoder in tests/tokenizer/.
 */
#include "tokenizer/tokenizer.h"

#include "io/fileutil.h"
#include "test_helper.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- random numbers ---- */

static uint64_t rng_state = 0x243F6A8885A308D3ull;

static uint32_t rng_u32(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

/* ---- GPT-2's byte map, written independently of the library ---- */

static char byte_form[256][3]; /* UTF-8 of each byte's code point, NUL-terminated */
static int  byte_base_id[256]; /* its id in GPT-2's base order */

static void init_byte_forms(void) {
    int order[256], n = 0, extra = 0;
    for (int b = 0; b < 256; b++) {
        if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
            order[n++] = b;
    }
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        if (!printable) order[n++] = b;
    }
    for (int i = 0; i < 256; i++) {
        int      b         = order[i];
        int      printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        unsigned cp        = printable ? (unsigned)b : 256u + (unsigned)extra++;
        if (cp < 0x80) {
            byte_form[b][0] = (char)cp;
            byte_form[b][1] = 0;
        } else {
            byte_form[b][0] = (char)(0xC0 | (cp >> 6));
            byte_form[b][1] = (char)(0x80 | (cp & 0x3F));
            byte_form[b][2] = 0;
        }
        byte_base_id[b] = i;
    }
}

/* ---- the hand-made tokenizer ---- */

/* Merges in rank order, in byte-level form ("Ġ" is a space). The first one is deliberately out
 * of order ("ab" is made only at rank 2), which is what tells merging all occurrences of one
 * rank before the next apart from merging pair by pair. Two results repeat ("aaa", "hello"). */
static const char *MERGES[][2] = {
    {"ab", "a"},
    {"h", "e"},
    {"a", "b"},
    {"l", "l"},
    {"he", "ll"},
    {"hell", "o"},
    {"\xC4\xA0", "w"},
    {"o", "r"},
    {"\xC4\xA0w", "or"},
    {"\xC4\xA0wor", "l"},
    {"\xC4\xA0worl", "d"},
    {"a", "a"},
    {"1", "2"},
    {"aa", "a"},
    {"a", "aa"},
    {"e", "l"},
    {"l", "o"},
    {"el", "lo"},
    {"h", "ello"},
    {"o", "l"},
    {"ol", "ol"},
    {"\"", "\\"},
};
#define N_MERGES ((int)(sizeof MERGES / sizeof MERGES[0]))

#define MAX_TOKENS 512
static char vocab_form[MAX_TOKENS][32];
static int  n_tokens;
static int  eot_id;

static int find_form(const char *f) {
    for (int i = 0; i < n_tokens; i++)
        if (strcmp(vocab_form[i], f) == 0) return i;
    return -1;
}

static void build_vocab(void) {
    n_tokens = 0;
    for (int i = 0; i < 256; i++) {
        for (int b = 0; b < 256; b++)
            if (byte_base_id[b] == i) strcpy(vocab_form[n_tokens++], byte_form[b]);
    }
    for (int m = 0; m < N_MERGES; m++) {
        char cat[64];
        snprintf(cat, sizeof cat, "%s%s", MERGES[m][0], MERGES[m][1]);
        if (find_form(cat) < 0) strcpy(vocab_form[n_tokens++], cat);
    }
    eot_id = n_tokens;
    strcpy(vocab_form[n_tokens++], "<|endoftext|>");
}

static void json_string(FILE *fp, const char *s) {
    fputc('"', fp);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', fp);
        fputc(*s, fp);
    }
    fputc('"', fp);
}

static char tmp_root[1024];

static void make_dir(char *out, size_t n, const char *name) {
    snprintf(out, n, "%s/%s", tmp_root, name);
    lora_mkdirs(out, NULL);
    char        p[1200];
    const char *files[] = {"vocab.json", "merges.txt", "tokenizer.json"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", out, files[i]);
        unlink(p);
    }
}

static void write_text(const char *dir, const char *name, const char *text) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *fp = fopen(p, "wb");
    if (!fp) {
        fprintf(stderr, "cannot write %s\n", p);
        exit(1);
    }
    fputs(text, fp);
    fclose(fp);
}

static void write_vocab_json(FILE *fp) {
    fputs("{", fp);
    for (int i = 0; i < n_tokens; i++) {
        fputs(i ? ",\n " : "\n ", fp);
        json_string(fp, vocab_form[i]);
        fprintf(fp, ": %d", i);
    }
    fputs("\n}\n", fp);
}

static void write_vocab_merges(const char *dir) {
    char p[1200];
    snprintf(p, sizeof p, "%s/vocab.json", dir);
    FILE *fp = fopen(p, "wb");
    write_vocab_json(fp);
    fclose(fp);
    snprintf(p, sizeof p, "%s/merges.txt", dir);
    fp = fopen(p, "wb");
    fputs("#version: 0.2\n", fp);
    for (int m = 0; m < N_MERGES; m++)
        fprintf(fp, "%s %s\n", MERGES[m][0], MERGES[m][1]);
    fclose(fp);
}

static void write_tokenizer_json(const char *dir, int pair_merges) {
    char p[1200];
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    FILE *fp = fopen(p, "wb");
    fprintf(fp,
            "{\"version\": \"1.0\", \"added_tokens\": [{\"id\": %d, \"content\": "
            "\"<|endoftext|>\", \"special\": true}], \"normalizer\": null,\n"
            "\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, "
            "\"use_regex\": true},\n\"model\": {\"type\": \"BPE\", \"dropout\": null, "
            "\"vocab\": ",
            eot_id);
    write_vocab_json(fp);
    fputs(", \"merges\": [", fp);
    for (int m = 0; m < N_MERGES; m++) {
        fputs(m ? ",\n" : "\n", fp);
        if (pair_merges) {
            fputc('[', fp);
            json_string(fp, MERGES[m][0]);
            fputs(", ", fp);
            json_string(fp, MERGES[m][1]);
            fputc(']', fp);
        } else {
            char s[80];
            snprintf(s, sizeof s, "%s %s", MERGES[m][0], MERGES[m][1]);
            json_string(fp, s);
        }
    }
    fputs("]}}\n", fp);
    fclose(fp);
}

/* ---- a naive reference BPE for one pre-token ---- */

/* Ids of bytes[0..n) by the reference algorithm: find the adjacent pair of lowest rank, merge
 * every occurrence of it left to right, repeat. Returns the count written to ids. */
static int naive_bpe(const unsigned char *bytes, int n, int *ids) {
    static char sym[4096][64];
    int         k = 0;
    for (int i = 0; i < n; i++)
        strcpy(sym[k++], byte_form[bytes[i]]);
    for (;;) {
        int best = -1;
        for (int i = 0; i + 1 < k; i++) {
            for (int m = N_MERGES - 1; m >= 0; m--) { /* a pair listed twice keeps its last rank */
                if (!strcmp(sym[i], MERGES[m][0]) && !strcmp(sym[i + 1], MERGES[m][1])) {
                    if (best < 0 || m < best) best = m;
                    break;
                }
            }
        }
        if (best < 0) break;
        int j = 0;
        for (int i = 0; i < k;) {
            if (i + 1 < k && !strcmp(sym[i], MERGES[best][0]) &&
                !strcmp(sym[i + 1], MERGES[best][1])) {
                snprintf(sym[j++], 64, "%s%s", MERGES[best][0], MERGES[best][1]);
                i += 2;
            } else {
                if (j != i) memcpy(sym[j], sym[i], 64);
                j++;
                i++;
            }
        }
        k = j;
    }
    for (int i = 0; i < k; i++)
        ids[i] = find_form(sym[i]);
    return k;
}

/* ---- helpers over the API ---- */

static int encode_eq(lora_tokenizer *tok, const char *text, size_t len, uint32_t flags,
                     const int *want, size_t n_want) {
    int32_t   *ids;
    size_t     n;
    lora_error err;
    if (lora_tokenizer_encode(tok, text, len, flags, &ids, &n, &err) != LORA_OK) {
        fprintf(stderr, "encode failed: %s\n", err.msg);
        return 0;
    }
    int ok = n == n_want;
    for (size_t i = 0; ok && i < n; i++)
        ok = ids[i] == want[i];
    if (!ok) { /* the first ids of each, enough to see where they part */
        fprintf(stderr, "  got %zu ids:", n);
        for (size_t i = 0; i < n && i < 24; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n  want %zu ids:", n_want);
        for (size_t i = 0; i < n_want && i < 24; i++)
            fprintf(stderr, " %d", want[i]);
        fputc('\n', stderr);
    }
    free(ids);
    return ok;
}

static int round_trips(lora_tokenizer *tok, const char *text, size_t len, uint32_t flags) {
    int32_t   *ids;
    size_t     n, back_len;
    char      *back;
    lora_error err;
    if (lora_tokenizer_encode(tok, text, len, flags, &ids, &n, &err) != LORA_OK) return 0;
    int ok = lora_tokenizer_decode(tok, ids, n, &back, &back_len, &err) == LORA_OK &&
             back_len == len && memcmp(back, text, len) == 0;
    if (ok) free(back);
    free(ids);
    return ok;
}

static int same_ids(lora_tokenizer *a, lora_tokenizer *b, const char *text, size_t len) {
    int32_t   *ia, *ib;
    size_t     na, nb;
    lora_error err;
    if (lora_tokenizer_encode(a, text, len, LORA_ENCODE_SPECIAL, &ia, &na, &err)) return 0;
    if (lora_tokenizer_encode(b, text, len, LORA_ENCODE_SPECIAL, &ib, &nb, &err)) {
        free(ia);
        return 0;
    }
    int ok = na == nb && (na == 0 || memcmp(ia, ib, na * sizeof *ia) == 0);
    free(ia);
    free(ib);
    return ok;
}

#define B(c) byte_base_id[(unsigned char)(c)]
#define T(s) find_form(s)
#define SP "\xC4\xA0"

/* ---- tests ---- */

static void test_known(lora_tokenizer *tok) {
    struct {
        const char *text;
        uint32_t    flags;
        int         ids[16];
        int         n;
    } cases[] = {
        {"hello world", 0, {T("hello"), T(SP "world")}, 2},
        {"Hello world", 0, {B('H'), B('e'), T("ll"), B('o'), T(SP "world")}, 5},
        {"abab", 0, {T("ab"), T("ab")}, 2},
        {"aaaaa", 0, {T("aa"), T("aaa")}, 2},
        {"12345", 0, {T("12"), B('3'), B('4'), B('5')}, 4},
        {"I'm", 0, {B('I'), B('\''), B('m')}, 3},
        {"a  b", 0, {B('a'), B(' '), B(' '), B('b')}, 4},
        {"a \n b", 0, {B('a'), B(' '), B('\n'), B(' '), B('b')}, 5},
        {"hello<|endoftext|> world", LORA_ENCODE_SPECIAL, {T("hello"), eot_id, T(SP "world")}, 3},
        {"<|endoftext|><|endoftext|>", LORA_ENCODE_SPECIAL, {eot_id, eot_id}, 2},
        {"a\xFF"
         "b",
         0,
         {B('a'), B(0xFF), B('b')},
         3},
        {" \xFF!", 0, {B(' '), B(0xFF), B('!')}, 3},
        {"\"\\", 0, {T("\"\\")}, 1},
        {"", 0, {0}, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        test_condf(encode_eq(tok, cases[i].text, strlen(cases[i].text), cases[i].flags,
                             cases[i].ids, (size_t)cases[i].n),
                   "encode of case %zu ('%s')", i, cases[i].text);
    }

    /* special tokens off: plain text, no end-of-text id */
    int32_t    *ids;
    size_t      n;
    lora_error  err;
    const char *s = "x<|endoftext|>y";
    test_cond("encode without LORA_ENCODE_SPECIAL",
              lora_tokenizer_encode(tok, s, strlen(s), 0, &ids, &n, &err) == LORA_OK);
    int has_eot = 0;
    for (size_t i = 0; i < n; i++)
        has_eot |= ids[i] == eot_id;
    test_cond("special token treated as text when not asked for", !has_eot && n > 3);
    free(ids);

    test_cond("n_vocab", lora_tokenizer_n_vocab(tok) == n_tokens);
    test_cond("eos", lora_tokenizer_eos(tok) == eot_id);
    test_cond("token_to_id", lora_tokenizer_token_to_id(tok, SP "world") == T(SP "world"));
    test_cond("token_to_id of a missing token", lora_tokenizer_token_to_id(tok, "zzz") == -1);
    const char *form = lora_tokenizer_id_to_token(tok, T(SP "w"));
    test_cond("id_to_token", form && strcmp(form, SP "w") == 0);
    size_t      len;
    const char *bytes = lora_tokenizer_id_to_bytes(tok, T(SP "w"), &len);
    test_cond("id_to_bytes", bytes && len == 2 && memcmp(bytes, " w", 2) == 0);
    bytes = lora_tokenizer_id_to_bytes(tok, eot_id, &len);
    test_cond("id_to_bytes of the special token", bytes && len == 13);
    test_cond("id_to_token out of range",
              !lora_tokenizer_id_to_token(tok, n_tokens) && !lora_tokenizer_id_to_token(tok, -1));

    int32_t bad[] = {T("hello"), n_tokens};
    char   *text;
    test_cond("decode of an id past the vocabulary is LORA_ERR_ARG",
              lora_tokenizer_decode(tok, bad, 2, &text, &len, &err) == LORA_ERR_ARG && !text);
    bad[1] = -5;
    test_cond("decode of a negative id is LORA_ERR_ARG",
              lora_tokenizer_decode(tok, bad, 2, &text, &len, &err) == LORA_ERR_ARG);
}

static void test_against_naive(lora_tokenizer *tok) {
    static const char alphabet[] = "abhelor";
    int               mismatches = 0;
    for (int t = 0; t < 3000; t++) {
        unsigned char w[64];
        int           n = 1 + (int)(rng_u32() % 40);
        for (int i = 0; i < n; i++)
            w[i] = (unsigned char)alphabet[rng_u32() % 7];
        int want[64];
        int k = naive_bpe(w, n, want);
        mismatches += !encode_eq(tok, (const char *)w, (size_t)n, 0, want, (size_t)k);
    }
    test_condf(mismatches == 0, "%d random words differ from the naive BPE", mismatches);

    /* long words: the same, and no quadratic blow-up on the library side */
    static unsigned char w[4000];
    static int           want[4000];
    for (int i = 0; i < 4000; i++)
        w[i] = (unsigned char)"ab"[rng_u32() % 2];
    int k = naive_bpe(w, 4000, want);
    test_cond("a 4000-byte word matches the naive BPE",
              encode_eq(tok, (const char *)w, 4000, 0, want, (size_t)k));
}

static void test_round_trips(lora_tokenizer *tok) {
    static const char *pieces[] = {"hello",
                                   " world",
                                   "<|endoftext|>",
                                   "<|endo",
                                   "\xFF",
                                   "\xC3\xA9",
                                   "\xE2\x82",
                                   "\xE2\x82\xAC",
                                   "\xF0\x9F\x98",
                                   "\xF0\x9F\x98\x80",
                                   " ",
                                   "  ",
                                   "\n",
                                   "\t",
                                   "'s",
                                   "'",
                                   "12",
                                   "\xED\xA0\x80",
                                   "\xC0\x80",
                                   "\xEF\xBB\xBF",
                                   "\xC2\xA0",
                                   "\xE3\x80\x80",
                                   "\x00",
                                   "!!",
                                   "a"};
    int                n_pieces = (int)(sizeof pieces / sizeof pieces[0]);
    int                failures = 0;
    char               buf[512];
    for (int t = 0; t < 3000; t++) {
        size_t len  = 0;
        int    mode = t % 2; /* random bytes, or random pieces */
        int    n    = (int)(rng_u32() % 40);
        for (int i = 0; i < n; i++) {
            if (mode == 0) {
                buf[len++] = (char)(rng_u32() & 0xFF);
            } else {
                int    p  = (int)(rng_u32() % (uint32_t)n_pieces);
                size_t pl = p == n_pieces - 3 ? 1 : strlen(pieces[p]); /* "\x00": 1 byte */
                memcpy(buf + len, pieces[p], pl);
                len += pl;
            }
        }
        failures += !round_trips(tok, buf, len, t % 3 ? LORA_ENCODE_SPECIAL : 0);
    }
    test_condf(failures == 0, "%d of 3000 random byte strings do not round-trip", failures);

    /* long runs: one pre-token each, far beyond the word cache */
    size_t     big    = 1 << 20;
    char      *run    = malloc(big + 1);
    const char fill[] = {' ', 'a', '7', '\xFF', '\n'};
    for (size_t f = 0; f < sizeof fill; f++) {
        memset(run, fill[f], big);
        run[big] = 'x';
        test_condf(round_trips(tok, run, big + 1, LORA_ENCODE_SPECIAL),
                   "a 1 MiB run of byte 0x%02X round-trips", (unsigned char)fill[f]);
    }
    free(run);
}

static lora_tokenizer *load_ok(const char *dir) {
    lora_tokenizer *tok = NULL;
    lora_error      err;
    lora_status     st = lora_tokenizer_load(dir, &tok, &err);
    test_condf(st == LORA_OK, "load %s: %s", dir, st == LORA_OK ? "" : err.msg);
    return tok;
}

static void test_formats(lora_tokenizer *vm) {
    char d1[1100], d2[1100];
    make_dir(d1, sizeof d1, "tok_json_str");
    write_tokenizer_json(d1, 0);
    make_dir(d2, sizeof d2, "tok_json_pair");
    write_tokenizer_json(d2, 1);
    lora_tokenizer *a = load_ok(d1), *b = load_ok(d2);
    if (!a || !b) {
        lora_tokenizer_free(a);
        lora_tokenizer_free(b);
        return;
    }
    const char *texts[] = {"hello world<|endoftext|>abab aaaa 1234 \xFF\"\\ ol olol",
                           "Hello, world! It's 12 o'clock.\n\n  hello  \t\n"};
    for (int i = 0; i < 2; i++) {
        test_condf(same_ids(vm, a, texts[i], strlen(texts[i])),
                   "vocab+merges and tokenizer.json (string merges) agree on text %d", i);
        test_condf(same_ids(vm, b, texts[i], strlen(texts[i])),
                   "vocab+merges and tokenizer.json (pair merges) agree on text %d", i);
    }
    test_cond("eos from tokenizer.json", lora_tokenizer_eos(a) == eot_id);
    lora_tokenizer_free(a);
    lora_tokenizer_free(b);
}

/* Loads dir and expects status st with every needle in the message. */
static void expect_error(const char *dir, lora_status st, const char *needle1, const char *needle2,
                         const char *what) {
    lora_tokenizer *tok = (lora_tokenizer *)1;
    lora_error      err = {0};
    lora_status     got = lora_tokenizer_load(dir, &tok, &err);
    int             ok  = got == st && tok == NULL && strstr(err.msg, needle1) &&
             (!needle2 || strstr(err.msg, needle2)) && !strchr(err.msg, '\n');
    test_condf(ok, "%s: got status %d, message '%s'", what, (int)got, err.msg);
    if (got == LORA_OK) lora_tokenizer_free(tok);
}

static void test_errors(void) {
    char d[1100];
    make_dir(d, sizeof d, "tok_err");
    expect_error(d, LORA_ERR_MISSING, "no tokenizer.json", NULL, "empty directory");

    write_text(d, "vocab.json", "{\"a\": 0}");
    expect_error(d, LORA_ERR_MISSING, "merges.txt", NULL, "merges.txt missing");

    write_text(d, "merges.txt", "#version: 0.2\n");
    write_text(d, "vocab.json", "{\"a\": 0,\n \"b\": }");
    expect_error(d, LORA_ERR_FORMAT, "vocab.json", "line 2", "malformed vocab.json");
    write_text(d, "vocab.json", "{\"a\": 0} x");
    expect_error(d, LORA_ERR_FORMAT, "vocab.json", "malformed JSON", "trailing bytes");
    write_text(d, "vocab.json", "[1, 2]");
    expect_error(d, LORA_ERR_FORMAT, "vocab.json", "not a JSON object", "vocab.json an array");
    write_text(d, "vocab.json", "{\"a\": -1}");
    expect_error(d, LORA_ERR_FORMAT, "vocab.json", "valid id", "negative id");
    write_text(d, "vocab.json", "{\"a\": 1.5}");
    expect_error(d, LORA_ERR_FORMAT, "vocab.json", "valid id", "fractional id");
    write_text(d, "vocab.json", "{\"a\": \"0\"}");
    expect_error(d, LORA_ERR_FORMAT, "vocab.json", "valid id", "id as a string");
    write_text(d, "vocab.json", "{\"a\": 99999999999}");
    expect_error(d, LORA_ERR_FORMAT, "vocab.json", "valid id", "huge id");
    write_text(d, "vocab.json", "{\"a\": 1000000}");
    expect_error(d, LORA_ERR_FORMAT, "vocab.json", "far beyond", "sparse id");
    write_text(d, "vocab.json", "{\"a\": 0, \"b\": 0}");
    expect_error(d, LORA_ERR_FORMAT, "vocab.json", "id 0 is given to both", "duplicate id");
    write_text(d, "vocab.json", "{\"a\": 0, \"a\": 1}");
    expect_error(d, LORA_ERR_FORMAT, "vocab.json", "appears twice", "duplicate token");
    write_text(d, "vocab.json", "{}");
    expect_error(d, LORA_ERR_FORMAT, "vocab.json", "empty", "empty vocabulary");

    write_text(d, "vocab.json", "{\"a\": 0, \"b\": 1, \"ab\": 2, \"c\": 3}");
    write_text(d, "merges.txt", "#version: 0.2\na b\na b c\n");
    expect_error(d, LORA_ERR_FORMAT, "merges.txt:3:", "two tokens", "merge with three parts");
    write_text(d, "merges.txt", "a b\nab\n");
    expect_error(d, LORA_ERR_FORMAT, "merges.txt:2:", "two tokens", "merge with one part");
    write_text(d, "merges.txt", "a  b\n");
    expect_error(d, LORA_ERR_FORMAT, "merges.txt:1:", "two tokens", "merge with two spaces");
    write_text(d, "merges.txt", "a b\r\n\r\na zz\r\n");
    expect_error(d, LORA_ERR_FORMAT, "merges.txt:3:", "'zz' is not in the vocabulary",
                 "merge of an unknown token");
    write_text(d, "merges.txt", "#version: 0.2\nb a\n");
    expect_error(d, LORA_ERR_FORMAT, "merges.txt:2:", "merged token 'ba'",
                 "merge whose result is not in the vocabulary");
    write_text(d, "merges.txt", "a b\nab c\n");
    expect_error(d, LORA_ERR_FORMAT, "merges.txt:2:", "'abc'", "merged token missing");

    /* a vocabulary without byte tokens loads, but cannot encode what it cannot spell */
    write_text(d, "merges.txt", "a b\n");
    lora_tokenizer *tok;
    lora_error      err;
    test_cond("tiny vocabulary loads", lora_tokenizer_load(d, &tok, &err) == LORA_OK);
    if (tok) {
        int32_t *ids = (int32_t *)1;
        size_t   n   = 7;
        test_cond("encoding a byte with no token is LORA_ERR_UNSUPPORTED",
                  lora_tokenizer_encode(tok, "abz", 3, 0, &ids, &n, &err) == LORA_ERR_UNSUPPORTED &&
                      ids == NULL && n == 0 && strstr(err.msg, "0x7A"));
        int want[] = {2};
        test_cond("tiny vocabulary encodes what it can", encode_eq(tok, "ab", 2, 0, want, 1));
        lora_tokenizer_free(tok);
    }

    /* tokenizer.json */
    make_dir(d, sizeof d, "tok_err_json");
    static const struct {
        const char *json;
        lora_status st;
        const char *needle;
    } bad[] = {
        {"{\"model\": ", LORA_ERR_FORMAT, "malformed JSON"},
        {"{\"x\": 1}", LORA_ERR_FORMAT, "no \"model\""},
        {"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", LORA_ERR_UNSUPPORTED,
         "WordPiece"},
        {"{\"pre_tokenizer\": {\"type\": \"Metaspace\"}, \"model\": {\"type\": \"BPE\", "
         "\"vocab\": {\"a\": 0}, \"merges\": []}}",
         LORA_ERR_UNSUPPORTED, "pre-tokenizer"},
        {"{\"normalizer\": {\"type\": \"NFC\"}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}, "
         "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
         LORA_ERR_UNSUPPORTED, "normalizer"},
        {"{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", "
         "\"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}",
         LORA_ERR_FORMAT, "merge 0: the merged token 'ab'"},
        {"{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", "
         "\"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\", \"a q\"]}}",
         LORA_ERR_FORMAT, "merge 1: 'q' is not in the vocabulary"},
        {"{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", "
         "\"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [[\"a\", \"b\", \"c\"]]}}",
         LORA_ERR_FORMAT, "merge 0 must be"},
        {"{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", "
         "\"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"ab\"]}}",
         LORA_ERR_FORMAT, "merge 0 must be"},
        {"{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", "
         "\"vocab\": {\"a\": 0}}}",
         LORA_ERR_FORMAT, "merges"},
        {"{\"added_tokens\": [{\"id\": 5, \"content\": \"a\"}], \"pre_tokenizer\": {\"type\": "
         "\"ByteLevel\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
         LORA_ERR_FORMAT, "added token 'a' has id 5"},
        {"{\"added_tokens\": [{\"id\": 0, \"content\": \"<s>\"}], \"pre_tokenizer\": {\"type\": "
         "\"ByteLevel\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
         LORA_ERR_FORMAT, "id 0 is given to both"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_text(d, "tokenizer.json", bad[i].json);
        char what[64];
        snprintf(what, sizeof what, "bad tokenizer.json %zu", i);
        expect_error(d, bad[i].st, "tokenizer.json", bad[i].needle, what);
    }
}

/* Damaged files: random byte changes and truncations of a good tokenizer.json and merges.txt
 * must either load (and then encode) or fail with a one-line message naming the file. */
static void test_damaged(void) {
    char good[1100], d[1100];
    make_dir(good, sizeof good, "tok_json_str");
    write_tokenizer_json(good, 0);
    write_vocab_merges(good);
    make_dir(d, sizeof d, "tok_damaged");
    const char *names[] = {"tokenizer.json", "merges.txt"};
    int         bad_msgs = 0, loaded = 0;
    for (int t = 0; t < 400; t++) {
        const char *name = names[t % 2];
        char        path[1200];
        size_t      len;
        char       *data;
        snprintf(path, sizeof path, "%s/%s", good, name);
        if (lora_read_file(path, &data, &len, NULL) != LORA_OK) continue;
        if (t % 4 < 2) {
            for (int k = 1 + (int)(rng_u32() % 4); k > 0; k--) {
                data[rng_u32() % len] = "\"{}[]:, 0a\\\xFF"[rng_u32() % 13];
            }
        } else {
            len = rng_u32() % len;
        }
        make_dir(d, sizeof d, "tok_damaged");
        if (t % 2) { /* merges.txt is only read beside a vocab.json */
            char v[1200];
            snprintf(v, sizeof v, "%s/vocab.json", good);
            char  *vd;
            size_t vl;
            if (lora_read_file(v, &vd, &vl, NULL) == LORA_OK) {
                snprintf(v, sizeof v, "%s/vocab.json", d);
                lora_write_file_atomic(v, vd, vl, NULL);
                free(vd);
            }
        }
        snprintf(path, sizeof path, "%s/%s", d, name);
        lora_write_file_atomic(path, data, len, NULL);
        free(data);

        lora_tokenizer *tok;
        lora_error      err = {0};
        if (lora_tokenizer_load(d, &tok, &err) == LORA_OK) {
            loaded++;
            round_trips(tok, "hello world abab", 16, LORA_ENCODE_SPECIAL);
            lora_tokenizer_free(tok);
        } else {
            bad_msgs += !strstr(err.msg, name) || strchr(err.msg, '\n') != NULL;
        }
    }
    test_condf(bad_msgs == 0, "%d damaged files gave an error that does not name the file",
               bad_msgs);
    test_condf(loaded < 400, "all %d damaged files loaded", loaded);
}

int main(void) {
    const char *root = getenv("LORA_TEST_TMP");
    snprintf(tmp_root, sizeof tmp_root, "%s/test_tokenizer.%ld", root && *root ? root : "/tmp",
             (long)getpid());
    if (lora_mkdirs(tmp_root, NULL) != LORA_OK) {
        fprintf(stderr, "cannot create %s\n", tmp_root);
        return 1;
    }
    init_byte_forms();
    build_vocab();

    char dir[1100];
    make_dir(dir, sizeof dir, "tok_vm");
    write_vocab_merges(dir);
    lora_tokenizer *tok = load_ok(dir);
    if (tok) {
        test_known(tok);
        test_against_naive(tok);
        test_round_trips(tok);
        test_formats(tok);
        lora_tokenizer_free(tok);
    }
    test_errors();
    test_damaged();
    return test_report("test_tokenizer");
}
