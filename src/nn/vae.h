// The SDXL autoencoder: AutoencoderKL of generative-models (sgm/modules/diffusionmodules/model.py
// Encoder and Decoder, sgm/models/autoencoder.py), channels-last, with its parameters under the
// official keys (first_stage_model.encoder.down.0.block.1.conv2.weight, ...). Encode gives the
// moments of a diagonal Gaussian over the latent; decode maps a latent back to an image. The
// latent scale factor (0.13025 for SDXL) is the caller's: z_model = scale * z.
// Tested by tests/test_models.c against PyTorch (tests/ref/make_model_refs.py).
#pragma once
#include <stdio.h>

#include "nn/blocks.h"
#include "nn/model_config.h"
#include "nn/nn.h"

#define LDMC_VAE_PREFIX "first_stage_model."

// Single-head self-attention over the pixels (nn_attention with 1x1-conv projections q, k, v,
// proj_out), after a GroupNorm, plus the input.
typedef struct ldmc_vae_attention {
    nn_norm norm;
    nn_attention attention;
} ldmc_vae_attention;

typedef struct ldmc_vae_level {
    int n_blocks;
    nn_resblock *blocks; // ResnetBlocks: nn_resblock without a time embedding, GN eps 1e-6
    bool has_resample;
    nn_conv resample;  // encoder: downsample.conv (pad 0,1,0,1, stride 2); decoder: upsample.conv
} ldmc_vae_level;

typedef struct ldmc_vae_coder {
    nn_conv conv_in;
    ldmc_vae_level *levels;
    int n_levels;
    nn_resblock mid_block_1, mid_block_2;
    ldmc_vae_attention mid_attn;
    nn_norm norm_out;
    nn_conv conv_out;
} ldmc_vae_coder;

typedef struct ldmc_vae {
    ldmc_vae_config cfg;
    ldmc_params params;  // owned; official keys
    ldmc_vae_coder encoder, decoder;
    nn_conv quant_conv, post_quant_conv;
    bool recompute; // gradient checkpointing: each ResnetBlock recomputed in backward
} ldmc_vae;

// The diagonal Gaussian of an encoding: logvar clamped to [-30, 20] as sgm does.
typedef struct ldmc_vae_posterior {
    ldmc_tensor *mean, *logvar;  // (B, h, w, embed_dim) each
} ldmc_vae_posterior;

// Builds the module tree and registers its parameters (shapes only). Must not be copied after.
void ldmc_vae_init(ldmc_vae *v, const ldmc_vae_config *cfg);
void ldmc_vae_free(ldmc_vae *v);

// x (B, H, W, in_channels), H and W divisible by 2^(levels-1) -> the posterior over
// (B, H/f, W/f, embed_dim), f = 2^(levels-1).
ldmc_vae_posterior ldmc_vae_encode(ldmc_ctx *ctx, const ldmc_vae *v, ldmc_tensor *x);
// The posterior's standard deviation exp(logvar / 2).
ldmc_tensor *ldmc_vae_std(ldmc_ctx *ctx, const ldmc_vae_posterior *q);
// mean + exp(logvar / 2) * noise; noise (like mean) or NULL to draw it from the context's
// Philox stream (purpose LDMC_RNG_NOISE).
ldmc_tensor *ldmc_vae_sample(ldmc_ctx *ctx, const ldmc_vae_posterior *q, ldmc_tensor *noise);
// KL(q || N(0, 1)) per sample: 0.5 Σ (mean² + var - 1 - logvar) over (h, w, c) -> (B).
ldmc_tensor *ldmc_vae_kl(ldmc_ctx *ctx, const ldmc_vae_posterior *q);
// z (B, h, w, embed_dim) -> (B, h*f, w*f, out_channels)
ldmc_tensor *ldmc_vae_decode(ldmc_ctx *ctx, const ldmc_vae *v, ldmc_tensor *z);

void ldmc_vae_print_summary(const ldmc_vae *v, FILE *out);
