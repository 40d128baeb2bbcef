/*
 * test_decode.c — the KV-cache decoder and the sampler.
 *
 * The decoder against lora_model_forward on the whole sequence (with LoRA adapters whose B is
 * non-zero, on a tied tanh-GELU model and an untied erf-GELU one): logits after prefill and
 * every step, greedy generation, step_all against separate feeds, copy_seq, reset and errors.
 * The sampler: greedy, top-k, top-p, temperature, reproducibility, and frequencies against the
 * softmax (chi-square). Beam search: against a plain reference (Hugging Face's procedure with
 * full forwards, no cache) over beams, length penalties, n-gram bans, end tokens and stopping
 * modes; against exhaustive enumeration when the beams can hold every prefix; n-gram bans, the
 * length penalty deciding the winner, one beam = greedy, batched prompts = single ones, errors.
 */
#include "test_helper.h"
#include "tiny_model.h"

#include <math.h>
#include <string.h>
#include <time.h>

static char root[4096];

/* ---- models ---- */

/* Like tiny_write, with an untied lm_head.weight when the config asks for one. */
static int write_model(const char *dir, const lora_config *c, uint64_t seed) {
    if (c->tie_word_embeddings) return tiny_write(dir, c, NULL, seed);
    char path[4200];
    lora_mkdirs(dir, NULL);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (hf_config_write(path, c, "float32", NULL) != LORA_OK) return -1;
    int64_t C = c->n_embd, F = c->n_inner;
    struct {
        char    name[64];
        int64_t d0, d1;
        int     kind; /* 0 weight, 1 bias, 2 layer-norm weight */
    } t[64];
    int n = 0;
#define ADD(nm, a, b, k)                                                                       \
    (snprintf(t[n].name, 64, "%s", nm), t[n].d0 = a, t[n].d1 = b, t[n++].kind = k)
    ADD("transformer.wte.weight", c->vocab_size, C, 0);
    ADD("transformer.wpe.weight", c->n_positions, C, 0);
    for (int l = 0; l < c->n_layer; l++) {
        static const struct {
            const char *s;
            int         d0, d1, kind; /* 1 = C, 2 = 3C, 3 = F */
        } lt[] = {{"ln_1.weight", 1, 0, 2},        {"ln_1.bias", 1, 0, 1},
                  {"attn.c_attn.weight", 1, 2, 0}, {"attn.c_attn.bias", 2, 0, 1},
                  {"attn.c_proj.weight", 1, 1, 0}, {"attn.c_proj.bias", 1, 0, 1},
                  {"ln_2.weight", 1, 0, 2},        {"ln_2.bias", 1, 0, 1},
                  {"mlp.c_fc.weight", 1, 3, 0},    {"mlp.c_fc.bias", 3, 0, 1},
                  {"mlp.c_proj.weight", 3, 1, 0},  {"mlp.c_proj.bias", 1, 0, 1}};
        for (size_t i = 0; i < sizeof lt / sizeof lt[0]; i++) {
            int64_t dim[4] = {0, C, 3 * C, F};
            char    nm[64];
            snprintf(nm, sizeof nm, "transformer.h.%d.%s", l, lt[i].s);
            ADD(nm, dim[lt[i].d0], dim[lt[i].d1], lt[i].kind);
        }
    }
    ADD("transformer.ln_f.weight", C, 0, 2);
    ADD("transformer.ln_f.bias", C, 0, 1);
    ADD("lm_head.weight", c->vocab_size, C, 0);
#undef ADD
    st_writer *w = st_writer_new();
    float     *bufs[64];
    int        rc = w ? 0 : -1;
    for (int i = 0; i < n; i++) {
        int64_t numel = t[i].d0 * (t[i].d1 ? t[i].d1 : 1);
        bufs[i]       = malloc((size_t)numel * sizeof(float));
        uint64_t key  = rng_key(seed, (uint64_t)i, 9);
        for (int64_t j = 0; j < numel; j++) {
            float z    = rng_normal(key, (uint64_t)j);
            bufs[i][j] = t[i].kind == 0 ? 0.05f * z : t[i].kind == 1 ? 0.02f * z : 1 + 0.1f * z;
        }
        int64_t shape[2] = {t[i].d0, t[i].d1};
        if (w && st_writer_add(w, t[i].name, ST_F32, t[i].d1 ? 2 : 1, shape, bufs[i], NULL) !=
                     LORA_OK)
            rc = -1;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (rc == 0 && st_writer_write(w, path, NULL) != LORA_OK) rc = -1;
    st_writer_free(w);
    for (int i = 0; i < n; i++) free(bufs[i]);
    return rc;
}

/* The second model: untied head, erf GELU, three heads, sizes not powers of two. */
static lora_config odd_config(void) {
    lora_config c         = tiny_config();
    c.n_head              = 3;
    c.n_embd              = 48;
    c.n_inner             = 100;
    c.vocab_size          = 71;
    c.n_positions         = 20;
    c.activation          = LORA_ACT_GELU_ERF;
    c.tie_word_embeddings = 0;
    return c;
}

/* The third: a longer context, so that attention over the cache runs multi-threaded. */
static lora_config wide_config(void) {
    lora_config c = tiny_config();
    c.n_head      = 4;
    c.n_embd      = 64;
    c.n_inner     = 256;
    c.n_positions = 96;
    return c;
}

/* Loads a model and attaches LoRA on q, v, attn.c_proj, mlp.c_fc and mlp.c_proj with every
 * B set to random non-zero values (so the adapters change the output). */
static lora_model *load_with_lora(const char *dir, uint64_t seed) {
    lora_model *m = NULL;
    lora_error  err;
    if (lora_model_load(dir, &m, &err) != LORA_OK) {
        fprintf(stderr, "load %s: %s\n", dir, err.msg);
        return NULL;
    }
    lora_adapter_params p = lora_adapter_params_default();
    p.r                   = 4;
    p.dropout             = 0.2f; /* must not apply: the decoder never trains */
    p.targets = LORA_TARGET_Q | LORA_TARGET_V | LORA_TARGET_ATTN_PROJ | LORA_TARGET_MLP_FC |
                LORA_TARGET_MLP_PROJ;
    if (lora_model_attach(m, &p, &err) != LORA_OK) {
        fprintf(stderr, "attach: %s\n", err.msg);
        lora_model_free(m);
        return NULL;
    }
    static const char *sites[] = {"attn.c_attn.q", "attn.c_attn.v", "attn.c_proj", "mlp.c_fc",
                                  "mlp.c_proj"};
    int found = 0;
    for (int32_t l = 0; l < lora_model_config(m)->n_layer; l++)
        for (size_t s = 0; s < sizeof sites / sizeof sites[0]; s++) {
            char             name[96];
            lora_tensor_info info;
            snprintf(name, sizeof name, "h.%d.%s.lora_B", (int)l, sites[s]);
            if (lora_model_trainable_find(m, name, &info) != LORA_OK) continue;
            uint64_t key = rng_key(seed, (uint64_t)l, s);
            for (int64_t j = 0; j < info.numel; j++) info.data[j] = 0.1f * rng_normal(key, j);
            found++;
        }
    test_condf(found == 5 * lora_model_config(m)->n_layer, "found %d lora_B tensors", found);
    return m;
}

static void random_tokens(int32_t *t, int n, int32_t V, uint64_t seed) {
    uint64_t key = rng_key(seed, 3, 4);
    for (int i = 0; i < n; i++) t[i] = (int32_t)(rng_uniform(key, (uint64_t)i) * (float)V) % V;
}

/* Reference logits (T, V) of the whole sequence by the training forward; malloc'd. */
static float *full_logits(lora_model *m, const int32_t *toks, int T) {
    lora_error err;
    int32_t    V = lora_model_config(m)->vocab_size;
    lora_model_set_training(m, 0);
    if (lora_model_forward(m, toks, NULL, 1, T, NULL, &err) != LORA_OK) {
        fprintf(stderr, "forward: %s\n", err.msg);
        return NULL;
    }
    float *out = malloc((size_t)T * V * sizeof(float));
    memcpy(out, lora_model_logits(m), (size_t)T * V * sizeof(float));
    return out;
}

/* ---- the decoder against the full forward ---- */

static void test_matches_forward(const char *dir, int decoder_before_attach, int prefill) {
    lora_model *m = load_with_lora(dir, 5);
    if (!m) {
        test_cond("model loads", 0);
        return;
    }
    const lora_config *c = lora_model_config(m);
    int                T = c->n_positions, V = c->vocab_size;
    int32_t           *toks = malloc((size_t)T * sizeof(int32_t));
    random_tokens(toks, T, V, 17);
    float *ref = full_logits(m, toks, T);

    lora_decoder *d = NULL;
    lora_error    err;
    lora_model   *plain = NULL;
    if (decoder_before_attach) {
        /* a decoder created on a model without adapters picks them up once attached */
        lora_model_load(dir, &plain, &err);
        lora_decoder_init(plain, 1, 0, &d, &err);
        lora_adapter_params p = lora_adapter_params_default();
        p.r                   = 4;
        p.targets = LORA_TARGET_Q | LORA_TARGET_V | LORA_TARGET_ATTN_PROJ | LORA_TARGET_MLP_FC |
                    LORA_TARGET_MLP_PROJ;
        lora_model_attach(plain, &p, &err);
        for (int32_t i = 0; i < lora_model_n_trainable(m); i++) {
            lora_tensor_info a, b;
            lora_model_trainable(m, i, &a);
            test_cond("same tensor set", lora_model_trainable_find(plain, a.name, &b) == 0);
            memcpy(b.data, a.data, (size_t)a.numel * sizeof(float));
        }
    } else {
        test_cond("decoder init", lora_decoder_init(m, 1, 0, &d, &err) == LORA_OK);
    }
    lora_model *dm = decoder_before_attach ? plain : m;
    lora_model_set_training(dm, 1); /* the decoder must ignore it: no dropout */
    test_cond("max_len defaults to n_positions", lora_decoder_max_len(d) == T);
    test_cond("no logits before a token", lora_decoder_logits(d, 0) == NULL);

    /* a prefill, steps of 1, a chunk of 3 continuing from the cache, then steps to the end */
    int    chunks[] = {prefill, 1, 1, 3}, pos = 0, k = 0;
    double worst    = 0;
    while (pos < T) {
        int n = k < 4 ? chunks[k++] : 1;
        if (pos + n > T) n = T - pos;
        lora_status st = lora_decoder_feed(d, 0, toks + pos, n, &err);
        test_condf(st == LORA_OK, "feed at %d: %s", pos, err.msg);
        pos += n;
        test_cond("length advances", lora_decoder_length(d, 0) == pos);
        const float *lg = lora_decoder_logits(d, 0);
        double       e  = lg ? test_max_abs_diff(lg, ref + (size_t)(pos - 1) * V, (size_t)V) : 1;
        worst           = e > worst ? e : worst;
    }
    test_condf(worst <= 1e-5, "%s: decoder logits differ from the full forward by %.3g",
               decoder_before_attach ? "late attach" : dir, worst);

    /* the model's own forward is undisturbed by the decoder */
    float *again = full_logits(m, toks, T);
    test_cond("forward after decoding is unchanged",
              again && memcmp(again, ref, (size_t)T * V * sizeof(float)) == 0);

    /* full */
    lora_status st = lora_decoder_feed(d, 0, toks, 1, &err);
    test_condf(st == LORA_ERR_STATE, "feed past max_len: status %d", st);
    test_condf(strstr(err.msg, "max_len") && !strchr(err.msg, '\n'), "message: %s", err.msg);
    test_cond("a failed feed leaves the length", lora_decoder_length(d, 0) == T);

    /* reset, then the same tokens give the same logits */
    lora_decoder_reset(d, -1);
    test_cond("reset empties", lora_decoder_length(d, 0) == 0 && !lora_decoder_logits(d, 0));
    lora_decoder_feed(d, 0, toks, 7, &err);
    const float *lg = lora_decoder_logits(d, 0);
    test_cond("after reset", lg && test_max_abs_diff(lg, ref + 6 * (size_t)V, (size_t)V) <= 1e-5);

    lora_decoder_free(d);
    lora_model_free(plain);
    lora_model_free(m);
    free(again);
    free(ref);
    free(toks);
}

/* Greedy generation of 12 tokens with the cache gives the tokens of full recomputation. */
static void test_greedy_generation(const char *dir) {
    lora_model *m = load_with_lora(dir, 8);
    if (!m) return;
    const lora_config *c = lora_model_config(m);
    int                V = c->vocab_size, n_prompt = 3, n_new = 12;
    int32_t            a[32], b[32];
    random_tokens(a, n_prompt, V, 99);
    memcpy(b, a, sizeof a);
    lora_error    err;
    lora_decoder *d = NULL;
    lora_decoder_init(m, 1, n_prompt + n_new, &d, &err);
    lora_decoder_feed(d, 0, a, n_prompt, &err);
    for (int i = 0; i < n_new; i++) {
        a[n_prompt + i] = lora_argmax(lora_decoder_logits(d, 0), V);
        if (i + 1 < n_new) lora_decoder_feed(d, 0, &a[n_prompt + i], 1, &err);
    }
    for (int i = 0; i < n_new; i++) {
        int T = n_prompt + i;
        lora_model_forward(m, b, NULL, 1, T, NULL, &err);
        b[T] = lora_argmax(lora_model_logits(m) + (size_t)(T - 1) * V, V);
    }
    test_cond("greedy with the cache = greedy by recomputation",
              memcmp(a, b, (size_t)(n_prompt + n_new) * sizeof(int32_t)) == 0);
    printf("greedy tokens:");
    for (int i = 0; i < n_prompt + n_new; i++) printf(" %d", (int)a[i]);
    printf("\n");
    lora_decoder_free(d);
    lora_model_free(m);
}

/* step_all over 3 sequences of different lengths = feeding each sequence separately. */
static void test_step_all(const char *dir) {
    lora_model *m = load_with_lora(dir, 9);
    if (!m) return;
    int           V = lora_model_config(m)->vocab_size;
    lora_error    err;
    lora_decoder *batch = NULL, *single = NULL;
    test_cond("init", lora_decoder_init(m, 3, 12, &batch, &err) == LORA_OK);
    test_cond("init", lora_decoder_init(m, 3, 12, &single, &err) == LORA_OK);
    int32_t prompt[3][8], lens[3] = {2, 5, 1};
    for (int s = 0; s < 3; s++) {
        random_tokens(prompt[s], lens[s], V, 100 + (uint64_t)s);
        lora_decoder_feed(batch, s, prompt[s], lens[s], &err);
        lora_decoder_feed(single, s, prompt[s], lens[s], &err);
    }
    double worst = 0;
    for (int step = 0; step < 5; step++) {
        int32_t next[3];
        for (int s = 0; s < 3; s++) next[s] = lora_argmax(lora_decoder_logits(batch, s), V);
        test_condf(lora_decoder_step_all(batch, next, &err) == LORA_OK, "step_all: %s", err.msg);
        for (int s = 0; s < 3; s++) {
            lora_decoder_feed(single, s, &next[s], 1, &err);
            test_cond("lengths agree",
                      lora_decoder_length(batch, s) == lora_decoder_length(single, s));
            double e = test_max_abs_diff(lora_decoder_logits(batch, s),
                                         lora_decoder_logits(single, s), (size_t)V);
            worst    = e > worst ? e : worst;
        }
    }
    test_condf(worst <= 1e-5, "step_all differs from separate feeds by %.3g", worst);

    /* a sequence that is full stops step_all, which then changes nothing */
    int32_t fill[12] = {0}, ones[3] = {1, 1, 1};
    lora_decoder_reset(batch, 2);
    lora_decoder_feed(batch, 2, fill, 12, &err);
    int32_t len0 = lora_decoder_length(batch, 0);
    test_cond("step_all with a full sequence",
              lora_decoder_step_all(batch, ones, &err) == LORA_ERR_STATE);
    test_cond("nothing advanced", lora_decoder_length(batch, 0) == len0);
    int32_t bad[3] = {1, V, 1};
    lora_decoder_reset(batch, 2);
    test_cond("step_all with a bad id", lora_decoder_step_all(batch, bad, &err) == LORA_ERR_ARG);
    test_cond("nothing advanced", lora_decoder_length(batch, 0) == len0);
    /* sequence 2 is empty now: step_all starts it at position 0 */
    test_cond("step_all from an empty sequence",
              lora_decoder_step_all(batch, ones, &err) == LORA_OK);
    lora_decoder_reset(single, 2);
    lora_decoder_feed(single, 2, ones, 1, &err);
    test_cond("... equals a feed", test_max_abs_diff(lora_decoder_logits(batch, 2),
                                                     lora_decoder_logits(single, 2),
                                                     (size_t)V) <= 1e-5);
    lora_decoder_free(batch);
    lora_decoder_free(single);
    lora_model_free(m);
}

/* copy_seq forks a sequence: both continue as if each had been fed the whole history. */
static void test_copy_seq(const char *dir) {
    lora_model *m = load_with_lora(dir, 10);
    if (!m) return;
    int           V = lora_model_config(m)->vocab_size;
    lora_error    err;
    lora_decoder *d = NULL;
    lora_decoder_init(m, 2, 0, &d, &err);
    int32_t toks[8];
    random_tokens(toks, 8, V, 55);
    lora_decoder_feed(d, 0, toks, 4, &err);
    lora_decoder_feed(d, 1, toks + 4, 2, &err); /* something to overwrite */
    test_cond("copy", lora_decoder_copy_seq(d, 1, 0, &err) == LORA_OK);
    test_cond("copy takes the length", lora_decoder_length(d, 1) == 4);
    test_cond("copy takes the logits", memcmp(lora_decoder_logits(d, 0), lora_decoder_logits(d, 1),
                                              (size_t)V * sizeof(float)) == 0);
    /* the same token on both: identical */
    lora_decoder_feed(d, 0, &toks[4], 1, &err);
    lora_decoder_feed(d, 1, &toks[4], 1, &err);
    test_cond("same continuation", memcmp(lora_decoder_logits(d, 0), lora_decoder_logits(d, 1),
                                          (size_t)V * sizeof(float)) == 0);
    /* diverge: sequence 1 takes another token; both match the full forward */
    int32_t alt[6] = {toks[0], toks[1], toks[2], toks[3], toks[4], (toks[5] + 1) % V};
    lora_decoder_feed(d, 0, &toks[5], 1, &err);
    lora_decoder_feed(d, 1, &alt[5], 1, &err);
    float *r0 = full_logits(m, toks, 6), *r1 = full_logits(m, alt, 6);
    test_cond("sequence 0 after the fork",
              test_max_abs_diff(lora_decoder_logits(d, 0), r0 + 5 * (size_t)V, V) <= 1e-5);
    test_cond("sequence 1 after the fork",
              test_max_abs_diff(lora_decoder_logits(d, 1), r1 + 5 * (size_t)V, V) <= 1e-5);
    test_cond("copy onto itself", lora_decoder_copy_seq(d, 0, 0, &err) == LORA_OK);
    test_cond("copy out of range", lora_decoder_copy_seq(d, 2, 0, &err) == LORA_ERR_ARG);
    test_cond("copy out of range", lora_decoder_copy_seq(d, 0, -1, &err) == LORA_ERR_ARG);
    free(r0);
    free(r1);
    lora_decoder_free(d);
    lora_model_free(m);
}

/* An adapter saved as a PEFT directory and loaded into a fresh model decodes the same. */
static void test_adapter_dir(const char *dir) {
    lora_model *m = load_with_lora(dir, 12), *m2 = NULL;
    if (!m) return;
    char       adir[4300];
    lora_error err;
    snprintf(adir, sizeof adir, "%s/adapter", root);
    lora_status st = lora_adapter_save(m, adir, "tiny", &err);
    test_condf(st == LORA_OK, "adapter save: %s", err.msg);
    if (st == LORA_OK && lora_model_load(dir, &m2, &err) == LORA_OK) {
        st = lora_adapter_load(m2, adir, &err);
        test_condf(st == LORA_OK, "adapter load: %s", err.msg);
        int           V = lora_model_config(m)->vocab_size;
        lora_decoder *a = NULL, *b = NULL;
        lora_decoder_init(m, 1, 0, &a, &err);
        lora_decoder_init(m2, 1, 0, &b, &err);
        int32_t toks[10];
        random_tokens(toks, 10, V, 77);
        lora_decoder_feed(a, 0, toks, 6, &err);
        lora_decoder_feed(b, 0, toks, 6, &err);
        double e = test_max_abs_diff(lora_decoder_logits(a, 0), lora_decoder_logits(b, 0), V);
        for (int i = 6; i < 10; i++) {
            lora_decoder_feed(a, 0, &toks[i], 1, &err);
            lora_decoder_feed(b, 0, &toks[i], 1, &err);
            double ei = test_max_abs_diff(lora_decoder_logits(a, 0), lora_decoder_logits(b, 0), V);
            e         = ei > e ? ei : e;
        }
        test_condf(e <= 1e-5, "decoding with the loaded adapter differs by %.3g", e);
        lora_decoder_free(a);
        lora_decoder_free(b);
    }
    lora_model_free(m2);
    lora_model_free(m);
}

static void test_errors(const char *dir) {
    lora_model *m = NULL;
    lora_error  err;
    memset(&err, 0, sizeof err);
    lora_model_load(dir, &m, &err);
    if (!m) return;
    const lora_config *c = lora_model_config(m);
    lora_decoder      *d = NULL;
    test_cond("max_len > n_positions",
              lora_decoder_init(m, 1, c->n_positions + 1, &d, &err) == LORA_ERR_ARG && !d);
    test_condf(strstr(err.msg, "n_positions") != NULL, "message: %s", err.msg);
    test_cond("n_seq 0", lora_decoder_init(m, 0, 4, &d, &err) == LORA_ERR_ARG && !d);
    test_cond("NULL model", lora_decoder_init(NULL, 1, 4, &d, &err) == LORA_ERR_ARG);
    test_cond("init", lora_decoder_init(m, 2, 4, &d, &err) == LORA_OK);
    int32_t ok[5] = {1, 2, 3, 4, 5}, bad[2] = {1, c->vocab_size};
    test_cond("bad id", lora_decoder_feed(d, 0, bad, 2, &err) == LORA_ERR_ARG);
    test_condf(strstr(err.msg, "vocabulary") && !strchr(err.msg, '\n'), "message: %s", err.msg);
    int32_t neg = -1;
    test_cond("negative id", lora_decoder_feed(d, 0, &neg, 1, &err) == LORA_ERR_ARG);
    test_cond("nothing fed", lora_decoder_length(d, 0) == 0 && !lora_decoder_logits(d, 0));
    test_cond("seq out of range", lora_decoder_feed(d, 2, ok, 1, &err) == LORA_ERR_ARG);
    test_cond("seq negative", lora_decoder_feed(d, -1, ok, 1, &err) == LORA_ERR_ARG);
    test_cond("n = 0", lora_decoder_feed(d, 0, ok, 0, &err) == LORA_ERR_ARG);
    test_cond("NULL tokens", lora_decoder_feed(d, 0, NULL, 1, &err) == LORA_ERR_ARG);
    test_cond("past max_len", lora_decoder_feed(d, 0, ok, 5, &err) == LORA_ERR_STATE);
    test_cond("fits", lora_decoder_feed(d, 0, ok, 3, &err) == LORA_OK);
    float keep[128];
    memcpy(keep, lora_decoder_logits(d, 0), (size_t)c->vocab_size * sizeof(float));
    test_cond("one more does not", lora_decoder_feed(d, 0, ok, 2, &err) == LORA_ERR_STATE);
    test_cond("logits kept", !memcmp(keep, lora_decoder_logits(d, 0),
                                     (size_t)c->vocab_size * sizeof(float)));
    test_cond("length(-1)", lora_decoder_length(d, -1) == -1 && lora_decoder_length(d, 2) == -1);
    test_cond("logits(out of range)", !lora_decoder_logits(d, 5));
    lora_decoder_reset(d, 7); /* ignored */
    test_cond("reset out of range ignored", lora_decoder_length(d, 0) == 3);
    lora_decoder_free(d);
    lora_decoder_free(NULL);
    lora_model_free(m);
}

/* Decode speed on the tiny model (informational). */
static void bench(const char *dir) {
    lora_model *m = load_with_lora(dir, 3);
    if (!m) return;
    int           V = lora_model_config(m)->vocab_size, P = lora_model_config(m)->n_positions;
    lora_error    err;
    lora_decoder *d = NULL;
    lora_decoder_init(m, 1, 0, &d, &err);
    struct timespec t0, t1;
    int32_t         tok = 1;
    long            n   = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int rep = 0; rep < 200; rep++) {
        lora_decoder_reset(d, 0);
        for (int i = 0; i < P; i++, n++) {
            lora_decoder_feed(d, 0, &tok, 1, &err);
            tok = lora_argmax(lora_decoder_logits(d, 0), V);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("decode on %s: %.0f tokens/s (%ld tokens, one at a time)\n", dir, (double)n / s, n);
    lora_decoder_free(d);
    lora_model_free(m);
}

/* ---- beam search ---- */

/*
 * The reference: Hugging Face's beam search written out plainly, without a cache. Every step
 * runs lora_model_forward over the full sequences of the running beams, takes the log-softmax
 * in double, bans n-grams by searching the sequence for each candidate, sorts every
 * candidate of every beam, and walks the best max(2, 1 + #end tokens) K of them.
 */
#define REF_MAXT 64

typedef struct ref_hyp {
    double score, sum;
    int    n, length, finished;
    long   order;
    int    toks[REF_MAXT];
} ref_hyp;

typedef struct ref_cand {
    double s;
    int    tok, parent;
} ref_cand;

static int ref_cand_cmp(const void *pa, const void *pb) {
    const ref_cand *a = pa, *b = pb;
    if (a->s != b->s) return a->s > b->s ? -1 : 1;
    if (a->tok != b->tok) return a->tok - b->tok;
    return a->parent - b->parent;
}

/* 1 when appending v to seq (L tokens) repeats an n-gram already in seq */
static int ref_banned(const int32_t *seq, int L, int v, int n) {
    if (n <= 0 || L + 1 < n) return 0;
    for (int i = 0; i + n <= L; i++) {
        int same = seq[i + n - 1] == v;
        for (int k = 0; k < n - 1 && same; k++) same = seq[i + k] == seq[L - n + 1 + k];
        if (same) return 1;
    }
    return 0;
}

static int ref_is_end(const lora_beam_params *p, int v) {
    if (v == p->eos) return 1;
    for (int i = 0; i < p->n_stop_ids; i++)
        if (p->stop_ids[i] == v) return 1;
    return 0;
}

static void ref_add(ref_hyp *h, int *n_hyp, int K, long *order, const int32_t *gen, int n_gen,
                    int last, int length, double sum, int finished, double lp) {
    double score = sum / pow(length, lp);
    int    at    = *n_hyp;
    if (*n_hyp == K) {
        at = 0;
        for (int i = 1; i < K; i++)
            if (h[i].score < h[at].score || (h[i].score == h[at].score && h[i].order < h[at].order))
                at = i;
        if (!(score > h[at].score)) return;
    } else {
        (*n_hyp)++;
    }
    h[at].score = score, h[at].sum = sum, h[at].length = length, h[at].finished = finished;
    h[at].order = (*order)++;
    h[at].n     = n_gen;
    memcpy(h[at].toks, gen, (size_t)n_gen * sizeof(int));
    if (last >= 0) h[at].toks[h[at].n++] = last;
}

static void ref_beam(lora_model *m, const int32_t *prompt, int n_prompt,
                     const lora_beam_params *p, int32_t *out, lora_beam_result *res) {
    int     K = p->n_beams, V = lora_model_config(m)->vocab_size, M = p->max_new;
    int     n_end = (p->eos >= 0) + p->n_stop_ids, cap = (n_end + 1 > 2 ? n_end + 1 : 2) * K;
    int32_t (*seq)[REF_MAXT]  = calloc((size_t)K, sizeof *seq);
    int32_t (*nseq)[REF_MAXT] = calloc((size_t)K, sizeof *nseq);
    int32_t  *flat            = malloc((size_t)K * REF_MAXT * sizeof(int32_t));
    double   *sum = calloc((size_t)K, sizeof(double)), *nsum = calloc((size_t)K, sizeof(double));
    ref_cand *cand = malloc((size_t)K * V * sizeof *cand);
    ref_hyp  *hyp  = calloc((size_t)K, sizeof *hyp);
    int       n_run = 1, n_hyp = 0, done = 0;
    long      order = 0;
    double    lp    = p->length_penalty;
    lora_error err;
    memcpy(seq[0], prompt, (size_t)n_prompt * sizeof(int32_t));
    memset(res, 0, sizeof *res);
    res->score = M == 0 ? 0.0 : -INFINITY;
    lora_model_set_training(m, 0);
    for (int t = 0; t < M && !done; t++) {
        int L = n_prompt + t, nc = 0;
        for (int j = 0; j < n_run; j++) memcpy(flat + (size_t)j * L, seq[j], L * sizeof(int32_t));
        if (lora_model_forward(m, flat, NULL, n_run, L, NULL, &err) != LORA_OK) {
            fprintf(stderr, "reference forward: %s\n", err.msg);
            break;
        }
        for (int j = 0; j < n_run; j++) {
            const float *z  = lora_model_logits(m) + ((size_t)j * L + L - 1) * V;
            double       mx = -INFINITY, se = 0;
            for (int v = 0; v < V; v++) mx = z[v] > mx ? z[v] : mx;
            for (int v = 0; v < V; v++) se += exp(z[v] - mx);
            for (int v = 0; v < V; v++) {
                if (ref_banned(seq[j], L, v, p->no_repeat_ngram)) continue;
                cand[nc].s      = sum[j] + (z[v] - mx - log(se));
                cand[nc].tok    = v;
                cand[nc].parent = j;
                nc++;
            }
        }
        qsort(cand, (size_t)nc, sizeof *cand, ref_cand_cmp);
        int n_new = 0;
        for (int r = 0; r < nc && r < cap && n_new < K; r++) {
            ref_cand *c = &cand[r];
            if (ref_is_end(p, c->tok)) {
                if (r < K)
                    ref_add(hyp, &n_hyp, K, &order, seq[c->parent] + n_prompt, t,
                            c->tok == p->eos ? -1 : c->tok, t + 1, c->s, 1, lp);
                continue;
            }
            memcpy(nseq[n_new], seq[c->parent], L * sizeof(int32_t));
            nseq[n_new][L] = c->tok;
            nsum[n_new++]  = c->s;
        }
        if (n_hyp == K) {
            double worst = INFINITY;
            for (int i = 0; i < K; i++) worst = hyp[i].score < worst ? hyp[i].score : worst;
            int mode = K == 1 ? LORA_BEAM_STOP_FIRST_K : (int)p->early_stopping;
            if (mode == LORA_BEAM_STOP_FIRST_K) done = 1;
            else if (mode == LORA_BEAM_STOP_HEURISTIC)
                done = worst >= cand[0].s / pow(t + 1, lp);
            else
                done = n_new == 0 || worst >= nsum[0] / pow(lp > 0 ? M : t + 2, lp);
        }
        if (!done && (t + 1 == M || n_new == 0)) {
            for (int j = 0; j < n_new; j++)
                ref_add(hyp, &n_hyp, K, &order, nseq[j] + n_prompt, t + 1, -1, t + 1, nsum[j], 0,
                        lp);
            done = 1;
        }
        memcpy(seq, nseq, (size_t)K * sizeof *seq);
        memcpy(sum, nsum, (size_t)K * sizeof *sum);
        n_run = n_new;
        res->n_steps++;
    }
    if (n_hyp > 0) {
        int best = 0;
        for (int i = 1; i < n_hyp; i++)
            if (hyp[i].score > hyp[best].score ||
                (hyp[i].score == hyp[best].score && hyp[i].order < hyp[best].order))
                best = i;
        for (int i = 0; i < hyp[best].n; i++) out[i] = hyp[best].toks[i];
        res->n_tokens     = hyp[best].n;
        res->finished     = hyp[best].finished;
        res->length       = hyp[best].length;
        res->sum_logprobs = hyp[best].sum;
        res->score        = hyp[best].score;
    }
    free(seq), free(nseq), free(flat), free(sum), free(nsum), free(cand), free(hyp);
}

static int same_result(const int32_t *a, const lora_beam_result *ra, const int32_t *b,
                       const lora_beam_result *rb, double tol) {
    if (ra->n_tokens != rb->n_tokens || ra->finished != rb->finished || ra->length != rb->length)
        return 0;
    if (memcmp(a, b, (size_t)ra->n_tokens * sizeof(int32_t))) return 0;
    if (isinf(ra->score) || isinf(rb->score)) return ra->score == rb->score;
    return fabs(ra->score - rb->score) <= tol && fabs(ra->sum_logprobs - rb->sum_logprobs) <= tol;
}

static void print_result(const char *what, const int32_t *t, const lora_beam_result *r) {
    printf("%s: score %.6f sum %.6f length %d finished %d:", what, r->score, r->sum_logprobs,
           (int)r->length, (int)r->finished);
    for (int i = 0; i < r->n_tokens; i++) printf(" %d", (int)t[i]);
    printf("\n");
}

/* The greedy token after the prompt and its first n continuations (ids for eos / stop). */
static void greedy_tokens(lora_model *m, const int32_t *prompt, int n_prompt, int n, int32_t *o) {
    lora_decoder *d = NULL;
    lora_error    err;
    int32_t       V = lora_model_config(m)->vocab_size;
    lora_decoder_init(m, 1, 0, &d, &err);
    lora_decoder_feed(d, 0, prompt, n_prompt, &err);
    for (int i = 0; i < n; i++) {
        o[i] = lora_argmax(lora_decoder_logits(d, 0), V);
        if (i + 1 < n) lora_decoder_feed(d, 0, &o[i], 1, &err);
    }
    lora_decoder_free(d);
}

/* Beam search with the decoder against the reference, over beams, length penalties, n-gram
 * bans, end tokens and stopping modes. */
static void test_beam_vs_reference(const char *dir, uint64_t seed) {
    lora_model *m = load_with_lora(dir, seed);
    if (!m) return;
    const lora_config *c = lora_model_config(m);
    int32_t            V = c->vocab_size, P = c->n_positions;
    int32_t            prompt[8], g[8];
    random_tokens(prompt, 8, V, seed + 1);
    prompt[3] = prompt[0], prompt[4] = prompt[1]; /* a repeated bigram for the bans */
    greedy_tokens(m, prompt, 5, 4, g);
    lora_decoder *d = NULL;
    lora_error    err;
    test_cond("decoder for 7 beams", lora_decoder_init(m, 7, 0, &d, &err) == LORA_OK);
    static const int   beams[] = {1, 2, 4, 7};
    static const float lps[]   = {1.0f, 0.9f, 0.0f, 2.5f, -0.7f};
    int32_t            stop[2] = {g[2], (g[3] + 1) % V};
    int                checked = 0, agree = 0, ended = 0, differ = 0;
    for (int bi = 0; bi < 4; bi++)
        for (int li = 0; li < 5; li++)
            for (int ng = 0; ng <= 3; ng += 1 + (ng == 0))       /* 0, 2, 3 */
                for (int mode = 0; mode < 3; mode++)
                    for (int ends = 0; ends < 3; ends++) {
                        lora_beam_params p = lora_beam_params_default();
                        p.n_beams          = beams[bi];
                        p.length_penalty   = lps[li];
                        p.no_repeat_ngram  = ng;
                        p.early_stopping   = (lora_beam_stop)mode;
                        p.max_new          = 3 + (bi + li + ends) % 6;
                        int n_prompt       = 3 + (li + mode) % 3;
                        if (p.max_new > P - n_prompt + 1) p.max_new = P - n_prompt + 1;
                        p.eos = ends == 0 ? -1 : g[1]; /* the greedy path's second token */
                        if (ends == 2) p.stop_ids = stop, p.n_stop_ids = 2;
                        int32_t          a[REF_MAXT], b[REF_MAXT];
                        lora_beam_result ra, rb;
                        lora_status st = lora_beam_search(d, prompt, n_prompt, &p, a, &ra, &err);
                        test_condf(st == LORA_OK, "beam search: %s", err.msg);
                        ref_beam(m, prompt, n_prompt, &p, b, &rb);
                        checked++;
                        if (same_result(a, &ra, b, &rb, 1e-5)) {
                            agree++;
                        } else {
                            fprintf(stderr, "K=%d lp=%g ngram=%d mode=%d ends=%d max_new=%d\n",
                                    p.n_beams, (double)p.length_penalty, ng, mode, ends,
                                    (int)p.max_new);
                            print_result("  decoder  ", a, &ra);
                            print_result("  reference", b, &rb);
                        }
                        ended += ra.finished;
                        differ += ra.n_tokens != p.max_new;
                        for (int i = 0; i < ra.n_tokens; i++)
                            test_cond("no eos in the output", a[i] != p.eos);
                    }
    test_condf(agree == checked, "%s: beam search = reference in %d of %d settings", dir, agree,
               checked);
    test_condf(ended > checked / 10 && differ > 0, "end tokens finished %d of %d searches", ended,
               checked);
    for (int s = 0; s < 7; s++)
        test_cond("sequences are empty after a search", lora_decoder_length(d, s) == 0);
    printf("beam search vs reference on %s: %d settings agree, %d ended by eos/stop\n", dir, agree,
           ended);
    lora_decoder_free(d);
    lora_model_free(m);
}

/* Exhaustive: with K >= V^max_new every prefix survives, so the result is the best of all
 * continuations, enumerated here by recursion with the full forward. */
typedef struct enum_ctx {
    lora_model      *m;
    lora_beam_params p;
    int32_t          seq[32];
    int              n_prompt;
    double           best;
    int32_t          best_toks[8];
    int              best_n, best_len;
} enum_ctx;

static void enumerate(enum_ctx *e, int t, double sum) {
    int        L = e->n_prompt + t, V = lora_model_config(e->m)->vocab_size;
    lora_error err;
    lora_model_forward(e->m, e->seq, NULL, 1, L, NULL, &err);
    const float *z  = lora_model_logits(e->m) + (size_t)(L - 1) * V;
    double       mx = -INFINITY, se = 0, lp[64];
    for (int v = 0; v < V; v++) mx = z[v] > mx ? z[v] : mx;
    for (int v = 0; v < V; v++) se += exp(z[v] - mx);
    for (int v = 0; v < V; v++) lp[v] = z[v] - mx - log(se);
    for (int v = 0; v < V; v++) {
        if (ref_banned(e->seq, L, v, e->p.no_repeat_ngram)) continue;
        double s = sum + lp[v];
        if (v == e->p.eos || t + 1 == e->p.max_new) {
            double score = s / pow(t + 1, e->p.length_penalty);
            if (score > e->best) {
                e->best     = score;
                e->best_len = t + 1;
                e->best_n   = v == e->p.eos ? t : t + 1;
                memcpy(e->best_toks, e->seq + e->n_prompt, (size_t)t * sizeof(int32_t));
                e->best_toks[t] = v;
            }
            continue;
        }
        e->seq[L] = v;
        enumerate(e, t + 1, s);
    }
}

static void test_beam_exhaustive(const char *dir) {
    lora_model *m = NULL;
    lora_error  err;
    if (lora_model_load(dir, &m, &err) != LORA_OK) return;
    int32_t V = lora_model_config(m)->vocab_size, K = V * V * V;
    lora_decoder *d = NULL;
    test_condf(lora_decoder_init(m, K, 0, &d, &err) == LORA_OK, "decoder: %s", err.msg);
    static const float lps[] = {0.0f, 1.0f, 2.5f, -1.0f};
    for (int li = 0; li < 4; li++)
        for (int ng = 0; ng < 2; ng++) {
            enum_ctx e;
            memset(&e, 0, sizeof e);
            e.m                  = m;
            e.p                  = lora_beam_params_default();
            e.p.n_beams          = K;
            e.p.max_new          = 3;
            e.p.eos              = V - 1;
            e.p.length_penalty   = lps[li];
            e.p.no_repeat_ngram  = ng;
            e.n_prompt           = 2;
            e.seq[0] = 1, e.seq[1] = 2;
            e.best               = -INFINITY;
            enumerate(&e, 0, 0.0);
            int32_t          a[8];
            lora_beam_result r;
            test_cond("search", lora_beam_search(d, e.seq, 2, &e.p, a, &r, &err) == LORA_OK);
            int same = r.n_tokens == e.best_n && r.length == e.best_len &&
                       !memcmp(a, e.best_toks, (size_t)e.best_n * sizeof(int32_t)) &&
                       fabs(r.score - e.best) <= 1e-5;
            test_condf(same, "lp=%g ngram=%d: beam %d tokens score %.6f, exhaustive %d tokens "
                       "score %.6f", (double)lps[li], ng, (int)r.n_tokens, r.score, e.best_n,
                       e.best);
        }
    lora_decoder_free(d);
    lora_model_free(m);
}

/* n-gram bans hold; the length penalty decides between a short and a long hypothesis; one
 * beam is the greedy loop of lora generate. */
static void test_beam_properties(const char *dir) {
    lora_model *m = load_with_lora(dir, 31);
    if (!m) return;
    int32_t       V = lora_model_config(m)->vocab_size, P = lora_model_config(m)->n_positions;
    lora_decoder *d = NULL;
    lora_error    err;
    lora_decoder_init(m, 5, 0, &d, &err);

    /* no n-gram of the prompt + output repeats, for n = 1, 2, 3 */
    int32_t prompt[6] = {7, 8, 9, 7, 8, 3};
    for (int n = 1; n <= 3; n++) {
        lora_beam_params p = lora_beam_params_default();
        p.n_beams          = n == 2 ? 1 : 5;
        p.max_new          = P - 6 + 1;
        p.no_repeat_ngram  = n;
        int32_t          out[32], all[48];
        lora_beam_result r;
        test_cond("search", lora_beam_search(d, prompt, 6, &p, out, &r, &err) == LORA_OK);
        memcpy(all, prompt, sizeof prompt);
        memcpy(all + 6, out, (size_t)r.n_tokens * sizeof(int32_t));
        int L = 6 + r.n_tokens, repeat = 0;
        for (int i = 0; i + n <= L; i++)
            for (int j = i + 1; j + n <= L; j++)
                repeat |= !memcmp(all + i, all + j, (size_t)n * sizeof(int32_t)) && j >= 6 - n + 1;
        test_condf(!repeat, "no_repeat_ngram=%d: an n-gram repeats", n);
        test_cond("ran to max_new", r.n_tokens == p.max_new);
    }

    /* eos = the most likely first token: with lp = 0 (the sum alone) stopping at once wins;
     * with lp = 2 the longest hypotheses win */
    int32_t first;
    greedy_tokens(m, prompt, 6, 1, &first);
    int32_t          a[32], b[32];
    lora_beam_result ra, rb, ref;
    lora_beam_params p = lora_beam_params_default();
    p.n_beams          = 4;
    p.max_new          = 6;
    p.eos              = first;
    p.length_penalty   = 0.0f;
    lora_beam_search(d, prompt, 6, &p, a, &ra, &err);
    ref_beam(m, prompt, 6, &p, b, &ref);
    test_cond("lp = 0: eos at once", ra.n_tokens == 0 && ra.finished && ra.length == 1);
    test_cond("lp = 0: = reference", same_result(a, &ra, b, &ref, 1e-5));
    p.length_penalty = 2.0f;
    lora_beam_search(d, prompt, 6, &p, a, &rb, &err);
    ref_beam(m, prompt, 6, &p, b, &ref);
    test_condf(rb.length > 3, "lp = 2: the winner has length %d", (int)rb.length);
    test_cond("lp = 2: = reference", same_result(a, &rb, b, &ref, 1e-5));
    print_result("lp 0", a, &ra);
    print_result("lp 2", a, &rb);

    /* one beam: exactly lora generate's greedy loop (argmax, stop at eos, max_new) */
    for (int k = 0; k < 6; k++) {
        int32_t pr[4], greedy[32];
        random_tokens(pr, 4, V, 40 + (uint64_t)k);
        int max_new = 3 + k * 2 > P - 3 ? P - 3 : 3 + k * 2;
        greedy_tokens(m, pr, 4, max_new, greedy);
        p         = lora_beam_params_default();
        p.n_beams = 1;
        p.max_new = max_new;
        p.eos     = k % 2 ? greedy[k % max_new] : -1;
        p.length_penalty = 0.9f;
        int n_greedy     = max_new;
        for (int i = 0; i < max_new; i++)
            if (greedy[i] == p.eos) {
                n_greedy = i;
                break;
            }
        lora_beam_search(d, pr, 4, &p, a, &ra, &err);
        test_condf(ra.n_tokens == n_greedy &&
                       !memcmp(a, greedy, (size_t)n_greedy * sizeof(int32_t)),
                   "one beam != greedy (prompt %d: %d tokens, greedy %d)", k, (int)ra.n_tokens,
                   n_greedy);
    }
    lora_decoder_free(d);
    lora_model_free(m);
}

/* Several prompts at once = each alone; the sequences not used are untouched. */
static void test_beam_batch(const char *dir) {
    lora_model *m = load_with_lora(dir, 33);
    if (!m) return;
    int32_t       V = lora_model_config(m)->vocab_size;
    lora_decoder *d = NULL, *one = NULL;
    lora_error    err;
    lora_decoder_init(m, 13, 0, &d, &err);
    lora_decoder_init(m, 3, 0, &one, &err);
    int32_t pr[3][6], lens[3] = {2, 6, 4}, o[3][32], s[32];
    for (int i = 0; i < 3; i++) random_tokens(pr[i], lens[i], V, 60 + (uint64_t)i);
    lora_beam_params p  = lora_beam_params_default();
    p.n_beams           = 3;
    p.max_new           = 9;
    p.length_penalty    = 0.9f;
    p.no_repeat_ngram   = 2;
    p.eos               = pr[1][2];
    const int32_t *ps[3] = {pr[0], pr[1], pr[2]};
    int32_t       *os[3] = {o[0], o[1], o[2]};
    lora_beam_result r[3], r1;
    int32_t          keep = 5;
    lora_decoder_feed(d, 12, pr[1], keep, &err); /* a sequence beyond the 9 used */
    test_cond("batch", lora_beam_search_batch(d, 3, ps, lens, &p, os, r, &err) == LORA_OK);
    for (int i = 0; i < 3; i++) {
        lora_beam_search(one, pr[i], lens[i], &p, s, &r1, &err);
        test_condf(same_result(o[i], &r[i], s, &r1, 1e-5), "prompt %d: batched != alone", i);
    }
    test_cond("unused sequence untouched", lora_decoder_length(d, 12) == keep);

    /* errors */
    test_cond("too few sequences",
              lora_beam_search_batch(one, 2, ps, lens, &p, os, r, &err) == LORA_ERR_ARG);
    test_condf(strstr(err.msg, "n_seq") && !strchr(err.msg, '\n'), "message: %s", err.msg);
    lora_beam_params q = p;
    q.n_beams          = 0;
    test_cond("0 beams", lora_beam_search(one, pr[0], 2, &q, s, &r1, &err) == LORA_ERR_ARG);
    q                = p;
    q.length_penalty = NAN;
    test_cond("NaN penalty", lora_beam_search(one, pr[0], 2, &q, s, &r1, &err) == LORA_ERR_ARG);
    q     = p;
    q.eos = V;
    test_cond("eos outside", lora_beam_search(one, pr[0], 2, &q, s, &r1, &err) == LORA_ERR_ARG);
    q = p;
    int32_t bad[2] = {1, V};
    test_cond("bad prompt id", lora_beam_search(one, bad, 2, &q, s, &r1, &err) == LORA_ERR_ARG);
    test_cond("empty prompt", lora_beam_search(one, bad, 0, &q, s, &r1, &err) == LORA_ERR_ARG);
    q.max_new = 0;
    test_cond("max_new 0", lora_beam_search(one, pr[0], 2, &q, s, &r1, &err) == LORA_OK &&
                               r1.n_tokens == 0 && r1.score == 0.0);
    /* a decoder shorter than prompt + max_new: the search stops at its end */
    lora_decoder *shortd = NULL;
    lora_decoder_init(m, 3, 8, &shortd, &err);
    q         = p;
    q.eos     = -1;
    q.max_new = 20;
    test_cond("short decoder",
              lora_beam_search(shortd, pr[1], 6, &q, s, &r1, &err) == LORA_OK && r1.n_tokens == 3);
    lora_decoder_free(shortd);
    lora_decoder_free(d);
    lora_decoder_free(one);
    lora_model_free(m);
}

/* Beam search speed on a model (informational). */
static void bench_beam(const char *dir, int K) {
    lora_model *m = load_with_lora(dir, 3);
    if (!m) return;
    lora_decoder *d = NULL;
    lora_error    err;
    lora_decoder_init(m, K, 0, &d, &err);
    lora_beam_params p = lora_beam_params_default();
    p.n_beams          = K;
    p.max_new          = lora_model_config(m)->n_positions - 3;
    int32_t          prompt[3] = {1, 2, 3}, out[128];
    lora_beam_result r;
    long             rows = 0;
    struct timespec  t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int rep = 0; rep < 200; rep++) {
        lora_beam_search(d, prompt, 3, &p, out, &r, &err);
        rows += (long)r.n_steps * K;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("beam search (K=%d) on %s: %.0f beam-tokens/s\n", K, dir, (double)rows / s);
    lora_decoder_free(d);
    lora_model_free(m);
}

/* ---- the sampler ---- */

static lora_sampler *sampler(lora_sampler_params p, int32_t V) {
    lora_sampler *s = NULL;
    lora_error    err;
    if (lora_sampler_init(&p, V, &s, &err) != LORA_OK) fprintf(stderr, "sampler: %s\n", err.msg);
    return s;
}

static void softmax(double *p, const float *z, int n, double temperature) {
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++) mx = z[i] > mx ? z[i] : mx;
    for (int i = 0; i < n; i++) sum += p[i] = exp((z[i] - mx) / temperature);
    for (int i = 0; i < n; i++) p[i] /= sum;
}

/* Pearson's chi-square of counts against probabilities, over cells with p > 0. */
static double chi_square(const long *count, const double *p, int n, long total) {
    double x = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] <= 0) continue;
        double e = p[i] * (double)total;
        x += ((double)count[i] - e) * ((double)count[i] - e) / e;
    }
    return x;
}

static void test_sampler(void) {
    lora_sampler_params p = lora_sampler_params_default();
    test_cond("defaults", p.temperature == 1.0f && p.top_k == 0 && p.top_p == 1.0f && !p.greedy);
    lora_error    err;
    lora_sampler *s = NULL;
    p.top_p         = 0.0f;
    test_cond("top_p 0 refused", lora_sampler_init(&p, 10, &s, &err) == LORA_ERR_ARG && !s);
    p = lora_sampler_params_default();
    test_cond("V 0 refused", lora_sampler_init(&p, 0, &s, &err) == LORA_ERR_ARG);
    lora_sampler_free(NULL);

    /* greedy = argmax, lowest id on ties; NaN never wins */
    enum { V = 200 };
    float z[V];
    uint64_t key = rng_key(1, 2, 3);
    for (int i = 0; i < V; i++) z[i] = 2.0f * rng_normal(key, (uint64_t)i);
    int32_t am = 0;
    for (int i = 1; i < V; i++) am = z[i] > z[am] ? i : am;
    p.greedy            = 1;
    lora_sampler *greedy = sampler(p, V);
    test_cond("greedy = argmax", lora_sampler_sample(greedy, z, 0) == am);
    float tie[5] = {1, 3, NAN, 3, 2};
    test_cond("argmax tie -> lowest id", lora_argmax(tie, 5) == 1);
    float nan0[3] = {NAN, 0, 1};
    test_cond("argmax skips NaN", lora_argmax(nan0, 3) == 2);
    float allinf[3] = {-INFINITY, -INFINITY, NAN};
    test_cond("all -inf -> 0", lora_argmax(allinf, 3) == 0);
    lora_sampler_free(greedy);

    /* top_k = 1 is greedy; temperature -> 0 approaches greedy */
    p        = lora_sampler_params_default();
    p.top_k  = 1;
    s        = sampler(p, V);
    int same = 1;
    for (uint64_t i = 0; i < 200; i++) same &= lora_sampler_sample(s, z, i) == am;
    test_cond("top_k = 1 is greedy", same);
    lora_sampler_free(s);
    p             = lora_sampler_params_default();
    p.temperature = 1e-3f;
    s             = sampler(p, V);
    same          = 1;
    for (uint64_t i = 0; i < 200; i++) same &= lora_sampler_sample(s, z, i) == am;
    test_cond("temperature 1e-3 is greedy", same);
    lora_sampler_free(s);
    p.temperature = 0.0f;
    s             = sampler(p, V);
    test_cond("temperature 0 is greedy", lora_sampler_sample(s, z, 5) == am);
    lora_sampler_free(s);

    /* same seed and draw: same token; other seeds: other tokens sometimes */
    p                = lora_sampler_params_default();
    lora_sampler *s1 = sampler(p, V), *s2 = sampler(p, V);
    p.seed           = 43;
    lora_sampler *s3 = sampler(p, V);
    int reproducible = 1, differs = 0;
    for (uint64_t i = 0; i < 100; i++) {
        int32_t a = lora_sampler_sample(s1, z, i);
        reproducible &= a == lora_sampler_sample(s2, z, i) && a == lora_sampler_sample(s1, z, i);
        differs += a != lora_sampler_sample(s3, z, i);
    }
    test_cond("same seed and draw, same token", reproducible);
    test_condf(differs > 10, "another seed changed only %d of 100 draws", differs);
    lora_sampler_free(s1);
    lora_sampler_free(s2);
    lora_sampler_free(s3);

    /* frequencies follow the softmax: chi-square with 5 degrees of freedom; 30 is p ~ 1e-5 */
    enum { NV = 6, DRAWS = 60000 };
    float  zs[NV] = {0.5f, -1.0f, 2.0f, 0.0f, 1.5f, -3.0f};
    double prob[NV];
    long   count[NV];
    float  temps[2] = {1.0f, 0.7f};
    for (int ti = 0; ti < 2; ti++) {
        p             = lora_sampler_params_default();
        p.temperature = temps[ti];
        s             = sampler(p, NV);
        memset(count, 0, sizeof count);
        for (uint64_t i = 0; i < DRAWS; i++) count[lora_sampler_sample(s, zs, i)]++;
        softmax(prob, zs, NV, temps[ti]);
        double x2 = chi_square(count, prob, NV, DRAWS);
        test_condf(x2 < 30, "T=%.1f: chi-square %.1f against the softmax", temps[ti], x2);
        lora_sampler_free(s);
    }

    /* top_k = 2: only the two best, in proportion to their renormalised softmax */
    p       = lora_sampler_params_default();
    p.top_k = 2;
    s       = sampler(p, NV);
    memset(count, 0, sizeof count);
    for (uint64_t i = 0; i < DRAWS; i++) count[lora_sampler_sample(s, zs, i)]++;
    test_cond("top_k = 2 keeps tokens 2 and 4", count[2] + count[4] == DRAWS);
    double p2[NV] = {0};
    float  z2[2]  = {zs[2], zs[4]};
    double q2[2];
    softmax(q2, z2, 2, 1.0);
    p2[2] = q2[0];
    p2[4] = q2[1];
    test_condf(chi_square(count, p2, NV, DRAWS) < 20, "top_k = 2: chi-square %.1f",
               chi_square(count, p2, NV, DRAWS));
    lora_sampler_free(s);

    /* top_p: probabilities 0.5, 0.3, 0.1, 0.1 */
    float zp[4] = {logf(0.5f), logf(0.3f), logf(0.1f), logf(0.1f)};
    p           = lora_sampler_params_default();
    p.top_p     = 0.75f;
    s           = sampler(p, 4);
    long c4[4]  = {0};
    for (uint64_t i = 0; i < 20000; i++) c4[lora_sampler_sample(s, zp, i)]++;
    test_cond("top_p 0.75 keeps {0, 1}", c4[2] == 0 && c4[3] == 0 && c4[0] > 0 && c4[1] > 0);
    double pp[4] = {0.5 / 0.8, 0.3 / 0.8, 0, 0};
    test_condf(chi_square(c4, pp, 4, 20000) < 20, "top_p: chi-square %.1f",
               chi_square(c4, pp, 4, 20000));
    lora_sampler_free(s);
    p.top_p = 0.45f;
    s       = sampler(p, 4);
    same    = 1;
    for (uint64_t i = 0; i < 200; i++) same &= lora_sampler_sample(s, zp, i) == 0;
    test_cond("top_p 0.45 keeps only the best", same);
    lora_sampler_free(s);

    /* a larger vocabulary: every draw lies in the nucleus computed naively (top_p alone, and
     * top_k then top_p), whether or not the sampler's shortcut applies */
    enum { BV = 3000 };
    float  *zb  = malloc(BV * sizeof(float));
    double *pb  = malloc(BV * sizeof(double));
    int32_t *order = malloc(BV * sizeof(int32_t));
    char   *in  = malloc(BV);
    float   scales[2] = {3.0f, 0.05f}; /* peaked (shortcut) and nearly flat (full sort) */
    for (int sc = 0; sc < 2; sc++) {
        for (int i = 0; i < BV; i++) zb[i] = scales[sc] * rng_normal(rng_key(4, 5, 6), i);
        for (int kk = 0; kk < 2; kk++) {
            int32_t topk = kk ? 50 : 0;
            float   topp = 0.8f;
            /* naive: rank all, cut to top_k, renormalise, cut to the nucleus */
            for (int i = 0; i < BV; i++) order[i] = i;
            for (int i = 1; i < BV; i++) { /* insertion sort by (z desc, id asc) */
                int32_t v = order[i];
                int     j = i - 1;
                while (j >= 0 && (zb[order[j]] < zb[v] || (zb[order[j]] == zb[v] && order[j] > v)))
                    order[j + 1] = order[j], j--;
                order[j + 1] = v;
            }
            int nk = topk ? topk : BV;
            softmax(pb, zb, BV, 1.0);
            double norm = 0, acc = 0;
            for (int j = 0; j < nk; j++) norm += pb[order[j]];
            memset(in, 0, BV);
            for (int j = 0; j < nk; j++) {
                in[order[j]] = 1;
                acc += pb[order[j]];
                if (acc >= topp * norm) break;
            }
            p       = lora_sampler_params_default();
            p.top_k = topk;
            p.top_p = topp;
            s       = sampler(p, BV);
            int inside = 1;
            for (uint64_t i = 0; i < 2000; i++) inside &= in[lora_sampler_sample(s, zb, i)];
            test_condf(inside, "scale %.2f top_k %d: a draw outside the nucleus", scales[sc],
                       (int)topk);
            lora_sampler_free(s);
        }
    }
    free(zb);
    free(pb);
    free(order);
    free(in);

    /* NaN logits are never drawn */
    float zn[4] = {NAN, 0.0f, 0.0f, NAN};
    p           = lora_sampler_params_default();
    s           = sampler(p, 4);
    int ok      = 1;
    for (uint64_t i = 0; i < 500; i++) {
        int32_t t = lora_sampler_sample(s, zn, i);
        ok &= t == 1 || t == 2;
    }
    test_cond("NaN never drawn", ok);
    lora_sampler_free(s);
}

int main(void) {
    tiny_tmpdir(root, sizeof root, "test_decode");
    char        tied[4200], odd[4200], wide[4200], small[4200];
    lora_config c = tiny_config(), o = odd_config(), w = wide_config(), sm = tiny_config();
    sm.vocab_size = 5; /* small enough to enumerate every continuation */
    snprintf(small, sizeof small, "%s/small", root);
    test_cond("write small-vocabulary model", write_model(small, &sm, 24) == 0);
    snprintf(tied, sizeof tied, "%s/tied", root);
    snprintf(odd, sizeof odd, "%s/odd", root);
    snprintf(wide, sizeof wide, "%s/wide", root);
    test_cond("write tied model", write_model(tied, &c, 21) == 0);
    test_cond("write untied model", write_model(odd, &o, 22) == 0);
    test_cond("write wide model", write_model(wide, &w, 23) == 0);

    test_matches_forward(tied, 0, 5);
    test_matches_forward(odd, 0, 5);
    test_matches_forward(odd, 1, 5);
    test_matches_forward(wide, 0, 80);
    test_step_all(wide);
    test_greedy_generation(tied);
    test_greedy_generation(odd);
    test_step_all(tied);
    test_step_all(odd);
    test_copy_seq(odd);
    test_adapter_dir(odd);
    test_errors(tied);
    test_sampler();
    test_beam_vs_reference(tied, 70);
    test_beam_vs_reference(odd, 71);
    test_beam_exhaustive(small);
    test_beam_properties(tied);
    test_beam_batch(odd);
    bench(tied);
    bench_beam(tied, 4);
    return test_report("test_decode");
}
