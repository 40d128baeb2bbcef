/*
 * cmd_score.c — `lora score`: BLEU, NIST, ROUGE-L, CIDEr (and the slot error rate with --mr) of
 * system outputs against grouped references, as the E2E challenge's scoring script reports
 * them. Reading, checking counts and printing only; the metrics live in eval/metrics.h.
 */
#include "commands.h"
#include "eval/metrics.h"

#include <cjson/cJSON.h>

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void score_usage(FILE *out) {
    fprintf(out,
            "usage: lora score --refs FILE --hyps FILE [--mr FILE] [--json]\n"
            "\n"
            "Scores system outputs as the E2E NLG challenge does: corpus BLEU-4 and NIST-5\n"
            "(mteval-v13a tokenisation, lower-cased), ROUGE-L (beta 1.2) and CIDEr-D.\n"
            "\n"
            "  --refs FILE   references, one per line, a blank line between the groups of\n"
            "                different inputs (the E2E format; lora data e2e writes\n"
            "                test.refs.txt)\n"
            "  --hyps FILE   system outputs, one per line, in the same order\n"
            "  --mr FILE     meaning representations, one per line: also report the slot error\n"
            "                rate (missing + wrong slot values) / slots\n"
            "  --json        print one JSON object instead of a table\n"
            "  -h, --help    this help\n");
}

/* Drops trailing empty lines beyond `want` (an editor's final blank line). */
static void trim_trailing(lora_eval_lines *l, size_t want) {
    while (l->n > want && l->line[l->n - 1][0] == '\0')
        l->n--;
}

static int print_json(const lora_scores *s) {
    cJSON *o  = cJSON_CreateObject();
    int    ok = o && cJSON_AddNumberToObject(o, "segments", (double)s->n_segments) &&
             cJSON_AddNumberToObject(o, "bleu", s->bleu) &&
             cJSON_AddNumberToObject(o, "nist", s->nist) &&
             cJSON_AddNumberToObject(o, "rouge_l", s->rouge_l) &&
             cJSON_AddNumberToObject(o, "cider", s->cider);
    if (ok && s->ser >= 0) {
        ok = cJSON_AddNumberToObject(o, "ser", s->ser) &&
             cJSON_AddNumberToObject(o, "slots", (double)s->n_slots) &&
             cJSON_AddNumberToObject(o, "missing", (double)s->n_missing) &&
             cJSON_AddNumberToObject(o, "wrong", (double)s->n_wrong) &&
             cJSON_AddNumberToObject(o, "added", (double)s->n_added);
    }
    char *text = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!text) {
        cli_error("score", "out of memory writing JSON");
        return 1;
    }
    printf("%s\n", text);
    free(text);
    return 0;
}

int cmd_score(int argc, char **argv) {
    static const struct option opts[] = {
        {"refs", required_argument, 0, 'r'}, {"hyps", required_argument, 0, 'y'},
        {"mr", required_argument, 0, 'm'},   {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},       {0, 0, 0, 0}};
    const char *refs_path = NULL, *hyps_path = NULL, *mr_path = NULL;
    int         json = 0, c;
    optind           = 1;
    opterr           = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            refs_path = optarg;
            break;
        case 'y':
            hyps_path = optarg;
            break;
        case 'm':
            mr_path = optarg;
            break;
        case 'j':
            json = 1;
            break;
        case 'h':
            score_usage(stdout);
            return 0;
        case ':':
            cli_error("score", "option '%s' needs a value", argv[optind - 1]);
            score_usage(stderr);
            return 2;
        default:
            cli_error("score", "unknown option '%s'", argv[optind - 1]);
            score_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        cli_error("score", "unexpected argument '%s'", argv[optind]);
        score_usage(stderr);
        return 2;
    }
    if (!refs_path || !hyps_path) {
        cli_error("score", "--refs FILE and --hyps FILE are required");
        score_usage(stderr);
        return 2;
    }

    lora_error      err;
    lora_eval_refs  refs = {0};
    lora_eval_lines hyps = {0}, mrs = {0};
    int             rc = 1;
    if (lora_eval_read_refs(refs_path, &refs, &err) != LORA_OK ||
        lora_eval_read_lines(hyps_path, &hyps, &err) != LORA_OK ||
        (mr_path && lora_eval_read_lines(mr_path, &mrs, &err) != LORA_OK)) {
        cli_error("score", "%s", err.msg);
        goto done;
    }
    trim_trailing(&hyps, refs.n_groups);
    if (hyps.n != refs.n_groups) {
        cli_error("score", "%s: %zu hypotheses but %s has %zu reference groups", hyps_path, hyps.n,
                  refs_path, refs.n_groups);
        goto done;
    }
    if (mr_path) {
        trim_trailing(&mrs, refs.n_groups);
        if (mrs.n != refs.n_groups) {
            cli_error("score", "%s: %zu MRs but %s has %zu reference groups", mr_path, mrs.n,
                      refs_path, refs.n_groups);
            goto done;
        }
    }

    lora_eval_corpus corpus = {refs.n_groups, (const char *const *)hyps.line,
                               (const char *const *)refs.lines.line, refs.ref_off};
    lora_scores      s;
    if (lora_eval_all(&corpus, mr_path ? (const char *const *)mrs.line : NULL, &s, &err) !=
        LORA_OK) {
        int in_mrs = mr_path && !strncmp(err.msg, "line ", 5);
        cli_error("score", "%s%s%s", in_mrs ? mr_path : "", in_mrs ? ": " : "", err.msg);
        goto done;
    }
    if (json) {
        rc = print_json(&s);
        goto done;
    }
    printf("segments  %zu\n", s.n_segments);
    printf("BLEU      %.4f\n", s.bleu);
    printf("NIST      %.4f\n", s.nist);
    printf("ROUGE-L   %.4f\n", s.rouge_l);
    printf("CIDEr     %.4f\n", s.cider);
    if (s.ser >= 0) {
        printf("SER       %.4f  (%lld missing, %lld wrong of %lld slots; %lld added)\n", s.ser,
               (long long)s.n_missing, (long long)s.n_wrong, (long long)s.n_slots,
               (long long)s.n_added);
    }
    rc = 0;
done:
    lora_eval_lines_free(&mrs);
    lora_eval_lines_free(&hyps);
    lora_eval_refs_free(&refs);
    return rc;
}
