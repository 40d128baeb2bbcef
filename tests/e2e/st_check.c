/* st_check.c — exits 0 when every FILE is a valid safetensors file (our reader's checks), else
 * prints the problem and exits 1. usage: st_check FILE... */
#include "io/safetensors.h"

#include <stdio.h>

int main(int argc, char **argv) {
    int bad = 0;
    for (int i = 1; i < argc; i++) {
        st_file    f;
        lora_error err;
        if (st_open(&f, argv[i], &err) != LORA_OK) {
            fprintf(stderr, "%s\n", err.msg);
            bad = 1;
            continue;
        }
        st_close(&f);
    }
    return bad;
}
