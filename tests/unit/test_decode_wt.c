/*
 * test_decode_wt.c — the decoder's transposed weights (lora_decoder_set_transposed).
 *
 * A decoder with the option on against one with it off, on the same model: logits after every
 * single-token feed, multi-row feeds (of up to 8 rows, through the copies, and longer ones,
 * through sgemm), step_all over three sequences and beam search, within 1e-5, and greedy
 * tokens identical; on the base model, with a training method's LoRA adapter and with two
 * inference adapters (unmerged). The copies follow the model's weights: merge, unmerge, a
 * re-merge after a scale change, switches while merged and unmerged — each time the logits
 * equal the option-off decoder's, and differ from what a stale copy would give. A fully
 * fine-tuned model (trainable W, rewritten in place) keeps the normal product. Turning the
 * option off and on, errors, and an allocation failure (LORA_ERR_NOMEM, the decoder usable).
 */
#include "test_helper.h"
#include "tiny_model.h"

#include <sys/resource.h>
#include <sys/wait.h>

static char root[4096];

/* ---- fixtures ---- */

static lora_adapter_params lora_params(uint32_t targets) {
    lora_adapter_params p = lora_adapter_params_default();
    p.r                   = 4;
    p.alpha               = 8.0f;
    p.dropout             = 0.2f; /* must not apply: the decoder never trains */
    p.targets             = targets;
    return p;
}

/* A LoRA adapter of `base` with random A and B, saved to dir. */
static void make_lora(const char *base, const char *dir, uint32_t targets, uint64_t seed) {
    lora_model         *m = tiny_load(base);
    lora_adapter_params p = lora_params(targets);
    lora_error          err;
    test_condf(m && lora_model_attach(m, &p, &err) == LORA_OK, "attach: %s", err.msg);
    tiny_fill_trainable(m, seed, 0.1f);
    test_condf(lora_adapter_save(m, dir, "tiny", &err) == LORA_OK, "save %s: %s", dir, err.msg);
    lora_model_free(m);
}

static void random_tokens(int32_t *t, int n, int32_t V, uint64_t seed) {
    uint64_t key = rng_key(seed, 3, 4);
    for (int i = 0; i < n; i++) t[i] = (int32_t)(rng_uniform(key, (uint64_t)i) * (float)V) % V;
}

/* Two decoders on m, one sequence of the whole context: [0] normal, [1] transposed. */
static void decoders(lora_model *m, int32_t n_seq, lora_decoder **d) {
    lora_error err;
    d[0] = d[1] = NULL;
    test_condf(lora_decoder_init(m, n_seq, 0, &d[0], &err) == LORA_OK, "init: %s", err.msg);
    test_condf(lora_decoder_init(m, n_seq, 0, &d[1], &err) == LORA_OK, "init: %s", err.msg);
    test_condf(lora_decoder_set_transposed(d[1], 1, &err) == LORA_OK, "transposed: %s",
               err.msg);
}

static void free_decoders(lora_decoder **d) {
    lora_decoder_free(d[0]);
    lora_decoder_free(d[1]);
}

static double max_diff(lora_decoder **d, int32_t seq, int32_t V) {
    const float *a = lora_decoder_logits(d[0], seq), *b = lora_decoder_logits(d[1], seq);
    return a && b ? test_max_abs_diff(a, b, (size_t)V) : 1e30;
}

/*
 * Feeds both decoders (sequence 0, reset first) the same tokens: a prompt of n_prompt in one
 * feed, a chunk of 3, then single tokens to the end of the context, each the normal decoder's
 * argmax. Returns the largest logit difference after any feed; *logits (V) receives the last
 * logits of the transposed decoder when not NULL.
 */
static double feed_both(lora_decoder **d, lora_model *m, int n_prompt, uint64_t seed,
                        float *logits) {
    const lora_config *c = lora_model_config(m);
    int32_t            V = c->vocab_size, T = c->n_positions;
    int32_t            toks[64];
    lora_error         err;
    random_tokens(toks, n_prompt + 3, V, seed);
    lora_decoder_reset(d[0], -1);
    lora_decoder_reset(d[1], -1);
    double worst = 0;
    int    pos   = 0;
    for (int k = 0; k < 2; k++) {
        int n = k == 0 ? n_prompt : 3;
        for (int j = 0; j < 2; j++)
            test_condf(lora_decoder_feed(d[j], 0, toks + pos, n, &err) == LORA_OK, "feed: %s",
                       err.msg);
        pos += n;
        double e = max_diff(d, 0, V);
        worst    = e > worst ? e : worst;
    }
    for (; pos < T; pos++) {
        int32_t next = lora_argmax(lora_decoder_logits(d[0], 0), V);
        for (int j = 0; j < 2; j++)
            test_condf(lora_decoder_feed(d[j], 0, &next, 1, &err) == LORA_OK, "step: %s",
                       err.msg);
        double e = max_diff(d, 0, V);
        worst    = e > worst ? e : worst;
    }
    if (logits) memcpy(logits, lora_decoder_logits(d[1], 0), (size_t)V * sizeof(float));
    return worst;
}

/* Greedy generation by each decoder on its own: the same tokens. */
static void greedy_same(lora_decoder **d, lora_model *m, const char *what) {
    const lora_config *c = lora_model_config(m);
    int32_t            V = c->vocab_size, T = c->n_positions, out[2][64];
    lora_error         err;
    for (int j = 0; j < 2; j++) {
        lora_decoder_reset(d[j], -1);
        random_tokens(out[j], 2, V, 31);
        lora_decoder_feed(d[j], 0, out[j], 2, &err);
        for (int i = 2; i < T; i++) {
            out[j][i] = lora_argmax(lora_decoder_logits(d[j], 0), V);
            if (i + 1 < T) lora_decoder_feed(d[j], 0, &out[j][i], 1, &err);
        }
    }
    test_condf(memcmp(out[0], out[1], (size_t)T * sizeof(int32_t)) == 0,
               "%s: greedy tokens differ with transposed weights", what);
}

/* step_all over three sequences of different lengths (forwards of 3 rows). */
static double step_all_both(lora_model *m) {
    int32_t       V = lora_model_config(m)->vocab_size;
    lora_decoder *d[2];
    lora_error    err;
    decoders(m, 3, d);
    int32_t prompt[3][8], lens[3] = {2, 5, 1};
    double  worst = 0;
    for (int s = 0; s < 3; s++) {
        random_tokens(prompt[s], lens[s], V, 40 + (uint64_t)s);
        for (int j = 0; j < 2; j++) lora_decoder_feed(d[j], s, prompt[s], lens[s], &err);
    }
    for (int step = 0; step < 6; step++) {
        int32_t next[3];
        for (int s = 0; s < 3; s++) next[s] = lora_argmax(lora_decoder_logits(d[0], s), V);
        for (int j = 0; j < 2; j++)
            test_condf(lora_decoder_step_all(d[j], next, &err) == LORA_OK, "step_all: %s",
                       err.msg);
        for (int s = 0; s < 3; s++) {
            double e = max_diff(d, s, V);
            worst    = e > worst ? e : worst;
        }
    }
    free_decoders(d);
    return worst;
}

/* Beam search with 4 beams (forwards of up to 4 rows): the same result. */
static void beams_same(lora_model *m, const char *what) {
    int32_t          V = lora_model_config(m)->vocab_size, prompt[4], out[2][16];
    lora_beam_result r[2];
    lora_decoder    *d[2];
    lora_error       err;
    decoders(m, 4, d);
    random_tokens(prompt, 4, V, 50);
    lora_beam_params p = lora_beam_params_default();
    p.max_new          = 10;
    for (int j = 0; j < 2; j++)
        test_condf(lora_beam_search(d[j], prompt, 4, &p, out[j], &r[j], &err) == LORA_OK,
                   "beam search: %s", err.msg);
    test_condf(r[0].n_tokens == r[1].n_tokens &&
                   !memcmp(out[0], out[1], (size_t)r[0].n_tokens * sizeof(int32_t)) &&
                   fabs(r[0].score - r[1].score) <= 1e-5,
               "%s: beam search differs with transposed weights (score %.7f / %.7f)", what,
               r[0].score, r[1].score);
    free_decoders(d);
}

/* Everything above on one model state. */
static void check_equal(lora_model *m, const char *what) {
    lora_decoder *d[2];
    decoders(m, 1, d);
    double e1 = feed_both(d, m, 5, 11, NULL);  /* 5 rows through the copies */
    double e2 = feed_both(d, m, 10, 12, NULL); /* 10 rows through sgemm, then the copies */
    test_condf(e1 <= 1e-5 && e2 <= 1e-5, "%s: transposed logits differ by %.3g / %.3g", what, e1,
               e2);
    test_condf(e1 > 0 && e2 > 0, "%s: transposed logits are the normal path's bits", what);
    greedy_same(d, m, what);
    free_decoders(d);
    double e3 = step_all_both(m);
    test_condf(e3 <= 1e-5, "%s: step_all with transposed weights differs by %.3g", what, e3);
    beams_same(m, what);
}

/* ---- equality ---- */

static void test_base_and_adapters(const char *base, const char *ad_a, const char *ad_b) {
    lora_model *m = tiny_load(base);
    if (!m) return;
    check_equal(m, "base");
    lora_model_free(m);

    /* a training method's LoRA on every linear, with non-zero B, unmerged */
    m                     = tiny_load(base);
    lora_adapter_params p = lora_params(LORA_TARGET_ALL_LINEAR);
    lora_error          err;
    test_condf(lora_model_attach(m, &p, &err) == LORA_OK, "attach: %s", err.msg);
    tiny_fill_trainable(m, 5, 0.1f);
    lora_model_set_training(m, 1); /* the decoder must ignore it */
    check_equal(m, "attached LoRA");
    lora_model_free(m);

    /* two inference adapters, summed unmerged */
    m = tiny_load(base);
    test_condf(lora_adapter_add(m, ad_a, "a", 0.7f, &err) == LORA_OK, "add a: %s", err.msg);
    test_condf(lora_adapter_add(m, ad_b, "b", 0.3f, &err) == LORA_OK, "add b: %s", err.msg);
    check_equal(m, "two inference adapters");
    lora_model_free(m);
}

/* ---- staleness: merge, unmerge, switch ---- */

/*
 * Logits of the whole schedule on both decoders; fails when they differ by more than rounding,
 * and also when they are bit-identical: the sums of the copies' dot products run in another
 * order, so equal bits mean the copies were not used (the decoder fell back to the normal
 * product). Returns the transposed decoder's last logits in out (V) when not NULL.
 */
static void same_now(lora_decoder **d, lora_model *m, const char *what, float *out) {
    double e = feed_both(d, m, 4, 21, out);
    test_condf(e <= 1e-5, "%s: transposed logits differ from the normal path by %.3g", what, e);
    test_condf(e > 0, "%s: transposed logits are the normal path's bits: copies unused", what);
}

static void test_staleness(const char *base, const char *ad_a, const char *ad_b) {
    lora_model *m = tiny_load(base);
    if (!m) return;
    int32_t       V = lora_model_config(m)->vocab_size;
    lora_error    err;
    lora_decoder *d[2];
    float        *plain = malloc((size_t)V * sizeof(float)), *cur = malloc((size_t)V * sizeof(float));
    decoders(m, 1, d); /* the copies are made before the adapter is added */
    same_now(d, m, "base", plain);
    test_condf(lora_adapter_add(m, ad_a, "a", 1.0f, &err) == LORA_OK, "add: %s", err.msg);
    same_now(d, m, "adapter unmerged", cur);
    test_condf(test_max_abs_diff(cur, plain, (size_t)V) > 1e-3,
               "the adapter changes the logits too little for the test to see a stale copy");

    /* merged: a copy of the unmerged base would give the base's logits (adapters skipped) */
    test_condf(lora_model_merge(m, &err) == LORA_OK, "merge: %s", err.msg);
    same_now(d, m, "merged", cur);
    test_condf(test_max_abs_diff(cur, plain, (size_t)V) > 1e-3, "merged logits = the base's");
    test_condf(lora_model_unmerge(m, &err) == LORA_OK, "unmerge: %s", err.msg);
    same_now(d, m, "unmerged", NULL);

    /* a re-merge with another scale: w_merged may come back at the same address */
    test_condf(lora_adapter_set_scale(m, "a", 2.5f, &err) == LORA_OK, "scale: %s", err.msg);
    for (int i = 0; i < 3; i++) {
        test_condf(lora_model_merge(m, &err) == LORA_OK, "merge: %s", err.msg);
        same_now(d, m, "re-merged at scale 2.5", NULL);
        test_condf(lora_model_unmerge(m, &err) == LORA_OK, "unmerge: %s", err.msg);
        test_condf(lora_adapter_set_scale(m, "a", 0.5f + (float)i, &err) == LORA_OK,
                   "scale: %s", err.msg);
    }

    /* switches, merged and unmerged; the decoder's copies were made for the other adapter */
    test_condf(lora_model_merge(m, &err) == LORA_OK, "merge: %s", err.msg);
    same_now(d, m, "merged before the switches", NULL);
    for (int i = 0; i < 4; i++) {
        const char *dir = i % 2 ? ad_a : ad_b;
        test_condf(lora_adapter_switch(m, "a", dir, "a", 1.0f + 0.25f * (float)i, &err) ==
                       LORA_OK,
                   "switch: %s", err.msg);
        same_now(d, m, "switched while merged", NULL);
    }
    test_condf(lora_model_unmerge(m, &err) == LORA_OK, "unmerge: %s", err.msg);
    same_now(d, m, "unmerged after the switches", NULL);
    test_condf(lora_adapter_switch(m, "a", ad_a, "a", 1.0f, &err) == LORA_OK, "switch: %s",
               err.msg);
    same_now(d, m, "switched while unmerged", NULL);
    test_condf(lora_adapter_remove(m, "a", &err) == LORA_OK, "remove: %s", err.msg);
    same_now(d, m, "removed", cur);
    test_condf(test_max_abs_diff(cur, plain, (size_t)V) <= 1e-6, "base again after removal");

    /* off frees the copies, on makes them again, twice on is a no-op */
    test_cond("off", lora_decoder_set_transposed(d[1], 0, &err) == LORA_OK);
    test_cond("off again", lora_decoder_set_transposed(d[1], 0, &err) == LORA_OK);
    test_cond("off is the normal path, bit for bit", feed_both(d, m, 4, 22, NULL) == 0.0);
    test_cond("on", lora_decoder_set_transposed(d[1], 1, &err) == LORA_OK);
    test_cond("on again", lora_decoder_set_transposed(d[1], 1, &err) == LORA_OK);
    same_now(d, m, "transposed on again", NULL);
    test_cond("NULL decoder", lora_decoder_set_transposed(NULL, 1, &err) == LORA_ERR_ARG);
    free_decoders(d);

    /* copies first made while merged: after an unmerge, a scale change and a re-merge (whose
     * copy may take the freed one's address) they must be made again */
    test_condf(lora_adapter_add(m, ad_a, "a", 1.0f, &err) == LORA_OK, "add: %s", err.msg);
    test_condf(lora_model_merge(m, &err) == LORA_OK, "merge: %s", err.msg);
    decoders(m, 1, d);
    same_now(d, m, "transposed while merged", NULL);
    for (int i = 0; i < 3; i++) {
        test_condf(lora_model_unmerge(m, &err) == LORA_OK, "unmerge: %s", err.msg);
        test_condf(lora_adapter_set_scale(m, "a", 2.0f + (float)i, &err) == LORA_OK,
                   "scale: %s", err.msg);
        test_condf(lora_model_merge(m, &err) == LORA_OK, "merge: %s", err.msg);
        same_now(d, m, "re-merged after the copies were made merged", NULL);
    }
    free_decoders(d);
    free(plain);
    free(cur);
    lora_model_free(m);
}

/* Full fine-tuning: W is trainable and rewritten in place (as an optimizer step does); the
 * transposed decoder keeps the normal product for it and follows every write. */
static void test_full_finetuning(const char *base) {
    lora_model *m = tiny_load(base);
    if (!m) return;
    lora_decoder *d[2];
    lora_error    err;
    decoders(m, 1, d); /* before the attach: the attach rebinds w */
    lora_adapter_params p = lora_adapter_params_default();
    p.method              = LORA_METHOD_FULL;
    test_condf(lora_model_attach(m, &p, &err) == LORA_OK, "attach full: %s", err.msg);
    /* every linear is trainable: the normal product, bit for bit */
    test_cond("full fine-tuning: the normal path", feed_both(d, m, 4, 23, NULL) == 0.0);
    lora_tensor_info t;
    test_cond("c_fc weight is trainable",
              lora_model_trainable_find(m, "h.0.mlp.c_fc.weight", &t) == LORA_OK);
    for (int64_t j = 0; j < t.numel; j++) t.data[j] *= 1.5f;
    test_cond("full fine-tuning after a write to W",
              feed_both(d, m, 4, 23, NULL) == 0.0);
    free_decoders(d);
    lora_model_free(m);
}

/* ---- allocation failure ---- */

/* In a child whose address space is capped a little above what it uses, the copy (12 MiB for
 * this model) cannot be allocated: LORA_ERR_NOMEM with a message, and the decoder still
 * decodes without it. */
static void test_nomem(const char *big) {
#ifdef UNDER_ASAN
    (void)big;
    printf("allocation-failure test skipped under AddressSanitizer\n");
#else
    pid_t pid = fork();
    if (pid == 0) {
        lora_model   *m = NULL;
        lora_decoder *d = NULL;
        lora_error    err;
        if (lora_model_load(big, &m, &err) != LORA_OK) _exit(10);
        int32_t tok = 1;
        /* a first forward starts OpenMP's threads (their stacks) before the cap */
        if (lora_decoder_init(m, 1, 4, &d, &err) != LORA_OK ||
            lora_decoder_feed(d, 0, &tok, 1, &err) != LORA_OK)
            _exit(11);
        if (test_cap_memory(4u << 20) != 0) _exit(13);
        lora_status st = lora_decoder_set_transposed(d, 1, &err);
        if (st != LORA_ERR_NOMEM) _exit(14);
        if (!strstr(err.msg, "transposed") || strchr(err.msg, '\n')) _exit(15);
        if (lora_decoder_feed(d, 0, &tok, 1, &err) != LORA_OK) _exit(16);
        _exit(0);
    }
    int status = 0;
    test_cond("fork", pid > 0 && waitpid(pid, &status, 0) == pid);
    test_condf(WIFEXITED(status) && WEXITSTATUS(status) == 0,
               "allocation-failure child: exit %d (10, 11, 13 setup, 14 status not NOMEM, "
               "15 message, 16 decoding after the failure)",
               WIFEXITED(status) ? WEXITSTATUS(status) : -1);
#endif
}

int main(void) {
    tiny_tmpdir(root, sizeof root, "test_decode_wt");
    char        tiny[4200], odd[4200], big[4200], ad_a[4200], ad_b[4200], oa[4200], ob[4200];
    lora_config c = tiny_config(), o = tiny_config(), bg = tiny_config();
    o.n_head      = 3; /* sizes not multiples of the kernels' blocks; exact GELU */
    o.n_embd      = 48;
    o.n_inner     = 100;
    o.vocab_size  = 71;
    o.n_positions = 20;
    o.activation  = LORA_ACT_GELU_ERF;
    bg.n_layer    = 4; /* tiny_write's limit */
    bg.n_embd     = 256;
    bg.n_head     = 4;
    bg.n_inner    = 1024;
    snprintf(tiny, sizeof tiny, "%s/tiny", root);
    snprintf(odd, sizeof odd, "%s/odd", root);
    snprintf(big, sizeof big, "%s/big", root);
    snprintf(ad_a, sizeof ad_a, "%s/lora_qv", root);
    snprintf(ad_b, sizeof ad_b, "%s/lora_all", root);
    snprintf(oa, sizeof oa, "%s/odd_qv", root);
    snprintf(ob, sizeof ob, "%s/odd_all", root);
    test_cond("write tiny model", tiny_write(tiny, &c, NULL, 61) == 0);
    test_cond("write odd model", tiny_write(odd, &o, NULL, 62) == 0);
    test_cond("write big model", tiny_write(big, &bg, NULL, 63) == 0);
    test_nomem(big);
    make_lora(tiny, ad_a, LORA_TARGET_Q | LORA_TARGET_V, 71);
    make_lora(tiny, ad_b, LORA_TARGET_ALL_LINEAR, 72);
    make_lora(odd, oa, LORA_TARGET_Q | LORA_TARGET_V, 73);
    make_lora(odd, ob, LORA_TARGET_C_ATTN | LORA_TARGET_MLP_FC, 74);

    test_base_and_adapters(tiny, ad_a, ad_b);
    test_base_and_adapters(odd, oa, ob);
    test_staleness(tiny, ad_a, ad_b);
    test_staleness(odd, oa, ob);
    test_full_finetuning(tiny);
    return test_report("test_decode_wt");
}
