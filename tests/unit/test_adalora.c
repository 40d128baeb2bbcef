/*
 * test_adalora.c — AdaLoRA without the oracle: a pruned triplet contributes exactly nothing,
 * AdaLoRA with Λ = 1 is a LoRA (forward and gradients), the orthogonality penalty vanishes on
 * orthonormal P and Q and has the closed-form value otherwise, PEFT's init, the budget
 * schedule's phases, a frozen mask survives optimizer steps, init_r = target_r never prunes,
 * the allocator's state restores a run exactly, and bad settings are refused.
 */
#include "io/fileutil.h"
#include "model/gpt2.h"
#include "peft/adalora.h"
#include "peft/peft.h"
#include "test_helper.h"
#include "tiny_model.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>

enum { B = 2, T = 12 };

static char root[2048];

static lora_model *load_tiny(const char *name) {
    lora_config c = tiny_config();
    char        dir[3072];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    tiny_write(dir, &c, NULL, 5);
    lora_model *m = NULL;
    lora_error  err;
    test_condf(lora_model_load(dir, &m, &err) == LORA_OK, "load %s: %s", dir, err.msg);
    return m;
}

static void make_batch(int32_t *tok, int32_t *tgt, int V) {
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)((i * 7 + 3) % V);
        tgt[i] = (i % T) < 2 ? -1 : (int32_t)((i * 5 + 1) % V);
    }
}

static lora_adapter_params ada_params(int32_t r, int32_t target_r) {
    lora_adapter_params p = lora_adapter_params_default();
    p.method              = LORA_METHOD_ADALORA;
    p.r                   = r;
    p.alpha               = 8.0f;
    p.dropout             = 0.0f;
    p.targets             = LORA_TARGET_Q | LORA_TARGET_V | LORA_TARGET_MLP_FC;
    p.adalora.target_r    = target_r;
    p.adalora.tinit       = 2;
    p.adalora.tfinal      = 3;
    p.adalora.delta_t     = 2;
    p.adalora.total_step  = 12;
    return p;
}

/* Every trainable tensor filled with a deterministic pattern in (-amp, amp). */
static void fill_all(lora_model *m, uint64_t seed, float amp) {
    for (int32_t i = 0; i < lora_model_n_trainable(m); i++) {
        lora_tensor_info t;
        lora_model_trainable(m, i, &t);
        uint64_t key = rng_key(seed, (uint64_t)i, 11);
        for (int64_t j = 0; j < t.numel; j++)
            t.data[j] = amp * (2.0f * rng_uniform(key, (uint64_t)j) - 1.0f);
    }
}

static float *find(lora_model *m, const char *name, int64_t *numel) {
    lora_tensor_info t;
    if (lora_model_trainable_find(m, name, &t) != LORA_OK) {
        test_condf(0, "tensor %s missing", name);
        return NULL;
    }
    if (numel) *numel = t.numel;
    return t.data;
}

/* ---- a pruned triplet contributes exactly nothing ---- */

static void test_pruned_triplet(void) {
    int32_t             tok[B * T], tgt[B * T];
    lora_error          err;
    lora_model         *m = load_tiny("pruned");
    lora_adapter_params p = ada_params(4, 2);
    if (!m) return;
    test_condf(lora_model_attach(m, &p, &err) == LORA_OK, "attach: %s", err.msg);
    int V = m->cfg.vocab_size, C = m->cfg.n_embd;
    make_batch(tok, tgt, V);
    fill_all(m, 1, 0.3f);
    float *A = find(m, "h.1.attn.c_attn.v.lora_A", NULL);
    float *E = find(m, "h.1.attn.c_attn.v.lora_E", NULL);
    float *P = find(m, "h.1.attn.c_attn.v.lora_B", NULL);
    if (!A || !E || !P) goto done;
    size_t n  = (size_t)B * T * (size_t)V;
    float *l0 = malloc(n * sizeof(float)), *l1 = malloc(n * sizeof(float)), loss;
    lora_model_forward(m, tok, NULL, B, T, &loss, &err);
    memcpy(l0, lora_model_logits(m), n * sizeof(float));
    E[2] = 0.0f; /* prune triplet 2 */
    lora_model_forward(m, tok, NULL, B, T, &loss, &err);
    memcpy(l1, lora_model_logits(m), n * sizeof(float));
    test_cond("the triplet had an effect", test_max_abs_diff(l0, l1, n) > 1e-6);
    /* its Q row and P column no longer matter, to the bit */
    for (int32_t j = 0; j < C; j++)
        A[2 * C + j] = 0.0f;
    for (int32_t j = 0; j < C; j++)
        P[j * 4 + 2] = 0.0f;
    lora_model_forward(m, tok, NULL, B, T, &loss, &err);
    test_cond("pruned triplet: logits bit-identical whatever its P column and Q row hold",
              memcmp(l1, lora_model_logits(m), n * sizeof(float)) == 0);
    for (int32_t j = 0; j < C; j++)
        A[2 * C + j] = 5.0f;
    lora_model_forward(m, tok, NULL, B, T, &loss, &err);
    test_cond("pruned triplet: large Q row changes nothing",
              memcmp(l1, lora_model_logits(m), n * sizeof(float)) == 0);
    free(l0);
    free(l1);
done:
    lora_model_free(m);
}

/* ---- Λ = 1 and matched scales: AdaLoRA is a LoRA with B' = P, A' = Q ---- */

static void test_matches_lora(void) {
    int32_t     tok[B * T], tgt[B * T];
    lora_error  err;
    lora_model *ml = load_tiny("vs_lora_l"), *ma = load_tiny("vs_lora_a");
    if (!ml || !ma) goto done;
    int V = ml->cfg.vocab_size;
    make_batch(tok, tgt, V);
    /* explicit sites with the same scale, and init_r = target_r: nothing is ever pruned */
    lora_site_spec      specs[3] = {{0, LORA_TARGET_Q, 4, 0.75f},
                                    {1, LORA_TARGET_V, 4, 0.75f},
                                    {1, LORA_TARGET_MLP_PROJ, 4, 0.75f}};
    lora_adapter_params pl = lora_adapter_params_default(), pa = ada_params(4, 4);
    pl.dropout          = 0.0f;
    pa.adalora.orth_reg = 0.0f;
    test_condf(peft_attach(ml, &pl, specs, 3, &err) == LORA_OK, "LoRA: %s", err.msg);
    test_condf(peft_attach(ma, &pa, specs, 3, &err) == LORA_OK, "AdaLoRA: %s", err.msg);
    fill_all(ml, 2, 0.2f);
    static const char *sites[3] = {"h.0.attn.c_attn.q", "h.1.attn.c_attn.v", "h.1.mlp.c_proj"};
    for (int k = 0; k < 3; k++) {
        char    name[96];
        int64_t na = 0, nb = 0, ne = 0;
        snprintf(name, sizeof name, "%s.lora_A", sites[k]);
        float *la = find(ml, name, &na), *aa = find(ma, name, NULL);
        snprintf(name, sizeof name, "%s.lora_B", sites[k]);
        float *lb = find(ml, name, &nb), *ab = find(ma, name, NULL);
        snprintf(name, sizeof name, "%s.lora_E", sites[k]);
        float *ae = find(ma, name, &ne);
        if (!la || !aa || !lb || !ab || !ae) goto done;
        memcpy(aa, la, (size_t)na * sizeof(float));
        memcpy(ab, lb, (size_t)nb * sizeof(float));
        for (int64_t i = 0; i < ne; i++)
            ae[i] = 1.0f;
    }
    lora_model_set_training(ml, 1);
    lora_model_set_training(ma, 1);
    float ll, la_;
    lora_model_zero_grad(ml);
    lora_model_zero_grad(ma);
    lora_model_forward(ml, tok, tgt, B, T, &ll, &err);
    lora_model_forward(ma, tok, tgt, B, T, &la_, &err);
    size_t n = (size_t)B * T * (size_t)V;
    double d = test_max_abs_diff(lora_model_logits(ml), lora_model_logits(ma), n);
    test_condf(d <= 1e-6, "Λ = 1 AdaLoRA vs LoRA logits differ by %.3e", d);
    test_condf(fabsf(ll - la_) <= 1e-6f * fabsf(ll), "loss %.8f vs %.8f", ll, la_);
    lora_model_backward(ml, &err);
    lora_model_backward(ma, &err);
    double worst = 0;
    for (int32_t i = 0; i < lora_model_n_trainable(ml); i++) {
        lora_tensor_info tl, ta;
        lora_model_trainable(ml, i, &tl);
        if (lora_model_trainable_find(ma, tl.name, &ta) != LORA_OK) continue;
        double r = test_rel_norm_diff(ta.grad, tl.grad, (size_t)tl.numel);
        worst    = r > worst ? r : worst;
    }
    test_condf(worst <= 1e-6, "Λ = 1 AdaLoRA vs LoRA gradients of A, B differ by %.3e", worst);

    /* init_r = target_r: the allocator runs every step and never prunes */
    lora_optim_params o = lora_optim_params_default();
    o.lr                = 1e-2f;
    o.warmup_steps      = 0;
    o.total_steps       = 12;
    int never           = 1;
    for (int64_t s = 0; s < 12; s++) {
        adalora_status as;
        if (s > 0) {
            lora_model_zero_grad(ma);
            lora_model_forward(ma, tok, tgt, B, T, &la_, &err);
            lora_model_backward(ma, &err);
        }
        lora_model_step(ma, &o, o.lr, NULL, &err);
        adalora_get_status(ma, &as);
        never &= as.kept == as.init_bgt && as.budget == as.init_bgt && as.init_bgt == 12;
    }
    test_cond("init_r = target_r: every triplet kept at every step", never);
done:
    lora_model_free(ml);
    lora_model_free(ma);
}

/* ---- the orthogonality penalty ---- */

static void test_penalty(void) {
    lora_error          err;
    lora_model         *m = load_tiny("penalty");
    lora_adapter_params p = ada_params(3, 2);
    if (!m) return;
    p.adalora.orth_reg = 0.5f;
    test_condf(lora_model_attach(m, &p, &err) == LORA_OK, "attach: %s", err.msg);
    adalora_site_view v[8];
    int32_t           ns = adalora_sites_list(m, v, 8);
    test_condf(ns == 2 * 3, "sites %d", ns);
    /* PEFT's init: Λ = 0, P and Q ~ N(0, 0.02) */
    double sq = 0, e_abs = 0;
    size_t cnt = 0;
    for (int32_t k = 0; k < ns; k++) {
        for (int64_t i = 0; i < (int64_t)v[k].r * v[k].in; i++, cnt++)
            sq += v[k].A[i] * v[k].A[i];
        for (int64_t i = 0; i < (int64_t)v[k].len * v[k].r; i++, cnt++)
            sq += v[k].B[i] * v[k].B[i];
        for (int32_t i = 0; i < v[k].r; i++)
            e_abs += fabsf(v[k].E[i]);
    }
    double sd = sqrt(sq / (double)cnt);
    test_condf(sd > 0.018 && sd < 0.022, "P, Q init std %.4f, expected 0.02", sd);
    test_cond("Λ starts at zero", e_abs == 0.0);
    test_condf(fabsf(v[0].scale - 8.0f / (3.0f + 1e-5f)) < 1e-6f, "scale %g", v[0].scale);

    /* orthonormal rows of Q and columns of P: R = 0 (a rotation mixes the first two) */
    float c = cosf(0.3f), s = sinf(0.3f);
    for (int32_t k = 0; k < ns; k++) {
        memset(v[k].A, 0, (size_t)v[k].r * v[k].in * sizeof(float));
        memset(v[k].B, 0, (size_t)v[k].len * v[k].r * sizeof(float));
        for (int32_t i = 0; i < v[k].r; i++) {
            v[k].A[(size_t)i * v[k].in + i + 1]  = 1.0f;
            v[k].B[(size_t)(i + 2) * v[k].r + i] = 1.0f;
        }
        v[k].A[1] = c, v[k].A[2] = s, v[k].A[v[k].in + 1] = -s, v[k].A[v[k].in + 2] = c;
    }
    float r0 = adalora_orth_penalty(m);
    test_condf(fabsf(r0) < 1e-6f, "penalty on orthonormal P, Q is %g", r0);
    /* P and Q doubled: cov − I = 3I, ‖·‖ = 3 sqrt(r) for each of the 2n matrices */
    for (int32_t k = 0; k < ns; k++) {
        for (int64_t i = 0; i < (int64_t)v[k].r * v[k].in; i++)
            v[k].A[i] *= 2.0f;
        for (int64_t i = 0; i < (int64_t)v[k].len * v[k].r; i++)
            v[k].B[i] *= 2.0f;
    }
    float r1 = adalora_orth_penalty(m), want = 0.5f * 3.0f * sqrtf(3.0f);
    test_condf(fabsf(r1 - want) < 1e-5f * want, "penalty %g, expected γ·3·sqrt(r) = %g", r1, want);

    /* its gradient (the hook with grad = 1, alone) against central differences */
    fill_all(m, 3, 0.3f);
    lora_model_zero_grad(m);
    m->method->regularizer(m, 1);
    const char *names[2] = {"h.0.mlp.c_fc.lora_A", "h.1.attn.c_attn.q.lora_B"};
    double      worst    = 0;
    for (int t = 0; t < 2; t++) {
        lora_tensor_info ti;
        lora_model_trainable_find(m, names[t], &ti);
        for (int64_t j = 0; j < ti.numel; j += ti.numel / 7 + 1) {
            float old = ti.data[j], h = 1e-2f;
            ti.data[j] = old + h;
            double rp  = adalora_orth_penalty(m);
            ti.data[j] = old - h;
            double rm  = adalora_orth_penalty(m);
            ti.data[j] = old;
            double fd = (rp - rm) / (2.0 * h), g = ti.grad[j];
            double e = fabs(fd - g) / (fabs(fd) + fabs(g) + 1e-4);
            worst    = e > worst ? e : worst;
        }
    }
    test_condf(worst < 2e-2, "penalty gradient vs finite differences: %.3e", worst);
    lora_model_free(m);
}

/* ---- the schedule, a frozen mask, exact resume ---- */

static void run_steps(lora_model *m, const int32_t *tok, const int32_t *tgt, int64_t from,
                      int64_t to, float *losses) {
    lora_error        err;
    lora_optim_params o = lora_optim_params_default();
    o.lr                = 2e-2f;
    o.warmup_steps      = 2;
    o.total_steps       = 12;
    o.clip              = 0.5f;
    for (int64_t s = from; s < to; s++) {
        lora_model_zero_grad(m);
        lora_model_forward(m, tok, tgt, B, T, &losses[s], &err);
        lora_model_backward(m, &err);
        lora_model_step(m, &o, lora_schedule_lr(&o, s), NULL, &err);
    }
}

static void test_schedule_and_resume(void) {
    int32_t             tok[B * T], tgt[B * T];
    lora_error          err;
    lora_model         *a = load_tiny("sched_a"), *b = load_tiny("sched_b");
    lora_adapter_params p = ada_params(4, 2);
    if (!a || !b) goto done;
    make_batch(tok, tgt, a->cfg.vocab_size);
    test_condf(lora_model_attach(a, &p, &err) == LORA_OK, "attach: %s", err.msg);
    test_condf(lora_model_attach(b, &p, &err) == LORA_OK, "attach: %s", err.msg);
    lora_model_set_training(a, 1);
    lora_model_set_training(b, 1);
    fill_all(a, 4, 0.2f);
    memcpy(b->tp.data, a->tp.data, a->tp.total * sizeof(float));

    /* b(t) with 6 sites, r 4 → 2 (24 → 12), tinit 2, tfinal 3, total 12: the full budget
     * through t = 2, the cubic from 3 to 9 (masking at even steps), the target from 10 on */
    int     mi;
    int32_t b2 = adalora_budget_at(a, 2, &mi);
    test_condf(b2 == 24 && !mi, "b(2) = %d mask %d", b2, mi);
    int32_t b3 = adalora_budget_at(a, 3, &mi), want3 = (int32_t)(12.0 * pow(1 - 1.0 / 7, 3) + 12);
    test_condf(b3 == want3 && !mi, "b(3) = %d, expected %d", b3, want3);
    int32_t b4 = adalora_budget_at(a, 4, &mi);
    test_condf(mi == 1 && b4 == (int32_t)(12.0 * pow(1 - 2.0 / 7, 3) + 12), "b(4) = %d", b4);
    test_condf(adalora_budget_at(a, 9, &mi) == 12, "b(T - tfinal) is the target");
    test_condf(adalora_budget_at(a, 10, &mi) == 12 && mi, "b(t > T - tfinal) masks");

    /* an uninterrupted run of 12 steps ... */
    float la[12], lb[12];
    run_steps(a, tok, tgt, 0, 12, la);
    adalora_status as;
    adalora_get_status(a, &as);
    test_condf(as.kept == 12 && adalora_mask_is_final(a), "final: %d kept, final %d", as.kept,
               adalora_mask_is_final(a));
    adalora_site_view v[8];
    int32_t           ns = adalora_sites_list(a, v, 8), zero_ok = 1;
    for (int32_t k = 0; k < ns; k++)
        for (int32_t i = 0; i < v[k].r; i++)
            if (v[k].mask[i] == 0.0f) zero_ok &= v[k].E[i] == 0.0f;
    test_cond("the frozen mask holds Λ at zero after the last update", zero_ok);

    /* ... equals 7 steps, the state copied into a fresh model, then 5 more */
    run_steps(b, tok, tgt, 0, 7, lb);
    lora_model *c = load_tiny("sched_c");
    if (!c) goto done;
    test_condf(lora_model_attach(c, &p, &err) == LORA_OK, "attach: %s", err.msg);
    lora_model_set_training(c, 1);
    size_t bytes = b->tp.total * sizeof(float);
    memcpy(c->tp.data, b->tp.data, bytes);
    memcpy(c->tp.m, b->tp.m, bytes);
    memcpy(c->tp.v, b->tp.v, bytes);
    c->tp.adam_t = b->tp.adam_t;
    c->ctx.pass  = b->ctx.pass;
    peft_state_view vb[8], vc[8];
    int32_t         nb = b->method->state(b, vb, 8), nc = c->method->state(c, vc, 8);
    test_condf(nb == 4 && nc == 4, "state views %d %d", nb, nc);
    for (int32_t i = 0; i < nb && i < nc; i++) {
        test_cond("state names", !strcmp(vb[i].name, vc[i].name) && vb[i].numel == vc[i].numel);
        memcpy(vc[i].data, vb[i].data, (size_t)vb[i].numel * sizeof(float));
    }
    run_steps(c, tok, tgt, 7, 12, lb);
    test_cond("resumed losses equal the uninterrupted run's", !memcmp(la, lb, sizeof la));
    test_cond("resumed parameters equal the uninterrupted run's",
              !memcmp(a->tp.data, c->tp.data, bytes));
    lora_model_free(c);
done:
    lora_model_free(a);
    lora_model_free(b);
}

/* ---- PEFT directories ---- */

static cJSON *read_config(const char *dir) {
    char   path[4200], *text = NULL;
    size_t len;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if (lora_read_file(path, &text, &len, NULL) != LORA_OK) return NULL;
    cJSON *c = cJSON_ParseWithLength(text, len);
    free(text);
    return c;
}

static void test_files(void) {
    int32_t             tok[B * T], tgt[B * T];
    float               losses[12];
    lora_error          err;
    char                dir[3072];
    lora_model         *a = load_tiny("io_a"), *b = load_tiny("io_b");
    lora_adapter_params p = ada_params(4, 2);
    if (!a || !b) goto done;
    make_batch(tok, tgt, a->cfg.vocab_size);
    test_condf(lora_model_attach(a, &p, &err) == LORA_OK, "attach: %s", err.msg);
    lora_model_set_training(a, 1);
    fill_all(a, 6, 0.2f);
    run_steps(a, tok, tgt, 0, 12, losses); /* to the frozen final mask */
    snprintf(dir, sizeof dir, "%s/io_adapter", root);
    test_condf(lora_adapter_save(a, dir, "tiny", &err) == LORA_OK, "save: %s", err.msg);

    /* PEFT's layout: q,v fused into one c_attn module of rank 8, c_fc padded to 8 */
    cJSON *c = read_config(dir);
    test_cond("adapter_config.json", c != NULL);
    if (c) {
        const cJSON *t  = cJSON_GetObjectItemCaseSensitive(c, "peft_type");
        const cJSON *ir = cJSON_GetObjectItemCaseSensitive(c, "init_r");
        const cJSON *rp = cJSON_GetObjectItemCaseSensitive(c, "rank_pattern");
        const cJSON *l0 =
            cJSON_GetObjectItemCaseSensitive(rp, "transformer.h.0.attn.c_attn.lora_E");
        const cJSON *l1 = cJSON_GetObjectItemCaseSensitive(rp, "transformer.h.1.mlp.c_fc.lora_E");
        test_cond("peft_type ADALORA", cJSON_IsString(t) && !strcmp(t->valuestring, "ADALORA"));
        test_cond("init_r 8", cJSON_IsNumber(ir) && ir->valueint == 8);
        test_cond("rank_pattern lists of init_r booleans",
                  cJSON_GetArraySize(l0) == 8 && cJSON_GetArraySize(l1) == 8);
        test_cond("c_fc padding pruned", cJSON_IsFalse(cJSON_GetArrayItem(l1, 4)) &&
                                             cJSON_IsFalse(cJSON_GetArrayItem(l1, 7)));
        int kept = 0;
        for (int i = 0; i < 8; i++)
            kept += cJSON_IsTrue(cJSON_GetArrayItem(l0, i));
        char    path[4200];
        st_file f;
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
        test_cond("open", st_open(&f, path, &err) == LORA_OK);
        const st_tensor *e  = st_find(&f, "base_model.model.transformer.h.0.attn.c_attn.lora_E");
        const st_tensor *pb = st_find(&f, "base_model.model.transformer.h.0.attn.c_attn.lora_B");
        test_condf(e && e->shape[0] == kept && e->shape[1] == 1, "lora_E cut to %d kept", kept);
        test_cond("lora_B (3C, kept)",
                  pb && pb->shape[0] == 3 * a->cfg.n_embd && pb->shape[1] == kept);
        st_close(&f);
        cJSON_Delete(c);
    }

    /* read back: the same sites, values, masks and logits to the bit */
    test_condf(lora_adapter_load(b, dir, &err) == LORA_OK, "load: %s", err.msg);
    test_condf(lora_model_n_trainable(b) == lora_model_n_trainable(a), "trainable %d vs %d",
               lora_model_n_trainable(b), lora_model_n_trainable(a));
    uint8_t ma[64], mb[64];
    int32_t na = adalora_masks(a, ma, 64), nb = adalora_masks(b, mb, 64);
    test_cond("masks read back", na == 24 && nb == na && !memcmp(ma, mb, (size_t)na));
    test_cond("a loaded pattern is frozen", adalora_mask_is_final(b));
    float  l;
    size_t n = (size_t)B * T * (size_t)a->cfg.vocab_size;
    lora_model_set_training(a, 0);
    lora_model_forward(a, tok, NULL, B, T, &l, &err);
    float *la = malloc(n * sizeof(float));
    memcpy(la, lora_model_logits(a), n * sizeof(float));
    lora_model_forward(b, tok, NULL, B, T, &l, &err);
    test_cond("reloaded adapter: logits bit-identical",
              !memcmp(la, lora_model_logits(b), n * sizeof(float)));
    free(la);
done:
    lora_model_free(a);
    lora_model_free(b);
}

/* ---- settings that must be refused ---- */

static void test_bad_settings(void) {
    struct {
        const char *what;
        int64_t     total, tinit, tfinal, delta_t;
        int32_t     target_r;
        float       beta1;
    } bad[] = {
        {"no total_step", 0, 0, 0, 1, 2, 0.85f}, {"tinit + tfinal >= total", 10, 6, 4, 1, 2, 0.85f},
        {"delta_t 0", 10, 0, 0, 0, 2, 0.85f},    {"target_r > init_r", 10, 0, 0, 1, 5, 0.85f},
        {"beta1 = 1", 10, 0, 0, 1, 2, 1.0f},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lora_model         *m = load_tiny("bad");
        lora_adapter_params p = ada_params(4, bad[i].target_r);
        lora_error          err;
        if (!m) return;
        p.adalora.total_step = bad[i].total;
        p.adalora.tinit      = bad[i].tinit;
        p.adalora.tfinal     = bad[i].tfinal;
        p.adalora.delta_t    = bad[i].delta_t;
        p.adalora.beta1      = bad[i].beta1;
        memset(&err, 0, sizeof err);
        test_condf(lora_model_attach(m, &p, &err) == LORA_ERR_ARG && strstr(err.msg, "AdaLoRA"),
                   "%s: accepted (%s)", bad[i].what, err.msg);
        lora_model_free(m);
    }
}

int main(void) {
    tiny_tmpdir(root, sizeof root, "test_adalora");
    test_pruned_triplet();
    test_matches_lora();
    test_penalty();
    test_schedule_and_resume();
    test_files();
    test_bad_settings();
    return test_report("test_adalora");
}
