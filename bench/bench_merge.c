/*
 * bench_merge.c — what merging buys at inference, and what it costs to get there.
 *
 *   build/bench/bench_merge [--transposed] MODEL_DIR ADAPTER_DIR [ADAPTER2_DIR]
 *
 * Prints the model load time, the time to add the adapter, to merge and to unmerge (means of
 * 10), to switch adapters on a merged model (unmerge + remove + add + merge, mean of 100, between
 * ADAPTER_DIR and ADAPTER2_DIR, or ADAPTER_DIR and itself), and greedy generation with the KV
 * cache (batch 1, 64-token prompt, 128 new tokens; decode tokens/s, the prompt untimed) on the
 * base model, the merged model and the unmerged adapter, in interleaved repetitions within one
 * run, with the ratios to the base. --transposed gives both decoders transposed weights
 * (lora_decoder_set_transposed); the decoder of the adapted model then transposes the merged
 * or unmerged sites again at the first (untimed) prompt after each merge and unmerge.
 * Not a test: it checks nothing but that every call succeeds.
 */
#include "lora.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { PROMPT = 64, NEW = 128, REPS = 3, MERGES = 10, SWITCHES = 100 };

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
}

static int check(lora_status st, const lora_error *err) {
    if (st == LORA_OK) return 0;
    fprintf(stderr, "bench_merge: %s\n", err->msg);
    exit(1);
}

/* Greedy decoding of n_new tokens after the prompt; returns decode tokens per second (the
 * prompt's forward is not timed: it is a matrix product, not a matrix-vector one). */
static double generate(lora_decoder *d, const int32_t *prompt, int32_t n_new, int32_t V) {
    lora_error err;
    lora_decoder_reset(d, -1);
    check(lora_decoder_feed(d, 0, prompt, PROMPT, &err), &err);
    double t0 = now_ms();
    for (int32_t i = 0; i < n_new; i++) {
        int32_t next = lora_argmax(lora_decoder_logits(d, 0), V);
        check(lora_decoder_feed(d, 0, &next, 1, &err), &err);
    }
    return n_new / ((now_ms() - t0) / 1e3);
}

int main(int argc, char **argv) {
    int transposed = argc > 1 && !strcmp(argv[1], "--transposed");
    if (transposed) argv[1] = argv[0], argv++, argc--;
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s [--transposed] MODEL_DIR ADAPTER_DIR [ADAPTER2_DIR]\n",
                argv[0]);
        return 2;
    }
    const char *model = argv[1], *ad1 = argv[2], *ad2 = argc > 3 ? argv[3] : argv[2];
    lora_error  err;
    lora_model *m = NULL, *base = NULL;

    double t0 = now_ms();
    check(lora_model_load(model, &m, &err), &err);
    double t_load = now_ms() - t0;
    check(lora_model_load(model, &base, &err), &err);
    const lora_config *c = lora_model_config(m);
    t0                   = now_ms();
    check(lora_adapter_add(m, ad1, "a", 1.0f, &err), &err);
    double            t_add = now_ms() - t0;
    lora_adapter_info info;
    lora_model_adapter(m, 0, &info);
    printf("model %s: %d layers, n_embd %d, vocab %d; threads %d\n", model, (int)c->n_layer,
           (int)c->n_embd, (int)c->vocab_size, lora_get_threads());
    printf("adapter %s: %s, %d sites, %lld parameters\n", ad1, info.type, (int)info.n_sites,
           (long long)info.n_params);
    printf("load model:     %9.3f ms\n", t_load);
    printf("add adapter:    %9.3f ms\n", t_add);

    double t_merge = 0, t_unmerge = 0;
    for (int i = 0; i < MERGES; i++) {
        t0 = now_ms();
        check(lora_model_merge(m, &err), &err);
        t_merge += now_ms() - t0;
        t0 = now_ms();
        check(lora_model_unmerge(m, &err), &err);
        t_unmerge += now_ms() - t0;
    }
    printf("merge:          %9.3f ms (mean of %d)\n", t_merge / MERGES, MERGES);
    printf("unmerge:        %9.3f ms (mean of %d)\n", t_unmerge / MERGES, MERGES);

    check(lora_model_merge(m, &err), &err);
    t0 = now_ms();
    for (int i = 0; i < SWITCHES; i++)
        check(lora_adapter_switch(m, "a", i % 2 ? ad1 : ad2, "a", 1.0f, &err), &err);
    double t_switch = (now_ms() - t0) / SWITCHES;
    printf("switch:         %9.3f ms (mean of %d, merged: unmerge + remove + add + merge)\n",
           t_switch, SWITCHES);
    check(lora_model_unmerge(m, &err), &err);

    int32_t n_new = NEW;
    if (PROMPT + n_new > c->n_positions) n_new = c->n_positions - PROMPT;
    if (n_new < 1) {
        fprintf(stderr, "bench_merge: the model's context (%d) is too short\n",
                (int)c->n_positions);
        return 1;
    }
    int32_t prompt[PROMPT];
    for (int i = 0; i < PROMPT; i++) prompt[i] = (int32_t)((i * 37 + 11) % c->vocab_size);
    lora_decoder *db = NULL, *dm = NULL;
    check(lora_decoder_init(base, 1, PROMPT + n_new, &db, &err), &err);
    check(lora_decoder_init(m, 1, PROMPT + n_new, &dm, &err), &err);
    if (transposed) {
        check(lora_decoder_set_transposed(db, 1, &err), &err);
        check(lora_decoder_set_transposed(dm, 1, &err), &err);
    }
    generate(db, prompt, 8, c->vocab_size); /* warm-up */
    generate(dm, prompt, 8, c->vocab_size);
    printf("greedy generation, batch 1, prompt %d, %d new tokens, KV cache%s "
           "(decode tokens/s):\n",
           PROMPT, (int)n_new, transposed ? ", transposed weights" : "");
    printf("  rep      base    merged  unmerged\n");
    double sum[3] = {0, 0, 0};
    for (int r = 0; r < REPS; r++) {
        double tb = generate(db, prompt, n_new, c->vocab_size);
        check(lora_model_merge(m, &err), &err);
        double tm = generate(dm, prompt, n_new, c->vocab_size);
        check(lora_model_unmerge(m, &err), &err);
        double tu = generate(dm, prompt, n_new, c->vocab_size);
        printf("  %3d %9.1f %9.1f %9.1f\n", r + 1, tb, tm, tu);
        sum[0] += tb, sum[1] += tm, sum[2] += tu;
    }
    printf(" mean %9.1f %9.1f %9.1f\n", sum[0] / REPS, sum[1] / REPS, sum[2] / REPS);
    printf("ratio merged/base %.3f, unmerged/base %.3f\n", sum[1] / sum[0], sum[2] / sum[0]);
    lora_decoder_free(db);
    lora_decoder_free(dm);
    lora_model_free(base);
    lora_model_free(m);
    return 0;
}
