/*
 * gguf.c — GGUF reader (mmap, validate everything before use) and writer (v3, atomic).
 *
 * The reader walks the header with a bounds-checked cursor: no count is multiplied, no length
 * allocated and no pointer formed before it has been compared with the bytes left in the file
 * and with SIZE_MAX. It refuses what llama.cpp would refuse (duplicate keys or tensor names,
 * names of GGUF_MAX_NAME bytes or more, misaligned offsets) and a little more (overlapping
 * tensors, bool bytes other than 0 and 1).
 *
 * The writer serialises key/value pairs as they are set and lays tensors out in the order
 * added, each padded to the alignment, as ggml's own writer does (llama.cpp requires exactly
 * that packing).
 */
#include "io/gguf.h"

#include "core/error.h"
#include "io/fileutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c reads and writes little-endian GGUF with native loads: a little-endian host only"
#endif

static const char gguf_magic[4] = {'G', 'G', 'U', 'F'};

/* ---- types ---- */

/* Size of a scalar value type; 0 for STRING, ARRAY and unknown types. */
static size_t scalar_size(uint32_t type) {
    switch (type) {
    case GGUF_TYPE_U8:
    case GGUF_TYPE_I8:
    case GGUF_TYPE_BOOL:
        return 1;
    case GGUF_TYPE_U16:
    case GGUF_TYPE_I16:
        return 2;
    case GGUF_TYPE_U32:
    case GGUF_TYPE_I32:
    case GGUF_TYPE_F32:
        return 4;
    case GGUF_TYPE_U64:
    case GGUF_TYPE_I64:
    case GGUF_TYPE_F64:
        return 8;
    default:
        return 0;
    }
}

const char *gguf_type_name(uint32_t type) {
    static const char *names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                  "bool", "string", "array", "u64", "i64", "f64"};
    return type < sizeof names / sizeof names[0] ? names[type] : "?";
}

const char *gguf_tensor_type_name(uint32_t type) {
    switch (type) {
    case GGUF_TENSOR_F32:
        return "F32";
    case GGUF_TENSOR_F16:
        return "F16";
    case GGUF_TENSOR_BF16:
        return "BF16";
    case GGUF_TENSOR_I8:
        return "I8";
    case GGUF_TENSOR_I16:
        return "I16";
    case GGUF_TENSOR_I32:
        return "I32";
    case GGUF_TENSOR_I64:
        return "I64";
    case GGUF_TENSOR_F64:
        return "F64";
    default:
        return NULL;
    }
}

size_t gguf_tensor_type_size(uint32_t type) {
    switch (type) {
    case GGUF_TENSOR_I8:
        return 1;
    case GGUF_TENSOR_F16:
    case GGUF_TENSOR_BF16:
    case GGUF_TENSOR_I16:
        return 2;
    case GGUF_TENSOR_F32:
    case GGUF_TENSOR_I32:
        return 4;
    case GGUF_TENSOR_I64:
    case GGUF_TENSOR_F64:
        return 8;
    default:
        return 0;
    }
}

static int is_pow2(uint64_t x) {
    return x != 0 && (x & (x - 1)) == 0;
}

/* ---- reading ---- */

/* A cursor over the mapping; every read checks the bytes left first. */
typedef struct cursor {
    const uint8_t *p;
    size_t         size, pos;
    const char    *path;
    lora_error    *err;
} cursor;

static lora_status truncated(cursor *c, const char *what) {
    return lora_errorf(c->err, LORA_ERR_FORMAT,
                       "%s: truncated: %s at byte %zu runs past the end of the file (%zu bytes)",
                       c->path, what, c->pos, c->size);
}

static size_t left(const cursor *c) {
    return c->size - c->pos;
}

static lora_status rd(cursor *c, void *dst, size_t n, const char *what) {
    if (n > left(c)) return truncated(c, what);
    memcpy(dst, c->p + c->pos, n);
    c->pos += n;
    return LORA_OK;
}

static lora_status rd_u32(cursor *c, uint32_t *v, const char *what) {
    return rd(c, v, sizeof *v, what);
}

static lora_status rd_u64(cursor *c, uint64_t *v, const char *what) {
    return rd(c, v, sizeof *v, what);
}

/* A u64 length then that many bytes, left in place. */
static lora_status rd_str(cursor *c, gguf_str *s, const char *what) {
    uint64_t    n  = 0;
    lora_status st = rd_u64(c, &n, what);
    if (st != LORA_OK) return st;
    if (n > left(c)) {
        c->pos -= sizeof n;
        return lora_errorf(c->err, LORA_ERR_FORMAT,
                           "%s: %s at byte %zu has length %llu, past the end of the file "
                           "(%zu bytes)",
                           c->path, what, c->pos, (unsigned long long)n, c->size);
    }
    s->s = (const char *)(c->p + c->pos);
    s->n = n;
    c->pos += (size_t)n;
    return LORA_OK;
}

/* A NUL-terminated owned copy (s.n <= file size < SIZE_MAX, so s.n + 1 cannot wrap). */
static char *str_dup(gguf_str s) {
    char *z = malloc((size_t)s.n + 1);
    if (!z) return NULL;
    memcpy(z, s.s, (size_t)s.n);
    z[s.n] = '\0';
    return z;
}

int gguf_str_eq(gguf_str s, const char *z) {
    size_t n = strlen(z);
    return s.n == n && memcmp(s.s, z, n) == 0;
}

static lora_status check_bools(cursor *c, const uint8_t *b, uint64_t n, const char *key) {
    for (uint64_t i = 0; i < n; i++)
        if (b[i] > 1)
            return lora_errorf(c->err, LORA_ERR_FORMAT, "%s: key '%s': bool value %u is not 0 or 1",
                               c->path, key, (unsigned)b[i]);
    return LORA_OK;
}

static lora_status read_kv(cursor *c, gguf_kv *kv, int64_t index) {
    gguf_str    key = {NULL, 0};
    lora_status st  = rd_str(c, &key, "a key");
    if (st != LORA_OK) return st;
    if (key.n == 0)
        return lora_errorf(c->err, LORA_ERR_FORMAT, "%s: key %lld is empty", c->path,
                           (long long)index);
    if (memchr(key.s, '\0', (size_t)key.n))
        return lora_errorf(c->err, LORA_ERR_FORMAT, "%s: key %lld contains a NUL byte", c->path,
                           (long long)index);
    if (!(kv->key = str_dup(key)))
        return lora_errorf(c->err, LORA_ERR_NOMEM, "%s: out of memory", c->path);
    if ((st = rd_u32(c, &kv->type, "a value type")) != LORA_OK) return st;
    kv->n = 1;
    if (kv->type == GGUF_TYPE_STRING) return rd_str(c, &kv->str, "a string value");
    if (kv->type == GGUF_TYPE_ARRAY) {
        if ((st = rd_u32(c, &kv->arr_type, "an array type")) != LORA_OK) return st;
        if ((st = rd_u64(c, &kv->n, "an array length")) != LORA_OK) return st;
        if (kv->arr_type == GGUF_TYPE_STRING) {
            /* each element takes at least its 8-byte length */
            if (kv->n > left(c) / 8)
                return lora_errorf(c->err, LORA_ERR_FORMAT,
                                   "%s: key '%s': string array of %llu elements is longer than "
                                   "the rest of the file",
                                   c->path, kv->key, (unsigned long long)kv->n);
            if (kv->n && !(kv->strs = malloc((size_t)kv->n * sizeof *kv->strs)))
                return lora_errorf(c->err, LORA_ERR_NOMEM, "%s: out of memory", c->path);
            for (uint64_t i = 0; i < kv->n; i++)
                if ((st = rd_str(c, &kv->strs[i], "an array string")) != LORA_OK) return st;
            return LORA_OK;
        }
        size_t esz = scalar_size(kv->arr_type);
        if (esz == 0)
            return lora_errorf(c->err, LORA_ERR_FORMAT,
                               "%s: key '%s': array element type %u is not valid%s", c->path,
                               kv->key, (unsigned)kv->arr_type,
                               kv->arr_type == GGUF_TYPE_ARRAY ? " (nested arrays)" : "");
        if (kv->n > left(c) / esz)
            return lora_errorf(c->err, LORA_ERR_FORMAT,
                               "%s: key '%s': array of %llu %s elements runs past the end of "
                               "the file",
                               c->path, kv->key, (unsigned long long)kv->n,
                               gguf_type_name(kv->arr_type));
        kv->data = c->p + c->pos;
        c->pos += (size_t)kv->n * esz;
        if (kv->arr_type == GGUF_TYPE_BOOL) return check_bools(c, kv->data, kv->n, kv->key);
        return LORA_OK;
    }
    size_t esz = scalar_size(kv->type);
    if (esz == 0)
        return lora_errorf(c->err, LORA_ERR_FORMAT, "%s: key '%s' has unknown value type %u",
                           c->path, kv->key, (unsigned)kv->type);
    if (esz > left(c)) return truncated(c, "a value");
    kv->data = c->p + c->pos;
    c->pos += esz;
    if (kv->type == GGUF_TYPE_BOOL) return check_bools(c, kv->data, 1, kv->key);
    return LORA_OK;
}

static lora_status read_tensor_info(cursor *c, gguf_tensor *t, int64_t index) {
    gguf_str    name = {NULL, 0};
    lora_status st   = rd_str(c, &name, "a tensor name");
    if (st != LORA_OK) return st;
    if (name.n == 0 || name.n >= GGUF_MAX_NAME || memchr(name.s, '\0', (size_t)name.n))
        return lora_errorf(c->err, LORA_ERR_FORMAT,
                           "%s: tensor %lld has a name of %llu bytes (must be 1 .. %d, no NUL)",
                           c->path, (long long)index, (unsigned long long)name.n,
                           GGUF_MAX_NAME - 1);
    if (!(t->name = str_dup(name)))
        return lora_errorf(c->err, LORA_ERR_NOMEM, "%s: out of memory", c->path);
    if ((st = rd_u32(c, &t->n_dims, "n_dims")) != LORA_OK) return st;
    if (t->n_dims > GGUF_MAX_DIMS)
        return lora_errorf(c->err, LORA_ERR_FORMAT, "%s: tensor '%s' has n_dims %u (at most %d)",
                           c->path, t->name, (unsigned)t->n_dims, GGUF_MAX_DIMS);
    for (int d = 0; d < GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        uint64_t ne = 0;
        if ((st = rd_u64(c, &ne, "a tensor dimension")) != LORA_OK) return st;
        if (ne > (uint64_t)INT64_MAX)
            return lora_errorf(c->err, LORA_ERR_FORMAT, "%s: tensor '%s' dimension %u is %llu",
                               c->path, t->name, (unsigned)d, (unsigned long long)ne);
        t->ne[d] = (int64_t)ne;
    }
    if ((st = rd_u32(c, &t->type, "a tensor type")) != LORA_OK) return st;
    if ((st = rd_u64(c, &t->offset, "a tensor offset")) != LORA_OK) return st;
    size_t esz = gguf_tensor_type_size(t->type);
    if (esz == 0)
        return lora_errorf(c->err, LORA_ERR_UNSUPPORTED,
                           "%s: tensor '%s' has type %u, which is quantized or unknown "
                           "(supported: F32, F16, BF16, I8, I16, I32, I64, F64)",
                           c->path, t->name, (unsigned)t->type);
    /* element count and bytes, with overflow checks against int64 and size_t */
    uint64_t numel = 1;
    int      zero  = 0;
    for (int d = 0; d < GGUF_MAX_DIMS; d++)
        zero |= t->ne[d] == 0;
    for (int d = 0; d < GGUF_MAX_DIMS && !zero; d++) {
        uint64_t ne = (uint64_t)t->ne[d];
        if (numel > (uint64_t)INT64_MAX / ne || numel * ne > SIZE_MAX / esz)
            return lora_errorf(c->err, LORA_ERR_FORMAT,
                               "%s: tensor '%s' shape [%lld, %lld, %lld, %lld] overflows", c->path,
                               t->name, (long long)t->ne[0], (long long)t->ne[1],
                               (long long)t->ne[2], (long long)t->ne[3]);
        numel *= ne;
    }
    t->numel  = zero ? 0 : (int64_t)numel;
    t->nbytes = (size_t)t->numel * esz;
    return LORA_OK;
}

static int cmp_kv_key(const void *a, const void *b) {
    return strcmp((*(const gguf_kv *const *)a)->key, (*(const gguf_kv *const *)b)->key);
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp((*(const gguf_tensor *const *)a)->name, (*(const gguf_tensor *const *)b)->name);
}

static int cmp_tensor_offset(const void *a, const void *b) {
    const gguf_tensor *x = *(const gguf_tensor *const *)a, *y = *(const gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset ? 1 : 0;
}

/* Unique keys and names, no overlapping tensor data (sorting views: O(n log n)). */
static lora_status check_unique(gguf_file *f, lora_error *err) {
    int64_t n   = f->n_kv > f->n_tensors ? f->n_kv : f->n_tensors;
    void  **idx = n ? malloc((size_t)n * sizeof *idx) : NULL;
    if (n && !idx) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", f->path);
    lora_status st = LORA_OK;
    for (int64_t i = 0; i < f->n_kv; i++)
        idx[i] = &f->kv[i];
    if (f->n_kv > 1) qsort(idx, (size_t)f->n_kv, sizeof *idx, cmp_kv_key);
    for (int64_t i = 1; i < f->n_kv && st == LORA_OK; i++)
        if (!strcmp(((gguf_kv *)idx[i])->key, ((gguf_kv *)idx[i - 1])->key))
            st = lora_errorf(err, LORA_ERR_FORMAT, "%s: key '%s' appears twice", f->path,
                             ((gguf_kv *)idx[i])->key);
    for (int64_t i = 0; i < f->n_tensors; i++)
        idx[i] = &f->tensors[i];
    if (st == LORA_OK && f->n_tensors > 1)
        qsort(idx, (size_t)f->n_tensors, sizeof *idx, cmp_tensor_name);
    for (int64_t i = 1; i < f->n_tensors && st == LORA_OK; i++)
        if (!strcmp(((gguf_tensor *)idx[i])->name, ((gguf_tensor *)idx[i - 1])->name))
            st = lora_errorf(err, LORA_ERR_FORMAT, "%s: tensor '%s' appears twice", f->path,
                             ((gguf_tensor *)idx[i])->name);
    if (st == LORA_OK && f->n_tensors > 1)
        qsort(idx, (size_t)f->n_tensors, sizeof *idx, cmp_tensor_offset);
    const gguf_tensor *prev = NULL;
    for (int64_t i = 0; i < f->n_tensors && st == LORA_OK; i++) {
        const gguf_tensor *t = idx[i];
        if (t->nbytes == 0) continue;
        if (prev && prev->offset + prev->nbytes > t->offset)
            st = lora_errorf(err, LORA_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap", f->path,
                             prev->name, t->name);
        prev = t;
    }
    free(idx);
    return st;
}

static lora_status parse(gguf_file *f, lora_error *err) {
    cursor      c = {f->map, f->size, 0, f->path, err};
    char        magic[4];
    uint64_t    n_tensors = 0, n_kv = 0;
    lora_status st;
    if (f->size < sizeof magic || memcmp(f->map, gguf_magic, sizeof magic))
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: not a GGUF file (no 'GGUF' magic)", f->path);
    if ((st = rd(&c, magic, sizeof magic, "the magic")) != LORA_OK) return st;
    if ((st = rd_u32(&c, &f->version, "the version")) != LORA_OK) return st;
    if (f->version == 1)
        return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                           "%s: GGUF version 1 is not supported (versions 2 and 3 are)", f->path);
    if (f->version != 2 && f->version != 3)
        return lora_errorf(err, LORA_ERR_UNSUPPORTED, "%s: unknown GGUF version %u%s", f->path,
                           (unsigned)f->version,
                           (f->version & 0xffff) == 0 ? " (a big-endian file?)" : "");
    if ((st = rd_u64(&c, &n_tensors, "the tensor count")) != LORA_OK) return st;
    if ((st = rd_u64(&c, &n_kv, "the key/value count")) != LORA_OK) return st;
    /* a pair takes at least 8 + 1 + 4 + 1 bytes, a tensor info 8 + 1 + 4 + 4 + 8 */
    if (n_kv > left(&c) / 14)
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: %llu key/value pairs cannot fit in a file of %zu bytes", f->path,
                           (unsigned long long)n_kv, f->size);
    if (n_tensors > left(&c) / 25)
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: %llu tensors cannot fit in a file of %zu bytes", f->path,
                           (unsigned long long)n_tensors, f->size);
    if ((n_kv && !(f->kv = calloc((size_t)n_kv, sizeof *f->kv))) ||
        (n_tensors && !(f->tensors = calloc((size_t)n_tensors, sizeof *f->tensors))))
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", f->path);
    for (uint64_t i = 0; i < n_kv; i++) {
        f->n_kv = (int64_t)i + 1; /* so that close frees what was read */
        if ((st = read_kv(&c, &f->kv[i], (int64_t)i)) != LORA_OK) return st;
    }

    f->alignment         = GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv *align = gguf_find_kv(f, "general.alignment");
    if (align) {
        uint32_t a = 0;
        if (align->type == GGUF_TYPE_U32) memcpy(&a, align->data, sizeof a);
        if (align->type != GGUF_TYPE_U32 || !is_pow2(a))
            return lora_errorf(err, LORA_ERR_FORMAT,
                               "%s: general.alignment must be a u32 power of two (got %s %u)",
                               f->path, gguf_type_name(align->type), (unsigned)a);
        f->alignment = a;
    }

    for (uint64_t i = 0; i < n_tensors; i++) {
        f->n_tensors = (int64_t)i + 1;
        if ((st = read_tensor_info(&c, &f->tensors[i], (int64_t)i)) != LORA_OK) return st;
    }

    /* the data section starts at the next multiple of the alignment */
    size_t pad = (f->alignment - c.pos % f->alignment) % f->alignment;
    if (pad > left(&c)) {
        if (f->n_tensors > 0)
            return lora_errorf(err, LORA_ERR_FORMAT,
                               "%s: truncated: the data section would start at byte %zu, past "
                               "the end of the file (%zu bytes)",
                               f->path, c.pos + pad, f->size);
        pad = left(&c);
    }
    f->data_offset   = c.pos + pad;
    size_t data_size = f->size - f->data_offset;
    for (int64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (t->offset % f->alignment)
            return lora_errorf(err, LORA_ERR_FORMAT,
                               "%s: tensor '%s' offset %llu is not a multiple of the alignment %u",
                               f->path, t->name, (unsigned long long)t->offset,
                               (unsigned)f->alignment);
        if (t->offset > data_size || t->nbytes > data_size - (size_t)t->offset)
            return lora_errorf(err, LORA_ERR_FORMAT,
                               "%s: tensor '%s' data [%llu, +%zu) lies outside the data section "
                               "(%zu bytes)",
                               f->path, t->name, (unsigned long long)t->offset, t->nbytes,
                               data_size);
        t->data = (const uint8_t *)f->map + f->data_offset + (size_t)t->offset;
    }
    return check_unique(f, err); /* after the bounds: offset + nbytes cannot wrap there */
}

lora_status gguf_open(gguf_file *f, const char *path, lora_error *err) {
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return lora_errorf(err, e == ENOENT ? LORA_ERR_MISSING : LORA_ERR_IO, "%s: cannot open: %s",
                           path, strerror(e));
    }
    lora_status st;
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        st = lora_errorf(err, LORA_ERR_IO, "%s: not a readable regular file", path);
        close(fd);
        return st;
    }
    if ((uint64_t)sb.st_size >= SIZE_MAX) {
        close(fd);
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: file too large to map", path);
    }
    if (!(f->path = strdup(path))) {
        close(fd);
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
    }
    f->size = (size_t)sb.st_size;
    if (f->size > 0) {
        void *map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            gguf_close(f);
            return lora_errorf(err, LORA_ERR_IO, "%s: cannot map: %s", path, strerror(e));
        }
        f->map = map;
#ifdef MADV_HUGEPAGE
        (void)madvise(map, f->size, MADV_HUGEPAGE); /* huge pages if possible: safetensors.c */
#endif
    }
    close(fd);
    if ((st = parse(f, err)) != LORA_OK) {
        gguf_close(f);
        return st;
    }
    return LORA_OK;
}

void gguf_close(gguf_file *f) {
    if (!f) return;
    for (int64_t i = 0; f->kv && i < f->n_kv; i++) {
        free(f->kv[i].key);
        free(f->kv[i].strs);
    }
    for (int64_t i = 0; f->tensors && i < f->n_tensors; i++)
        free(f->tensors[i].name);
    free(f->kv);
    free(f->tensors);
    if (f->map) munmap(f->map, f->size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key) {
    for (int64_t i = 0; i < f->n_kv; i++)
        if (f->kv[i].key && !strcmp(f->kv[i].key, key)) return &f->kv[i];
    return NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
    for (int64_t i = 0; i < f->n_tensors; i++)
        if (f->tensors[i].name && !strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

static lora_status get_typed(const gguf_file *f, const char *key, uint32_t type,
                             const gguf_kv **out, lora_error *err) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return lora_errorf(err, LORA_ERR_MISSING, "%s: key '%s' is missing", f->path, key);
    if (kv->type != type)
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: key '%s' has type %s, expected %s", f->path,
                           key, gguf_type_name(kv->type), gguf_type_name(type));
    *out = kv;
    return LORA_OK;
}

lora_status gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, lora_error *err) {
    const gguf_kv *kv;
    lora_status    st = get_typed(f, key, GGUF_TYPE_U32, &kv, err);
    if (st == LORA_OK) memcpy(out, kv->data, sizeof *out);
    return st;
}

lora_status gguf_get_f32(const gguf_file *f, const char *key, float *out, lora_error *err) {
    const gguf_kv *kv;
    lora_status    st = get_typed(f, key, GGUF_TYPE_F32, &kv, err);
    if (st == LORA_OK) memcpy(out, kv->data, sizeof *out);
    return st;
}

lora_status gguf_get_str(const gguf_file *f, const char *key, gguf_str *out, lora_error *err) {
    const gguf_kv *kv;
    lora_status    st = get_typed(f, key, GGUF_TYPE_STRING, &kv, err);
    if (st == LORA_OK) *out = kv->str;
    return st;
}

/* A float truncated to int64, 0 when NaN or out of range (the plain cast would be undefined). */
static int64_t to_i64(double x) {
    return x > -9.2e18 && x < 9.2e18 ? (int64_t)x : 0;
}

/* Element i of a numeric kv, as int64 and as double. */
static int kv_elem(const gguf_kv *kv, uint64_t i, int64_t *iv, double *fv) {
    uint32_t type = kv->type == GGUF_TYPE_ARRAY ? kv->arr_type : kv->type;
    size_t   esz  = scalar_size(type);
    if (!esz || !kv->data || i >= kv->n) return 0;
    const uint8_t *p = kv->data + i * esz;
    union {
        uint8_t  u8;
        int8_t   i8;
        uint16_t u16;
        int16_t  i16;
        uint32_t u32;
        int32_t  i32;
        float    f32;
        uint64_t u64;
        int64_t  i64;
        double   f64;
    } v;
    memcpy(&v, p, esz);
    switch (type) {
    case GGUF_TYPE_U8:
    case GGUF_TYPE_BOOL:
        *iv = v.u8, *fv = v.u8;
        break;
    case GGUF_TYPE_I8:
        *iv = v.i8, *fv = v.i8;
        break;
    case GGUF_TYPE_U16:
        *iv = v.u16, *fv = v.u16;
        break;
    case GGUF_TYPE_I16:
        *iv = v.i16, *fv = v.i16;
        break;
    case GGUF_TYPE_U32:
        *iv = v.u32, *fv = v.u32;
        break;
    case GGUF_TYPE_I32:
        *iv = v.i32, *fv = v.i32;
        break;
    case GGUF_TYPE_F32:
        *fv = v.f32, *iv = to_i64(*fv);
        break;
    case GGUF_TYPE_U64:
        *iv = (int64_t)v.u64, *fv = (double)v.u64;
        break;
    case GGUF_TYPE_I64:
        *iv = v.i64, *fv = (double)v.i64;
        break;
    case GGUF_TYPE_F64:
        *fv = v.f64, *iv = to_i64(*fv);
        break;
    default:
        return 0;
    }
    return 1;
}

int64_t gguf_kv_get_i64(const gguf_kv *kv, uint64_t i) {
    int64_t iv = 0;
    double  fv = 0;
    return kv_elem(kv, i, &iv, &fv) ? iv : 0;
}

double gguf_kv_get_f64(const gguf_kv *kv, uint64_t i) {
    int64_t iv = 0;
    double  fv = 0;
    return kv_elem(kv, i, &iv, &fv) ? fv : 0;
}

/* ---- writing ---- */

typedef struct wtensor {
    char         name[GGUF_MAX_NAME];
    uint32_t     type, n_dims;
    int64_t      ne[GGUF_MAX_DIMS];
    size_t       nbytes;
    uint64_t     offset;
    const void  *data;
    gguf_fill_fn fill;
    void        *user;
} wtensor;

struct gguf_writer {
    uint8_t *kv; /* the serialised pairs */
    size_t   kv_len, kv_cap;
    char   **keys;
    int64_t  n_kv, keys_cap;
    wtensor *t;
    int64_t  n_t, t_cap;
    uint32_t alignment;
    int      failed; /* an allocation failed mid-pair: the buffer is inconsistent */
};

gguf_writer *gguf_writer_new(void) {
    gguf_writer *w = calloc(1, sizeof *w);
    if (w) w->alignment = GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void gguf_writer_free(gguf_writer *w) {
    if (!w) return;
    for (int64_t i = 0; i < w->n_kv; i++)
        free(w->keys[i]);
    free(w->keys);
    free(w->kv);
    free(w->t);
    free(w);
}

static int put(gguf_writer *w, const void *p, size_t n) {
    if (n > SIZE_MAX - w->kv_len) return 0;
    if (w->kv_len + n > w->kv_cap) {
        size_t cap = w->kv_cap ? w->kv_cap : 256;
        while (cap < w->kv_len + n)
            cap = cap > SIZE_MAX / 2 ? w->kv_len + n : cap * 2;
        uint8_t *nb = realloc(w->kv, cap);
        if (!nb) return 0;
        w->kv     = nb;
        w->kv_cap = cap;
    }
    if (n) memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
    return 1;
}

static int put_u32(gguf_writer *w, uint32_t v) {
    return put(w, &v, sizeof v);
}

static int put_u64(gguf_writer *w, uint64_t v) {
    return put(w, &v, sizeof v);
}

static int put_str(gguf_writer *w, const char *s, uint64_t n) {
    return put_u64(w, n) && put(w, s, (size_t)n);
}

/* Checks the key, records it and writes the key and the value type. */
static lora_status begin_kv(gguf_writer *w, const char *key, uint32_t type, lora_error *err) {
    if (w->failed) return lora_errorf(err, LORA_ERR_NOMEM, "gguf writer: out of memory");
    if (!key || !key[0]) return lora_errorf(err, LORA_ERR_ARG, "gguf writer: empty key");
    if (type != GGUF_TYPE_U32 && !strcmp(key, "general.alignment"))
        return lora_errorf(err, LORA_ERR_ARG,
                           "gguf writer: general.alignment must be a u32 power of two");
    for (int64_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->keys[i], key))
            return lora_errorf(err, LORA_ERR_ARG, "gguf writer: key '%s' set twice", key);
    if (w->n_kv == w->keys_cap) {
        int64_t cap = w->keys_cap ? 2 * w->keys_cap : 32;
        char  **nk  = realloc(w->keys, (size_t)cap * sizeof *nk);
        if (!nk) return lora_errorf(err, LORA_ERR_NOMEM, "gguf writer: out of memory");
        w->keys     = nk;
        w->keys_cap = cap;
    }
    char *k = strdup(key);
    if (!k) return lora_errorf(err, LORA_ERR_NOMEM, "gguf writer: out of memory");
    if (!put_str(w, key, strlen(key)) || !put_u32(w, type)) {
        free(k);
        w->failed = 1;
        return lora_errorf(err, LORA_ERR_NOMEM, "gguf writer: out of memory");
    }
    w->keys[w->n_kv++] = k;
    return LORA_OK;
}

static lora_status value_failed(gguf_writer *w, lora_error *err) {
    w->failed = 1;
    return lora_errorf(err, LORA_ERR_NOMEM, "gguf writer: out of memory");
}

/* general.alignment configures the layout; its value must be a u32 power of two. */
static lora_status check_alignment_key(const char *key, uint32_t type, const void *val,
                                       uint32_t *alignment, lora_error *err) {
    if (strcmp(key, "general.alignment")) return LORA_OK;
    uint32_t a = 0;
    if (type == GGUF_TYPE_U32) memcpy(&a, val, sizeof a);
    if (type != GGUF_TYPE_U32 || !is_pow2(a))
        return lora_errorf(err, LORA_ERR_ARG,
                           "gguf writer: general.alignment must be a u32 power of two");
    *alignment = a;
    return LORA_OK;
}

static lora_status check_bool_values(const uint8_t *b, uint64_t n, const char *key,
                                     lora_error *err) {
    for (uint64_t i = 0; i < n; i++)
        if (b[i] > 1)
            return lora_errorf(err, LORA_ERR_ARG, "gguf writer: key '%s': bool value %u", key,
                               (unsigned)b[i]);
    return LORA_OK;
}

lora_status gguf_writer_set(gguf_writer *w, const char *key, gguf_type type, const void *val,
                            lora_error *err) {
    size_t      esz       = scalar_size(type);
    uint32_t    alignment = w->alignment;
    lora_status st;
    if (type != GGUF_TYPE_STRING && esz == 0)
        return lora_errorf(err, LORA_ERR_ARG, "gguf writer: key '%s': type %u is not a scalar",
                           key ? key : "", (unsigned)type);
    if (!key || !val) return lora_errorf(err, LORA_ERR_ARG, "gguf writer: NULL key or value");
    if ((st = check_alignment_key(key, type, val, &alignment, err)) != LORA_OK) return st;
    if (type == GGUF_TYPE_BOOL && (st = check_bool_values(val, 1, key, err)) != LORA_OK) return st;
    if ((st = begin_kv(w, key, type, err)) != LORA_OK) return st;
    int ok = type == GGUF_TYPE_STRING ? put_str(w, val, strlen(val)) : put(w, val, esz);
    if (!ok) return value_failed(w, err);
    w->alignment = alignment;
    return LORA_OK;
}

/* Strings given as (pointer, length) pairs, or NUL-terminated when lens is NULL. */
static lora_status set_arr_str(gguf_writer *w, const char *key, const char *const *strs,
                               const uint64_t *lens, uint64_t n, lora_error *err) {
    for (uint64_t i = 0; i < n; i++)
        if (!strs[i])
            return lora_errorf(err, LORA_ERR_ARG, "gguf writer: key '%s': NULL string %llu", key,
                               (unsigned long long)i);
    lora_status st = begin_kv(w, key, GGUF_TYPE_ARRAY, err);
    if (st != LORA_OK) return st;
    if (!put_u32(w, GGUF_TYPE_STRING) || !put_u64(w, n)) return value_failed(w, err);
    for (uint64_t i = 0; i < n; i++)
        if (!put_str(w, strs[i], lens ? lens[i] : strlen(strs[i]))) return value_failed(w, err);
    return LORA_OK;
}

lora_status gguf_writer_set_arr(gguf_writer *w, const char *key, gguf_type elem, const void *data,
                                uint64_t n, lora_error *err) {
    if (elem == GGUF_TYPE_STRING) return set_arr_str(w, key, data, NULL, n, err);
    size_t esz = scalar_size(elem);
    if (esz == 0)
        return lora_errorf(err, LORA_ERR_ARG,
                           "gguf writer: key '%s': array element type %u is not valid",
                           key ? key : "", (unsigned)elem);
    if (n && !data) return lora_errorf(err, LORA_ERR_ARG, "gguf writer: key '%s': NULL data", key);
    if (n > SIZE_MAX / esz)
        return lora_errorf(err, LORA_ERR_ARG, "gguf writer: key '%s': array too long", key);
    lora_status st;
    if (elem == GGUF_TYPE_BOOL && (st = check_bool_values(data, n, key, err)) != LORA_OK) return st;
    if ((st = begin_kv(w, key, GGUF_TYPE_ARRAY, err)) != LORA_OK) return st;
    if (!put_u32(w, elem) || !put_u64(w, n) || !put(w, data, (size_t)n * esz))
        return value_failed(w, err);
    return LORA_OK;
}

lora_status gguf_writer_copy_kv(gguf_writer *w, const gguf_kv *kv, lora_error *err) {
    if (kv->type == GGUF_TYPE_STRING) {
        lora_status st = begin_kv(w, kv->key, GGUF_TYPE_STRING, err);
        if (st != LORA_OK) return st;
        return put_str(w, kv->str.s, kv->str.n) ? LORA_OK : value_failed(w, err);
    }
    if (kv->type == GGUF_TYPE_ARRAY) {
        if (kv->arr_type != GGUF_TYPE_STRING)
            return gguf_writer_set_arr(w, kv->key, (gguf_type)kv->arr_type, kv->data, kv->n, err);
        const char **s = kv->n ? malloc((size_t)kv->n * sizeof *s) : NULL;
        uint64_t    *l = kv->n ? malloc((size_t)kv->n * sizeof *l) : NULL;
        lora_status  st;
        if (kv->n && (!s || !l)) {
            st = lora_errorf(err, LORA_ERR_NOMEM, "gguf writer: out of memory");
        } else {
            for (uint64_t i = 0; i < kv->n; i++)
                s[i] = kv->strs[i].s, l[i] = kv->strs[i].n;
            st = set_arr_str(w, kv->key, s, l, kv->n, err);
        }
        free(s);
        free(l);
        return st;
    }
    return gguf_writer_set(w, kv->key, (gguf_type)kv->type, kv->data, err);
}

static lora_status add_tensor(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                              const int64_t *ne, const void *data, gguf_fill_fn fill, void *user,
                              lora_error *err) {
    if (!name || !name[0] || strlen(name) >= GGUF_MAX_NAME)
        return lora_errorf(err, LORA_ERR_ARG,
                           "gguf writer: tensor name '%s' is empty or longer "
                           "than %d bytes",
                           name ? name : "", GGUF_MAX_NAME - 1);
    size_t esz = gguf_tensor_type_size(type);
    if (esz == 0)
        return lora_errorf(err, LORA_ERR_ARG, "gguf writer: tensor '%s': type %u", name,
                           (unsigned)type);
    if (n_dims > GGUF_MAX_DIMS)
        return lora_errorf(err, LORA_ERR_ARG, "gguf writer: tensor '%s': n_dims %u", name,
                           (unsigned)n_dims);
    for (int64_t i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name))
            return lora_errorf(err, LORA_ERR_ARG, "gguf writer: tensor '%s' added twice", name);
    size_t nbytes = esz;
    for (uint32_t d = 0; d < n_dims; d++)
        if (ne[d] < 0 || (ne[d] > 0 && !lora_mul_ok(nbytes, (size_t)ne[d], &nbytes)))
            return lora_errorf(err, LORA_ERR_ARG, "gguf writer: tensor '%s': bad shape", name);
        else if (ne[d] == 0)
            nbytes = 0;
    if (nbytes && !data && !fill)
        return lora_errorf(err, LORA_ERR_ARG, "gguf writer: tensor '%s': no data", name);
    if (w->n_t == w->t_cap) {
        int64_t  cap = w->t_cap ? 2 * w->t_cap : 64;
        wtensor *nt  = realloc(w->t, (size_t)cap * sizeof *nt);
        if (!nt) return lora_errorf(err, LORA_ERR_NOMEM, "gguf writer: out of memory");
        w->t     = nt;
        w->t_cap = cap;
    }
    wtensor *t = &w->t[w->n_t++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type   = type;
    t->n_dims = n_dims;
    for (int d = 0; d < GGUF_MAX_DIMS; d++)
        t->ne[d] = (uint32_t)d < n_dims ? ne[d] : 1;
    t->nbytes = nbytes;
    t->data   = data;
    t->fill   = fill;
    t->user   = user;
    return LORA_OK;
}

lora_status gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                                   const int64_t *ne, const void *data, lora_error *err) {
    return add_tensor(w, name, type, n_dims, ne, data, NULL, NULL, err);
}

lora_status gguf_writer_add_tensor_fn(gguf_writer *w, const char *name, uint32_t type,
                                      uint32_t n_dims, const int64_t *ne, gguf_fill_fn fill,
                                      void *user, lora_error *err) {
    if (!fill) return lora_errorf(err, LORA_ERR_ARG, "gguf writer: tensor '%s': no fill", name);
    return add_tensor(w, name, type, n_dims, ne, NULL, fill, user, err);
}

static size_t pad_to(size_t n, size_t a) {
    return (a - n % a) % a;
}

static int write_zeros(FILE *fp, size_t n) {
    static const uint8_t zeros[64];
    while (n > 0) {
        size_t k = n < sizeof zeros ? n : sizeof zeros;
        if (fwrite(zeros, 1, k, fp) != k) return 0;
        n -= k;
    }
    return 1;
}

lora_status gguf_writer_write(gguf_writer *w, const char *path, lora_error *err) {
    if (w->failed) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);
    /* layout: offsets, and the largest buffer a fill needs */
    uint64_t off           = 0;
    size_t   scratch_bytes = 0;
    for (int64_t i = 0; i < w->n_t; i++) {
        wtensor *t    = &w->t[i];
        t->offset     = off;
        size_t padded = t->nbytes + pad_to(t->nbytes, w->alignment);
        if (padded < t->nbytes || off > UINT64_MAX - padded)
            return lora_errorf(err, LORA_ERR_ARG, "%s: tensors too large", path);
        off += padded;
        if (t->fill && t->nbytes > scratch_bytes) scratch_bytes = t->nbytes;
    }
    uint8_t *scratch = scratch_bytes ? malloc(scratch_bytes) : NULL;
    if (scratch_bytes && !scratch)
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: cannot allocate %zu bytes", path,
                           scratch_bytes);

    lora_atomic_file af;
    lora_status      st = lora_atomic_open(&af, path, err);
    if (st != LORA_OK) {
        free(scratch);
        return st;
    }
    FILE    *fp  = af.fp;
    int      ok  = 1;
    uint32_t ver = GGUF_VERSION;
    uint64_t nt = (uint64_t)w->n_t, nkv = (uint64_t)w->n_kv;
    size_t   pos = 0;
#define WR(p, n) (ok = ok && fwrite((p), 1, (n), fp) == (n), pos += (n))
    WR(gguf_magic, 4);
    WR(&ver, 4);
    WR(&nt, 8);
    WR(&nkv, 8);
    if (w->kv_len) WR(w->kv, w->kv_len);
    for (int64_t i = 0; i < w->n_t; i++) {
        const wtensor *t  = &w->t[i];
        uint64_t       nl = strlen(t->name);
        WR(&nl, 8);
        WR(t->name, (size_t)nl);
        WR(&t->n_dims, 4);
        for (uint32_t d = 0; d < t->n_dims; d++) {
            uint64_t ne = (uint64_t)t->ne[d];
            WR(&ne, 8);
        }
        WR(&t->type, 4);
        WR(&t->offset, 8);
    }
    ok = ok && write_zeros(fp, pad_to(pos, w->alignment));
#undef WR
    for (int64_t i = 0; ok && i < w->n_t; i++) {
        const wtensor *t   = &w->t[i];
        const void    *src = t->data;
        if (t->fill && t->nbytes) {
            if ((st = t->fill(t->user, scratch, t->nbytes, err)) != LORA_OK) {
                lora_atomic_abort(&af);
                free(scratch);
                return st;
            }
            src = scratch;
        }
        if (t->nbytes) ok = fwrite(src, 1, t->nbytes, fp) == t->nbytes;
        ok = ok && write_zeros(fp, pad_to(t->nbytes, w->alignment));
    }
    free(scratch);
    if (!ok) {
        int e = errno;
        lora_atomic_abort(&af);
        return lora_errorf(err, LORA_ERR_IO, "%s: write failed: %s", path, strerror(e));
    }
    return lora_atomic_commit(&af, err);
}
