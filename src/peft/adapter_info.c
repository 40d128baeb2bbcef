/*
 * adapter_info.c — a PEFT adapter directory summarised without loading a model (see
 * adapter_info.h). It follows the same reading rules as peft_io.c (LoRA) and adalora_io.c
 * (AdaLoRA), but only looks at shapes, the config's patterns and our metadata:
 *  - LoRA: a module's rank is the rows of its lora_A; its scale lora_alpha / r (or / sqrt r),
 *    both overridden per module by rank_pattern / alpha_pattern (dotted-suffix keys);
 *  - AdaLoRA: a module's initial rank is init_r and its kept triplets are the true entries of
 *    its rank_pattern list (without a pattern: every row of lora_A); the scale is
 *    lora_alpha / (init_r + 1e-5);
 *  - our metadata "lora.c_attn_slices" ("0:q,v" or "0:q=3,v=5") splits a c_attn module into
 *    q/k/v sites; for AdaLoRA "adalora.r" gives each site's share of the pattern.
 */
#include "peft/adapter_info.h"

#include "core/error.h"
#include "io/fileutil.h"
#include "io/safetensors.h"
#include "peft/peft.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* indexed by peft_key_lora's module numbers, in its order */
static const struct {
    const char *name;
    uint32_t    target;
} modules[] = {{"attn.c_attn", LORA_TARGET_C_ATTN},
               {"attn.c_proj", LORA_TARGET_ATTN_PROJ},
               {"mlp.c_fc", LORA_TARGET_MLP_FC},
               {"mlp.c_proj", LORA_TARGET_MLP_PROJ}};

const char *adapter_target_label(uint32_t target) {
    switch (target) {
    case LORA_TARGET_Q: return "q";
    case LORA_TARGET_K: return "k";
    case LORA_TARGET_V: return "v";
    case LORA_TARGET_C_ATTN: return "c_attn";
    case LORA_TARGET_ATTN_PROJ: return "c_proj";
    case LORA_TARGET_MLP_FC: return "c_fc";
    case LORA_TARGET_MLP_PROJ: return "mlp.c_proj";
    default: return "?";
    }
}

static int target_order(uint32_t target) {
    static const uint32_t order[] = {LORA_TARGET_Q,         LORA_TARGET_K,      LORA_TARGET_V,
                                     LORA_TARGET_C_ATTN,    LORA_TARGET_ATTN_PROJ,
                                     LORA_TARGET_MLP_FC,    LORA_TARGET_MLP_PROJ};
    for (int i = 0; i < 7; i++)
        if (order[i] == target) return i;
    return 7;
}

/* "[base_model.model.][transformer.]h.N.<module>.lora_(A|B|E)..." -> layer, module, letter */
static int parse_key(const char *key, int32_t *layer, int *module, char *which) {
    const char *q = peft_key_lora(key, layer, module, which);
    return q && (*which == 'A' || *which == 'B' || *which == 'E') && (!*q || *q == '.');
}

/* PEFT's pattern keys match a module name as a dotted suffix, either way round. */
static int key_matches(const char *key, const char *mod) {
    size_t lk = strlen(key), lm = strlen(mod);
    if (lk > lm) return !strcmp(key + lk - lm, mod) && key[lk - lm - 1] == '.';
    return !strcmp(mod + lm - lk, key) && (lk == lm || mod[lm - lk - 1] == '.');
}

static const cJSON *pattern_item(const cJSON *pat, const char *mod) {
    const cJSON *it;
    if (!cJSON_IsObject(pat)) return NULL;
    cJSON_ArrayForEach(it, pat) {
        if (it->string && key_matches(it->string, mod)) return it;
    }
    return NULL;
}

static double pattern_number(const cJSON *pat, const char *mod, double dflt) {
    const cJSON *it = pattern_item(pat, mod);
    return cJSON_IsNumber(it) ? it->valuedouble : dflt;
}

/* AdaLoRA's rank_pattern list of one module: keys name its lora_E
 * ("transformer.h.N.<module>.lora_E"). */
static const cJSON *ada_pattern(const cJSON *pat, int32_t layer, int module) {
    const cJSON *it;
    if (!cJSON_IsObject(pat)) return NULL;
    cJSON_ArrayForEach(it, pat) {
        int32_t l;
        int     mo;
        char    which;
        if (it->string && parse_key(it->string, &l, &mo, &which) && l == layer && mo == module &&
            which == 'E')
            return it;
    }
    return NULL;
}

/* The slices of one layer in "0:q,v;1:q=3,v=5": bits, ranks (0 when not given). */
static uint32_t slices_of(const char *meta, int32_t layer, int32_t rank[3]) {
    rank[0] = rank[1] = rank[2] = 0;
    for (const char *p = meta; p && *p;) {
        char *end;
        long  l = strtol(p, &end, 10);
        if (end == p || *end != ':') return 0;
        const char *v = end + 1, *e = strchr(v, ';');
        const char *stop = e ? e : v + strlen(v);
        if (l == layer) {
            uint32_t bits = 0;
            for (const char *q = v; q < stop; q++) {
                int sl = *q == 'q' ? 0 : *q == 'k' ? 1 : *q == 'v' ? 2 : -1;
                if (sl < 0) continue;
                bits |= (uint32_t)LORA_TARGET_Q << sl;
                if (q[1] == '=') {
                    rank[sl] = (int32_t)strtol(q + 2, &end, 10);
                    q        = end - 1;
                }
            }
            return bits;
        }
        p = e ? e + 1 : stop;
    }
    return 0;
}

typedef struct mod_in {
    int32_t layer;
    int     module;
    int64_t rows; /* lora_A's rows */
    int     has_a, has_b, has_e;
} mod_in;

static int cmp_site(const void *a, const void *b) {
    const adapter_site_info *x = a, *y = b;
    if (x->layer != y->layer) return x->layer < y->layer ? -1 : 1;
    return target_order(x->target) - target_order(y->target);
}

/* Adds the sites of one module. */
static lora_status module_sites(adapter_info *o, const mod_in *mo, const cJSON *root,
                                const char *slices_meta, long r_site, const char *cfg_path,
                                lora_error *err) {
    char     mod[64];
    int32_t  rank[3];
    uint32_t bits = mo->module == 0 ? slices_of(slices_meta, mo->layer, rank) : 0;
    int      ns   = !!(bits & LORA_TARGET_Q) + !!(bits & LORA_TARGET_K) + !!(bits & LORA_TARGET_V);
    snprintf(mod, sizeof mod, "h.%d.%s", (int)mo->layer, modules[mo->module].name);
    adapter_site_info *s = &o->sites[o->n_sites];
    if (o->method == LORA_METHOD_LORA) {
        const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rank_pattern");
        const cJSON *ap = cJSON_GetObjectItemCaseSensitive(root, "alpha_pattern");
        double       R  = pattern_number(rp, mod, o->r), alpha = pattern_number(ap, mod, o->alpha);
        if (R != (double)mo->rows)
            return lora_errorf(err, LORA_ERR_FORMAT, "%s: %s has rank %lld but the config says %g",
                               cfg_path, mod, (long long)mo->rows, R);
        double scale = o->use_rslora ? alpha / sqrt(R) : alpha / R;
        if (!ns) {
            *s = (adapter_site_info){mo->layer, modules[mo->module].target, (int32_t)R,
                                     (int32_t)R, scale};
            o->n_sites++;
            return LORA_OK;
        }
        for (int sl = 0; sl < 3; sl++) {
            if (!(bits & ((uint32_t)LORA_TARGET_Q << sl))) continue;
            int32_t r = rank[sl] ? rank[sl] : (int32_t)(mo->rows / ns);
            o->sites[o->n_sites++] =
                (adapter_site_info){mo->layer, (uint32_t)LORA_TARGET_Q << sl, r, r, scale};
        }
        return LORA_OK;
    }
    /* AdaLoRA: kept triplets from the rank pattern's list of init_r booleans */
    double       alpha = o->alpha > 0 ? o->alpha : (double)o->r;
    double       scale = alpha / ((double)o->r + 1e-5);
    const cJSON *list  = ada_pattern(cJSON_GetObjectItemCaseSensitive(root, "rank_pattern"),
                                     mo->layer, mo->module);
    uint8_t     *keep  = calloc((size_t)o->r + 1, 1);
    if (!keep) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", cfg_path);
    int32_t kept = 0, i = 0;
    if (list) {
        const cJSON *b;
        if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) != o->r) {
            free(keep);
            return lora_errorf(err, LORA_ERR_FORMAT,
                               "%s: rank_pattern of %s must list %d booleans (init_r)", cfg_path,
                               mod, (int)o->r);
        }
        cJSON_ArrayForEach(b, list) {
            keep[i] = cJSON_IsTrue(b);
            kept += keep[i++];
        }
        if (kept != mo->rows) {
            free(keep);
            return lora_errorf(err, LORA_ERR_FORMAT,
                               "%s: %s keeps %d triplets in rank_pattern but its lora_A has %lld "
                               "rows",
                               cfg_path, mod, (int)kept, (long long)mo->rows);
        }
    } else {
        if (mo->rows > o->r) {
            free(keep);
            return lora_errorf(err, LORA_ERR_FORMAT, "%s: %s has rank %lld above init_r %d",
                               cfg_path, mod, (long long)mo->rows, (int)o->r);
        }
        for (i = 0; i < (int32_t)mo->rows; i++)
            keep[i] = 1;
    }
    /* our files: each site owns r_site entries of the list (slices in q, k, v order) */
    int32_t per = r_site > 0 ? (int32_t)r_site : o->r, first = 0;
    for (int sl = 0; sl < (ns ? 3 : 1); sl++) {
        uint32_t t = ns ? (uint32_t)LORA_TARGET_Q << sl : modules[mo->module].target;
        if (ns && !(bits & t)) continue;
        int32_t k = 0;
        for (int32_t j = first; j < first + per && j < o->r; j++)
            k += keep[j];
        o->sites[o->n_sites++] = (adapter_site_info){mo->layer, t, k, per, scale};
        first += per;
    }
    free(keep);
    return LORA_OK;
}

lora_status adapter_info_read(const char *dir, adapter_info *o, lora_error *err) {
    char        cfg_path[4096], st_path[4096];
    cJSON      *root = NULL;
    st_file     f;
    mod_in     *mods   = NULL;
    int32_t     n_mods = 0;
    lora_status st;
    memset(o, 0, sizeof *o);
    memset(&f, 0, sizeof f);
    if ((st = lora_path_join(cfg_path, sizeof cfg_path, dir, "adapter_config.json", err)) ||
        (st = lora_path_join(st_path, sizeof st_path, dir, "adapter_model.safetensors", err)))
        return st;
    if ((st = lora_read_json_object(cfg_path, &root, err)) != LORA_OK) return st;
    const cJSON *type  = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
    const cJSON *r     = cJSON_GetObjectItemCaseSensitive(root, "r");
    const cJSON *ir    = cJSON_GetObjectItemCaseSensitive(root, "init_r");
    const cJSON *alpha = cJSON_GetObjectItemCaseSensitive(root, "lora_alpha");
    const cJSON *tr    = cJSON_GetObjectItemCaseSensitive(root, "target_r");
    const cJSON *base  = cJSON_GetObjectItemCaseSensitive(root, "base_model_name_or_path");
    const cJSON *rp    = cJSON_GetObjectItemCaseSensitive(root, "rank_pattern");
    const cJSON *ap    = cJSON_GetObjectItemCaseSensitive(root, "alpha_pattern");
    if (!cJSON_IsString(type)) {
        st = lora_errorf(err, LORA_ERR_FORMAT, "%s: missing 'peft_type'", cfg_path);
        goto done;
    }
    if (!strcmp(type->valuestring, "LORA")) {
        o->method = LORA_METHOD_LORA;
    } else if (!strcmp(type->valuestring, "ADALORA")) {
        o->method = LORA_METHOD_ADALORA;
        r         = cJSON_IsNumber(ir) ? ir : r;
    } else {
        st = lora_errorf(err, LORA_ERR_UNSUPPORTED,
                         "%s: peft_type '%s' is not supported (LORA, ADALORA)", cfg_path,
                         type->valuestring);
        goto done;
    }
    if (!cJSON_IsNumber(r) || r->valuedouble < 1 || r->valuedouble > 65536 ||
        r->valuedouble != floor(r->valuedouble) || !cJSON_IsNumber(alpha)) {
        st = lora_errorf(err, LORA_ERR_FORMAT,
                         "%s: '%s' must be a positive integer and 'lora_alpha' a number", cfg_path,
                         o->method == LORA_METHOD_ADALORA ? "init_r" : "r");
        goto done;
    }
    o->r          = (int32_t)r->valuedouble;
    o->alpha      = alpha->valuedouble;
    o->target_r   = cJSON_IsNumber(tr) && o->method == LORA_METHOD_ADALORA ? tr->valueint : 0;
    o->use_rslora = o->method == LORA_METHOD_LORA &&
                    cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "use_rslora"));
    o->patterned  = o->method == LORA_METHOD_ADALORA
                        ? cJSON_IsObject(rp) && cJSON_GetArraySize(rp) > 0
                        : (cJSON_IsObject(rp) && cJSON_GetArraySize(rp) > 0) ||
                              (cJSON_IsObject(ap) && cJSON_GetArraySize(ap) > 0);
    if (cJSON_IsString(base)) snprintf(o->base_model, sizeof o->base_model, "%s", base->valuestring);

    if ((st = st_open(&f, st_path, err)) != LORA_OK) goto done;
    mods = calloc((size_t)f.n_tensors + 1, sizeof *mods);
    if (!mods) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", st_path);
        goto done;
    }
    for (int32_t i = 0; i < f.n_tensors; i++) {
        const st_tensor *t = &f.tensors[i];
        int32_t          layer;
        int              module;
        char             which;
        if (!parse_key(t->name, &layer, &module, &which) ||
            (which == 'E' && o->method != LORA_METHOD_ADALORA)) {
            st = lora_errorf(err, LORA_ERR_FORMAT,
                             "%s: tensor '%s' is not a %s weight of a GPT-2 linear", st_path,
                             t->name, o->method == LORA_METHOD_ADALORA ? "AdaLoRA" : "LoRA");
            goto done;
        }
        o->n_params += t->numel;
        int32_t k = 0;
        while (k < n_mods && !(mods[k].layer == layer && mods[k].module == module))
            k++;
        if (k == n_mods) mods[n_mods++] = (mod_in){layer, module, 0, 0, 0, 0};
        if (which == 'A') {
            mods[k].has_a = 1;
            mods[k].rows  = t->ndim == 2 ? t->shape[0] : -1;
        }
        mods[k].has_b |= which == 'B';
        mods[k].has_e |= which == 'E';
    }
    if (n_mods == 0) {
        st = lora_errorf(err, LORA_ERR_FORMAT, "%s: no adapter tensors", st_path);
        goto done;
    }
    o->sites = calloc((size_t)n_mods * 3 + 1, sizeof *o->sites);
    if (!o->sites) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", st_path);
        goto done;
    }
    const char *slices_meta = st_meta(&f, "lora.c_attn_slices");
    const char *rank_meta   = st_meta(&f, "adalora.r");
    long        r_site      = rank_meta ? strtol(rank_meta, NULL, 10) : 0;
    if (r_site < 1 || r_site > o->r) r_site = 0;
    for (int32_t k = 0; k < n_mods && st == LORA_OK; k++) {
        const mod_in *mo = &mods[k];
        if (!mo->has_a || !mo->has_b || (o->method == LORA_METHOD_ADALORA && !mo->has_e) ||
            mo->rows < 0) {
            st = lora_errorf(err, LORA_ERR_FORMAT, "%s: h.%d.%s lacks a tensor or has a bad lora_A",
                             st_path, (int)mo->layer, modules[mo->module].name);
            break;
        }
        st = module_sites(o, mo, root, slices_meta, r_site, cfg_path, err);
    }
    if (st == LORA_OK) qsort(o->sites, (size_t)o->n_sites, sizeof *o->sites, cmp_site);
done:
    if (st != LORA_OK) adapter_info_free(o);
    free(mods);
    st_close(&f);
    cJSON_Delete(root);
    return st;
}

void adapter_info_free(adapter_info *info) {
    if (!info) return;
    free(info->sites);
    info->sites   = NULL;
    info->n_sites = 0;
}
