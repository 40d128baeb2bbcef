/*
 * rng.h — deterministic random numbers: a counter-based hash (splitmix64) so that any element
 * of a dropout mask or an initialisation can be regenerated from (seed, stream, index) alone,
 * in any order and on any thread. Not cryptographic.
 */
#ifndef LORA_CORE_RNG_H
#define LORA_CORE_RNG_H

#include <math.h>
#include <stdint.h>

static inline uint64_t rng_mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* A stream key from a seed and up to two stream ids. */
static inline uint64_t rng_key(uint64_t seed, uint64_t a, uint64_t b) {
    return rng_mix64(rng_mix64(seed ^ rng_mix64(a)) ^ rng_mix64(b + 0x632be59bd9b4e019ull));
}

/* Uniform in [0, 1) from element i of stream key. 24 bits: exactly representable floats. */
static inline float rng_uniform(uint64_t key, uint64_t i) {
    return (float)(rng_mix64(key ^ rng_mix64(i)) >> 40) * (1.0f / 16777216.0f);
}

/* A 32-bit integer hash (xor-shift-multiply, two rounds): AVX2 has 32-bit lane multiplies, so
 * loops over it vectorise, where rng_mix64's 64-bit products do not. */
static inline uint32_t rng_hash32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    return x ^ (x >> 16);
}

/* The dropout threshold for probability p: element i is kept when rng_keep24 >= it. */
static inline uint32_t rng_drop_threshold(float p) {
    return (uint32_t)((double)p * 16777216.0);
}

/* 24 uniform bits for element i (< 2^32) of stream key: the dropout masks, which are drawn for
 * every adapter input on every pass and regenerated in backward, so their cost counts. */
static inline uint32_t rng_keep24(uint64_t key, uint32_t i) {
    return rng_hash32(rng_hash32(i ^ (uint32_t)key) + (uint32_t)(key >> 32)) >> 8;
}

/* Standard normal (Box-Muller) from element i of stream key. */
static inline float rng_normal(uint64_t key, uint64_t i) {
    uint64_t h  = rng_mix64(key ^ rng_mix64(i));
    double   u1 = ((double)(h >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double   u2 = (double)(rng_mix64(h) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

#endif
