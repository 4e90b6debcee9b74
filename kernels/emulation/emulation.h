// Shared by the CPU emulation of the kernel interface (kernels/emulation/*.c): bf16 <-> f32
// conversions of whole operands, with the roundings the GPU applies.
#pragma once
#include <stdint.h>
#include <stdlib.h>

#include "core/dtype.h"
#include "core/error.h"

// ---- conversions ------------------------------------------------------------------------------

static inline float *f32_of(const uint16_t *x, int64_t n) {
    if (!x) return NULL;
    float *v = calloc((size_t)(n > 0 ? n : 1), sizeof *v);
    LDMC_CHECK(v, "out of memory");
    for (int64_t i = 0; i < n; i++)
        v[i] = ldmc_bf16_to_f32(x[i]);
    return v;
}

static inline float *zeros(int64_t n) {
    float *v = calloc((size_t)(n > 0 ? n : 1), sizeof *v);
    LDMC_CHECK(v, "out of memory");
    return v;
}

static inline void store(uint16_t *y, const float *v, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        y[i] = ldmc_f32_to_bf16(v[i]);
}

// An f32 gradient rounded to bf16, as the GPU feeds it to a tensor-core GEMM or cuDNN.
static inline float *rounded(const float *x, int64_t n) {
    float *v = calloc((size_t)(n > 0 ? n : 1), sizeof *v);
    LDMC_CHECK(v, "out of memory");
    for (int64_t i = 0; i < n; i++)
        v[i] = ldmc_bf16_to_f32(ldmc_f32_to_bf16(x[i]));
    return v;
}

// dst += bf16(src): a gradient cuDNN returns in bf16, added into the f32 buffer.
static inline void add_rounded(float *dst, const float *src, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        dst[i] += ldmc_bf16_to_f32(ldmc_f32_to_bf16(src[i]));
}

