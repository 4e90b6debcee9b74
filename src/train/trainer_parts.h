// The trainer's parts, shared by the files that make it up (not a public interface):
//   trainer.c     setup and the loop (metrics, preview and checkpoint cadence)
//   tasks.c       the task table: what differs between training a UNet and a VAE
//   train_data.c  the data: a dataset or a latent cache, buckets, the loader
//   run_dir.c     the run's folder: lock, resume, checkpoints, the final weights
//   train_log.c   metrics.jsonl, TensorBoard, the progress line, the loss curve
//   preview.c     sample grids
//   bench.c       `ldmc bench step`: the step of a training config on a synthetic batch
// The step itself is the pipeline's (src/pipeline/loss.h).
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/model.h"
#include "core/tape.h"
#include "data/cache.h"
#include "data/loader.h"
#include "diffusion/schedule.h"
#include "io/tensorboard.h"
#include "nn/unet.h"
#include "nn/vae.h"
#include "pipeline/conditioner.h"
#include "train/checkpoint.h"
#include "train/dist.h"
#include "train/text_models.h"
#include "train/train_config.h"

typedef struct trainer trainer;

// A grid's content: rows x cols images of (H, W, 3) in [-1, 1], row labels, a title.
typedef struct train_grid {
    int rows, cols, H, W;
    float *images; // malloc'd
    const char *labels[16];
    char label_text[16][64];
    char title[160];
    const char *tag; // the TensorBoard tag
} train_grid;

// What differs between the tasks a run can train (train_config.h's ldmc_task).
typedef struct train_task {
    const char *loss_title; // the loss curve's
    // The models: T->model is the one trained (its table has every role the step needs);
    // anything else it needs (a frozen autoencoder) is loaded. Sets T->align.
    int (*setup_models)(trainer *T, ldmc_err *err);
    // The data against the models (a latent cache's channels, the classes).
    int (*check_data)(trainer *T, ldmc_err *err);
    // Forward and backward of one micro-batch on ctx (T->ctx, or a dry run's that records its
    // memory plan): the pipeline's loss step, its gradients times grad_scale; returns the loss.
    double (*micro_step)(trainer *T, ldmc_ctx *ctx, const ldmc_batch *b, const ldmc_step_key *key,
                         double grad_scale);
    // The preview of the current weights: samples, or the last batch's reconstructions.
    // grid->images NULL (and 0 returned) when there is nothing to show.
    int (*preview)(trainer *T, const ldmc_batch *last, train_grid *grid, ldmc_err *err);
    // Moves what the task keeps besides the trained table to the GPU.
    void (*to_device)(trainer *T);
    bool preview_ema; // the preview samples with the EMA weights (when EMA is on)
} train_task;

const train_task *train_task_of(ldmc_task task);

typedef struct train_data {
    ldmc_dataset dataset;
    bool have_dataset;
    ldmc_cache cache;
    bool have_cache;
    ldmc_buckets buckets;
    ldmc_loader *loader;
    int sample_h, sample_w; // the previews' size in pixels
} train_data;

typedef struct run_dir {
    int lock_fd;  // <out>/lock, held while the run lasts
    bool locked;  // this run holds the lock
    bool created; // this run made the folder (removed again if it is refused before a step)
    bool resumed; // the run continues from a checkpoint
} run_dir;

typedef struct train_log {
    FILE *metrics; // <out>/metrics.jsonl
    ldmc_tensorboard tb;
    bool have_tb;
    int64_t first_step;
    double *losses;                        // this run's steps' losses (NaN when skipped)
    double t_start, t_window, wait_window; // the progress line's window
    int64_t images_window;
    double loss_window;
    int loss_window_n;
} train_log;

// The micro-step's memory plans (core/memplan.h), one per shape of micro-batch met (trainer.c).
typedef struct step_plan_entry step_plan_entry;
typedef struct step_plans {
    step_plan_entry *items;
    int n;
    uint64_t clock; // the last use's stamp (the least recently used plan goes first)
} step_plans;

struct trainer {
    const ldmc_train_config *cfg;
    const train_task *task;
    bool bench; // `ldmc bench step`: random weights, no files
    // models
    ldmc_unet unet; // diffusion: the model trained
    ldmc_vae vae;   // vae task: the model trained; diffusion: the frozen autoencoder
    bool have_unet, have_vae;
    ldmc_text_models text; // text models: the tokenizer and frozen encoders of the conditioner
    ldmc_model text_models[LDMC_MAX_TEXT_ENCODERS]; // their descriptors' views (checkpoints)
    bool vae_weights; // diffusion: the autoencoder's weights are loaded (it can encode, decode)
    ldmc_model model; // the model trained
    ldmc_schedule schedule;
    ldmc_conditioner conditioner;
    int align; // image sides must be multiples of this (the models' downsampling)
    train_data data;
    // the step: one context on the training device (the step, the frozen encoder, previews)
    ldmc_ctx ctx;
    step_plans plans;
    ldmc_train_state st;
    run_dir dir;
    train_log log;
    // data parallelism (dist.h): the group, the gradient reduction over the trained tables
    const ldmc_dist *dist;
    bool lead;            // rank 0: logs, previews, the run's folder and files
    ldmc_grad_sync *sync; // NULL on one rank
    bool zero;            // ZeRO-1: the trained tables' optimizer state is sharded
    // optim.fused_backward: the step's learning rate and update count, for the updates during
    // backward, and Σ g² of each trained parameter that they write (one array per trained table,
    // in GPU memory for a table on the GPU)
    struct {
        double lr;
        int64_t updates;
        double *sums[1 + LDMC_MAX_TEXT_ENCODERS];
        bool on_device[1 + LDMC_MAX_TEXT_ENCODERS];
    } fused;
};

// trainer.c: what a run and a benchmark start with, and end with.
void trainer_begin(trainer *T, const ldmc_train_config *cfg, bool bench);
// The task's models, and the trained table with every role (from the seed, then the init file;
// a benchmark's stays random).
int trainer_setup_models(trainer *T, ldmc_err *err);
int trainer_setup_device(trainer *T, ldmc_err *err);
void trainer_free(trainer *T);
// The update after a step's micro-batches: clipping, AdamW (update `updates`, from 1), EMA; of
// the trained model and, with text.train, of the text encoders at their learning rates. With
// optim.fused_backward, backward did the AdamW part: the EMA only.
void trainer_update(trainer *T, double norm, double lr, int64_t updates);
// fused.c, optim.fused_backward: the trained tables updated during backward and the arrays of
// their parameters' Σ g² where the tables are (again after trainer_setup_device); before a
// step's micro-batch, the learning rate and update count its updates take (a no-op without
// fused_backward); the sum of those Σ g² after backward, in table order; the arrays freed.
void trainer_fused_setup(trainer *T);
void trainer_fused_begin(trainer *T, double lr, int64_t updates);
double trainer_fused_sum_squares(const trainer *T);
void trainer_fused_free(trainer *T);
// One micro-batch's forward and backward (the task's micro_step) on T->ctx, replaying the memory
// plan of the batch's shape (made the first time the shape comes) unless train.memory_plan is off.
double trainer_micro_step(trainer *T, const ldmc_batch *b, const ldmc_step_key *key,
                          double grad_scale);
void trainer_plans_free(trainer *T); // (trainer_free)
// How many text encoders are trained (0 unless text.train), their gradients zeroed with the
// model's, and the norm of every trained gradient together (with optim.fused_backward, from the
// sums its updates during backward wrote).
int trainer_text_trained(const trainer *T);
void trainer_zero_grad(trainer *T);
double trainer_grad_norm(const trainer *T);
// The trained tables: the model's, then the trained text encoders'; returns how many.
int trainer_tables(trainer *T, ldmc_params **tables);
// Swaps the weights and the EMA of the previewed model on every rank (all must call it).
void trainer_swap_ema(trainer *T);

// train_data.c: the loader at this rank's part of the run's position (a resume with another
// global batch continues at the same point of the epoch), its counts printed per rank.
int train_data_open(trainer *T, ldmc_err *err);
void train_data_close(train_data *d);

// run_dir.c. `resume`: NULL, "latest" or a checkpoint folder.
int run_dir_open(run_dir *d, const ldmc_train_config *cfg, bool resuming, ldmc_err *err);
int run_dir_resume(trainer *T, const char *resume, ldmc_err *err);
int run_dir_save(trainer *T, char *saved, ldmc_err *err);
int run_dir_export(trainer *T, ldmc_err *err);
// Releases the lock; removes the folder when this run made it, held its lock and was `refused`
// (no step taken).
void run_dir_close(run_dir *d, const char *out, bool refused);

// train_log.c. `files`: metrics.jsonl and TensorBoard are written (rank 0's log); otherwise
// only the losses are kept.
int train_log_open(train_log *log, const char *out, int64_t step, int64_t steps_left, bool files,
                   ldmc_err *err);
// The clock of the progress line starts (the loader has waited `waited` seconds so far).
void train_log_start(train_log *log, double waited);
// One step's line of metrics.jsonl and its TensorBoard scalars; loss NaN for a skipped step.
void train_log_step(train_log *log, const ldmc_train_state *st, double loss, double lr,
                    double norm);
// The progress line over the steps since the last one.
void train_log_progress(train_log *log, const ldmc_train_state *st, int64_t steps, double lr,
                        double waited);
// metrics.jsonl flushed to the disk (before a checkpoint that holds its steps).
int train_log_sync(train_log *log, const char *out, ldmc_err *err);
// The mean loss of the first and last tenths of this run's `done` steps, and with `curve` the
// loss curve of the whole run (resumed parts included) as <out>/loss_curve.png.
void train_log_finish(train_log *log, const char *out, const char *title, int64_t done, bool curve,
                      double *first_loss, double *last_loss);
void train_log_close(train_log *log);
// "1h05m" or "3m07s".
void train_format_duration(double seconds, char *out, size_t size);
double train_now(void);

// preview.c: the grid of step st.step as <out>/samples/step-N.png and a TensorBoard image; the
// path in path_out ("" when the task has nothing to show).
int train_preview(trainer *T, const ldmc_batch *last, char *path_out, ldmc_err *err);
