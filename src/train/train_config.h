// Training configs: the YAML a run is described by (configs/demo.yaml and the recipes), with
// command-line overrides (--set optim.lr=1e-4) applied before it is read. Every key, its default
// and its meaning: docs/training.md. Paths are relative to the config file's folder.
// Tested by tests/test_train.c.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "core/tensor.h"

#include "data/buckets.h"
#include "data/dataset.h"
#include "diffusion/diffusion.h"
#include "io/config.h"
#include "nn/model_config.h"
#include "train/optim.h"

#define LDMC_MAX_PATTERNS 16
#define LDMC_PATH_MAX 1024

typedef enum ldmc_task { LDMC_TASK_DIFFUSION, LDMC_TASK_VAE } ldmc_task;
typedef enum ldmc_nonfinite { LDMC_NONFINITE_SKIP, LDMC_NONFINITE_STOP } ldmc_nonfinite;

typedef struct ldmc_train_config {
    ldmc_task task;
    char source_path[LDMC_PATH_MAX]; // the config file itself
    ldmc_model_config model;         // the trained model (unet for diffusion, vae for vae)
    bool has_vae;                    // diffusion: the autoencoder for images and samples
    ldmc_vae_config vae;
    char vae_weights[LDMC_PATH_MAX];     // its weights (official file or diffusers folder)
    char init[LDMC_PATH_MAX];            // weights to start from ("" for a fresh initialization)
    char *new_params[LDMC_MAX_PATTERNS]; // globs allowed to be missing from init
    int n_new_params;
    char *freeze[LDMC_MAX_PATTERNS]; // globs of frozen parameters
    int n_freeze;
    // data
    bool from_cache;
    char data_path[LDMC_PATH_MAX]; // image folder, or the HDF5 latent cache
    ldmc_labels labels;
    char bucket_file[LDMC_PATH_MAX]; // a bucket list file, or "" to generate:
    int bucket_pixels, bucket_multiple;
    double bucket_max_ratio;
    int batch_size, workers, prefetch;
    double flip;
    int min_size; // leave out images with a side below this (0: keep all)
    // diffusion
    ldmc_noise_options noise;
    double cond_dropout;
    // text conditioning (a model config with text_encoders)
    char text_vocab[LDMC_PATH_MAX];   // text.vocab: the tokenizer's merges file or folder
    char text_weights[LDMC_PATH_MAX]; // text.weights: the encoders' weights ("": init's)
    bool text_uncond_empty; // text.uncond: empty (encode "", kohya, the refiner) or zeros (sgm)
    bool text_train;        // text.train: the encoders are trained too (default frozen)
    double text_lr[2];      // text.lr: each encoder's learning rate (default optim.lr)
    // optimizer
    ldmc_adamw adamw;
    ldmc_lr_schedule lr;
    double grad_clip; // 0: off
    int accumulation;
    ldmc_nonfinite nonfinite;
    // optim.fused_backward: each parameter updated during backward once its gradient is
    // complete, which then is freed: no gradient buffer (4 bytes a parameter). Needs grad_clip 0,
    // accumulation 1 and one process.
    bool fused_backward;
    double ema_decay; // 0: no EMA
    // data parallelism (docs/multigpu.md)
    bool dist_zero;        // dist.zero: ZeRO-1 (optimizer state sharded over ranks)
    double dist_bucket_mb; // dist.bucket_mb: gradient bucket size (MiB of f32)
    double dist_timeout;   // dist.timeout: seconds without a step before a rank ends the job
    // vae task
    double kl_weight;
    // run
    int64_t steps;
    uint64_t seed;
    char out[LDMC_PATH_MAX];
    int64_t checkpoint_every, log_every, sample_every;
    int keep;
    int threads;        // 0: LDMC_THREADS or all cores
    ldmc_device device; // train.device: cpu, or cuda (bf16 activations, fp32 master weights)
    bool recompute;     // train.gradient_checkpointing: blocks recomputed in backward
    bool memory_plan;   // train.memory_plan: steps replay memory plans (core/memplan.h)
    bool recompute_projections; // train.recompute_projections: transformer products made again
    // sample grids
    int sample_steps;
    double sample_guidance; // classifier-free guidance scale of the previews (1: none)
    int sample_per_class, sample_height, sample_width;
    char
        *sample_prompts[LDMC_MAX_PATTERNS]; // text models: a row each ("" none: the first captions)
    int n_sample_prompts;
    char *resolved_yaml; // the config as run, overrides applied
} ldmc_train_config;

// "diffusion" or "vae", as configs name the tasks.
const char *ldmc_task_name(ldmc_task task);
// The run's autoencoder: the model trained (task vae) or the frozen one that encodes and decodes
// (task diffusion).
const ldmc_vae_config *ldmc_train_config_vae(const ldmc_train_config *c);

// Loads `path`, applies `overrides` ("key.path=value" each), and fills `out`.
int ldmc_train_config_load(const char *path, const char *const *overrides, int n_overrides,
                           ldmc_train_config *out, ldmc_err *err);
void ldmc_train_config_free(ldmc_train_config *c);
// The run's bucket list (data.buckets: a file, or generated), every side checked to be a multiple
// of `align` (the models' total downsampling), the offending bucket named otherwise.
int ldmc_train_config_buckets(const ldmc_train_config *c, int align, ldmc_buckets *out,
                              ldmc_err *err);
