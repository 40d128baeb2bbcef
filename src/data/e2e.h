/*
 * e2e.h — a synthetic data-to-text task in the style of the E2E NLG challenge (Novikova et al.,
 * 2017): restaurant meaning representations (MRs) and English sentences that realise them.
 *
 * What it is: the E2E schema (8 slots, the original value sets), a sampler of MRs with E2E-like
 * slot counts, a randomised sentence grammar that writes several different references per MR,
 * a splitter into train/dev/test with no MR shared between splits and some name x food pairs
 * seen only in test, JSONL/plain-text writers, and a pattern-based slot checker (the basis of
 * the slot error rate in eval/metrics.h).
 * What it is not: the E2E dataset itself (not redistributable here), nor a language model.
 *
 * Everything is deterministic given the seed, on every platform (integer-only sampling).
 */
#ifndef LORA_DATA_E2E_H
#define LORA_DATA_E2E_H

#include "lora.h"

#include <stddef.h>
#include <stdint.h>

/* ---- schema ---- */

/* The 8 slots in canonical (MR text) order. */
typedef enum lora_e2e_slot {
    LORA_E2E_NAME     = 0, /* "name": 34 venue names; always present */
    LORA_E2E_EAT_TYPE = 1, /* "eatType": coffee shop, pub, restaurant */
    LORA_E2E_FOOD     = 2, /* "food": Chinese, English, Fast food, French, ... */
    LORA_E2E_PRICE    = 3, /* "priceRange": cheap, less than £20, £20-25, ... */
    LORA_E2E_RATING   = 4, /* "customer rating": 1 out of 5, 3 out of 5, ..., high */
    LORA_E2E_AREA     = 5, /* "area": city centre, riverside */
    LORA_E2E_FAMILY   = 6, /* "familyFriendly": yes, no */
    LORA_E2E_NEAR     = 7, /* "near": 19 landmark names */
    LORA_E2E_N_SLOTS  = 8
} lora_e2e_slot;

enum {
    LORA_E2E_N_NAMES = 34,  /* values of the name slot */
    LORA_E2E_MR_MAX  = 512, /* a buffer this size holds any formatted MR or prompt */
    LORA_E2E_REF_MAX = 1024 /* a buffer this size holds any realised reference */
};

/* A meaning representation: one value index per slot, -1 when the slot is absent. */
typedef struct lora_e2e_mr {
    int8_t value[LORA_E2E_N_SLOTS];
} lora_e2e_mr;

/* The slot's key as written in MR text ("name", "eatType", ..., "customer rating", ...). */
const char *lora_e2e_slot_key(int slot);
/* Number of values of a slot (34 names, 3 eatTypes, ...); 0 for an invalid slot. */
int lora_e2e_n_values(int slot);
/* The value's surface in MR text (UTF-8, e.g. "less than £20", "Café Rouge"); NULL if invalid. */
const char *lora_e2e_value(int slot, int v);
/* Number of slots present in the MR. */
int lora_e2e_mr_n_slots(const lora_e2e_mr *mr);

/*
 * Writes the MR as "name[The Eagle], eatType[coffee shop], food[French]" (slots in canonical
 * order) into buf. LORA_ERR_ARG when a value index is out of range or buf is too small.
 */
lora_status lora_e2e_mr_format(const lora_e2e_mr *mr, char *buf, size_t bufsz, lora_error *err);

/*
 * Parses MR text of the form above. Slot order is free, spaces around items are ignored, keys
 * match case-insensitively, values exactly as in the value sets (case-insensitively, and "Cafe"
 * for "Café"). LORA_ERR_FORMAT on unknown keys or values, duplicates or malformed brackets.
 */
lora_status lora_e2e_mr_parse(const char *text, lora_e2e_mr *mr, lora_error *err);

/* ---- slot check ---- */

/*
 * How a sentence realises an MR. Matching: the text is lower-cased (ASCII), "é" folds to "e",
 * "n't" becomes " not", clause punctuation (, . ; : ! ? parentheses) becomes a token that no
 * phrase spans, other ASCII characters outside [a-z0-9] split tokens; then a fixed lexicon of
 * phrases (names, landmarks, and several phrasings per value: "by the river", "more than £30",
 * "rated 5 out of 5", "not family friendly", "adults only", ...) is matched longest phrase first,
 * without overlaps, so "not family friendly" is never read as "family friendly" and "1 out of 5
 * stars" never as "5 stars".
 *
 * A present slot is correct when its value is mentioned, wrong when only another value of the
 * slot is mentioned (including the opposite familyFriendly polarity), missing when the slot is
 * not mentioned at all. `added` counts slots absent from the MR that the text mentions anyway;
 * it is reported but not part of the slot error rate.
 */
typedef struct lora_e2e_slot_check {
    int32_t n_slots;                  /* slots present in the MR */
    int32_t n_missing;                /* present, not mentioned */
    int32_t n_wrong;                  /* present, only another value mentioned */
    int32_t n_added;                  /* absent from the MR, mentioned in the text */
    uint8_t status[LORA_E2E_N_SLOTS]; /* 0 absent, 1 correct, 2 missing, 3 wrong */
} lora_e2e_slot_check;

enum {
    LORA_E2E_SLOT_ABSENT  = 0,
    LORA_E2E_SLOT_OK      = 1,
    LORA_E2E_SLOT_MISSING = 2,
    LORA_E2E_SLOT_WRONG   = 3
};

/* Checks text (UTF-8) against mr. LORA_ERR_NOMEM only. */
lora_status lora_e2e_slot_check_text(const lora_e2e_mr *mr, const char *text,
                                     lora_e2e_slot_check *out, lora_error *err);

/*
 * Delexicalises text: every phrase the slot lexicon recognises is replaced by "<slot>" (e.g.
 * "<name> is a <food> <eatType> <near>"), the rest is kept as normalised tokens separated by
 * single spaces. Used to count distinct sentence skeletons. LORA_ERR_ARG if out is too small.
 */
lora_status lora_e2e_delexicalise(const char *text, char *out, size_t outsz, lora_error *err);

/* ---- realisation ---- */

/*
 * Writes one reference sentence (or two or three sentences) realising every slot of mr, drawn
 * from the grammar with the random state *rng (advanced). Always passes the slot check with no
 * missing, wrong or added slots. LORA_ERR_ARG for an MR without a name or a too-small buffer.
 */
lora_status lora_e2e_realise(const lora_e2e_mr *mr, uint64_t *rng, char *buf, size_t bufsz,
                             lora_error *err);

/* ---- data sets ---- */

typedef struct lora_e2e_item {
    lora_e2e_mr mr;
    int32_t     n_refs;
    char      **refs; /* (n_refs) owned, NUL-terminated UTF-8 */
} lora_e2e_item;

typedef struct lora_e2e_split {
    lora_e2e_item *items; /* (n_items) owned */
    int32_t        n_items;
    int32_t        n_refs; /* total references = pairs for train/dev */
} lora_e2e_split;

enum { LORA_E2E_TRAIN = 0, LORA_E2E_DEV = 1, LORA_E2E_TEST = 2 };

typedef struct lora_e2e_dataset {
    lora_e2e_split split[3];                       /* train, dev, test */
    int8_t         heldout_food[LORA_E2E_N_NAMES]; /* name -> its food held out of train/dev */
    uint64_t       seed;
} lora_e2e_dataset;

typedef struct lora_e2e_params {
    uint64_t seed;
    int32_t  n_train;        /* train (MR, sentence) pairs (default 3000) */
    int32_t  n_dev;          /* dev pairs (default 300) */
    int32_t  n_test;         /* test MRs (default 100) */
    int32_t  train_refs_min; /* references per train/dev MR (default 2..6) */
    int32_t  train_refs_max;
    int32_t  test_refs_min; /* references per test MR (default 5..10, mean 7.5: E2E's test set has
                              * 4,693 references for 630 MRs, 7.4 each) */
    int32_t  test_refs_max;
} lora_e2e_params;

/* The defaults above, with seed 1. */
lora_e2e_params lora_e2e_params_default(void);

/*
 * Samples the three splits. Every name has one food held out: no train or dev MR pairs that
 * name with that food, and about half of the test MRs do. No MR (as a whole) occurs in two
 * splits or twice in one. The last MR of train/dev may get fewer references so the pair count
 * is exact. On success *out owns the data set: free it with lora_e2e_dataset_free.
 * LORA_ERR_ARG for out-of-range sizes (each at most 1,000,000), LORA_ERR_NOMEM.
 */
lora_status lora_e2e_generate(const lora_e2e_params *p, lora_e2e_dataset **out, lora_error *err);
void        lora_e2e_dataset_free(lora_e2e_dataset *ds);

/*
 * Writes into dir (created if needed), each file atomically (temporary name, fsync, rename):
 *   train.jsonl, dev.jsonl  one pair per line: {"prompt":"<MR> ||","completion":" <sentence>"}
 *   test.jsonl              one MR per line: {"prompt":"<MR> ||","references":[...],"mr":"<MR>"}
 *   test.refs.txt           references grouped per MR, a blank line between groups (E2E format)
 *   test.mr.txt             one MR per line, in test order
 * The prompt ends with " ||" and the completion starts with a space: a GPT-2 byte-level BPE
 * then tokenises the separator the same way every time and the sentence's first word with its
 * usual leading-space token. Completions carry no end-of-text marker; the trainer adds the EOS.
 * UTF-8 (£, é) is written as is, not \u-escaped.
 */
lora_status lora_e2e_write(const lora_e2e_dataset *ds, const char *dir, lora_error *err);

/* The prompt for an MR, exactly as in the JSONL files ("<MR> ||"). */
lora_status lora_e2e_prompt(const lora_e2e_mr *mr, char *buf, size_t bufsz, lora_error *err);

#endif
