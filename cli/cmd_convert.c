/*
 * cmd_convert.c — `lora convert`: re-saves a GPT-2 directory in another dtype (F32, F16, BF16),
 * with its tokenizer files.
 */
#include "commands.h"
#include "lora.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

static void convert_usage(FILE *out) {
    fprintf(out, "usage: lora convert --model DIR --dtype f32|f16|bf16 --out DIR\n"
                 "\n"
                 "Writes the model as a Hugging Face directory in the given dtype (tokenizer files\n"
                 "copied). Weights are rounded to nearest even when narrowing.\n");
}

/* Parses f32/f16/bf16; returns 0 on success. */
int cli_parse_dtype(const char *s, lora_dtype *out) {
    if (!strcmp(s, "f32") || !strcmp(s, "float32")) *out = LORA_DTYPE_F32;
    else if (!strcmp(s, "f16") || !strcmp(s, "float16")) *out = LORA_DTYPE_F16;
    else if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16")) *out = LORA_DTYPE_BF16;
    else return -1;
    return 0;
}

int cmd_convert(int argc, char **argv) {
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"dtype", required_argument, 0, 'd'},
                                         {"out", required_argument, 0, 'o'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model = NULL, *out = NULL;
    lora_dtype  dtype = LORA_DTYPE_F32;
    int         c, have_dtype = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'o': out = optarg; break;
        case 'd':
            if (cli_parse_dtype(optarg, &dtype)) {
                cli_error("convert", "--dtype must be f32, f16 or bf16, got '%s'", optarg);
                return 2;
            }
            have_dtype = 1;
            break;
        case 'h': convert_usage(stdout); return 0;
        default: convert_usage(stderr); return 2;
        }
    }
    if (optind != argc || !model || !out || !have_dtype) {
        convert_usage(stderr);
        return 2;
    }
    lora_error  err;
    lora_model *m = NULL;
    if (lora_model_load(model, &m, &err) != LORA_OK ||
        lora_model_save_hf(m, out, dtype, &err) != LORA_OK) {
        cli_error("convert", "%s", err.msg);
        lora_model_free(m);
        return 1;
    }
    lora_model_free(m);
    return 0;
}
