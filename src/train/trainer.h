// The trainer: `ldmc train CONFIG`. For task `diffusion` it trains a UNet on VAE latents of
// images (encoded as they load) or of an HDF5 latent cache (`ldmc cache`), with SDXL's recipe:
// size and crop conditioning, aspect buckets, offset noise, a timestep range, conditioning
// dropout, min-SNR weighting, AdamW with warmup and clipping, gradient accumulation, EMA. For
// task `vae` it trains the autoencoder (L1 reconstruction + KL). Every step is reproducible from
// (seed, step): a resumed run continues bit for bit. It logs a progress line, metrics.jsonl and
// TensorBoard events, writes sample grids and checkpoints (src/train/checkpoint.h), and draws the
// loss curve at the end. Tested by tests/test_train.c; docs/training.md.
#pragma once
#include "core/error.h"
#include "train/train_config.h"

typedef struct ldmc_train_result {
    int64_t steps;         // steps done when the run ended
    double first_loss;     // mean loss of the first 10% of this run's steps
    double last_loss;      // mean loss of the last 10%
    int64_t skipped_steps; // non-finite steps skipped
    int skipped_files;     // files skipped at scan time (not images, unreadable headers)
    int64_t failed_files;  // files that failed to decode in training, each counted once
    int64_t left_out;      // times a sample was left out of its batch for that
    int interrupted;       // SIGINT or SIGTERM when a signal ended the run early (saved), or 0
    char last_checkpoint[4200];
    char last_grid[4200];
} ldmc_train_result;

// resume: NULL for a new run, "latest", or a checkpoint directory. Stops after cfg->steps, or
// after the current step on SIGINT/SIGTERM (returning 0 with result->interrupted set, after
// saving; a second signal kills the process). `ldmc train` exits 128 + the signal then.
int ldmc_train(const ldmc_train_config *cfg, const char *resume, ldmc_train_result *result,
               ldmc_err *err);

// Times `reps` training steps (after one warm-up) of the config's models on a synthetic batch of
// its batch size at height x width, random weights: everything of a step but the data loader
// (for the diffusion task: the VAE encode, the UNet forward and backward, clipping, AdamW, EMA).
// ms[r] receives each step's milliseconds. For `ldmc bench step`.
int ldmc_train_bench(const ldmc_train_config *cfg, int height, int width, int reps, double *ms,
                     ldmc_err *err);
