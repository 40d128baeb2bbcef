/*
 * gpt2_init.c — a randomly initialised GPT-2 written as a Hugging Face directory, the starting
 * point of pretraining from scratch (see lora_model_init_random in lora.h).
 */
#include "core/error.h"
#include "core/rng.h"
#include "io/fileutil.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "lora.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { INIT_NORMAL, INIT_ZERO, INIT_ONE };

typedef struct init_tensor {
    char    name[96];
    int32_t ndim;
    int64_t shape[2];
    int     kind;
    float   std;
} init_tensor;

static lora_status check_config(const lora_config *c, lora_error *err) {
    if (c->n_layer <= 0 || c->n_head <= 0 || c->n_embd <= 0 || c->n_positions <= 0 ||
        c->vocab_size <= 0 || c->n_inner <= 0 || c->n_embd % c->n_head)
        return lora_errorf(err, LORA_ERR_ARG, "invalid GPT-2 config (sizes must be positive and "
                           "n_embd divisible by n_head)");
    if (c->n_layer > 1024 || c->n_embd > 65536 || c->vocab_size > 10000000 ||
        c->n_positions > 1 << 20 || c->n_inner > 1 << 20)
        return lora_errorf(err, LORA_ERR_ARG, "GPT-2 config too large");
    return LORA_OK;
}

lora_status lora_model_init_random(const lora_config *c, uint64_t seed, const char *dir,
                                   const char *tokenizer_dir, lora_error *err) {
    lora_status st = check_config(c, err);
    if (st != LORA_OK) return st;
    int64_t      C = c->n_embd, F = c->n_inner;
    size_t       n = 4 + 12 * (size_t)c->n_layer + (c->tie_word_embeddings ? 0 : 1), k = 0;
    init_tensor *t = calloc(n, sizeof *t);
    float      **data = calloc(n, sizeof *data);
    st_writer   *w    = st_writer_new();
    if (!t || !data || !w) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    float proj_std = 0.02f / sqrtf(2.0f * (float)c->n_layer);
#define T(nm, nd, d0, d1, kd, sd)                                                               \
    (snprintf(t[k].name, sizeof t[k].name, "%s", nm), t[k].ndim = nd, t[k].shape[0] = d0,      \
     t[k].shape[1] = d1, t[k].kind = kd, t[k].std = sd, k++)
    T("transformer.wte.weight", 2, c->vocab_size, C, INIT_NORMAL, 0.02f);
    T("transformer.wpe.weight", 2, c->n_positions, C, INIT_NORMAL, 0.02f);
    for (int32_t l = 0; l < c->n_layer; l++) {
        char nm[96];
#define L(suffix, nd, d0, d1, kd, sd)                                                           \
    (snprintf(nm, sizeof nm, "transformer.h.%d.%s", (int)l, suffix), T(nm, nd, d0, d1, kd, sd))
        L("ln_1.weight", 1, C, 0, INIT_ONE, 0);
        L("ln_1.bias", 1, C, 0, INIT_ZERO, 0);
        L("attn.c_attn.weight", 2, C, 3 * C, INIT_NORMAL, 0.02f);
        L("attn.c_attn.bias", 1, 3 * C, 0, INIT_ZERO, 0);
        L("attn.c_proj.weight", 2, C, C, INIT_NORMAL, proj_std);
        L("attn.c_proj.bias", 1, C, 0, INIT_ZERO, 0);
        L("ln_2.weight", 1, C, 0, INIT_ONE, 0);
        L("ln_2.bias", 1, C, 0, INIT_ZERO, 0);
        L("mlp.c_fc.weight", 2, C, F, INIT_NORMAL, 0.02f);
        L("mlp.c_fc.bias", 1, F, 0, INIT_ZERO, 0);
        L("mlp.c_proj.weight", 2, F, C, INIT_NORMAL, proj_std);
        L("mlp.c_proj.bias", 1, C, 0, INIT_ZERO, 0);
#undef L
    }
    T("transformer.ln_f.weight", 1, C, 0, INIT_ONE, 0);
    T("transformer.ln_f.bias", 1, C, 0, INIT_ZERO, 0);
    if (!c->tie_word_embeddings) T("lm_head.weight", 2, c->vocab_size, C, INIT_NORMAL, 0.02f);
#undef T
    LORA_ASSERT(k == n);
    for (size_t i = 0; i < n && st == LORA_OK; i++) {
        int64_t numel = t[i].shape[0] * (t[i].ndim == 2 ? t[i].shape[1] : 1);
        data[i]       = malloc((size_t)numel * sizeof(float));
        if (!data[i]) {
            st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", dir);
            break;
        }
        uint64_t key = rng_key(seed, i, 0x1417);
        for (int64_t j = 0; j < numel; j++)
            data[i][j] = t[i].kind == INIT_ONE    ? 1.0f
                         : t[i].kind == INIT_ZERO ? 0.0f
                                                  : t[i].std * rng_normal(key, (uint64_t)j);
        st = st_writer_add(w, t[i].name, ST_F32, t[i].ndim, t[i].shape, data[i], err);
    }
    char path[4096];
    if (st == LORA_OK) st = st_writer_meta(w, "format", "pt", err);
    if (st == LORA_OK) st = lora_mkdirs(dir, err);
    if (st == LORA_OK) st = lora_path_join(path, sizeof path, dir, "model.safetensors", err);
    if (st == LORA_OK) st = st_writer_write(w, path, err);
    if (st == LORA_OK) st = lora_path_join(path, sizeof path, dir, "config.json", err);
    if (st == LORA_OK) st = hf_config_write(path, c, "float32", err);
    if (st == LORA_OK && tokenizer_dir) {
        static const char *const files[] = {"tokenizer.json", "vocab.json", "merges.txt",
                                            "tokenizer_config.json", "special_tokens_map.json"};
        int copied = 0;
        for (size_t i = 0; st == LORA_OK && i < sizeof files / sizeof *files; i++) {
            char   src[4096], *text;
            size_t len;
            if (lora_path_join(src, sizeof src, tokenizer_dir, files[i], err) != LORA_OK) continue;
            if (lora_read_file(src, &text, &len, NULL) != LORA_OK) continue;
            st = lora_path_join(path, sizeof path, dir, files[i], err);
            if (st == LORA_OK) st = lora_write_file_atomic(path, text, len, err);
            free(text);
            copied++;
        }
        if (st == LORA_OK && !copied)
            st = lora_errorf(err, LORA_ERR_MISSING, "%s: no tokenizer files (tokenizer.json or "
                             "vocab.json + merges.txt)", tokenizer_dir);
    }
done:
    for (size_t i = 0; data && i < n; i++) free(data[i]);
    free(data);
    free(t);
    st_writer_free(w);
    return st;
}
