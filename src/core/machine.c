/*
 * machine.c — what the machine can do at best: the single-precision FMA peak (a loop of
 * independent fused multiply-adds that never leaves the registers) and OpenBLAS sgemm on a
 * square product. Benchmarks divide model FLOPs by these to report utilisation.
 *
 * The FMA loop picks the widest vectors the running CPU has (checked at run time, whatever the
 * build flags): AVX-512F, AVX2 + FMA, else GCC vector arithmetic (a multiply and an add, which
 * the compiler may not fuse under ISO C). Each thread keeps ACC independent accumulators, more
 * than an FMA unit's latency times its throughput, so the units never wait on a result.
 * Not here: the model's FLOP count (peft.c, lora_estimate_flops).
 */
#include "lora.h"

#include "core/profile.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MACHINE_X86 1
#endif

#define ACC 12 /* independent accumulators per thread */

/* Keeps the loops' results alive (the compiler cannot drop a loop whose sum is stored here). */
static volatile float machine_sink;

/* One thread's loop: `iters` rounds of ACC vector FMAs; returns FLOPs per round. */
typedef double (*fma_loop_fn)(long iters);

typedef float v8f __attribute__((vector_size(32)));

static double fma_loop_generic(long iters) {
    v8f acc[ACC], mul, add;
    for (int j = 0; j < 8; j++) {
        mul[j] = 0.999f;
        add[j] = 0.001f;
    }
    for (int k = 0; k < ACC; k++)
        for (int j = 0; j < 8; j++) acc[k][j] = (float)(k + j) * 0.01f;
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < ACC; k++) acc[k] = acc[k] * mul + add;
    float s = 0.0f;
    for (int k = 0; k < ACC; k++)
        for (int j = 0; j < 8; j++) s += acc[k][j];
    machine_sink = s;
    return 2.0 * 8 * ACC; /* a multiply and an add per lane */
}

#ifdef MACHINE_X86
__attribute__((target("avx2,fma"))) static double fma_loop_avx2(long iters) {
    __m256 acc[ACC];
    __m256 mul = _mm256_set1_ps(0.999f), add = _mm256_set1_ps(0.001f);
    for (int k = 0; k < ACC; k++) acc[k] = _mm256_set1_ps((float)k * 0.01f);
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < ACC; k++) acc[k] = _mm256_fmadd_ps(acc[k], mul, add);
    __m256 s = acc[0];
    for (int k = 1; k < ACC; k++) s = _mm256_add_ps(s, acc[k]);
    float out[8];
    _mm256_storeu_ps(out, s);
    machine_sink = out[0] + out[7];
    return 2.0 * 8 * ACC;
}

__attribute__((target("avx512f"))) static double fma_loop_avx512(long iters) {
    __m512 acc[ACC];
    __m512 mul = _mm512_set1_ps(0.999f), add = _mm512_set1_ps(0.001f);
    for (int k = 0; k < ACC; k++) acc[k] = _mm512_set1_ps((float)k * 0.01f);
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < ACC; k++) acc[k] = _mm512_fmadd_ps(acc[k], mul, add);
    __m512 s = acc[0];
    for (int k = 1; k < ACC; k++) s = _mm512_add_ps(s, acc[k]);
    machine_sink = _mm512_reduce_add_ps(s);
    return 2.0 * 16 * ACC;
}
#endif

static fma_loop_fn pick_fma_loop(void) {
#ifdef MACHINE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return fma_loop_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return fma_loop_avx2;
#endif
    return fma_loop_generic;
}

/* Wall seconds for every thread of a team of n to run `iters` rounds; *flops_per_round set. */
static double time_fma_team(fma_loop_fn fn, int n, long iters, double *flops_per_round) {
    double f  = 0.0;
    double t0 = prof_now();
#pragma omp parallel num_threads(n)
    {
        double r = fn(iters);
#pragma omp master
        f = r;
    }
    *flops_per_round = f;
    return prof_now() - t0;
}

double lora_machine_fma_gflops(int n_threads, double seconds) {
    int         n  = n_threads > 0 ? n_threads : lora_get_threads();
    fma_loop_fn fn = pick_fma_loop();
    double      fpr;
    if (seconds <= 0) seconds = 0.5;
    /* calibrate: grow the round count until one run takes a measurable time */
    long   iters = 1L << 14;
    double dt    = time_fma_team(fn, n, iters, &fpr);
    while (dt < 0.02 && iters < (1L << 40)) {
        iters *= 4;
        dt = time_fma_team(fn, n, iters, &fpr);
    }
    int runs = 5;
    long per = (long)((double)iters * (seconds / runs) / (dt > 0 ? dt : 1e-9));
    if (per < iters / 4) per = iters / 4;
    if (per < 1) per = 1;
    double best = 0.0;
    for (int r = 0; r < runs; r++) {
        double t = time_fma_team(fn, n, per, &fpr);
        double g = fpr * (double)per * n / (t > 0 ? t : 1e-9) / 1e9;
        if (g > best) best = g;
    }
    return best;
}

double lora_machine_sgemm_gflops(int32_t n, double seconds) {
    if (n <= 0) return -1.0;
    size_t nn = (size_t)n * (size_t)n;
    float *a = malloc(nn * sizeof(float)), *b = malloc(nn * sizeof(float));
    float *c = malloc(nn * sizeof(float));
    if (!a || !b || !c) {
        free(a);
        free(b);
        free(c);
        return -1.0;
    }
    for (size_t i = 0; i < nn; i++) {
        a[i] = (float)(i % 17) * 0.01f - 0.08f;
        b[i] = (float)(i % 13) * 0.01f - 0.06f;
    }
    if (seconds <= 0) seconds = 0.5;
    double flops = 2.0 * (double)n * (double)n * (double)n, best = 0.0, spent = 0.0;
    int    runs  = 0;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c,
                n); /* warm-up: thread team, page faults */
    while (runs < 3 || (spent < seconds && runs < 1000)) {
        double t0 = prof_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f,
                    c, n);
        double t = prof_now() - t0;
        spent += t;
        runs++;
        double g = flops / (t > 0 ? t : 1e-9) / 1e9;
        if (g > best) best = g;
    }
    machine_sink = c[nn / 2];
    free(a);
    free(b);
    free(c);
    return best;
}
