/*
 * linear.h — the linear site: the one seam where every PEFT method meets the model.
 *
 * Every projection of a model is one `linear`: a frozen weight W0 (HF Conv1D layout, (in, out)),
 * an optional bias, optional gradients (only when a method made them trainable), and the
 * adapters attached to it. An adapter adds its term to a slice of the output columns
 * [off, off + len), so an adapter on only the q or v third of GPT-2's fused c_attn is exact.
 *
 *   forward:  out = inp · W0 + b + Σ_adapters delta(inp)
 *   backward: dinp += dout · W0ᵀ (+ the adapters' dX); dW0 and db only when trainable.
 *   merged:   out = inp · (W0 + Σ ΔW) + b, the adapters skipped (merge.c)
 *
 * Backward through a frozen W0 computes dX only — never dW, and no memory is held for one.
 * That is where LoRA's speed and memory advantage over full fine-tuning comes from.
 */
#ifndef LORA_PEFT_LINEAR_H
#define LORA_PEFT_LINEAR_H

#include "lora.h"

#include <stddef.h>
#include <stdint.h>

#define LINEAR_MAX_ADAPTERS 8 /* q, k and v slices of c_attn count one each */
#define LINEAR_NAME_MAX     48

typedef struct linear       linear;
typedef struct adapter      adapter;
typedef struct adapter_ops  adapter_ops;

/* Per-pass context shared by all sites (training flag, dropout stream, scratch). */
typedef struct peft_ctx {
    int      training;
    uint64_t seed;    /* dropout stream seed */
    uint64_t pass;    /* forward-pass counter: backward regenerates the same dropout masks */
    float   *scratch; /* >= scratch_floats floats, shared by every adapter (one at a time) */
    size_t   scratch_floats;
    lora_profile *prof;       /* owned by the model; NULL: profiling off */
    int           prof_phase; /* LORA_PROF_FORWARD / _BACKWARD / _STEP of the running call */
} peft_ctx;

/* Site-level operations of an adapter kind (LoRA, AdaLoRA, ...). */
struct adapter_ops {
    const char *name;
    /* out[:, off:off+len] (row stride site->out) += delta(inp); keeps what backward needs. */
    void (*forward)(adapter *a, const linear *site, float *out, const float *inp, int N,
                    const peft_ctx *ctx);
    /* Accumulates the adapter's parameter gradients and, if dinp != NULL, its dX into dinp. */
    void (*backward)(adapter *a, const linear *site, float *dinp, const float *dout,
                     const float *inp, int N, const peft_ctx *ctx);
    /* Plans per-pass storage for up to N rows; returns the scratch floats it needs. */
    lora_status (*reserve)(adapter *a, const linear *site, int N, size_t *scratch_floats,
                           lora_error *err);
    void (*free)(adapter *a);
    /* w (in, site->out) += the adapter's ΔW in the Conv1D layout, on columns [off, off+len),
     * with its current values and scale: what its forward adds, folded into a weight. NULL: the
     * adapter cannot be merged. */
    void (*merge)(const adapter *a, const linear *site, float *w);
    /* 1: the adapter has no trainable parameters (its backward only passes dX through). */
    int frozen;
};

struct adapter {
    const adapter_ops *ops;
    int32_t            off, len; /* output columns of the site this adapter adds to */
    uint32_t           uid;      /* stable id: dropout stream, ordering */
    void              *state;    /* owned by ops */
};

struct linear {
    char         name[LINEAR_NAME_MAX]; /* "h.0.attn.c_attn" */
    int32_t      in, out;
    const float *w;  /* (in, out) frozen unless dw != NULL */
    const float *b;  /* (out) or NULL */
    float       *dw; /* (in, out) or NULL: frozen */
    float       *db; /* (out) or NULL: frozen */
    int32_t      n_adapters;
    adapter      adapters[LINEAR_MAX_ADAPTERS];
    /* while merged (merge.c): w points at w_merged = W0 + Σ ΔW and the adapters are skipped;
     * w0 keeps the original pointer, restored as is by unmerge. Both NULL otherwise. */
    const float *w0;
    float       *w_merged; /* (in, out) owned */
};

/* out (N, site->out) = inp (N, site->in) · W0 + b + adapters (W0 + ΔW and no adapters while
 * merged). Overwrites out. */
void linear_forward(linear *site, float *out, const float *inp, int N, const peft_ctx *ctx);
/* linear_forward with the base product taken from wt (out, in) = wᵀ, a transposed copy of the
 * site's current w that the caller keeps current (decode.c): the same bias and adapters (none
 * while merged), the product summed in another order (equal to rounding). */
void linear_forward_wt(linear *site, const float *wt, float *out, const float *inp, int N,
                       const peft_ctx *ctx);
/* dinp (N, in) += dout · W0ᵀ + adapters' dX (dinp may be NULL); trainable grads accumulate. */
void linear_backward(linear *site, float *dinp, const float *dout, const float *inp, int N,
                     const peft_ctx *ctx);
/* As linear_backward, but dinp (never NULL) is overwritten instead of accumulated into: the
 * caller need not zero it first. */
void linear_backward_set(linear *site, float *dinp, const float *dout, const float *inp, int N,
                         const peft_ctx *ctx);
/* Whether backward accumulates any gradient at the site (W0, bias or a trainable adapter). */
int linear_has_grad(const linear *site);
/* ---- helpers shared by low-rank adapters (LoRA, AdaLoRA) ---- */

/* Whether this pass drops the adapter's input, and the stream its mask is drawn from: masks are
 * regenerated from (seed, adapter id, pass) in backward instead of being stored. */
int      adapter_dropout_on(const peft_ctx *ctx, float p);
uint64_t adapter_dropout_key(const adapter *a, const peft_ctx *ctx);
/* out (n) = x ⊙ mask / (1 - p): the masks' definition (element i of the (N, in) input draws
 * rng_keep24(key, i)), which the fused kernels below draw identically; the tests' reference. */
void adapter_dropout_apply(float *out, const float *x, size_t n, float p, uint64_t key);
/* u (N, r) = dropout(x) (N, in) · Aᵀ, A (r, in); dropout only when dropped (mask from key, as
 * adapter_dropout_apply draws it). The dropped-out input is never stored: each block of rows
 * is masked a chunk at a time in L1 and every row of A passes over it. */
void adapter_down(float *u, const float *x, const float *A, int N, int r, int in, int dropped,
                  float p, uint64_t key);
/* The input side of an adapter's backward, from du (N, r) = dL/du and the same mask:
 * dA (r, in) += duᵀ · dropout(x) and, if dinp, dinp (N, in) += (du · A) ⊙ mask / (1 - p). One
 * pass over x and dinp, the mask drawn once per element; threads own column blocks and sum
 * the rows in order, so the result does not depend on the thread count. */
void adapter_up_grads(float *dA, float *dinp, const float *du, const float *x, const float *A,
                      int N, int r, int in, int dropped, float p, uint64_t key);

/* Grows a per-pass (rows, r) buffer to hold at least N rows (*n_max rows now); keeps it when big
 * enough. For an adapter's reserve. */
lora_status adapter_reserve_rows(float **buf, int32_t *n_max, int N, int32_t r,
                                 const linear *site, lora_error *err);

/* Appends an adapter (its ops and state already set); LORA_ERR_STATE when the site is full. */
lora_status linear_attach(linear *site, const adapter *a, lora_error *err);
void        linear_free_adapters(linear *site);
/* Frees the adapters at [n, n_adapters) and keeps the first n. */
void        linear_truncate_adapters(linear *site, int32_t n);
/* Takes the adapter whose state is `state` off the site, keeping the others' order; the state
 * is not freed. Returns 1 when found. */
int         linear_detach(linear *site, const void *state);

#endif
