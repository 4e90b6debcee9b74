// Shared by the .cu files: checked CUDA calls that keep the file and line, launch helpers.
#pragma once
#include <cuda_runtime.h>

#include "core/error.h"

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

static inline cudaStream_t ldmc_stream(void *s) { return (cudaStream_t)s; }
