/*
 * kernels.h — the CPU kernels of the GPT-2 forward and backward passes.
 *
 * Plain functions on pointers and shapes: outputs first, inputs const. Every fast kernel
 * (kernels.c: OpenBLAS sgemm for large products, OpenMP for the rest) has a naive reference
 * with the same signature and a `_ref` suffix (kernels_ref.c); tests compare the two and check
 * each backward against finite differences.
 *
 * Backward kernels ACCUMULATE (+=) into every gradient they receive; a NULL gradient pointer
 * means "frozen: do not compute". This is how a frozen weight gets dX and no dW.
 *
 * B = batch, T = time, C = channels, V = vocab, NH = heads, hs = C / NH, N = B * T rows,
 * OC = output channels. Weights use Hugging Face GPT-2's Conv1D layout: w is (C, OC), row-major,
 * so out = inp · w + bias.
 */
#ifndef LORA_CORE_KERNELS_H
#define LORA_CORE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* ---- embeddings ---- */

/* out (B,T,C) = wte[inp[b,t]] + wpe[t]. inp ids are already range-checked by the caller. */
void encoder_forward(float *out, const int32_t *inp, const float *wte, const float *wpe, int B,
                     int T, int C);
/* dwte (V,C) and/or dwpe (maxT,C) may be NULL. */
void encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *inp, int B,
                      int T, int C);

/* ---- layer norm (biased variance, as torch.nn.LayerNorm) ---- */

/* out (N,C); mean, rstd (N) are saved for backward. */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                       const float *b, int N, int C, float eps);
/* dinp (N,C) accumulates; dinp, dw and db (C) may each be NULL. */
void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, int N, int C);

/* ---- general matrix product ---- */

/*
 * Row-major C (M,N) = alpha · op(A) · op(B) + beta · C, with op(X) = X or Xᵀ (transX != 0),
 * op(A) (M,K), op(B) (K,N), leading dimensions lda, ldb, ldc (so C may be a column slice of a
 * wider matrix). The fast version is cblas_sgemm, and for M = 1 or N = 1 (matrix-vector) its
 * own kernels, whose results do not depend on the thread count; beta = 0 ignores C's old
 * contents.
 */
void gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc);
void gemm_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);

/* ---- matmul (Conv1D layout) ---- */

/* out (N,OC) = inp (N,C) · w (C,OC) + bias (OC, may be NULL). Overwrites out. */
void matmul_forward(float *out, const float *inp, const float *w, const float *bias, int N, int C,
                    int OC);
/* dinp (N,C) += dout · wᵀ (dinp may be NULL); dw (C,OC) += inpᵀ · dout and db (OC) += Σ dout
 * only when non-NULL. */
void matmul_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                     const float *w, int N, int C, int OC);

/* ---- matmul with a transposed weight (decoding a few rows) ---- */

/* Rows up to which matmul_forward_t runs its own dot-product kernel instead of sgemm. */
#define MATMUL_T_ROWS 8

/*
 * out (N,OC) = inp (N,C) · wtᵀ + bias (OC, may be NULL), with wt (OC,C) = wᵀ, the Conv1D
 * weight stored transposed. For N <= MATMUL_T_ROWS each output element is a dot product over
 * one row of wt, read from memory once for all N rows (threads own contiguous blocks of rows
 * of wt, as gemm's one-row products with the matrix stored (N, K)); above, cblas_sgemm. Equals
 * matmul_forward(out, inp, w, bias, ...) to rounding (the sums run in another order); results
 * do not depend on the thread count. Overwrites out.
 */
void matmul_forward_t(float *out, const float *inp, const float *wt, const float *bias, int N,
                      int C, int OC);

/* s[q] = Σ_k w[k] · x_q[k] over n floats for four vectors x0..x3 at once (w is read once for
 * the four): the inner loop of matmul_forward_t's few-row kernel and of the adapters' down
 * projection. */
static inline void dot4(float s[4], const float *restrict w, const float *restrict x0,
                        const float *restrict x1, const float *restrict x2,
                        const float *restrict x3, int n) {
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int k = 0; k < n; k++) {
        s0 += w[k] * x0[k];
        s1 += w[k] * x1[k];
        s2 += w[k] * x2[k];
        s3 += w[k] * x3[k];
    }
    s[0] = s0, s[1] = s1, s[2] = s2, s[3] = s3;
}

/* out (cols, rows) = inpᵀ for inp (rows, cols), both row-major. Exact. */
void matrix_transpose(float *out, const float *inp, int rows, int cols);

/* ---- activations ---- */

/* GELU, tanh approximation (HF "gelu_new"): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
void gelu_forward(float *out, const float *inp, size_t n);
void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n); /* accumulates */
/* GELU, exact (HF "gelu"): 0.5 x (1 + erf(x / sqrt 2)). */
void gelu_erf_forward(float *out, const float *inp, size_t n);
void gelu_erf_backward(float *dinp, const float *inp, const float *dout, size_t n);

/* out = a + b, elementwise (n). out may alias a or b. */
void residual_forward(float *out, const float *a, const float *b, size_t n);
/* da += dout; db += dout (either may be NULL). */
void residual_backward(float *da, float *db, const float *dout, size_t n);

/* ---- causal self-attention ---- */

/*
 * qkv (B,T,3C) holds q | k | v per position (HF's c_attn output order); head h of q is
 * qkv[b,t, h*hs : (h+1)*hs], of k at offset C, of v at 2C. Scores are scaled by 1/sqrt(hs),
 * masked causally, softmaxed. out (B,T,C) is the heads re-concatenated. att (B,NH,T,T) receives
 * the probabilities (entries above the diagonal are written as 0) for the backward pass.
 */
void attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH);
/*
 * dqkv (B,T,3C) accumulates. scratch holds at least attention_scratch_floats(B, T, NH) floats.
 */
void   attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                          const float *att, int B, int T, int C, int NH);
size_t attention_scratch_floats(int B, int T, int NH);

/* ---- cross-entropy over the vocabulary ---- */

/*
 * Per-row cross-entropy with label smoothing eps, as torch.nn.functional.cross_entropy:
 *   loss_i = (1 - eps) * (lse_i - z[i,y_i]) + eps * (lse_i - mean_j z[i,j])
 * for rows with targets[i] >= 0; losses[i] = 0 for ignored rows (targets[i] < 0).
 * lse (N) receives log-sum-exp of each row (for backward). Returns the number of counted rows.
 * The caller averages: loss = Σ losses / count.
 */
int crossentropy_forward(float *losses, float *lse, const float *logits, const int32_t *targets,
                         int N, int V, float eps);
/*
 * dlogits (N,V) = scale * (softmax(z_i) - (1 - eps) onehot(y_i) - eps / V) for counted rows,
 * 0 for ignored rows. OVERWRITES dlogits (does not accumulate); dlogits may alias logits
 * (computed in place). scale is normally 1 / count.
 */
void crossentropy_backward(float *dlogits, const float *logits, const float *lse,
                           const int32_t *targets, int N, int V, float eps, float scale);

/* ---- naive references (kernels_ref.c), same contracts ---- */

void encoder_forward_ref(float *out, const int32_t *inp, const float *wte, const float *wpe,
                         int B, int T, int C);
void encoder_backward_ref(float *dwte, float *dwpe, const float *dout, const int32_t *inp, int B,
                          int T, int C);
void layernorm_forward_ref(float *out, float *mean, float *rstd, const float *inp, const float *w,
                           const float *b, int N, int C, float eps);
void layernorm_backward_ref(float *dinp, float *dw, float *db, const float *dout,
                            const float *inp, const float *w, const float *mean,
                            const float *rstd, int N, int C);
void matmul_forward_ref(float *out, const float *inp, const float *w, const float *bias, int N,
                        int C, int OC);
void matmul_backward_ref(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                         const float *w, int N, int C, int OC);
void matmul_forward_t_ref(float *out, const float *inp, const float *wt, const float *bias,
                          int N, int C, int OC);
void matrix_transpose_ref(float *out, const float *inp, int rows, int cols);
void gelu_forward_ref(float *out, const float *inp, size_t n);
void gelu_backward_ref(float *dinp, const float *inp, const float *dout, size_t n);
void gelu_erf_forward_ref(float *out, const float *inp, size_t n);
void gelu_erf_backward_ref(float *dinp, const float *inp, const float *dout, size_t n);
void attention_forward_ref(float *out, float *att, const float *qkv, int B, int T, int C, int NH);
void attention_backward_ref(float *dqkv, float *scratch, const float *dout, const float *qkv,
                            const float *att, int B, int T, int C, int NH);
int  crossentropy_forward_ref(float *losses, float *lse, const float *logits,
                              const int32_t *targets, int N, int V, float eps);
void crossentropy_backward_ref(float *dlogits, const float *logits, const float *lse,
                               const int32_t *targets, int N, int V, float eps, float scale);

#endif
