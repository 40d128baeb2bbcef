/*
 * lora_views.c — the attached adapter seen as plain LoRA sites (B·A per site with one output
 * scale), the form the LoRA writers (a PEFT LoRA directory, a llama.cpp GGUF) take.
 *
 * A LoRA adapter is listed as it is. An AdaLoRA site of initial rank r computes
 * ΔW = scale · P·diag(Λ ⊙ mask)·Q; it becomes a LoRA site of rank k = the kept triplets:
 *   A = the kept rows of Q (k, in),  B = P's kept columns times their λ (len, k),
 *   scale unchanged (alpha / (ranknum + 1e-5)),
 * so B·A·scale is the same ΔW (up to the rounding of one product per entry of B). A site whose
 * mask keeps no triplet has ΔW = 0; it becomes rank 1 with B = 0 and A = Q's first row, which
 * is exact, keeps the module present (PEFT would otherwise initialise it fresh) and leaves the
 * usual LoRA starting point (A non-zero, B zero) should it be trained further.
 *
 * Not the file formats themselves (peft_io.c, gguf_adapter.c).
 */
#include "core/error.h"
#include "peft/adalora.h"
#include "peft/peft.h"

#include <stdlib.h>
#include <string.h>

/* The kept triplets of one AdaLoRA site. */
static int32_t kept_of(const adalora_site_view *s) {
    int32_t k = 0;
    for (int32_t i = 0; i < s->r; i++)
        k += s->mask[i] != 0.0f;
    return k;
}

static lora_status fold_adalora(lora_model *m, lora_site_view **out, int32_t *n_out,
                                lora_error *err) {
    int32_t            n = adalora_sites_list(m, NULL, 0);
    adalora_site_view *v = calloc((size_t)n + 1, sizeof *v);
    if (!v) return lora_errorf(err, LORA_ERR_NOMEM, "AdaLoRA: out of memory");
    adalora_sites_list(m, v, n);
    /* one block: the views, then every folded A and B */
    size_t floats = 0;
    for (int32_t i = 0; i < n; i++) {
        int32_t k = kept_of(&v[i]);
        if (k == 0) k = 1;
        floats += (size_t)k * ((size_t)v[i].in + (size_t)v[i].len);
    }
    size_t          head  = ((size_t)n + 1) * sizeof(lora_site_view);
    lora_site_view *views = malloc(head + (floats + 1) * sizeof(float));
    if (!views) {
        free(v);
        return lora_errorf(err, LORA_ERR_NOMEM, "AdaLoRA: out of memory");
    }
    float *buf = (float *)((char *)views + head);
    for (int32_t s = 0; s < n; s++) {
        const adalora_site_view *a = &v[s];
        int32_t                  k = kept_of(a), kk = k ? k : 1;
        float                   *A = buf, *B = buf + (size_t)kk * a->in;
        buf += (size_t)kk * ((size_t)a->in + (size_t)a->len);
        if (k == 0) { /* ΔW = 0: rank 1, B = 0 */
            memcpy(A, a->A, (size_t)a->in * sizeof(float));
            memset(B, 0, (size_t)a->len * sizeof(float));
        } else {
            for (int32_t i = 0, j = 0; i < a->r; i++) {
                if (a->mask[i] == 0.0f) continue;
                memcpy(A + (size_t)j * a->in, a->A + (size_t)i * a->in,
                       (size_t)a->in * sizeof(float));
                for (int32_t row = 0; row < a->len; row++)
                    B[(size_t)row * k + j] = a->B[(size_t)row * a->r + i] * a->E[i];
                j++;
            }
        }
        views[s] = (lora_site_view){a->layer, a->target, kk, a->in, a->len, a->scale, A, B};
    }
    free(v);
    *out   = views;
    *n_out = n;
    return LORA_OK;
}

lora_status peft_lora_views(lora_model *m, lora_site_view **out, int32_t *n, lora_error *err) {
    *out = NULL;
    *n   = 0;
    if (m->attached > 0 && m->peft.method == LORA_METHOD_ADALORA)
        return fold_adalora(m, out, n, err);
    if (m->attached <= 0 || m->peft.method != LORA_METHOD_LORA)
        return lora_errorf(err, LORA_ERR_STATE, "no LoRA or AdaLoRA adapter attached");
    int32_t         count = lora_sites_list(m, NULL, 0);
    lora_site_view *views = calloc((size_t)count + 1, sizeof *views);
    if (!views) return lora_errorf(err, LORA_ERR_NOMEM, "out of memory");
    lora_sites_list(m, views, count);
    *out = views;
    *n   = count;
    return LORA_OK;
}
