/*
 * bench_generate.c — greedy generation speed of lora.c, and the machine's memory bandwidth
 * that bounds it. The lora.c side of bench/generate.sh, which runs it interleaved with
 * PyTorch (torch_generate.py) and llama.cpp (llama_generate.c) and prints the table.
 *
 *   bench_generate run MODEL_DIR [--adapter DIR --mode merged|unmerged] [--transposed]
 *                      [options]
 *       Loads the model (with the adapter added by lora_adapter_add, then merged by
 *       lora_model_merge for --mode merged), makes the decoder (with --transposed, with
 *       lora_decoder_set_transposed: a transposed copy of the linears' weights, made before
 *       any timing), runs a short warm-up generation, then --reps
 *       timed generations through the public decoder API: the prompt in one
 *       lora_decoder_feed (prefill), then --new single-token feeds, each of the argmax of the
 *       previous logits (decode). Prints one line per generation:
 *         prefill_tps=X decode_tps=Y tokens=ID,ID,...
 *       (prefill tokens/s = prompt / prefill time; decode tokens/s = new / decode time).
 *   bench_generate adapter MODEL_DIR OUT_DIR [--r R] [--seed S]
 *       Writes a LoRA adapter (q,v, rank R = 8, alpha 16) whose A keeps its Kaiming init and
 *       whose B is filled with N(0, 0.02) values, so that the adapter changes the logits.
 *   bench_generate bytes MODEL_DIR
 *       Weight bytes read per generated token: every linear weight of every layer and the
 *       tied LM head once, in F32: 4 · (L · (C·3C + C·C + 2·C·F) + V·C).
 *   bench_generate triad [--mib N] [--reps N] [--threads N]
 *       A STREAM-style triad a[i] = b[i] + s·c[i] over three arrays of N MiB of doubles each
 *       (default 256, far above a usual L3), on --threads threads (default 2), best of --reps
 *       (default 10), counting 3 · 8 bytes per element as STREAM does; once on 4 KiB pages and
 *       once on arrays advised to transparent huge pages (on a virtual machine a 4 KiB page
 *       walk is costly enough to hide part of the memory's bandwidth). Prints
 *       triad_gbs=X (the higher) triad_4k_gbs=X triad_huge_gbs=X.
 *
 * Options of run: --prompt N (64) --new N (128) --reps N (1) --warmup N (8 new tokens)
 * --threads N (2). The prompt is ids (37 i + 11) mod V, as in bench_merge and the other
 * implementations of bench/generate.sh. Not a test: it checks only that every call succeeds.
 */
#include "lora.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void check(lora_status st, const lora_error *err) {
    if (st == LORA_OK) return;
    fprintf(stderr, "bench_generate: %s\n", err->msg);
    exit(1);
}

static int usage(void) {
    fprintf(stderr,
            "usage: bench_generate run MODEL_DIR [--adapter DIR --mode merged|unmerged]\n"
            "                          [--transposed] [--prompt N] [--new N] [--reps N]\n"
            "                          [--warmup N] [--threads N]\n"
            "       bench_generate adapter MODEL_DIR OUT_DIR [--r R] [--seed S]\n"
            "       bench_generate bytes MODEL_DIR\n"
            "       bench_generate triad [--mib N] [--reps N] [--threads N]\n");
    return 2;
}

/* A positive integer option value, or exit 2. */
static int pos_int(const char *s, const char *what) {
    char *end;
    long  v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < 1 || v > 1 << 30) {
        fprintf(stderr, "bench_generate: %s=%s must be a positive integer\n", what, s);
        exit(2);
    }
    return (int)v;
}

/* ---- run ---- */

typedef struct gen_opts {
    int prompt, n_new, reps, warmup, threads;
} gen_opts;

/* One generation: prefill, then n_new single-token feeds; times in seconds. */
static void generate(lora_decoder *d, const int32_t *prompt, int n_prompt, int n_new,
                     int32_t V, int32_t *out, double *t_prefill, double *t_decode) {
    lora_error err;
    lora_decoder_reset(d, -1);
    double t0 = now_s();
    check(lora_decoder_feed(d, 0, prompt, n_prompt, &err), &err);
    double t1 = now_s();
    for (int i = 0; i < n_new; i++) {
        int32_t next = lora_argmax(lora_decoder_logits(d, 0), V);
        out[i]       = next;
        check(lora_decoder_feed(d, 0, &next, 1, &err), &err);
    }
    double t2  = now_s();
    *t_prefill = t1 - t0;
    *t_decode  = t2 - t1;
}

static int cmd_run(int argc, char **argv) {
    static const struct option longs[] = {
        {"adapter", required_argument, 0, 'a'}, {"mode", required_argument, 0, 'm'},
        {"prompt", required_argument, 0, 'p'},  {"new", required_argument, 0, 'n'},
        {"reps", required_argument, 0, 'r'},    {"warmup", required_argument, 0, 'w'},
        {"threads", required_argument, 0, 't'}, {"transposed", no_argument, 0, 'T'},
        {0, 0, 0, 0}};
    gen_opts    o       = {64, 128, 1, 8, 2};
    const char *adapter = NULL, *mode = "unmerged";
    int         c, transposed = 0;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case 'a': adapter = optarg; break;
        case 'm': mode = optarg; break;
        case 'p': o.prompt = pos_int(optarg, "--prompt"); break;
        case 'n': o.n_new = pos_int(optarg, "--new"); break;
        case 'r': o.reps = pos_int(optarg, "--reps"); break;
        case 'w': o.warmup = pos_int(optarg, "--warmup"); break;
        case 't': o.threads = pos_int(optarg, "--threads"); break;
        case 'T': transposed = 1; break;
        default: return usage();
        }
    }
    if (optind != argc - 1) return usage();
    int merged = !strcmp(mode, "merged");
    if (!merged && strcmp(mode, "unmerged")) return usage();

    lora_set_threads(o.threads);
    lora_error  err;
    lora_model *m = NULL;
    check(lora_model_load(argv[optind], &m, &err), &err);
    if (adapter) {
        check(lora_adapter_add(m, adapter, "bench", 1.0f, &err), &err);
        if (merged) check(lora_model_merge(m, &err), &err);
    }
    const lora_config *cfg = lora_model_config(m);
    int32_t            V   = cfg->vocab_size;
    if (o.prompt + o.n_new > cfg->n_positions) {
        fprintf(stderr, "bench_generate: prompt %d + new %d exceed the context %d\n", o.prompt,
                o.n_new, (int)cfg->n_positions);
        return 1;
    }
    int32_t *prompt = malloc((size_t)o.prompt * sizeof *prompt);
    int32_t *out    = malloc((size_t)o.n_new * sizeof *out);
    if (!prompt || !out) {
        fprintf(stderr, "bench_generate: out of memory\n");
        return 1;
    }
    for (int i = 0; i < o.prompt; i++) prompt[i] = (int32_t)((37L * i + 11) % V);

    lora_decoder *d = NULL;
    check(lora_decoder_init(m, 1, o.prompt + o.n_new, &d, &err), &err);
    if (transposed) check(lora_decoder_set_transposed(d, 1, &err), &err);
    double tp, td;
    generate(d, prompt, o.prompt, o.warmup < o.n_new ? o.warmup : o.n_new, V, out, &tp, &td);
    for (int r = 0; r < o.reps; r++) {
        generate(d, prompt, o.prompt, o.n_new, V, out, &tp, &td);
        printf("prefill_tps=%.3f decode_tps=%.3f tokens=", o.prompt / tp, o.n_new / td);
        for (int i = 0; i < o.n_new; i++) printf(i ? ",%d" : "%d", (int)out[i]);
        printf("\n");
        fflush(stdout);
    }
    lora_decoder_free(d);
    lora_model_free(m);
    free(prompt);
    free(out);
    return 0;
}

/* ---- adapter ---- */

/* N(0, 1) from a 64-bit LCG through Box–Muller (deterministic, no libc state). */
static double gauss(uint64_t *s) {
    double u[2];
    for (int k = 0; k < 2; k++) {
        *s   = *s * 6364136223846793005ull + 1442695040888963407ull;
        u[k] = ((double)(*s >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    }
    return sqrt(-2.0 * log(u[0])) * cos(6.283185307179586 * u[1]);
}

static int cmd_adapter(int argc, char **argv) {
    static const struct option longs[] = {
        {"r", required_argument, 0, 'r'}, {"seed", required_argument, 0, 's'}, {0, 0, 0, 0}};
    int      r    = 8;
    uint64_t seed = 7;
    int      c;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case 'r': r = pos_int(optarg, "--r"); break;
        case 's': seed = (uint64_t)pos_int(optarg, "--seed"); break;
        default: return usage();
        }
    }
    if (optind != argc - 2) return usage();
    lora_error  err;
    lora_model *m = NULL;
    check(lora_model_load(argv[optind], &m, &err), &err);
    lora_adapter_params p = lora_adapter_params_default();
    p.method              = LORA_METHOD_LORA;
    p.r                   = r;
    p.alpha               = 16.0f;
    p.dropout             = 0.0f;
    p.targets             = LORA_TARGET_Q | LORA_TARGET_V;
    p.seed                = seed;
    check(lora_model_attach(m, &p, &err), &err);
    uint64_t s = seed;
    for (int32_t i = 0; i < lora_model_n_trainable(m); i++) {
        lora_tensor_info t;
        if (lora_model_trainable(m, i, &t) != LORA_OK) return 1;
        size_t n = strlen(t.name);
        if (n < 7 || strcmp(t.name + n - 7, ".lora_B")) continue;
        for (int64_t j = 0; j < t.numel; j++) t.data[j] = (float)(0.02 * gauss(&s));
    }
    check(lora_adapter_save(m, argv[optind + 1], argv[optind], &err), &err);
    printf("adapter %s: LoRA r=%d alpha=16 on q,v, %lld parameters\n", argv[optind + 1], r,
           (long long)lora_model_n_trainable_params(m));
    lora_model_free(m);
    return 0;
}

/* ---- bytes ---- */

static int cmd_bytes(int argc, char **argv) {
    if (argc != 2) return usage();
    lora_error  err;
    lora_model *m = NULL;
    check(lora_model_load(argv[1], &m, &err), &err);
    const lora_config *c = lora_model_config(m);
    double             C = c->n_embd, F = c->n_inner, V = c->vocab_size, L = c->n_layer;
    double             per_layer = C * 3 * C + C * C + 2 * C * F;
    double             bytes     = 4.0 * (L * per_layer + V * C);
    printf("bytes_per_token=%.0f layers=%d n_embd=%d n_inner=%d vocab=%d\n", bytes,
           (int)c->n_layer, (int)c->n_embd, (int)c->n_inner, (int)c->vocab_size);
    lora_model_free(m);
    return 0;
}

/* ---- triad ---- */

/*
 * n doubles, 2 MiB aligned; with huge = 1 the range is advised to be backed by transparent huge
 * pages (MADV_HUGEPAGE), so that the triad measures the memory rather than the page walks of
 * 4 KiB pages. NULL on failure.
 */
static double *triad_alloc(long n, int huge) {
    size_t align = (size_t)2 << 20;
    size_t bytes = ((size_t)n * sizeof(double) + align - 1) / align * align;
    void  *p     = NULL;
    if (posix_memalign(&p, align, bytes) != 0) return NULL;
#ifdef MADV_HUGEPAGE
    if (huge) madvise(p, bytes, MADV_HUGEPAGE); /* advice only: ignored where unsupported */
#else
    (void)huge;
#endif
    return p;
}

/* Best triad time of reps over fresh arrays of n doubles; 0 on allocation failure. */
static double triad_best(long n, int reps, int threads, int huge) {
    double *a = triad_alloc(n, huge), *b = triad_alloc(n, huge), *c = triad_alloc(n, huge);
    double  best = 0.0;
    if (a && b && c) {
        const double s = 3.0;
        /* first touch by the threads that will stream each part */
#pragma omp parallel for num_threads(threads) schedule(static)
        for (long i = 0; i < n; i++) a[i] = 0.0, b[i] = 1.0, c[i] = 2.0;
        best = INFINITY;
        for (int r = 0; r < reps; r++) {
            double t0 = now_s();
#pragma omp parallel for num_threads(threads) schedule(static)
            for (long i = 0; i < n; i++) a[i] = b[i] + s * c[i];
            double t = now_s() - t0;
            if (t < best) best = t;
        }
        /* keep the result alive, and check it */
        for (long i = 0; i < n; i += 4096)
            if (a[i] != 7.0) best = -1.0;
    }
    free(a);
    free(b);
    free(c);
    return best;
}

static int cmd_triad(int argc, char **argv) {
    static const struct option longs[] = {{"mib", required_argument, 0, 'm'},
                                          {"reps", required_argument, 0, 'r'},
                                          {"threads", required_argument, 0, 't'},
                                          {0, 0, 0, 0}};
    int mib = 256, reps = 10, threads = 2, c;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case 'm': mib = pos_int(optarg, "--mib"); break;
        case 'r': reps = pos_int(optarg, "--reps"); break;
        case 't': threads = pos_int(optarg, "--threads"); break;
        default: return usage();
        }
    }
    if (optind != argc) return usage();
    long   n = (long)mib * 1048576L / (long)sizeof(double);
    double t[2];
    for (int huge = 0; huge < 2; huge++) {
        t[huge] = triad_best(n, reps, threads, huge);
        if (t[huge] == 0.0) {
            fprintf(stderr, "bench_generate: cannot allocate 3 x %d MiB\n", mib);
            return 1;
        }
        if (t[huge] < 0.0) {
            fprintf(stderr, "bench_generate: the triad's result is wrong\n");
            return 1;
        }
    }
    double gbs4k   = 3.0 * 8.0 * (double)n / t[0] / 1e9;
    double gbshuge = 3.0 * 8.0 * (double)n / t[1] / 1e9;
    printf("triad_gbs=%.3f triad_4k_gbs=%.3f triad_huge_gbs=%.3f mib=%d threads=%d reps=%d\n",
           gbs4k > gbshuge ? gbs4k : gbshuge, gbs4k, gbshuge, mib, threads, reps);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    const char *cmd = argv[1];
    /* getopt_long starts after the subcommand */
    argv[1] = argv[0];
    if (!strcmp(cmd, "run")) return cmd_run(argc - 1, argv + 1);
    if (!strcmp(cmd, "adapter")) return cmd_adapter(argc - 1, argv + 1);
    if (!strcmp(cmd, "bytes")) return cmd_bytes(argc - 1, argv + 1);
    if (!strcmp(cmd, "triad")) return cmd_triad(argc - 1, argv + 1);
    return usage();
}
