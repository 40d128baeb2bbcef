/*
 * gguf_helper.c — our side of the llama.cpp interop test (check_llama.sh):
 *
 *   gguf_helper model DIR                      a tiny random GPT-2 (C = 64, 4 heads, V = 300)
 *                                              with a byte-level tokenizer (256 bytes, 2
 *                                              merges, <|endoftext|>; ids 259.. unused)
 *   gguf_helper adapter MODEL OUT TARGETS R ALPHA RSLORA SEED
 *                                              a LoRA adapter with random A and B, as a PEFT dir
 *   gguf_helper logits MODEL [--adapter DIR SCALE] ID...
 *                                              our logits at every position, with the adapter's
 *                                              output scaled by SCALE as llama.cpp's user scale
 *   gguf_helper compare OURS THEIRS TOL        max |difference| and argmax agreement; exit 0
 *                                              when every argmax agrees and max <= TOL
 *   gguf_helper differ OURS THEIRS MIN         exit 0 when max |difference| >= MIN (a negative
 *                                              control must be detected)
 *   gguf_helper gap LOGITS                     prints the smallest gap between the two largest
 *                                              logits of any position (a near-tie there makes
 *                                              the argmax hinge on rounding)
 *   gguf_helper scale-alpha IN OUT FACTOR      an adapter GGUF with adapter.lora.alpha x FACTOR
 *   gguf_helper untranspose IN OUT             a model GGUF whose square attn_output weights are
 *                                              stored without the Conv1D transpose
 *
 * Logits files: "n_tokens n_vocab", then one line of n_vocab values per position.
 */
#include "io/gguf.h"
#include "lora.h"
#include "tiny_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what, const lora_error *err) {
    fprintf(stderr, "gguf_helper: %s: %s\n", what, err ? err->msg : "");
    return 1;
}

/* ---- model ---- */

/* GPT-2's byte -> printable code point map. */
static uint32_t byte_cp(int b) {
    if ((b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff))
        return (uint32_t)b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= '!' && x <= '~') || (x >= 0xa1 && x <= 0xac) || (x >= 0xae && x <= 0xff))) n++;
    return 256u + (uint32_t)n;
}

/* The JSON string body of a code point: UTF-8, with '"' and '\' escaped. */
static void put_cp(FILE *fp, uint32_t cp) {
    if (cp == '"' || cp == '\\')
        fprintf(fp, "\\%c", (char)cp);
    else if (cp < 0x80)
        fputc((int)cp, fp);
    else
        fprintf(fp, "%c%c", (char)(0xc0 | (cp >> 6)), (char)(0x80 | (cp & 0x3f)));
}

static int cmd_model(const char *dir) {
    lora_config c = tiny_config();
    c.n_head      = 4;
    c.n_embd      = 64;
    c.n_inner     = 256;
    c.n_positions = 64;
    c.vocab_size  = 300;
    if (tiny_write(dir, &c, NULL, 11) != 0) return fail("cannot write the model", NULL);
    char path[4200];
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    FILE *fp = fopen(path, "w");
    if (!fp) return fail("cannot write vocab.json", NULL);
    fputc('{', fp);
    for (int b = 0; b < 256; b++) {
        fputc('"', fp);
        put_cp(fp, byte_cp(b));
        fprintf(fp, "\": %d, ", b);
    }
    fputc('"', fp);
    put_cp(fp, byte_cp(' '));
    fputs("t\": 256, \"he\": 257, \"<|endoftext|>\": 258}", fp);
    fclose(fp);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    if (!(fp = fopen(path, "w"))) return fail("cannot write merges.txt", NULL);
    fputs("#version: 0.2\n", fp);
    put_cp(fp, byte_cp(' '));
    fputs(" t\nh e\n", fp);
    fclose(fp);
    return 0;
}

/* ---- adapter ---- */

static int cmd_adapter(char **a) {
    lora_model *m = NULL;
    lora_error  err;
    if (lora_model_load(a[0], &m, &err) != LORA_OK) return fail("load", &err);
    lora_adapter_params p = lora_adapter_params_default();
    p.r                   = atoi(a[3]);
    p.alpha               = strtof(a[4], NULL);
    p.use_rslora          = atoi(a[5]);
    p.seed                = (uint64_t)atoi(a[6]);
    p.dropout             = 0;
    if (lora_targets_parse(a[2], &p.targets, &err) != LORA_OK ||
        lora_model_attach(m, &p, &err) != LORA_OK) {
        lora_model_free(m);
        return fail("attach", &err);
    }
    for (int32_t i = 0; i < lora_model_n_trainable(m); i++) { /* B = 0 at init: randomise it */
        lora_tensor_info t;
        lora_model_trainable(m, i, &t);
        if (!strstr(t.name, "lora_B")) continue;
        uint64_t key = rng_key(p.seed, (uint64_t)i, 5);
        for (int64_t j = 0; j < t.numel; j++)
            t.data[j] = 0.3f * rng_normal(key, (uint64_t)j);
    }
    lora_status st = lora_adapter_save(m, a[1], "tiny", &err);
    lora_model_free(m);
    return st == LORA_OK ? 0 : fail("save", &err);
}

/* ---- logits ---- */

static int cmd_logits(int argc, char **argv) {
    const char *adapter = NULL;
    float       scale   = 1.0f;
    int         first   = 1;
    if (argc >= 4 && !strcmp(argv[1], "--adapter")) {
        adapter = argv[2];
        scale   = strtof(argv[3], NULL);
        first   = 4;
    }
    int         T = argc - first;
    lora_model *m = NULL;
    lora_error  err;
    if (T < 1) return fail("no token ids", NULL);
    if (lora_model_load(argv[0], &m, &err) != LORA_OK) return fail("load", &err);
    if (adapter) {
        if (lora_adapter_load(m, adapter, &err) != LORA_OK) {
            lora_model_free(m);
            return fail("adapter", &err);
        }
        /* llama.cpp's user scale multiplies the adapter's output: scale every B */
        for (int32_t i = 0; i < lora_model_n_trainable(m); i++) {
            lora_tensor_info t;
            lora_model_trainable(m, i, &t);
            if (strstr(t.name, "lora_B"))
                for (int64_t j = 0; j < t.numel; j++)
                    t.data[j] *= scale;
        }
    }
    int32_t *ids = malloc((size_t)T * sizeof *ids);
    for (int i = 0; i < T; i++)
        ids[i] = atoi(argv[first + i]);
    lora_status st = lora_model_forward(m, ids, NULL, 1, T, NULL, &err);
    free(ids);
    if (st != LORA_OK) {
        lora_model_free(m);
        return fail("forward", &err);
    }
    int          V = lora_model_config(m)->vocab_size;
    const float *l = lora_model_logits(m);
    printf("%d %d\n", T, V);
    for (int t = 0; t < T; t++) {
        for (int v = 0; v < V; v++)
            printf(v ? " %.9g" : "%.9g", (double)l[(size_t)t * V + v]);
        putchar('\n');
    }
    lora_model_free(m);
    return 0;
}

/* ---- comparing ---- */

static float *read_logits(const char *path, int *T, int *V) {
    FILE *fp = fopen(path, "r");
    if (!fp || fscanf(fp, "%d %d", T, V) != 2 || *T < 1 || *V < 1 || *T > 4096 || *V > 1 << 20) {
        if (fp) fclose(fp);
        fprintf(stderr, "gguf_helper: %s: not a logits file\n", path);
        return NULL;
    }
    size_t n = (size_t)*T * (size_t)*V;
    float *l = malloc(n * sizeof *l);
    for (size_t i = 0; l && i < n; i++)
        if (fscanf(fp, "%f", &l[i]) != 1) {
            fprintf(stderr, "gguf_helper: %s: short at value %zu\n", path, i);
            free(l);
            l = NULL;
        }
    fclose(fp);
    return l;
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Prints the comparison; mode 0: pass when close, 1: pass when far apart. */
static int cmd_compare(char **a, int mode) {
    int    T1, V1, T2, V2;
    float *x = read_logits(a[0], &T1, &V1), *y = read_logits(a[1], &T2, &V2);
    double lim = strtod(a[2], NULL), max = 0;
    int    same = 0, rc = 1;
    if (!x || !y || T1 != T2 || V1 != V2) {
        fprintf(stderr, "gguf_helper: logits files disagree in shape\n");
        goto done;
    }
    for (int t = 0; t < T1; t++) {
        same += argmax(x + (size_t)t * V1, V1) == argmax(y + (size_t)t * V1, V1);
        for (int v = 0; v < V1; v++) {
            double d = fabs((double)x[(size_t)t * V1 + v] - (double)y[(size_t)t * V1 + v]);
            if (d > max || d != d) max = d;
        }
    }
    printf("max_abs %.3g argmax_same %d/%d\n", max, same, T1);
    rc = mode == 0 ? !(same == T1 && max <= lim) : !(max >= lim);
done:
    free(x);
    free(y);
    return rc;
}

static int cmd_gap(const char *path) {
    int    T, V;
    float *x = read_logits(path, &T, &V);
    if (!x) return 1;
    double gap = INFINITY;
    for (int t = 0; t < T; t++) {
        const float *l = x + (size_t)t * V;
        int          b = argmax(l, V);
        double       second = -INFINITY;
        for (int v = 0; v < V; v++)
            if (v != b && l[v] > second) second = l[v];
        if ((double)l[b] - second < gap) gap = (double)l[b] - second;
    }
    printf("%.6g\n", gap);
    free(x);
    return 0;
}

/* ---- negative controls ---- */

static int rewrite(const char *in, const char *out, float alpha_factor, int untranspose) {
    gguf_file    f;
    lora_error   err;
    gguf_writer *w     = gguf_writer_new();
    float       *owned = NULL;
    lora_status  st    = gguf_open(&f, in, &err);
    size_t       n_own = 0;
    if (st != LORA_OK) {
        gguf_writer_free(w);
        return fail("open", &err);
    }
    for (int64_t i = 0; i < f.n_tensors; i++)
        n_own += (size_t)f.tensors[i].numel;
    owned      = malloc((n_own ? n_own : 1) * sizeof(float));
    float *cur = owned;
    for (int64_t i = 0; st == LORA_OK && i < f.n_kv; i++) {
        const gguf_kv *kv = &f.kv[i];
        if (alpha_factor != 1.0f && !strcmp(kv->key, "adapter.lora.alpha"))
            st =
                gguf_writer_set_f32(w, kv->key, (float)gguf_kv_get_f64(kv, 0) * alpha_factor, &err);
        else
            st = gguf_writer_copy_kv(w, kv, &err);
    }
    for (int64_t i = 0; st == LORA_OK && i < f.n_tensors; i++) {
        const gguf_tensor *t    = &f.tensors[i];
        const void        *data = t->data;
        if (untranspose && strstr(t->name, "attn_output.weight") && t->type == GGUF_TENSOR_F32 &&
            t->ne[0] == t->ne[1]) {
            const float *s = t->data;
            int64_t      n = t->ne[0];
            for (int64_t r = 0; r < n; r++)
                for (int64_t c = 0; c < n; c++)
                    cur[r * n + c] = s[c * n + r];
            data = cur;
            cur += t->numel;
        }
        st = gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, data, &err);
    }
    if (st == LORA_OK) st = gguf_writer_write(w, out, &err);
    gguf_writer_free(w);
    gguf_close(&f);
    free(owned);
    return st == LORA_OK ? 0 : fail("rewrite", &err);
}

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "model") && argc == 3) return cmd_model(argv[2]);
    if (!strcmp(cmd, "adapter") && argc == 9) return cmd_adapter(argv + 2);
    if (!strcmp(cmd, "logits") && argc >= 4) return cmd_logits(argc - 2, argv + 2);
    if (!strcmp(cmd, "compare") && argc == 5) return cmd_compare(argv + 2, 0);
    if (!strcmp(cmd, "differ") && argc == 5) return cmd_compare(argv + 2, 1);
    if (!strcmp(cmd, "gap") && argc == 3) return cmd_gap(argv[2]);
    if (!strcmp(cmd, "scale-alpha") && argc == 5)
        return rewrite(argv[2], argv[3], strtof(argv[4], NULL), 0);
    if (!strcmp(cmd, "untranspose") && argc == 4) return rewrite(argv[2], argv[3], 1.0f, 1);
    fprintf(stderr, "usage: gguf_helper model|adapter|logits|compare|differ|gap|scale-alpha|"
                    "untranspose ... (see gguf_helper.c)\n");
    return 2;
}
