/*
 * kernels.c — the fast CPU kernels declared in kernels.h.
 *
 * Products go to OpenBLAS (cblas_sgemm, row-major, transposes instead of copies); one-row and
 * one-column products (every product of a decoded token) to this file's matrix-vector kernels,
 * which stream the matrix once with every thread. The rest is OpenMP over independent rows,
 * (b, h) pairs, channel blocks or spans, with contiguous inner loops the compiler vectorises,
 * and loops too small to be worth a thread team run on the calling thread. Every reduction that feeds a
 * result is done in a fixed order (no atomics, no thread-count-dependent sums), so results are
 * reproducible run to run.
 * Not here: the naive references (kernels_ref.c), GPU code, allocation (scratch is passed in;
 * the matrix-vector products keep a small fixed buffer on the stack).
 */
#include "core/kernels.h"

#include <cblas.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

// B = batch, T = time, C = channels, V = vocab, NH = heads, hs = C / NH, N = rows, OC = out chans

/* Column-block width for reductions over rows (dw, db): each block is owned by one thread. */
#define COL_BLOCK 64

/*
 * A loop with less work than this (elements touched, or multiply-adds) runs on the calling
 * thread without entering OpenMP at all. An `if` clause is not enough: libgomp still builds a
 * one-thread team for a region whose `if` is false (about 0.5 us each, a malloc and a futex),
 * which was two thirds of the time of one decoded token of a small model. Each output element
 * is computed the same way on any thread, so the choice changes speed only, never results.
 */
#define PARALLEL_MIN 32768L

/* for (long i = 0; i < n; i++) call; — by the OpenMP team (static schedule) when work reaches
 * PARALLEL_MIN, else by the calling thread. `call` is one statement using i. */
#define PARALLEL_FOR(work, i, n, call)                                                         \
    do {                                                                                       \
        long n_ = (long)(n);                                                                   \
        if ((long)(work) >= PARALLEL_MIN) {                                                    \
            _Pragma("omp parallel for schedule(static)") for (long i = 0; i < n_; i++) call;   \
        } else {                                                                               \
            for (long i = 0; i < n_; i++) call;                                                \
        }                                                                                      \
    } while (0)

/* Elementwise kernels work on spans of this many elements, one span per loop iteration. */
#define SPAN 4096L
#define N_SPANS(n) (((long)(n) + SPAN - 1) / SPAN)
#define SPAN_LEN(n, i) ((size_t)((long)(n) - (i) * SPAN < SPAN ? (long)(n) - (i) * SPAN : SPAN))

/* ---- a vectorisable exp ---- */

/*
 * expf for float x, written with arithmetic and bit operations only so that loops calling it
 * vectorise without -ffast-math (glibc only offers SIMD expf under fast-math). Cody–Waite
 * reduction x = n ln2 + r, |r| <= ln2 / 2, then the Cephes degree-7 polynomial for e^r:
 * about 1 ulp over the normal range. Inputs below -87 return 0 (the result would be subnormal,
 * irrelevant next to the max-shifted terms it is summed with); inputs above 88 are clamped to
 * 88 (finite, ~1.65e38). NaN propagates.
 */
static inline float exp_fast(float x) {
    const float hi = 88.0f, lo = -87.0f;
    float       xc = x > hi ? hi : x;
    xc             = xc < lo ? lo : xc;
    /* round(x log2 e) through the 1.5·2^23 shifter: its low mantissa bits then hold n */
    const float shifter = 12582912.0f;
    float       t       = fmaf(xc, 1.44269504088896341f, shifter);
    float       n       = t - shifter;
    float       r       = fmaf(n, -0.693359375f, xc); /* ln2 high part: n · it is exact */
    r                   = fmaf(n, 2.12194440e-4f, r); /* ln2 low part */
    float p             = 1.9875691500e-4f;
    p                   = fmaf(p, r, 1.3981999507e-3f);
    p                   = fmaf(p, r, 8.3334519073e-3f);
    p                   = fmaf(p, r, 4.1665795894e-2f);
    p                   = fmaf(p, r, 1.6666665459e-1f);
    p                   = fmaf(p, r, 5.0000001201e-1f);
    p                   = fmaf(p, r * r, r) + 1.0f;
    uint32_t tb, sb;
    memcpy(&tb, &t, sizeof tb);
    sb = (tb - 0x4b400000u + 127u) << 23; /* 2^n as float bits, n in [-126, 127] */
    float s;
    memcpy(&s, &sb, sizeof s);
    float y = p * s;
    return x < lo ? 0.0f : y;
}

/* max_j x[j] over independent lanes (vectorises; NaNs are skipped here and caught by the exp). */
static float row_max(const float *x, int n) {
    enum { LANES = 16 };
    float m[LANES];
    for (int l = 0; l < LANES; l++) m[l] = -INFINITY;
    int j = 0;
    for (; j + LANES <= n; j += LANES) {
        for (int l = 0; l < LANES; l++) m[l] = x[j + l] > m[l] ? x[j + l] : m[l];
    }
    float mx = -INFINITY;
    for (; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    for (int l = 0; l < LANES; l++) mx = m[l] > mx ? m[l] : mx;
    return mx;
}

/*
 * Σ_j exp(x[j] - shift) in double. The exponentials of a block go to a small stack buffer in a
 * loop that vectorises; the block is then added into sixteen independent double partial sums,
 * combined in a fixed order at the end (no reassociation of one running sum, no fast-math).
 */
static double sum_exp_shifted(const float *x, int n, float shift) {
    enum { LANES = 16, BLOCK = 256 };
    double acc[LANES] = {0};
    float  e[BLOCK];
    for (int j0 = 0; j0 < n; j0 += BLOCK) {
        int m = n - j0 < BLOCK ? n - j0 : BLOCK;
        for (int k = 0; k < m; k++) e[k] = exp_fast(x[j0 + k] - shift);
        for (int k = m; k < (m + LANES - 1) / LANES * LANES; k++) e[k] = 0.0f;
        for (int k = 0; k < m; k += LANES) {
            for (int l = 0; l < LANES; l++) acc[l] += e[k + l];
        }
    }
    double s = 0.0;
    for (int l = 0; l < LANES; l++) s += acc[l];
    return s;
}

/* ---- embeddings ---- */

static void encoder_row(float *out, const int32_t *inp, const float *wte, const float *wpe, int T,
                        int C, long bt) {
    float *restrict       o  = out + (size_t)bt * C;
    const float *restrict we = wte + (size_t)inp[bt] * C;
    const float *restrict pe = wpe + (size_t)(bt % T) * C;
    for (int c = 0; c < C; c++) o[c] = we[c] + pe[c];
}

void encoder_forward(float *out, const int32_t *inp, const float *wte, const float *wpe, int B,
                     int T, int C) {
    PARALLEL_FOR((long)B * T * C, bt, (long)B * T, encoder_row(out, inp, wte, wpe, T, C, bt));
}

/*
 * dwpe: one thread per position t, summing over b in order. dwte: several positions may share a
 * token, so threads own channel blocks instead and walk every (b, t) in order — race-free and
 * deterministic.
 */
static void dwpe_row(float *dwpe, const float *dout, int B, int T, int C, long t) {
    float *restrict dp = dwpe + (size_t)t * C;
    for (int b = 0; b < B; b++) {
        const float *restrict d = dout + ((size_t)b * T + t) * C;
        for (int c = 0; c < C; c++) dp[c] += d[c];
    }
}

static void dwte_block(float *dwte, const float *dout, const int32_t *inp, int B, int T, int C,
                       long blk) {
    int c0 = (int)blk * COL_BLOCK, c1 = c0 + COL_BLOCK < C ? c0 + COL_BLOCK : C;
    for (int bt = 0; bt < B * T; bt++) {
        float *restrict       dw = dwte + (size_t)inp[bt] * C;
        const float *restrict d  = dout + (size_t)bt * C;
        for (int c = c0; c < c1; c++) dw[c] += d[c];
    }
}

void encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *inp, int B,
                      int T, int C) {
    long work = (long)B * T * C;
    if (dwpe) PARALLEL_FOR(work, t, T, dwpe_row(dwpe, dout, B, T, C, t));
    if (dwte) {
        int nblk = (C + COL_BLOCK - 1) / COL_BLOCK;
        PARALLEL_FOR(work, blk, nblk, dwte_block(dwte, dout, inp, B, T, C, blk));
    }
}

/* ---- layer norm ---- */

static void layernorm_row(float *out, float *mean, float *rstd, const float *inp, const float *w,
                          const float *b, int C, float eps, long i) {
    const float *x = inp + (size_t)i * C;
    double       s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int c = 0; c < C; c++) s += x[c];
    float  m  = (float)(s / C);
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int c = 0; c < C; c++) {
        float d = x[c] - m;
        ss += (double)d * d;
    }
    float  r = (float)(1.0 / sqrt(ss / C + (double)eps));
    float *o = out + (size_t)i * C;
    for (int c = 0; c < C; c++) o[c] = (x[c] - m) * r * w[c] + b[c];
    mean[i] = m;
    rstd[i] = r;
}

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                       const float *b, int N, int C, float eps) {
    PARALLEL_FOR((long)N * C, i, N, layernorm_row(out, mean, rstd, inp, w, b, C, eps, i));
}

static void layernorm_dinp_row(float *dinp, const float *dout, const float *inp, const float *w,
                               const float *mean, const float *rstd, int C, long i) {
    const float *x  = inp + (size_t)i * C;
    const float *dy = dout + (size_t)i * C;
    float       *dx = dinp + (size_t)i * C;
    float        m = mean[i], r = rstd[i];
    double       gs = 0.0, gns = 0.0;
#pragma omp simd reduction(+ : gs, gns)
    for (int c = 0; c < C; c++) {
        float g = dy[c] * w[c];
        gs += g;
        gns += (double)g * ((x[c] - m) * r);
    }
    float gm = (float)(gs / C), gnm = (float)(gns / C);
    for (int c = 0; c < C; c++) {
        float n = (x[c] - m) * r;
        dx[c] += r * (dy[c] * w[c] - gm - n * gnm);
    }
}

/* dw, db over channels [blk·COL_BLOCK, +COL_BLOCK): sums over every row, in order */
static void layernorm_dw_block(float *dw, float *db, const float *dout, const float *inp,
                               const float *mean, const float *rstd, int N, int C, long blk) {
    int    c0 = (int)blk * COL_BLOCK, nc = C - c0 < COL_BLOCK ? C - c0 : COL_BLOCK;
    double aw[COL_BLOCK], ab[COL_BLOCK];
    for (int c = 0; c < nc; c++) aw[c] = ab[c] = 0.0;
    for (int i = 0; i < N; i++) {
        const float *x  = inp + (size_t)i * C + c0;
        const float *dy = dout + (size_t)i * C + c0;
        float        m = mean[i], r = rstd[i];
        for (int c = 0; c < nc; c++) {
            aw[c] += (double)dy[c] * ((x[c] - m) * r);
            ab[c] += dy[c];
        }
    }
    for (int c = 0; c < nc; c++) {
        if (dw) dw[c0 + c] += (float)aw[c];
        if (db) db[c0 + c] += (float)ab[c];
    }
}

void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, int N, int C) {
    long work = (long)N * C;
    /* dinp: rows are independent */
    if (dinp) PARALLEL_FOR(work, i, N, layernorm_dinp_row(dinp, dout, inp, w, mean, rstd, C, i));
    if (!dw && !db) return;
    /* dw, db: sums over rows; each thread owns a block of channels */
    int nblk = (C + COL_BLOCK - 1) / COL_BLOCK;
    PARALLEL_FOR(work, blk, nblk, layernorm_dw_block(dw, db, dout, inp, mean, rstd, N, C, blk));
}

/* ---- general matrix product ---- */

/*
 * A product with one row (M = 1) or one column (N = 1) is a matrix-vector product: each element
 * of the matrix is used once, so it costs one read of the matrix from memory — for a decoded
 * token, every weight of the model once — and the work is to stream it at full bandwidth with
 * every thread. sgemm would pack the matrix first; OpenBLAS's sgemv reads the Conv1D layout
 * (the matrix stored (K, N), y = xᵀ·W) below bandwidth and splits it differently per thread
 * count. The two layouts get their own kernels:
 *   - gemv_dot: the matrix stored (N, K), y[i] = dot(W[i, :], x) — the LM head, a LoRA A or B.
 *     Threads own contiguous ranges of rows, so each streams one block of memory.
 *   - gemv_axpy: the matrix stored (K, N), y = Σ_k x[k] · W[k, :] — every Conv1D weight. The
 *     rows are cut into a few fixed parts summed apart and then added, so that a thread streams
 *     whole parts (see below); within a part, rows are walked in order, sixteen at a time.
 * Every output element is summed in the same order whatever the thread count (results do not
 * depend on it). beta = 0 ignores C's old contents (NaN included). The vector operands the
 * kernels do not cover (a strided x for gemv_dot, a strided y for gemv_axpy: products of the
 * backward pass, never of decoding) go to cblas_sgemv, after C is scaled as described there.
 */

/* y[i·incy] = alpha · dot(W[i, :K], x) + beta · y[i·incy] for i in [i0, i1); W row stride ld */
static void gemv_dot_rows(float *y, int incy, const float *W, int ld, const float *x, int K,
                          float alpha, float beta, long i0, long i1) {
    for (long i = i0; i < i1; i++) {
        const float *restrict w = W + (size_t)i * ld;
        const float *restrict v = x;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int k = 0; k < K; k++) s += w[k] * v[k];
        float *yi = y + (size_t)i * incy;
        *yi       = beta == 0.0f ? alpha * s : alpha * s + beta * *yi;
    }
}

/* Rows of W per step of gemv_dot's parallel loop. */
#define DOT_ROWS 64L

static void gemv_dot(float *y, int incy, const float *W, int ld, const float *x, int N, int K,
                     float alpha, float beta) {
    long nblk = (N + DOT_ROWS - 1) / DOT_ROWS;
    PARALLEL_FOR((long)N * K, b, nblk,
                 gemv_dot_rows(y, incy, W, ld, x, K, alpha, beta, b * DOT_ROWS,
                               (b + 1) * DOT_ROWS < N ? (b + 1) * DOT_ROWS : N));
}

/* Columns of the output per unit of gemv_axpy's split: one 64-byte cache line of floats. */
#define AXPY_COLS 16L

/* Rows of W per pass of gemv_axpy over its columns (y read and written once per pass). */
#define AXPY_ROWS 16

/* y[j] += Σ_r a[r] · w[r·ld + j] over AXPY_ROWS rows, for j in [j0, j1), r in order. */
static inline void axpy_rows(float *restrict y, const float *restrict w, size_t ld,
                             const float *a, long j0, long j1) {
    for (long j = j0; j < j1; j++) {
        float s = y[j];
        for (int r = 0; r < AXPY_ROWS; r++) s = fmaf(a[r], w[j + r * ld], s);
        y[j] = s;
    }
}

/*
 * y[j] = beta · y[j] + Σ_k (alpha · x[k·incx]) · W[k, j] for j in [j0, j1); W row stride ld.
 * AXPY_ROWS rows per pass over the columns, the k order fixed. (Sixteen rows stream faster than
 * eight or twelve here; thirty-two spill.) When every row starts at the same offset within a
 * cache line (ld a multiple of 16 floats), the columns before W's first 64-byte boundary are
 * done apart, so that the vector loads of the rest do not straddle lines: weights inside a
 * safetensors file are aligned to 8 bytes only, and split loads cost 15 %.
 */
static void gemv_axpy_cols(float *restrict y, const float *W, int ld, const float *x, int incx,
                           int K, float alpha, float beta, long j0, long j1) {
    if (beta == 0.0f)
        for (long j = j0; j < j1; j++) y[j] = 0.0f;
    else if (beta != 1.0f)
        for (long j = j0; j < j1; j++) y[j] *= beta;
    long ja = j0; /* first column of the aligned part */
    if (ld % 16 == 0) {
        ja += (long)((64 - (uintptr_t)(W + j0) % 64) % 64 / sizeof(float));
        if (ja > j1) ja = j1;
    }
    int k = 0;
    for (; k + AXPY_ROWS <= K; k += AXPY_ROWS) {
        const float *w = W + (size_t)k * ld;
        float        a[AXPY_ROWS];
        for (int r = 0; r < AXPY_ROWS; r++) a[r] = alpha * x[(size_t)(k + r) * incx];
        axpy_rows(y, w, (size_t)ld, a, j0, ja);
        axpy_rows(y, w, (size_t)ld, a, ja, j1);
    }
    for (; k < K; k++) {
        const float *restrict w  = W + (size_t)k * ld;
        float                 ak = alpha * x[(size_t)k * incx];
        for (long j = j0; j < j1; j++) y[j] = fmaf(ak, w[j], y[j]);
    }
}

/* The part [j0, j1) of columns [0, N) that thread t of nt owns, in whole AXPY_COLS units. */
static void axpy_share(long N, int t, int nt, long *j0, long *j1) {
    long units = (N + AXPY_COLS - 1) / AXPY_COLS;
    long u0 = units * t / nt, u1 = units * (t + 1) / nt;
    *j0     = u0 * AXPY_COLS;
    *j1     = u1 * AXPY_COLS < N ? u1 * AXPY_COLS : N;
}

/*
 * gemv_axpy splits the rows of W into up to AXPY_PARTS fixed parts (their number and bounds
 * depend on the shape only), each summed into its own partial y in a stack buffer of
 * AXPY_SCRATCH floats; then y = beta · y + Σ parts in order. A thread takes whole parts (and,
 * with more threads than parts, column ranges of them), so that it streams one contiguous block
 * of W: splitting every row by columns instead streams half as fast with two threads (each
 * row's halves are too short for the prefetchers). When the parts do not fit (N above
 * AXPY_SCRATCH / 2) or K is short, threads own column ranges of the whole product.
 */
#define AXPY_PARTS   4
#define AXPY_SCRATCH 16384

/* Rows [k0, k1) of part p of P over K rows: multiples of AXPY_ROWS, the last takes the rest. */
static void axpy_part_rows(int K, int P, int p, int *k0, int *k1) {
    *k0 = (int)((long)K * p / P / AXPY_ROWS * AXPY_ROWS);
    *k1 = p == P - 1 ? K : (int)((long)K * (p + 1) / P / AXPY_ROWS * AXPY_ROWS);
}

static void gemv_axpy(float *y, const float *W, int ld, const float *x, int incx, int K, int N,
                      float alpha, float beta) {
    if ((long)N * K < PARALLEL_MIN || N <= AXPY_COLS) {
        gemv_axpy_cols(y, W, ld, x, incx, K, alpha, beta, 0, N);
        return;
    }
    int P = AXPY_SCRATCH / N < AXPY_PARTS ? AXPY_SCRATCH / N : AXPY_PARTS;
    if (K < P * AXPY_ROWS) P = 0;
    if (P < 2) {
#pragma omp parallel
        {
            int t = 0, nt = 1;
#ifdef _OPENMP
            t  = omp_get_thread_num();
            nt = omp_get_num_threads();
#endif
            long j0, j1;
            axpy_share(N, t, nt, &j0, &j1);
            if (j0 < j1) gemv_axpy_cols(y, W, ld, x, incx, K, alpha, beta, j0, j1);
        }
        return;
    }
    float part[AXPY_SCRATCH]; /* (P, N) partial sums */
#pragma omp parallel
    {
        int t = 0, nt = 1;
#ifdef _OPENMP
        t  = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        /* items (part p, column block q) p-major, Q blocks per part; thread t takes a range */
        int Q = (nt + P - 1) / P, n_items = P * Q;
        for (int it = n_items * t / nt; it < n_items * (t + 1) / nt; it++) {
            int  p = it / Q, q = it % Q, k0, k1;
            long j0, j1;
            axpy_part_rows(K, P, p, &k0, &k1);
            axpy_share(N, q, Q, &j0, &j1);
            if (j0 < j1)
                gemv_axpy_cols(part + (size_t)p * N, W + (size_t)k0 * ld, ld,
                               x + (size_t)k0 * incx, incx, k1 - k0, alpha, 0.0f, j0, j1);
        }
#pragma omp barrier
        long j0, j1;
        axpy_share(N, t, nt, &j0, &j1);
        for (long j = j0; j < j1; j++) {
            float s = beta == 0.0f ? 0.0f : beta * y[j];
            for (int p = 0; p < P; p++) s += part[(size_t)p * N + j];
            y[j] = s;
        }
    }
}

/* C = beta · C over n elements at stride inc (beta = 0: zeros, whatever C held). */
static void gemv_out_scale(float *y, int n, int inc, float beta) {
    for (int i = 0; i < n; i++) {
        float *yi = y + (size_t)i * inc;
        *yi       = beta == 0.0f ? 0.0f : beta * *yi;
    }
}

/* The matrix-vector products: M = 1 (C one row) or N = 1 (C one column of stride ldc). */
static void gemm_vector(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                        int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    int rowc = M == 1; /* C is one row (n = N, increment 1), else one column of M */
    int n = rowc ? N : M, incy = rowc ? 1 : ldc;
    if (K <= 0) { /* C = beta · C; sgemv would return early on an empty matrix */
        gemv_out_scale(C, n, incy, beta);
        return;
    }
    /* the matrix W, its layout, and the vector x with its increment */
    const float *W    = rowc ? B : A;
    int          ldw  = rowc ? ldb : lda;
    int          rows = rowc ? transB : !transA; /* W stored (n, K): y = W · x */
    const float *x    = rowc ? A : B;
    int          incx = rowc ? (transA ? lda : 1) : (transB ? 1 : ldb);
    if (rows && incx == 1) {
        gemv_dot(C, incy, W, ldw, x, n, K, alpha, beta);
        return;
    }
    if (!rows && incy == 1) {
        gemv_axpy(C, W, ldw, x, incx, K, n, alpha, beta);
        return;
    }
    if (beta == 0.0f) gemv_out_scale(C, n, incy, beta);
    if (rows) /* W stored (n, K) */
        cblas_sgemv(CblasRowMajor, CblasNoTrans, n, K, alpha, W, ldw, x, incx, beta, C, incy);
    else /* W stored (K, n) */
        cblas_sgemv(CblasRowMajor, CblasTrans, K, n, alpha, W, ldw, x, incx, beta, C, incy);
}

void gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (M == 1 || N == 1) {
        gemm_vector(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* ---- matmul (Conv1D layout: w is (C, OC)) ---- */

/* db over output columns [blk·COL_BLOCK, +COL_BLOCK) += Σ_rows dout, rows summed in order */
static void bias_grad_block(float *db, const float *dout, int N, int OC, long blk) {
    int    o0 = (int)blk * COL_BLOCK, no = OC - o0 < COL_BLOCK ? OC - o0 : COL_BLOCK;
    double acc[COL_BLOCK];
    for (int j = 0; j < no; j++) acc[j] = 0.0;
    for (int i = 0; i < N; i++) {
        const float *d = dout + (size_t)i * OC + o0;
        for (int j = 0; j < no; j++) acc[j] += d[j];
    }
    for (int j = 0; j < no; j++) db[o0 + j] += (float)acc[j];
}

/* out (N,OC) = inp (N,C) · op(w) + bias (may be NULL) by sgemm: w is (C,OC), or (OC,C) with
 * transW. The bias is written first and sgemm accumulates onto it (beta = 1): with beta = 0
 * OpenBLAS clears out in a pass of its own, and adding the bias after would be a third pass
 * over out (5-9 % of a GPT-2 small forward matmul at 512 rows). */
static void gemm_bias(float *out, const float *inp, int transW, const float *w, const float *bias,
                      int N, int C, int OC) {
    float beta = 0.0f;
    if (bias) {
        PARALLEL_FOR((long)N * OC, i, N, memcpy(out + (size_t)i * OC, bias, (size_t)OC * sizeof(float)));
        beta = 1.0f;
    }
    gemm(0, transW, N, OC, C, 1.0f, inp, C, w, transW ? C : OC, beta, out, OC);
}

void matmul_forward(float *out, const float *inp, const float *w, const float *bias, int N, int C,
                    int OC) {
    gemm_bias(out, inp, 0, w, bias, N, C, OC);
}

void matmul_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                     const float *w, int N, int C, int OC) {
    /* dinp (N,C) += dout (N,OC) · wᵀ (OC,C) */
    if (dinp) gemm(0, 1, N, C, OC, 1.0f, dout, OC, w, OC, 1.0f, dinp, C);
    /* dw (C,OC) += inpᵀ (C,N) · dout (N,OC) */
    if (dw) gemm(1, 0, C, OC, N, 1.0f, inp, C, dout, OC, 1.0f, dw, OC);
    if (!db) return;
    /* db (OC) += Σ_rows dout: threads own column blocks, rows summed in order */
    int nblk = (OC + COL_BLOCK - 1) / COL_BLOCK;
    PARALLEL_FOR((long)N * OC, blk, nblk, bias_grad_block(db, dout, N, OC, blk));
}

/* ---- matmul with a transposed weight ---- */

/*
 * A few rows (a decoded token, a step of a few sequences or beams) times a weight: each
 * element of the weight is used once per row, so the product costs one read of the weight from
 * memory, as gemv_dot does for one row. sgemm would pack the weight first (for 2 to 8 rows it
 * streams at half gemv_dot's speed). Here the weight is stored transposed (OC, C): a thread
 * takes blocks of DOT_ROWS rows of it, each a contiguous span, and computes every input row's
 * dot product with one weight row while that row is in L1, four input rows per pass.
 */

/* out[r, i] = dot(wt[i, :], inp[r, :]) + bias[i] for rows r < N and i in [i0, i1). */
static void dot_rows_block(float *out, const float *inp, const float *wt, const float *bias,
                           int N, int C, int OC, long i0, long i1) {
    for (long i = i0; i < i1; i++) {
        const float *restrict w = wt + (size_t)i * C;
        float                 b = bias ? bias[i] : 0.0f;
        int                   r = 0;
        for (; r + 4 <= N; r += 4) {
            const float *x0 = inp + (size_t)r * C;
            float        s[4];
            dot4(s, w, x0, x0 + C, x0 + 2 * C, x0 + 3 * C, C);
            for (int q = 0; q < 4; q++) out[(size_t)(r + q) * OC + i] = s[q] + b;
        }
        for (; r < N; r++) {
            const float *restrict x = inp + (size_t)r * C;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int k = 0; k < C; k++) s += w[k] * x[k];
            out[(size_t)r * OC + i] = s + b;
        }
    }
}

void matmul_forward_t(float *out, const float *inp, const float *wt, const float *bias, int N,
                      int C, int OC) {
    if (N <= 0 || OC <= 0) return;
    if (N <= MATMUL_T_ROWS) {
        long nblk = (OC + DOT_ROWS - 1) / DOT_ROWS;
        PARALLEL_FOR((long)N * OC * C, b, nblk,
                     dot_rows_block(out, inp, wt, bias, N, C, OC, b * DOT_ROWS,
                                    (b + 1) * DOT_ROWS < OC ? (b + 1) * DOT_ROWS : OC));
        return;
    }
    gemm_bias(out, inp, 1, wt, bias, N, C, OC);
}

/* Columns (and rows) of one tile of transpose: 32 x 32 floats, 4 KiB each side. */
#define TRANSPOSE_TILE 32L

/* out rows [j0, j1) (columns of inp) = inp's columns, tile by tile down the rows of inp. */
static void transpose_cols(float *out, const float *inp, int rows, int cols, long j0, long j1) {
    for (long i0 = 0; i0 < rows; i0 += TRANSPOSE_TILE) {
        long i1 = i0 + TRANSPOSE_TILE < rows ? i0 + TRANSPOSE_TILE : rows;
        for (long j = j0; j < j1; j++) {
            float *restrict       o = out + (size_t)j * rows;
            const float *restrict x = inp + j;
            for (long i = i0; i < i1; i++) o[i] = x[(size_t)i * cols];
        }
    }
}

void matrix_transpose(float *out, const float *inp, int rows, int cols) {
    long nblk = (cols + TRANSPOSE_TILE - 1) / TRANSPOSE_TILE;
    PARALLEL_FOR((long)rows * cols, b, nblk,
                 transpose_cols(out, inp, rows, cols, b * TRANSPOSE_TILE,
                                (b + 1) * TRANSPOSE_TILE < cols ? (b + 1) * TRANSPOSE_TILE
                                                                : cols));
}

/* ---- activations ---- */

#define GELU_K 0.7978845608f /* sqrt(2 / pi) */
#define GELU_A 0.044715f

/*
 * 0.5 x (1 + tanh u) is evaluated as x · sigmoid(2u) = x / (1 + e^(-2u)), the same function
 * (1 + tanh u = 2 / (1 + e^(-2u))), which stays accurate in both tails and vectorises.
 */
static void gelu_span(float *out, const float *inp, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float u = GELU_K * (x + GELU_A * x * x * x);
        out[i]  = x / (1.0f + exp_fast(-2.0f * u));
    }
}

void gelu_forward(float *out, const float *inp, size_t n) {
    PARALLEL_FOR(n, i, N_SPANS(n), gelu_span(out + i * SPAN, inp + i * SPAN, SPAN_LEN(n, i)));
}

/* d/dx [x σ(2u)] = σ + 2 x σ (1 - σ) u',  u' = k (1 + 3 a x²) */
static void gelu_backward_span(float *dinp, const float *inp, const float *dout, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float x  = inp[i];
        float u  = GELU_K * (x + GELU_A * x * x * x);
        float du = GELU_K * (1.0f + 3.0f * GELU_A * x * x);
        float s  = 1.0f / (1.0f + exp_fast(-2.0f * u));
        dinp[i] += (s + 2.0f * x * s * (1.0f - s) * du) * dout[i];
    }
}

void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
    PARALLEL_FOR(n, i, N_SPANS(n),
                 gelu_backward_span(dinp + i * SPAN, inp + i * SPAN, dout + i * SPAN,
                                    SPAN_LEN(n, i)));
}

#define SQRT1_2f     0.70710678f /* 1 / sqrt(2) */
#define INV_SQRT2PIf 0.39894228f /* 1 / sqrt(2 pi) */

/* Φ(x) = 0.5 (1 + erf(x / sqrt 2)) is evaluated as 0.5 erfc(-x / sqrt 2): no cancellation for
 * negative x, where 1 + erf would lose the leading digits. */
static void gelu_erf_span(float *out, const float *inp, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i]  = 0.5f * x * erfcf(-x * SQRT1_2f);
    }
}

void gelu_erf_forward(float *out, const float *inp, size_t n) {
    PARALLEL_FOR(n, i, N_SPANS(n), gelu_erf_span(out + i * SPAN, inp + i * SPAN, SPAN_LEN(n, i)));
}

/* d/dx = Φ(x) + x φ(x) */
static void gelu_erf_backward_span(float *dinp, const float *inp, const float *dout, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float d = 0.5f * erfcf(-x * SQRT1_2f) + x * INV_SQRT2PIf * exp_fast(-0.5f * x * x);
        dinp[i] += d * dout[i];
    }
}

void gelu_erf_backward(float *dinp, const float *inp, const float *dout, size_t n) {
    PARALLEL_FOR(n, i, N_SPANS(n),
                 gelu_erf_backward_span(dinp + i * SPAN, inp + i * SPAN, dout + i * SPAN,
                                        SPAN_LEN(n, i)));
}

/* out = a + b over one span; out may alias a or b (element i is read before it is written) */
static void add_span(float *out, const float *a, const float *b, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void residual_forward(float *out, const float *a, const float *b, size_t n) {
    PARALLEL_FOR(n, i, N_SPANS(n),
                 add_span(out + i * SPAN, a + i * SPAN, b + i * SPAN, SPAN_LEN(n, i)));
}

void residual_backward(float *da, float *db, const float *dout, size_t n) {
    if (da)
        PARALLEL_FOR(n, i, N_SPANS(n),
                     add_span(da + i * SPAN, da + i * SPAN, dout + i * SPAN, SPAN_LEN(n, i)));
    if (db)
        PARALLEL_FOR(n, i, N_SPANS(n),
                     add_span(db + i * SPAN, db + i * SPAN, dout + i * SPAN, SPAN_LEN(n, i)));
}

/* ---- causal self-attention ---- */

/*
 * Attention runs per (batch, head) pair bh = b · NH + h, the pairs in parallel, each on blocks
 * of ATT_BLOCK query rows: the block's scores against the keys up to its last row and the
 * products with V are matrix products (sgemm, single-threaded inside the parallel loop), so
 * only about half of the T × T square is computed (the causal part, plus the upper triangle of
 * each diagonal block, which is masked). The softmax is per row, in the order of the reference.
 */
#define ATT_BLOCK 64

/* Softmax of scores row[0..t] in place (max-shifted, summed in double); row[t+1..T) = 0. */
static void causal_softmax_row(float *row, int t, int T) {
    float mx = -INFINITY;
    for (int t2 = 0; t2 <= t; t2++) mx = row[t2] > mx ? row[t2] : mx;
    for (int t2 = 0; t2 <= t; t2++) row[t2] = exp_fast(row[t2] - mx);
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int t2 = 0; t2 <= t; t2++) sum += row[t2];
    float inv = (float)(1.0 / sum);
    for (int t2 = 0; t2 <= t; t2++) row[t2] *= inv;
    for (int t2 = t + 1; t2 < T; t2++) row[t2] = 0.0f;
}

static void attention_head_forward(float *out, float *att, const float *qkv, int T, int C,
                                   int NH, long bh) {
    int          b = (int)(bh / NH), h = (int)(bh % NH), hs = C / NH, C3 = 3 * C;
    float        scale = (float)(1.0 / sqrt((double)hs));
    const float *q     = qkv + (size_t)b * T * C3 + (size_t)h * hs; /* (T, hs), row stride 3C */
    const float *k     = q + C, *v = q + 2 * C;
    float       *p     = att + (size_t)bh * T * T;                    /* (T, T) */
    float       *o     = out + (size_t)b * T * C + (size_t)h * hs;    /* (T, hs), row stride C */
    for (int t0 = 0; t0 < T; t0 += ATT_BLOCK) {
        int t1 = t0 + ATT_BLOCK < T ? t0 + ATT_BLOCK : T, m = t1 - t0;
        /* scores (m, t1) = q[t0:t1] · k[0:t1]ᵀ / sqrt(hs) */
        gemm(0, 1, m, t1, hs, scale, q + (size_t)t0 * C3, C3, k, C3, 0.0f, p + (size_t)t0 * T,
             T);
        for (int t = t0; t < t1; t++) causal_softmax_row(p + (size_t)t * T, t, T);
        /* out[t0:t1] = P[t0:t1, 0:t1] · v[0:t1] (the masked entries are zeros) */
        gemm(0, 0, m, hs, t1, 1.0f, p + (size_t)t0 * T, T, v, C3, 0.0f, o + (size_t)t0 * C, C);
    }
}

void attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH) {
    long work = (long)B * T * (T + 1) / 2 * C; /* query-key pairs x channels */
    PARALLEL_FOR(work, bh, (long)B * NH, attention_head_forward(out, att, qkv, T, C, NH, bh));
}

/*
 * Scratch: an (ATT_BLOCK, T) block per (b, h) pair, so the pairs can run in parallel. It holds
 * dP = dO · Vᵀ for a block of query rows, then, in place, the softmax gradient
 * dS = P ⊙ (dP - rowsum(P ⊙ dP)) / sqrt(hs).
 */
size_t attention_scratch_floats(int B, int T, int NH) {
    size_t rows = T < ATT_BLOCK ? (size_t)T : ATT_BLOCK;
    return (size_t)B * NH * rows * (size_t)T;
}

static void attention_head_backward(float *dqkv, float *scratch, const float *dout,
                                    const float *qkv, const float *att, int T, int C, int NH,
                                    long bh) {
    int          b = (int)(bh / NH), h = (int)(bh % NH), hs = C / NH, C3 = 3 * C;
    float        scale = (float)(1.0 / sqrt((double)hs));
    size_t       off   = (size_t)b * T * C3 + (size_t)h * hs;
    const float *q = qkv + off, *k = q + C, *v = q + 2 * C;
    float       *dq = dqkv + off, *dk = dq + C, *dv = dq + 2 * C;
    const float *p  = att + (size_t)bh * T * T;
    const float *dy = dout + (size_t)b * T * C + (size_t)h * hs; /* (T, hs), row stride C */
    size_t       rows = T < ATT_BLOCK ? (size_t)T : ATT_BLOCK;
    float       *ds   = scratch + (size_t)bh * rows * T;          /* (rows, T) */
    for (int t0 = 0; t0 < T; t0 += ATT_BLOCK) {
        int          t1 = t0 + ATT_BLOCK < T ? t0 + ATT_BLOCK : T, m = t1 - t0;
        const float *pb = p + (size_t)t0 * T, *dyb = dy + (size_t)t0 * C;
        /* dv[0:t1] += P[t0:t1, 0:t1]ᵀ · dy[t0:t1] */
        gemm(1, 0, t1, hs, m, 1.0f, pb, T, dyb, C, 1.0f, dv, C3);
        /* dP (m, t1) = dy[t0:t1] · v[0:t1]ᵀ */
        gemm(0, 1, m, t1, hs, 1.0f, dyb, C, v, C3, 0.0f, ds, T);
        for (int i = 0; i < m; i++) {
            int          t  = t0 + i;
            const float *pr = pb + (size_t)i * T;
            float       *dr = ds + (size_t)i * T;
            double       pdp = 0.0;
#pragma omp simd reduction(+ : pdp)
            for (int t2 = 0; t2 <= t; t2++) pdp += pr[t2] * dr[t2];
            float pd = (float)pdp;
            for (int t2 = 0; t2 <= t; t2++) dr[t2] = pr[t2] * (dr[t2] - pd) * scale;
            for (int t2 = t + 1; t2 < t1; t2++) dr[t2] = 0.0f;
        }
        /* dq[t0:t1] += dS · k[0:t1];  dk[0:t1] += dSᵀ · q[t0:t1] */
        gemm(0, 0, m, hs, t1, 1.0f, ds, T, k, C3, 1.0f, dq + (size_t)t0 * C3, C3);
        gemm(1, 0, t1, hs, m, 1.0f, ds, T, q + (size_t)t0 * C3, C3, 1.0f, dk, C3);
    }
}

void attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                        const float *att, int B, int T, int C, int NH) {
    long work = (long)B * T * (T + 1) / 2 * C;
    PARALLEL_FOR(work, bh, (long)B * NH,
                 attention_head_backward(dqkv, scratch, dout, qkv, att, T, C, NH, bh));
}

/* ---- cross-entropy ---- */

static void crossentropy_row(float *losses, float *lse, const float *logits,
                             const int32_t *targets, int V, float eps, long i) {
    const float *z  = logits + (size_t)i * V;
    float        mx = row_max(z, V);
    double       l  = mx + log(sum_exp_shifted(z, V, mx));
    lse[i]          = (float)l;
    if (targets[i] < 0) {
        losses[i] = 0.0f;
        return;
    }
    double loss = (1.0 - eps) * (l - z[targets[i]]);
    if (eps != 0.0f) {
        double zs = 0.0;
#pragma omp simd reduction(+ : zs)
        for (int j = 0; j < V; j++) zs += z[j];
        loss += (double)eps * (l - zs / V);
    }
    losses[i] = (float)loss;
}

int crossentropy_forward(float *losses, float *lse, const float *logits, const int32_t *targets,
                         int N, int V, float eps) {
    PARALLEL_FOR((long)N * V, i, N, crossentropy_row(losses, lse, logits, targets, V, eps, i));
    int count = 0;
    for (int i = 0; i < N; i++) count += targets[i] >= 0;
    return count;
}

/*
 * One row of the gradient, out of place and in place: each element is read before it is written,
 * and the in-place copy exists so that the compiler vectorises it without an overlap check
 * (which dst == src would fail, falling back to scalar code).
 */
static inline void ce_row_grad(float *dst, const float *src, int V, float l, float off,
                               float scale) {
    for (int j = 0; j < V; j++) dst[j] = scale * (exp_fast(src[j] - l) - off);
}
static inline void ce_row_grad_inplace(float *z, int V, float l, float off, float scale) {
    for (int j = 0; j < V; j++) z[j] = scale * (exp_fast(z[j] - l) - off);
}

static void crossentropy_backward_row(float *dlogits, const float *logits, const float *lse,
                                      const int32_t *targets, int V, float eps, float scale,
                                      long i) {
    float       *dz  = dlogits + (size_t)i * V;
    const float *z   = logits + (size_t)i * V;
    float        off = eps / (float)V;
    if (targets[i] < 0) {
        memset(dz, 0, (size_t)V * sizeof *dz);
        return;
    }
    if (dz == z) {
        ce_row_grad_inplace(dz, V, lse[i], off, scale);
    } else {
        ce_row_grad(dz, z, V, lse[i], off, scale);
    }
    dz[targets[i]] -= scale * (1.0f - eps);
}

void crossentropy_backward(float *dlogits, const float *logits, const float *lse,
                           const int32_t *targets, int N, int V, float eps, float scale) {
    PARALLEL_FOR((long)N * V, i, N,
                 crossentropy_backward_row(dlogits, logits, lse, targets, V, eps, scale, i));
}
