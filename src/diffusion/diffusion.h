// The diffusion process's host side, for training and sampling: the per-sample draws of a
// training batch (t ~ U{t_min .. t_max-1} from a Philox stream keyed by (seed, step, rank), the
// min-SNR-γ loss weight, and the √ᾱ_t, √(1-ᾱ_t) that the noising op, ldmc_diffusion_noise in
// src/ops/ops.h, applies on the device), and the σ lists the samplers walk. The values that touch
// every latent (noise, x_t, the targets, the sampler steps) are ops, on either device.
// Tested by tests/test_diffusion.c.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "core/rng.h"
#include "diffusion/schedule.h"

typedef enum ldmc_prediction { LDMC_PREDICT_EPS, LDMC_PREDICT_V } ldmc_prediction;

typedef struct ldmc_noise_options {
    ldmc_prediction prediction;
    double offset_noise;  // 0.05 in SDXL's multi-aspect stage; 0 off
    int t_min, t_max;     // [t_min, t_max): 0, 1000; the refiner trains on [0, 200)
    double min_snr_gamma; // 0: no weighting; 5 is the usual choice
} ldmc_noise_options;

// The per-sample draws of a micro-batch of B rows: t (B) from the step's TIMESTEP stream at each
// row's global index (ldmc_step_row_offset), the loss weight (B) (min-SNR-γ: min(snr, γ)/snr for
// ε, /(snr + 1) for v; 1 without), and sa = √ᾱ_t, sb = √(1-ᾱ_t) (B) in double.
void ldmc_draw_timesteps(const ldmc_schedule *s, const ldmc_noise_options *o, int B,
                         const ldmc_step_key *key, float *t, float *weight, double *sa, double *sb);

// The σ lists the samplers walk (../shared/reference/samplers.md §2, §3.6, §8), descending, with
// the timestep the UNet gets at each: steps + 1 values of σ (the last where the run ends) and
// steps of t.
//   LDM:    LDM's DDIM timesteps 981, 961, ..., 1 (uniform + 1, for 50 of 1000), ending at σ_0
//           (ᾱ_0, as LDM and diffusers' DDIM with SDXL's scheduler config)
//   SGM:    generative-models' LegacyDDPMDiscretization: t_k = trunc(999 - k 999/n), 999, 979,
//           ..., 19, ending at 0
//   KARRAS: Karras et al.'s ρ = 7 between σ_0 and σ_999 of the schedule (k-diffusion's
//           get_sigmas_karras, ComfyUI's "karras"), ending at 0; t from σ by log-linear
//           interpolation of the table (fractional, k-diffusion's CompVis wrapper)
typedef enum ldmc_discretization {
    LDMC_SIGMAS_DEFAULT, // (in sampler options: the sampler's own)
    LDMC_SIGMAS_LDM,
    LDMC_SIGMAS_SGM,
    LDMC_SIGMAS_KARRAS,
} ldmc_discretization;

// Fills sigmas (steps + 1) and t (steps); returns steps. 1 <= steps <= the schedule's steps.
int ldmc_discretize(const ldmc_schedule *s, ldmc_discretization d, int steps, double *sigmas,
                    double *t);
// The discretization of a name ("ldm", "sgm", "karras"); LDMC_SIGMAS_DEFAULT when none.
int ldmc_discretization_from_name(const char *name);
const char *ldmc_discretization_name(ldmc_discretization d);
// The fractional timestep of σ: log σ interpolated linearly in the table (k-diffusion's
// DiscreteSchedule.sigma_to_t); 0 below σ_0, steps - 1 above the last.
double ldmc_sigma_to_t(const ldmc_schedule *s, double sigma);

// Where a base model hands its latents to a refiner (samplers.md §5, diffusers' denoising_end):
// the base runs the steps whose t is at least round((1 - fraction) · steps of the schedule);
// returns how many (0 .. steps).
int ldmc_switch_step(const ldmc_schedule *s, const double *t, int steps, double fraction);
// SDEdit's first step for a strength in [0, 1] (diffusers' get_timesteps): steps -
// min(int(steps · strength), steps).
int ldmc_strength_start(int steps, double strength);
