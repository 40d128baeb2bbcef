/*
 * safetensors.h — reading (mmap, zero-copy) and writing (atomic) Hugging Face safetensors files,
 * and opening a model directory that is either one model.safetensors or shards listed by
 * model.safetensors.index.json.
 *
 * Format: u64 little-endian header length N, N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"k": "v"}}
 * then the data; offsets are relative to the byte after the header. Everything read from the
 * file is distrusted: header length against the file size, each tensor's offsets against the
 * data size, its byte count against dtype x shape (with overflow checks), no two tensors
 * overlapping, known dtypes only, names unique.
 */
#ifndef LORA_IO_SAFETENSORS_H
#define LORA_IO_SAFETENSORS_H

#include "lora.h"

#include <stddef.h>
#include <stdint.h>

typedef enum st_dtype {
    ST_F32 = 0,
    ST_F16,
    ST_BF16,
    ST_F64,
    ST_I64,
    ST_I32,
    ST_I16,
    ST_I8,
    ST_U8,
    ST_BOOL
} st_dtype;

#define ST_MAX_DIMS 8

typedef struct st_tensor {
    const char *name;   /* owned by the st_file */
    st_dtype    dtype;
    int32_t     ndim;
    int64_t     shape[ST_MAX_DIMS];
    int64_t     numel;
    const void *data;   /* points into the mapping; valid while the st_file is open. Aligned to
                         * its element size in well-formed files, but a hostile or odd file can
                         * misalign it: check st_tensor_aligned before using it in place. */
    size_t      nbytes;
} st_tensor;

typedef struct st_file {
    char      *path;      /* owned */
    void      *map;       /* read-only mapping of the whole file */
    size_t     size;
    int32_t    n_tensors;
    st_tensor *tensors;   /* owned; sorted by name (not in file order) */
    char     **meta_keys; /* "__metadata__" string pairs, owned */
    char     **meta_vals;
    int32_t    n_meta;
} st_file;

/* Size in bytes of one element; 0 for an invalid dtype. */
size_t      st_dtype_size(st_dtype t);
const char *st_dtype_name(st_dtype t);
/* Parses "F32", "F16", ...; returns -1 when unknown. */
int st_dtype_parse(const char *s);

/* Opens and validates a file. On failure *f is left closed and err says "<path>: <problem>". */
lora_status st_open(st_file *f, const char *path, lora_error *err);
void        st_close(st_file *f); /* safe on a zeroed or closed st_file */

/* 1 when t->data is a multiple of align (a power of two) or t holds no bytes. */
int st_tensor_aligned(const st_tensor *t, size_t align);

/* Binary search by name; NULL when absent. */
const st_tensor *st_find(const st_file *f, const char *name);
/* NULL when absent. */
const char *st_meta(const st_file *f, const char *key);

/*
 * Copies a tensor to F32 (converting F16/BF16; F32 copied). dst holds t->numel floats.
 * Other dtypes: LORA_ERR_UNSUPPORTED.
 */
lora_status st_to_f32(float *dst, const st_tensor *t, const char *path, lora_error *err);

/* Drops the whole pages of a tensor's mapped bytes from the process's resident set (after
 * converting it, they are not needed): they stay in the page cache, and a later read faults them
 * back in from the file. Partial pages shared with a neighbour are kept. */
void st_tensor_release(const st_tensor *t);

/* ---- a model directory: one file or shards ---- */

typedef struct st_set {
    st_file *files; /* owned */
    int32_t  n_files;
} st_set;

/*
 * Opens DIR/model.safetensors, or every shard named in DIR/model.safetensors.index.json
 * (its "weight_map"; each tensor must be found in the shard the map names, and no tensor may
 * be stored in two shards). Shard names must be plain file names inside DIR. On failure *s is
 * left closed: LORA_ERR_MISSING when neither file, a shard or a mapped tensor is absent.
 */
lora_status st_set_open_dir(st_set *s, const char *dir, lora_error *err);
void        st_set_close(st_set *s);
/* Finds a tensor across shards; *file (may be NULL) receives the file it lives in. */
const st_tensor *st_set_find(const st_set *s, const char *name, const st_file **file);

/* ---- writing ---- */

typedef struct st_writer st_writer;

st_writer *st_writer_new(void); /* NULL on allocation failure */
void       st_writer_free(st_writer *w);
/* Records a tensor (data is borrowed until st_writer_write returns). Names must be unique. */
lora_status st_writer_add(st_writer *w, const char *name, st_dtype dtype, int32_t ndim,
                          const int64_t *shape, const void *data, lora_error *err);
/* Adds a "__metadata__" string pair (copied); an existing key gets the new value. */
lora_status st_writer_meta(st_writer *w, const char *key, const char *value, lora_error *err);
/*
 * Writes the file atomically: PATH.tmp.<pid>, written in full, fsynced, renamed onto PATH.
 * The header is padded with spaces so the data starts at a multiple of 8 bytes. Tensors are
 * laid out in the order added. On any failure (a full disk included) the temporary is removed
 * and PATH is untouched.
 */
lora_status st_writer_write(st_writer *w, const char *path, lora_error *err);

#endif
