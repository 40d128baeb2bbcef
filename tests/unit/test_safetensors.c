/*
 * test_safetensors.c — the io/ module's files: safetensors write -> read round trips, header
 * padding and alignment, sharded directories, every kind of malformed file the reader must
 * refuse (with the path and the problem in one line, and no crash), mutation and truncation
 * sweeps, a full disk during an atomic write, and the fileutil helpers.
 */
#include "core/dtype.h"
#include "io/fileutil.h"
#include "io/safetensors.h"
#include "test_helper.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_dir[1024];

/* ---- helpers ---- */

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static char g_fallback[64]; /* the scratch directory made when LORA_TEST_TMP is unset */

static void setup_dir(void) {
    const char *base = getenv("LORA_TEST_TMP");
    if (!base || !base[0]) {
        snprintf(g_fallback, sizeof g_fallback, "/tmp/lora_test_%ld", (long)getpid());
        base = g_fallback;
    }
    snprintf(g_dir, sizeof g_dir, "%s/test_safetensors", base);
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    lora_error err;
    if (lora_mkdirs(g_dir, &err) != LORA_OK) {
        fprintf(stderr, "cannot create %s: %s\n", g_dir, err.msg);
        exit(1);
    }
}

static const char *tpath(char *out, const char *name) {
    snprintf(out, 4096, "%s/%s", g_dir, name);
    return out;
}

static int write_bytes(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return 0;
    int ok = fwrite(p, 1, n, fp) == n;
    return fclose(fp) == 0 && ok;
}

/* size of a file, or -1 */
static long long file_size(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 ? (long long)sb.st_size : -1;
}

/* A raw safetensors file: declared header length, header text, data. */
static void write_raw_len(const char *path, uint64_t declared, const char *hdr, const void *data,
                          size_t n) {
    size_t         hn  = strlen(hdr);
    unsigned char *buf = malloc(8 + hn + n + 1);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(declared >> (8 * i));
    memcpy(buf + 8, hdr, hn);
    if (n) memcpy(buf + 8 + hn, data, n);
    if (!write_bytes(path, buf, 8 + hn + n)) fprintf(stderr, "cannot write %s\n", path);
    free(buf);
}

static void write_raw(const char *path, const char *hdr, const void *data, size_t n) {
    write_raw_len(path, strlen(hdr), hdr, data, n);
}

static int is_zeroed(const st_file *f) {
    return f->map == NULL && f->path == NULL && f->tensors == NULL && f->n_tensors == 0 &&
           f->n_meta == 0;
}

/* st_open must refuse the file with `want` (0: any failure), a message naming the path and
 * containing `needle`, one line, and a closed st_file. */
static void expect_bad(const char *what, const char *path, lora_status want, const char *needle) {
    st_file    f;
    lora_error err;
    memset(&err, 0, sizeof err);
    memset(&f, 0xab, sizeof f); /* garbage in: st_open must reset it */
    lora_status s = st_open(&f, path, &err);
    test_condf(s != LORA_OK, "%s: accepted", what);
    if (s == LORA_OK) {
        st_close(&f);
        return;
    }
    test_condf(want == 0 || s == want, "%s: status %d (%s), want %d", what, (int)s,
               lora_status_str(s), (int)want);
    test_condf(err.status == s, "%s: err.status %d != returned %d", what, (int)err.status, (int)s);
    test_condf(strstr(err.msg, path) == err.msg, "%s: message does not start with the path: %s",
               what, err.msg);
    test_condf(strstr(err.msg, needle) != NULL, "%s: message lacks '%s': %s", what, needle,
               err.msg);
    test_condf(strchr(err.msg, '\n') == NULL, "%s: message is not one line: %s", what, err.msg);
    test_condf(is_zeroed(&f), "%s: st_file not left closed", what);
    st_close(&f); /* safe on a closed file */
}

/* Names in g_dir starting with prefix. */
static int count_prefixed(const char *prefix) {
    DIR *d = opendir(g_dir);
    int  n = 0;
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d));)
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

/* ---- round trip ---- */

static void test_round_trip(void) {
    char       path[4096];
    lora_error err;
    st_writer *w = st_writer_new();
    test_cond("st_writer_new", w != NULL);

    float    a[6] = {1.5f, -2.25f, 3.0f, 0.0f, -0.0f, 65504.0f};
    uint8_t  b[3] = {1, 2, 255};
    uint16_t c[3], d[3];
    float    cf[3] = {0.5f, -1024.0f, 6.1035156e-05f}; /* all exact in f16 */
    float    df[3] = {1.0f, -3.0e38f, 0.015625f};      /* all exact in bf16 */
    for (int i = 0; i < 3; i++) {
        c[i] = lora_f32_to_f16(cf[i]);
        d[i] = lora_f32_to_bf16(df[i]);
    }
    df[1]        = lora_bf16_to_f32(d[1]);
    float   e[2] = {7.0f, 8.0f};
    int32_t g[4] = {-1, 0, 1, INT32_MAX};
    float   s    = 42.0f;

    int64_t     sa[2] = {2, 3}, sb[1] = {3}, sg[2] = {2, 2}, sz[2] = {0, 4}, se[1] = {2};
    lora_status st = LORA_OK;
    /* Order chosen so that c, d and e land on odd offsets: the reader must cope. */
    st |= st_writer_add(w, "a", ST_F32, 2, sa, a, &err);
    st |= st_writer_add(w, "b.u8", ST_U8, 1, sb, b, &err);
    st |= st_writer_add(w, "c.f16", ST_F16, 1, sb, c, &err);
    st |= st_writer_add(w, "d.bf16", ST_BF16, 1, sb, d, &err);
    st |= st_writer_add(w, "e.f32.unaligned", ST_F32, 1, se, e, &err);
    st |= st_writer_add(w, "g.i32", ST_I32, 2, sg, g, &err);
    st |= st_writer_add(w, "z.empty", ST_F32, 2, sz, NULL, &err);
    st |= st_writer_add(w, "s.scalar", ST_F32, 0, NULL, &s, &err);
    st |= st_writer_add(w, "na\"me\\with\nodd\x01 chars \xc3\xa9", ST_F32, 0, NULL, &s, &err);
    st |= st_writer_meta(w, "format", "pt", &err);
    st |= st_writer_meta(w, "note", "quote \" backslash \\ newline \n", &err);
    st |= st_writer_meta(w, "format", "pt", &err); /* replaces, does not duplicate */
    test_condf(st == LORA_OK, "writer add/meta failed: %s", err.msg);

    tpath(path, "rt.safetensors");
    st = st_writer_write(w, path, &err);
    test_condf(st == LORA_OK, "st_writer_write: %s", err.msg);
    test_cond("no temporary left after a write", count_prefixed("rt.safetensors.tmp.") == 0);
    st_writer_free(w);

    /* The raw layout: header length a multiple of 8, padded with spaces. */
    FILE         *fp = fopen(path, "rb");
    unsigned char raw[8];
    test_cond("file readable", fp && fread(raw, 1, 8, fp) == 8);
    uint64_t hn = 0;
    for (int i = 7; i >= 0; i--)
        hn = (hn << 8) | raw[i];
    char *hdr = malloc(hn + 1);
    test_cond("header readable", fp && fread(hdr, 1, hn, fp) == hn);
    hdr[hn] = '\0';
    if (fp) fclose(fp);
    test_condf(hn % 8 == 0, "header length %" PRIu64 " not a multiple of 8", hn);
    test_cond("header starts with '{'", hdr[0] == '{');
    size_t k = hn;
    while (k > 0 && hdr[k - 1] == ' ')
        k--;
    test_cond("header padding is spaces after '}'", k > 0 && hdr[k - 1] == '}' && hn - k < 8);
    test_cond("__metadata__ comes first", strncmp(hdr, "{\"__metadata__\":", 16) == 0);
    free(hdr);

    st_file f;
    st = st_open(&f, path, &err);
    test_condf(st == LORA_OK, "st_open: %s", err.msg);
    if (st != LORA_OK) return;
    test_condf(f.n_tensors == 9, "n_tensors %d", (int)f.n_tensors);
    int sorted = 1;
    for (int32_t i = 1; i < f.n_tensors; i++) {
        sorted &= strcmp(f.tensors[i - 1].name, f.tensors[i].name) < 0;
    }
    test_cond("tensors sorted by name", sorted);
    test_cond("meta format", st_meta(&f, "format") && !strcmp(st_meta(&f, "format"), "pt"));
    test_cond("meta escaped", st_meta(&f, "note") &&
                                  !strcmp(st_meta(&f, "note"), "quote \" backslash \\ newline \n"));
    test_cond("meta count", f.n_meta == 2);
    test_cond("meta absent", st_meta(&f, "nope") == NULL);
    test_cond("find absent", st_find(&f, "nope") == NULL);

    const st_tensor *t = st_find(&f, "a");
    test_cond("a found", t != NULL);
    if (t) {
        test_cond("a meta", t->dtype == ST_F32 && t->ndim == 2 && t->shape[0] == 2 &&
                                t->shape[1] == 3 && t->numel == 6 && t->nbytes == 24);
        test_cond("a bytes", memcmp(t->data, a, 24) == 0);
        test_cond("first tensor is 8-aligned", st_tensor_aligned(t, 8));
        float out[6];
        test_cond("a to f32", st_to_f32(out, t, path, &err) == LORA_OK && !memcmp(out, a, 24));
    }
    t = st_find(&f, "b.u8");
    test_cond("u8", t && t->dtype == ST_U8 && t->nbytes == 3 && !memcmp(t->data, b, 3));
    if (t) {
        float out[3];
        memset(&err, 0, sizeof err);
        st = st_to_f32(out, t, path, &err);
        test_condf(st == LORA_ERR_UNSUPPORTED && strstr(err.msg, path) && strstr(err.msg, "U8"),
                   "U8 to f32: %d %s", (int)st, err.msg);
    }
    t = st_find(&f, "c.f16");
    test_cond("f16",
              t && t->dtype == ST_F16 && t->numel == 3 && t->nbytes == 6 && !memcmp(t->data, c, 6));
    if (t) {
        float out[3];
        test_cond("f16 data is unaligned here", !st_tensor_aligned(t, 2));
        test_cond("f16 to f32 (unaligned)",
                  st_to_f32(out, t, path, &err) == LORA_OK && !memcmp(out, cf, sizeof cf));
    }
    t = st_find(&f, "d.bf16");
    if (t) {
        float out[3];
        test_cond("bf16", t->dtype == ST_BF16 && !memcmp(t->data, d, 6));
        test_cond("bf16 to f32",
                  st_to_f32(out, t, path, &err) == LORA_OK && !memcmp(out, df, sizeof df));
    } else {
        test_cond("bf16 found", 0);
    }
    t = st_find(&f, "e.f32.unaligned");
    if (t) {
        float out[2];
        test_cond("f32 unaligned flagged", !st_tensor_aligned(t, 4));
        test_cond("f32 unaligned to f32",
                  st_to_f32(out, t, path, &err) == LORA_OK && out[0] == 7 && out[1] == 8);
    } else {
        test_cond("e found", 0);
    }
    t = st_find(&f, "g.i32");
    test_cond("i32", t && t->dtype == ST_I32 && t->numel == 4 && !memcmp(t->data, g, 16));
    t = st_find(&f, "z.empty");
    test_cond("zero-length", t && t->numel == 0 && t->nbytes == 0 && t->ndim == 2 &&
                                 t->shape[0] == 0 && st_tensor_aligned(t, 64));
    t = st_find(&f, "s.scalar");
    test_cond("scalar",
              t && t->ndim == 0 && t->numel == 1 && t->nbytes == 4 && !memcmp(t->data, &s, 4));
    t = st_find(&f, "na\"me\\with\nodd\x01 chars \xc3\xa9");
    test_cond("escaped name round-trips", t != NULL);
    st_close(&f);
    test_cond("closed", is_zeroed(&f));
    st_close(&f);

    /* Many tensors, added in an order unlike their sorted one: every one is found. */
    {
        enum { N = 300 };
        static float vals[N];
        int64_t      one[1] = {1};
        char         name[32];
        w = st_writer_new();
        for (int i = 0; i < N; i++) {
            vals[i] = (float)i;
            snprintf(name, sizeof name, "t.%d", (i * 7919) % N);
            st_writer_add(w, name, ST_F32, 1, one, &vals[i], &err);
        }
        tpath(path, "many.safetensors");
        test_cond("many written", st_writer_write(w, path, &err) == LORA_OK);
        st_writer_free(w);
        int found = 0;
        if (st_open(&f, path, &err) == LORA_OK) {
            for (int i = 0; i < N; i++) {
                snprintf(name, sizeof name, "t.%d", (i * 7919) % N);
                const st_tensor *ti = st_find(&f, name);
                found += ti && !memcmp(ti->data, &vals[i], 4);
            }
            found += st_find(&f, "t.") == NULL && st_find(&f, "t.3000") == NULL &&
                     st_find(&f, "") == NULL;
            st_close(&f);
        }
        test_condf(found == N + 1, "many: %d of %d found", found, N);
    }

    /* An empty writer makes a valid file with no tensors. */
    w = st_writer_new();
    tpath(path, "empty.safetensors");
    test_cond("empty write", st_writer_write(w, path, &err) == LORA_OK);
    st_writer_free(w);
    test_cond("empty file is 16 bytes", file_size(path) == 16);
    test_cond("empty open", st_open(&f, path, &err) == LORA_OK && f.n_tensors == 0);
    st_close(&f);

    /* Overwriting replaces the content in one step. */
    tpath(path, "rt.safetensors");
    w = st_writer_new();
    st_writer_add(w, "only", ST_F32, 1, se, e, &err);
    test_cond("overwrite", st_writer_write(w, path, &err) == LORA_OK);
    st_writer_free(w);
    test_cond("overwritten", st_open(&f, path, &err) == LORA_OK && f.n_tensors == 1 &&
                                 st_find(&f, "only") != NULL);
    st_close(&f);
}

static void test_writer_args(void) {
    lora_error err;
    st_writer *w     = st_writer_new();
    float      x[4]  = {0};
    int64_t    s1[1] = {4}, neg[1] = {-1}, big[3] = {INT64_C(1) << 40, INT64_C(1) << 40, 1 << 20};
    int64_t    s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    test_cond("add ok", st_writer_add(w, "x", ST_F32, 1, s1, x, &err) == LORA_OK);
    test_cond("duplicate refused", st_writer_add(w, "x", ST_F32, 1, s1, x, &err) == LORA_ERR_ARG &&
                                       strstr(err.msg, "'x'"));
    test_cond("empty name", st_writer_add(w, "", ST_F32, 1, s1, x, &err) == LORA_ERR_ARG);
    test_cond("NULL name", st_writer_add(w, NULL, ST_F32, 1, s1, x, &err) == LORA_ERR_ARG);
    test_cond("__metadata__ name",
              st_writer_add(w, "__metadata__", ST_F32, 1, s1, x, &err) == LORA_ERR_ARG);
    test_cond("bad dtype", st_writer_add(w, "y", (st_dtype)99, 1, s1, x, &err) == LORA_ERR_ARG);
    test_cond("negative dim", st_writer_add(w, "y", ST_F32, 1, neg, x, &err) == LORA_ERR_ARG);
    test_cond("9 dims", st_writer_add(w, "y", ST_F32, 9, s9, x, &err) == LORA_ERR_ARG);
    test_cond("overflowing shape", st_writer_add(w, "y", ST_F32, 3, big, x, &err) == LORA_ERR_ARG);
    test_cond("NULL data", st_writer_add(w, "y", ST_F32, 1, s1, NULL, &err) == LORA_ERR_ARG);
    test_cond("bad UTF-8 name", st_writer_add(w, "\xff", ST_F32, 1, s1, x, &err) == LORA_ERR_ARG);
    test_cond("NULL meta", st_writer_meta(w, "k", NULL, &err) == LORA_ERR_ARG);
    st_writer_free(w);
    st_writer_free(NULL);

    char path[4096];
    tpath(path, "no/such/dir/x.safetensors");
    w = st_writer_new();
    test_cond("add", st_writer_add(w, "x", ST_F32, 1, s1, x, &err) == LORA_OK);
    lora_status st = st_writer_write(w, path, &err);
    test_condf(st == LORA_ERR_IO && strstr(err.msg, path), "write into a missing dir: %d %s",
               (int)st, err.msg);
    st_writer_free(w);

    test_cond("dtype sizes", st_dtype_size(ST_F32) == 4 && st_dtype_size(ST_BF16) == 2 &&
                                 st_dtype_size(ST_I64) == 8 && st_dtype_size(ST_BOOL) == 1 &&
                                 st_dtype_size((st_dtype)-1) == 0 &&
                                 st_dtype_size((st_dtype)10) == 0);
    test_cond("dtype names", !strcmp(st_dtype_name(ST_BF16), "BF16") &&
                                 st_dtype_parse("BF16") == ST_BF16 &&
                                 st_dtype_parse("I8") == ST_I8 && st_dtype_parse("f32") == -1 &&
                                 st_dtype_parse("") == -1);
}

/* ---- malformed files ---- */

static void test_bad_files(void) {
    char  p[4096];
    float data[1024];
    memset(data, 0, sizeof data);

    expect_bad("missing file", tpath(p, "does-not-exist.safetensors"), LORA_ERR_MISSING,
               "cannot open");
    expect_bad("directory", g_dir, LORA_ERR_IO, "not a regular file");

    write_bytes(tpath(p, "empty.bin"), "", 0);
    expect_bad("0-byte file", p, LORA_ERR_FORMAT, "shorter than");
    write_bytes(tpath(p, "five.bin"), "\x10\0\0\0\0", 5);
    expect_bad("5-byte file", p, LORA_ERR_FORMAT, "shorter than");

    write_raw_len(tpath(p, "hlen.bin"), 99999, "{}", data, 16);
    expect_bad("header length past the end", p, LORA_ERR_FORMAT,
               "header length 99999 exceeds file size 26");
    write_raw_len(tpath(p, "hlen2.bin"), UINT64_MAX, "{}", NULL, 0);
    expect_bad("header length 2^64-1", p, LORA_ERR_FORMAT, "exceeds file size");
    write_raw_len(tpath(p, "hlen3.bin"), 0, "", NULL, 0);
    expect_bad("header length 0", p, LORA_ERR_FORMAT, "too short");

    const char *full = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    write_raw_len(tpath(p, "cut.bin"), strlen(full), "{\"a\":{\"dtype\":\"F3", NULL, 0);
    expect_bad("header cut short", p, LORA_ERR_FORMAT, "exceeds file size");

    /* A header length over the 100 MB limit in a file that really is that large (sparse). */
    {
        tpath(p, "huge.bin");
        write_raw_len(p, (uint64_t)101 << 20, "{}", NULL, 0);
        int fd = open(p, O_WRONLY);
        int ok = fd >= 0 && ftruncate(fd, (off_t)(102 << 20)) == 0;
        if (fd >= 0) close(fd);
        test_cond("sparse file made", ok);
        expect_bad("header over the limit", p, LORA_ERR_FORMAT, "exceeds the limit");
        remove(p);
    }

    struct {
        const char *what, *hdr, *needle;
        size_t      data_bytes;
        lora_status want;
    } cases[] = {
        {"not JSON", "{not json at all}", "not valid JSON", 0, LORA_ERR_FORMAT},
        {"array header", "[1, 2, 3]", "does not start with '{'", 0, LORA_ERR_FORMAT},
        {"trailing junk", "{}  x", "after its JSON object", 0, LORA_ERR_FORMAT},
        {"two objects", "{}{}", "after its JSON object", 0, LORA_ERR_FORMAT},
        {"unterminated", "{\"a\": {", "not valid JSON", 0, LORA_ERR_FORMAT},
        {"bad UTF-8", "{\"\xc3\x28\":{}}", "UTF-8", 0, LORA_ERR_FORMAT},
        {"entry not object", "{\"a\": 5}", "tensor 'a' entry is not a JSON object", 0,
         LORA_ERR_FORMAT},
        {"offsets out of range",
         "{\"h.0.attn.c_attn.weight\":{\"dtype\":\"F32\",\"shape\":[997],"
         "\"data_offsets\":[10,4000]}}",
         "tensor 'h.0.attn.c_attn.weight' data_offsets [10, 4000] outside data section of 3000 "
         "bytes",
         3000, LORA_ERR_FORMAT},
        {"overlap",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
         "overlap", 24, LORA_ERR_FORMAT},
        {"overlap, nested",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
         "\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[16,20]}}",
         "overlap", 32, LORA_ERR_FORMAT},
        {"same range twice",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
         "\"b\":{\"dtype\":\"I32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
         "overlap", 16, LORA_ERR_FORMAT},
        {"end before begin", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[16,8]}}",
         "end before begin", 16, LORA_ERR_FORMAT},
        {"size mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}",
         "needs 12", 16, LORA_ERR_FORMAT},
        {"size mismatch bf16",
         "{\"a\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", "needs 8", 16,
         LORA_ERR_FORMAT},
        {"unknown dtype", "{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,1]}}",
         "unknown dtype 'Q4'", 16, LORA_ERR_UNSUPPORTED},
        {"dtype not string", "{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}",
         "no string 'dtype'", 16, LORA_ERR_FORMAT},
        {"duplicate names",
         "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         "tensor 'w' appears twice", 16, LORA_ERR_FORMAT},
        {"overflowing dims",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
         "\"data_offsets\":[0,4]}}",
         "overflows", 16, LORA_ERR_FORMAT},
        {"overflowing bytes",
         "{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}",
         "overflows", 16, LORA_ERR_FORMAT},
        {"negative dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
         "is negative", 16, LORA_ERR_FORMAT},
        {"fractional dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}",
         "not an integer", 16, LORA_ERR_FORMAT},
        {"huge dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,4]}}",
         "too large", 16, LORA_ERR_FORMAT},
        {"infinite dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1e999],\"data_offsets\":[0,4]}}",
         "too large", 16, LORA_ERR_FORMAT},
        {"string dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}",
         "not a number", 16, LORA_ERR_FORMAT},
        {"9 dims",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
         "9 dimensions", 16, LORA_ERR_UNSUPPORTED},
        {"no shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", "no 'shape' array", 16,
         LORA_ERR_FORMAT},
        {"no offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", "data_offsets", 16,
         LORA_ERR_FORMAT},
        {"three offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}",
         "data_offsets", 16, LORA_ERR_FORMAT},
        {"negative offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}",
         "begin is negative", 16, LORA_ERR_FORMAT},
        {"fractional offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.5]}}",
         "end is not an integer", 16, LORA_ERR_FORMAT},
        {"metadata not object", "{\"__metadata__\":[1]}", "'__metadata__' is not", 0,
         LORA_ERR_FORMAT},
        {"metadata value not string", "{\"__metadata__\":{\"k\":1}}", "value of 'k'", 0,
         LORA_ERR_FORMAT},
        {"metadata twice", "{\"__metadata__\":{},\"__metadata__\":{}}", "twice", 0,
         LORA_ERR_FORMAT},
        {"metadata key twice", "{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", "twice", 0,
         LORA_ERR_FORMAT},
        {"control bytes in a name stay on one line",
         "{\"a\\nb\":{\"dtype\":\"Q\",\"shape\":[1],\"data_offsets\":[0,4]}}", "'a?b'", 16,
         LORA_ERR_UNSUPPORTED},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "bad%02zu.safetensors", i);
        tpath(p, name);
        write_raw(p, cases[i].hdr, data, cases[i].data_bytes);
        expect_bad(cases[i].what, p, cases[i].want, cases[i].needle);
    }

    /* A NUL byte inside the header (strlen-based helpers cannot write it). */
    {
        static const unsigned char nul[] = {9,   0,   0, 0,   0,   0,   0,   0,  '{',
                                            '"', 'a', 0, '"', ':', '1', '}', ' '};
        write_bytes(tpath(p, "nul.safetensors"), nul, sizeof nul);
        expect_bad("NUL in header", p, LORA_ERR_FORMAT, "NUL byte");
    }

    /* Accepted: zero-byte tensors anywhere, gaps, trailing bytes, unknown keys, whitespace. */
    const char *ok_hdrs[] = {
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
        "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},\"extra\":{\"dtype\":"
        "\"U8\",\"shape\":[1],\"data_offsets\":[15,16],\"something\":[1]}}",
        "{}\n \t\r",
        "{\"a\":{\"dtype\":\"BOOL\",\"shape\":[],\"data_offsets\":[16,17]}}",
    };
    for (size_t i = 0; i < sizeof ok_hdrs / sizeof ok_hdrs[0]; i++) {
        st_file    f;
        lora_error err;
        tpath(p, "ok.safetensors");
        write_raw(p, ok_hdrs[i], data, 32);
        lora_status st = st_open(&f, p, &err);
        test_condf(st == LORA_OK, "valid header %zu refused: %s", i, err.msg);
        st_close(&f);
    }
}

/* Every truncation of a valid file fails cleanly; random single-byte mutations of the header
 * never crash, and whatever is accepted stays inside the mapping. */
static void test_sweeps(void) {
    char       path[4096], src[4096];
    lora_error err;
    st_writer *w     = st_writer_new();
    float      x[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    int64_t    s2[2] = {2, 3}, s1[1] = {4};
    st_writer_add(w, "weight", ST_F32, 2, s2, x, &err);
    st_writer_add(w, "bias", ST_F16, 1, s1, x, &err);
    st_writer_meta(w, "format", "pt", &err);
    tpath(src, "sweep.safetensors");
    test_cond("sweep source written", st_writer_write(w, src, &err) == LORA_OK);
    st_writer_free(w);

    FILE          *fp  = fopen(src, "rb");
    long           n   = (long)file_size(src);
    unsigned char *buf = malloc((size_t)n), *mut = malloc((size_t)n);
    test_cond("sweep source read", fp && fread(buf, 1, (size_t)n, fp) == (size_t)n);
    if (fp) fclose(fp);

    tpath(path, "sweep-mut.safetensors");
    int accepted = 0;
    for (long len = 0; len < n; len++) {
        st_file f;
        write_bytes(path, buf, (size_t)len);
        if (st_open(&f, path, &err) == LORA_OK) {
            accepted++;
            st_close(&f);
        }
    }
    test_condf(accepted == 0, "%d truncations accepted", accepted);

    uint32_t rng = 7;
    uint64_t hn  = 0;
    for (int i = 7; i >= 0; i--)
        hn = (hn << 8) | buf[i];
    int bad_bounds = 0;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(mut, buf, (size_t)n);
        int nmut = 1 + iter % 3;
        for (int m = 0; m < nmut; m++) {
            rng                     = rng * 1103515245u + 12345u;
            size_t pos              = (rng >> 8) % (8 + hn); /* length field or header */
            rng                     = rng * 1103515245u + 12345u;
            const char *interesting = "0123456789[]{},:\"-.e \\";
            mut[pos]                = (iter & 1) ? (unsigned char)(rng >> 16)
                                                 : (unsigned char)interesting[(rng >> 16) % 22];
        }
        write_bytes(path, mut, (size_t)n);
        st_file f;
        if (st_open(&f, path, &err) == LORA_OK) {
            const char *lo = (const char *)f.map, *hi = lo + f.size;
            for (int32_t i = 0; i < f.n_tensors; i++) {
                const st_tensor *t = &f.tensors[i];
                const char      *d = t->data;
                if (d < lo + 8 || d > hi || t->nbytes > (size_t)(hi - d)) bad_bounds++;
            }
            st_close(&f);
        } else if (strstr(err.msg, path) != err.msg || strchr(err.msg, '\n')) {
            bad_bounds++;
        }
    }
    test_condf(bad_bounds == 0, "%d mutated files escaped the checks", bad_bounds);
    free(buf);
    free(mut);
}

/* ---- sharded directories ---- */

static void write_shard(const char *dir, const char *file, const char *const *names, int n) {
    char       path[4096];
    lora_error err;
    float      v[4] = {1, 2, 3, 4};
    int64_t    s[1] = {4};
    st_writer *w    = st_writer_new();
    for (int i = 0; i < n; i++)
        st_writer_add(w, names[i], ST_F32, 1, s, v, &err);
    snprintf(path, sizeof path, "%s/%s", dir, file);
    if (st_writer_write(w, path, &err) != LORA_OK) fprintf(stderr, "%s\n", err.msg);
    st_writer_free(w);
}

static void write_text(const char *dir, const char *file, const char *text) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    write_bytes(path, text, strlen(text));
}

static void make_dir(char *out, const char *name) {
    lora_error err;
    tpath(out, name);
    lora_mkdirs(out, &err);
}

static void expect_set_bad(const char *what, const char *dir, lora_status want, const char *needle1,
                           const char *needle2) {
    st_set     s;
    lora_error err;
    memset(&err, 0, sizeof err);
    lora_status st = st_set_open_dir(&s, dir, &err);
    test_condf(st == want, "%s: status %d (%s), want %d; %s", what, (int)st, lora_status_str(st),
               (int)want, err.msg);
    test_condf(strstr(err.msg, needle1) && strstr(err.msg, needle2),
               "%s: message lacks '%s' or '%s': %s", what, needle1, needle2, err.msg);
    test_condf(strchr(err.msg, '\n') == NULL, "%s: not one line", what);
    test_condf(s.files == NULL && s.n_files == 0, "%s: set not left closed", what);
    st_set_close(&s);
}

static void test_sharded(void) {
    char        dir[4096], idx[8192], shard[8192];
    lora_error  err;
    const char *n1[] = {"wte.weight", "h.0.ln_1.weight"}, *n2[] = {"h.0.mlp.c_fc.weight"};
    const char *index = "{\"metadata\": {\"total_size\": 48},\n \"weight_map\": {\n"
                        "  \"wte.weight\": \"model-00001-of-00002.safetensors\",\n"
                        "  \"h.0.ln_1.weight\": \"model-00001-of-00002.safetensors\",\n"
                        "  \"h.0.mlp.c_fc.weight\": \"model-00002-of-00002.safetensors\"}}\n";

    make_dir(dir, "sharded");
    write_shard(dir, "model-00001-of-00002.safetensors", n1, 2);
    write_shard(dir, "model-00002-of-00002.safetensors", n2, 1);
    write_text(dir, "model.safetensors.index.json", index);
    st_set      s;
    lora_status st = st_set_open_dir(&s, dir, &err);
    test_condf(st == LORA_OK, "sharded open: %s", err.msg);
    if (st == LORA_OK) {
        const st_file   *f1 = NULL, *f2 = NULL, *f3 = (const st_file *)&s;
        const st_tensor *t1 = st_set_find(&s, "wte.weight", &f1);
        const st_tensor *t2 = st_set_find(&s, "h.0.mlp.c_fc.weight", &f2);
        test_cond("two shards", s.n_files == 2);
        test_cond("found in shard 1", t1 && f1 == &s.files[0] && t1->numel == 4);
        test_cond("found in shard 2",
                  t2 && f2 == &s.files[1] && strstr(f2->path, "model-00002-of-00002"));
        test_cond("absent", st_set_find(&s, "nope", &f3) == NULL && f3 == NULL);
        test_cond("file may be NULL", st_set_find(&s, "h.0.ln_1.weight", NULL) != NULL);
        st_set_close(&s);
        test_cond("set closed", s.files == NULL && s.n_files == 0);
    }
    st_set_close(&s);

    /* A trailing slash on the directory is fine. */
    snprintf(idx, sizeof idx, "%s/", dir);
    st = st_set_open_dir(&s, idx, &err);
    test_condf(st == LORA_OK && s.n_files == 2, "trailing slash: %s", err.msg);
    st_set_close(&s);

    /* One file wins over an index, as transformers does. */
    make_dir(dir, "single");
    write_shard(dir, "model.safetensors", n1, 2);
    st = st_set_open_dir(&s, dir, &err);
    test_condf(st == LORA_OK && s.n_files == 1 && st_set_find(&s, "wte.weight", NULL),
               "single file: %s", err.msg);
    st_set_close(&s);

    make_dir(dir, "single-bad");
    snprintf(shard, sizeof shard, "%s/model.safetensors", dir);
    write_raw(shard, "[]", NULL, 0);
    expect_set_bad("bad single file", dir, LORA_ERR_FORMAT, "single-bad/model.safetensors", "'{'");

    make_dir(dir, "nothing");
    expect_set_bad("empty directory", dir, LORA_ERR_MISSING, dir, "model.safetensors");

    make_dir(dir, "missing-shard");
    write_shard(dir, "model-00001-of-00002.safetensors", n1, 2);
    write_text(dir, "model.safetensors.index.json", index);
    snprintf(shard, sizeof shard, "%s/model-00002-of-00002.safetensors", dir);
    expect_set_bad("index names a missing shard", dir, LORA_ERR_MISSING, shard,
                   "model.safetensors.index.json");

    make_dir(dir, "wrong-shard");
    write_shard(dir, "model-00001-of-00002.safetensors", n1, 2);
    write_shard(dir, "model-00002-of-00002.safetensors", n1, 1); /* lacks h.0.mlp.c_fc */
    write_text(dir, "model.safetensors.index.json", index);
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    expect_set_bad("tensor not in its shard", dir, LORA_ERR_MISSING, idx, "'h.0.mlp.c_fc.weight'");

    make_dir(dir, "dup-across");
    const char *n3[] = {"h.0.mlp.c_fc.weight", "wte.weight"};
    write_shard(dir, "model-00001-of-00002.safetensors", n1, 2);
    write_shard(dir, "model-00002-of-00002.safetensors", n3, 2);
    write_text(dir, "model.safetensors.index.json", index);
    expect_set_bad("tensor in two shards", dir, LORA_ERR_FORMAT, "'wte.weight'", "both");

    make_dir(dir, "escape");
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"a\": \"../single/model.safetensors\"}}");
    expect_set_bad("shard outside the directory", dir, LORA_ERR_FORMAT, "index.json",
                   "does not name a file");

    make_dir(dir, "bad-json");
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"a\": ");
    expect_set_bad("malformed index", dir, LORA_ERR_FORMAT, "index.json", "not valid JSON");

    make_dir(dir, "no-map");
    write_text(dir, "model.safetensors.index.json", "{\"metadata\": {}}");
    expect_set_bad("index without weight_map", dir, LORA_ERR_FORMAT, "index.json", "weight_map");

    make_dir(dir, "empty-map");
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {}}");
    expect_set_bad("empty weight_map", dir, LORA_ERR_FORMAT, "index.json", "empty");

    make_dir(dir, "map-value");
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"a\": 3}}");
    expect_set_bad("weight_map value not a string", dir, LORA_ERR_FORMAT, "index.json", "'a'");

    make_dir(dir, "map-dup");
    write_shard(dir, "s.safetensors", n1, 2);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"wte.weight\": \"s.safetensors\", "
               "\"wte.weight\": \"s.safetensors\"}}");
    expect_set_bad("weight_map key twice", dir, LORA_ERR_FORMAT, "index.json", "twice");
}

/* ---- a full disk ---- */

/* In a child limited to 4 KiB files (SIGXFSZ ignored, so writes fail with EFBIG), an atomic
 * write of 64 KiB must fail with LORA_ERR_IO, remove its temporary and leave PATH as it was. */
static void test_full_disk(void) {
    char        path[4096], cfgp[4096];
    const char *orig = "the previous content";
    tpath(path, "full.safetensors");
    tpath(cfgp, "full.bin");
    write_bytes(path, orig, strlen(orig));
    write_bytes(cfgp, orig, strlen(orig));

    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {4096, 4096};
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(10);
        static float big[16384];
        int64_t      s[1] = {16384};
        lora_error   err;
        st_writer   *w = st_writer_new();
        st_writer_add(w, "big", ST_F32, 1, s, big, &err);
        lora_status st = st_writer_write(w, path, &err);
        st_writer_free(w);
        if (st != LORA_ERR_IO) _exit(11);
        if (!strstr(err.msg, path)) _exit(12);
        st = lora_write_file_atomic(cfgp, big, sizeof big, &err);
        if (st != LORA_ERR_IO) _exit(13);
        if (!strstr(err.msg, cfgp)) _exit(14);
        _exit(0);
    }
    int status = 0;
    test_cond("fork", pid > 0 && waitpid(pid, &status, 0) == pid);
    test_condf(WIFEXITED(status) && WEXITSTATUS(status) == 0,
               "full-disk child: exit %d (10 setrlimit, 11/13 status not IO, 12/14 message)",
               WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    test_cond("no temporary left after a failed write",
              count_prefixed("full.safetensors.tmp.") == 0 && count_prefixed("full.bin.tmp.") == 0);

    char   got[64] = {0};
    FILE  *fp      = fopen(path, "rb");
    size_t n       = fp ? fread(got, 1, sizeof got - 1, fp) : 0;
    if (fp) fclose(fp);
    test_cond("PATH unchanged after a failed write", n == strlen(orig) && !strcmp(got, orig));
    fp = fopen(cfgp, "rb");
    memset(got, 0, sizeof got);
    n = fp ? fread(got, 1, sizeof got - 1, fp) : 0;
    if (fp) fclose(fp);
    test_cond("buffer PATH unchanged after a failed write",
              n == strlen(orig) && !strcmp(got, orig));
}

/* ---- fileutil ---- */

static void test_fileutil(void) {
    char       out[32], path[4096];
    lora_error err;
    test_cond("join", lora_path_join(out, sizeof out, "a/b", "c.json", &err) == LORA_OK &&
                          !strcmp(out, "a/b/c.json"));
    test_cond("join trailing slash",
              lora_path_join(out, sizeof out, "a/", "c", &err) == LORA_OK && !strcmp(out, "a/c"));
    test_cond("join empty dir",
              lora_path_join(out, sizeof out, "", "c", &err) == LORA_OK && !strcmp(out, "c"));
    test_cond("join exact fit", lora_path_join(out, 6, "ab", "cd", &err) == LORA_OK);
    test_cond("join too long", lora_path_join(out, 5, "ab", "cd", &err) == LORA_ERR_ARG &&
                                   out[0] == '\0' && strstr(err.msg, "ab"));

    tpath(path, "deep/er/dir/");
    test_cond("mkdirs", lora_mkdirs(path, &err) == LORA_OK);
    test_cond("mkdirs again", lora_mkdirs(path, &err) == LORA_OK);
    tpath(path, "deep/file");
    write_bytes(path, "x", 1);
    tpath(path, "deep/file/sub");
    test_cond("mkdirs through a file fails",
              lora_mkdirs(path, &err) == LORA_ERR_IO && strstr(err.msg, "deep/file"));

    char  *data = NULL;
    size_t len  = 99;
    tpath(path, "nope.txt");
    test_cond("read missing", lora_read_file(path, &data, &len, &err) == LORA_ERR_MISSING &&
                                  data == NULL && len == 0 && strstr(err.msg, path));
    test_cond("read directory", lora_read_file(g_dir, &data, &len, &err) == LORA_ERR_IO);
    tpath(path, "text.txt");
    test_cond("write text", lora_write_file_atomic(path, "hello\0world", 11, &err) == LORA_OK);
    test_cond("read text", lora_read_file(path, &data, &len, &err) == LORA_OK && len == 11 &&
                               !memcmp(data, "hello\0world", 12));
    free(data);
    tpath(path, "zero.txt");
    test_cond("write empty", lora_write_file_atomic(path, "", 0, &err) == LORA_OK);
    test_cond("read empty",
              lora_read_file(path, &data, &len, &err) == LORA_OK && len == 0 && data[0] == '\0');
    free(data);

    lora_atomic_file af;
    tpath(path, "aborted.txt");
    test_cond("atomic open", lora_atomic_open(&af, path, &err) == LORA_OK && af.fp);
    fputs("partial", af.fp);
    test_cond("temporary exists", count_prefixed("aborted.txt.tmp.") == 1);
    lora_atomic_abort(&af);
    lora_atomic_abort(&af);
    test_cond("abort removes the temporary",
              count_prefixed("aborted.txt.tmp.") == 0 && file_size(path) == -1);
    test_cond("commit after abort", lora_atomic_commit(&af, &err) == LORA_ERR_STATE);
    memset(&af, 0, sizeof af);
    lora_atomic_abort(&af);
    test_cond("abort on a zeroed struct", 1);
    test_cond("atomic open empty path", lora_atomic_open(&af, "", &err) == LORA_ERR_ARG);
}

int main(void) {
    setup_dir();
    test_round_trip();
    test_writer_args();
    test_bad_files();
    test_sweeps();
    test_sharded();
    test_full_disk();
    test_fileutil();
    if (g_fallback[0]) nftw(g_fallback, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_report("test_safetensors");
}
