/*
 * kernels_ref.c — naive reference versions of the CPU kernels in kernels.h.
 *
 * Single-threaded, written for obviousness: plain loops, sums accumulated in double, no BLAS.
 * These are what the fast kernels (kernels.c) are tested against, and what the finite-difference
 * checks validate. They are not meant to be fast and the engine never calls them.
 */
#include "core/kernels.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>

// B = batch, T = time, C = channels, V = vocab, NH = heads, hs = C / NH, N = rows, OC = out chans

/* ---- embeddings ---- */

void encoder_forward_ref(float *out, const int32_t *inp, const float *wte, const float *wpe,
                         int B, int T, int C) {
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            float       *o  = out + ((size_t)b * T + t) * C;
            const float *we = wte + (size_t)inp[b * T + t] * C;
            const float *pe = wpe + (size_t)t * C;
            for (int c = 0; c < C; c++) o[c] = we[c] + pe[c];
        }
    }
}

void encoder_backward_ref(float *dwte, float *dwpe, const float *dout, const int32_t *inp, int B,
                          int T, int C) {
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            const float *d = dout + ((size_t)b * T + t) * C;
            for (int c = 0; c < C; c++) {
                if (dwte) dwte[(size_t)inp[b * T + t] * C + c] += d[c];
                if (dwpe) dwpe[(size_t)t * C + c] += d[c];
            }
        }
    }
}

/* ---- layer norm ---- */

void layernorm_forward_ref(float *out, float *mean, float *rstd, const float *inp, const float *w,
                           const float *b, int N, int C, float eps) {
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C;
        double       m = 0.0;
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
        double v = 0.0;
        for (int c = 0; c < C; c++) v += ((double)x[c] - m) * ((double)x[c] - m);
        v /= C;
        double s = 1.0 / sqrt(v + (double)eps);
        for (int c = 0; c < C; c++) {
            out[(size_t)i * C + c] = (float)(((double)x[c] - m) * s * w[c] + b[c]);
        }
        mean[i] = (float)m;
        rstd[i] = (float)s;
    }
}

/*
 * With n = (x - mean) * rstd and y = n * w + b:
 *   dx = rstd * (g - mean(g) - n * mean(g * n)),  g = dout * w
 *   dw += Σ_rows dout * n,  db += Σ_rows dout
 */
void layernorm_backward_ref(float *dinp, float *dw, float *db, const float *dout,
                            const float *inp, const float *w, const float *mean,
                            const float *rstd, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float *x  = inp + (size_t)i * C;
        const float *dy = dout + (size_t)i * C;
        double       m = mean[i], s = rstd[i];
        double       g_mean = 0.0, gn_mean = 0.0;
        for (int c = 0; c < C; c++) {
            double n = ((double)x[c] - m) * s;
            double g = (double)dy[c] * w[c];
            g_mean += g;
            gn_mean += g * n;
        }
        g_mean /= C;
        gn_mean /= C;
        for (int c = 0; c < C; c++) {
            double n = ((double)x[c] - m) * s;
            double g = (double)dy[c] * w[c];
            dinp[(size_t)i * C + c] += (float)(s * (g - g_mean - n * gn_mean));
            if (dw) dw[c] += (float)(dy[c] * n);
            if (db) db[c] += dy[c];
        }
    }
}

/* ---- general matrix product ---- */

void gemm_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc) {
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double acc = 0.0;
            for (int k = 0; k < K; k++) {
                float a = transA ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                float b = transB ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                acc += (double)a * b;
            }
            float *c = C + (size_t)i * ldc + j;
            /* beta = 0 must not read C: it may hold garbage, even NaN */
            *c = (float)(alpha * acc + (beta == 0.0f ? 0.0 : (double)beta * *c));
        }
    }
}

/* ---- matmul (Conv1D layout: w is (C, OC)) ---- */

/* out (N,OC) = inp (N,C) · W + bias, element (c, o) of W at w[c · sc + o · so], in double */
static void matmul_strided_ref(float *out, const float *inp, const float *w, size_t sc,
                               size_t so, const float *bias, int N, int C, int OC) {
    for (int i = 0; i < N; i++) {
        for (int o = 0; o < OC; o++) {
            double acc = bias ? bias[o] : 0.0;
            for (int c = 0; c < C; c++) {
                acc += (double)inp[(size_t)i * C + c] * w[(size_t)c * sc + (size_t)o * so];
            }
            out[(size_t)i * OC + o] = (float)acc;
        }
    }
}

void matmul_forward_ref(float *out, const float *inp, const float *w, const float *bias, int N,
                        int C, int OC) {
    matmul_strided_ref(out, inp, w, (size_t)OC, 1, bias, N, C, OC);
}

/* wt is (OC, C) = wᵀ */
void matmul_forward_t_ref(float *out, const float *inp, const float *wt, const float *bias,
                          int N, int C, int OC) {
    matmul_strided_ref(out, inp, wt, 1, (size_t)C, bias, N, C, OC);
}

void matrix_transpose_ref(float *out, const float *inp, int rows, int cols) {
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) out[(size_t)j * rows + i] = inp[(size_t)i * cols + j];
}

void matmul_backward_ref(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                         const float *w, int N, int C, int OC) {
    if (dinp) {
        for (int i = 0; i < N; i++) {
            for (int c = 0; c < C; c++) {
                double acc = 0.0;
                for (int o = 0; o < OC; o++) {
                    acc += (double)dout[(size_t)i * OC + o] * w[(size_t)c * OC + o];
                }
                dinp[(size_t)i * C + c] += (float)acc;
            }
        }
    }
    if (dw) {
        for (int c = 0; c < C; c++) {
            for (int o = 0; o < OC; o++) {
                double acc = 0.0;
                for (int i = 0; i < N; i++) {
                    acc += (double)inp[(size_t)i * C + c] * dout[(size_t)i * OC + o];
                }
                dw[(size_t)c * OC + o] += (float)acc;
            }
        }
    }
    if (db) {
        for (int o = 0; o < OC; o++) {
            double acc = 0.0;
            for (int i = 0; i < N; i++) acc += dout[(size_t)i * OC + o];
            db[o] += (float)acc;
        }
    }
}

/* ---- activations ---- */

#define GELU_K 0.7978845608028654 /* sqrt(2 / pi) */
#define GELU_A 0.044715

void gelu_forward_ref(float *out, const float *inp, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double x = inp[i];
        out[i] = (float)(0.5 * x * (1.0 + tanh(GELU_K * (x + GELU_A * x * x * x))));
    }
}

/* d/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh² u) u',  u = k (x + a x³),  u' = k (1 + 3 a x²) */
void gelu_backward_ref(float *dinp, const float *inp, const float *dout, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double x  = inp[i];
        double th = tanh(GELU_K * (x + GELU_A * x * x * x));
        double du = GELU_K * (1.0 + 3.0 * GELU_A * x * x);
        double d  = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du;
        dinp[i] += (float)(d * dout[i]);
    }
}

#define SQRT1_2     0.7071067811865476 /* 1 / sqrt(2) */
#define INV_SQRT2PI 0.3989422804014327 /* 1 / sqrt(2 pi) */

void gelu_erf_forward_ref(float *out, const float *inp, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double x = inp[i];
        out[i]   = (float)(0.5 * x * erfc(-x * SQRT1_2)); /* 1 + erf(y) = erfc(-y) */
    }
}

/* d/dx = Φ(x) + x φ(x) */
void gelu_erf_backward_ref(float *dinp, const float *inp, const float *dout, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double x = inp[i];
        double d = 0.5 * erfc(-x * SQRT1_2) + x * INV_SQRT2PI * exp(-0.5 * x * x);
        dinp[i] += (float)(d * dout[i]);
    }
}

/* ---- causal self-attention ---- */

void attention_forward_ref(float *out, float *att, const float *qkv, int B, int T, int C,
                           int NH) {
    int    hs    = C / NH;
    double scale = 1.0 / sqrt((double)hs);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            for (int t = 0; t < T; t++) {
                const float *q   = qkv + ((size_t)b * T + t) * 3 * C + (size_t)h * hs;
                float       *row = att + (((size_t)b * NH + h) * T + t) * T;
                /* scaled scores of the causal prefix, then a max-shifted softmax over them */
                double mx = -INFINITY;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *k = qkv + ((size_t)b * T + t2) * 3 * C + C + (size_t)h * hs;
                    double       s = 0.0;
                    for (int i = 0; i < hs; i++) s += (double)q[i] * k[i];
                    row[t2] = (float)(s * scale);
                    if (row[t2] > mx) mx = row[t2];
                }
                double sum = 0.0;
                for (int t2 = 0; t2 <= t; t2++) sum += exp(row[t2] - mx);
                for (int t2 = 0; t2 <= t; t2++) row[t2] = (float)(exp(row[t2] - mx) / sum);
                for (int t2 = t + 1; t2 < T; t2++) row[t2] = 0.0f;

                float *o = out + ((size_t)b * T + t) * C + (size_t)h * hs;
                for (int i = 0; i < hs; i++) {
                    double acc = 0.0;
                    for (int t2 = 0; t2 <= t; t2++) {
                        const float *v =
                            qkv + ((size_t)b * T + t2) * 3 * C + 2 * (size_t)C + (size_t)h * hs;
                        acc += (double)row[t2] * v[i];
                    }
                    o[i] = (float)acc;
                }
            }
        }
    }
}

/*
 * Per query row t with probabilities p = att[t, :t+1]:
 *   dp[t2]  = dout_t · v_t2                 dv_t2 += p[t2] dout_t
 *   ds[t2]  = p[t2] (dp[t2] - Σ_j p[j] dp[j])   (softmax backward)
 *   dq_t   += scale Σ ds[t2] k_t2            dk_t2 += scale ds[t2] q_t
 * scratch[0 .. T) holds dp of the current row.
 */
void attention_backward_ref(float *dqkv, float *scratch, const float *dout, const float *qkv,
                            const float *att, int B, int T, int C, int NH) {
    int    hs    = C / NH;
    double scale = 1.0 / sqrt((double)hs);
    float *dp    = scratch;
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            for (int t = 0; t < T; t++) {
                size_t       qoff = ((size_t)b * T + t) * 3 * C + (size_t)h * hs;
                const float *q    = qkv + qoff;
                float       *dq   = dqkv + qoff;
                const float *p    = att + (((size_t)b * NH + h) * T + t) * T;
                const float *dy   = dout + ((size_t)b * T + t) * C + (size_t)h * hs;

                for (int t2 = 0; t2 <= t; t2++) {
                    size_t voff = ((size_t)b * T + t2) * 3 * C + 2 * (size_t)C + (size_t)h * hs;
                    double acc  = 0.0;
                    for (int i = 0; i < hs; i++) {
                        acc += (double)dy[i] * qkv[voff + i];
                        dqkv[voff + i] += p[t2] * dy[i];
                    }
                    dp[t2] = (float)acc;
                }
                double pdp = 0.0;
                for (int t2 = 0; t2 <= t; t2++) pdp += (double)p[t2] * dp[t2];
                for (int t2 = 0; t2 <= t; t2++) {
                    size_t koff = ((size_t)b * T + t2) * 3 * C + C + (size_t)h * hs;
                    double ds   = p[t2] * (dp[t2] - pdp) * scale;
                    for (int i = 0; i < hs; i++) {
                        dq[i] += (float)(ds * qkv[koff + i]);
                        dqkv[koff + i] += (float)(ds * q[i]);
                    }
                }
            }
        }
    }
}

/* ---- cross-entropy ---- */

int crossentropy_forward_ref(float *losses, float *lse, const float *logits,
                             const int32_t *targets, int N, int V, float eps) {
    int count = 0;
    for (int i = 0; i < N; i++) {
        const float *z  = logits + (size_t)i * V;
        double       mx = -INFINITY;
        for (int j = 0; j < V; j++) {
            if (z[j] > mx) mx = z[j];
        }
        double sum = 0.0, zsum = 0.0;
        for (int j = 0; j < V; j++) {
            sum += exp(z[j] - mx);
            zsum += z[j];
        }
        double l = mx + log(sum);
        lse[i]   = (float)l;
        if (targets[i] < 0) {
            losses[i] = 0.0f;
            continue;
        }
        double nll    = l - z[targets[i]];
        double smooth = l - zsum / V;
        losses[i]     = (float)((1.0 - eps) * nll + (double)eps * smooth);
        count++;
    }
    return count;
}

void crossentropy_backward_ref(float *dlogits, const float *logits, const float *lse,
                               const int32_t *targets, int N, int V, float eps, float scale) {
    for (int i = 0; i < N; i++) {
        const float *z  = logits + (size_t)i * V;
        float       *dz = dlogits + (size_t)i * V;
        for (int j = 0; j < V; j++) {
            if (targets[i] < 0) {
                dz[j] = 0.0f;
                continue;
            }
            double p   = exp((double)z[j] - lse[i]); /* read z[j] before dz[j] may overwrite it */
            double hot = (j == targets[i]) ? 1.0 - eps : 0.0;
            dz[j]      = (float)(scale * (p - hot - (double)eps / V));
        }
    }
}
