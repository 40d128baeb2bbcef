/*
 * cmd_export.c — `lora export gguf`: a model (with its tokenizer), or a LoRA / AdaLoRA adapter,
 * as a GGUF file that llama.cpp loads; `lora export lora`: an adapter (AdaLoRA in particular)
 * as a plain PEFT LoRA directory.
 */
#include "commands.h"
#include "io/fileutil.h"
#include "lora.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void export_usage(FILE *out) {
    fprintf(out,
            "usage: lora export gguf --model DIR [--adapter DIR] [--tokenizer DIR]\n"
            "                        [--dtype f32|f16|bf16] --out FILE\n"
            "       lora export lora --model DIR --adapter DIR --out DIR\n"
            "\n"
            "gguf without --adapter: writes the model and its tokenizer (from --tokenizer DIR,\n"
            "default the model directory) as a GGUF model for llama.cpp (architecture gpt2);\n"
            "f16/bf16 narrow the 2-D weights.\n"
            "gguf with --adapter: writes the PEFT adapter in DIR (LoRA, or AdaLoRA folded into\n"
            "LoRA form) as a llama.cpp LoRA GGUF, to be used with the same model exported as\n"
            "above (llama.cpp: --lora FILE, or --lora-scaled FILE SCALE). Default dtype f32.\n"
            "\n"
            "lora: writes the PEFT adapter in DIR as a plain PEFT LoRA directory (peft_type LORA)\n"
            "that PEFT's LoraConfig and `lora generate --adapter` load. An AdaLoRA adapter is\n"
            "folded: per module rank = its kept triplets (rank_pattern), B = P times the singular\n"
            "values, alpha_pattern keeping each module's scale; the update ΔW is unchanged. A\n"
            "module that keeps no triplet is written with rank 1 and B = 0. A LoRA adapter is\n"
            "copied as lora_adapter_save writes it.\n");
}

/* The adapter's own base_model_name_or_path, else fallback; static storage. */
static const char *base_name_of(const char *adapter, const char *fallback) {
    static char name[1024];
    char        path[4200];
    char       *text = NULL;
    size_t      len  = 0;
    snprintf(name, sizeof name, "%s", fallback);
    snprintf(path, sizeof path, "%s/adapter_config.json", adapter);
    if (lora_read_file(path, &text, &len, NULL) != LORA_OK) return name;
    cJSON       *root = cJSON_ParseWithLength(text, len);
    const cJSON *b    = cJSON_GetObjectItemCaseSensitive(root, "base_model_name_or_path");
    if (cJSON_IsString(b) && b->valuestring[0]) snprintf(name, sizeof name, "%s", b->valuestring);
    cJSON_Delete(root);
    free(text);
    return name;
}

int cmd_export(int argc, char **argv) {
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"adapter", required_argument, 0, 'a'},
                                         {"tokenizer", required_argument, 0, 't'},
                                         {"dtype", required_argument, 0, 'd'},
                                         {"out", required_argument, 0, 'o'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        export_usage(stdout);
        return 0;
    }
    if (argc < 2 || (strcmp(argv[1], "gguf") && strcmp(argv[1], "lora"))) {
        if (argc >= 2) cli_error("export", "unknown format '%s' (supported: gguf, lora)", argv[1]);
        export_usage(stderr);
        return 2;
    }
    int to_lora = !strcmp(argv[1], "lora");
    argc--;
    argv++;
    const char *model = NULL, *adapter = NULL, *tokenizer = NULL, *out = NULL;
    lora_dtype  dtype = LORA_DTYPE_F32;
    int         c, dtype_set = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 'a':
            adapter = optarg;
            break;
        case 't':
            tokenizer = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'd':
            if (cli_parse_dtype(optarg, &dtype)) {
                cli_error("export", "--dtype must be f32, f16 or bf16, got '%s'", optarg);
                return 2;
            }
            dtype_set = 1;
            break;
        case 'h':
            export_usage(stdout);
            return 0;
        default:
            export_usage(stderr);
            return 2;
        }
    }
    if (optind != argc || !model || !out || (to_lora && !adapter)) {
        export_usage(stderr);
        return 2;
    }
    if (adapter && tokenizer) {
        cli_error("export", "--tokenizer applies to model export, not with --adapter");
        return 2;
    }
    if (to_lora && dtype_set) {
        cli_error("export", "--dtype applies to gguf export (PEFT directories are F32)");
        return 2;
    }
    lora_error  err;
    lora_model *m  = NULL;
    lora_status st = lora_model_load(model, &m, &err);
    if (st == LORA_OK) {
        if (to_lora) {
            st = lora_adapter_load(m, adapter, &err);
            if (st == LORA_OK)
                st = lora_adapter_save_lora(m, out, base_name_of(adapter, model), &err);
        } else if (adapter) {
            st = lora_adapter_load(m, adapter, &err);
            if (st == LORA_OK) st = lora_adapter_save_gguf(m, out, dtype, &err);
        } else {
            st = lora_model_save_gguf(m, out, dtype, tokenizer, &err);
        }
    }
    lora_model_free(m);
    if (st != LORA_OK) {
        cli_error("export", "%s", err.msg);
        return 1;
    }
    return 0;
}
