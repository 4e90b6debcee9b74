// Philox4x32-10 streams on the GPU (philox.cuh), so a seed gives the same noise on either device,
// and the diffusion noising of src/diffusion/diffusion.c. Tested by tests/test_cuda.c against
// the CPU stream and ldmc_noise_batch.
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

// One thread per latent value, in the CPU's order and precision: eps' = eps + o offset[b, c] in f32,
// then x_t and the target in double from the per-sample sqrt(alpha-bar) and sqrt(1 - alpha-bar).
__global__ static void noise_kernel(philox_stream s, uint64_t noise_offset, uint64_t offset_start,
                                    const float *z, const double *sa, const double *sb,
                                    int64_t per_sample, int C, int64_t n, float offset_noise,
                                    bool predict_v, uint16_t *x_t, float *target) {
    GRID_STRIDE(k, n) {
        int64_t b = k / per_sample, c = (k % per_sample) % C;
        // explicit roundings: no fused multiply-adds, as the CPU (C11, fp-contract off) computes
        float eps = __fadd_rn(philox_normal(s, noise_offset + (uint64_t)k),
                              __fmul_rn(offset_noise,
                                        philox_normal(s, offset_start + (uint64_t)(b * C + c))));
        double a = sa[b], sd = sb[b], zk = z[k];
        x_t[k] = bf16_from((float)__dadd_rn(__dmul_rn(a, zk), __dmul_rn(sd, eps)));
        target[k] = predict_v ? (float)__dsub_rn(__dmul_rn(a, eps), __dmul_rn(sd, zk)) : eps;
    }
}

extern "C" void ldmc_cuda_noise_batch(const ldmc_rng *noise_rng, uint64_t noise_offset,
                                      const float *z, const double *sa, const double *sb, int B,
                                      int64_t per_sample, int C, float offset_noise,
                                      bool predict_v, uint16_t *x_t, float *target) {
    int64_t n = (int64_t)B * per_sample;
    // the offsets follow the n values of eps, from the next even index (a whole normal pair)
    uint64_t offset_start = noise_offset + (((uint64_t)n + 1) & ~(uint64_t)1);
    LAUNCH_1D(noise_kernel, n, philox_of(noise_rng), noise_offset, offset_start, z, sa, sb,
              per_sample, C, n, offset_noise, predict_v, x_t, target);
}
