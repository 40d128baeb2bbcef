/*
 * test_dtype.c — half and bfloat16 conversions: every one of the 65536 bit patterns both ways,
 * round-to-nearest-even on every tie, subnormals, infinities, overflow and NaN, against
 * reference values computed independently in double precision.
 */
#include "core/dtype.h"
#include "test_helper.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static int f16_is_nan(uint16_t h) {
    return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
}

static int bf16_is_nan(uint16_t h) {
    return (h & 0x7f80u) == 0x7f80u && (h & 0x7fu) != 0;
}

/* The value of a half from its definition: (-1)^s * 2^(e-15) * 1.m, or 2^-14 * 0.m. */
static double f16_reference(uint16_t h) {
    int    s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v;
    if (e == 0)
        v = ldexp((double)m, -24);
    else if (e == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexp((double)(1024 + m), e - 25);
    return s ? -v : v;
}

/* The nearest half to x (finite, >= 0), ties to the even pattern, overflow to infinity. Found
 * by binary search over the positive halves, which are ordered like their bit patterns. */
static uint16_t f16_nearest(double x) {
    if (x >= 65520.0) return 0x7c00; /* at or past the midpoint of 65504 and 65536 */
    uint16_t lo = 0, hi = 0x7bff;
    if (x >= f16_reference(hi)) return hi;
    while (hi - lo > 1) { /* invariant: ref(lo) <= x < ref(hi) */
        uint16_t mid = (uint16_t)((lo + hi) / 2);
        if (f16_reference(mid) <= x)
            lo = mid;
        else
            hi = mid;
    }
    double dl = x - f16_reference(lo), dh = f16_reference(hi) - x;
    if (dl < dh) return lo;
    if (dh < dl) return hi;
    return (lo & 1) ? hi : lo;
}

static void test_f16_all_patterns(void) {
    int bad_value = 0, bad_trip = 0, bad_nan = 0;
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        float    f = lora_f16_to_f32(h);
        if (f16_is_nan(h)) {
            if (!isnan(f) || !f16_is_nan(lora_f32_to_f16(f))) bad_nan++;
            continue;
        }
        double ref = f16_reference(h);
        if ((double)f != ref || !!signbit(f) != !!signbit(ref)) bad_value++;
        if (lora_f32_to_f16(f) != h) bad_trip++;
    }
    test_condf(bad_value == 0, "f16 -> f32 wrong for %d patterns", bad_value);
    test_condf(bad_trip == 0, "f16 -> f32 -> f16 not the identity for %d patterns", bad_trip);
    test_condf(bad_nan == 0, "f16 NaN not preserved for %d patterns", bad_nan);
}

static void test_f16_ties_and_neighbours(void) {
    int bad = 0;
    /* Midpoints between consecutive positive halves are exact in f32 (11 vs 24 bits). */
    for (uint16_t h = 0; h < 0x7bff; h++) {
        float    a = lora_f16_to_f32(h), b = lora_f16_to_f32((uint16_t)(h + 1));
        float    mid  = (float)(((double)a + (double)b) / 2);
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : h;
        if (lora_f32_to_f16(mid) != even) bad++;
        if (lora_f32_to_f16(-mid) != (uint16_t)(even | 0x8000)) bad++;
        if (lora_f32_to_f16(nextafterf(mid, 0)) != h) bad++;
        if (lora_f32_to_f16(nextafterf(mid, INFINITY)) != (uint16_t)(h + 1)) bad++;
    }
    test_condf(bad == 0, "f32 -> f16 ties or their neighbours wrong %d times", bad);
}

static void test_f16_sweep(void) {
    /* A strided walk over every f32 exponent and many mantissas, against the reference. */
    int bad = 0;
    for (uint64_t u = 0; u < 0x7f800000u; u += 2049) {
        float    f   = f32_from_bits((uint32_t)u);
        uint16_t got = lora_f32_to_f16(f);
        uint16_t ref = f16_nearest((double)f);
        if (got != ref || lora_f32_to_f16(-f) != (uint16_t)(ref | 0x8000)) {
            if (bad++ < 5)
                fprintf(stderr, "  f32 %08x: got %04x want %04x\n", (unsigned)u, got, ref);
        }
    }
    test_condf(bad == 0, "f32 -> f16 differs from the reference for %d sampled values", bad);
}

static void test_f16_specials(void) {
    test_cond("0 -> 0x0000", lora_f32_to_f16(0.0f) == 0x0000);
    test_cond("-0 -> 0x8000", lora_f32_to_f16(-0.0f) == 0x8000);
    test_cond("1 -> 0x3c00", lora_f32_to_f16(1.0f) == 0x3c00);
    test_cond("65504 -> 0x7bff", lora_f32_to_f16(65504.0f) == 0x7bff);
    test_cond("65519 -> 0x7bff", lora_f32_to_f16(65519.0f) == 0x7bff);
    test_cond("65520 (tie) -> inf", lora_f32_to_f16(65520.0f) == 0x7c00);
    test_cond("1e10 -> inf", lora_f32_to_f16(1e10f) == 0x7c00);
    test_cond("-1e10 -> -inf", lora_f32_to_f16(-1e10f) == 0xfc00);
    test_cond("FLT_MAX -> inf", lora_f32_to_f16(f32_from_bits(0x7f7fffffu)) == 0x7c00);
    test_cond("inf -> inf", lora_f32_to_f16(INFINITY) == 0x7c00);
    test_cond("-inf -> -inf", lora_f32_to_f16(-INFINITY) == 0xfc00);
    test_cond("NaN -> NaN", f16_is_nan(lora_f32_to_f16(NAN)));
    test_cond("signalling NaN -> NaN", f16_is_nan(lora_f32_to_f16(f32_from_bits(0x7f800001u))));
    /* Subnormals: 2^-24 is the smallest; 2^-25 is the tie with 0 and goes to even (0). */
    test_cond("2^-24 -> 0x0001", lora_f32_to_f16(ldexpf(1, -24)) == 0x0001);
    test_cond("2^-25 (tie) -> 0", lora_f32_to_f16(ldexpf(1, -25)) == 0x0000);
    test_cond("just above 2^-25 -> 0x0001",
              lora_f32_to_f16(nextafterf(ldexpf(1, -25), 1)) == 0x0001);
    test_cond("3 * 2^-25 (tie) -> 0x0002", lora_f32_to_f16(3 * ldexpf(1, -25)) == 0x0002);
    test_cond("2^-26 -> 0", lora_f32_to_f16(ldexpf(1, -26)) == 0x0000);
    test_cond("f32 subnormal -> 0", lora_f32_to_f16(f32_from_bits(1)) == 0x0000);
    test_cond("largest subnormal rounds up into the smallest normal",
              lora_f32_to_f16(nextafterf(ldexpf(1, -14), 0)) == 0x0400);
    test_cond("0x0001 -> 2^-24", lora_f16_to_f32(0x0001) == ldexpf(1, -24));
    test_cond("0x03ff -> 1023 * 2^-24", lora_f16_to_f32(0x03ff) == 1023 * ldexpf(1, -24));
    test_cond("0x7c00 -> inf", isinf(lora_f16_to_f32(0x7c00)) && lora_f16_to_f32(0x7c00) > 0);
    test_cond("0x8000 -> -0", lora_f16_to_f32(0x8000) == 0 && signbit(lora_f16_to_f32(0x8000)));
}

static void test_bf16(void) {
    int bad_value = 0, bad_trip = 0, bad_nan = 0, bad_tie = 0;
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        float    f = lora_bf16_to_f32(h);
        if (f32_bits(f) != (uint32_t)h << 16) bad_value++;
        if (bf16_is_nan(h)) {
            if (!bf16_is_nan(lora_f32_to_bf16(f))) bad_nan++;
            continue;
        }
        if (lora_f32_to_bf16(f) != h) bad_trip++;
        if ((h & 0x7f80u) == 0x7f80u) continue; /* infinities have no upper neighbour */
        /* Exactly halfway to the next pattern: to the even one; either side: the nearer. */
        uint32_t base = (uint32_t)h << 16;
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : h;
        if (lora_f32_to_bf16(f32_from_bits(base | 0x8000u)) != even) bad_tie++;
        if (lora_f32_to_bf16(f32_from_bits(base | 0x7fffu)) != h) bad_tie++;
        if (lora_f32_to_bf16(f32_from_bits(base | 0x8001u)) != (uint16_t)(h + 1)) bad_tie++;
    }
    test_condf(bad_value == 0, "bf16 -> f32 wrong for %d patterns", bad_value);
    test_condf(bad_trip == 0, "bf16 -> f32 -> bf16 not the identity for %d patterns", bad_trip);
    test_condf(bad_nan == 0, "bf16 NaN not preserved for %d patterns", bad_nan);
    test_condf(bad_tie == 0, "f32 -> bf16 rounding wrong %d times", bad_tie);
    test_cond("signalling NaN stays NaN in bf16",
              bf16_is_nan(lora_f32_to_bf16(f32_from_bits(0x7f800001u))));
    test_cond("FLT_MAX rounds to bf16 inf", lora_f32_to_bf16(f32_from_bits(0x7f7fffffu)) == 0x7f80);
    test_cond("-inf stays -inf", lora_f32_to_bf16(-INFINITY) == 0xff80);
}

static void test_bulk(void) {
    enum { N = 4096 };
    static uint16_t h[N], h2[N];
    static float    f[N], g[N];
    uint32_t        x = 12345;
    for (int i = 0; i < N; i++) {
        x    = x * 1664525u + 1013904223u;
        h[i] = (uint16_t)(x >> 16);
        f[i] = f32_from_bits(x);
    }
    int bad = 0;
    lora_f16_to_f32_n(g, h, N);
    for (int i = 0; i < N; i++)
        bad += f32_bits(g[i]) != f32_bits(lora_f16_to_f32(h[i]));
    lora_bf16_to_f32_n(g, h, N);
    for (int i = 0; i < N; i++)
        bad += f32_bits(g[i]) != f32_bits(lora_bf16_to_f32(h[i]));
    lora_f32_to_f16_n(h2, f, N);
    for (int i = 0; i < N; i++)
        bad += h2[i] != lora_f32_to_f16(f[i]);
    lora_f32_to_bf16_n(h2, f, N);
    for (int i = 0; i < N; i++)
        bad += h2[i] != lora_f32_to_bf16(f[i]);
    test_condf(bad == 0, "bulk conversions differ from the scalar ones %d times", bad);
    lora_f16_to_f32_n(g, h, 0); /* n = 0 touches nothing */
    test_cond("n = 0 is a no-op", 1);
}

int main(void) {
    test_f16_all_patterns();
    test_f16_ties_and_neighbours();
    test_f16_sweep();
    test_f16_specials();
    test_bf16();
    test_bulk();
    return test_report("test_dtype");
}
