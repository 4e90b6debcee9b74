// The diffusion side of a step on the GPU: latents drawn from the VAE posterior, noising for
// training, the decoder's input scaling, classifier-free guidance and the samplers' step. Twins of
// src/ops/cpu/diffusion.inc: the same formulas with the same roundings (explicit _rn intrinsics:
// no fused multiply-adds), and the noise drawn here from the same Philox streams (philox.cuh), so
// both devices compute the same values. Tested by tests/test_cuda.c against the CPU ops.
#include "kernels/common.cuh"
#include "kernels/ldmc_cuda.h"
#include "kernels/philox.cuh"

// z = s (mean + std ε), ε = normal(offset + i); mean and std bf16 or f32.
__global__ static void latent_sample_kernel(float *z, const void *mean, bool mean_f32,
                                            const void *std, bool std_f32, philox_stream s,
                                            uint64_t offset, float scale, int64_t n) {
    GRID_STRIDE(i, n) {
        float eps = philox_normal(s, offset + (uint64_t)i);
        float m = load_any(mean, mean_f32, i), sd = load_any(std, std_f32, i);
        z[i] = __fmul_rn(scale, __fadd_rn(m, __fmul_rn(sd, eps)));
    }
}

extern "C" void ldmc_cuda_latent_sample(float *z, const void *mean, bool mean_f32, const void *std,
                                        bool std_f32, const ldmc_rng *rng, uint64_t offset,
                                        float scale, int64_t n) {
    LAUNCH_1D(latent_sample_kernel, n, z, mean, mean_f32, std, std_f32, philox_of(rng), offset,
              scale, n);
}

__global__ static void latent_unscale_kernel(uint16_t *y, const float *z, float scale, int64_t n) {
    GRID_STRIDE(i, n) { y[i] = bf16_from(__fdiv_rn(z[i], scale)); }
}

extern "C" void ldmc_cuda_latent_unscale(uint16_t *y, const float *z, float scale, int64_t n) {
    LAUNCH_1D(latent_unscale_kernel, n, y, z, scale, n);
}

// One thread per latent value: eps' = eps + o offset[b, c] in f32, then x_t and the target in
// double from the per-sample sqrt(alpha-bar) and sqrt(1 - alpha-bar).
__global__ static void noise_kernel(philox_stream s, uint64_t noise_offset, uint64_t offset_start,
                                    const float *z, const double *sa, const double *sb,
                                    int64_t per_sample, int C, int64_t n, float offset_noise,
                                    bool predict_v, uint16_t *x_t, float *target) {
    GRID_STRIDE(k, n) {
        int64_t b = k / per_sample, c = (k % per_sample) % C;
        float eps = __fadd_rn(
            philox_normal(s, noise_offset + (uint64_t)k),
            __fmul_rn(offset_noise, philox_normal(s, offset_start + (uint64_t)(b * C + c))));
        double a = sa[b], sd = sb[b], zk = z[k];
        x_t[k] = bf16_from((float)__dadd_rn(__dmul_rn(a, zk), __dmul_rn(sd, eps)));
        target[k] = predict_v ? (float)__dsub_rn(__dmul_rn(a, eps), __dmul_rn(sd, zk)) : eps;
    }
}

extern "C" void ldmc_cuda_noise_batch(const ldmc_rng *noise_rng, uint64_t noise_offset,
                                      uint64_t offset_start, const float *z, const double *sa,
                                      const double *sb, int B, int64_t per_sample, int C,
                                      float offset_noise, bool predict_v, uint16_t *x_t,
                                      float *target) {
    int64_t n = (int64_t)B * per_sample;
    LAUNCH_1D(noise_kernel, n, philox_of(noise_rng), noise_offset, offset_start, z, sa, sb,
              per_sample, C, n, offset_noise, predict_v, x_t, target);
}

// y = uncond + scale (cond - uncond): the difference in f32, the rest in double, as the CPU.
__global__ static void guidance_kernel(float *y, const uint16_t *cond, const uint16_t *uncond,
                                       double scale, int64_t n) {
    GRID_STRIDE(i, n) {
        float c = bf16_load(cond, i), u = bf16_load(uncond, i);
        y[i] = (float)__dadd_rn((double)u, __dmul_rn(scale, (double)__fsub_rn(c, u)));
    }
}

extern "C" void ldmc_cuda_guidance(float *y, const uint16_t *cond, const uint16_t *uncond,
                                   double scale, int64_t n) {
    LAUNCH_1D(guidance_kernel, n, y, cond, uncond, scale, n);
}

// The CPU's order: D, then a x + b D, + c D_prev, + s noise, each product and sum rounded once
// in double.
__global__ static void sampler_kernel(float *x, const float *model_out, float *denoised,
                                      const float *noise, double p, double q, double a, double b,
                                      double c, double s, int64_t n) {
    GRID_STRIDE(i, n) {
        double xi = x[i];
        double d = __dadd_rn(__dmul_rn(p, xi), __dmul_rn(q, (double)model_out[i]));
        double y = __dadd_rn(__dmul_rn(a, xi), __dmul_rn(b, d));
        if (denoised) {
            y = __dadd_rn(y, __dmul_rn(c, (double)denoised[i]));
            denoised[i] = (float)d;
        }
        if (noise) y = __dadd_rn(y, __dmul_rn(s, (double)noise[i]));
        x[i] = (float)y;
    }
}

extern "C" void ldmc_cuda_sampler_step(float *x, const float *model_out, float *denoised,
                                       const float *noise, double p, double q, double a, double b,
                                       double c, double s, int64_t n) {
    LAUNCH_1D(sampler_kernel, n, x, model_out, denoised, noise, p, q, a, b, c, s, n);
}
