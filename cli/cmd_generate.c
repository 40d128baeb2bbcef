/*
 * cmd_generate.c — `lora generate`: continues a prompt with a model (and optionally a PEFT
 * adapter), streaming the decoded text to stdout as tokens are drawn.
 *
 * A thin front end: the prompt is encoded by the tokenizer, the tokens come from the KV-cache
 * decoder and the sampler of lora.h. What is here: option parsing, stop strings (held back
 * until they can no longer start a match, so a stop string is never printed), timing.
 */
#include "commands.h"
#include "lora.h"
#include "tokenizer/tokenizer.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void generate_usage(FILE *out) {
    fprintf(out,
            "usage: lora generate --model DIR (--prompt TEXT | --prompt-file F) [options]\n"
            "\n"
            "Continues the prompt and streams the generated text to stdout (the prompt is not\n"
            "echoed). Stops at <|endoftext|>, after --max-new tokens, at a --stop string, or\n"
            "when the model's context is full. Timings go to stderr.\n"
            "\n"
            "options:\n"
            "  --model DIR         Hugging Face GPT-2 directory (required)\n"
            "  --tokenizer DIR     tokenizer.json or vocab.json + merges.txt (default: --model)\n"
            "  --adapter DIR       a PEFT LoRA adapter directory to apply\n"
            "  --prompt TEXT       the prompt (<|endoftext|> in it is the special token)\n"
            "  --prompt-file F     read the prompt from F ('-' for stdin)\n"
            "  --max-new N         generate at most N tokens (default 64)\n"
            "  --temperature T     softmax temperature; 0 means greedy (default 1)\n"
            "  --top-k K           sample among the K most likely tokens; 0 = all (default 0)\n"
            "  --top-p P           nucleus sampling mass in (0, 1] (default 1 = off)\n"
            "  --seed S            random seed (default 42); the same seed gives the same text\n"
            "  --greedy            always take the most likely token\n"
            "  --stop STRING       stop before STRING appears in the output (repeatable)\n"
            "  --ids               print the generated token ids instead of text\n"
            "  -h, --help          this help\n");
}

/* ---- option values ---- */

static int parse_int(const char *s, long lo, long hi, int32_t *out) {
    char *end;
    errno  = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno || v < lo || v > hi) return -1;
    *out = (int32_t)v;
    return 0;
}

static int parse_float(const char *s, float *out) {
    char *end;
    errno   = 0;
    float v = strtof(s, &end);
    if (*s == '\0' || *end != '\0' || errno || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

static int parse_u64(const char *s, uint64_t *out) {
    char *end;
    errno                = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s == '\0' || *s == '-' || *end != '\0' || errno) return -1;
    *out = (uint64_t)v;
    return 0;
}

/* Reads all of path ("-": stdin) into a malloc'd buffer; 0 on success. */
static int read_file(const char *path, char **data, size_t *len) {
    FILE *fp = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!fp) return -1;
    size_t cap = 4096, n = 0;
    char  *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, fp);
        if (n < cap) break;
        char *nb = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int bad = !buf || ferror(fp);
    if (fp != stdin) fclose(fp);
    if (bad) {
        free(buf);
        return -1;
    }
    *data = buf;
    *len  = n;
    return 0;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- output with stop strings ---- */

typedef struct out_state {
    char **stops; /* borrowed from argv */
    int    n_stops;
    size_t max_stop;
    int    ids;       /* print ids instead of text */
    int    n_printed; /* ids printed so far */
    char  *pend;      /* text not yet printed: it may be the start of a stop string */
    size_t n_pend, cap;
} out_state;

static void put_bytes(const char *b, size_t n) {
    if (n) fwrite(b, 1, n, stdout);
}

/*
 * Takes one generated token (its id and the bytes it decodes to). Returns 1 when the text now
 * contains a stop string: what precedes it is printed, the rest (and this id) is not. Else
 * prints what can no longer begin a stop string, or the id with --ids. -1: out of memory.
 */
static int out_token(out_state *o, int32_t id, const char *bytes, size_t n) {
    if (o->n_stops == 0) {
        if (o->ids) printf("%s%d", o->n_printed++ ? " " : "", (int)id);
        else put_bytes(bytes, n);
        fflush(stdout);
        return 0;
    }
    if (o->n_pend + n > o->cap) {
        size_t cap = (o->n_pend + n) * 2;
        char  *p   = realloc(o->pend, cap);
        if (!p) return -1;
        o->pend = p;
        o->cap  = cap;
    }
    memcpy(o->pend + o->n_pend, bytes, n);
    o->n_pend += n;
    /* the earliest complete stop string */
    size_t at = o->n_pend;
    for (int i = 0; i < o->n_stops; i++) {
        const char *hit = memmem(o->pend, o->n_pend, o->stops[i], strlen(o->stops[i]));
        if (hit && (size_t)(hit - o->pend) < at) at = (size_t)(hit - o->pend);
    }
    if (at < o->n_pend) {
        if (!o->ids) put_bytes(o->pend, at);
        o->n_pend = 0; /* the stop string and what follows it are dropped */
        fflush(stdout);
        return 1;
    }
    /* keep the longest tail that is a proper prefix of some stop string */
    size_t keep = 0;
    for (size_t k = o->n_pend < o->max_stop ? o->n_pend : o->max_stop - 1; k > 0 && !keep; k--)
        for (int i = 0; i < o->n_stops && !keep; i++)
            if (strlen(o->stops[i]) > k && !memcmp(o->pend + o->n_pend - k, o->stops[i], k))
                keep = k;
    if (o->ids) {
        printf("%s%d", o->n_printed++ ? " " : "", (int)id);
    } else {
        put_bytes(o->pend, o->n_pend - keep);
    }
    memmove(o->pend, o->pend + o->n_pend - keep, keep);
    o->n_pend = keep;
    fflush(stdout);
    return 0;
}

/* Prints held-back text at the end of generation (no stop string completed). */
static void out_finish(out_state *o) {
    if (!o->ids) put_bytes(o->pend, o->n_pend);
    o->n_pend = 0;
    if (o->ids) putchar('\n');
    else if (isatty(STDOUT_FILENO)) putchar('\n');
    fflush(stdout);
}

/* ---- the command ---- */

int cmd_generate(int argc, char **argv) {
    enum {
        O_MODEL = 256, O_TOKENIZER, O_ADAPTER, O_PROMPT, O_PROMPT_FILE, O_MAX_NEW,
        O_TEMPERATURE, O_TOP_K, O_TOP_P, O_SEED, O_GREEDY, O_STOP, O_IDS
    };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL},
        {"tokenizer", required_argument, 0, O_TOKENIZER},
        {"adapter", required_argument, 0, O_ADAPTER},
        {"prompt", required_argument, 0, O_PROMPT},
        {"prompt-file", required_argument, 0, O_PROMPT_FILE},
        {"max-new", required_argument, 0, O_MAX_NEW},
        {"temperature", required_argument, 0, O_TEMPERATURE},
        {"top-k", required_argument, 0, O_TOP_K},
        {"top-p", required_argument, 0, O_TOP_P},
        {"seed", required_argument, 0, O_SEED},
        {"greedy", no_argument, 0, O_GREEDY},
        {"stop", required_argument, 0, O_STOP},
        {"ids", no_argument, 0, O_IDS},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char         *model_dir = NULL, *tok_dir = NULL, *adapter_dir = NULL;
    const char         *prompt = NULL, *prompt_file = NULL;
    int32_t             max_new = 64;
    lora_sampler_params sp      = lora_sampler_params_default();
    lora_error          err;
    lora_model         *m   = NULL;
    lora_tokenizer     *tok = NULL;
    lora_decoder       *d   = NULL;
    lora_sampler       *s   = NULL;
    char               *text = NULL;
    int32_t            *ids  = NULL;
    size_t              n_text = 0, n_ids = 0;
    out_state           o;
    memset(&o, 0, sizeof o);
    o.stops = calloc((size_t)argc + 1, sizeof *o.stops);
    if (!o.stops) {
        cli_error("generate", "out of memory");
        return 1;
    }
    int c, rc = 2;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_MODEL: model_dir = optarg; break;
        case O_TOKENIZER: tok_dir = optarg; break;
        case O_ADAPTER: adapter_dir = optarg; break;
        case O_PROMPT: prompt = optarg; break;
        case O_PROMPT_FILE: prompt_file = optarg; break;
        case O_MAX_NEW:
            if (parse_int(optarg, 0, 1L << 30, &max_new)) {
                cli_error("generate", "--max-new must be an integer >= 0, got '%s'", optarg);
                goto cleanup;
            }
            break;
        case O_TEMPERATURE:
            if (parse_float(optarg, &sp.temperature) || sp.temperature < 0) {
                cli_error("generate", "--temperature must be a number >= 0, got '%s'", optarg);
                goto cleanup;
            }
            break;
        case O_TOP_K:
            if (parse_int(optarg, 0, 1L << 30, &sp.top_k)) {
                cli_error("generate", "--top-k must be an integer >= 0, got '%s'", optarg);
                goto cleanup;
            }
            break;
        case O_TOP_P:
            if (parse_float(optarg, &sp.top_p) || !(sp.top_p > 0 && sp.top_p <= 1)) {
                cli_error("generate", "--top-p must be in (0, 1], got '%s'", optarg);
                goto cleanup;
            }
            break;
        case O_SEED:
            if (parse_u64(optarg, &sp.seed)) {
                cli_error("generate", "--seed must be a non-negative integer, got '%s'", optarg);
                goto cleanup;
            }
            break;
        case O_GREEDY: sp.greedy = 1; break;
        case O_STOP:
            if (!*optarg) {
                cli_error("generate", "--stop needs a non-empty string");
                goto cleanup;
            }
            o.stops[o.n_stops++] = optarg;
            if (strlen(optarg) > o.max_stop) o.max_stop = strlen(optarg);
            break;
        case O_IDS: o.ids = 1; break;
        case 'h':
            generate_usage(stdout);
            rc = 0;
            goto cleanup;
        default:
            if (optopt > 0 && optopt < 128)
                cli_error("generate", "unknown option or missing value: '-%c'", optopt);
            else
                cli_error("generate", "unknown option or missing value: '%s'", argv[optind - 1]);
            generate_usage(stderr);
            goto cleanup;
        }
    }
    if (optind < argc) {
        cli_error("generate", "unexpected argument '%s'", argv[optind]);
        generate_usage(stderr);
        goto cleanup;
    }
    if (!model_dir || (!prompt == !prompt_file)) {
        cli_error("generate", "%s", !model_dir ? "--model is required"
                                               : "give one of --prompt and --prompt-file");
        generate_usage(stderr);
        goto cleanup;
    }
    if (!tok_dir) tok_dir = model_dir;

    rc = 1;
    if (prompt_file && read_file(prompt_file, &text, &n_text)) {
        cli_error("generate", "%s: cannot read: %s", prompt_file, strerror(errno));
        goto cleanup;
    }
    if (lora_model_load(model_dir, &m, &err) != LORA_OK ||
        (adapter_dir && lora_adapter_load(m, adapter_dir, &err) != LORA_OK) ||
        lora_tokenizer_load(tok_dir, &tok, &err) != LORA_OK) {
        cli_error("generate", "%s", err.msg);
        goto cleanup;
    }
    const lora_config *cfg = lora_model_config(m);
    if (lora_tokenizer_n_vocab(tok) > cfg->vocab_size) {
        cli_error("generate",
                  "%s: the tokenizer has %d tokens but the model's vocabulary is %d (hint: "
                  "--tokenizer for this model)",
                  tok_dir, (int)lora_tokenizer_n_vocab(tok), (int)cfg->vocab_size);
        goto cleanup;
    }
    if (lora_tokenizer_encode(tok, prompt ? prompt : text, prompt ? strlen(prompt) : n_text,
                              LORA_ENCODE_SPECIAL, &ids, &n_ids, &err) != LORA_OK) {
        cli_error("generate", "prompt: %s", err.msg);
        goto cleanup;
    }
    int32_t eos = lora_tokenizer_eos(tok);
    if (n_ids == 0) { /* unconditional: start from <|endoftext|>, as GPT-2 was trained */
        if (eos < 0) {
            cli_error("generate", "the prompt is empty and the tokenizer has no <|endoftext|> "
                                  "to start from");
            goto cleanup;
        }
        free(ids);
        if (!(ids = malloc(sizeof *ids))) {
            cli_error("generate", "out of memory");
            goto cleanup;
        }
        ids[0] = eos;
        n_ids  = 1;
    }
    if (n_ids > (size_t)cfg->n_positions) {
        cli_error("generate",
                  "the prompt is %zu tokens but the model's context is n_positions=%d tokens "
                  "(hint: shorten the prompt)",
                  n_ids, (int)cfg->n_positions);
        goto cleanup;
    }
    int32_t n_prompt = (int32_t)n_ids;
    /* the last token drawn is never fed back */
    int64_t want    = (int64_t)n_prompt + (max_new > 0 ? max_new - 1 : 0);
    int32_t max_len = want < cfg->n_positions ? (int32_t)want : cfg->n_positions;
    if (lora_decoder_init(m, 1, max_len, &d, &err) != LORA_OK ||
        lora_sampler_init(&sp, cfg->vocab_size, &s, &err) != LORA_OK) {
        cli_error("generate", "%s", err.msg);
        goto cleanup;
    }

    double t0 = now_s();
    if (lora_decoder_feed(d, 0, ids, n_prompt, &err) != LORA_OK) {
        cli_error("generate", "prompt: %s", err.msg);
        goto cleanup;
    }
    double  t1 = now_s();
    int32_t n_gen = 0, full = 0;
    for (int32_t i = 0; i < max_new; i++) {
        int32_t id = lora_sampler_sample(s, lora_decoder_logits(d, 0), (uint64_t)i);
        if (id == eos) break;
        size_t      nb    = 0;
        const char *bytes = lora_tokenizer_id_to_bytes(tok, id, &nb); /* NULL: no such token */
        int         r     = out_token(&o, id, bytes ? bytes : "", bytes ? nb : 0);
        if (r < 0) {
            cli_error("generate", "out of memory");
            goto cleanup;
        }
        if (r > 0) break;
        n_gen++;
        if (i + 1 == max_new) break;
        if (lora_decoder_length(d, 0) >= lora_decoder_max_len(d)) {
            full = 1;
            break;
        }
        if (lora_decoder_feed(d, 0, &id, 1, &err) != LORA_OK) {
            cli_error("generate", "%s", err.msg);
            goto cleanup;
        }
    }
    double t2 = now_s();
    out_finish(&o);
    if (full)
        fprintf(stderr, "lora generate: context full (n_positions=%d tokens: prompt %d + %d "
                        "generated); stopped\n",
                (int)cfg->n_positions, (int)n_prompt, (int)n_gen);
    double tp = t1 - t0, td = t2 - t1;
    fprintf(stderr,
            "lora generate: prefill %d tokens in %.1f ms (%.0f tokens/s), decode %d tokens in "
            "%.1f ms (%.0f tokens/s)\n",
            (int)n_prompt, tp * 1e3, tp > 0 ? n_prompt / tp : 0.0, (int)n_gen, td * 1e3,
            td > 0 ? n_gen / td : 0.0);
    rc = 0;
cleanup:
    lora_sampler_free(s);
    lora_decoder_free(d);
    lora_tokenizer_free(tok);
    lora_model_free(m);
    free(ids);
    free(text);
    free(o.pend);
    free(o.stops);
    return rc;
}
