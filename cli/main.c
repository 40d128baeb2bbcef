/*
 * main.c — the `lora` command: dispatches to a subcommand (see commands.h).
 */
#define _DEFAULT_SOURCE /* setenv */
#include "commands.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const cli_command commands[] = {
    {"demo", cmd_demo, "fine-tune the embedded model on a data-to-text task and report"},
    {"train", cmd_train, "fine-tune a model (LoRA, AdaLoRA, full, BitFit) on a JSONL dataset"},
    {"init", cmd_init, "write a randomly initialised GPT-2 to pretrain from scratch"},
    {"convert", cmd_convert, "re-save a model directory as F32, F16 or BF16"},
    {"export", cmd_export, "write a model or adapter as GGUF for llama.cpp, or AdaLoRA as LoRA"},
    {"merge", cmd_merge, "fold adapters into the base weights and write a Hugging Face model"},
    {"inspect", cmd_inspect, "a model: config, tensors, memory estimate; an adapter: ranks per site"},
    {"generate", cmd_generate, "continue a prompt with a model (and adapter), KV-cached"},
    {"tokenize", cmd_tokenize, "text on stdin to token ids, or ids back to text (--decode)"},
    {"tokenizer-train", cmd_tokenizer_train, "learn a byte-level BPE tokenizer from a corpus"},
    {"data", cmd_data, "write a data set: the synthetic E2E-style data-to-text task"},
    {"score", cmd_score, "BLEU, NIST, ROUGE-L, CIDEr and slot errors of outputs"},
    {"eval", cmd_eval, "loss, perplexity and token accuracy of a model on a JSONL dataset"},
    {"combine", cmd_combine, "mix LoRA adapters with weights (linear, cat, svd), as PEFT"},
    {"bench", cmd_bench, "training speed, machine utilisation and memory on random tokens"},
};

#define N_COMMANDS (sizeof commands / sizeof commands[0])

void cli_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "lora %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void usage(FILE *out) {
    fprintf(out, "usage: lora <command> [options]   (lora <command> --help for details)\n\n"
                 "commands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %-16s %s\n", commands[i].name, commands[i].summary);
}

/*
 * OpenMP threads that wait for work spin by default. When anything else runs on the machine, a
 * spinning thread holds the core its partner (or OpenBLAS's) needs, and a 2-thread step can run
 * several times slower than a 1-thread one. Passive waiting costs little when the machine is
 * quiet and avoids that, but the runtime reads OMP_WAIT_POLICY when it starts, before main. So
 * unless the user chose a policy, the binary runs itself again once with PASSIVE set.
 */
static void prefer_passive_wait(char **argv) {
    if (getenv("OMP_WAIT_POLICY")) return;
    if (setenv("OMP_WAIT_POLICY", "PASSIVE", 1) != 0) return;
    execv("/proc/self/exe", argv);
    /* not on Linux, or no /proc: go on with the runtime's default */
}

int main(int argc, char **argv) {
    prefer_passive_wait(argv);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("lora 0.1.0\n");
        return 0;
    }
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "lora: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
