/*
 * tiny_model.h — writes a small random GPT-2 directory (config.json + model.safetensors) for
 * tests, with hooks to corrupt it: a tensor renamed away, a wrong shape, a wrong dtype.
 */
#ifndef LORA_TEST_TINY_MODEL_H
#define LORA_TEST_TINY_MODEL_H

#include "core/dtype.h"
#include "core/rng.h"
#include "io/fileutil.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "lora.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct tiny_opts {
    const char *skip;       /* tensor name (without prefix) to leave out, or NULL */
    const char *bad_shape;  /* tensor written with one extra row, or NULL */
    const char *bad_dtype;  /* tensor written as I32, or NULL */
    int         f16;        /* write every tensor as F16 */
} tiny_opts;

static inline lora_config tiny_config(void) {
    lora_config c;
    memset(&c, 0, sizeof c);
    c.n_layer            = 2;
    c.n_head             = 2;
    c.n_embd             = 32;
    c.n_positions        = 16;
    c.n_inner            = 128;
    c.vocab_size         = 61;
    c.layer_norm_epsilon = 1e-5f;
    c.activation         = LORA_ACT_GELU_TANH;
    c.tie_word_embeddings = 1;
    return c;
}

/* A scratch directory under $LORA_TEST_TMP (or /tmp), created. */
static inline void tiny_tmpdir(char *out, size_t n, const char *name) {
    const char *base = getenv("LORA_TEST_TMP");
    snprintf(out, n, "%s/%s.%d", base ? base : "/tmp", name, (int)getpid());
    lora_mkdirs(out, NULL);
}

/* Writes DIR/config.json and DIR/model.safetensors; returns 0 on success. */
static inline int tiny_write(const char *dir, const lora_config *c, const tiny_opts *o,
                             uint64_t seed) {
    char path[4096];
    lora_mkdirs(dir, NULL);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (hf_config_write(path, c, "float32", NULL) != LORA_OK) return -1;
    int64_t C = c->n_embd, F = c->n_inner;
    struct {
        char    name[64];
        int64_t d0, d1;
        int     kind; /* 0 weight ~ N(0, .05), 1 bias ~ N(0, .02), 2 ln weight ~ 1 + N(0, .1) */
    } t[64];
    int n = 0;
#define ADD(nm, a, b, k) (snprintf(t[n].name, 64, "%s", nm), t[n].d0 = a, t[n].d1 = b, t[n++].kind = k)
    ADD("wte.weight", c->vocab_size, C, 0);
    ADD("wpe.weight", c->n_positions, C, 0);
    for (int l = 0; l < c->n_layer; l++) {
        char nm[64];
#define L(s, a, b, k) (snprintf(nm, 64, "h.%d.%s", l, s), ADD(nm, a, b, k))
        L("ln_1.weight", C, 0, 2);
        L("ln_1.bias", C, 0, 1);
        L("attn.c_attn.weight", C, 3 * C, 0);
        L("attn.c_attn.bias", 3 * C, 0, 1);
        L("attn.c_proj.weight", C, C, 0);
        L("attn.c_proj.bias", C, 0, 1);
        L("ln_2.weight", C, 0, 2);
        L("ln_2.bias", C, 0, 1);
        L("mlp.c_fc.weight", C, F, 0);
        L("mlp.c_fc.bias", F, 0, 1);
        L("mlp.c_proj.weight", F, C, 0);
        L("mlp.c_proj.bias", C, 0, 1);
#undef L
    }
    ADD("ln_f.weight", C, 0, 2);
    ADD("ln_f.bias", C, 0, 1);
#undef ADD
    st_writer *w = st_writer_new();
    void      *bufs[64];
    int        rc = 0;
    for (int i = 0; i < n; i++) {
        int64_t numel = t[i].d0 * (t[i].d1 ? t[i].d1 : 1);
        int     bad   = o && o->bad_shape && !strcmp(o->bad_shape, t[i].name);
        if (bad) numel += t[i].d1 ? t[i].d1 : 1;
        float   *v   = malloc((size_t)numel * sizeof(float));
        uint64_t key = rng_key(seed, (uint64_t)i, 7);
        for (int64_t j = 0; j < numel; j++) {
            float z = rng_normal(key, (uint64_t)j);
            v[j]    = t[i].kind == 0 ? 0.05f * z : t[i].kind == 1 ? 0.02f * z : 1.0f + 0.1f * z;
        }
        bufs[i]          = v;
        int64_t shape[2] = {t[i].d0 + (bad ? 1 : 0), t[i].d1};
        int32_t ndim     = t[i].d1 ? 2 : 1;
        char    full[96];
        snprintf(full, sizeof full, "transformer.%.63s", t[i].name);
        if (o && o->skip && !strcmp(o->skip, t[i].name)) continue;
        st_dtype dt = ST_F32;
        if (o && o->bad_dtype && !strcmp(o->bad_dtype, t[i].name)) dt = ST_I32;
        if (o && o->f16) {
            uint16_t *h = malloc((size_t)numel * 2);
            for (int64_t j = 0; j < numel; j++) h[j] = lora_f32_to_f16(v[j]);
            free(v);
            bufs[i] = h;
            dt      = ST_F16;
        }
        if (st_writer_add(w, full, dt, ndim, shape, bufs[i], NULL) != LORA_OK) rc = -1;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (rc == 0 && st_writer_write(w, path, NULL) != LORA_OK) rc = -1;
    st_writer_free(w);
    for (int i = 0; i < n; i++) free(bufs[i]);
    return rc;
}

/* Fills every trainable tensor of m with normal values of std amp (so LoRA's B is non-zero);
 * AdaLoRA's singular values E get 0.5 + normal / 2 instead, keeping them away from zero. */
static inline void tiny_fill_trainable(lora_model *m, uint64_t seed, float amp) {
    for (int32_t i = 0; i < lora_model_n_trainable(m); i++) {
        lora_tensor_info t;
        lora_model_trainable(m, i, &t);
        uint64_t key = rng_key(seed, (uint64_t)i, 3);
        int      e   = strstr(t.name, "lora_E") != NULL;
        for (int64_t j = 0; j < t.numel; j++)
            t.data[j] = e ? 0.5f + 0.5f * rng_normal(key, (uint64_t)j)
                          : amp * rng_normal(key, (uint64_t)j);
    }
}

#ifdef LORA_TEST_HELPER_H
/* lora_model_load, a test failure (and NULL) when it fails. */
static inline lora_model *tiny_load(const char *dir) {
    lora_model *m = NULL;
    lora_error  err;
    test_condf(lora_model_load(dir, &m, &err) == LORA_OK, "load %s: %s", dir, err.msg);
    return m;
}
#endif

#endif
