/*
 * cmd_eval.c — `lora eval`: a model (optionally with PEFT adapters) scored on a JSONL dataset:
 * mean cross-entropy over every loss token, its perplexity, and next-token accuracy, printed as
 * one JSON object. Parsing and printing only; the data path is the dataset/batcher API and the
 * model's forward pass.
 *
 * Batches are padded rows in file order (no shuffle, no packing). Each batch is trimmed to its
 * longest row before the forward pass: causal attention makes a position's logits independent
 * of what follows it, so the trim changes no number, only the time taken. The loss is summed in
 * double over the logits of each loss position, so the mean is exact over the whole dataset
 * however the batches fall.
 */
#include "commands.h"
#include "data/dataset.h"
#include "lora.h"
#include "tokenizer/tokenizer.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void eval_usage(FILE *out) {
    fprintf(out,
            "usage: lora eval --model DIR --data FILE [options]\n"
            "\n"
            "Scores a model on a JSONL dataset ({\"text\": ...} or {\"prompt\": ...,\n"
            "\"completion\": ...} per line; the loss covers the completion only) and prints\n"
            "{\"loss\", \"perplexity\", \"token_accuracy\", \"tokens\", \"examples\"} as JSON.\n"
            "\n"
            "options:\n"
            "  --model DIR       the base model (config.json + model.safetensors)\n"
            "  --tokenizer DIR   tokenizer.json or vocab.json + merges.txt (default: --model)\n"
            "  --adapter DIR[:S] a PEFT LoRA or AdaLoRA adapter directory to apply, scaled\n"
            "                    by S (default 1); repeatable: the adapters are summed\n"
            "  --data FILE       the JSONL dataset\n"
            "  --batch B         examples per forward pass (default 8)\n"
            "  --seq-len T       tokens per example, longer ones truncated\n"
            "                    (default min(n_positions, 1024))\n"
            "  --skip-bad        skip malformed lines instead of failing\n"
            "  -h, --help        this help\n");
}

static int parse_pos_int(const char *s, int32_t *out) {
    char *end;
    long  v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v <= 0 || v > 1 << 30) return -1;
    *out = (int32_t)v;
    return 0;
}

typedef struct eval_sums {
    double  loss;    /* sum of -log p(target) */
    int64_t correct; /* argmax == target */
    int64_t tokens;  /* loss positions */
} eval_sums;

/* Adds the loss positions of a (B, T) batch whose logits (B*T, V) the model holds. */
static void score_batch(eval_sums *s, const float *logits, const int32_t *targets, int32_t B,
                        int32_t T, int32_t V) {
    for (int64_t i = 0; i < (int64_t)B * T; i++) {
        if (targets[i] < 0) continue;
        const float *z   = logits + i * V;
        double       max = -INFINITY, sum = 0;
        int32_t      arg = 0; /* the lowest id among equal maxima, as lora_argmax */
        for (int32_t v = 0; v < V; v++)
            if (z[v] > max) {
                max = z[v];
                arg = v;
            }
        for (int32_t v = 0; v < V; v++)
            sum += exp((double)z[v] - max);
        s->loss += max + log(sum) - (double)z[targets[i]];
        s->correct += arg == targets[i];
        s->tokens++;
    }
}

/* Drops trailing rows without a loss position and trailing columns past every row's last
 * target, moving the kept rows together in place. Returns the new width (0: nothing to do). */
static int32_t trim_batch(int32_t *tokens, int32_t *targets, int32_t B, int32_t T,
                          int32_t *B_used) {
    int32_t width = 0, rows = 0;
    for (int32_t r = 0; r < B; r++)
        for (int32_t t = T - 1; t >= 0; t--)
            if (targets[(size_t)r * T + t] >= 0) {
                if (t + 1 > width) width = t + 1;
                rows = r + 1;
                break;
            }
    for (int32_t r = 1; r < rows && width < T; r++) {
        memmove(tokens + (size_t)r * width, tokens + (size_t)r * T, (size_t)width * sizeof *tokens);
        memmove(targets + (size_t)r * width, targets + (size_t)r * T,
                (size_t)width * sizeof *targets);
    }
    *B_used = rows;
    return width;
}

static const struct option eval_opts[] = {{"model", required_argument, 0, 'm'},
                                          {"tokenizer", required_argument, 0, 'k'},
                                          {"adapter", required_argument, 0, 'a'},
                                          {"data", required_argument, 0, 'd'},
                                          {"batch", required_argument, 0, 'b'},
                                          {"seq-len", required_argument, 0, 's'},
                                          {"skip-bad", no_argument, 0, 'x'},
                                          {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};

int cmd_eval(int argc, char **argv) {
    const char *model_dir = NULL, *tok_dir = NULL, *data = NULL;
    int32_t     B = 8, T = 0, skip_bad = 0;
    int         c, n_ad = 0, rc = 2;
    /* at most one adapter per argument */
    char      **ad_dirs   = calloc((size_t)argc + 1, sizeof *ad_dirs);
    float      *ad_scales = calloc((size_t)argc + 1, sizeof *ad_scales);
    lora_error         err;
    lora_model        *m      = NULL;
    lora_tokenizer    *tok    = NULL;
    lora_dataset      *ds     = NULL;
    lora_batcher      *bt     = NULL;
    int32_t           *tokens = NULL, *targets = NULL;
    lora_dataset_stats st;
    if (!ad_dirs || !ad_scales) {
        cli_error("eval", "out of memory");
        rc = 1;
        goto done;
    }
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", eval_opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model_dir = optarg;
            break;
        case 'k':
            tok_dir = optarg;
            break;
        case 'a': {
            int has;
            ad_scales[n_ad] = 1.0f;
            if (cli_parse_adapter(optarg, &ad_dirs[n_ad], &ad_scales[n_ad], &has)) {
                cli_error("eval", "--adapter needs DIR or DIR:SCALE, got '%s'", optarg);
                goto done;
            }
            n_ad++;
            break;
        }
        case 'd':
            data = optarg;
            break;
        case 'b':
            if (parse_pos_int(optarg, &B)) {
                cli_error("eval", "--batch must be a positive integer, got '%s'", optarg);
                goto done;
            }
            break;
        case 's':
            if (parse_pos_int(optarg, &T)) {
                cli_error("eval", "--seq-len must be a positive integer, got '%s'", optarg);
                goto done;
            }
            break;
        case 'x':
            skip_bad = 1;
            break;
        case 'h':
            eval_usage(stdout);
            rc = 0;
            goto done;
        default:
            eval_usage(stderr);
            goto done;
        }
    }
    if (optind != argc || !model_dir || !data) {
        if (optind != argc)
            cli_error("eval", "unexpected argument '%s'", argv[optind]);
        else
            cli_error("eval", "--model and --data are required");
        eval_usage(stderr);
        goto done;
    }
    if (!tok_dir) tok_dir = model_dir;

    rc = 1;

    if (lora_model_load(model_dir, &m, &err) != LORA_OK) goto lib_fail;
    const lora_config *cfg = lora_model_config(m);
    if (T == 0) T = cfg->n_positions < 1024 ? cfg->n_positions : 1024;
    if (T > cfg->n_positions) {
        cli_error("eval", "--seq-len %d exceeds the model's n_positions %d", (int)T,
                  (int)cfg->n_positions);
        goto done;
    }
    if ((int64_t)B * T > (1 << 30)) {
        cli_error("eval", "--batch x --seq-len = %lld tokens is too large", (long long)B * T);
        goto done;
    }
    for (int i = 0; i < n_ad; i++) {
        char name[32];
        snprintf(name, sizeof name, "adapter%d", i);
        if (lora_adapter_add(m, ad_dirs[i], name, ad_scales[i], &err) != LORA_OK) goto lib_fail;
    }
    if (lora_tokenizer_load(tok_dir, &tok, &err) != LORA_OK) goto lib_fail;
    if (lora_tokenizer_n_vocab(tok) > cfg->vocab_size) {
        cli_error("eval",
                  "%s: the tokenizer has %d ids but the model's vocabulary only %d "
                  "(hint: --tokenizer names the model's own tokenizer)",
                  tok_dir, (int)lora_tokenizer_n_vocab(tok), (int)cfg->vocab_size);
        goto done;
    }
    lora_dataset_params dp = {T, skip_bad, NULL};
    if (lora_dataset_load(data, tok, &dp, &ds, &st, &err) != LORA_OK) goto lib_fail;
    if (lora_batcher_new(ds, B, T, 0, 0, 0, &bt, &err) != LORA_OK) goto lib_fail;
    tokens  = malloc((size_t)B * T * sizeof *tokens);
    targets = malloc((size_t)B * T * sizeof *targets);
    if (!tokens || !targets) {
        cli_error("eval", "out of memory for a %d x %d batch", (int)B, (int)T);
        goto done;
    }
    lora_model_set_training(m, 0);
    if (lora_model_reserve(m, B, T, &err) != LORA_OK) goto lib_fail;

    eval_sums sums     = {0, 0, 0};
    int64_t   nbatches = lora_batcher_batches_per_epoch(bt);
    for (int64_t i = 0; i < nbatches; i++) {
        int64_t n_loss;
        int32_t rows;
        lora_batcher_next(bt, tokens, targets, &n_loss);
        int32_t width = trim_batch(tokens, targets, B, T, &rows);
        if (n_loss == 0 || width == 0) continue;
        if (lora_model_forward(m, tokens, NULL, rows, width, NULL, &err) != LORA_OK) goto lib_fail;
        score_batch(&sums, lora_model_logits(m), targets, rows, width, cfg->vocab_size);
    }
    if (st.n_bad > 0 || st.n_truncated > 0)
        fprintf(stderr,
                "lora eval: %s: %lld malformed lines skipped, %lld examples truncated "
                "to %d tokens\n",
                data, (long long)st.n_bad, (long long)st.n_truncated, (int)T + 1);

    double loss = sums.tokens ? sums.loss / (double)sums.tokens : 0.0;
    double ppl  = exp(loss);
    double acc  = sums.tokens ? (double)sums.correct / (double)sums.tokens : 0.0;
    printf("{\"loss\": %.9g, ", loss);
    if (isfinite(ppl))
        printf("\"perplexity\": %.9g, ", ppl);
    else
        printf("\"perplexity\": null, ");
    printf("\"token_accuracy\": %.9g, \"tokens\": %lld, \"examples\": %lld}\n", acc,
           (long long)sums.tokens, (long long)lora_dataset_n_examples(ds));
    rc = 0;
    goto done;

lib_fail:
    cli_error("eval", "%s", err.msg);
done:
    free(tokens);
    free(targets);
    lora_batcher_free(bt);
    lora_dataset_free(ds);
    lora_tokenizer_free(tok);
    lora_model_free(m);
    if (ad_dirs)
        for (int i = 0; i < n_ad; i++) free(ad_dirs[i]);
    free(ad_dirs);
    free(ad_scales);
    return rc;
}
