/*
 * test_decode.c — the KV-cache decoder and the sampler.
 *
 * The decoder against lora_model_forward on the whole sequence (with LoRA adapters whose B is
 * non-zero, on a tied tanh-GELU model and an untied erf-GELU one): logits after prefill and
 * every step, greedy generation, step_all against separate feeds, copy_seq, reset and errors.
 * The sampler: greedy, top-k, top-p, temperature, reproducibility, and frequencies against the
 * softmax (chi-square).
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
    char        tied[4200], odd[4200], wide[4200];
    lora_config c = tiny_config(), o = odd_config(), w = wide_config();
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
    bench(tied);
    return test_report("test_decode");
}
