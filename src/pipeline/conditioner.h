// The conditioner: a batch's conditioning as the UNet takes it (generative-models'
// GeneralConditioner): the class token of class-conditional models, the text context (the text
// encoders' contexts side by side: CLIP-L 768 | bigG 1280 for SDXL base) and the vector (pooled
// text and the Fourier-embedded size, crop, target and aesthetic scalars, in the config's order),
// with conditioning dropout in training and the unconditional branch of classifier-free guidance:
// a dropped sample's class embedding and text embeddings are zeros, its size conditioning is kept
// (sgm's ucg); or, with uncond_empty, its caption is "" and encoded (kohya's caption dropout,
// the refiner's unconditional branch in sgm); or, sampling, a negative prompt is encoded there.
// Captions go through the tokenizer and the encoders here; text embeddings may also come in
// computed (the benchmark's random ones). Tested by tests/test_pipeline.c and, through training,
// tests/test_train.c.
#pragma once
#include <stdint.h>

#include "core/rng.h"
#include "core/tape.h"
#include "nn/text_encoder.h"
#include "nn/unet.h"
#include "text/tokenizer.h"

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
    const float *pooled;         // (n, pooled_dim): pooled text embeddings
    const char *const *captions; // (n): text models without context; a NULL caption is ""
    const float *keep;           // (n): 1 keeps a sample's conditioning, 0 drops it; NULL keeps all
    // (n) sampling with guidance, text models: each sample's negative prompt, encoded as the
    // unconditional branch instead of the dropped conditioning (zeros or ""); NULL: none
    const char *const *negative;
} ldmc_cond_batch;

typedef struct ldmc_conditioner {
    const ldmc_unet_config *unet;
    double dropout; // training: the probability that a sample's conditioning is dropped
    // text models: the encoders (in the conditioner's order) and their tokenizer
    int n_text;
    const ldmc_text_encoder *text[LDMC_MAX_TEXT_ENCODERS];
    const ldmc_tokenizer *tokenizer;
    bool uncond_empty; // a dropped caption is "" encoded, not zeroed embeddings
    // uncond_empty with embeddings computed beforehand (a latent cache): the empty caption's
    // context (context_tokens, context_dim) and pooled text (pooled_dim), host memory
    const float *empty_context, *empty_pooled;
} ldmc_conditioner;

// The encoders on n captions (NULL entries are ""; with `empty`, those whose empty[i] is 0 are
// "" too): *context (n, T, the encoders' widths side by side) and *pooled (n, P) or NULL.
void ldmc_conditioner_encode(ldmc_ctx *ctx, const ldmc_conditioner *c, int n,
                             const char *const *captions, const float *empty, ldmc_tensor **context,
                             ldmc_tensor **pooled);

// The token ids of n captions for text encoder `e` of the conditioner, framed as its tokenizer
// convention says: (n, context_length) in host memory of ctx.
int32_t *ldmc_conditioner_tokens(ldmc_ctx *ctx, const ldmc_conditioner *c, int e,
                                 const char *const *captions, const float *keep, int n);

// Whether the model has conditioning that dropout and guidance can drop (a class or a text).
bool ldmc_conditioner_can_drop(const ldmc_conditioner *c);
// The dropout of a training micro-batch of n: keep (n) in host memory of ctx, each 0 with
// probability c->dropout from the key's COND_DROP stream; NULL when nothing is dropped.
const float *ldmc_conditioner_dropout(ldmc_ctx *ctx, const ldmc_conditioner *c,
                                      const ldmc_step_key *key, int n);
// The UNet's conditioning for the batch, in ctx (on its device).
ldmc_unet_cond ldmc_condition(ldmc_ctx *ctx, const ldmc_conditioner *c, const ldmc_cond_batch *b);
// The batch twice over (2n samples: the n as given, then the n dropped), in host memory of ctx:
// the conditional and unconditional halves of a classifier-free-guidance batch; the
// unconditional half's aesthetic score is 2.5 (the refiner's negative score).
ldmc_cond_batch ldmc_cond_batch_guided(ldmc_ctx *ctx, const ldmc_conditioner *c,
                                       const ldmc_cond_batch *b);
