/*
 * cmd_bench.c — `lora bench`: trains a few steps of a model and method on random tokens and
 * reports tokens/s, the model FLOPs per step as a share of the machine's measured FMA and sgemm
 * peaks, the peak resident memory against lora_estimate_memory (what `lora inspect` prints),
 * and optionally where a step's time goes, op by op.
 *
 * A step is zero_grad + forward + backward + AdamW step on one fixed batch of random tokens
 * (targets: the next token), after untimed warm-up steps. The machine peaks are measured after
 * the steps, once the peak RSS has been read, so their buffers do not count in it.
 * Not here: the PyTorch comparison and the sweeps (bench/run drives this command with --json).
 */
#include "commands.h"
#include "lora.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#ifndef LORA_DEFAULT_MODEL_DIR
#define LORA_DEFAULT_MODEL_DIR "models/default"
#endif

#define PEAK_SECONDS 0.6 /* time spent measuring each machine peak */
#define SGEMM_N      1024

static void bench_usage(FILE *out) {
    fprintf(out,
            "usage: lora bench [MODEL] [options]\n"
            "       lora bench --peak-only [--threads N] [--json]\n"
            "\n"
            "Trains a few steps on random tokens and reports tokens/s, utilisation of the\n"
            "machine (model FLOPs per second over its measured FMA and sgemm peaks), peak\n"
            "memory against the estimate of `lora inspect`, and with --profile where the\n"
            "time of a step goes. MODEL is a Hugging Face GPT-2 directory or a .gguf file\n"
            "(default: the embedded model, %s).\n"
            "\n"
            "options:\n"
            "  --method M      lora, adalora, full or bitfit (default lora)\n"
            "  --r N           LoRA rank, AdaLoRA initial rank (default 8)\n"
            "  --alpha A       LoRA alpha (default 16)\n"
            "  --targets LIST  adapter targets: q,k,v,c_attn,c_proj,c_fc,mlp.c_proj,all\n"
            "                  (default q,v)\n"
            "  --dropout P     adapter input dropout (default 0.1)\n"
            "  --batch B       sequences per step (default 4)\n"
            "  --seq-len T     tokens per sequence (default min(128, n_positions))\n"
            "  --checkpoint-activations\n"
            "                  recompute each layer's activations in backward (less\n"
            "                  memory, about a third more compute)\n"
            "  --steps N       timed steps (default 10)\n"
            "  --warmup N      untimed steps before them (default 2)\n"
            "  --threads N     threads (default: all cores)\n"
            "  --seed S        seed of the random tokens (default 1)\n"
            "  --profile       time every operation and print the breakdown of a step\n"
            "  --no-peak       do not measure the machine's peaks (no utilisation)\n"
            "  --peak-only     measure only the machine's FMA and sgemm peaks\n"
            "  --json          print one JSON object instead of the report\n"
            "  -h, --help      this help\n",
            LORA_DEFAULT_MODEL_DIR);
}

typedef struct bench_opts {
    const char         *model;
    lora_adapter_params ap;
    int32_t             B, T;
    int64_t             steps, warmup, seed;
    int                 threads, profile, peak, peak_only, json, checkpoint;
} bench_opts;

typedef struct bench_result {
    double      *step_s; /* (steps) */
    double       median_s, min_s, max_s, total_s, tokens_per_s;
    float        loss_first, loss_last;
    int64_t      rss_base, rss_peak; /* bytes; rss_base: before loading the model */
    lora_flops   flops;
    lora_memory_estimate est;
    lora_profile prof;
    double       fma_gflops, sgemm_gflops; /* 0 when not measured */
    int64_t      n_params, n_trainable;
} bench_result;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A duration with a unit that keeps three or more digits: "1.234 s", "12.35 ms", "85.2 us". */
static const char *fmt_dur(char *buf, size_t n, double s) {
    if (s >= 1.0) snprintf(buf, n, "%.3f s", s);
    else if (s >= 1e-3) snprintf(buf, n, "%.2f ms", s * 1e3);
    else snprintf(buf, n, "%.1f us", s * 1e6);
    return buf;
}

static double mib(double bytes) {
    return bytes / (1024.0 * 1024.0);
}

/* The resident set now (VmRSS), in bytes; 0 where /proc is unavailable. */
static int64_t rss_now(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char  line[256];
    long  kb = 0;
    if (!f) return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) break;
    fclose(f);
    return (int64_t)kb * 1024;
}

/* The process's peak resident set so far, in bytes (ru_maxrss is in KiB on Linux). */
static int64_t rss_peak(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (int64_t)ru.ru_maxrss * 1024;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int parse_i64(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out) {
    char *end;
    errno       = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) {
        cli_error("bench", "%s expects an integer in [%lld, %lld], got '%s'", opt,
                  (long long)lo, (long long)hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_f(const char *opt, const char *s, double lo, double hi, float *out) {
    char *end;
    errno    = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !(v >= lo && v <= hi)) {
        cli_error("bench", "%s expects a number in [%g, %g], got '%s'", opt, lo, hi, s);
        return -1;
    }
    *out = (float)v;
    return 0;
}

static const char *method_name(lora_method m) {
    return m == LORA_METHOD_FULL      ? "full"
           : m == LORA_METHOD_BITFIT  ? "bitfit"
           : m == LORA_METHOD_ADALORA ? "adalora"
                                      : "lora";
}

static int is_adapter(lora_method m) {
    return m == LORA_METHOD_LORA || m == LORA_METHOD_ADALORA;
}

/* "q,v"-style text of target bits. */
static void targets_str(uint32_t t, char *buf, size_t n) {
    static const struct {
        uint32_t    bit;
        const char *name;
    } names[] = {{LORA_TARGET_Q, "q"},           {LORA_TARGET_K, "k"},
                 {LORA_TARGET_V, "v"},           {LORA_TARGET_C_ATTN, "c_attn"},
                 {LORA_TARGET_ATTN_PROJ, "c_proj"}, {LORA_TARGET_MLP_FC, "c_fc"},
                 {LORA_TARGET_MLP_PROJ, "mlp.c_proj"}};
    size_t k = 0;
    buf[0]   = '\0';
    for (size_t i = 0; i < sizeof names / sizeof names[0] && k < n; i++)
        if (t & names[i].bit)
            k += (size_t)snprintf(buf + k, n - k, "%s%s", k ? "," : "", names[i].name);
}

/* ---- the timed steps ---- */

static int run_steps(lora_model *m, const bench_opts *o, bench_result *r) {
    const lora_config *cfg = lora_model_config(m);
    int32_t            B = o->B, T = o->T, N = B * T;
    lora_error         err;
    int32_t           *tok = malloc((size_t)N * 2 * sizeof(int32_t));
    if (!tok) {
        cli_error("bench", "out of memory");
        return 1;
    }
    int32_t *tgt = tok + N;
    uint64_t s   = (uint64_t)o->seed * 6364136223846793005ULL + 1442695040888963407ULL;
    for (int32_t i = 0; i < N; i++) {
        s      = s * 6364136223846793005ULL + 1442695040888963407ULL;
        tok[i] = (int32_t)((s >> 33) % (uint64_t)cfg->vocab_size);
    }
    for (int32_t i = 0; i < N; i++) /* the next token of the row; the last one has none */
        tgt[i] = (i + 1) % T ? tok[i + 1] : -1;

    lora_optim_params op = lora_optim_params_default();
    lora_model_set_training(m, 1);
    if (lora_model_set_checkpointing(m, o->checkpoint, &err) != LORA_OK ||
        lora_model_reserve(m, B, T, &err) != LORA_OK) {
        cli_error("bench", "%s", err.msg);
        free(tok);
        return 1;
    }
    int64_t total = o->warmup + o->steps;
    for (int64_t i = 0; i < total; i++) {
        if (i == o->warmup && o->profile && lora_model_set_profiling(m, 1, &err) != LORA_OK) {
            cli_error("bench", "%s", err.msg);
            free(tok);
            return 1;
        }
        float  loss = 0.0f;
        double t0   = now_s();
        lora_model_zero_grad(m);
        if (lora_model_forward(m, tok, tgt, B, T, &loss, &err) != LORA_OK ||
            lora_model_backward(m, &err) != LORA_OK ||
            lora_model_step(m, &op, op.lr, NULL, &err) != LORA_OK) {
            cli_error("bench", "step %lld: %s", (long long)i, err.msg);
            free(tok);
            return 1;
        }
        double dt = now_s() - t0;
        if (i == 0) r->loss_first = loss;
        r->loss_last = loss;
        if (i >= o->warmup) r->step_s[i - o->warmup] = dt;
    }
    if (o->profile) lora_model_profile(m, &r->prof);
    free(tok);

    double *sorted = malloc((size_t)o->steps * sizeof(double));
    if (!sorted) {
        cli_error("bench", "out of memory");
        return 1;
    }
    memcpy(sorted, r->step_s, (size_t)o->steps * sizeof(double));
    qsort(sorted, (size_t)o->steps, sizeof(double), cmp_double);
    size_t n    = (size_t)o->steps;
    r->median_s = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
    r->min_s    = sorted[0];
    r->max_s    = sorted[n - 1];
    r->total_s  = 0.0;
    for (size_t i = 0; i < n; i++) r->total_s += sorted[i];
    r->tokens_per_s = (double)N * (double)n / r->total_s;
    free(sorted);
    return 0;
}

/* ---- reporting ---- */

static void print_profile(const bench_result *r, int64_t steps) {
    const lora_profile *p     = &r->prof;
    double              per   = 1000.0 / (double)steps; /* seconds in total -> ms per step */
    double              stepm = r->total_s * per, sum = 0.0;
    printf("\nwhere a step's time goes (ms per step, mean of %lld profiled steps)\n",
           (long long)steps);
    printf("  %-14s %10s %10s %10s %10s %7s\n", "op", "forward", "backward", "optimizer",
           "total", "share");
    for (int32_t op = 0; op < LORA_PROF_N_OPS; op++) {
        double f = p->op_s[LORA_PROF_FORWARD][op] * per, b = p->op_s[LORA_PROF_BACKWARD][op] * per;
        double s = p->op_s[LORA_PROF_STEP][op] * per, t = f + b + s;
        sum += t;
        if (t == 0.0) continue;
        printf("  %-14s %10.2f %10.2f %10.2f %10.2f %6.1f%%\n", lora_profile_op_name(op), f, b, s,
               t, 100.0 * t / stepm);
    }
    printf("  %-14s %10s %10s %10s %10.2f %6.1f%%\n", "(untimed)", "", "", "", stepm - sum,
           100.0 * (stepm - sum) / stepm);
    printf("  %-14s %10.2f %10.2f %10.2f %10.2f %6.1f%%\n", "step", p->phase_s[0] * per,
           p->phase_s[1] * per, p->phase_s[2] * per, stepm, 100.0);
}

static void print_report(const bench_opts *o, const lora_config *cfg, const bench_result *r) {
    char tg[96];
    targets_str(o->ap.targets, tg, sizeof tg);
    printf("model      %s (%d layers x %d, %d heads, vocab %d, %.1f M parameters)\n", o->model,
           cfg->n_layer, cfg->n_embd, cfg->n_head, cfg->vocab_size, (double)r->n_params / 1e6);
    printf("method     %s", method_name(o->ap.method));
    if (is_adapter(o->ap.method))
        printf(" r=%d alpha=%g targets=%s dropout=%g", o->ap.r, (double)o->ap.alpha, tg,
               (double)o->ap.dropout);
    printf(" (%lld trainable parameters)\n", (long long)r->n_trainable);
    printf("batch      B=%d T=%d (%d tokens per step), %d threads, %lld warm-up + %lld timed "
           "steps\n",
           o->B, o->T, o->B * o->T, lora_get_threads(), (long long)o->warmup,
           (long long)o->steps);
    if (o->checkpoint) printf("           activations checkpointed (recomputed in backward)\n");
    printf("loss       %.4f at the first step, %.4f at the last (same batch every step)\n",
           (double)r->loss_first, (double)r->loss_last);
    char d0[32], d1[32], d2[32];
    printf("\nspeed      %.1f tokens/s (step %s median, %s min, %s max)\n", r->tokens_per_s,
           fmt_dur(d0, sizeof d0, r->median_s), fmt_dur(d1, sizeof d1, r->min_s),
           fmt_dur(d2, sizeof d2, r->max_s));
    printf("FLOPs      %.4g GFLOP per step (forward %.4g, backward %.4g; attention counts the "
           "full T x T square)\n",
           r->flops.total / 1e9, r->flops.forward / 1e9, r->flops.backward / 1e9);
    double gfs = r->flops.total * (double)o->steps / r->total_s / 1e9;
    printf("compute    %.1f GFLOP/s", gfs);
    if (r->fma_gflops > 0 && r->sgemm_gflops > 0)
        printf(" = %.1f%% of the FMA peak (%.1f GFLOP/s) = %.1f%% of sgemm %d^3 (%.1f GFLOP/s)",
               100.0 * gfs / r->fma_gflops, r->fma_gflops, 100.0 * gfs / r->sgemm_gflops,
               SGEMM_N, r->sgemm_gflops);
    printf("\n");
    double err = 100.0 * ((double)r->est.total_bytes - (double)r->rss_peak) / (double)r->rss_peak;
    printf("memory     peak RSS %.1f MiB (%.1f MiB before loading the model); estimate %.1f MiB "
           "(%+.1f%%)\n",
           mib((double)r->rss_peak), mib((double)r->rss_base), mib((double)r->est.total_bytes),
           err);
    printf("           estimate: weights %.1f + trainable and AdamW %.1f + activations %.1f MiB\n",
           mib((double)r->est.weights_bytes), mib((double)r->est.trainable_bytes),
           mib((double)r->est.activation_bytes));
    if (o->profile) print_profile(r, o->steps);
}

static void print_peaks(double fma, double sgemm) {
    printf("machine    FMA peak %.1f GFLOP/s, OpenBLAS sgemm %d^3 %.1f GFLOP/s (%d threads)\n",
           fma, SGEMM_N, sgemm, lora_get_threads());
}

static cJSON *json_report(const bench_opts *o, const lora_config *cfg, const bench_result *r) {
    char   tg[96];
    cJSON *j = cJSON_CreateObject();
    targets_str(o->ap.targets, tg, sizeof tg);
    cJSON_AddStringToObject(j, "model", o->model);
    cJSON_AddNumberToObject(j, "n_layer", cfg->n_layer);
    cJSON_AddNumberToObject(j, "n_embd", cfg->n_embd);
    cJSON_AddNumberToObject(j, "vocab_size", cfg->vocab_size);
    cJSON_AddNumberToObject(j, "n_params", (double)r->n_params);
    cJSON_AddNumberToObject(j, "n_trainable", (double)r->n_trainable);
    cJSON_AddStringToObject(j, "method", method_name(o->ap.method));
    cJSON_AddNumberToObject(j, "r", is_adapter(o->ap.method) ? o->ap.r : 0);
    cJSON_AddNumberToObject(j, "alpha", is_adapter(o->ap.method) ? o->ap.alpha : 0);
    cJSON_AddStringToObject(j, "targets", is_adapter(o->ap.method) ? tg : "");
    cJSON_AddNumberToObject(j, "dropout", is_adapter(o->ap.method) ? o->ap.dropout : 0);
    cJSON_AddNumberToObject(j, "B", o->B);
    cJSON_AddNumberToObject(j, "T", o->T);
    cJSON_AddBoolToObject(j, "checkpoint_activations", o->checkpoint);
    cJSON_AddNumberToObject(j, "threads", lora_get_threads());
    const char *wait = getenv("OMP_WAIT_POLICY");
    cJSON_AddStringToObject(j, "omp_wait_policy", wait ? wait : "");
    cJSON_AddNumberToObject(j, "warmup", (double)o->warmup);
    cJSON_AddNumberToObject(j, "steps", (double)o->steps);
    cJSON_AddItemToObject(j, "step_s", cJSON_CreateDoubleArray(r->step_s, (int)o->steps));
    cJSON_AddNumberToObject(j, "median_step_s", r->median_s);
    cJSON_AddNumberToObject(j, "tokens_per_s", r->tokens_per_s);
    cJSON_AddNumberToObject(j, "loss_first", r->loss_first);
    cJSON_AddNumberToObject(j, "loss_last", r->loss_last);
    cJSON *f = cJSON_AddObjectToObject(j, "flops");
    cJSON_AddNumberToObject(f, "linear", r->flops.linear);
    cJSON_AddNumberToObject(f, "attention", r->flops.attention);
    cJSON_AddNumberToObject(f, "lm_head", r->flops.lm_head);
    cJSON_AddNumberToObject(f, "adapter", r->flops.adapter);
    cJSON_AddNumberToObject(f, "forward", r->flops.forward);
    cJSON_AddNumberToObject(f, "backward", r->flops.backward);
    cJSON_AddNumberToObject(f, "total", r->flops.total);
    cJSON_AddNumberToObject(j, "fma_gflops", r->fma_gflops);
    cJSON_AddNumberToObject(j, "sgemm_gflops", r->sgemm_gflops);
    cJSON_AddNumberToObject(j, "rss_base_bytes", (double)r->rss_base);
    cJSON_AddNumberToObject(j, "rss_peak_bytes", (double)r->rss_peak);
    cJSON *e = cJSON_AddObjectToObject(j, "estimate");
    cJSON_AddNumberToObject(e, "weights_bytes", (double)r->est.weights_bytes);
    cJSON_AddNumberToObject(e, "trainable_bytes", (double)r->est.trainable_bytes);
    cJSON_AddNumberToObject(e, "activation_bytes", (double)r->est.activation_bytes);
    cJSON_AddNumberToObject(e, "total_bytes", (double)r->est.total_bytes);
    if (o->profile) {
        cJSON *p = cJSON_AddObjectToObject(j, "profile");
        static const char *const phase[LORA_PROF_N_PHASES] = {"forward", "backward", "step"};
        for (int ph = 0; ph < LORA_PROF_N_PHASES; ph++) {
            cJSON *q = cJSON_AddObjectToObject(p, phase[ph]);
            for (int32_t op = 0; op < LORA_PROF_N_OPS; op++)
                cJSON_AddNumberToObject(q, lora_profile_op_name(op), r->prof.op_s[ph][op]);
            cJSON_AddNumberToObject(q, "(phase)", r->prof.phase_s[ph]);
        }
        cJSON_AddNumberToObject(p, "steps", (double)o->steps);
        cJSON_AddNumberToObject(p, "total_s", r->total_s);
    }
    return j;
}

static int print_json(cJSON *j) {
    char *text = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!text) {
        cli_error("bench", "out of memory");
        return 1;
    }
    printf("%s\n", text);
    free(text);
    return 0;
}

/* ---- options ---- */

enum {
    O_METHOD = 256, O_R, O_ALPHA, O_TARGETS, O_DROPOUT, O_BATCH, O_SEQ, O_STEPS, O_WARMUP,
    O_THREADS, O_SEED, O_PROFILE, O_NO_PEAK, O_PEAK_ONLY, O_JSON, O_CHECKPOINT
};

/* Parses argv into o; returns -1 to go on, else the exit status (help: 0, usage error: 2). */
static int parse_opts(int argc, char **argv, bench_opts *o) {
    static const struct option opts[] = {
        {"method", required_argument, 0, O_METHOD},   {"r", required_argument, 0, O_R},
        {"alpha", required_argument, 0, O_ALPHA},     {"targets", required_argument, 0, O_TARGETS},
        {"dropout", required_argument, 0, O_DROPOUT}, {"batch", required_argument, 0, O_BATCH},
        {"seq-len", required_argument, 0, O_SEQ},     {"steps", required_argument, 0, O_STEPS},
        {"warmup", required_argument, 0, O_WARMUP},   {"threads", required_argument, 0, O_THREADS},
        {"seed", required_argument, 0, O_SEED},       {"profile", no_argument, 0, O_PROFILE},
        {"no-peak", no_argument, 0, O_NO_PEAK},       {"peak-only", no_argument, 0, O_PEAK_ONLY},
        {"json", no_argument, 0, O_JSON},             {"help", no_argument, 0, 'h'},
        {"checkpoint-activations", no_argument, 0, O_CHECKPOINT},
        {0, 0, 0, 0}};
    lora_error err;
    int64_t    v;
    int        c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_METHOD:
            if (!strcmp(optarg, "lora")) o->ap.method = LORA_METHOD_LORA;
            else if (!strcmp(optarg, "adalora")) o->ap.method = LORA_METHOD_ADALORA;
            else if (!strcmp(optarg, "full")) o->ap.method = LORA_METHOD_FULL;
            else if (!strcmp(optarg, "bitfit")) o->ap.method = LORA_METHOD_BITFIT;
            else {
                cli_error("bench", "unknown --method '%s' (lora, adalora, full, bitfit)", optarg);
                return 2;
            }
            break;
        case O_R:
            if (parse_i64("--r", optarg, 1, 1 << 16, &v)) return 2;
            o->ap.r = (int32_t)v;
            break;
        case O_ALPHA:
            if (parse_f("--alpha", optarg, 1e-6, 1e6, &o->ap.alpha)) return 2;
            break;
        case O_TARGETS:
            if (lora_targets_parse(optarg, &o->ap.targets, &err) != LORA_OK) {
                cli_error("bench", "--targets: %s", err.msg);
                return 2;
            }
            break;
        case O_DROPOUT:
            if (parse_f("--dropout", optarg, 0.0, 0.99, &o->ap.dropout)) return 2;
            break;
        case O_BATCH:
            if (parse_i64("--batch", optarg, 1, 1 << 16, &v)) return 2;
            o->B = (int32_t)v;
            break;
        case O_SEQ:
            if (parse_i64("--seq-len", optarg, 1, 1 << 20, &v)) return 2;
            o->T = (int32_t)v;
            break;
        case O_STEPS:
            if (parse_i64("--steps", optarg, 1, 1000000, &o->steps)) return 2;
            break;
        case O_WARMUP:
            if (parse_i64("--warmup", optarg, 0, 1000000, &o->warmup)) return 2;
            break;
        case O_THREADS:
            if (parse_i64("--threads", optarg, 1, 1024, &v)) return 2;
            o->threads = (int)v;
            break;
        case O_SEED:
            if (parse_i64("--seed", optarg, 0, INT64_MAX, &o->seed)) return 2;
            break;
        case O_PROFILE: o->profile = 1; break;
        case O_NO_PEAK: o->peak = 0; break;
        case O_PEAK_ONLY: o->peak_only = 1; break;
        case O_JSON: o->json = 1; break;
        case O_CHECKPOINT: o->checkpoint = 1; break;
        case 'h': bench_usage(stdout); return 0;
        default: bench_usage(stderr); return 2;
        }
    }
    if (optind < argc - 1 || (o->peak_only && optind < argc)) {
        bench_usage(stderr);
        return 2;
    }
    if (optind == argc - 1) o->model = argv[optind];
    return -1;
}

static int peak_only(const bench_opts *o) {
    double fma = lora_machine_fma_gflops(0, PEAK_SECONDS);
    double sg  = lora_machine_sgemm_gflops(SGEMM_N, PEAK_SECONDS);
    if (sg < 0) {
        cli_error("bench", "cannot allocate the sgemm matrices");
        return 1;
    }
    if (!o->json) {
        print_peaks(fma, sg);
        return 0;
    }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "threads", lora_get_threads());
    cJSON_AddNumberToObject(j, "fma_gflops", fma);
    cJSON_AddNumberToObject(j, "sgemm_gflops", sg);
    cJSON_AddNumberToObject(j, "sgemm_n", SGEMM_N);
    return print_json(j);
}

int cmd_bench(int argc, char **argv) {
    bench_opts o;
    memset(&o, 0, sizeof o);
    o.model  = LORA_DEFAULT_MODEL_DIR;
    o.ap     = lora_adapter_params_default();
    o.B      = 4;
    o.steps  = 10;
    o.warmup = 2;
    o.seed   = 1;
    o.peak   = 1;
    int rc   = parse_opts(argc, argv, &o);
    if (rc >= 0) return rc;
    lora_set_threads(o.threads);
    if (o.peak_only) return peak_only(&o);

    bench_result r;
    memset(&r, 0, sizeof r);
    lora_error  err;
    lora_model *m = NULL;
    r.rss_base    = rss_now();
    if (lora_model_load(o.model, &m, &err) != LORA_OK) {
        cli_error("bench", "%s", err.msg);
        return 1;
    }
    const lora_config *cfg = lora_model_config(m);
    if (o.T == 0) o.T = cfg->n_positions < 128 ? cfg->n_positions : 128;
    if (o.T > cfg->n_positions) {
        cli_error("bench", "--seq-len %d exceeds the model's context n_positions=%d", o.T,
                  cfg->n_positions);
        lora_model_free(m);
        return 2;
    }
    if (o.ap.method == LORA_METHOD_ADALORA) { /* the budget schedule spans the run */
        o.ap.adalora.total_step = o.warmup + o.steps;
        if (o.ap.adalora.target_r > o.ap.r) o.ap.adalora.target_r = o.ap.r;
    }
    rc = 1;
    if (!(r.step_s = calloc((size_t)o.steps, sizeof(double)))) {
        cli_error("bench", "out of memory");
        goto done;
    }
    if (lora_model_attach(m, &o.ap, &err) != LORA_OK ||
        lora_estimate_memory(cfg, &o.ap, o.B, o.T, o.checkpoint, &r.est, &err) != LORA_OK ||
        lora_estimate_flops(cfg, &o.ap, o.B, o.T, &r.flops, &err) != LORA_OK) {
        cli_error("bench", "%s", err.msg);
        goto done;
    }
    r.n_params    = lora_model_n_base_params(m);
    r.n_trainable = lora_model_n_trainable_params(m);
    if (run_steps(m, &o, &r)) goto done;
    r.rss_peak = rss_peak(); /* before the peak measurements allocate anything */
    if (o.peak) {
        r.fma_gflops   = lora_machine_fma_gflops(0, PEAK_SECONDS);
        r.sgemm_gflops = lora_machine_sgemm_gflops(SGEMM_N, PEAK_SECONDS);
        if (r.sgemm_gflops < 0) r.sgemm_gflops = 0;
    }
    if (o.json) {
        rc = print_json(json_report(&o, cfg, &r));
    } else {
        print_report(&o, cfg, &r);
        rc = 0;
    }
done:
    free(r.step_s);
    lora_model_free(m);
    return rc;
}
