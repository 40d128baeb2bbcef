/*
 * tok_load.c — reads a byte-level BPE tokenizer from disk: Hugging Face tokenizer.json, or
 * vocab.json + merges.txt. Every count, id and string is checked before it is used; any problem
 * is returned as "<file>: <problem>" (merges.txt: "<file>:<line>: <problem>").
 * Not here: encoding and decoding (tokenizer.c).
 */
#include "tokenizer/tok_internal.h"

#include "core/error.h"
#include "io/fileutil.h"

#include <cjson/cJSON.h>

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_VOCAB (1 << 24) /* ids must be below this: 16.7M tokens, 64x Gemma's vocabulary */

/* ---- helpers ---- */

static lora_status parse_json(const char *path, const char *buf, size_t len, cJSON **out,
                              lora_error *err) {
    const char *end  = NULL;
    cJSON      *root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    if (root && end >= buf && end <= buf + len) { /* nothing but white space may follow */
        while (end < buf + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
            end++;
        if (end != buf + len) {
            cJSON_Delete(root);
            root = NULL;
        }
    }
    if (!root) {
        size_t off  = (end && end >= buf && end <= buf + len) ? (size_t)(end - buf) : 0;
        size_t line = 1, col = 1;
        for (size_t i = 0; i < off; i++) {
            if (buf[i] == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: malformed JSON at line %zu, column %zu", path,
                           line, col);
    }
    *out = root;
    return LORA_OK;
}

/* An id: a JSON number that is a whole number in [0, MAX_VOCAB). */
static int json_id(const cJSON *v, int32_t *id) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0 && d < MAX_VOCAB) || d != (double)(int32_t)d) return 0;
    *id = (int32_t)d;
    return 1;
}

static lora_status add_token(lora_tokenizer *tok, const char *path, const char *form, int32_t id,
                             int32_t *max_id, lora_error *err) {
    size_t n = strlen(form);
    if (n == 0) {
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: the vocabulary has an empty token (id %d)",
                           path, (int)id);
    }
    int         added;
    tok_strent *e = tok_strmap_upsert(&tok->vocab, form, n, &added);
    if (!e) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory for the vocabulary", path);
    if (!added) {
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: token '%.64s' appears twice", path, form);
    }
    e->val = id;
    if (id > *max_id) *max_id = id;
    return LORA_OK;
}

static lora_status add_special(lora_tokenizer *tok, const char *path, const char *text, int32_t id,
                               lora_error *err) {
    tok_special *sp = realloc(tok->specials, ((size_t)tok->n_specials + 1) * sizeof *sp);
    if (!sp) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
    tok->specials = sp;
    size_t n      = strlen(text);
    char  *copy   = malloc(n + 1);
    if (!copy) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
    memcpy(copy, text, n + 1);
    sp[tok->n_specials++] = (tok_special){.text = copy, .len = n, .id = id, .next = 0};
    return LORA_OK;
}

static lora_status vocab_from_json(lora_tokenizer *tok, const char *path, const cJSON *vocab,
                                   int32_t *max_id, lora_error *err) {
    if (!cJSON_IsObject(vocab)) {
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: the vocabulary is not a JSON object", path);
    }
    for (const cJSON *it = vocab->child; it; it = it->next) {
        int32_t id;
        if (!json_id(it, &id)) {
            return lora_errorf(err, LORA_ERR_FORMAT,
                               "%s: token '%.64s' has no valid id (a whole number in [0, %d))",
                               path, it->string ? it->string : "", MAX_VOCAB);
        }
        lora_status st = add_token(tok, path, it->string ? it->string : "", id, max_id, err);
        if (st != LORA_OK) return st;
    }
    return LORA_OK;
}

/* "<path>:<line>" for merges.txt, "<path>: merge <i>" (0-based) for tokenizer.json. */
static void merge_where(char *out, size_t outsz, const char *path, int json, size_t line) {
    snprintf(out, outsz, json ? "%s: merge %zu" : "%s:%zu", path, line);
}

/* Records one merge "a b" as the next rank. line: merges.txt line, or the index of the merge
 * in tokenizer.json when json is set. cat is scratch for the merged spelling. */
static lora_status add_merge(lora_tokenizer *tok, const char *path, int json, size_t line,
                             const char *a, size_t na, const char *b, size_t nb, char **cat,
                             size_t *cat_cap, lora_error *err) {
    char        where[PATH_MAX + 32];
    tok_strent *ea = tok_strmap_get(&tok->vocab, a, na);
    tok_strent *eb = tok_strmap_get(&tok->vocab, b, nb);
    if (!ea || !eb) {
        const char *miss = ea ? b : a;
        size_t      nm   = ea ? nb : na;
        merge_where(where, sizeof where, path, json, line);
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: '%.*s' is not in the vocabulary", where,
                           (int)(nm > 64 ? 64 : nm), miss);
    }
    if (na + nb + 1 > *cat_cap) {
        size_t cap = (na + nb + 1) * 2;
        char  *nc  = realloc(*cat, cap);
        if (!nc) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
        *cat     = nc;
        *cat_cap = cap;
    }
    memcpy(*cat, a, na);
    memcpy(*cat + na, b, nb);
    (*cat)[na + nb] = '\0';
    tok_strent *ec  = tok_strmap_get(&tok->vocab, *cat, na + nb);
    if (!ec) {
        merge_where(where, sizeof where, path, json, line);
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: the merged token '%.64s' is not in the vocabulary", where, *cat);
    }
    int32_t rank            = tok->n_merges++;
    tok->merge_left[rank]   = (int32_t)ea->val;
    tok->merge_right[rank]  = (int32_t)eb->val;
    tok->merge_result[rank] = (int32_t)ec->val;
    /* A pair listed twice keeps its last rank, as the reference encoders' dicts do. */
    if (tok_pairmap_put(&tok->ranks, tok_pair_key((int32_t)ea->val, (int32_t)eb->val), rank)) {
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory for the merges", path);
    }
    return LORA_OK;
}

static lora_status alloc_merges(lora_tokenizer *tok, const char *path, size_t n, lora_error *err) {
    if (n > INT32_MAX) {
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: %zu merges is too many", path, n);
    }
    size_t k          = n ? n : 1;
    tok->merge_left   = malloc(k * sizeof(int32_t));
    tok->merge_right  = malloc(k * sizeof(int32_t));
    tok->merge_result = malloc(k * sizeof(int32_t));
    if (!tok->merge_left || !tok->merge_right || !tok->merge_result) {
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory for %zu merges", path, n);
    }
    return LORA_OK;
}

/* After the vocabulary and the special tokens are in: the id-indexed tables. */
static lora_status build_tables(lora_tokenizer *tok, const char *path, int32_t max_id,
                                lora_error *err) {
    if (max_id < 0) return lora_errorf(err, LORA_ERR_FORMAT, "%s: the vocabulary is empty", path);
    /* Tables are indexed by id: a few sparse ids must not cost gigabytes. */
    if ((size_t)max_id >= 2 * (size_t)tok->vocab.n + 65536) {
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: id %d is far beyond the %u tokens (ids should be 0..n-1)", path,
                           (int)max_id, (unsigned)tok->vocab.n);
    }
    size_t n      = (size_t)max_id + 1;
    tok->n_vocab  = (int32_t)n;
    tok->form_ent = malloc(n * sizeof *tok->form_ent);
    tok->dec_off  = malloc(n * sizeof *tok->dec_off);
    tok->dec_len  = calloc(n, sizeof *tok->dec_len);
    tok->dec      = malloc(tok->vocab.keys_len + 1);
    if (!tok->form_ent || !tok->dec_off || !tok->dec_len || !tok->dec) {
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory for %zu tokens", path, n);
    }
    for (size_t i = 0; i < n; i++) {
        tok->form_ent[i] = -1;
        tok->dec_off[i]  = 0;
    }
    for (uint32_t k = 0; k < tok->vocab.n; k++) {
        int32_t id = (int32_t)tok->vocab.ents[k].val;
        if (tok->form_ent[id] >= 0) {
            const tok_strent *other = &tok->vocab.ents[tok->form_ent[id]];
            return lora_errorf(err, LORA_ERR_FORMAT,
                               "%s: id %d is given to both '%.64s' and '%.64s'", path, (int)id,
                               tok_strmap_key(&tok->vocab, other),
                               tok_strmap_key(&tok->vocab, &tok->vocab.ents[k]));
        }
        tok->form_ent[id] = (int32_t)k;
    }

    /* Decoded bytes: special tokens stand for their own text; other tokens are spelled with
     * GPT-2's byte map, and one holding a code point outside it also stands for its text. */
    unsigned char *special = calloc(n, 1);
    if (!special) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
    for (int32_t s = 0; s < tok->n_specials; s++)
        special[tok->specials[s].id] = 1;
    size_t pos = 0;
    for (size_t id = 0; id < n; id++) {
        if (tok->form_ent[id] < 0) continue;
        const tok_strent *e    = &tok->vocab.ents[tok->form_ent[id]];
        const char       *form = tok_strmap_key(&tok->vocab, e);
        unsigned char    *out  = (unsigned char *)tok->dec + pos;
        long              k    = special[id] ? -1 : tok_form_to_bytes(&tok->bm, form, e->len, out);
        if (k < 0) {
            memcpy(tok->dec + pos, form, e->len);
            k = (long)e->len;
        }
        tok->dec_off[id] = pos;
        tok->dec_len[id] = (uint32_t)k;
        pos += (size_t)k;
    }
    free(special);

    for (int b = 0; b < 256; b++) {
        char              form[4];
        size_t            k = tok_utf8_put(tok->bm.byte_cp[b], form);
        const tok_strent *e = tok_strmap_get(&tok->vocab, form, k);
        tok->byte_id[b]     = e ? (int32_t)e->val : -1;
    }
    const tok_strent *eot = tok_strmap_get(&tok->vocab, TOK_EOT, TOK_EOT_LEN);
    tok->eos              = eot ? (int32_t)eot->val : -1;
    return LORA_OK;
}

/* ---- vocab.json + merges.txt ---- */

static lora_status load_merges_txt(lora_tokenizer *tok, const char *path, const char *buf,
                                   size_t len, lora_error *err) {
    size_t n_lines = 1;
    for (size_t i = 0; i < len; i++)
        n_lines += buf[i] == '\n';
    lora_status st = alloc_merges(tok, path, n_lines, err);
    if (st != LORA_OK) return st;

    char       *cat     = NULL;
    size_t      cat_cap = 0;
    const char *p = buf, *end = buf + len;
    for (size_t line = 1; p < end; line++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *q  = nl ? nl : end;
        size_t      l  = (size_t)(q - p);
        if (l > 0 && p[l - 1] == '\r') l--;
        int skip = l == 0 || (line == 1 && l >= 8 && memcmp(p, "#version", 8) == 0);
        if (!skip) {
            const char *sp = memchr(p, ' ', l);
            if (!sp || sp == p || sp == p + l - 1 ||
                memchr(sp + 1, ' ', l - (size_t)(sp - p) - 1)) {
                st = lora_errorf(err, LORA_ERR_FORMAT,
                                 "%s:%zu: a merge must be two tokens separated by one space", path,
                                 line);
                break;
            }
            st = add_merge(tok, path, 0, line, p, (size_t)(sp - p), sp + 1,
                           l - (size_t)(sp - p) - 1, &cat, &cat_cap, err);
            if (st != LORA_OK) break;
        }
        p = q + 1;
    }
    free(cat);
    return st;
}

static lora_status load_vocab_merges(lora_tokenizer *tok, const char *vocab_path,
                                     const char *merges_path, lora_error *err) {
    char       *vbuf = NULL, *mbuf = NULL;
    size_t      vlen, mlen;
    cJSON      *root   = NULL;
    int32_t     max_id = -1;
    lora_status st     = lora_read_file(vocab_path, &vbuf, &vlen, err);
    if (st != LORA_OK) goto done;
    st = lora_read_file(merges_path, &mbuf, &mlen, err);
    if (st != LORA_OK) goto done;
    st = parse_json(vocab_path, vbuf, vlen, &root, err);
    if (st != LORA_OK) goto done;
    st = vocab_from_json(tok, vocab_path, root, &max_id, err);
    if (st != LORA_OK) goto done;
    const tok_strent *eot = tok_strmap_get(&tok->vocab, TOK_EOT, TOK_EOT_LEN);
    if (eot && (st = add_special(tok, vocab_path, TOK_EOT, (int32_t)eot->val, err)) != LORA_OK) {
        goto done;
    }
    st = build_tables(tok, vocab_path, max_id, err);
    if (st != LORA_OK) goto done;
    st = load_merges_txt(tok, merges_path, mbuf, mlen, err);
done:
    cJSON_Delete(root);
    free(mbuf);
    free(vbuf);
    return st;
}

/* ---- tokenizer.json ---- */

static int json_is_true(const cJSON *o, const char *key) {
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, key));
}

static int json_nonempty_string(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) && v->valuestring[0] != '\0';
}

/* Refuses what this tokenizer would silently get wrong. */
static lora_status check_supported(const char *path, const cJSON *root, const cJSON *model,
                                   lora_error *err) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (type && !(cJSON_IsString(type) && strcmp(type->valuestring, "BPE") == 0)) {
        return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                           "%s: model type '%.32s' is not supported (byte-level BPE only)", path,
                           cJSON_IsString(type) ? type->valuestring : "?");
    }
    if (json_nonempty_string(model, "continuing_subword_prefix") ||
        json_nonempty_string(model, "end_of_word_suffix") || json_is_true(model, "byte_fallback") ||
        json_is_true(model, "ignore_merges")) {
        return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                           "%s: BPE options (subword prefix/suffix, byte_fallback, ignore_merges) "
                           "are not supported",
                           path);
    }
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (norm && !cJSON_IsNull(norm)) {
        return lora_errorf(err, LORA_ERR_UNSUPPORTED, "%s: normalizers are not supported", path);
    }
    const cJSON *pre   = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    const cJSON *ptype = cJSON_GetObjectItemCaseSensitive(pre, "type");
    if (!cJSON_IsObject(pre) || !cJSON_IsString(ptype) ||
        strcmp(ptype->valuestring, "ByteLevel") != 0) {
        return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                           "%s: only GPT-2's ByteLevel pre-tokenizer is supported", path);
    }
    if (json_is_true(pre, "add_prefix_space") ||
        cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(pre, "use_regex"))) {
        return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                           "%s: ByteLevel with add_prefix_space or without its regex is not "
                           "supported",
                           path);
    }
    return LORA_OK;
}

static lora_status added_from_json(lora_tokenizer *tok, const char *path, const cJSON *added,
                                   int32_t *max_id, lora_error *err) {
    if (!added || cJSON_IsNull(added)) return LORA_OK;
    if (!cJSON_IsArray(added)) {
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: added_tokens is not an array", path);
    }
    size_t i = 0;
    for (const cJSON *it = added->child; it; it = it->next, i++) {
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        int32_t      id;
        if (!cJSON_IsString(content) || content->valuestring[0] == '\0' ||
            !json_id(cJSON_GetObjectItemCaseSensitive(it, "id"), &id)) {
            return lora_errorf(err, LORA_ERR_FORMAT,
                               "%s: added token %zu needs a non-empty \"content\" and a valid "
                               "\"id\"",
                               path, i);
        }
        const char       *text = content->valuestring;
        const tok_strent *e    = tok_strmap_get(&tok->vocab, text, strlen(text));
        lora_status       st;
        if (e && e->val != id) {
            return lora_errorf(err, LORA_ERR_FORMAT,
                               "%s: added token '%.64s' has id %d but the vocabulary gives %d",
                               path, text, (int)id, (int)e->val);
        }
        if (!e && (st = add_token(tok, path, text, id, max_id, err)) != LORA_OK) return st;
        for (int32_t s = 0; s < tok->n_specials; s++) {
            if (tok->specials[s].id == id) {
                return lora_errorf(err, LORA_ERR_FORMAT, "%s: added token id %d appears twice",
                                   path, (int)id);
            }
        }
        if ((st = add_special(tok, path, text, id, err)) != LORA_OK) return st;
    }
    return LORA_OK;
}

static lora_status merges_from_json(lora_tokenizer *tok, const char *path, const cJSON *merges,
                                    lora_error *err) {
    if (!cJSON_IsArray(merges)) {
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: model.merges is missing or not an array",
                           path);
    }
    size_t n = 0;
    for (const cJSON *it = merges->child; it; it = it->next)
        n++;
    lora_status st = alloc_merges(tok, path, n, err);
    if (st != LORA_OK) return st;

    char  *cat     = NULL;
    size_t cat_cap = 0;
    size_t i       = 0;
    for (const cJSON *it = merges->child; it; it = it->next, i++) {
        const char *a = NULL, *b = NULL;
        size_t      na = 0, nb = 0;
        if (cJSON_IsString(it)) { /* "a b" */
            const char *s  = it->valuestring;
            const char *sp = strchr(s, ' ');
            if (sp && sp != s && sp[1] != '\0' && !strchr(sp + 1, ' ')) {
                a  = s;
                na = (size_t)(sp - s);
                b  = sp + 1;
                nb = strlen(b);
            }
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2) { /* ["a", "b"] */
            const cJSON *x = it->child, *y = it->child->next;
            if (cJSON_IsString(x) && cJSON_IsString(y) && x->valuestring[0] && y->valuestring[0]) {
                a  = x->valuestring;
                na = strlen(a);
                b  = y->valuestring;
                nb = strlen(b);
            }
        }
        if (!a) {
            st = lora_errorf(err, LORA_ERR_FORMAT,
                             "%s: merge %zu must be \"a b\" or [\"a\", \"b\"] (two tokens)", path,
                             i);
            break;
        }
        st = add_merge(tok, path, 1, i, a, na, b, nb, &cat, &cat_cap, err);
        if (st != LORA_OK) break;
    }
    free(cat);
    return st;
}

static lora_status load_tokenizer_json(lora_tokenizer *tok, const char *path, lora_error *err) {
    char       *buf = NULL;
    size_t      len;
    cJSON      *root   = NULL;
    int32_t     max_id = -1;
    lora_status st     = lora_read_file(path, &buf, &len, err);
    if (st != LORA_OK) goto done;
    st = parse_json(path, buf, len, &root, err);
    if (st != LORA_OK) goto done;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(root) || !cJSON_IsObject(model)) {
        st = lora_errorf(err, LORA_ERR_FORMAT, "%s: no \"model\" object", path);
        goto done;
    }
    if ((st = check_supported(path, root, model, err)) != LORA_OK) goto done;
    st = vocab_from_json(tok, path, cJSON_GetObjectItemCaseSensitive(model, "vocab"), &max_id, err);
    if (st != LORA_OK) goto done;
    st = added_from_json(tok, path, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), &max_id,
                         err);
    if (st != LORA_OK) goto done;
    if ((st = build_tables(tok, path, max_id, err)) != LORA_OK) goto done;
    st = merges_from_json(tok, path, cJSON_GetObjectItemCaseSensitive(model, "merges"), err);
done:
    cJSON_Delete(root);
    free(buf);
    return st;
}

/* ---- entry point ---- */

lora_status tok_load_dir(lora_tokenizer *tok, const char *dir, lora_error *err) {
    char        tj[PATH_MAX], vj[PATH_MAX], mt[PATH_MAX];
    lora_status st;
    if ((st = lora_path_join(tj, sizeof tj, dir, "tokenizer.json", err)) != LORA_OK ||
        (st = lora_path_join(vj, sizeof vj, dir, "vocab.json", err)) != LORA_OK ||
        (st = lora_path_join(mt, sizeof mt, dir, "merges.txt", err)) != LORA_OK) {
        return st;
    }
    tok_bytemap_init(&tok->bm);
    st = load_tokenizer_json(tok, tj, err);
    if (st != LORA_ERR_MISSING) return st;
    if (access(vj, F_OK) != 0 && access(mt, F_OK) != 0) {
        return lora_errorf(err, LORA_ERR_MISSING,
                           "%s: no tokenizer.json, nor vocab.json + merges.txt", dir);
    }
    return load_vocab_merges(tok, vj, mt, err);
}
