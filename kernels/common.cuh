// Shared by the .cu files: checked CUDA calls that keep the file and line, bf16 loads and stores,
// launch helpers, block reductions.
#pragma once
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "core/error.h"
#include "kernels/ldmc_cuda.h"

#define CUDA_CHECK(call)                                                                           \
    do {                                                                                           \
        cudaError_t status_ = (call);                                                              \
        if (status_ != cudaSuccess)                                                                \
            ldmc_fatal_at(__FILE__, __LINE__, "CUDA: %s failed: %s", #call,                        \
                          cudaGetErrorString(status_));                                            \
    } while (0)

// After every launch: a bad configuration fails here, at its own line, not several ops later.
#define CUDA_CHECK_LAUNCH(name) CUDA_CHECK(cudaGetLastError())

static inline unsigned ldmc_blocks(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 65535 * 32 ? (b > 0 ? b : 1) : 65535 * 32);
}

// Workspace pieces start on 256-byte boundaries (cuBLAS's and cuDNN's alignment for fast paths).
static inline size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

// The bytes of temporaries one chunk may hold are LDMC_CUDA_CHUNK_MAX (ldmc_cuda.h) unless
// ldmc_cuda_set_chunk_bytes (attention.cu) says otherwise; conv.cu takes its share through this.
void conv_set_chunk_bytes(size_t bytes);

// The compute stream every launcher uses (runtime.cu).
static inline cudaStream_t ldmc_stream(void) { return (cudaStream_t)ldmc_cuda_stream(); }

// bf16 as raw 16-bit patterns (the C side's uint16_t): the upper half of an f32.
__device__ __forceinline__ float bf16_load(const uint16_t *p, int64_t i) {
    return __uint_as_float((uint32_t)p[i] << 16);
}

// Round to nearest even, NaN kept quiet: the same bits as ldmc_f32_to_bf16 (src/core/dtype.c).
__device__ __forceinline__ uint16_t bf16_from(float x) {
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

// The f32 master weights as their bf16 working copy `hi` (ties away from zero) and the f32's low
// half `lo`, nothing lost: ldmc_f32_split and ldmc_f32_join (src/core/dtype.c), bit for bit.
__device__ __forceinline__ uint16_t master_split(float x, uint16_t *lo) {
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        *lo = 0;
        return (uint16_t)((u >> 16) | 0x40u);
    }
    *lo = (uint16_t)u;
    return (uint16_t)((u >> 16) + ((u >> 15) & 1u));
}

__device__ __forceinline__ float master_join(uint16_t hi, uint16_t lo) {
    uint32_t top = (uint32_t)hi - (uint32_t)(lo >> 15);
    return __uint_as_float((top << 16) | lo);
}

// A value of a tensor that is bf16 or f32 (losses take either).
__device__ __forceinline__ float load_any(const void *p, bool is_f32, int64_t i) {
    return is_f32 ? ((const float *)p)[i] : bf16_load((const uint16_t *)p, i);
}

#define GRID_STRIDE(i, n)                                                                          \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (int64_t)(n);           \
         i += (int64_t)gridDim.x * blockDim.x)

// One thread per element (grid-stride), 256 threads a block, on the compute stream.
#define LAUNCH_1D(kernel, n, ...)                                                                  \
    do {                                                                                           \
        if ((n) > 0) {                                                                             \
            kernel<<<ldmc_blocks((n), 256), 256, 0, ldmc_stream()>>>(__VA_ARGS__);               \
            CUDA_CHECK_LAUNCH(#kernel);                                                            \
        }                                                                                          \
    } while (0)

// The sum over a warp (float or double), returned to every lane.
template <typename T> __device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The sum over a block (blockDim.x a multiple of 32, at most 1024; float or double), returned
// to every thread. `shared` holds 32 values. Fixed order: the same result on every run.
template <typename T> __device__ __forceinline__ T block_sum(T v, T *shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); // shared may still be read from a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : (T)0;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float *shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : -INFINITY;
    return warp_max(v);
}

// A gradient's new value from a backward's part v: beta 0, a fresh gradient, is written and never
// read (its bytes may be anything); beta 1 adds (ldmc_op_reads.writes, src/core/tape.h).
__device__ static inline float grad_add(float beta, const float *g, float v) {
    return beta != 0.0f ? *g + v : v;
}

// Element i of a gradient given as ldmc_cuda_grad (ldmc_cuda.h): bf16 written (a bf16 gradient is
// always fresh), f32 written or added by beta.
__device__ static inline void grad_put(void *g, bool bf16, float beta, int64_t i, float v) {
    if (bf16)
        ((uint16_t *)g)[i] = bf16_from(v);
    else
        ((float *)g)[i] = grad_add(beta, (const float *)g + i, v);
}

// The address of element i of a gradient buffer of either dtype (host code).
static inline void *grad_at(void *g, bool bf16, int64_t i) {
    return g ? (char *)g + i * (bf16 ? 2 : 4) : g;
}
