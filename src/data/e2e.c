/*
 * e2e.c — the synthetic E2E-style task: schema, MR text, the slot lexicon and checker, the
 * sentence grammar, the train/dev/test sampler and the file writers (see e2e.h).
 *
 * The grammar and the checker share one contract: every phrase the grammar writes for a slot
 * value is one the lexicon recognises for that value and for no other, so every generated
 * reference passes the slot check (tests/unit/test_e2e.c checks this on whole data sets).
 */
#include "data/e2e.h"

#include "core/error.h"
#include "io/fileutil.h"

#include <cjson/cJSON.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- schema ---- */

/* clang-format off */
static const char *const SLOT_KEYS[LORA_E2E_N_SLOTS] = {
    "name", "eatType", "food", "priceRange", "customer rating", "area", "familyFriendly", "near"};

static const char *const NAMES[LORA_E2E_N_NAMES] = {
    "Alimentum",         "Aromi",           "Bibimbap House",   "Blue Spice",
    "Browns Cambridge",  "Clowns",          "Cocum",            "Cotto",
    "Fitzbillies",       "Giraffe",         "Green Man",        "Loch Fyne",
    "Midsummer House",   "Strada",          "Taste of Cambridge", "The Cambridge Blue",
    "The Cricketers",    "The Dumpling Tree", "The Eagle",      "The Golden Curry",
    "The Golden Palace", "The Mill",        "The Olive Grove",  "The Phoenix",
    "The Plough",        "The Punter",      "The Rice Boat",    "The Twenty Two",
    "The Vaults",        "The Waterman",    "The Wrestlers",    "Travellers Rest Beefeater",
    "Wildwood",          "Zizzi"};
static const char *const EAT_TYPES[] = {"coffee shop", "pub", "restaurant"};
static const char *const FOODS[]     = {"Chinese", "English", "Fast food", "French",
                                        "Indian",  "Italian", "Japanese"};
static const char *const PRICES[]    = {"cheap", "less than £20", "£20-25",
                                        "more than £30", "high", "moderate"};
static const char *const RATINGS[]   = {"1 out of 5", "3 out of 5", "5 out of 5",
                                        "low", "average", "high"};
static const char *const AREAS[]     = {"city centre", "riverside"};
static const char *const FAMILY[]    = {"yes", "no"};
static const char *const NEARS[]     = {
    "All Bar One", "Avalon", "Burger King", "Café Adriatic", "Café Brazil", "Café Rouge",
    "Café Sicilia", "Clare Hall", "Crowne Plaza Hotel", "Express by Holiday Inn",
    "Rainbow Vegetarian Café", "Raja Indian Cuisine", "Ranch", "The Bakers",
    "The Portland Arms", "The Rice Boat", "The Six Bells", "The Sorrento", "Yippee Noodle Bar"};

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

static const char *const *const SLOT_VALUES[LORA_E2E_N_SLOTS] = {
    NAMES, EAT_TYPES, FOODS, PRICES, RATINGS, AREAS, FAMILY, NEARS};
static const int SLOT_N_VALUES[LORA_E2E_N_SLOTS] = {
    COUNT(NAMES),   COUNT(EAT_TYPES), COUNT(FOODS),  COUNT(PRICES),
    COUNT(RATINGS), COUNT(AREAS),     COUNT(FAMILY), COUNT(NEARS)};

/* clang-format on */
/* Value indices named where the grammar or the sampler needs them. */
enum { PRICE_CHEAP, PRICE_LT20, PRICE_20_25, PRICE_GT30, PRICE_HIGH, PRICE_MODERATE };
enum { RATING_1, RATING_3, RATING_5, RATING_LOW, RATING_AVERAGE, RATING_HIGH };
enum { FAMILY_YES, FAMILY_NO };

const char *lora_e2e_slot_key(int slot) {
    return slot >= 0 && slot < LORA_E2E_N_SLOTS ? SLOT_KEYS[slot] : NULL;
}

int lora_e2e_n_values(int slot) {
    return slot >= 0 && slot < LORA_E2E_N_SLOTS ? SLOT_N_VALUES[slot] : 0;
}

const char *lora_e2e_value(int slot, int v) {
    if (slot < 0 || slot >= LORA_E2E_N_SLOTS || v < 0 || v >= SLOT_N_VALUES[slot]) return NULL;
    return SLOT_VALUES[slot][v];
}

int lora_e2e_mr_n_slots(const lora_e2e_mr *mr) {
    int n = 0;
    for (int s = 0; s < LORA_E2E_N_SLOTS; s++)
        n += mr->value[s] >= 0;
    return n;
}

/* ---- random numbers (splitmix64: integer-only, identical on every platform) ---- */

static uint64_t rnd_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z          = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z          = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n); n > 0. The modulo bias (< 2^-32) does not matter here. */
static int rnd_int(uint64_t *s, int n) {
    return (int)(rnd_next(s) % (uint64_t)n);
}

static int rnd_pct(uint64_t *s, int pct) {
    return rnd_int(s, 100) < pct;
}

/* Index i with probability w[i] / sum(w); the sum must be positive. */
static int rnd_weighted(uint64_t *rng, const int *w, int n) {
    int total = 0;
    for (int i = 0; i < n; i++)
        total += w[i];
    int x = rnd_int(rng, total), i = 0;
    while (x >= w[i])
        x -= w[i++];
    return i;
}

static void rnd_shuffle(uint64_t *s, int *a, int n) {
    for (int i = n - 1; i > 0; i--) {
        int j = rnd_int(s, i + 1), t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* ---- text normalisation for the slot lexicon ---- */

/*
 * Writes the tokens of `in` into out separated by single spaces: ASCII lower-cased, "é"/"É"
 * folded to "e", "n't" (and "n’t") rewritten as " not", the clause punctuation , . ; : ! ? ( )
 * kept as tokens of their own (so no phrase matches across a comma), every other ASCII character
 * outside [a-z0-9], the dashes, curly quotes and no-break space separate tokens; other non-ASCII
 * bytes (such as "£") stay inside tokens. out needs 2 * strlen(in) + 2 bytes.
 */
static size_t lex_normalise(const char *in, char *out) {
    size_t n             = 0;
    int    pending_space = 0;
#define EMIT(ch)                                                                                   \
    do {                                                                                           \
        if (pending_space && n > 0) out[n++] = ' ';                                                \
        pending_space = 0;                                                                         \
        out[n++]      = (char)(ch);                                                                \
    } while (0)
    const unsigned char *p = (const unsigned char *)in;
    while (*p) {
        unsigned char c = *p;
        if (c == 'n' || c == 'N') {
            /* n't / n’t at the end of a word */
            size_t q = 0;
            if (p[1] == '\'')
                q = 2;
            else if (p[1] == 0xE2 && p[2] == 0x80 && p[3] == 0x99)
                q = 4;
            if (q && (p[q] == 't' || p[q] == 'T')) {
                unsigned char after = p[q + 1];
                int word = (after >= 'a' && after <= 'z') || (after >= 'A' && after <= 'Z') ||
                           (after >= '0' && after <= '9');
                if (!word) {
                    pending_space = 1;
                    EMIT('n');
                    EMIT('o');
                    EMIT('t');
                    pending_space = 1;
                    p += q + 1;
                    continue;
                }
            }
        }
        if (c >= 'A' && c <= 'Z') {
            EMIT(c - 'A' + 'a');
            p++;
        } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
            EMIT(c);
            p++;
        } else if (c == 0xC3 && (p[1] == 0xA9 || p[1] == 0x89)) { /* é É */
            EMIT('e');
            p += 2;
        } else if (c == 0xC2 && p[1] == 0xA0) { /* no-break space */
            pending_space = 1;
            p += 2;
        } else if (c == 0xE2 && p[1] == 0x80 && p[2] >= 0x90 && p[2] <= 0x9F) {
            pending_space = 1; /* dashes, curly quotes */
            p += 3;
        } else if (c >= 0x80) {
            EMIT(c);
            p++;
        } else if (strchr(",.;:!?()", c)) { /* clause punctuation: a token no phrase spans */
            pending_space = 1;
            EMIT(c);
            pending_space = 1;
            p++;
        } else {
            pending_space = 1;
            p++;
        }
    }
#undef EMIT
    out[n] = '\0';
    return n;
}

/* ---- the slot lexicon ---- */

/*
 * Normalised phrases per (slot, value). Names and landmarks come from the value tables. Matching
 * takes the longest phrase first, so a phrase that contains another (e.g. "not family friendly"
 * and "family friendly") wins where both fit.
 */
typedef struct lex_entry {
    int8_t      slot, value;
    const char *phrase;
} lex_entry;

/* clang-format off */
static const lex_entry LEXICON[] = {
    /* eatType */
    {1, 0, "coffee shop"}, {1, 0, "coffee shops"}, {1, 0, "coffee house"}, {1, 0, "coffeehouse"},
    {1, 0, "coffeeshop"}, {1, 0, "cafe"}, {1, 0, "cafes"},
    {1, 1, "pub"}, {1, 1, "pubs"}, {1, 1, "public house"},
    {1, 2, "restaurant"}, {1, 2, "restaurants"}, {1, 2, "eatery"}, {1, 2, "diner"},
    /* food */
    {2, 0, "chinese"}, {2, 1, "english"}, {2, 1, "british"}, {2, 2, "fast food"},
    {2, 3, "french"}, {2, 4, "indian"}, {2, 5, "italian"}, {2, 6, "japanese"}, {2, 6, "sushi"},
    /* priceRange: cheap */
    {3, 0, "cheap"}, {3, 0, "cheaply"}, {3, 0, "inexpensive"}, {3, 0, "affordable"},
    {3, 0, "low price"}, {3, 0, "low prices"}, {3, 0, "low priced"}, {3, 0, "low cost"},
    {3, 0, "budget"}, {3, 0, "prices are low"}, {3, 0, "price range is low"},
    /* less than £20 */
    {3, 1, "less than £20"}, {3, 1, "under £20"}, {3, 1, "below £20"},
    {3, 1, "cheaper than £20"}, {3, 1, "less than 20 pounds"}, {3, 1, "under 20 pounds"},
    {3, 1, "below 20 pounds"},
    /* £20-25 */
    {3, 2, "£20 25"}, {3, 2, "£20 to £25"}, {3, 2, "£20 and £25"}, {3, 2, "£20 £25"},
    {3, 2, "20 25 pounds"}, {3, 2, "20 to 25 pounds"},
    /* more than £30 */
    {3, 3, "more than £30"}, {3, 3, "over £30"}, {3, 3, "above £30"}, {3, 3, "upwards of £30"},
    {3, 3, "more than 30 pounds"}, {3, 3, "over 30 pounds"}, {3, 3, "£30 or more"},
    /* high */
    {3, 4, "expensive"}, {3, 4, "pricey"}, {3, 4, "costly"}, {3, 4, "high price"},
    {3, 4, "high prices"}, {3, 4, "high priced"}, {3, 4, "highly priced"}, {3, 4, "high cost"},
    {3, 4, "high end"}, {3, 4, "prices are high"}, {3, 4, "price range is high"},
    /* moderate */
    {3, 5, "moderate price"}, {3, 5, "moderate prices"}, {3, 5, "moderately priced"},
    {3, 5, "moderate pricing"}, {3, 5, "mid price"}, {3, 5, "mid priced"}, {3, 5, "mid range"},
    {3, 5, "average price"}, {3, 5, "average prices"}, {3, 5, "average priced"},
    {3, 5, "reasonably priced"}, {3, 5, "reasonable price"}, {3, 5, "reasonable prices"},
    {3, 5, "prices are moderate"}, {3, 5, "price range is moderate"},
    /* customer rating: numeric */
    {4, 0, "1 out of 5"}, {4, 0, "one out of five"}, {4, 0, "1 star"}, {4, 0, "1 stars"},
    {4, 0, "one star"}, {4, 0, "one stars"},
    {4, 1, "3 out of 5"}, {4, 1, "three out of five"}, {4, 1, "3 star"}, {4, 1, "3 stars"},
    {4, 1, "three star"}, {4, 1, "three stars"},
    {4, 2, "5 out of 5"}, {4, 2, "five out of five"}, {4, 2, "5 star"}, {4, 2, "5 stars"},
    {4, 2, "five star"}, {4, 2, "five stars"},
    /* low */
    {4, 3, "low rating"}, {4, 3, "low ratings"}, {4, 3, "low customer rating"},
    {4, 3, "low customer ratings"}, {4, 3, "poor rating"}, {4, 3, "poor customer rating"},
    {4, 3, "poorly rated"}, {4, 3, "rated poorly"}, {4, 3, "rated low"}, {4, 3, "low rated"},
    {4, 3, "badly rated"}, {4, 3, "rating is low"}, {4, 3, "rate it poorly"},
    {4, 3, "ratings are low"},
    /* average */
    {4, 4, "average rating"}, {4, 4, "average ratings"}, {4, 4, "average customer rating"},
    {4, 4, "average customer ratings"}, {4, 4, "rated average"}, {4, 4, "rated as average"},
    {4, 4, "average rated"}, {4, 4, "averagely rated"}, {4, 4, "rating is average"},
    {4, 4, "rate it as average"}, {4, 4, "ratings are average"},
    /* high */
    {4, 5, "high rating"}, {4, 5, "high ratings"}, {4, 5, "high customer rating"},
    {4, 5, "high customer ratings"}, {4, 5, "highly rated"}, {4, 5, "rated highly"},
    {4, 5, "rated high"}, {4, 5, "high rated"}, {4, 5, "rating is high"},
    {4, 5, "rate it highly"}, {4, 5, "ratings are high"},
    /* area */
    {5, 0, "city centre"}, {5, 0, "city center"}, {5, 0, "town centre"}, {5, 0, "centre"},
    {5, 0, "center"}, {5, 0, "central"}, {5, 0, "centrally"}, {5, 0, "downtown"},
    {5, 1, "riverside"}, {5, 1, "river"}, {5, 1, "riverfront"}, {5, 1, "waterfront"},
    /* familyFriendly: yes */
    {6, 0, "family friendly"}, {6, 0, "kid friendly"}, {6, 0, "kids friendly"},
    {6, 0, "child friendly"}, {6, 0, "children friendly"}, {6, 0, "family oriented"},
    {6, 0, "good for families"}, {6, 0, "great for families"}, {6, 0, "ideal for families"},
    {6, 0, "good for kids"}, {6, 0, "suitable for children"}, {6, 0, "suitable for families"},
    {6, 0, "suitable for kids"}, {6, 0, "welcomes families"}, {6, 0, "welcomes children"},
    {6, 0, "welcomes kids"}, {6, 0, "welcome families"}, {6, 0, "welcome children"},
    {6, 0, "welcome kids"}, {6, 0, "welcoming families"}, {6, 0, "welcoming children"},
    {6, 0, "welcoming to families"}, {6, 0, "allows children"}, {6, 0, "allow children"},
    {6, 0, "allows kids"}, {6, 0, "children are welcome"}, {6, 0, "kids are welcome"},
    {6, 0, "families are welcome"}, {6, 0, "children welcome"}, {6, 0, "kids welcome"},
    {6, 0, "families welcome"},
    /* no */
    {6, 1, "not family friendly"}, {6, 1, "not kid friendly"}, {6, 1, "not kids friendly"},
    {6, 1, "not child friendly"}, {6, 1, "not children friendly"},
    {6, 1, "not a family friendly"}, {6, 1, "not a kid friendly"},
    {6, 1, "not a child friendly"}, {6, 1, "not very family friendly"},
    {6, 1, "non family friendly"}, {6, 1, "non kid friendly"}, {6, 1, "non child friendly"},
    {6, 1, "adults only"}, {6, 1, "adult only"}, {6, 1, "not suitable for children"},
    {6, 1, "not suitable for families"}, {6, 1, "not suitable for kids"},
    {6, 1, "unsuitable for children"}, {6, 1, "unsuitable for families"},
    {6, 1, "not good for families"}, {6, 1, "not good for kids"},
    {6, 1, "not allow children"}, {6, 1, "not allow kids"}, {6, 1, "not welcome children"},
    {6, 1, "not welcome families"}, {6, 1, "not welcome kids"},
    {6, 1, "not welcoming to families"}, {6, 1, "no children"}, {6, 1, "no kids"},
    {6, 1, "not for families"}, {6, 1, "not for children"}, {6, 1, "not for kids"},
    {6, 1, "children are not welcome"}, {6, 1, "kids are not welcome"},
    {6, 1, "families are not welcome"}, {6, 1, "not family oriented"},
};

/* clang-format on */
enum { LEX_MAX_ENTRIES = COUNT(LEXICON) + LORA_E2E_N_NAMES + COUNT(NEARS) };

typedef struct lex_table {
    lex_entry e[LEX_MAX_ENTRIES];
    int       ntok[LEX_MAX_ENTRIES];
    int       order[LEX_MAX_ENTRIES]; /* by token count, longest first, stable */
    int       n, max_tok;
    char      names[LORA_E2E_N_NAMES + COUNT(NEARS)][64];
} lex_table;

static int count_tokens(const char *s) {
    int n = *s != '\0';
    for (; *s; s++)
        n += *s == ' ';
    return n;
}

static void lex_table_init(lex_table *t) {
    t->n = 0;
    for (int i = 0; i < COUNT(LEXICON); i++)
        t->e[t->n++] = LEXICON[i];
    static const int entity_slots[2] = {LORA_E2E_NAME, LORA_E2E_NEAR};
    int              k               = 0;
    for (int es = 0; es < 2; es++) {
        int s = entity_slots[es];
        for (int v = 0; v < SLOT_N_VALUES[s]; v++, k++) {
            lex_normalise(SLOT_VALUES[s][v], t->names[k]); /* every value is < 31 bytes */
            t->e[t->n++] = (lex_entry){(int8_t)s, (int8_t)v, t->names[k]};
        }
    }
    t->max_tok = 0;
    for (int i = 0; i < t->n; i++) {
        t->ntok[i] = count_tokens(t->e[i].phrase);
        if (t->ntok[i] > t->max_tok) t->max_tok = t->ntok[i];
    }
    int m = 0;
    for (int len = t->max_tok; len >= 1; len--)
        for (int i = 0; i < t->n; i++)
            if (t->ntok[i] == len) t->order[m++] = i;
}

/* One recognised phrase in a text. */
typedef struct lex_match {
    int tok, ntok;     /* token span */
    int slot, value;   /* the first reading */
    int slot2, value2; /* a second reading of the same words (a name that is also a
                          landmark, "The Rice Boat"), or -1 */
} lex_match;

typedef struct lex_text {
    char      *norm; /* normalised text, tokens separated by one space */
    int       *off;  /* (n_tok) token start offsets */
    int       *len;  /* (n_tok) token lengths */
    int        n_tok;
    lex_match *m; /* (n_m) matches, in match order */
    int        n_m;
} lex_text;

static void lex_text_free(lex_text *x) {
    free(x->norm);
    free(x->off);
    free(x->len);
    free(x->m);
    memset(x, 0, sizeof *x);
}

/* Normalises, tokenises and matches text; LORA_ERR_NOMEM only. */
static lora_status lex_analyse(const lex_table *t, const char *text, lex_text *x, lora_error *err) {
    memset(x, 0, sizeof *x);
    size_t in_len = strlen(text);
    x->norm       = malloc(2 * in_len + 2);
    x->off        = malloc((in_len + 1) * sizeof *x->off);
    x->len        = malloc((in_len + 1) * sizeof *x->len);
    x->m          = malloc((in_len + 1) * sizeof *x->m);
    char *mask    = calloc(in_len + 1, 1);
    if (!x->norm || !x->off || !x->len || !x->m || !mask) {
        free(mask);
        lex_text_free(x);
        return lora_errorf(err, LORA_ERR_NOMEM, "slot check: out of memory for %zu bytes", in_len);
    }
    size_t n = lex_normalise(text, x->norm);
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && x->norm[j] != ' ')
            j++;
        x->off[x->n_tok] = (int)i;
        x->len[x->n_tok] = (int)(j - i);
        x->n_tok++;
        i = j + 1;
    }
    for (int oi = 0; oi < t->n; oi++) {
        int              ei = t->order[oi];
        const lex_entry *e  = &t->e[ei];
        int              L  = t->ntok[ei];
        size_t           pl = strlen(e->phrase);
        for (int i = 0; i + L <= x->n_tok; i++) {
            size_t at  = (size_t)x->off[i];
            int    end = x->off[i + L - 1] + x->len[i + L - 1];
            if ((size_t)end - at != pl || memcmp(x->norm + at, e->phrase, pl) != 0) continue;
            int free_span = 1;
            for (int k = i; k < i + L; k++)
                free_span &= !mask[k];
            if (!free_span) {
                /* the same words already matched under another slot: a second reading */
                for (int k = 0; k < x->n_m; k++) {
                    lex_match *mm = &x->m[k];
                    if (mm->tok == i && mm->ntok == L && mm->slot != e->slot && mm->slot2 < 0) {
                        mm->slot2  = e->slot;
                        mm->value2 = e->value;
                    }
                }
                continue;
            }
            for (int k = i; k < i + L; k++)
                mask[k] = 1;
            x->m[x->n_m++] = (lex_match){i, L, e->slot, e->value, -1, -1};
        }
    }
    free(mask);
    return LORA_OK;
}

/* ---- slot check ---- */

static int mentions(const lex_text *x, int slot, int value) {
    for (int k = 0; k < x->n_m; k++) {
        const lex_match *m = &x->m[k];
        if ((m->slot == slot && m->value == value) || (m->slot2 == slot && m->value2 == value))
            return 1;
    }
    return 0;
}

/* Whether value v of slot `slot` is the same words as the MR's name or landmark. */
static int is_other_entity(const lora_e2e_mr *mr, int slot, int v) {
    if (slot == LORA_E2E_NAME && mr->value[LORA_E2E_NEAR] >= 0)
        return !strcmp(NAMES[v], NEARS[mr->value[LORA_E2E_NEAR]]);
    if (slot == LORA_E2E_NEAR && mr->value[LORA_E2E_NAME] >= 0)
        return !strcmp(NEARS[v], NAMES[mr->value[LORA_E2E_NAME]]);
    return 0;
}

lora_status lora_e2e_slot_check_text(const lora_e2e_mr *mr, const char *text,
                                     lora_e2e_slot_check *out, lora_error *err) {
    memset(out, 0, sizeof *out);
    lex_table *t = malloc(sizeof *t);
    if (!t) return lora_errorf(err, LORA_ERR_NOMEM, "slot check: out of memory");
    lex_table_init(t);
    lex_text    x;
    lora_status st = lex_analyse(t, text, &x, err);
    free(t);
    if (st != LORA_OK) return st;
    for (int s = 0; s < LORA_E2E_N_SLOTS; s++) {
        int want = mr->value[s], other = 0;
        for (int v = 0; v < SLOT_N_VALUES[s]; v++)
            if (v != want && !is_other_entity(mr, s, v) && mentions(&x, s, v)) other = 1;
        if (want < 0) {
            out->status[s] = LORA_E2E_SLOT_ABSENT;
            out->n_added += other;
            continue;
        }
        out->n_slots++;
        if (mentions(&x, s, want)) {
            out->status[s] = LORA_E2E_SLOT_OK;
        } else if (other) {
            out->status[s] = LORA_E2E_SLOT_WRONG;
            out->n_wrong++;
        } else {
            out->status[s] = LORA_E2E_SLOT_MISSING;
            out->n_missing++;
        }
    }
    lex_text_free(&x);
    return LORA_OK;
}

lora_status lora_e2e_delexicalise(const char *text, char *out, size_t outsz, lora_error *err) {
    if (outsz == 0) return lora_errorf(err, LORA_ERR_ARG, "delexicalise: empty buffer");
    lex_table *t = malloc(sizeof *t);
    if (!t) return lora_errorf(err, LORA_ERR_NOMEM, "delexicalise: out of memory");
    lex_table_init(t);
    lex_text    x;
    lora_status st = lex_analyse(t, text, &x, err);
    free(t);
    if (st != LORA_OK) return st;
    size_t n = 0;
    for (int i = 0; i < x.n_tok;) {
        const char *piece = NULL;
        size_t      plen  = 0;
        int         step  = 1;
        for (int k = 0; k < x.n_m; k++) {
            if (x.m[k].tok == i) {
                piece = SLOT_KEYS[x.m[k].slot];
                plen  = strlen(piece);
                step  = x.m[k].ntok;
                break;
            }
        }
        int bracket = piece != NULL;
        if (!piece) {
            piece = x.norm + x.off[i];
            plen  = (size_t)x.len[i];
        }
        size_t need = plen + (n > 0) + 2 * (size_t)bracket;
        if (n + need + 1 > outsz) {
            lex_text_free(&x);
            out[0] = '\0';
            return lora_errorf(err, LORA_ERR_ARG, "delexicalise: buffer of %zu bytes too small",
                               outsz);
        }
        if (n > 0) out[n++] = ' ';
        if (bracket) out[n++] = '<';
        memcpy(out + n, piece, plen);
        n += plen;
        if (bracket) out[n++] = '>';
        i += step;
    }
    out[n] = '\0';
    lex_text_free(&x);
    return LORA_OK;
}

/* ---- MR text ---- */

lora_status lora_e2e_mr_format(const lora_e2e_mr *mr, char *buf, size_t bufsz, lora_error *err) {
    size_t n = 0;
    if (bufsz == 0) return lora_errorf(err, LORA_ERR_ARG, "MR: empty output buffer");
    buf[0] = '\0';
    for (int s = 0; s < LORA_E2E_N_SLOTS; s++) {
        int v = mr->value[s];
        if (v < 0) continue;
        if (v >= SLOT_N_VALUES[s]) {
            return lora_errorf(err, LORA_ERR_ARG, "MR: value %d of slot %s is out of range", v,
                               SLOT_KEYS[s]);
        }
        int k = snprintf(buf + n, bufsz - n, "%s%s[%s]", n ? ", " : "", SLOT_KEYS[s],
                         SLOT_VALUES[s][v]);
        if (k < 0 || (size_t)k >= bufsz - n) {
            buf[0] = '\0';
            return lora_errorf(err, LORA_ERR_ARG, "MR: output buffer of %zu bytes too small",
                               bufsz);
        }
        n += (size_t)k;
    }
    return LORA_OK;
}

lora_status lora_e2e_prompt(const lora_e2e_mr *mr, char *buf, size_t bufsz, lora_error *err) {
    lora_status st = lora_e2e_mr_format(mr, buf, bufsz, err);
    if (st != LORA_OK) return st;
    size_t n = strlen(buf);
    if (n + 4 > bufsz) {
        buf[0] = '\0';
        return lora_errorf(err, LORA_ERR_ARG, "prompt: output buffer of %zu bytes too small",
                           bufsz);
    }
    memcpy(buf + n, " ||", 4);
    return LORA_OK;
}

/* Case-insensitive comparison of s[0..n) with z, folding "é" to "e" on both sides. */
static int fold_eq(const char *s, size_t n, const char *z) {
    char a[LORA_E2E_MR_MAX], b[LORA_E2E_MR_MAX];
    if (n >= sizeof a || strlen(z) >= sizeof b) return 0;
    size_t i = 0, j = 0;
    for (size_t k = 0; k < n; k++) {
        unsigned char c = (unsigned char)s[k];
        if (c == 0xC3 && k + 1 < n &&
            ((unsigned char)s[k + 1] == 0xA9 || (unsigned char)s[k + 1] == 0x89)) {
            a[i++] = 'e';
            k++;
        } else {
            a[i++] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
        }
    }
    for (const unsigned char *p = (const unsigned char *)z; *p; p++) {
        if (p[0] == 0xC3 && (p[1] == 0xA9 || p[1] == 0x89)) {
            b[j++] = 'e';
            p++;
        } else {
            b[j++] = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
        }
    }
    return i == j && memcmp(a, b, i) == 0;
}

lora_status lora_e2e_mr_parse(const char *text, lora_e2e_mr *mr, lora_error *err) {
    memset(mr->value, -1, sizeof mr->value);
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (*p == '\0' || *p == '\n' || *p == '\r') break;
        const char *key = p;
        while (*p && *p != '[' && *p != ']' && *p != ',')
            p++;
        if (*p != '[') {
            return lora_errorf(err, LORA_ERR_FORMAT, "MR: expected 'slot[value]' at \"%.40s\"",
                               key);
        }
        const char *key_end = p;
        while (key_end > key && key_end[-1] == ' ')
            key_end--;
        const char *val = ++p;
        while (*p && *p != ']' && *p != '[')
            p++;
        if (*p != ']') {
            return lora_errorf(err, LORA_ERR_FORMAT, "MR: unclosed '[' at \"%.40s\"", key);
        }
        const char *val_end = p++;
        int         slot    = -1;
        for (int s = 0; s < LORA_E2E_N_SLOTS; s++)
            if (fold_eq(key, (size_t)(key_end - key), SLOT_KEYS[s])) slot = s;
        if (slot < 0) {
            return lora_errorf(err, LORA_ERR_FORMAT, "MR: unknown slot \"%.*s\"",
                               (int)(key_end - key), key);
        }
        int value = -1;
        for (int v = 0; v < SLOT_N_VALUES[slot]; v++)
            if (fold_eq(val, (size_t)(val_end - val), SLOT_VALUES[slot][v])) value = v;
        if (value < 0) {
            return lora_errorf(err, LORA_ERR_FORMAT, "MR: unknown value \"%.*s\" for slot %s",
                               (int)(val_end - val), val, SLOT_KEYS[slot]);
        }
        if (mr->value[slot] >= 0) {
            return lora_errorf(err, LORA_ERR_FORMAT, "MR: slot %s given twice", SLOT_KEYS[slot]);
        }
        mr->value[slot] = (int8_t)value;
        if (*p != '\0' && *p != ',' && *p != ' ' && *p != '\n' && *p != '\r') {
            return lora_errorf(err, LORA_ERR_FORMAT, "MR: expected ',' after %s[...]",
                               SLOT_KEYS[slot]);
        }
    }
    return LORA_OK;
}

/* ---- the grammar: phrasings ---- */

/*
 * Markers, resolved while a reference is written: {is} {has} {does} {isn't} {doesn't} agree with
 * the subject (singular "It", plural "They"); {s} is the singular verb ending; {a} becomes "a" or
 * "an" from the word that follows, once the whole reference is written; @ is the value's words
 * (a landmark, a food phrase). Each phrase realises its value in words the lexicon knows for that
 * value only. Unused trailing entries are NULL.
 */
#define MAXOPT 12
typedef const char *const phrases[MAXOPT];

/* clang-format off */
static phrases EAT_NOUN[3] = {
    {"coffee shop", "coffee shop", "coffee shop", "coffee house", "café"},
    {"pub", "pub", "pub", "public house"},
    {"restaurant", "restaurant", "restaurant", "eatery"}};
static phrases GENERIC_NOUN = {"place", "place", "venue", "spot", "establishment"};

static phrases FOOD_NP[7] = {
    {"Chinese food", "Chinese cuisine", "Chinese dishes", "Chinese meals"},
    {"English food", "English cuisine", "British food", "traditional English food",
     "English dishes"},
    {"fast food", "fast food", "fast food meals", "fast-food meals"},
    {"French food", "French cuisine", "French dishes", "French meals"},
    {"Indian food", "Indian cuisine", "Indian dishes", "Indian curries"},
    {"Italian food", "Italian cuisine", "Italian dishes", "Italian meals"},
    {"Japanese food", "Japanese cuisine", "Japanese dishes", "sushi"}};
static phrases FOOD_ADJ[7] = {{"Chinese"}, {"English", "English", "British"},
                              {"fast food", "fast-food"}, {"French"}, {"Indian"},
                              {"Italian"}, {"Japanese"}};
static phrases FOOD_PRED = {"serve{s} @",          "serve{s} @",        "offer{s} @",
                            "provide{s} @",        "specialise{s} in @", "{has} @ on the menu",
                            "{is} known for its @", "sell{s} @",         "cook{s} @",
                            "{has} a menu of @"};
static phrases FOOD_WITH  = {"@", "@", "a menu of @", "a selection of @"};
static phrases FOOD_PART  = {"serving @", "serving @", "offering @", "specialising in @",
                             "known for its @"};
static phrases FOOD_ALONE = {"The menu features @.", "On the menu you will find @.",
                             "Its speciality is @.", "They serve @.", "You can get @ there."};

static phrases PRICE_PRED[6] = {
    {"{is} cheap", "{is} inexpensive", "{has} low prices", "{has} {a} cheap price range",
     "{is} in the cheap price range", "{is} low-priced", "offer{s} food at low prices",
     "{has} cheap food", "{has} {a} low price range", "{is} affordable"},
    {"{has} {a} price range of less than £20", "{has} prices under £20", "cost{s} less than £20",
     "{is} priced at less than £20", "{has} meals for less than £20", "charge{s} less than £20",
     "{has} prices below £20", "{is} in the less than £20 price range"},
    {"{has} {a} price range of £20-25", "{has} prices of £20-25", "cost{s} £20-25",
     "{is} priced between £20 and £25", "{has} meals costing £20-25",
     "charge{s} between £20 and £25", "{is} in the £20-25 price range",
     "{has} prices from £20 to £25"},
    {"{has} {a} price range of more than £30", "cost{s} more than £30",
     "{is} priced at more than £30", "{has} prices over £30", "charge{s} over £30",
     "{has} prices above £30", "{is} in the more than £30 price range"},
    {"{is} expensive", "{is} pricey", "{has} high prices", "{has} {a} high price range",
     "{is} in the high price range", "{is} high-priced", "charge{s} high prices",
     "{is} on the expensive side"},
    {"{is} moderately priced", "{has} moderate prices", "{has} {a} moderate price range",
     "{is} reasonably priced", "{is} in the moderate price range", "{has} average prices",
     "{is} mid-priced", "charge{s} moderate prices"}};
static phrases PRICE_WITH[6] = {
    {"low prices", "cheap prices", "{a} cheap price range", "{a} low price range", "cheap food"},
    {"prices under £20", "{a} price range of less than £20", "meals for less than £20",
     "prices below £20"},
    {"{a} price range of £20-25", "prices of £20-25", "prices between £20 and £25",
     "meals costing £20-25"},
    {"{a} price range of more than £30", "prices over £30", "prices above £30",
     "meals costing more than £30"},
    {"high prices", "{a} high price range", "expensive food"},
    {"moderate prices", "{a} moderate price range", "average prices", "reasonable prices"}};
static phrases PRICE_ADJ[6] = {{"cheap", "cheap", "inexpensive", "low-priced", "low-cost"},
                               {NULL},
                               {NULL},
                               {NULL},
                               {"expensive", "expensive", "high-priced", "pricey", "high-end"},
                               {"moderately priced", "mid-priced", "reasonably priced"}};
static phrases PRICE_PART[6] = {
    {"offering low prices", "priced cheaply"},
    {"priced at less than £20", "costing less than £20", "priced under £20"},
    {"priced at £20-25", "costing £20-25", "priced between £20 and £25"},
    {"priced at more than £30", "costing more than £30", "priced over £30"},
    {"highly priced", "charging high prices"},
    {"moderately priced", "reasonably priced"}};
static phrases PRICE_ALONE[6] = {
    {"Prices are low.", "Its prices are low.", "The food is cheap.", "It is cheap to eat there."},
    {"Prices are less than £20.", "Meals cost less than £20.", "Expect to pay less than £20.",
     "Its prices are under £20."},
    {"Prices range from £20 to £25.", "Meals cost £20-25.", "Expect to pay £20-25.",
     "Its price range is £20-25."},
    {"Prices are more than £30.", "Meals cost more than £30.", "Expect to pay over £30.",
     "Its price range is more than £30."},
    {"Prices are high.", "Its prices are high.", "The price range is high.", "It is expensive."},
    {"Prices are moderate.", "Its price range is moderate.", "It is reasonably priced."}};

static phrases RATING_PRED[6] = {
    {"{is} rated 1 out of 5", "{has} {a} customer rating of 1 out of 5",
     "{has} {a} 1 out of 5 rating", "{is} rated 1 out of 5 by customers",
     "{has} been rated 1 out of 5", "{has} {a} rating of 1 out of 5", "{has} {a} one-star rating",
     "{has} {a} 1-star customer rating", "{has} only one star"},
    {"{is} rated 3 out of 5", "{has} {a} customer rating of 3 out of 5",
     "{has} {a} 3 out of 5 rating", "{is} rated 3 out of 5 by customers",
     "{has} been rated 3 out of 5", "{has} {a} rating of 3 out of 5",
     "{has} {a} three-star rating", "{has} {a} 3-star customer rating", "{has} three stars"},
    {"{is} rated 5 out of 5", "{has} {a} customer rating of 5 out of 5",
     "{has} {a} 5 out of 5 rating", "{is} rated 5 out of 5 by customers",
     "{has} been rated 5 out of 5", "{has} {a} rating of 5 out of 5",
     "{has} {a} five-star rating", "{has} {a} 5-star customer rating", "{has} five stars"},
    {"{has} {a} low customer rating", "{has} {a} low rating", "{is} rated low by customers",
     "{is} poorly rated", "{has} low ratings", "{is} rated poorly",
     "get{s} low customer ratings", "{has} received {a} low customer rating"},
    {"{has} {a} average customer rating", "{has} {a} average rating",
     "{is} rated average by customers", "{has} average ratings", "{is} rated as average",
     "get{s} average customer ratings", "{has} received {a} average customer rating"},
    {"{has} {a} high customer rating", "{is} highly rated", "{is} rated highly by customers",
     "{has} high ratings", "{has} {a} high rating", "get{s} high customer ratings",
     "{is} rated high", "{has} received {a} high customer rating"}};
static phrases RATING_WITH[6] = {
    {"{a} customer rating of 1 out of 5", "{a} rating of 1 out of 5",
     "{a} 1 out of 5 customer rating", "{a} one-star rating"},
    {"{a} customer rating of 3 out of 5", "{a} rating of 3 out of 5",
     "{a} 3 out of 5 customer rating", "{a} three-star rating"},
    {"{a} customer rating of 5 out of 5", "{a} rating of 5 out of 5",
     "{a} 5 out of 5 customer rating", "{a} five-star rating"},
    {"{a} low customer rating", "{a} low rating", "low ratings", "low customer ratings"},
    {"{a} average customer rating", "{a} average rating", "average ratings"},
    {"{a} high customer rating", "{a} high rating", "high customer ratings", "high ratings"}};
static phrases RATING_ADJ[6] = {{"1-star", "one-star"},
                                {"3-star", "three-star"},
                                {"5-star", "five-star"},
                                {"low-rated", "poorly rated"},
                                {"average-rated", "averagely rated"},
                                {"highly rated", "highly-rated"}};
static phrases RATING_PART[6] = {
    {"rated 1 out of 5 by customers", "rated 1 out of 5"},
    {"rated 3 out of 5 by customers", "rated 3 out of 5"},
    {"rated 5 out of 5 by customers", "rated 5 out of 5"},
    {"rated low by customers", "poorly rated"},
    {"rated average by customers", "rated as average"},
    {"highly rated", "rated highly by customers"}};
static phrases RATING_ALONE[6] = {
    {"Customers rate it 1 out of 5.", "Its customer rating is 1 out of 5.",
     "It has a customer rating of 1 out of 5.", "Customers give it one star."},
    {"Customers rate it 3 out of 5.", "Its customer rating is 3 out of 5.",
     "It has a customer rating of 3 out of 5.", "Customers give it three stars."},
    {"Customers rate it 5 out of 5.", "Its customer rating is 5 out of 5.",
     "It has a customer rating of 5 out of 5.", "Customers give it five stars."},
    {"Its customer rating is low.", "Customers rate it poorly.", "Its ratings are low.",
     "It has a low customer rating."},
    {"Its customer rating is average.", "Customers rate it as average.",
     "Its ratings are average."},
    {"Its customer rating is high.", "Customers rate it highly.", "Its ratings are high.",
     "It is highly rated by customers."}};

static phrases AREA_LOC[2] = {
    {"in the city centre", "in the city centre", "in the centre of the city",
     "in the town centre", "in the centre of town", "in the city center"},
    {"in the riverside area", "in the riverside area", "by the river", "on the riverside",
     "along the river", "near the river", "beside the river", "on the river",
     "at the riverside"}};
static phrases AREA_ADJ[2]   = {{"city centre", "city-centre", "central"}, {"riverside"}};
static phrases AREA_EXTRA[2] = {{"{is} centrally located", "{is} central"},
                                {"{has} {a} riverside location", "overlook{s} the river"}};
static phrases AREA_PART[2]  = {{"located in the city centre", "situated in the centre of town"},
                                {"located by the river", "situated in the riverside area"}};
static phrases NEAR_LOC      = {"near @",     "near @",          "close to @",
                                "next to @",  "not far from @",  "a short walk from @",
                                "by @",       "near to @",       "just down the road from @",
                                "around the corner from @"};
static phrases NEAR_PART     = {"located near @", "situated close to @", "found next to @"};
static phrases LOC_VERB      = {"{is}", "{is}", "{is} located", "{is} located", "{is} situated",
                                "can be found", "{is} based", "sit{s}"};

static phrases FAMILY_PRED[2] = {
    {"{is} family-friendly", "{is} family-friendly", "{is} kid friendly", "{is} child-friendly",
     "welcome{s} families", "welcome{s} children", "{is} good for families",
     "{is} suitable for children", "{is} family friendly", "{is} kid-friendly"},
    {"{is} not family-friendly", "{is} not family-friendly", "{isn't} kid friendly",
     "{isn't} family-friendly", "{is} not child friendly", "{is} adults only",
     "{is} not suitable for children", "{does} not allow children", "{doesn't} welcome children",
     "{is} not good for families", "{is} not kid-friendly"}};
static phrases FAMILY_ADJ[2] = {
    {"family-friendly", "family-friendly", "kid-friendly", "child-friendly", "family friendly"},
    {"adults-only", "adult-only", "non-family-friendly", "non-kid-friendly"}};
static phrases FAMILY_PART[2]  = {{"welcoming families", "welcoming children"},
                                  {"catering for adults only", "open to adults only"}};
static phrases FAMILY_ALONE[2] = {
    {"Children are welcome.", "Kids are welcome.", "Families are welcome.",
     "It is family friendly.", "It is great for families."},
    {"Children are not welcome.", "Kids aren't welcome.", "It is not family-friendly.",
     "It is adults only.", "No children are allowed.", "It is not suitable for children."}};

/* clang-format on */
/*
 * One of the phrases, Zipf-weighted (the i-th with weight 1 / (i + 1)): people describing a
 * venue mostly reuse the common wording, as the E2E references do, and reach for the rarer
 * paraphrases less often. The lists put the plainest wording first.
 */
static const char *pick(uint64_t *rng, const char *const *opts) {
    int w[MAXOPT], n = 0;
    while (n < MAXOPT && opts[n]) {
        w[n] = 27720 / (n + 1); /* 27720 = lcm(1..12) */
        n++;
    }
    return n ? opts[rnd_weighted(rng, w, n)] : NULL;
}

/* ---- the grammar: writing a reference ---- */

#define GEN_CAP (2 * LORA_E2E_REF_MAX)
#define SLOT_LOC_BOTH 8 /* pseudo-slot: area and near in one location phrase */

typedef struct gen {
    const lora_e2e_mr *mr;
    uint64_t          *rng;
    const char        *eat_noun; /* "coffee shop", "café", ...; NULL without eatType */
    const char        *generic;  /* "place", "venue", ...: the noun before eatType is said */
    int                eat_said; /* eatType has been realised */
    char               buf[GEN_CAP];
    size_t             n;
    int                overflow;
} gen;

static void put(gen *g, const char *s) {
    size_t k = strlen(s);
    if (g->n + k >= GEN_CAP) {
        g->overflow = 1;
        return;
    }
    memcpy(g->buf + g->n, s, k + 1);
    g->n += k;
}

/* Writes a phrase, resolving the agreement markers and @ (see above); {a} is kept. */
static void put_phrase(gen *g, const char *t, int plural, const char *at) {
    static const struct {
        const char *mark, *sg, *pl;
    } marks[] = {
        {"{is}", "is", "are"},          {"{has}", "has", "have"},          {"{does}", "does", "do"},
        {"{isn't}", "isn't", "aren't"}, {"{doesn't}", "doesn't", "don't"}, {"{s}", "s", ""}};
    char one[2] = {0, 0};
    while (*t) {
        if (*t == '@') {
            put(g, at ? at : "");
            t++;
            continue;
        }
        if (*t == '{') {
            int done = 0;
            for (size_t i = 0; i < sizeof marks / sizeof marks[0] && !done; i++) {
                size_t k = strlen(marks[i].mark);
                if (!strncmp(t, marks[i].mark, k)) {
                    put(g, plural ? marks[i].pl : marks[i].sg);
                    t += k;
                    done = 1;
                }
            }
            if (done) continue;
        }
        one[0] = *t++;
        put(g, one);
    }
}

static int v_of(const gen *g, int slot) {
    return g->mr->value[slot];
}

static const char *food_np(gen *g) {
    return pick(g->rng, FOOD_NP[v_of(g, LORA_E2E_FOOD)]);
}

static int has_adj(const gen *g, int slot) {
    switch (slot) {
    case LORA_E2E_PRICE:
        return PRICE_ADJ[v_of(g, slot)][0] != NULL;
    case LORA_E2E_RATING:
    case LORA_E2E_FAMILY:
    case LORA_E2E_AREA:
    case LORA_E2E_FOOD:
        return 1;
    default:
        return 0;
    }
}

static void put_adj(gen *g, int slot) {
    int v = v_of(g, slot);
    switch (slot) {
    case LORA_E2E_PRICE:
        put(g, pick(g->rng, PRICE_ADJ[v]));
        break;
    case LORA_E2E_RATING:
        put(g, pick(g->rng, RATING_ADJ[v]));
        break;
    case LORA_E2E_FAMILY:
        put(g, pick(g->rng, FAMILY_ADJ[v]));
        break;
    case LORA_E2E_AREA:
        put(g, pick(g->rng, AREA_ADJ[v]));
        break;
    case LORA_E2E_FOOD:
        put(g, pick(g->rng, FOOD_ADJ[v]));
        break;
    default:
        break;
    }
}

/* A location phrase for area, near, or both (SLOT_LOC_BOTH). */
static void put_loc(gen *g, int slot) {
    if (slot == SLOT_LOC_BOTH) {
        int near_first = rnd_pct(g->rng, 50);
        put_loc(g, near_first ? LORA_E2E_NEAR : LORA_E2E_AREA);
        put(g, rnd_pct(g->rng, 25) ? ", " : " ");
        put_loc(g, near_first ? LORA_E2E_AREA : LORA_E2E_NEAR);
    } else if (slot == LORA_E2E_AREA) {
        put(g, pick(g->rng, AREA_LOC[v_of(g, slot)]));
    } else {
        put_phrase(g, pick(g->rng, NEAR_LOC), 0, NEARS[v_of(g, LORA_E2E_NEAR)]);
    }
}

/* A chosen predicate: a phrase with markers, its @, and a location to append (or -1). */
typedef struct pred {
    const char *t;
    const char *at;
    int         loc;
    char        own[64];
} pred;

static void choose_pred(gen *g, int slot, pred *p) {
    int v  = slot == SLOT_LOC_BOTH ? 0 : v_of(g, slot);
    p->at  = NULL;
    p->loc = -1;
    switch (slot) {
    case LORA_E2E_EAT_TYPE:
        snprintf(p->own, sizeof p->own, "{is} {a} %s", g->eat_noun);
        p->t        = p->own;
        g->eat_said = 1;
        break;
    case LORA_E2E_FOOD:
        p->t  = pick(g->rng, FOOD_PRED);
        p->at = food_np(g);
        break;
    case LORA_E2E_PRICE:
        p->t = pick(g->rng, PRICE_PRED[v]);
        break;
    case LORA_E2E_RATING:
        p->t = pick(g->rng, RATING_PRED[v]);
        break;
    case LORA_E2E_FAMILY:
        p->t = pick(g->rng, FAMILY_PRED[v]);
        break;
    case LORA_E2E_AREA:
        if (rnd_pct(g->rng, 20)) {
            p->t = pick(g->rng, AREA_EXTRA[v]);
            break;
        }
        /* fall through */
    default: /* near, both */
        p->t   = pick(g->rng, LOC_VERB);
        p->loc = slot;
        break;
    }
}

static int pred_copular(const pred *p) {
    return !strncmp(p->t, "{is} ", 5) || !strcmp(p->t, "{is}");
}

/* The predicate's leading verb that a coordination may share: 1 "is", 2 "has", 0 other. */
static int pred_shared_verb(const pred *p) {
    if (pred_copular(p)) return 1;
    return !strncmp(p->t, "{has} ", 6) && strncmp(p->t, "{has} been", 10) &&
                   strncmp(p->t, "{has} received", 14)
               ? 2
               : 0;
}

/* Writes a predicate; drop_verb leaves out its leading "is"/"has" (shared with the predicate
 * before), also adds "also". */
static void put_pred(gen *g, const pred *p, int plural, int drop_verb, int also) {
    const char *t = p->t;
    if (drop_verb && pred_shared_verb(p) == 2) {
        t += 6;
    } else if (pred_copular(p)) {
        if (drop_verb) {
            t += t[4] == ' ' ? 5 : 4;
        } else if (also) {
            put_phrase(g, "{is} also", plural, NULL);
            t += 4;
        }
    } else if (also) {
        if (!strncmp(t, "can ", 4)) {
            put(g, "can also ");
            t += 4;
        } else {
            put(g, "also ");
        }
    }
    put_phrase(g, t, plural, p->at);
    if (p->loc >= 0) {
        if (*t) put(g, " ");
        put_loc(g, p->loc);
    }
}

/* Whether a slot value reads as a drawback (a cue for "but"). */
static int is_drawback(const gen *g, int slot) {
    int v = slot == SLOT_LOC_BOTH ? -1 : v_of(g, slot);
    return (slot == LORA_E2E_FAMILY && v == FAMILY_NO) ||
           (slot == LORA_E2E_RATING && (v == RATING_1 || v == RATING_LOW)) ||
           (slot == LORA_E2E_PRICE && (v == PRICE_HIGH || v == PRICE_GT30));
}

/* Merges area and near into one SLOT_LOC_BOTH item half of the time; returns the new n. */
static int merge_locs(gen *g, int *s, int n) {
    int ia = -1, in = -1;
    for (int i = 0; i < n; i++) {
        if (s[i] == LORA_E2E_AREA) ia = i;
        if (s[i] == LORA_E2E_NEAR) in = i;
    }
    if (ia < 0 || in < 0 || !rnd_pct(g->rng, 50)) return n;
    int keep = ia < in ? ia : in, drop = ia < in ? in : ia;
    s[keep] = SLOT_LOC_BOTH;
    for (int i = drop; i + 1 < n; i++)
        s[i] = s[i + 1];
    return n - 1;
}

/* "serves French food, is cheap and has a high customer rating" */
static void put_vp_list(gen *g, const int *slots, int n, int plural, int also) {
    int s[LORA_E2E_N_SLOTS];
    memcpy(s, slots, (size_t)n * sizeof *s);
    n             = merge_locs(g, s, n);
    int prev_verb = 0;
    for (int i = 0; i < n; i++) {
        pred p;
        choose_pred(g, s[i], &p);
        int verb = pred_shared_verb(&p), drop = 0;
        if (i > 0) {
            if (i < n - 1) {
                put(g, ", ");
            } else if (is_drawback(g, s[i]) && rnd_pct(g->rng, 35)) {
                put(g, " but ");
            } else {
                put(g, n > 2 && rnd_pct(g->rng, 20) ? ", and " : " and ");
            }
            drop = verb && verb == prev_verb && rnd_pct(g->rng, 55);
        }
        put_pred(g, &p, plural, drop, also && i == 0);
        prev_verb = verb;
    }
}

/* A "with" phrase: "with low prices and a high customer rating". */
static void put_with_list(gen *g, const int *slots, int n) {
    put(g, "with ");
    for (int i = 0; i < n; i++) {
        if (i > 0) put(g, i == n - 1 ? " and " : ", ");
        int v = v_of(g, slots[i]);
        if (slots[i] == LORA_E2E_PRICE)
            put_phrase(g, pick(g->rng, PRICE_WITH[v]), 0, NULL);
        else if (slots[i] == LORA_E2E_RATING)
            put_phrase(g, pick(g->rng, RATING_WITH[v]), 0, NULL);
        else
            put_phrase(g, pick(g->rng, FOOD_WITH), 0, food_np(g));
    }
}

/* A participle or adjective phrase that can open a sentence or follow a noun. */
static int has_part(int slot) {
    return slot != LORA_E2E_EAT_TYPE && slot != LORA_E2E_NAME;
}

static void put_part(gen *g, int slot) {
    int v = v_of(g, slot);
    switch (slot) {
    case LORA_E2E_FOOD:
        put_phrase(g, pick(g->rng, FOOD_PART), 0, food_np(g));
        break;
    case LORA_E2E_PRICE:
        put(g, pick(g->rng, PRICE_PART[v]));
        break;
    case LORA_E2E_RATING:
        put(g, pick(g->rng, RATING_PART[v]));
        break;
    case LORA_E2E_AREA:
        put(g, pick(g->rng, AREA_PART[v]));
        break;
    case LORA_E2E_NEAR:
        put_phrase(g, pick(g->rng, NEAR_PART), 0, NEARS[v]);
        break;
    case LORA_E2E_FAMILY:
        put(g, pick(g->rng, FAMILY_PART[v]));
        break;
    default:
        break;
    }
}

/* Whether a price value has a participle that reads well after a noun ("priced at ..."). */
static int price_postmod(const gen *g) {
    int v = v_of(g, LORA_E2E_PRICE);
    return v == PRICE_LT20 || v == PRICE_20_25 || v == PRICE_GT30;
}

/*
 * A noun phrase for the venue that realises `slots` (the name excluded): "{a} cheap,
 * family-friendly French coffee shop near Burger King with a high customer rating that is not
 * ...". The noun is the eatType when `slots` holds it, else a generic one ("place").
 */
static void put_np(gen *g, const int *slots, int n, int article) {
    const char *noun = g->generic;
    int         pre[3], npre = 0, area_adj = 0, food_adj = 0;
    int         loc[2], nloc = 0, with[3], nwith = 0, rel[LORA_E2E_N_SLOTS], nrel = 0;
    int         part = -1;
    for (int i = 0; i < n; i++) {
        int s = slots[i];
        if (s == LORA_E2E_EAT_TYPE) {
            noun        = g->eat_noun;
            g->eat_said = 1;
        } else if (s == LORA_E2E_FOOD && rnd_pct(g->rng, 75)) {
            food_adj = 1;
        } else if (s == LORA_E2E_AREA && has_adj(g, s) && rnd_pct(g->rng, 30)) {
            area_adj = 1;
        } else if ((s == LORA_E2E_PRICE || s == LORA_E2E_RATING || s == LORA_E2E_FAMILY) &&
                   has_adj(g, s) && npre < 2 && rnd_pct(g->rng, 45)) {
            pre[npre++] = s;
        } else if (s == LORA_E2E_AREA || s == LORA_E2E_NEAR) {
            if (rnd_pct(g->rng, 80))
                loc[nloc++] = s;
            else
                rel[nrel++] = s;
        } else if (s != LORA_E2E_FAMILY && rnd_pct(g->rng, 60)) {
            with[nwith++] = s;
        } else if (part < 0 && (s != LORA_E2E_PRICE || price_postmod(g)) && s != LORA_E2E_RATING &&
                   rnd_pct(g->rng, 30)) {
            part = s;
        } else {
            rel[nrel++] = s;
        }
    }
    if (article) put(g, "{a} ");
    for (int i = 0; i < npre; i++) {
        if (i > 0) put(g, rnd_pct(g->rng, 20) ? " and " : rnd_pct(g->rng, 50) ? ", " : " ");
        put_adj(g, pre[i]);
    }
    if (npre) put(g, " ");
    if (area_adj) {
        put_adj(g, LORA_E2E_AREA);
        put(g, " ");
    }
    if (food_adj) {
        put_adj(g, LORA_E2E_FOOD);
        put(g, " ");
    }
    put(g, noun);
    if (part >= 0) {
        put(g, " ");
        put_part(g, part);
    }
    int loc_first = rnd_pct(g->rng, 60);
    for (int pass = 0; pass < 2; pass++) {
        if ((pass == 0) == loc_first && nloc > 0) {
            put(g, " ");
            put_loc(g, nloc == 2 ? SLOT_LOC_BOTH : loc[0]);
        }
        if ((pass == 0) != loc_first && nwith > 0) {
            put(g, " ");
            put_with_list(g, with, nwith);
        }
    }
    if (nrel > 0) {
        put(g, rnd_pct(g->rng, 65) ? " that " : ", which ");
        put_vp_list(g, rel, nrel, 0, 0);
    }
}

static int contains(const int *s, int n, int slot) {
    for (int i = 0; i < n; i++)
        if (s[i] == slot) return 1;
    return 0;
}

/* Removes slot from s[0..n); returns the new n. */
static int without(int *s, int n, int slot) {
    int m = 0;
    for (int i = 0; i < n; i++)
        if (s[i] != slot) s[m++] = s[i];
    return m;
}

/* Splits s into an NP part (eatType always, others with probability pct) and the rest. */
static void split_np(gen *g, const int *s, int n, int pct, int *np, int *nnp, int *vp, int *nvp,
                     int max_vp) {
    *nnp = *nvp = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] != LORA_E2E_EAT_TYPE && *nvp < max_vp && !rnd_pct(g->rng, pct))
            vp[(*nvp)++] = s[i];
        else
            np[(*nnp)++] = s[i];
    }
}

static const char *name_of(const gen *g) {
    return NAMES[v_of(g, LORA_E2E_NAME)];
}

/* ---- sentence frames; each writes one sentence realising the name and slots A ---- */

/* "The Eagle is a cheap coffee shop near Burger King and has a high customer rating." */
static void frame_copula(gen *g, const int *a, int n) {
    int np[LORA_E2E_N_SLOTS], vp[LORA_E2E_N_SLOTS], nnp, nvp;
    split_np(g, a, n, 70, np, &nnp, vp, &nvp, 2);
    put(g, name_of(g));
    put(g, " is ");
    put_np(g, np, nnp, 1);
    if (nvp > 0) {
        put(g, nvp == 1 && rnd_pct(g->rng, 30) ? ". It " : " and ");
        put_vp_list(g, vp, nvp, 0, 0);
    }
    put(g, ".");
}

/* "The Eagle serves French food, is near Burger King and is family-friendly." */
static void frame_vp(gen *g, const int *a, int n) {
    put(g, name_of(g));
    put(g, " ");
    put_vp_list(g, a, n, 0, 0);
    put(g, ".");
}

/* "There is a French coffee shop called The Eagle that is near Burger King." */
static void frame_exist(gen *g, const int *a, int n) {
    static phrases called = {"called", "called", "named", "by the name of"};
    int            np[LORA_E2E_N_SLOTS], vp[LORA_E2E_N_SLOTS], nnp, nvp;
    split_np(g, a, n, 55, np, &nnp, vp, &nvp, 3);
    if (nvp > 0 && rnd_pct(g->rng, 50)) {
        put_np(g, np, nnp, 1);
        put(g, " ");
        put(g, pick(g->rng, called));
        put(g, " ");
        put(g, name_of(g));
        put(g, " ");
        put_vp_list(g, vp, nvp, 0, 0);
    } else {
        put(g, rnd_pct(g->rng, 70) ? "There is " : "There's ");
        put_np(g, np, nnp, 1);
        put(g, " ");
        put(g, pick(g->rng, called));
        put(g, " ");
        put(g, name_of(g));
        if (nvp > 0) {
            put(g, rnd_pct(g->rng, 50) ? " that " : ", which ");
            put_vp_list(g, vp, nvp, 0, 0);
        }
    }
    put(g, ".");
}

/* "Located near Burger King in the city centre, The Eagle is a cheap coffee shop." */
static void frame_front_loc(gen *g, const int *a, int n) {
    static phrases lead = {"", "", "Located ", "Situated ", "Found "};
    int has_area = contains(a, n, LORA_E2E_AREA), has_near = contains(a, n, LORA_E2E_NEAR);
    int rest[LORA_E2E_N_SLOTS], nrest                      = n;
    memcpy(rest, a, (size_t)n * sizeof *rest);
    nrest = without(rest, nrest, LORA_E2E_AREA);
    nrest = without(rest, nrest, LORA_E2E_NEAR);
    put(g, pick(g->rng, lead));
    put_loc(g, has_area && has_near ? SLOT_LOC_BOTH : has_area ? LORA_E2E_AREA : LORA_E2E_NEAR);
    put(g, ", ");
    int style = rnd_int(g->rng, 4);
    if (nrest == 0) {
        if (style < 2) {
            put(g, "you can find ");
            put(g, name_of(g));
        } else {
            put(g, "there is {a} ");
            put(g, g->generic);
            put(g, " called ");
            put(g, name_of(g));
        }
    } else if (style == 0 || (style == 1 && contains(rest, nrest, LORA_E2E_EAT_TYPE))) {
        int np[LORA_E2E_N_SLOTS], vp[LORA_E2E_N_SLOTS], nnp, nvp;
        split_np(g, rest, nrest, 70, np, &nnp, vp, &nvp, 2);
        put(g, name_of(g));
        put(g, " is ");
        put_np(g, np, nnp, 1);
        if (nvp > 0) {
            put(g, " and ");
            put_vp_list(g, vp, nvp, 0, 0);
        }
    } else if (style == 1) {
        put(g, name_of(g));
        put(g, " ");
        put_vp_list(g, rest, nrest, 0, 0);
    } else {
        if (style == 2) {
            put(g, "there is ");
            put_np(g, rest, nrest, 1);
            put(g, " called ");
            put(g, name_of(g));
        } else {
            put(g, "you will find ");
            put(g, name_of(g));
            put(g, ", ");
            put_np(g, rest, nrest, 1);
        }
    }
    put(g, ".");
}

/* "The Eagle, a French coffee shop, is near Burger King." / "The Eagle, which is near ..." */
static void frame_appos(gen *g, const int *a, int n) {
    int np[LORA_E2E_N_SLOTS], vp[LORA_E2E_N_SLOTS], nnp, nvp;
    split_np(g, a, n, 50, np, &nnp, vp, &nvp, 3);
    if (nvp == 0) { /* everything went into the noun phrase: move one item (not eatType) out */
        int i = nnp - 1;
        while (i >= 0 && np[i] == LORA_E2E_EAT_TYPE)
            i--;
        if (i < 0) {
            frame_copula(g, a, n);
            return;
        }
        vp[nvp++] = np[i];
        nnp       = without(np, nnp, np[i]);
    }
    put(g, name_of(g));
    if (nvp >= 2 && !contains(a, n, LORA_E2E_EAT_TYPE) && nnp == 0 && rnd_pct(g->rng, 60)) {
        put(g, ", which ");
        put_vp_list(g, vp, 1, 0, 0);
        put(g, ", ");
        put_vp_list(g, vp + 1, nvp - 1, 0, 0);
    } else {
        put(g, ", ");
        put_np(g, np, nnp, 1);
        put(g, ", ");
        put_vp_list(g, vp, nvp, 0, 0);
    }
    put(g, ".");
}

/* "Try The Eagle, a cheap coffee shop." / "If you are looking for ..., try The Eagle." */
static void frame_try(gen *g, const int *a, int n) {
    switch (rnd_int(g->rng, 4)) {
    case 0:
    case 1:
        put(g, rnd_pct(g->rng, 50) ? "Try " : rnd_pct(g->rng, 50) ? "Visit " : "Check out ");
        put(g, name_of(g));
        put(g, ", ");
        put_np(g, a, n, 1);
        break;
    case 2:
        put(g, rnd_pct(g->rng, 50) ? "If you are looking for " : "If you want ");
        put_np(g, a, n, 1);
        put(g, rnd_pct(g->rng, 50) ? ", try " : ", go to ");
        put(g, name_of(g));
        break;
    default:
        put(g, "For ");
        put_np(g, a, n, 1);
        put(g, ", try ");
        put(g, name_of(g));
        break;
    }
    put(g, ".");
}

/* "Serving French food, The Eagle is a coffee shop near Burger King." */
static void frame_part(gen *g, const int *a, int n) {
    int cand[LORA_E2E_N_SLOTS], nc = 0;
    for (int i = 0; i < n; i++)
        if (has_part(a[i])) cand[nc++] = a[i];
    if (nc == 0 || n < 2) {
        frame_copula(g, a, n);
        return;
    }
    int lead = cand[rnd_int(g->rng, nc)];
    int rest[LORA_E2E_N_SLOTS], nrest;
    memcpy(rest, a, (size_t)n * sizeof *rest);
    nrest = without(rest, n, lead);
    if ((lead == LORA_E2E_PRICE || lead == LORA_E2E_RATING) && rnd_pct(g->rng, 40)) {
        put_with_list(g, &lead, 1); /* "with ...", capitalised with the sentence */
    } else {
        put_part(g, lead);
    }
    put(g, ", ");
    if (contains(rest, nrest, LORA_E2E_EAT_TYPE) || rnd_pct(g->rng, 40)) {
        int np[LORA_E2E_N_SLOTS], vp[LORA_E2E_N_SLOTS], nnp, nvp;
        split_np(g, rest, nrest, 70, np, &nnp, vp, &nvp, 2);
        put(g, name_of(g));
        put(g, " is ");
        put_np(g, np, nnp, 1);
        if (nvp > 0) {
            put(g, " and ");
            put_vp_list(g, vp, nvp, 0, 0);
        }
    } else {
        put(g, name_of(g));
        put(g, " ");
        put_vp_list(g, rest, nrest, 0, 0);
    }
    put(g, ".");
}

/* ---- follow-up sentences ---- */

static int has_alone(int slot) {
    return slot == LORA_E2E_FOOD || slot == LORA_E2E_PRICE || slot == LORA_E2E_RATING ||
           slot == LORA_E2E_FAMILY;
}

static void put_alone(gen *g, int slot) {
    int v = v_of(g, slot);
    switch (slot) {
    case LORA_E2E_FOOD:
        put_phrase(g, pick(g->rng, FOOD_ALONE), 0, food_np(g));
        break;
    case LORA_E2E_PRICE:
        put(g, pick(g->rng, PRICE_ALONE[v]));
        break;
    case LORA_E2E_RATING:
        put(g, pick(g->rng, RATING_ALONE[v]));
        break;
    case LORA_E2E_FAMILY:
        put(g, pick(g->rng, FAMILY_ALONE[v]));
        break;
    default:
        break;
    }
}

/* Sentences after the first: "It is near Burger King. Children are welcome." */
static void put_followups(gen *g, const int *b, int n) {
    int vp[LORA_E2E_N_SLOTS], nvp = 0, alone[LORA_E2E_N_SLOTS], nal = 0;
    for (int i = 0; i < n; i++) {
        if (has_alone(b[i]) && rnd_pct(g->rng, 30))
            alone[nal++] = b[i];
        else
            vp[nvp++] = b[i];
    }
    int vp_first = rnd_pct(g->rng, 70);
    for (int pass = 0; pass < 2; pass++) {
        if ((pass == 0) != vp_first) {
            for (int i = 0; i < nal; i++) {
                put(g, " ");
                put_alone(g, alone[i]);
            }
            continue;
        }
        if (nvp == 0) continue;
        int has_eat = contains(vp, nvp, LORA_E2E_EAT_TYPE), plural = 0, r = rnd_int(g->rng, 100);
        put(g, " ");
        if (r < 55) {
            put(g, "It");
        } else if (r < 65) {
            put(g, "They");
            plural = 1;
        } else if (r < 85 && !has_eat) {
            put(g, rnd_pct(g->rng, 70) ? "The " : "This ");
            put(g, g->eat_said ? g->eat_noun : g->generic);
        } else if (r < 85) {
            put(g, "It");
        } else {
            put(g, name_of(g));
        }
        if (has_eat && rnd_pct(g->rng, 50)) {
            put_phrase(g, " {is} ", plural, NULL);
            put_np(g, vp, nvp, 1);
        } else {
            put(g, " ");
            put_vp_list(g, vp, nvp, plural, rnd_pct(g->rng, 15));
        }
        put(g, ".");
    }
}

/* ---- realisation ---- */

static int starts_with_ci(const char *s, const char *prefix) {
    for (; *prefix; s++, prefix++) {
        char c = *s >= 'A' && *s <= 'Z' ? (char)(*s - 'A' + 'a') : *s;
        if (c != *prefix) return 0;
    }
    return 1;
}

/* Resolves {a} and capitalises sentence starts into out. */
static lora_status finalise(const gen *g, char *out, size_t outsz, lora_error *err) {
    size_t      o = 0;
    const char *s = g->buf;
    while (*s) {
        const char *piece  = NULL;
        char        one[2] = {0, 0};
        if (!strncmp(s, "{a} ", 4)) {
            const char *w  = s + 4;
            char        c0 = *w >= 'A' && *w <= 'Z' ? (char)(*w - 'A' + 'a') : *w;
            int         an = c0 && strchr("aeiou", c0) && !starts_with_ci(w, "one") &&
                     !starts_with_ci(w, "uni") && !starts_with_ci(w, "use") &&
                     !starts_with_ci(w, "eu");
            piece = an ? "an " : "a ";
            s += 4;
        } else {
            one[0] = *s++;
            piece  = one;
        }
        size_t k = strlen(piece);
        if (o + k >= outsz) {
            if (outsz) out[0] = '\0';
            return lora_errorf(err, LORA_ERR_ARG, "realise: output buffer of %zu bytes too small",
                               outsz);
        }
        memcpy(out + o, piece, k + 1);
        o += k;
    }
    for (size_t i = 0; i < o; i++) {
        int start = i == 0 || (i >= 2 && out[i - 1] == ' ' && out[i - 2] == '.');
        if (start && out[i] >= 'a' && out[i] <= 'z') out[i] = (char)(out[i] - 'a' + 'A');
    }
    return LORA_OK;
}

static int mr_valid(const lora_e2e_mr *mr) {
    for (int s = 0; s < LORA_E2E_N_SLOTS; s++)
        if (mr->value[s] < -1 || mr->value[s] >= SLOT_N_VALUES[s]) return 0;
    return mr->value[LORA_E2E_NAME] >= 0;
}

lora_status lora_e2e_realise(const lora_e2e_mr *mr, uint64_t *rng, char *buf, size_t bufsz,
                             lora_error *err) {
    if (!mr_valid(mr)) {
        return lora_errorf(err, LORA_ERR_ARG, "realise: MR without a name or with a bad value");
    }
    gen *g = malloc(sizeof *g);
    if (!g) return lora_errorf(err, LORA_ERR_NOMEM, "realise: out of memory");
    g->mr       = mr;
    g->rng      = rng;
    g->n        = 0;
    g->overflow = 0;
    g->buf[0]   = '\0';
    int eat     = mr->value[LORA_E2E_EAT_TYPE];
    g->eat_noun = eat >= 0 ? pick(rng, EAT_NOUN[eat]) : NULL;
    g->generic  = pick(rng, GENERIC_NOUN);
    g->eat_said = 0;

    int r[LORA_E2E_N_SLOTS], nr = 0;
    for (int s = 1; s < LORA_E2E_N_SLOTS; s++)
        if (mr->value[s] >= 0) r[nr++] = s;
    rnd_shuffle(rng, r, nr);
    /* E2E references mostly open with the venue type and the food: bias them forward */
    static const int forward[2][2] = {{LORA_E2E_FOOD, 55}, {LORA_E2E_EAT_TYPE, 75}};
    for (int f = 0; f < 2; f++) {
        if (!contains(r, nr, forward[f][0]) || !rnd_pct(rng, forward[f][1])) continue;
        nr = without(r, nr, forward[f][0]);
        memmove(r + 1, r, (size_t)nr * sizeof *r);
        r[0] = forward[f][0];
        nr++;
    }

    int n1;
    if (nr <= 1)
        n1 = nr;
    else if (nr <= 2)
        n1 = rnd_pct(rng, 80) ? nr : 1;
    else if (nr <= 4)
        n1 = rnd_pct(rng, 50) ? nr : 1 + rnd_int(rng, nr - 1);
    else
        n1 = rnd_pct(rng, 30) ? nr : 2 + rnd_int(rng, nr - 2);

    int has_loc = contains(r, n1, LORA_E2E_AREA) || contains(r, n1, LORA_E2E_NEAR);
    int w[7] = {28, n1 >= 1 ? 20 : 0, 10, has_loc ? 12 : 0, n1 >= 2 ? 12 : 0, 6, n1 >= 2 ? 12 : 0};
    switch (rnd_weighted(rng, w, 7)) {
    case 0:
        frame_copula(g, r, n1);
        break;
    case 1:
        frame_vp(g, r, n1);
        break;
    case 2:
        frame_exist(g, r, n1);
        break;
    case 3:
        frame_front_loc(g, r, n1);
        break;
    case 4:
        frame_appos(g, r, n1);
        break;
    case 5:
        frame_try(g, r, n1);
        break;
    default:
        frame_part(g, r, n1);
        break;
    }
    if (n1 < nr) put_followups(g, r + n1, nr - n1);

    lora_status st = LORA_OK;
    if (g->overflow) {
        st = lora_errorf(err, LORA_ERR_ARG, "realise: reference longer than %d bytes", GEN_CAP);
    } else {
        st = finalise(g, buf, bufsz, err);
    }
    free(g);
    return st;
}

/* ---- sampling MRs and splits ---- */

static const int SLOT_COUNT_WEIGHT[6]          = {5, 14, 25, 28, 20, 8}; /* 3..8 slots, E2E-like */
static const int SLOT_WEIGHT[LORA_E2E_N_SLOTS] = {0, 70, 72, 70, 68, 68, 66, 50};

/* Samples an MR; forced_food >= 0 puts that food in (with the given name). */
static void sample_mr(uint64_t *rng, lora_e2e_mr *mr, int name, int forced_food) {
    memset(mr->value, -1, sizeof mr->value);
    int k = 3 + rnd_weighted(rng, SLOT_COUNT_WEIGHT, 6);
    int w[LORA_E2E_N_SLOTS];
    memcpy(w, SLOT_WEIGHT, sizeof w);
    mr->value[LORA_E2E_NAME] = (int8_t)name;
    int have                 = 1;
    if (forced_food >= 0) {
        mr->value[LORA_E2E_FOOD] = (int8_t)forced_food;
        w[LORA_E2E_FOOD]         = 0;
        have++;
    }
    for (; have < k; have++) {
        int s = rnd_weighted(rng, w, LORA_E2E_N_SLOTS);
        w[s]  = 0;
        int v;
        do {
            v = rnd_int(rng, SLOT_N_VALUES[s]);
        } while (s == LORA_E2E_NEAR && !strcmp(NEARS[v], NAMES[name]));
        mr->value[s] = (int8_t)v;
    }
}

static uint64_t mr_key(const lora_e2e_mr *mr) {
    uint64_t k = 0;
    for (int s = 0; s < LORA_E2E_N_SLOTS; s++)
        k |= (uint64_t)(uint8_t)(mr->value[s] + 1) << (8 * s);
    return k;
}

static uint64_t mix64(uint64_t x) {
    return rnd_next(&x);
}

/* An open-addressing set of MR keys (never 0: the name is always present). */
typedef struct key_set {
    uint64_t *k;
    size_t    cap, n;
} key_set;

/* Inserts key; 1 if new, 0 if present, -1 on allocation failure. */
static int key_set_add(key_set *s, uint64_t key) {
    if (2 * (s->n + 1) > s->cap) {
        size_t    cap = s->cap ? 2 * s->cap : 1024;
        uint64_t *k   = calloc(cap, sizeof *k);
        if (!k) return -1;
        for (size_t i = 0; i < s->cap; i++) {
            if (!s->k[i]) continue;
            size_t h = (size_t)(mix64(s->k[i]) & (cap - 1));
            while (k[h])
                h = (h + 1) & (cap - 1);
            k[h] = s->k[i];
        }
        free(s->k);
        s->k   = k;
        s->cap = cap;
    }
    size_t h = (size_t)(mix64(key) & (s->cap - 1));
    while (s->k[h]) {
        if (s->k[h] == key) return 0;
        h = (h + 1) & (s->cap - 1);
    }
    s->k[h] = key;
    s->n++;
    return 1;
}

lora_e2e_params lora_e2e_params_default(void) {
    lora_e2e_params p = {1, 3000, 300, 100, 2, 6, 5, 10};
    return p;
}

void lora_e2e_dataset_free(lora_e2e_dataset *ds) {
    if (!ds) return;
    for (int sp = 0; sp < 3; sp++) {
        lora_e2e_split *s = &ds->split[sp];
        for (int32_t i = 0; i < s->n_items; i++) {
            for (int32_t j = 0; j < s->items[i].n_refs; j++)
                free(s->items[i].refs[j]);
            free(s->items[i].refs);
        }
        free(s->items);
    }
    free(ds);
}

/* Adds an item with k distinct references (as far as 30 draws per reference allow). */
static lora_status add_item(lora_e2e_split *s, int32_t *cap, const lora_e2e_mr *mr, int k,
                            uint64_t *rng, lora_error *err) {
    if (s->n_items == *cap) {
        int32_t        ncap  = *cap ? 2 * *cap : 64;
        lora_e2e_item *items = realloc(s->items, (size_t)ncap * sizeof *items);
        if (!items) return lora_errorf(err, LORA_ERR_NOMEM, "e2e: out of memory");
        s->items = items;
        *cap     = ncap;
    }
    lora_e2e_item *it = &s->items[s->n_items];
    it->mr            = *mr;
    it->n_refs        = 0;
    it->refs          = calloc((size_t)k, sizeof *it->refs);
    if (!it->refs) return lora_errorf(err, LORA_ERR_NOMEM, "e2e: out of memory");
    s->n_items++;
    char buf[LORA_E2E_REF_MAX];
    for (int j = 0; j < k; j++) {
        for (int attempt = 0; attempt < 30; attempt++) {
            lora_status st = lora_e2e_realise(mr, rng, buf, sizeof buf, err);
            if (st != LORA_OK) return st;
            int dup = 0;
            for (int q = 0; q < j && !dup; q++)
                dup = !strcmp(it->refs[q], buf);
            if (!dup) break;
        }
        it->refs[j] = strdup(buf);
        if (!it->refs[j]) return lora_errorf(err, LORA_ERR_NOMEM, "e2e: out of memory");
        it->n_refs++;
        s->n_refs++;
    }
    return LORA_OK;
}

#define E2E_MAX_SIZE 1000000

lora_status lora_e2e_generate(const lora_e2e_params *p, lora_e2e_dataset **out, lora_error *err) {
    *out = NULL;
    if (p->n_train < 0 || p->n_train > E2E_MAX_SIZE || p->n_dev < 0 || p->n_dev > E2E_MAX_SIZE ||
        p->n_test < 0 || p->n_test > E2E_MAX_SIZE) {
        return lora_errorf(err, LORA_ERR_ARG,
                           "e2e: split sizes must be between 0 and %d (got %d, %d, %d)",
                           E2E_MAX_SIZE, p->n_train, p->n_dev, p->n_test);
    }
    if (p->train_refs_min < 1 || p->train_refs_max < p->train_refs_min || p->train_refs_max > 20 ||
        p->test_refs_min < 1 || p->test_refs_max < p->test_refs_min || p->test_refs_max > 20) {
        return lora_errorf(err, LORA_ERR_ARG, "e2e: references per MR must be 1..20, min <= max");
    }
    lora_e2e_dataset *ds = calloc(1, sizeof *ds);
    if (!ds) return lora_errorf(err, LORA_ERR_NOMEM, "e2e: out of memory");
    ds->seed         = p->seed;
    key_set     seen = {0};
    lora_status st   = LORA_OK;
    uint64_t    rng  = p->seed ^ 0x5e2e5e2e5e2e5e2eull;
    for (int i = 0; i < LORA_E2E_N_NAMES; i++)
        ds->heldout_food[i] = (int8_t)rnd_int(&rng, SLOT_N_VALUES[LORA_E2E_FOOD]);

    /* test first (it claims its MRs), then dev, then train; each split its own stream */
    static const int order[3] = {LORA_E2E_TEST, LORA_E2E_DEV, LORA_E2E_TRAIN};
    for (int oi = 0; oi < 3 && st == LORA_OK; oi++) {
        int             sp  = order[oi];
        lora_e2e_split *s   = &ds->split[sp];
        int32_t         cap = 0;
        uint64_t        srng =
            p->seed * 0x9e3779b97f4a7c15ull + (uint64_t)(sp + 1) * 0x632be59bd9b4e019ull;
        int     test   = sp == LORA_E2E_TEST;
        int32_t target = sp == LORA_E2E_TRAIN ? p->n_train
                         : sp == LORA_E2E_DEV ? p->n_dev
                                              : p->n_test;
        int     rmin   = test ? p->test_refs_min : p->train_refs_min;
        int     rmax   = test ? p->test_refs_max : p->train_refs_max;
        int64_t budget = 1000 + 200 * (int64_t)target;
        for (;;) {
            int32_t have = test ? s->n_items : s->n_refs;
            if (have >= target) break;
            if (--budget < 0) {
                st = lora_errorf(err, LORA_ERR_ARG,
                                 "e2e: cannot find enough distinct MRs for %d items", target);
                break;
            }
            lora_e2e_mr mr;
            int         name = rnd_int(&srng, LORA_E2E_N_NAMES);
            if (test && s->n_items % 2 == 0)
                sample_mr(&srng, &mr, name, ds->heldout_food[name]);
            else
                sample_mr(&srng, &mr, name, -1);
            if (!test && mr.value[LORA_E2E_FOOD] == ds->heldout_food[name]) continue;
            int added = key_set_add(&seen, mr_key(&mr));
            if (added < 0) {
                st = lora_errorf(err, LORA_ERR_NOMEM, "e2e: out of memory");
                break;
            }
            if (added == 0) continue;
            int k = rmin + rnd_int(&srng, rmax - rmin + 1);
            if (!test && k > target - have) k = target - have;
            st = add_item(s, &cap, &mr, k, &srng, err);
            if (st != LORA_OK) break;
        }
    }
    free(seen.k);
    if (st != LORA_OK) {
        lora_e2e_dataset_free(ds);
        return st;
    }
    *out = ds;
    return LORA_OK;
}

/* ---- writing ---- */

/* Writes one cJSON object as a line; consumes obj. */
static lora_status put_json_line(FILE *fp, cJSON *obj, const char *path, lora_error *err) {
    char *line = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (!line) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory writing JSON", path);
    int bad = fputs(line, fp) == EOF || fputc('\n', fp) == EOF;
    free(line);
    return bad ? lora_errorf(err, LORA_ERR_IO, "%s: write failed", path) : LORA_OK;
}

static cJSON *json_pair(const char *prompt, const char *completion_text) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    size_t n = strlen(completion_text);
    char  *c = malloc(n + 2);
    if (!c) {
        cJSON_Delete(o);
        return NULL;
    }
    c[0] = ' ';
    memcpy(c + 1, completion_text, n + 1);
    int ok = cJSON_AddStringToObject(o, "prompt", prompt) != NULL &&
             cJSON_AddStringToObject(o, "completion", c) != NULL;
    free(c);
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *json_test(const char *prompt, const char *mr, const lora_e2e_item *it) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON *refs = cJSON_CreateArray();
    int    ok   = cJSON_AddStringToObject(o, "prompt", prompt) != NULL && refs != NULL &&
             cJSON_AddItemToObject(o, "references", refs);
    if (!ok) cJSON_Delete(refs);
    for (int32_t j = 0; ok && j < it->n_refs; j++) {
        cJSON *r = cJSON_CreateString(it->refs[j]);
        ok       = r != NULL && cJSON_AddItemToArray(refs, r);
        if (!ok) cJSON_Delete(r);
    }
    ok = ok && cJSON_AddStringToObject(o, "mr", mr) != NULL;
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

enum { OUT_PAIRS, OUT_TEST_JSONL, OUT_REFS, OUT_MRS };

static lora_status write_one(const lora_e2e_split *s, int kind, const char *path, lora_error *err) {
    lora_atomic_file af;
    lora_status      st = lora_atomic_open(&af, path, err);
    if (st != LORA_OK) return st;
    char mr[LORA_E2E_MR_MAX], prompt[LORA_E2E_MR_MAX];
    for (int32_t i = 0; i < s->n_items && st == LORA_OK; i++) {
        const lora_e2e_item *it = &s->items[i];
        st                      = lora_e2e_mr_format(&it->mr, mr, sizeof mr, err);
        if (st == LORA_OK) st = lora_e2e_prompt(&it->mr, prompt, sizeof prompt, err);
        if (st != LORA_OK) break;
        switch (kind) {
        case OUT_PAIRS:
            for (int32_t j = 0; j < it->n_refs && st == LORA_OK; j++)
                st = put_json_line(af.fp, json_pair(prompt, it->refs[j]), path, err);
            break;
        case OUT_TEST_JSONL:
            st = put_json_line(af.fp, json_test(prompt, mr, it), path, err);
            break;
        case OUT_REFS:
            if (i > 0 && fputc('\n', af.fp) == EOF) st = LORA_ERR_IO;
            for (int32_t j = 0; j < it->n_refs && st == LORA_OK; j++)
                if (fprintf(af.fp, "%s\n", it->refs[j]) < 0) st = LORA_ERR_IO;
            if (st != LORA_OK) st = lora_errorf(err, st, "%s: write failed", path);
            break;
        default:
            if (fprintf(af.fp, "%s\n", mr) < 0)
                st = lora_errorf(err, LORA_ERR_IO, "%s: write failed", path);
            break;
        }
    }
    if (st != LORA_OK) {
        lora_atomic_abort(&af);
        return st;
    }
    return lora_atomic_commit(&af, err);
}

lora_status lora_e2e_write(const lora_e2e_dataset *ds, const char *dir, lora_error *err) {
    static const struct {
        int         split, kind;
        const char *name;
    } files[]      = {{LORA_E2E_TRAIN, OUT_PAIRS, "train.jsonl"},
                      {LORA_E2E_DEV, OUT_PAIRS, "dev.jsonl"},
                      {LORA_E2E_TEST, OUT_TEST_JSONL, "test.jsonl"},
                      {LORA_E2E_TEST, OUT_REFS, "test.refs.txt"},
                      {LORA_E2E_TEST, OUT_MRS, "test.mr.txt"}};
    lora_status st = lora_mkdirs(dir, err);
    if (st != LORA_OK) return st;
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        char path[4096];
        st = lora_path_join(path, sizeof path, dir, files[f].name, err);
        if (st == LORA_OK) st = write_one(&ds->split[files[f].split], files[f].kind, path, err);
        if (st != LORA_OK) return st;
    }
    return LORA_OK;
}
