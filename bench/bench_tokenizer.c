/*
 * bench_tokenizer.c — encode and decode throughput of the BPE tokenizer on one core.
 *
 *   build/bench/bench_tokenizer TOKENIZER_DIR TEXT_FILE [REPEATS]
 *
 * The first encode starts with an empty word cache ("cold"); later ones reuse it ("warm").
 * Not a test: it checks only that decoding gives the text back.
 */
#include "lora.h"
#include "tokenizer/tokenizer.h"

#include "io/fileutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR TEXT_FILE [REPEATS]\n", argv[0]);
        return 2;
    }
    int             reps = argc > 3 ? atoi(argv[3]) : 5;
    lora_error      err;
    lora_tokenizer *tok;
    char           *text;
    size_t          len;
    double          t0 = now_s();
    if (lora_tokenizer_load(argv[1], &tok, &err) != LORA_OK ||
        lora_read_file(argv[2], &text, &len, &err) != LORA_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    printf("load: %.3f s (vocabulary %d)\n", now_s() - t0, (int)lora_tokenizer_n_vocab(tok));

    int32_t *ids = NULL;
    size_t   n   = 0;
    for (int r = 0; r < (reps < 1 ? 1 : reps); r++) {
        free(ids);
        t0 = now_s();
        if (lora_tokenizer_encode(tok, text, len, LORA_ENCODE_SPECIAL, &ids, &n, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        double dt = now_s() - t0;
        printf("encode %s: %.2f MB in %.3f s = %.1f MB/s, %zu tokens (%.2f bytes/token)\n",
               r == 0 ? "cold" : "warm", (double)len / 1e6, dt, (double)len / 1e6 / dt, n,
               n ? (double)len / (double)n : 0.0);
    }
    char  *back;
    size_t back_len;
    t0 = now_s();
    if (lora_tokenizer_decode(tok, ids, n, &back, &back_len, &err) != LORA_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    double dt = now_s() - t0;
    printf("decode: %.1f MB/s, round trip %s\n", (double)back_len / 1e6 / dt,
           back_len == len && memcmp(back, text, len) == 0 ? "exact" : "DIFFERS");
    free(back);
    free(ids);
    free(text);
    lora_tokenizer_free(tok);
    return 0;
}
