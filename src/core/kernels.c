/*
 * kernels.c — the fast CPU kernels declared in kernels.h.
 *
 * Products go to OpenBLAS (cblas_sgemm, row-major, transposes instead of copies; one-row and
 * one-column products to cblas_sgemv); the rest is OpenMP over independent rows, (b, h) pairs,
 * channel blocks or spans, with contiguous inner loops the compiler vectorises, and loops too
 * small to be worth a thread team run on the calling thread. Every reduction that feeds a
 * result is done in a fixed order (no atomics, no thread-count-dependent sums), so results are
 * reproducible run to run.
 * Not here: the naive references (kernels_ref.c), GPU code, allocation (scratch is passed in).
 */
#include "core/kernels.h"

#include <cblas.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

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
    PARALLEL_FOR(work, i, N, layernorm_dinp_row(dinp, dout, inp, w, mean, rstd, C, i));
    if (!dw && !db) return;
    /* dw, db: sums over rows; each thread owns a block of channels */
    int nblk = (C + COL_BLOCK - 1) / COL_BLOCK;
    PARALLEL_FOR(work, blk, nblk, layernorm_dw_block(dw, db, dout, inp, mean, rstd, N, C, blk));
}

/* ---- general matrix product ---- */

/*
 * A product with one row (M = 1) or one column (N = 1) is a matrix-vector product, and goes to
 * cblas_sgemv: sgemm would pack the whole matrix operand into its blocked layout on every call,
 * which for one decoded token costs as much as the arithmetic. The vector is a row or a column
 * of the stored operand (increment 1 or its leading dimension), the matrix keeps its storage and
 * a transpose flag picks the product. The result is written with increment 1 (a row of C) or
 * ldc (a column). beta = 0 must ignore C's old contents (NaN included); that is made explicit by
 * zeroing the output first. K = 0 leaves C = beta · C, which sgemv (it returns early on an empty
 * matrix) would not do.
 */
static void gemv_out_scale(float *y, int n, int inc, float beta) {
    for (int i = 0; i < n; i++) {
        float *yi = y + (size_t)i * inc;
        *yi       = beta == 0.0f ? 0.0f : beta * *yi;
    }
}

void gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (M == 1 || N == 1) {
        int rowc = M == 1; /* C is one row (n = N, increment 1), else one column of M */
        int n = rowc ? N : M, inc = rowc ? 1 : ldc;
        if (K <= 0 || beta == 0.0f) gemv_out_scale(C, n, inc, beta);
        if (K <= 0) return;
        if (rowc) {
            /* C (1,N) = alpha · x (K) · op(B); x is A's row, or A's column when transA */
            if (transB) /* B stored (N,K): y = B · x */
                cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, alpha, B, ldb, A,
                            transA ? lda : 1, beta, C, 1);
            else /* B stored (K,N): y = Bᵀ · x */
                cblas_sgemv(CblasRowMajor, CblasTrans, K, N, alpha, B, ldb, A,
                            transA ? lda : 1, beta, C, 1);
        } else {
            /* C (M,1) = alpha · op(A) · x (K); x is B's column, or B's row when transB */
            if (transA) /* A stored (K,M): y = Aᵀ · x */
                cblas_sgemv(CblasRowMajor, CblasTrans, K, M, alpha, A, lda, B,
                            transB ? 1 : ldb, beta, C, ldc);
            else /* A stored (M,K): y = A · x */
                cblas_sgemv(CblasRowMajor, CblasNoTrans, M, K, alpha, A, lda, B,
                            transB ? 1 : ldb, beta, C, ldc);
        }
        return;
    }
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* ---- matmul (Conv1D layout: w is (C, OC)) ---- */

/* o (n) += b (n) */
static void add_row(float *restrict o, const float *restrict b, int n) {
    for (int j = 0; j < n; j++) o[j] += b[j];
}

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

void matmul_forward(float *out, const float *inp, const float *w, const float *bias, int N, int C,
                    int OC) {
    gemm(0, 0, N, OC, C, 1.0f, inp, C, w, OC, 0.0f, out, OC);
    if (!bias) return;
    PARALLEL_FOR((long)N * OC, i, N, add_row(out + (size_t)i * OC, bias, OC));
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
