/*
 * lora.h — the public C API of lora.c.
 *
 * Fine-tunes GPT-2-architecture language models with low-rank adapters (LoRA, Hu et al. 2022)
 * and the paper's baselines (full fine-tuning, bias-only "BitFit") on frozen, memory-mapped
 * Hugging Face weights. This header is the only one a program needs; it is C11, valid under
 * -pedantic and from C++.
 *
 * Conventions
 *  - Handles are opaque. `x_free(NULL)` is a no-op.
 *  - Every fallible function returns a lora_status (LORA_OK == 0, failures negative) and, when
 *    given a non-NULL lora_error, fills it with one line "<file>: <problem> (hint: ...)".
 *    The library never prints and never exits on bad input.
 *  - Shapes: B = batch, T = time (sequence), C = channels, V = vocab, r = LoRA rank.
 *  - Token ids and targets are int32; a negative target means "no loss on this position"
 *    (prompt tokens, padding).
 */
#ifndef LORA_H
#define LORA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status and errors ---- */

typedef enum lora_status {
    LORA_OK              = 0,
    LORA_ERR_IO          = -1, /* a file could not be opened, read, written or renamed */
    LORA_ERR_FORMAT      = -2, /* a file's bytes are malformed, truncated or out of range */
    LORA_ERR_SHAPE       = -3, /* a tensor's shape disagrees with the model's config */
    LORA_ERR_NOMEM       = -4, /* an allocation failed */
    LORA_ERR_ARG         = -5, /* an invalid argument from the caller */
    LORA_ERR_UNSUPPORTED = -6, /* a valid but unsupported feature (dtype, activation, ...) */
    LORA_ERR_STATE       = -7, /* the call is not valid in the object's current state */
    LORA_ERR_MISSING     = -8  /* a required file or tensor is absent */
} lora_status;

#define LORA_ERROR_MAX 512

/* Filled by failing calls; `msg` is one line without a trailing newline. */
typedef struct lora_error {
    lora_status status;
    char        msg[LORA_ERROR_MAX];
} lora_error;

/* A static, human-readable name for a status ("ok", "I/O error", ...). */
const char *lora_status_str(lora_status s);

/* Sets the number of threads for every kernel (OpenMP and OpenBLAS); n <= 0 leaves the default
 * (OMP_NUM_THREADS, else every core). */
void lora_set_threads(int n);
int  lora_get_threads(void);

/* ---- models ---- */

typedef struct lora_model lora_model;

typedef enum lora_activation {
    LORA_ACT_GELU_TANH = 0, /* "gelu_new", "gelu_pytorch_tanh", "gelu_fast" */
    LORA_ACT_GELU_ERF  = 1  /* "gelu" */
} lora_activation;

/* The hyper-parameters of a GPT-2-architecture model, as in its config.json. */
typedef struct lora_config {
    int32_t         n_layer;
    int32_t         n_head;
    int32_t         n_embd;
    int32_t         n_positions;
    int32_t         n_inner; /* MLP width; config.json's null means 4 * n_embd */
    int32_t         vocab_size;
    float           layer_norm_epsilon;
    lora_activation activation;
    int32_t         tie_word_embeddings; /* 1: the LM head is wte (GPT-2's default) */
} lora_config;

/*
 * Loads a Hugging Face GPT-2 directory: config.json plus model.safetensors, or the shards named
 * by model.safetensors.index.json. F32 tensors are memory-mapped and used in place (never
 * copied); F16 and BF16 tensors are converted to F32 once at load. Key names may carry the
 * "transformer." prefix or not. Every offset, count and shape is checked against the file and
 * the config. On success *out owns the model: free it with lora_model_free.
 */
lora_status lora_model_load(const char *dir, lora_model **out, lora_error *err);
void        lora_model_free(lora_model *m);

/* Valid while the model lives. */
const lora_config *lora_model_config(const lora_model *m);

/* Number of parameters of the base model (the tied LM head counted once). */
int64_t lora_model_n_base_params(const lora_model *m);

/* A tensor as stored in the checkpoint's file(s), used by the model or not. */
typedef struct lora_file_tensor {
    const char *name;  /* as in the file; valid while the model lives */
    const char *dtype; /* "F32", "F16", "BF16", ... */
    const char *file;  /* the file that holds it */
    int32_t     ndim;
    int64_t     shape[8];
    int64_t     nbytes;
} lora_file_tensor;

int32_t     lora_model_n_file_tensors(const lora_model *m);
lora_status lora_model_file_tensor(const lora_model *m, int32_t i, lora_file_tensor *info);

/* Bytes of base weights used in place from the mapping, and converted to owned F32 memory. */
void lora_model_weight_bytes(const lora_model *m, int64_t *mapped, int64_t *converted);

typedef enum lora_dtype {
    LORA_DTYPE_F32  = 0,
    LORA_DTYPE_F16  = 1,
    LORA_DTYPE_BF16 = 2
} lora_dtype;

/*
 * Writes the model's current weights — trained values of full fine-tuning or BitFit included —
 * as a Hugging Face GPT-2 directory: config.json, model.safetensors (keys "transformer.*", the
 * tied head omitted) in `dtype`, and the tokenizer files of the source directory
 * (tokenizer.json, vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json,
 * generation_config.json) copied when present. Each file is written atomically; DIR is
 * created. A merged model (lora_model_merge) is written with its merged weights.
 */
lora_status lora_model_save_hf(lora_model *m, const char *dir, lora_dtype dtype,
                               lora_error *err);

/*
 * Writes a freshly initialised GPT-2 as a Hugging Face directory (config.json +
 * model.safetensors, F32), initialised as Hugging Face does: weights and embeddings
 * N(0, 0.02), the two c_proj weights N(0, 0.02 / sqrt(2 n_layer)), biases 0, LayerNorm 1 and 0.
 * With tokenizer_dir, its tokenizer files are copied in. For pretraining from scratch.
 */
lora_status lora_model_init_random(const lora_config *cfg, uint64_t seed, const char *dir,
                                   const char *tokenizer_dir, lora_error *err);

/* ---- attaching a PEFT method ---- */

typedef enum lora_method {
    LORA_METHOD_LORA    = 0, /* low-rank adapters on the chosen linear sites */
    LORA_METHOD_FULL    = 1, /* every weight trainable (the paper's FT baseline) */
    LORA_METHOD_BITFIT  = 2, /* only the bias vectors trainable (BitFit baseline) */
    LORA_METHOD_ADALORA = 3  /* SVD-form adapters with an adaptive rank budget (AdaLoRA) */
} lora_method;

/* AdaLoRA (Zhang et al., 2023) as PEFT implements it; defaults are PEFT's. */
typedef struct lora_adalora_params {
    int32_t target_r;   /* average final rank per site (init rank is lora_adapter_params.r) */
    int64_t tinit;      /* steps before pruning starts */
    int64_t tfinal;     /* last steps with the final, frozen mask */
    int64_t delta_t;    /* steps between budget reallocations */
    int64_t total_step; /* planned optimizer steps (set by the trainer) */
    float   beta1;      /* EMA of the sensitivity */
    float   beta2;      /* EMA of its uncertainty */
    float   orth_reg;   /* weight of the orthogonality penalty */
} lora_adalora_params;

/* Linear sites an adapter may target; OR them together. */
enum {
    LORA_TARGET_Q         = 1u << 0, /* the q slice of attn.c_attn */
    LORA_TARGET_K         = 1u << 1, /* the k slice of attn.c_attn */
    LORA_TARGET_V         = 1u << 2, /* the v slice of attn.c_attn */
    LORA_TARGET_C_ATTN    = 1u << 3, /* all of attn.c_attn, as one adapter (PEFT's form) */
    LORA_TARGET_ATTN_PROJ = 1u << 4, /* attn.c_proj */
    LORA_TARGET_MLP_FC    = 1u << 5, /* mlp.c_fc */
    LORA_TARGET_MLP_PROJ  = 1u << 6, /* mlp.c_proj */
    LORA_TARGET_ALL_LINEAR = (1u << 3) | (1u << 4) | (1u << 5) | (1u << 6)
};

typedef enum lora_init {
    LORA_INIT_KAIMING  = 0, /* A ~ U(-1/sqrt(in), 1/sqrt(in)): kaiming-uniform a=sqrt(5), PEFT */
    LORA_INIT_GAUSSIAN = 1  /* A ~ N(0, 1/r), as the LoRA paper and PEFT's "gaussian" */
} lora_init;

typedef struct lora_adapter_params {
    lora_method method;
    int32_t     r;          /* rank (LoRA) */
    float       alpha;      /* scale s = alpha / r, or alpha / sqrt(r) with use_rslora */
    float       dropout;    /* dropout on the adapter's input, training only */
    uint32_t    targets;    /* LORA_TARGET_* bits (LoRA) */
    int32_t     use_rslora; /* 1: s = alpha / sqrt(r) */
    lora_init   init;
    uint64_t    seed;       /* for A's initialisation and dropout masks */
    lora_adalora_params adalora; /* LORA_METHOD_ADALORA only */
} lora_adapter_params;

/* Defaults: LoRA, r = 8, alpha = 16, dropout 0.1, targets q and v, Kaiming init, seed 42;
 * AdaLoRA: target_r 8, tinit 0, tfinal 0, delta_t 1, beta1 = beta2 = 0.85, orth_reg 0.5. */
lora_adapter_params lora_adapter_params_default(void);

/* Parses a target list such as "q,v", "c_attn,c_proj", "mlp.c_fc", "all" into bits. */
lora_status lora_targets_parse(const char *list, uint32_t *targets, lora_error *err);

/*
 * Makes the model trainable with the given method. Allocates the trainable parameters, their
 * gradients and AdamW moments in one contiguous span each. May be called once per model.
 */
lora_status lora_model_attach(lora_model *m, const lora_adapter_params *p, lora_error *err);

/*
 * Plans and allocates activations for batches up to B x T (T <= n_positions). Called
 * implicitly by the first forward; calling it up front keeps allocation out of the step.
 */
lora_status lora_model_reserve(lora_model *m, int32_t B, int32_t T, lora_error *err);

/*
 * Activation checkpointing (on = 1): forward keeps only every layer's output, and backward
 * recomputes a layer's inside (its layernorms, q|k|v, attention probabilities, MLP hidden)
 * just before it goes through it. Activations shrink from L layers' worth to one layer's plus
 * L·B·T·C floats (the attention probabilities alone are L·B·n_head·T² floats without it); a
 * training step costs about two thirds of a forward through the layers more (all but the top
 * layer, whose insides are still in place when backward starts). Gradients and
 * losses are bit-identical to a step without it (same thread count). Re-plans the activations
 * if they are already allocated. Off by default.
 */
lora_status lora_model_set_checkpointing(lora_model *m, int on, lora_error *err);

/* ---- forward, loss, backward ---- */

/* Training mode enables adapter dropout. label_smoothing as PyTorch's cross_entropy. */
void lora_model_set_training(lora_model *m, int training);
void lora_model_set_label_smoothing(lora_model *m, float label_smoothing);

/*
 * Forward pass over tokens (B, T). With targets (B, T) non-NULL, *loss receives the mean
 * cross-entropy over positions whose target is >= 0 (0 when none is); targets may be NULL for
 * logits only. Ids outside [0, vocab) or T > n_positions are LORA_ERR_ARG.
 */
lora_status lora_model_forward(lora_model *m, const int32_t *tokens, const int32_t *targets,
                               int32_t B, int32_t T, float *loss, lora_error *err);

/* Logits (B, T, V) of the last forward, valid until the next forward or backward. */
const float *lora_model_logits(const lora_model *m);

/*
 * Backward pass of the last forward (which must have had targets). Gradients of the trainable
 * parameters are ACCUMULATED: call lora_model_zero_grad between optimizer steps. Frozen weights
 * get no gradient and no memory for one.
 */
lora_status lora_model_backward(lora_model *m, lora_error *err);
void        lora_model_zero_grad(lora_model *m);

/* ---- trainable tensors ---- */

typedef struct lora_tensor_info {
    const char *name;     /* e.g. "h.0.attn.c_attn.q.lora_A"; valid while the model lives */
    int32_t     ndim;
    int64_t     shape[2];
    int64_t     numel;
    float      *data;     /* the live parameter */
    float      *grad;     /* its gradient */
} lora_tensor_info;

/* Number of trainable tensors and their total element count (0 before attach). */
int32_t lora_model_n_trainable(const lora_model *m);
int64_t lora_model_n_trainable_params(const lora_model *m);
lora_status lora_model_trainable(lora_model *m, int32_t i, lora_tensor_info *info);
/* Looks a trainable tensor up by name; LORA_ERR_MISSING when absent. */
lora_status lora_model_trainable_find(lora_model *m, const char *name, lora_tensor_info *info);

/* Saves / loads the trainable tensors as safetensors with the names above (atomic write). */
lora_status lora_model_save_trainable(lora_model *m, const char *path, lora_error *err);
lora_status lora_model_load_trainable(lora_model *m, const char *path, lora_error *err);

/* ---- optimisation ---- */

typedef enum lora_schedule_kind {
    LORA_SCHEDULE_CONSTANT = 0, /* warm-up, then constant */
    LORA_SCHEDULE_LINEAR   = 1, /* warm-up, then linear decay to 0 at total_steps */
    LORA_SCHEDULE_COSINE   = 2  /* warm-up, then half-cosine decay to 0 at total_steps */
} lora_schedule_kind;

typedef struct lora_optim_params {
    float              lr;           /* peak learning rate */
    float              beta1, beta2; /* AdamW moments */
    float              eps;
    float              weight_decay; /* decoupled, applied to 2-D tensors only */
    float              clip;         /* global grad-norm clip; <= 0 disables */
    lora_schedule_kind schedule;
    int64_t            warmup_steps; /* linear warm-up from 0 to lr */
    int64_t            total_steps;
} lora_optim_params;

/* Defaults: the LoRA paper's E2E recipe (lr 2e-4, betas 0.9/0.999, eps 1e-8, wd 0.01, clip 1,
 * linear schedule, 500 warm-up steps). */
lora_optim_params lora_optim_params_default(void);

/* Learning rate at optimizer step `step` (0-based), as Hugging Face's schedules compute it. */
float lora_schedule_lr(const lora_optim_params *p, int64_t step);

/*
 * One AdamW step over every trainable tensor at learning rate lr (normally
 * lora_schedule_lr(p, step)), after global grad-norm clipping. *grad_norm (may be NULL)
 * receives the norm before clipping. Does not zero the gradients.
 */
lora_status lora_model_step(lora_model *m, const lora_optim_params *p, float lr,
                            float *grad_norm, lora_error *err);

/* ---- planning ---- */

typedef struct lora_memory_estimate {
    int64_t weights_bytes;     /* frozen base weights (mapped or converted) */
    int64_t trainable_bytes;   /* params + grads + AdamW m and v (AdaLoRA: with Λ, plus the
                                  rank allocator's EMAs of every entry, masks and scores) */
    int64_t activation_bytes;  /* activations kept for backward + scratch */
    int64_t total_bytes;
} lora_memory_estimate;

/* Estimates training memory for a config, method and batch shape without loading weights,
 * with activation checkpointing when checkpoint is non-zero (lora_model_set_checkpointing).
 * Weights count 4 bytes each whatever the file's dtype (F16/BF16 are converted at load). */
lora_status lora_estimate_memory(const lora_config *cfg, const lora_adapter_params *p, int32_t B,
                                 int32_t T, int checkpoint, lora_memory_estimate *out,
                                 lora_error *err);

/* ---- training runs ---- */

/* Scales every trainable gradient (e.g. 1 / grad_accum). */
void lora_model_scale_grad(lora_model *m, float factor);

typedef struct lora_train_params {
    const char         *model_dir;     /* Hugging Face GPT-2 directory */
    const char         *tokenizer_dir; /* NULL: model_dir */
    const char         *data_path;     /* JSONL: {"text"} or {"prompt","completion"} lines */
    const char         *val_path;      /* NULL: none (or val_split) */
    const char         *out_dir;       /* adapter / model, metrics.jsonl, checkpoint */
    const char         *resume_dir;    /* non-NULL: continue that run with its saved options */
    lora_adapter_params adapter;
    lora_optim_params   optim;         /* total_steps 0: epochs * batches per epoch */
    int32_t             batch;         /* sequences per micro-batch */
    int32_t             grad_accum;    /* micro-batches per optimizer step */
    int32_t             seq_len;       /* T; 0: min(n_positions, 512) */
    int32_t             pack;          /* 1: pack examples into full rows */
    int32_t             skip_bad;      /* 1: skip malformed JSONL lines */
    int64_t             epochs;
    float               val_split;     /* fraction of data held out when val_path is NULL */
    float               label_smoothing;
    int64_t             eval_every;    /* steps; 0: only at the end */
    int32_t             eval_batches;  /* 0: the whole validation set */
    int64_t             save_every;    /* steps between checkpoints; 0: only at the end */
    int64_t             log_every;     /* steps between metrics records */
    uint64_t            seed;
    int64_t             stop_after;    /* > 0: checkpoint and stop after this step (not saved
                                          with the run's options: a run can go in slices) */
    int32_t             checkpoint_activations; /* 1: lora_model_set_checkpointing (not saved
                                          with the run's options: it changes no result) */
} lora_train_params;

/* Defaults: the LoRA paper's E2E recipe (AdamW lr 2e-4, weight decay 0.01, dropout 0.1, linear
 * decay, label smoothing 0.1) with warm-up min(500, steps / 10), batch 8, 1 epoch. */
lora_train_params lora_train_params_default(void);

typedef enum lora_train_event_kind {
    LORA_EVENT_INFO       = 0, /* a message: data statistics, resume point, ... */
    LORA_EVENT_STEP       = 1, /* an optimizer step finished */
    LORA_EVENT_EVAL       = 2, /* a validation pass finished */
    LORA_EVENT_CHECKPOINT = 3, /* a checkpoint was written */
    LORA_EVENT_DONE       = 4  /* outputs written; stopped = 1 when interrupted */
} lora_train_event_kind;

typedef struct lora_train_event {
    lora_train_event_kind kind;
    int64_t               step, total_steps; /* optimizer steps done, planned */
    float                 loss, lr, grad_norm, val_loss;
    double                tokens_per_s, elapsed_s, eta_s;
    int32_t               stopped;
    const char           *message; /* valid during the callback */
} lora_train_event;

typedef void (*lora_train_callback)(void *user, const lora_train_event *ev);

/*
 * Runs a training job end to end: loads the model, tokenizer and data, attaches the method,
 * trains with AdamW, evaluates, writes metrics.jsonl (one JSON record per logged step and per
 * evaluation), checkpoint.safetensors every save_every steps (atomically), and at the end the
 * result: a PEFT adapter directory (LoRA, AdaLoRA) or a Hugging Face model directory (full,
 * BitFit) in out_dir. When *stop becomes non-zero (a signal handler), the current step
 * finishes, a checkpoint is written and the call returns LORA_OK with a DONE event whose
 * stopped = 1.
 * A resumed run reproduces the uninterrupted run's losses exactly (same thread count).
 */
lora_status lora_train(const lora_train_params *p, const volatile int *stop,
                       lora_train_callback cb, void *user, lora_error *err);

/* ---- PEFT adapter directories ---- */

/*
 * Writes the attached LoRA adapter as a PEFT directory: adapter_config.json (peft_type LORA,
 * task_type CAUSAL_LM, r, lora_alpha, target_modules, lora_dropout, fan_in_fan_out true,
 * use_rslora, base_model_name_or_path) and adapter_model.safetensors with PEFT's key names
 * (base_model.model.transformer.h.N.<module>.lora_A.weight (r, in), lora_B.weight (out, r)).
 * Adapters on q/k/v slices of c_attn are written as one c_attn adapter of rank (the sum of the
 * slices' ranks) with block-structured A and B and lora_alpha scaled to keep the scale (PEFT
 * cannot target a slice of a fused projection). Files are written atomically; DIR is created
 * if needed. An attached AdaLoRA adapter is written as PEFT's AdaLoRA directory instead
 * (peft_type ADALORA: init_r, target_r, the allocator's settings, lora_A/lora_E/lora_B cut to
 * the kept triplets and rank_pattern), which PEFT and lora_adapter_load read back.
 */
lora_status lora_adapter_save(lora_model *m, const char *dir, const char *base_model_name,
                              lora_error *err);

/*
 * Writes the attached adapter as a plain PEFT LoRA directory (peft_type LORA, as above). For
 * LoRA this is lora_adapter_save. An AdaLoRA adapter is folded: per site, A = the kept rows of
 * Q, B = P's kept columns times their singular values λ, rank = the kept triplets, the site's
 * scale alpha / (init_r + 1e-5) kept, so that ΔW is unchanged; the per-module ranks and alphas
 * go to rank_pattern and alpha_pattern (PEFT: scaling = lora_alpha / r per module). A site
 * that keeps no triplet is written with rank 1 and B = 0 (ΔW = 0 exactly). The result loads in
 * PEFT as a LoraConfig adapter and in lora_adapter_load; it can no longer be pruned.
 * LORA_ERR_STATE when neither LoRA nor AdaLoRA is attached.
 */
lora_status lora_adapter_save_lora(lora_model *m, const char *dir, const char *base_model_name,
                                   lora_error *err);

/*
 * Attaches the adapter in a PEFT directory (ours or PEFT's; peft_type LORA or ADALORA) to a
 * model that has no method attached yet, with its trainable values loaded. A c_attn adapter
 * whose A and B have the block structure written above is restored as q/k/v slice adapters.
 * An AdaLoRA directory attaches AdaLoRA with its rank pattern as a frozen mask (pruned
 * triplets zero). Shape mismatches name the tensor, both shapes, and hint that the adapter may
 * be for another base model.
 */
lora_status lora_adapter_load(lora_model *m, const char *dir, lora_error *err);

/* ---- inference adapters: several at once, merge, unmerge, switch ---- */

/*
 * Loads the adapter of a PEFT directory (LoRA — ours with block-structured q/v c_attn slices,
 * or PEFT's — or AdaLoRA) as an inference adapter named `name` (NULL: dir as given), scaled by
 * `scale` on top of its own alpha / r. Several can be loaded: their terms are summed,
 * unmerged, in every forward and decoder step. The adapter owns its tensors; it is frozen and
 * not in the trainable registry (lora_model_trainable, lora_adapter_save do not see it). An
 * AdaLoRA directory is folded at load into plain low-rank A·B over its kept triplets
 * (A' = diag(Λ ⊙ mask)·Q, B' = P) with scale lora_alpha / (ranknum + 1e-5).
 *
 * With a training method attached (lora_model_attach, lora_adapter_load), before or after:
 * allowed. Inference adapters then act as a frozen part of the base (backward passes their dX,
 * they get no gradient), the method's adapter is one more adapter on its sites, and
 * lora_model_merge folds it in too, with its current values.
 *
 * Errors, with the model left as it was: the loaders' (LORA_ERR_MISSING for a missing
 * directory or file, LORA_ERR_FORMAT for a malformed adapter_config.json, LORA_ERR_SHAPE for an
 * adapter of another base model: the message names the tensor and both shapes and hints at the
 * mismatch); LORA_ERR_ARG for a name already loaded or a non-finite scale; LORA_ERR_STATE when
 * a site would carry more than 8 adapters (a q, k or v slice counts one, the attached method's
 * included) or the model is merged (adding, removing and scaling are refused while merged:
 * unmerge first, or use lora_adapter_switch).
 */
lora_status lora_adapter_add(lora_model *m, const char *dir, const char *name, float scale,
                             lora_error *err);

/* Removes the inference adapter `name` and frees it. LORA_ERR_MISSING when no adapter has that
 * name (the message lists the loaded ones); LORA_ERR_STATE while merged. */
lora_status lora_adapter_remove(lora_model *m, const char *name, lora_error *err);

/* Sets the scale multiplier of adapter `name` (0 switches it off). Errors as remove's, and
 * LORA_ERR_ARG for a non-finite scale. */
lora_status lora_adapter_set_scale(lora_model *m, const char *name, float scale,
                                   lora_error *err);

/* One loaded inference adapter. */
typedef struct lora_adapter_info {
    const char *name;     /* valid until the adapter is removed */
    const char *dir;      /* the directory it was read from */
    const char *type;     /* "lora", or "adalora" (folded to low rank) */
    float       scale;    /* the multiplier given to add / set_scale */
    int32_t     n_sites;  /* adapted (site, output slice) pairs */
    int64_t     n_params; /* elements of its A and B */
} lora_adapter_info;

/* Number of inference adapters, and the i-th in load order (LORA_ERR_ARG out of range). */
int32_t     lora_model_n_adapters(const lora_model *m);
lora_status lora_model_adapter(const lora_model *m, int32_t i, lora_adapter_info *info);

/*
 * Folds every adapter on the model (inference adapters with their scales, and an attached
 * method's LoRA or AdaLoRA adapter) into the base weights: each adapted site gets an owned copy
 * W = W0 + ΣΔW (copy-on-write: the mapped or converted W0 is never written) and its adapters
 * stop contributing to the forward, so inference costs what the base model costs. The decoder,
 * lora_model_save_hf and lora_model_save_gguf use the merged weights. While merged, training
 * is refused with LORA_ERR_STATE (lora_model_backward, lora_model_step, a forward with targets
 * in training mode, attaching a method, loading trainable values); a forward with targets in
 * evaluation mode still gives the loss. LORA_ERR_STATE when already merged, LORA_ERR_NOMEM
 * (the model left unmerged).
 */
lora_status lora_model_merge(lora_model *m, lora_error *err);

/* Restores every merged site's original W0 pointer and frees the copies: the base weights are
 * bit-identical to before the merge by construction. LORA_ERR_STATE when not merged. */
lora_status lora_model_unmerge(lora_model *m, lora_error *err);

/* 1 while merged. */
int lora_model_is_merged(const lora_model *m);

/*
 * Replaces inference adapter old_name by the adapter in dir, named new_name (NULL: dir) with
 * scale `scale`, without reloading the model: reads dir first (on any error of the read the
 * model is left as it was), then, if merged, unmerges, removes the old adapter, adds the new
 * one and merges again. LORA_ERR_MISSING for an unknown old_name. When the final merge runs
 * out of memory the model is left unmerged with the new adapter.
 */
lora_status lora_adapter_switch(lora_model *m, const char *old_name, const char *dir,
                                const char *new_name, float scale, lora_error *err);

/*
 * lora_model_save_hf into a temporary sibling directory DIR.tmp.<pid>, then renamed to DIR, so
 * that DIR appears complete or not at all (a full disk leaves no DIR and no temporary). DIR's
 * parent is created; DIR itself must not exist or be an empty directory (LORA_ERR_STATE
 * otherwise). Merge first to write a merged model.
 */
lora_status lora_model_save_hf_atomic(lora_model *m, const char *dir, lora_dtype dtype,
                                      lora_error *err);

/* ---- combining adapters ---- */

/*
 * How lora_adapters_combine mixes adapters i = 1..n with weights w_i and scales s_i
 * (alpha_i / r_i, or alpha_i / sqrt(r_i) with rsLoRA), as PEFT's add_weighted_adapter does.
 * The result has r = lora_alpha = R (scale 1) and delta W = B A.
 */
typedef enum lora_combine_how {
    LORA_COMBINE_LINEAR = 0, /* equal ranks r: A = sum sgn(w_i s_i) sqrt|w_i s_i| A_i and
                                B = sum sqrt|w_i s_i| B_i, R = r. B A is NOT sum w_i s_i B_i A_i
                                for n > 1 (cross terms B_i A_j), as in PEFT */
    LORA_COMBINE_CAT    = 1, /* A = [w_1 s_1 A_1; w_2 s_2 A_2; ...], B = [B_1 B_2 ...],
                                R = sum r_i: B A = sum w_i s_i B_i A_i exactly */
    LORA_COMBINE_SVD    = 2  /* sum w_i s_i B_i A_i truncated to rank R by SVD: B = U_R S_R,
                                A = V_R^T; R = svd_rank, or the largest r_i */
} lora_combine_how;

/* Parses "linear", "cat" or "svd"; LORA_ERR_ARG naming the accepted values otherwise. */
lora_status lora_combine_how_parse(const char *s, lora_combine_how *out, lora_error *err);

/*
 * Writes to out_dir a PEFT LoRA directory combining the n >= 1 LoRA adapter directories dirs
 * (ours or PEFT's) with weights (finite, any sign), as PEFT's
 * LoraModel.add_weighted_adapter(adapters, weights, name, combination_type, svd_rank) followed
 * by save_pretrained would:
 *  - one adapter is always combined linearly (PEFT does the same), so svd_rank must be 0;
 *  - the ranks compared and added are each adapter's config rank (r, or the largest
 *    rank_pattern value); linear also needs equal ranks module by module;
 *  - a module (layer and linear) missing from some adapters is combined from those that have
 *    it; with cat its A and B are zero-padded to R;
 *  - svd_rank 0 means the largest input rank; each module needs R <= min(in, out); the SVD is
 *    LAPACK's (in double precision, of a rank-sized matrix after QR factorisations of the
 *    stacked factors when R <= sum r_i <= min(in, out), else of dW whole); no clamping (PEFT's
 *    default svd_clamp = None); BLAS and LAPACK run on one thread during the call;
 *  - the config is the first adapter's with r = lora_alpha = R, the union of target_modules,
 *    empty rank_pattern / alpha_pattern (a linear module of another rank gets its own entries)
 *    and use_rslora false, so that every module's scale is 1;
 *  - tensors are written F32; the q/k/v slice metadata of a c_attn module is kept only when
 *    every input has the same slices there and the output's B still has their block structure.
 * The directory appears atomically (written under out_dir.tmp.<pid>, then renamed); an
 * existing out_dir must be an empty directory. Errors name the file and the problem:
 * LORA_ERR_UNSUPPORTED for AdaLoRA or other non-LoRA adapters, LORA_ERR_SHAPE for ranks that
 * linear cannot mix, adapters of different base models or an svd_rank out of range,
 * LORA_ERR_ARG for bad arguments, LORA_ERR_MISSING / FORMAT / IO from the files.
 */
lora_status lora_adapters_combine(const char *const *dirs, const double *weights, int32_t n,
                                  lora_combine_how how, int32_t svd_rank, const char *out_dir,
                                  lora_error *err);

/* ---- GGUF ---- */

/*
 * Writes the model's current weights as a GGUF v3 file that llama.cpp runs (architecture
 * "gpt2"): the gpt2.* hyper-parameters, llama.cpp's tensor names (token_embd, position_embd,
 * blk.N.attn_norm / attn_qkv / attn_output / ffn_norm / ffn_up / ffn_down, output_norm; no
 * output.weight when the head is tied), each linear weight transposed from the Conv1D (in, out)
 * layout to nn.Linear's (out, in), and the tokenizer of tokenizer_dir (NULL: the model's
 * directory) as tokenizer.ggml.* (model "gpt2", pre "gpt-2", tokens padded with "[PADn]" up to
 * the model's vocabulary, merges, token types, bos/eos = "<|endoftext|>"). dtype F16 or BF16
 * narrows the 2-D weights; 1-D tensors stay F32. Adapters are not merged unless the model is
 * (lora_model_merge: then the merged weights are written). llama.cpp's GPT-2 graph uses the
 * tanh GELU whatever the config says. Atomic write. LORA_ERR_MISSING when no tokenizer is
 * found, LORA_ERR_SHAPE when it has more tokens than the model's vocabulary.
 */
lora_status lora_model_save_gguf(lora_model *m, const char *path, lora_dtype dtype,
                                 const char *tokenizer_dir, lora_error *err);

/*
 * Writes the attached LoRA adapter as a llama.cpp LoRA GGUF (general.type "adapter",
 * adapter.type "lora", adapter.lora.alpha f32): per adapted weight "<name>.lora_a" (r, in) and
 * "<name>.lora_b" (out, r) in PyTorch order (ne reversed), where <name> is the base tensor
 * (blk.N.attn_qkv.weight, attn_output, ffn_up, ffn_down). q/k/v slice adapters of one layer go
 * on attn_qkv as stacked A and block B with zero rows elsewhere. llama.cpp scales by
 * user_scale * alpha / r with r read from lora_b, so alpha = scale * r (rsLoRA's sqrt folded
 * in); modules whose scale * r differs from the first module's get the ratio folded into B.
 * An attached AdaLoRA adapter is written folded as lora_adapter_save_lora folds it (rank = kept
 * triplets per module, B = P·Λ, a site keeping none as rank 1 with B = 0), so llama.cpp
 * computes the same ΔW. LORA_ERR_STATE when neither LoRA nor AdaLoRA is attached. Atomic write.
 */
lora_status lora_adapter_save_gguf(lora_model *m, const char *path, lora_dtype dtype,
                                   lora_error *err);

/*
 * Loads a GGUF GPT-2 model (architecture "gpt2", F32/F16/BF16 tensors; what
 * lora_model_save_gguf writes and llama.cpp's converter produces). lora_model_load calls this
 * for paths ending in ".gguf". The file is read once and closed: every weight is copied into
 * one owned F32 buffer, the linear weights transposed back into the Conv1D (in, out) layout
 * (they cannot be used in place). The activation is the tanh GELU. The tokenizer is not read:
 * give tools a tokenizer directory. Errors as lora_model_load's, naming the file and key.
 */
lora_status lora_model_load_gguf(const char *path, lora_model **out, lora_error *err);

/* ---- generation (KV cache) ---- */

/*
 * A decoder runs the model's forward pass incrementally for n_seq independent sequences, each
 * of up to max_len tokens, keeping every layer's keys and values (a KV cache of
 * 2 x L x n_seq x max_len x C floats) so that each new token costs one row of work instead of a
 * forward over the whole sequence. Adapters on the model (an attached method's, inference
 * adapters) are applied unmerged, without dropout, or through the merged weights while
 * merged; logits equal lora_model_forward's at the same positions (to rounding).
 *
 * The decoder BORROWS the model: free the decoder before the model. It shares the adapters'
 * per-pass buffers with the model, so its calls must not run concurrently with another decoder
 * or a forward/backward on the same model, nor fall between a lora_model_forward and its
 * lora_model_backward. Everything is allocated at lora_decoder_init; feeding and stepping
 * allocate nothing (except once after adapters are attached, added or switched on the model
 * after the decoder was created). On failure a call returns the reason and leaves the decoder
 * unchanged.
 */
typedef struct lora_decoder lora_decoder;

/*
 * Creates a decoder for n_seq >= 1 sequences of up to max_len tokens each; max_len <= 0 means
 * the model's context n_positions, and max_len > n_positions is LORA_ERR_ARG. The largest
 * single forward it runs has max(max_len, n_seq) rows. On success *out is owned by the caller:
 * free it with lora_decoder_free (before the model). LORA_ERR_NOMEM when the cache does not fit.
 */
lora_status lora_decoder_init(lora_model *m, int32_t n_seq, int32_t max_len, lora_decoder **out,
                              lora_error *err);
void        lora_decoder_free(lora_decoder *d);

/*
 * Transposed weights: with on != 0 the decoder keeps a second copy of every linear's weight
 * (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj of every layer) transposed to (out, in), and
 * forwards of up to 8 rows (a decoded token; a step of up to 8 sequences or beams) take their
 * base products from it: one dot product per output instead of sums of weight rows. Forwards
 * of more rows (a prompt's prefill) are unchanged. Biases and adapters are applied as without;
 * logits equal the normal path's to float rounding (the sums run in another order), so greedy
 * tokens agree except at near ties. Memory: the copy costs as much as the linears' F32 weights
 * again (about 340 MB for GPT-2 small), allocated and filled (transposed) here.
 * When it helps: decoding bound by memory bandwidth, with that memory to spare. On GPT-2 small
 * with 2 threads on a 2-core AMD EPYC VM, single-token decoding ran 3-7 % faster and steps of
 * 4 sequences (lora_decoder_step_all, beam search) about 1.5x (sgemm packs the weight for a few
 * rows); on an Intel Xeon host single tokens ran 14 % slower, steps of 4 rows still 1.5x
 * faster. Measure on the target machine (bench/generate.sh --transposed).
 * The copy follows the model's weights: after lora_model_merge, lora_model_unmerge or
 * lora_adapter_switch the next feed or step first transposes the weights that changed (a
 * one-off cost of about a read and a write of them, allocating nothing). A site whose base
 * weight is trainable (full fine-tuning) is not copied and keeps the normal product.
 * on = 0 frees the copy. LORA_ERR_NOMEM, with the decoder left as it was (without the copy),
 * when it cannot be allocated; LORA_ERR_ARG for a NULL decoder.
 */
lora_status lora_decoder_set_transposed(lora_decoder *d, int on, lora_error *err);

/*
 * Appends tokens[0..n) to sequence seq in one forward pass over only those tokens (a prefill
 * when n > 1), at positions continuing from the sequence's length, and keeps the logits of the
 * last one (see lora_decoder_logits). LORA_ERR_ARG for seq outside [0, n_seq), n < 1 or an id
 * outside [0, vocab); LORA_ERR_STATE when length + n would exceed max_len (the sequence is
 * full: reset it or copy another over it).
 */
lora_status lora_decoder_feed(lora_decoder *d, int32_t seq, const int32_t *tokens, int32_t n,
                              lora_error *err);

/*
 * Advances every sequence by one token, tokens (n_seq), in one forward whose rows are the
 * sequences (row s is sequence s at its own position). Sequences may have different lengths,
 * including 0. Same errors as lora_decoder_feed; LORA_ERR_STATE when any sequence is full.
 */
lora_status lora_decoder_step_all(lora_decoder *d, const int32_t *tokens, lora_error *err);

/* The logits (V) after the last token fed to seq, valid until that sequence is next fed, reset
 * or overwritten by a copy; NULL when seq is out of range or holds no tokens. */
const float *lora_decoder_logits(const lora_decoder *d, int32_t seq);

/* Tokens held by sequence seq (0 .. max_len); -1 when seq is out of range. */
int32_t lora_decoder_length(const lora_decoder *d, int32_t seq);

/* The max_len the decoder was created with (n_positions when 0 was asked for). */
int32_t lora_decoder_max_len(const lora_decoder *d);

/* Empties sequence seq, or every sequence when seq < 0. Seq >= n_seq is ignored. */
void lora_decoder_reset(lora_decoder *d, int32_t seq);

/*
 * Makes sequence dst an exact copy of sequence src (its cache, length and logits), e.g. to
 * fork a beam. dst == src is a no-op. LORA_ERR_ARG when either is outside [0, n_seq).
 */
lora_status lora_decoder_copy_seq(lora_decoder *d, int32_t dst, int32_t src, lora_error *err);

/*
 * Beam search, with the semantics of Hugging Face's generate(num_beams=K, length_penalty=lp,
 * no_repeat_ngram_size=n, early_stopping=...):
 *  - every running beam scores each next token by the sum of the log-softmax of the logits
 *    along its sequence (in double); the 2K best candidates of all beams, in the order below,
 *    are walked: one ending the hypothesis (eos, or a stop id) becomes a finished hypothesis if
 *    it ranks among the first K, any other continues as a running beam, until K run;
 *  - a finished hypothesis scores sum_logprobs / length^lp, where length is the number of
 *    GENERATED tokens including the token that ended it (eos or a stop id); a hypothesis still
 *    running at max_new has length max_new. The best K finished are kept (a new one enters
 *    only with a strictly higher score than the worst kept; among equal worst scores the
 *    earliest finished is dropped);
 *  - no_repeat_ngram = n > 0 bans a token that would complete an n-gram already present in
 *    the beam's sequence, prompt included (HF's NoRepeatNGramLogitsProcessor), after the
 *    log-softmax (the banned tokens' mass stays in the normaliser, as in HF);
 *  - ties: candidates rank by score, then lower token id, then the better-ranked parent beam;
 *    among equal final scores the earliest finished hypothesis wins;
 *  - n_beams = 1 is greedy decoding (HF's num_beams=1): the best token each step, ending at the
 *    first eos or stop id; it gives exactly lora_argmax's tokens when no n-gram is banned.
 * Where HF would keep a beam of score -inf (every continuation banned or NaN), it is dropped.
 */
typedef enum lora_beam_stop {
    LORA_BEAM_STOP_EXACT     = 0, /* HF "never": stop once K are finished and no running beam
                                     can still beat the worst (lp > 0: its sum over max_new^lp;
                                     lp <= 0: over (generated + 1)^lp). The default. */
    LORA_BEAM_STOP_HEURISTIC = 1, /* HF False: ... and the step's best candidate sum over
                                     generated^lp does not beat the worst */
    LORA_BEAM_STOP_FIRST_K   = 2  /* HF True: as soon as K hypotheses are finished */
} lora_beam_stop;

typedef struct lora_beam_params {
    int32_t        n_beams;         /* K >= 1 */
    int32_t        max_new;         /* tokens generated at most, >= 0 */
    float          length_penalty;  /* lp, finite; > 0 favours longer hypotheses */
    int32_t        no_repeat_ngram; /* n >= 1 bans repeated n-grams; 0 = off */
    lora_beam_stop early_stopping;
    int32_t        eos;             /* ends a hypothesis and is not part of its tokens; < 0: none */
    const int32_t *stop_ids;        /* borrowed, n_stop_ids ids that also end a hypothesis, */
    int32_t        n_stop_ids;      /* ... and ARE its last token (e.g. tokens holding "\n") */
} lora_beam_params;

/* Defaults: 4 beams, max_new 64, length_penalty 1, no n-gram ban, LORA_BEAM_STOP_EXACT,
 * eos -1 (set it: usually the tokenizer's <|endoftext|>), no stop ids. */
lora_beam_params lora_beam_params_default(void);

/* What one search returns besides its tokens. */
typedef struct lora_beam_result {
    int32_t n_tokens;     /* tokens written to out (an ending eos not included) */
    int32_t finished;     /* 1: ended by eos or a stop id; 0: ran to max_new (or max_len) */
    int32_t length;       /* the length in the score (n_tokens, + 1 when eos ended it) */
    int32_t n_steps;      /* forward steps this search ran after its prefill */
    double  sum_logprobs; /* Σ log p of the generated tokens, the ending one included */
    double  score;        /* sum_logprobs / length^lp; 0 when max_new is 0; -inf when every
                             continuation was banned from the first step (n_tokens 0) */
} lora_beam_result;

/*
 * Beam search after the prompt prompt (n_prompt >= 1 tokens): the best hypothesis's tokens go
 * to out (room for p->max_new), the rest to *res. The decoder needs n_seq >= n_beams; the
 * prompt is fed once into sequence 0 and its cache copied to the other beams, then every step
 * advances all running beams in one forward, reordering caches by copying only positions past
 * the prompt. Generation also ends when sequences would exceed the decoder's max_len: room for
 * n_prompt + max_new - 1 tokens lets it run to max_new. Scratch is allocated once per call,
 * nothing per step. On success sequences [0, n_beams) are left empty and the others untouched;
 * on failure the decoder is unchanged. LORA_ERR_ARG for invalid parameters, ids outside the
 * vocabulary, too few sequences or a prompt longer than max_len; LORA_ERR_NOMEM.
 */
lora_status lora_beam_search(lora_decoder *d, const int32_t *prompt, int32_t n_prompt,
                             const lora_beam_params *p, int32_t *out, lora_beam_result *res,
                             lora_error *err);

/*
 * lora_beam_search for n_prompts independent prompts at once (prompts[i], n_prompt[i]), whose
 * running beams share each forward (more rows per matrix product: faster per token than one
 * prompt at a time). Prompt i uses sequences [i K, (i + 1) K), so n_seq >= n_prompts K; its
 * tokens go to out[i] (room for p->max_new) and res[i]. Each prompt's result equals what
 * lora_beam_search gives for it alone (to rounding of the batched products).
 */
lora_status lora_beam_search_batch(lora_decoder *d, int32_t n_prompts,
                                   const int32_t *const *prompts, const int32_t *n_prompt,
                                   const lora_beam_params *p, int32_t *const *out,
                                   lora_beam_result *res, lora_error *err);

/* ---- sampling ---- */

/*
 * How the next token is drawn from logits z (V), in this order (as Hugging Face's
 * generate): z / temperature; keep the top_k largest; softmax; keep the smallest set of the
 * most probable tokens whose mass reaches top_p (the nucleus, Holtzman et al. 2020); draw one
 * token from the renormalised kept mass. Ties in ranking go to the lower id.
 */
typedef struct lora_sampler_params {
    float    temperature; /* > 0; <= 0 means greedy */
    int32_t  top_k;       /* keep the k most likely tokens; <= 0 (or >= V) keeps all */
    float    top_p;       /* nucleus mass in (0, 1); >= 1 keeps all */
    int32_t  greedy;      /* 1: argmax (the lowest id among equal maxima); the rest is ignored */
    uint64_t seed;        /* with the draw index, determines every draw */
} lora_sampler_params;

/* Defaults: temperature 1, top_k 0, top_p 1 (plain sampling from the softmax), greedy 0,
 * seed 42. */
lora_sampler_params lora_sampler_params_default(void);

/* A sampler holds the parameters and O(V) scratch, so that sampling allocates nothing. */
typedef struct lora_sampler lora_sampler;

/*
 * Creates a sampler for vocabularies of up to n_vocab logits. LORA_ERR_ARG for n_vocab < 1,
 * a NaN temperature or top_p <= 0. On success *out is owned by the caller: free it with
 * lora_sampler_free.
 */
lora_status lora_sampler_init(const lora_sampler_params *p, int32_t n_vocab, lora_sampler **out,
                              lora_error *err);
void        lora_sampler_free(lora_sampler *s);

/*
 * Draws a token id from logits (the n_vocab given at init). The draw is a pure function of
 * (params, logits, draw): the same draw index gives the same token, so callers number their
 * draws (e.g. sequence * max_len + position) to make a run reproducible. NaN logits count as
 * -infinity; when every logit is -infinity or NaN the result is 0. Not thread-safe on one
 * sampler (it uses the sampler's scratch).
 */
int32_t lora_sampler_sample(lora_sampler *s, const float *logits, uint64_t draw);

/* Index of the largest logit, the lowest among equal maxima; NaN counts as -infinity. */
int32_t lora_argmax(const float *logits, int32_t n);

/* ---- performance: FLOP counts, per-op profile, machine peaks ---- */

/*
 * Model FLOPs of one training step (forward + backward) for a config, method and batch shape,
 * N = B·T rows, a multiply-add counted as 2 FLOPs. Elementwise work (layer norm, GELU, softmax,
 * residuals, cross-entropy, the optimizer) is not counted. Per layer:
 *   linear     forward 2·N·(C·3C + C·C + C·F + F·C); backward: dX of every linear (the same
 *              again), plus dW (again) only for trainable weights (full fine-tuning)
 *   attention  forward 4·B·T²·C (Q·Kᵀ and P·V over the FULL T×T square, the convention of
 *              PaLM's and nanoGPT's MFU, although the causal kernels do about half); backward 2×
 *   lm_head    forward 2·N·C·V; backward dX 2·N·C·V, plus dW (tied wte) when trainable
 *   adapter    LoRA/AdaLoRA on a site of width in -> len at rank r: forward 2·N·r·(in + len),
 *              backward 4·N·r·(in + len) (dB, dU, dA, dX)
 */
typedef struct lora_flops {
    double linear;    /* the transformer's linears: forward, dX, and dW when trainable */
    double attention; /* score and weighted-sum products, full square */
    double lm_head;   /* the logits product and its gradients */
    double adapter;   /* the adapters' low-rank products */
    double forward;   /* the forward part of the four above */
    double backward;  /* the backward part */
    double total;     /* forward + backward: one training step */
} lora_flops;

lora_status lora_estimate_flops(const lora_config *cfg, const lora_adapter_params *p, int32_t B,
                                int32_t T, lora_flops *out, lora_error *err);

/* The operations a profile splits a step into. */
typedef enum lora_profile_op {
    LORA_PROF_EMBEDDING = 0, /* token + position embeddings and their gradients */
    LORA_PROF_LAYERNORM,     /* layer norms, forward and backward */
    LORA_PROF_MATMUL,        /* the linears' W0 products: x·W0 + b forward, dX = dY·W0ᵀ */
    LORA_PROF_MATMUL_DW,     /* weight and bias gradients of trainable linears (full, BitFit) */
    LORA_PROF_ATTENTION,     /* causal softmax attention, forward and backward */
    LORA_PROF_GELU,
    LORA_PROF_RESIDUAL,      /* residual adds and zeroing the backward buffers */
    LORA_PROF_LM_HEAD,       /* logits = ln_f(x)·wteᵀ, its dX and (when trainable) dW */
    LORA_PROF_CROSS_ENTROPY, /* loss and its gradient over the vocabulary */
    LORA_PROF_ADAPTER,       /* LoRA / AdaLoRA deltas, their gradients, dropout, regulariser */
    LORA_PROF_OPTIMIZER,     /* zeroing gradients, grad-norm, clipping, AdamW, after-step */
    LORA_PROF_N_OPS
} lora_profile_op;

/* Phases: which call the time was spent in. */
enum { LORA_PROF_FORWARD = 0, LORA_PROF_BACKWARD = 1, LORA_PROF_STEP = 2, LORA_PROF_N_PHASES = 3 };

typedef struct lora_profile {
    double  op_s[LORA_PROF_N_PHASES][LORA_PROF_N_OPS]; /* seconds per op, by phase */
    double  phase_s[LORA_PROF_N_PHASES]; /* wall seconds of lora_model_forward, _backward, and
                                            _step + _zero_grad; what the ops leave is overhead */
    int64_t n_calls[LORA_PROF_N_PHASES];
} lora_profile;

/*
 * Starts (on != 0: counters zeroed) or stops (counters discarded) timing each operation of the
 * model's forward, backward, zero_grad and step calls with a monotonic clock. Off (the default)
 * costs one pointer test per operation; results are identical either way. LORA_ERR_NOMEM when
 * the counters cannot be allocated.
 */
lora_status lora_model_set_profiling(lora_model *m, int on, lora_error *err);
/* Copies the counters accumulated since profiling was turned on (zeros when it is off). */
void lora_model_profile(const lora_model *m, lora_profile *out);
/* "matmul", "attention", ...; NULL for an op out of range. */
const char *lora_profile_op_name(int32_t op);

/*
 * The machine's single-precision FMA throughput in GFLOP/s: a register-resident loop of
 * independent fused multiply-adds (the widest vectors the CPU runs: AVX-512, AVX2+FMA, else
 * plain vector arithmetic), on n_threads OpenMP threads (<= 0: lora_get_threads()), best of
 * several runs lasting about `seconds` in all. An upper bound no kernel can beat.
 */
double lora_machine_fma_gflops(int n_threads, double seconds);
/* OpenBLAS sgemm on n x n x n (row-major, no transposes) in GFLOP/s, best of runs lasting about
 * `seconds` in all, on lora_get_threads() threads; < 0 when the matrices cannot be allocated. */
double lora_machine_sgemm_gflops(int32_t n, double seconds);

#ifdef __cplusplus
}
#endif

#endif /* LORA_H */
