/*
 * test_peft_oracle.c — PEFT adapter directories against the PyTorch side (peft_check.py).
 *
 *   test_peft_oracle write MODEL_DIR WORK_DIR  attaches LoRA adapters (q,v; all linears with
 *        rsLoRA; q,k,v + mlp.c_proj with mixed ranks), gives B random values, saves each as a
 *        PEFT directory with expected.safetensors (tokens, our logits) for peft_check.py, and
 *        checks that loading it back restores the same tensors (slices included) and logits.
 *   test_peft_oracle read MODEL_DIR FIXTURE_DIR  loads an adapter laid out as PEFT writes it and
 *        compares our logits with the reference's (max-abs <= 1e-4).
 *   test_peft_oracle expect MODEL_DIR ADAPTER_DIR  loads an adapter (e.g. one `lora train` wrote)
 *        and writes ADAPTER_DIR/expected.safetensors with our logits for peft_check.py.
 */
#include "core/rng.h"
#include "io/fileutil.h"
#include "io/safetensors.h"
#include "lora.h"
#include "test_helper.h"

#include <string.h>

enum { B = 2, T = 24 };

static void tokens_for(int32_t *tok, int V) {
    for (int i = 0; i < T; i++) {
        tok[i]     = (int32_t)((7 * i + 3) % V);
        tok[T + i] = (int32_t)((11 * i + 5) % V);
    }
}

static void write_expected(lora_model *m, const char *dir) {
    int32_t    tok[B * T];
    lora_error err;
    char       path[4200];
    float      loss;
    int        V = lora_model_config(m)->vocab_size;
    tokens_for(tok, V);
    lora_model_forward(m, tok, NULL, B, T, &loss, &err);
    st_writer *w     = st_writer_new();
    int64_t    ts[2] = {B, T}, ls[3] = {B, T, V};
    st_writer_add(w, "tokens", ST_I32, 2, ts, tok, &err);
    st_writer_add(w, "logits", ST_F32, 3, ls, lora_model_logits(m), &err);
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    test_condf(st_writer_write(w, path, &err) == LORA_OK, "%s", err.msg);
    st_writer_free(w);
}

static void write_variant(const char *model_dir, const char *work, const char *name,
                          const char *targets, int32_t r, float alpha, int rslora,
                          const char *expect_names) {
    lora_model *m = NULL, *m2 = NULL;
    lora_error  err;
    char        dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", work, name);
    if (lora_model_load(model_dir, &m, &err) != LORA_OK) {
        test_condf(0, "%s", err.msg);
        return;
    }
    lora_adapter_params p = lora_adapter_params_default();
    p.r = r, p.alpha = alpha, p.use_rslora = rslora, p.dropout = 0.05f;
    lora_targets_parse(targets, &p.targets, &err);
    test_condf(lora_model_attach(m, &p, &err) == LORA_OK, "%s: %s", name, err.msg);
    for (int32_t i = 0; i < lora_model_n_trainable(m); i++) {
        lora_tensor_info t;
        lora_model_trainable(m, i, &t);
        if (!strstr(t.name, "lora_B")) continue;
        uint64_t key = rng_key(5, (uint64_t)i, 0);
        for (int64_t j = 0; j < t.numel; j++) t.data[j] = 0.05f * rng_normal(key, (uint64_t)j);
    }
    test_condf(lora_adapter_save(m, dir, "tiny", &err) == LORA_OK, "%s: save: %s", name, err.msg);
    write_expected(m, dir);
    int32_t tok[B * T];
    int     V = lora_model_config(m)->vocab_size;
    tokens_for(tok, V);
    float loss;
    const float *logits = lora_model_logits(m); /* of write_expected's forward */

    /* read back into a fresh model: same names (slices restored), same values, same logits */
    lora_model_load(model_dir, &m2, &err);
    test_condf(lora_adapter_load(m2, dir, &err) == LORA_OK, "%s: load: %s", name, err.msg);
    test_condf(lora_model_n_trainable(m2) == lora_model_n_trainable(m), "%s: %d vs %d tensors",
               name, lora_model_n_trainable(m2), lora_model_n_trainable(m));
    lora_tensor_info probe;
    test_condf(lora_model_trainable_find(m2, expect_names, &probe) == LORA_OK,
               "%s: %s not restored", name, expect_names);
    double worst = 0;
    for (int32_t i = 0; i < lora_model_n_trainable(m); i++) {
        lora_tensor_info a, b;
        lora_model_trainable(m, i, &a);
        if (lora_model_trainable_find(m2, a.name, &b) != LORA_OK) {
            test_condf(0, "%s: %s missing after load", name, a.name);
            continue;
        }
        double d = test_max_abs_diff(a.data, b.data, (size_t)a.numel);
        if (d > worst) worst = d;
    }
    test_condf(worst == 0.0, "%s: reloaded tensors differ by %g", name, worst);
    lora_model_forward(m2, tok, NULL, B, T, &loss, &err);
    double dl = test_max_abs_diff(lora_model_logits(m2), logits, (size_t)B * T * V);
    test_condf(dl <= 1e-6, "%s: reloaded logits differ by %g", name, dl);
    printf("  %-12s saved and reloaded: tensors identical, logits max-abs %.1e\n", name, dl);
    lora_model_free(m2);
    lora_model_free(m);
}

static void read_fixture(const char *model_dir, const char *fixture) {
    lora_model *m = NULL;
    lora_error  err;
    st_file     f;
    char        path[4200];
    snprintf(path, sizeof path, "%s/expected.safetensors", fixture);
    if (lora_model_load(model_dir, &m, &err) != LORA_OK || st_open(&f, path, &err) != LORA_OK) {
        test_condf(0, "%s", err.msg);
        lora_model_free(m);
        return;
    }
    test_condf(lora_adapter_load(m, fixture, &err) == LORA_OK, "fixture: %s", err.msg);
    lora_tensor_info t;
    test_cond("a PEFT c_attn adapter stays whole",
              lora_model_trainable_find(m, "h.0.attn.c_attn.lora_A", &t) == LORA_OK &&
                  t.shape[0] == 4);
    test_cond("rank_pattern gives mlp.c_fc rank 2",
              lora_model_trainable_find(m, "h.1.mlp.c_fc.lora_B", &t) == LORA_OK &&
                  t.shape[1] == 2);
    const st_tensor *tok = st_find(&f, "tokens"), *want = st_find(&f, "logits");
    float            loss;
    lora_model_forward(m, tok->data, NULL, (int32_t)tok->shape[0], (int32_t)tok->shape[1], &loss,
                       &err);
    double d = test_max_abs_diff(lora_model_logits(m), want->data, (size_t)want->numel);
    printf("  PEFT-layout fixture: logits max-abs %.2e vs the reference\n", d);
    test_condf(d <= 1e-4, "fixture logits differ by %g", d);
    st_close(&f);
    lora_model_free(m);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: test_peft_oracle write|read MODEL_DIR DIR\n");
        return 2;
    }
    if (!strcmp(argv[1], "expect")) {
        lora_model *m = NULL;
        lora_error  err;
        if (lora_model_load(argv[2], &m, &err) != LORA_OK ||
            lora_adapter_load(m, argv[3], &err) != LORA_OK) {
            fprintf(stderr, "%s\n", err.msg);
            lora_model_free(m);
            return 1;
        }
        write_expected(m, argv[3]);
        lora_model_free(m);
    } else if (!strcmp(argv[1], "write")) {
        write_variant(argv[2], argv[3], "qv", "q,v", 4, 8.0f, 0, "h.1.attn.c_attn.v.lora_B");
        write_variant(argv[2], argv[3], "all_rslora", "all", 3, 6.0f, 1, "h.0.mlp.c_fc.lora_A");
        write_variant(argv[2], argv[3], "qkv_mlp", "q,k,v,mlp.c_proj", 2, 4.0f, 0,
                      "h.0.attn.c_attn.k.lora_A");
    } else {
        read_fixture(argv[2], argv[3]);
    }
    return test_report("test_peft_oracle");
}
