/* make_tiny_model.c — writes a small random GPT-2 directory for command-line tests.
 * usage: make_tiny_model DIR [f16] [vocab=N] */
#include "tiny_model.h"

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: make_tiny_model DIR [f16] [vocab=N]\n");
        return 2;
    }
    lora_config c = tiny_config();
    tiny_opts   o;
    memset(&o, 0, sizeof o);
    o.f16 = argc > 2 && !strcmp(argv[2], "f16");
    for (int i = 2; i < argc; i++) {
        if (!strncmp(argv[i], "vocab=", 6)) {
            char *end;
            long  v = strtol(argv[i] + 6, &end, 10);
            if (*end != '\0' || v < 1 || v > 1 << 20) {
                fprintf(stderr, "make_tiny_model: bad %s\n", argv[i]);
                return 2;
            }
            c.vocab_size = (int32_t)v;
        } else if (!strcmp(argv[i], "f16")) {
            o.f16 = 1;
        }
    }
    if (tiny_write(argv[1], &c, &o, 11) != 0) {
        fprintf(stderr, "make_tiny_model: cannot write %s\n", argv[1]);
        return 1;
    }
    return 0;
}
