// Memory plans: what a training step of a model needs, measured by a dry run that records every
// allocation of the step (forward, loss, backward) without computing anything or touching the
// memory, so the full-size SDXL base at 1024² can be planned on a laptop. fp32 throughout, as the
// CPU trains; see `ldmc info CONFIG --batch B --res H W`. Tested by tests/test_models.c.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nn/unet.h"
#include "nn/vae.h"

typedef struct ldmc_memory_plan {
    int64_t parameters, trainable;
    size_t weights, gradients, optimizer;  // bytes: f32 weights, f32 gradients, AdamW m and v
    size_t activations;                    // the activation arena's high-water mark
    size_t activations_checkpointed;       // the same with gradient checkpointing
} ldmc_memory_plan;

// A UNet training step on latents of (batch, height, width), with a context of 77 tokens.
void ldmc_unet_plan(ldmc_unet *u, int batch, int height, int width, ldmc_memory_plan *plan);
// A VAE training step (encode, sample, decode, reconstruction + KL loss) on images.
void ldmc_vae_plan(ldmc_vae *v, int batch, int height, int width, ldmc_memory_plan *plan);
