// The diffusion side of training and sampling, on host arrays (no gradients flow through it):
//   - noising a batch of latents: t ~ U{t_min .. t_max-1}, ε ~ N(0, 1) + offset · N(0, 1) per
//     (sample, channel) (offset noise), x_t = √ᾱ_t z + √(1-ᾱ_t) ε, the target ε or
//     v = √ᾱ_t ε - √(1-ᾱ_t) z, and the min-SNR-γ weight of each sample; every draw from a Philox
//     stream keyed by (seed, step, rank), so a resumed run draws the same;
//   - DDIM (η = 0) as LDM runs it: timesteps 1, 1 + 1000/n, ..., the last step landing on ᾱ_0.
// Tested by tests/test_diffusion.c.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "diffusion/schedule.h"

typedef enum ldmc_prediction { LDMC_PREDICT_EPS, LDMC_PREDICT_V } ldmc_prediction;

typedef struct ldmc_noise_options {
    ldmc_prediction prediction;
    double offset_noise;  // 0.05 in SDXL's multi-aspect stage; 0 off
    int t_min, t_max;     // [t_min, t_max): 0, 1000; the refiner trains on [0, 200)
    double min_snr_gamma; // 0: no weighting; 5 is the usual choice
} ldmc_noise_options;

// One micro-batch: z (B, h, w, C) -> x_t, target (same shape), t (B), weight (B). `stream`
// distinguishes micro-batches of one step (the accumulation index).
void ldmc_noise_batch(const ldmc_schedule *s, const ldmc_noise_options *o, const float *z, int B,
                      int h, int w, int C, uint64_t seed, uint32_t step, uint32_t rank,
                      uint32_t stream, float *x_t, float *target, float *t, float *weight);

// The per-sample part of ldmc_noise_batch: t (B), weight (B), and sa = √ᾱ_t, sb = √(1-ᾱ_t) (B)
// in double, for the GPU's noising kernel (ldmc_cuda_noise_batch), which draws ε and the offsets
// from the NOISE stream at (stream << 40) as ldmc_noise_batch does.
void ldmc_noise_timesteps(const ldmc_schedule *s, const ldmc_noise_options *o, int B,
                          uint64_t seed, uint32_t step, uint32_t rank, uint32_t stream, float *t,
                          float *weight, double *sa, double *sb);

// The timesteps DDIM visits, descending (981, 961, ..., 1 for 50 of 1000). Returns how many.
int ldmc_ddim_timesteps(const ldmc_schedule *s, int n, int *out);
// One DDIM step from x (at timestep t) given the model's output, to the previous timestep
// (or ᾱ_0 after the last); n values.
void ldmc_ddim_step(const ldmc_schedule *s, ldmc_prediction prediction, int t, int t_prev,
                    const float *model_out, float *x, int64_t n);
// Classifier-free guidance: out = uncond + scale (cond - uncond).
void ldmc_cfg_combine(const float *uncond, const float *cond, double scale, float *out, int64_t n);
