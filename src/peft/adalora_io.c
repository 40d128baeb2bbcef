/*
 * adalora_io.c — AdaLoRA adapters as PEFT directories, written as PEFT's AdaLoRA saves them
 * and read back whether we or PEFT wrote them. lora_adapter_save / lora_adapter_load
 * (peft_io.c) dispatch here for AdaLoRA. Not the method itself (adalora.c).
 *
 * PEFT's layout (see shared INTEROP notes): adapter_config.json with peft_type "ADALORA",
 * init_r, target_r, tinit, tfinal, deltaT, beta1, beta2, orth_reg_weight, total_step,
 * lora_alpha and rank_pattern: {"transformer.h.N.<module>.lora_E": [kept?, ...]} (init_r
 * booleans per module); adapter_model.safetensors with
 * base_model.model.transformer.h.N.<module>.lora_A (k, in), .lora_E (k, 1), .lora_B (out, k)
 * — plain parameters, so no ".weight" — where k counts the kept triplets when a rank pattern
 * is present (PEFT's resize_state_dict_by_rank_pattern) and is init_r otherwise. PEFT's
 * output scale is lora_alpha / (init_r + 1e-5); ranknum is not saved.
 *
 * PEFT gives every module the same init_r and lora_alpha and cannot target a slice of GPT-2's
 * fused c_attn, so:
 *  - q/k/v slice sites of one layer are written as one c_attn module of rank n·r:
 *    Q = [Q_q; Q_v], Λ = [Λ_q; Λ_v], P block-structured (3C, n·r), zeros off the blocks;
 *  - modules of lower rank are padded with pruned (false, zero) triplets up to the largest,
 *    which the rank pattern then drops from the file again;
 *  - lora_alpha is chosen so that alpha / (init_r + 1e-5) is the sites' scale.
 * Our own files add safetensors metadata that PEFT ignores ("lora.c_attn_slices" = "0:q,v;...",
 * "adalora.r" = the per-site rank) so that they read back as the original sites.
 */
#include "core/error.h"
#include "io/fileutil.h"
#include "io/safetensors.h"
#include "peft/adalora.h"
#include "peft/peft.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SLICES_META "lora.c_attn_slices"
#define RANK_META "adalora.r"

/* indexed by peft_key_lora's module numbers, in its order */
static const struct {
    const char *name;  /* module under the layer */
    const char *entry; /* PEFT's target_modules entry (suffix-matched) */
    uint32_t    site;  /* LORA_TARGET_* of the whole site */
} modules[] = {{"attn.c_attn", "c_attn", LORA_TARGET_C_ATTN},
               {"attn.c_proj", "attn.c_proj", LORA_TARGET_ATTN_PROJ},
               {"mlp.c_fc", "c_fc", LORA_TARGET_MLP_FC},
               {"mlp.c_proj", "mlp.c_proj", LORA_TARGET_MLP_PROJ}};

/* 0..3 for a site bit (q/k/v slices are part of c_attn) */
static int module_index(uint32_t target) {
    if (target & (LORA_TARGET_Q | LORA_TARGET_K | LORA_TARGET_V | LORA_TARGET_C_ATTN)) return 0;
    return target == LORA_TARGET_ATTN_PROJ ? 1 : target == LORA_TARGET_MLP_FC ? 2 : 3;
}

static int slice_of(uint32_t target) {
    return target == LORA_TARGET_Q   ? 0
           : target == LORA_TARGET_K ? 1
           : target == LORA_TARGET_V ? 2
                                     : -1;
}

static float ada_scale(double alpha, int32_t r) {
    return (float)((alpha > 0 ? alpha : (double)r) / ((double)r + 1e-5));
}

/* ---- writing ---- */

/* The shortest decimal that reads back as f, as a double ("0.85", not 0.850000023841858). */
static double short_float(float f) {
    char buf[32];
    for (int prec = 6; prec < 10; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if ((float)strtod(buf, NULL) == f) break;
    }
    return strtod(buf, NULL);
}

/* One PEFT module, expanded to R_max triplets (padding: zero and not kept). Owned arrays. */
typedef struct ada_mod {
    int32_t  layer, module; /* module: index into modules[] */
    int32_t  R, in, out;    /* R: real rank (n·r for fused slices) */
    float   *A, *E, *B;     /* (R_max, in), (R_max), (out, R_max) */
    uint8_t *keep;          /* (R_max) */
    char     slices[8];     /* "q,v" when fused from slices */
} ada_mod;

static lora_status write_tensors(st_writer *w, const ada_mod *o, int32_t R_max, int cut, float *buf,
                                 lora_error *err) {
    /* buf holds the cut copies: (k, in) + (k) + (out, k) floats */
    int32_t k = 0;
    for (int32_t i = 0; i < R_max; i++)
        k += !cut || o->keep[i];
    float *A = buf, *E = A + (size_t)k * o->in, *B = E + k;
    for (int32_t i = 0, j = 0; i < R_max; i++) {
        if (cut && !o->keep[i]) continue;
        memcpy(A + (size_t)j * o->in, o->A + (size_t)i * o->in, (size_t)o->in * sizeof(float));
        E[j] = o->E[i];
        for (int32_t row = 0; row < o->out; row++)
            B[(size_t)row * k + j] = o->B[(size_t)row * R_max + i];
        j++;
    }
    char        key[160];
    const char *mod   = modules[o->module].name;
    int64_t     sa[2] = {k, o->in}, se[2] = {k, 1}, sb[2] = {o->out, k};
    lora_status st;
    snprintf(key, sizeof key, "base_model.model.transformer.h.%d.%s.lora_A", (int)o->layer, mod);
    if ((st = st_writer_add(w, key, ST_F32, 2, sa, A, err)) != LORA_OK) return st;
    snprintf(key, sizeof key, "base_model.model.transformer.h.%d.%s.lora_E", (int)o->layer, mod);
    if ((st = st_writer_add(w, key, ST_F32, 2, se, E, err)) != LORA_OK) return st;
    snprintf(key, sizeof key, "base_model.model.transformer.h.%d.%s.lora_B", (int)o->layer, mod);
    return st_writer_add(w, key, ST_F32, 2, sb, B, err);
}

lora_status adalora_adapter_save(lora_model *m, const char *dir, const char *base_model_name,
                                 lora_error *err) {
    int32_t                    n_sites = adalora_sites_list(m, NULL, 0);
    adalora_site_view         *v       = calloc((size_t)n_sites + 1, sizeof *v);
    ada_mod                   *mods    = calloc((size_t)n_sites + 1, sizeof *mods);
    float                    **cuts    = calloc((size_t)n_sites + 1, sizeof *cuts);
    st_writer                 *w       = st_writer_new();
    cJSON                     *cfg     = cJSON_CreateObject();
    char                      *json    = NULL;
    lora_status                st      = LORA_OK;
    int32_t                    n_mods = 0, R_max = 0, C = lora_model_config(m)->n_embd;
    const lora_adapter_params *p = &m->peft;
    if (n_sites == 0) {
        st = lora_errorf(err, LORA_ERR_STATE, "%s: no AdaLoRA adapter attached", dir);
        goto done;
    }
    if (!v || !mods || !cuts || !w || !cfg) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    adalora_sites_list(m, v, n_sites);
    for (int32_t i = 1; i < n_sites; i++)
        if (v[i].r != v[0].r || v[i].scale != v[0].scale) {
            st = lora_errorf(err, LORA_ERR_UNSUPPORTED,
                             "%s: AdaLoRA sites differ in rank or "
                             "scale; PEFT's AdaLoRA gives every module one init_r and alpha",
                             dir);
            goto done;
        }
    int32_t r = v[0].r;

    /* modules: slices of one layer fuse into c_attn; ranks first, arrays once R_max is known */
    for (int32_t i = 0; i < n_sites; i++) {
        ada_mod *o = &mods[n_mods++];
        o->layer   = v[i].layer;
        o->module  = module_index(v[i].target);
        o->in      = v[i].in;
        o->out     = o->module == 0 ? 3 * C : v[i].len;
        o->R       = r;
        size_t sl  = 0;
        if (slice_of(v[i].target) >= 0) {
            int32_t j = i;
            sl += (size_t)snprintf(o->slices, sizeof o->slices, "%c", "qkv"[slice_of(v[i].target)]);
            while (j + 1 < n_sites && v[j + 1].layer == v[i].layer &&
                   slice_of(v[j + 1].target) >= 0) {
                j++;
                sl += (size_t)snprintf(o->slices + sl, sizeof o->slices - sl, ",%c",
                                       "qkv"[slice_of(v[j].target)]);
            }
            o->R = (j - i + 1) * r;
            i    = j;
        }
        if (o->R > R_max) R_max = o->R;
    }
    int cut = adalora_mask_is_final(m);
    for (int32_t k = 0, s = 0; k < n_mods; k++) {
        ada_mod *o = &mods[k];
        o->A       = calloc((size_t)R_max * o->in, sizeof(float));
        o->E       = calloc((size_t)R_max, sizeof(float));
        o->B       = calloc((size_t)o->out * R_max, sizeof(float));
        o->keep    = calloc((size_t)R_max, 1);
        cuts[k]    = calloc((size_t)R_max * (o->in + o->out + 1), sizeof(float));
        if (!o->A || !o->E || !o->B || !o->keep || !cuts[k]) {
            st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", dir);
            goto done;
        }
        int32_t ns = o->R / r;
        for (int32_t t = 0; t < ns; t++, s++) {
            const adalora_site_view *sv   = &v[s];
            int32_t                  sl   = slice_of(sv->target);
            int32_t                  row0 = sl < 0 ? 0 : sl * C;
            for (int32_t i = 0; i < r; i++) {
                int32_t c = t * r + i;
                memcpy(o->A + (size_t)c * o->in, sv->A + (size_t)i * sv->in,
                       (size_t)sv->in * sizeof(float));
                o->E[c]    = sv->E[i];
                o->keep[c] = sv->mask[i] != 0.0f;
                for (int32_t row = 0; row < sv->len; row++)
                    o->B[(size_t)(row0 + row) * R_max + c] = sv->B[(size_t)row * r + i];
                cut |= !o->keep[c];
            }
        }
        cut |= o->R < R_max; /* padding must not reach PEFT as live triplets */
    }

    /* lora_alpha: the sites' scale at PEFT's ranknum R_max (the configured alpha when exact) */
    double alpha = (double)v[0].scale * ((double)R_max + 1e-5);
    if (p->alpha > 0 && ada_scale(p->alpha, R_max) == v[0].scale)
        alpha = p->alpha;
    else if (ada_scale(short_float((float)alpha), R_max) == v[0].scale)
        alpha = short_float((float)alpha);

    cJSON   *pattern           = cut ? cJSON_CreateObject() : NULL;
    cJSON   *targets           = cJSON_CreateArray();
    char     slices_meta[1024] = "", rbuf[32];
    size_t   sm                = 0;
    uint32_t seen              = 0;
    for (int32_t k = 0; k < n_mods && st == LORA_OK; k++) {
        ada_mod *o = &mods[k];
        if (!(seen & (1u << o->module))) {
            cJSON_AddItemToArray(targets, cJSON_CreateString(modules[o->module].entry));
            seen |= 1u << o->module;
        }
        if (o->slices[0] && sm < sizeof slices_meta)
            sm += (size_t)snprintf(slices_meta + sm, sizeof slices_meta - sm, "%s%d:%s",
                                   sm ? ";" : "", (int)o->layer, o->slices);
        if (pattern) {
            char   key[128];
            cJSON *list = cJSON_CreateArray();
            for (int32_t i = 0; i < R_max; i++)
                cJSON_AddItemToArray(list, cJSON_CreateBool(o->keep[i]));
            snprintf(key, sizeof key, "transformer.h.%d.%s.lora_E", (int)o->layer,
                     modules[o->module].name);
            cJSON_AddItemToObject(pattern, key, list);
        }
        st = write_tensors(w, o, R_max, cut, cuts[k], err);
    }
    snprintf(rbuf, sizeof rbuf, "%d", (int)r);
    if (st == LORA_OK) st = st_writer_meta(w, "format", "pt", err);
    if (st == LORA_OK) st = st_writer_meta(w, RANK_META, rbuf, err);
    if (st == LORA_OK && sm) st = st_writer_meta(w, SLICES_META, slices_meta, err);

    /* PEFT's target_bgt = target_r × modules; ours is target_r × sites */
    int64_t target_bgt = (int64_t)p->adalora.target_r * n_sites;
    cJSON_AddItemToObject(cfg, "alpha_pattern", cJSON_CreateObject());
    cJSON_AddNullToObject(cfg, "auto_mapping");
    cJSON_AddStringToObject(cfg, "base_model_name_or_path", base_model_name ? base_model_name : "");
    cJSON_AddNumberToObject(cfg, "beta1", short_float(p->adalora.beta1));
    cJSON_AddNumberToObject(cfg, "beta2", short_float(p->adalora.beta2));
    cJSON_AddStringToObject(cfg, "bias", "none");
    cJSON_AddNumberToObject(cfg, "deltaT", (double)p->adalora.delta_t);
    cJSON_AddBoolToObject(cfg, "fan_in_fan_out", 1);
    cJSON_AddBoolToObject(cfg, "inference_mode", 1);
    cJSON_AddNumberToObject(cfg, "init_r", R_max);
    cJSON_AddBoolToObject(cfg, "init_lora_weights", 1);
    cJSON_AddNullToObject(cfg, "layers_pattern");
    cJSON_AddNullToObject(cfg, "layers_to_transform");
    cJSON_AddNumberToObject(cfg, "lora_alpha", alpha);
    cJSON_AddNumberToObject(cfg, "lora_dropout", short_float(p->dropout));
    cJSON_AddNullToObject(cfg, "modules_to_save");
    cJSON_AddNumberToObject(cfg, "orth_reg_weight", short_float(p->adalora.orth_reg));
    cJSON_AddStringToObject(cfg, "peft_type", "ADALORA");
    cJSON_AddNumberToObject(cfg, "r", R_max);
    if (pattern)
        cJSON_AddItemToObject(cfg, "rank_pattern", pattern);
    else
        cJSON_AddNullToObject(cfg, "rank_pattern");
    cJSON_AddNullToObject(cfg, "revision");
    cJSON_AddItemToObject(cfg, "target_modules", targets);
    cJSON_AddNumberToObject(cfg, "target_r", (double)(target_bgt / n_mods));
    cJSON_AddStringToObject(cfg, "task_type", "CAUSAL_LM");
    cJSON_AddNumberToObject(cfg, "tfinal", (double)p->adalora.tfinal);
    cJSON_AddNumberToObject(cfg, "tinit", (double)p->adalora.tinit);
    cJSON_AddNumberToObject(cfg, "total_step", (double)p->adalora.total_step);
    cJSON_AddBoolToObject(cfg, "use_dora", 0);
    cJSON_AddBoolToObject(cfg, "use_rslora", 0);
    if (st != LORA_OK) goto done;
    if (!(json = cJSON_Print(cfg))) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    char path[4096];
    if ((st = lora_mkdirs(dir, err)) != LORA_OK) goto done;
    if ((st = lora_path_join(path, sizeof path, dir, "adapter_model.safetensors", err)) != LORA_OK)
        goto done;
    if ((st = st_writer_write(w, path, err)) != LORA_OK) goto done;
    if ((st = lora_path_join(path, sizeof path, dir, "adapter_config.json", err)) != LORA_OK)
        goto done;
    st = lora_write_file_atomic(path, json, strlen(json), err);
done:
    for (int32_t k = 0; mods && k < n_mods; k++) {
        free(mods[k].A);
        free(mods[k].E);
        free(mods[k].B);
        free(mods[k].keep);
        free(cuts[k]);
    }
    free(json);
    cJSON_Delete(cfg);
    st_writer_free(w);
    free(cuts);
    free(mods);
    free(v);
    return st;
}

/* ---- reading ---- */

typedef struct ada_in {
    int32_t          layer, module;
    const st_tensor *A, *E, *B;
    const cJSON     *pattern; /* the module's list, or NULL */
} ada_in;

/* Parses "[base_model.model.][transformer.]h.N.<module>.lora_(A|E|B)[.<adapter name>]";
 * which: 0 A, 1 E, 2 B. */
static int parse_key(const char *key, int32_t *layer, int32_t *module, int *which) {
    int         mo;
    char        c;
    const char *q = peft_key_lora(key, layer, &mo, &c);
    if (!q || (c != 'A' && c != 'E' && c != 'B') || (*q && *q != '.')) return 0;
    if (*q == '.' && (!q[1] || strchr(q + 1, '.'))) return 0; /* ".weight" */
    *module = mo;
    *which  = c == 'A' ? 0 : c == 'E' ? 1 : 2;
    return 1;
}

/* The rank_pattern list for "h.N.<module>": keys "[base_model.model.][transformer.]h.N.<module>
 * .lora_E[.<adapter>]". */
static const cJSON *find_pattern(const cJSON *pat, int32_t layer, int32_t module) {
    const cJSON *it;
    cJSON_ArrayForEach(it, pat) {
        int32_t l, mo;
        int     which;
        if (parse_key(it->string, &l, &mo, &which) && l == layer && mo == module && which == 1)
            return it;
    }
    return NULL;
}

static double num_or(const cJSON *root, const char *key, double dflt, int *bad) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return dflt;
    if (!cJSON_IsNumber(v)) {
        *bad = 1;
        return dflt;
    }
    return v->valuedouble;
}

int adalora_dir_is_adalora(const char *dir) {
    char   path[4096];
    cJSON *root = NULL;
    if (lora_path_join(path, sizeof path, dir, "adapter_config.json", NULL) != LORA_OK ||
        lora_read_json_object(path, &root, NULL) != LORA_OK)
        return 0;
    const cJSON *t  = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
    int          is = cJSON_IsString(t) && !strcmp(t->valuestring, "ADALORA");
    cJSON_Delete(root);
    return is;
}

/* One site to create from a module: rank r, triplets [first, first + r) of the module. */
typedef struct ada_spec_src {
    int32_t mod;   /* index into the modules read */
    int32_t first; /* first triplet in the module's expanded layout */
    int32_t row0;  /* first row of the module's B that belongs to the site */
} ada_spec_src;

/* Allocator order of a spec: layer, then q, k, v, c_attn, c_proj, c_fc, mlp.c_proj. */
static int spec_rank(uint32_t target) {
    static const uint32_t order[7] = {
        LORA_TARGET_Q,         LORA_TARGET_K,      LORA_TARGET_V,       LORA_TARGET_C_ATTN,
        LORA_TARGET_ATTN_PROJ, LORA_TARGET_MLP_FC, LORA_TARGET_MLP_PROJ};
    for (int i = 0; i < 7; i++)
        if (order[i] == target) return i;
    return 7;
}

lora_status adalora_adapter_load(lora_model *m, const char *dir, lora_error *err) {
    char               cfg_path[4096], st_path[4096];
    cJSON             *root = NULL;
    st_file            f;
    ada_in            *mods   = NULL;
    lora_site_spec    *specs  = NULL;
    ada_spec_src      *src    = NULL;
    float            **full   = NULL; /* per module: A (R, in) | E (R) | B (out, R), expanded */
    uint8_t          **keep   = NULL;
    uint8_t           *mask   = NULL;
    int32_t            n_mods = 0, n_specs = 0;
    const lora_config *mc = lora_model_config(m);
    int32_t            C  = mc->n_embd;
    lora_status        st;
    memset(&f, 0, sizeof f);
    if ((st = lora_path_join(cfg_path, sizeof cfg_path, dir, "adapter_config.json", err)) ||
        (st = lora_path_join(st_path, sizeof st_path, dir, "adapter_model.safetensors", err)))
        return st;
    if ((st = lora_read_json_object(cfg_path, &root, err)) != LORA_OK) return st;

    /* ---- the config ---- */
    int                 bad   = 0;
    double              r_cfg = num_or(root, "init_r", num_or(root, "r", 12, &bad), &bad);
    double              alpha = num_or(root, "lora_alpha", 8, &bad);
    lora_adapter_params p     = lora_adapter_params_default();
    p.method                  = LORA_METHOD_ADALORA;
    p.dropout                 = (float)num_or(root, "lora_dropout", 0, &bad);
    p.alpha                   = (float)alpha;
    p.targets                 = 0;
    p.adalora.target_r        = (int32_t)num_or(root, "target_r", 8, &bad);
    p.adalora.tinit           = (int64_t)num_or(root, "tinit", 0, &bad);
    p.adalora.tfinal          = (int64_t)num_or(root, "tfinal", 0, &bad);
    p.adalora.delta_t         = (int64_t)num_or(root, "deltaT", 1, &bad);
    p.adalora.beta1           = (float)num_or(root, "beta1", 0.85, &bad);
    p.adalora.beta2           = (float)num_or(root, "beta2", 0.85, &bad);
    p.adalora.orth_reg        = (float)num_or(root, "orth_reg_weight", 0.5, &bad);
    p.adalora.total_step      = (int64_t)num_or(root, "total_step", 0, &bad);
    const cJSON *pat          = cJSON_GetObjectItemCaseSensitive(root, "rank_pattern");
    const cJSON *bias         = cJSON_GetObjectItemCaseSensitive(root, "bias");
    const cJSON *mts          = cJSON_GetObjectItemCaseSensitive(root, "modules_to_save");
    if (bad || !(r_cfg >= 1 && r_cfg <= 65536) || r_cfg != floor(r_cfg)) {
        st = lora_errorf(err, LORA_ERR_FORMAT,
                         "%s: 'init_r' must be a positive integer and "
                         "the allocator fields numbers",
                         cfg_path);
        goto done;
    }
    if (pat && !cJSON_IsNull(pat) && !cJSON_IsObject(pat)) {
        st = lora_errorf(err, LORA_ERR_FORMAT, "%s: 'rank_pattern' must be an object", cfg_path);
        goto done;
    }
    if (bias && !cJSON_IsNull(bias) &&
        !(cJSON_IsString(bias) && !strcmp(bias->valuestring, "none"))) {
        st = lora_errorf(err, LORA_ERR_UNSUPPORTED,
                         "%s: bias training ('bias' != \"none\") is "
                         "not supported",
                         cfg_path);
        goto done;
    }
    if (cJSON_IsArray(mts) && cJSON_GetArraySize(mts) > 0) {
        st = lora_errorf(err, LORA_ERR_UNSUPPORTED, "%s: 'modules_to_save' is not supported",
                         cfg_path);
        goto done;
    }
    int32_t R = (int32_t)r_cfg;
    if (!cJSON_IsObject(pat)) pat = NULL;

    /* ---- the tensors, grouped per module ---- */
    if ((st = st_open(&f, st_path, err)) != LORA_OK) goto done;
    mods = calloc((size_t)f.n_tensors + 1, sizeof *mods);
    if (!mods) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", st_path);
        goto done;
    }
    for (int32_t i = 0; i < f.n_tensors; i++) {
        const st_tensor *t = &f.tensors[i];
        int32_t          layer, module;
        int              which;
        if (!parse_key(t->name, &layer, &module, &which)) {
            st = lora_errorf(err, LORA_ERR_UNSUPPORTED,
                             "%s: tensor '%s' is not an AdaLoRA "
                             "lora_A/lora_E/lora_B of a GPT-2 linear",
                             st_path, t->name);
            goto done;
        }
        if (layer >= mc->n_layer) {
            st = lora_errorf(err, LORA_ERR_SHAPE,
                             "%s: tensor '%s' is for layer %d but the model "
                             "has %d layers (hint: is this adapter for another base model?)",
                             st_path, t->name, (int)layer, (int)mc->n_layer);
            goto done;
        }
        int32_t k = 0;
        while (k < n_mods && !(mods[k].layer == layer && mods[k].module == module))
            k++;
        if (k == n_mods) mods[n_mods++] = (ada_in){layer, module, NULL, NULL, NULL, NULL};
        const st_tensor **slot = which == 0 ? &mods[k].A : which == 1 ? &mods[k].E : &mods[k].B;
        *slot                  = t;
    }
    if (n_mods == 0) {
        st = lora_errorf(err, LORA_ERR_FORMAT, "%s: no AdaLoRA tensors", st_path);
        goto done;
    }
    full  = calloc((size_t)n_mods, sizeof *full);
    keep  = calloc((size_t)n_mods, sizeof *keep);
    specs = calloc((size_t)n_mods * 3, sizeof *specs);
    src   = calloc((size_t)n_mods * 3, sizeof *src);
    if (!full || !keep || !specs || !src) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", st_path);
        goto done;
    }
    const char *rank_meta = st_meta(&f, RANK_META), *hints = st_meta(&f, SLICES_META);
    long        r_site = rank_meta ? strtol(rank_meta, NULL, 10) : 0;
    if (r_site < 1 || r_site > R) r_site = 0; /* not ours: every module one site of rank R */
    float scale = ada_scale(alpha, R);
    for (int32_t k = 0; k < n_mods; k++) {
        ada_in *mo = &mods[k];
        char    mod[64];
        snprintf(mod, sizeof mod, "h.%d.%s", (int)mo->layer, modules[mo->module].name);
        if (!mo->A || !mo->E || !mo->B) {
            st = lora_errorf(err, LORA_ERR_MISSING, "%s: %s lacks lora_%s", st_path, mod,
                             !mo->A   ? "A"
                             : !mo->E ? "E"
                                      : "B");
            goto done;
        }
        int32_t in  = mo->module == 3 ? mc->n_inner : C;
        int32_t out = mo->module == 0 ? 3 * C : mo->module == 2 ? mc->n_inner : C;
        /* the kept triplets: the rank pattern's true entries, else all R */
        keep[k] = calloc((size_t)R, 1);
        full[k] = calloc((size_t)R * (size_t)(in + 1 + out), sizeof(float));
        if (!keep[k] || !full[k]) {
            st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", st_path);
            goto done;
        }
        int32_t kept = 0;
        mo->pattern  = pat ? find_pattern(pat, mo->layer, mo->module) : NULL;
        if (mo->pattern) {
            if (!cJSON_IsArray(mo->pattern) || cJSON_GetArraySize(mo->pattern) != R) {
                st = lora_errorf(err, LORA_ERR_FORMAT,
                                 "%s: rank_pattern of %s must list %d "
                                 "booleans (init_r)",
                                 cfg_path, mod, (int)R);
                goto done;
            }
            const cJSON *b;
            int32_t      i = 0;
            cJSON_ArrayForEach(b, mo->pattern) {
                if (!cJSON_IsBool(b)) {
                    st = lora_errorf(err, LORA_ERR_FORMAT,
                                     "%s: rank_pattern of %s holds a "
                                     "non-boolean",
                                     cfg_path, mod);
                    goto done;
                }
                keep[k][i++] = cJSON_IsTrue(b);
                kept += cJSON_IsTrue(b);
            }
        } else {
            memset(keep[k], 1, (size_t)R);
            kept = R;
        }
        const st_tensor *bad_t = NULL;
        int64_t          w0 = 0, w1 = 0;
        if (mo->A->ndim != 2 || mo->A->shape[0] != kept || mo->A->shape[1] != in)
            bad_t = mo->A, w0 = kept, w1 = in;
        else if (mo->E->ndim != 2 || mo->E->shape[0] != kept || mo->E->shape[1] != 1)
            bad_t = mo->E, w0 = kept, w1 = 1;
        else if (mo->B->ndim != 2 || mo->B->shape[0] != out || mo->B->shape[1] != kept)
            bad_t = mo->B, w0 = out, w1 = kept;
        if (bad_t) {
            st = lora_errorf(err, LORA_ERR_SHAPE,
                             "%s: tensor '%s' has shape (%lld, %lld) but "
                             "the model and rank_pattern expect (%lld, %lld) (hint: is this "
                             "adapter for another base model?)",
                             st_path, bad_t->name, (long long)bad_t->shape[0],
                             (long long)(bad_t->ndim > 1 ? bad_t->shape[1] : 0), (long long)w0,
                             (long long)w1);
            goto done;
        }
        /* expand the kept triplets back to their positions; the others stay zero */
        float *A = full[k], *E = A + (size_t)R * in, *B = E + R;
        float *tmp = malloc(((size_t)kept * (in + 1 + out) + 1) * sizeof(float));
        if (!tmp) {
            st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", st_path);
            goto done;
        }
        float *ta = tmp, *te = ta + (size_t)kept * in, *tb = te + kept;
        if ((st = st_to_f32(ta, mo->A, st_path, err)) ||
            (st = st_to_f32(te, mo->E, st_path, err)) ||
            (st = st_to_f32(tb, mo->B, st_path, err))) {
            free(tmp);
            goto done;
        }
        for (int32_t i = 0, j = 0; i < R; i++) {
            if (!keep[k][i]) continue;
            memcpy(A + (size_t)i * in, ta + (size_t)j * in, (size_t)in * sizeof(float));
            E[i] = te[j];
            for (int32_t row = 0; row < out; row++)
                B[(size_t)row * R + i] = tb[(size_t)row * kept + j];
            j++;
        }
        free(tmp);

        /* sites: our files name the slices and the per-site rank, PEFT's have one per module */
        char        hb[16] = "";
        const char *hint   = NULL;
        if (r_site && mo->module == 0 && hints) {
            for (const char *q = hints; *q;) {
                char       *e;
                long        l  = strtol(q, &e, 10);
                const char *vv = e + 1, *semi = strchr(vv, ';');
                size_t      len = semi ? (size_t)(semi - vv) : strlen(vv);
                if (e == q || *e != ':') break;
                if (l == mo->layer && len < sizeof hb) {
                    memcpy(hb, vv, len);
                    hb[len] = '\0';
                    hint    = hb;
                }
                q = semi ? semi + 1 : vv + len;
            }
        }
        int32_t used = 0;
        if (hint) {
            for (const char *q = hint; *q; q++) {
                int sl = *q == 'q' ? 0 : *q == 'k' ? 1 : *q == 'v' ? 2 : -1;
                if (sl < 0) continue;
                specs[n_specs] = (lora_site_spec){mo->layer, (uint32_t)LORA_TARGET_Q << sl,
                                                  (int32_t)r_site, scale};
                src[n_specs++] = (ada_spec_src){k, used, sl * C};
                used += (int32_t)r_site;
            }
        } else {
            int32_t rr     = r_site ? (int32_t)r_site : R;
            specs[n_specs] = (lora_site_spec){mo->layer, modules[mo->module].site, rr, scale};
            src[n_specs++] = (ada_spec_src){k, 0, 0};
            used           = rr;
        }
        /* triplets past the sites are padding: they must be pruned and zero */
        for (int32_t i = used; i < R; i++)
            if (keep[k][i]) {
                st = lora_errorf(err, LORA_ERR_FORMAT,
                                 "%s: %s keeps triplet %d beyond its "
                                 "rank %d",
                                 st_path, mod, (int)i, (int)used);
                goto done;
            }
    }
    /* the allocator's order (and the order our writer expects) */
    for (int32_t i = 1; i < n_specs; i++)
        for (int32_t j = i; j > 0; j--) {
            lora_site_spec *a = &specs[j - 1], *b = &specs[j];
            if (a->layer < b->layer ||
                (a->layer == b->layer && spec_rank(a->target) <= spec_rank(b->target)))
                break;
            lora_site_spec ts = *a;
            *a                = *b;
            *b                = ts;
            ada_spec_src tsrc = src[j - 1];
            src[j - 1]        = src[j];
            src[j]            = tsrc;
        }
    int32_t init_bgt = 0;
    for (int32_t i = 0; i < n_specs; i++) {
        p.targets |= specs[i].target;
        init_bgt += specs[i].r;
    }
    if ((p.targets & LORA_TARGET_C_ATTN) &&
        (p.targets & (LORA_TARGET_Q | LORA_TARGET_K | LORA_TARGET_V))) {
        st = lora_errorf(err, LORA_ERR_UNSUPPORTED,
                         "%s: mixes fused c_attn and slice adapters "
                         "across layers",
                         st_path);
        goto done;
    }
    /* the allocator's settings for further training: PEFT's budget per module, per site here */
    p.r                = specs[0].r;
    p.adalora.target_r = (int32_t)((int64_t)p.adalora.target_r * n_mods / n_specs);
    for (int32_t i = 0; i < n_specs; i++)
        if (p.adalora.target_r > specs[i].r) p.adalora.target_r = specs[i].r;
    if (p.adalora.target_r < 0) p.adalora.target_r = 0;
    if (p.adalora.tinit < 0) p.adalora.tinit = 0;
    if (p.adalora.tfinal < 0) p.adalora.tfinal = 0;
    if (p.adalora.total_step <= p.adalora.tinit + p.adalora.tfinal)
        p.adalora.total_step = p.adalora.tinit + p.adalora.tfinal + 1;
    if ((st = peft_attach(m, &p, specs, n_specs, err)) != LORA_OK) goto done;

    /* ---- values and masks ---- */
    adalora_site_view *views = calloc((size_t)n_specs, sizeof *views);
    mask                     = calloc((size_t)init_bgt + 1, 1);
    if (!views || !mask) {
        free(views);
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", st_path);
        goto done;
    }
    int32_t nv = adalora_sites_list(m, views, n_specs), off = 0;
    LORA_ASSERT(nv == n_specs);
    for (int32_t s = 0; s < n_specs; s++) {
        adalora_site_view *sv = &views[s];
        ada_spec_src      *ss = &src[s];
        int32_t            in = sv->in;
        const float       *A = full[ss->mod], *E = A + (size_t)R * in, *Bm = E + R;
        for (int32_t i = 0; i < sv->r; i++) {
            int32_t c = ss->first + i;
            memcpy(sv->A + (size_t)i * in, A + (size_t)c * in, (size_t)in * sizeof(float));
            sv->E[i]      = E[c];
            mask[off + i] = keep[ss->mod][c];
            for (int32_t row = 0; row < sv->len; row++)
                sv->B[(size_t)row * sv->r + i] = Bm[(size_t)(ss->row0 + row) * R + c];
        }
        off += sv->r;
    }
    free(views);
    if (pat) st = adalora_set_masks(m, mask, init_bgt, err);
done:
    for (int32_t k = 0; k < n_mods && full; k++)
        free(full[k]);
    for (int32_t k = 0; k < n_mods && keep; k++)
        free(keep[k]);
    free(full);
    free(keep);
    free(mask);
    free(src);
    free(specs);
    free(mods);
    st_close(&f);
    cJSON_Delete(root);
    return st;
}
