/*
 * test_oracle.c — the engine against the PyTorch reference (tests/oracle/make_cases.py).
 *
 * For every case file in CASES/cases: load the model it names, attach the method from its
 * metadata, set the trainable tensors to the case's initial values, and compare logits
 * (max-abs <= 1e-4), loss (relative <= 1e-5) and every trainable gradient (relative in norm
 * <= 1e-3); optimizer cases then run their AdamW steps and compare the loss of every step
 * (relative <= 1e-4). "load" cases only compare logits of a model variant (F16, sharded, ...).
 *
 * usage: test_oracle CASES_DIR
 */
#include "io/safetensors.h"
#include "lora.h"
#include "test_helper.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOGITS_TOL 1e-4
#define LOSS_TOL   1e-5
#define GRAD_TOL   1e-3
#define STEPS_TOL  1e-4

static double worst_logits, worst_loss, worst_grad, worst_steps;

static const char *meta_or(const st_file *f, const char *key, const char *dflt) {
    const char *v = st_meta(f, key);
    return v ? v : dflt;
}

static double meta_num(const st_file *f, const char *key, double dflt) {
    const char *v = st_meta(f, key);
    return v ? atof(v) : dflt;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static const float *tensor_f32(const st_file *f, const char *name, int64_t numel) {
    const st_tensor *t = st_find(f, name);
    if (!t || t->dtype != ST_F32 || t->numel != numel) return NULL;
    return (const float *)t->data;
}

static void run_case(const char *dir, const char *file) {
    char       path[4096], model_dir[4096];
    lora_error err;
    st_file    f;
    snprintf(path, sizeof path, "%s/cases/%s", dir, file);
    if (st_open(&f, path, &err) != LORA_OK) {
        test_condf(0, "%s", err.msg);
        return;
    }
    snprintf(model_dir, sizeof model_dir, "%s/models/%s", dir, meta_or(&f, "model", "?"));
    lora_model *m = NULL;
    if (lora_model_load(model_dir, &m, &err) != LORA_OK) {
        test_condf(0, "%s: %s", file, err.msg);
        st_close(&f);
        return;
    }
    const lora_config *cfg = lora_model_config(m);
    const st_tensor   *tok = st_find(&f, "tokens");
    const st_tensor   *tgt = st_find(&f, "targets");
    if (!tok || tok->dtype != ST_I32 || tok->ndim != 2) {
        test_condf(0, "%s: no tokens", file);
        goto done;
    }
    int32_t B = (int32_t)tok->shape[0], T = (int32_t)tok->shape[1];
    int64_t nlogits = (int64_t)B * T * cfg->vocab_size;
    const float *want_logits = tensor_f32(&f, "logits", nlogits);
    test_condf(want_logits != NULL, "%s: logits missing", file);
    if (!want_logits) goto done;

    const char *kind = meta_or(&f, "kind", "train");
    if (!strcmp(kind, "load")) {
        float loss;
        test_condf(lora_model_forward(m, tok->data, NULL, B, T, &loss, &err) == LORA_OK, "%s: %s",
                   file, err.msg);
        double d = test_max_abs_diff(lora_model_logits(m), want_logits, (size_t)nlogits);
        if (d > worst_logits) worst_logits = d;
        printf("  %-28s logits max-abs %.2e\n", file, d);
        test_condf(d <= LOGITS_TOL, "%s: logits max-abs %.3e > %.0e", file, d, LOGITS_TOL);
        goto done;
    }

    lora_adapter_params p = lora_adapter_params_default();
    const char         *method = meta_or(&f, "method", "lora");
    p.method   = !strcmp(method, "full")     ? LORA_METHOD_FULL
                 : !strcmp(method, "bitfit") ? LORA_METHOD_BITFIT
                                             : LORA_METHOD_LORA;
    p.r          = (int32_t)meta_num(&f, "r", 8);
    p.alpha      = (float)meta_num(&f, "alpha", 16);
    p.use_rslora = (int32_t)meta_num(&f, "use_rslora", 0);
    p.dropout    = 0.0f;
    if (p.method == LORA_METHOD_LORA &&
        lora_targets_parse(meta_or(&f, "targets", "q,v"), &p.targets, &err) != LORA_OK) {
        test_condf(0, "%s: %s", file, err.msg);
        goto done;
    }
    if (lora_model_attach(m, &p, &err) != LORA_OK) {
        test_condf(0, "%s: attach: %s", file, err.msg);
        goto done;
    }
    lora_model_set_label_smoothing(m, (float)meta_num(&f, "label_smoothing", 0));
    lora_model_set_training(m, 1);

    /* every trainable tensor gets the case's initial value; the sets must be equal */
    int32_t n_train = lora_model_n_trainable(m), n_init = 0;
    for (int32_t i = 0; i < f.n_tensors; i++)
        if (!strncmp(f.tensors[i].name, "init.", 5)) n_init++;
    test_condf(n_train == n_init, "%s: engine has %d trainable tensors, oracle %d", file, n_train,
               n_init);
    for (int32_t i = 0; i < n_train; i++) {
        lora_tensor_info info;
        char             key[160];
        lora_model_trainable(m, i, &info);
        snprintf(key, sizeof key, "init.%s", info.name);
        const float *init = tensor_f32(&f, key, info.numel);
        test_condf(init != NULL, "%s: %s missing or wrong size", file, key);
        if (init) memcpy(info.data, init, (size_t)info.numel * sizeof(float));
    }

    float loss = 0;
    lora_model_zero_grad(m);
    test_condf(lora_model_forward(m, tok->data, tgt->data, B, T, &loss, &err) == LORA_OK, "%s: %s",
               file, err.msg);
    double dl = test_max_abs_diff(lora_model_logits(m), want_logits, (size_t)nlogits);
    const float *want_loss = tensor_f32(&f, "loss", 1);
    double       rl        = want_loss ? fabs(loss - *want_loss) / fabs(*want_loss) : 1.0;
    test_condf(dl <= LOGITS_TOL, "%s: logits max-abs %.3e > %.0e", file, dl, LOGITS_TOL);
    test_condf(rl <= LOSS_TOL, "%s: loss %.8f vs %.8f (rel %.2e)", file, loss,
               want_loss ? *want_loss : 0.0f, rl);
    test_condf(lora_model_backward(m, &err) == LORA_OK, "%s: %s", file, err.msg);
    double worst_g = 0;
    for (int32_t i = 0; i < n_train; i++) {
        lora_tensor_info info;
        char             key[160];
        lora_model_trainable(m, i, &info);
        snprintf(key, sizeof key, "grad.%s", info.name);
        const float *g = tensor_f32(&f, key, info.numel);
        test_condf(g != NULL, "%s: %s missing", file, key);
        if (!g) continue;
        double rg = test_rel_norm_diff(info.grad, g, (size_t)info.numel);
        if (rg > worst_g) worst_g = rg;
        test_condf(rg <= GRAD_TOL, "%s: gradient of %s off by %.3e relative", file, info.name, rg);
    }
    if (dl > worst_logits) worst_logits = dl;
    if (rl > worst_loss) worst_loss = rl;
    if (worst_g > worst_grad) worst_grad = worst_g;
    printf("  %-28s logits %.2e  loss %.2e  grads %.2e  (%d tensors)", file, dl, rl, worst_g,
           n_train);

    int64_t steps = (int64_t)meta_num(&f, "steps", 0);
    if (steps > 0) {
        const float *want = tensor_f32(&f, "losses", steps);
        test_condf(want != NULL, "%s: losses missing", file);
        lora_optim_params o = lora_optim_params_default();
        const char       *sched = meta_or(&f, "schedule", "linear");
        o.lr           = (float)meta_num(&f, "lr", 1e-3);
        o.warmup_steps = (int64_t)meta_num(&f, "warmup", 0);
        o.total_steps  = steps;
        o.clip         = (float)meta_num(&f, "clip", 0);
        o.weight_decay = (float)meta_num(&f, "weight_decay", 0);
        o.beta1        = (float)meta_num(&f, "beta1", 0.9);
        o.beta2        = (float)meta_num(&f, "beta2", 0.999);
        o.eps          = (float)meta_num(&f, "eps", 1e-8);
        o.schedule     = !strcmp(sched, "cosine")     ? LORA_SCHEDULE_COSINE
                         : !strcmp(sched, "constant") ? LORA_SCHEDULE_CONSTANT
                                                      : LORA_SCHEDULE_LINEAR;
        /* re-run from the initial values: step 0's gradients are already accumulated */
        double worst_s = 0;
        for (int64_t s = 0; s < steps && want; s++) {
            if (s > 0) {
                lora_model_zero_grad(m);
                lora_model_forward(m, tok->data, tgt->data, B, T, &loss, &err);
                lora_model_backward(m, &err);
            }
            double rs = fabs(loss - want[s]) / fabs(want[s]);
            if (rs > worst_s) worst_s = rs;
            test_condf(rs <= STEPS_TOL, "%s: step %lld loss %.8f vs %.8f (rel %.2e)", file,
                       (long long)s, loss, want[s], rs);
            float gn;
            lora_model_step(m, &o, lora_schedule_lr(&o, s), &gn, &err);
        }
        if (worst_s > worst_steps) worst_steps = worst_s;
        printf("  %lld steps %.2e", (long long)steps, worst_s);
    }
    printf("\n");
done:
    lora_model_free(m);
    st_close(&f);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: test_oracle CASES_DIR\n");
        return 2;
    }
    char cases[4096];
    snprintf(cases, sizeof cases, "%s/cases", argv[1]);
    DIR *d = opendir(cases);
    if (!d) {
        fprintf(stderr, "test_oracle: cannot open %s\n", cases);
        return 1;
    }
    char         *names[256];
    int           n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256) {
        size_t len = strlen(e->d_name);
        if (len > 12 && !strcmp(e->d_name + len - 12, ".safetensors"))
            names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], cmp_str);
    test_condf(n >= 10, "expected the oracle's cases in %s, found %d", cases, n);
    for (int i = 0; i < n; i++) {
        run_case(argv[1], names[i]);
        free(names[i]);
    }
    printf("worst: logits max-abs %.2e (tol %.0e), loss rel %.2e (tol %.0e), gradient rel %.2e "
           "(tol %.0e), AdamW step losses rel %.2e (tol %.0e)\n",
           worst_logits, LOGITS_TOL, worst_loss, LOSS_TOL, worst_grad, GRAD_TOL, worst_steps,
           STEPS_TOL);
    return test_report("test_oracle");
}
