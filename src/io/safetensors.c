/*
 * safetensors.c — the safetensors reader (read-only mmap, every header byte distrusted), the
 * sharded-directory opener (model.safetensors.index.json) and the atomic writer.
 *
 * Not a tensor library: tensors stay raw bytes in the mapping; only st_to_f32 converts.
 * Accepted beyond the strict format: gaps between tensors and bytes after the last one (the
 * reference reader rejects both; neither can make us read out of bounds). Never produced by
 * the writer, which lays tensors out back to back in the order they were added.
 * The mapping is trusted to stay as validated: a file truncated by another process while open
 * raises SIGBUS on access, as with any mmap reader.
 */
#include "io/safetensors.h"

#include "core/dtype.h"
#include "core/error.h"
#include "io/fileutil.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian and is used in place: a little-endian host is required"
#endif

#define ST_MAX_HEADER ((uint64_t)100 << 20) /* the reference implementation's limit */
#define ST_JSON_INTMAX 9007199254740992.0   /* 2^53: larger JSON numbers are not exact */
#define ST_QUOTE_MAX 100                    /* bytes of a file-supplied name in a message */

/* ---- dtypes ---- */

static const struct {
    const char *name;
    size_t      size;
} st_dtypes[] = {
    [ST_F32] = {"F32", 4}, [ST_F16] = {"F16", 2},   [ST_BF16] = {"BF16", 2}, [ST_F64] = {"F64", 8},
    [ST_I64] = {"I64", 8}, [ST_I32] = {"I32", 4},   [ST_I16] = {"I16", 2},   [ST_I8] = {"I8", 1},
    [ST_U8] = {"U8", 1},   [ST_BOOL] = {"BOOL", 1},
};
#define ST_N_DTYPES ((int)(sizeof st_dtypes / sizeof st_dtypes[0]))

size_t st_dtype_size(st_dtype t) {
    return (int)t >= 0 && (int)t < ST_N_DTYPES ? st_dtypes[t].size : 0;
}

const char *st_dtype_name(st_dtype t) {
    return (int)t >= 0 && (int)t < ST_N_DTYPES ? st_dtypes[t].name : "?";
}

int st_dtype_parse(const char *s) {
    for (int i = 0; i < ST_N_DTYPES; i++) {
        if (strcmp(s, st_dtypes[i].name) == 0) return i;
    }
    return -1;
}

int st_tensor_aligned(const st_tensor *t, size_t align) {
    if (t->nbytes == 0 || align <= 1) return 1;
    return (uintptr_t)t->data % align == 0;
}

/* ---- helpers ---- */

/* Copies a file-supplied string into out for an error message: control bytes become '?', long
 * strings are cut, so a hostile name can neither break the one-line rule nor flood it. */
static const char *quote(char out[ST_QUOTE_MAX + 4], const char *s) {
    size_t i = 0;
    for (; s[i] && i < ST_QUOTE_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i]          = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    if (s[i]) {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = '\0';
    return out;
}

/* 1 when s[0..n) is well-formed UTF-8 (no overlongs, surrogates or code points > U+10FFFF). */
static int utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t   len;
        unsigned cp, min;
        if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i < len) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3fu);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += len;
    }
    return 1;
}

/* A JSON number that must be an exact non-negative integer. */
typedef enum { JU_OK, JU_NOT_NUMBER, JU_NEGATIVE, JU_FRACTION, JU_TOO_LARGE } json_u64_result;

static json_u64_result json_u64(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return JU_NOT_NUMBER;
    double d = v->valuedouble;
    if (isnan(d)) return JU_FRACTION;
    if (d < 0) return JU_NEGATIVE;
    if (d > ST_JSON_INTMAX) return JU_TOO_LARGE;
    if (d != floor(d)) return JU_FRACTION;
    *out = (uint64_t)d;
    return JU_OK;
}

static const char *json_u64_problem(json_u64_result r) {
    switch (r) {
    case JU_NOT_NUMBER:
        return "is not a number";
    case JU_NEGATIVE:
        return "is negative";
    case JU_FRACTION:
        return "is not an integer";
    case JU_TOO_LARGE:
        return "is too large";
    case JU_OK:
        break;
    }
    return "is invalid";
}

static void format_shape(char *out, size_t n, const int64_t *shape, int32_t ndim) {
    size_t k = 0;
    out[0]   = '\0';
    for (int32_t i = 0; i < ndim && k < n; i++) {
        int w = snprintf(out + k, n - k, "%s%" PRId64, i ? ", " : "", shape[i]);
        if (w < 0) return;
        k += (size_t)w;
    }
}

static uint64_t read_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* ---- reading one file ---- */

typedef struct st_range {
    uint64_t begin, end;
    int32_t  idx;
} st_range;

static int range_cmp(const void *a, const void *b) {
    const st_range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int str_ptr_cmp(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int tensor_name_cmp(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

/* The first string that appears twice in v[0..n) (v is reordered), or NULL. */
static const char *find_duplicate(const char **v, size_t n) {
    qsort(v, n, sizeof *v, str_ptr_cmp);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(v[i - 1], v[i]) == 0) return v[i];
    }
    return NULL;
}

/* Fills t (its name excluded) from one header entry and checks it against the data section. */
static lora_status parse_tensor(st_tensor *t, uint64_t *begin, const cJSON *obj, const char *name,
                                size_t data_size, const char *path, lora_error *err) {
    char q[ST_QUOTE_MAX + 4], q2[ST_QUOTE_MAX + 4];
    quote(q, name);
    if (!cJSON_IsObject(obj)) {
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: tensor '%s' entry is not a JSON object", path,
                           q);
    }

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(obj, "dtype");
    if (!cJSON_IsString(dt)) {
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: tensor '%s' has no string 'dtype'", path, q);
    }
    int dtype = st_dtype_parse(dt->valuestring);
    if (dtype < 0) {
        return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                           "%s: tensor '%s' has unknown dtype '%s' (hint: F32, F16, BF16, F64, "
                           "I64, I32, I16, I8, U8 and BOOL are supported)",
                           path, q, quote(q2, dt->valuestring));
    }
    t->dtype = (st_dtype)dtype;

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(obj, "shape");
    if (!cJSON_IsArray(shape)) {
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: tensor '%s' has no 'shape' array", path, q);
    }
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > ST_MAX_DIMS) {
        return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                           "%s: tensor '%s' has %d dimensions, more than %d", path, q, ndim,
                           ST_MAX_DIMS);
    }
    t->ndim = (int32_t)ndim;

    /* numel must fit size_t (to index the mapping) and int64_t (st_tensor.numel). */
    uint64_t     limit = SIZE_MAX < INT64_MAX ? (uint64_t)SIZE_MAX : (uint64_t)INT64_MAX;
    uint64_t     numel = 1;
    int          i     = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, shape) {
        uint64_t        d;
        json_u64_result r = json_u64(dim, &d);
        if (r != JU_OK) {
            return lora_errorf(err, LORA_ERR_FORMAT, "%s: tensor '%s' shape[%d] %s", path, q, i,
                               json_u64_problem(r));
        }
        if (d != 0 && numel > limit / d) {
            return lora_errorf(err, LORA_ERR_FORMAT,
                               "%s: tensor '%s' shape overflows: its element count does not "
                               "fit in 64 bits",
                               path, q);
        }
        numel         = numel * d;
        t->shape[i++] = (int64_t)d;
    }
    t->numel = (int64_t)numel;
    size_t nbytes;
    if (!lora_mul_ok((size_t)numel, st_dtype_size(t->dtype), &nbytes)) {
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: tensor '%s' byte size (%" PRIu64 " x %zu) overflows", path, q,
                           numel, st_dtype_size(t->dtype));
    }
    t->nbytes = nbytes;

    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(obj, "data_offsets");
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2) {
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: tensor '%s' has no 'data_offsets' array of two integers", path, q);
    }
    uint64_t        b = 0, e = 0;
    json_u64_result rb = json_u64(cJSON_GetArrayItem(offs, 0), &b);
    json_u64_result re = json_u64(cJSON_GetArrayItem(offs, 1), &e);
    if (rb != JU_OK || re != JU_OK) {
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: tensor '%s' data_offsets %s %s", path, q,
                           rb != JU_OK ? "begin" : "end", json_u64_problem(rb != JU_OK ? rb : re));
    }
    if (e < b) {
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: tensor '%s' data_offsets [%" PRIu64 ", %" PRIu64
                           "] end before begin",
                           path, q, b, e);
    }
    if (e > data_size) {
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: tensor '%s' data_offsets [%" PRIu64 ", %" PRIu64
                           "] outside data section of %zu bytes",
                           path, q, b, e, data_size);
    }
    if (e - b != nbytes) {
        char s[256];
        format_shape(s, sizeof s, t->shape, t->ndim);
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: tensor '%s' data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
                           " bytes but %s [%s] needs %zu",
                           path, q, b, e, e - b, st_dtype_name(t->dtype), s, nbytes);
    }
    *begin = b;
    return LORA_OK;
}

static lora_status parse_metadata(st_file *f, const cJSON *obj, lora_error *err) {
    if (!cJSON_IsObject(obj)) {
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: '__metadata__' is not a JSON object",
                           f->path);
    }
    int n = cJSON_GetArraySize(obj);
    if (n == 0) return LORA_OK;
    f->meta_keys = calloc((size_t)n, sizeof *f->meta_keys);
    f->meta_vals = calloc((size_t)n, sizeof *f->meta_vals);
    if (!f->meta_keys || !f->meta_vals) {
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory for metadata", f->path);
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, obj) {
        char q[ST_QUOTE_MAX + 4];
        if (!cJSON_IsString(it)) {
            return lora_errorf(err, LORA_ERR_FORMAT,
                               "%s: '__metadata__' value of '%s' is not a string", f->path,
                               quote(q, it->string));
        }
        char *k = strdup(it->string), *v = strdup(it->valuestring);
        if (!k || !v) {
            free(k);
            free(v);
            return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory for metadata", f->path);
        }
        f->meta_keys[f->n_meta] = k;
        f->meta_vals[f->n_meta] = v;
        f->n_meta++;
    }
    const char **keys = malloc((size_t)n * sizeof *keys);
    if (!keys) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory for metadata", f->path);
    memcpy(keys, f->meta_keys, (size_t)n * sizeof *keys);
    const char *dup = find_duplicate(keys, (size_t)n);
    char        q[ST_QUOTE_MAX + 4];
    if (dup) quote(q, dup);
    free(keys);
    if (dup) {
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: '__metadata__' has key '%s' twice", f->path,
                           q);
    }
    return LORA_OK;
}

/* Parses the header text (NUL-terminated, n bytes) into f's tensors and metadata. */
static lora_status parse_header(st_file *f, const char *hdr, size_t n, const char *data,
                                size_t data_size, lora_error *err) {
    const char *path   = f->path;
    lora_status st     = LORA_OK;
    cJSON      *root   = NULL;
    st_range   *ranges = NULL;

    if (memchr(hdr, '\0', n)) {
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: header contains a NUL byte", path);
    }
    if (hdr[0] != '{') {
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: header does not start with '{' (hint: not a safetensors file?)",
                           path);
    }
    if (!utf8_valid((const unsigned char *)hdr, n)) {
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: header is not valid UTF-8", path);
    }
    const char *end = NULL;
    root            = cJSON_ParseWithLengthOpts(hdr, n, &end, 0);
    if (!root) {
        size_t at = end && end >= hdr && end <= hdr + n ? (size_t)(end - hdr) : 0;
        return lora_errorf(err, LORA_ERR_FORMAT,
                           "%s: header is not valid JSON (near byte %zu of %zu)", path, at, n);
    }
    for (const char *p = end; p < hdr + n; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            st = lora_errorf(err, LORA_ERR_FORMAT,
                             "%s: header has bytes after its JSON object (at byte %zu)", path,
                             (size_t)(p - hdr));
            goto done;
        }
    }
    if (!cJSON_IsObject(root)) {
        st = lora_errorf(err, LORA_ERR_FORMAT, "%s: header is not a JSON object", path);
        goto done;
    }

    int          n_entries = cJSON_GetArraySize(root);
    int          n_meta    = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, root) {
        if (strcmp(it->string, "__metadata__") == 0) n_meta++;
    }
    if (n_meta > 1) {
        st = lora_errorf(err, LORA_ERR_FORMAT, "%s: header has '__metadata__' twice", path);
        goto done;
    }
    int n_tensors = n_entries - n_meta;
    if (n_tensors > 0) {
        f->tensors = calloc((size_t)n_tensors, sizeof *f->tensors);
        ranges     = malloc((size_t)n_tensors * sizeof *ranges);
        if (!f->tensors || !ranges) {
            st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory for %d tensors", path,
                             n_tensors);
            goto done;
        }
    }

    cJSON_ArrayForEach(it, root) {
        if (strcmp(it->string, "__metadata__") == 0) {
            st = parse_metadata(f, it, err);
            if (st != LORA_OK) goto done;
            continue;
        }
        st_tensor *t = &f->tensors[f->n_tensors];
        uint64_t   b = 0;
        st           = parse_tensor(t, &b, it, it->string, data_size, path, err);
        if (st != LORA_OK) goto done;
        t->name = strdup(it->string);
        if (!t->name) {
            st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory for tensor names", path);
            goto done;
        }
        t->data = data + b;
        f->n_tensors++;
    }

    if (f->n_tensors > 1) {
        char q[ST_QUOTE_MAX + 4], q2[ST_QUOTE_MAX + 4];
        /* Sorted by name: duplicates become neighbours and st_find is a binary search. */
        qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, tensor_name_cmp);
        for (int32_t i = 1; i < f->n_tensors; i++) {
            if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
                st = lora_errorf(err, LORA_ERR_FORMAT, "%s: tensor '%s' appears twice", path,
                                 quote(q, f->tensors[i].name));
                goto done;
            }
        }
        for (int32_t i = 0; i < f->n_tensors; i++) {
            const st_tensor *t = &f->tensors[i];
            uint64_t         b = (uint64_t)((const char *)t->data - data);
            ranges[i]          = (st_range){b, b + t->nbytes, i};
        }
        /* Zero-byte tensors occupy nothing and may sit anywhere; the rest must not share a
         * byte: after sorting by begin, each must start at or after the furthest end so far. */
        qsort(ranges, (size_t)f->n_tensors, sizeof *ranges, range_cmp);
        int32_t far = -1;
        for (int32_t i = 0; i < f->n_tensors; i++) {
            const st_range *r = &ranges[i];
            if (r->end == r->begin) continue;
            if (far >= 0 && r->begin < ranges[far].end) {
                const st_range *o = &ranges[far];
                quote(q, f->tensors[o->idx].name);
                quote(q2, f->tensors[r->idx].name);
                st = lora_errorf(err, LORA_ERR_FORMAT,
                                 "%s: tensors '%s' [%" PRIu64 ", %" PRIu64 "] and '%s' [%" PRIu64
                                 ", %" PRIu64 "] overlap",
                                 path, q, o->begin, o->end, q2, r->begin, r->end);
                goto done;
            }
            if (far < 0 || r->end > ranges[far].end) far = i;
        }
    }

done:
    free(ranges);
    cJSON_Delete(root);
    return st;
}

lora_status st_open(st_file *f, const char *path, lora_error *err) {
    st_file     tmp;
    lora_status st  = LORA_OK;
    char       *hdr = NULL;
    int         fd  = -1;
    memset(f, 0, sizeof *f);
    memset(&tmp, 0, sizeof tmp);

    tmp.path = strdup(path);
    if (!tmp.path) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", path);

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        st = lora_errorf(err, e == ENOENT ? LORA_ERR_MISSING : LORA_ERR_IO, "%s: cannot open: %s",
                         path, strerror(e));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = lora_errorf(err, LORA_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = lora_errorf(err, LORA_ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    if (sb.st_size < 8) {
        st = lora_errorf(err, LORA_ERR_FORMAT,
                         "%s: file is %lld bytes, shorter than the 8-byte header length", path,
                         (long long)sb.st_size);
        goto fail;
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: file of %lld bytes cannot be mapped", path,
                         (long long)sb.st_size);
        goto fail;
    }
    tmp.size = (size_t)sb.st_size;
    tmp.map  = mmap(NULL, tmp.size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (tmp.map == MAP_FAILED) {
        tmp.map = NULL;
        st      = lora_errorf(err, LORA_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
        goto fail;
    }
    close(fd);
    fd = -1;
#ifdef MADV_HUGEPAGE
    /* The weights are streamed whole (every decoded token reads each once): ask for huge pages
     * where the page cache can give them — parts read from disk after this come in 2 MiB
     * folios mapped by one entry, and 4 KiB page walks (costly in a virtual machine) go.
     * Advice only: a kernel without it returns an error that changes nothing. */
    (void)madvise(tmp.map, tmp.size, MADV_HUGEPAGE);
#endif

    const unsigned char *bytes = tmp.map;
    uint64_t             n     = read_le64(bytes);
    if (n > tmp.size - 8) {
        st = lora_errorf(err, LORA_ERR_FORMAT,
                         "%s: header length %" PRIu64 " exceeds file size %zu (hint: truncated "
                         "download, or not a safetensors file?)",
                         path, n, tmp.size);
        goto fail;
    }
    if (n > ST_MAX_HEADER) {
        st = lora_errorf(err, LORA_ERR_FORMAT,
                         "%s: header length %" PRIu64 " exceeds the limit of %" PRIu64 " bytes",
                         path, n, ST_MAX_HEADER);
        goto fail;
    }
    if (n < 2) {
        st = lora_errorf(err, LORA_ERR_FORMAT,
                         "%s: header length %" PRIu64 " is too short for a JSON object", path, n);
        goto fail;
    }
    /* A private NUL-terminated copy: the JSON parser never sees the mapping. */
    hdr = malloc((size_t)n + 1);
    if (!hdr) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory for a %" PRIu64 "-byte header",
                         path, n);
        goto fail;
    }
    memcpy(hdr, bytes + 8, (size_t)n);
    hdr[n] = '\0';

    const char *data = (const char *)bytes + 8 + n;
    st               = parse_header(&tmp, hdr, (size_t)n, data, tmp.size - 8 - (size_t)n, err);
    if (st != LORA_OK) goto fail;

    free(hdr);
    *f = tmp;
    return LORA_OK;

fail:
    free(hdr);
    if (fd >= 0) close(fd);
    st_close(&tmp);
    return st;
}

void st_close(st_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->size);
    for (int32_t i = 0; i < f->n_tensors; i++)
        free((char *)f->tensors[i].name);
    free(f->tensors);
    for (int32_t i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->meta_keys);
    free(f->meta_vals);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name) {
    int32_t lo = 0, hi = f->n_tensors; /* tensors are sorted by name */
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        int     c   = strcmp(f->tensors[mid].name, name);
        if (c == 0) return &f->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *st_meta(const st_file *f, const char *key) {
    for (int32_t i = 0; i < f->n_meta; i++) {
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    }
    return NULL;
}

void st_tensor_release(const st_tensor *t) {
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || !t->data || t->nbytes == 0) return;
    uintptr_t p = (uintptr_t)page, start = (uintptr_t)t->data;
    uintptr_t a = (start + p - 1) / p * p, b = (start + t->nbytes) / p * p;
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED); /* advisory: a failure changes nothing */
}

lora_status st_to_f32(float *dst, const st_tensor *t, const char *path, lora_error *err) {
    char   q[ST_QUOTE_MAX + 4];
    size_t esize = st_dtype_size(t->dtype), need;
    if (t->numel < 0 || !lora_mul_ok((size_t)t->numel, esize, &need) || need != t->nbytes) {
        return lora_errorf(err, LORA_ERR_ARG, "%s: tensor '%s' byte size disagrees with its shape",
                           path, quote(q, t->name));
    }
    size_t               n = (size_t)t->numel;
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case ST_F32:
        if (n) memcpy(dst, p, n * sizeof(float));
        return LORA_OK;
    case ST_F16:
    case ST_BF16: {
        int f16 = t->dtype == ST_F16;
        if (st_tensor_aligned(t, sizeof(uint16_t))) {
            const uint16_t *h = t->data;
            if (f16)
                lora_f16_to_f32_n(dst, h, n);
            else
                lora_bf16_to_f32_n(dst, h, n);
        } else {
            for (size_t i = 0; i < n; i++) {
                uint16_t h = (uint16_t)(p[2 * i] | (p[2 * i + 1] << 8));
                dst[i]     = f16 ? lora_f16_to_f32(h) : lora_bf16_to_f32(h);
            }
        }
        return LORA_OK;
    }
    default:
        return lora_errorf(err, LORA_ERR_UNSUPPORTED,
                           "%s: tensor '%s' has dtype %s (hint: only F32, F16 and BF16 convert "
                           "to F32)",
                           path, quote(q, t->name), st_dtype_name(t->dtype));
    }
}

/* ---- a model directory ---- */

typedef struct st_owner {
    const char *name;
    int32_t     file;
} st_owner;

static int owner_cmp(const void *a, const void *b) {
    const st_owner *x = a, *y = b;
    int             c = strcmp(x->name, y->name);
    if (c) return c;
    return (x->file > y->file) - (x->file < y->file);
}

/* Every tensor name must live in one shard only, so st_set_find is unambiguous. */
static lora_status check_unique_across(const st_set *s, const char *index_path, lora_error *err) {
    size_t total = 0;
    for (int32_t i = 0; i < s->n_files; i++)
        total += (size_t)s->files[i].n_tensors;
    if (total < 2) return LORA_OK;
    st_owner *all = malloc(total * sizeof *all);
    if (!all) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", index_path);
    size_t k = 0;
    for (int32_t i = 0; i < s->n_files; i++) {
        for (int32_t j = 0; j < s->files[i].n_tensors; j++) {
            all[k++] = (st_owner){s->files[i].tensors[j].name, i};
        }
    }
    qsort(all, total, sizeof *all, owner_cmp);
    lora_status st = LORA_OK;
    for (size_t i = 1; i < total; i++) {
        if (strcmp(all[i - 1].name, all[i].name) == 0) {
            char q[ST_QUOTE_MAX + 4];
            st = lora_errorf(err, LORA_ERR_FORMAT, "%s: tensor '%s' is stored in both %s and %s",
                             index_path, quote(q, all[i].name), s->files[all[i - 1].file].path,
                             s->files[all[i].file].path);
            break;
        }
    }
    free(all);
    return st;
}

static int plain_file_name(const char *s) {
    return s[0] && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* One weight_map entry; both strings borrowed from the parsed index. */
typedef struct st_entry {
    const char *tensor;
    const char *shard;
    int32_t     file; /* index into st_set.files */
} st_entry;

static int entry_shard_cmp(const void *a, const void *b) {
    return strcmp(((const st_entry *)a)->shard, ((const st_entry *)b)->shard);
}

static int entry_tensor_cmp(const void *a, const void *b) {
    return strcmp(((const st_entry *)a)->tensor, ((const st_entry *)b)->tensor);
}

static lora_status open_index(st_set *s, const char *dir, const char *index_path, lora_error *err) {
    lora_status st      = LORA_OK;
    char       *text    = NULL;
    size_t      len     = 0;
    cJSON      *root    = NULL;
    st_entry   *entries = NULL;
    char        q[ST_QUOTE_MAX + 4], q2[ST_QUOTE_MAX + 4];

    st = lora_read_file(index_path, &text, &len, err);
    if (st != LORA_OK) return st;
    const char *end = NULL;
    root            = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t at = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
        st =
            lora_errorf(err, LORA_ERR_FORMAT, "%s: not valid JSON (near byte %zu)", index_path, at);
        goto done;
    }
    const cJSON *map =
        cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(map)) {
        st = lora_errorf(err, LORA_ERR_FORMAT, "%s: no 'weight_map' object", index_path);
        goto done;
    }
    int n = cJSON_GetArraySize(map);
    if (n <= 0) {
        st = lora_errorf(err, LORA_ERR_FORMAT, "%s: 'weight_map' is empty", index_path);
        goto done;
    }
    entries = malloc((size_t)n * sizeof *entries);
    if (!entries) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", index_path);
        goto done;
    }
    int          k = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, map) {
        if (!cJSON_IsString(it) || !plain_file_name(it->valuestring)) {
            st = lora_errorf(err, LORA_ERR_FORMAT,
                             "%s: weight_map entry '%s' does not name a file in the directory",
                             index_path, quote(q, it->string));
            goto done;
        }
        entries[k++] = (st_entry){it->string, it->valuestring, -1};
    }

    /* Tensor names unique: sort by tensor; then group by shard to number the files. */
    qsort(entries, (size_t)n, sizeof *entries, entry_tensor_cmp);
    for (int i = 1; i < n; i++) {
        if (strcmp(entries[i - 1].tensor, entries[i].tensor) == 0) {
            st = lora_errorf(err, LORA_ERR_FORMAT, "%s: weight_map lists tensor '%s' twice",
                             index_path, quote(q, entries[i].tensor));
            goto done;
        }
    }
    qsort(entries, (size_t)n, sizeof *entries, entry_shard_cmp);
    int32_t n_shards = 0;
    for (int i = 0; i < n; i++) {
        if (i == 0 || strcmp(entries[i - 1].shard, entries[i].shard) != 0) n_shards++;
        entries[i].file = n_shards - 1;
    }

    s->files = calloc((size_t)n_shards, sizeof *s->files);
    if (!s->files) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", index_path);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        if (i > 0 && entries[i].file == entries[i - 1].file) continue;
        char       path[4096];
        lora_error inner;
        st = lora_path_join(path, sizeof path, dir, entries[i].shard, err);
        if (st != LORA_OK) goto done;
        st = st_open(&s->files[s->n_files], path, &inner);
        if (st != LORA_OK) {
            lora_errorf(err, st, "%s (hint: listed in %s)", inner.msg, index_path);
            goto done;
        }
        s->n_files++;
    }
    for (int i = 0; i < n; i++) {
        if (!st_find(&s->files[entries[i].file], entries[i].tensor)) {
            st = lora_errorf(err, LORA_ERR_MISSING,
                             "%s: tensor '%s' is not in shard '%s' where weight_map puts it",
                             index_path, quote(q, entries[i].tensor), quote(q2, entries[i].shard));
            goto done;
        }
    }
    st = check_unique_across(s, index_path, err);

done:
    free(entries);
    cJSON_Delete(root);
    free(text);
    return st;
}

lora_status st_set_open_dir(st_set *s, const char *dir, lora_error *err) {
    char        single[4096], index[4096];
    struct stat sb;
    lora_status st;
    memset(s, 0, sizeof *s);

    st = lora_path_join(single, sizeof single, dir, "model.safetensors", err);
    if (st != LORA_OK) return st;
    st = lora_path_join(index, sizeof index, dir, "model.safetensors.index.json", err);
    if (st != LORA_OK) return st;

    if (stat(single, &sb) == 0) {
        s->files = calloc(1, sizeof *s->files);
        if (!s->files) return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory", single);
        st = st_open(&s->files[0], single, err);
        if (st != LORA_OK) {
            st_set_close(s);
            return st;
        }
        s->n_files = 1;
        return LORA_OK;
    }
    if (errno != ENOENT) {
        return lora_errorf(err, LORA_ERR_IO, "%s: cannot stat: %s", single, strerror(errno));
    }
    if (stat(index, &sb) != 0) {
        if (errno == ENOENT) {
            return lora_errorf(err, LORA_ERR_MISSING,
                               "%s: neither model.safetensors nor model.safetensors.index.json "
                               "is there (hint: expected a Hugging Face model directory)",
                               dir);
        }
        return lora_errorf(err, LORA_ERR_IO, "%s: cannot stat: %s", index, strerror(errno));
    }
    st = open_index(s, dir, index, err);
    if (st != LORA_OK) st_set_close(s);
    return st;
}

void st_set_close(st_set *s) {
    if (!s) return;
    for (int32_t i = 0; i < s->n_files; i++)
        st_close(&s->files[i]);
    free(s->files);
    memset(s, 0, sizeof *s);
}

const st_tensor *st_set_find(const st_set *s, const char *name, const st_file **file) {
    for (int32_t i = 0; i < s->n_files; i++) {
        const st_tensor *t = st_find(&s->files[i], name);
        if (t) {
            if (file) *file = &s->files[i];
            return t;
        }
    }
    if (file) *file = NULL;
    return NULL;
}

/* ---- writing ---- */

typedef struct st_wtensor {
    char       *name; /* owned */
    st_dtype    dtype;
    int32_t     ndim;
    int64_t     shape[ST_MAX_DIMS];
    const void *data; /* borrowed */
    size_t      nbytes;
} st_wtensor;

struct st_writer {
    st_wtensor *tensors;
    int32_t     n_tensors, cap_tensors;
    char      **meta_keys; /* owned */
    char      **meta_vals; /* owned */
    int32_t     n_meta, cap_meta;
};

st_writer *st_writer_new(void) {
    return calloc(1, sizeof(st_writer));
}

void st_writer_free(st_writer *w) {
    if (!w) return;
    for (int32_t i = 0; i < w->n_tensors; i++)
        free(w->tensors[i].name);
    free(w->tensors);
    for (int32_t i = 0; i < w->n_meta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_vals[i]);
    }
    free(w->meta_keys);
    free(w->meta_vals);
    free(w);
}

/* Grows *arr (of elem-byte items, *cap of them) to hold one more than n. 0 on failure. */
static int grow(void **arr, int32_t *cap, int32_t n, size_t elem) {
    if (n < *cap) return 1;
    if (*cap > INT32_MAX / 2) return 0;
    int32_t nc = *cap ? *cap * 2 : 16;
    void   *p  = realloc(*arr, (size_t)nc * elem);
    if (!p) return 0;
    *arr = p;
    *cap = nc;
    return 1;
}

lora_status st_writer_add(st_writer *w, const char *name, st_dtype dtype, int32_t ndim,
                          const int64_t *shape, const void *data, lora_error *err) {
    char q[ST_QUOTE_MAX + 4];
    if (!name || !name[0] || strcmp(name, "__metadata__") == 0) {
        return lora_errorf(err, LORA_ERR_ARG, "safetensors writer: invalid tensor name '%s'",
                           name ? quote(q, name) : "(null)");
    }
    quote(q, name);
    if (!utf8_valid((const unsigned char *)name, strlen(name))) {
        return lora_errorf(err, LORA_ERR_ARG, "safetensors writer: tensor name '%s' is not UTF-8",
                           q);
    }
    if (st_dtype_size(dtype) == 0) {
        return lora_errorf(err, LORA_ERR_ARG, "safetensors writer: tensor '%s' has invalid dtype",
                           q);
    }
    if (ndim < 0 || ndim > ST_MAX_DIMS || (ndim > 0 && !shape)) {
        return lora_errorf(err, LORA_ERR_ARG,
                           "safetensors writer: tensor '%s' has %d dimensions (0 to %d allowed)", q,
                           (int)ndim, ST_MAX_DIMS);
    }
    size_t numel = 1;
    for (int32_t i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (uint64_t)shape[i] > (uint64_t)ST_JSON_INTMAX ||
            !lora_mul_ok(numel, (size_t)shape[i], &numel) || numel > (size_t)INT64_MAX) {
            return lora_errorf(err, LORA_ERR_ARG,
                               "safetensors writer: tensor '%s' has invalid dimension %" PRId64, q,
                               shape[i]);
        }
    }
    size_t nbytes;
    if (!lora_mul_ok(numel, st_dtype_size(dtype), &nbytes)) {
        return lora_errorf(err, LORA_ERR_ARG, "safetensors writer: tensor '%s' is too large", q);
    }
    if (nbytes > 0 && !data) {
        return lora_errorf(err, LORA_ERR_ARG, "safetensors writer: tensor '%s' has no data", q);
    }
    for (int32_t i = 0; i < w->n_tensors; i++) {
        if (strcmp(w->tensors[i].name, name) == 0) {
            return lora_errorf(err, LORA_ERR_ARG, "safetensors writer: tensor '%s' was added twice",
                               q);
        }
    }
    if (!grow((void **)&w->tensors, &w->cap_tensors, w->n_tensors, sizeof *w->tensors)) {
        return lora_errorf(err, LORA_ERR_NOMEM, "safetensors writer: out of memory");
    }
    st_wtensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) return lora_errorf(err, LORA_ERR_NOMEM, "safetensors writer: out of memory");
    t->dtype = dtype;
    t->ndim  = ndim;
    if (ndim > 0) memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->data   = data;
    t->nbytes = nbytes;
    w->n_tensors++;
    return LORA_OK;
}

lora_status st_writer_meta(st_writer *w, const char *key, const char *value, lora_error *err) {
    char q[ST_QUOTE_MAX + 4];
    if (!key || !value || !utf8_valid((const unsigned char *)key, strlen(key)) ||
        !utf8_valid((const unsigned char *)value, strlen(value))) {
        return lora_errorf(err, LORA_ERR_ARG,
                           "safetensors writer: metadata key '%s' or its value is missing or "
                           "not UTF-8",
                           key ? quote(q, key) : "(null)");
    }
    char *v = strdup(value);
    if (!v) return lora_errorf(err, LORA_ERR_NOMEM, "safetensors writer: out of memory");
    for (int32_t i = 0; i < w->n_meta; i++) {
        if (strcmp(w->meta_keys[i], key) == 0) {
            free(w->meta_vals[i]);
            w->meta_vals[i] = v;
            return LORA_OK;
        }
    }
    if (!grow((void **)&w->meta_keys, &w->cap_meta, w->n_meta, sizeof *w->meta_keys)) {
        free(v);
        return lora_errorf(err, LORA_ERR_NOMEM, "safetensors writer: out of memory");
    }
    /* meta_vals follows meta_keys' capacity. */
    char **vals = realloc(w->meta_vals, (size_t)w->cap_meta * sizeof *vals);
    char  *k    = strdup(key);
    if (vals) w->meta_vals = vals;
    if (!vals || !k) {
        free(k);
        free(v);
        return lora_errorf(err, LORA_ERR_NOMEM, "safetensors writer: out of memory");
    }
    w->meta_keys[w->n_meta] = k;
    w->meta_vals[w->n_meta] = v;
    w->n_meta++;
    return LORA_OK;
}

/* A growable text buffer; oom sticks once set. */
typedef struct sbuf {
    char  *p;
    size_t n, cap;
    int    oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (n > SIZE_MAX - b->n - 1) {
        b->oom = 1;
        return;
    }
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1)
            nc = nc > SIZE_MAX / 2 ? b->n + n + 1 : nc * 2;
        char *p = realloc(b->p, nc);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p   = p;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_puts(sbuf *b, const char *s) {
    sb_put(b, s, strlen(s));
}

static void sb_u64(sbuf *b, uint64_t v) {
    char tmp[24];
    int  k = snprintf(tmp, sizeof tmp, "%" PRIu64, v);
    sb_put(b, tmp, (size_t)k);
}

/* A JSON string literal: quotes, backslashes and control bytes escaped; UTF-8 kept as is. */
static void sb_json_str(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sb_put(b, e, 2);
        } else if (c < 0x20) {
            char e[8];
            snprintf(e, sizeof e, "\\u%04x", c);
            sb_put(b, e, 6);
        } else {
            sb_put(b, p, 1);
        }
    }
    sb_put(b, "\"", 1);
}

/* The header JSON, padded with spaces so that 8 + its length is a multiple of 8. */
static int build_header(const st_writer *w, sbuf *b) {
    sb_puts(b, "{");
    if (w->n_meta > 0) {
        sb_puts(b, "\"__metadata__\":{");
        for (int32_t i = 0; i < w->n_meta; i++) {
            if (i) sb_puts(b, ",");
            sb_json_str(b, w->meta_keys[i]);
            sb_puts(b, ":");
            sb_json_str(b, w->meta_vals[i]);
        }
        sb_puts(b, "}");
    }
    uint64_t off = 0;
    for (int32_t i = 0; i < w->n_tensors; i++) {
        const st_wtensor *t = &w->tensors[i];
        if (i || w->n_meta > 0) sb_puts(b, ",");
        sb_json_str(b, t->name);
        sb_puts(b, ":{\"dtype\":\"");
        sb_puts(b, st_dtype_name(t->dtype));
        sb_puts(b, "\",\"shape\":[");
        for (int32_t d = 0; d < t->ndim; d++) {
            if (d) sb_puts(b, ",");
            sb_u64(b, (uint64_t)t->shape[d]);
        }
        sb_puts(b, "],\"data_offsets\":[");
        if (t->nbytes > UINT64_MAX - off) return 0;
        sb_u64(b, off);
        sb_puts(b, ",");
        off += t->nbytes;
        sb_u64(b, off);
        sb_puts(b, "]}");
    }
    sb_puts(b, "}");
    while (!b->oom && b->n % 8 != 0)
        sb_puts(b, " ");
    return !b->oom;
}

lora_status st_writer_write(st_writer *w, const char *path, lora_error *err) {
    sbuf b = {0};
    if (!build_header(w, &b)) {
        free(b.p);
        return lora_errorf(err, LORA_ERR_NOMEM, "%s: out of memory building the header", path);
    }

    lora_atomic_file af;
    lora_status      st = lora_atomic_open(&af, path, err);
    if (st != LORA_OK) {
        free(b.p);
        return st;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)b.n >> (8 * i));
    int ok = fwrite(len8, 1, 8, af.fp) == 8 && fwrite(b.p, 1, b.n, af.fp) == b.n;
    for (int32_t i = 0; ok && i < w->n_tensors; i++) {
        const st_wtensor *t = &w->tensors[i];
        if (t->nbytes > 0) ok = fwrite(t->data, 1, t->nbytes, af.fp) == t->nbytes;
    }
    free(b.p);
    if (!ok) {
        int e = errno;
        lora_atomic_abort(&af);
        return lora_errorf(err, LORA_ERR_IO, "%s: write failed: %s", path, strerror(e));
    }
    return lora_atomic_commit(&af, err);
}
