/*
 * merge.c — folding adapters into the base weights and back, and writing a merged model as a
 * new Hugging Face directory in one atomic step.
 *
 * Merging is copy-on-write: an adapted site gets an owned copy W = W0 + Σ ΔW (each adapter's
 * ops->merge adds its own ΔW, scale included), its `w` points at the copy and its adapters
 * are skipped by linear_forward; the mapped or converted W0 is never written. Unmerging puts
 * the saved W0 pointer back and frees the copy, so the base is bit-identical by construction
 * (no W − ΔW subtraction that rounding would leave off by an ulp).
 */
#include "peft/adapters.h"

#include "core/error.h"
#include "core/memory.h"
#include "io/fileutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- merge / unmerge ---- */

static linear *site_at(lora_model *m, int32_t l, int k) {
    gpt2_layer *ly = &m->layers[l];
    return k == 0 ? &ly->c_attn : k == 1 ? &ly->attn_proj : k == 2 ? &ly->c_fc : &ly->mlp_proj;
}

void merge_undo(lora_model *m) {
    for (int32_t l = 0; m->layers && l < m->cfg.n_layer; l++)
        for (int k = 0; k < 4; k++) {
            linear *site = site_at(m, l, k);
            if (!site->w_merged) continue;
            site->w = site->w0;
            free(site->w_merged);
            site->w_merged = NULL;
            site->w0       = NULL;
        }
    m->merged = 0;
    m->weights_gen++;
}

lora_status lora_model_merge(lora_model *m, lora_error *err) {
    if (!m) return lora_errorf(err, LORA_ERR_ARG, "lora_model_merge: NULL model");
    if (m->merged)
        return lora_errorf(err, LORA_ERR_STATE, "%s: the model is already merged", m->dir);
    for (int32_t l = 0; l < m->cfg.n_layer; l++)
        for (int k = 0; k < 4; k++) {
            const linear *site = site_at(m, l, k);
            for (int32_t i = 0; i < site->n_adapters; i++)
                if (!site->adapters[i].ops->merge)
                    return lora_errorf(err, LORA_ERR_UNSUPPORTED, "%s: a %s adapter cannot be "
                                       "merged", site->name, site->adapters[i].ops->name);
        }
    for (int32_t l = 0; l < m->cfg.n_layer; l++)
        for (int k = 0; k < 4; k++) {
            linear *site = site_at(m, l, k);
            if (site->n_adapters == 0) continue;
            size_t n = (size_t)site->in * (size_t)site->out, bytes;
            float *w = lora_mul_ok(n, sizeof(float), &bytes) ? lora_alloc_streamed(bytes)
                                                               : NULL;
            if (!w) {
                merge_undo(m);
                return lora_errorf(err, LORA_ERR_NOMEM, "%s: cannot allocate %zu bytes for the "
                                   "merged weight", site->name, n * sizeof(float));
            }
            memcpy(w, site->w, n * sizeof(float));
            for (int32_t i = 0; i < site->n_adapters; i++)
                site->adapters[i].ops->merge(&site->adapters[i], site, w);
            site->w0       = site->w;
            site->w_merged = w;
            site->w        = w;
        }
    m->merged       = 1;
    m->weights_gen++;
    m->have_targets = 0; /* the last forward's activations are not the merged model's */
    return LORA_OK;
}

lora_status lora_model_unmerge(lora_model *m, lora_error *err) {
    if (!m) return lora_errorf(err, LORA_ERR_ARG, "lora_model_unmerge: NULL model");
    if (!m->merged) return lora_errorf(err, LORA_ERR_STATE, "%s: the model is not merged", m->dir);
    merge_undo(m);
    m->have_targets = 0;
    return LORA_OK;
}

int lora_model_is_merged(const lora_model *m) {
    return m && m->merged;
}

/* ---- a whole directory, atomically ---- */

/* Removes the plain files of dir, then dir (a temporary directory of ours: no subdirectories). */
static void remove_flat_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char           path[4096];
        while ((e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            if (lora_path_join(path, sizeof path, dir, e->d_name, NULL) == LORA_OK) unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* 1 when dir holds nothing but "." and "..". */
static int dir_is_empty(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int            empty = 1;
    while (empty && (e = readdir(d)) != NULL)
        empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
    closedir(d);
    return empty;
}

static void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

lora_status lora_model_save_hf_atomic(lora_model *m, const char *dir, lora_dtype dtype,
                                      lora_error *err) {
    char        out[4096], tmp[4200], parent[4096];
    struct stat sb;
    lora_status st;
    size_t      n = dir ? strlen(dir) : 0;
    if (!m || n == 0) return lora_errorf(err, LORA_ERR_ARG, "save: empty output directory");
    if (n >= sizeof out) return lora_errorf(err, LORA_ERR_ARG, "%s: path too long", dir);
    memcpy(out, dir, n + 1);
    while (n > 1 && out[n - 1] == '/') out[--n] = '\0';
    if (stat(out, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode) || !dir_is_empty(out))
            return lora_errorf(err, LORA_ERR_STATE, "%s: already exists%s (hint: remove it or "
                               "choose another output directory)", out,
                               S_ISDIR(sb.st_mode) ? " and is not empty" : "");
    } else if (errno != ENOENT) {
        return lora_errorf(err, LORA_ERR_IO, "%s: %s", out, strerror(errno));
    }
    const char *slash = strrchr(out, '/');
    snprintf(parent, sizeof parent, "%.*s", slash ? (int)(slash - out) : 1, slash ? out : ".");
    if (!parent[0]) snprintf(parent, sizeof parent, "/");
    if ((st = lora_mkdirs(parent, err)) != LORA_OK) return st;
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", out, (int)getpid());
    remove_flat_dir(tmp); /* a leftover of an earlier process with our pid */
    if (mkdir(tmp, 0755) != 0)
        return lora_errorf(err, LORA_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    if ((st = lora_model_save_hf(m, tmp, dtype, err)) != LORA_OK) goto fail;
    fsync_dir(tmp);
    if (rename(tmp, out) != 0) {
        st = lora_errorf(err, LORA_ERR_IO, "cannot rename %s to %s: %s", tmp, out,
                         strerror(errno));
        goto fail;
    }
    fsync_dir(parent);
    return LORA_OK;
fail:
    remove_flat_dir(tmp);
    return st;
}
