/*
 * commands.h — the subcommands of the `lora` binary. Each parses its own options (getopt_long),
 * validates them, calls the library, prints one line to stderr on error, and returns the exit
 * status: 0 success, 1 failure, 2 usage error.
 */
#ifndef LORA_CLI_COMMANDS_H
#define LORA_CLI_COMMANDS_H

#include "lora.h"

typedef struct cli_command {
    const char *name;
    int (*run)(int argc, char **argv); /* argv[0] is the command name */
    const char *summary;
} cli_command;

int cmd_inspect(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_export(int argc, char **argv);

/* "f32", "f16", "bf16" to a dtype; 0 on success. */
int cli_parse_dtype(const char *s, lora_dtype *out);
int cmd_tokenize(int argc, char **argv);
int cmd_tokenizer_train(int argc, char **argv);
int cmd_data(int argc, char **argv);
int cmd_score(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_merge(int argc, char **argv);

/* "DIR" or "DIR:SCALE" (a finite number after the last ':') into a malloc'd *dir, *scale and
 * *has_scale; 0 on success, -1 for an empty DIR or out of memory. */
int cli_parse_adapter(const char *arg, char **dir, float *scale, int *has_scale);

int cmd_combine(int argc, char **argv);
int cmd_bench(int argc, char **argv);

/* Prints "lora <cmd>: <msg>" to stderr. */
void cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
