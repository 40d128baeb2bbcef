/*
 * gguf_adapter.c — the attached LoRA (or AdaLoRA) adapter as a llama.cpp LoRA GGUF file.
 *
 * llama.cpp adds s·B·(A·x) to an adapted weight's output with s = user_scale · alpha / r,
 * alpha the file's one adapter.lora.alpha and r read from each lora_b. Tensors are
 * "<base tensor>.lora_a" (r, in) and "<base tensor>.lora_b" (out, r) in PyTorch order, so our
 * A (r, in) and B (len, r) are written as they are, no transpose (the Conv1D transpose only
 * concerns the base weight).
 *
 * One llama.cpp weight per linear site: adapters on the q, k, v slices of c_attn (and a fused
 * c_attn adapter, if any) become one attn_qkv module of rank R = the sum of their ranks, A
 * stacked (R, C) and B (3C, R) with each adapter's block in its own rows and columns and zeros
 * elsewhere, as peft_io.c writes PEFT files. Since alpha is one number, alpha = s·R of the first
 * module; a module whose s·R differs (another rank or scale) gets s·R / alpha folded into its B,
 * which leaves B·A·s unchanged. In the common case (one rank, one scale) nothing is folded and
 * B is written bit for bit.
 *
 * An attached AdaLoRA adapter is written in its folded LoRA form (peft_lora_views: B = P·Λ over
 * the kept triplets, rank = kept, a site keeping none as rank 1 with B = 0); its sites share
 * one scale, so only modules of another rank get a fold factor.
 *
 * Not here: token_embd adapters (we have none; llama.cpp aborts on them for tied models).
 */
#include "core/dtype.h"
#include "core/error.h"
#include "io/gguf.h"
#include "peft/peft.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* llama.cpp's name of the weight a LoRA target adapts; NULL for anything else. */
static const char *base_tensor(uint32_t target) {
    switch (target) {
    case LORA_TARGET_Q:
    case LORA_TARGET_K:
    case LORA_TARGET_V:
    case LORA_TARGET_C_ATTN:
        return "attn_qkv";
    case LORA_TARGET_ATTN_PROJ:
        return "attn_output";
    case LORA_TARGET_MLP_FC:
        return "ffn_up";
    case LORA_TARGET_MLP_PROJ:
        return "ffn_down";
    default:
        return NULL;
    }
}

/* First output row of an adapter inside its site. */
static int32_t out_offset(uint32_t target, int32_t C) {
    return target == LORA_TARGET_K ? C : target == LORA_TARGET_V ? 2 * C : 0;
}

typedef struct gg_module {
    int32_t     layer;
    const char *base;
    int32_t     first, count; /* the module's adapters: views [first, first + count) */
    int32_t     R, in, out;
    float      *A, *B;         /* (R, in), (out, R), owned */
    void       *A_out, *B_out; /* narrowed copies when dtype is not F32, owned */
} gg_module;

/* Output rows of the site an adapter sits on. */
static int32_t site_out(const lora_config *c, uint32_t target) {
    switch (target) {
    case LORA_TARGET_MLP_FC:
        return c->n_inner;
    case LORA_TARGET_ATTN_PROJ:
    case LORA_TARGET_MLP_PROJ:
        return c->n_embd;
    default:
        return 3 * c->n_embd;
    }
}

static void *narrow(const float *src, size_t n, uint32_t type) {
    uint16_t *h = malloc((n ? n : 1) * sizeof *h);
    if (!h) return NULL;
    if (type == GGUF_TENSOR_F16)
        lora_f32_to_f16_n(h, src, n);
    else
        lora_f32_to_bf16_n(h, src, n);
    return h;
}

lora_status lora_adapter_save_gguf(lora_model *m, const char *path, lora_dtype dtype,
                                   lora_error *err) {
    if (!m || !path) return lora_errorf(err, LORA_ERR_ARG, "lora_adapter_save_gguf: NULL argument");
    if (m->attached <= 0 ||
        (m->peft.method != LORA_METHOD_LORA && m->peft.method != LORA_METHOD_ADALORA))
        return lora_errorf(err, LORA_ERR_STATE, "%s: no LoRA or AdaLoRA adapter attached", path);
    const lora_config *c  = &m->cfg;
    lora_site_view    *v  = NULL; /* the adapter in LoRA form (AdaLoRA folded) */
    int32_t            n  = 0;
    lora_status        st = peft_lora_views(m, &v, &n, err);
    if (st != LORA_OK) return st;
    gg_module         *mods  = calloc((size_t)n + 1, sizeof *mods);
    gguf_writer       *w     = gguf_writer_new();
    int32_t            n_mod = 0;
    uint32_t           type  = dtype == LORA_DTYPE_F16    ? GGUF_TENSOR_F16
                               : dtype == LORA_DTYPE_BF16 ? GGUF_TENSOR_BF16
                                                          : GGUF_TENSOR_F32;
    if (!mods || !w) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    if (n == 0) {
        st = lora_errorf(err, LORA_ERR_STATE, "%s: the attached LoRA has no adapters", path);
        goto done;
    }

    /* group: consecutive views of one layer on one llama.cpp weight form a module */
    for (int32_t i = 0; i < n; i++) {
        const char *base = base_tensor(v[i].target);
        if (!base) {
            st = lora_errorf(err, LORA_ERR_UNSUPPORTED,
                             "%s: an adapter on target 0x%x has no llama.cpp weight", path,
                             (unsigned)v[i].target);
            goto done;
        }
        gg_module *mo = n_mod ? &mods[n_mod - 1] : NULL;
        if (!mo || mo->layer != v[i].layer || strcmp(mo->base, base)) {
            mo        = &mods[n_mod++];
            mo->layer = v[i].layer;
            mo->base  = base;
            mo->first = i;
            mo->in    = v[i].in;
            mo->out   = site_out(c, v[i].target);
        }
        mo->count++;
        mo->R += v[i].r;
    }

    /* alpha from the first module; the others fold their difference into B */
    float alpha = (float)((double)v[0].scale * mods[0].R);
    if (!(alpha != 0) || !isfinite(alpha)) alpha = (float)mods[0].R;
    for (int32_t k = 0; k < n_mod; k++) {
        gg_module *mo = &mods[k];
        mo->A         = calloc((size_t)mo->R * (size_t)mo->in, sizeof(float));
        mo->B         = calloc((size_t)mo->out * (size_t)mo->R, sizeof(float));
        if (!mo->A || !mo->B) {
            st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
            goto done;
        }
        int32_t col = 0;
        for (int32_t j = mo->first; j < mo->first + mo->count; j++) {
            const lora_site_view *a   = &v[j];
            int32_t               off = out_offset(a->target, c->n_embd);
            float  want = (float)((double)a->scale * mo->R); /* this adapter's alpha */
            double fold = want == alpha ? 1.0 : (double)a->scale * mo->R / (double)alpha;
            if (a->in != mo->in || off + a->len > mo->out) {
                st = lora_errorf(err, LORA_ERR_STATE,
                                 "%s: adapter %d has shape (%d, %d) on a "
                                 "(%d, %d) site",
                                 path, (int)j, (int)a->len, (int)a->in, (int)mo->out, (int)mo->in);
                goto done;
            }
            memcpy(mo->A + (size_t)col * mo->in, a->A, (size_t)a->r * a->in * sizeof(float));
            for (int32_t row = 0; row < a->len; row++)
                for (int32_t q = 0; q < a->r; q++) {
                    float b = a->B[(size_t)row * a->r + q];
                    mo->B[(size_t)(off + row) * mo->R + col + q] =
                        fold == 1.0 ? b : (float)(b * fold);
                }
            col += a->r;
        }
    }

    if ((st = gguf_writer_set_str(w, "general.architecture", "gpt2", err)) ||
        (st = gguf_writer_set_str(w, "general.type", "adapter", err)) ||
        (st = gguf_writer_set_u32(w, "general.alignment", GGUF_DEFAULT_ALIGNMENT, err)) ||
        (st = gguf_writer_set_str(w, "adapter.type", "lora", err)) ||
        (st = gguf_writer_set_f32(w, "adapter.lora.alpha", alpha, err)))
        goto done;
    for (int32_t k = 0; k < n_mod; k++) {
        gg_module  *mo = &mods[k];
        char        name[GGUF_MAX_NAME];
        int64_t     ne_a[2] = {mo->in, mo->R}, ne_b[2] = {mo->R, mo->out};
        const void *a = mo->A, *b = mo->B;
        if (type != GGUF_TENSOR_F32) {
            mo->A_out = narrow(mo->A, (size_t)mo->R * mo->in, type);
            mo->B_out = narrow(mo->B, (size_t)mo->out * mo->R, type);
            if (!mo->A_out || !mo->B_out) {
                st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
                goto done;
            }
            a = mo->A_out;
            b = mo->B_out;
        }
        snprintf(name, sizeof name, "blk.%d.%s.weight.lora_a", (int)mo->layer, mo->base);
        if ((st = gguf_writer_add_tensor(w, name, type, 2, ne_a, a, err)) != LORA_OK) goto done;
        snprintf(name, sizeof name, "blk.%d.%s.weight.lora_b", (int)mo->layer, mo->base);
        if ((st = gguf_writer_add_tensor(w, name, type, 2, ne_b, b, err)) != LORA_OK) goto done;
    }
    st = gguf_writer_write(w, path, err);
done:
    for (int32_t k = 0; mods && k < n_mod; k++) {
        free(mods[k].A);
        free(mods[k].B);
        free(mods[k].A_out);
        free(mods[k].B_out);
    }
    gguf_writer_free(w);
    free(mods);
    free(v);
    return st;
}
