/*
 * test_perf.c — the performance API: the per-op profile (results unchanged by it, every op of
 * a step accounted for, frozen weights without dW time, off means off), the FLOP count against
 * hand-computed values, and the machine peak measurements.
 */
#include "test_helper.h"
#include "tiny_model.h"

#include <math.h>
#include <string.h>

static char root[1024];

/* One training step (zero_grad, forward, backward, step) on fixed tokens; returns the loss. */
static float train_step(lora_model *m, int32_t B, int32_t T) {
    const lora_config *c = lora_model_config(m);
    int32_t            tok[64], tgt[64];
    for (int32_t i = 0; i < B * T; i++) {
        tok[i] = (i * 7 + 3) % c->vocab_size;
        tgt[i] = (i * 5 + 1) % c->vocab_size;
    }
    lora_optim_params op = lora_optim_params_default();
    lora_error        err;
    float             loss = 0.0f;
    lora_model_zero_grad(m);
    int ok = lora_model_forward(m, tok, tgt, B, T, &loss, &err) == LORA_OK &&
             lora_model_backward(m, &err) == LORA_OK &&
             lora_model_step(m, &op, 1e-3f, NULL, &err) == LORA_OK;
    test_condf(ok, "training step failed: %s", err.msg);
    return loss;
}

static lora_model *load_attached(const char *dir, lora_method method) {
    lora_model *m = NULL;
    lora_error  err;
    test_condf(lora_model_load(dir, &m, &err) == LORA_OK, "load: %s", err.msg);
    if (!m) return NULL;
    lora_adapter_params p = lora_adapter_params_default();
    p.method              = method;
    p.r                   = 4;
    p.targets             = LORA_TARGET_Q | LORA_TARGET_V | LORA_TARGET_MLP_FC;
    p.dropout             = 0.1f; /* the dropout masks must not depend on profiling either */
    test_condf(lora_model_attach(m, &p, &err) == LORA_OK, "attach: %s", err.msg);
    lora_model_set_training(m, 1);
    return m;
}

static void test_profile(const char *dir, lora_method method) {
    lora_model *a = load_attached(dir, method), *b = load_attached(dir, method);
    if (!a || !b) return;
    lora_error err;
    test_cond("set_profiling on", lora_model_set_profiling(b, 1, &err) == LORA_OK);
    for (int s = 0; s < 3; s++) {
        float la = train_step(a, 2, 8), lb = train_step(b, 2, 8);
        test_condf(la == lb, "step %d: loss %.9g without profiling, %.9g with", s, (double)la,
                   (double)lb);
    }
    /* every trainable tensor identical, bit for bit */
    int32_t n = lora_model_n_trainable(a);
    for (int32_t i = 0; i < n; i++) {
        lora_tensor_info ta, tb;
        lora_model_trainable(a, i, &ta);
        lora_model_trainable(b, i, &tb);
        test_condf(memcmp(ta.data, tb.data, (size_t)ta.numel * sizeof(float)) == 0,
                   "%s differs with profiling on", ta.name);
    }

    lora_profile p;
    lora_model_profile(b, &p);
    test_condf(p.n_calls[LORA_PROF_FORWARD] == 3 && p.n_calls[LORA_PROF_BACKWARD] == 3 &&
                   p.n_calls[LORA_PROF_STEP] == 3,
               "calls %lld %lld %lld, want 3 each", (long long)p.n_calls[0],
               (long long)p.n_calls[1], (long long)p.n_calls[2]);
    double sum_all = 0.0;
    for (int ph = 0; ph < LORA_PROF_N_PHASES; ph++) {
        double sum = 0.0;
        for (int op = 0; op < LORA_PROF_N_OPS; op++) {
            test_condf(p.op_s[ph][op] >= 0.0, "negative time phase %d op %d", ph, op);
            sum += p.op_s[ph][op];
        }
        /* the ops are timed inside their phase's call */
        test_condf(sum <= p.phase_s[ph] * (1 + 1e-9) + 1e-9, "phase %d: ops %.9f s > call %.9f s",
                   ph, sum, p.phase_s[ph]);
        sum_all += sum;
    }
    test_cond("time recorded", sum_all > 0.0);
    const int fwd_ops[] = {LORA_PROF_EMBEDDING, LORA_PROF_LAYERNORM, LORA_PROF_MATMUL,
                           LORA_PROF_ATTENTION, LORA_PROF_GELU,      LORA_PROF_RESIDUAL,
                           LORA_PROF_LM_HEAD,   LORA_PROF_CROSS_ENTROPY};
    for (size_t i = 0; i < sizeof fwd_ops / sizeof fwd_ops[0]; i++)
        test_condf(p.op_s[LORA_PROF_FORWARD][fwd_ops[i]] > 0.0, "forward op %s not timed",
                   lora_profile_op_name(fwd_ops[i]));
    test_cond("backward matmul timed", p.op_s[LORA_PROF_BACKWARD][LORA_PROF_MATMUL] > 0.0);
    test_cond("backward attention timed", p.op_s[LORA_PROF_BACKWARD][LORA_PROF_ATTENTION] > 0.0);
    test_cond("optimizer timed", p.op_s[LORA_PROF_STEP][LORA_PROF_OPTIMIZER] > 0.0);
    if (method == LORA_METHOD_LORA) {
        test_cond("adapter forward timed", p.op_s[LORA_PROF_FORWARD][LORA_PROF_ADAPTER] > 0.0);
        test_cond("adapter backward timed", p.op_s[LORA_PROF_BACKWARD][LORA_PROF_ADAPTER] > 0.0);
        /* frozen W0: no weight gradient, so no time in it */
        test_cond("LoRA: no dW time", p.op_s[LORA_PROF_BACKWARD][LORA_PROF_MATMUL_DW] == 0.0);
        test_cond("LoRA: no embedding backward",
                  p.op_s[LORA_PROF_BACKWARD][LORA_PROF_EMBEDDING] == 0.0);
    } else {
        test_cond("full: dW timed", p.op_s[LORA_PROF_BACKWARD][LORA_PROF_MATMUL_DW] > 0.0);
        test_cond("full: embedding backward timed",
                  p.op_s[LORA_PROF_BACKWARD][LORA_PROF_EMBEDDING] > 0.0);
        test_cond("full: no adapter time", p.op_s[LORA_PROF_FORWARD][LORA_PROF_ADAPTER] == 0.0);
    }

    /* restarting zeroes; stopping discards and stops counting */
    test_cond("restart", lora_model_set_profiling(b, 1, &err) == LORA_OK);
    lora_model_profile(b, &p);
    test_cond("restart zeroes", p.n_calls[0] == 0 && p.phase_s[0] == 0.0 && p.op_s[0][2] == 0.0);
    test_cond("stop", lora_model_set_profiling(b, 0, &err) == LORA_OK);
    train_step(b, 2, 8);
    lora_model_profile(b, &p);
    test_cond("off: nothing counted", p.n_calls[0] == 0 && p.phase_s[1] == 0.0);
    lora_model_profile(a, &p); /* never profiled */
    test_cond("never on: zeros", p.n_calls[2] == 0 && p.op_s[2][LORA_PROF_OPTIMIZER] == 0.0);
    lora_model_free(a);
    lora_model_free(b);
}

static void test_op_names(void) {
    for (int op = 0; op < LORA_PROF_N_OPS; op++) {
        const char *n = lora_profile_op_name(op);
        test_condf(n && *n, "op %d has no name", op);
        for (int k = 0; n && k < op; k++)
            test_condf(strcmp(n, lora_profile_op_name(k)) != 0, "ops %d and %d share '%s'", k,
                       op, n);
    }
    test_cond("name out of range", lora_profile_op_name(LORA_PROF_N_OPS) == NULL);
    test_cond("name negative", lora_profile_op_name(-1) == NULL);
}

static int close_to(double a, double b) {
    return fabs(a - b) <= 1e-9 * fabs(b);
}

static void test_flops(void) {
    lora_config c = tiny_config(); /* L 2, C 32, F 128, V 61, n_positions 16 */
    lora_error  err;
    lora_flops  f;
    int32_t     B = 3, T = 5;
    double      N = B * T, C = 32, F = 128, V = 61, L = 2;
    double      lin = 2 * N * (C * 3 * C + C * C + C * F + F * C) * L;
    double      att = 4.0 * B * T * T * C * L;
    double      head = 2 * N * C * V;

    lora_adapter_params p = lora_adapter_params_default(); /* r 8, q and v */
    test_cond("flops lora", lora_estimate_flops(&c, &p, B, T, &f, &err) == LORA_OK);
    double ad = 2 * N * 8 * ((C + C) + (C + C)) * L; /* q and v: in C, out C each */
    test_condf(close_to(f.linear, 2 * lin), "lora linear %g, want %g", f.linear, 2 * lin);
    test_condf(close_to(f.attention, 3 * att), "attention %g, want %g", f.attention, 3 * att);
    test_condf(close_to(f.lm_head, 2 * head), "lm_head %g, want %g", f.lm_head, 2 * head);
    test_condf(close_to(f.adapter, 3 * ad), "adapter %g, want %g", f.adapter, 3 * ad);
    test_condf(close_to(f.forward, lin + att + head + ad), "forward %g", f.forward);
    test_condf(close_to(f.backward, lin + 2 * att + head + 2 * ad), "backward %g", f.backward);
    test_condf(close_to(f.total, f.forward + f.backward), "total %g", f.total);

    p.targets = LORA_TARGET_ALL_LINEAR; /* c_attn C->3C, c_proj C->C, c_fc C->F, proj F->C */
    p.r       = 2;
    test_cond("flops all", lora_estimate_flops(&c, &p, B, T, &f, &err) == LORA_OK);
    ad = 2 * N * 2 * ((C + 3 * C) + (C + C) + (C + F) + (F + C)) * L;
    test_condf(close_to(f.adapter, 3 * ad), "all-linear adapter %g, want %g", f.adapter, 3 * ad);

    p.method = LORA_METHOD_FULL; /* dW for every weight, the tied head included */
    test_cond("flops full", lora_estimate_flops(&c, &p, B, T, &f, &err) == LORA_OK);
    test_condf(close_to(f.linear, 3 * lin), "full linear %g, want %g", f.linear, 3 * lin);
    test_condf(close_to(f.lm_head, 3 * head), "full lm_head %g, want %g", f.lm_head, 3 * head);
    test_cond("full: no adapter", f.adapter == 0.0);

    p.method = LORA_METHOD_BITFIT; /* bias gradients are not products */
    test_cond("flops bitfit", lora_estimate_flops(&c, &p, B, T, &f, &err) == LORA_OK);
    test_condf(close_to(f.linear, 2 * lin) && f.adapter == 0.0, "bitfit linear %g", f.linear);

    test_cond("T > n_positions", lora_estimate_flops(&c, &p, 1, 17, &f, &err) == LORA_ERR_ARG);
    test_cond("B = 0", lora_estimate_flops(&c, &p, 0, 4, &f, &err) == LORA_ERR_ARG);
    test_cond("error names the shape", strstr(err.msg, "B=0") != NULL);
}

static void test_machine(void) {
    double fma = lora_machine_fma_gflops(1, 0.05);
    test_condf(isfinite(fma) && fma > 0.1, "FMA peak %g GFLOP/s", fma);
    double sg = lora_machine_sgemm_gflops(64, 0.02);
    test_condf(isfinite(sg) && sg > 0.01, "sgemm %g GFLOP/s", sg);
    test_cond("sgemm n 0", lora_machine_sgemm_gflops(0, 0.01) < 0);
}

/* VmRSS in bytes; -1 without /proc. */
static long long rss_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char  line[256];
    long long kb = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %lld kB", &kb) == 1) break;
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

/* An F16 checkpoint costs its F32 copy in resident memory, not also the F16 file's pages (the
 * estimate of lora_estimate_memory counts 4 bytes per weight). */
static void test_f16_pages_released(const char *root_dir) {
    lora_config c = tiny_config();
    c.vocab_size  = 40000; /* wte dominates: 1.28 M weights */
    tiny_opts o;
    memset(&o, 0, sizeof o);
    o.f16 = 1;
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/f16", root_dir);
    test_cond("write F16 model", tiny_write(dir, &c, &o, 5) == 0);
    long long   before = rss_bytes();
    lora_model *m      = NULL;
    lora_error  err;
    test_condf(lora_model_load(dir, &m, &err) == LORA_OK, "load F16: %s", err.msg);
    long long after = rss_bytes();
    if (!m || before < 0 || after < 0) {
        lora_model_free(m);
        return;
    }
    int64_t mapped, conv;
    lora_model_weight_bytes(m, &mapped, &conv);
    double grown = (double)(after - before);
    test_condf(mapped == 0 && conv == 4 * lora_model_n_base_params(m), "mapped %lld conv %lld",
               (long long)mapped, (long long)conv);
    /* F32 copy: conv bytes; the F16 pages would add conv / 2 more */
    test_condf(grown > 0.9 * (double)conv && grown < 1.2 * (double)conv,
               "loading grew the RSS by %.0f bytes for %lld bytes of F32 weights", grown,
               (long long)conv);
    lora_model_free(m);
}

int main(void) {
    tiny_tmpdir(root, sizeof root, "test_perf");
    char      dir[1100];
    tiny_opts o;
    memset(&o, 0, sizeof o);
    lora_config c = tiny_config();
    snprintf(dir, sizeof dir, "%s/m", root);
    test_cond("write tiny model", tiny_write(dir, &c, &o, 3) == 0);
    test_profile(dir, LORA_METHOD_LORA);
    test_profile(dir, LORA_METHOD_FULL);
    test_op_names();
    test_flops();
    test_machine();
    test_f16_pages_released(root);
    return test_report("test_perf");
}
