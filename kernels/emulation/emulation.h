// Shared by the CPU emulation of the kernel interface (kernels/emulation/*.c): bf16 <-> f32
// conversions of whole operands, with the roundings the GPU applies.
#pragma once
#include <stdint.h>
#include <stdlib.h>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/ldmc_cuda.h"

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

// ---- gradients of either dtype (ldmc_cuda_grad, ldmc_cuda_dy) -----------------------------------

// The f32 buffer a CPU twin writes a gradient into: the gradient itself, or for a bf16 one a
// temporary (its beta is 0) that grad_done rounds into it. NULL stays NULL.
static inline float *grad_f32(ldmc_cuda_grad g, int64_t n) {
    return !g.p ? NULL : g.bf16 ? zeros(n) : (float *)g.p;
}

static inline void grad_done(ldmc_cuda_grad g, float *f, int64_t n) {
    if (!g.p || !g.bf16) return;
    store(g.p, f, n);
    free(f);
}

// An upstream gradient as a product sees it: rounded to bf16 (a bf16 one is so already).
static inline float *dy_rounded(ldmc_cuda_dy d, int64_t n) {
    return d.bf16 ? f32_of(d.p, n) : rounded(d.p, n);
}
