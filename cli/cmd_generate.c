/*
 * cmd_generate.c — `lora generate`: continues a prompt, or every line of a prompts file, with a
 * model (and optionally PEFT adapters, unmerged or merged). Sampling and greedy decoding of
 * one prompt stream the text as tokens are drawn; beam search prints the best hypothesis at
 * the end.
 *
 * A thin front end: prompts are encoded by the tokenizer, the tokens come from the KV-cache
 * decoder, the sampler and the beam search of lora.h. What is here: option parsing, stop
 * strings (held back until they can no longer start a match, so a stop string is never
 * printed), one line per prompt for a prompts file, timing.
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
            "usage: lora generate --model DIR (--prompt TEXT | --prompt-file F |\n"
            "                     --prompts-file F) [options]\n"
            "\n"
            "Continues the prompt and writes the generated text to stdout (the prompt is not\n"
            "echoed): streamed as it is drawn, or at the end with --beams. Stops at\n"
            "<|endoftext|>, after --max-new tokens, at a --stop string, or when the model's\n"
            "context is full. Timings go to stderr.\n"
            "\n"
            "options:\n"
            "  --model DIR         Hugging Face GPT-2 directory (required)\n"
            "  --tokenizer DIR     tokenizer.json or vocab.json + merges.txt (default: --model)\n"
            "  --adapter DIR[:S]   a PEFT LoRA or AdaLoRA adapter directory to apply, scaled\n"
            "                      by S (default 1); repeatable: the adapters are summed\n"
            "  --merge             fold the adapters into the weights before decoding (the\n"
            "                      speed of the base model; same text to rounding)\n"
            "  --transposed-weights\n"
            "                      keep a transposed copy of every linear's weight for\n"
            "                      decoding steps (faster where memory bandwidth bounds\n"
            "                      them, e.g. 3-7 %% per token on a 2-core AMD VM, 1.6x\n"
            "                      for --beams 4; slower on some CPUs: measure); a second\n"
            "                      copy of the weights in memory, ~340 MB for GPT-2 small;\n"
            "                      same text to rounding\n"
            "  --prompt TEXT       the prompt (<|endoftext|> in it is the special token)\n"
            "  --prompt-file F     read the prompt from F ('-' for stdin)\n"
            "  --prompts-file F    one prompt per line of F ('-' for stdin); writes one\n"
            "                      completion per line, in order, newlines in it as spaces\n"
            "  --max-new N         generate at most N tokens (default 64)\n"
            "  --temperature T     softmax temperature; 0 means greedy (default 1)\n"
            "  --top-k K           sample among the K most likely tokens; 0 = all (default 0)\n"
            "  --top-p P           nucleus sampling mass in (0, 1] (default 1 = off)\n"
            "  --seed S            random seed (default 42); the same seed gives the same text\n"
            "  --greedy            always take the most likely token\n"
            "  --beams K           beam search with K beams (default 1: sampling or greedy)\n"
            "  --length-penalty LP a finished beam scores log-probability / length^LP, length\n"
            "                      = generated tokens with the one that ended it (default 1)\n"
            "  --no-repeat-ngram N never repeat an N-gram of the prompt and output (greedy or\n"
            "                      beams; default 0 = off)\n"
            "  --early-stopping M  when beam search stops: exact (no running beam can win; the\n"
            "                      default), heuristic (HF's False) or first (K finished)\n"
            "  --batch N           --prompts-file with --beams or greedy: prompts decoded\n"
            "                      together (default: up to 8, within 1 GiB of KV cache)\n"
            "  --stop STRING       stop before STRING appears in the output (repeatable); with\n"
            "                      --beams a token holding STRING ends a hypothesis\n"
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
    int    to_line;   /* 1: output goes to line (one prompts-file line) instead of stdout */
    char  *line;
    size_t n_line, line_cap;
} out_state;

/* Appends n bytes to the output: stdout, or the line buffer. -1: out of memory. */
static int emit(out_state *o, const char *b, size_t n) {
    if (!n) return 0;
    if (!o->to_line) {
        fwrite(b, 1, n, stdout);
        return 0;
    }
    if (o->n_line + n > o->line_cap) {
        size_t cap = (o->n_line + n) * 2 + 64;
        char  *p   = realloc(o->line, cap);
        if (!p) return -1;
        o->line     = p;
        o->line_cap = cap;
    }
    memcpy(o->line + o->n_line, b, n);
    o->n_line += n;
    return 0;
}

static int emit_id(out_state *o, int32_t id) {
    char b[24];
    int  n = snprintf(b, sizeof b, "%s%d", o->n_printed++ ? " " : "", (int)id);
    return emit(o, b, (size_t)n);
}

static void out_flush(const out_state *o) {
    if (!o->to_line) fflush(stdout);
}

/*
 * Takes one generated token (its id and the bytes it decodes to). Returns 1 when the text now
 * contains a stop string: what precedes it is printed, the rest (and this id) is not. Else
 * prints what can no longer begin a stop string, or the id with --ids. -1: out of memory.
 */
static int out_token(out_state *o, int32_t id, const char *bytes, size_t n) {
    if (o->n_stops == 0) {
        int r = o->ids ? emit_id(o, id) : emit(o, bytes, n);
        out_flush(o);
        return r;
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
        int r     = o->ids ? 0 : emit(o, o->pend, at);
        o->n_pend = 0; /* the stop string and what follows it are dropped */
        out_flush(o);
        return r < 0 ? -1 : 1;
    }
    /* keep the longest tail that is a proper prefix of some stop string */
    size_t keep = 0;
    for (size_t k = o->n_pend < o->max_stop ? o->n_pend : o->max_stop - 1; k > 0 && !keep; k--)
        for (int i = 0; i < o->n_stops && !keep; i++)
            if (strlen(o->stops[i]) > k && !memcmp(o->pend + o->n_pend - k, o->stops[i], k))
                keep = k;
    int r = o->ids ? emit_id(o, id) : emit(o, o->pend, o->n_pend - keep);
    memmove(o->pend, o->pend + o->n_pend - keep, keep);
    o->n_pend = keep;
    out_flush(o);
    return r;
}

/* Feeds a token to out_token with its bytes. */
static int out_id(out_state *o, const lora_tokenizer *tok, int32_t id) {
    size_t      nb    = 0;
    const char *bytes = lora_tokenizer_id_to_bytes(tok, id, &nb); /* NULL: no such token */
    return out_token(o, id, bytes ? bytes : "", bytes ? nb : 0);
}

/* Prints held-back text at the end of generation (no stop string completed). */
static void out_finish(out_state *o) {
    if (!o->ids) emit(o, o->pend, o->n_pend);
    o->n_pend = 0;
    if (o->ids) putchar('\n');
    else if (isatty(STDOUT_FILENO)) putchar('\n');
    fflush(stdout);
}

/* Starts a prompts-file line. */
static void out_line_begin(out_state *o) {
    o->to_line   = 1;
    o->n_line    = 0;
    o->n_pend    = 0;
    o->n_printed = 0;
}

/* Ends a prompts-file line: held-back text added, newlines made spaces, one line printed.
 * -1: out of memory. */
static int out_line_end(out_state *o) {
    if (!o->ids && emit(o, o->pend, o->n_pend)) return -1;
    o->n_pend = 0;
    for (size_t i = 0; i < o->n_line; i++)
        if (o->line[i] == '\n' || o->line[i] == '\r') o->line[i] = ' ';
    fwrite(o->line, 1, o->n_line, stdout);
    putchar('\n');
    fflush(stdout);
    return 0;
}

/* ---- generation ---- */

typedef struct gen {
    lora_model         *m;
    lora_tokenizer     *tok;
    const lora_config  *cfg;
    int32_t             eos;
    int32_t             max_new;
    lora_sampler_params sp;
    lora_beam_params    bp; /* n_beams = --beams; eos and stop ids filled in */
    out_state          *o;
    int                 transposed; /* --transposed-weights */
} gen;

/* lora_decoder_init, then the transposed weights when asked for; says why on failure. */
static int decoder_new(gen *g, int32_t n_seq, int32_t max_len, lora_decoder **d) {
    lora_error err;
    if (lora_decoder_init(g->m, n_seq, max_len, d, &err) != LORA_OK ||
        (g->transposed && lora_decoder_set_transposed(*d, 1, &err) != LORA_OK)) {
        cli_error("generate", "%s", err.msg);
        return -1;
    }
    return 0;
}

/* Sampling or greedy over one prompt already fed to sequence 0 of d, each token given to
 * out_token (which ends it at a stop string). Returns the tokens generated, -1 on error (said);
 * *full is set when the context ran out. */
static int32_t sample_tokens(gen *g, lora_decoder *d, lora_sampler *s, int *full) {
    int32_t    n_gen = 0;
    lora_error err;
    *full = 0;
    for (int32_t i = 0; i < g->max_new; i++) {
        int32_t id = lora_sampler_sample(s, lora_decoder_logits(d, 0), (uint64_t)i);
        if (id == g->eos) break;
        int r = out_id(g->o, g->tok, id);
        if (r < 0) {
            cli_error("generate", "out of memory");
            return -1;
        }
        if (r > 0) break;
        n_gen++;
        if (i + 1 == g->max_new) break;
        if (lora_decoder_length(d, 0) >= lora_decoder_max_len(d)) {
            *full = 1;
            break;
        }
        if (lora_decoder_feed(d, 0, &id, 1, &err) != LORA_OK) {
            cli_error("generate", "%s", err.msg);
            return -1;
        }
    }
    return n_gen;
}

/*
 * Encodes text as a prompt into *ids (malloc'd), *n: an empty prompt starts from
 * <|endoftext|>, as GPT-2 was trained. where names the prompt in messages. 0 on success.
 */
static int encode_prompt(gen *g, const char *where, const char *text, size_t len, int32_t **ids,
                         int32_t *n) {
    lora_error err;
    size_t     n_ids = 0;
    *ids             = NULL;
    if (lora_tokenizer_encode(g->tok, text, len, LORA_ENCODE_SPECIAL, ids, &n_ids, &err) !=
        LORA_OK) {
        cli_error("generate", "%s: %s", where, err.msg);
        return -1;
    }
    if (n_ids == 0) {
        if (g->eos < 0) {
            cli_error("generate", "%s: the prompt is empty and the tokenizer has no "
                                  "<|endoftext|> to start from", where);
            return -1;
        }
        free(*ids);
        if (!(*ids = malloc(sizeof **ids))) {
            cli_error("generate", "out of memory");
            return -1;
        }
        (*ids)[0] = g->eos;
        n_ids     = 1;
    }
    if (n_ids > (size_t)g->cfg->n_positions) {
        cli_error("generate",
                  "%s: the prompt is %zu tokens but the model's context is n_positions=%d "
                  "tokens (hint: shorten the prompt)",
                  where, n_ids, (int)g->cfg->n_positions);
        return -1;
    }
    *n = (int32_t)n_ids;
    return 0;
}

/* The tokens whose text holds a whole stop string: with beams they end a hypothesis. */
static int32_t *stop_token_ids(gen *g, int32_t *n_out) {
    int32_t  V   = lora_tokenizer_n_vocab(g->tok), n = 0;
    int32_t *ids = malloc(((size_t)V + 1) * sizeof *ids);
    if (!ids) return NULL;
    for (int32_t v = 0; v < V && g->o->n_stops; v++) {
        size_t      nb = 0;
        const char *b  = lora_tokenizer_id_to_bytes(g->tok, v, &nb);
        if (!b || v == g->eos) continue;
        for (int i = 0; i < g->o->n_stops; i++)
            if (memmem(b, nb, g->o->stops[i], strlen(g->o->stops[i]))) {
                ids[n++] = v;
                break;
            }
    }
    *n_out = n;
    return ids;
}

/* Gives a search result's tokens to the output until a stop string completes. -1: no memory. */
static int out_tokens(gen *g, const int32_t *t, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        int r = out_id(g->o, g->tok, t[i]);
        if (r) return r < 0 ? -1 : 0;
    }
    return 0;
}

/* The room a decoder of max_len leaves for generating after a prompt of n tokens (the last
 * token drawn is never fed back). */
static int32_t decoder_len(const gen *g, int32_t n_prompt) {
    int64_t want = (int64_t)n_prompt + (g->max_new > 0 ? g->max_new - 1 : 0);
    return want < g->cfg->n_positions ? (int32_t)want : g->cfg->n_positions;
}

/* One prompt by beam search (or greedy with an n-gram ban): printed at the end. */
static int run_search(gen *g, const int32_t *ids, int32_t n_prompt) {
    lora_decoder    *d   = NULL;
    int32_t         *out = malloc(((size_t)g->max_new + 1) * sizeof *out);
    lora_beam_result r;
    lora_error       err;
    int              rc = 1;
    if (!out) {
        cli_error("generate", "out of memory");
        return 1;
    }
    if (decoder_new(g, g->bp.n_beams, decoder_len(g, n_prompt), &d)) goto done;
    double t0 = now_s();
    if (lora_beam_search(d, ids, n_prompt, &g->bp, out, &r, &err) != LORA_OK) {
        cli_error("generate", "%s", err.msg);
        goto done;
    }
    double ts = now_s() - t0;
    if (out_tokens(g, out, r.n_tokens)) {
        cli_error("generate", "out of memory");
        goto done;
    }
    out_finish(g->o);
    int32_t room = g->cfg->n_positions - n_prompt + 1;
    if (!r.finished && room < g->max_new && r.n_tokens == room)
        fprintf(stderr, "lora generate: context full (n_positions=%d tokens: prompt %d + %d "
                        "generated); stopped\n",
                (int)g->cfg->n_positions, (int)n_prompt, (int)r.n_tokens);
    long rows = (long)r.n_steps * g->bp.n_beams;
    fprintf(stderr,
            "lora generate: beam search (%d beams) over a %d-token prompt: %d steps in %.1f ms "
            "(%.0f beam-tokens/s), %d tokens, score %.4f\n",
            (int)g->bp.n_beams, (int)n_prompt, (int)r.n_steps, ts * 1e3,
            ts > 0 ? (double)rows / ts : 0.0, (int)r.n_tokens, r.score);
    rc = 0;
done:
    lora_decoder_free(d);
    free(out);
    return rc;
}

/* One prompt, sampled or greedy, streamed. */
static int run_stream(gen *g, const int32_t *ids, int32_t n_prompt) {
    lora_decoder *d = NULL;
    lora_sampler *s = NULL;
    lora_error    err;
    int           rc = 1;
    if (decoder_new(g, 1, decoder_len(g, n_prompt), &d)) goto done;
    if (lora_sampler_init(&g->sp, g->cfg->vocab_size, &s, &err) != LORA_OK) {
        cli_error("generate", "%s", err.msg);
        goto done;
    }
    double t0 = now_s();
    if (lora_decoder_feed(d, 0, ids, n_prompt, &err) != LORA_OK) {
        cli_error("generate", "prompt: %s", err.msg);
        goto done;
    }
    double  t1 = now_s();
    int     full;
    int32_t n_gen = sample_tokens(g, d, s, &full);
    if (n_gen < 0) goto done;
    double t2 = now_s();
    out_finish(g->o);
    if (full)
        fprintf(stderr, "lora generate: context full (n_positions=%d tokens: prompt %d + %d "
                        "generated); stopped\n",
                (int)g->cfg->n_positions, (int)n_prompt, (int)n_gen);
    double tp = t1 - t0, td = t2 - t1;
    fprintf(stderr,
            "lora generate: prefill %d tokens in %.1f ms (%.0f tokens/s), decode %d tokens in "
            "%.1f ms (%.0f tokens/s)\n",
            (int)n_prompt, tp * 1e3, tp > 0 ? n_prompt / tp : 0.0, (int)n_gen, td * 1e3,
            td > 0 ? n_gen / td : 0.0);
    rc = 0;
done:
    lora_sampler_free(s);
    lora_decoder_free(d);
    return rc;
}

/*
 * Every line of text (n bytes) is a prompt; one completion line each, in order. Deterministic
 * decoding (beams, or greedy) runs `batch` prompts per search; sampling runs them one by one.
 */
static int run_prompts(gen *g, const char *path, char *text, size_t n, int32_t batch,
                       int searched) {
    int32_t   n_lines = 0, cap = 0, rc = 1, max_prompt = 1, *lens = NULL;
    int32_t **ids     = NULL, **outs = NULL;
    lora_decoder     *d = NULL;
    lora_sampler     *s = NULL;
    lora_beam_result *res = NULL;
    lora_error        err;
    /* split and encode every line first: errors come before any output */
    for (size_t at = 0; at < n;) {
        char  *nl  = memchr(text + at, '\n', n - at);
        size_t end = nl ? (size_t)(nl - text) : n, len = end - at;
        if (len > 0 && text[at + len - 1] == '\r') len--;
        if (n_lines == cap) {
            cap           = cap ? cap * 2 : 64;
            int32_t **ni  = realloc(ids, (size_t)cap * sizeof *ids);
            int32_t  *nln = ni ? realloc(lens, (size_t)cap * sizeof *lens) : NULL;
            if (ni) ids = ni;
            if (!ni || !nln) {
                cli_error("generate", "out of memory");
                goto done;
            }
            lens = nln;
        }
        char where[4200];
        snprintf(where, sizeof where, "%s:%d", path, (int)n_lines + 1);
        ids[n_lines] = NULL;
        if (encode_prompt(g, where, text + at, len, &ids[n_lines], &lens[n_lines])) {
            n_lines++;
            goto done;
        }
        if (lens[n_lines] > max_prompt) max_prompt = lens[n_lines];
        n_lines++;
        at = end + 1;
    }
    if (n_lines == 0) return 0;

    int32_t K = searched ? g->bp.n_beams : 1;
    if (!searched) batch = 1;
    if (batch > n_lines) batch = n_lines;
    if (batch < 1) { /* automatic: up to 8 prompts within 1 GiB of KV cache */
        double per = 2.0 * g->cfg->n_layer * decoder_len(g, max_prompt) * g->cfg->n_embd *
                     sizeof(float) * K;
        batch = (int32_t)(1073741824.0 / per);
        batch = batch < 1 ? 1 : batch > 8 ? 8 : batch > n_lines ? n_lines : batch;
    }
    outs = calloc((size_t)batch, sizeof *outs);
    res  = calloc((size_t)batch, sizeof *res);
    if (!outs || !res) {
        cli_error("generate", "out of memory");
        goto done;
    }
    for (int32_t i = 0; i < batch; i++)
        if (!(outs[i] = malloc(((size_t)g->max_new + 1) * sizeof **outs))) {
            cli_error("generate", "out of memory");
            goto done;
        }
    if (decoder_new(g, batch * K, decoder_len(g, max_prompt), &d)) goto done;
    if (!searched && lora_sampler_init(&g->sp, g->cfg->vocab_size, &s, &err) != LORA_OK) {
        cli_error("generate", "%s", err.msg);
        goto done;
    }
    double t0 = now_s();
    long   n_prompt_tok = 0, n_out_tok = 0, n_rows = 0;
    for (int32_t i = 0; i < n_lines; i += batch) {
        int32_t nb = n_lines - i < batch ? n_lines - i : batch;
        if (searched) {
            if (lora_beam_search_batch(d, nb, (const int32_t *const *)ids + i, lens + i, &g->bp,
                                       outs, res, &err) != LORA_OK) {
                cli_error("generate", "%s:%d: %s", path, (int)i + 1, err.msg);
                goto done;
            }
        }
        for (int32_t k = 0; k < nb; k++) {
            out_line_begin(g->o);
            n_prompt_tok += lens[i + k];
            if (searched) {
                n_rows += (long)res[k].n_steps * K;
                n_out_tok += res[k].n_tokens;
                if (out_tokens(g, outs[k], res[k].n_tokens)) {
                    cli_error("generate", "out of memory");
                    goto done;
                }
            } else {
                int full;
                lora_decoder_reset(d, 0);
                if (lora_decoder_feed(d, 0, ids[i + k], lens[i + k], &err) != LORA_OK) {
                    cli_error("generate", "%s:%d: %s", path, (int)(i + k) + 1, err.msg);
                    goto done;
                }
                int32_t ng = sample_tokens(g, d, s, &full);
                if (ng < 0) goto done;
                n_out_tok += ng;
                n_rows += ng;
            }
            if (out_line_end(g->o)) {
                cli_error("generate", "out of memory");
                goto done;
            }
        }
    }
    double ts = now_s() - t0;
    fprintf(stderr,
            "lora generate: %d prompts (%ld tokens) in %.2f s: %ld tokens generated, %.0f "
            "%s/s%s\n",
            (int)n_lines, n_prompt_tok, ts, n_out_tok, ts > 0 ? (double)n_rows / ts : 0.0,
            K > 1 ? "beam-tokens" : "tokens", searched ? "" : " (one prompt at a time)");
    rc = 0;
done:
    lora_sampler_free(s);
    lora_decoder_free(d);
    for (int32_t i = 0; outs && i < batch; i++) free(outs[i]);
    for (int32_t i = 0; i < n_lines; i++) free(ids[i]);
    free(outs);
    free(res);
    free(ids);
    free(lens);
    return rc;
}

/* ---- the command ---- */

int cmd_generate(int argc, char **argv) {
    enum {
        O_MODEL = 256, O_TOKENIZER, O_ADAPTER, O_PROMPT, O_PROMPT_FILE, O_PROMPTS_FILE,
        O_MAX_NEW, O_TEMPERATURE, O_TOP_K, O_TOP_P, O_SEED, O_GREEDY, O_STOP, O_IDS, O_BEAMS,
        O_LENGTH_PENALTY, O_NO_REPEAT, O_EARLY, O_BATCH, O_MERGE, O_TRANSPOSED
    };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL},
        {"tokenizer", required_argument, 0, O_TOKENIZER},
        {"adapter", required_argument, 0, O_ADAPTER},
        {"prompt", required_argument, 0, O_PROMPT},
        {"prompt-file", required_argument, 0, O_PROMPT_FILE},
        {"prompts-file", required_argument, 0, O_PROMPTS_FILE},
        {"max-new", required_argument, 0, O_MAX_NEW},
        {"temperature", required_argument, 0, O_TEMPERATURE},
        {"top-k", required_argument, 0, O_TOP_K},
        {"top-p", required_argument, 0, O_TOP_P},
        {"seed", required_argument, 0, O_SEED},
        {"greedy", no_argument, 0, O_GREEDY},
        {"stop", required_argument, 0, O_STOP},
        {"ids", no_argument, 0, O_IDS},
        {"beams", required_argument, 0, O_BEAMS},
        {"length-penalty", required_argument, 0, O_LENGTH_PENALTY},
        {"no-repeat-ngram", required_argument, 0, O_NO_REPEAT},
        {"early-stopping", required_argument, 0, O_EARLY},
        {"batch", required_argument, 0, O_BATCH},
        {"merge", no_argument, 0, O_MERGE},
        {"transposed-weights", no_argument, 0, O_TRANSPOSED},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *model_dir = NULL, *tok_dir = NULL;
    char      **ad_dirs = NULL;
    float      *ad_scales = NULL;
    int         n_ad = 0, merge = 0;
    const char *prompt = NULL, *prompt_file = NULL, *prompts_file = NULL;
    gen         g;
    lora_error  err;
    char       *text = NULL;
    int32_t    *ids = NULL, *stop_ids = NULL, batch = 0, n_prompt = 0;
    size_t      n_text = 0;
    int         sampling_opts = 0;
    out_state   o;
    memset(&g, 0, sizeof g);
    memset(&o, 0, sizeof o);
    g.max_new           = 64;
    g.sp                = lora_sampler_params_default();
    g.bp                = lora_beam_params_default();
    g.bp.n_beams        = 1;
    g.o                 = &o;
    o.stops   = calloc((size_t)argc + 1, sizeof *o.stops);
    ad_dirs   = calloc((size_t)argc + 1, sizeof *ad_dirs);
    ad_scales = calloc((size_t)argc + 1, sizeof *ad_scales);
    if (!o.stops || !ad_dirs || !ad_scales) {
        free(o.stops);
        free(ad_dirs);
        free(ad_scales);
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
        case O_ADAPTER: {
            int has;
            ad_scales[n_ad] = 1.0f;
            if (cli_parse_adapter(optarg, &ad_dirs[n_ad], &ad_scales[n_ad], &has)) {
                cli_error("generate", "--adapter needs DIR or DIR:SCALE, got '%s'", optarg);
                goto cleanup;
            }
            n_ad++;
            break;
        }
        case O_MERGE: merge = 1; break;
        case O_TRANSPOSED: g.transposed = 1; break;
        case O_PROMPT: prompt = optarg; break;
        case O_PROMPT_FILE: prompt_file = optarg; break;
        case O_PROMPTS_FILE: prompts_file = optarg; break;
        case O_MAX_NEW:
            if (parse_int(optarg, 0, 1L << 30, &g.max_new)) {
                cli_error("generate", "--max-new must be an integer >= 0, got '%s'", optarg);
                goto cleanup;
            }
            break;
        case O_TEMPERATURE:
            if (parse_float(optarg, &g.sp.temperature) || g.sp.temperature < 0) {
                cli_error("generate", "--temperature must be a number >= 0, got '%s'", optarg);
                goto cleanup;
            }
            sampling_opts |= g.sp.temperature > 0;
            break;
        case O_TOP_K:
            if (parse_int(optarg, 0, 1L << 30, &g.sp.top_k)) {
                cli_error("generate", "--top-k must be an integer >= 0, got '%s'", optarg);
                goto cleanup;
            }
            sampling_opts = 1;
            break;
        case O_TOP_P:
            if (parse_float(optarg, &g.sp.top_p) || !(g.sp.top_p > 0 && g.sp.top_p <= 1)) {
                cli_error("generate", "--top-p must be in (0, 1], got '%s'", optarg);
                goto cleanup;
            }
            sampling_opts = 1;
            break;
        case O_SEED:
            if (parse_u64(optarg, &g.sp.seed)) {
                cli_error("generate", "--seed must be a non-negative integer, got '%s'", optarg);
                goto cleanup;
            }
            sampling_opts = 1;
            break;
        case O_GREEDY: g.sp.greedy = 1; break;
        case O_STOP:
            if (!*optarg) {
                cli_error("generate", "--stop needs a non-empty string");
                goto cleanup;
            }
            o.stops[o.n_stops++] = optarg;
            if (strlen(optarg) > o.max_stop) o.max_stop = strlen(optarg);
            break;
        case O_IDS: o.ids = 1; break;
        case O_BEAMS:
            if (parse_int(optarg, 1, 4096, &g.bp.n_beams)) {
                cli_error("generate", "--beams must be an integer in [1, 4096], got '%s'", optarg);
                goto cleanup;
            }
            break;
        case O_LENGTH_PENALTY:
            if (parse_float(optarg, &g.bp.length_penalty)) {
                cli_error("generate", "--length-penalty must be a finite number, got '%s'", optarg);
                goto cleanup;
            }
            break;
        case O_NO_REPEAT:
            if (parse_int(optarg, 0, 1L << 20, &g.bp.no_repeat_ngram)) {
                cli_error("generate", "--no-repeat-ngram must be an integer >= 0, got '%s'",
                          optarg);
                goto cleanup;
            }
            break;
        case O_EARLY:
            if (!strcmp(optarg, "exact")) g.bp.early_stopping = LORA_BEAM_STOP_EXACT;
            else if (!strcmp(optarg, "heuristic")) g.bp.early_stopping = LORA_BEAM_STOP_HEURISTIC;
            else if (!strcmp(optarg, "first")) g.bp.early_stopping = LORA_BEAM_STOP_FIRST_K;
            else {
                cli_error("generate", "--early-stopping must be exact, heuristic or first, got "
                                      "'%s'", optarg);
                goto cleanup;
            }
            break;
        case O_BATCH:
            if (parse_int(optarg, 1, 4096, &batch)) {
                cli_error("generate", "--batch must be an integer in [1, 4096], got '%s'", optarg);
                goto cleanup;
            }
            break;
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
    if (!model_dir || (!!prompt + !!prompt_file + !!prompts_file) != 1) {
        cli_error("generate", "%s", !model_dir ? "--model is required"
                                               : "give one of --prompt, --prompt-file and "
                                                 "--prompts-file");
        generate_usage(stderr);
        goto cleanup;
    }
    int greedy = g.sp.greedy || !(g.sp.temperature > 0) || g.sp.top_k == 1;
    if (g.bp.n_beams > 1 && sampling_opts) {
        cli_error("generate", "--beams is deterministic: it does not take --temperature, "
                              "--top-k, --top-p or --seed");
        goto cleanup;
    }
    if (g.bp.no_repeat_ngram > 0 && g.bp.n_beams == 1 && !greedy) {
        cli_error("generate", "--no-repeat-ngram needs --greedy (or --temperature 0) or --beams");
        goto cleanup;
    }
    if (merge && n_ad == 0) {
        cli_error("generate", "--merge needs at least one --adapter");
        goto cleanup;
    }
    if (batch && !prompts_file) {
        cli_error("generate", "--batch applies to --prompts-file");
        goto cleanup;
    }
    if (!tok_dir) tok_dir = model_dir;
    /* beam search, greedy with an n-gram ban, and greedy over a prompts file: searched */
    int searched = g.bp.n_beams > 1 || (greedy && (g.bp.no_repeat_ngram > 0 || prompts_file));

    rc = 1;
    const char *in = prompt_file ? prompt_file : prompts_file;
    if (in && read_file(in, &text, &n_text)) {
        cli_error("generate", "%s: cannot read: %s", in, strerror(errno));
        goto cleanup;
    }
    if (lora_model_load(model_dir, &g.m, &err) != LORA_OK) {
        cli_error("generate", "%s", err.msg);
        goto cleanup;
    }
    for (int i = 0; i < n_ad; i++) {
        char name[32];
        snprintf(name, sizeof name, "adapter%d", i);
        if (lora_adapter_add(g.m, ad_dirs[i], name, ad_scales[i], &err) != LORA_OK) {
            cli_error("generate", "%s", err.msg);
            goto cleanup;
        }
    }
    if ((merge && lora_model_merge(g.m, &err) != LORA_OK) ||
        lora_tokenizer_load(tok_dir, &g.tok, &err) != LORA_OK) {
        cli_error("generate", "%s", err.msg);
        goto cleanup;
    }
    g.cfg = lora_model_config(g.m);
    if (lora_tokenizer_n_vocab(g.tok) > g.cfg->vocab_size) {
        cli_error("generate",
                  "%s: the tokenizer has %d tokens but the model's vocabulary is %d (hint: "
                  "--tokenizer for this model)",
                  tok_dir, (int)lora_tokenizer_n_vocab(g.tok), (int)g.cfg->vocab_size);
        goto cleanup;
    }
    g.eos     = lora_tokenizer_eos(g.tok);
    g.bp.eos  = g.eos;
    g.bp.max_new = g.max_new;
    if (searched && o.n_stops) {
        if (!(stop_ids = stop_token_ids(&g, &g.bp.n_stop_ids))) {
            cli_error("generate", "out of memory");
            goto cleanup;
        }
        g.bp.stop_ids = stop_ids;
    }
    if (prompts_file) {
        rc = run_prompts(&g, prompts_file, text, n_text, batch, searched);
        goto cleanup;
    }
    if (encode_prompt(&g, "prompt", prompt ? prompt : text, prompt ? strlen(prompt) : n_text,
                      &ids, &n_prompt))
        goto cleanup;
    rc = searched ? run_search(&g, ids, n_prompt) : run_stream(&g, ids, n_prompt);
cleanup:
    lora_tokenizer_free(g.tok);
    lora_model_free(g.m);
    free(stop_ids);
    free(ids);
    free(text);
    free(o.pend);
    free(o.line);
    free(o.stops);
    for (int i = 0; i < n_ad; i++) free(ad_dirs[i]);
    free(ad_dirs);
    free(ad_scales);
    return rc;
}
