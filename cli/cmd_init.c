/*
 * cmd_init.c — `lora init`: writes a randomly initialised GPT-2 (Hugging Face directory) to
 * pretrain from scratch with `lora train --method full`.
 */
#include "commands.h"
#include "lora.h"
#include "tokenizer/tokenizer.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void init_usage(FILE *out) {
    fprintf(out,
            "usage: lora init --out DIR (--tokenizer DIR | --vocab N) [options]\n"
            "\n"
            "Writes a randomly initialised GPT-2 as a Hugging Face directory (config.json,\n"
            "model.safetensors, and the tokenizer's files when --tokenizer is given).\n"
            "\n"
            "options:\n"
            "  --n-layer N       transformer blocks (default 4)\n"
            "  --n-embd C        channels (default 256)\n"
            "  --n-head H        attention heads, dividing n-embd (default 4)\n"
            "  --n-positions P   context length (default 256)\n"
            "  --n-inner F       MLP width (default 4 * n-embd)\n"
            "  --vocab V         vocabulary size (default: the tokenizer's)\n"
            "  --tokenizer DIR   tokenizer to copy in (and take the vocabulary size from)\n"
            "  --untied          a separate LM head instead of tying it to wte\n"
            "  --seed S          initialisation seed (default 1)\n"
            "  --out DIR         output directory\n"
            "  -h, --help        this help\n");
}

static int int_opt(const char *opt, const char *s, long lo, long hi, int32_t *out) {
    char *end;
    errno  = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) {
        cli_error("init", "%s expects an integer in [%ld, %ld], got '%s'", opt, lo, hi, s);
        return -1;
    }
    *out = (int32_t)v;
    return 0;
}

int cmd_init(int argc, char **argv) {
    static const struct option opts[] = {
        {"n-layer", required_argument, 0, 'L'}, {"n-embd", required_argument, 0, 'C'},
        {"n-head", required_argument, 0, 'H'},  {"n-positions", required_argument, 0, 'P'},
        {"n-inner", required_argument, 0, 'F'}, {"vocab", required_argument, 0, 'V'},
        {"tokenizer", required_argument, 0, 't'}, {"untied", no_argument, 0, 'u'},
        {"seed", required_argument, 0, 's'},    {"out", required_argument, 0, 'o'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    lora_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = 4, c.n_embd = 256, c.n_head = 4, c.n_positions = 256;
    c.layer_norm_epsilon  = 1e-5f;
    c.activation          = LORA_ACT_GELU_TANH;
    c.tie_word_embeddings = 1;
    const char *out = NULL, *tokdir = NULL;
    int32_t     seed = 1;
    int         ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'L': if (int_opt("--n-layer", optarg, 1, 1024, &c.n_layer)) return 2; break;
        case 'C': if (int_opt("--n-embd", optarg, 1, 65536, &c.n_embd)) return 2; break;
        case 'H': if (int_opt("--n-head", optarg, 1, 1024, &c.n_head)) return 2; break;
        case 'P': if (int_opt("--n-positions", optarg, 1, 1 << 20, &c.n_positions)) return 2; break;
        case 'F': if (int_opt("--n-inner", optarg, 1, 1 << 20, &c.n_inner)) return 2; break;
        case 'V': if (int_opt("--vocab", optarg, 1, 10000000, &c.vocab_size)) return 2; break;
        case 's': if (int_opt("--seed", optarg, 0, 2147483647, &seed)) return 2; break;
        case 't': tokdir = optarg; break;
        case 'u': c.tie_word_embeddings = 0; break;
        case 'o': out = optarg; break;
        case 'h': init_usage(stdout); return 0;
        default: init_usage(stderr); return 2;
        }
    }
    if (optind != argc || !out || (!tokdir && !c.vocab_size)) {
        init_usage(stderr);
        return 2;
    }
    if (c.n_embd % c.n_head) {
        cli_error("init", "--n-embd %d is not divisible by --n-head %d", c.n_embd, c.n_head);
        return 2;
    }
    if (!c.n_inner) c.n_inner = 4 * c.n_embd;
    lora_error err;
    if (tokdir) {
        lora_tokenizer *tok;
        if (lora_tokenizer_load(tokdir, &tok, &err) != LORA_OK) {
            cli_error("init", "%s", err.msg);
            return 1;
        }
        int32_t nv = lora_tokenizer_n_vocab(tok);
        lora_tokenizer_free(tok);
        if (!c.vocab_size) c.vocab_size = nv;
        if (c.vocab_size < nv) {
            cli_error("init", "--vocab %d is smaller than the tokenizer's %d tokens", c.vocab_size,
                      nv);
            return 2;
        }
    }
    if (lora_model_init_random(&c, (uint64_t)seed, out, tokdir, &err) != LORA_OK) {
        cli_error("init", "%s", err.msg);
        return 1;
    }
    fprintf(stderr, "wrote %s: %d layers, %d channels, %d heads, vocab %d, context %d\n", out,
            c.n_layer, c.n_embd, c.n_head, c.vocab_size, c.n_positions);
    return 0;
}
