/*
 * llama_generate.c — greedy generation speed of llama.cpp, the llama.cpp side of
 * bench/generate.sh. Built by generate.sh against the libllama of the npm package
 * node-llama-cpp@3.22.1 (headers from its git bundle, as tests/interop/check_llama.sh does), or by
 * CMake when LORA_LLAMA_DIR names such an install (see bench/CMakeLists.txt).
 *
 *   llama_generate BACKEND_DIR MODEL.gguf [--prompt N] [--new N] [--reps N] [--warmup N]
 *                  [--threads N] [--kv f32|f16]
 *
 * Loads the GGUF (CPU only), then a warm-up generation and --reps timed ones, each on an
 * emptied KV cache: the prompt in one llama_decode (prefill), then --new llama_decode calls of
 * one token, each the argmax of the previous logits (decode). Prompt 64, new 128, reps 1,
 * warm-up 8, threads 2 (for single tokens and batches), KV cache F32 (as lora.c's) by default.
 * Timed with clock_gettime(CLOCK_MONOTONIC). Prints one line per generation, as bench_generate:
 *   prefill_tps=X decode_tps=Y tokens=ID,ID,...
 * The prompt is ids (37 i + 11) mod V. Exit 2 when llama.cpp refuses the model, 4 a decode.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* clock_gettime under -std=c11 */
#endif
#include "llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void quiet_log(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static int usage(void) {
    fprintf(stderr, "usage: llama_generate BACKEND_DIR MODEL.gguf [--prompt N] [--new N] "
                    "[--reps N] [--warmup N] [--threads N] [--kv f32|f16]\n");
    return 1;
}

static llama_token argmax(const float *l, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[best]) best = i;
    return (llama_token)best;
}

/* One generation on an emptied cache; returns 0 or 4 (a decode failed). */
static int generate(struct llama_context *ctx, int V, llama_token *prompt, int n_prompt,
                    int n_new, llama_token *out, double *t_prefill, double *t_decode) {
    llama_memory_clear(llama_get_memory(ctx), true);
    double t0 = now_s();
    if (llama_decode(ctx, llama_batch_get_one(prompt, n_prompt)) != 0) return 4;
    double t1 = now_s();
    for (int i = 0; i < n_new; i++) {
        llama_token next = argmax(llama_get_logits_ith(ctx, -1), V);
        out[i]           = next;
        if (llama_decode(ctx, llama_batch_get_one(&out[i], 1)) != 0) return 4;
    }
    *t_prefill = t1 - t0;
    *t_decode  = now_s() - t1;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return usage();
    int n_prompt = 64, n_new = 128, reps = 1, warmup = 8, threads = 2;
    enum ggml_type kv = GGML_TYPE_F32;
    for (int i = 3; i < argc; i++) {
        if (i + 1 >= argc) return usage();
        const char *o = argv[i], *v = argv[++i];
        if (!strcmp(o, "--kv")) {
            if (!strcmp(v, "f32")) kv = GGML_TYPE_F32;
            else if (!strcmp(v, "f16")) kv = GGML_TYPE_F16;
            else return usage();
            continue;
        }
        int n = atoi(v);
        if (n < 1) return usage();
        if (!strcmp(o, "--prompt")) n_prompt = n;
        else if (!strcmp(o, "--new")) n_new = n;
        else if (!strcmp(o, "--reps")) reps = n;
        else if (!strcmp(o, "--warmup")) warmup = n;
        else if (!strcmp(o, "--threads")) threads = n;
        else return usage();
    }
    if (warmup > n_new) warmup = n_new;

    llama_log_set(quiet_log, NULL);
    ggml_backend_load_all_from_path(argv[1]);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers              = 0;
    struct llama_model *model    = llama_model_load_from_file(argv[2], mp);
    if (!model) {
        fprintf(stderr, "llama_generate: llama.cpp cannot load %s\n", argv[2]);
        return 2;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx                       = (uint32_t)(n_prompt + n_new);
    cp.n_batch                     = (uint32_t)n_prompt;
    cp.n_ubatch                    = (uint32_t)n_prompt;
    cp.n_seq_max                   = 1;
    cp.n_threads                   = threads;
    cp.n_threads_batch             = threads;
    cp.type_k                      = kv;
    cp.type_v                      = kv;
    cp.no_perf                     = true;
    struct llama_context *ctx      = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "llama_generate: cannot create a context of %d tokens\n",
                n_prompt + n_new);
        llama_model_free(model);
        return 2;
    }
    int          V      = llama_vocab_n_tokens(llama_model_get_vocab(model));
    llama_token *prompt = malloc((size_t)n_prompt * sizeof *prompt);
    llama_token *out    = malloc((size_t)n_new * sizeof *out);
    if (!prompt || !out) return 1;
    for (int i = 0; i < n_prompt; i++) prompt[i] = (llama_token)((37L * i + 11) % V);

    double tp, td;
    int    rc = generate(ctx, V, prompt, n_prompt, warmup, out, &tp, &td);
    for (int r = 0; rc == 0 && r < reps; r++) {
        rc = generate(ctx, V, prompt, n_prompt, n_new, out, &tp, &td);
        if (rc) break;
        printf("prefill_tps=%.3f decode_tps=%.3f tokens=", n_prompt / tp, n_new / td);
        for (int i = 0; i < n_new; i++) printf(i ? ",%d" : "%d", (int)out[i]);
        printf("\n");
        fflush(stdout);
    }
    if (rc) fprintf(stderr, "llama_generate: llama_decode failed\n");
    free(prompt);
    free(out);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return rc;
}
