/*
 * cmd_inspect.c — `lora inspect DIR`: a model's config, parameter count, tensor table, and an
 * estimate of training memory for a method, rank and batch shape.
 */
#include "commands.h"
#include "lora.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void inspect_usage(FILE *out) {
    fprintf(out,
            "usage: lora inspect MODEL_DIR [options]\n"
            "\n"
            "Prints the model's config, parameter count and tensor table, and estimates the\n"
            "memory a training run would need.\n"
            "\n"
            "options:\n"
            "  --method lora|full|bitfit   method for the estimate (default lora)\n"
            "  --r N                       LoRA rank (default 8)\n"
            "  --targets LIST              LoRA targets: q,k,v,c_attn,c_proj,c_fc,mlp.c_proj,all\n"
            "                              (default q,v)\n"
            "  --batch B                   batch size (default 4)\n"
            "  --seq-len T                 sequence length (default min(128, n_positions))\n"
            "  --no-tensors                omit the tensor table\n"
            "  -h, --help                  this help\n");
}

static double mib(int64_t bytes) {
    return (double)bytes / (1024.0 * 1024.0);
}

/* Parses a positive int option value; 0 on success. */
static int parse_pos_int(const char *s, int32_t *out) {
    char *end;
    long  v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v <= 0 || v > 1 << 30) return -1;
    *out = (int32_t)v;
    return 0;
}

int cmd_inspect(int argc, char **argv) {
    static const struct option opts[] = {
        {"method", required_argument, 0, 'm'}, {"r", required_argument, 0, 'r'},
        {"targets", required_argument, 0, 't'}, {"batch", required_argument, 0, 'b'},
        {"seq-len", required_argument, 0, 's'}, {"no-tensors", no_argument, 0, 'n'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    lora_adapter_params p = lora_adapter_params_default();
    int32_t             B = 4, T = 0; /* T 0: min(128, n_positions) */
    int                 tensors = 1, c;
    lora_error          err;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (!strcmp(optarg, "lora")) p.method = LORA_METHOD_LORA;
            else if (!strcmp(optarg, "full")) p.method = LORA_METHOD_FULL;
            else if (!strcmp(optarg, "bitfit")) p.method = LORA_METHOD_BITFIT;
            else {
                cli_error("inspect", "unknown --method '%s' (lora, full, bitfit)", optarg);
                return 2;
            }
            break;
        case 'r':
            if (parse_pos_int(optarg, &p.r)) {
                cli_error("inspect", "--r must be a positive integer, got '%s'", optarg);
                return 2;
            }
            break;
        case 't':
            if (lora_targets_parse(optarg, &p.targets, &err) != LORA_OK) {
                cli_error("inspect", "--targets: %s", err.msg);
                return 2;
            }
            break;
        case 'b':
            if (parse_pos_int(optarg, &B)) {
                cli_error("inspect", "--batch must be a positive integer, got '%s'", optarg);
                return 2;
            }
            break;
        case 's':
            if (parse_pos_int(optarg, &T)) {
                cli_error("inspect", "--seq-len must be a positive integer, got '%s'", optarg);
                return 2;
            }
            break;
        case 'n': tensors = 0; break;
        case 'h': inspect_usage(stdout); return 0;
        default: inspect_usage(stderr); return 2;
        }
    }
    if (optind != argc - 1) {
        inspect_usage(stderr);
        return 2;
    }
    const char *dir = argv[optind];
    lora_model *m   = NULL;
    if (lora_model_load(dir, &m, &err) != LORA_OK) {
        cli_error("inspect", "%s", err.msg);
        return 1;
    }
    const lora_config *cfg = lora_model_config(m);
    printf("model        %s\n", dir);
    printf("architecture gpt2\n");
    printf("n_layer      %d\nn_head       %d\nn_embd       %d\nn_inner      %d\n", cfg->n_layer,
           cfg->n_head, cfg->n_embd, cfg->n_inner);
    printf("n_positions  %d\nvocab_size   %d\nlayer_norm_epsilon %g\n", cfg->n_positions,
           cfg->vocab_size, (double)cfg->layer_norm_epsilon);
    printf("activation   %s\ntied head    %s\n",
           cfg->activation == LORA_ACT_GELU_ERF ? "gelu (erf)" : "gelu_new (tanh)",
           cfg->tie_word_embeddings ? "yes" : "no");
    int64_t mapped, converted;
    lora_model_weight_bytes(m, &mapped, &converted);
    printf("parameters   %lld (%.2f M)\n", (long long)lora_model_n_base_params(m),
           (double)lora_model_n_base_params(m) / 1e6);
    printf("weights      %.1f MiB mapped in place, %.1f MiB converted to F32\n", mib(mapped),
           mib(converted));
    if (tensors) {
        int32_t n = lora_model_n_file_tensors(m);
        printf("\n%-44s %-5s %-18s %10s\n", "tensor", "dtype", "shape", "bytes");
        for (int32_t i = 0; i < n; i++) {
            lora_file_tensor t;
            if (lora_model_file_tensor(m, i, &t) != LORA_OK) continue;
            char shape[64];
            int  k = snprintf(shape, sizeof shape, "(");
            for (int32_t d = 0; d < t.ndim && k < (int)sizeof shape; d++)
                k += snprintf(shape + k, sizeof shape - (size_t)k, "%s%lld", d ? ", " : "",
                              (long long)t.shape[d]);
            if (k < (int)sizeof shape) snprintf(shape + k, sizeof shape - (size_t)k, ")");
            printf("%-44s %-5s %-18s %10lld\n", t.name, t.dtype, shape, (long long)t.nbytes);
        }
    }
    lora_memory_estimate est;
    if (T == 0) T = cfg->n_positions < 128 ? cfg->n_positions : 128;
    if (lora_estimate_memory(cfg, &p, B, T, &est, &err) != LORA_OK) {
        cli_error("inspect", "%s: %s", dir, err.msg);
        lora_model_free(m);
        return 1;
    }
    const char *mname = p.method == LORA_METHOD_FULL     ? "full"
                        : p.method == LORA_METHOD_BITFIT ? "bitfit"
                                                         : "lora";
    printf("\ntraining memory estimate (method %s", mname);
    if (p.method == LORA_METHOD_LORA) printf(", r=%d", p.r);
    printf(", B=%d, T=%d)\n", B, T);
    printf("  base weights       %9.1f MiB\n", mib(est.weights_bytes));
    printf("  trainable + AdamW  %9.1f MiB\n", mib(est.trainable_bytes));
    printf("  activations        %9.1f MiB\n", mib(est.activation_bytes));
    printf("  total              %9.1f MiB\n", mib(est.total_bytes));
    lora_model_free(m);
    return 0;
}
