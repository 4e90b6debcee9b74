// The trainer (see trainer.h): setup and the loop; its parts are listed in trainer_parts.h.
// Tested by tests/test_train.c.
#include "train/trainer.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/threads.h"
#include "io/model_files.h"
#include "ops/param_ops.h"
#include "train/optim.h"
#include "train/trainer_parts.h"

#define DATA_ARENA ((size_t)64 << 30) // address space; only what a step touches is committed
#define META_ARENA ((size_t)2 << 30)

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) { interrupted = sig; }
// Whether the run stops after this step: a signal here, or (several ranks) on any rank, as the
// ranks agreed at the end of the step.
static bool stop_agreed;
static bool stopping(const trainer *T) { return T->sync ? stop_agreed : interrupted != 0; }

// ---- setup --------------------------------------------------------------------------------------

void trainer_begin(trainer *T, const ldmc_train_config *cfg, bool bench) {
    *T = (trainer){.cfg = cfg, .task = train_task_of(cfg->task), .bench = bench};
    T->dist = ldmc_dist_get();
    T->lead = T->dist->rank == 0;
    T->zero = cfg->dist_zero && T->dist->world > 1 && !bench;
    T->dir.lock_fd = -1;
    T->st.seed = cfg->seed;
    if (cfg->threads > 0) ldmc_threads_set(cfg->threads);
    ldmc_schedule_sdxl(&T->schedule);
}

// The trained model's table: every role the step needs, the frozen parameters flagged, the
// weights initialized from the seed and then from the init file, the EMA starting from them.
static int setup_trained(trainer *T, ldmc_err *err) {
    const ldmc_train_config *cfg = T->cfg;
    ldmc_params *p = T->model.params;
    ldmc_params_alloc(p, LDMC_ROLE_WEIGHTS);
    for (int i = 0; i < cfg->n_freeze; i++)
        if (ldmc_params_flag_matching(p, cfg->freeze[i], LDMC_PARAM_FROZEN, true) == 0)
            return LDMC_ERR(err, "%s: freeze pattern '%s' matches no parameter", cfg->source_path,
                            cfg->freeze[i]);
    if (ldmc_params_count(p, true) == 0)
        return LDMC_ERR(err, "%s: every parameter is frozen", cfg->source_path);
    ldmc_dist_shard(p, T->zero);
    if (!cfg->fused_backward) ldmc_params_alloc(p, LDMC_ROLE_GRAD); // (else trainer_setup_models)
    ldmc_params_alloc(p, LDMC_ROLE_ADAM_M);
    ldmc_params_alloc(p, LDMC_ROLE_ADAM_V);
    if (cfg->ema_decay > 0) ldmc_params_alloc(p, LDMC_ROLE_EMA);
    ldmc_params_init(p, cfg->seed);
    if (cfg->init[0] && !T->bench) {
        int n_new = 0;
        ldmc_load_options init = {.may_be_new = (const char *const *)cfg->new_params,
                                  .n_may_be_new = cfg->n_new_params,
                                  .n_new = &n_new};
        if (ldmc_load_model(&T->model, cfg->init, &init, err) != 0) return -1;
        printf("init: %s%s", cfg->init, n_new ? "" : "\n");
        if (n_new) printf(" (%d new parameters keep their fresh initialization)\n", n_new);
    }
    if (cfg->ema_decay > 0) ldmc_params_ema_reset(p);
    if (!T->bench)
        printf("model: %s, %.2fM parameters, %.2fM trained\n", T->model.desc->name,
               ldmc_params_count(p, false) / 1e6, ldmc_params_count(p, true) / 1e6);
    for (int i = 0; i < trainer_text_trained(T) && !T->bench; i++)
        printf("text encoder %d: %.2fM parameters trained, learning rate %g\n", i,
               ldmc_params_count(&T->text.enc[i].params, true) / 1e6, cfg->text_lr[i]);
    return 0;
}

int trainer_setup_models(trainer *T, ldmc_err *err) {
    if (T->task->setup_models(T, err) != 0 || setup_trained(T, err) != 0) return -1;
    if (T->cfg->fused_backward) trainer_fused_setup(T);
    return 0;
}

// The step's context on the training device. A GPU run moves the trained table (bf16 working
// weights, fp32 master, gradients, Adam m and v, EMA) and the frozen autoencoder there first,
// and gives the activation arena the free memory but a headroom (ldmc_ctx_init_gpu_free); the
// host buffers stay the checkpoint side (ldmc_params_to_host before a save).
int trainer_setup_device(trainer *T, ldmc_err *err) {
    const ldmc_train_config *cfg = T->cfg;
    if (cfg->device == LDMC_CPU) {
        ldmc_ctx_init(&T->ctx, DATA_ARENA, META_ARENA);
        return 0;
    }
    if (ldmc_gpu_available() && ldmc_dist_gpu(err) != 0) return -1; // the rank's device, NCCL
    if (!ldmc_gpu_available()) // why: no CUDA in the build, no driver, an old driver, no device
        return LDMC_ERR(err, "%s: train.device is cuda, but no GPU: %s", cfg->source_path,
                        ldmc_gpu_unavailable_reason());
    ldmc_params_to_device(T->model.params);
    T->task->to_device(T);
    if (cfg->fused_backward) trainer_fused_setup(T); // the sums where the tables now are
    size_t free_b;
    if (ldmc_ctx_init_gpu_free(&T->ctx, META_ARENA, &free_b) != 0)
        return LDMC_ERR(err,
                        "%s: %.1f GiB of GPU memory left after the weights: too little to train",
                        cfg->source_path, (double)free_b / (1 << 30));
    size_t used, total;
    ldmc_gpu_memory(&used, &total);
    if (!T->bench)
        printf("device: %s, %.1f GiB for activations (%.1f GiB used before them: weights, "
               "optimizer, libraries)\n",
               ldmc_gpu_name(), (double)T->ctx.data.capacity / (1 << 30),
               (double)(used - T->ctx.data.capacity) / (1 << 30));
    return 0;
}

int trainer_text_trained(const trainer *T) { return T->cfg->text_train ? T->text.n : 0; }

int trainer_tables(trainer *T, ldmc_params **tables) {
    int n = 0;
    tables[n++] = T->model.params;
    for (int i = 0; i < trainer_text_trained(T); i++)
        tables[n++] = &T->text.enc[i].params;
    return n;
}

void trainer_swap_ema(trainer *T) {
    ldmc_params_ema_swap(T->model.params);
    if (T->sync) ldmc_grad_sync_gather_weights(T->sync); // (ZeRO: each rank swapped its range)
}

void trainer_zero_grad(trainer *T) {
    ldmc_params_zero_grad(T->model.params);
    for (int i = 0; i < trainer_text_trained(T); i++)
        ldmc_params_zero_grad(&T->text.enc[i].params);
}

double trainer_grad_norm(const trainer *T) {
    if (T->cfg->fused_backward) return sqrt(trainer_fused_sum_squares(T));
    double n = ldmc_grad_norm(T->model.params), sum = n * n;
    for (int i = 0; i < trainer_text_trained(T); i++) {
        double e = ldmc_grad_norm(&T->text.enc[i].params);
        sum += e * e;
    }
    return sqrt(sum);
}

void trainer_update(trainer *T, double norm, double lr, int64_t updates) {
    const ldmc_train_config *cfg = T->cfg;
    if (cfg->fused_backward) { // AdamW ran during backward
        ldmc_params *tables[1 + LDMC_MAX_TEXT_ENCODERS];
        int n = trainer_tables(T, tables);
        for (int t = 0; t < n && cfg->ema_decay > 0; t++)
            ldmc_params_ema_update(tables[t], ldmc_ema_decay(cfg->ema_decay, updates));
        return;
    }
    ldmc_optim_update(T->model.params, &cfg->adamw, cfg->grad_clip, cfg->ema_decay, norm, lr,
                      updates);
    // the encoders: the same clipping (by the norm of every gradient together) and schedule,
    // scaled to their own learning rates
    for (int i = 0; i < trainer_text_trained(T); i++) {
        double scale = cfg->adamw.lr > 0 ? cfg->text_lr[i] / cfg->adamw.lr : 0;
        ldmc_optim_update(&T->text.enc[i].params, &cfg->adamw, cfg->grad_clip, cfg->ema_decay, norm,
                          lr * scale, updates);
    }
}

void trainer_free(trainer *T) {
    train_data_close(&T->data);
    if (T->have_unet) ldmc_unet_free(&T->unet);
    if (T->have_vae) ldmc_vae_free(&T->vae);
    ldmc_text_models_free(&T->text);
    train_log_close(&T->log);
    ldmc_ctx_free(&T->ctx);
    trainer_plans_free(T);
    ldmc_grad_sync_free(T->sync);
    T->sync = NULL;
    trainer_fused_free(T);
}

// The gradient reduction over the trained tables, and the watchdog (a group of several ranks).
static void setup_dist(trainer *T) {
    const ldmc_dist *d = T->dist;
    if (d->world == 1) return;
    ldmc_params *tables[1 + LDMC_MAX_TEXT_ENCODERS];
    int n = trainer_tables(T, tables);
    ldmc_grad_sync_options o = {.bucket_mb = T->cfg->dist_bucket_mb, .zero = T->zero};
    T->sync = ldmc_grad_sync_new(tables, n, &o);
    double largest;
    int buckets = ldmc_grad_sync_buckets(T->sync, &largest);
    printf("data parallel: %d ranks (%s), global batch %d x %d = %d, gradients in %d buckets (up "
           "to %.1f MiB) reduced %s, %s, watchdog %g s\n",
           d->world, d->launcher, d->world, T->cfg->batch_size, d->world * T->cfg->batch_size,
           buckets, largest, d->nccl ? "by NCCL" : "by MPI",
           T->zero ? "ZeRO-1 (optimizer state sharded)" : "optimizer state replicated",
           T->cfg->dist_timeout);
    ldmc_dist_watchdog_start(T->cfg->dist_timeout);
}

// Everything before the first step: the folder, the models, a resume, the data, the device, the
// logs. Returns 1 when the run is at train.steps already.
static int setup(trainer *T, const char *resume, ldmc_err *err) {
    const ldmc_train_config *cfg = T->cfg;
    if (cfg->fused_backward && T->dist->world > 1)
        return LDMC_ERR(err,
                        "%s: optim.fused_backward runs on one process: under data parallelism "
                        "a gradient is reduced over the ranks before its update (%d ranks here)",
                        cfg->source_path, T->dist->world);
    // rank 0 holds the folder (its lock, logs, checkpoints' shared files); the others wait for it
    int rc = T->lead ? run_dir_open(&T->dir, cfg, resume != NULL, err) : 0;
    if (ldmc_dist_agree(rc, cfg->out, err) != 0 || trainer_setup_models(T, err) != 0) return -1;
    if (resume && run_dir_resume(T, resume, err) != 0) return -1;
    if (T->st.step >= cfg->steps) {
        printf("the run is at step %lld already, train.steps is %lld: nothing to do (raise "
               "train.steps to train on)\n",
               (long long)T->st.step, (long long)cfg->steps);
        return 1;
    }
    if (train_data_open(T, err) != 0 || trainer_setup_device(T, err) != 0 ||
        train_log_open(&T->log, cfg->out, T->st.step, cfg->steps - T->st.step, T->lead, err) != 0)
        return -1;
    setup_dist(T);
    printf("training: steps %lld to %lld, batch %d x %d accumulation%s, %d threads, out %s\n",
           (long long)T->st.step + 1, (long long)cfg->steps, cfg->batch_size, cfg->accumulation,
           T->dist->world > 1 ? " per rank" : "", ldmc_threads_get(), cfg->out);
    fflush(stdout);
    return 0;
}

// ---- the loop -----------------------------------------------------------------------------------

// The next global batch with images in it (of which this rank's part, maybe empty, and the
// images of all ranks in *n_global): a batch whose every image failed to decode (named in the
// log) is skipped on every rank, unless a whole epoch of them comes in a row.
static const ldmc_batch *next_batch(trainer *T, int64_t *n_global, ldmc_err *err) {
    ldmc_loader *loader = T->data.loader;
    int64_t per_epoch = ldmc_batch_plan_steps_per_epoch(ldmc_loader_batch_plan(loader));
    for (int64_t empty = 0;; empty++) {
        const ldmc_batch *b = ldmc_loader_next(loader);
        T->st.batches++;
        for (int k = 0; k < b->n_new_failures; k++) // (the other ranks' output goes to stderr)
            fprintf(T->lead ? stdout : stderr, "  left out: %s\n", b->new_failures[k]);
        *n_global = b->n;
        ldmc_dist_sum_i64(n_global, 1);
        if (*n_global > 0) return b;
        if (empty >= per_epoch) {
            LDMC_ERR(err, "%s: no image of a whole epoch could be decoded", T->cfg->data_path);
            return NULL;
        }
    }
}

// One optimizer step: the micro-batches' gradients, then clipping, AdamW, EMA (or a skip when
// something was not finite). Returns the mean loss (NaN for a skipped step).
static int train_step(trainer *T, const ldmc_batch **last, double *loss_out, ldmc_err *err) {
    const ldmc_train_config *cfg = T->cfg;
    const int world = T->dist->world;
    ldmc_dist_test_fault(T->st.step + 1);
    trainer_zero_grad(T);
    const double lr = ldmc_lr_at(&cfg->lr, T->st.step);
    trainer_fused_begin(T, lr, T->st.step + 1 - T->st.skipped_steps);
    double loss = 0; // this rank's part of the step's mean loss
    bool finite = true;
    for (int micro = 0; micro < cfg->accumulation; micro++) {
        int64_t n_global;
        const ldmc_batch *b = next_batch(T, &n_global, err);
        if (!b) return -1;
        ldmc_step_key key = {
            cfg->seed, (uint32_t)T->st.step, (uint32_t)T->dist->rank, (uint32_t)micro, b->row,
            b->total};
        // each rank's gradients weighted by its share of the global micro-batch; the last
        // micro-batch's reduced bucket by bucket as backward finishes them
        double share = (double)b->n / (double)n_global;
        if (T->sync && micro == cfg->accumulation - 1)
            T->ctx.backward_hook = ldmc_grad_sync_hook(T->sync);
        double l = b->n > 0 ? trainer_micro_step(T, b, &key, share / cfg->accumulation) : 0;
        T->ctx.backward_hook = NULL;
        finite = finite && isfinite(l);
        loss += world == 1 ? l : l * share;
        T->st.images += n_global;
        T->log.images_window += n_global;
        *last = b;
    }
    loss /= cfg->accumulation;
    if (T->sync) {
        ldmc_grad_sync_finish(T->sync);
        // the ranks agree: the mean loss, whether anything was not finite, a stop signal
        double agreed[3] = {finite ? loss : 0, !finite, interrupted != 0};
        ldmc_dist_sum_f64(agreed, 3);
        loss = agreed[1] > 0 ? NAN : agreed[0];
        finite = agreed[1] == 0;
        stop_agreed = agreed[2] > 0;
        if (stop_agreed && !interrupted) interrupted = SIGTERM;
    }
    double norm = T->sync ? sqrt(ldmc_grad_sync_sum_squares(T->sync)) : trainer_grad_norm(T);
    finite = finite && isfinite(norm);
    if (!finite) {
        T->st.skipped_steps++;
        const char *what = isfinite(loss) ? "gradient" : "loss";
        if (cfg->nonfinite == LDMC_NONFINITE_STOP)
            return LDMC_ERR(err,
                            "step %lld: non-finite %s (loss %g, gradient norm %g); stopping as "
                            "optim.nonfinite says (skip would skip the step)",
                            (long long)T->st.step + 1, what, loss, norm);
        if (cfg->fused_backward && isfinite(loss)) // (a non-finite loss skips the backward)
            printf("step %lld: non-finite gradient: the parameters whose gradient is not finite "
                   "kept their values, the others were updated during backward "
                   "(optim.fused_backward); no EMA update (%lld such steps so far)\n",
                   (long long)T->st.step + 1, (long long)T->st.skipped_steps);
        else
            printf("step %lld: non-finite %s, step skipped (%lld so far)\n",
                   (long long)T->st.step + 1, what, (long long)T->st.skipped_steps);
    } else {
        trainer_update(T, norm, lr, T->st.step + 1 - T->st.skipped_steps);
        if (T->sync) ldmc_grad_sync_gather_weights(T->sync); // ZeRO: every rank's range
    }
    T->st.step++;
    ldmc_dist_heartbeat();
    *loss_out = finite ? loss : NAN;
    train_log_step(&T->log, &T->st, *loss_out, lr, norm);
    return 0;
}

// The preview of this step, by rank 0 (every rank swaps in the EMA weights when the task
// previews them); one that cannot be written is a warning: the checkpoint matters more.
static void preview(trainer *T, const ldmc_batch *last, ldmc_train_result *result) {
    ldmc_err err = {0};
    bool swap = T->task->preview_ema && T->cfg->ema_decay > 0;
    ldmc_dist_watchdog_arm(false);
    if (swap) trainer_swap_ema(T);
    if (!T->lead) {
    } else if (train_preview(T, last, result->last_grid, &err) != 0) {
        result->last_grid[0] = '\0';
        printf("warning: step %lld: no sample grid: %s (training goes on)\n", (long long)T->st.step,
               err.message);
    } else if (result->last_grid[0]) {
        printf("samples: %s\n", result->last_grid);
    }
    if (swap) trainer_swap_ema(T);
    ldmc_dist_barrier(); // (the other ranks wait here, unwatched, for rank 0's preview)
    ldmc_dist_watchdog_arm(true);
}

static int loop(trainer *T, ldmc_train_result *result, ldmc_err *err) {
    const ldmc_train_config *cfg = T->cfg;
    const ldmc_batch *last = NULL;
    int64_t last_saved = -1;
    train_log_start(&T->log, ldmc_loader_wait_seconds(T->data.loader));
    int rc = 0;
    while (rc == 0 && T->st.step < cfg->steps && !stopping(T)) {
        double loss;
        rc = train_step(T, &last, &loss, err);
        if (rc != 0) break;
        bool stop = stopping(T), final = T->st.step == cfg->steps || stop;
        if (T->lead && (T->st.step % cfg->log_every == 0 || final))
            train_log_progress(&T->log, &T->st, cfg->steps, ldmc_lr_at(&cfg->lr, T->st.step - 1),
                               ldmc_loader_wait_seconds(T->data.loader));
        // (an interrupted run saves its checkpoint at once, without a preview)
        if (!stop && (T->st.step % cfg->sample_every == 0 || T->st.step == cfg->steps))
            preview(T, last, result);
        if (T->st.step % cfg->checkpoint_every == 0 || final) {
            rc = run_dir_save(T, result->last_checkpoint, err);
            if (rc == 0)
                printf("checkpoint: %s\n", result->last_checkpoint), last_saved = T->st.step;
        }
    }
    if (rc == 0 && T->st.step > T->log.first_step && last_saved != T->st.step)
        rc = run_dir_save(T, result->last_checkpoint, err);
    if (rc == 0 && T->st.step == cfg->steps && T->st.step > T->log.first_step) {
        rc = run_dir_export(T, err);
        if (rc == 0)
            printf("weights: %s/model.safetensors%s\n", cfg->out,
                   cfg->ema_decay > 0 ? " (EMA)" : "");
    }
    return rc;
}

// The last lines: what was done, how the loss went, what failed to decode, an interruption.
static void report(const trainer *T, const ldmc_train_result *r, int64_t done) {
    char took[32], failures[128] = "none";
    train_format_duration(train_now() - T->log.t_start, took, sizeof took);
    if (r->failed_files)
        snprintf(failures, sizeof failures, "%lld file%s, left out %lld times (named above)",
                 (long long)r->failed_files, r->failed_files > 1 ? "s" : "",
                 (long long)r->left_out);
    printf("%s: %lld steps in %s; mean loss of the first 10%% %.4f, of the last 10%% %.4f; "
           "%lld skipped; decode failures: %s\n",
           r->interrupted ? "stopped" : "done", (long long)done, took, r->first_loss, r->last_loss,
           (long long)T->st.skipped_steps, failures);
    if (r->interrupted)
        printf("interrupted (%s) at step %lld of %lld: checkpoint saved; `--resume latest` "
               "continues\n",
               r->interrupted == SIGINT    ? "SIGINT"
               : r->interrupted == SIGUSR1 ? "SIGUSR1"
                                           : "SIGTERM",
               (long long)T->st.step, (long long)T->cfg->steps);
}

int ldmc_train(const ldmc_train_config *cfg, const char *resume, ldmc_train_result *result,
               ldmc_err *err) {
    trainer T_, *T = &T_;
    trainer_begin(T, cfg, false);
    *result = (ldmc_train_result){.first_loss = NAN, .last_loss = NAN};
    int rc = setup(T, resume, err);
    if (rc != 0) { // refused (a run refused before its first step leaves no folder it made), or
                   // nothing to do
        result->steps = T->st.step, result->skipped_steps = T->st.skipped_steps;
        trainer_free(T);
        run_dir_close(&T->dir, cfg->out, rc < 0);
        return rc < 0 ? -1 : 0;
    }
    interrupted = 0, stop_agreed = false;
    // The first SIGINT, SIGTERM or SIGUSR1 (SLURM's warning before pre-emption or the time limit,
    // sbatch --signal) ends the run after the current step, with a checkpoint; the handler then
    // falls back to the default, so a second one stops the process at once.
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESETHAND}, old[3];
    const int signals[3] = {SIGINT, SIGTERM, SIGUSR1};
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 3; i++)
        sigaction(signals[i], &sa, &old[i]);
    rc = loop(T, result, err);
    for (int i = 0; i < 3; i++)
        sigaction(signals[i], &old[i], NULL);
    ldmc_dist_watchdog_stop();
    if (interrupted && T->st.step < cfg->steps) result->interrupted = interrupted;
    int64_t done = T->st.step - T->log.first_step;
    train_log_finish(&T->log, cfg->out, T->task->loss_title, done, rc == 0, &result->first_loss,
                     &result->last_loss);
    result->steps = T->st.step;
    result->skipped_steps = T->st.skipped_steps;
    result->skipped_files = T->data.have_dataset ? T->data.dataset.skipped : 0;
    int64_t failures[2] = {ldmc_loader_failed_files(T->data.loader),
                           ldmc_loader_left_out(T->data.loader)};
    if (rc == 0) ldmc_dist_sum_i64(failures, 2); // every rank's part of the data
    result->failed_files = failures[0], result->left_out = failures[1];
    if (rc == 0 && done > 0) report(T, result, done);
    if (rc == 0 && done > 0 && T->sync)
        printf("data parallel: %.0f%% of the gradient buckets were reduced while backward ran\n",
               100 * ldmc_grad_sync_overlap(T->sync));
    trainer_free(T);
    run_dir_close(&T->dir, cfg->out, false);
    return rc;
}
