// Sampling: a denoiser (the UNet with its conditioning and classifier-free guidance) and the
// samplers that walk it from noise to latents, on device tensors (the latents stay where the
// context computes). A sampler is a row of the table in sampler.c: the timesteps it visits and
// the update of x (in place) from one to the next, given the guided model output; state it keeps
// across steps (DPM++'s previous prediction) lives in tensors ldmc_run_sampler allocates for it.
// Euler, Euler ancestral, DPM++ 2M and the refiner hand-off (first/last: a base runs steps [0, k),
// the refiner [k, n)) slot in there. Here: DDIM (η = 0) with LDM's timesteps. Tested by
// tests/test_pipeline.c and, through the training previews, tests/test_train.c.
#pragma once
#include "core/error.h"
#include "core/tape.h"
#include "diffusion/diffusion.h"
#include "nn/unet.h"
#include "pipeline/conditioner.h"

typedef struct ldmc_denoiser {
    const ldmc_unet *unet;
    const ldmc_conditioner *conditioner;
    const ldmc_cond_batch *cond; // the n samples' conditioning
    double guidance_scale;       // 1: the conditional model alone (no unconditional pass)
} ldmc_denoiser;

// Whether the denoiser runs the unconditional branch too (a scale other than 1, and conditioning
// to drop).
bool ldmc_denoiser_guided(const ldmc_denoiser *d);
// The guided model output (ε or v, f32 (n, h, w, C)) for x (f32 (n, h, w, C)) at timestep t:
// one UNet pass over the 2n conditional and unconditional samples when guided. Unrecorded.
ldmc_tensor *ldmc_denoise(ldmc_ctx *ctx, const ldmc_denoiser *d, ldmc_tensor *x, double t);

typedef struct ldmc_sampler ldmc_sampler;

typedef struct ldmc_sample_options {
    const ldmc_sampler *sampler;
    const ldmc_schedule *schedule;
    ldmc_prediction prediction; // what the model outputs
    int steps;                  // the sampler's steps over the whole schedule
    int first, last;            // the steps to run, [first, last): 0 and steps for a whole run
} ldmc_sample_options;

// A sampler by name ("ddim"); NULL when there is none.
const ldmc_sampler *ldmc_sampler_find(const char *name);
const char *ldmc_sampler_name(const ldmc_sampler *s);
// Runs the sampler from x (f32 (n, h, w, C) noise, in ctx) to latents, in place. Each step's
// activations are released; x and the sampler's state stay. Unrecorded.
int ldmc_run_sampler(ldmc_ctx *ctx, const ldmc_sample_options *o, const ldmc_denoiser *d,
                     ldmc_tensor *x, ldmc_err *err);
