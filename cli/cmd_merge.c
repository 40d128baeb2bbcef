/*
 * cmd_merge.c — `lora merge`: folds one or more PEFT adapters into a base model and writes the
 * result as a complete Hugging Face directory (config.json, model.safetensors, the tokenizer
 * files), atomically: the directory appears whole or not at all.
 *
 * A thin front end over lora_adapter_add, lora_model_merge and lora_model_save_hf_atomic.
 * Also home of cli_parse_adapter, the DIR[:SCALE] syntax `lora generate` shares.
 */
#include "commands.h"
#include "lora.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void merge_usage(FILE *out) {
    fprintf(out,
            "usage: lora merge --model DIR --adapter DIR[:SCALE] [--adapter DIR[:SCALE] ...]\n"
            "                  [--scale S] [--dtype f32|f16|bf16] --out DIR\n"
            "\n"
            "Folds the adapters (PEFT LoRA or AdaLoRA directories) into the base weights,\n"
            "W = W0 + sum of scale x delta W, and writes a Hugging Face directory that loads\n"
            "without any adapter: config.json, model.safetensors and the base's tokenizer\n"
            "files. OUT is written under a temporary name and renamed into place; it must not\n"
            "exist or be empty.\n"
            "\n"
            "options:\n"
            "  --model DIR            the base model (Hugging Face GPT-2 directory; required)\n"
            "  --adapter DIR[:SCALE]  an adapter, scaled by SCALE on top of its own alpha / r\n"
            "                         (repeatable; default scale: --scale)\n"
            "  --scale S              scale of adapters given without one (default 1)\n"
            "  --dtype D              f32, f16 or bf16 (default: the base model's dtype)\n"
            "  --out DIR              the merged model's directory (required)\n"
            "  -h, --help             this help\n");
}

int cli_parse_adapter(const char *arg, char **dir, float *scale, int *has_scale) {
    const char *colon = strrchr(arg, ':');
    *has_scale        = 0;
    if (colon && colon[1]) {
        char *end;
        errno   = 0;
        float v = strtof(colon + 1, &end);
        if (*end == '\0' && !errno && isfinite(v)) {
            *scale     = v;
            *has_scale = 1;
            *dir       = strndup(arg, (size_t)(colon - arg));
            goto check;
        }
    }
    *dir = strdup(arg);
check:
    if (*dir && **dir) return 0;
    free(*dir);
    *dir = NULL;
    return -1;
}

/* The dtype most of the base's weight bytes are stored in (F32 when unknown, e.g. GGUF). */
static lora_dtype base_dtype(const lora_model *m) {
    int64_t bytes[3] = {0, 0, 0};
    for (int32_t i = 0; i < lora_model_n_file_tensors(m); i++) {
        lora_file_tensor t;
        if (lora_model_file_tensor(m, i, &t) != LORA_OK) continue;
        int k = !strcmp(t.dtype, "F16") ? 1 : !strcmp(t.dtype, "BF16") ? 2 : 0;
        bytes[k] += t.nbytes;
    }
    if (bytes[1] > bytes[0] && bytes[1] >= bytes[2]) return LORA_DTYPE_F16;
    if (bytes[2] > bytes[0] && bytes[2] > bytes[1]) return LORA_DTYPE_BF16;
    return LORA_DTYPE_F32;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int cmd_merge(int argc, char **argv) {
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"adapter", required_argument, 0, 'a'},
                                         {"scale", required_argument, 0, 's'},
                                         {"dtype", required_argument, 0, 'd'},
                                         {"out", required_argument, 0, 'o'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model = NULL, *out = NULL;
    char      **dirs   = calloc((size_t)argc + 1, sizeof *dirs);
    float      *scales = calloc((size_t)argc + 1, sizeof *scales);
    int        *has    = calloc((size_t)argc + 1, sizeof *has);
    int         n_ad = 0, have_dtype = 0, c, rc = 2;
    float       dflt  = 1.0f;
    lora_dtype  dtype = LORA_DTYPE_F32;
    lora_model *m     = NULL;
    lora_error  err;
    if (!dirs || !scales || !has) {
        cli_error("merge", "out of memory");
        rc = 1;
        goto done;
    }
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'o': out = optarg; break;
        case 'a':
            if (cli_parse_adapter(optarg, &dirs[n_ad], &scales[n_ad], &has[n_ad])) {
                cli_error("merge", "--adapter needs DIR or DIR:SCALE, got '%s'", optarg);
                goto done;
            }
            n_ad++;
            break;
        case 's': {
            char *end;
            errno = 0;
            dflt  = strtof(optarg, &end);
            if (!*optarg || *end || errno || !isfinite(dflt)) {
                cli_error("merge", "--scale must be a finite number, got '%s'", optarg);
                goto done;
            }
            break;
        }
        case 'd':
            if (cli_parse_dtype(optarg, &dtype)) {
                cli_error("merge", "--dtype must be f32, f16 or bf16, got '%s'", optarg);
                goto done;
            }
            have_dtype = 1;
            break;
        case 'h':
            merge_usage(stdout);
            rc = 0;
            goto done;
        default:
            cli_error("merge", "unknown option or missing value: '%s'", argv[optind - 1]);
            merge_usage(stderr);
            goto done;
        }
    }
    if (optind < argc || !model || !out || n_ad == 0) {
        if (optind < argc) cli_error("merge", "unexpected argument '%s'", argv[optind]);
        else
            cli_error("merge", "%s is required",
                      !model ? "--model" : !out ? "--out" : "--adapter");
        merge_usage(stderr);
        goto done;
    }
    rc        = 1;
    double t0 = now_s();
    if (lora_model_load(model, &m, &err) != LORA_OK) goto lib_fail;
    for (int i = 0; i < n_ad; i++) {
        char name[32];
        snprintf(name, sizeof name, "adapter%d", i);
        if (lora_adapter_add(m, dirs[i], name, has[i] ? scales[i] : dflt, &err) != LORA_OK)
            goto lib_fail;
    }
    if (!have_dtype) dtype = base_dtype(m);
    if (lora_model_merge(m, &err) != LORA_OK ||
        lora_model_save_hf_atomic(m, out, dtype, &err) != LORA_OK)
        goto lib_fail;
    int32_t sites = 0;
    for (int32_t i = 0; i < lora_model_n_adapters(m); i++) {
        lora_adapter_info info;
        if (lora_model_adapter(m, i, &info) == LORA_OK) sites += info.n_sites;
    }
    fprintf(stderr, "lora merge: %d adapter%s (%d sites) merged into %s (%s) in %.2f s\n", n_ad,
            n_ad == 1 ? "" : "s", (int)sites, out,
            dtype == LORA_DTYPE_F16 ? "F16" : dtype == LORA_DTYPE_BF16 ? "BF16" : "F32",
            now_s() - t0);
    rc = 0;
    goto done;
lib_fail:
    cli_error("merge", "%s", err.msg);
done:
    lora_model_free(m);
    for (int i = 0; dirs && i < n_ad; i++) free(dirs[i]);
    free(dirs);
    free(scales);
    free(has);
    return rc;
}
