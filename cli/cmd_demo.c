/*
 * cmd_demo.c — `lora demo`: the whole job on the embedded default model in a few minutes.
 *
 * Generates the E2E-style data-to-text task, evaluates the base model on the test MRs, fine-tunes
 * it (LoRA r = 4 on q and v by default, the LoRA paper's setting), evaluates again, and prints and
 * writes a before/after report: BLEU, ROUGE-L, NIST, CIDEr, slot error rate, trainable
 * parameters, peak memory, training time, and example outputs. Only orchestration lives here;
 * every step is a library call.
 */
#include "commands.h"
#include "core/error.h"
#include "data/e2e.h"
#include "eval/metrics.h"
#include "io/fileutil.h"
#include "lora.h"
#include "tokenizer/tokenizer.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#ifndef LORA_DEFAULT_MODEL_DIR
#define LORA_DEFAULT_MODEL_DIR "models/default"
#endif

typedef struct demo_opts {
    const char *model, *out;
    lora_method method;
    int32_t     r, steps, batch, beams, n_test, max_new;
    float       alpha, lr;
    uint64_t    seed;
    int         quiet;
} demo_opts;

static void demo_usage(FILE *out) {
    fprintf(out,
            "usage: lora demo [options]\n"
            "\n"
            "Fine-tunes the embedded default model on a generated E2E-style data-to-text task\n"
            "(meaning representation -> sentence) and reports what changed.\n"
            "\n"
            "options:\n"
            "  --method M      lora | adalora | full | bitfit (default lora)\n"
            "  --model DIR     base model (default: the embedded model, %s)\n"
            "  --out DIR       output directory (default lora-demo)\n"
            "  --r N           LoRA rank on q and v (default 4); AdaLoRA's final average\n"
            "                  rank, starting from 1.5 r\n"
            "  --alpha A       LoRA alpha (default 32)\n"
            "  --steps N       training steps (default 700)\n"
            "  --batch B       batch size (default 8)\n"
            "  --lr LR         peak learning rate (default 2e-3 for LoRA and AdaLoRA, 5e-4 otherwise)\n"
            "  --beams K       beam search width for decoding (default 4; 1 = greedy)\n"
            "  --test N        test MRs to decode (default 100)\n"
            "  --seed S        data and training seed (default 1)\n"
            "  --threads N     threads (default: all cores)\n"
            "  --quiet         no progress line\n"
            "  -h, --help      this help\n",
            LORA_DEFAULT_MODEL_DIR);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double peak_rss_mib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

/* ---- decoding the test set ---- */

/* Decodes every prompt into a malloc'd, one-line, trimmed string: beam search (the LoRA paper's
 * E2E setting: length penalty 0.9, no repeated 4-grams) over groups of prompts at once, or
 * greedy with beams = 1 (a beam search of width 1). */
#define DEMO_GROUP 8

static lora_status decode_all(lora_model *m, lora_tokenizer *tok, char **prompts, int32_t n,
                              const demo_opts *o, char **hyps, lora_error *err) {
    const lora_config *cfg = lora_model_config(m);
    int32_t            K   = o->beams > 1 ? o->beams : 1;
    lora_decoder      *d   = NULL;
    int32_t           *ids[DEMO_GROUP] = {0}, n_ids[DEMO_GROUP], *outs[DEMO_GROUP] = {0};
    lora_beam_result   res[DEMO_GROUP];
    lora_status        st  = lora_decoder_init(m, DEMO_GROUP * K, cfg->n_positions, &d, err);
    for (int g = 0; g < DEMO_GROUP && st == LORA_OK; g++)
        if (!(outs[g] = malloc((size_t)o->max_new * sizeof(int32_t))))
            st = lora_errorf(err, LORA_ERR_NOMEM, "out of memory");
    lora_beam_params bp = lora_beam_params_default();
    bp.n_beams          = K;
    bp.length_penalty   = 0.9f;
    bp.no_repeat_ngram  = 4;
    bp.eos              = lora_tokenizer_eos(tok);
    for (int32_t i0 = 0; i0 < n && st == LORA_OK; i0 += DEMO_GROUP) {
        int32_t G = n - i0 < DEMO_GROUP ? n - i0 : DEMO_GROUP, longest = 0;
        for (int32_t g = 0; g < G && st == LORA_OK; g++) {
            size_t len;
            free(ids[g]);
            ids[g] = NULL;
            st = lora_tokenizer_encode(tok, prompts[i0 + g], strlen(prompts[i0 + g]), 0, &ids[g],
                                       &len, err);
            n_ids[g] = (int32_t)len;
            if (n_ids[g] > longest) longest = n_ids[g];
        }
        if (st != LORA_OK) break;
        bp.max_new = o->max_new < cfg->n_positions - longest ? o->max_new
                                                             : cfg->n_positions - longest;
        if (bp.max_new <= 0) {
            st = lora_errorf(err, LORA_ERR_ARG, "a test prompt does not fit the context");
            break;
        }
        lora_decoder_reset(d, -1);
        st = lora_beam_search_batch(d, G, (const int32_t *const *)ids, n_ids, &bp,
                                    (int32_t *const *)outs, res, err);
        for (int32_t g = 0; g < G && st == LORA_OK; g++) {
            char  *text;
            size_t len;
            if ((st = lora_tokenizer_decode(tok, outs[g], (size_t)res[g].n_tokens, &text, &len,
                                            err)) != LORA_OK)
                break;
            for (size_t k = 0; k < len; k++)
                if (text[k] == '\n' || text[k] == '\r') text[k] = ' ';
            char *s = text;
            while (*s == ' ') s++;
            size_t l = strlen(s);
            while (l && s[l - 1] == ' ') s[--l] = '\0';
            hyps[i0 + g] = strdup(s);
            free(text);
            if (!hyps[i0 + g]) st = lora_errorf(err, LORA_ERR_NOMEM, "out of memory");
        }
    }
    for (int g = 0; g < DEMO_GROUP; g++) {
        free(ids[g]);
        free(outs[g]);
    }
    lora_decoder_free(d);
    return st;
}

typedef struct test_set {
    int32_t n;
    char  **prompts; /* (n) "<MR> ||" */
    char  **mrs;     /* (n) */
    char  **refs;    /* flattened */
    size_t *ref_off; /* (n + 1) */
} test_set;

static void test_set_free(test_set *t) {
    for (int32_t i = 0; i < t->n; i++) {
        free(t->prompts[i]);
        free(t->mrs[i]);
    }
    free(t->prompts);
    free(t->mrs);
    free(t->refs); /* borrowed strings from the data set */
    free(t->ref_off);
}

static lora_status test_set_make(const lora_e2e_dataset *ds, int32_t n, test_set *t,
                                 lora_error *err) {
    const lora_e2e_split *sp = &ds->split[LORA_E2E_TEST];
    if (n > sp->n_items) n = sp->n_items;
    memset(t, 0, sizeof *t);
    t->n       = n;
    t->prompts = calloc((size_t)n, sizeof(char *));
    t->mrs     = calloc((size_t)n, sizeof(char *));
    t->ref_off = calloc((size_t)n + 1, sizeof(size_t));
    size_t total = 0;
    for (int32_t i = 0; i < n; i++) total += (size_t)sp->items[i].n_refs;
    t->refs = calloc(total + 1, sizeof(char *));
    if (!t->prompts || !t->mrs || !t->ref_off || !t->refs)
        return lora_errorf(err, LORA_ERR_NOMEM, "out of memory");
    size_t k = 0;
    for (int32_t i = 0; i < n; i++) {
        char        buf[1024];
        lora_status st = lora_e2e_prompt(&sp->items[i].mr, buf, sizeof buf, err);
        if (st != LORA_OK) return st;
        t->prompts[i] = strdup(buf);
        if ((st = lora_e2e_mr_format(&sp->items[i].mr, buf, sizeof buf, err)) != LORA_OK) return st;
        t->mrs[i] = strdup(buf);
        if (!t->prompts[i] || !t->mrs[i]) return lora_errorf(err, LORA_ERR_NOMEM, "out of memory");
        t->ref_off[i] = k;
        for (int32_t j = 0; j < sp->items[i].n_refs; j++) t->refs[k++] = sp->items[i].refs[j];
    }
    t->ref_off[n] = k;
    return LORA_OK;
}

static lora_status score(const test_set *t, char **hyps, lora_scores *s, lora_error *err) {
    lora_eval_corpus c = {(size_t)t->n, (const char *const *)hyps, (const char *const *)t->refs,
                          t->ref_off};
    return lora_eval_all(&c, (const char *const *)t->mrs, s, err);
}

static lora_status write_lines(const char *dir, const char *name, char **lines, int32_t n,
                               lora_error *err) {
    char        path[4096];
    lora_status st = lora_path_join(path, sizeof path, dir, name, err);
    if (st != LORA_OK) return st;
    lora_atomic_file af;
    if ((st = lora_atomic_open(&af, path, err)) != LORA_OK) return st;
    for (int32_t i = 0; i < n; i++) fprintf(af.fp, "%s\n", lines[i]);
    return lora_atomic_commit(&af, err);
}

/* ---- training progress ---- */

typedef struct demo_progress {
    int    tty, quiet, drawn;
    double loss0, loss_last;
    int64_t steps;
} demo_progress;

static void on_train_event(void *user, const lora_train_event *ev) {
    demo_progress *p = user;
    if (ev->kind == LORA_EVENT_STEP) {
        if (p->loss0 == 0) p->loss0 = ev->loss;
        p->loss_last = ev->loss;
        p->steps     = ev->step;
        if (p->quiet || (!p->tty && ev->step % 50 != 0 && ev->step != ev->total_steps)) return;
        fprintf(stderr, "%s      step %lld/%lld | loss %.4f | lr %.2e | %.0f tok/s | %.0fs | ETA %.0fs%s",
                p->tty ? "\r\033[K" : "", (long long)ev->step, (long long)ev->total_steps,
                (double)ev->loss, (double)ev->lr, ev->tokens_per_s, ev->elapsed_s, ev->eta_s,
                p->tty ? "" : "\n");
        p->drawn = p->tty;
    } else if (ev->kind == LORA_EVENT_EVAL && !p->quiet) {
        if (p->drawn) fputc('\n', stderr), p->drawn = 0;
        fprintf(stderr, "      step %lld: validation loss %.4f\n", (long long)ev->step,
                (double)ev->val_loss);
    }
    fflush(stderr);
}

/* ---- the report ---- */

static void plot_loss(const char *out_dir, const char *train_dir) {
    char cmd[12288];
    snprintf(cmd, sizeof cmd,
             "command -v gnuplot >/dev/null 2>&1 || exit 0; "
             "grep '\"loss\"' '%s/metrics.jsonl' | sed 's/.*\"step\": \\([0-9]*\\), \"loss\": "
             "\\([0-9.e+-]*\\).*/\\1 \\2/' > '%s/train_loss.dat'; "
             "grep '\"val_loss\"' '%s/metrics.jsonl' | sed 's/.*\"step\": \\([0-9]*\\), "
             "\"val_loss\": \\([0-9.e+-]*\\).*/\\1 \\2/' > '%s/val_loss.dat'; "
             "gnuplot -e \"set terminal pngcairo size 800,480; set output '%s/loss.png'; "
             "set title 'lora demo: training loss'; set xlabel 'step'; "
             "set ylabel 'cross-entropy (nats/token)'; set grid; "
             "plot '%s/train_loss.dat' using 1:2 with lines title 'train (label-smoothed)', "
             "'%s/val_loss.dat' using 1:2 with linespoints title 'validation'\" 2>/dev/null; "
             "rm -f '%s/train_loss.dat' '%s/val_loss.dat'",
             train_dir, out_dir, train_dir, out_dir, out_dir, out_dir, out_dir, out_dir, out_dir);
    if (system(cmd) != 0) { /* the plot is optional */
    }
}

static void print_row(FILE *f, const char *name, const char *fmt, double a, double b, int md) {
    char va[32], vb[32];
    snprintf(va, sizeof va, fmt, a);
    snprintf(vb, sizeof vb, fmt, b);
    if (md) fprintf(f, "| %s | %s | %s |\n", name, va, vb);
    else fprintf(f, "  %-26s %12s %12s\n", name, va, vb);
}

int cmd_demo(int argc, char **argv) {
    static const struct option opts[] = {
        {"method", required_argument, 0, 'm'}, {"model", required_argument, 0, 'M'},
        {"out", required_argument, 0, 'o'},    {"r", required_argument, 0, 'r'},
        {"alpha", required_argument, 0, 'a'},  {"steps", required_argument, 0, 's'},
        {"batch", required_argument, 0, 'b'},  {"lr", required_argument, 0, 'l'},
        {"beams", required_argument, 0, 'k'},  {"test", required_argument, 0, 'n'},
        {"seed", required_argument, 0, 'S'},   {"threads", required_argument, 0, 't'},
        {"quiet", no_argument, 0, 'q'},        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    demo_opts o = {LORA_DEFAULT_MODEL_DIR, "lora-demo", LORA_METHOD_LORA, 4, 700, 8, 4, 100, 64,
                   32.0f, 0.0f, 1, 0};
    int       c, threads = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        char *end = NULL;
        long  v   = 0;
        if (strchr("rsbkntS", c) && c) {
            errno = 0;
            v     = strtol(optarg, &end, 10);
            if (!*optarg || *end || errno || v < 1 || v > 1000000) {
                cli_error("demo", "option expects a positive integer, got '%s'", optarg);
                return 2;
            }
        }
        switch (c) {
        case 'm':
            if (!strcmp(optarg, "lora")) o.method = LORA_METHOD_LORA;
            else if (!strcmp(optarg, "full")) o.method = LORA_METHOD_FULL;
            else if (!strcmp(optarg, "bitfit")) o.method = LORA_METHOD_BITFIT;
            else if (!strcmp(optarg, "adalora")) o.method = LORA_METHOD_ADALORA;
            else {
                cli_error("demo", "--method must be lora, adalora, full or bitfit, got '%s'",
                          optarg);
                return 2;
            }
            break;
        case 'M': o.model = optarg; break;
        case 'o': o.out = optarg; break;
        case 'r': o.r = (int32_t)v; break;
        case 's': o.steps = (int32_t)v; break;
        case 'b': o.batch = (int32_t)v; break;
        case 'k': o.beams = (int32_t)v; break;
        case 'n': o.n_test = (int32_t)v; break;
        case 'S': o.seed = (uint64_t)v; break;
        case 't': threads = (int)v; break;
        case 'q': o.quiet = 1; break;
        case 'a':
        case 'l': {
            double d = strtod(optarg, &end);
            if (!*optarg || *end || !(d > 0 && d < 1e6)) {
                cli_error("demo", "option expects a positive number, got '%s'", optarg);
                return 2;
            }
            if (c == 'a') o.alpha = (float)d;
            else o.lr = (float)d;
            break;
        }
        case 'h': demo_usage(stdout); return 0;
        default: demo_usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        demo_usage(stderr);
        return 2;
    }
    if (o.lr == 0)
        o.lr = o.method == LORA_METHOD_LORA || o.method == LORA_METHOD_ADALORA ? 2e-3f : 5e-4f;
    lora_set_threads(threads);
    const char *mname = o.method == LORA_METHOD_FULL      ? "full fine-tuning"
                        : o.method == LORA_METHOD_BITFIT  ? "BitFit"
                        : o.method == LORA_METHOD_ADALORA ? "AdaLoRA"
                                                          : "LoRA";
    int adapter_method = o.method == LORA_METHOD_LORA || o.method == LORA_METHOD_ADALORA;
    double      t_start = now_s();
    lora_error  err;
    lora_status st = LORA_OK;
    char        data_dir[4096], train_dir[4096], path[4096];
    lora_e2e_dataset *ds = NULL;
    lora_model       *base = NULL, *tuned = NULL;
    lora_tokenizer   *tok = NULL;
    test_set          ts;
    memset(&ts, 0, sizeof ts);
    char      **before = NULL, **after = NULL;
    lora_scores s0, s1;
    double      train_s = 0, rss_train = 0;
    int64_t     n_train = 0, n_base = 0;
    demo_progress prog = {isatty(2), o.quiet, 0, 0, 0, 0};

    if ((st = lora_mkdirs(o.out, &err)) || (st = lora_path_join(data_dir, sizeof data_dir, o.out, "data", &err)) ||
        (st = lora_path_join(train_dir, sizeof train_dir, o.out, adapter_method ? "adapter" : "model", &err)))
        goto fail;

    fprintf(stderr, "[1/5] generating the E2E-style data-to-text task (seed %llu)\n",
            (unsigned long long)o.seed);
    lora_e2e_params ep = lora_e2e_params_default();
    ep.seed            = o.seed;
    if ((st = lora_e2e_generate(&ep, &ds, &err)) || (st = lora_e2e_write(ds, data_dir, &err))) goto fail;
    fprintf(stderr, "      %d training pairs, %d validation pairs, %d test MRs -> %s\n",
            ds->split[LORA_E2E_TRAIN].n_refs, ds->split[LORA_E2E_DEV].n_refs,
            ds->split[LORA_E2E_TEST].n_items, data_dir);
    if ((st = test_set_make(ds, o.n_test, &ts, &err))) goto fail;
    before = calloc((size_t)ts.n, sizeof(char *));
    after  = calloc((size_t)ts.n, sizeof(char *));
    if (!before || !after) {
        st = lora_errorf(&err, LORA_ERR_NOMEM, "out of memory");
        goto fail;
    }

    fprintf(stderr, "[2/5] decoding %d test MRs with the base model %s (beam %d)\n", ts.n,
            o.model, o.beams);
    if ((st = lora_model_load(o.model, &base, &err)) || (st = lora_tokenizer_load(o.model, &tok, &err)))
        goto fail;
    n_base = lora_model_n_base_params(base);
    if ((st = decode_all(base, tok, ts.prompts, ts.n, &o, before, &err)) || (st = score(&ts, before, &s0, &err)))
        goto fail;
    lora_model_free(base);
    base = NULL;
    fprintf(stderr, "      BLEU %.4f, ROUGE-L %.4f, slot error rate %.1f%%\n", s0.bleu, s0.rouge_l,
            100.0 * s0.ser);

    fprintf(stderr, "[3/5] fine-tuning with %s", mname);
    if (o.method == LORA_METHOD_LORA)
        fprintf(stderr, " (r = %d on q and v, alpha = %g)", o.r, (double)o.alpha);
    if (o.method == LORA_METHOD_ADALORA)
        fprintf(stderr, " (rank budget %d -> %d per site on q and v, alpha = %g)",
                o.r + o.r / 2, o.r, (double)o.alpha);
    fprintf(stderr, " for %d steps\n", o.steps);
    lora_train_params tp = lora_train_params_default();
    tp.model_dir         = o.model;
    tp.out_dir           = train_dir;
    char train_path[4200], val_path[4200];
    snprintf(train_path, sizeof train_path, "%s/train.jsonl", data_dir);
    snprintf(val_path, sizeof val_path, "%s/dev.jsonl", data_dir);
    tp.data_path          = train_path;
    tp.val_path           = val_path;
    tp.adapter.method     = o.method;
    tp.adapter.r          = o.r;
    tp.adapter.alpha      = o.alpha;
    tp.adapter.targets    = LORA_TARGET_Q | LORA_TARGET_V;
    tp.adapter.dropout    = 0.1f;
    if (o.method == LORA_METHOD_ADALORA) { /* start 1.5x wider, prune to r on average */
        tp.adapter.r                = o.r + o.r / 2;
        tp.adapter.adalora.target_r = o.r;
        tp.adapter.adalora.tinit    = o.steps / 10;
        tp.adapter.adalora.tfinal   = o.steps / 5;
        tp.adapter.adalora.delta_t  = 10;
    }
    tp.optim.lr           = o.lr;
    tp.optim.total_steps  = o.steps;
    tp.optim.warmup_steps = o.steps / 10;
    tp.batch              = o.batch;
    tp.seq_len            = 192; /* the longest E2E examples; batches are trimmed to their longest row */
    tp.eval_every         = o.steps / 4 > 0 ? o.steps / 4 : 1;
    tp.eval_batches       = 8;
    tp.log_every          = 10;
    tp.seed               = o.seed;
    double t0 = now_s();
    st = lora_train(&tp, NULL, on_train_event, &prog, &err);
    if (prog.drawn) fputc('\n', stderr);
    if (st != LORA_OK) goto fail;
    train_s   = now_s() - t0;
    rss_train = peak_rss_mib();

    fprintf(stderr, "[4/5] decoding the test MRs with the fine-tuned model\n");
    if ((st = lora_model_load(adapter_method ? o.model : train_dir, &tuned, &err))) goto fail;
    if (adapter_method && (st = lora_adapter_load(tuned, train_dir, &err))) goto fail;
    n_train = adapter_method ? lora_model_n_trainable_params(tuned)
              : o.method == LORA_METHOD_FULL ? n_base
                                             : 0;
    if (o.method == LORA_METHOD_BITFIT) { /* the biases: count them from the config */
        const lora_config *cf = lora_model_config(tuned);
        n_train = cf->n_embd + (int64_t)cf->n_layer * (6 * cf->n_embd + cf->n_inner + 3 * cf->n_embd);
    }
    if ((st = decode_all(tuned, tok, ts.prompts, ts.n, &o, after, &err)) || (st = score(&ts, after, &s1, &err)))
        goto fail;

    fprintf(stderr, "[5/5] report\n");
    if ((st = write_lines(o.out, "test.before.txt", before, ts.n, &err)) ||
        (st = write_lines(o.out, "test.after.txt", after, ts.n, &err)))
        goto fail;
    plot_loss(o.out, train_dir);
    double total_s = now_s() - t_start;
    for (int md = 0; md < 2; md++) {
        FILE *f = stdout;
        if (md) {
            if ((st = lora_path_join(path, sizeof path, o.out, "report.md", &err))) goto fail;
            lora_atomic_file af;
            if ((st = lora_atomic_open(&af, path, &err))) goto fail;
            f = af.fp;
            fprintf(f, "# lora demo: %s on the E2E-style task\n\n", mname);
            fprintf(f, "Base model `%s`, %d test MRs, beam %d. Training: %d steps, batch %d, "
                       "lr %g.\n\n| metric | base model | fine-tuned |\n|---|---|---|\n",
                    o.model, ts.n, o.beams, o.steps, o.batch, (double)o.lr);
            print_row(f, "BLEU", "%.4f", s0.bleu, s1.bleu, 1);
            print_row(f, "NIST", "%.3f", s0.nist, s1.nist, 1);
            print_row(f, "ROUGE-L", "%.4f", s0.rouge_l, s1.rouge_l, 1);
            print_row(f, "CIDEr", "%.3f", s0.cider, s1.cider, 1);
            print_row(f, "slot error rate (%)", "%.1f", 100 * s0.ser, 100 * s1.ser, 1);
            fprintf(f, "\n| training | |\n|---|---|\n");
            fprintf(f, "| method | %s |\n| trainable parameters | %lld of %lld (%.3f%%) |\n", mname,
                    (long long)n_train, (long long)n_base, 100.0 * (double)n_train / (double)n_base);
            fprintf(f, "| training time | %.1f s |\n| peak memory (process) | %.0f MiB |\n"
                       "| whole demo | %.1f s |\n\n", train_s, rss_train, total_s);
            fprintf(f, "![training loss](loss.png)\n\n## Examples\n\n");
            for (int32_t i = 0; i < 3 && i < ts.n; i++)
                fprintf(f, "- MR: `%s`\n  - before: %s\n  - after: %s\n", ts.mrs[i], before[i], after[i]);
            if ((st = lora_atomic_commit(&af, &err))) goto fail;
            break;
        }
        fprintf(f, "\n  %-26s %12s %12s\n", "", "base model", "fine-tuned");
        print_row(f, "BLEU", "%.4f", s0.bleu, s1.bleu, 0);
        print_row(f, "NIST", "%.3f", s0.nist, s1.nist, 0);
        print_row(f, "ROUGE-L", "%.4f", s0.rouge_l, s1.rouge_l, 0);
        print_row(f, "CIDEr", "%.3f", s0.cider, s1.cider, 0);
        print_row(f, "slot error rate (%)", "%.1f", 100 * s0.ser, 100 * s1.ser, 0);
        fprintf(f, "\n  method                     %s\n", mname);
        fprintf(f, "  trainable parameters       %lld of %lld (%.3f%%)\n", (long long)n_train,
                (long long)n_base, 100.0 * (double)n_train / (double)n_base);
        fprintf(f, "  training time              %.1f s (%lld steps)\n", train_s, (long long)prog.steps);
        fprintf(f, "  peak memory (process)      %.0f MiB\n", rss_train);
        fprintf(f, "  whole demo                 %.1f s\n\n", total_s);
        for (int32_t i = 0; i < 3 && i < ts.n; i++)
            fprintf(f, "  MR:     %s\n  before: %s\n  after:  %s\n\n", ts.mrs[i], before[i], after[i]);
        fprintf(f, "  wrote %s/: %s/ (with metrics.jsonl), data/, loss.png, report.md, "
                   "test.{before,after}.txt\n",
                o.out, adapter_method ? "adapter" : "model");
    }
fail:
    if (st != LORA_OK) cli_error("demo", "%s", err.msg);
    for (int32_t i = 0; i < ts.n; i++) {
        if (before) free(before[i]);
        if (after) free(after[i]);
    }
    free(before);
    free(after);
    test_set_free(&ts);
    lora_model_free(base);
    lora_model_free(tuned);
    lora_tokenizer_free(tok);
    lora_e2e_dataset_free(ds);
    return st == LORA_OK ? 0 : 1;
}
