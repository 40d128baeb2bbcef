/*
 * cmd_tokenizer_train.c — `lora tokenizer-train --corpus FILES --vocab N --out DIR`: learns a
 * GPT-2-style byte-level BPE tokenizer and writes vocab.json, merges.txt and tokenizer.json.
 * Parses options, reports progress on stderr, and calls the trainer; nothing else.
 */
#include "commands.h"
#include "lora.h"
#include "tokenizer/tokenizer.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void train_usage(FILE *out) {
    fprintf(out,
            "usage: lora tokenizer-train --corpus FILE[,FILE...] --vocab N --out DIR\n"
            "                            [--min-freq N]\n"
            "\n"
            "Learns a byte-level BPE tokenizer (GPT-2's pre-tokenizer and byte alphabet) from\n"
            "the corpus files and writes DIR/vocab.json, DIR/merges.txt and DIR/tokenizer.json.\n"
            "\"<|endoftext|>\" in the text separates documents and is the last token id.\n"
            "\n"
            "options:\n"
            "  --corpus LIST     comma-separated text files (required)\n"
            "  --vocab N         vocabulary size, counting the 256 byte tokens and\n"
            "                    <|endoftext|> (required; 257 .. 16777216)\n"
            "  --min-freq N      stop early when the best pair occurs fewer than N times\n"
            "                    (default 2)\n"
            "  --out DIR         output directory, created if missing (required)\n"
            "  -h, --help        this help\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct progress_state {
    double t0;
} progress_state;

static void on_progress(void *user, int32_t n_done, int32_t n_total, int64_t count) {
    const progress_state *ps = user;
    fprintf(stderr, "lora tokenizer-train: %d/%d merges (pair count %lld, %.1f s)\n", (int)n_done,
            (int)n_total, (long long)count, now_s() - ps->t0);
}

/* Parses a whole decimal number in [lo, hi]; 0 on success. */
static int parse_range(const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno       = 0;
    long long v = strtoll(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int cmd_tokenizer_train(int argc, char **argv) {
    static const struct option opts[] = {
        {"corpus", required_argument, 0, 'c'},   {"vocab", required_argument, 0, 'v'},
        {"min-freq", required_argument, 0, 'm'}, {"out", required_argument, 0, 'o'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
    const char *corpus = NULL, *out = NULL;
    long long   vocab = 0, min_freq = 2;
    int         c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            corpus = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'v':
            if (parse_range(optarg, 257, 1 << 24, &vocab)) {
                cli_error("tokenizer-train",
                          "--vocab must be a whole number in [257, 16777216], "
                          "got '%s'",
                          optarg);
                return 2;
            }
            break;
        case 'm':
            if (parse_range(optarg, 1, INT64_MAX, &min_freq)) {
                cli_error("tokenizer-train",
                          "--min-freq must be a positive whole number, got "
                          "'%s'",
                          optarg);
                return 2;
            }
            break;
        case 'h':
            train_usage(stdout);
            return 0;
        default:
            train_usage(stderr);
            return 2;
        }
    }
    if (optind < argc || !corpus || !vocab || !out) {
        if (optind < argc) {
            cli_error("tokenizer-train", "unexpected argument '%s'", argv[optind]);
        } else {
            cli_error("tokenizer-train", "--corpus, --vocab and --out are required");
        }
        train_usage(stderr);
        return 2;
    }

    char *files = strdup(corpus);
    if (!files) {
        cli_error("tokenizer-train", "out of memory");
        return 1;
    }
    lora_bpe_trainer *t = NULL;
    lora_error        err;
    int               rc = 1, n_files = 0;
    progress_state    ps = {now_s()};
    if (lora_bpe_trainer_init(&t, &err) != LORA_OK) goto fail;
    for (char *save = NULL, *f = strtok_r(files, ",", &save); f; f = strtok_r(NULL, ",", &save)) {
        if (lora_bpe_trainer_feed_file(t, f, &err) != LORA_OK) goto fail;
        n_files++;
    }
    if (n_files == 0) {
        cli_error("tokenizer-train", "--corpus names no file");
        rc = 2;
        goto done;
    }
    int64_t n_bytes, n_words, n_unique;
    lora_bpe_trainer_stats(t, &n_bytes, &n_words, &n_unique);
    fprintf(stderr,
            "lora tokenizer-train: read %.1f MB from %d file(s): %lld words, %lld distinct "
            "(%.1f s)\n",
            (double)n_bytes / 1e6, n_files, (long long)n_words, (long long)n_unique,
            now_s() - ps.t0);

    lora_bpe_params p = {.vocab_size = (int32_t)vocab,
                         .min_freq   = (int64_t)min_freq,
                         .progress   = on_progress,
                         .user       = &ps};
    if (lora_bpe_trainer_train(t, &p, &err) != LORA_OK) goto fail;
    int32_t got = lora_bpe_trainer_n_vocab(t);
    if (got < (int32_t)vocab) {
        fprintf(stderr,
                "lora tokenizer-train: stopped at %d tokens: no pair occurs %lld times or more\n",
                (int)got, min_freq);
    }
    if (lora_bpe_trainer_save(t, out, &err) != LORA_OK) goto fail;
    fprintf(stderr, "lora tokenizer-train: wrote %s: %d tokens, %d merges (%.1f s)\n", out,
            (int)got, (int)lora_bpe_trainer_n_merges(t), now_s() - ps.t0);
    rc = 0;
    goto done;
fail:
    cli_error("tokenizer-train", "%s", err.msg);
done:
    lora_bpe_trainer_free(t);
    free(files);
    return rc;
}
