// The loss steps of training, one implementation each, shared by `ldmc train`, `ldmc bench step`,
// `ldmc bench train` and the memory plans (a dry run of the same step):
//   - diffusion: latents (encoded from the micro-batch's images by the frozen VAE, or drawn from
//     a latent cache's posterior moments), timesteps and noise (offset noise, [t_min, t_max),
//     ε or v targets, min-SNR-γ weights), the conditioning with dropout, the UNet, the weighted
//     MSE, backward;
//   - vae: encode, sample the posterior, decode; L1 + kl_weight KL as generative-models'
//     LPIPSWithDiscriminator computes its first two terms, backward.
// Everything stays on the context's device; every draw comes from the micro-batch's key, so a
// step is a pure function of (weights, batch, key).
// Tested by tests/test_pipeline.c and tests/test_train.c.
#pragma once
#include "core/rng.h"
#include "core/tape.h"
#include "diffusion/diffusion.h"
#include "nn/unet.h"
#include "nn/vae.h"
#include "pipeline/conditioner.h"

// A micro-batch as the loss steps take it, in host memory: images, or (diffusion) the posterior
// moments of cached latents; and the conditioning.
typedef struct ldmc_step_batch {
    int n;
    const float *pixels; // (n, height, width, 3) in [-1, 1]
    int height, width;
    const float *mean, *std; // or (n, lh, lw, C) each
    int lh, lw;
    ldmc_cond_batch cond;
} ldmc_step_batch;

typedef struct ldmc_diffusion_step {
    const ldmc_unet *unet;
    const ldmc_vae *vae; // encodes the images (NULL when batches carry latents)
    double latent_scale; // the latents' scale factor (the VAE's: SDXL 0.13025)
    const ldmc_schedule *schedule;
    const ldmc_noise_options *noise;
    const ldmc_conditioner *conditioner;
} ldmc_diffusion_step;

typedef struct ldmc_vae_step {
    const ldmc_vae *vae;
    double kl_weight;
} ldmc_vae_step;

// One micro-batch: resets ctx, computes the loss (the mean over the micro-batch) and, when it is
// finite, runs backward with the gradients times `grad_scale` (parameter gradients add up in the
// table's gradient buffer). A step of A micro-batches on one rank passes 1 / A; a rank that holds
// n of a global micro-batch's N rows passes n / (N A), so that the sum of every rank's gradients
// is the gradient of the mean loss. Returns the loss (NaN in a dry run, which
// allocates as the real step does and computes nothing). The VAE's loss is per image element:
// (Σ|x - x̂| + kl_weight Σ KL) / (n H W 3).
double ldmc_diffusion_loss(ldmc_ctx *ctx, const ldmc_diffusion_step *s, const ldmc_step_batch *b,
                           const ldmc_step_key *key, double grad_scale);
double ldmc_vae_loss(ldmc_ctx *ctx, const ldmc_vae_step *s, const ldmc_step_batch *b,
                     const ldmc_step_key *key, double grad_scale);
