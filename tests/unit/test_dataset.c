/*
 * test_dataset.c — JSONL datasets and batching: ids, targets and prompt masking; truncation;
 * the exact padded and packed layouts of a small case; shuffling (a permutation, new each epoch,
 * reproducible); resuming a batcher from a saved state; the split; every malformed-line error
 * with its line number and the skip_bad counts; empty data; the token cache (reused, rebuilt on
 * change, a corrupt cache ignored).
 *
 * The tokenizer is byte-level with no merges: byte b is id b and <|endoftext|> is 256, so the
 * expected ids of any text are its bytes.
 */
#include "data/dataset.h"
#include "io/fileutil.h"
#include "test_helper.h"

#include <dirent.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define EOS 256

static char g_dir[1024];
static char g_tok[1100];

/* ---- fixtures ---- */

static void write_text(const char *path, const char *s, size_t n) {
    if (lora_write_file_atomic(path, s, n, NULL) != LORA_OK) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
}

static void put(const char *name, const char *s) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    write_text(path, s, strlen(s));
}

static const char *at(const char *name) {
    static char path[4][1200];
    static int  k;
    k = (k + 1) % 4;
    snprintf(path[k], sizeof path[k], "%s/%s", g_dir, name);
    return path[k];
}

/* GPT-2's byte-to-unicode table: printable bytes stand for themselves, the others for 256+. */
static unsigned byte_char(int b) {
    if ((b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff))
        return (unsigned)b;
    unsigned n = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= '!' && c <= '~') || (c >= 0xa1 && c <= 0xac) || (c >= 0xae && c <= 0xff))) n++;
    return 256 + n;
}

static size_t put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    o[0] = (char)(0xc0 | (cp >> 6));
    o[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
}

/* vocab.json (256 byte tokens + <|endoftext|>) and merges.txt (no merges) in dir. */
static void write_byte_tokenizer(const char *dir) {
    static char buf[16384];
    size_t      n = 0;
    buf[n++]      = '{';
    for (int b = 0; b < 256; b++) {
        buf[n++]    = '"';
        unsigned cp = byte_char(b);
        if (cp == '"' || cp == '\\') buf[n++] = '\\';
        n += put_utf8(buf + n, cp);
        n += (size_t)snprintf(buf + n, sizeof buf - n, "\": %d, ", b);
    }
    n += (size_t)snprintf(buf + n, sizeof buf - n, "\"<|endoftext|>\": 256}\n");
    char path[1200];
    lora_mkdirs(dir, NULL);
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    write_text(path, buf, n);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    write_text(path, "#version: 0.2\n", 14);
}

static lora_dataset_params params(int32_t seq_len, int32_t skip_bad, const char *cache) {
    lora_dataset_params p;
    p.seq_len   = seq_len;
    p.skip_bad  = skip_bad;
    p.cache_dir = cache;
    return p;
}

/* Checks example i against ids given as a byte string plus EOS. */
static int example_is(const lora_dataset *d, int64_t i, const char *bytes, int eos,
                      int32_t prompt_len) {
    const int32_t *ids;
    int64_t        n;
    int32_t        pl;
    if (lora_dataset_example(d, i, &ids, &n, &pl, NULL) != LORA_OK) return 0;
    size_t len = strlen(bytes);
    if (n != (int64_t)len + (eos ? 1 : 0) || pl != prompt_len) return 0;
    for (size_t k = 0; k < len; k++)
        if (ids[k] != (unsigned char)bytes[k]) return 0;
    return !eos || ids[len] == EOS;
}

static int arr_eq(const int32_t *a, const int32_t *b, int n) {
    for (int i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* ---- tests ---- */

static void test_examples(lora_tokenizer *tok) {
    put("ex.jsonl", "{\"text\": \"ab\"}\n"
                    "{\"prompt\": \"xy\", \"completion\": \"z\", \"extra\": [1, 2]}\n"
                    "\n"
                    "   \r\n"
                    "{\"text\": \"<|endoftext|>\\u00e9\\n\"}\r\n"
                    "{\"prompt\": \"\", \"completion\": \"q\"}\n"
                    "{\"prompt\": \"p\", \"completion\": \"\"}");
    lora_dataset_params p = params(64, 0, NULL);
    lora_dataset       *d;
    lora_dataset_stats  s;
    lora_error          err;
    lora_status         st = lora_dataset_load(at("ex.jsonl"), tok, &p, &d, &s, &err);
    test_condf(st == LORA_OK, "load: %s", err.msg);
    if (st != LORA_OK) return;
    test_cond("5 examples", lora_dataset_n_examples(d) == 5 && s.n_examples == 5);
    test_cond("5 non-empty lines", s.n_lines == 5 && s.n_bad == 0 && s.n_truncated == 0);
    test_cond("text: bytes + eos", example_is(d, 0, "ab", 1, 0));
    test_cond("prompt + completion + eos", example_is(d, 1, "xyz", 1, 2));
    test_cond("special token text is ordinary bytes, escapes decoded",
              example_is(d, 2, "<|endoftext|>\xc3\xa9\n", 1, 0));
    test_cond("empty prompt", example_is(d, 3, "q", 1, 0));
    test_cond("empty completion: the model learns to stop", example_is(d, 4, "p", 1, 1));
    test_cond("n_tokens", s.n_tokens == 3 + 4 + 17 + 2 + 2 && lora_dataset_n_tokens(d) == 28);
    /* loss positions: 2, 2 (z, eos), 16, 1, 1 */
    test_condf(s.n_loss_tokens == 22, "n_loss_tokens %lld", (long long)s.n_loss_tokens);
    test_cond("example out of range",
              lora_dataset_example(d, 5, NULL, NULL, NULL, &err) == LORA_ERR_ARG);

    /* invalid UTF-8 passes through byte for byte */
    put("utf8.jsonl", "{\"text\": \"\xff\xfe\xc3\"}\n");
    lora_dataset *u;
    st = lora_dataset_load(at("utf8.jsonl"), tok, &p, &u, &s, &err);
    test_condf(st == LORA_OK, "invalid utf-8: %s", err.msg);
    if (st == LORA_OK) test_cond("raw bytes", example_is(u, 0, "\xff\xfe\xc3", 1, 0));
    lora_dataset_free(u);

    /* padded rows: inputs ids[0..n-2], targets ids[1..n-1], prompt targets -1 */
    lora_batcher *b;
    st = lora_batcher_new(d, 2, 4, 0, 0, 1, &b, &err);
    test_condf(st == LORA_OK, "batcher: %s", err.msg);
    if (st == LORA_OK) {
        int32_t tk[8], tg[8];
        int64_t nl;
        int64_t ep         = lora_batcher_next(b, tk, tg, &nl);
        int32_t want_tk[8] = {'a', 'b', EOS, EOS, 'x', 'y', 'z', EOS};
        int32_t want_tg[8] = {'b', EOS, -1, -1, -1, 'z', EOS, -1};
        test_cond("padded tokens", arr_eq(tk, want_tk, 8));
        test_cond("padded targets, prompt masked", arr_eq(tg, want_tg, 8));
        test_cond("n_loss 4, epoch 0", nl == 4 && ep == 0);
        test_cond("batches per epoch", lora_batcher_batches_per_epoch(b) == 3);
        lora_batcher_free(b);
    }
    lora_dataset_free(d);
}

static void test_truncation(lora_tokenizer *tok) {
    put("tr.jsonl", "{\"text\": \"abcdef\"}\n"                         /* 7 ids -> 4 */
                    "{\"prompt\": \"abcde\", \"completion\": \"f\"}\n" /* prompt 5 >= 4: drop */
                    "{\"prompt\": \"abc\", \"completion\": \"def\"}\n" /* cut to abcd, 1 loss */
                    "{\"prompt\": \"a\", \"completion\": \"b\"}\n");   /* fits */
    lora_dataset_params p = params(3, 0, NULL);
    lora_dataset       *d;
    lora_dataset_stats  s;
    lora_error          err;
    lora_status         st = lora_dataset_load(at("tr.jsonl"), tok, &p, &d, &s, &err);
    test_condf(st == LORA_OK, "load: %s", err.msg);
    if (st != LORA_OK) return;
    test_condf(s.n_truncated == 3 && s.n_examples == 3, "truncated %lld, examples %lld",
               (long long)s.n_truncated, (long long)s.n_examples);
    test_cond("cut text", example_is(d, 0, "abcd", 0, 0));
    test_cond("cut prompt/completion keeps its prompt length", example_is(d, 1, "abcd", 0, 3));
    test_cond("short one intact", example_is(d, 2, "ab", 1, 1));
    test_cond("loss tokens 3 + 1 + 2", s.n_loss_tokens == 6);
    test_cond("tokens 4 + 4 + 3", s.n_tokens == 11);
    lora_dataset_free(d);

    /* every example's prompt fills the window: nothing left */
    put("tr2.jsonl", "{\"prompt\": \"abcdefgh\", \"completion\": \"x\"}\n");
    st = lora_dataset_load(at("tr2.jsonl"), tok, &p, &d, &s, &err);
    test_condf(st == LORA_ERR_FORMAT && strstr(err.msg, "no examples") &&
                   strstr(err.msg, "tr2.jsonl"),
               "all dropped: %d %s", st, err.msg);
    test_cond("no dataset", d == NULL);
}

static void test_layouts(lora_tokenizer *tok) {
    put("lay.jsonl", "{\"text\": \"ab\"}\n"
                     "{\"prompt\": \"xy\", \"completion\": \"z\"}\n"
                     "{\"text\": \"c\"}\n");
    lora_dataset_params p = params(16, 0, NULL);
    lora_dataset       *d;
    lora_error          err;
    if (lora_dataset_load(at("lay.jsonl"), tok, &p, &d, NULL, &err) != LORA_OK) {
        test_condf(0, "load: %s", err.msg);
        return;
    }
    int32_t       tk[8], tg[8];
    int64_t       nl, ep;
    lora_batcher *b;

    /* padding, B=2, T=4: ex0 ex1 | ex2 pad */
    lora_batcher_new(d, 2, 4, 0, 0, 7, &b, &err);
    ep = lora_batcher_next(b, tk, tg, &nl);
    {
        int32_t wk[8] = {'a', 'b', EOS, EOS, 'x', 'y', 'z', EOS};
        int32_t wg[8] = {'b', EOS, -1, -1, -1, 'z', EOS, -1};
        test_cond("pad batch 0", arr_eq(tk, wk, 8) && arr_eq(tg, wg, 8) && nl == 4 && ep == 0);
    }
    ep = lora_batcher_next(b, tk, tg, &nl);
    {
        int32_t wk[8] = {'c', EOS, EOS, EOS, EOS, EOS, EOS, EOS};
        int32_t wg[8] = {EOS, -1, -1, -1, -1, -1, -1, -1};
        test_cond("pad batch 1: padding row",
                  arr_eq(tk, wk, 8) && arr_eq(tg, wg, 8) && nl == 1 && ep == 0);
    }
    ep = lora_batcher_next(b, tk, tg, &nl);
    test_cond("wraps to epoch 1", ep == 1 && tk[0] == 'a');
    lora_batcher_state s;
    lora_batcher_get_state(b, &s);
    test_cond("state after one batch of epoch 1", s.epoch == 1 && s.cursor == 2 && s.seed == 7);
    lora_batcher_free(b);

    /* padding with T below the example length: the row is cut */
    lora_batcher_new(d, 1, 2, 0, 0, 7, &b, &err);
    lora_batcher_next(b, tk, tg, &nl);
    lora_batcher_next(b, tk, tg, &nl);
    test_cond("cut row", tk[0] == 'x' && tk[1] == 'y' && tg[0] == -1 && tg[1] == 'z' && nl == 1);
    lora_batcher_free(b);

    /* packing, B=2, T=3: stream a b E x y z E c E (9 ids, 8 inputs -> 3 rows) */
    lora_batcher_new(d, 2, 3, 1, 0, 7, &b, &err);
    test_cond("packed batches per epoch", lora_batcher_batches_per_epoch(b) == 2);
    ep = lora_batcher_next(b, tk, tg, &nl);
    {
        int32_t wk[6] = {'a', 'b', EOS, 'x', 'y', 'z'};
        int32_t wg[6] = {'b', EOS, -1, -1, 'z', EOS};
        test_cond("pack batch 0", arr_eq(tk, wk, 6) && arr_eq(tg, wg, 6) && nl == 4 && ep == 0);
    }
    ep = lora_batcher_next(b, tk, tg, &nl);
    {
        int32_t wk[6] = {EOS, 'c', EOS, EOS, EOS, EOS};
        int32_t wg[6] = {-1, EOS, -1, -1, -1, -1};
        test_cond("pack batch 1: end of epoch",
                  arr_eq(tk, wk, 6) && arr_eq(tg, wg, 6) && nl == 1 && ep == 0);
    }
    ep = lora_batcher_next(b, tk, tg, &nl);
    test_cond("pack wraps", ep == 1 && tk[0] == 'a' && nl == 4);
    lora_batcher_free(b);

    /* packing with T = 1: every input with a successor is one row */
    lora_batcher_new(d, 1, 1, 1, 0, 7, &b, &err);
    test_cond("T=1 rows", lora_batcher_batches_per_epoch(b) == 8);
    int64_t total = 0;
    for (int i = 0; i < 8; i++) {
        ep = lora_batcher_next(b, tk, tg, &nl);
        total += nl;
        test_cond("T=1 epoch 0", ep == 0);
    }
    test_cond("T=1: every loss position once", total == 5);
    test_cond("T=1: then epoch 1", lora_batcher_next(b, tk, tg, &nl) == 1);
    lora_batcher_free(b);

    /* bad shapes */
    test_cond("B=0", lora_batcher_new(d, 0, 4, 0, 0, 1, &b, &err) == LORA_ERR_ARG && !b);
    test_cond("T=0", lora_batcher_new(d, 1, 0, 1, 0, 1, &b, &err) == LORA_ERR_ARG);
    lora_dataset_free(d);
}

/* n examples "<i>" as text: the first id of a row is 'A' + i / 26, the second 'a' + i % 26. */
static lora_dataset *numbered(lora_tokenizer *tok, const char *name, int n) {
    size_t cap = (size_t)n * 32 + 1, len = 0;
    char  *buf = malloc(cap);
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(buf + len, cap - len, "{\"text\": \"%c%cxyz\"}\n", 'A' + i / 26,
                                'a' + i % 26);
    write_text(at(name), buf, len);
    free(buf);
    lora_dataset_params p = params(16, 0, NULL);
    lora_dataset       *d = NULL;
    lora_error          err;
    if (lora_dataset_load(at(name), tok, &p, &d, NULL, &err) != LORA_OK)
        test_condf(0, "load %s: %s", name, err.msg);
    return d;
}

static int row_index(const int32_t *row) {
    return (row[0] - 'A') * 26 + (row[1] - 'a');
}

/* The example order of `epochs` epochs, B = 1. */
static void epoch_orders(const lora_dataset *d, uint64_t seed, int n, int epochs, int *order) {
    lora_batcher *b;
    int32_t       tk[8], tg[8];
    int64_t       nl;
    lora_batcher_new(d, 1, 8, 0, 1, seed, &b, NULL);
    for (int i = 0; i < n * epochs; i++) {
        int64_t ep = lora_batcher_next(b, tk, tg, &nl);
        order[i]   = row_index(tk);
        if (ep != i / n) order[i] = -1;
    }
    lora_batcher_free(b);
}

static void test_shuffle(lora_tokenizer *tok) {
    enum { N = 50, E = 3 };
    lora_dataset *d = numbered(tok, "sh.jsonl", N);
    if (!d) return;
    int a[N * E], c[N * E], o[N * E];
    epoch_orders(d, 123, N, E, a);
    epoch_orders(d, 123, N, E, c);
    epoch_orders(d, 124, N, E, o);
    for (int e = 0; e < E; e++) {
        int seen[N] = {0}, ok = 1;
        for (int i = 0; i < N; i++) {
            int k = a[e * N + i];
            if (k < 0 || k >= N || seen[k]++) ok = 0;
        }
        test_condf(ok, "epoch %d is not a permutation", e);
    }
    test_cond("epochs differ", memcmp(a, a + N, sizeof(int) * N) != 0 &&
                                   memcmp(a + N, a + 2 * N, sizeof(int) * N) != 0);
    test_cond("not the file order", a[0] != 0 || a[1] != 1 || a[2] != 2 || a[3] != 3);
    test_cond("same seed, same order", memcmp(a, c, sizeof a) == 0);
    test_cond("other seed, other order", memcmp(a, o, sizeof a) != 0);
    lora_dataset_free(d);
}

/* Runs 10 batches; a second batcher resumed from the state after batch 4 must give 5..10. */
static void check_resume(const lora_dataset *d, int32_t B, int32_t T, int32_t pack,
                         int32_t shuffle) {
    enum { NB = 10 };
    int32_t           *tk = malloc(sizeof(int32_t) * (size_t)(NB * B * T));
    int32_t           *tg = malloc(sizeof(int32_t) * (size_t)(NB * B * T));
    int32_t           *rk = malloc(sizeof(int32_t) * (size_t)(B * T));
    int32_t           *rg = malloc(sizeof(int32_t) * (size_t)(B * T));
    int64_t            ep[NB], nl[NB], n;
    lora_batcher_state saved;
    lora_batcher      *b, *r;
    lora_error         err;
    lora_batcher_new(d, B, T, pack, shuffle, 99, &b, &err);
    for (int i = 0; i < NB; i++) {
        ep[i] = lora_batcher_next(b, tk + i * B * T, tg + i * B * T, &nl[i]);
        if (i == 3) lora_batcher_get_state(b, &saved);
    }
    test_condf(ep[NB - 1] >= 1, "10 batches should cross an epoch (pack %d)", pack);
    lora_batcher_new(d, B, T, pack, shuffle, 5, &r, &err); /* the state brings the seed */
    lora_status st = lora_batcher_set_state(r, &saved, &err);
    test_condf(st == LORA_OK, "set_state: %s", err.msg);
    int same = 1;
    for (int i = 4; i < NB; i++) {
        int64_t e = lora_batcher_next(r, rk, rg, &n);
        if (e != ep[i] || n != nl[i] || !arr_eq(rk, tk + i * B * T, B * T) ||
            !arr_eq(rg, tg + i * B * T, B * T))
            same = 0;
    }
    test_condf(same, "resumed batches differ (pack %d, shuffle %d)", pack, shuffle);

    lora_batcher_state bad = saved;
    bad.cursor             = 1 << 30;
    test_cond("cursor past the data", lora_batcher_set_state(r, &bad, &err) == LORA_ERR_ARG);
    bad.cursor = 0;
    bad.epoch  = -1;
    test_cond("negative epoch", lora_batcher_set_state(r, &bad, &err) == LORA_ERR_ARG);
    lora_batcher_free(b);
    lora_batcher_free(r);
    free(tk);
    free(tg);
    free(rk);
    free(rg);
}

static void test_resume(lora_tokenizer *tok) {
    lora_dataset *d = numbered(tok, "res.jsonl", 11);
    if (!d) return;
    check_resume(d, 3, 4, 0, 1); /* 4 batches per epoch */
    check_resume(d, 3, 4, 1, 1); /* 66 ids: 17 rows, 6 batches per epoch */
    check_resume(d, 2, 5, 1, 0);
    check_resume(d, 2, 5, 0, 0);

    /* a state at the very end of an epoch means the start of the next */
    lora_batcher      *b;
    lora_batcher_state s = {99, 0, 11};
    int32_t            tk[12], tg[12];
    int64_t            nl;
    lora_batcher_new(d, 3, 4, 0, 1, 99, &b, NULL);
    test_cond("cursor at the end", lora_batcher_set_state(b, &s, NULL) == LORA_OK);
    test_cond("is the next epoch", lora_batcher_next(b, tk, tg, &nl) == 1);
    lora_batcher_free(b);
    lora_dataset_free(d);
}

static void test_split(lora_tokenizer *tok) {
    enum { N = 100 };
    lora_dataset *d = numbered(tok, "sp.jsonl", N), *v = NULL, *d2 = numbered(tok, "sp.jsonl", N),
                 *v2 = NULL;
    if (!d || !d2) return;
    lora_error err;
    test_cond("split", lora_dataset_split(d, 0.2f, 5, &v, &err) == LORA_OK);
    test_cond("same seed", lora_dataset_split(d2, 0.2f, 5, &v2, &err) == LORA_OK);
    if (!v || !v2) return;
    test_condf(lora_dataset_n_examples(v) == 20 && lora_dataset_n_examples(d) == 80,
               "sizes %lld / %lld", (long long)lora_dataset_n_examples(v),
               (long long)lora_dataset_n_examples(d));
    test_cond("tokens add up", lora_dataset_n_tokens(v) + lora_dataset_n_tokens(d) == N * 6);
    int seen[N] = {0}, ok = 1, same = 1;
    for (int s = 0; s < 2; s++) {
        lora_dataset *x    = s ? v : d;
        int           prev = -1;
        for (int64_t i = 0; i < lora_dataset_n_examples(x); i++) {
            const int32_t *ids;
            int64_t        n;
            lora_dataset_example(x, i, &ids, &n, NULL, NULL);
            int k = row_index(ids);
            if (n != 6 || k < 0 || k >= N || seen[k]++ || k <= prev) ok = 0;
            prev = k;
        }
    }
    for (int k = 0; k < N; k++)
        if (seen[k] != 1) ok = 0;
    test_cond("disjoint, complete, file order kept", ok);
    for (int64_t i = 0; i < 20; i++) {
        const int32_t *a, *b;
        lora_dataset_example(v, i, &a, NULL, NULL, NULL);
        lora_dataset_example(v2, i, &b, NULL, NULL, NULL);
        if (row_index(a) != row_index(b)) same = 0;
    }
    test_cond("same seed, same split", same);

    lora_dataset *w = NULL;
    test_cond("frac 0", lora_dataset_split(d, 0.0f, 1, &w, &err) == LORA_ERR_ARG && !w);
    test_cond("frac 1", lora_dataset_split(d, 1.0f, 1, &w, &err) == LORA_ERR_ARG);
    test_cond("tiny frac keeps one", lora_dataset_split(d, 0.001f, 1, &w, &err) == LORA_OK &&
                                         lora_dataset_n_examples(w) == 1 &&
                                         lora_dataset_n_examples(d) == 79);
    lora_dataset_free(w);
    lora_dataset_free(v);
    lora_dataset_free(v2);
    lora_dataset_free(d);
    lora_dataset_free(d2);
}

static void test_bad_lines(lora_tokenizer *tok) {
    static const struct {
        const char *line, *want;
    } cases[] = {
        {"{\"text\": 5}", "\"text\" is not a string"},
        {"{\"prompt\": \"x\"}", "\"prompt\" without \"completion\""},
        {"{\"completion\": \"x\"}", "\"completion\" without \"prompt\""},
        {"{\"prompt\": 1, \"completion\": \"x\"}", "\"prompt\" is not a string"},
        {"{\"prompt\": \"x\", \"completion\": null}", "\"completion\" is not a string"},
        {"[1, 2]", "not a JSON object"},
        {"\"text\"", "not a JSON object"},
        {"{\"text\": \"a\"", "not valid JSON"},
        {"{text: \"a\"}", "not valid JSON"},
        {"{\"text\": \"a\"} {}", "text after the JSON value"},
        {"{}", "neither"},
        {"{\"txt\": \"a\"}", "neither"},
        {"{\"text\": \"\"}", "empty \"text\""},
        {"{\"prompt\": \"\", \"completion\": \"\"}", "empty example"},
        {"{\"text\": \"a\", \"prompt\": \"b\", \"completion\": \"c\"}", "both"},
        {"{\"text\": \"a\\u0000b\"}", "NUL"},
    };
    enum { NC = sizeof cases / sizeof cases[0] };
    lora_dataset_params p = params(32, 0, NULL);
    lora_dataset       *d;
    lora_dataset_stats  s;
    lora_error          err;
    char                buf[512], want[256];
    for (int i = 0; i < NC; i++) {
        int n = snprintf(buf, sizeof buf, "{\"text\": \"ok\"}\n\n%s\n{\"text\": \"ok\"}\n",
                         cases[i].line);
        write_text(at("bad.jsonl"), buf, (size_t)n);
        lora_status st = lora_dataset_load(at("bad.jsonl"), tok, &p, &d, &s, &err);
        snprintf(want, sizeof want, "%s:3: ", at("bad.jsonl"));
        test_condf(st == LORA_ERR_FORMAT && d == NULL && strstr(err.msg, want) == err.msg &&
                       strstr(err.msg, cases[i].want) && !strchr(err.msg, '\n'),
                   "case %d (%s): status %d, '%s'", i, cases[i].line, st, err.msg);
    }
    /* a raw NUL byte inside a line */
    static const char nul[] = "{\"text\": \"a\"}\n{\"text\": \"a\0b\"}\n";
    write_text(at("nul.jsonl"), nul, sizeof nul - 1);
    test_cond("raw NUL",
              lora_dataset_load(at("nul.jsonl"), tok, &p, &d, &s, &err) == LORA_ERR_FORMAT &&
                  strstr(err.msg, "nul.jsonl:2: "));

    /* skip_bad: every bad case in one file, between good lines */
    size_t cap = 8192, len = 0;
    char  *all = malloc(cap);
    for (int i = 0; i < NC; i++)
        len +=
            (size_t)snprintf(all + len, cap - len, "%s\n{\"text\": \"g%d\"}\n", cases[i].line, i);
    write_text(at("skip.jsonl"), all, len);
    free(all);
    p.skip_bad     = 1;
    lora_status st = lora_dataset_load(at("skip.jsonl"), tok, &p, &d, &s, &err);
    test_condf(st == LORA_OK, "skip_bad: %s", err.msg);
    test_condf(s.n_bad == NC && s.n_examples == NC && s.n_lines == 2 * NC,
               "skip_bad counts: bad %lld examples %lld lines %lld", (long long)s.n_bad,
               (long long)s.n_examples, (long long)s.n_lines);
    if (st == LORA_OK) test_cond("good lines kept", example_is(d, 1, "g1", 1, 0));
    lora_dataset_free(d);

    /* missing file */
    test_cond("missing file",
              lora_dataset_load(at("nope.jsonl"), tok, &p, &d, &s, &err) == LORA_ERR_MISSING);
    lora_dataset_params z = params(0, 0, NULL);
    test_cond("seq_len 0",
              lora_dataset_load(at("skip.jsonl"), tok, &z, &d, &s, &err) == LORA_ERR_ARG);
}

static void test_empty(lora_tokenizer *tok) {
    lora_dataset_params p = params(32, 1, NULL);
    lora_dataset       *d;
    lora_dataset_stats  s;
    lora_error          err;
    const char         *files[] = {"", "\n\n  \n", "{\"text\": 1}\n[]\n"};
    for (int i = 0; i < 3; i++) {
        put("empty.jsonl", files[i]);
        lora_status st = lora_dataset_load(at("empty.jsonl"), tok, &p, &d, &s, &err);
        test_condf(st == LORA_ERR_FORMAT && d == NULL &&
                       strstr(err.msg, "empty.jsonl: no examples"),
                   "empty case %d: %d '%s'", i, st, err.msg);
    }
}

/* The one .tokens file in dir (path into out); 0 if none or several. */
static int find_cache(const char *dir, char *out, size_t n) {
    DIR *dp    = opendir(dir);
    int  found = 0;
    if (!dp) return 0;
    struct dirent *e;
    while ((e = readdir(dp)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l > 7 && !strcmp(e->d_name + l - 7, ".tokens")) {
            snprintf(out, n, "%s/%s", dir, e->d_name);
            found++;
        }
    }
    closedir(dp);
    return found == 1;
}

static void remove_caches(const char *dir) {
    DIR *dp = opendir(dir);
    if (!dp) return;
    struct dirent *e;
    char           path[2400];
    while ((e = readdir(dp)) != NULL) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(dp);
}

/* Loads c.jsonl with the cache; returns from_cache, or -1 on failure; checks the ids. */
static int load_cached(lora_tokenizer *tok, const char *cache, int32_t seq_len, int skip_bad,
                       const char *first) {
    lora_dataset_params p = params(seq_len, skip_bad, cache);
    lora_dataset       *d;
    lora_dataset_stats  s;
    lora_error          err;
    lora_status         st = lora_dataset_load(at("c.jsonl"), tok, &p, &d, &s, &err);
    if (st != LORA_OK) {
        test_condf(0, "cached load: %s", err.msg);
        return -1;
    }
    test_condf(example_is(d, 0, first, 1, 0) || (int)strlen(first) > seq_len,
               "cached ids differ (from_cache %d)", s.from_cache);
    test_cond("prompt example", example_is(d, 1, "pc", 1, 1) || seq_len < 2);
    test_cond("counts", s.n_lines == 2 + (skip_bad ? 1 : 0) && s.n_examples == 2 &&
                            s.n_bad == (skip_bad ? 1 : 0));
    lora_dataset_free(d);
    return s.from_cache;
}

/* A vocabulary without some byte tokens (only a-z and space here) still caches datasets it can
 * encode: the tokenizer fingerprint does not need every byte. */
static void test_cache_partial_vocab(void) {
    char dir[1200], cache[1200], path[1300];
    snprintf(dir, sizeof dir, "%s/tok_az", g_dir);
    snprintf(cache, sizeof cache, "%s/cache_az", g_dir);
    lora_mkdirs(dir, NULL);
    char   buf[1024];
    size_t n = 0;
    buf[n++] = '{';
    n += (size_t)snprintf(buf + n, sizeof buf - n, "\"\u0120\": 0, ");
    for (int b = 'a'; b <= 'z'; b++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "\"%c\": %d, ", b, b - 'a' + 1);
    n += (size_t)snprintf(buf + n, sizeof buf - n, "\"<|endoftext|>\": 27}\n");
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    write_text(path, buf, n);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    write_text(path, "#version: 0.2\n", 14);
    lora_tokenizer *tok;
    lora_error      err;
    if (lora_tokenizer_load(dir, &tok, &err) != LORA_OK) {
        test_condf(0, "a-z tokenizer: %s", err.msg);
        return;
    }
    put("az.jsonl", "{\"text\": \"hello world\"}\n");
    lora_dataset_params p = params(32, 0, cache);
    for (int pass = 0; pass < 2; pass++) {
        lora_dataset      *d;
        lora_dataset_stats st;
        lora_status        s = lora_dataset_load(at("az.jsonl"), tok, &p, &d, &st, &err);
        test_condf(s == LORA_OK, "a-z vocabulary, pass %d: %s", pass, s ? err.msg : "ok");
        if (s != LORA_OK) break;
        test_condf(st.from_cache == pass, "a-z vocabulary: from_cache %d on pass %d",
                   st.from_cache, pass);
        lora_dataset_free(d);
    }
    lora_tokenizer_free(tok);
}

static void test_cache(lora_tokenizer *tok) {
    char cache[1200], cpath[2400];
    snprintf(cache, sizeof cache, "%s/cache/sub", g_dir);
    put("c.jsonl", "{\"text\": \"hello\"}\n{\"prompt\": \"p\", \"completion\": \"c\"}\n");
    test_cond("first load builds", load_cached(tok, cache, 32, 0, "hello") == 0);
    test_cond("one cache file", find_cache(cache, cpath, sizeof cpath));
    test_cond("second load uses it", load_cached(tok, cache, 32, 0, "hello") == 1);
    test_cond("another seq_len uses it too", load_cached(tok, cache, 3, 0, "hello") == 1);

    /* the file changes: a new key */
    put("c.jsonl", "{\"text\": \"world\"}\n{\"prompt\": \"p\", \"completion\": \"c\"}\n");
    test_cond("changed file rebuilds", load_cached(tok, cache, 32, 0, "world") == 0);
    test_cond("then uses the new cache", load_cached(tok, cache, 32, 0, "world") == 1);
    remove_caches(cache);
    test_cond("rebuilt after removal", load_cached(tok, cache, 32, 0, "world") == 0);
    if (!find_cache(cache, cpath, sizeof cpath)) return;

    /* corruptions: each is ignored, the data re-tokenized, and a good cache written back */
    char  *orig;
    size_t olen;
    if (lora_read_file(cpath, &orig, &olen, NULL) != LORA_OK) return;
    for (size_t cut = 0; cut < olen; cut += olen / 7 + 1) {
        write_text(cpath, orig, cut);
        test_condf(load_cached(tok, cache, 32, 0, "world") == 0, "truncated to %zu used", cut);
        test_cond("rewritten", load_cached(tok, cache, 32, 0, "world") == 1);
    }
    for (size_t i = 0; i < olen; i++) {
        char *bad = malloc(olen);
        memcpy(bad, orig, olen);
        bad[i] ^= (char)0x41;
        write_text(cpath, bad, olen);
        free(bad);
        int fc = load_cached(tok, cache, 32, 0, "world");
        test_condf(fc == 0, "byte %zu flipped: from_cache %d", i, fc);
    }
    char *longer = malloc(olen + 8);
    memcpy(longer, orig, olen);
    memset(longer + olen, 0, 8);
    write_text(cpath, longer, olen + 8);
    free(longer);
    test_cond("trailing bytes", load_cached(tok, cache, 32, 0, "world") == 0);
    free(orig);

    /* a cache built with skip_bad does not hide a bad line from a strict load */
    put("c.jsonl",
        "{\"text\": \"world\"}\n{\"text\": 3}\n{\"prompt\": \"p\", \"completion\": \"c\"}\n");
    test_cond("skip_bad build", load_cached(tok, cache, 32, 1, "world") == 0);
    test_cond("skip_bad reuse", load_cached(tok, cache, 32, 1, "world") == 1);
    lora_dataset_params p = params(32, 0, cache);
    lora_dataset       *d;
    lora_error          err;
    test_cond("strict load still fails at the line",
              lora_dataset_load(at("c.jsonl"), tok, &p, &d, NULL, &err) == LORA_ERR_FORMAT &&
                  strstr(err.msg, "c.jsonl:2: "));

    /* an unwritable cache directory is an error, not silence */
    put("blocker", "x");
    char blocked[1300];
    snprintf(blocked, sizeof blocked, "%s/blocker/cache", g_dir);
    p.cache_dir = blocked;
    p.skip_bad  = 1;
    test_cond("cache dir under a file",
              lora_dataset_load(at("c.jsonl"), tok, &p, &d, NULL, &err) != LORA_OK && d == NULL);
}

int main(void) {
    const char *base = getenv("LORA_TEST_TMP");
    snprintf(g_dir, sizeof g_dir, "%s/test_dataset.%d", base && base[0] ? base : "/tmp",
             (int)getpid());
    if (lora_mkdirs(g_dir, NULL) != LORA_OK) {
        fprintf(stderr, "cannot create %s\n", g_dir);
        return 1;
    }
    snprintf(g_tok, sizeof g_tok, "%s/tok", g_dir);
    write_byte_tokenizer(g_tok);
    lora_tokenizer *tok;
    lora_error      err;
    if (lora_tokenizer_load(g_tok, &tok, &err) != LORA_OK) {
        fprintf(stderr, "tokenizer: %s\n", err.msg);
        return 1;
    }
    test_cond("byte tokenizer",
              lora_tokenizer_n_vocab(tok) == 257 && lora_tokenizer_eos(tok) == EOS);

    test_examples(tok);
    test_truncation(tok);
    test_layouts(tok);
    test_shuffle(tok);
    test_resume(tok);
    test_split(tok);
    test_bad_lines(tok);
    test_cache_partial_vocab();
    test_empty(tok);
    test_cache(tok);

    lora_tokenizer_free(tok);
    return test_report("test_dataset");
}
