/*
 * peft_io.c — LoRA adapters as PEFT directories (adapter_config.json +
 * adapter_model.safetensors), written so that the PEFT library loads them into a Hugging Face
 * GPT2LMHeadModel, and read back whether we or PEFT wrote them. An attached AdaLoRA adapter is
 * written here too when asked for plain LoRA (lora_adapter_save_lora): folded by
 * peft_lora_views into per-module ranks, given to PEFT by rank_pattern and alpha_pattern.
 *
 * PEFT cannot target a slice of GPT-2's fused c_attn, so adapters on the q, k or v thirds of
 * one layer are written as one c_attn adapter of rank Σ r: A = [A_q; A_v] stacked (Σ r, in) and
 * B (3C, Σ r) block-structured (B_q in the q rows and first r_q columns, B_v in the v rows and
 * last r_v columns, zeros elsewhere), with lora_alpha scaled so that the output scale is
 * unchanged. The product B·A is exactly the sum of the slice adapters. The slices are also
 * noted in the safetensors metadata ("lora.c_attn_slices" = "0:q,v;1:q,v", or
 * "0:q=3,v=5;..." when the slices of a layer differ in rank), which PEFT ignores, so that a
 * freshly initialised adapter (B = 0, no visible block structure) reads back as slices too.
 *
 * Key names: base_model.model.transformer.h.N.<module>.lora_A.weight (r, in) and
 * ...lora_B.weight (out, r); PEFT's adapter-name infix (".lora_A.default.weight") and a missing
 * "transformer." are accepted on reading.
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

static const char *module_name(uint32_t target) {
    switch (target) {
    case LORA_TARGET_ATTN_PROJ: return "attn.c_proj";
    case LORA_TARGET_MLP_FC: return "mlp.c_fc";
    case LORA_TARGET_MLP_PROJ: return "mlp.c_proj";
    default: return "attn.c_attn"; /* c_attn and its slices */
    }
}

/* PEFT's target_modules entry for a module (suffix-matched by PEFT). */
static const char *target_entry(uint32_t target) {
    switch (target) {
    case LORA_TARGET_ATTN_PROJ: return "attn.c_proj";
    case LORA_TARGET_MLP_FC: return "c_fc";
    case LORA_TARGET_MLP_PROJ: return "mlp.c_proj";
    default: return "c_attn";
    }
}

/* alpha that gives `scale` at rank R */
static double alpha_for(float scale, int32_t R, int rslora) {
    return rslora ? (double)scale * sqrt((double)R) : (double)scale * R;
}

/* ---- writing ---- */

typedef struct out_module {
    int32_t  layer;
    uint32_t target; /* LORA_TARGET_C_ATTN for fused slices */
    int32_t  R, in, out;
    float    scale;
    float   *A, *B; /* owned when fused, else borrowed */
    int      owned;
    char     slices[48]; /* "q,v" (equal ranks) or "q=3,v=5" for fused slices */
} out_module;

static int slice_index(uint32_t target) {
    return target == LORA_TARGET_Q ? 0 : target == LORA_TARGET_K ? 1 : target == LORA_TARGET_V ? 2 : -1;
}

/* Fuses the slice adapters sites[0..ns) of one layer into one c_attn module: A stacked, B
 * block-structured, ranks may differ (the metadata then names each). Scales must agree. */
static lora_status fuse_slices(const lora_site_view *sites, int32_t ns, int32_t C, out_module *o,
                               const char *dir, lora_error *err) {
    int32_t R = 0, in = sites[0].in, equal = 1;
    for (int32_t k = 0; k < ns; k++) {
        if (sites[k].scale != sites[0].scale)
            return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                               "%s: q/k/v adapters of layer %d differ in scale; PEFT cannot "
                               "express that on the fused c_attn",
                               dir, (int)sites[0].layer);
        R += sites[k].r;
        equal &= sites[k].r == sites[0].r;
    }
    *o   = (out_module){sites[0].layer, LORA_TARGET_C_ATTN, R, in, 3 * C, sites[0].scale,
                        NULL, NULL, 1, ""};
    o->A = calloc((size_t)R * in, sizeof(float));
    o->B = calloc((size_t)3 * C * R, sizeof(float));
    if (!o->A || !o->B) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", dir);
    size_t  k_len = 0;
    int32_t col   = 0;
    for (int32_t k = 0; k < ns; k++) {
        const lora_site_view *v  = &sites[k];
        int32_t               sl = slice_index(v->target), r = v->r;
        memcpy(o->A + (size_t)col * in, v->A, (size_t)r * in * sizeof(float));
        for (int32_t row = 0; row < C; row++)
            memcpy(o->B + ((size_t)sl * C + row) * R + (size_t)col, v->B + (size_t)row * r,
                   (size_t)r * sizeof(float));
        if (k_len < sizeof o->slices)
            k_len += (size_t)snprintf(o->slices + k_len, sizeof o->slices - k_len,
                                      equal ? "%s%c" : "%s%c=%d", k ? "," : "", "qkv"[sl], (int)r);
        col += r;
    }
    return LORA_OK;
}

/* Writes sites as a PEFT LoRA directory (see the top of the file). */
static lora_status write_lora_dir(const lora_site_view *sites, int32_t n_sites, int32_t C,
                                  int rslora, float dropout, const char *dir,
                                  const char *base_model_name, lora_error *err) {
    out_module     *mods    = calloc((size_t)n_sites + 1, sizeof *mods);
    st_writer      *w       = st_writer_new();
    cJSON          *cfg     = cJSON_CreateObject();
    char           *json    = NULL, *slices_meta = NULL;
    cJSON          *rank_pat = NULL, *alpha_pat = NULL, *targets = NULL; /* until in cfg */
    lora_status     st      = LORA_OK;
    int32_t         n_mods  = 0;
    if (!mods || !w || !cfg) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    if (n_sites == 0) {
        st = lora_errorf(err, LORA_ERR_STATE, "%s: the adapter has no sites", dir);
        goto done;
    }

    /* group slice adapters of one layer into a fused c_attn module */
    for (int32_t i = 0; i < n_sites; i++) {
        const lora_site_view *v = &sites[i];
        if (slice_index(v->target) < 0) {
            mods[n_mods++] = (out_module){v->layer, v->target, v->r, v->in, v->len, v->scale,
                                          (float *)v->A, (float *)v->B, 0, ""};
            continue;
        }
        int32_t j = i; /* the run of slices of this layer */
        while (j + 1 < n_sites && sites[j + 1].layer == v->layer &&
               slice_index(sites[j + 1].target) >= 0)
            j++;
        /* alpha grows with the rank so that alpha / R (or alpha / sqrt R) stays the scale */
        if ((st = fuse_slices(v, j - i + 1, C, &mods[n_mods++], dir, err)) != LORA_OK) goto done;
        i = j;
    }

    /* the top-level r and alpha are the first module's; other modules get patterns */
    int32_t top_r     = mods[0].R;
    double  top_alpha = alpha_for(mods[0].scale, mods[0].R, rslora);
    size_t   meta_cap = (size_t)n_mods * (sizeof mods[0].slices + 16) + 1, sm = 0;
    rank_pat          = cJSON_CreateObject();
    alpha_pat         = cJSON_CreateObject();
    targets           = cJSON_CreateArray();
    slices_meta       = calloc(meta_cap, 1);
    if (!rank_pat || !alpha_pat || !targets || !slices_meta) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    uint32_t seen = 0;
    for (int32_t i = 0; i < n_mods; i++) {
        out_module *o = &mods[i];
        char        key[160], mod[64];
        double      alpha = alpha_for(o->scale, o->R, rslora);
        snprintf(mod, sizeof mod, "h.%d.%s", (int)o->layer, module_name(o->target));
        if (o->R != top_r) cJSON_AddNumberToObject(rank_pat, mod, o->R);
        if (fabs(alpha - top_alpha) > 1e-6 * fabs(top_alpha))
            cJSON_AddNumberToObject(alpha_pat, mod, alpha);
        if (!(seen & o->target)) {
            cJSON_AddItemToArray(targets, cJSON_CreateString(target_entry(o->target)));
            seen |= o->target;
        }
        if (o->slices[0] && sm < meta_cap)
            sm += (size_t)snprintf(slices_meta + sm, meta_cap - sm, "%s%d:%s",
                                   sm ? ";" : "", (int)o->layer, o->slices);
        int64_t sa[2] = {o->R, o->in}, sb[2] = {o->out, o->R};
        snprintf(key, sizeof key, "base_model.model.transformer.%s.lora_A.weight", mod);
        if ((st = st_writer_add(w, key, ST_F32, 2, sa, o->A, err)) != LORA_OK) goto done;
        snprintf(key, sizeof key, "base_model.model.transformer.%s.lora_B.weight", mod);
        if ((st = st_writer_add(w, key, ST_F32, 2, sb, o->B, err)) != LORA_OK) goto done;
    }
    if ((st = st_writer_meta(w, "format", "pt", err)) != LORA_OK) goto done;
    if (sm && (st = st_writer_meta(w, SLICES_META, slices_meta, err)) != LORA_OK) goto done;

    cJSON_AddItemToObject(cfg, "alpha_pattern", alpha_pat);
    cJSON_AddNullToObject(cfg, "auto_mapping");
    cJSON_AddStringToObject(cfg, "base_model_name_or_path", base_model_name ? base_model_name : "");
    cJSON_AddStringToObject(cfg, "bias", "none");
    cJSON_AddBoolToObject(cfg, "fan_in_fan_out", 1);
    cJSON_AddBoolToObject(cfg, "inference_mode", 1);
    cJSON_AddBoolToObject(cfg, "init_lora_weights", 1);
    cJSON_AddNullToObject(cfg, "layers_pattern");
    cJSON_AddNullToObject(cfg, "layers_to_transform");
    cJSON_AddNumberToObject(cfg, "lora_alpha", top_alpha);
    cJSON_AddNumberToObject(cfg, "lora_dropout", dropout);
    cJSON_AddNullToObject(cfg, "modules_to_save");
    cJSON_AddStringToObject(cfg, "peft_type", "LORA");
    cJSON_AddNumberToObject(cfg, "r", top_r);
    cJSON_AddItemToObject(cfg, "rank_pattern", rank_pat);
    cJSON_AddNullToObject(cfg, "revision");
    cJSON_AddItemToObject(cfg, "target_modules", targets);
    cJSON_AddStringToObject(cfg, "task_type", "CAUSAL_LM");
    cJSON_AddBoolToObject(cfg, "use_dora", 0);
    cJSON_AddBoolToObject(cfg, "use_rslora", rslora);
    rank_pat = alpha_pat = targets = NULL; /* owned by cfg now */
    json = cJSON_Print(cfg);
    if (!json) {
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
    size_t len = strlen(json);
    json[len]  = '\0';
    st         = lora_write_file_atomic(path, json, len, err);
done:
    for (int32_t i = 0; mods && i < n_mods; i++)
        if (mods[i].owned) {
            free(mods[i].A);
            free(mods[i].B);
        }
    free(json);
    free(slices_meta);
    cJSON_Delete(rank_pat);
    cJSON_Delete(alpha_pat);
    cJSON_Delete(targets);
    cJSON_Delete(cfg);
    st_writer_free(w);
    free(mods);
    return st;
}

lora_status lora_adapter_save_lora(lora_model *m, const char *dir, const char *base_model_name,
                                   lora_error *err) {
    int ada = m->attached > 0 && m->peft.method == LORA_METHOD_ADALORA;
    if (!ada && (m->attached <= 0 || m->peft.method != LORA_METHOD_LORA))
        return lora_errorf(err, LORA_ERR_STATE,
                           "%s: no LoRA or AdaLoRA adapter attached (full and BitFit runs are "
                           "saved with lora_model_save_trainable)",
                           dir);
    lora_site_view *sites = NULL;
    int32_t         n     = 0;
    lora_status     st    = peft_lora_views(m, &sites, &n, err);
    if (st == LORA_OK)
        st = write_lora_dir(sites, n, m->cfg.n_embd, ada ? 0 : m->peft.use_rslora, m->peft.dropout,
                            dir, base_model_name, err);
    free(sites);
    return st;
}

lora_status lora_adapter_save(lora_model *m, const char *dir, const char *base_model_name,
                              lora_error *err) {
    if (m->attached > 0 && m->peft.method == LORA_METHOD_ADALORA)
        return adalora_adapter_save(m, dir, base_model_name, err);
    if (m->attached <= 0 || m->peft.method != LORA_METHOD_LORA)
        return lora_errorf(err, LORA_ERR_STATE,
                           "%s: no LoRA adapter attached (full and BitFit runs are saved with "
                           "lora_model_save_trainable)",
                           dir);
    return lora_adapter_save_lora(m, dir, base_model_name, err);
}

/* ---- reading ---- */

typedef struct in_module {
    int32_t          layer;
    uint32_t         target; /* site bit: C_ATTN, ATTN_PROJ, MLP_FC, MLP_PROJ */
    const st_tensor *A, *B;
    uint32_t         slices;  /* Q|K|V bits when the fused adapter splits into slices */
    int32_t          rank[3]; /* the slices' ranks */
} in_module;

static const struct {
    const char *name;
    uint32_t    target;
} modules[] = {{"attn.c_attn", LORA_TARGET_C_ATTN},
               {"attn.c_proj", LORA_TARGET_ATTN_PROJ},
               {"mlp.c_fc", LORA_TARGET_MLP_FC},
               {"mlp.c_proj", LORA_TARGET_MLP_PROJ}};

const char *peft_key_layer(const char *key, int32_t *layer) {
    const char *p = key;
    if (!strncmp(p, "base_model.model.", 17)) p += 17;
    if (!strncmp(p, "transformer.", 12)) p += 12;
    if (strncmp(p, "h.", 2)) return NULL;
    char *end;
    long  l = strtol(p + 2, &end, 10);
    if (end == p + 2 || *end != '.' || l < 0 || l > 100000) return NULL;
    *layer = (int32_t)l;
    return end + 1;
}

const char *peft_key_lora(const char *key, int32_t *layer, int *module, char *letter) {
    int32_t     l;
    const char *p = peft_key_layer(key, &l);
    if (!p) return NULL;
    for (int i = 0; i < (int)(sizeof modules / sizeof modules[0]); i++) {
        size_t n = strlen(modules[i].name);
        if (strncmp(p, modules[i].name, n) || strncmp(p + n, ".lora_", 6) || !p[n + 6]) continue;
        *layer  = l;
        *module = i;
        *letter = p[n + 6];
        return p + n + 7;
    }
    return NULL;
}

/* Parses "[base_model.model.][transformer.]h.N.<module>.lora_(A|B)[.name].weight". */
static int parse_key(const char *key, int32_t *layer, uint32_t *target, int *is_b) {
    int         module;
    char        c;
    const char *q = peft_key_lora(key, layer, &module, &c);
    /* an optional adapter name, then ".weight" */
    if (!q || (c != 'A' && c != 'B') || *q != '.' || strcmp(strrchr(q, '.'), ".weight")) return 0;
    *is_b   = c == 'B';
    *target = modules[module].target;
    return 1;
}

/* Does PEFT's pattern key match module name "h.N.attn.c_attn" (suffix match on dots)? */
static int pattern_matches(const char *key, const char *mod) {
    size_t lk = strlen(key), lm = strlen(mod);
    if (lk > lm) { /* a key with more prefix ("transformer.h.0...") */
        return lk >= lm + 1 && !strcmp(key + lk - lm, mod) && key[lk - lm - 1] == '.';
    }
    return !strcmp(mod + lm - lk, key) && (lk == lm || mod[lm - lk - 1] == '.');
}

static double pattern_number(const cJSON *pat, const char *mod, double dflt) {
    const cJSON *it;
    cJSON_ArrayForEach(it, pat) {
        if (cJSON_IsNumber(it) && pattern_matches(it->string, mod)) return it->valuedouble;
    }
    return dflt;
}

/* Block structure of a fused (3C, R) B: which slices own which columns, or 0 if not blocked.
 * Columns are assigned in order q, k, v: rank[sl] each, as the hint names them ("q=3,v=5"), else
 * R / n_slices each. */
static uint32_t detect_slices(const float *B, int32_t C, int32_t R, const char *hint,
                              int32_t rank[3]) {
    uint32_t bits = 0;
    int32_t  given = 0, sum = 0;
    rank[0] = rank[1] = rank[2] = 0;
    if (hint) {
        for (const char *p = hint; *p; p++) {
            int sl = *p == 'q' ? 0 : *p == 'k' ? 1 : *p == 'v' ? 2 : -1;
            if (sl < 0) continue;
            bits |= (uint32_t)LORA_TARGET_Q << sl;
            if (p[1] == '=') {
                char *end;
                long  r = strtol(p + 2, &end, 10);
                if (end == p + 2 || r < 1 || r > R) return 0;
                rank[sl] = (int32_t)r;
                sum += (int32_t)r;
                given++;
                p = end - 1;
            }
        }
    } else { /* from the data: every column non-zero in exactly one slice */
        for (int32_t c = 0; c < R; c++) {
            int owner = -1;
            for (int sl = 0; sl < 3; sl++) {
                int nz = 0;
                for (int32_t row = 0; row < C && !nz; row++) nz = B[((size_t)sl * C + row) * R + c] != 0;
                if (nz) {
                    if (owner >= 0) return 0;
                    owner = sl;
                }
            }
            if (owner < 0) return 0;
            bits |= (uint32_t)LORA_TARGET_Q << owner;
        }
    }
    int ns = !!(bits & LORA_TARGET_Q) + !!(bits & LORA_TARGET_K) + !!(bits & LORA_TARGET_V);
    if (ns == 0) return 0;
    if (given) { /* every slice must name its rank, and they must fill R */
        if (given != ns || sum != R) return 0;
    } else {
        if (R % ns) return 0;
        for (int sl = 0; sl < 3; sl++)
            if (bits & ((uint32_t)LORA_TARGET_Q << sl)) rank[sl] = R / ns;
    }
    /* verify: zeros outside the blocks */
    int32_t c0 = 0;
    for (int sl = 0; sl < 3; sl++) {
        if (!(bits & ((uint32_t)LORA_TARGET_Q << sl))) continue;
        for (int osl = 0; osl < 3; osl++) {
            if (osl == sl) continue;
            for (int32_t row = 0; row < C; row++)
                for (int32_t c = c0; c < c0 + rank[sl]; c++)
                    if (B[((size_t)osl * C + row) * R + c] != 0) return 0;
        }
        c0 += rank[sl];
    }
    return bits;
}

/* Looks the slices of one layer up in "0:q,v;1:q,v" metadata. */
static const char *slices_hint(const char *meta, int32_t layer, char *buf, size_t n) {
    if (!meta) return NULL;
    for (const char *p = meta; *p;) {
        char   *end;
        long    l = strtol(p, &end, 10);
        if (end == p || *end != ':') return NULL;
        const char *v = end + 1, *e = strchr(v, ';');
        size_t      len = e ? (size_t)(e - v) : strlen(v);
        if (l == layer) {
            if (len >= n) return NULL;
            memcpy(buf, v, len);
            buf[len] = '\0';
            return buf;
        }
        p = e ? e + 1 : v + len;
    }
    return NULL;
}

static lora_status read_config(const char *path, lora_adapter_params *p, cJSON **root_out,
                               lora_error *err) {
    cJSON      *root;
    lora_status st = lora_read_json_object(path, &root, err);
    if (st != LORA_OK) return st;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
    const cJSON *r    = cJSON_GetObjectItemCaseSensitive(root, "r");
    const cJSON *a    = cJSON_GetObjectItemCaseSensitive(root, "lora_alpha");
    const cJSON *drop = cJSON_GetObjectItemCaseSensitive(root, "lora_dropout");
    const cJSON *rs   = cJSON_GetObjectItemCaseSensitive(root, "use_rslora");
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(root, "bias");
    const cJSON *dora = cJSON_GetObjectItemCaseSensitive(root, "use_dora");
    const cJSON *mts  = cJSON_GetObjectItemCaseSensitive(root, "modules_to_save");
    if (!cJSON_IsString(type)) st = lora_errorf(err, LORA_ERR_FORMAT, "%s: missing 'peft_type'", path);
    else if (strcmp(type->valuestring, "LORA"))
        st = lora_errorf(err, LORA_ERR_UNSUPPORTED, "%s: peft_type '%s' is not supported here "
                         "(LORA)", path, type->valuestring);
    else if (!cJSON_IsNumber(r) || r->valuedouble < 1 || r->valuedouble > 65536)
        st = lora_errorf(err, LORA_ERR_FORMAT, "%s: 'r' must be a positive integer", path);
    else if (!cJSON_IsNumber(a))
        st = lora_errorf(err, LORA_ERR_FORMAT, "%s: 'lora_alpha' must be a number", path);
    else if (bias && !cJSON_IsNull(bias) && !(cJSON_IsString(bias) && !strcmp(bias->valuestring, "none")))
        st = lora_errorf(err, LORA_ERR_UNSUPPORTED, "%s: bias training ('bias' != \"none\") is "
                         "not supported", path);
    else if (cJSON_IsTrue(dora))
        st = lora_errorf(err, LORA_ERR_UNSUPPORTED, "%s: DoRA adapters are not supported", path);
    else if (cJSON_IsArray(mts) && cJSON_GetArraySize(mts) > 0)
        st = lora_errorf(err, LORA_ERR_UNSUPPORTED, "%s: 'modules_to_save' is not supported", path);
    if (st != LORA_OK) {
        cJSON_Delete(root);
        return st;
    }
    *p            = lora_adapter_params_default();
    p->method     = LORA_METHOD_LORA;
    p->r          = (int32_t)r->valuedouble;
    p->alpha      = (float)a->valuedouble;
    p->dropout    = cJSON_IsNumber(drop) ? (float)drop->valuedouble : 0.0f;
    p->use_rslora = cJSON_IsTrue(rs);
    p->targets    = 0;
    *root_out     = root;
    return LORA_OK;
}

lora_status lora_adapter_load(lora_model *m, const char *dir, lora_error *err) {
    if (m->attached)
        return lora_errorf(err, LORA_ERR_STATE, "%s: the model already has a method attached", dir);
    if (adalora_dir_is_adalora(dir)) return adalora_adapter_load(m, dir, err);
    char                cfg_path[4096], st_path[4096];
    lora_adapter_params p;
    cJSON              *root = NULL;
    st_file             f;
    memset(&f, 0, sizeof f);
    in_module      *mods  = NULL;
    lora_site_spec *specs = NULL;
    int32_t         n_mods = 0, n_specs = 0, C = m->cfg.n_embd;
    lora_status     st;
    if ((st = lora_path_join(cfg_path, sizeof cfg_path, dir, "adapter_config.json", err)) ||
        (st = lora_path_join(st_path, sizeof st_path, dir, "adapter_model.safetensors", err)))
        return st;
    if ((st = read_config(cfg_path, &p, &root, err)) != LORA_OK) return st;
    if ((st = st_open(&f, st_path, err)) != LORA_OK) goto done;
    mods  = calloc((size_t)f.n_tensors + 1, sizeof *mods);
    specs = calloc((size_t)f.n_tensors * 3 + 1, sizeof *specs);
    if (!mods || !specs) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", st_path);
        goto done;
    }
    /* pair up A and B per (layer, module) */
    for (int32_t i = 0; i < f.n_tensors; i++) {
        const st_tensor *t = &f.tensors[i];
        int32_t          layer;
        uint32_t         target;
        int              is_b;
        if (!parse_key(t->name, &layer, &target, &is_b)) {
            st = lora_errorf(err, LORA_ERR_UNSUPPORTED,
                             "%s: tensor '%s' is not a LoRA weight of a GPT-2 linear "
                             "(c_attn, c_proj, c_fc)", st_path, t->name);
            goto done;
        }
        if (layer >= m->cfg.n_layer) {
            st = lora_errorf(err, LORA_ERR_SHAPE, "%s: tensor '%s' is for layer %d but the model "
                             "has %d layers (hint: is this adapter for another base model?)",
                             st_path, t->name, (int)layer, (int)m->cfg.n_layer);
            goto done;
        }
        int32_t k = 0;
        while (k < n_mods && !(mods[k].layer == layer && mods[k].target == target)) k++;
        if (k == n_mods) mods[n_mods++] = (in_module){layer, target, NULL, NULL, 0, {0, 0, 0}};
        if (is_b) mods[k].B = t;
        else mods[k].A = t;
    }
    const cJSON *rank_pat  = cJSON_GetObjectItemCaseSensitive(root, "rank_pattern");
    const cJSON *alpha_pat = cJSON_GetObjectItemCaseSensitive(root, "alpha_pattern");
    const char  *hints     = st_meta(&f, SLICES_META);
    for (int32_t k = 0; k < n_mods; k++) {
        in_module  *mo = &mods[k];
        char        mod[64];
        const char *mname = mo->target == LORA_TARGET_C_ATTN ? "attn.c_attn" : module_name(mo->target);
        snprintf(mod, sizeof mod, "h.%d.%s", (int)mo->layer, mname);
        if (!mo->A || !mo->B) {
            st = lora_errorf(err, LORA_ERR_MISSING, "%s: %s has lora_%s but no lora_%s", st_path,
                             mod, mo->A ? "A" : "B", mo->A ? "B" : "A");
            goto done;
        }
        int32_t in  = mo->target == LORA_TARGET_MLP_PROJ ? m->cfg.n_inner : C;
        int32_t out = mo->target == LORA_TARGET_C_ATTN ? 3 * C
                      : mo->target == LORA_TARGET_MLP_FC ? m->cfg.n_inner : C;
        int64_t R = mo->A->ndim == 2 ? mo->A->shape[0] : -1;
        const st_tensor *bad = NULL;
        int64_t          want0 = 0, want1 = 0;
        if (mo->A->ndim != 2 || mo->A->shape[1] != in || R < 1 || R > 65536)
            bad = mo->A, want0 = R < 1 ? p.r : R, want1 = in;
        else if (mo->B->ndim != 2 || mo->B->shape[0] != out || mo->B->shape[1] != R)
            bad = mo->B, want0 = out, want1 = R;
        if (bad) {
            st = lora_errorf(err, LORA_ERR_SHAPE, "%s: tensor '%s' has shape (%lld, %lld) but the "
                             "model expects (%lld, %lld) (hint: is this adapter for another base "
                             "model?)", st_path, bad->name, (long long)bad->shape[0],
                             (long long)(bad->ndim > 1 ? bad->shape[1] : 0), (long long)want0,
                             (long long)want1);
            goto done;
        }
        double alpha = pattern_number(alpha_pat, mod, p.alpha);
        double prank = pattern_number(rank_pat, mod, p.r);
        if ((int64_t)prank != R) {
            st = lora_errorf(err, LORA_ERR_SHAPE, "%s: %s has rank %lld but adapter_config.json "
                             "says %g", st_path, mod, (long long)R, prank);
            goto done;
        }
        float scale = (float)(p.use_rslora ? alpha / sqrt((double)R) : alpha / (double)R);
        uint32_t slices = 0;
        if (mo->target == LORA_TARGET_C_ATTN) {
            float *B = malloc((size_t)mo->B->numel * sizeof(float));
            char   hb[sizeof ((out_module *)0)->slices];
            if (!B) {
                st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", st_path);
                goto done;
            }
            if ((st = st_to_f32(B, mo->B, st_path, err)) != LORA_OK) {
                free(B);
                goto done;
            }
            slices = detect_slices(B, C, (int32_t)R, slices_hint(hints, mo->layer, hb, sizeof hb),
                                   mo->rank);
            free(B);
        }
        mo->slices = slices;
        if (slices) { /* one adapter per slice, its own rank, same scale */
            for (int sl = 0; sl < 3; sl++)
                if (slices & ((uint32_t)LORA_TARGET_Q << sl)) {
                    /* same output scale: s = alpha_fused / R_fused = alpha / r (rsLoRA: the
                     * fused alpha was scaled by sqrt(n), so alpha_fused / sqrt(R) again) */
                    specs[n_specs++] = (lora_site_spec){mo->layer, (uint32_t)LORA_TARGET_Q << sl,
                                                        mo->rank[sl], scale};
                }
        } else {
            specs[n_specs++] = (lora_site_spec){mo->layer, mo->target, (int32_t)R, scale};
        }
    }
    if (n_specs == 0) {
        st = lora_errorf(err, LORA_ERR_FORMAT, "%s: no LoRA tensors", st_path);
        goto done;
    }
    for (int32_t i = 0; i < n_specs; i++) p.targets |= specs[i].target;
    if ((p.targets & LORA_TARGET_C_ATTN) &&
        (p.targets & (LORA_TARGET_Q | LORA_TARGET_K | LORA_TARGET_V))) {
        st = lora_errorf(err, LORA_ERR_UNSUPPORTED, "%s: mixes fused c_attn and slice adapters "
                         "across layers", st_path);
        goto done;
    }
    if ((st = peft_attach(m, &p, specs, n_specs, err)) != LORA_OK) goto done;

    /* fill A and B, splitting fused slices */
    for (int32_t k = 0; k < n_mods; k++) {
        in_module *mo  = &mods[k];
        int64_t    R   = mo->A->shape[0], in = mo->A->shape[1], out = mo->B->shape[0];
        float     *A   = malloc((size_t)mo->A->numel * sizeof(float));
        float     *B   = malloc((size_t)mo->B->numel * sizeof(float));
        if (!A || !B) st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", st_path);
        if (st == LORA_OK) st = st_to_f32(A, mo->A, st_path, err);
        if (st == LORA_OK) st = st_to_f32(B, mo->B, st_path, err);
        if (st != LORA_OK) {
            free(A);
            free(B);
            goto done;
        }
        lora_tensor_info ta, tb;
        char             name[128];
        if (!mo->slices) {
            const char *suffix = lora_target_suffix(mo->target);
            snprintf(name, sizeof name, "h.%d.%s.lora_A", (int)mo->layer, suffix);
            lora_model_trainable_find(m, name, &ta);
            snprintf(name, sizeof name, "h.%d.%s.lora_B", (int)mo->layer, suffix);
            lora_model_trainable_find(m, name, &tb);
            memcpy(ta.data, A, (size_t)(R * in) * sizeof(float));
            memcpy(tb.data, B, (size_t)(out * R) * sizeof(float));
        } else {
            int64_t j = 0; /* the slice's first column */
            for (int sl = 0; sl < 3; sl++) {
                uint32_t bit = (uint32_t)LORA_TARGET_Q << sl;
                int64_t  r   = mo->rank[sl];
                if (!(mo->slices & bit)) continue;
                const char *suffix = lora_target_suffix(bit);
                snprintf(name, sizeof name, "h.%d.%s.lora_A", (int)mo->layer, suffix);
                lora_model_trainable_find(m, name, &ta);
                snprintf(name, sizeof name, "h.%d.%s.lora_B", (int)mo->layer, suffix);
                lora_model_trainable_find(m, name, &tb);
                memcpy(ta.data, A + j * in, (size_t)(r * in) * sizeof(float));
                for (int64_t row = 0; row < C; row++)
                    memcpy(tb.data + row * r, B + ((int64_t)sl * C + row) * R + j,
                           (size_t)r * sizeof(float));
                j += r;
            }
        }
        free(A);
        free(B);
    }
done:
    free(specs);
    free(mods);
    st_close(&f);
    cJSON_Delete(root);
    return st;
}

/* ---- pieces of the format shared with combine.c ---- */

int peft_key_parse(const char *key, int32_t *layer, uint32_t *target, int *is_b) {
    return parse_key(key, layer, target, is_b);
}

lora_status peft_config_read(const char *path, lora_adapter_params *p, cJSON **root,
                             lora_error *err) {
    return read_config(path, p, root, err);
}

double peft_pattern_number(const cJSON *pat, const char *mod, double dflt) {
    return pattern_number(pat, mod, dflt);
}

const char *peft_module_name(uint32_t target) { return module_name(target); }

const char *peft_target_entry(uint32_t target) { return target_entry(target); }

uint32_t peft_c_attn_slices(const float *B, int32_t C, int32_t R, const char *hint) {
    int32_t rank[3];
    return detect_slices(B, C, R, hint, rank);
}

const char *peft_slices_hint(const char *meta, int32_t layer, char *buf, size_t n) {
    return slices_hint(meta, layer, buf, n);
}
