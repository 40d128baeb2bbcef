/*
 * bench_adalora.c — the training-step cost of AdaLoRA against LoRA.
 *
 *   bench_adalora MODEL_DIR [--r R] [--steps N] [--reps K] [--batch B] [--seq-len T]
 *                 [--targets LIST] [--threads N]
 *
 * Times one optimizer step — forward with the loss, backward, AdamW and the method's
 * after-step hook (AdaLoRA's rank allocator: sensitivity EMAs, triplet scores, masking) — of
 * AdaLoRA at init_r = R and of LoRA at r = R on the same model, the same targets and the same
 * batch (fixed pseudo-random token ids; the cost does not depend on their values). Both models
 * are loaded and attached once; the N timed steps of each method are taken in K interleaved
 * rounds (LoRA first in even rounds, AdaLoRA first in odd ones), after 2 untimed warm-up steps
 * each, so that drifts of the machine's speed fall on both alike.
 *
 * AdaLoRA runs in its budgeting phase the whole time with PEFT's defaults that cost the most:
 * tinit 0, tfinal 0, deltaT 1 (a reallocation, with its sort of every triplet score, after
 * every step), target_r = R / 2, the orthogonality penalty on (0.5).
 *
 * Prints the median and mean ms/step of each method, a forward / backward / optimizer
 * breakdown (medians), and the ratio AdaLoRA / LoRA of the medians (the project's target:
 * <= 1.3). Not a test: run it by hand on an otherwise idle machine.
 */
#include "lora.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *x, int n) {
    double *s = malloc((size_t)n * sizeof *s);
    if (!s || n == 0) {
        free(s);
        return 0;
    }
    memcpy(s, x, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    double m = n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
    free(s);
    return m;
}

static double mean(const double *x, int n) {
    double s = 0;
    for (int i = 0; i < n; i++)
        s += x[i];
    return n ? s / n : 0;
}

typedef struct runner {
    const char       *name;
    lora_model       *m;
    lora_optim_params o;
    int64_t           step;
    double           *fwd, *bwd, *opt, *total; /* per timed step */
    int               n;
} runner;

/* One optimizer step; its phases recorded when timed. */
static int step(runner *r, const int32_t *tok, const int32_t *tgt, int B, int T, int timed) {
    lora_error err;
    float      loss, norm;
    double     t0 = now_ms();
    lora_model_zero_grad(r->m);
    if (lora_model_forward(r->m, tok, tgt, B, T, &loss, &err) != LORA_OK) goto fail;
    double t1 = now_ms();
    if (lora_model_backward(r->m, &err) != LORA_OK) goto fail;
    double t2 = now_ms();
    if (lora_model_step(r->m, &r->o, lora_schedule_lr(&r->o, r->step), &norm, &err) != LORA_OK)
        goto fail;
    double t3 = now_ms();
    r->step++;
    if (timed) {
        r->fwd[r->n]   = t1 - t0;
        r->bwd[r->n]   = t2 - t1;
        r->opt[r->n]   = t3 - t2;
        r->total[r->n] = t3 - t0;
        r->n++;
    }
    return 0;
fail:
    fprintf(stderr, "bench_adalora: %s: %s\n", r->name, err.msg);
    return 1;
}

static void usage(FILE *f) {
    fprintf(f, "usage: bench_adalora MODEL_DIR [--r R] [--steps N] [--reps K] [--batch B]\n"
               "                     [--seq-len T] [--targets LIST] [--threads N]\n"
               "Training-step time of AdaLoRA (init_r R) against LoRA (r R): forward, backward,\n"
               "AdamW and AdaLoRA's rank allocator, interleaved. Defaults: R 8, N 20 steps per\n"
               "method in K 4 rounds, B 8, T min(128, n_positions), targets q,v.\n");
}

static int pos_int(const char *s, int *out) {
    char *end;
    long  v = strtol(s, &end, 10);
    if (!*s || *end || v < 1 || v > 1 << 20) return 1;
    *out = (int)v;
    return 0;
}

int main(int argc, char **argv) {
    static const struct option opts[] = {
        {"r", required_argument, 0, 'r'},       {"steps", required_argument, 0, 's'},
        {"reps", required_argument, 0, 'k'},    {"batch", required_argument, 0, 'b'},
        {"seq-len", required_argument, 0, 'T'}, {"targets", required_argument, 0, 't'},
        {"threads", required_argument, 0, 'j'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int         R = 8, steps = 20, reps = 4, B = 8, T = 0, threads = 0, c;
    const char *targets = "q,v";
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'r': bad = pos_int(optarg, &R); break;
        case 's': bad = pos_int(optarg, &steps); break;
        case 'k': bad = pos_int(optarg, &reps); break;
        case 'b': bad = pos_int(optarg, &B); break;
        case 'T': bad = pos_int(optarg, &T); break;
        case 'j': bad = pos_int(optarg, &threads); break;
        case 't': targets = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) {
            fprintf(stderr, "bench_adalora: bad value '%s'\n", optarg);
            return 2;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    if (reps > steps) reps = steps;
    lora_set_threads(threads);
    const char *dir = argv[optind];
    lora_error  err;
    runner      run[2];
    memset(run, 0, sizeof run);
    run[0].name = "LoRA";
    run[1].name = "AdaLoRA";
    int      rc  = 1;
    int32_t *tok = NULL, *tgt = NULL;
    uint32_t bits;
    if (lora_targets_parse(targets, &bits, &err) != LORA_OK) {
        fprintf(stderr, "bench_adalora: --targets: %s\n", err.msg);
        return 2;
    }
    for (int i = 0; i < 2; i++) {
        if (lora_model_load(dir, &run[i].m, &err) != LORA_OK) {
            fprintf(stderr, "bench_adalora: %s\n", err.msg);
            goto done;
        }
        const lora_config  *cfg = lora_model_config(run[i].m);
        lora_adapter_params p   = lora_adapter_params_default();
        if (T == 0) T = cfg->n_positions < 128 ? cfg->n_positions : 128;
        p.r       = R;
        p.alpha   = 2.0f * (float)R;
        p.targets = bits;
        if (i == 1) {
            p.method             = LORA_METHOD_ADALORA;
            p.adalora.target_r   = R / 2;
            p.adalora.tinit      = 0;
            p.adalora.tfinal     = 0;
            p.adalora.delta_t    = 1;
            p.adalora.total_step = (int64_t)steps + 2 + 1;
        }
        run[i].o             = lora_optim_params_default();
        run[i].o.lr          = 1e-3f;
        run[i].o.warmup_steps = 0;
        run[i].o.total_steps  = (int64_t)steps + 2 + 1;
        if (lora_model_attach(run[i].m, &p, &err) != LORA_OK ||
            lora_model_reserve(run[i].m, B, T, &err) != LORA_OK) {
            fprintf(stderr, "bench_adalora: %s: %s\n", run[i].name, err.msg);
            goto done;
        }
        lora_model_set_training(run[i].m, 1);
        run[i].fwd   = calloc((size_t)steps, sizeof(double));
        run[i].bwd   = calloc((size_t)steps, sizeof(double));
        run[i].opt   = calloc((size_t)steps, sizeof(double));
        run[i].total = calloc((size_t)steps, sizeof(double));
        if (!run[i].fwd || !run[i].bwd || !run[i].opt || !run[i].total) {
            fprintf(stderr, "bench_adalora: out of memory\n");
            goto done;
        }
    }
    const lora_config *cfg = lora_model_config(run[0].m);
    if (T > cfg->n_positions) {
        fprintf(stderr, "bench_adalora: --seq-len %d exceeds n_positions %d\n", T,
                (int)cfg->n_positions);
        goto done;
    }
    tok = malloc((size_t)B * T * sizeof *tok);
    tgt = malloc((size_t)B * T * sizeof *tgt);
    if (!tok || !tgt) goto done;
    uint64_t x = 0x9e3779b97f4a7c15ull; /* splitmix64: fixed ids, the same for both */
    for (int i = 0; i < B * T; i++) {
        x += 0x9e3779b97f4a7c15ull;
        uint64_t z = x;
        z          = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z          = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        tok[i]     = (int32_t)((z ^ (z >> 31)) % (uint64_t)cfg->vocab_size);
    }
    for (int i = 0; i < B * T; i++)
        tgt[i] = (i + 1) % T ? tok[i + 1] : -1;

    printf("bench_adalora: %s, L %d, C %d, B %d, T %d, targets %s, r %d (AdaLoRA init_r %d, "
           "target_r %d, deltaT 1), threads %d\n",
           dir, (int)cfg->n_layer, (int)cfg->n_embd, B, T, targets, R, R, R / 2,
           lora_get_threads());
    printf("trainable parameters: LoRA %lld, AdaLoRA %lld\n",
           (long long)lora_model_n_trainable_params(run[0].m),
           (long long)lora_model_n_trainable_params(run[1].m));
    for (int i = 0; i < 2; i++) /* warm-up: caches, first-touch pages, the allocator's buffers */
        for (int s = 0; s < 2; s++)
            if (step(&run[i], tok, tgt, B, T, 0)) goto done;
    for (int k = 0; k < reps; k++) {
        int n = steps * (k + 1) / reps - steps * k / reps;
        for (int j = 0; j < 2; j++) {
            runner *r = &run[(j + k) % 2];
            for (int s = 0; s < n; s++)
                if (step(r, tok, tgt, B, T, 1)) goto done;
        }
    }
    printf("\n%-8s %10s %10s %10s %10s %10s\n", "method", "ms/step", "mean", "forward",
           "backward", "optimizer");
    for (int i = 0; i < 2; i++)
        printf("%-8s %10.2f %10.2f %10.2f %10.2f %10.2f\n", run[i].name,
               median(run[i].total, run[i].n), mean(run[i].total, run[i].n),
               median(run[i].fwd, run[i].n), median(run[i].bwd, run[i].n),
               median(run[i].opt, run[i].n));
    double ratio = median(run[1].total, run[1].n) / median(run[0].total, run[0].n);
    printf("\nAdaLoRA / LoRA step time (medians of %d steps each, %d interleaved rounds): %.3f "
           "(target <= 1.3)\n",
           steps, reps, ratio);
    rc = 0;
done:
    for (int i = 0; i < 2; i++) {
        lora_model_free(run[i].m);
        free(run[i].fwd);
        free(run[i].bwd);
        free(run[i].opt);
        free(run[i].total);
    }
    free(tok);
    free(tgt);
    return rc;
}
