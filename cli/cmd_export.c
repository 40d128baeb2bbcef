/*
 * cmd_export.c — `lora export gguf`: a model (with its tokenizer), or a LoRA adapter, as a GGUF
 * file that llama.cpp loads.
 */
#include "commands.h"
#include "lora.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

static void export_usage(FILE *out) {
    fprintf(out,
            "usage: lora export gguf --model DIR [--adapter DIR] [--tokenizer DIR]\n"
            "                        [--dtype f32|f16|bf16] --out FILE\n"
            "\n"
            "Without --adapter: writes the model and its tokenizer (from --tokenizer DIR, default\n"
            "the model directory) as a GGUF model for llama.cpp (architecture gpt2); f16/bf16\n"
            "narrow the 2-D weights.\n"
            "With --adapter: writes the PEFT LoRA adapter in DIR as a llama.cpp LoRA GGUF, to be\n"
            "used with the same model exported as above (llama.cpp: --lora FILE, or\n"
            "--lora-scaled FILE SCALE). Default dtype f32.\n");
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
    if (argc < 2 || strcmp(argv[1], "gguf")) {
        if (argc >= 2) cli_error("export", "unknown format '%s' (supported: gguf)", argv[1]);
        export_usage(stderr);
        return 2;
    }
    argc--;
    argv++;
    const char *model = NULL, *adapter = NULL, *tokenizer = NULL, *out = NULL;
    lora_dtype  dtype = LORA_DTYPE_F32;
    int         c;
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
            break;
        case 'h':
            export_usage(stdout);
            return 0;
        default:
            export_usage(stderr);
            return 2;
        }
    }
    if (optind != argc || !model || !out) {
        export_usage(stderr);
        return 2;
    }
    if (adapter && tokenizer) {
        cli_error("export", "--tokenizer applies to model export, not with --adapter");
        return 2;
    }
    lora_error  err;
    lora_model *m  = NULL;
    lora_status st = lora_model_load(model, &m, &err);
    if (st == LORA_OK) {
        if (adapter) {
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
