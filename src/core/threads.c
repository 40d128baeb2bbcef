/* threads.c — one thread count for our OpenMP loops and OpenBLAS (its OpenMP build). */
#include "lora.h"

#include <cblas.h>
#include <omp.h>

void lora_set_threads(int n) {
    if (n <= 0) return;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

int lora_get_threads(void) {
    return omp_get_max_threads();
}
