/*
 * cmd_combine.c — `lora combine`: several LoRA adapters (PEFT directories) mixed into one with
 * weights, as PEFT's add_weighted_adapter does (linear, cat or svd).
 */
#include "commands.h"
#include "lora.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ADAPTERS 64

static void combine_usage(FILE *out) {
    fprintf(
        out,
        "usage: lora combine --adapter DIR --weight W [--adapter DIR --weight W ...]\n"
        "                    [--how linear|cat|svd] [--r R] --out DIR\n"
        "\n"
        "Writes to --out a new PEFT LoRA adapter mixing the given ones, as PEFT's\n"
        "add_weighted_adapter does. The i-th --weight goes with the i-th --adapter (any sign).\n"
        "With scales s_i = lora_alpha_i / r_i (/ sqrt(r_i) with rsLoRA), per module:\n"
        "  cat     A = [w1 s1 A1; w2 s2 A2; ...], B = [B1 B2 ...]: rank r1 + r2 + ...;\n"
        "          B A = sum w_i s_i B_i A_i exactly.\n"
        "  svd     sum w_i s_i B_i A_i cut to rank R by SVD (B = U S, A = V^T; the best rank-R\n"
        "          approximation). --r R, default the largest input rank; R <= min(in, out)\n"
        "          of every module. No clamping. The default --how, as in PEFT.\n"
        "  linear  equal ranks only: A = sum sign(w_i s_i) sqrt|w_i s_i| A_i,\n"
        "          B = sum sqrt|w_i s_i| B_i. As in PEFT, B A then holds cross terms B_i A_j:\n"
        "          it is NOT sum w_i s_i B_i A_i when several adapters are mixed.\n"
        "One adapter is always combined linearly (B A = w s B A), as in PEFT. A module missing\n"
        "from some adapters is mixed from those that have it. The result has r = lora_alpha =\n"
        "its rank and use_rslora false (scale 1; PEFT releases before its rsLoRA fix copied\n"
        "use_rslora from the first adapter and so scaled rsLoRA results by sqrt(r)), the first\n"
        "adapter's other settings, and F32 tensors. AdaLoRA adapters are refused (as by PEFT).\n"
        "--out must not exist or be empty; it appears atomically.\n");
}

/* A finite number, the whole string. */
static int parse_double(const char *s, double *out) {
    char *end;
    errno    = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno == ERANGE || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

int cmd_combine(int argc, char **argv) {
    static const struct option opts[] = {{"adapter", required_argument, 0, 'a'},
                                         {"weight", required_argument, 0, 'w'},
                                         {"how", required_argument, 0, 'c'},
                                         {"r", required_argument, 0, 'r'},
                                         {"out", required_argument, 0, 'o'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char                *dirs[MAX_ADAPTERS], *out = NULL;
    double                     weights[MAX_ADAPTERS];
    int                        n_dirs = 0, n_weights = 0, rank = 0, c;
    lora_combine_how           how = LORA_COMBINE_SVD;
    lora_error                 err;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'a':
            if (n_dirs == MAX_ADAPTERS) {
                cli_error("combine", "at most %d adapters", MAX_ADAPTERS);
                return 2;
            }
            dirs[n_dirs++] = optarg;
            break;
        case 'w':
            if (n_weights == MAX_ADAPTERS) {
                cli_error("combine", "at most %d weights", MAX_ADAPTERS);
                return 2;
            }
            if (parse_double(optarg, &weights[n_weights])) {
                cli_error("combine", "--weight must be a finite number, got '%s'", optarg);
                return 2;
            }
            n_weights++;
            break;
        case 'c':
            if (lora_combine_how_parse(optarg, &how, &err) != LORA_OK) {
                cli_error("combine", "--how: %s", err.msg);
                return 2;
            }
            break;
        case 'r': {
            char *end;
            long  v = strtol(optarg, &end, 10);
            if (end == optarg || *end != '\0' || v < 1 || v > 65536) {
                cli_error("combine", "--r must be an integer in 1..65536, got '%s'", optarg);
                return 2;
            }
            rank = (int)v;
            break;
        }
        case 'o':
            out = optarg;
            break;
        case 'h':
            combine_usage(stdout);
            return 0;
        default:
            combine_usage(stderr);
            return 2;
        }
    }
    if (optind != argc || n_dirs == 0 || !out) {
        if (optind != argc)
            cli_error("combine", "unexpected argument '%s'", argv[optind]);
        else
            cli_error("combine", "%s is required", n_dirs == 0 ? "--adapter" : "--out");
        combine_usage(stderr);
        return 2;
    }
    if (n_weights != n_dirs) {
        cli_error("combine", "%d adapters but %d weights: give one --weight per --adapter", n_dirs,
                  n_weights);
        return 2;
    }
    if (rank && how != LORA_COMBINE_SVD) {
        cli_error("combine", "--r applies to --how svd only (linear keeps the rank, cat adds "
                             "the ranks)");
        return 2;
    }
    if (rank && n_dirs == 1) {
        cli_error("combine", "one adapter is combined linearly (as PEFT does), so --r has no "
                             "effect (hint: give the adapter twice with half the weight each)");
        return 2;
    }
    if (lora_adapters_combine(dirs, weights, n_dirs, how, rank, out, &err) != LORA_OK) {
        cli_error("combine", "%s", err.msg);
        return 1;
    }
    static const char *names[3] = {"linear", "cat", "svd"};
    printf("combined %d adapter%s (%s) into %s\n", n_dirs, n_dirs == 1 ? "" : "s",
           names[n_dirs == 1 ? LORA_COMBINE_LINEAR : how], out);
    return 0;
}
