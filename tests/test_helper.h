/*
 * test_helper.h — a minimal test harness: test_cond() records a pass or a failure with its
 * location, test_report() prints "N passed, N failed" and returns the process exit code.
 */
#ifndef LORA_TEST_HELPER_H
#define LORA_TEST_HELPER_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

static int test_passed_count = 0;
static int test_failed_count = 0;

#define test_cond(descr, cond)                                                                 \
    do {                                                                                       \
        if (cond) {                                                                            \
            test_passed_count++;                                                               \
        } else {                                                                               \
            test_failed_count++;                                                               \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, (descr));                  \
        }                                                                                      \
    } while (0)

/* Like test_cond, with a printf-style detail line on failure. */
#define test_condf(cond, ...)                                                                  \
    do {                                                                                       \
        if (cond) {                                                                            \
            test_passed_count++;                                                               \
        } else {                                                                               \
            test_failed_count++;                                                               \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                               \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fputc('\n', stderr);                                                               \
        }                                                                                      \
    } while (0)

static inline double test_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || d != d) m = d;
    }
    return m;
}

/* ‖a − b‖ / max(‖b‖, tiny) */
static inline double test_rel_norm_diff(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return sqrt(num) / (den > 1e-300 ? sqrt(den) : 1e-150);
}

/* UNDER_ASAN: AddressSanitizer reserves address space of its own, so capping RLIMIT_AS (the
 * allocation-failure tests) does not work under it. */
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

/* Caps this process's address space at what it maps now plus slack bytes, so that larger
 * allocations fail (run it in a forked child). Returns 0 on success. */
static inline int test_cap_memory(size_t slack) {
    long  pages = 0;
    FILE *f     = fopen("/proc/self/statm", "r");
    if (!f) return -1;
    int ok = fscanf(f, "%ld", &pages) == 1;
    fclose(f);
    if (!ok) return -1;
    rlim_t        cap = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + (rlim_t)slack;
    struct rlimit rl  = {cap, cap};
    return setrlimit(RLIMIT_AS, &rl);
}

static inline int test_report(const char *name) {
    printf("%s: %d passed, %d failed\n", name, test_passed_count, test_failed_count);
    return test_failed_count == 0 ? 0 : 1;
}

#endif
