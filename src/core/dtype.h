/*
 * dtype.h — IEEE half and bfloat16 <-> float conversion (scalar, exact, round-to-nearest-even).
 * Used by loaders and writers; compute is always F32.
 */
#ifndef LORA_CORE_DTYPE_H
#define LORA_CORE_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline float lora_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float    f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t lora_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float    lora_f16_to_f32(uint16_t h);
uint16_t lora_f32_to_f16(float f);

/* Bulk conversions; dst and src must not overlap. */
void lora_f16_to_f32_n(float *dst, const uint16_t *src, size_t n);
void lora_bf16_to_f32_n(float *dst, const uint16_t *src, size_t n);
void lora_f32_to_f16_n(uint16_t *dst, const float *src, size_t n);
void lora_f32_to_bf16_n(uint16_t *dst, const float *src, size_t n);

#endif
