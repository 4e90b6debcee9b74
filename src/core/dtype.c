// Element types and conversions (see dtype.h). Tested by tests/test_core.c.
#include "core/dtype.h"

#include <math.h>
#include <string.h>
#include <strings.h>

static const struct {
    const char *name;
    size_t size;
} dtype_table[LDMC_DTYPE_COUNT] = {
    [LDMC_F32] = {"F32", 4}, [LDMC_BF16] = {"BF16", 2}, [LDMC_F16] = {"F16", 2},
    [LDMC_I32] = {"I32", 4}, [LDMC_I64] = {"I64", 8},
};

size_t ldmc_dtype_size(ldmc_dtype dtype) {
    return (unsigned)dtype < LDMC_DTYPE_COUNT ? dtype_table[dtype].size : 0;
}

const char *ldmc_dtype_name(ldmc_dtype dtype) {
    return (unsigned)dtype < LDMC_DTYPE_COUNT ? dtype_table[dtype].name : "?";
}

int ldmc_dtype_parse(const char *name, ldmc_dtype *out) {
    for (int i = 0; i < LDMC_DTYPE_COUNT; i++) {
        if (strcmp(name, dtype_table[i].name) == 0) {
            *out = (ldmc_dtype)i;
            return 0;
        }
    }
    return -1;
}

int ldmc_dtype_from_name(const char *name, ldmc_dtype *out) {
    static const struct {
        const char *name;
        ldmc_dtype dtype;
    } names[] = {{"f32", LDMC_F32},  {"fp32", LDMC_F32}, {"float32", LDMC_F32}, {"f16", LDMC_F16},
                 {"fp16", LDMC_F16}, {"float16", LDMC_F16}, {"bf16", LDMC_BF16},
                 {"bfloat16", LDMC_BF16}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(name, names[i].name) == 0) {
            *out = names[i].dtype;
            return 0;
        }
    return ldmc_dtype_parse(name, out);
}

static uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static float bits_f32(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

uint16_t ldmc_f32_to_bf16(float x) {
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u); // round to nearest, ties to even
    return (uint16_t)(u >> 16);
}

float ldmc_bf16_to_f32(uint16_t x) { return bits_f32((uint32_t)x << 16); }

uint16_t ldmc_f32_split(float x, uint16_t *lo) {
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) { // NaN: a quiet one, whatever the low half was
        *lo = 0;
        return (uint16_t)((u >> 16) | 0x40u);
    }
    *lo = (uint16_t)u;
    // half up in magnitude: the high half goes up when the low one is 0x8000 or more (the
    // largest finite values round to infinity, as they do to even)
    return (uint16_t)((u >> 16) + ((u >> 15) & 1u));
}

float ldmc_f32_join(uint16_t hi, uint16_t lo) {
    // the high half came up by one where the low half has its top bit set
    uint32_t top = (uint32_t)hi - (lo >> 15);
    return bits_f32((top << 16) | lo);
}

void ldmc_f32_split_n(uint16_t *hi, uint16_t *lo, const float *x, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++)
        hi[i] = ldmc_f32_split(x[i], &lo[i]);
}

void ldmc_f32_join_n(float *x, const uint16_t *hi, const uint16_t *lo, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++)
        x[i] = ldmc_f32_join(hi[i], lo[i]);
}

uint16_t ldmc_f32_to_f16(float x) {
    uint32_t u = f32_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return sign | 0x7e00u; // NaN
    if (abs >= 0x47800000u) {                     // >= 65536: overflow to inf, unless it rounds
        return sign | 0x7c00u;                    // (65520 and up round to inf as well)
    }
    if (abs >= 0x38800000u) { // normal f16 range: 2^-14 and up
        uint32_t mant = abs & 0x7fffffu;
        uint32_t exp = (abs >> 23) - 112; // rebias 127 -> 15
        uint32_t h = (exp << 10) | (mant >> 13);
        uint32_t rest = mant & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++; // may carry into inf: correct
        return sign | (uint16_t)h;
    }
    if (abs < 0x33000000u) return sign; // below half the smallest subnormal: zero
    // Subnormal f16: value = m * 2^-24, m in [0, 1024).
    uint32_t exp = abs >> 23;
    uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exp; // 113 - exp gives 2^-24 units, plus 13 bits of mantissa
    uint32_t h = mant >> shift;
    uint32_t rest = mant & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    if (rest > half || (rest == half && (h & 1u))) h++;
    return sign | (uint16_t)h;
}

float ldmc_f16_to_f32(uint16_t x) {
    uint32_t sign = ((uint32_t)x & 0x8000u) << 16;
    uint32_t exp = (x >> 10) & 0x1fu;
    uint32_t mant = x & 0x3ffu;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) { // zero or subnormal: m * 2^-24, exact in f32
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

static float load_float(const void *src, ldmc_dtype dtype, size_t i) {
    switch (dtype) {
    case LDMC_F32: return ((const float *)src)[i];
    case LDMC_BF16: return ldmc_bf16_to_f32(((const uint16_t *)src)[i]);
    case LDMC_F16: return ldmc_f16_to_f32(((const uint16_t *)src)[i]);
    default: return NAN;
    }
}

static void store_float(void *dst, ldmc_dtype dtype, size_t i, float v) {
    switch (dtype) {
    case LDMC_F32: ((float *)dst)[i] = v; break;
    case LDMC_BF16: ((uint16_t *)dst)[i] = ldmc_f32_to_bf16(v); break;
    case LDMC_F16: ((uint16_t *)dst)[i] = ldmc_f32_to_f16(v); break;
    default: break;
    }
}

static int is_float(ldmc_dtype dtype) {
    return dtype == LDMC_F32 || dtype == LDMC_BF16 || dtype == LDMC_F16;
}

int ldmc_convert(void *dst, ldmc_dtype dst_dtype, const void *src, ldmc_dtype src_dtype, size_t n) {
    if (dst_dtype == src_dtype) {
        if (ldmc_dtype_size(dst_dtype) == 0) return -1;
        memmove(dst, src, n * ldmc_dtype_size(dst_dtype));
        return 0;
    }
    if (!is_float(dst_dtype) || !is_float(src_dtype)) return -1;
    for (size_t i = 0; i < n; i++)
        store_float(dst, dst_dtype, i, load_float(src, src_dtype, i));
    return 0;
}
