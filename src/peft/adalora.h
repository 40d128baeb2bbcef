/*
 * adalora.h — AdaLoRA's internals for the PEFT files, the tests and inspection tools.
 *
 * The method itself is `peft_method_adalora` (peft.h). This header exposes, read-only unless
 * said otherwise, what the allocator decided: the budget of the last step, the per-site masks
 * (the rank pattern), the triplet importance scores, and the sites' tensors. Everything here
 * is valid while the model lives and only when AdaLoRA is the attached method: the functions
 * return 0 / LORA_ERR_STATE otherwise.
 *
 * r = initial rank of a site, in = input width, len = output slice width.
 */
#ifndef LORA_PEFT_ADALORA_H
#define LORA_PEFT_ADALORA_H

#include "lora.h"

#include <stdint.h>

/* One attached AdaLoRA site, in allocator order (layer, then q, k, v, c_attn, c_proj, c_fc,
 * mlp.c_proj). Pointers are live: A, E and B are the trainable tensors, mask the allocator's
 * current decision for this site (1 kept, 0 pruned). */
typedef struct adalora_site_view {
    int32_t  layer;
    uint32_t target; /* one LORA_TARGET_* bit */
    int32_t  r, in, len;
    float    scale; /* alpha / (r + 1e-5), as PEFT's scaling / ranknum */
    float   *A;     /* (r, in)  Q, "lora_A" */
    float   *E;     /* (r)      Λ, "lora_E" */
    float   *B;     /* (len, r) P, "lora_B" */
    float   *mask;  /* (r) */
} adalora_site_view;

/* What the allocator did in its last call (after_step). */
typedef struct adalora_status {
    int64_t step;       /* 0-based index of the last step seen; -1 before the first */
    int32_t budget;     /* b(step): total kept triplets the schedule allows */
    int32_t masked;     /* 1 when that step (re)applied a mask */
    int32_t init_bgt;   /* Σ r over sites */
    int32_t target_bgt; /* target_r × n_sites */
    int32_t n_sites;
    int32_t kept; /* triplets currently kept by the mask */
} adalora_status;

/* Lists the sites (fills up to cap); returns the count, 0 when AdaLoRA is not attached. */
int32_t adalora_sites_list(lora_model *m, adalora_site_view *out, int32_t cap);

/* The allocator's state. LORA_ERR_STATE when AdaLoRA is not attached. */
lora_status adalora_get_status(const lora_model *m, adalora_status *out);

/*
 * PEFT's budget_schedule: the budget at 0-based step `step` and whether the allocator masks
 * at that step in the schedule (the forced final mask at total_step - tfinal is not included).
 * Returns -1 when AdaLoRA is not attached.
 */
int32_t adalora_budget_at(const lora_model *m, int64_t step, int *mask_ind);

/* Writes the triplet scores S_i = s(E_i) + mean_j s(A_ij) + mean_j s(B_ji), s = Ī·Ū, from the
 * current EMAs for every site in allocator order (init_bgt values); returns the count written,
 * or -1 when cap is too small or AdaLoRA is not attached. */
int32_t adalora_scores(const lora_model *m, double *out, int32_t cap);

/* Copies the masks of every site in allocator order (init_bgt values, 1 kept / 0 pruned);
 * returns the count or -1 (as above). */
int32_t adalora_masks(const lora_model *m, uint8_t *out, int32_t cap);

/* Sets the masks (a loaded rank pattern): every E entry whose mask is 0 is set to 0, the
 * pattern becomes final (re-applied after every step). mask has init_bgt values. */
lora_status adalora_set_masks(lora_model *m, const uint8_t *mask, int32_t n, lora_error *err);

/* 1 when the mask is frozen (the final phase, or a pattern loaded from a file). */
int adalora_mask_is_final(const lora_model *m);

/* The orthogonality penalty R = γ / n Σ ‖cov − I‖_F (n = 2 × sites), without its gradient. */
float adalora_orth_penalty(lora_model *m);

/* ---- PEFT directories (adalora_io.c) ---- */

/* Writes the attached AdaLoRA adapter as PEFT's AdaLoRA directory (see adalora_io.c):
 * lora_adapter_save's contract. LORA_ERR_UNSUPPORTED when sites differ in rank or scale. */
lora_status adalora_adapter_save(lora_model *m, const char *dir, const char *base_model_name,
                                 lora_error *err);

/* Attaches the AdaLoRA adapter of a PEFT directory (ours or PEFT's) with its values, and its
 * rank pattern as a frozen mask: lora_adapter_load's contract. */
lora_status adalora_adapter_load(lora_model *m, const char *dir, lora_error *err);

/* 1 when DIR/adapter_config.json says peft_type "ADALORA"; 0 otherwise (errors included). */
int adalora_dir_is_adalora(const char *dir);

#endif
