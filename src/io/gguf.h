/*
 * gguf.h — the GGUF container that llama.cpp reads and writes: a writer (version 3,
 * little-endian, atomic) and a reader (mmap, every byte distrusted).
 *
 * Layout: "GGUF", u32 version, u64 n_tensors, u64 n_kv; n_kv key/value pairs (u64-length
 * string key, u32 value type, value); n_tensors tensor infos (name, u32 n_dims, u64 ne[n_dims],
 * u32 tensor type, u64 offset); zero padding to the alignment (the u32 key "general.alignment",
 * default 32); the data section. A tensor's offset is relative to the data section and a
 * multiple of the alignment; `ne` lists dimensions fastest first, i.e. the PyTorch shape
 * reversed (an nn.Linear weight (out, in) has ne = [in, out]).
 *
 * What it is not: a model format. Key names, tensor names and layouts belong to the callers
 * (src/model/gguf_model.c, src/peft/gguf_adapter.c). Quantized tensor types are not supported.
 * Both sides assume a little-endian host.
 */
#ifndef LORA_IO_GGUF_H
#define LORA_IO_GGUF_H

#include "lora.h"

#include <stddef.h>
#include <stdint.h>

#define GGUF_VERSION 3u
#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_MAX_DIMS 4
#define GGUF_MAX_NAME 64 /* tensor names are shorter than this (ggml's GGML_MAX_NAME) */

/* Value types of the key/value pairs; the reader checks them exactly. */
typedef enum gguf_type {
    GGUF_TYPE_U8     = 0,
    GGUF_TYPE_I8     = 1,
    GGUF_TYPE_U16    = 2,
    GGUF_TYPE_I16    = 3,
    GGUF_TYPE_U32    = 4,
    GGUF_TYPE_I32    = 5,
    GGUF_TYPE_F32    = 6,
    GGUF_TYPE_BOOL   = 7, /* one byte, 0 or 1 */
    GGUF_TYPE_STRING = 8, /* u64 length + bytes, no terminator */
    GGUF_TYPE_ARRAY  = 9, /* u32 element type + u64 count + elements (no nested arrays) */
    GGUF_TYPE_U64    = 10,
    GGUF_TYPE_I64    = 11,
    GGUF_TYPE_F64    = 12
} gguf_type;

/* Tensor types this module handles (ggml's numbering). */
typedef enum gguf_tensor_type {
    GGUF_TENSOR_F32  = 0,
    GGUF_TENSOR_F16  = 1,
    GGUF_TENSOR_I8   = 24,
    GGUF_TENSOR_I16  = 25,
    GGUF_TENSOR_I32  = 26,
    GGUF_TENSOR_I64  = 27,
    GGUF_TENSOR_F64  = 28,
    GGUF_TENSOR_BF16 = 30
} gguf_tensor_type;

/* "u32", "string", ...; "?" for an unknown type. */
const char *gguf_type_name(uint32_t type);
/* "F32", "F16", "BF16", ...; NULL for a type this module does not handle. */
const char *gguf_tensor_type_name(uint32_t type);
/* Bytes per element; 0 for a type this module does not handle. */
size_t gguf_tensor_type_size(uint32_t type);

/* ---- reading ---- */

/* A byte string inside the mapping: NOT NUL-terminated. */
typedef struct gguf_str {
    const char *s;
    uint64_t    n;
} gguf_str;

typedef struct gguf_kv {
    char          *key;      /* owned, NUL-terminated */
    uint32_t       type;     /* gguf_type */
    uint32_t       arr_type; /* element type when type == GGUF_TYPE_ARRAY */
    uint64_t       n;        /* elements of an array; 1 for a scalar */
    const uint8_t *data;     /* a scalar's bytes or a numeric array's elements, in the mapping
                                (possibly unaligned: read with memcpy or the getters below) */
    gguf_str  str;           /* a string scalar */
    gguf_str *strs;          /* (n) a string array's elements, owned */
} gguf_kv;

typedef struct gguf_tensor {
    char       *name;              /* owned, NUL-terminated, shorter than GGUF_MAX_NAME */
    uint32_t    type;              /* gguf_tensor_type */
    uint32_t    n_dims;            /* 1 .. GGUF_MAX_DIMS */
    int64_t     ne[GGUF_MAX_DIMS]; /* fastest first; 1 past n_dims */
    int64_t     numel;
    uint64_t    offset; /* relative to the data section */
    const void *data;   /* in the mapping; aligned to the file's alignment relative to the
                           mapping, which may be less than the element size in a hostile file */
    size_t nbytes;
} gguf_tensor;

typedef struct gguf_file {
    char        *path; /* owned */
    void        *map;  /* read-only mapping of the whole file */
    size_t       size;
    uint32_t     version;
    uint32_t     alignment;
    size_t       data_offset; /* start of the data section in the file */
    int64_t      n_kv;
    gguf_kv     *kv; /* (n_kv) owned, in file order */
    int64_t      n_tensors;
    gguf_tensor *tensors; /* (n_tensors) owned, in file order */
} gguf_file;

/*
 * Maps and validates a GGUF file: magic, version (2 or 3), every count, string length, value
 * type, n_dims (<= 4), dimension (>= 0, product within int64 and SIZE_MAX), tensor type and
 * offset (a multiple of the alignment, the data inside the data section, no two tensors
 * overlapping) checked against the file size before use; keys and tensor names unique.
 * On failure *f is left closed and err says "<path>: <problem>" (LORA_ERR_FORMAT for malformed
 * bytes, LORA_ERR_UNSUPPORTED for a valid but unhandled version or tensor type, LORA_ERR_IO /
 * LORA_ERR_MISSING when the file cannot be opened). Valid while open: every pointer into it.
 */
lora_status gguf_open(gguf_file *f, const char *path, lora_error *err);
void        gguf_close(gguf_file *f); /* safe on a zeroed or closed gguf_file */

/* Lookups by name; NULL when absent. */
const gguf_kv     *gguf_find_kv(const gguf_file *f, const char *key);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/*
 * Typed getters for scalar keys. The type must match exactly (a u32 written as i32 is an
 * error, as llama.cpp has it): LORA_ERR_FORMAT "<path>: key 'k' has type i32, expected u32";
 * LORA_ERR_MISSING when the key is absent.
 */
lora_status gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, lora_error *err);
lora_status gguf_get_f32(const gguf_file *f, const char *key, float *out, lora_error *err);
lora_status gguf_get_str(const gguf_file *f, const char *key, gguf_str *out, lora_error *err);

/* Element i of a numeric array (or the scalar when i == 0), converted; 0 when out of range or
 * not numeric. */
int64_t gguf_kv_get_i64(const gguf_kv *kv, uint64_t i);
double  gguf_kv_get_f64(const gguf_kv *kv, uint64_t i);

/* 1 when s equals the NUL-terminated string z. */
int gguf_str_eq(gguf_str s, const char *z);

/* ---- writing ---- */

typedef struct gguf_writer gguf_writer;

gguf_writer *gguf_writer_new(void); /* NULL on allocation failure */
void         gguf_writer_free(gguf_writer *w);

/*
 * Key/value pairs, written in the order set. Keys must be unique (LORA_ERR_ARG otherwise).
 * "general.alignment" must be a u32 power of two; it sets the alignment of the data (default
 * 32, written only when set).
 * gguf_writer_set: a scalar; val points to the C value of the type (uint8_t .. double; bool
 * as a uint8_t 0/1); for GGUF_TYPE_STRING val is a NUL-terminated const char *.
 * gguf_writer_set_arr: n packed elements of a numeric or bool type, or, for
 * GGUF_TYPE_STRING, an array of n NUL-terminated const char *.
 */
lora_status gguf_writer_set(gguf_writer *w, const char *key, gguf_type type, const void *val,
                            lora_error *err);
lora_status gguf_writer_set_arr(gguf_writer *w, const char *key, gguf_type elem, const void *data,
                                uint64_t n, lora_error *err);
/* Copies a pair read from another file, value type and bytes unchanged. */
lora_status gguf_writer_copy_kv(gguf_writer *w, const gguf_kv *kv, lora_error *err);

static inline lora_status gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v,
                                              lora_error *err) {
    return gguf_writer_set(w, key, GGUF_TYPE_U32, &v, err);
}
static inline lora_status gguf_writer_set_f32(gguf_writer *w, const char *key, float v,
                                              lora_error *err) {
    return gguf_writer_set(w, key, GGUF_TYPE_F32, &v, err);
}
static inline lora_status gguf_writer_set_str(gguf_writer *w, const char *key, const char *v,
                                              lora_error *err) {
    return gguf_writer_set(w, key, GGUF_TYPE_STRING, v, err);
}

/* Produces a tensor's bytes at write time into dst (nbytes, the tensor's size). */
typedef lora_status (*gguf_fill_fn)(void *user, void *dst, size_t nbytes, lora_error *err);

/*
 * Records a tensor: its name (< GGUF_MAX_NAME bytes, unique), type, n_dims (1..4) and ne
 * (fastest first). Its bytes come from data (borrowed until gguf_writer_write returns) or from
 * fill(user, ...) called once during the write with a scratch buffer (so a converted or
 * transposed copy of a large model never needs to exist all at once). Tensors are laid out in
 * the order added, each at the next multiple of the alignment.
 */
lora_status gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                                   const int64_t *ne, const void *data, lora_error *err);
lora_status gguf_writer_add_tensor_fn(gguf_writer *w, const char *name, uint32_t type,
                                      uint32_t n_dims, const int64_t *ne, gguf_fill_fn fill,
                                      void *user, lora_error *err);

/* Writes the file as GGUF v3 atomically: PATH.tmp.<pid>, fsync, rename. On any failure (a full
 * disk included) the temporary is removed and PATH is left as it was. */
lora_status gguf_writer_write(gguf_writer *w, const char *path, lora_error *err);

#endif
