/*
 * gguf_model.c — GPT-2 as a GGUF file: export (weights + tokenizer, as llama.cpp's "gpt2"
 * architecture reads them) and loading such a file into a lora_model.
 *
 * Layout differences with Hugging Face's checkpoint: llama.cpp's linear weights are nn.Linear
 * matrices (out, in) — GGUF ne = [in, out] — while GPT-2's Conv1D stores (in, out), so every
 * linear weight is transposed on the way out and back on the way in. Embeddings, LayerNorm
 * parameters and biases keep their layout. llama.cpp's GPT-2 graph uses the tanh GELU.
 *
 * What it is not: a general GGUF model loader. Only "gpt2" with F32/F16/BF16 tensors; the
 * GGUF's tokenizer is written but not read back.
 *
 * C = n_embd, F = n_inner (MLP width), V = vocab, P = n_positions, L = layers.
 */
#include "core/dtype.h"
#include "core/error.h"
#include "io/gguf.h"
#include "model/gpt2.h"
#include "tokenizer/tokenizer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* llama.cpp's token types (llama_token_type) */
enum { TOKEN_TYPE_NORMAL = 1, TOKEN_TYPE_CONTROL = 3, TOKEN_TYPE_UNUSED = 5 };

/* llama.cpp's general.file_type values (llama_ftype) */
enum { FTYPE_ALL_F32 = 0, FTYPE_MOSTLY_F16 = 1, FTYPE_MOSTLY_BF16 = 32 };

/* One tensor of the model in both namings. */
typedef struct gg_slot {
    char          name[GGUF_MAX_NAME];
    const float **w;          /* the model's pointer to the F32 data */
    int64_t       rows, cols; /* the model's layout: (rows, cols), or (rows) when cols == 0 */
    int           transpose;  /* GGUF holds the (cols, rows) transpose: a Conv1D weight */
} gg_slot;

static void slot(gg_slot *s, const char *name, const float **w, int64_t rows, int64_t cols,
                 int transpose) {
    snprintf(s->name, sizeof s->name, "%s", name);
    s->w         = w;
    s->rows      = rows;
    s->cols      = cols;
    s->transpose = transpose;
}

/* The model's tensors with llama.cpp's names; slots may be NULL to count. */
static size_t gg_slots(lora_model *m, gg_slot *s) {
    const lora_config *c = &m->cfg;
    int64_t            C = c->n_embd, F = c->n_inner, V = c->vocab_size, P = c->n_positions;
    size_t             n = 4 + (size_t)c->n_layer * 12 + (c->tie_word_embeddings ? 0 : 1);
    if (!s) return n;
    size_t k = 0;
    slot(&s[k++], "token_embd.weight", &m->wte, V, C, 0);
    slot(&s[k++], "position_embd.weight", &m->wpe, P, C, 0);
    for (int32_t l = 0; l < c->n_layer; l++) {
        gpt2_layer *ly = &m->layers[l];
        char        nm[GGUF_MAX_NAME];
#define SLOT(suffix, ptr, r, cl, t)                                                                \
    snprintf(nm, sizeof nm, "blk.%d.%s", (int)l, suffix);                                          \
    slot(&s[k++], nm, ptr, r, cl, t)
        SLOT("attn_norm.weight", &ly->ln_1_w, C, 0, 0);
        SLOT("attn_norm.bias", &ly->ln_1_b, C, 0, 0);
        SLOT("attn_qkv.weight", &ly->c_attn.w, C, 3 * C, 1);
        SLOT("attn_qkv.bias", &ly->c_attn.b, 3 * C, 0, 0);
        SLOT("attn_output.weight", &ly->attn_proj.w, C, C, 1);
        SLOT("attn_output.bias", &ly->attn_proj.b, C, 0, 0);
        SLOT("ffn_norm.weight", &ly->ln_2_w, C, 0, 0);
        SLOT("ffn_norm.bias", &ly->ln_2_b, C, 0, 0);
        SLOT("ffn_up.weight", &ly->c_fc.w, C, F, 1);
        SLOT("ffn_up.bias", &ly->c_fc.b, F, 0, 0);
        SLOT("ffn_down.weight", &ly->mlp_proj.w, F, C, 1);
        SLOT("ffn_down.bias", &ly->mlp_proj.b, C, 0, 0);
#undef SLOT
    }
    slot(&s[k++], "output_norm.weight", &m->ln_f_w, C, 0, 0);
    slot(&s[k++], "output_norm.bias", &m->ln_f_b, C, 0, 0);
    if (!c->tie_word_embeddings) slot(&s[k++], "output.weight", &m->lm_head, V, C, 0);
    LORA_ASSERT(k == n);
    return n;
}

/* GGUF ne of a slot: the PyTorch shape of what is stored, reversed. */
static uint32_t slot_ne(const gg_slot *s, int64_t ne[2]) {
    if (!s->cols) {
        ne[0] = s->rows;
        ne[1] = 1;
        return 1;
    }
    ne[0] = s->transpose ? s->rows : s->cols; /* stored (cols, rows) when transposed */
    ne[1] = s->transpose ? s->cols : s->rows;
    return 2;
}

/* ---- export ---- */

typedef struct fill_job {
    const gg_slot *s;
    uint32_t       type; /* GGUF_TENSOR_F32 / F16 / BF16 */
} fill_job;

static void put_elem(void *dst, size_t i, float v, uint32_t type) {
    if (type == GGUF_TENSOR_F32) {
        ((float *)dst)[i] = v;
    } else {
        ((uint16_t *)dst)[i] = type == GGUF_TENSOR_F16 ? lora_f32_to_f16(v) : lora_f32_to_bf16(v);
    }
}

/* Writes a slot's data, transposed and narrowed as its job says, into dst. */
static lora_status fill_slot(void *user, void *dst, size_t nbytes, lora_error *err) {
    const fill_job *j    = user;
    const float    *src  = *j->s->w;
    int64_t         rows = j->s->rows, cols = j->s->cols ? j->s->cols : 1;
    (void)err;
    LORA_ASSERT(nbytes == (size_t)(rows * cols) * gguf_tensor_type_size(j->type));
    if (!j->s->transpose) {
        if (j->type == GGUF_TENSOR_F32)
            memcpy(dst, src, nbytes);
        else if (j->type == GGUF_TENSOR_F16)
            lora_f32_to_f16_n(dst, src, (size_t)(rows * cols));
        else
            lora_f32_to_bf16_n(dst, src, (size_t)(rows * cols));
        return LORA_OK;
    }
    /* (rows, cols) -> (cols, rows), in tiles so that both sides stay in cache */
    const int64_t TB = 32;
    for (int64_t c0 = 0; c0 < cols; c0 += TB)
        for (int64_t r0 = 0; r0 < rows; r0 += TB)
            for (int64_t c = c0; c < c0 + TB && c < cols; c++)
                for (int64_t r = r0; r < r0 + TB && r < rows; r++)
                    put_elem(dst, (size_t)(c * rows + r), src[r * cols + c], j->type);
    return LORA_OK;
}

/* The tokenizer as tokenizer.ggml.* keys, padded to V tokens. */
static lora_status put_tokenizer(gguf_writer *w, const lora_tokenizer *tok, int32_t V,
                                 const char *tok_dir, lora_error *err) {
    int32_t     n_tok    = lora_tokenizer_n_vocab(tok);
    int32_t     n_merges = lora_tokenizer_n_merges(tok);
    int32_t     eos      = lora_tokenizer_eos(tok);
    lora_status st       = LORA_OK;
    if (n_tok > V)
        return lora_errorf(err, LORA_ERR_SHAPE,
                           "%s: the tokenizer has %d tokens but the model's vocabulary is %d "
                           "(hint: is this the model's tokenizer?)",
                           tok_dir, (int)n_tok, (int)V);
    const char **tokens = calloc((size_t)V, sizeof *tokens);
    int32_t     *types  = calloc((size_t)V, sizeof *types);
    char        *pads   = calloc((size_t)V, 24); /* "[PADn]" names of ids with no token */
    const char **merges = calloc((size_t)n_merges + 1, sizeof *merges);
    char        *mbuf   = NULL;
    size_t       mlen   = 0;
    if (!tokens || !types || !pads || !merges) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", tok_dir);
        goto done;
    }
    for (int32_t i = 0; i < V; i++) {
        const char *t = lora_tokenizer_id_to_token(tok, i);
        types[i]      = i == eos ? TOKEN_TYPE_CONTROL : TOKEN_TYPE_NORMAL;
        if (!t) {
            char *p = pads + (size_t)i * 24;
            snprintf(p, 24, "[PAD%d]", (int)i);
            if (lora_tokenizer_token_to_id(tok, p) >= 0) {
                st = lora_errorf(err, LORA_ERR_UNSUPPORTED,
                                 "%s: the vocabulary already has a token '%s', the name a "
                                 "padding token needs",
                                 tok_dir, p);
                goto done;
            }
            t        = p;
            types[i] = TOKEN_TYPE_UNUSED;
        }
        tokens[i] = t;
    }
    /* merges as "left right" */
    for (int32_t i = 0; i < n_merges; i++) {
        int32_t a, b;
        lora_tokenizer_merge(tok, i, &a, &b);
        const char *sa = lora_tokenizer_id_to_token(tok, a),
                   *sb = lora_tokenizer_id_to_token(tok, b);
        if (!sa || !sb) {
            st = lora_errorf(err, LORA_ERR_FORMAT, "%s: merge %d names an id with no token",
                             tok_dir, (int)i);
            goto done;
        }
        mlen += strlen(sa) + strlen(sb) + 2;
    }
    if (!(mbuf = malloc(mlen + 1))) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", tok_dir);
        goto done;
    }
    size_t k = 0;
    for (int32_t i = 0; i < n_merges; i++) {
        int32_t a, b;
        lora_tokenizer_merge(tok, i, &a, &b);
        merges[i] = mbuf + k;
        k += (size_t)sprintf(mbuf + k, "%s %s", lora_tokenizer_id_to_token(tok, a),
                             lora_tokenizer_id_to_token(tok, b)) +
             1;
    }
    if ((st = gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2", err)) ||
        (st = gguf_writer_set_str(w, "tokenizer.ggml.pre", "gpt-2", err)) ||
        (st = gguf_writer_set_arr(w, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, tokens, (uint64_t)V,
                                  err)) ||
        (st = gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_I32, types, (uint64_t)V,
                                  err)) ||
        (st = gguf_writer_set_arr(w, "tokenizer.ggml.merges", GGUF_TYPE_STRING, merges,
                                  (uint64_t)n_merges, err)))
        goto done;
    if (eos >= 0 &&
        ((st = gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)eos, err)) ||
         (st = gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eos, err))))
        goto done;
done:
    free(mbuf);
    free(merges);
    free(pads);
    free(types);
    free(tokens);
    return st;
}

/* The last path component of dir, without a trailing slash, into out. */
static void base_name(const char *dir, char *out, size_t n) {
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/')
        len--;
    size_t b = len;
    while (b > 0 && dir[b - 1] != '/')
        b--;
    snprintf(out, n, "%.*s", (int)(len - b), dir + b);
}

lora_status lora_model_save_gguf(lora_model *m, const char *path, lora_dtype dtype,
                                 const char *tokenizer_dir, lora_error *err) {
    if (!m || !path) return lora_errorf(err, LORA_ERR_ARG, "lora_model_save_gguf: NULL argument");
    const lora_config *c      = &m->cfg;
    const char        *tdir   = tokenizer_dir ? tokenizer_dir : m->dir;
    uint32_t           type2d = dtype == LORA_DTYPE_F16    ? GGUF_TENSOR_F16
                                : dtype == LORA_DTYPE_BF16 ? GGUF_TENSOR_BF16
                                                           : GGUF_TENSOR_F32;
    uint32_t           ftype  = dtype == LORA_DTYPE_F16    ? FTYPE_MOSTLY_F16
                                : dtype == LORA_DTYPE_BF16 ? FTYPE_MOSTLY_BF16
                                                           : FTYPE_ALL_F32;
    lora_tokenizer    *tok    = NULL;
    gguf_writer       *w      = gguf_writer_new();
    size_t             n      = gg_slots(m, NULL);
    gg_slot           *slots  = calloc(n, sizeof *slots);
    fill_job          *jobs   = calloc(n, sizeof *jobs);
    lora_status        st     = LORA_OK;
    char               name[256];
    if (!w || !slots || !jobs) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    struct stat sb;
    if (stat(tdir, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
        st = lora_errorf(err, LORA_ERR_MISSING,
                         "%s: not a directory: no tokenizer to write into the GGUF (hint: give a "
                         "tokenizer directory)",
                         tdir);
        goto done;
    }
    if ((st = lora_tokenizer_load(tdir, &tok, err)) != LORA_OK) {
        if (st == LORA_ERR_MISSING)
            lora_errorf(err, st,
                        "%s: no tokenizer (tokenizer.json, or vocab.json + merges.txt) to write "
                        "into the GGUF (hint: give a tokenizer directory)",
                        tdir);
        goto done;
    }
    base_name(m->dir, name, sizeof name);
    if ((st = gguf_writer_set_str(w, "general.architecture", "gpt2", err)) ||
        (st = gguf_writer_set_str(w, "general.type", "model", err)) ||
        (st = gguf_writer_set_str(w, "general.name", name, err)) ||
        (st = gguf_writer_set_u32(w, "general.file_type", ftype, err)) ||
        (st = gguf_writer_set_u32(w, "general.alignment", GGUF_DEFAULT_ALIGNMENT, err)) ||
        (st = gguf_writer_set_u32(w, "gpt2.context_length", (uint32_t)c->n_positions, err)) ||
        (st = gguf_writer_set_u32(w, "gpt2.embedding_length", (uint32_t)c->n_embd, err)) ||
        (st = gguf_writer_set_u32(w, "gpt2.feed_forward_length", (uint32_t)c->n_inner, err)) ||
        (st = gguf_writer_set_u32(w, "gpt2.block_count", (uint32_t)c->n_layer, err)) ||
        (st = gguf_writer_set_u32(w, "gpt2.attention.head_count", (uint32_t)c->n_head, err)) ||
        (st = gguf_writer_set_f32(w, "gpt2.attention.layer_norm_epsilon", c->layer_norm_epsilon,
                                  err)))
        goto done;
    if ((st = put_tokenizer(w, tok, c->vocab_size, tdir, err)) != LORA_OK) goto done;

    gg_slots(m, slots);
    for (size_t i = 0; i < n; i++) {
        int64_t  ne[2];
        uint32_t nd = slot_ne(&slots[i], ne);
        jobs[i]     = (fill_job){&slots[i], nd == 2 ? type2d : GGUF_TENSOR_F32};
        if ((st = gguf_writer_add_tensor_fn(w, slots[i].name, jobs[i].type, nd, ne, fill_slot,
                                            &jobs[i], err)) != LORA_OK)
            goto done;
    }
    st = gguf_writer_write(w, path, err);
done:
    gguf_writer_free(w);
    lora_tokenizer_free(tok);
    free(jobs);
    free(slots);
    return st;
}

/* ---- loading ---- */

/* Row `row` of n elements of an F32/F16/BF16 tensor, as F32 (the data may be unaligned). */
static void read_row(const gguf_tensor *t, int64_t row, int64_t n, float *out) {
    size_t         esz = gguf_tensor_type_size(t->type);
    const uint8_t *p   = (const uint8_t *)t->data + (size_t)(row * n) * esz;
    if (t->type == GGUF_TENSOR_F32) {
        memcpy(out, p, (size_t)n * sizeof(float));
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        out[i] = t->type == GGUF_TENSOR_F16 ? lora_f16_to_f32(h) : lora_bf16_to_f32(h);
    }
}

/* Reads a u32 hyper-parameter into an int32 in [1, INT32_MAX]. */
static lora_status get_size(const gguf_file *f, const char *key, int32_t *out, lora_error *err) {
    uint32_t    v;
    lora_status st = gguf_get_u32(f, key, &v, err);
    if (st != LORA_OK) return st;
    if (v < 1 || v > INT32_MAX)
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: %s = %u is out of range", f->path, key,
                           (unsigned)v);
    *out = (int32_t)v;
    return LORA_OK;
}

static lora_status read_config(const gguf_file *f, lora_config *c, lora_error *err) {
    gguf_str    arch;
    lora_status st;
    memset(c, 0, sizeof *c);
    if ((st = gguf_get_str(f, "general.architecture", &arch, err)) != LORA_OK) return st;
    if (!gguf_str_eq(arch, "gpt2"))
        return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                           "%s: architecture '%.*s' is not supported (only gpt2)", f->path,
                           (int)(arch.n > 64 ? 64 : arch.n), arch.s);
    if ((st = get_size(f, "gpt2.block_count", &c->n_layer, err)) ||
        (st = get_size(f, "gpt2.attention.head_count", &c->n_head, err)) ||
        (st = get_size(f, "gpt2.embedding_length", &c->n_embd, err)) ||
        (st = get_size(f, "gpt2.context_length", &c->n_positions, err)) ||
        (st = get_size(f, "gpt2.feed_forward_length", &c->n_inner, err)) ||
        (st = gguf_get_f32(f, "gpt2.attention.layer_norm_epsilon", &c->layer_norm_epsilon, err)))
        return st;
    /* sizes that keep 4 * n_embd and the per-layer tensor count in range */
    if (c->n_embd > INT32_MAX / 4 || c->n_inner > INT32_MAX / 4)
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: gpt2.embedding_length %d or "
                           "feed_forward_length %d is too large",
                           f->path, (int)c->n_embd, (int)c->n_inner);
    if (c->n_layer > f->n_tensors) /* 12 per layer: bounds the allocation before the checks */
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: gpt2.block_count %d but the file has only %lld tensors", f->path,
                           (int)c->n_layer, (long long)f->n_tensors);
    const gguf_kv *kv_heads = gguf_find_kv(f, "gpt2.attention.head_count_kv");
    if (kv_heads && gguf_kv_get_i64(kv_heads, 0) != c->n_head)
        return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                           "%s: gpt2.attention.head_count_kv differs from head_count "
                           "(grouped-query attention is not GPT-2)",
                           f->path);
    if (c->n_embd % c->n_head)
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: gpt2.embedding_length %d is not divisible by head_count %d",
                           f->path, (int)c->n_embd, (int)c->n_head);
    if (!(c->layer_norm_epsilon > 0) || !isfinite(c->layer_norm_epsilon))
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: gpt2.attention.layer_norm_epsilon %g must be positive", f->path,
                           (double)c->layer_norm_epsilon);
    const gguf_tensor *te = gguf_find_tensor(f, "token_embd.weight");
    if (!te)
        return lora_errorf(err, LORA_ERR_MISSING, "%s: tensor 'token_embd.weight' not found",
                           f->path);
    if (te->n_dims != 2 || te->ne[0] != c->n_embd || te->ne[1] < 1 || te->ne[1] > INT32_MAX)
        return lora_errorf(err, LORA_ERR_SHAPE,
                           "%s: tensor 'token_embd.weight' has ne [%lld, %lld] but "
                           "gpt2.embedding_length is %d",
                           f->path, (long long)te->ne[0], (long long)te->ne[1], (int)c->n_embd);
    c->vocab_size          = (int32_t)te->ne[1];
    c->activation          = LORA_ACT_GELU_TANH;
    c->tie_word_embeddings = gguf_find_tensor(f, "output.weight") == NULL;
    return LORA_OK;
}

/* Checks every tensor, then copies them all into one owned F32 buffer. */
static lora_status load_tensors(lora_model *m, const gguf_file *f, lora_error *err) {
    size_t              n     = gg_slots(m, NULL);
    gg_slot            *slots = calloc(n, sizeof *slots);
    const gguf_tensor **ts    = calloc(n, sizeof *ts);
    float              *row   = NULL;
    lora_status         st    = LORA_OK;
    size_t              total = 0, row_max = 1;
    if (!slots || !ts) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", f->path);
        goto done;
    }
    gg_slots(m, slots);
    for (size_t i = 0; i < n; i++) {
        const gg_slot     *s = &slots[i];
        const gguf_tensor *t = gguf_find_tensor(f, s->name);
        int64_t            ne[2];
        uint32_t           nd = slot_ne(s, ne);
        if (!t) {
            st = lora_errorf(err, LORA_ERR_MISSING,
                             "%s: tensor '%s' not found (hint: is this a GPT-2 GGUF?)", f->path,
                             s->name);
            goto done;
        }
        if (t->type != GGUF_TENSOR_F32 && t->type != GGUF_TENSOR_F16 &&
            t->type != GGUF_TENSOR_BF16) {
            st = lora_errorf(err, LORA_ERR_UNSUPPORTED,
                             "%s: tensor '%s' has type %s (supported: F32, F16, BF16)", f->path,
                             s->name, gguf_tensor_type_name(t->type));
            goto done;
        }
        /* a trailing dimension of 1 is the same shape (ne past n_dims reads 1) */
        if (t->n_dims < nd || t->ne[0] != ne[0] || t->ne[1] != ne[1] || t->ne[2] != 1 ||
            t->ne[3] != 1) {
            st = lora_errorf(err, LORA_ERR_SHAPE,
                             "%s: tensor '%s' has ne [%lld, %lld, %lld, %lld] but the gpt2.* "
                             "keys imply [%lld, %lld]",
                             f->path, s->name, (long long)t->ne[0], (long long)t->ne[1],
                             (long long)t->ne[2], (long long)t->ne[3], (long long)ne[0],
                             (long long)ne[1]);
            goto done;
        }
        ts[i] = t;
        if ((size_t)t->numel > SIZE_MAX / sizeof(float) - total) {
            st = lora_errorf(err, LORA_ERR_NOMEM, "%s: weights too large", f->path);
            goto done;
        }
        total += (size_t)t->numel;
        if ((size_t)ne[0] > row_max) row_max = (size_t)ne[0];
    }
    m->converted = malloc(total * sizeof(float));
    row          = malloc(row_max * sizeof(float));
    if (!m->converted || !row) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: cannot allocate %zu bytes for F32 weights",
                         f->path, total * sizeof(float));
        goto done;
    }
    m->converted_floats = total;
    m->weights_bytes    = (int64_t)(total * sizeof(float));
    float *cur          = m->converted;
    for (size_t i = 0; i < n; i++) {
        const gg_slot     *s = &slots[i];
        const gguf_tensor *t = ts[i];
        if (!s->transpose) {
            read_row(t, 0, t->numel, cur);
        } else { /* stored (out, in) = (cols, rows): row o of it is column o of ours */
            for (int64_t o = 0; o < s->cols; o++) {
                read_row(t, o, s->rows, row);
                for (int64_t r = 0; r < s->rows; r++)
                    cur[r * s->cols + o] = row[r];
            }
        }
        *s->w = cur;
        cur += t->numel;
    }
    if (m->cfg.tie_word_embeddings) m->lm_head = m->wte;
done:
    free(row);
    free(ts);
    free(slots);
    return st;
}

lora_status lora_model_load_gguf(const char *path, lora_model **out, lora_error *err) {
    if (!path || !out) return lora_errorf(err, LORA_ERR_ARG, "lora_model_load_gguf: NULL argument");
    *out = NULL;
    gguf_file   f;
    lora_model *m  = NULL;
    lora_status st = gguf_open(&f, path, err);
    if (st != LORA_OK) return st;
    if (!(m = calloc(1, sizeof *m)) || !(m->dir = strdup(path))) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    if ((st = read_config(&f, &m->cfg, err)) != LORA_OK) goto fail;
    if (!(m->layers = calloc((size_t)m->cfg.n_layer, sizeof *m->layers))) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    gpt2_init_sites(m);
    if ((st = load_tensors(m, &f, err)) != LORA_OK) goto fail;
    m->ctx.seed = 42;
    gguf_close(&f);
    *out = m;
    return LORA_OK;
fail:
    lora_model_free(m);
    gguf_close(&f);
    return st;
}
