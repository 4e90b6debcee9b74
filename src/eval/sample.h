// Sampling jobs (`ldmc sample`, and the images an evaluation run generates): a diffusion model
// ready to sample (its UNet, the autoencoder that decodes, its text encoders and tokenizer, the
// conditioner), loaded from a training config (the weights the run wrote) or from a model config
// and a weights file (an official SDXL file holds them all); and the job: prompts or classes, a
// seed per image (seed + i, so that one image is remade alone from its own seed), a sampler of
// src/pipeline/sampler.h with classifier-free guidance, batches, the base -> refiner hand-off and
// SDEdit from an image, decoded to 8-bit images (diffusers' rounding) and written as PNGs whose
// `parameters` text chunk says how they were made (the line format other tools write), plus a
// grid. Tested by tests/test_cli.sh and tests/test_eval.c.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "core/tape.h"
#include "nn/unet.h"
#include "nn/vae.h"
#include "pipeline/conditioner.h"
#include "pipeline/sampler.h"
#include "train/text_models.h"
#include "train/train_config.h"

typedef struct ldmc_sample_model_options {
    const char *weights;     // the UNet's (and by default everything's) weights; NULL: a training
                             // config's <out>/model.safetensors
    const char *vae_config;  // a model config with the autoencoder (NULL: the config's own)
    const char *vae_weights; // NULL: the training config's vae_weights, else `weights`
    const char *vocab;       // the tokenizer (NULL: the training config's text.vocab)
    const char *prediction;  // "eps" or "v" (NULL: the training config's, else eps)
    const char *uncond;      // "zeros" or "empty" (NULL: the config's; a model config: empty for
                             // a refiner (aesthetic score), zeros else, as generative-models)
    bool need_vae;           // fail without an autoencoder
} ldmc_sample_model_options;

typedef struct ldmc_sample_model {
    ldmc_train_config cfg; // a training config, or one made from the model config
    char weights[LDMC_PATH_MAX];
    ldmc_unet unet;
    bool have_vae;
    ldmc_vae vae;
    ldmc_text_models text;
    ldmc_conditioner conditioner;
    ldmc_schedule schedule;
    ldmc_prediction prediction;
    int factor; // pixels per latent (the autoencoder's)
} ldmc_sample_model;

int ldmc_sample_model_load(ldmc_sample_model *m, const char *config,
                           const ldmc_sample_model_options *o, ldmc_err *err);
void ldmc_sample_model_free(ldmc_sample_model *m);
// Moves the weights to the GPU (bf16 working copies).
void ldmc_sample_model_to_device(ldmc_sample_model *m);

typedef struct ldmc_sample_job {
    const char *const *prompts; // text models: the prompts (rows of the grid)
    const char *negative;       // text models: the negative prompt of every image (NULL: none)
    const int *classes;         // class-conditional models: the classes (rows)
    int n_rows;                 // prompts or classes; 1 for an unconditional model
    int per_row;                // images of each
    int batch;                  // images per sampler run
    uint64_t seed;              // image i (row-major) has seed + i
    int steps;
    double guidance;
    const char *sampler;                // ldmc_sampler_find
    ldmc_discretization discretization; // LDMC_SIGMAS_DEFAULT: the sampler's
    int width, height;
    ldmc_sample_model *refiner; // NULL: none
    double switch_at;           // the base's share of the schedule when refined (0.8)
    const char *init_image;     // SDEdit: NULL for pure noise
    double strength;            // SDEdit: the share of the steps run (0.3 diffusers' default)
    const char *out_dir;
    bool grid;
    bool quiet; // no progress lines
    // Sharding (an evaluation over several processes): this job makes images i with
    // i % shards == shard only, under their global names and seeds. 0 and 0 (or 1): all.
    int shard, shards;
} ldmc_sample_job;

// Runs the job on m (and its refiner) in ctx: <out_dir>/<NNNNN>-<seed>.png per image and
// grid.png (unsharded). When `images` is not NULL it receives the job's (or shard's) images
// (H, W, 3) in order as 8-bit pixels (malloc'd). Returns how many images were written, or -1.
int ldmc_sample_run(ldmc_ctx *ctx, ldmc_sample_model *m, const ldmc_sample_job *job,
                    uint8_t **images, ldmc_err *err);
