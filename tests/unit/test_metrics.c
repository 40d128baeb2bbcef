/*
 * test_metrics.c — BLEU, NIST, ROUGE-L, CIDEr-D and the slot error rate on small cases computed
 * by hand (each expected value is written as the formula it was derived from), the mteval
 * tokeniser, and the E2E file readers.
 */
#include "test_helper.h"

#include "data/e2e.h"
#include "eval/metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EPS 1e-9

/* A corpus of up to 8 segments with up to 4 references each, from literals. */
typedef struct corpus {
    const char      *hyps[8];
    const char      *refs[32];
    size_t           off[9];
    lora_eval_corpus c;
} corpus;

/* seg(c, hyp, ref1, ref2, ..., NULL) appends a segment. */
static void seg(corpus *c, const char *hyp, ...) {
    va_list ap;
    va_start(ap, hyp);
    size_t i   = c->c.n;
    c->hyps[i] = hyp;
    size_t k   = c->off[i];
    for (const char *r = va_arg(ap, const char *); r; r = va_arg(ap, const char *))
        c->refs[k++] = r;
    va_end(ap);
    c->off[i + 1] = k;
    c->c.n        = i + 1;
    c->c.hyps     = c->hyps;
    c->c.refs     = c->refs;
    c->c.ref_off  = c->off;
}

static double bleu_of(corpus *c, lora_bleu *b) {
    lora_error  err;
    lora_status st = lora_eval_bleu(&c->c, b, &err);
    test_condf(st == LORA_OK, "bleu failed: %s", err.msg);
    return b->bleu;
}

static void test_tokenize(void) {
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"The Eagle, a coffee-shop (cheap) costs £20-25.",
         "the|eagle|,|a|coffee-shop|(|cheap|)|costs|£20|-|25|."},
        {"It isn't 3.5 or 1,000 stars!", "it|isn't|3.5|or|1,000|stars|!"},
        {"  Tom &amp; Jerry&quot;s  café/bar  ", "tom|&|jerry|\"|s|café|/|bar"},
        {"end.", "end|."},
        {"", ""},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char     **t;
        size_t     n;
        lora_error err;
        test_cond("tokenize ok", lora_eval_tokenize(cases[k].in, &t, &n, &err) == LORA_OK);
        char joined[256] = "";
        for (size_t i = 0; i < n; i++) {
            if (i) strcat(joined, "|");
            strcat(joined, t[i]);
        }
        test_condf(!strcmp(joined, cases[k].out), "tokenize \"%s\": got \"%s\", want \"%s\"",
                   cases[k].in, joined, cases[k].out);
        lora_eval_tokens_free(t, n);
    }
}

static void test_bleu(void) {
    lora_bleu b;
    {
        corpus c = {0};
        seg(&c, "the cat sat on the mat", "the cat sat on the mat", NULL);
        test_condf(fabs(bleu_of(&c, &b) - 1.0) < EPS, "identical: %g", b.bleu);
    }
    { /* brevity: every precision 1, c = 4, r = 6 */
        corpus c = {0};
        seg(&c, "the cat sat on", "the cat sat on the mat", NULL);
        bleu_of(&c, &b);
        test_condf(fabs(b.bleu - exp(1.0 - 6.0 / 4.0)) < EPS, "brevity: %g", b.bleu);
        test_cond("brevity lengths", b.hyp_len == 4 && b.ref_len == 6);
        test_cond("brevity precisions", b.precision[0] == 1 && b.precision[3] == 1);
    }
    { /* no matching 4-gram: 0, with the lower orders still reported */
        corpus c = {0};
        seg(&c, "a b c d", "a b c e d", NULL);
        bleu_of(&c, &b);
        test_condf(b.bleu == 0.0, "zero 4-gram order: %g", b.bleu);
        test_condf(fabs(b.precision[1] - 2.0 / 3.0) < EPS && fabs(b.precision[2] - 0.5) < EPS &&
                       b.precision[3] == 0.0,
                   "zero-order precisions %g %g %g", b.precision[1], b.precision[2],
                   b.precision[3]);
    }
    { /* clipping (Papineni et al. 2002): "the" counts at most twice */
        corpus c = {0};
        seg(&c, "the the the the the the the", "the cat is on the mat", "there is a cat on the mat",
            NULL);
        bleu_of(&c, &b);
        test_condf(fabs(b.precision[0] - 2.0 / 7.0) < EPS, "clipped p1 %g", b.precision[0]);
        test_cond("clipped bleu 0", b.bleu == 0.0);
    }
    { /* two references, counts clipped per reference; closest lengths 6 and 4 tie -> 4 */
        corpus c = {0};
        seg(&c, "a b c d e", "a b c x y z", "b c d e", NULL);
        bleu_of(&c, &b);
        test_cond("tie to the shorter reference", b.ref_len == 4);
        test_condf(fabs(b.bleu - pow(0.5, 0.25)) < EPS, "multi-ref: %g", b.bleu);
        /* corpus pooling: add a short hypothesis against a long reference.
         * c = 5 + 4, r = 4 + 8; p1..p3 = 1, p4 = (1 + 1) / (2 + 1) */
        seg(&c, "a b c d", "a b c d e f g h", NULL);
        bleu_of(&c, &b);
        double want = exp(1.0 - 12.0 / 9.0) * pow(2.0 / 3.0, 0.25);
        test_condf(fabs(b.bleu - want) < EPS, "corpus pooling: %g want %g", b.bleu, want);
    }
    { /* case and punctuation are tokenised away */
        corpus c = {0};
        seg(&c, "The Eagle, near Burger King.", "the eagle , near burger king .", NULL);
        test_condf(fabs(bleu_of(&c, &b) - 1.0) < EPS, "tokenised: %g", b.bleu);
    }
}

static void test_nist(void) {
    lora_error err;
    double     v;
    { /* info(w) = log2(4 / 1) = 2 for each unigram, 0 for longer n-grams */
        corpus c = {0};
        seg(&c, "a b c d", "a b c d", NULL);
        test_cond("nist ok", lora_eval_nist(&c.c, &v, &err) == LORA_OK);
        test_condf(fabs(v - 2.0) < EPS, "nist identical: %g", v);
    }
    { /* ref "a a b": info(a) = log2(3/2), info(b) = log2(3), info(a b) = log2(2/1) = 1;
       * hyp "a b": p1 = log2(4.5) / 2, p2 = 1 / 1; ratio 2/3 -> penalty 0.5 */
        corpus c = {0};
        seg(&c, "a b", "a a b", NULL);
        lora_eval_nist(&c.c, &v, &err);
        double want = 0.5 * (log2(4.5) / 2.0 + 1.0);
        test_condf(fabs(v - want) < EPS, "nist short: %g want %g", v, want);
    }
    { /* two references "a b", "a c": counts a 2, b 1, c 1 (4 words), ab 1, ac 1;
       * info a = 1, b = c = 2, ab = ac = 1. hyp "a b c": p1 = 5/3, p2 = 1/2, p3 = 0/1;
       * average reference length 2 < 3: no penalty */
        corpus c = {0};
        seg(&c, "a b c", "a b", "a c", NULL);
        lora_eval_nist(&c.c, &v, &err);
        test_condf(fabs(v - 13.0 / 6.0) < EPS, "nist multi-ref: %g", v);
    }
}

static void test_rouge(void) {
    lora_error err;
    double     v, b2 = 1.44;
    corpus     c = {0};
    /* LCS("a b c d", "a c e d f") = 3: P = 3/4, R = 3/5 */
    seg(&c, "a b c d", "a c e d f", NULL);
    test_cond("rouge ok", lora_eval_rouge_l(&c.c, &v, &err) == LORA_OK);
    double f1 = (1 + b2) * 0.75 * 0.6 / (0.6 + b2 * 0.75);
    test_condf(fabs(v - f1) < EPS, "rouge single: %g want %g", v, f1);

    /* maxima over references taken separately: P = 3/4 (first), R = 2/2 (second) */
    corpus c2 = {0};
    seg(&c2, "a b c d", "a c e d f", "a b", NULL);
    lora_eval_rouge_l(&c2.c, &v, &err);
    double f2 = (1 + b2) * 0.75 * 1.0 / (1.0 + b2 * 0.75);
    test_condf(fabs(v - f2) < EPS, "rouge max: %g want %g", v, f2);

    /* averaged over segments; punctuation-only tokens do not count */
    seg(&c2, "x y.", "z", NULL);
    seg(&c2, "A, b.", "a b", NULL);
    lora_eval_rouge_l(&c2.c, &v, &err);
    test_condf(fabs(v - (f2 + 0 + 1) / 3) < EPS, "rouge mean: %g", v);
}

static void test_cider(void) {
    lora_error err;
    double     v;
    { /* 2 segments, idf = ln 2 for every reference n-gram; segment 1 matches its reference
       * at orders 1 and 2 exactly (cosine 1), none at 3 and 4: 10 * (1 + 1) / 4 = 5;
       * segment 2 shares nothing: 0 */
        corpus c = {0};
        seg(&c, "a b", "a b", NULL);
        seg(&c, "x y", "c d", NULL);
        test_cond("cider ok", lora_eval_cider(&c.c, &v, &err) == LORA_OK);
        test_condf(fabs(v - 2.5) < EPS, "cider exact: %g", v);
    }
    { /* hyp "a b a" vs ref "a b": order 1 h = (2, 1) ln2, r = (1, 1) ln2, clipped dot 2 ln2^2,
       * |h| = sqrt5 ln2, |r| = sqrt2 ln2 -> 2 / sqrt10; order 2 h = (ab, ba) ln2, r = (ab) ln2
       * -> 1 / sqrt2; order 3: the reference has none -> 0; length penalty exp(-1 / 72) */
        corpus c = {0};
        seg(&c, "a b a", "a b", NULL);
        seg(&c, "x y", "c d", NULL);
        lora_eval_cider(&c.c, &v, &err);
        double s1 = 10.0 * (2.0 / sqrt(10.0) + 1.0 / sqrt(2.0)) * exp(-1.0 / 72.0) / 4.0;
        test_condf(fabs(v - s1 / 2.0) < EPS, "cider clip + length: %g want %g", v, s1 / 2);
    }
    { /* two references average; the second shares nothing */
        corpus c = {0};
        seg(&c, "a b", "a b", "e f", NULL);
        seg(&c, "x y", "c d", NULL);
        lora_eval_cider(&c.c, &v, &err);
        /* df: a, b, ab, e, f, ef in segment 1 (1 each) -> idf ln2; cosine with "a b" is 1 at
         * orders 1, 2 */
        test_condf(fabs(v - (10.0 * 2.0 / 4.0 / 2.0) / 2.0) < EPS, "cider two refs: %g", v);
    }
}

static void test_ser(void) {
    const char *mr = "name[The Eagle], eatType[coffee shop], food[French], familyFriendly[no], "
                     "near[Burger King]";
    static const struct {
        const char *hyp;
        int         missing, wrong;
    } cases[] = {
        {"The Eagle is a French coffee shop near Burger King. It is not family-friendly.", 0, 0},
        {"The Eagle is a French coffee shop near Burger King. It is family-friendly.", 0, 1},
        {"The Eagle is an Italian coffee shop.", 2, 1},
        {"The Eagle isn't kid friendly; a French coffee shop by Burger King.", 0, 0},
        {"Adults only: The Eagle, a French café near Burger King.", 0, 0},
    };
    lora_e2e_mr m;
    lora_error  err;
    test_cond("parse mr", lora_e2e_mr_parse(mr, &m, &err) == LORA_OK);
    const char *mrs[5], *hyps[5];
    for (int k = 0; k < 5; k++) {
        lora_e2e_slot_check chk;
        lora_e2e_slot_check_text(&m, cases[k].hyp, &chk, &err);
        test_condf(chk.n_slots == 5 && chk.n_missing == cases[k].missing &&
                       chk.n_wrong == cases[k].wrong,
                   "slot check \"%s\": %d slots, %d missing, %d wrong", cases[k].hyp, chk.n_slots,
                   chk.n_missing, chk.n_wrong);
        mrs[k]  = mr;
        hyps[k] = cases[k].hyp;
    }
    lora_scores s;
    test_cond("ser ok", lora_eval_ser(mrs, hyps, 5, &s, &err) == LORA_OK);
    test_condf(s.n_slots == 25 && s.n_missing == 2 && s.n_wrong == 2 &&
                   fabs(s.ser - 4.0 / 25.0) < EPS,
               "ser %g (%lld/%lld/%lld)", s.ser, (long long)s.n_slots, (long long)s.n_missing,
               (long long)s.n_wrong);

    /* values that share words: ratings and prices */
    static const struct {
        const char *mr, *hyp;
        int         missing, wrong, added;
    } more[] = {
        {"name[Zizzi], priceRange[cheap], customer rating[5 out of 5]",
         "Zizzi is cheap and rated 1 out of 5 stars.", 0, 1, 0},
        {"name[Zizzi], priceRange[cheap], customer rating[5 out of 5]",
         "Zizzi has prices under £20 and a five-star rating.", 0, 1, 0},
        {"name[Zizzi], priceRange[high], customer rating[low]",
         "Zizzi has a high price range and a low customer rating.", 0, 0, 0},
        {"name[Zizzi], priceRange[high], customer rating[low]",
         "Zizzi has low prices and a high customer rating.", 0, 2, 0},
        {"name[Zizzi], priceRange[£20-25], customer rating[average]",
         "Zizzi costs £20–25, its rating is average.", 0, 0, 0},
        {"name[Zizzi], near[The Rice Boat], area[riverside]",
         "Zizzi is by the river near The Rice Boat.", 0, 0, 0},
        {"name[The Rice Boat], food[Chinese], area[riverside]",
         "The Rice Boat serves Chinese food by the river.", 0, 0, 0},
        {"name[Zizzi], food[Chinese], area[riverside]",
         "Zizzi serves cheap Chinese food by the river.", 0, 0, 1},
        {"name[Zizzi], food[Chinese], area[riverside]", "It serves Chinese food.", 2, 0, 0},
        {"name[Zizzi], familyFriendly[yes]", "Zizzi: children are not welcome.", 0, 1, 0},
        {"name[Zizzi], familyFriendly[yes]", "Zizzi, children welcome.", 0, 0, 0},
        {"name[Zizzi], near[Café Rouge]", "zizzi is next to cafe rouge", 0, 0, 0},
        {"name[Zizzi], near[Café Rouge]", "Zizzi is next to Café Brazil.", 0, 1, 0},
    };
    for (size_t k = 0; k < sizeof more / sizeof more[0]; k++) {
        lora_e2e_slot_check chk;
        test_cond("parse", lora_e2e_mr_parse(more[k].mr, &m, &err) == LORA_OK);
        lora_e2e_slot_check_text(&m, more[k].hyp, &chk, &err);
        test_condf(chk.n_missing == more[k].missing && chk.n_wrong == more[k].wrong &&
                       chk.n_added == more[k].added,
                   "slot check \"%s\": %d missing, %d wrong, %d added", more[k].hyp, chk.n_missing,
                   chk.n_wrong, chk.n_added);
    }
}

static void test_mr_text(void) {
    lora_e2e_mr m;
    lora_error  err;
    char        buf[LORA_E2E_MR_MAX];
    test_cond("parse loose", lora_e2e_mr_parse(" eatType[pub],name[the eagle], near[Cafe Rouge] ",
                                               &m, &err) == LORA_OK);
    lora_e2e_mr_format(&m, buf, sizeof buf, &err);
    test_condf(!strcmp(buf, "name[The Eagle], eatType[pub], near[Café Rouge]"), "format: %s", buf);
    test_cond("bad value", lora_e2e_mr_parse("name[Nowhere]", &m, &err) == LORA_ERR_FORMAT);
    test_cond("bad slot", lora_e2e_mr_parse("colour[red]", &m, &err) == LORA_ERR_FORMAT);
    test_cond("unclosed", lora_e2e_mr_parse("name[The Eagle", &m, &err) == LORA_ERR_FORMAT);
    test_cond("twice", lora_e2e_mr_parse("name[Zizzi], name[Cotto]", &m, &err) == LORA_ERR_FORMAT);
    test_cond("small buffer", lora_e2e_mr_format(&m, buf, 4, &err) == LORA_ERR_ARG);
    const char *bad[] = {"name[Zizzi]x"};
    const char *hyp[] = {"Zizzi"};
    lora_scores s;
    test_cond("ser names the bad MR", lora_eval_ser(bad, hyp, 1, &s, &err) == LORA_ERR_FORMAT &&
                                          !strncmp(err.msg, "line 1:", 7));
}

static void test_errors(void) {
    lora_error err;
    lora_bleu  b;
    double     v;
    corpus     c = {0};
    test_cond("empty corpus", lora_eval_bleu(&c.c, &b, &err) == LORA_ERR_ARG);
    seg(&c, "a", NULL); /* a segment without references */
    test_cond("no references", lora_eval_nist(&c.c, &v, &err) == LORA_ERR_ARG);
    corpus e = {0};
    seg(&e, "", "a b", NULL); /* an empty hypothesis scores 0 everywhere */
    test_cond("empty hyp bleu", lora_eval_bleu(&e.c, &b, &err) == LORA_OK && b.bleu == 0);
    test_cond("empty hyp rouge", lora_eval_rouge_l(&e.c, &v, &err) == LORA_OK && v == 0);
    test_cond("empty hyp nist", lora_eval_nist(&e.c, &v, &err) == LORA_OK && v == 0);
}

static void test_files(void) {
    const char *dir = getenv("LORA_TEST_TMP");
    char        path[512];
    snprintf(path, sizeof path, "%s/test_metrics_refs.%ld.txt", dir ? dir : "/tmp", (long)getpid());
    if (dir) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
        if (system(cmd) != 0) test_cond("mkdir tmp", 0);
    }
    FILE *f = fopen(path, "wb");
    test_cond("open tmp", f != NULL);
    if (!f) return;
    fputs("\nfirst a\nfirst b\n\n\nsecond a\r\n \n", f);
    fclose(f);
    lora_eval_refs r;
    lora_error     err;
    test_cond("read refs", lora_eval_read_refs(path, &r, &err) == LORA_OK);
    test_cond("two groups", r.n_groups == 2 && r.ref_off[1] == 2 && r.ref_off[2] == 3);
    test_cond("crlf stripped", r.n_groups == 2 && !strcmp(r.lines.line[2], "second a"));
    lora_eval_refs_free(&r);
    lora_eval_lines l;
    test_cond("read lines", lora_eval_read_lines(path, &l, &err) == LORA_OK);
    test_condf(l.n == 7 && !strcmp(l.line[1], "first a") && l.line[0][0] == '\0', "lines: %zu",
               l.n);
    lora_eval_lines_free(&l);
    f = fopen(path, "wb");
    if (f) fclose(f);
    test_cond("no refs", lora_eval_read_refs(path, &r, &err) == LORA_ERR_FORMAT);
    remove(path);
    test_cond("missing file", lora_eval_read_lines(path, &l, &err) != LORA_OK);
}

/* Runs of punctuation make every normalisation rule fire: the token string grows several times
 * over (a heap overflow once, found by decoding a model's output). */
static void test_tokenize_growth(void) {
    char text[4096];
    size_t k = 0;
    for (int i = 0; i < 300; i++) k += (size_t)snprintf(text + k, sizeof text - k, ",.a1-");
    char     **toks;
    size_t     n;
    lora_error err;
    test_cond("punctuation runs tokenize", lora_eval_tokenize(text, &toks, &n, &err) == LORA_OK);
    size_t chars = 0;
    for (size_t i = 0; i < n; i++) chars += strlen(toks[i]);
    test_condf(n >= 900 && chars == 1500, "punctuation runs: %zu tokens, %zu chars", n, chars);
    lora_eval_tokens_free(toks, n);
    char *dots = malloc(2001);
    memset(dots, '.', 2000);
    dots[2000] = '\0';
    test_cond("a run of periods tokenizes", lora_eval_tokenize(dots, &toks, &n, &err) == LORA_OK);
    test_condf(n == 2000, "2000 periods: %zu tokens", n);
    lora_eval_tokens_free(toks, n);
    free(dots);
}

int main(void) {
    test_tokenize_growth();
    test_tokenize();
    test_bleu();
    test_nist();
    test_rouge();
    test_cider();
    test_ser();
    test_mr_text();
    test_errors();
    test_files();
    return test_report("test_metrics");
}
