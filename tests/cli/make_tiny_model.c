/* make_tiny_model.c — writes a small random GPT-2 directory for command-line tests.
 * usage: make_tiny_model DIR [f16] */
#include "tiny_model.h"

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: make_tiny_model DIR [f16]\n");
        return 2;
    }
    lora_config c = tiny_config();
    tiny_opts   o;
    memset(&o, 0, sizeof o);
    o.f16 = argc > 2 && !strcmp(argv[2], "f16");
    if (tiny_write(argv[1], &c, &o, 11) != 0) {
        fprintf(stderr, "make_tiny_model: cannot write %s\n", argv[1]);
        return 1;
    }
    return 0;
}
