/*
 * combine_fixture.c — inputs and outputs of the `lora combine` oracle, made by the engine.
 *
 *   combine_fixture make DIR
 *       DIR/model (tiny GPT-2: L 2, C 32, n_inner 128, V 61), DIR/model_wide (C 48) and LoRA
 *       adapters saved with lora_adapter_save after random values were put in every A and B:
 *       a_qv (q,v r 4 alpha 8), b_qv (q,v r 4 alpha 16), c_qk (q,k r 4 alpha 4),
 *       d_mix (q,v,c_proj,c_fc r 2 alpha 4 rsLoRA: c_attn rank 4, the others rank 2 by
 *       rank_pattern), e_qv2 (q,v r 2 alpha 2), f_proj (c_proj r 4 alpha 8),
 *       w_qv (q,v r 4 on model_wide) and ada (AdaLoRA on q,v).
 *   combine_fixture logits MODEL ADAPTER OUT
 *       the logits (2, 8, V) of MODEL with the adapter in ADAPTER loaded by lora_adapter_load,
 *       written with the tokens to the safetensors file OUT ("tokens" I32, "logits" F32).
 */
#include "combine_inputs.h"
#include "tiny_model.h"

#define NB 2
#define NT 8

static int make(const char *dir) {
    char        model[2048], wide[2048], out[2300];
    lora_config c = tiny_config();
    snprintf(model, sizeof model, "%s/model", dir);
    snprintf(wide, sizeof wide, "%s/model_wide", dir);
    if (tiny_write(model, &c, NULL, 3) != 0) return 1;
    c.n_embd = 48;
    if (tiny_write(wide, &c, NULL, 4) != 0) return 1;
    static const struct {
        const char *name, *targets;
        int32_t     r;
        float       alpha;
        int         rslora, wide, adalora;
    } mk[] = {{"a_qv", "q,v", 4, 8.0f, 0, 0, 0},  {"b_qv", "q,v", 4, 16.0f, 0, 0, 0},
              {"c_qk", "q,k", 4, 4.0f, 0, 0, 0},  {"d_mix", "q,v,c_proj,c_fc", 2, 4.0f, 1, 0, 0},
              {"e_qv2", "q,v", 2, 2.0f, 0, 0, 0}, {"f_proj", "c_proj", 4, 8.0f, 0, 0, 0},
              {"w_qv", "q,v", 4, 8.0f, 0, 1, 0},  {"ada", "q,v", 4, 8.0f, 0, 0, 1}};
    for (size_t i = 0; i < sizeof mk / sizeof mk[0]; i++) {
        snprintf(out, sizeof out, "%s/%s", dir, mk[i].name);
        if (combine_make_adapter(mk[i].wide ? wide : model, out,
                                 mk[i].adalora ? LORA_METHOD_ADALORA : LORA_METHOD_LORA,
                                 mk[i].targets, mk[i].r, mk[i].alpha, mk[i].rslora, 100 + i, NULL))
            return 1;
    }
    return 0;
}

static int logits(const char *model, const char *adapter_dir, const char *out) {
    lora_model *m = NULL;
    lora_error  err;
    int32_t     tok[NB * NT];
    if (lora_model_load(model, &m, &err) != LORA_OK ||
        lora_adapter_load(m, adapter_dir, &err) != LORA_OK) {
        fprintf(stderr, "combine_fixture: %s\n", err.msg);
        lora_model_free(m);
        return 1;
    }
    int32_t V = lora_model_config(m)->vocab_size;
    for (int i = 0; i < NB * NT; i++)
        tok[i] = (int32_t)((i * 13 + 5) % V);
    st_writer  *w      = st_writer_new();
    int64_t     st_[2] = {NB, NT}, sl[3] = {NB, NT, V};
    lora_status st = lora_model_forward(m, tok, NULL, NB, NT, NULL, &err);
    if (st == LORA_OK) st = st_writer_add(w, "tokens", ST_I32, 2, st_, tok, &err);
    if (st == LORA_OK) st = st_writer_add(w, "logits", ST_F32, 3, sl, lora_model_logits(m), &err);
    if (st == LORA_OK) st = st_writer_write(w, out, &err);
    st_writer_free(w);
    lora_model_free(m);
    if (st != LORA_OK) {
        fprintf(stderr, "combine_fixture: %s\n", err.msg);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "make")) return make(argv[2]);
    if (argc == 5 && !strcmp(argv[1], "logits")) return logits(argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: combine_fixture make DIR | logits MODEL ADAPTER OUT\n");
    return 2;
}
