/*
 * test_model.c — the model and PEFT layer without the oracle: bad checkpoints, the LoRA
 * invariants (ΔW = 0 at step 0, frozen sites hold no dW), dropout, save/load of trainable
 * tensors, argument checks, schedules and the memory estimate.
 */
#include "model/gpt2.h"
#include "peft/linear.h"
#include "test_helper.h"
#include "tiny_model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static char root[4096];

/* Loads DIR expecting failure status `want`; the message must name the file and the problem. */
static void expect_load_error(const char *dir, lora_status want, const char *must_contain) {
    lora_model *m = NULL;
    lora_error  err;
    memset(&err, 0, sizeof err);
    lora_status st = lora_model_load(dir, &m, &err);
    test_condf(st == want, "%s: status %d, expected %d (%s)", dir, st, want, err.msg);
    test_condf(m == NULL, "%s: model returned on failure", dir);
    test_condf(strstr(err.msg, dir) != NULL, "error does not name the directory: %s", err.msg);
    test_condf(strstr(err.msg, must_contain) != NULL, "error '%s' lacks '%s'", err.msg,
               must_contain);
    test_condf(strchr(err.msg, '\n') == NULL, "error is not one line: %s", err.msg);
    lora_model_free(m);
}

static void test_bad_checkpoints(void) {
    lora_config c = tiny_config();
    char        dir[4200];
    tiny_opts   o;

    memset(&o, 0, sizeof o);
    o.skip = "h.1.mlp.c_fc.bias";
    snprintf(dir, sizeof dir, "%s/missing", root);
    tiny_write(dir, &c, &o, 1);
    expect_load_error(dir, LORA_ERR_MISSING, "h.1.mlp.c_fc.bias");

    memset(&o, 0, sizeof o);
    o.bad_shape = "h.0.attn.c_proj.weight";
    snprintf(dir, sizeof dir, "%s/shape", root);
    tiny_write(dir, &c, &o, 1);
    expect_load_error(dir, LORA_ERR_SHAPE, "(33, 32)");

    memset(&o, 0, sizeof o);
    o.bad_dtype = "wpe.weight";
    snprintf(dir, sizeof dir, "%s/dtype", root);
    tiny_write(dir, &c, &o, 1);
    expect_load_error(dir, LORA_ERR_UNSUPPORTED, "I32");

    /* config.json that disagrees with the tensors */
    memset(&o, 0, sizeof o);
    snprintf(dir, sizeof dir, "%s/cfg", root);
    tiny_write(dir, &c, &o, 1);
    lora_config wrong = c;
    wrong.n_embd      = 64;
    char path[4300];
    snprintf(path, sizeof path, "%s/config.json", dir);
    hf_config_write(path, &wrong, "float32", NULL);
    expect_load_error(dir, LORA_ERR_SHAPE, "wte.weight");

    /* malformed config.json */
    lora_write_file_atomic(path, "{\"n_layer\": 2,", 14, NULL);
    expect_load_error(dir, LORA_ERR_FORMAT, "config.json");

    /* truncated safetensors */
    snprintf(dir, sizeof dir, "%s/trunc", root);
    tiny_write(dir, &c, &o, 1);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    test_cond("truncate", truncate(path, 4000) == 0);
    expect_load_error(dir, LORA_ERR_FORMAT, "model.safetensors");

    /* no weights at all */
    snprintf(dir, sizeof dir, "%s/noweights", root);
    tiny_write(dir, &c, &o, 1);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    lora_model *m = NULL;
    lora_error  err;
    test_cond("no weights fails", lora_model_load(dir, &m, &err) != LORA_OK && m == NULL);
}

static lora_model *load_tiny(const char *name, int f16) {
    lora_config c = tiny_config();
    tiny_opts   o;
    memset(&o, 0, sizeof o);
    o.f16 = f16;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    tiny_write(dir, &c, &o, 3);
    lora_model *m = NULL;
    lora_error  err;
    test_condf(lora_model_load(dir, &m, &err) == LORA_OK, "load %s: %s", dir, err.msg);
    return m;
}

static void make_batch(int32_t *tok, int32_t *tgt, int B, int T, int V) {
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)((i * 7 + 3) % V);
        tgt[i] = (i % T) < 2 ? -1 : (int32_t)((i * 5 + 1) % V);
    }
}

static void test_lora_invariants(void) {
    enum { B = 2, T = 12 };
    int32_t     tok[B * T], tgt[B * T];
    lora_error  err;
    lora_model *base = load_tiny("inv", 0);
    lora_model *m    = load_tiny("inv", 0);
    if (!base || !m) return;
    int V = lora_model_config(m)->vocab_size;
    make_batch(tok, tgt, B, T, V);
    float lb, lm;
    lora_model_forward(base, tok, tgt, B, T, &lb, &err);

    lora_adapter_params p = lora_adapter_params_default();
    p.targets             = LORA_TARGET_ALL_LINEAR;
    p.dropout             = 0.0f;
    test_condf(lora_model_attach(m, &p, &err) == LORA_OK, "attach: %s", err.msg);
    test_condf(lora_model_attach(m, &p, &err) == LORA_ERR_STATE, "second attach must fail");
    lora_model_forward(m, tok, tgt, B, T, &lm, &err);
    size_t n = (size_t)B * T * (size_t)V;
    test_condf(test_max_abs_diff(lora_model_logits(m), lora_model_logits(base), n) == 0.0,
               "B = 0 at init must leave the logits bit-identical");
    test_cond("same loss", lb == lm);

    /* frozen sites: no dW, no db; LoRA tensors 2 per site */
    int frozen = 1;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        gpt2_layer *ly = &m->layers[l];
        frozen &= !ly->c_attn.dw && !ly->c_attn.db && !ly->attn_proj.dw && !ly->c_fc.dw &&
                  !ly->mlp_proj.dw && !ly->dln_1_w && !ly->dln_2_b;
        frozen &= ly->c_attn.n_adapters == 1 && ly->mlp_proj.n_adapters == 1;
    }
    test_cond("LoRA leaves every base weight without a gradient", frozen && !m->dwte && !m->dwpe);
    test_condf(lora_model_n_trainable(m) == 2 * 4 * m->cfg.n_layer, "trainable tensors %d",
               lora_model_n_trainable(m));

    /* Kaiming-uniform bound 1/sqrt(in) on A, B zero */
    lora_tensor_info a, b;
    test_cond("find A", lora_model_trainable_find(m, "h.1.mlp.c_proj.lora_A", &a) == LORA_OK);
    test_cond("find B", lora_model_trainable_find(m, "h.1.mlp.c_proj.lora_B", &b) == LORA_OK);
    float bound = 1.0f / sqrtf((float)m->cfg.n_inner), amax = 0, bmax = 0;
    for (int64_t i = 0; i < a.numel; i++) amax = fmaxf(amax, fabsf(a.data[i]));
    for (int64_t i = 0; i < b.numel; i++) bmax = fmaxf(bmax, fabsf(b.data[i]));
    test_condf(amax <= bound && amax > 0.8f * bound, "A max %g, bound %g", amax, bound);
    test_cond("B starts at zero", bmax == 0.0f);
    test_cond("A shape (r, in)", a.shape[0] == 8 && a.shape[1] == m->cfg.n_inner);
    test_cond("B shape (out, r)", b.shape[0] == m->cfg.n_embd && b.shape[1] == 8);

    /* save / load trainable round trip, and a mismatched file */
    char path[4300];
    snprintf(path, sizeof path, "%s/trainable.safetensors", root);
    for (int64_t i = 0; i < b.numel; i++) b.data[i] = 0.01f * (float)(i % 7);
    test_condf(lora_model_save_trainable(m, path, &err) == LORA_OK, "save: %s", err.msg);
    float keep = b.data[3];
    memset(b.data, 0, (size_t)b.numel * sizeof(float));
    test_condf(lora_model_load_trainable(m, path, &err) == LORA_OK, "load: %s", err.msg);
    test_cond("round trip", b.data[3] == keep);

    lora_model         *m2 = load_tiny("inv", 0);
    lora_adapter_params p2 = p;
    p2.r                   = 4;
    lora_model_attach(m2, &p2, &err);
    test_cond("rank mismatch refused",
              lora_model_load_trainable(m2, path, &err) == LORA_ERR_SHAPE &&
                  strstr(err.msg, "expects") && strstr(err.msg, path));
    lora_model_free(m2);

    /* argument checks */
    int32_t bad[B * T];
    memcpy(bad, tok, sizeof bad);
    bad[5] = V;
    test_cond("token out of range",
              lora_model_forward(m, bad, NULL, B, T, &lm, &err) == LORA_ERR_ARG);
    test_cond("T past the context",
              lora_model_forward(m, tok, NULL, 1, m->cfg.n_positions + 1, &lm, &err) ==
                  LORA_ERR_ARG);
    lora_model_forward(m, tok, NULL, B, T, &lm, &err);
    test_cond("backward without targets", lora_model_backward(m, &err) == LORA_ERR_STATE);
    lora_model_free(m);
    lora_model_free(base);
}

/* Dropout: eval is deterministic and mask-free; training masks are reproducible per pass and
 * the backward uses the same mask (checked against a finite difference). */
static void test_dropout(void) {
    enum { B = 2, T = 10 };
    int32_t     tok[B * T], tgt[B * T];
    lora_error  err;
    lora_model *m = load_tiny("drop", 0);
    if (!m) return;
    int V = m->cfg.vocab_size;
    make_batch(tok, tgt, B, T, V);
    lora_adapter_params p = lora_adapter_params_default();
    p.dropout             = 0.3f;
    lora_model_attach(m, &p, &err);
    lora_tensor_info a, b;
    lora_model_trainable_find(m, "h.0.attn.c_attn.v.lora_A", &a);
    lora_model_trainable_find(m, "h.0.attn.c_attn.v.lora_B", &b);
    for (int64_t i = 0; i < b.numel; i++) b.data[i] = 0.05f * sinf((float)i);

    float e1, e2, t1, t2;
    lora_model_set_training(m, 0);
    lora_model_forward(m, tok, tgt, B, T, &e1, &err);
    lora_model_forward(m, tok, tgt, B, T, &e2, &err);
    test_cond("eval mode is deterministic", e1 == e2);
    lora_model_set_training(m, 1);
    uint64_t pass = m->ctx.pass;
    lora_model_forward(m, tok, tgt, B, T, &t1, &err);
    test_cond("training mode drops", t1 != e1);
    m->ctx.pass = pass;
    lora_model_forward(m, tok, tgt, B, T, &t2, &err);
    test_cond("a pass's mask is reproducible", t1 == t2);

    /* d loss / d A[i] against a central difference under the same mask */
    lora_model_zero_grad(m);
    m->ctx.pass = pass;
    lora_model_forward(m, tok, tgt, B, T, &t1, &err);
    lora_model_backward(m, &err);
    int   idx = 5;
    float g   = a.grad[idx], h = 1e-2f, w0 = a.data[idx], lp, lm;
    a.data[idx] = w0 + h;
    m->ctx.pass = pass;
    lora_model_forward(m, tok, tgt, B, T, &lp, &err);
    a.data[idx] = w0 - h;
    m->ctx.pass = pass;
    lora_model_forward(m, tok, tgt, B, T, &lm, &err);
    a.data[idx] = w0;
    double fd   = ((double)lp - lm) / (2.0 * h);
    test_condf(fabs(fd - g) <= 2e-2 * fabs(g) + 1e-6, "dropout grad %g vs finite diff %g", g, fd);
    lora_model_free(m);
}

/* The dropout masks: the dropped fraction is p, kept elements are scaled by 1 / (1 - p), the
 * same key gives the same mask and two keys independent ones (overlap of drops near p²). */
static void test_dropout_masks(void) {
    enum { N = 1 << 20 };
    float *x = malloc(N * sizeof(float)), *m1 = malloc(N * sizeof(float)),
          *m2 = malloc(N * sizeof(float)), *m3 = malloc(N * sizeof(float));
    if (!x || !m1 || !m2 || !m3) {
        test_cond("dropout masks: allocation", 0);
        free(x), free(m1), free(m2), free(m3);
        return;
    }
    for (int i = 0; i < N; i++) x[i] = 1.0f;
    const float ps[] = {0.05f, 0.1f, 0.3f, 0.5f};
    for (int t = 0; t < 4; t++) {
        float p = ps[t];
        adapter_dropout_apply(m1, x, N, p, 1234 + t);
        adapter_dropout_apply(m2, x, N, p, 1234 + t);
        adapter_dropout_apply(m3, x, N, p, 99991 + 7 * t);
        long  drop = 0, both = 0, same = 1, scaled = 1;
        float keep = 1.0f / (1.0f - p);
        for (int i = 0; i < N; i++) {
            drop += m1[i] == 0.0f;
            both += m1[i] == 0.0f && m3[i] == 0.0f;
            same &= m1[i] == m2[i];
            scaled &= m1[i] == 0.0f || m1[i] == keep;
        }
        double f = (double)drop / N, o = (double)both / N;
        test_condf(fabs(f - p) < 0.003, "p = %g: dropped fraction %.4f", (double)p, f);
        test_condf(same && scaled, "p = %g: reproducible, kept scaled by 1 / (1 - p)", (double)p);
        test_condf(fabs(o - (double)p * p) < 0.003, "p = %g: two keys overlap %.4f (p² = %.4f)",
                   (double)p, o, (double)p * p);
    }
    /* consecutive elements are not correlated: drops in a row occur at rate p² */
    adapter_dropout_apply(m1, x, N, 0.5f, 77);
    long pairs = 0;
    for (int i = 0; i + 1 < N; i++) pairs += m1[i] == 0.0f && m1[i + 1] == 0.0f;
    test_condf(fabs((double)pairs / (N - 1) - 0.25) < 0.003, "adjacent drops %.4f (0.25)",
               (double)pairs / (N - 1));
    free(x), free(m1), free(m2), free(m3);
}

/*
 * The fused adapter kernels against the composition they replace: adapter_dropout_apply's mask,
 * then plain products in double. Shapes cross the kernels' row and column blocks (4 rows, 256
 * and 64 columns); ranks 1 to 20; with and without dropout and dinp. Every result has the same
 * bits on 1, 2 and 3 threads.
 */
static void test_adapter_kernels(void) {
    enum { N = 37, IN = 300, RMAX = 20 };
    const int r_list[] = {1, 3, 8, 20};
    float    *x = malloc(sizeof(float) * N * IN), *xd = malloc(sizeof(float) * N * IN);
    float    *A = malloc(sizeof(float) * RMAX * IN), *du = malloc(sizeof(float) * N * RMAX);
    float    *u = malloc(sizeof(float) * N * RMAX), *u2 = malloc(sizeof(float) * N * RMAX);
    float    *dA = malloc(sizeof(float) * RMAX * IN), *dA2 = malloc(sizeof(float) * RMAX * IN);
    float    *dx = malloc(sizeof(float) * N * IN), *dx2 = malloc(sizeof(float) * N * IN);
    if (!x || !xd || !A || !du || !u || !u2 || !dA || !dA2 || !dx || !dx2) {
        test_cond("adapter kernels: allocation", 0);
        goto done;
    }
    for (int i = 0; i < N * IN; i++) x[i] = sinf(0.37f * (float)i) + 0.1f;
    for (int i = 0; i < RMAX * IN; i++) A[i] = 0.5f * cosf(0.11f * (float)i);
    for (int i = 0; i < N * RMAX; i++) du[i] = sinf(1.3f * (float)i + 0.2f);
    for (size_t k = 0; k < sizeof r_list / sizeof r_list[0]; k++) {
        int r = r_list[k];
        for (int dropped = 0; dropped <= 1; dropped++) {
            float    p = 0.3f;
            uint64_t key = 4242 + (uint64_t)r;
            if (dropped)
                adapter_dropout_apply(xd, x, (size_t)N * IN, p, key);
            else
                memcpy(xd, x, sizeof(float) * N * IN);
            /* u = xd · Aᵀ */
            adapter_down(u, x, A, N, r, IN, dropped, p, key);
            double worst = 0;
            for (int n = 0; n < N; n++)
                for (int j = 0; j < r; j++) {
                    double ref = 0;
                    for (int i = 0; i < IN; i++) ref += (double)xd[n * IN + i] * A[j * IN + i];
                    worst = fmax(worst, fabs(u[n * r + j] - ref) / (1.0 + fabs(ref)));
                }
            test_condf(worst < 1e-5, "adapter_down r=%d dropped=%d: error %g", r, dropped,
                       worst);
            /* dA += duᵀ · xd;  dx += (du · A) ⊙ mask / (1 - p) */
            for (int i = 0; i < r * IN; i++) dA[i] = 0.25f;
            for (int i = 0; i < N * IN; i++) dx[i] = -0.5f;
            adapter_up_grads(dA, dx, du, x, A, N, r, IN, dropped, p, key);
            double wa = 0, wx = 0;
            for (int j = 0; j < r; j++)
                for (int i = 0; i < IN; i++) {
                    double ref = 0.25;
                    for (int n = 0; n < N; n++) ref += (double)du[n * r + j] * xd[n * IN + i];
                    wa = fmax(wa, fabs(dA[j * IN + i] - ref) / (1.0 + fabs(ref)));
                }
            float keep = 1.0f / (1.0f - p);
            for (int n = 0; n < N; n++)
                for (int i = 0; i < IN; i++) {
                    double g = 0;
                    for (int j = 0; j < r; j++) g += (double)du[n * r + j] * A[j * IN + i];
                    int    kept = !dropped || xd[n * IN + i] != 0.0f || x[n * IN + i] == 0.0f;
                    double ref  = -0.5 + (kept ? g * (dropped ? keep : 1.0f) : 0.0);
                    wx          = fmax(wx, fabs(dx[n * IN + i] - ref) / (1.0 + fabs(ref)));
                }
            test_condf(wa < 1e-5 && wx < 1e-5, "adapter_up_grads r=%d dropped=%d: dA error %g, "
                       "dx error %g", r, dropped, wa, wx);
            /* without dinp, dA alone; and the same bits on any thread count */
            int same = 1, threads = lora_get_threads();
            for (int t = 1; t <= 3; t++) {
                lora_set_threads(t);
                adapter_down(u2, x, A, N, r, IN, dropped, p, key);
                for (int i = 0; i < r * IN; i++) dA2[i] = 0.25f;
                for (int i = 0; i < N * IN; i++) dx2[i] = -0.5f;
                adapter_up_grads(dA2, t == 2 ? NULL : dx2, du, x, A, N, r, IN, dropped, p, key);
                same &= !memcmp(u, u2, sizeof(float) * (size_t)N * r) &&
                        !memcmp(dA, dA2, sizeof(float) * (size_t)r * IN) &&
                        (t == 2 || !memcmp(dx, dx2, sizeof(float) * N * IN));
            }
            lora_set_threads(threads);
            test_condf(same, "adapter kernels r=%d dropped=%d: bits differ with the thread "
                       "count or without dinp", r, dropped);
        }
    }
done:
    free(x), free(xd), free(A), free(du), free(u), free(u2), free(dA), free(dA2), free(dx),
        free(dx2);
}

static void test_f16_and_methods(void) {
    enum { B = 1, T = 8 };
    int32_t     tok[B * T], tgt[B * T];
    lora_error  err;
    lora_model *m = load_tiny("half", 1);
    if (!m) return;
    int64_t mapped, conv;
    lora_model_weight_bytes(m, &mapped, &conv);
    test_condf(conv == m->weights_bytes && mapped == 0, "F16 weights converted: %lld",
               (long long)conv);
    lora_model *f = load_tiny("f32", 0);
    lora_model_weight_bytes(f, &mapped, &conv);
    test_condf(conv == 0 && mapped == f->weights_bytes, "F32 weights mapped in place");
    lora_model_free(f);

    make_batch(tok, tgt, B, T, m->cfg.vocab_size);
    lora_adapter_params p = lora_adapter_params_default();
    p.method              = LORA_METHOD_BITFIT;
    test_condf(lora_model_attach(m, &p, &err) == LORA_OK, "bitfit: %s", err.msg);
    test_cond("BitFit: biases only", m->layers[0].c_attn.db && !m->layers[0].c_attn.dw &&
                                         m->dln_f_b && !m->dln_f_w && !m->dwte);
    float l0, l1;
    lora_optim_params o = lora_optim_params_default();
    o.lr = 1e-2f, o.warmup_steps = 0;
    o.schedule = LORA_SCHEDULE_CONSTANT;
    for (int s = 0; s < 5; s++) {
        lora_model_zero_grad(m);
        lora_model_forward(m, tok, tgt, B, T, s ? &l1 : &l0, &err);
        lora_model_backward(m, &err);
        lora_model_step(m, &o, o.lr, NULL, &err);
    }
    test_condf(l1 < l0, "BitFit on F16 weights lowers the loss: %g -> %g", l0, l1);
    lora_model_free(m);

    lora_model *b = load_tiny("badparams", 0);
    p         = lora_adapter_params_default();
    p.r       = 0;
    test_cond("r = 0 refused", lora_model_attach(b, &p, &err) == LORA_ERR_ARG);
    p         = lora_adapter_params_default();
    p.targets = LORA_TARGET_C_ATTN | LORA_TARGET_Q;
    test_cond("c_attn with q refused", lora_model_attach(b, &p, &err) == LORA_ERR_ARG);
    p         = lora_adapter_params_default();
    test_cond("attach after failures", lora_model_attach(b, &p, &err) == LORA_OK);
    lora_model_free(b);
}

static void test_targets_and_schedules(void) {
    uint32_t   t;
    lora_error err;
    test_cond("q,v", lora_targets_parse("q, v", &t, &err) == LORA_OK &&
                         t == (LORA_TARGET_Q | LORA_TARGET_V));
    test_cond("all", lora_targets_parse("all", &t, &err) == LORA_OK && t == LORA_TARGET_ALL_LINEAR);
    test_cond("mlp.c_proj", lora_targets_parse("c_proj,mlp.c_proj", &t, &err) == LORA_OK &&
                                t == (LORA_TARGET_ATTN_PROJ | LORA_TARGET_MLP_PROJ));
    test_cond("unknown", lora_targets_parse("q,x", &t, &err) == LORA_ERR_ARG &&
                             strstr(err.msg, "'x'"));

    lora_optim_params o = lora_optim_params_default();
    o.lr = 1.0f, o.warmup_steps = 10, o.total_steps = 110;
    o.schedule = LORA_SCHEDULE_LINEAR;
    test_cond("warm-up start", lora_schedule_lr(&o, 0) == 0.0f);
    test_cond("warm-up mid", fabsf(lora_schedule_lr(&o, 5) - 0.5f) < 1e-7f);
    test_cond("linear peak", fabsf(lora_schedule_lr(&o, 10) - 1.0f) < 1e-7f);
    test_cond("linear mid", fabsf(lora_schedule_lr(&o, 60) - 0.5f) < 1e-7f);
    test_cond("linear end", lora_schedule_lr(&o, 110) == 0.0f && lora_schedule_lr(&o, 200) == 0);
    o.schedule = LORA_SCHEDULE_COSINE;
    test_cond("cosine mid", fabsf(lora_schedule_lr(&o, 60) - 0.5f) < 1e-6f);
    test_cond("cosine quarter", fabsf(lora_schedule_lr(&o, 35) - 0.8535534f) < 1e-6f);
    o.schedule = LORA_SCHEDULE_CONSTANT;
    test_cond("constant", lora_schedule_lr(&o, 100) == 1.0f);
}

static void test_estimate(void) {
    lora_config          c = tiny_config();
    lora_adapter_params  p = lora_adapter_params_default();
    lora_memory_estimate lo, full;
    lora_error           err;
    test_cond("estimate lora", lora_estimate_memory(&c, &p, 2, 16, 0, &lo, &err) == LORA_OK);
    p.method = LORA_METHOD_FULL;
    test_cond("estimate full", lora_estimate_memory(&c, &p, 2, 16, 0, &full, &err) == LORA_OK);
    test_cond("full trains more", full.trainable_bytes > 10 * lo.trainable_bytes);
    test_cond("T past context", lora_estimate_memory(&c, &p, 2, 17, 0, &lo, &err) == LORA_ERR_ARG);
    /* the estimate's activation term is the one the model allocates */
    lora_model *m = load_tiny("est", 0);
    p             = lora_adapter_params_default();
    lora_model_attach(m, &p, &err);
    lora_model_reserve(m, 2, 16, &err);
    lora_estimate_memory(&c, &p, 2, 16, 0, &lo, &err);
    int64_t lora_u = 0; /* per-adapter saved A·x, allocated by the adapters themselves */
    lora_u         = (int64_t)2 * 16 * p.r * 2 * c.n_layer * (int64_t)sizeof(float);
    test_condf((int64_t)(m->act_floats * sizeof(float)) + lora_u == lo.activation_bytes,
               "activation estimate %lld vs planned %lld", (long long)lo.activation_bytes,
               (long long)(m->act_floats * sizeof(float)) + lora_u);
    /* LoRA on q,v: c_proj, c_fc and mlp.c_proj are frozen without adapters, so their inputs
     * share one buffer across layers; c_attn's input (ln1) is kept per layer */
    test_cond("q,v: ln1 kept per layer", m->la[0].ln1 != m->la[1].ln1);
    test_cond("q,v: atty, ln2 shared", m->la[0].atty == m->la[1].atty &&
                                           m->la[0].ln2 == m->la[1].ln2 &&
                                           m->la[0].atty == m->la[0].ln2);
    test_cond("q,v: gelu shared", m->la[0].fch_gelu == m->la[1].fch_gelu);
    lora_model_free(m);
    m        = load_tiny("est_full", 0);
    p.method = LORA_METHOD_FULL;
    lora_model_attach(m, &p, &err);
    lora_model_reserve(m, 2, 16, &err);
    test_cond("full: every input kept", m->la[0].atty != m->la[1].atty &&
                                            m->la[0].ln2 != m->la[1].ln2 &&
                                            m->la[0].fch_gelu != m->la[1].fch_gelu);
    lora_memory_estimate fe;
    lora_estimate_memory(&c, &p, 2, 16, 0, &fe, &err);
    test_condf((int64_t)(m->act_floats * sizeof(float)) == fe.activation_bytes,
               "full: activation estimate %lld vs planned %lld", (long long)fe.activation_bytes,
               (long long)(m->act_floats * sizeof(float)));
    lora_model_free(m);
}

/* Sets every trainable tensor to the same values in both models (LoRA's B starts at zero, which
 * would leave A's gradient zero). */
static void fill_trainables(lora_model *m) {
    for (int32_t i = 0; i < lora_model_n_trainable(m); i++) {
        lora_tensor_info t;
        lora_model_trainable(m, i, &t);
        for (int64_t j = 0; j < t.numel; j++)
            t.data[j] += 0.03f * sinf(0.7f * (float)j + (float)i);
    }
}

/* Whether every trainable gradient of a and b has the same bits. */
static int same_grads(lora_model *a, lora_model *b) {
    if (lora_model_n_trainable(a) != lora_model_n_trainable(b)) return 0;
    for (int32_t i = 0; i < lora_model_n_trainable(a); i++) {
        lora_tensor_info x, y;
        lora_model_trainable(a, i, &x);
        lora_model_trainable(b, i, &y);
        if (x.numel != y.numel || memcmp(x.grad, y.grad, (size_t)x.numel * sizeof(float))) return 0;
    }
    return 1;
}

/*
 * Activation checkpointing: a model that recomputes every layer's insides in backward gives the
 * same losses and gradients, bit for bit, over several steps, for every method (dropout on);
 * turning it on or off after the activations are planned re-plans them; the activations
 * shrink, and the estimate with checkpointing is what the model allocates.
 */
static void test_checkpointing(void) {
    enum { B = 2, T = 16 };
    int32_t    tok[B * T], tgt[B * T];
    lora_error err;
    struct {
        const char *name;
        int         method;
        uint32_t    targets;
    } cases[] = {{"lora q,v", LORA_METHOD_LORA, LORA_TARGET_Q | LORA_TARGET_V},
                 {"lora all", LORA_METHOD_LORA, LORA_TARGET_ALL_LINEAR},
                 {"adalora", LORA_METHOD_ADALORA, LORA_TARGET_Q | LORA_TARGET_V},
                 {"full", LORA_METHOD_FULL, 0},
                 {"bitfit", LORA_METHOD_BITFIT, 0}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        lora_model *m0 = load_tiny("ck0", 0), *m1 = load_tiny("ck1", 0);
        if (!m0 || !m1) return;
        make_batch(tok, tgt, B, T, m0->cfg.vocab_size);
        lora_adapter_params p = lora_adapter_params_default();
        p.method              = cases[k].method;
        if (cases[k].targets) p.targets = cases[k].targets;
        p.dropout            = 0.2f;
        p.adalora.total_step = 8;
        p.adalora.tinit      = 1;
        p.adalora.tfinal     = 2;
        p.adalora.delta_t    = 1;
        p.adalora.target_r   = 4;
        lora_optim_params o  = lora_optim_params_default();
        int               ok = lora_model_attach(m0, &p, &err) == LORA_OK &&
                 lora_model_attach(m1, &p, &err) == LORA_OK &&
                 lora_model_set_checkpointing(m1, 1, &err) == LORA_OK &&
                 lora_model_reserve(m0, B, T, &err) == LORA_OK &&
                 lora_model_reserve(m1, B, T, &err) == LORA_OK;
        test_condf(ok, "%s: set up: %s", cases[k].name, err.msg);
        if (!ok) return;
        test_condf(m1->act_floats < m0->act_floats,
                   "%s: checkpointed activations %zu floats, "
                   "not fewer than %zu",
                   cases[k].name, m1->act_floats, m0->act_floats);
        lora_memory_estimate e0, e1;
        lora_estimate_memory(&m0->cfg, &p, B, T, 0, &e0, &err);
        lora_estimate_memory(&m0->cfg, &p, B, T, 1, &e1, &err);
        test_condf(e0.activation_bytes - e1.activation_bytes ==
                       (int64_t)((m0->act_floats - m1->act_floats) * sizeof(float)),
                   "%s: the estimate saves %lld bytes, the plan %lld", cases[k].name,
                   (long long)(e0.activation_bytes - e1.activation_bytes),
                   (long long)((m0->act_floats - m1->act_floats) * sizeof(float)));
        fill_trainables(m0);
        fill_trainables(m1);
        lora_model_set_training(m0, 1);
        lora_model_set_training(m1, 1);
        int same = 1;
        for (int step = 0; step < 4 && same; step++) {
            if (step == 2) { /* swap: re-plans, keeps the results */
                test_cond("checkpointing on after planning",
                          lora_model_set_checkpointing(m0, 1, &err) == LORA_OK);
                test_cond("checkpointing off after planning",
                          lora_model_set_checkpointing(m1, 0, &err) == LORA_OK);
                test_cond("re-planned", m0->act_floats < m1->act_floats);
            }
            float l0, l1;
            lora_model_zero_grad(m0);
            lora_model_zero_grad(m1);
            same = lora_model_forward(m0, tok, tgt, B, T, &l0, &err) == LORA_OK &&
                   lora_model_forward(m1, tok, tgt, B, T, &l1, &err) == LORA_OK &&
                   lora_model_backward(m0, &err) == LORA_OK &&
                   lora_model_backward(m1, &err) == LORA_OK;
            same = same && memcmp(&l0, &l1, sizeof l0) == 0 && same_grads(m0, m1);
            test_condf(same,
                       "%s: step %d: loss %.9g vs %.9g checkpointed, or gradients "
                       "differ",
                       cases[k].name, step, (double)l0, (double)l1);
            lora_model_step(m0, &o, 1e-2f, NULL, &err);
            lora_model_step(m1, &o, 1e-2f, NULL, &err);
        }
        lora_model_free(m0);
        lora_model_free(m1);
    }
}

/* Activations that do not fit: LORA_ERR_NOMEM with a one-line message that suggests
 * checkpointing (unless it is on), the old plan kept; checkpointing then fits where the plain
 * plan did not. In a child whose address space is capped. */
static void test_activation_nomem(void) {
#ifdef UNDER_ASAN
    printf("allocation-failure test skipped under AddressSanitizer\n");
#else
    pid_t pid = fork();
    if (pid == 0) {
        enum { T = 16 };
        /* one thread: worker threads would map their stacks and malloc arenas (64 MiB of
         * address space each) after the cap */
        lora_set_threads(1);
        lora_model *m = load_tiny("nomem", 0);
        lora_error  err;
        if (!m) _exit(10);
        lora_adapter_params p = lora_adapter_params_default();
        int32_t             tok[2 * T], tgt[2 * T];
        make_batch(tok, tgt, 2, T, m->cfg.vocab_size);
        float loss;
        if (lora_model_attach(m, &p, &err) != LORA_OK ||
            lora_model_forward(m, tok, tgt, 2, T, &loss, &err) != LORA_OK)
            _exit(11);
        /* room for 16384 sequences' activations checkpointed (1.2 GiB of address space, never
         * touched), not plainly (1.5 GiB): half-way between, which leaves room for what the failed
         * attempt keeps (the adapters' grown buffers, malloc's bookkeeping: ~70 MiB) */
        lora_memory_estimate e0, e1;
        if (lora_estimate_memory(&m->cfg, &p, 16384, T, 0, &e0, &err) != LORA_OK ||
            lora_estimate_memory(&m->cfg, &p, 16384, T, 1, &e1, &err) != LORA_OK ||
            test_cap_memory((size_t)(e1.activation_bytes +
                                     (e0.activation_bytes - e1.activation_bytes) / 2)) != 0)
            _exit(12);
        if (lora_model_reserve(m, 16384, T, &err) != LORA_ERR_NOMEM) _exit(13);
        if (!strstr(err.msg, "--checkpoint-activations") || strchr(err.msg, '\n')) _exit(14);
        float again;
        if (lora_model_forward(m, tok, tgt, 2, T, &again, &err) != LORA_OK || again != loss)
            _exit(15);
        if (lora_model_set_checkpointing(m, 1, &err) != LORA_OK ||
            lora_model_reserve(m, 16384, T, &err) != LORA_OK)
            _exit(16);
        _exit(0);
    }
    int status = 0;
    test_cond("fork", pid > 0 && waitpid(pid, &status, 0) == pid);
    test_condf(WIFEXITED(status) && WEXITSTATUS(status) == 0,
               "activation allocation-failure child: exit %d (10-12 setup, 13 not NOMEM, 14 "
               "message, 15 the old plan lost, 16 checkpointing did not fit)",
               WIFEXITED(status) ? WEXITSTATUS(status) : -1);
#endif
}

int main(void) {
    tiny_tmpdir(root, sizeof root, "test_model");
    test_bad_checkpoints();
    test_lora_invariants();
    test_dropout();
    test_dropout_masks();
    test_adapter_kernels();
    test_f16_and_methods();
    test_targets_and_schedules();
    test_estimate();
    test_checkpointing();
    test_activation_nomem();
    return test_report("test_model");
}
