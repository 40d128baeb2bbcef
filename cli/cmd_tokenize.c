/*
 * cmd_tokenize.c — `lora tokenize --tokenizer DIR [--decode]`: text on stdin to token ids on
 * stdout (one line, space-separated), or with --decode ids back to bytes. A thin front end over
 * the tokenizer API; no tokenization logic here.
 */
#include "commands.h"
#include "lora.h"
#include "tokenizer/tokenizer.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void tokenize_usage(FILE *out) {
    fprintf(out,
            "usage: lora tokenize --tokenizer DIR [--decode] [--no-special]\n"
            "\n"
            "Reads stdin. Prints its token ids on one line, separated by spaces; with --decode,\n"
            "reads ids (separated by white space) and writes the bytes they stand for.\n"
            "DIR holds tokenizer.json, or vocab.json + merges.txt (GPT-2 byte-level BPE).\n"
            "\n"
            "options:\n"
            "  --tokenizer DIR   the tokenizer to use (required)\n"
            "  --decode          ids in, bytes out\n"
            "  --no-special      treat special tokens such as <|endoftext|> in the text as\n"
            "                    plain text (default: they become their own ids)\n"
            "  -h, --help        this help\n");
}

/* Reads all of fp into a malloc'd buffer (NUL-terminated; *len excludes the NUL). */
static int read_all(FILE *fp, char **data, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char  *buf = malloc(cap);
    if (!buf) return -1;
    for (;;) {
        if (cap - n < 2) {
            char *nb = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
            if (!nb) {
                free(buf);
                return -1;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, fp);
        n += got;
        if (got == 0) break;
    }
    if (ferror(fp)) {
        free(buf);
        return -1;
    }
    buf[n] = '\0';
    *data  = buf;
    *len   = n;
    return 0;
}

static int run_encode(lora_tokenizer *tok, const char *text, size_t len, uint32_t flags) {
    int32_t   *ids;
    size_t     n;
    lora_error err;
    if (lora_tokenizer_encode(tok, text, len, flags, &ids, &n, &err) != LORA_OK) {
        cli_error("tokenize", "%s", err.msg);
        return 1;
    }
    for (size_t i = 0; i < n; i++)
        printf(i ? " %d" : "%d", (int)ids[i]);
    putchar('\n');
    free(ids);
    return 0;
}

static int run_decode(lora_tokenizer *tok, char *text, size_t text_len) {
    size_t   n = 0, cap = 1024;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) {
        cli_error("tokenize", "out of memory");
        return 1;
    }
    int   rc = 1;
    char *p  = text;
    for (;;) {
        while (*p && isspace((unsigned char)*p))
            p++;
        if (!*p && p != text + text_len) {
            cli_error("tokenize", "a NUL byte is not a token id");
            goto done;
        }
        if (!*p) break;
        char *end;
        errno  = 0;
        long v = strtol(p, &end, 10);
        if (end == p || (*end && !isspace((unsigned char)*end)) || errno || v < INT32_MIN ||
            v > INT32_MAX) {
            char *w = p;
            while (*w && !isspace((unsigned char)*w))
                w++;
            cli_error("tokenize", "'%.*s' is not a token id", (int)(w - p > 40 ? 40 : w - p), p);
            goto done;
        }
        if (n == cap) {
            int32_t *nb = realloc(ids, cap * 2 * sizeof *nb);
            if (!nb) {
                cli_error("tokenize", "out of memory");
                goto done;
            }
            ids = nb;
            cap *= 2;
        }
        ids[n++] = (int32_t)v;
        p        = end;
    }
    char      *out;
    size_t     len;
    lora_error err;
    if (lora_tokenizer_decode(tok, ids, n, &out, &len, &err) != LORA_OK) {
        cli_error("tokenize", "%s", err.msg);
        goto done;
    }
    fwrite(out, 1, len, stdout);
    free(out);
    rc = 0;
done:
    free(ids);
    return rc;
}

int cmd_tokenize(int argc, char **argv) {
    static const struct option opts[] = {{"tokenizer", required_argument, 0, 't'},
                                         {"decode", no_argument, 0, 'd'},
                                         {"no-special", no_argument, 0, 'n'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char                *dir    = NULL;
    int                        decode = 0, c;
    uint32_t                   flags  = LORA_ENCODE_SPECIAL;
    optind                            = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 't':
            dir = optarg;
            break;
        case 'd':
            decode = 1;
            break;
        case 'n':
            flags &= ~(uint32_t)LORA_ENCODE_SPECIAL;
            break;
        case 'h':
            tokenize_usage(stdout);
            return 0;
        default:
            tokenize_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        cli_error("tokenize", "unexpected argument '%s' (the text comes on stdin)", argv[optind]);
        tokenize_usage(stderr);
        return 2;
    }
    if (!dir) {
        cli_error("tokenize", "--tokenizer DIR is required");
        tokenize_usage(stderr);
        return 2;
    }

    lora_tokenizer *tok;
    lora_error      err;
    if (lora_tokenizer_load(dir, &tok, &err) != LORA_OK) {
        cli_error("tokenize", "%s", err.msg);
        return 1;
    }
    char  *text;
    size_t len;
    if (read_all(stdin, &text, &len) != 0) {
        cli_error("tokenize", "cannot read stdin: %s", strerror(errno));
        lora_tokenizer_free(tok);
        return 1;
    }
    int rc = decode ? run_decode(tok, text, len) : run_encode(tok, text, len, flags);
    free(text);
    lora_tokenizer_free(tok);
    if (rc == 0 && (fflush(stdout) != 0 || ferror(stdout))) {
        cli_error("tokenize", "cannot write stdout: %s", strerror(errno));
        rc = 1;
    }
    return rc;
}
