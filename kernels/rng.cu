// Philox4x32-10 streams on the GPU (philox.cuh), so a seed gives the same noise on either device.
// Tested by tests/test_cuda.c against the CPU stream.
#include "kernels/common.cuh"
#include "kernels/ldmc_cuda.h"
#include "kernels/philox.cuh"

__global__ static void uniform_kernel(philox_stream s, uint64_t offset, int64_t n, float *out) {
    GRID_STRIDE(k, n) { out[k] = philox_uniform(s, offset + (uint64_t)k); }
}

__global__ static void normal_kernel(philox_stream s, uint64_t offset, int64_t n, float *out) {
    GRID_STRIDE(k, n) { out[k] = philox_normal(s, offset + (uint64_t)k); }
}

extern "C" void ldmc_cuda_rng_uniform(const ldmc_rng *rng, uint64_t offset, size_t n, float *out) {
    LAUNCH_1D(uniform_kernel, (int64_t)n, philox_of(rng), offset, (int64_t)n, out);
}

extern "C" void ldmc_cuda_rng_normal(const ldmc_rng *rng, uint64_t offset, size_t n, float *out) {
    LAUNCH_1D(normal_kernel, (int64_t)n, philox_of(rng), offset, (int64_t)n, out);
}
