// Between images and latents, with the autoencoder frozen (nothing recorded): images encoded to
// the posterior's moments, latents drawn from them at the model's scale, latents decoded back to
// images. The training step, the latent cache (`ldmc cache`), the previews and the benchmarks
// all go through here, on either device.
// Tested by tests/test_pipeline.c and, through training and the cache, tests/test_train.c.
#pragma once
#include "core/rng.h"
#include "core/tape.h"
#include "nn/vae.h"

// The posterior of encoded images: mean and std = exp(logvar / 2), (n, h, w, C) each.
typedef struct ldmc_latent_moments {
    ldmc_tensor *mean, *std;
} ldmc_latent_moments;

// Encodes host images (n, H, W, 3) in [-1, 1] in ctx, unrecorded.
ldmc_latent_moments ldmc_encode_images(ldmc_ctx *ctx, const ldmc_vae *vae, const float *pixels,
                                       int n, int H, int W);
// Moments given on the host (a latent cache's), as tensors in ctx (f32).
ldmc_latent_moments ldmc_latent_moments_input(ldmc_ctx *ctx, const float *mean, const float *std,
                                              int n, int h, int w, int C);
// Latents for the diffusion model, z = scale (mean + std ε) (f32), ε from the key's LATENT
// stream.
ldmc_tensor *ldmc_draw_latents(ldmc_ctx *ctx, ldmc_latent_moments q, double scale,
                               const ldmc_step_key *key);
// Decodes latents z (n, h, w, C) f32 at the model's scale into host images (n, H, W, 3), a few at
// a time; what decoding allocates in ctx is released again.
void ldmc_decode_latents(ldmc_ctx *ctx, const ldmc_vae *vae, ldmc_tensor *z, float *images);
// Encodes and decodes (the posterior's mean) host images: reconstructions (n, H, W, 3).
void ldmc_reconstruct_images(ldmc_ctx *ctx, const ldmc_vae *vae, const float *pixels, int n, int H,
                             int W, float *images);
