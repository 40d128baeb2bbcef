/*
 * test_gguf.c — the GGUF container and GPT-2 as GGUF:
 *  - writer -> reader round trip of every value type, arrays, tensors, the v3 layout;
 *    copying a file pair by pair gives the same bytes;
 *  - hostile files: every truncation of a valid file, bad magic and versions, lengths and
 *    counts past the end, n_dims > 4, ne overflow, misaligned / out-of-range / overlapping
 *    offsets, unknown tensor types, duplicate names: each a one-line "<file>: <problem>";
 *  - a full disk during the write leaves no temporary and the old file in place;
 *  - a tiny model exported and loaded back gives the HF directory's logits bit for bit (F32,
 *    F16), untied heads, the tokenizer keys, bad model files;
 *  - LoRA adapter GGUFs (q,v slices, all linears with rsLoRA, mixed ranks folded into B) merged
 *    with llama.cpp's rule W + user_scale·(alpha / r)·B·A give our adapter's logits.
 */
#include "core/rng.h"
#include "io/gguf.h"
#include "model/gpt2.h"
#include "test_helper.h"
#include "tiny_model.h"

#include <dirent.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>

static char root[1024];

static void tpath(char *out, const char *name) {
    snprintf(out, 4096, "%s/%s", root, name);
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return;
    if (n) fwrite(p, 1, n, fp);
    fclose(fp);
}

static int count_prefixed(const char *prefix) {
    DIR *d = opendir(root);
    int  n = 0;
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d));)
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

/* ---- raw files ---- */

typedef struct rb {
    uint8_t b[8192];
    size_t  n;
} rb;

static void rb_put(rb *r, const void *p, size_t n) {
    if (r->n + n > sizeof r->b) return;
    memcpy(r->b + r->n, p, n);
    r->n += n;
}
static void rb_u32(rb *r, uint32_t v) {
    rb_put(r, &v, 4);
}
static void rb_u64(rb *r, uint64_t v) {
    rb_put(r, &v, 8);
}
static void rb_str(rb *r, const char *s) {
    rb_u64(r, strlen(s));
    rb_put(r, s, strlen(s));
}
static void rb_pad(rb *r, size_t a) {
    static const uint8_t z[64];
    rb_put(r, z, (a - r->n % a) % a);
}
static void rb_hdr(rb *r, uint32_t ver, uint64_t nt, uint64_t nkv) {
    r->n = 0;
    rb_put(r, "GGUF", 4);
    rb_u32(r, ver);
    rb_u64(r, nt);
    rb_u64(r, nkv);
}
static void rb_kv_u32(rb *r, const char *k, uint32_t v) {
    rb_str(r, k);
    rb_u32(r, GGUF_TYPE_U32);
    rb_u32(r, v);
}
static void rb_tensor(rb *r, const char *name, uint32_t nd, const uint64_t *ne, uint32_t type,
                      uint64_t off) {
    rb_str(r, name);
    rb_u32(r, nd);
    for (uint32_t d = 0; d < nd; d++)
        rb_u64(r, ne[d]);
    rb_u32(r, type);
    rb_u64(r, off);
}
/* Pads to 32 and appends n bytes of data. */
static void rb_data(rb *r, size_t n) {
    rb_pad(r, 32);
    for (size_t i = 0; i < n; i++) {
        uint8_t v = (uint8_t)i;
        rb_put(r, &v, 1);
    }
}

/* Opens a crafted file expecting `want`, a message naming the file and containing `what`. */
static void expect_bad(const char *label, const rb *r, lora_status want, const char *what) {
    char path[4096];
    tpath(path, "bad.gguf");
    write_bytes(path, r->b, r->n);
    gguf_file  f;
    lora_error err;
    memset(&err, 0, sizeof err);
    lora_status st = gguf_open(&f, path, &err);
    test_condf(st == want, "%s: status %d, expected %d (%s)", label, st, want, err.msg);
    test_condf(strstr(err.msg, path) && strstr(err.msg, what), "%s: message '%s' lacks '%s'", label,
               err.msg, what);
    test_condf(!strchr(err.msg, '\n'), "%s: message is not one line", label);
    test_condf(f.map == NULL && f.kv == NULL, "%s: file left open", label);
    gguf_close(&f);
}

/* ---- round trip ---- */

static void write_sample(const char *path, float *t0, uint16_t *t1) {
    lora_error   err;
    gguf_writer *w  = gguf_writer_new();
    uint8_t      u8 = 200, b = 1;
    int8_t       i8    = -5;
    uint16_t     u16   = 65000;
    int16_t      i16   = -30000;
    uint32_t     u32   = 4000000000u;
    int32_t      i32   = -2000000000;
    float        f32   = 1.5f;
    uint64_t     u64   = 18000000000000000000ull;
    int64_t      i64   = -9000000000000000000ll;
    double       f64   = 3.141592653589793;
    int32_t      ai[3] = {1, -2, 3};
    float        af[2] = {0.25f, -8.0f};
    uint8_t      ab[3] = {1, 0, 1};
    const char  *as[3] = {"alpha", "", "\xc4\xa0the"};
    lora_status  st    = LORA_OK;
    st |= gguf_writer_set_u32(w, "general.alignment", 32, &err);
    st |= gguf_writer_set(w, "v.u8", GGUF_TYPE_U8, &u8, &err);
    st |= gguf_writer_set(w, "v.i8", GGUF_TYPE_I8, &i8, &err);
    st |= gguf_writer_set(w, "v.u16", GGUF_TYPE_U16, &u16, &err);
    st |= gguf_writer_set(w, "v.i16", GGUF_TYPE_I16, &i16, &err);
    st |= gguf_writer_set(w, "v.u32", GGUF_TYPE_U32, &u32, &err);
    st |= gguf_writer_set(w, "v.i32", GGUF_TYPE_I32, &i32, &err);
    st |= gguf_writer_set(w, "v.f32", GGUF_TYPE_F32, &f32, &err);
    st |= gguf_writer_set(w, "v.bool", GGUF_TYPE_BOOL, &b, &err);
    st |= gguf_writer_set_str(w, "v.str", "h\xc3\xa9llo", &err);
    st |= gguf_writer_set(w, "v.u64", GGUF_TYPE_U64, &u64, &err);
    st |= gguf_writer_set(w, "v.i64", GGUF_TYPE_I64, &i64, &err);
    st |= gguf_writer_set(w, "v.f64", GGUF_TYPE_F64, &f64, &err);
    st |= gguf_writer_set_arr(w, "a.i32", GGUF_TYPE_I32, ai, 3, &err);
    st |= gguf_writer_set_arr(w, "a.f32", GGUF_TYPE_F32, af, 2, &err);
    st |= gguf_writer_set_arr(w, "a.bool", GGUF_TYPE_BOOL, ab, 3, &err);
    st |= gguf_writer_set_arr(w, "a.str", GGUF_TYPE_STRING, as, 3, &err);
    st |= gguf_writer_set_arr(w, "a.empty", GGUF_TYPE_U8, NULL, 0, &err);
    test_condf(st == LORA_OK, "setting pairs: %s", err.msg);
    for (int i = 0; i < 6; i++)
        t0[i] = (float)i - 2.5f;
    for (int i = 0; i < 5; i++)
        t1[i] = (uint16_t)(0x3c00 + i);
    int64_t ne0[2] = {3, 2}, ne1[1] = {5};
    test_cond("add t0", gguf_writer_add_tensor(w, "t0", GGUF_TENSOR_F32, 2, ne0, t0, &err) == 0);
    test_cond("add t1", gguf_writer_add_tensor(w, "t1", GGUF_TENSOR_F16, 1, ne1, t1, &err) == 0);
    /* refusals */
    test_cond("dup key", gguf_writer_set_u32(w, "v.u32", 1, &err) == LORA_ERR_ARG);
    test_cond("bad alignment",
              gguf_writer_set_u32(w, "general.alignment", 24, &err) == LORA_ERR_ARG);
    test_cond("dup tensor",
              gguf_writer_add_tensor(w, "t0", GGUF_TENSOR_F32, 2, ne0, t0, &err) == LORA_ERR_ARG);
    test_cond("5 dims",
              gguf_writer_add_tensor(w, "t5", GGUF_TENSOR_F32, 5, ne0, t0, &err) == LORA_ERR_ARG);
    test_cond("quantized", gguf_writer_add_tensor(w, "tq", 2, 1, ne1, t0, &err) == LORA_ERR_ARG);
    char long_name[80];
    memset(long_name, 'x', 64);
    long_name[64] = '\0';
    test_cond("long name", gguf_writer_add_tensor(w, long_name, GGUF_TENSOR_F32, 1, ne1, t0,
                                                  &err) == LORA_ERR_ARG);
    uint8_t two = 2;
    test_cond("bool 2", gguf_writer_set(w, "v.bool2", GGUF_TYPE_BOOL, &two, &err) == LORA_ERR_ARG);
    test_condf(gguf_writer_write(w, path, &err) == LORA_OK, "write: %s", err.msg);
    gguf_writer_free(w);
}

static void test_round_trip(void) {
    char       path[4096];
    float      t0[6];
    uint16_t   t1[5];
    lora_error err;
    gguf_file  f;
    tpath(path, "rt.gguf");
    write_sample(path, t0, t1);
    test_condf(gguf_open(&f, path, &err) == LORA_OK, "open: %s", err.msg);
    if (!f.map) return;
    test_cond("version 3", f.version == 3 && f.alignment == 32);
    test_cond("counts", f.n_kv == 18 && f.n_tensors == 2);
    test_cond("pairs in order",
              !strcmp(f.kv[0].key, "general.alignment") && !strcmp(f.kv[17].key, "a.empty"));
    static const struct {
        const char *key;
        uint32_t    type;
        double      val;
    } want[] = {{"v.u8", GGUF_TYPE_U8, 200},
                {"v.i8", GGUF_TYPE_I8, -5},
                {"v.u16", GGUF_TYPE_U16, 65000},
                {"v.i16", GGUF_TYPE_I16, -30000},
                {"v.u32", GGUF_TYPE_U32, 4000000000.0},
                {"v.i32", GGUF_TYPE_I32, -2000000000.0},
                {"v.f32", GGUF_TYPE_F32, 1.5},
                {"v.bool", GGUF_TYPE_BOOL, 1},
                {"v.f64", GGUF_TYPE_F64, 3.141592653589793}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const gguf_kv *kv = gguf_find_kv(&f, want[i].key);
        test_condf(kv && kv->type == want[i].type && gguf_kv_get_f64(kv, 0) == want[i].val,
                   "%s read back", want[i].key);
    }
    const gguf_kv *kv = gguf_find_kv(&f, "v.u64");
    test_cond("u64", kv && kv->type == GGUF_TYPE_U64 &&
                         (uint64_t)gguf_kv_get_i64(kv, 0) == 18000000000000000000ull);
    kv = gguf_find_kv(&f, "v.i64");
    test_cond("i64",
              kv && kv->type == GGUF_TYPE_I64 && gguf_kv_get_i64(kv, 0) == -9000000000000000000ll);
    gguf_str s;
    test_cond("string", gguf_get_str(&f, "v.str", &s, &err) == 0 && gguf_str_eq(s, "h\xc3\xa9llo"));
    kv = gguf_find_kv(&f, "a.i32");
    test_cond("i32 array", kv && kv->type == GGUF_TYPE_ARRAY && kv->arr_type == GGUF_TYPE_I32 &&
                               kv->n == 3 && gguf_kv_get_i64(kv, 1) == -2 &&
                               gguf_kv_get_i64(kv, 2) == 3);
    kv = gguf_find_kv(&f, "a.f32");
    test_cond("f32 array", kv && kv->n == 2 && gguf_kv_get_f64(kv, 1) == -8.0);
    kv = gguf_find_kv(&f, "a.bool");
    test_cond("bool array", kv && kv->arr_type == GGUF_TYPE_BOOL && kv->n == 3 &&
                                gguf_kv_get_i64(kv, 1) == 0 && gguf_kv_get_i64(kv, 2) == 1);
    kv = gguf_find_kv(&f, "a.str");
    test_cond("string array", kv && kv->arr_type == GGUF_TYPE_STRING && kv->n == 3 &&
                                  gguf_str_eq(kv->strs[0], "alpha") &&
                                  gguf_str_eq(kv->strs[1], "") &&
                                  gguf_str_eq(kv->strs[2], "\xc4\xa0the"));
    kv = gguf_find_kv(&f, "a.empty");
    test_cond("empty array", kv && kv->arr_type == GGUF_TYPE_U8 && kv->n == 0);

    /* exact value types */
    uint32_t u;
    float    fl;
    memset(&err, 0, sizeof err);
    test_cond("i32 is not u32", gguf_get_u32(&f, "v.i32", &u, &err) == LORA_ERR_FORMAT &&
                                    strstr(err.msg, "has type i32, expected u32"));
    test_cond("f64 is not f32", gguf_get_f32(&f, "v.f64", &fl, &err) == LORA_ERR_FORMAT);
    test_cond("missing key",
              gguf_get_u32(&f, "nope", &u, &err) == LORA_ERR_MISSING && strstr(err.msg, "'nope'"));
    test_cond("u32", gguf_get_u32(&f, "v.u32", &u, &err) == 0 && u == 4000000000u);

    /* tensors: layout and bytes */
    const gguf_tensor *a = gguf_find_tensor(&f, "t0"), *b = gguf_find_tensor(&f, "t1");
    test_cond("tensors found", a && b);
    if (a && b) {
        test_cond("t0 info", a->type == GGUF_TENSOR_F32 && a->n_dims == 2 && a->ne[0] == 3 &&
                                 a->ne[1] == 2 && a->ne[2] == 1 && a->numel == 6 &&
                                 a->nbytes == 24 && a->offset == 0);
        test_cond("t1 info", b->type == GGUF_TENSOR_F16 && b->n_dims == 1 && b->offset == 32);
        test_cond("t0 bytes", !memcmp(a->data, t0, sizeof t0));
        test_cond("t1 bytes", !memcmp(b->data, t1, sizeof t1));
        test_cond("data section aligned", f.data_offset % 32 == 0);
        test_cond("padded file", f.size == f.data_offset + 64);
    }
    test_cond("no temporary left", count_prefixed("rt.gguf.tmp.") == 0);

    /* copying every pair and tensor reproduces the file byte for byte */
    char         path2[4096];
    gguf_writer *w  = gguf_writer_new();
    lora_status  st = LORA_OK;
    tpath(path2, "rt2.gguf");
    for (int64_t i = 0; i < f.n_kv; i++)
        st |= gguf_writer_copy_kv(w, &f.kv[i], &err);
    for (int64_t i = 0; i < f.n_tensors; i++)
        st |= gguf_writer_add_tensor(w, f.tensors[i].name, f.tensors[i].type, f.tensors[i].n_dims,
                                     f.tensors[i].ne, f.tensors[i].data, &err);
    st |= gguf_writer_write(w, path2, &err);
    test_condf(st == LORA_OK, "copy: %s", err.msg);
    gguf_writer_free(w);
    gguf_file g;
    if (gguf_open(&g, path2, &err) == LORA_OK) {
        test_cond("copy is identical", g.size == f.size && !memcmp(g.map, f.map, f.size));
        gguf_close(&g);
    } else {
        test_condf(0, "reopen copy: %s", err.msg);
    }

    /* every truncation fails cleanly (until the last tensor's bytes are all there) */
    size_t need = f.data_offset + 32 + 10, failures = 0;
    for (size_t cut = 0; cut < f.size; cut++) {
        tpath(path2, "cut.gguf");
        write_bytes(path2, f.map, cut);
        memset(&err, 0, sizeof err);
        lora_status cs = gguf_open(&g, path2, &err);
        if (cs == LORA_OK) gguf_close(&g);
        int ok =
            cut < need ? (cs == LORA_ERR_FORMAT && strstr(err.msg, path2) != NULL) : cs == LORA_OK;
        if (!ok && failures++ < 3)
            test_condf(0, "cut at %zu of %zu: status %d (%s)", cut, f.size, cs, err.msg);
    }
    test_condf(failures == 0, "%zu truncations misjudged", failures);
    gguf_close(&f);
}

/* ---- hostile files ---- */

static void test_bad_files(void) {
    rb       r;
    uint64_t ne2[2] = {4, 2}, ne1[1] = {8};

    rb_hdr(&r, 3, 0, 0);
    r.b[3] = 'X';
    expect_bad("magic", &r, LORA_ERR_FORMAT, "magic");
    r.n = 0;
    expect_bad("empty", &r, LORA_ERR_FORMAT, "magic");
    rb_hdr(&r, 1, 0, 0);
    expect_bad("v1", &r, LORA_ERR_UNSUPPORTED, "version 1");
    rb_hdr(&r, 4, 0, 0);
    expect_bad("v4", &r, LORA_ERR_UNSUPPORTED, "version 4");
    rb_hdr(&r, 0x03000000u, 0, 0);
    expect_bad("big-endian", &r, LORA_ERR_UNSUPPORTED, "big-endian");
    rb_hdr(&r, 3, 0, 0);
    r.n -= 3;
    expect_bad("short header", &r, LORA_ERR_FORMAT, "truncated");
    rb_hdr(&r, 3, 0, 1ull << 60);
    expect_bad("n_kv", &r, LORA_ERR_FORMAT, "key/value pairs cannot fit");
    rb_hdr(&r, 3, 1ull << 40, 0);
    expect_bad("n_tensors", &r, LORA_ERR_FORMAT, "tensors cannot fit");

    /* key and value lengths */
    rb_hdr(&r, 3, 0, 1);
    rb_u64(&r, 1ull << 62);
    rb_put(&r, "abcdefghijklmnop", 16);
    expect_bad("key length", &r, LORA_ERR_FORMAT, "past the end");
    rb_hdr(&r, 3, 0, 1);
    rb_str(&r, "k");
    rb_u32(&r, GGUF_TYPE_STRING);
    rb_u64(&r, 100);
    rb_put(&r, "short", 5);
    expect_bad("string length", &r, LORA_ERR_FORMAT, "past the end");
    rb_hdr(&r, 3, 0, 1);
    rb_str(&r, "k");
    rb_u32(&r, GGUF_TYPE_ARRAY);
    rb_u32(&r, GGUF_TYPE_STRING);
    rb_u64(&r, 1ull << 61);
    rb_put(&r, "0123456789abcdef", 16);
    expect_bad("string array count", &r, LORA_ERR_FORMAT, "string array");
    rb_hdr(&r, 3, 0, 1);
    rb_str(&r, "k");
    rb_u32(&r, GGUF_TYPE_ARRAY);
    rb_u32(&r, GGUF_TYPE_U64);
    rb_u64(&r, (1ull << 61) + 1); /* times 8 wraps around 2^64 */
    rb_put(&r, "0123456789abcdef", 16);
    expect_bad("array count", &r, LORA_ERR_FORMAT, "runs past the end");
    rb_hdr(&r, 3, 0, 1);
    rb_str(&r, "k");
    rb_u32(&r, GGUF_TYPE_ARRAY);
    rb_u32(&r, GGUF_TYPE_ARRAY);
    rb_u64(&r, 1);
    rb_put(&r, "0123456789abcdef", 16);
    expect_bad("nested array", &r, LORA_ERR_FORMAT, "nested");
    rb_hdr(&r, 3, 0, 1);
    rb_str(&r, "k");
    rb_u32(&r, 13);
    rb_u64(&r, 0);
    expect_bad("value type", &r, LORA_ERR_FORMAT, "unknown value type 13");
    rb_hdr(&r, 3, 0, 1);
    rb_str(&r, "k");
    rb_u32(&r, GGUF_TYPE_BOOL);
    rb_put(&r, "\x02", 1);
    expect_bad("bool", &r, LORA_ERR_FORMAT, "bool value 2");
    rb_hdr(&r, 3, 0, 1);
    rb_str(&r, "");
    rb_u32(&r, GGUF_TYPE_U8);
    rb_put(&r, "\x02\x00", 2);
    expect_bad("empty key", &r, LORA_ERR_FORMAT, "empty");
    rb_hdr(&r, 3, 0, 2);
    rb_kv_u32(&r, "k", 1);
    rb_kv_u32(&r, "k", 2);
    expect_bad("duplicate key", &r, LORA_ERR_FORMAT, "'k' appears twice");
    rb_hdr(&r, 3, 0, 1);
    rb_kv_u32(&r, "general.alignment", 24);
    expect_bad("alignment", &r, LORA_ERR_FORMAT, "power of two");
    rb_hdr(&r, 3, 0, 1);
    rb_str(&r, "general.alignment");
    rb_u32(&r, GGUF_TYPE_I32);
    rb_u32(&r, 32);
    expect_bad("alignment type", &r, LORA_ERR_FORMAT, "general.alignment");

    /* tensor infos */
    rb_hdr(&r, 3, 1, 0);
    uint64_t ne5[5] = {1, 1, 1, 1, 2};
    rb_tensor(&r, "t", 5, ne5, GGUF_TENSOR_F32, 0);
    rb_data(&r, 8);
    expect_bad("n_dims 5", &r, LORA_ERR_FORMAT, "n_dims 5");
    rb_hdr(&r, 3, 1, 0);
    uint64_t big[2] = {1ull << 40, 1ull << 40};
    rb_tensor(&r, "t", 2, big, GGUF_TENSOR_F32, 0);
    rb_data(&r, 8);
    expect_bad("ne overflow", &r, LORA_ERR_FORMAT, "overflows");
    rb_hdr(&r, 3, 1, 0);
    uint64_t neg[1] = {~0ull};
    rb_tensor(&r, "t", 1, neg, GGUF_TENSOR_F32, 0);
    rb_data(&r, 8);
    expect_bad("negative ne", &r, LORA_ERR_FORMAT, "dimension 0");
    rb_hdr(&r, 3, 1, 0);
    rb_tensor(&r, "t", 1, ne1, 2 /* Q4_0 */, 0);
    rb_data(&r, 64);
    expect_bad("quantized type", &r, LORA_ERR_UNSUPPORTED, "type 2");
    rb_hdr(&r, 3, 1, 0);
    rb_tensor(&r, "t", 1, ne1, 99, 0);
    rb_data(&r, 64);
    expect_bad("unknown type", &r, LORA_ERR_UNSUPPORTED, "type 99");
    rb_hdr(&r, 3, 1, 0);
    rb_tensor(&r, "t", 2, ne2, GGUF_TENSOR_F32, 4);
    rb_data(&r, 64);
    expect_bad("misaligned offset", &r, LORA_ERR_FORMAT, "not a multiple of the alignment 32");
    rb_hdr(&r, 3, 1, 0);
    rb_tensor(&r, "t", 2, ne2, GGUF_TENSOR_F32, 32);
    rb_data(&r, 32);
    expect_bad("offset out of range", &r, LORA_ERR_FORMAT, "outside the data section");
    rb_hdr(&r, 3, 1, 0);
    rb_tensor(&r, "t", 2, ne2, GGUF_TENSOR_F32, 0);
    rb_data(&r, 31);
    expect_bad("data cut short", &r, LORA_ERR_FORMAT, "outside the data section");
    rb_hdr(&r, 3, 1, 0);
    rb_tensor(&r, "t", 2, ne2, GGUF_TENSOR_F32, 1ull << 63);
    rb_data(&r, 32);
    expect_bad("huge offset", &r, LORA_ERR_FORMAT, "outside the data section");
    rb_hdr(&r, 3, 2, 0);
    rb_tensor(&r, "a", 2, ne2, GGUF_TENSOR_F32, 0);
    rb_tensor(&r, "b", 1, ne1, GGUF_TENSOR_F32, 0);
    rb_data(&r, 64);
    expect_bad("overlap", &r, LORA_ERR_FORMAT, "overlap");
    rb_hdr(&r, 3, 2, 0);
    rb_tensor(&r, "a", 2, ne2, GGUF_TENSOR_F32, 0);
    rb_tensor(&r, "a", 1, ne1, GGUF_TENSOR_F32, 32);
    rb_data(&r, 64);
    expect_bad("duplicate tensor", &r, LORA_ERR_FORMAT, "'a' appears twice");
    rb_hdr(&r, 3, 1, 0);
    char long_name[65];
    memset(long_name, 'n', 64);
    long_name[64] = '\0';
    rb_tensor(&r, long_name, 1, ne1, GGUF_TENSOR_F32, 0);
    rb_data(&r, 32);
    expect_bad("long tensor name", &r, LORA_ERR_FORMAT, "name of 64 bytes");
    rb_hdr(&r, 3, 1, 0);
    rb_tensor(&r, "t", 1, ne1, GGUF_TENSOR_F32, 0);
    expect_bad("no data section", &r, LORA_ERR_FORMAT, "t");

    /* a valid crafted file with alignment 64 opens */
    rb_hdr(&r, 2, 1, 1);
    rb_kv_u32(&r, "general.alignment", 64);
    rb_tensor(&r, "t", 1, ne1, GGUF_TENSOR_F32, 0);
    rb_pad(&r, 64);
    for (int i = 0; i < 32; i++)
        rb_put(&r, "\0", 1);
    char path[4096];
    tpath(path, "ok.gguf");
    write_bytes(path, r.b, r.n);
    gguf_file  f;
    lora_error err;
    test_condf(gguf_open(&f, path, &err) == LORA_OK, "v2, alignment 64: %s", err.msg);
    test_cond("alignment 64", f.alignment == 64 && f.data_offset % 64 == 0);
    gguf_close(&f);
    gguf_close(&f); /* twice is fine */
    test_cond("missing file", gguf_open(&f, "/nonexistent/x.gguf", &err) == LORA_ERR_MISSING);
}

/* ---- a full disk ---- */

static void test_full_disk(void) {
    char        path[4096];
    const char *orig = "the previous content";
    tpath(path, "full.gguf");
    write_bytes(path, orig, strlen(orig));
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {4096, 4096};
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(10);
        static float big[16384];
        int64_t      ne[1] = {16384};
        lora_error   err;
        gguf_writer *w = gguf_writer_new();
        gguf_writer_add_tensor(w, "big", GGUF_TENSOR_F32, 1, ne, big, &err);
        lora_status st = gguf_writer_write(w, path, &err);
        gguf_writer_free(w);
        if (st != LORA_ERR_IO) _exit(11);
        if (!strstr(err.msg, path)) _exit(12);
        _exit(0);
    }
    int status = 0;
    test_cond("fork", pid > 0 && waitpid(pid, &status, 0) == pid);
    test_condf(WIFEXITED(status) && WEXITSTATUS(status) == 0,
               "full-disk child: exit %d (10 setrlimit, 11 status not IO, 12 message)",
               WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    test_cond("no temporary left after a failed write", count_prefixed("full.gguf.tmp.") == 0);
    char   got[64] = {0};
    FILE  *fp      = fopen(path, "rb");
    size_t n       = fp ? fread(got, 1, sizeof got - 1, fp) : 0;
    if (fp) fclose(fp);
    test_cond("PATH unchanged after a failed write", n == strlen(orig) && !strcmp(got, orig));
}

/* ---- models ---- */

/* A tokenizer of 55 tokens (a-z, A-Z, "ab", "abc", <|endoftext|>) for the 61-token tiny model:
 * ids 55..60 have no token and are padded. */
static void write_tokenizer(const char *dir) {
    char   path[4200], buf[2048];
    size_t k = 0;
    k += (size_t)snprintf(buf + k, sizeof buf - k, "{");
    for (int i = 0; i < 52; i++)
        k += (size_t)snprintf(buf + k, sizeof buf - k, "\"%c\": %d, ",
                              i < 26 ? 'a' + i : 'A' + i - 26, i);
    k += (size_t)snprintf(buf + k, sizeof buf - k,
                          "\"ab\": 52, \"abc\": 53, \"<|endoftext|>\": 54}");
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    write_bytes(path, buf, k);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    const char *merges = "#version: 0.2\na b\nab c\n";
    write_bytes(path, merges, strlen(merges));
}

enum { B = 2, T = 12 };

static void batch(int32_t *tok, int V) {
    for (int i = 0; i < B * T; i++)
        tok[i] = (int32_t)((i * 7 + 3) % V);
}

/* Logits (B, T, V) of a forward, copied; NULL on failure. */
static float *logits_of(lora_model *m) {
    int32_t    tok[B * T];
    lora_error err;
    int        V = lora_model_config(m)->vocab_size;
    batch(tok, V);
    if (lora_model_forward(m, tok, NULL, B, T, NULL, &err) != LORA_OK) {
        test_condf(0, "forward: %s", err.msg);
        return NULL;
    }
    float *l = malloc((size_t)B * T * V * sizeof(float));
    memcpy(l, lora_model_logits(m), (size_t)B * T * V * sizeof(float));
    return l;
}

/* Copies src to dst, pairs and tensors, with one change. */
typedef enum { RW_UNTIE, RW_ARCH, RW_I32_KEY, RW_NO_KEY, RW_NO_TENSOR, RW_SHAPE, RW_TYPE } rw_mode;

static void rewrite(const char *src, const char *dst, rw_mode mode) {
    gguf_file    f;
    lora_error   err;
    gguf_writer *w  = gguf_writer_new();
    lora_status  st = gguf_open(&f, src, &err);
    for (int64_t i = 0; st == LORA_OK && i < f.n_kv; i++) {
        const gguf_kv *kv = &f.kv[i];
        if (mode == RW_ARCH && !strcmp(kv->key, "general.architecture")) {
            st = gguf_writer_set_str(w, kv->key, "llama", &err);
        } else if (mode == RW_I32_KEY && !strcmp(kv->key, "gpt2.block_count")) {
            int32_t v = (int32_t)gguf_kv_get_i64(kv, 0);
            st        = gguf_writer_set(w, kv->key, GGUF_TYPE_I32, &v, &err);
        } else if (!(mode == RW_NO_KEY && !strcmp(kv->key, "gpt2.context_length"))) {
            st = gguf_writer_copy_kv(w, kv, &err);
        }
    }
    static int32_t zeros[32 * 96];
    for (int64_t i = 0; st == LORA_OK && i < f.n_tensors; i++) {
        const gguf_tensor *t = &f.tensors[i];
        int64_t            ne[4];
        memcpy(ne, t->ne, sizeof ne);
        if (mode == RW_NO_TENSOR && !strcmp(t->name, "blk.1.ffn_down.bias")) continue;
        if (mode == RW_SHAPE && !strcmp(t->name, "blk.0.attn_qkv.weight")) {
            ne[0] = t->ne[1];
            ne[1] = t->ne[0];
        }
        if (mode == RW_TYPE && !strcmp(t->name, "blk.0.attn_qkv.weight")) {
            st = gguf_writer_add_tensor(w, t->name, GGUF_TENSOR_I32, t->n_dims, ne, zeros, &err);
            continue;
        }
        st = gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, ne, t->data, &err);
    }
    if (st == LORA_OK && mode == RW_UNTIE) {
        const gguf_tensor *t = gguf_find_tensor(&f, "token_embd.weight");
        st = gguf_writer_add_tensor(w, "output.weight", t->type, t->n_dims, t->ne, t->data, &err);
    }
    if (st == LORA_OK) st = gguf_writer_write(w, dst, &err);
    test_condf(st == LORA_OK, "rewrite %d: %s", (int)mode, err.msg);
    gguf_writer_free(w);
    gguf_close(&f);
}

static void expect_model_error(const char *path, lora_status want, const char *what) {
    lora_model *m = NULL;
    lora_error  err;
    memset(&err, 0, sizeof err);
    lora_status st = lora_model_load(path, &m, &err);
    test_condf(st == want && m == NULL, "%s: status %d, expected %d (%s)", what, st, want, err.msg);
    test_condf(strstr(err.msg, path) && strstr(err.msg, what), "message '%s' lacks '%s'", err.msg,
               what);
    lora_model_free(m);
}

static int same_config(const lora_config *a, const lora_config *b) {
    return a->n_layer == b->n_layer && a->n_head == b->n_head && a->n_embd == b->n_embd &&
           a->n_positions == b->n_positions && a->n_inner == b->n_inner &&
           a->vocab_size == b->vocab_size && a->layer_norm_epsilon == b->layer_norm_epsilon &&
           a->activation == b->activation && a->tie_word_embeddings == b->tie_word_embeddings;
}

static void test_model_round_trip(void) {
    lora_config c = tiny_config();
    tiny_opts   o;
    char        dir[4096], dir16[4096], gg[4096], gg16[4096], ggb[4096], path[4096];
    lora_error  err;
    memset(&o, 0, sizeof o);
    tpath(dir, "tiny");
    tiny_write(dir, &c, &o, 5);
    write_tokenizer(dir);
    o.f16 = 1;
    tpath(dir16, "tiny16");
    tiny_write(dir16, &c, &o, 5);
    write_tokenizer(dir16);

    lora_model *m0 = tiny_load(dir);
    if (!m0) return;
    float *l0 = logits_of(m0);
    tpath(gg, "tiny.gguf");
    test_condf(lora_model_save_gguf(m0, gg, LORA_DTYPE_F32, NULL, &err) == LORA_OK, "export: %s",
               err.msg);
    lora_model *m1 = tiny_load(gg);
    if (m1) {
        test_cond("config from the GGUF keys", same_config(&m0->cfg, &m1->cfg));
        float *l1 = logits_of(m1);
        test_cond("F32 GGUF: bit-identical logits",
                  l0 && l1 && !memcmp(l0, l1, (size_t)B * T * c.vocab_size * sizeof(float)));
        int64_t mapped, converted;
        lora_model_weight_bytes(m1, &mapped, &converted);
        test_cond("weights owned", mapped == 0 && converted == lora_model_n_base_params(m1) * 4);
        free(l1);
        lora_model_free(m1);
    }

    /* the file itself */
    gguf_file f;
    if (gguf_open(&f, gg, &err) == LORA_OK) {
        uint32_t u   = 0;
        float    eps = 0;
        gguf_str s;
        test_cond("arch", gguf_get_str(&f, "general.architecture", &s, &err) == 0 &&
                              gguf_str_eq(s, "gpt2"));
        test_cond("alignment key", gguf_get_u32(&f, "general.alignment", &u, &err) == 0 && u == 32);
        test_cond("block_count", gguf_get_u32(&f, "gpt2.block_count", &u, &err) == 0 && u == 2);
        test_cond("context", gguf_get_u32(&f, "gpt2.context_length", &u, &err) == 0 && u == 16);
        test_cond("embd", gguf_get_u32(&f, "gpt2.embedding_length", &u, &err) == 0 && u == 32);
        test_cond("ff", gguf_get_u32(&f, "gpt2.feed_forward_length", &u, &err) == 0 && u == 128);
        test_cond("heads", gguf_get_u32(&f, "gpt2.attention.head_count", &u, &err) == 0 && u == 2);
        test_cond("eps", gguf_get_f32(&f, "gpt2.attention.layer_norm_epsilon", &eps, &err) == 0 &&
                             eps == 1e-5f);
        test_cond("tokenizer model", gguf_get_str(&f, "tokenizer.ggml.model", &s, &err) == 0 &&
                                         gguf_str_eq(s, "gpt2"));
        test_cond("pre",
                  gguf_get_str(&f, "tokenizer.ggml.pre", &s, &err) == 0 && gguf_str_eq(s, "gpt-2"));
        test_cond("eos", gguf_get_u32(&f, "tokenizer.ggml.eos_token_id", &u, &err) == 0 && u == 54);
        test_cond("bos", gguf_get_u32(&f, "tokenizer.ggml.bos_token_id", &u, &err) == 0 && u == 54);
        const gguf_kv *tk = gguf_find_kv(&f, "tokenizer.ggml.tokens");
        const gguf_kv *ty = gguf_find_kv(&f, "tokenizer.ggml.token_type");
        const gguf_kv *mg = gguf_find_kv(&f, "tokenizer.ggml.merges");
        test_cond("tokens", tk && tk->arr_type == GGUF_TYPE_STRING && tk->n == 61 &&
                                gguf_str_eq(tk->strs[0], "a") && gguf_str_eq(tk->strs[53], "abc") &&
                                gguf_str_eq(tk->strs[55], "[PAD55]") &&
                                gguf_str_eq(tk->strs[60], "[PAD60]"));
        test_cond("token types", ty && ty->arr_type == GGUF_TYPE_I32 && ty->n == 61 &&
                                     gguf_kv_get_i64(ty, 0) == 1 && gguf_kv_get_i64(ty, 54) == 3 &&
                                     gguf_kv_get_i64(ty, 55) == 5);
        test_cond("merges", mg && mg->n == 2 && gguf_str_eq(mg->strs[0], "a b") &&
                                gguf_str_eq(mg->strs[1], "ab c"));
        test_cond("tied: no output.weight", !gguf_find_tensor(&f, "output.weight"));
        test_cond("tensor count", f.n_tensors == 4 + 2 * 12);
        const gguf_tensor *q = gguf_find_tensor(&f, "blk.1.attn_qkv.weight");
        const gguf_tensor *d = gguf_find_tensor(&f, "blk.0.ffn_down.weight");
        const gguf_tensor *e = gguf_find_tensor(&f, "token_embd.weight");
        test_cond("qkv ne = [in, out]", q && q->n_dims == 2 && q->ne[0] == 32 && q->ne[1] == 96 &&
                                            q->type == GGUF_TENSOR_F32);
        test_cond("ffn_down ne", d && d->ne[0] == 128 && d->ne[1] == 32);
        test_cond("token_embd ne", e && e->ne[0] == 32 && e->ne[1] == 61);
        if (q) { /* nn.Linear (out, in): row o is Conv1D column o */
            const float *W = m0->layers[1].c_attn.w, *g = q->data;
            int          bad = 0;
            for (int oo = 0; oo < 96; oo++)
                for (int i = 0; i < 32; i++)
                    bad += g[oo * 32 + i] != W[i * 96 + oo];
            test_cond("qkv transposed", bad == 0);
        }
        gguf_close(&f);
    } else {
        test_condf(0, "open export: %s", err.msg);
    }

    /* untied: an output.weight becomes the head */
    tpath(path, "untied.gguf");
    rewrite(gg, path, RW_UNTIE);
    lora_model *mu = tiny_load(path);
    if (mu) {
        float *lu = logits_of(mu);
        test_cond("untied", mu->cfg.tie_word_embeddings == 0 && mu->lm_head != mu->wte);
        test_cond("untied head gives the same logits",
                  l0 && lu && !memcmp(l0, lu, (size_t)B * T * c.vocab_size * sizeof(float)));
        free(lu);
        lora_model_free(mu);
    }

    /* F16: the F16 checkpoint's values survive exactly */
    lora_model *m16 = tiny_load(dir16);
    tpath(gg16, "tiny16.gguf");
    if (m16) {
        float *la = logits_of(m16);
        test_condf(lora_model_save_gguf(m16, gg16, LORA_DTYPE_F16, NULL, &err) == LORA_OK,
                   "export f16: %s", err.msg);
        lora_model *m2 = tiny_load(gg16);
        if (m2) {
            float *lb = logits_of(m2);
            test_cond("F16 GGUF: bit-identical logits",
                      la && lb && !memcmp(la, lb, (size_t)B * T * c.vocab_size * sizeof(float)));
            free(lb);
            lora_model_free(m2);
        }
        if (gguf_open(&f, gg16, &err) == LORA_OK) {
            const gguf_tensor *q = gguf_find_tensor(&f, "blk.0.attn_qkv.weight");
            const gguf_tensor *n = gguf_find_tensor(&f, "blk.0.attn_norm.weight");
            test_cond("F16 weights, F32 norms",
                      q && n && q->type == GGUF_TENSOR_F16 && n->type == GGUF_TENSOR_F32);
            gguf_close(&f);
        }
        free(la);
        lora_model_free(m16);
    }
    tpath(ggb, "tinybf16.gguf");
    test_condf(lora_model_save_gguf(m0, ggb, LORA_DTYPE_BF16, NULL, &err) == LORA_OK,
               "export bf16: %s", err.msg);
    lora_model *mb = tiny_load(ggb);
    if (mb) {
        float *lb = logits_of(mb);
        double d  = l0 && lb ? test_max_abs_diff(l0, lb, (size_t)B * T * c.vocab_size) : 1e9;
        test_condf(d < 0.1, "BF16 GGUF logits differ by %g", d);
        free(lb);
        lora_model_free(mb);
    }

    /* bad model files */
    tpath(path, "arch.gguf");
    rewrite(gg, path, RW_ARCH);
    expect_model_error(path, LORA_ERR_UNSUPPORTED, "architecture 'llama'");
    tpath(path, "i32.gguf");
    rewrite(gg, path, RW_I32_KEY);
    expect_model_error(path, LORA_ERR_FORMAT, "gpt2.block_count");
    tpath(path, "nokey.gguf");
    rewrite(gg, path, RW_NO_KEY);
    expect_model_error(path, LORA_ERR_MISSING, "gpt2.context_length");
    tpath(path, "notensor.gguf");
    rewrite(gg, path, RW_NO_TENSOR);
    expect_model_error(path, LORA_ERR_MISSING, "blk.1.ffn_down.bias");
    tpath(path, "shape.gguf");
    rewrite(gg, path, RW_SHAPE);
    expect_model_error(path, LORA_ERR_SHAPE, "blk.0.attn_qkv.weight");
    tpath(path, "type.gguf");
    rewrite(gg, path, RW_TYPE);
    expect_model_error(path, LORA_ERR_UNSUPPORTED, "I32");
    tpath(path, "trunc.gguf");
    if (gguf_open(&f, gg, &err) == LORA_OK) { /* the last tensor cut short */
        write_bytes(path, f.map, f.size - 100);
        gguf_close(&f);
    }
    expect_model_error(path, LORA_ERR_FORMAT, "outside the data section");

    /* no tokenizer, or one too large */
    tpath(path, "notok.gguf");
    lora_status st = lora_model_save_gguf(m0, path, LORA_DTYPE_F32, root, &err);
    test_condf(st == LORA_ERR_MISSING && strstr(err.msg, "tokenizer"), "no tokenizer: %d %s", st,
               err.msg);
    free(l0);
    lora_model_free(m0);
}

/* ---- LoRA adapters ---- */

/* Merges an adapter GGUF into a GGUF-loaded model (owned weights) as llama.cpp applies it:
 * W_linear += user_scale * alpha / r * B·A, i.e. Conv1D W (in, out) += s * (B·A)ᵀ. */
static void merge_llama_rule(lora_model *m, const char *adapter_path, float user_scale) {
    gguf_file  f;
    lora_error err;
    float      alpha = 0;
    if (gguf_open(&f, adapter_path, &err) != LORA_OK) {
        test_condf(0, "open adapter: %s", err.msg);
        return;
    }
    gguf_str s;
    test_cond("adapter keys",
              gguf_get_str(&f, "general.type", &s, &err) == 0 && gguf_str_eq(s, "adapter") &&
                  gguf_get_str(&f, "adapter.type", &s, &err) == 0 && gguf_str_eq(s, "lora") &&
                  gguf_get_f32(&f, "adapter.lora.alpha", &alpha, &err) == 0);
    for (int64_t i = 0; i < f.n_tensors; i++) {
        const gguf_tensor *a = &f.tensors[i];
        size_t             n = strlen(a->name);
        if (n < 7 || strcmp(a->name + n - 7, ".lora_a")) continue;
        char bname[GGUF_MAX_NAME];
        snprintf(bname, sizeof bname, "%.*s.lora_b", (int)(n - 7), a->name);
        const gguf_tensor *b = gguf_find_tensor(&f, bname);
        int                layer;
        char               base[32];
        if (!b || sscanf(a->name, "blk.%d.%31[a-z_]", &layer, base) != 2) {
            test_condf(0, "adapter tensor %s", a->name);
            continue;
        }
        linear *site = !strcmp(base, "attn_qkv")      ? &m->layers[layer].c_attn
                       : !strcmp(base, "attn_output") ? &m->layers[layer].attn_proj
                       : !strcmp(base, "ffn_up")      ? &m->layers[layer].c_fc
                                                      : &m->layers[layer].mlp_proj;
        int64_t in = a->ne[0], r = a->ne[1], out = b->ne[1];
        test_condf(b->ne[0] == r && in == site->in && out == site->out, "%s shapes", a->name);
        const float *A = a->data, *Bm = b->data;
        float        sc = user_scale * alpha / (float)b->ne[0]; /* r from lora_b */
        float       *W  = (float *)site->w;
        for (int64_t o = 0; o < out; o++)
            for (int64_t k = 0; k < in; k++) {
                double acc = 0;
                for (int64_t q = 0; q < r; q++)
                    acc += (double)Bm[o * r + q] * A[q * in + k];
                W[k * out + o] += (float)(sc * acc);
            }
    }
    gguf_close(&f);
}

/* Random B for every LoRA adapter, then the reference: our forward with the adapter at
 * user_scale (B scaled), against the exported base model with the GGUF adapter merged. */
static void check_adapter(const char *label, const lora_adapter_params *p, float user_scale,
                          int64_t expect_R_qkv, float expect_alpha) {
    char        dir[4096], gg[4096], ad[4096];
    lora_error  err;
    lora_model *m = NULL;
    tpath(dir, "tiny");
    tpath(gg, "tiny.gguf");
    snprintf(ad, sizeof ad, "%s/adapter_%s.gguf", root, label);
    if (!(m = tiny_load(dir))) return;
    test_condf(lora_model_attach(m, p, &err) == LORA_OK, "%s attach: %s", label, err.msg);
    for (int32_t i = 0; i < lora_model_n_trainable(m); i++) {
        lora_tensor_info t;
        lora_model_trainable(m, i, &t);
        if (!strstr(t.name, "lora_B")) continue;
        uint64_t key = rng_key(99, (uint64_t)i, 3);
        for (int64_t j = 0; j < t.numel; j++)
            t.data[j] = 0.2f * rng_normal(key, (uint64_t)j);
    }
    test_condf(lora_adapter_save_gguf(m, ad, LORA_DTYPE_F32, &err) == LORA_OK, "%s export: %s",
               label, err.msg);
    gguf_file f;
    if (gguf_open(&f, ad, &err) == LORA_OK) {
        float              alpha = 0;
        const gguf_tensor *a     = gguf_find_tensor(&f, "blk.0.attn_qkv.weight.lora_a");
        const gguf_tensor *b     = gguf_find_tensor(&f, "blk.0.attn_qkv.weight.lora_b");
        gguf_get_f32(&f, "adapter.lora.alpha", &alpha, &err);
        test_condf(alpha == expect_alpha, "%s: alpha %g, expected %g", label, (double)alpha,
                   (double)expect_alpha);
        test_condf(a && b && a->ne[0] == 32 && a->ne[1] == expect_R_qkv &&
                       b->ne[0] == expect_R_qkv && b->ne[1] == 96,
                   "%s: attn_qkv lora_a/lora_b shapes", label);
        test_cond("no token_embd adapter", !gguf_find_tensor(&f, "token_embd.weight.lora_a"));
        if (a && b && (p->targets & LORA_TARGET_Q) && (p->targets & LORA_TARGET_V)) {
            /* stacked A = [A_q; A_v], B's k rows zero, q block in the first r columns */
            lora_tensor_info aq, bq;
            lora_model_trainable_find(m, "h.0.attn.c_attn.q.lora_A", &aq);
            lora_model_trainable_find(m, "h.0.attn.c_attn.q.lora_B", &bq);
            const float *ga = a->data, *gb = b->data;
            int          R = (int)expect_R_qkv, r = R / 2, zero_k = 1, same = 1;
            for (int row = 32; row < 64; row++)
                for (int q = 0; q < R; q++)
                    zero_k &= gb[row * R + q] == 0;
            for (int row = 0; row < 32; row++)
                for (int q = 0; q < r; q++)
                    same &= gb[row * R + q] == bq.data[row * r + q];
            test_cond("k block of B is zero", zero_k);
            test_cond("q block of B is B_q", same);
            test_cond("A starts with A_q", !memcmp(ga, aq.data, (size_t)r * 32 * sizeof(float)));
        }
        gguf_close(&f);
    }
    /* ours at user_scale */
    for (int32_t i = 0; i < lora_model_n_trainable(m); i++) {
        lora_tensor_info t;
        lora_model_trainable(m, i, &t);
        if (strstr(t.name, "lora_B"))
            for (int64_t j = 0; j < t.numel; j++)
                t.data[j] *= user_scale;
    }
    float      *ours = logits_of(m);
    lora_model *g    = tiny_load(gg);
    if (g && ours) {
        merge_llama_rule(g, ad, user_scale);
        float *theirs = logits_of(g);
        double d = theirs ? test_max_abs_diff(ours, theirs, (size_t)B * T * g->cfg.vocab_size) : 1;
        test_condf(d < 2e-5, "%s at scale %g: llama.cpp's rule differs by %g", label,
                   (double)user_scale, d);
        free(theirs);
    }
    lora_model_free(g);
    free(ours);
    lora_model_free(m);
}

static void test_adapters(void) {
    lora_adapter_params p = lora_adapter_params_default();
    p.r                   = 2;
    p.alpha               = 8;
    p.dropout             = 0;
    p.targets             = LORA_TARGET_Q | LORA_TARGET_V;
    check_adapter("qv", &p, 1.0f, 4, 16.0f); /* s = 4, R = 2r = 4: alpha = 16 */
    check_adapter("qv_half", &p, 0.5f, 4, 16.0f);
    p.r          = 4;
    p.alpha      = 6;
    p.use_rslora = 1; /* s = 6 / sqrt(4) = 3: alpha = s * r = 12 */
    p.targets    = LORA_TARGET_ALL_LINEAR;
    check_adapter("all_rslora", &p, 1.0f, 4, 12.0f);
    p.r          = 2;
    p.alpha      = 4;
    p.use_rslora = 0; /* s = 2; qkv R = 4 (alpha 8), attn_output R = 2: folded by 1/2 */
    p.targets    = LORA_TARGET_Q | LORA_TARGET_K | LORA_TARGET_ATTN_PROJ | LORA_TARGET_MLP_FC;
    check_adapter("mixed", &p, 1.0f, 4, 8.0f);

    lora_model *m = NULL;
    lora_error  err;
    char        dir[4096], ad[4096];
    tpath(dir, "tiny");
    tpath(ad, "none.gguf");
    if ((m = tiny_load(dir)) != NULL) {
        test_cond("no adapter: LORA_ERR_STATE",
                  lora_adapter_save_gguf(m, ad, LORA_DTYPE_F32, &err) == LORA_ERR_STATE);
        lora_model_free(m);
    }
}

int main(void) {
    tiny_tmpdir(root, sizeof root, "gguf");
    test_round_trip();
    test_bad_files();
    test_full_disk();
    test_model_round_trip();
    test_adapters();
    return test_report("test_gguf");
}
