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
#include "core/memplan.h"
#include "core/model.h"
#include "nn/text_encoder.h"
#include "nn/unet.h"
#include "nn/vae.h"
#include "pipeline/loss.h"

typedef struct ldmc_memory_plan {
    int64_t parameters, trainable;
    size_t weights, gradients, optimizer; // bytes: f32 weights, f32 gradients, AdamW m and v
    size_t activations;                   // the step's planned activations and their gradients
    size_t activations_recomputed;        // the same with gradient checkpointing
    size_t activations_projections;       // a UNet's with its projections made again (else 0)
    size_t unplanned;                     // without a plan (nothing freed before the step ends)
} ldmc_memory_plan;

// One dry run of a training step on `device`: the bytes of activations and activation gradients
// the step needs with its memory plan (core/memplan.h: each freed after its last use), the same
// when nothing is freed before the step ends (the bump arena's high-water mark), and the
// matrix-product FLOPs the ops count (forward and backward).
typedef struct ldmc_dry_run {
    size_t activations; // the plan's peak: what a training step takes (the trainer replays plans)
    size_t unplanned;   // without a plan
    size_t live_peak;   // the most bytes live at once (the plan's lower bound)
    double flops;
} ldmc_dry_run;

// The diffusion step of u on latents (batch, h, w) with the conditioning u's config asks for (a
// context of 77 tokens for text models; no conditioning dropout, which adds a few masked
// embeddings), gradient checkpointing as u->recompute says. The
// model's weights and gradients are reserved as address space (a model of its own: nothing may
// read them after). `plan` (NULL: none) receives the step's memory plan.
ldmc_dry_run ldmc_dry_run_unet_step(ldmc_unet *u, ldmc_device device, int batch, int h, int w,
                                    ldmc_step_plan *plan);
// The VAE's step on images (batch, H, W).
ldmc_dry_run ldmc_dry_run_vae_step(ldmc_vae *v, ldmc_device device, int batch, int H, int W,
                                   ldmc_step_plan *plan);
// A frozen text encoder's forward on `batch` prompts (what the conditioner runs before the
// UNet's step, and drops but for the context and pooled text). Its weights are reserved.
ldmc_dry_run ldmc_dry_run_text_forward(ldmc_text_encoder *e, ldmc_device device, int batch);

// Records the memory plan of the step `run` makes on `ctx` (any step: it runs on dry-run
// contexts of `device`, which compute nothing and touch none of their memory, so it may be given
// the real model and batch: once plainly, for plan->unplanned, once recording). A real context
// replays the plan with ldmc_ctx_use_plan. Returns the step's matrix-product FLOPs as the plan
// runs it (with the products it makes again in backward: ldmc_remake_later).
double ldmc_plan_step(ldmc_device device, void (*run)(ldmc_ctx *ctx, void *user), void *user,
                      ldmc_step_plan *plan);
// ldmc_plan_step of the diffusion loss's step on batch b (its allocations depend on the shapes
// only, not on the key or the values).
double ldmc_plan_diffusion_step(ldmc_device device, const ldmc_diffusion_step *step,
                                const ldmc_step_batch *b, ldmc_step_plan *plan);

// The plan of any model's training step at H x W pixels, on the CPU without and with gradient
// checkpointing: a UNet's on the latent of an autoencoder of factor f (H/f x W/f), an
// autoencoder's on the images. Returns the factor its step works at (f, or 1), or -1 with an
// error naming the sizes the model needs (or a kind of model without a training step).
int ldmc_model_plan(const ldmc_model *m, int batch, int H, int W, int f, ldmc_memory_plan *plan,
                    ldmc_err *err);
