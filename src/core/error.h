/*
 * error.h — filling lora_error and small checked-arithmetic helpers shared by every module.
 * Not a logging facility: the library never prints.
 */
#ifndef LORA_CORE_ERROR_H
#define LORA_CORE_ERROR_H

#include "lora.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Formats "<msg>" into err (if non-NULL), records status, and returns status. */
lora_status lora_errorf(lora_error *err, lora_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* For programmer bugs only — never for file bytes, CLI values or network input. */
#define LORA_ASSERT(cond)                                                                      \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "%s:%d: internal error: assertion '%s' failed\n", __FILE__,       \
                    __LINE__, #cond);                                                          \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

/* a * b into *out; returns 0 on overflow of size_t. */
static inline int lora_mul_ok(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

#endif
