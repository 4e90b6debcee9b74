// A stand-in for cuda_runtime.h that lets kernels/*.cu compile as host C++ and run their CUDA
// kernels on the CPU, thread by thread (tests/simt/simt.cpp): the SIMT emulation behind
// test_cuda_simt. Each block runs its threads as fibers; __syncthreads and the warp shuffles are
// barriers between them, so the kernels' index math, reductions and synchronization are what
// runs. Launches `k<<<grid, block, shared, stream>>>(args)` are rewritten by
// tests/simt/translate.py into simt_launch(grid, block, [&] { k(args); }).
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <functional>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct simt_index {
    unsigned x, y, z;
};

// The running thread's coordinates (set by the scheduler at every switch).
extern simt_index simt_thread_idx, simt_block_idx, simt_block_dim, simt_grid_dim;
#define threadIdx simt_thread_idx
#define blockIdx simt_block_idx
#define blockDim simt_block_dim
#define gridDim simt_grid_dim

void simt_launch(dim3 grid, dim3 block, const std::function<void()> &body);
void simt_syncthreads();
// Writes this lane's 8 bytes, waits for the warp, returns lane (lane ^ mask)'s.
uint64_t simt_shuffle_xor(uint64_t value, int lane_mask);

inline void __syncthreads() { simt_syncthreads(); }

template <typename T> inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int = 32) {
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    bits = simt_shuffle_xor(bits, lane_mask);
    T out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

// ---- intrinsics: the CPU computes each in IEEE round-to-nearest, as the _rn ones are defined ---
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __uint_as_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline uint32_t __float_as_uint(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
inline uint32_t __umulhi(uint32_t a, uint32_t b) { return (uint32_t)(((uint64_t)a * b) >> 32); }
template <typename T> inline T min(T a, T b) { return a < b ? a : b; }
template <typename T> inline T max(T a, T b) { return a > b ? a : b; }

// ---- the runtime calls the kernel files make ----------------------------------------------------
typedef void *cudaStream_t;
typedef enum cudaError { cudaSuccess = 0 } cudaError_t;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char *cudaGetErrorString(cudaError_t) { return "no error"; }
// Host memory stands in for device memory: a strided memset on the host.
inline cudaError_t cudaMemset2DAsync(void *p, size_t pitch, int value, size_t width, size_t height,
                                     cudaStream_t = nullptr) {
    for (size_t r = 0; r < height; r++)
        memset((char *)p + r * pitch, value, width);
    return cudaSuccess;
}
