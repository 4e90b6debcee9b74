// The conditioner: a batch's conditioning as the UNet takes it (generative-models'
// GeneralConditioner): the class token of class-conditional models, the text context and the
// vector (pooled text and the Fourier-embedded size, crop, target and aesthetic scalars, in the
// config's order), with conditioning dropout in training and the unconditional branch of
// classifier-free guidance: a dropped sample's class embedding and text embeddings are zeros, its
// size conditioning is kept (sgm's ucg). The text encoders plug in here: until they exist, text
// embeddings come in computed (the benchmark's random ones).
// Tested by tests/test_pipeline.c and, through training, tests/test_train.c.
#pragma once
#include <stdint.h>

#include "core/rng.h"
#include "core/tape.h"
#include "nn/unet.h"

// What a batch says about its samples' conditioning, on the host, per sample.
typedef struct ldmc_cond_batch {
    int n;
    const int64_t *class_ids; // (n): class-conditional models
    const int32_t *c_size;    // (n, 2): the source image's (height, width)
    const int32_t *c_crop;    // (n, 2): the crop's (top, left)
    const int32_t *c_target;  // (n, 2): the (height, width) asked for
    const float *aesthetic;   // (n), or NULL for 6 (the refiner's usual sampling value)
    const float *context;     // (n, context_tokens, context_dim): text embeddings
    int context_tokens;
    const float *pooled; // (n, pooled_dim): pooled text embeddings
    const float *keep;   // (n): 1 keeps a sample's conditioning, 0 drops it; NULL keeps all
} ldmc_cond_batch;

typedef struct ldmc_conditioner {
    const ldmc_unet_config *unet;
    double dropout; // training: the probability that a sample's conditioning is dropped
} ldmc_conditioner;

// Whether the model has conditioning that dropout and guidance can drop (a class or a text).
bool ldmc_conditioner_can_drop(const ldmc_conditioner *c);
// The dropout of a training micro-batch of n: keep (n) in host memory of ctx, each 0 with
// probability c->dropout from the key's COND_DROP stream; NULL when nothing is dropped.
const float *ldmc_conditioner_dropout(ldmc_ctx *ctx, const ldmc_conditioner *c,
                                      const ldmc_step_key *key, int n);
// The UNet's conditioning for the batch, in ctx (on its device).
ldmc_unet_cond ldmc_condition(ldmc_ctx *ctx, const ldmc_conditioner *c, const ldmc_cond_batch *b);
// The batch twice over (2n samples: the n as given, then the n dropped), in host memory of ctx:
// the conditional and unconditional halves of a classifier-free-guidance batch.
ldmc_cond_batch ldmc_cond_batch_guided(ldmc_ctx *ctx, const ldmc_conditioner *c,
                                       const ldmc_cond_batch *b);
