/*
 * test_kernels.c — the CPU kernels (src/core/kernels.h).
 *
 * Two checks per kernel: the fast version against its naive reference on random inputs (several
 * shapes, odd sizes included, every forward output and every backward output, accumulation into
 * pre-filled gradients, NULL gradients), and each reference backward against central finite
 * differences of L = Σ out ⊙ G (random G), using the reference forward. Non-BLAS kernels must
 * also give bit-identical results with 1 and 2 threads.
 */
#include "core/kernels.h"
#include "test_helper.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// B = batch, T = time, C = channels, V = vocab, NH = heads, N = rows, OC = out channels

#define TOL_FAST 1e-5 /* fast vs reference, relative L2 */
#define TOL_FD   3e-3 /* reference backward vs finite differences, relative L2 */
#define FD_STEP  1e-3f

/* ---- helpers ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rng_u32(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

/* uniform in [-a, a) */
static float rng_f(float a) {
    return a * (2.0f * (float)(rng_u32() >> 8) / 16777216.0f - 1.0f);
}

static float *fmake(size_t n, float a) {
    float *x = malloc((n ? n : 1) * sizeof *x);
    if (!x) abort();
    for (size_t i = 0; i < n; i++) x[i] = rng_f(a);
    return x;
}

static float *fcopy(const float *src, size_t n) {
    float *x = malloc((n ? n : 1) * sizeof *x);
    if (!x) abort();
    memcpy(x, src, n * sizeof *x);
    return x;
}

static float *ffill(size_t n, float v) {
    float *x = malloc((n ? n : 1) * sizeof *x);
    if (!x) abort();
    for (size_t i = 0; i < n; i++) x[i] = v;
    return x;
}

static double dot_fd(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

static int bits_equal(const float *a, const float *b, size_t n) {
    return memcmp(a, b, n * sizeof *a) == 0;
}

/* fast vs reference by relative L2 norm; sub (may be NULL) names the output within what */
static void check_close(const char *what, const char *sub, const float *fast, const float *ref,
                        size_t n, double tol) {
    double e = test_rel_norm_diff(fast, ref, n);
    test_condf(e <= tol, "%s%s%s: rel diff %.3g > %.1g", what, sub ? " " : "", sub ? sub : "", e,
               tol);
}

/*
 * Central differences of loss() with respect to every element of p (n floats), compared with
 * the analytic gradient an by relative L2 norm.
 */
typedef double (*loss_fn)(void *ctx);

static void check_fd(const char *what, float *p, size_t n, const float *an, loss_fn loss,
                     void *ctx, float h) {
    float *fd = malloc((n ? n : 1) * sizeof *fd);
    if (!fd) abort();
    for (size_t i = 0; i < n; i++) {
        float  keep = p[i];
        p[i]        = keep + h;
        double lp   = loss(ctx);
        p[i]        = keep - h;
        double lm   = loss(ctx);
        p[i]        = keep;
        fd[i]       = (float)((lp - lm) / (2.0 * h));
    }
    double e = test_rel_norm_diff(an, fd, n);
    test_condf(e <= TOL_FD, "%s vs finite differences: rel diff %.3g", what, e);
    free(fd);
}

/* ---- encoder ---- */

struct enc_ctx {
    float         *out, *wte, *wpe, *G;
    const int32_t *inp;
    int            B, T, C;
};

static double enc_loss(void *p) {
    struct enc_ctx *c = p;
    encoder_forward_ref(c->out, c->inp, c->wte, c->wpe, c->B, c->T, c->C);
    return dot_fd(c->out, c->G, (size_t)c->B * c->T * c->C);
}

static void test_encoder(int B, int T, int C, int V, int do_fd) {
    size_t   n   = (size_t)B * T * C;
    int32_t *inp = malloc((size_t)B * T * sizeof *inp);
    if (!inp) abort();
    for (int i = 0; i < B * T; i++) inp[i] = (int32_t)(rng_u32() % (uint32_t)V);
    inp[0] = inp[B * T - 1]; /* at least one repeated token */
    float *wte = fmake((size_t)V * C, 1), *wpe = fmake((size_t)T * C, 1);
    float *out = fmake(n, 1), *out_r = fmake(n, 1), *dout = fmake(n, 1);

    encoder_forward(out, inp, wte, wpe, B, T, C);
    encoder_forward_ref(out_r, inp, wte, wpe, B, T, C);
    test_cond("encoder_forward == ref", bits_equal(out, out_r, n));

    float *dwte = fmake((size_t)V * C, 1), *dwpe = fmake((size_t)T * C, 1);
    float *dwte_r = fcopy(dwte, (size_t)V * C), *dwpe_r = fcopy(dwpe, (size_t)T * C);
    encoder_backward(dwte, dwpe, dout, inp, B, T, C);
    encoder_backward_ref(dwte_r, dwpe_r, dout, inp, B, T, C);
    check_close("encoder_backward dwte", NULL, dwte, dwte_r, (size_t)V * C, TOL_FAST);
    check_close("encoder_backward dwpe", NULL, dwpe, dwpe_r, (size_t)T * C, TOL_FAST);

    /* NULL gradients: the other one is still computed, nothing else is touched */
    float *a = fcopy(dwte_r, (size_t)V * C), *b = fcopy(dwpe_r, (size_t)T * C);
    encoder_backward(a, NULL, dout, inp, B, T, C);
    encoder_backward(NULL, b, dout, inp, B, T, C);
    encoder_backward(dwte_r, dwpe_r, dout, inp, B, T, C);
    test_cond("encoder_backward dwte only", bits_equal(a, dwte_r, (size_t)V * C));
    test_cond("encoder_backward dwpe only", bits_equal(b, dwpe_r, (size_t)T * C));

    /* thread count does not change a bit */
    float *e1 = ffill((size_t)V * C, 0), *p1 = ffill((size_t)T * C, 0);
    float *e2 = ffill((size_t)V * C, 0), *p2 = ffill((size_t)T * C, 0);
    int    nt = omp_get_max_threads();
    omp_set_num_threads(1);
    encoder_backward(e1, p1, dout, inp, B, T, C);
    omp_set_num_threads(nt > 1 ? nt : 2);
    encoder_backward(e2, p2, dout, inp, B, T, C);
    omp_set_num_threads(nt);
    test_cond("encoder_backward deterministic across thread counts",
              bits_equal(e1, e2, (size_t)V * C) && bits_equal(p1, p2, (size_t)T * C));

    /* finite differences of the reference (gradients from zero) */
    float *gte = ffill((size_t)V * C, 0), *gpe = ffill((size_t)T * C, 0);
    encoder_backward_ref(gte, gpe, dout, inp, B, T, C);
    if (do_fd) {
        struct enc_ctx ctx = {out_r, wte, wpe, dout, inp, B, T, C};
        check_fd("encoder_backward_ref dwte", wte, (size_t)V * C, gte, enc_loss, &ctx, FD_STEP);
        check_fd("encoder_backward_ref dwpe", wpe, (size_t)T * C, gpe, enc_loss, &ctx, FD_STEP);
    }

    free(inp), free(wte), free(wpe), free(out), free(out_r), free(dout), free(dwte), free(dwpe);
    free(dwte_r), free(dwpe_r), free(a), free(b), free(gte), free(gpe), free(e1), free(p1);
    free(e2), free(p2);
}

/* ---- layer norm ---- */

struct ln_ctx {
    float *out, *mean, *rstd, *inp, *w, *b, *G;
    int    N, C;
};

static double ln_loss(void *p) {
    struct ln_ctx *c = p;
    layernorm_forward_ref(c->out, c->mean, c->rstd, c->inp, c->w, c->b, c->N, c->C, 1e-5f);
    return dot_fd(c->out, c->G, (size_t)c->N * c->C);
}

static void test_layernorm(int N, int C, int do_fd) {
    size_t n   = (size_t)N * C;
    float *inp = fmake(n, 2), *w = fmake(C, 1), *b = fmake(C, 1), *dout = fmake(n, 1);
    for (size_t i = 0; i < n; i++) inp[i] += 3.0f; /* an offset makes the mean matter */
    float *out = fmake(n, 1), *mean = fmake(N, 1), *rstd = fmake(N, 1);
    float *out_r = fmake(n, 1), *mean_r = fmake(N, 1), *rstd_r = fmake(N, 1);

    layernorm_forward(out, mean, rstd, inp, w, b, N, C, 1e-5f);
    layernorm_forward_ref(out_r, mean_r, rstd_r, inp, w, b, N, C, 1e-5f);
    check_close("layernorm_forward out", NULL, out, out_r, n, TOL_FAST);
    check_close("layernorm_forward mean", NULL, mean, mean_r, N, TOL_FAST);
    check_close("layernorm_forward rstd", NULL, rstd, rstd_r, N, TOL_FAST);

    float *dinp = fmake(n, 1), *dw = fmake(C, 1), *db = fmake(C, 1);
    float *dinp_r = fcopy(dinp, n), *dw_r = fcopy(dw, C), *db_r = fcopy(db, C);
    float *dinp2 = fcopy(dinp, n);
    layernorm_backward(dinp, dw, db, dout, inp, w, mean_r, rstd_r, N, C);
    layernorm_backward_ref(dinp_r, dw_r, db_r, dout, inp, w, mean_r, rstd_r, N, C);
    check_close("layernorm_backward dinp", NULL, dinp, dinp_r, n, TOL_FAST);
    check_close("layernorm_backward dw", NULL, dw, dw_r, C, TOL_FAST);
    check_close("layernorm_backward db", NULL, db, db_r, C, TOL_FAST);

    /* frozen w and b: dinp is identical, nothing else written */
    layernorm_backward(dinp2, NULL, NULL, dout, inp, w, mean_r, rstd_r, N, C);
    test_cond("layernorm_backward dw=db=NULL dinp", bits_equal(dinp2, dinp, n));

    /* thread count does not change a bit */
    float *d1 = ffill(n, 0), *w1 = ffill(C, 0), *b1 = ffill(C, 0);
    float *d2 = ffill(n, 0), *w2 = ffill(C, 0), *b2 = ffill(C, 0);
    int    nt = omp_get_max_threads();
    omp_set_num_threads(1);
    layernorm_backward(d1, w1, b1, dout, inp, w, mean_r, rstd_r, N, C);
    omp_set_num_threads(nt > 1 ? nt : 2);
    layernorm_backward(d2, w2, b2, dout, inp, w, mean_r, rstd_r, N, C);
    omp_set_num_threads(nt);
    test_cond("layernorm_backward deterministic across thread counts",
              bits_equal(d1, d2, n) && bits_equal(w1, w2, C) && bits_equal(b1, b2, C));

    if (do_fd) {
        float *gi = ffill(n, 0), *gw = ffill(C, 0), *gb = ffill(C, 0);
        layernorm_backward_ref(gi, gw, gb, dout, inp, w, mean_r, rstd_r, N, C);
        struct ln_ctx ctx = {out_r, mean_r, rstd_r, inp, w, b, dout, N, C};
        check_fd("layernorm_backward_ref dinp", inp, n, gi, ln_loss, &ctx, FD_STEP);
        check_fd("layernorm_backward_ref dw", w, C, gw, ln_loss, &ctx, FD_STEP);
        check_fd("layernorm_backward_ref db", b, C, gb, ln_loss, &ctx, FD_STEP);
        free(gi), free(gw), free(gb);
    }
    free(inp), free(w), free(b), free(dout), free(out), free(mean), free(rstd), free(out_r);
    free(mean_r), free(rstd_r), free(dinp), free(dw), free(db), free(dinp_r), free(dw_r);
    free(db_r), free(dinp2), free(d1), free(w1), free(b1), free(d2), free(w2), free(b2);
}

/* ---- gemm ---- */

static void test_gemm(int transA, int transB, int M, int N, int K, float beta) {
    /* stored shapes with padding: leading dimensions exceed the logical widths */
    int    arows = transA ? K : M, acols = transA ? M : K;
    int    brows = transB ? N : K, bcols = transB ? K : N;
    int    lda = acols + 3, ldb = bcols + 5, ldc = N + 2;
    float *A = fmake((size_t)arows * lda, 1), *Bm = fmake((size_t)brows * ldb, 1);
    float *Cf = fmake((size_t)M * ldc, 1);
    if (beta == 0.0f) {
        for (int i = 0; i < M; i++) {
            for (int j = 0; j < N; j++) Cf[(size_t)i * ldc + j] = NAN; /* must be ignored */
        }
    }
    float *Cr = fcopy(Cf, (size_t)M * ldc), *C0 = fcopy(Cf, (size_t)M * ldc);
    gemm(transA, transB, M, N, K, 0.75f, A, lda, Bm, ldb, beta, Cf, ldc);
    gemm_ref(transA, transB, M, N, K, 0.75f, A, lda, Bm, ldb, beta, Cr, ldc);

    int pad_ok = 1;
    for (int i = 0; i < M; i++) {
        for (int j = N; j < ldc; j++) {
            size_t k = (size_t)i * ldc + j;
            pad_ok &= bits_equal(&Cf[k], &C0[k], 1) && bits_equal(&Cr[k], &C0[k], 1);
        }
    }
    char what[96];
    snprintf(what, sizeof what, "gemm tA=%d tB=%d M=%d N=%d K=%d beta=%g", transA, transB, M, N,
             K, (double)beta);
    check_close(what, NULL, Cf, Cr, (size_t)M * ldc, TOL_FAST);
    test_condf(pad_ok, "%s: columns beyond N were written", what);

    /* the reference itself: element (0,0) by hand */
    double acc = 0.0;
    for (int k = 0; k < K; k++) {
        float a = transA ? A[(size_t)k * lda] : A[k];
        float b = transB ? Bm[k] : Bm[(size_t)k * ldb];
        acc += (double)a * b;
    }
    double want = 0.75 * acc + (beta == 0.0f ? 0.0 : beta * (double)C0[0]);
    test_condf(fabs(Cr[0] - want) <= 1e-5 * (1.0 + fabs(want)), "%s: gemm_ref (0,0)", what);
    free(A), free(Bm), free(Cf), free(Cr), free(C0);
}

/*
 * The matrix-vector products of gemm (M = 1 or N = 1, both stored layouts of the matrix): the
 * same bits with 1 and 2 threads, at a size that splits the matrix between the threads (the
 * widths are not multiples of a cache line, the depth not of the kernels' unrolling).
 */
static void test_gemv_threads(int transA, int transB, int M, int N, int K, float beta) {
    int    arows = transA ? K : M, acols = transA ? M : K;
    int    brows = transB ? N : K, bcols = transB ? K : N;
    int    lda = acols, ldb = bcols, ldc = N;
    float *A = fmake((size_t)arows * lda, 1), *Bm = fmake((size_t)brows * ldb, 1);
    float *C1 = fmake((size_t)M * ldc, 1), *C2 = fcopy(C1, (size_t)M * ldc);
    float *C5 = fcopy(C1, (size_t)M * ldc);
    int    nt = omp_get_max_threads();
    omp_set_num_threads(1);
    gemm(transA, transB, M, N, K, 1.25f, A, lda, Bm, ldb, beta, C1, ldc);
    omp_set_num_threads(nt > 1 ? nt : 2);
    gemm(transA, transB, M, N, K, 1.25f, A, lda, Bm, ldb, beta, C2, ldc);
    omp_set_num_threads(5); /* more threads than the kernel has row parts */
    gemm(transA, transB, M, N, K, 1.25f, A, lda, Bm, ldb, beta, C5, ldc);
    omp_set_num_threads(nt);
    test_condf(bits_equal(C1, C2, (size_t)M * ldc) && bits_equal(C1, C5, (size_t)M * ldc),
               "gemm tA=%d tB=%d M=%d N=%d K=%d beta=%g deterministic across thread counts",
               transA, transB, M, N, K, (double)beta);
    free(A), free(Bm), free(C1), free(C2), free(C5);
}

/*
 * One row times a (K, N) weight whose rows start off floats past a cache-line boundary, N a
 * multiple of 16 (every row at the same offset: the kernel does the columns before the first
 * boundary apart), against the reference, and the same bits with 1 and 2 threads.
 */
static void test_gemv_offset(int N, int K, int off) {
    float *buf = fmake((size_t)K * N + 16, 1), *x = fmake((size_t)K, 1);
    float *W = buf + off, *y1 = fmake((size_t)N, 1), *y2 = fcopy(y1, (size_t)N);
    float *yr = fcopy(y1, (size_t)N);
    int    nt = omp_get_max_threads();
    omp_set_num_threads(1);
    gemm(0, 0, 1, N, K, 0.5f, x, K, W, N, 1.0f, y1, N);
    omp_set_num_threads(nt > 1 ? nt : 2);
    gemm(0, 0, 1, N, K, 0.5f, x, K, W, N, 1.0f, y2, N);
    omp_set_num_threads(nt);
    gemm_ref(0, 0, 1, N, K, 0.5f, x, K, W, N, 1.0f, yr, N);
    char what[96];
    snprintf(what, sizeof what, "gemm x(1,%d) W(%d,%d) at +%d floats", K, K, N, off);
    check_close(what, NULL, y1, yr, (size_t)N, TOL_FAST);
    test_condf(bits_equal(y1, y2, (size_t)N), "%s: deterministic across thread counts", what);
    free(buf), free(x), free(y1), free(y2), free(yr);
}

/* ---- matmul ---- */

struct mm_ctx {
    float *out, *inp, *w, *bias, *G;
    int    N, C, OC;
};

static double mm_loss(void *p) {
    struct mm_ctx *c = p;
    matmul_forward_ref(c->out, c->inp, c->w, c->bias, c->N, c->C, c->OC);
    return dot_fd(c->out, c->G, (size_t)c->N * c->OC);
}

static void test_matmul(int N, int C, int OC, int do_fd) {
    size_t ni = (size_t)N * C, no = (size_t)N * OC, nw = (size_t)C * OC;
    float *inp = fmake(ni, 1), *w = fmake(nw, 1), *bias = fmake(OC, 1), *dout = fmake(no, 1);
    float *out = fmake(no, 1), *out_r = fmake(no, 1);

    matmul_forward(out, inp, w, bias, N, C, OC);
    matmul_forward_ref(out_r, inp, w, bias, N, C, OC);
    check_close("matmul_forward", NULL, out, out_r, no, TOL_FAST);
    matmul_forward(out, inp, w, NULL, N, C, OC);
    matmul_forward_ref(out_r, inp, w, NULL, N, C, OC);
    check_close("matmul_forward bias=NULL", NULL, out, out_r, no, TOL_FAST);

    float *dinp = fmake(ni, 1), *dw = fmake(nw, 1), *db = fmake(OC, 1);
    float *dinp_r = fcopy(dinp, ni), *dw_r = fcopy(dw, nw), *db_r = fcopy(db, OC);
    float *dinp2 = fcopy(dinp, ni), *dw2 = fcopy(dw, nw), *db2 = fcopy(db, OC);
    matmul_backward(dinp, dw, db, dout, inp, w, N, C, OC);
    matmul_backward_ref(dinp_r, dw_r, db_r, dout, inp, w, N, C, OC);
    check_close("matmul_backward dinp", NULL, dinp, dinp_r, ni, TOL_FAST);
    check_close("matmul_backward dw", NULL, dw, dw_r, nw, TOL_FAST);
    check_close("matmul_backward db", NULL, db, db_r, OC, TOL_FAST);

    /* one gradient at a time: a frozen linear computes dinp only */
    matmul_backward(dinp2, NULL, NULL, dout, inp, w, N, C, OC);
    matmul_backward(NULL, dw2, NULL, dout, inp, w, N, C, OC);
    matmul_backward(NULL, NULL, db2, dout, inp, w, N, C, OC);
    check_close("matmul_backward dinp only", NULL, dinp2, dinp_r, ni, TOL_FAST);
    check_close("matmul_backward dw only", NULL, dw2, dw_r, nw, TOL_FAST);
    check_close("matmul_backward db only", NULL, db2, db_r, OC, TOL_FAST);

    if (do_fd) {
        float *gi = ffill(ni, 0), *gw = ffill(nw, 0), *gb = ffill(OC, 0);
        matmul_backward_ref(gi, gw, gb, dout, inp, w, N, C, OC);
        struct mm_ctx ctx = {out_r, inp, w, bias, dout, N, C, OC};
        check_fd("matmul_backward_ref dinp", inp, ni, gi, mm_loss, &ctx, FD_STEP);
        check_fd("matmul_backward_ref dw", w, nw, gw, mm_loss, &ctx, FD_STEP);
        check_fd("matmul_backward_ref db", bias, OC, gb, mm_loss, &ctx, FD_STEP);
        free(gi), free(gw), free(gb);
    }
    free(inp), free(w), free(bias), free(dout), free(out), free(out_r), free(dinp), free(dw);
    free(db), free(dinp_r), free(dw_r), free(db_r), free(dinp2), free(dw2), free(db2);
}

/* ---- matmul with a transposed weight, and the transpose ---- */

/*
 * matmul_forward_t against its reference and against matmul_forward on the untransposed
 * weight (with and without bias), and the same bits with 1, 2 and 5 threads.
 */
static void test_matmul_t(int N, int C, int OC) {
    size_t ni = (size_t)N * C, no = (size_t)N * OC, nw = (size_t)C * OC;
    float *inp = fmake(ni, 1), *w = fmake(nw, 1), *wt = fmake(nw, 1), *bias = fmake(OC, 1);
    float *out = fmake(no, 1), *out_r = fmake(no, 1), *out_w = fmake(no, 1);
    matrix_transpose_ref(wt, w, C, OC);
    char what[96];
    for (int b = 0; b < 2; b++) {
        const float *bb = b ? bias : NULL;
        snprintf(what, sizeof what, "matmul_forward_t N=%d C=%d OC=%d bias=%d", N, C, OC, b);
        matmul_forward_t(out, inp, wt, bb, N, C, OC);
        matmul_forward_t_ref(out_r, inp, wt, bb, N, C, OC);
        check_close(what, "vs ref", out, out_r, no, TOL_FAST);
        matmul_forward(out_w, inp, w, bb, N, C, OC);
        check_close(what, "vs matmul_forward", out, out_w, no, TOL_FAST);
    }
    float *o1 = fmake(no, 1), *o2 = fmake(no, 1), *o5 = fmake(no, 1);
    int    nt = omp_get_max_threads();
    omp_set_num_threads(1);
    matmul_forward_t(o1, inp, wt, bias, N, C, OC);
    omp_set_num_threads(nt > 1 ? nt : 2);
    matmul_forward_t(o2, inp, wt, bias, N, C, OC);
    omp_set_num_threads(5);
    matmul_forward_t(o5, inp, wt, bias, N, C, OC);
    omp_set_num_threads(nt);
    if (N <= MATMUL_T_ROWS) /* its own kernel; sgemm above may split sums per thread count */
        test_condf(bits_equal(o1, o2, no) && bits_equal(o1, o5, no),
                   "matmul_forward_t N=%d C=%d OC=%d deterministic across thread counts", N, C,
                   OC);
    free(inp), free(w), free(wt), free(bias), free(out), free(out_r), free(out_w);
    free(o1), free(o2), free(o5);
}

static void test_transpose(int rows, int cols) {
    size_t n = (size_t)rows * cols;
    float *a = fmake(n, 1), *t = fmake(n, 1), *t_r = fmake(n, 1), *back = fmake(n, 1);
    matrix_transpose(t, a, rows, cols);
    matrix_transpose_ref(t_r, a, rows, cols);
    test_condf(bits_equal(t, t_r, n), "matrix_transpose %d x %d == ref", rows, cols);
    matrix_transpose(back, t, cols, rows);
    test_condf(bits_equal(back, a, n), "matrix_transpose %d x %d twice == identity", rows, cols);
    free(a), free(t), free(t_r), free(back);
}

/* ---- activations ---- */

typedef void (*act_fwd)(float *, const float *, size_t);
typedef void (*act_bwd)(float *, const float *, const float *, size_t);

struct act_ctx {
    act_fwd fwd;
    float  *out, *inp, *G;
    size_t  n;
};

static double act_loss(void *p) {
    struct act_ctx *c = p;
    c->fwd(c->out, c->inp, c->n);
    return dot_fd(c->out, c->G, c->n);
}

static void test_activation(const char *name, act_fwd fwd, act_fwd fwd_ref, act_bwd bwd,
                            act_bwd bwd_ref, size_t n) {
    float *inp = fmake(n, 4), *dout = fmake(n, 1);
    inp[0] = 0.0f, inp[1] = -12.0f, inp[2] = 12.0f, inp[3] = -30.0f, inp[4] = 1e-3f;
    float *out = fmake(n, 1), *out_r = fmake(n, 1);
    char   what[64];

    fwd(out, inp, n);
    fwd_ref(out_r, inp, n);
    snprintf(what, sizeof what, "%s forward", name);
    check_close(what, NULL, out, out_r, n, TOL_FAST);
    int elem_ok = 1; /* elementwise too, so the tails are accurate, not just the bulk */
    for (size_t i = 0; i < n; i++) {
        elem_ok &= fabs((double)out[i] - out_r[i]) <= 1e-5 * fabs(out_r[i]) + 1e-30;
    }
    test_condf(elem_ok, "%s: elementwise relative error above 1e-5", what);

    float *d = fmake(n, 1), *d_r = fcopy(d, n);
    bwd(d, inp, dout, n);
    bwd_ref(d_r, inp, dout, n);
    snprintf(what, sizeof what, "%s backward", name);
    check_close(what, NULL, d, d_r, n, TOL_FAST);

    /* in place: out = f(out) */
    float *x = fcopy(inp, n);
    fwd(x, x, n);
    snprintf(what, sizeof what, "%s forward in place", name);
    test_cond(what, bits_equal(x, out, n));

    float *g = ffill(n, 0);
    bwd_ref(g, inp, dout, n);
    struct act_ctx ctx = {fwd_ref, out_r, inp, dout, n};
    snprintf(what, sizeof what, "%s backward_ref", name);
    if (n <= 4096) check_fd(what, inp, n, g, act_loss, &ctx, FD_STEP); /* O(n^2) */
    free(inp), free(dout), free(out), free(out_r), free(d), free(d_r), free(x), free(g);
}

static void test_residual(size_t n) {
    float *a = fmake(n, 1), *b = fmake(n, 1), *out = fmake(n, 1), *dout = fmake(n, 1);
    residual_forward(out, a, b, n);
    int ok = 1;
    for (size_t i = 0; i < n; i++) ok &= out[i] == a[i] + b[i];
    test_cond("residual_forward", ok);
    float *a2 = fcopy(a, n);
    residual_forward(a2, a2, b, n); /* out aliases a */
    test_cond("residual_forward in place", bits_equal(a2, out, n));

    float *da = fmake(n, 1), *db = fmake(n, 1), *da0 = fcopy(da, n), *db0 = fcopy(db, n);
    residual_backward(da, db, dout, n);
    residual_backward(NULL, db0, dout, n);
    residual_backward(da0, NULL, dout, n);
    ok = 1;
    for (size_t i = 0; i < n; i++) ok &= da[i] == da0[i] && db[i] == db0[i];
    test_cond("residual_backward accumulates, NULL skipped", ok);
    free(a), free(b), free(out), free(dout), free(a2), free(da), free(db), free(da0), free(db0);
}

/* ---- attention ---- */

struct att_ctx {
    float *out, *att, *qkv, *G;
    int    B, T, C, NH;
};

static double att_loss(void *p) {
    struct att_ctx *c = p;
    attention_forward_ref(c->out, c->att, c->qkv, c->B, c->T, c->C, c->NH);
    return dot_fd(c->out, c->G, (size_t)c->B * c->T * c->C);
}

static void test_attention(int B, int T, int C, int NH, int do_fd) {
    size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C, na = (size_t)B * NH * T * T;
    float *qkv = fmake(nq, 2), *dout = fmake(no, 1);
    float *out = fmake(no, 1), *out_r = fmake(no, 1);
    float *att = ffill(na, NAN), *att_r = ffill(na, NAN);

    attention_forward(out, att, qkv, B, T, C, NH);
    attention_forward_ref(out_r, att_r, qkv, B, T, C, NH);
    check_close("attention_forward out", NULL, out, out_r, no, TOL_FAST);
    check_close("attention_forward att", NULL, att, att_r, na, TOL_FAST);
    int    causal = 1;
    double rowerr = 0.0;
    for (size_t r = 0; r < (size_t)B * NH * T; r++) {
        int    t = (int)(r % (size_t)T);
        double s = 0.0;
        for (int t2 = 0; t2 < T; t2++) {
            if (t2 > t) causal &= att[r * T + t2] == 0.0f && att_r[r * T + t2] == 0.0f;
            s += att[r * T + t2];
        }
        if (fabs(s - 1.0) > rowerr) rowerr = fabs(s - 1.0);
    }
    test_cond("attention_forward writes zeros above the diagonal", causal);
    test_condf(rowerr < 1e-5, "attention_forward rows sum to 1 (worst %.3g)", rowerr);

    size_t ns   = attention_scratch_floats(B, T, NH);
    float *scr  = ffill(ns, NAN), *scr_r = ffill(ns, NAN);
    float *d    = fmake(nq, 1), *d_r = fcopy(d, nq);
    attention_backward(d, scr, dout, qkv, att_r, B, T, C, NH);
    attention_backward_ref(d_r, scr_r, dout, qkv, att_r, B, T, C, NH);
    check_close("attention_backward dqkv", NULL, d, d_r, nq, TOL_FAST);

    float *d1 = ffill(nq, 0), *d2 = ffill(nq, 0);
    int    nt = omp_get_max_threads();
    omp_set_num_threads(1);
    attention_backward(d1, scr, dout, qkv, att_r, B, T, C, NH);
    omp_set_num_threads(nt > 1 ? nt : 2);
    attention_backward(d2, scr, dout, qkv, att_r, B, T, C, NH);
    omp_set_num_threads(nt);
    test_cond("attention_backward deterministic across thread counts", bits_equal(d1, d2, nq));

    if (do_fd) {
        float *g = ffill(nq, 0);
        attention_backward_ref(g, scr_r, dout, qkv, att_r, B, T, C, NH);
        struct att_ctx ctx = {out_r, att_r, qkv, dout, B, T, C, NH};
        check_fd("attention_backward_ref dqkv", qkv, nq, g, att_loss, &ctx, FD_STEP);
        free(g);
    }
    free(qkv), free(dout), free(out), free(out_r), free(att), free(att_r), free(scr);
    free(scr_r), free(d), free(d_r), free(d1), free(d2);
}

/* ---- cross-entropy ---- */

struct ce_ctx {
    float         *losses, *lse, *logits;
    const int32_t *targets;
    int            N, V;
    float          eps, scale;
};

static double ce_loss(void *p) {
    struct ce_ctx *c = p;
    crossentropy_forward_ref(c->losses, c->lse, c->logits, c->targets, c->N, c->V, c->eps);
    double s = 0.0;
    for (int i = 0; i < c->N; i++) s += c->losses[i];
    return c->scale * s;
}

static void test_crossentropy(int N, int V, float eps, float spread, int do_fd) {
    size_t   n       = (size_t)N * V;
    int32_t *targets = malloc((size_t)N * sizeof *targets);
    if (!targets) abort();
    int want_count = 0;
    for (int i = 0; i < N; i++) {
        targets[i] = (i % 3 == 1) ? -100 : (int32_t)(rng_u32() % (uint32_t)V);
        want_count += targets[i] >= 0;
    }
    float *logits = fmake(n, spread);
    float *losses = fmake(N, 1), *lse = fmake(N, 1), *losses_r = fmake(N, 1), *lse_r = fmake(N, 1);
    char   what[96];
    snprintf(what, sizeof what, "crossentropy N=%d V=%d eps=%g", N, V, (double)eps);

    int cnt   = crossentropy_forward(losses, lse, logits, targets, N, V, eps);
    int cnt_r = crossentropy_forward_ref(losses_r, lse_r, logits, targets, N, V, eps);
    test_condf(cnt == want_count && cnt_r == want_count, "%s: count %d/%d, want %d", what, cnt,
               cnt_r, want_count);
    check_close(what, "losses", losses, losses_r, N, TOL_FAST);
    check_close(what, "lse", lse, lse_r, N, TOL_FAST);
    int zero_ok = 1;
    for (int i = 0; i < N; i++) zero_ok &= targets[i] >= 0 || (losses[i] == 0 && losses_r[i] == 0);
    test_condf(zero_ok, "%s: ignored rows have loss 0", what);

    float scale = cnt_r ? 1.0f / (float)cnt_r : 0.0f;
    float *d = ffill(n, NAN), *d_r = ffill(n, NAN); /* overwritten, never read */
    crossentropy_backward(d, logits, lse_r, targets, N, V, eps, scale);
    crossentropy_backward_ref(d_r, logits, lse_r, targets, N, V, eps, scale);
    check_close(what, "dlogits", d, d_r, n, TOL_FAST);
    zero_ok = 1;
    for (int i = 0; i < N; i++) {
        for (int j = 0; targets[i] < 0 && j < V; j++) zero_ok &= d[(size_t)i * V + j] == 0.0f;
    }
    test_condf(zero_ok, "%s: ignored rows have zero gradient", what);

    float *inpl = fcopy(logits, n), *inpl_r = fcopy(logits, n);
    crossentropy_backward(inpl, inpl, lse_r, targets, N, V, eps, scale);
    crossentropy_backward_ref(inpl_r, inpl_r, lse_r, targets, N, V, eps, scale);
    test_condf(bits_equal(inpl, d, n), "%s: in-place backward == out of place", what);
    test_condf(bits_equal(inpl_r, d_r, n), "%s: in-place backward_ref == out of place", what);

    if (do_fd) {
        struct ce_ctx ctx = {losses_r, lse_r, logits, targets, N, V, eps, scale};
        /* losses are O(log V) in float: a wider step keeps rounding out of the difference */
        check_fd(what, logits, n, d_r, ce_loss, &ctx, 1e-2f);
    }
    free(targets), free(logits), free(losses), free(lse), free(losses_r), free(lse_r), free(d);
    free(d_r), free(inpl), free(inpl_r);
}

/* a NaN logit must surface as a NaN loss, not be silently skipped */
static void test_crossentropy_nan(void) {
    int      V = 100;
    float   *z = fmake(2 * (size_t)V, 3);
    int32_t  tg[2] = {5, 7};
    float    losses[2], lse[2], losses_r[2], lse_r[2];
    z[V + 40] = NAN;
    crossentropy_forward(losses, lse, z, tg, 2, V, 0.0f);
    crossentropy_forward_ref(losses_r, lse_r, z, tg, 2, V, 0.0f);
    test_cond("crossentropy NaN logit: clean row finite", isfinite(losses[0]) && isfinite(lse[0]));
    test_cond("crossentropy NaN logit: loss is NaN", isnan(losses[1]) && isnan(losses_r[1]));
    free(z);
}

int main(void) {
    test_encoder(2, 7, 54, 17, 1);
    test_encoder(1, 1, 5, 3, 1);
    test_encoder(3, 37, 768, 509, 0);

    test_layernorm(1, 54, 1);
    test_layernorm(5, 17, 1);
    test_layernorm(37, 768, 0);
    test_layernorm(64, 768, 0); /* above the size where the loops go parallel */

    /* M = 1 and N = 1 are matrix-vector products (sgemv): one row of C, one column (row stride
     * ldc), both, K = 0 (C = beta C), and one large enough for the BLAS to use threads */
    int shapes[][3] = {{1, 1, 1},    {13, 9, 17},  {37, 54, 61},  {64, 128, 96},
                       {1, 77, 300}, {130, 1, 300}, {1, 1, 300},  {1, 50, 0},
                       {40, 1, 0},   {1, 3000, 900}, {2000, 1, 700}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        for (int ta = 0; ta < 2; ta++) {
            for (int tb = 0; tb < 2; tb++) {
                test_gemm(ta, tb, shapes[s][0], shapes[s][1], shapes[s][2], 0.0f);
                test_gemm(ta, tb, shapes[s][0], shapes[s][1], shapes[s][2], 1.0f);
            }
        }
    }
    /* decoding's products: one row times a (K, N) weight, an (N, K) LM head or LoRA factor */
    test_gemm(0, 0, 1, 2307, 771, 0.0f);
    test_gemm(0, 0, 1, 2307, 771, 0.5f);
    test_gemm(0, 1, 1, 1003, 771, 0.0f);
    test_gemm(0, 1, 1, 1003, 771, 1.0f);
    test_gemm(0, 1, 1, 8, 771, 0.0f);  /* LoRA u = A x */
    test_gemm(0, 1, 1, 771, 8, 1.0f);  /* LoRA out += s B u */
    for (int ta = 0; ta < 2; ta++) {
        for (int tb = 0; tb < 2; tb++) {
            test_gemv_threads(ta, tb, 1, 2307, 771, 0.0f);
            test_gemv_threads(ta, tb, 2307, 1, 771, 1.0f);
            test_gemv_threads(ta, tb, 1, 1003, 61, 0.5f);
        }
    }
    /* a (K, N) weight too wide for the row parts, and one too short: column ranges instead */
    test_gemm(0, 0, 1, 8200, 40, 0.0f);
    test_gemm(0, 0, 1, 2000, 40, 1.0f);
    test_gemv_threads(0, 0, 1, 8200, 40, 0.0f);
    test_gemv_threads(0, 0, 1, 2000, 40, 1.0f);
    for (int off = 0; off < 16; off += 3) {
        test_gemv_offset(784, 771, off);
        test_gemv_offset(64, 600, off); /* narrower than a thread's share of lines */
        test_gemv_offset(16, 40, off);  /* one line: the serial path */
    }

    test_matmul(1, 54, 162, 0);
    test_matmul(3, 5, 7, 1);
    test_matmul(37, 54, 162, 0);
    test_matmul(64, 768, 96, 0);
    test_matmul(64, 96, 768, 0);

    /* decoding a few rows with transposed weights: 1 to 9 rows (4 per pass, a remainder, sgemm
     * above MATMUL_T_ROWS), odd sizes, shapes large enough for threads */
    for (int n = 1; n <= MATMUL_T_ROWS + 1; n++) test_matmul_t(n, 54, 162);
    test_matmul_t(1, 771, 1003);
    test_matmul_t(3, 771, 1003);
    test_matmul_t(4, 768, 2304);
    test_matmul_t(7, 3072, 768);
    test_matmul_t(37, 96, 130);
    test_transpose(1, 1);
    test_transpose(1, 77);
    test_transpose(77, 1);
    test_transpose(33, 65);
    test_transpose(768, 2304); /* above the size where it goes parallel */
    test_transpose(3072, 771);

    test_activation("gelu", gelu_forward, gelu_forward_ref, gelu_backward, gelu_backward_ref,
                    1001);
    test_activation("gelu_erf", gelu_erf_forward, gelu_erf_forward_ref, gelu_erf_backward,
                    gelu_erf_backward_ref, 1001);
    test_residual(1001);
    /* sizes that run in parallel spans, the last one partial */
    test_activation("gelu", gelu_forward, gelu_forward_ref, gelu_backward, gelu_backward_ref,
                    100003);
    test_activation("gelu_erf", gelu_erf_forward, gelu_erf_forward_ref, gelu_erf_backward,
                    gelu_erf_backward_ref, 100003);
    test_residual(100003);

    test_attention(1, 1, 12, 3, 1);
    test_attention(2, 5, 12, 3, 1);
    test_attention(2, 37, 54, 3, 0);
    test_attention(1, 16, 64, 4, 0);
    /* several blocks of query rows (the fast kernel works on blocks of 64), the last partial */
    test_attention(2, 64, 16, 2, 0);
    test_attention(1, 65, 16, 1, 0);
    test_attention(2, 150, 24, 3, 0);

    test_crossentropy(1, 1, 0.0f, 1.0f, 0);
    test_crossentropy(4, 11, 0.0f, 3.0f, 1);
    test_crossentropy(4, 11, 0.1f, 3.0f, 1);
    test_crossentropy(7, 509, 0.0f, 5.0f, 0);
    test_crossentropy(7, 509, 0.1f, 5.0f, 0);
    test_crossentropy(3, 50257, 0.1f, 8.0f, 0);
    test_crossentropy_nan();
    return test_report("test_kernels");
}
