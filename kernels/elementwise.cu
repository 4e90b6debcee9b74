// Elementwise kernels on bf16 storage with f32 math; CPU twins in src/ops/cpu/activation.inc and
// elementwise.inc, conversions as src/core/dtype.c. Tested by tests/test_cuda.c.
#include <cuda_bf16.h>

#include "kernels/common.cuh"
#include "kernels/ldmc_cuda.h"

__device__ static inline float load_bf16(const uint16_t *p, int64_t i) {
    return __uint_as_float((uint32_t)p[i] << 16);
}

// Round to nearest even, NaN kept quiet: the same bits as ldmc_f32_to_bf16.
__device__ static inline uint16_t to_bf16(float x) {
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#define GRID_STRIDE(i, n)                                                                          \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);                      \
         i += (int64_t)gridDim.x * blockDim.x)

__global__ static void silu_forward_kernel(uint16_t *y, const uint16_t *x, int64_t n) {
    GRID_STRIDE(i, n) {
        float v = load_bf16(x, i);
        y[i] = to_bf16(v / (1.0f + __expf(-v)));
    }
}

__global__ static void silu_backward_kernel(uint16_t *dx, const uint16_t *dy, const uint16_t *x,
                                            int64_t n) {
    GRID_STRIDE(i, n) {
        float v = load_bf16(x, i), s = 1.0f / (1.0f + __expf(-v));
        dx[i] = to_bf16(load_bf16(dx, i) + load_bf16(dy, i) * s * (1.0f + v * (1.0f - s)));
    }
}

__global__ static void add_kernel(uint16_t *y, const uint16_t *a, const uint16_t *b, int64_t n) {
    GRID_STRIDE(i, n) { y[i] = to_bf16(load_bf16(a, i) + load_bf16(b, i)); }
}

__global__ static void f32_to_bf16_kernel(uint16_t *dst, const float *src, int64_t n) {
    GRID_STRIDE(i, n) { dst[i] = to_bf16(src[i]); }
}

__global__ static void bf16_to_f32_kernel(float *dst, const uint16_t *src, int64_t n) {
    GRID_STRIDE(i, n) { dst[i] = load_bf16(src, i); }
}

#define LAUNCH(kernel, n, stream, ...)                                                             \
    do {                                                                                           \
        if ((n) <= 0) return;                                                                      \
        kernel<<<ldmc_blocks((n), 256), 256, 0, ldmc_stream(stream)>>>(__VA_ARGS__);               \
        CUDA_CHECK_LAUNCH(#kernel);                                                                \
    } while (0)

extern "C" void ldmc_cuda_silu_forward_bf16(uint16_t *y, const uint16_t *x, int64_t n,
                                            void *stream) {
    LAUNCH(silu_forward_kernel, n, stream, y, x, n);
}

extern "C" void ldmc_cuda_silu_backward_bf16(uint16_t *dx, const uint16_t *dy, const uint16_t *x,
                                             int64_t n, void *stream) {
    LAUNCH(silu_backward_kernel, n, stream, dx, dy, x, n);
}

extern "C" void ldmc_cuda_add_bf16(uint16_t *y, const uint16_t *a, const uint16_t *b, int64_t n,
                                   void *stream) {
    LAUNCH(add_kernel, n, stream, y, a, b, n);
}

extern "C" void ldmc_cuda_f32_to_bf16(uint16_t *dst, const float *src, int64_t n, void *stream) {
    LAUNCH(f32_to_bf16_kernel, n, stream, dst, src, n);
}

extern "C" void ldmc_cuda_bf16_to_f32(float *dst, const uint16_t *src, int64_t n, void *stream) {
    LAUNCH(bf16_to_f32_kernel, n, stream, dst, src, n);
}
