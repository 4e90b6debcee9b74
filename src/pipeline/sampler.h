// Sampling: a denoiser (the UNet with its conditioning and classifier-free guidance) and the
// samplers that walk it from noise to latents, on device tensors (the latents stay where the
// context computes). Every sampler runs in k-diffusion's (VE) coordinates, x = x0 + σ ε, over a
// σ list of diffusion/diffusion.h: the UNet sees x / √(σ² + 1) at the list's timestep, the
// model's scalings give the denoised D (ε: D = x - σ ε̂; v: D = x/(σ² + 1) - σ v̂/√(σ² + 1)), and
// one op (ldmc_sampler_update) moves x to the next σ (../shared/reference/samplers.md §3):
//   ddim       Euler on LDM's timesteps 981 ... 1 ending at ᾱ_0, which is DDIM (η = 0) exactly
//              (samplers.md §3.3); the latents returned are the VP ones, x / √(1 + σ_0²)
//   euler      k-diffusion's sample_euler (s_churn 0), generative-models' EulerEDMSampler
//   euler_a    Euler ancestral, η = 1 (sample_euler_ancestral, EulerAncestralSampler)
//   dpmpp_2m   DPM-Solver++(2M) (sample_dpmpp_2m), first order on the first and the last step
// each with its default σ list (ddim: ldm, euler and euler_a: sgm, dpmpp_2m: karras), or any.
// A run covers steps [first, last) of the list: a base model runs [0, k) and a refiner [k, n)
// on the same x (the hand-off: no noise added); SDEdit starts at a later step from x0 + σ ε.
// Tested by tests/test_pipeline.c (against tests/ref/make_sampler_refs.py) and
// tests/test_diffusion.c.
#pragma once
#include "core/error.h"
#include "core/rng.h"
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
// The guided model output (ε or v, f32 (n, h, w, C)) for x (f32 (n, h, w, C), VE) at noise level
// sigma: the UNet runs on x / √(σ² + 1) at timestep t, one pass over the 2n conditional and
// unconditional samples when guided. Unrecorded.
ldmc_tensor *ldmc_denoise(ldmc_ctx *ctx, const ldmc_denoiser *d, ldmc_tensor *x, double sigma,
                          double t);

typedef struct ldmc_sampler ldmc_sampler;

typedef struct ldmc_sample_options {
    const ldmc_sampler *sampler;
    const ldmc_schedule *schedule;
    ldmc_prediction prediction;         // what the model outputs
    ldmc_discretization discretization; // LDMC_SIGMAS_DEFAULT: the sampler's own
    int steps;                          // the sampler's steps over the whole schedule
    int first, last;                    // the steps to run, [first, last): 0 and steps for all
    // An ancestral sampler's noise: row r of x draws from noise[r] (its values from step i · the
    // row's size, rounded up to even), so that an image depends on its own stream only.
    const ldmc_rng *noise;
    // Called after each step i (optional), for progress lines.
    void (*progress)(void *arg, int i);
    void *progress_arg;
} ldmc_sample_options;

// A sampler by name ("ddim", "euler", "euler_a", "dpmpp_2m"); NULL when there is none.
const ldmc_sampler *ldmc_sampler_find(const char *name);
const char *ldmc_sampler_name(const ldmc_sampler *s);
// The names, comma-separated, for messages.
const char *ldmc_sampler_names(void);
ldmc_discretization ldmc_sampler_discretization(const ldmc_sample_options *o);
// σ of step i of the options' list (i = steps: where the run ends), and its timestep (i < steps).
double ldmc_sampler_sigma(const ldmc_sample_options *o, int i);
double ldmc_sampler_timestep(const ldmc_sample_options *o, int i);
// The step a base model hands off at, for a refiner that takes the last `1 - fraction` of the
// schedule (ldmc_switch_step).
int ldmc_sampler_switch(const ldmc_sample_options *o, double fraction);
// x (f32 (n, ...), in ctx) += scale ε, row r's ε from rows[r] (from value 0): an image's latents
// + σ_first ε for SDEdit.
void ldmc_sampler_add_noise(ldmc_ctx *ctx, ldmc_tensor *x, const ldmc_rng *rows, double scale);
// Pure noise at the start of step o->first: x (zeros on entry) = √(σ_first² + 1) ε, ε as above.
void ldmc_sampler_start_noise(ldmc_ctx *ctx, const ldmc_sample_options *o, ldmc_tensor *x,
                              const ldmc_rng *rows);
// Runs steps [first, last) from x (f32 (n, h, w, C), in ctx; VE at σ_first, so pure noise is
// ε √(σ_first² + 1)) in place; when the run ends the list (last = steps) x is returned as the
// latents to decode (VP: divided by √(σ_end² + 1), which is 1 unless the list ends above 0).
// Each step's activations are released; x and the sampler's state stay. Unrecorded.
int ldmc_run_sampler(ldmc_ctx *ctx, const ldmc_sample_options *o, const ldmc_denoiser *d,
                     ldmc_tensor *x, ldmc_err *err);
