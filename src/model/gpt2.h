/*
 * gpt2.h — the GPT-2 architecture: weights (memory-mapped, never copied when F32), activations
 * planned once for the largest batch, forward and backward through linear sites.
 *
 * This is the definition of `struct lora_model` (opaque in lora.h). PEFT methods (src/peft/)
 * reach into the sites and the registry; nothing above this layer does.
 *
 * B = batch, T = time, C = n_embd, NH = n_head, F = n_inner (MLP width), V = vocab, L = layers.
 */
#ifndef LORA_MODEL_GPT2_H
#define LORA_MODEL_GPT2_H

#include "lora.h"
#include "io/safetensors.h"
#include "peft/linear.h"
#include "peft/params.h"

typedef struct gpt2_layer {
    const float *ln_1_w, *ln_1_b; /* (C) */
    const float *ln_2_w, *ln_2_b; /* (C) */
    float       *dln_1_w, *dln_1_b, *dln_2_w, *dln_2_b; /* (C) or NULL when frozen */
    linear       c_attn;    /* C -> 3C, output q | k | v */
    linear       attn_proj; /* C -> C */
    linear       c_fc;      /* C -> F */
    linear       mlp_proj;  /* F -> C */
} gpt2_layer;

/* Activations of one layer, each (B, T, ·) for the reserved B, T. */
typedef struct gpt2_layer_acts {
    float *ln1, *ln1_mean, *ln1_rstd; /* (B,T,C), (B,T), (B,T) */
    float *qkv;                       /* (B,T,3C) */
    float *atty;                      /* (B,T,C) attention output before c_proj */
    float *att;                       /* (B,NH,T,T) probabilities */
    float *res2;                      /* (B,T,C) residual after attention */
    float *ln2, *ln2_mean, *ln2_rstd; /* (B,T,C), (B,T), (B,T) */
    float *fch, *fch_gelu;            /* (B,T,F) */
    float *res3;                      /* (B,T,C) residual after the MLP = the layer's output */
} gpt2_layer_acts;

struct lora_model {
    lora_config cfg;
    char       *dir;
    st_set      files;
    float      *converted; /* F16/BF16 (or unaligned) tensors converted to F32, owned */
    size_t      converted_floats;
    int64_t     weights_bytes; /* F32 bytes of every tensor the model uses */

    const float *wte;     /* (V, C) */
    const float *wpe;     /* (n_positions, C) */
    const float *ln_f_w, *ln_f_b; /* (C) */
    const float *lm_head; /* (V, C); == wte when tied */
    float       *dwte, *dwpe, *dln_f_w, *dln_f_b, *dlm_head; /* NULL when frozen */
    gpt2_layer  *layers;  /* (L) */

    /* PEFT state */
    const struct peft_method *method;       /* the attached method's table, or NULL */
    void                     *method_state; /* owned by the method (AdaLoRA's allocator) */
    int                 attached;
    lora_adapter_params peft;
    tparams             tp;
    peft_ctx            ctx;
    float               label_smoothing;
    struct named_set   *named;        /* inference adapters by name (adapters.c), or NULL */
    int                 merged;       /* 1: the sites' adapters are folded into w (merge.c) */
    uint32_t            adapters_gen; /* bumped whenever adapters are attached or removed */
    /* bumped whenever a site's w may change pointer or contents without a training step:
     * merge, unmerge (switch does both), attaching a method (full fine-tuning rebinds w).
     * Copies of w (the decoder's transposed weights) compare it before every use. */
    uint32_t            weights_gen;

    /* activations, planned for B_max x T_max */
    int32_t          B_max, T_max;
    int              checkpoint; /* 1: layers share one set of insides, recomputed in backward */
    float           *act_mem; /* owned, one allocation */
    size_t           act_floats;
    float           *encoded;            /* (B,T,C) */
    gpt2_layer_acts *la;                 /* (L) */
    float           *lnf, *lnf_mean, *lnf_rstd; /* (B,T,C), (B,T), (B,T) */
    float           *logits;             /* (B,T,V); dlogits in place after backward */
    float           *losses, *lse;       /* (B,T) */
    /* backward buffers, reused across layers */
    float *dres, *dln, *dqkv, *datty, *dfch_a, *dfch_b, *att_scratch, *peft_scratch;
    size_t peft_scratch_floats;
    int32_t *tokens, *targets; /* (B,T) copies of the last forward's inputs */

    /* the last forward */
    int32_t B, T;
    int     have_targets, logits_valid;
    int32_t n_counted;
};

/* Names every linear site ("h.N.attn.c_attn", ...) and sets its shape from m->cfg; for loaders
 * that have allocated m->layers. */
void gpt2_init_sites(lora_model *m);

/* Re-plans activations if the PEFT scratch requirement grew (after attaching adapters). */
lora_status gpt2_replan(lora_model *m, lora_error *err);

/* Which linear inputs of a layer are kept for backward (the others share one buffer): a
 * site keeps its input only when it has a weight gradient or adapters. */
enum { GPT2_KEEP_LN1 = 1, GPT2_KEEP_ATTY = 2, GPT2_KEEP_LN2 = 4, GPT2_KEEP_GELU = 8,
       GPT2_KEEP_ALL = 15 };

/* Bytes of activations (forward storage, backward buffers, PEFT scratch) for B x T, with each
 * layer's GPT2_KEEP_* mask (keep[n_layer]; NULL: every input kept), with activation
 * checkpointing when checkpoint is non-zero. */
int64_t gpt2_activation_bytes(const lora_config *c, int32_t B, int32_t T, size_t peft_scratch,
                              const uint8_t *keep, int checkpoint);

#endif
