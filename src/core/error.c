/* error.c — lora_error formatting and status names. */
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>

lora_status lora_errorf(lora_error *err, lora_status status, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->status = status;
    }
    return status;
}

const char *lora_status_str(lora_status s) {
    switch (s) {
    case LORA_OK: return "ok";
    case LORA_ERR_IO: return "I/O error";
    case LORA_ERR_FORMAT: return "malformed file";
    case LORA_ERR_SHAPE: return "shape mismatch";
    case LORA_ERR_NOMEM: return "out of memory";
    case LORA_ERR_ARG: return "invalid argument";
    case LORA_ERR_UNSUPPORTED: return "unsupported";
    case LORA_ERR_STATE: return "invalid state";
    case LORA_ERR_MISSING: return "missing";
    }
    return "unknown status";
}
