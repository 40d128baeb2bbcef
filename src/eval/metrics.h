/*
 * metrics.h — the E2E NLG challenge's word-overlap metrics and a slot error rate, on a corpus of
 * hypotheses with one or more references each.
 *
 *   BLEU-4    corpus BLEU as mteval-v13a / NLTK corpus_bleu: n-gram counts clipped by the maximum
 *             count in any one reference, summed over the corpus; brevity penalty
 *             exp(1 - r/c) when c <= r, with r the sum of the reference lengths closest to each
 *             hypothesis length (a tie goes to the shorter). No smoothing: a corpus with no
 *             matching n-gram of some order scores 0 (NLTK's result; mteval would report a tiny
 *             smoothed value there).
 *   NIST-5    mteval-v13a (and the E2E script's pymteval): information weights
 *             info(w1..wn) = log2(count(w1..wn-1) / count(w1..wn)) over all references of the
 *             corpus (for unigrams the numerator is the number of reference words); per order,
 *             information of the clipped matches over the number of hypothesis n-grams, summed
 *             over orders 1..5; length penalty exp(-beta * ln(min(1, L_hyp / L_ref))^2), beta
 *             such that it is 0.5 at a length ratio of 2/3, L_ref = sum over segments of the
 *             average reference length. With one reference per segment this is NLTK's
 *             corpus_nist too; with several, NLTK scores against the single best reference
 *             instead, which mteval does not.
 *   ROUGE-L   as the COCO caption evaluation used by the E2E script: per segment, LCS precision
 *             P and recall R against each reference, the maxima over references,
 *             F = (1 + b^2) P R / (R + b^2 P) with b = 1.2; averaged over segments.
 *   CIDEr-D   as COCO's CIDEr (Vedantam et al. 2015, the CIDEr-D variant): n = 1..4, TF-IDF
 *             vectors with document frequencies over the corpus's reference sets
 *             (idf = ln(N_segments) - ln(max(1, df))), per order the cosine of the hypothesis and
 *             a reference with the hypothesis weights clipped to the reference's, times the
 *             Gaussian length penalty exp(-(l_hyp - l_ref)^2 / (2 * 6^2)); averaged over orders
 *             and references, times 10, averaged over segments.
 *   SER       slot error rate: (missing + wrong) / slots over all segments, from
 *             lora_e2e_slot_check_text (data/e2e.h).
 *
 * Tokenisation. BLEU and NIST use mteval-v13a's: ASCII upper case lower-cased; the characters
 * { | } ~ [ \ ] ^ _ ` space ! " # $ % & ( ) * + : ; < = > ? @ / split off as tokens; "." and ","
 * split off unless between digits ("3.5", "1,000" stay); "-" split off after a digit ("£20-25"
 * is "£20 - 25"); whitespace separates. Apostrophes and other hyphens stay inside tokens
 * ("isn't", "family-friendly"); non-ASCII bytes (£, é) are ordinary characters. (Also the
 * "&quot;", "&amp;", "&lt;", "&gt;" entities are decoded first, as mteval does.) ROUGE-L and CIDEr
 * take the same tokens without the punctuation-only tokens that COCO's PTB tokeniser removes
 * (those made of . , ? ! : ; - ' ` " ( ) [ ] { } only) — an approximation of the PTB tokeniser,
 * which also splits clitics ("is n't").
 *
 * All functions return a lora_status and never print.
 */
#ifndef LORA_EVAL_METRICS_H
#define LORA_EVAL_METRICS_H

#include "lora.h"

#include <stddef.h>
#include <stdint.h>

/*
 * A corpus: n segments; segment i has hypothesis hyps[i] and references
 * refs[ref_off[i] .. ref_off[i + 1]), at least one each. All borrowed, UTF-8, NUL-terminated.
 */
typedef struct lora_eval_corpus {
    size_t             n;
    const char *const *hyps;    /* (n) */
    const char *const *refs;    /* (ref_off[n]) */
    const size_t      *ref_off; /* (n + 1), ref_off[0] == 0, strictly increasing */
} lora_eval_corpus;

/* BLEU with its parts. */
typedef struct lora_bleu {
    double  bleu;
    double  precision[4]; /* clipped matches / hypothesis n-grams, n = 1..4 */
    double  brevity_penalty;
    int64_t hyp_len, ref_len; /* c and r */
} lora_bleu;

typedef struct lora_scores {
    double  bleu, nist, rouge_l, cider;
    double  ser; /* only when MRs were given, else -1 */
    int64_t n_slots, n_missing, n_wrong, n_added;
    size_t  n_segments;
} lora_scores;

/* Splits text into mteval-v13a tokens (see above); *out is a malloc'd array of *n malloc'd
 * strings, free with lora_eval_tokens_free. */
lora_status lora_eval_tokenize(const char *text, char ***out, size_t *n, lora_error *err);
void        lora_eval_tokens_free(char **toks, size_t n);

/* Each metric on a corpus. LORA_ERR_ARG for an empty corpus or a segment without references,
 * LORA_ERR_NOMEM. */
lora_status lora_eval_bleu(const lora_eval_corpus *c, lora_bleu *out, lora_error *err);
lora_status lora_eval_nist(const lora_eval_corpus *c, double *out, lora_error *err);
lora_status lora_eval_rouge_l(const lora_eval_corpus *c, double *out, lora_error *err);
lora_status lora_eval_cider(const lora_eval_corpus *c, double *out, lora_error *err);

/*
 * Slot error rate of hyps[0..n) against the MRs in mrs[0..n) (E2E MR text, parsed with
 * lora_e2e_mr_parse). Fills ser, n_slots, n_missing, n_wrong, n_added of out (the other fields
 * are left alone). LORA_ERR_FORMAT, "line N: ..." (1-based), for an MR that does not parse.
 */
lora_status lora_eval_ser(const char *const *mrs, const char *const *hyps, size_t n,
                          lora_scores *out, lora_error *err);

/* BLEU, NIST, ROUGE-L, CIDEr, and SER when mrs is not NULL (one MR per segment). */
lora_status lora_eval_all(const lora_eval_corpus *c, const char *const *mrs, lora_scores *out,
                          lora_error *err);

/* ---- reading the E2E file formats ---- */

/* Lines of a text file: hypotheses or MRs, one per line ("\n" or "\r\n"; a final newline is
 * optional; empty lines are empty entries). Owned: free with lora_eval_lines_free. */
typedef struct lora_eval_lines {
    char  *data; /* the file, NUL-terminated in place */
    char **line; /* (n) pointers into data */
    size_t n;
} lora_eval_lines;

lora_status lora_eval_read_lines(const char *path, lora_eval_lines *out, lora_error *err);
void        lora_eval_lines_free(lora_eval_lines *l);

/* References grouped per segment, groups separated by one or more blank lines (the E2E
 * challenge's format). ref_off has n_groups + 1 entries. Owned: free with
 * lora_eval_refs_free. LORA_ERR_FORMAT for a file without any reference. */
typedef struct lora_eval_refs {
    lora_eval_lines lines;   /* the non-blank lines */
    size_t         *ref_off; /* (n_groups + 1) */
    size_t          n_groups;
} lora_eval_refs;

lora_status lora_eval_read_refs(const char *path, lora_eval_refs *out, lora_error *err);
void        lora_eval_refs_free(lora_eval_refs *r);

#endif
