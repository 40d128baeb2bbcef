/*
 * cmd_data.c — `lora data e2e`: writes the synthetic E2E-style data-to-text task (data/e2e.h)
 * as train/dev/test files. Parsing and reporting only; the data set is made by the library.
 */
#include "commands.h"
#include "data/e2e.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void data_usage(FILE *out) {
    fprintf(out, "usage: lora data e2e --out DIR [options]\n"
                 "\n"
                 "Data sets the library can make. One so far:\n"
                 "  e2e   a synthetic E2E NLG-style task: restaurant meaning representations\n"
                 "        and several reference sentences each (lora data e2e --help)\n");
}

static void e2e_usage(FILE *out) {
    fprintf(out,
            "usage: lora data e2e --out DIR [--seed S] [--train N] [--dev N] [--test N]\n"
            "\n"
            "Writes a synthetic data-to-text task in the E2E NLG schema (8 slots, the E2E value\n"
            "sets): meaning representations such as\n"
            "  name[The Eagle], eatType[coffee shop], food[French], near[Burger King]\n"
            "with several different reference sentences each. No MR is shared between splits;\n"
            "each name has one food held out of train and dev, and about half of the test MRs\n"
            "use it. The same seed always gives the same files.\n"
            "\n"
            "files in DIR (each written atomically):\n"
            "  train.jsonl, dev.jsonl  {\"prompt\": \"<MR> ||\", \"completion\": \" <sentence>\"}\n"
            "  test.jsonl              {\"prompt\": \"<MR> ||\", \"references\": [...], "
            "\"mr\": \"<MR>\"}\n"
            "  test.refs.txt           references per MR, a blank line between MRs\n"
            "  test.mr.txt             one MR per line (for lora score --mr)\n"
            "\n"
            "options:\n"
            "  --out DIR     output directory, created if needed (required)\n"
            "  --seed S      random seed, 0 .. 2^64-1 (default 1)\n"
            "  --train N     training (MR, sentence) pairs (default 3000)\n"
            "  --dev N       development pairs (default 300)\n"
            "  --test N      test MRs, 5 to 10 references each (default 100)\n"
            "  -h, --help    this help\n");
}

static int parse_count(const char *s, int32_t *out) {
    char *end;
    errno  = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno || v < 0 || v > 1000000) return -1;
    *out = (int32_t)v;
    return 0;
}

static int parse_seed(const char *s, uint64_t *out) {
    char *end;
    errno                = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s == '\0' || *s == '-' || *s == '+' || *end != '\0' || errno) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int cmd_data_e2e(int argc, char **argv) {
    static const struct option opts[] = {{"out", required_argument, 0, 'o'},
                                         {"seed", required_argument, 0, 's'},
                                         {"train", required_argument, 0, 't'},
                                         {"dev", required_argument, 0, 'd'},
                                         {"test", required_argument, 0, 'e'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    lora_e2e_params            p      = lora_e2e_params_default();
    const char                *out    = NULL;
    int                        c, li = -1;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, &li)) != -1) {
        int bad = 0;
        switch (c) {
        case 'o':
            out = optarg;
            break;
        case 's':
            bad = parse_seed(optarg, &p.seed);
            break;
        case 't':
            bad = parse_count(optarg, &p.n_train);
            break;
        case 'd':
            bad = parse_count(optarg, &p.n_dev);
            break;
        case 'e':
            bad = parse_count(optarg, &p.n_test);
            break;
        case 'h':
            e2e_usage(stdout);
            return 0;
        case ':':
            cli_error("data e2e", "option '%s' needs a value", argv[optind - 1]);
            e2e_usage(stderr);
            return 2;
        default:
            cli_error("data e2e", "unknown option '%s'", argv[optind - 1]);
            e2e_usage(stderr);
            return 2;
        }
        if (bad) {
            cli_error("data e2e", "invalid value '%s' for --%s (hint: %s)", optarg,
                      li >= 0 ? opts[li].name : "?",
                      c == 's' ? "a non-negative integer" : "an integer from 0 to 1000000");
            return 2;
        }
    }
    if (optind < argc) {
        cli_error("data e2e", "unexpected argument '%s'", argv[optind]);
        e2e_usage(stderr);
        return 2;
    }
    if (!out) {
        cli_error("data e2e", "--out DIR is required");
        e2e_usage(stderr);
        return 2;
    }

    lora_error        err;
    lora_e2e_dataset *ds = NULL;
    lora_status       st = lora_e2e_generate(&p, &ds, &err);
    if (st == LORA_OK) st = lora_e2e_write(ds, out, &err);
    if (st != LORA_OK) {
        cli_error("data e2e", "%s", err.msg);
        lora_e2e_dataset_free(ds);
        return 1;
    }
    const lora_e2e_split *tr = &ds->split[LORA_E2E_TRAIN], *dv = &ds->split[LORA_E2E_DEV],
                         *te = &ds->split[LORA_E2E_TEST];
    printf("wrote %s: train.jsonl %d pairs (%d MRs), dev.jsonl %d pairs (%d MRs), "
           "test.jsonl %d MRs (%d references), seed %llu\n",
           out, tr->n_refs, tr->n_items, dv->n_refs, dv->n_items, te->n_items, te->n_refs,
           (unsigned long long)p.seed);
    lora_e2e_dataset_free(ds);
    return 0;
}

int cmd_data(int argc, char **argv) {
    if (argc < 2) {
        data_usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        data_usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "e2e")) return cmd_data_e2e(argc - 1, argv + 1);
    cli_error("data", "unknown data set '%s'", argv[1]);
    data_usage(stderr);
    return 2;
}
