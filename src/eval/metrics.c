/*
 * metrics.c — BLEU-4, NIST-5, ROUGE-L, CIDEr-D and the slot error rate (definitions and
 * tokenisation in metrics.h), plus readers for the E2E hypothesis and reference files.
 *
 * Words are interned to int32 ids; n-grams are fixed-size id tuples, counted by sorting. Nothing
 * here is on a hot path: a full E2E test set (630 segments, ~4,700 references) scores in well
 * under a second.
 */
#include "eval/metrics.h"

#include "core/error.h"
#include "data/e2e.h"
#include "io/fileutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_N 5 /* the highest order any metric uses (NIST) */

/* ---- the mteval-v13a tokeniser ---- */

/* Returns a malloc'd copy of s with every `from` replaced by `to` (|to| <= |from|). */
static char *replace_all(const char *s, const char *from, const char *to) {
    size_t n = strlen(s), fl = strlen(from), tl = strlen(to), o = 0;
    char  *r = malloc(n + 1);
    if (!r) return NULL;
    for (size_t i = 0; i < n;) {
        if (!strncmp(s + i, from, fl)) {
            memcpy(r + o, to, tl);
            o += tl;
            i += fl;
        } else {
            r[o++] = s[i++];
        }
    }
    r[o] = '\0';
    return r;
}

static int is_digit(char c) {
    return c >= '0' && c <= '9';
}

/* The punctuation class mteval-v13a splits off: {|}~ [\]^_` space!"#$%& ()*+ :;<=>?@ / */
static int is_v13a_punct(unsigned char c) {
    return (c >= '{' && c <= '~') || (c >= '[' && c <= '`') || (c >= ' ' && c <= '&') ||
           (c >= '(' && c <= '+') || (c >= ':' && c <= '@') || c == '/';
}

static int is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* The next space-separated token of *p (cut in place), or NULL at the end. */
static char *next_token(char **p) {
    char *s = *p;
    while (*s == ' ')
        s++;
    if (!*s) return NULL;
    char *e = s;
    while (*e && *e != ' ')
        e++;
    if (*e) *e++ = '\0';
    *p = e;
    return s;
}

/*
 * The normalised, space-separated token string of text (malloc'd), following mteval-v13a's
 * substitutions in order. The punctuation split can triple the text and each two-character rule
 * can double it again (every 2-character match becomes 4), so the output buffer is regrown
 * before each rule to twice its input.
 */
static char *v13a_normalise(const char *text) {
    static const char *const subs[][2] = {{"<skipped>", ""}, {"-\n", ""},    {"\n", " "},
                                          {"&quot;", "\""},  {"&amp;", "&"}, {"&lt;", "<"},
                                          {"&gt;", ">"}};
    char                    *s         = strdup(text);
    for (size_t k = 0; s && k < sizeof subs / sizeof subs[0]; k++) {
        char *t = replace_all(s, subs[k][0], subs[k][1]);
        free(s);
        s = t;
    }
    if (!s) return NULL;
    size_t n = strlen(s);
    char  *a = malloc(3 * n + 8), *b = malloc(3 * n + 8);
    if (!a || !b) {
        free(s);
        free(a);
        free(b);
        return NULL;
    }
    /* pad, lower-case, split off the punctuation class */
    size_t o = 0;
    a[o++]   = ' ';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 'A' && c <= 'Z') c = (unsigned char)(c - 'A' + 'a');
        if (is_v13a_punct(c)) {
            a[o++] = ' ';
            a[o++] = (char)c;
            a[o++] = ' ';
        } else {
            a[o++] = (char)c;
        }
    }
    a[o++] = ' ';
    a[o]   = '\0';
    free(s);
    /* three two-character rules, each a left-to-right, non-overlapping global substitution */
    for (int rule = 0; rule < 3; rule++) {
        size_t m = strlen(a), q = 0;
        char  *nb = realloc(b, 2 * m + 8);
        if (!nb) {
            free(a);
            free(b);
            return NULL;
        }
        b = nb;
        for (size_t i = 0; i < m;) {
            char c1 = a[i], c2 = i + 1 < m ? a[i + 1] : '\0';
            int  hit;
            if (rule == 0)
                hit = !is_digit(c1) && (c2 == '.' || c2 == ','); /* ([^0-9])([.,]) */
            else if (rule == 1)
                hit = (c1 == '.' || c1 == ',') && c2 && !is_digit(c2);
            else
                hit = is_digit(c1) && c2 == '-'; /* ([0-9])(-) */
            if (!hit || i + 1 >= m) {
                b[q++] = a[i++];
                continue;
            }
            if (rule == 1) b[q++] = ' '; /* " $1 $2" */
            b[q++] = c1;
            b[q++] = ' ';
            b[q++] = c2;
            if (rule != 1) b[q++] = ' '; /* "$1 $2 " */
            i += 2;
        }
        b[q]    = '\0';
        char *t = a;
        a       = b;
        b       = t;
    }
    /* collapse whitespace, strip: in place (the write index never passes the read index) */
    size_t q = 0;
    for (size_t i = 0; a[i]; i++) {
        if (is_space(a[i])) {
            if (q > 0 && a[q - 1] != ' ') a[q++] = ' ';
        } else {
            a[q++] = a[i];
        }
    }
    if (q > 0 && a[q - 1] == ' ') q--;
    a[q] = '\0';
    free(b);
    return a;
}

lora_status lora_eval_tokenize(const char *text, char ***out, size_t *n, lora_error *err) {
    *out    = NULL;
    *n      = 0;
    char *s = v13a_normalise(text);
    if (!s) return lora_errorf(err, LORA_ERR_NOMEM, "tokenize: out of memory");
    size_t k = 0;
    for (size_t i = 0; s[i]; i++)
        if (s[i] != ' ' && (i == 0 || s[i - 1] == ' ')) k++;
    char **t = calloc(k ? k : 1, sizeof *t);
    if (!t) {
        free(s);
        return lora_errorf(err, LORA_ERR_NOMEM, "tokenize: out of memory");
    }
    size_t j   = 0;
    char  *cur = s;
    for (char *p = next_token(&cur); p; p = next_token(&cur)) {
        t[j] = strdup(p);
        if (!t[j]) {
            lora_eval_tokens_free(t, j);
            free(s);
            return lora_errorf(err, LORA_ERR_NOMEM, "tokenize: out of memory");
        }
        j++;
    }
    free(s);
    *out = t;
    *n   = j;
    return LORA_OK;
}

void lora_eval_tokens_free(char **toks, size_t n) {
    if (!toks) return;
    for (size_t i = 0; i < n; i++)
        free(toks[i]);
    free(toks);
}

/* ---- an interned, tokenised corpus ---- */

typedef struct seq {
    int32_t *w;
    int32_t  n;
} seq;

/* Word -> id, open addressing (FNV-1a). */
typedef struct vocab {
    char   **word;
    int32_t *slot; /* (cap) index into word, -1 empty */
    size_t   cap, n;
} vocab;

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int32_t vocab_id(vocab *v, const char *w) {
    if (2 * (v->n + 1) > v->cap) {
        size_t   cap  = v->cap ? 2 * v->cap : 4096;
        int32_t *slot = malloc(cap * sizeof *slot);
        char   **word = realloc(v->word, cap * sizeof *word);
        if (!slot || !word) {
            free(slot);
            if (word) v->word = word;
            return -1;
        }
        v->word = word;
        for (size_t i = 0; i < cap; i++)
            slot[i] = -1;
        for (size_t i = 0; i < v->n; i++) {
            size_t h = (size_t)fnv1a(v->word[i]) & (cap - 1);
            while (slot[h] >= 0)
                h = (h + 1) & (cap - 1);
            slot[h] = (int32_t)i;
        }
        free(v->slot);
        v->slot = slot;
        v->cap  = cap;
    }
    size_t h = (size_t)fnv1a(w) & (v->cap - 1);
    while (v->slot[h] >= 0) {
        if (!strcmp(v->word[v->slot[h]], w)) return v->slot[h];
        h = (h + 1) & (v->cap - 1);
    }
    char *copy = strdup(w);
    if (!copy) return -1;
    v->word[v->n] = copy;
    v->slot[h]    = (int32_t)v->n;
    return (int32_t)v->n++;
}

static void vocab_free(vocab *v) {
    for (size_t i = 0; i < v->n; i++)
        free(v->word[i]);
    free(v->word);
    free(v->slot);
}

/* Tokens made only of the punctuation COCO's PTB tokeniser pipeline drops. */
static int coco_drops(const char *t) {
    for (; *t; t++)
        if (!strchr(".,?!:;-'`\"()[]{}", *t)) return 0;
    return 1;
}

typedef struct tcorpus {
    size_t        n;       /* segments */
    const size_t *ref_off; /* borrowed from the caller's corpus */
    seq          *hyp;     /* (n) */
    seq          *ref;     /* (ref_off[n]) */
} tcorpus;

static void tcorpus_free(tcorpus *t) {
    if (t->hyp)
        for (size_t i = 0; i < t->n; i++)
            free(t->hyp[i].w);
    if (t->ref)
        for (size_t i = 0; i < t->ref_off[t->n]; i++)
            free(t->ref[i].w);
    free(t->hyp);
    free(t->ref);
}

static lora_status to_seq(vocab *v, const char *text, int coco, seq *out, lora_error *err) {
    char *s = v13a_normalise(text);
    if (!s) return lora_errorf(err, LORA_ERR_NOMEM, "metrics: out of memory");
    size_t len = strlen(s);
    out->w     = malloc((len / 2 + 1) * sizeof *out->w);
    out->n     = 0;
    if (!out->w) {
        free(s);
        return lora_errorf(err, LORA_ERR_NOMEM, "metrics: out of memory");
    }
    char *cur = s;
    for (char *p = next_token(&cur); p; p = next_token(&cur)) {
        if (coco && coco_drops(p)) continue;
        int32_t id = vocab_id(v, p);
        if (id < 0) {
            free(s);
            return lora_errorf(err, LORA_ERR_NOMEM, "metrics: out of memory");
        }
        out->w[out->n++] = id;
    }
    free(s);
    return LORA_OK;
}

static lora_status check_corpus(const lora_eval_corpus *c, lora_error *err) {
    if (!c || c->n == 0 || !c->hyps || !c->refs || !c->ref_off)
        return lora_errorf(err, LORA_ERR_ARG, "metrics: empty corpus");
    if (c->ref_off[0] != 0) return lora_errorf(err, LORA_ERR_ARG, "metrics: ref_off[0] != 0");
    for (size_t i = 0; i < c->n; i++) {
        if (c->ref_off[i + 1] <= c->ref_off[i]) {
            return lora_errorf(err, LORA_ERR_ARG, "metrics: segment %zu has no reference", i + 1);
        }
    }
    return LORA_OK;
}

/* Tokenises the whole corpus; coco = 1 drops punctuation-only tokens. */
static lora_status tcorpus_init(const lora_eval_corpus *c, int coco, vocab *v, tcorpus *t,
                                lora_error *err) {
    memset(t, 0, sizeof *t);
    lora_status st = check_corpus(c, err);
    if (st != LORA_OK) return st;
    t->n       = c->n;
    t->ref_off = c->ref_off;
    t->hyp     = calloc(c->n, sizeof *t->hyp);
    t->ref     = calloc(c->ref_off[c->n], sizeof *t->ref);
    if (!t->hyp || !t->ref) {
        tcorpus_free(t);
        return lora_errorf(err, LORA_ERR_NOMEM, "metrics: out of memory");
    }
    for (size_t i = 0; i < c->n && st == LORA_OK; i++)
        st = to_seq(v, c->hyps[i], coco, &t->hyp[i], err);
    for (size_t i = 0; i < c->ref_off[c->n] && st == LORA_OK; i++)
        st = to_seq(v, c->refs[i], coco, &t->ref[i], err);
    if (st != LORA_OK) tcorpus_free(t);
    return st;
}

/* ---- n-gram counting ---- */

typedef struct ngram {
    int32_t n;
    int32_t w[MAX_N];
} ngram;

typedef struct ngc {
    ngram   g;
    int64_t c;
} ngc;

static int ngram_cmp(const ngram *a, const ngram *b) {
    if (a->n != b->n) return a->n < b->n ? -1 : 1;
    for (int i = 0; i < a->n; i++)
        if (a->w[i] != b->w[i]) return a->w[i] < b->w[i] ? -1 : 1;
    return 0;
}

static int ngc_cmp(const void *a, const void *b) {
    return ngram_cmp(&((const ngc *)a)->g, &((const ngc *)b)->g);
}

static size_t n_ngrams(const seq *s, int n) {
    return s->n >= n ? (size_t)(s->n - n + 1) : 0;
}

/* Appends the order-n n-grams of s (count 1 each) at out; returns how many. */
static size_t put_ngrams(const seq *s, int n, ngc *out) {
    size_t k = n_ngrams(s, n);
    for (size_t i = 0; i < k; i++) {
        memset(&out[i], 0, sizeof out[i]);
        out[i].g.n = n;
        memcpy(out[i].g.w, s->w + i, (size_t)n * sizeof *s->w);
        out[i].c = 1;
    }
    return k;
}

/* Sorts a[0..k) and merges equal n-grams, summing counts; returns the new length. */
static size_t sort_merge(ngc *a, size_t k) {
    if (k == 0) return 0;
    qsort(a, k, sizeof *a, ngc_cmp);
    size_t m = 0;
    for (size_t i = 1; i < k; i++) {
        if (ngram_cmp(&a[i].g, &a[m].g) == 0)
            a[m].c += a[i].c;
        else
            a[++m] = a[i];
    }
    return m + 1;
}

static int64_t lookup(const ngc *a, size_t m, const ngram *g) {
    size_t lo = 0, hi = m;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int    c   = ngram_cmp(&a[mid].g, g);
        if (c == 0) return a[mid].c;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

/* Counted n-grams of orders lo..hi of one sequence, sorted; *m entries. */
static ngc *count_seq(const seq *s, int lo, int hi, size_t *m) {
    size_t total = 0;
    for (int n = lo; n <= hi; n++)
        total += n_ngrams(s, n);
    ngc *a = malloc((total ? total : 1) * sizeof *a);
    if (!a) return NULL;
    size_t k = 0;
    for (int n = lo; n <= hi; n++)
        k += put_ngrams(s, n, a + k);
    *m = sort_merge(a, k);
    return a;
}

/*
 * Per segment, per order: the hypothesis's distinct n-grams with their counts clipped by the
 * maximum count in any one reference. Calls visit(ctx, order, ngram, clipped) for each with
 * clipped > 0.
 */
typedef void (*clip_visit)(void *ctx, int n, const ngram *g, int64_t clipped);

static lora_status clipped_matches(const tcorpus *t, size_t i, int max_n, clip_visit visit,
                                   void *ctx, lora_error *err) {
    size_t      nr = t->ref_off[i + 1] - t->ref_off[i], mh = 0;
    ngc        *h  = count_seq(&t->hyp[i], 1, max_n, &mh);
    ngc       **r  = calloc(nr, sizeof *r);
    size_t     *mr = calloc(nr, sizeof *mr);
    lora_status st = LORA_OK;
    if (!h || !r || !mr) st = lora_errorf(err, LORA_ERR_NOMEM, "metrics: out of memory");
    for (size_t j = 0; j < nr && st == LORA_OK; j++) {
        r[j] = count_seq(&t->ref[t->ref_off[i] + j], 1, max_n, &mr[j]);
        if (!r[j]) st = lora_errorf(err, LORA_ERR_NOMEM, "metrics: out of memory");
    }
    for (size_t k = 0; k < mh && st == LORA_OK; k++) {
        int64_t best = 0;
        for (size_t j = 0; j < nr; j++) {
            int64_t c = lookup(r[j], mr[j], &h[k].g);
            if (c > best) best = c;
        }
        int64_t clipped = h[k].c < best ? h[k].c : best;
        if (clipped > 0) visit(ctx, h[k].g.n, &h[k].g, clipped);
    }
    if (r)
        for (size_t j = 0; j < nr; j++)
            free(r[j]);
    free(r);
    free(mr);
    free(h);
    return st;
}

/* ---- BLEU ---- */

typedef struct bleu_acc {
    int64_t hits[4];
} bleu_acc;

static void bleu_visit(void *ctx, int n, const ngram *g, int64_t clipped) {
    (void)g;
    ((bleu_acc *)ctx)->hits[n - 1] += clipped;
}

lora_status lora_eval_bleu(const lora_eval_corpus *c, lora_bleu *out, lora_error *err) {
    memset(out, 0, sizeof *out);
    vocab       v = {0};
    tcorpus     t;
    lora_status st = tcorpus_init(c, 0, &v, &t, err);
    if (st != LORA_OK) {
        vocab_free(&v);
        return st;
    }
    bleu_acc acc      = {{0}};
    int64_t  total[4] = {0};
    for (size_t i = 0; i < t.n && st == LORA_OK; i++) {
        st         = clipped_matches(&t, i, 4, bleu_visit, &acc, err);
        int32_t hl = t.hyp[i].n;
        for (int n = 1; n <= 4; n++)
            total[n - 1] += (int64_t)n_ngrams(&t.hyp[i], n);
        /* the reference length closest to the hypothesis's, the shorter on a tie */
        int32_t best = -1;
        for (size_t j = t.ref_off[i]; j < t.ref_off[i + 1]; j++) {
            int32_t rl = t.ref[j].n;
            int32_t d  = rl > hl ? rl - hl : hl - rl;
            int32_t bd = best > hl ? best - hl : hl - best;
            if (best < 0 || d < bd || (d == bd && rl < best)) best = rl;
        }
        out->hyp_len += hl;
        out->ref_len += best;
    }
    tcorpus_free(&t);
    vocab_free(&v);
    if (st != LORA_OK) return st;

    double log_sum = 0;
    int    zero    = 0;
    for (int n = 0; n < 4; n++) {
        out->precision[n] = total[n] > 0 ? (double)acc.hits[n] / (double)total[n] : 0.0;
        if (acc.hits[n] == 0)
            zero = 1;
        else
            log_sum += 0.25 * log(out->precision[n]);
    }
    if (out->hyp_len == 0)
        out->brevity_penalty = 0.0;
    else if (out->hyp_len > out->ref_len)
        out->brevity_penalty = 1.0;
    else
        out->brevity_penalty = exp(1.0 - (double)out->ref_len / (double)out->hyp_len);
    out->bleu = zero ? 0.0 : out->brevity_penalty * exp(log_sum);
    return LORA_OK;
}

/* ---- NIST ---- */

typedef struct nist_acc {
    const ngc *ref_counts; /* all reference n-grams of the corpus, orders 1..5, counted */
    size_t     m;
    int64_t    ref_words;
    double     info[MAX_N];
} nist_acc;

/* info(w1..wn) = log2(count(w1..wn-1) / count(w1..wn)), unigrams over the reference words. */
static double nist_info(const nist_acc *a, const ngram *g) {
    int64_t c = lookup(a->ref_counts, a->m, g);
    if (c == 0) return 0.0;
    int64_t prefix = a->ref_words;
    if (g->n > 1) {
        ngram p = *g;
        p.n--;
        p.w[p.n] = 0;
        prefix   = lookup(a->ref_counts, a->m, &p);
    }
    return log2((double)prefix / (double)c);
}

static void nist_visit(void *ctx, int n, const ngram *g, int64_t clipped) {
    nist_acc *a = ctx;
    a->info[n - 1] += nist_info(a, g) * (double)clipped;
}

lora_status lora_eval_nist(const lora_eval_corpus *c, double *out, lora_error *err) {
    *out          = 0;
    vocab       v = {0};
    tcorpus     t;
    lora_status st = tcorpus_init(c, 0, &v, &t, err);
    if (st != LORA_OK) {
        vocab_free(&v);
        return st;
    }
    size_t n_refs = t.ref_off[t.n], total = 0;
    for (size_t j = 0; j < n_refs; j++)
        for (int n = 1; n <= MAX_N; n++)
            total += n_ngrams(&t.ref[j], n);
    ngc     *all = malloc((total ? total : 1) * sizeof *all);
    nist_acc acc = {0};
    if (!all) st = lora_errorf(err, LORA_ERR_NOMEM, "nist: out of memory");
    if (st == LORA_OK) {
        size_t k = 0;
        for (size_t j = 0; j < n_refs; j++) {
            for (int n = 1; n <= MAX_N; n++)
                k += put_ngrams(&t.ref[j], n, all + k);
            acc.ref_words += t.ref[j].n;
        }
        acc.m          = sort_merge(all, k);
        acc.ref_counts = all;
    }
    int64_t sys_total[MAX_N] = {0}, sys_len = 0;
    double  ref_len = 0;
    for (size_t i = 0; i < t.n && st == LORA_OK; i++) {
        st = clipped_matches(&t, i, MAX_N, nist_visit, &acc, err);
        for (int n = 1; n <= MAX_N; n++)
            sys_total[n - 1] += (int64_t)n_ngrams(&t.hyp[i], n);
        sys_len += t.hyp[i].n;
        int64_t rsum = 0;
        for (size_t j = t.ref_off[i]; j < t.ref_off[i + 1]; j++)
            rsum += t.ref[j].n;
        ref_len += (double)rsum / (double)(t.ref_off[i + 1] - t.ref_off[i]);
    }
    free(all);
    tcorpus_free(&t);
    vocab_free(&v);
    if (st != LORA_OK) return st;
    double score = 0;
    for (int n = 0; n < MAX_N; n++)
        if (sys_total[n] > 0) score += acc.info[n] / (double)sys_total[n];
    /* Doddington (2002) eq. 3: beta makes the penalty 0.5 at a length ratio of 2/3 */
    double ratio = ref_len > 0 ? (double)sys_len / ref_len : 0.0, bp;
    if (ratio >= 1.0) {
        bp = 1.0;
    } else if (ratio <= 0.0) {
        bp = 0.0;
    } else {
        double beta = -log(0.5) / (log(1.5) * log(1.5));
        bp          = exp(-beta * log(ratio) * log(ratio));
    }
    *out = score * bp;
    return LORA_OK;
}

/* ---- ROUGE-L ---- */

static int32_t lcs_len(const seq *a, const seq *b, int32_t *row) {
    /* row: (b->n + 1) scratch; classic DP keeping one row and the diagonal */
    for (int32_t j = 0; j <= b->n; j++)
        row[j] = 0;
    for (int32_t i = 1; i <= a->n; i++) {
        int32_t diag = 0;
        for (int32_t j = 1; j <= b->n; j++) {
            int32_t up = row[j];
            row[j] = a->w[i - 1] == b->w[j - 1] ? diag + 1 : (up > row[j - 1] ? up : row[j - 1]);
            diag   = up;
        }
    }
    return row[b->n];
}

lora_status lora_eval_rouge_l(const lora_eval_corpus *c, double *out, lora_error *err) {
    *out          = 0;
    vocab       v = {0};
    tcorpus     t;
    lora_status st = tcorpus_init(c, 1, &v, &t, err);
    if (st != LORA_OK) {
        vocab_free(&v);
        return st;
    }
    int32_t longest = 0;
    for (size_t j = 0; j < t.ref_off[t.n]; j++)
        if (t.ref[j].n > longest) longest = t.ref[j].n;
    int32_t *row = malloc(((size_t)longest + 1) * sizeof *row);
    if (!row) st = lora_errorf(err, LORA_ERR_NOMEM, "rouge-l: out of memory");
    const double beta2 = 1.2 * 1.2;
    double       sum   = 0;
    for (size_t i = 0; i < t.n && st == LORA_OK; i++) {
        double pmax = 0, rmax = 0;
        for (size_t j = t.ref_off[i]; j < t.ref_off[i + 1]; j++) {
            int32_t l = lcs_len(&t.hyp[i], &t.ref[j], row);
            if (t.hyp[i].n > 0 && (double)l / t.hyp[i].n > pmax) pmax = (double)l / t.hyp[i].n;
            if (t.ref[j].n > 0 && (double)l / t.ref[j].n > rmax) rmax = (double)l / t.ref[j].n;
        }
        if (pmax > 0 && rmax > 0) sum += (1 + beta2) * pmax * rmax / (rmax + beta2 * pmax);
    }
    free(row);
    tcorpus_free(&t);
    vocab_free(&v);
    if (st != LORA_OK) return st;
    *out = sum / (double)c->n;
    return LORA_OK;
}

/* ---- CIDEr-D ---- */

#define CIDER_N 4
#define CIDER_SIGMA 6.0

/* A TF-IDF vector: sorted n-grams with weights, per-order norms, the token count. */
typedef struct tfidf {
    ngc    *g; /* counts, sorted */
    double *w; /* weights, parallel to g */
    size_t  m;
    double  norm[CIDER_N];
    int32_t len;
} tfidf;

static void tfidf_free(tfidf *x) {
    free(x->g);
    free(x->w);
}

static lora_status tfidf_init(const seq *s, const ngc *df, size_t mdf, double log_n, tfidf *x,
                              lora_error *err) {
    memset(x, 0, sizeof *x);
    x->g = count_seq(s, 1, CIDER_N, &x->m);
    x->w = malloc((x->m ? x->m : 1) * sizeof *x->w);
    if (!x->g || !x->w) {
        tfidf_free(x);
        return lora_errorf(err, LORA_ERR_NOMEM, "cider: out of memory");
    }
    for (size_t k = 0; k < x->m; k++) {
        int64_t d = lookup(df, mdf, &x->g[k].g);
        x->w[k]   = (double)x->g[k].c * (log_n - log(d > 1 ? (double)d : 1.0));
        x->norm[x->g[k].g.n - 1] += x->w[k] * x->w[k];
    }
    for (int n = 0; n < CIDER_N; n++)
        x->norm[n] = sqrt(x->norm[n]);
    x->len = s->n;
    return LORA_OK;
}

/* Vedantam et al. (2015), CIDEr-D: per order, sum of min(h, r) * r over the hypothesis's
 * n-grams, over |h| |r|, times the Gaussian length penalty. */
static void cider_sim(const tfidf *h, const tfidf *r, double val[CIDER_N]) {
    double delta = (double)(h->len - r->len);
    for (int n = 0; n < CIDER_N; n++)
        val[n] = 0;
    for (size_t k = 0; k < h->m; k++) {
        size_t lo = 0, hi = r->m;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (ngram_cmp(&r->g[mid].g, &h->g[k].g) < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < r->m && ngram_cmp(&r->g[lo].g, &h->g[k].g) == 0) {
            double rw = r->w[lo], hw = h->w[k];
            val[h->g[k].g.n - 1] += (hw < rw ? hw : rw) * rw;
        }
    }
    for (int n = 0; n < CIDER_N; n++) {
        if (h->norm[n] != 0 && r->norm[n] != 0) val[n] /= h->norm[n] * r->norm[n];
        val[n] *= exp(-(delta * delta) / (2 * CIDER_SIGMA * CIDER_SIGMA));
    }
}

lora_status lora_eval_cider(const lora_eval_corpus *c, double *out, lora_error *err) {
    *out          = 0;
    vocab       v = {0};
    tcorpus     t;
    lora_status st = tcorpus_init(c, 1, &v, &t, err);
    if (st != LORA_OK) {
        vocab_free(&v);
        return st;
    }
    /* document frequency: the number of segments whose references contain the n-gram */
    size_t total = 0;
    for (size_t j = 0; j < t.ref_off[t.n]; j++)
        for (int n = 1; n <= CIDER_N; n++)
            total += n_ngrams(&t.ref[j], n);
    ngc   *df  = malloc((total ? total : 1) * sizeof *df);
    size_t mdf = 0;
    if (!df) st = lora_errorf(err, LORA_ERR_NOMEM, "cider: out of memory");
    for (size_t i = 0; i < t.n && st == LORA_OK; i++) {
        size_t start = mdf;
        for (size_t j = t.ref_off[i]; j < t.ref_off[i + 1]; j++)
            for (int n = 1; n <= CIDER_N; n++)
                mdf += put_ngrams(&t.ref[j], n, df + mdf);
        size_t m = sort_merge(df + start, mdf - start);
        for (size_t k = start; k < start + m; k++)
            df[k].c = 1; /* once per segment */
        mdf = start + m;
    }
    if (st == LORA_OK) mdf = sort_merge(df, mdf);
    double log_n = log((double)t.n), sum = 0;
    for (size_t i = 0; i < t.n && st == LORA_OK; i++) {
        tfidf h;
        st = tfidf_init(&t.hyp[i], df, mdf, log_n, &h, err);
        if (st != LORA_OK) break;
        double acc[CIDER_N] = {0};
        for (size_t j = t.ref_off[i]; j < t.ref_off[i + 1] && st == LORA_OK; j++) {
            tfidf r;
            st = tfidf_init(&t.ref[j], df, mdf, log_n, &r, err);
            if (st != LORA_OK) break;
            double val[CIDER_N];
            cider_sim(&h, &r, val);
            for (int n = 0; n < CIDER_N; n++)
                acc[n] += val[n];
            tfidf_free(&r);
        }
        tfidf_free(&h);
        double mean = 0;
        for (int n = 0; n < CIDER_N; n++)
            mean += acc[n] / CIDER_N;
        sum += 10.0 * mean / (double)(t.ref_off[i + 1] - t.ref_off[i]);
    }
    free(df);
    tcorpus_free(&t);
    vocab_free(&v);
    if (st != LORA_OK) return st;
    *out = sum / (double)c->n;
    return LORA_OK;
}

/* ---- slot error rate ---- */

lora_status lora_eval_ser(const char *const *mrs, const char *const *hyps, size_t n,
                          lora_scores *out, lora_error *err) {
    out->n_slots = out->n_missing = out->n_wrong = out->n_added = 0;
    out->ser                                                    = -1;
    for (size_t i = 0; i < n; i++) {
        lora_e2e_mr mr;
        lora_status st = lora_e2e_mr_parse(mrs[i], &mr, err);
        if (st != LORA_OK) {
            if (err) {
                char msg[LORA_ERROR_MAX];
                snprintf(msg, sizeof msg, "line %zu: %.480s", i + 1, err->msg);
                memcpy(err->msg, msg, sizeof msg);
            }
            return st;
        }
        lora_e2e_slot_check chk;
        st = lora_e2e_slot_check_text(&mr, hyps[i], &chk, err);
        if (st != LORA_OK) return st;
        out->n_slots += chk.n_slots;
        out->n_missing += chk.n_missing;
        out->n_wrong += chk.n_wrong;
        out->n_added += chk.n_added;
    }
    out->ser =
        out->n_slots > 0 ? (double)(out->n_missing + out->n_wrong) / (double)out->n_slots : 0.0;
    return LORA_OK;
}

lora_status lora_eval_all(const lora_eval_corpus *c, const char *const *mrs, lora_scores *out,
                          lora_error *err) {
    memset(out, 0, sizeof *out);
    out->ser        = -1;
    out->n_segments = c ? c->n : 0;
    lora_bleu   b;
    lora_status st = lora_eval_bleu(c, &b, err);
    if (st == LORA_OK) st = lora_eval_nist(c, &out->nist, err);
    if (st == LORA_OK) st = lora_eval_rouge_l(c, &out->rouge_l, err);
    if (st == LORA_OK) st = lora_eval_cider(c, &out->cider, err);
    if (st == LORA_OK && mrs) st = lora_eval_ser(mrs, c->hyps, c->n, out, err);
    out->bleu = st == LORA_OK ? b.bleu : 0;
    return st;
}

/* ---- files ---- */

lora_status lora_eval_read_lines(const char *path, lora_eval_lines *out, lora_error *err) {
    memset(out, 0, sizeof *out);
    size_t      len;
    lora_status st = lora_read_file(path, &out->data, &len, err);
    if (st != LORA_OK) return st;
    if (strlen(out->data) != len) {
        lora_eval_lines_free(out);
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: contains a NUL byte (not a text file?)",
                           path);
    }
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += out->data[i] == '\n';
    if (len > 0 && out->data[len - 1] != '\n') n++;
    out->line = malloc((n ? n : 1) * sizeof *out->line);
    if (!out->line) {
        lora_eval_lines_free(out);
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
    }
    char *p = out->data, *end = out->data + len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *e  = nl ? nl : end;
        if (e > p && e[-1] == '\r') e[-1] = '\0';
        *e                  = '\0';
        out->line[out->n++] = p;
        p                   = nl ? nl + 1 : end;
    }
    return LORA_OK;
}

void lora_eval_lines_free(lora_eval_lines *l) {
    if (!l) return;
    free(l->data);
    free(l->line);
    memset(l, 0, sizeof *l);
}

static int blank(const char *s) {
    for (; *s; s++)
        if (!is_space(*s)) return 0;
    return 1;
}

lora_status lora_eval_read_refs(const char *path, lora_eval_refs *out, lora_error *err) {
    memset(out, 0, sizeof *out);
    lora_status st = lora_eval_read_lines(path, &out->lines, err);
    if (st != LORA_OK) return st;
    size_t n     = out->lines.n;
    out->ref_off = malloc((n + 2) * sizeof *out->ref_off);
    if (!out->ref_off) {
        lora_eval_refs_free(out);
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t kept = 0, groups = 0;
    int    in_group = 0;
    out->ref_off[0] = 0;
    for (size_t i = 0; i < n; i++) {
        if (blank(out->lines.line[i])) {
            if (in_group) out->ref_off[++groups] = kept;
            in_group = 0;
            continue;
        }
        out->lines.line[kept++] = out->lines.line[i];
        in_group                = 1;
    }
    if (in_group) out->ref_off[++groups] = kept;
    out->lines.n  = kept;
    out->n_groups = groups;
    if (groups == 0) {
        lora_eval_refs_free(out);
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: no references (hint: one reference per "
                           "line, a blank line between MRs)",
                           path);
    }
    return LORA_OK;
}

void lora_eval_refs_free(lora_eval_refs *r) {
    if (!r) return;
    lora_eval_lines_free(&r->lines);
    free(r->ref_off);
    memset(r, 0, sizeof *r);
}
