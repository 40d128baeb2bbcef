/*
 * llama_logits.c — llama.cpp as a reference reader: loads a GGUF model (and optionally a LoRA
 * adapter GGUF at a user scale) with libllama, decodes fixed token ids in one batch with an F32
 * KV cache, and prints every position's logits.
 *
 *   llama_logits BACKEND_DIR MODEL.gguf [--lora ADAPTER.gguf SCALE] ID...
 *
 * Output: "n_tokens n_vocab", then one line of n_vocab logits per position ("%.9g"), the format
 * gguf_helper's `logits` prints. Exit 2 when llama.cpp refuses the model, 3 the adapter, 4 the
 * decode. Built at test time against the headers of the npm package's llama.cpp release (see
 * check_llama.sh); not part of the library.
 */
#include "llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void quiet_log(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: llama_logits BACKEND_DIR MODEL.gguf [--lora FILE SCALE] ID...\n");
        return 1;
    }
    const char *lora_path = NULL;
    float       scale     = 1.0f;
    int         first     = 3;
    if (!strcmp(argv[3], "--lora")) {
        if (argc < 7) {
            fprintf(stderr, "llama_logits: --lora needs FILE SCALE and ids\n");
            return 1;
        }
        lora_path = argv[4];
        scale     = strtof(argv[5], NULL);
        first     = 6;
    }
    int n = argc - first;

    llama_log_set(quiet_log, NULL);
    ggml_backend_load_all_from_path(argv[1]);
    llama_backend_init();

    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers              = 0;
    struct llama_model *model    = llama_model_load_from_file(argv[2], mp);
    if (!model) {
        fprintf(stderr, "llama_logits: llama.cpp cannot load %s\n", argv[2]);
        return 2;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx                       = (uint32_t)n;
    cp.n_batch                     = (uint32_t)n;
    cp.n_ubatch                    = (uint32_t)n;
    cp.n_seq_max                   = 1;
    cp.n_threads                   = 1;
    cp.n_threads_batch             = 1;
    cp.type_k                      = GGML_TYPE_F32; /* the F16 default moves logits by ~1e-2 */
    cp.type_v                      = GGML_TYPE_F32;
    cp.flash_attn_type             = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    struct llama_context *ctx      = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "llama_logits: cannot create a context\n");
        llama_model_free(model);
        return 2;
    }
    if (lora_path) {
        struct llama_adapter_lora *ad = llama_adapter_lora_init(model, lora_path);
        if (!ad) {
            fprintf(stderr, "llama_logits: llama.cpp cannot load the adapter %s\n", lora_path);
            llama_free(ctx);
            llama_model_free(model);
            return 3;
        }
        if (llama_set_adapters_lora(ctx, &ad, 1, &scale) != 0) {
            fprintf(stderr, "llama_logits: cannot set the adapter\n");
            return 3;
        }
    }

    struct llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        batch.token[i]     = (llama_token)atoi(argv[first + i]);
        batch.pos[i]       = i;
        batch.n_seq_id[i]  = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i]    = 1;
    }
    batch.n_tokens = n;
    if (llama_decode(ctx, batch) != 0) {
        fprintf(stderr, "llama_logits: llama_decode failed\n");
        return 4;
    }
    int V = llama_vocab_n_tokens(llama_model_get_vocab(model));
    printf("%d %d\n", n, V);
    for (int i = 0; i < n; i++) {
        const float *l = llama_get_logits_ith(ctx, i);
        if (!l) return 4;
        for (int v = 0; v < V; v++)
            printf(v ? " %.9g" : "%.9g", (double)l[v]);
        putchar('\n');
    }
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
