/*
 * hf_config.c — Hugging Face GPT-2 config.json <-> lora_config.
 *
 * Reads only what the GPT-2 forward pass depends on, with GPT2Config's defaults for the
 * optional fields, and refuses the options that would change the computation in ways this
 * engine does not implement. Not a general config parser: other model types are refused.
 */
#include "io/hf_config.h"

#include "core/error.h"
#include "io/fileutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- reading ---- */

static const char *json_type_name(const cJSON *v) {
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "invalid";
}

/* A positive integer that fits int32. */
static lora_status get_size(const cJSON *v, const char *key, const char *path, int32_t *out,
                            lora_error *err) {
    if (!cJSON_IsNumber(v)) {
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: field '%s' must be an integer, not %s", path,
                           key, json_type_name(v));
    }
    double d = v->valuedouble;
    if (!(d >= 1 && d <= INT32_MAX) || d != floor(d)) {
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: field '%s' is %g; it must be a positive integer below 2^31", path,
                           key, d);
    }
    *out = (int32_t)d;
    return LORA_OK;
}

static lora_status get_required_size(const cJSON *root, const char *key, const char *path,
                                     int32_t *out, lora_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v) return lora_errorf(err, LORA_ERR_FORMAT, "%s: missing required field '%s'", path, key);
    return get_size(v, key, path, out, err);
}

/* An optional boolean: *out keeps its default when the field is absent. */
static lora_status get_bool(const cJSON *root, const char *key, const char *path, int *out,
                            lora_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v) return LORA_OK;
    if (!cJSON_IsBool(v)) {
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: field '%s' must be true or false, not %s",
                           path, key, json_type_name(v));
    }
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return LORA_OK;
}

/* A file-supplied string made safe for a one-line message: control bytes become '?'. */
static const char *sanitize(char *out, size_t n, const char *s) {
    size_t i = 0;
    for (; s[i] && i + 1 < n; i++)
        out[i] = (unsigned char)s[i] < 0x20 ? '?' : s[i];
    out[i] = '\0';
    return out;
}

/* 1-based line and column of byte `at` in text, for parse errors. */
static void line_col(const char *text, size_t at, int *line, int *col) {
    *line = 1;
    *col  = 1;
    for (size_t i = 0; i < at && text[i]; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

/* The checks shared by the reader and the writer. */
static lora_status check_config(const lora_config *c, const char *path, lora_error *err) {
    if (c->n_layer < 1 || c->n_head < 1 || c->n_embd < 1 || c->n_positions < 1 || c->n_inner < 1 ||
        c->vocab_size < 1) {
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: sizes must be positive (n_layer %d, n_head %d, n_embd %d, "
                           "n_positions %d, n_inner %d, vocab_size %d)",
                           path, (int)c->n_layer, (int)c->n_head, (int)c->n_embd,
                           (int)c->n_positions, (int)c->n_inner, (int)c->vocab_size);
    }
    if (c->n_embd % c->n_head != 0) {
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: n_embd %d is not divisible by n_head %d",
                           path, (int)c->n_embd, (int)c->n_head);
    }
    if (!(c->layer_norm_epsilon > 0) || !isfinite(c->layer_norm_epsilon)) {
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: layer_norm_epsilon %g must be a positive finite number", path,
                           (double)c->layer_norm_epsilon);
    }
    if (c->activation != LORA_ACT_GELU_TANH && c->activation != LORA_ACT_GELU_ERF) {
        return lora_errorf(err, LORA_ERR_UNSUPPORTED, "%s: unknown activation %d", path,
                           (int)c->activation);
    }
    return LORA_OK;
}

lora_status hf_config_parse(const char *json, const char *path, lora_config *cfg, lora_error *err) {
    lora_config c;
    lora_status st  = LORA_OK;
    const char *end = NULL;
    memset(&c, 0, sizeof c);

    size_t len  = strlen(json);
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        int    line, col;
        size_t at = end && end >= json && end <= json + len ? (size_t)(end - json) : 0;
        line_col(json, at, &line, &col);
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: not valid JSON (line %d, column %d)", path,
                           line, col);
    }
    for (const char *p = end; *p; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            int line, col;
            line_col(json, (size_t)(p - json), &line, &col);
            st =
                lora_errorf(err, LORA_ERR_FORMAT,
                            "%s: text after the JSON object (line %d, column %d)", path, line, col);
            goto done;
        }
    }
    if (!cJSON_IsObject(root)) {
        st = lora_errorf(err, LORA_ERR_FORMAT, "%s: top level is %s, not a JSON object", path,
                         json_type_name(root));
        goto done;
    }

    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (mt && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "gpt2") != 0)) {
        char q[64];
        st = lora_errorf(err, LORA_ERR_UNSUPPORTED,
                         "%s: model_type '%s' is not supported (hint: only \"gpt2\" models are)",
                         path, cJSON_IsString(mt) ? sanitize(q, sizeof q, mt->valuestring) : "?");
        goto done;
    }

    if ((st = get_required_size(root, "n_layer", path, &c.n_layer, err)) != LORA_OK) goto done;
    if ((st = get_required_size(root, "n_head", path, &c.n_head, err)) != LORA_OK) goto done;
    if ((st = get_required_size(root, "n_embd", path, &c.n_embd, err)) != LORA_OK) goto done;
    if ((st = get_required_size(root, "vocab_size", path, &c.vocab_size, err)) != LORA_OK) {
        goto done;
    }

    /* n_positions; older configs carry only n_ctx, which GPT-2 sets to the same value. */
    const cJSON *np = cJSON_GetObjectItemCaseSensitive(root, "n_positions");
    const char  *nk = "n_positions";
    if (!np) {
        np = cJSON_GetObjectItemCaseSensitive(root, "n_ctx");
        nk = "n_ctx";
    }
    if (!np) {
        st = lora_errorf(err, LORA_ERR_FORMAT, "%s: missing required field 'n_positions'", path);
        goto done;
    }
    if ((st = get_size(np, nk, path, &c.n_positions, err)) != LORA_OK) goto done;

    const cJSON *ni = cJSON_GetObjectItemCaseSensitive(root, "n_inner");
    if (!ni || cJSON_IsNull(ni)) {
        if (c.n_embd > INT32_MAX / 4) {
            st = lora_errorf(err, LORA_ERR_FORMAT, "%s: n_embd %d is too large", path,
                             (int)c.n_embd);
            goto done;
        }
        c.n_inner = 4 * c.n_embd;
    } else if ((st = get_size(ni, "n_inner", path, &c.n_inner, err)) != LORA_OK) {
        goto done;
    }

    c.layer_norm_epsilon = 1e-5f;
    const cJSON *eps     = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_epsilon");
    if (eps) {
        if (!cJSON_IsNumber(eps)) {
            st = lora_errorf(err, LORA_ERR_FORMAT,
                             "%s: field 'layer_norm_epsilon' must be a number, not %s", path,
                             json_type_name(eps));
            goto done;
        }
        double d = eps->valuedouble;
        if (!(d > 0) || d > 1) {
            st = lora_errorf(err, LORA_ERR_FORMAT, "%s: layer_norm_epsilon %g must be in (0, 1]",
                             path, d);
            goto done;
        }
        c.layer_norm_epsilon = (float)d;
    }

    c.activation     = LORA_ACT_GELU_TANH; /* GPT2Config's default is "gelu_new" */
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
    if (act) {
        if (!cJSON_IsString(act)) {
            st = lora_errorf(err, LORA_ERR_FORMAT,
                             "%s: field 'activation_function' must be a string, not %s", path,
                             json_type_name(act));
            goto done;
        }
        const char *a = act->valuestring;
        if (!strcmp(a, "gelu_new") || !strcmp(a, "gelu_pytorch_tanh") || !strcmp(a, "gelu_fast")) {
            c.activation = LORA_ACT_GELU_TANH;
        } else if (!strcmp(a, "gelu")) {
            c.activation = LORA_ACT_GELU_ERF;
        } else {
            char q[64];
            st = lora_errorf(err, LORA_ERR_UNSUPPORTED,
                             "%s: unsupported activation_function '%s' (hint: gelu_new, "
                             "gelu_pytorch_tanh, gelu_fast and gelu are supported)",
                             path, sanitize(q, sizeof q, a));
            goto done;
        }
    }

    int tie = 1;
    if ((st = get_bool(root, "tie_word_embeddings", path, &tie, err)) != LORA_OK) goto done;
    c.tie_word_embeddings = tie;

    /* Options that change the attention computation; refused when set to the non-default. */
    static const struct {
        const char *key;
        int         supported; /* the only value this engine computes */
    } flags[] = {
        {"scale_attn_weights", 1},
        {"scale_attn_by_inverse_layer_idx", 0},
        {"reorder_and_upcast_attn", 0},
    };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        int v = flags[i].supported;
        if ((st = get_bool(root, flags[i].key, path, &v, err)) != LORA_OK) goto done;
        if (v != flags[i].supported) {
            st = lora_errorf(err, LORA_ERR_UNSUPPORTED,
                             "%s: %s = %s is not supported (hint: only %s is implemented)", path,
                             flags[i].key, v ? "true" : "false",
                             flags[i].supported ? "true" : "false");
            goto done;
        }
    }

    if ((st = check_config(&c, path, err)) != LORA_OK) goto done;
    *cfg = c;

done:
    cJSON_Delete(root);
    return st;
}

lora_status hf_config_load(const char *path, lora_config *cfg, lora_error *err) {
    char       *text = NULL;
    size_t      len  = 0;
    lora_status st   = lora_read_file(path, &text, &len, err);
    if (st != LORA_OK) return st;
    if (strlen(text) != len) {
        free(text);
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: contains a NUL byte", path);
    }
    st = hf_config_parse(text, path, cfg, err);
    free(text);
    return st;
}

/* ---- writing ---- */

/* The double nearest the shortest decimal that reads back as f, so JSON shows 1e-05, not
 * 9.99999974737875e-06. */
static double shortest_decimal(float f) {
    char buf[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f) return strtod(buf, NULL);
    }
    return (double)f;
}

lora_status hf_config_write(const char *path, const lora_config *cfg, const char *torch_dtype,
                            lora_error *err) {
    if (check_config(cfg, path, err) != LORA_OK) {
        if (err) err->status = LORA_ERR_ARG;
        return LORA_ERR_ARG;
    }
    if (!torch_dtype ||
        (strcmp(torch_dtype, "float32") != 0 && strcmp(torch_dtype, "float16") != 0 &&
         strcmp(torch_dtype, "bfloat16") != 0)) {
        return lora_errorf(err, LORA_ERR_ARG,
                           "%s: torch_dtype must be float32, float16 or bfloat16", path);
    }

    /* Keys in the order transformers writes them (sorted), GPT2Config's defaults for the
     * fields this engine does not use. cJSON_Add* return NULL on allocation failure. */
    const char *act  = cfg->activation == LORA_ACT_GELU_ERF ? "gelu" : "gelu_new";
    cJSON      *root = cJSON_CreateObject();
    int         ok   = root != NULL;
    cJSON      *arch = ok ? cJSON_AddArrayToObject(root, "architectures") : NULL;
    ok = ok && arch && cJSON_AddItemToArray(arch, cJSON_CreateString("GPT2LMHeadModel"));
    ok = ok && cJSON_AddStringToObject(root, "activation_function", act);
    ok = ok && cJSON_AddNumberToObject(root, "attn_pdrop", 0.1);
    ok = ok && cJSON_AddNumberToObject(root, "bos_token_id", cfg->vocab_size - 1);
    ok = ok && cJSON_AddNumberToObject(root, "embd_pdrop", 0.1);
    ok = ok && cJSON_AddNumberToObject(root, "eos_token_id", cfg->vocab_size - 1);
    ok = ok && cJSON_AddNumberToObject(root, "initializer_range", 0.02);
    ok = ok && cJSON_AddNumberToObject(root, "layer_norm_epsilon",
                                       shortest_decimal(cfg->layer_norm_epsilon));
    ok = ok && cJSON_AddStringToObject(root, "model_type", "gpt2");
    ok = ok && cJSON_AddNumberToObject(root, "n_ctx", cfg->n_positions);
    ok = ok && cJSON_AddNumberToObject(root, "n_embd", cfg->n_embd);
    ok = ok && cJSON_AddNumberToObject(root, "n_head", cfg->n_head);
    if ((int64_t)cfg->n_inner == 4 * (int64_t)cfg->n_embd) {
        ok = ok && cJSON_AddNullToObject(root, "n_inner");
    } else {
        ok = ok && cJSON_AddNumberToObject(root, "n_inner", cfg->n_inner);
    }
    ok = ok && cJSON_AddNumberToObject(root, "n_layer", cfg->n_layer);
    ok = ok && cJSON_AddNumberToObject(root, "n_positions", cfg->n_positions);
    ok = ok && cJSON_AddBoolToObject(root, "reorder_and_upcast_attn", 0);
    ok = ok && cJSON_AddNumberToObject(root, "resid_pdrop", 0.1);
    ok = ok && cJSON_AddBoolToObject(root, "scale_attn_by_inverse_layer_idx", 0);
    ok = ok && cJSON_AddBoolToObject(root, "scale_attn_weights", 1);
    ok = ok && cJSON_AddNullToObject(root, "summary_activation");
    ok = ok && cJSON_AddNumberToObject(root, "summary_first_dropout", 0.1);
    ok = ok && cJSON_AddBoolToObject(root, "summary_proj_to_labels", 1);
    ok = ok && cJSON_AddStringToObject(root, "summary_type", "cls_index");
    ok = ok && cJSON_AddBoolToObject(root, "summary_use_proj", 1);
    ok = ok && cJSON_AddBoolToObject(root, "tie_word_embeddings", cfg->tie_word_embeddings != 0);
    ok = ok && cJSON_AddStringToObject(root, "torch_dtype", torch_dtype);
    ok = ok && cJSON_AddBoolToObject(root, "use_cache", 1);
    ok = ok && cJSON_AddNumberToObject(root, "vocab_size", cfg->vocab_size);

    char *text = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);

    /* cJSON_Print leaves no trailing newline; add one as editors and transformers do. */
    size_t n    = strlen(text);
    char  *full = malloc(n + 2);
    if (!full) {
        cJSON_free(text);
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
    }
    memcpy(full, text, n);
    full[n]     = '\n';
    full[n + 1] = '\0';
    cJSON_free(text);
    lora_status st = lora_write_file_atomic(path, full, n + 1, err);
    free(full);
    return st;
}
