/*
 * cmd_train.c — `lora train`: parses and checks options, shows progress, handles Ctrl-C, and
 * runs lora_train().
 */
#include "commands.h"
#include "lora.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile int train_stop = 0;

static void on_sigint(int sig) {
    (void)sig;
    train_stop = 1;
    signal(SIGINT, SIG_DFL); /* a second Ctrl-C ends at once */
    signal(SIGTERM, SIG_DFL);
}

static void train_usage(FILE *out) {
    fprintf(out,
        "usage: lora train --model DIR --data FILE --out DIR [options]\n"
        "       lora train --resume DIR [--threads N] [--stop-after N]\n"
        "                  [--checkpoint-activations]\n"
        "\n"
        "Fine-tunes a GPT-2 model on a JSONL file ({\"text\": ...} or {\"prompt\": ..., \"completion\":\n"
        "...} lines) and writes a PEFT adapter (LoRA) or a model directory (full, bitfit) to --out,\n"
        "with metrics.jsonl and checkpoint.safetensors. Ctrl-C writes a checkpoint and stops;\n"
        "--resume continues it exactly.\n"
        "\n"
        "data:\n"
        "  --model DIR            Hugging Face GPT-2 directory\n"
        "  --tokenizer DIR        tokenizer directory (default: the model's)\n"
        "  --data FILE            training JSONL\n"
        "  --val FILE             validation JSONL (default: none, or --val-split)\n"
        "  --val-split F          hold out this fraction of --data for validation (default 0)\n"
        "  --seq-len T            tokens per sequence (default min(512, n_positions))\n"
        "  --pack                 pack examples into full rows instead of padding\n"
        "  --skip-bad             skip malformed JSONL lines (counted) instead of failing\n"
        "method:\n"
        "  --method M             lora | adalora | full | bitfit (default lora)\n"
        "  --r N                  LoRA rank (default 8)\n"
        "  --alpha A              LoRA alpha; scale = alpha / r (default 16)\n"
        "  --dropout P            LoRA dropout (default 0.1)\n"
        "  --targets LIST         q,k,v,c_attn,c_proj,c_fc,mlp.c_proj or all (default q,v)\n"
        "  --rslora               scale = alpha / sqrt(r)\n"
        "  --init I               kaiming | gaussian initialisation of A (default kaiming)\n"
        "adalora (--alpha, --dropout, --targets apply too; scale = alpha / (init_r + 1e-5)):\n"
        "  --init-r N             initial rank of every site (default 12)\n"
        "  --target-r N           average final rank per site (default 8)\n"
        "  --tinit N              steps before pruning starts (default 0)\n"
        "  --tfinal N             last steps with the final, frozen mask (default 0)\n"
        "  --delta-t N            steps between budget reallocations (default 1)\n"
        "  --beta1 B, --beta2 B   EMAs of the sensitivity and its uncertainty (default 0.85)\n"
        "  --orth-reg G           weight of the orthogonality penalty (default 0.5)\n"
        "optimisation:\n"
        "  --lr LR                peak learning rate (default 2e-4)\n"
        "  --schedule S           linear | cosine | constant (default linear)\n"
        "  --warmup N             warm-up steps (default min(500, steps / 10))\n"
        "  --steps N              optimizer steps (exclusive with --epochs)\n"
        "  --epochs N             passes over the data (default 1)\n"
        "  --batch B              sequences per micro-batch (default 8)\n"
        "  --grad-accum N         micro-batches per step (default 1)\n"
        "  --weight-decay W       AdamW decoupled weight decay (default 0.01)\n"
        "  --clip C               global grad-norm clip, 0 = off (default 1.0)\n"
        "  --label-smoothing E    (default 0.1)\n"
        "  --seed S               initialisation, shuffling and dropout seed (default 42)\n"
        "run:\n"
        "  --out DIR              output directory (created)\n"
        "  --eval-every N         validate every N steps (default: at the end)\n"
        "  --eval-batches N       batches per validation (default: all)\n"
        "  --save-every N         checkpoint every N steps (default: at the end)\n"
        "  --log-every N          metrics.jsonl record every N steps (default 10)\n"
        "  --threads N            threads (default: all cores)\n"
        "  --resume DIR           continue the run in DIR with its saved options\n"
        "  --stop-after N         checkpoint and stop after step N (continue with --resume)\n"
        "  --checkpoint-activations\n"
        "                         keep only each layer's output through forward and\n"
        "                         recompute the rest in backward: less memory (see lora\n"
        "                         inspect --checkpoint-activations), ~1/3 more compute,\n"
        "                         the same results\n"
        "  --quiet                no progress line\n"
        "  -h, --help             this help\n");
}

typedef struct progress {
    int     tty, quiet;
    int64_t log_every;
    int     drawn;   /* a \r line is on screen */
    int     stopped; /* the run ended before its last step */
} progress;

static void fmt_time(char *buf, size_t n, double s) {
    if (!isfinite(s) || s < 0) {
        snprintf(buf, n, "?");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    else snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

static void on_event(void *user, const lora_train_event *ev) {
    progress *pr = user;
    char      el[32], eta[32];
    switch (ev->kind) {
    case LORA_EVENT_INFO:
        if (pr->drawn) fputc('\n', stderr), pr->drawn = 0;
        fprintf(stderr, "%s\n", ev->message);
        break;
    case LORA_EVENT_STEP:
        if (pr->quiet) break;
        if (!pr->tty && ev->step % pr->log_every != 0 && ev->step != ev->total_steps) break;
        fmt_time(el, sizeof el, ev->elapsed_s);
        fmt_time(eta, sizeof eta, ev->eta_s);
        fprintf(stderr, "%sstep %lld/%lld | loss %.4f | lr %.2e | %.0f tok/s | %s elapsed | ETA %s%s",
                pr->tty ? "\r\033[K" : "", (long long)ev->step, (long long)ev->total_steps,
                (double)ev->loss, (double)ev->lr, ev->tokens_per_s, el, eta, pr->tty ? "" : "\n");
        pr->drawn = pr->tty;
        break;
    case LORA_EVENT_EVAL:
        if (pr->drawn) fputc('\n', stderr), pr->drawn = 0;
        fprintf(stderr, "step %lld: validation loss %.4f (perplexity %.2f)\n",
                (long long)ev->step, (double)ev->val_loss, exp((double)ev->val_loss));
        break;
    case LORA_EVENT_CHECKPOINT: break;
    case LORA_EVENT_DONE:
        pr->stopped = ev->stopped;
        if (pr->drawn) fputc('\n', stderr), pr->drawn = 0;
        fmt_time(el, sizeof el, ev->elapsed_s);
        fprintf(stderr, "%s at step %lld/%lld after %s\n", ev->stopped ? "interrupted" : "done",
                (long long)ev->step, (long long)ev->total_steps, el);
        break;
    }
    fflush(stderr);
}

/* Number parsing with range checks; on failure prints the error and returns -1. */
static int parse_i64(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out) {
    char     *end;
    long long v;
    errno = 0;
    v     = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) {
        cli_error("train", "%s expects an integer in [%lld, %lld], got '%s'", opt, (long long)lo,
                  (long long)hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_f(const char *opt, const char *s, double lo, double hi, double *out) {
    char  *end;
    double v;
    errno = 0;
    v     = strtod(s, &end);
    if (!*s || *end || errno || !(v >= lo && v <= hi)) {
        cli_error("train", "%s expects a number in [%g, %g], got '%s'", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

enum {
    O_MODEL = 256, O_TOKENIZER, O_DATA, O_VAL, O_VAL_SPLIT, O_SEQ_LEN, O_PACK, O_SKIP_BAD,
    O_METHOD, O_R, O_ALPHA, O_DROPOUT, O_TARGETS, O_RSLORA, O_INIT, O_LR, O_SCHEDULE, O_WARMUP,
    O_STEPS, O_EPOCHS, O_BATCH, O_GRAD_ACCUM, O_WD, O_CLIP, O_LS, O_SEED, O_OUT, O_EVAL_EVERY,
    O_EVAL_BATCHES, O_SAVE_EVERY, O_LOG_EVERY, O_THREADS, O_RESUME, O_QUIET, O_STOP_AFTER,
    O_INIT_R, O_TARGET_R, O_TINIT, O_TFINAL, O_DELTA_T, O_ADA_BETA1, O_ADA_BETA2, O_ORTH_REG,
    O_CHECKPOINT_ACTS
};

int cmd_train(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL},       {"tokenizer", required_argument, 0, O_TOKENIZER},
        {"data", required_argument, 0, O_DATA},         {"val", required_argument, 0, O_VAL},
        {"val-split", required_argument, 0, O_VAL_SPLIT}, {"seq-len", required_argument, 0, O_SEQ_LEN},
        {"pack", no_argument, 0, O_PACK},               {"skip-bad", no_argument, 0, O_SKIP_BAD},
        {"method", required_argument, 0, O_METHOD},     {"r", required_argument, 0, O_R},
        {"alpha", required_argument, 0, O_ALPHA},       {"dropout", required_argument, 0, O_DROPOUT},
        {"targets", required_argument, 0, O_TARGETS},   {"rslora", no_argument, 0, O_RSLORA},
        {"init", required_argument, 0, O_INIT},         {"lr", required_argument, 0, O_LR},
        {"schedule", required_argument, 0, O_SCHEDULE}, {"warmup", required_argument, 0, O_WARMUP},
        {"steps", required_argument, 0, O_STEPS},       {"epochs", required_argument, 0, O_EPOCHS},
        {"batch", required_argument, 0, O_BATCH},       {"grad-accum", required_argument, 0, O_GRAD_ACCUM},
        {"weight-decay", required_argument, 0, O_WD},   {"clip", required_argument, 0, O_CLIP},
        {"label-smoothing", required_argument, 0, O_LS}, {"seed", required_argument, 0, O_SEED},
        {"out", required_argument, 0, O_OUT},           {"eval-every", required_argument, 0, O_EVAL_EVERY},
        {"eval-batches", required_argument, 0, O_EVAL_BATCHES},
        {"save-every", required_argument, 0, O_SAVE_EVERY},
        {"log-every", required_argument, 0, O_LOG_EVERY}, {"threads", required_argument, 0, O_THREADS},
        {"resume", required_argument, 0, O_RESUME},     {"quiet", no_argument, 0, O_QUIET},
        {"stop-after", required_argument, 0, O_STOP_AFTER},
        {"checkpoint-activations", no_argument, 0, O_CHECKPOINT_ACTS},
        {"init-r", required_argument, 0, O_INIT_R},     {"target-r", required_argument, 0, O_TARGET_R},
        {"tinit", required_argument, 0, O_TINIT},       {"tfinal", required_argument, 0, O_TFINAL},
        {"delta-t", required_argument, 0, O_DELTA_T},   {"beta1", required_argument, 0, O_ADA_BETA1},
        {"beta2", required_argument, 0, O_ADA_BETA2},   {"orth-reg", required_argument, 0, O_ORTH_REG},
        {"help", no_argument, 0, 'h'},                  {0, 0, 0, 0}};
    lora_train_params p = lora_train_params_default();
    lora_error        err;
    progress          pr = {isatty(2), 0, 10, 0, 0};
    int64_t           iv, threads = 0;
    double            fv;
    int               c, n_run_opts = 0, have_steps = 0, have_epochs = 0, lora_opt = 0;
    int               ada_opt = 0, have_init_r = 0, shared_opt = 0;
    p.log_every = 10;
    optind      = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c != O_THREADS && c != O_RESUME && c != O_QUIET && c != O_STOP_AFTER &&
            c != O_CHECKPOINT_ACTS && c != 'h')
            n_run_opts++;
        switch (c) {
        case O_MODEL: p.model_dir = optarg; break;
        case O_TOKENIZER: p.tokenizer_dir = optarg; break;
        case O_DATA: p.data_path = optarg; break;
        case O_VAL: p.val_path = optarg; break;
        case O_OUT: p.out_dir = optarg; break;
        case O_RESUME: p.resume_dir = optarg; break;
        case O_PACK: p.pack = 1; break;
        case O_SKIP_BAD: p.skip_bad = 1; break;
        case O_QUIET: pr.quiet = 1; break;
        case O_RSLORA: p.adapter.use_rslora = 1, lora_opt = 1; break;
        case O_VAL_SPLIT:
            if (parse_f("--val-split", optarg, 0, 0.9, &fv)) return 2;
            p.val_split = (float)fv;
            break;
        case O_SEQ_LEN:
            if (parse_i64("--seq-len", optarg, 2, 1 << 20, &iv)) return 2;
            p.seq_len = (int32_t)iv;
            break;
        case O_METHOD:
            if (!strcmp(optarg, "lora")) p.adapter.method = LORA_METHOD_LORA;
            else if (!strcmp(optarg, "full")) p.adapter.method = LORA_METHOD_FULL;
            else if (!strcmp(optarg, "bitfit")) p.adapter.method = LORA_METHOD_BITFIT;
            else if (!strcmp(optarg, "adalora")) p.adapter.method = LORA_METHOD_ADALORA;
            else {
                cli_error("train", "--method must be lora, adalora, full or bitfit, got '%s'",
                          optarg);
                return 2;
            }
            break;
        case O_R:
            if (parse_i64("--r", optarg, 1, 4096, &iv)) return 2;
            p.adapter.r = (int32_t)iv, lora_opt = 1;
            break;
        case O_INIT_R:
            if (parse_i64("--init-r", optarg, 1, 4096, &iv)) return 2;
            p.adapter.r = (int32_t)iv, ada_opt = 1, have_init_r = 1;
            break;
        case O_TARGET_R:
            if (parse_i64("--target-r", optarg, 0, 4096, &iv)) return 2;
            p.adapter.adalora.target_r = (int32_t)iv, ada_opt = 1;
            break;
        case O_TINIT:
            if (parse_i64("--tinit", optarg, 0, INT64_MAX / 4, &iv)) return 2;
            p.adapter.adalora.tinit = iv, ada_opt = 1;
            break;
        case O_TFINAL:
            if (parse_i64("--tfinal", optarg, 0, INT64_MAX / 4, &iv)) return 2;
            p.adapter.adalora.tfinal = iv, ada_opt = 1;
            break;
        case O_DELTA_T:
            if (parse_i64("--delta-t", optarg, 1, INT64_MAX / 4, &iv)) return 2;
            p.adapter.adalora.delta_t = iv, ada_opt = 1;
            break;
        case O_ADA_BETA1:
        case O_ADA_BETA2:
            if (parse_f(c == O_ADA_BETA1 ? "--beta1" : "--beta2", optarg, 1e-6, 1 - 1e-6, &fv))
                return 2;
            if (c == O_ADA_BETA1) p.adapter.adalora.beta1 = (float)fv;
            else p.adapter.adalora.beta2 = (float)fv;
            ada_opt = 1;
            break;
        case O_ORTH_REG:
            if (parse_f("--orth-reg", optarg, 0, 1e6, &fv)) return 2;
            p.adapter.adalora.orth_reg = (float)fv, ada_opt = 1;
            break;
        case O_ALPHA:
            if (parse_f("--alpha", optarg, 1e-6, 1e6, &fv)) return 2;
            p.adapter.alpha = (float)fv, shared_opt = 1;
            break;
        case O_DROPOUT:
            if (parse_f("--dropout", optarg, 0, 0.99, &fv)) return 2;
            p.adapter.dropout = (float)fv, shared_opt = 1;
            break;
        case O_TARGETS:
            if (lora_targets_parse(optarg, &p.adapter.targets, &err) != LORA_OK) {
                cli_error("train", "--targets: %s", err.msg);
                return 2;
            }
            shared_opt = 1;
            break;
        case O_INIT:
            if (!strcmp(optarg, "kaiming")) p.adapter.init = LORA_INIT_KAIMING;
            else if (!strcmp(optarg, "gaussian")) p.adapter.init = LORA_INIT_GAUSSIAN;
            else {
                cli_error("train", "--init must be kaiming or gaussian, got '%s'", optarg);
                return 2;
            }
            lora_opt = 1;
            break;
        case O_LR:
            if (parse_f("--lr", optarg, 0, 10, &fv)) return 2;
            p.optim.lr = (float)fv;
            break;
        case O_SCHEDULE:
            if (!strcmp(optarg, "linear")) p.optim.schedule = LORA_SCHEDULE_LINEAR;
            else if (!strcmp(optarg, "cosine")) p.optim.schedule = LORA_SCHEDULE_COSINE;
            else if (!strcmp(optarg, "constant")) p.optim.schedule = LORA_SCHEDULE_CONSTANT;
            else {
                cli_error("train", "--schedule must be linear, cosine or constant, got '%s'",
                          optarg);
                return 2;
            }
            break;
        case O_WARMUP:
            if (parse_i64("--warmup", optarg, 0, INT64_MAX / 2, &iv)) return 2;
            p.optim.warmup_steps = iv;
            break;
        case O_STEPS:
            if (parse_i64("--steps", optarg, 1, INT64_MAX / 2, &iv)) return 2;
            p.optim.total_steps = iv, have_steps = 1;
            break;
        case O_EPOCHS:
            if (parse_i64("--epochs", optarg, 1, 1000000, &iv)) return 2;
            p.epochs = iv, have_epochs = 1;
            break;
        case O_BATCH:
            if (parse_i64("--batch", optarg, 1, 65536, &iv)) return 2;
            p.batch = (int32_t)iv;
            break;
        case O_GRAD_ACCUM:
            if (parse_i64("--grad-accum", optarg, 1, 65536, &iv)) return 2;
            p.grad_accum = (int32_t)iv;
            break;
        case O_WD:
            if (parse_f("--weight-decay", optarg, 0, 10, &fv)) return 2;
            p.optim.weight_decay = (float)fv;
            break;
        case O_CLIP:
            if (parse_f("--clip", optarg, 0, 1e9, &fv)) return 2;
            p.optim.clip = (float)fv;
            break;
        case O_LS:
            if (parse_f("--label-smoothing", optarg, 0, 0.99, &fv)) return 2;
            p.label_smoothing = (float)fv;
            break;
        case O_SEED:
            if (parse_i64("--seed", optarg, 0, INT64_MAX, &iv)) return 2;
            p.seed = (uint64_t)iv;
            break;
        case O_EVAL_EVERY:
            if (parse_i64("--eval-every", optarg, 0, INT64_MAX / 2, &iv)) return 2;
            p.eval_every = iv;
            break;
        case O_EVAL_BATCHES:
            if (parse_i64("--eval-batches", optarg, 0, 1 << 30, &iv)) return 2;
            p.eval_batches = (int32_t)iv;
            break;
        case O_SAVE_EVERY:
            if (parse_i64("--save-every", optarg, 0, INT64_MAX / 2, &iv)) return 2;
            p.save_every = iv;
            break;
        case O_LOG_EVERY:
            if (parse_i64("--log-every", optarg, 1, INT64_MAX / 2, &iv)) return 2;
            p.log_every = iv;
            break;
        case O_STOP_AFTER:
            if (parse_i64("--stop-after", optarg, 1, INT64_MAX / 2, &iv)) return 2;
            p.stop_after = iv;
            break;
        case O_THREADS:
            if (parse_i64("--threads", optarg, 1, 1024, &iv)) return 2;
            threads = iv;
            break;
        case O_CHECKPOINT_ACTS: p.checkpoint_activations = 1; break;
        case 'h': train_usage(stdout); return 0;
        default: train_usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        cli_error("train", "unexpected argument '%s'", argv[optind]);
        train_usage(stderr);
        return 2;
    }
    if (p.resume_dir && n_run_opts) {
        cli_error("train", "--resume continues a run with its saved options; only --threads, "
                           "--stop-after, --checkpoint-activations and --quiet may be given "
                           "with it");
        return 2;
    }
    if (!p.resume_dir && (!p.model_dir || !p.data_path || !p.out_dir)) {
        cli_error("train", "--model, --data and --out are required");
        train_usage(stderr);
        return 2;
    }
    if (have_steps && have_epochs) {
        cli_error("train", "--steps and --epochs are exclusive");
        return 2;
    }
    int adapter_method = p.adapter.method == LORA_METHOD_LORA ||
                         p.adapter.method == LORA_METHOD_ADALORA;
    if ((lora_opt || shared_opt) && !adapter_method) {
        cli_error("train", "LoRA options (--r, --alpha, --dropout, --targets, --rslora, --init) "
                           "do not apply to --method %s",
                  p.adapter.method == LORA_METHOD_FULL ? "full" : "bitfit");
        return 2;
    }
    if (ada_opt && p.adapter.method != LORA_METHOD_ADALORA) {
        cli_error("train", "AdaLoRA options (--init-r, --target-r, --tinit, --tfinal, --delta-t, "
                           "--beta1, --beta2, --orth-reg) need --method adalora");
        return 2;
    }
    if (p.adapter.method == LORA_METHOD_ADALORA) {
        if (lora_opt) {
            cli_error("train", "--r, --rslora and --init are LoRA's; AdaLoRA's initial rank is "
                               "--init-r (its P and Q start as N(0, 0.02))");
            return 2;
        }
        if (!have_init_r) p.adapter.r = 12; /* PEFT's init_r */
        if (p.adapter.adalora.target_r > p.adapter.r) {
            cli_error("train", "--target-r %d exceeds --init-r %d", (int)p.adapter.adalora.target_r,
                      (int)p.adapter.r);
            return 2;
        }
    }
    if (p.val_path && p.val_split > 0) {
        cli_error("train", "--val and --val-split are exclusive");
        return 2;
    }
    pr.log_every = p.log_every;
    lora_set_threads((int)threads);
    signal(SIGINT, on_sigint);
    signal(SIGTERM, on_sigint);
    lora_status st = lora_train(&p, &train_stop, on_event, &pr, &err);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (st != LORA_OK) {
        if (pr.drawn) fputc('\n', stderr);
        cli_error("train", "%s", err.msg);
        return 1;
    }
    if (pr.stopped) {
        fprintf(stderr, "checkpoint written; continue with: lora train --resume %s\n",
                p.resume_dir ? p.resume_dir : p.out_dir);
        if (train_stop) return 130; /* interrupted */
    }
    return 0;
}
