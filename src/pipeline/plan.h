// Memory plans: what a training step of a model needs, measured by a dry run of the training
// step itself (ldmc_diffusion_loss, ldmc_vae_loss) that records every allocation without
// computing anything or touching the memory, so the full-size SDXL base at 1024² can be planned
// on a laptop. See `ldmc info CONFIG --batch B --res H W` (f32, as the CPU trains) and `ldmc
// bench train --dry-run` (bf16 activations, as the GPU trains). Tested by tests/test_pipeline.c
// (the dry run allocates what a real step does, to the byte).
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/model.h"
#include "nn/text_encoder.h"
#include "nn/unet.h"
#include "nn/vae.h"

typedef struct ldmc_memory_plan {
    int64_t parameters, trainable;
    size_t weights, gradients, optimizer; // bytes: f32 weights, f32 gradients, AdamW m and v
    size_t activations;                   // the activation arena's high-water mark
    size_t activations_recomputed;        // the same with gradient checkpointing
} ldmc_memory_plan;

// One dry run of a training step on `device`: the activation arena's high-water mark and the
// matrix-product FLOPs the ops count (forward and backward).
typedef struct ldmc_dry_run {
    size_t activations;
    double flops;
} ldmc_dry_run;

// The diffusion step of u on latents (batch, h, w) with the conditioning u's config asks for (a
// context of 77 tokens for text models; no conditioning dropout, which adds a few masked
// embeddings), gradient checkpointing as u->recompute says. The
// model's weights and gradients are reserved as address space (a model of its own: nothing may
// read them after).
ldmc_dry_run ldmc_dry_run_unet_step(ldmc_unet *u, ldmc_device device, int batch, int h, int w);
// The VAE's step on images (batch, H, W).
ldmc_dry_run ldmc_dry_run_vae_step(ldmc_vae *v, ldmc_device device, int batch, int H, int W);
// A frozen text encoder's forward on `batch` prompts (what the conditioner runs before the
// UNet's step, and drops but for the context and pooled text). Its weights are reserved.
ldmc_dry_run ldmc_dry_run_text_forward(ldmc_text_encoder *e, ldmc_device device, int batch);

// The plan of any model's training step at H x W pixels, on the CPU without and with gradient
// checkpointing: a UNet's on the latent of an autoencoder of factor f (H/f x W/f), an
// autoencoder's on the images. Returns the factor its step works at (f, or 1), or -1 with an
// error naming the sizes the model needs (or a kind of model without a training step).
int ldmc_model_plan(const ldmc_model *m, int batch, int H, int W, int f, ldmc_memory_plan *plan,
                    ldmc_err *err);
