/*
 * test_adalora_oracle.c — AdaLoRA against its PyTorch reference
 * (tests/oracle/make_adalora_cases.py, adalora_ref.py).
 *
 * For every case: attach AdaLoRA with the case's settings, set P, Λ, Q to its initial values
 * and compare logits (max-abs <= 1e-4), the training loss including the orthogonality penalty
 * (relative <= 1e-5) and every gradient, the penalty's included (relative in norm <= 1e-3).
 * Run cases then take their AdamW steps with the rank allocator and compare at every step:
 * the loss (relative <= 1e-4), the budget b(t) and whether the step masked, the masks
 * (identical), and the triplet scores (relative in norm <= 1e-4); at the end every tensor
 * (relative in norm <= 1e-3); the trained adapter is written as a PEFT directory with the
 * engine's logits (DIR/written/<case>) for the PyTorch side to load as PEFT would, and folded
 * into a plain LoRA directory (DIR/written/<case>_lora, same expected logits) that must load
 * back as LoRA with the AdaLoRA logits (max-abs <= 1e-5). DIR/peft_fixture, an AdaLoRA directory in PEFT's own layout, must load and give the
 * reference's logits (max-abs <= 1e-4).
 *
 * usage: test_adalora_oracle CASES_DIR
 */
#include "io/safetensors.h"
#include "lora.h"
#include "peft/adalora.h"
#include "test_helper.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOGITS_TOL 1e-4
#define LOSS_TOL 1e-5
#define GRAD_TOL 1e-3
#define STEPS_TOL 1e-4
#define SCORE_TOL 1e-4
#define FINAL_TOL 1e-3
#define FOLD_TOL 1e-5

static double worst_logits, worst_loss, worst_grad, worst_steps, worst_score, worst_score_elem,
    worst_final;
static int mask_checks, masked_steps;

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

static const st_tensor *tensor_of(const st_file *f, const char *name, st_dtype dt, int64_t numel) {
    const st_tensor *t = st_find(f, name);
    return t && t->dtype == dt && t->numel == numel ? t : NULL;
}

static const float *tensor_f32(const st_file *f, const char *name, int64_t numel) {
    const st_tensor *t = tensor_of(f, name, ST_F32, numel);
    return t ? (const float *)t->data : NULL;
}

/* Writes the adapter to DIR/written/NAME with expected.safetensors: the tokens and the
 * engine's logits for them (eval mode). */
static void write_adapter(lora_model *m, const char *dir, const char *name, const st_tensor *tok) {
    char       out[4200], path[4300];
    lora_error err;
    int32_t    B = (int32_t)tok->shape[0], T = (int32_t)tok->shape[1];
    float      loss;
    snprintf(out, sizeof out, "%s/written/%s", dir, name);
    test_condf(lora_adapter_save(m, out, "tiny", &err) == LORA_OK, "save %s: %s", out, err.msg);
    lora_model_set_training(m, 0);
    test_condf(lora_model_forward(m, tok->data, NULL, B, T, &loss, &err) == LORA_OK, "%s", err.msg);
    st_writer *w      = st_writer_new();
    int64_t    st_[2] = {B, T};
    int64_t    sl[3]  = {B, T, lora_model_config(m)->vocab_size};
    snprintf(path, sizeof path, "%s/expected.safetensors", out);
    test_cond("expected.safetensors",
              w && st_writer_add(w, "tokens", ST_I32, 2, st_, tok->data, &err) == LORA_OK &&
                  st_writer_add(w, "logits", ST_F32, 3, sl, lora_model_logits(m), &err) ==
                      LORA_OK &&
                  st_writer_write(w, path, &err) == LORA_OK);
    st_writer_free(w);
    lora_model_set_training(m, 1);
}

/* Writes the adapter folded into a plain LoRA directory DIR/written/NAME_lora (with the same
 * expected.safetensors: the AdaLoRA model's logits), loads it back as LoRA and compares the
 * logits (max-abs <= FOLD_TOL); peft_check.py then loads it as PEFT's LoRA would. */
static void write_folded(lora_model *m, const char *dir, const char *name, const char *model_dir,
                         const st_tensor *tok) {
    char        out[4200], path[4300];
    lora_error  err;
    lora_model *l = NULL;
    int32_t     B = (int32_t)tok->shape[0], T = (int32_t)tok->shape[1];
    int64_t     nl = (int64_t)B * T * lora_model_config(m)->vocab_size;
    float       loss;
    st_file     f;
    snprintf(out, sizeof out, "%s/written/%s_lora", dir, name);
    test_condf(lora_adapter_save_lora(m, out, "tiny", &err) == LORA_OK, "save_lora %s: %s", out,
               err.msg);
    snprintf(path, sizeof path, "%s/written/%s/expected.safetensors", dir, name);
    if (st_open(&f, path, &err) != LORA_OK) {
        test_condf(0, "%s", err.msg);
        return;
    }
    const float *want = tensor_f32(&f, "logits", nl);
    st_writer   *w    = st_writer_new();
    int64_t      st_[2] = {B, T}, sl[3] = {B, T, lora_model_config(m)->vocab_size};
    snprintf(path, sizeof path, "%s/expected.safetensors", out);
    test_cond("folded expected.safetensors",
              want && w && st_writer_add(w, "tokens", ST_I32, 2, st_, tok->data, &err) == LORA_OK &&
                  st_writer_add(w, "logits", ST_F32, 3, sl, want, &err) == LORA_OK &&
                  st_writer_write(w, path, &err) == LORA_OK);
    st_writer_free(w);
    if (want && lora_model_load(model_dir, &l, &err) == LORA_OK &&
        lora_adapter_load(l, out, &err) == LORA_OK &&
        lora_model_forward(l, tok->data, NULL, B, T, &loss, &err) == LORA_OK) {
        double d = test_max_abs_diff(lora_model_logits(l), want, (size_t)nl);
        char   ranks[256] = "";
        size_t k          = 0;
        for (int32_t i = 0; i < lora_model_n_trainable(l) && k < sizeof ranks; i++) {
            lora_tensor_info t;
            lora_model_trainable(l, i, &t);
            if (strstr(t.name, "lora_A"))
                k += (size_t)snprintf(ranks + k, sizeof ranks - k, "%s%lld", k ? "," : "",
                                      (long long)t.shape[0]);
        }
        printf("\n  %s folded to plain LoRA (site ranks %s), reloaded: logits max-abs %.2e vs "
               "AdaLoRA", name, ranks, d);
        test_condf(d <= FOLD_TOL, "%s folded: logits max-abs %.3e > %.0e", name, d, FOLD_TOL);
    } else {
        test_condf(0, "%s folded: %s", name, err.msg);
    }
    lora_model_free(l);
    st_close(&f);
}

/* PEFT's own AdaLoRA layout: whole-module adapters, a rank pattern, cut tensors. */
static void read_fixture(const char *dir) {
    char        path[4200], model_dir[4200];
    lora_error  err;
    lora_model *m = NULL;
    st_file     f;
    snprintf(model_dir, sizeof model_dir, "%s/models/tiny", dir);
    snprintf(path, sizeof path, "%s/peft_fixture", dir);
    if (lora_model_load(model_dir, &m, &err) != LORA_OK) {
        test_condf(0, "%s", err.msg);
        return;
    }
    test_condf(lora_adapter_load(m, path, &err) == LORA_OK, "load %s: %s", path, err.msg);
    snprintf(path, sizeof path, "%s/peft_fixture/expected.safetensors", dir);
    if (st_open(&f, path, &err) != LORA_OK) {
        test_condf(0, "%s", err.msg);
        lora_model_free(m);
        return;
    }
    const st_tensor  *tok = st_find(&f, "tokens");
    adalora_site_view v[8];
    int32_t           n = adalora_sites_list(m, v, 8), kept[8] = {0};
    for (int32_t k = 0; k < n && k < 8; k++)
        for (int32_t i = 0; i < v[k].r; i++)
            kept[k] += v[k].mask[i] != 0.0f;
    test_condf(n == 4 && v[0].target == LORA_TARGET_C_ATTN && v[0].r == 5 && kept[0] == 3 &&
                   kept[1] == 1 && kept[2] == 5 && kept[3] == 0 && adalora_mask_is_final(m),
               "PEFT fixture: %d sites, kept %d %d %d %d", (int)n, (int)kept[0], (int)kept[1],
               (int)kept[2], (int)kept[3]);
    if (tok && tok->dtype == ST_I32 && tok->ndim == 2) {
        int32_t      B = (int32_t)tok->shape[0], T = (int32_t)tok->shape[1];
        int64_t      nl   = (int64_t)B * T * lora_model_config(m)->vocab_size;
        const float *want = tensor_f32(&f, "logits", nl);
        float        loss;
        test_condf(lora_model_forward(m, tok->data, NULL, B, T, &loss, &err) == LORA_OK, "%s",
                   err.msg);
        double d = want ? test_max_abs_diff(lora_model_logits(m), want, (size_t)nl) : 1.0;
        printf("  PEFT-layout AdaLoRA directory: kept ranks %d %d %d %d of 5, logits max-abs "
               "%.2e\n",
               (int)kept[0], (int)kept[1], (int)kept[2], (int)kept[3], d);
        test_condf(d <= LOGITS_TOL, "PEFT fixture logits max-abs %.3e", d);
    } else {
        test_cond("PEFT fixture tokens", 0);
    }
    st_close(&f);
    lora_model_free(m);
}

/* The allocator after step s against the reference's record of that step. */
static void check_allocator(const char *file, lora_model *m, const st_file *f, int64_t s,
                            int32_t nb) {
    const st_tensor *tb = st_find(f, "budgets"), *tm = st_find(f, "masked");
    const st_tensor *tk = st_find(f, "masks"), *ts = st_find(f, "scores");
    adalora_status   as;
    if (!tb || !tm || !tk || !ts || tb->dtype != ST_I32 || tm->dtype != ST_I32 ||
        tk->dtype != ST_I32 || ts->dtype != ST_F64 || tb->numel <= s || tm->numel <= s ||
        tk->ndim != 2 || ts->ndim != 2 || tk->shape[0] <= s || ts->shape[0] <= s ||
        tk->shape[1] != nb || ts->shape[1] != nb) {
        test_condf(0, "%s: allocator records missing or sized for another budget", file);
        return;
    }
    int32_t want_b, want_m;
    memcpy(&want_b, (const char *)tb->data + 4 * s, 4);
    memcpy(&want_m, (const char *)tm->data + 4 * s, 4);
    test_condf(adalora_get_status(m, &as) == LORA_OK, "%s: no allocator", file);
    test_condf(as.step == s, "%s: allocator saw step %lld, expected %lld", file, (long long)as.step,
               (long long)s);
    test_condf(as.budget == want_b, "%s: step %lld budget %d, schedule says %d", file, (long long)s,
               (int)as.budget, (int)want_b);
    test_condf(as.masked == want_m, "%s: step %lld masked %d, reference %d", file, (long long)s,
               (int)as.masked, (int)want_m);
    masked_steps += as.masked;

    uint8_t *mask = malloc((size_t)nb);
    double  *sc   = malloc((size_t)nb * sizeof(double));
    test_cond("masks", adalora_masks(m, mask, nb) == nb);
    test_cond("scores", adalora_scores(m, sc, nb) == nb);
    int diff = 0;
    for (int32_t i = 0; i < nb; i++) {
        int32_t want;
        memcpy(&want, (const char *)tk->data + 4 * ((size_t)s * nb + i), 4);
        diff += (mask[i] != 0) != (want != 0);
    }
    test_condf(diff == 0, "%s: step %lld: %d triplets masked differently", file, (long long)s,
               diff);
    mask_checks++;
    double num = 0, den = 0, elem = 0;
    for (int32_t i = 0; i < nb; i++) {
        double want;
        memcpy(&want, (const char *)ts->data + 8 * ((size_t)s * nb + i), 8);
        num += (sc[i] - want) * (sc[i] - want);
        den += want * want;
        double e = fabs(sc[i] - want) / (fabs(want) > 1e-300 ? fabs(want) : 1e-300);
        if (want != 0 || sc[i] != 0) elem = e > elem ? e : elem;
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    if (rel > worst_score) worst_score = rel;
    if (elem > worst_score_elem) worst_score_elem = elem;
    test_condf(rel <= SCORE_TOL, "%s: step %lld triplet scores off by %.3e relative", file,
               (long long)s, rel);
    free(mask);
    free(sc);
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
    if (!tok || tok->dtype != ST_I32 || tok->ndim != 2 || !tgt) {
        test_condf(0, "%s: no tokens", file);
        goto done;
    }
    int32_t      B = (int32_t)tok->shape[0], T = (int32_t)tok->shape[1];
    int64_t      nlogits     = (int64_t)B * T * cfg->vocab_size;
    int64_t      steps       = (int64_t)meta_num(&f, "steps", 0);
    const float *want_logits = tensor_f32(&f, "logits", nlogits);
    test_condf(want_logits != NULL, "%s: logits missing", file);
    if (!want_logits) goto done;

    lora_adapter_params p = lora_adapter_params_default();
    p.method              = LORA_METHOD_ADALORA;
    p.r                   = (int32_t)meta_num(&f, "r", 8);
    p.alpha               = (float)meta_num(&f, "alpha", 16);
    p.dropout             = 0.0f;
    p.adalora.orth_reg    = (float)meta_num(&f, "orth_reg", 0.5);
    p.adalora.target_r    = (int32_t)meta_num(&f, "target_r", 0);
    p.adalora.tinit       = (int64_t)meta_num(&f, "tinit", 0);
    p.adalora.tfinal      = (int64_t)meta_num(&f, "tfinal", 0);
    p.adalora.delta_t     = (int64_t)meta_num(&f, "delta_t", 1);
    p.adalora.beta1       = (float)meta_num(&f, "ada_beta1", 0.85);
    p.adalora.beta2       = (float)meta_num(&f, "ada_beta2", 0.85);
    p.adalora.total_step  = steps > 0 ? steps : 1;
    if (lora_targets_parse(meta_or(&f, "targets", "q,v"), &p.targets, &err) != LORA_OK ||
        lora_model_attach(m, &p, &err) != LORA_OK) {
        test_condf(0, "%s: attach: %s", file, err.msg);
        goto done;
    }
    lora_model_set_training(m, 1);

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
    double       dl        = test_max_abs_diff(lora_model_logits(m), want_logits, (size_t)nlogits);
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
    printf("  %-34s logits %.2e  loss %.2e  grads %.2e  (%d tensors)", file, dl, rl, worst_g,
           n_train);

    if (steps > 0) {
        const float      *want = tensor_f32(&f, "losses", steps);
        adalora_status    as;
        lora_optim_params o     = lora_optim_params_default();
        const char       *sched = meta_or(&f, "schedule", "linear");
        test_condf(want != NULL, "%s: losses missing", file);
        test_condf(adalora_get_status(m, &as) == LORA_OK, "%s: no allocator", file);
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
            test_condf(lora_model_step(m, &o, lora_schedule_lr(&o, s), &gn, &err) == LORA_OK,
                       "%s: step: %s", file, err.msg);
            check_allocator(file, m, &f, s, as.init_bgt);
        }
        double worst_f = 0;
        for (int32_t i = 0; i < n_train; i++) {
            lora_tensor_info info;
            char             key[160];
            lora_model_trainable(m, i, &info);
            snprintf(key, sizeof key, "final.%s", info.name);
            const float *w = tensor_f32(&f, key, info.numel);
            test_condf(w != NULL, "%s: %s missing", file, key);
            if (!w) continue;
            double rf = test_rel_norm_diff(info.data, w, (size_t)info.numel);
            if (rf > worst_f) worst_f = rf;
            test_condf(rf <= FINAL_TOL, "%s: %s after %lld steps off by %.3e relative", file,
                       info.name, (long long)steps, rf);
        }
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)(strlen(file) - 12), file);
        write_adapter(m, dir, name, tok);
        write_folded(m, dir, name, model_dir, tok);
        if (worst_s > worst_steps) worst_steps = worst_s;
        if (worst_f > worst_final) worst_final = worst_f;
        printf("  %lld steps: losses %.2e, final tensors %.2e", (long long)steps, worst_s, worst_f);
    }
    printf("\n");
done:
    lora_model_free(m);
    st_close(&f);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: test_adalora_oracle CASES_DIR\n");
        return 2;
    }
    char cases[4096];
    snprintf(cases, sizeof cases, "%s/cases", argv[1]);
    DIR *d = opendir(cases);
    if (!d) {
        fprintf(stderr, "test_adalora_oracle: cannot open %s\n", cases);
        return 1;
    }
    char          *names[64];
    int            n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 64) {
        size_t len = strlen(e->d_name);
        if (len > 12 && !strcmp(e->d_name + len - 12, ".safetensors"))
            names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], cmp_str);
    test_condf(n >= 4, "expected the AdaLoRA cases in %s, found %d", cases, n);
    for (int i = 0; i < n; i++) {
        run_case(argv[1], names[i]);
        free(names[i]);
    }
    read_fixture(argv[1]);
    printf("worst: logits max-abs %.2e (tol %.0e), loss rel %.2e (tol %.0e), gradient rel %.2e "
           "(tol %.0e), step losses rel %.2e (tol %.0e), triplet scores rel %.2e (tol %.0e; "
           "worst single score %.2e), final tensors rel %.2e (tol %.0e); masks and budgets "
           "checked after %d steps (%d of them masking)\n",
           worst_logits, LOGITS_TOL, worst_loss, LOSS_TOL, worst_grad, GRAD_TOL, worst_steps,
           STEPS_TOL, worst_score, SCORE_TOL, worst_score_elem, worst_final, FINAL_TOL, mask_checks,
           masked_steps);
    return test_report("test_adalora_oracle");
}
