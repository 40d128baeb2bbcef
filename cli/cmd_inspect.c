/*
 * cmd_inspect.c — `lora inspect DIR`: for a model, its config, parameter count, tensor table,
 * and an estimate of training memory for a method, rank and batch shape; for a PEFT adapter
 * directory (LoRA or AdaLoRA), its method, alpha, scaling, parameters and the final rank of
 * every site as a table, optionally drawn as a heat map with gnuplot (--plot).
 */
#include "commands.h"
#include "lora.h"
#include "peft/adapter_info.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void inspect_usage(FILE *out) {
    fprintf(out,
            "usage: lora inspect MODEL_DIR [options]\n"
            "       lora inspect ADAPTER_DIR [--plot FILE.png]\n"
            "\n"
            "For a model: prints its config, parameter count and tensor table, and estimates the\n"
            "memory a training run would need.\n"
            "For a PEFT adapter directory (adapter_config.json; LoRA or AdaLoRA): prints the\n"
            "method, alpha, scaling, parameter count and the final rank of every site (rows:\n"
            "layers; columns: the adapted matrices). --plot draws those ranks as a heat map\n"
            "(layers x matrices) with gnuplot.\n"
            "\n"
            "options:\n"
            "  --method M                  lora|adalora|full|bitfit, for the estimate (default\n"
            "                              lora; adalora counts its allocator's state)\n"
            "  --r N                       LoRA rank, AdaLoRA initial rank (default 8)\n"
            "  --targets LIST              LoRA targets: q,k,v,c_attn,c_proj,c_fc,mlp.c_proj,all\n"
            "                              (default q,v)\n"
            "  --batch B                   batch size (default 4)\n"
            "  --seq-len T                 sequence length (default min(128, n_positions))\n"
            "  --checkpoint-activations    estimate with activations recomputed in backward (as\n"
            "                              lora train --checkpoint-activations)\n"
            "  --no-tensors                omit the tensor table\n"
            "  --plot FILE.png             adapter directories: the rank heat map (gnuplot)\n"
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

/* ---- adapter directories ---- */

static int is_adapter_dir(const char *dir) {
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    return access(path, R_OK) == 0;
}

/* 1 when an executable `name` is on PATH. */
static int on_path(const char *name) {
    const char *path = getenv("PATH");
    char        buf[4200];
    while (path && *path) {
        const char *e   = strchr(path, ':');
        size_t      len = e ? (size_t)(e - path) : strlen(path);
        snprintf(buf, sizeof buf, "%.*s/%s", (int)len, len ? path : ".", name);
        if (access(buf, X_OK) == 0) return 1;
        path = e ? e + 1 : NULL;
    }
    return 0;
}

/* The adapted matrices present, in table order; returns the count. */
static int table_columns(const adapter_info *a, uint32_t *cols) {
    static const uint32_t order[] = {LORA_TARGET_Q,         LORA_TARGET_K,      LORA_TARGET_V,
                                     LORA_TARGET_C_ATTN,    LORA_TARGET_ATTN_PROJ,
                                     LORA_TARGET_MLP_FC,    LORA_TARGET_MLP_PROJ};
    int n = 0;
    for (int k = 0; k < 7; k++)
        for (int32_t i = 0; i < a->n_sites; i++)
            if (a->sites[i].target == order[k]) {
                cols[n++] = order[k];
                break;
            }
    return n;
}

/* The site of (layer, target), or NULL. */
static const adapter_site_info *site_at(const adapter_info *a, int32_t layer, uint32_t target) {
    for (int32_t i = 0; i < a->n_sites; i++)
        if (a->sites[i].layer == layer && a->sites[i].target == target) return &a->sites[i];
    return NULL;
}

/* A gnuplot string literal body: single quotes doubled. */
static void put_gp_string(FILE *gp, const char *s) {
    for (; *s; s++) {
        if (*s == '\'') fputc('\'', gp);
        fputc(*s, gp);
    }
}

/* Draws the ranks as a heat map (x: layers, y: matrices, as the AdaLoRA paper's figure) into
 * png, written under a temporary name and renamed. 0 on success. */
static int plot_ranks(const adapter_info *a, const char *dir, const char *png) {
    uint32_t cols[8];
    int      nc = table_columns(a, cols), n_layer = 0, vmax = 1;
    for (int32_t i = 0; i < a->n_sites; i++) {
        if (a->sites[i].layer + 1 > n_layer) n_layer = a->sites[i].layer + 1;
        if (a->sites[i].init_r > vmax) vmax = a->sites[i].init_r;
        if (a->sites[i].rank > vmax) vmax = a->sites[i].rank;
    }
    if (!on_path("gnuplot")) {
        cli_error("inspect", "--plot needs gnuplot, which is not on PATH (hint: apt-get install "
                  "gnuplot-nox)");
        return 1;
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d.png", png, (int)getpid());
    FILE *gp = popen("gnuplot", "w");
    if (!gp) {
        cli_error("inspect", "cannot run gnuplot");
        return 1;
    }
    int w = 160 + 56 * (n_layer < 6 ? 6 : n_layer), h = 140 + 56 * nc;
    fprintf(gp, "set terminal pngcairo size %d,%d\nset output '", w, h);
    put_gp_string(gp, tmp);
    fprintf(gp, "'\nset title '%s per site: ", a->method == LORA_METHOD_ADALORA ? "final rank"
                                                                                : "rank");
    put_gp_string(gp, dir);
    fprintf(gp, "' noenhanced\nset xlabel 'layer'\nset ylabel 'matrix'\n"
                "set cblabel 'rank'\nset cbrange [0:%d]\n"
                "set palette defined (0 '#f7fcf5', 1 '#74c476', 2 '#00441b')\n"
                "set xrange [-0.5:%d.5]\nset yrange [-0.5:%d.5]\nset xtics 1\nset ytics (",
            vmax, n_layer - 1, nc - 1);
    for (int c = 0; c < nc; c++)
        fprintf(gp, "%s'%s' %d", c ? ", " : "", adapter_target_label(cols[c]), c);
    fprintf(gp, ") noenhanced\nset tics out nomirror\n$ranks << EOD\n");
    for (int c = 0; c < nc; c++) { /* rows: matrices (y); columns: layers (x) */
        for (int32_t l = 0; l < n_layer; l++) {
            const adapter_site_info *s = site_at(a, l, cols[c]);
            fprintf(gp, l ? " " : "");
            if (s) fprintf(gp, "%d", (int)s->rank);
            else fprintf(gp, "NaN");
        }
        fputc('\n', gp);
    }
    fprintf(gp, "EOD\nplot $ranks matrix with image notitle, "
                "$ranks matrix using 1:2:($3 == $3 ? sprintf('%%d', $3) : '') with labels "
                "notitle\n");
    int rc = pclose(gp);
    FILE *f = fopen(tmp, "rb");
    long  size = 0;
    if (f) {
        fseek(f, 0, SEEK_END);
        size = ftell(f);
        fclose(f);
    }
    if (rc != 0 || size <= 0 || rename(tmp, png) != 0) {
        remove(tmp);
        cli_error("inspect", "gnuplot could not draw %s (exit status %d)", png, rc);
        return 1;
    }
    return 0;
}

static int inspect_adapter(const char *dir, const char *plot) {
    adapter_info a;
    lora_error   err;
    if (adapter_info_read(dir, &a, &err) != LORA_OK) {
        cli_error("inspect", "%s", err.msg);
        return 1;
    }
    int     ada = a.method == LORA_METHOD_ADALORA, n_layer = 0;
    double  smin = INFINITY, smax = -INFINITY;
    int64_t kept = 0, init = 0;
    for (int32_t i = 0; i < a.n_sites; i++) {
        const adapter_site_info *s = &a.sites[i];
        if (s->scale < smin) smin = s->scale;
        if (s->scale > smax) smax = s->scale;
        kept += s->rank;
        init += s->init_r;
        if (s->layer + 1 > n_layer) n_layer = s->layer + 1;
    }
    printf("adapter      %s\n", dir);
    printf("method       %s\n", ada ? "AdaLoRA (peft_type ADALORA)" : "LoRA (peft_type LORA)");
    if (a.base_model[0]) printf("base model   %s\n", a.base_model);
    printf("alpha        %.8g\n", a.alpha);
    if (ada)
        printf("scaling      %.7g = alpha / (init_r + 1e-5), init_r %d\n", smin, (int)a.r);
    else if (smax - smin <= 1e-6 * fabs(smax))
        printf("scaling      %.7g = alpha / %s\n", smax, a.use_rslora ? "sqrt(r)" : "r");
    else
        printf("scaling      %.7g .. %.7g, per module (alpha_pattern, rank_pattern)\n", smin,
               smax);
    printf("parameters   %lld\n", (long long)a.n_params);
    int32_t init0 = a.n_sites ? a.sites[0].init_r : 0, same_init = 1;
    for (int32_t i = 1; i < a.n_sites; i++)
        same_init &= a.sites[i].init_r == init0;
    if (ada && same_init)
        printf("sites        %d, initial rank %d each\n", (int)a.n_sites, (int)init0);
    else
        printf("sites        %d\n", (int)a.n_sites);
    if (ada) {
        if (a.target_r) printf("target_r     %d (average per PEFT module)\n", (int)a.target_r);
        printf("kept triplets    %lld of %lld\n", (long long)kept, (long long)init);
        printf("pruned triplets  %lld%s\n", (long long)(init - kept),
               a.patterned ? "" : " (no rank_pattern: not pruned yet)");
    } else {
        printf("total rank   %lld\n", (long long)kept);
    }

    uint32_t cols[8];
    int      nc = table_columns(&a, cols);
    printf("\n%s per site (rows: layers; columns: adapted matrices)\n",
           ada ? "final rank" : "rank");
    printf("layer");
    for (int c = 0; c < nc; c++) {
        const char *lab = adapter_target_label(cols[c]);
        int         wd  = (int)strlen(lab) < 4 ? 6 : (int)strlen(lab) + 2;
        printf("%*s", wd, lab);
    }
    putchar('\n');
    for (int32_t l = 0; l < n_layer; l++) {
        printf("%5d", (int)l);
        for (int c = 0; c < nc; c++) {
            const char              *lab = adapter_target_label(cols[c]);
            int                      wd  = (int)strlen(lab) < 4 ? 6 : (int)strlen(lab) + 2;
            const adapter_site_info *s   = site_at(&a, l, cols[c]);
            if (s) printf("%*d", wd, (int)s->rank);
            else printf("%*s", wd, "-");
        }
        putchar('\n');
    }
    int rc = 0;
    if (plot) {
        rc = plot_ranks(&a, dir, plot);
        if (rc == 0) printf("\nheat map     %s\n", plot);
    }
    adapter_info_free(&a);
    return rc;
}

int cmd_inspect(int argc, char **argv) {
    static const struct option opts[] = {
        {"method", required_argument, 0, 'm'}, {"r", required_argument, 0, 'r'},
        {"targets", required_argument, 0, 't'}, {"batch", required_argument, 0, 'b'},
        {"seq-len", required_argument, 0, 's'}, {"no-tensors", no_argument, 0, 'n'},
        {"plot", required_argument, 0, 'p'},    {"help", no_argument, 0, 'h'},
        {"checkpoint-activations", no_argument, 0, 'k'},
        {0, 0, 0, 0}};
    lora_adapter_params p = lora_adapter_params_default();
    int32_t             B = 4, T = 0; /* T 0: min(128, n_positions) */
    int                 tensors = 1, c, model_opts = 0, checkpoint = 0;
    const char         *plot    = NULL;
    lora_error          err;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model_opts = 1;
            if (!strcmp(optarg, "lora")) p.method = LORA_METHOD_LORA;
            else if (!strcmp(optarg, "full")) p.method = LORA_METHOD_FULL;
            else if (!strcmp(optarg, "bitfit")) p.method = LORA_METHOD_BITFIT;
            else if (!strcmp(optarg, "adalora")) p.method = LORA_METHOD_ADALORA;
            else {
                cli_error("inspect", "unknown --method '%s' (lora, adalora, full, bitfit)",
                          optarg);
                return 2;
            }
            break;
        case 'r':
            model_opts = 1;
            if (parse_pos_int(optarg, &p.r)) {
                cli_error("inspect", "--r must be a positive integer, got '%s'", optarg);
                return 2;
            }
            break;
        case 't':
            model_opts = 1;
            if (lora_targets_parse(optarg, &p.targets, &err) != LORA_OK) {
                cli_error("inspect", "--targets: %s", err.msg);
                return 2;
            }
            break;
        case 'b':
            model_opts = 1;
            if (parse_pos_int(optarg, &B)) {
                cli_error("inspect", "--batch must be a positive integer, got '%s'", optarg);
                return 2;
            }
            break;
        case 's':
            model_opts = 1;
            if (parse_pos_int(optarg, &T)) {
                cli_error("inspect", "--seq-len must be a positive integer, got '%s'", optarg);
                return 2;
            }
            break;
        case 'n': tensors = 0, model_opts = 1; break;
        case 'k': checkpoint = 1, model_opts = 1; break;
        case 'p': plot = optarg; break;
        case 'h': inspect_usage(stdout); return 0;
        default: inspect_usage(stderr); return 2;
        }
    }
    if (optind != argc - 1) {
        inspect_usage(stderr);
        return 2;
    }
    const char *dir = argv[optind];
    if (is_adapter_dir(dir)) {
        if (model_opts) {
            cli_error("inspect", "%s is an adapter directory: --method, --r, --targets, --batch, "
                      "--seq-len, --checkpoint-activations and --no-tensors apply to models", dir);
            return 2;
        }
        return inspect_adapter(dir, plot);
    }
    if (plot) {
        cli_error("inspect", "--plot draws an adapter's ranks; %s has no adapter_config.json",
                  dir);
        return 2;
    }
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
    if (lora_estimate_memory(cfg, &p, B, T, checkpoint, &est, &err) != LORA_OK) {
        cli_error("inspect", "%s: %s", dir, err.msg);
        lora_model_free(m);
        return 1;
    }
    const char *mname = p.method == LORA_METHOD_FULL      ? "full"
                        : p.method == LORA_METHOD_BITFIT  ? "bitfit"
                        : p.method == LORA_METHOD_ADALORA ? "adalora"
                                                          : "lora";
    printf("\ntraining memory estimate (method %s", mname);
    if (p.method == LORA_METHOD_LORA) printf(", r=%d", p.r);
    if (p.method == LORA_METHOD_ADALORA) printf(", init_r=%d", p.r);
    printf(", B=%d, T=%d%s)\n", B, T, checkpoint ? ", activations checkpointed" : "");
    printf("  base weights       %9.1f MiB\n", mib(est.weights_bytes));
    printf("  trainable + AdamW  %9.1f MiB%s\n", mib(est.trainable_bytes),
           p.method == LORA_METHOD_ADALORA ? " (with the rank allocator's state)" : "");
    printf("  activations        %9.1f MiB\n", mib(est.activation_bytes));
    printf("  total              %9.1f MiB\n", mib(est.total_bytes));
    lora_model_free(m);
    return 0;
}
