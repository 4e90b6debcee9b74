// The diffusion process's host side, for training and sampling: the per-sample draws of a
// training batch (t ~ U{t_min .. t_max-1} from a Philox stream keyed by (seed, step, rank), the
// min-SNR-γ loss weight, and the √ᾱ_t, √(1-ᾱ_t) that the noising op, ldmc_diffusion_noise in
// src/ops/ops.h, applies on the device), and the timesteps DDIM visits. The values that touch
// every latent (noise, x_t, the targets, the DDIM update) are ops, on either device.
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

// The per-sample draws of a micro-batch of B: t (B) from the TIMESTEP stream of (seed, step,
// rank) at (stream << 40), the loss weight (B) (min-SNR-γ: min(snr, γ)/snr for ε, /(snr + 1) for
// v; 1 without), and sa = √ᾱ_t, sb = √(1-ᾱ_t) (B) in double. `stream` tells the micro-batches of
// one step apart (the accumulation index).
void ldmc_draw_timesteps(const ldmc_schedule *s, const ldmc_noise_options *o, int B, uint64_t seed,
                         uint32_t step, uint32_t rank, uint32_t stream, float *t, float *weight,
                         double *sa, double *sb);

// The timesteps DDIM visits, descending (981, 961, ..., 1 for 50 of 1000). Returns how many.
int ldmc_ddim_timesteps(const ldmc_schedule *s, int n, int *out);
