/*
 * profile.h — timing one operation into a lora_profile (see lora_model_set_profiling).
 *
 * PROF_OP(prof, phase, op, stmt) runs stmt and, when prof is non-NULL, adds its wall time to
 * prof->op_s[phase][op]. With profiling off the cost is one pointer test before and after.
 * Not thread-safe: ops are timed on the thread that calls the model (their OpenMP teams are
 * inside the timed statement).
 */
#ifndef LORA_CORE_PROFILE_H
#define LORA_CORE_PROFILE_H

#include "lora.h"

#include <time.h>

static inline double prof_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define PROF_OP(prof, phase, op, stmt)                                                         \
    do {                                                                                       \
        lora_profile *prof_p_  = (prof);                                                       \
        double        prof_t0_ = prof_p_ ? prof_now() : 0.0;                                   \
        stmt;                                                                                  \
        if (prof_p_) prof_p_->op_s[(phase)][(op)] += prof_now() - prof_t0_;                    \
    } while (0)

#endif
