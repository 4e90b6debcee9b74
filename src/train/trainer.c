// The trainer (see trainer.h). Tested by tests/test_train.c.
#include "train/trainer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/device.h"
#include "core/rng.h"
#include "core/tape.h"
#include "core/threads.h"
#include "data/cache.h"
#include "data/loader.h"
#include "io/model_files.h"
#include "io/tensorboard.h"
#include "nn/unet.h"
#include "nn/vae.h"
#include "ops/ops.h"
#include "train/canvas.h"
#include "train/state.h"
#ifdef LDMC_HAVE_CUDA
#include "kernels/ldmc_cuda.h"
#endif

#define DATA_ARENA ((size_t)64 << 30) // address space; only what a step touches is committed
#define META_ARENA ((size_t)2 << 30)
typedef struct trainer {
    const ldmc_train_config *cfg;
    bool vae_task;
    ldmc_unet unet; // diffusion: the model trained
    ldmc_vae vae;   // vae task: the model trained; diffusion: the frozen autoencoder
    bool have_unet, have_vae, vae_weights; // vae_weights: the diffusion autoencoder is loaded
    ldmc_params *params;                   // the trained table
    ldmc_key_map map;
    ldmc_schedule sched;
    int vae_factor; // image pixels per latent pixel
    int align;      // image sides must be multiples of this (VAE and UNet downsampling)

    // data
    ldmc_dataset data;
    bool have_data;
    ldmc_cache cache;
    bool have_cache;
    ldmc_buckets buckets;
    ldmc_loader *loader;
    // run: `ctx` records the training step; `enc` runs the frozen encoder and the previews
    // unrecorded: its own context on the CPU, the same one on the GPU (one arena over the free
    // memory; the encoder's outputs are read out before the step reuses it); `host` holds a
    // step's host arrays (noise, conditioning) on either device.
    ldmc_ctx ctx, enc_ctx, host;
    ldmc_ctx *enc;
    ldmc_train_state st;
    FILE *metrics;
    ldmc_tensorboard tb;
    bool have_tb;
    int sample_h, sample_w; // preview size in pixels
    bool bench;             // ldmc_train_bench: random weights, no files
    int lock_fd;            // <out>/lock, held while the run lasts
    bool resumed;           // the run continues from a checkpoint
} trainer;

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) { interrupted = sig; }

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void format_duration(double s, char *out, size_t size) {
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(out, size, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else
        snprintf(out, size, "%ldm%02lds", t / 60, t % 60);
}

// ---- setup
// ----------------------------------------------------------------------------------------

static int check_conditioning(const ldmc_train_config *cfg, ldmc_err *err) {
    const ldmc_unet_config *u = &cfg->model.unet;
    for (int i = 0; i < u->n_vector; i++)
        if (u->vector[i] == LDMC_VECTOR_POOLED_TEXT)
            return LDMC_ERR(
                err,
                "%s: the UNet's vector conditioning has pooled_text, and ldmc has no text "
                "encoders yet: it trains class-conditional and unconditional models "
                "(configs/demo.yaml, configs/cin_size_cond_train.yaml)",
                cfg->source_path);
    if (u->context_dim && !u->n_classes)
        return LDMC_ERR(
            err,
            "%s: the UNet is conditioned on text (context_dim %d), and ldmc has no text "
            "encoders yet: it trains class-conditional and unconditional models",
            cfg->source_path, u->context_dim);
    return 0;
}

static int setup_models(trainer *T, ldmc_err *err) {
    const ldmc_train_config *cfg = T->cfg;
    ldmc_load_options init_opt = {.may_be_new = (const char *const *)cfg->new_params,
                                  .n_may_be_new = cfg->n_new_params};
    int n_new = 0;
    init_opt.n_new = &n_new;
    if (T->vae_task) {
        ldmc_vae_init(&T->vae, &cfg->model.vae);
        T->have_vae = true;
        T->vae.checkpointing = cfg->checkpointing;
        T->params = &T->vae.params;
        T->map = (ldmc_key_map){.layout = LDMC_LAYOUT_OFFICIAL, .vae = &T->vae.cfg};
    } else {
        if (check_conditioning(cfg, err) != 0) return -1;
        ldmc_unet_init(&T->unet, &cfg->model.unet);
        T->have_unet = true;
        T->unet.checkpointing = cfg->checkpointing;
        T->params = &T->unet.params;
        T->map = (ldmc_key_map){.layout = LDMC_LAYOUT_OFFICIAL, .unet = &T->unet.cfg};
        ldmc_vae_init(&T->vae, &cfg->vae);
        T->have_vae = true;
        ldmc_params_alloc(&T->vae.params, LDMC_ROLE_WEIGHTS);
        if (T->bench) {
            ldmc_params_init(&T->vae.params, cfg->seed); // timing only: any weights do
        } else if (cfg->vae_weights[0]) {
            if (ldmc_load_vae(&T->vae, cfg->vae_weights, NULL, err) != 0) return -1;
            T->vae_weights = true;
        } else if (!cfg->from_cache) {
            return LDMC_ERR(
                err,
                "%s: `vae_weights` is required to encode images (or train from a latent "
                "cache made by `ldmc cache`)",
                cfg->source_path);
        }
        if (T->vae.cfg.embed_dim != cfg->model.unet.in_channels)
            return LDMC_ERR(err, "%s: the VAE's latent has %d channels but the UNet takes %d",
                            cfg->source_path, T->vae.cfg.embed_dim, cfg->model.unet.in_channels);
    }
    T->vae_factor = 1 << (T->vae.cfg.levels - 1);
    T->align = T->vae_task ? T->vae_factor : T->vae_factor << (cfg->model.unet.levels - 1);
    ldmc_params *p = T->params;
    ldmc_params_alloc(p, LDMC_ROLE_WEIGHTS);
    for (int i = 0; i < cfg->n_freeze; i++)
        if (ldmc_params_flag_matching(p, cfg->freeze[i], LDMC_PARAM_FROZEN, true) == 0)
            return LDMC_ERR(err, "%s: freeze pattern '%s' matches no parameter", cfg->source_path,
                            cfg->freeze[i]);
    if (ldmc_params_count(p, true) == 0)
        return LDMC_ERR(err, "%s: every parameter is frozen", cfg->source_path);
    ldmc_params_alloc(p, LDMC_ROLE_GRAD);
    ldmc_params_alloc(p, LDMC_ROLE_ADAM_M);
    ldmc_params_alloc(p, LDMC_ROLE_ADAM_V);
    if (cfg->ema_decay > 0) ldmc_params_alloc(p, LDMC_ROLE_EMA);
    // Initial weights: a fresh initialization from the seed, then the init file over it.
    ldmc_params_init(p, cfg->seed);
    if (cfg->init[0] && !T->bench) {
        int rc = T->vae_task ? ldmc_load_vae(&T->vae, cfg->init, &init_opt, err)
                             : ldmc_load_unet(&T->unet, cfg->init, &init_opt, err);
        if (rc != 0) return -1;
        printf("init: %s%s", cfg->init, n_new ? "" : "\n");
        if (n_new) printf(" (%d new parameters keep their fresh initialization)\n", n_new);
    }
    if (cfg->ema_decay > 0)
        memcpy(p->buffers[LDMC_ROLE_EMA], p->buffers[LDMC_ROLE_WEIGHTS], p->total * sizeof(float));
    if (!T->bench)
        printf("model: %s, %.2fM parameters, %.2fM trained\n", T->vae_task ? "vae" : "unet",
               ldmc_params_count(p, false) / 1e6, ldmc_params_count(p, true) / 1e6);
    return 0;
}

static void print_bucket_fill(const trainer *T, const ldmc_sampler *s) {
    int used = 0;
    for (int b = 0; b < T->buckets.count; b++)
        used += s->fill[b] > 0;
    printf("buckets (width x height): %d of %d in use, batch size %d, %d batches per epoch\n", used,
           T->buckets.count, s->batch_size, ldmc_sampler_steps_per_epoch(s));
    for (int b = 0; b < T->buckets.count; b++) {
        if (!s->fill[b]) continue;
        int batches = (s->fill[b] + s->batch_size - 1) / s->batch_size;
        printf("  %5d x %-5d  %6d samples  %5d batches%s\n", T->buckets.width[b],
               T->buckets.height[b], s->fill[b], batches,
               s->fill[b] % s->batch_size ? " (the last one partial)" : "");
    }
    printf("  every sample is in a bucket: %d in all, none dropped\n", s->n_samples);
}

// The data's sample count and fingerprint go into every checkpoint; a resumed run says when they
// changed (the batch order from there on differs from an uninterrupted run's).
static void record_data(trainer *T) {
    int64_t samples = T->have_data ? T->data.count : T->cache.count;
    uint64_t fingerprint = T->have_data ? ldmc_dataset_fingerprint(&T->data) : 0;
    int64_t then = T->st.data_samples;
    bool other_files =
        fingerprint && T->st.data_fingerprint && fingerprint != T->st.data_fingerprint;
    if (T->resumed && then > 0 && (samples != then || other_files))
        printf("resume: the data changed since the checkpoint (%lld samples then, %lld now%s): the "
               "batch order from here on differs from an uninterrupted run's\n",
               (long long)then, (long long)samples,
               samples == then ? "; other files, sizes, classes or captions" : "");
    T->st.data_samples = samples;
    T->st.data_fingerprint = fingerprint;
}

static int setup_data(trainer *T, ldmc_err *err) {
    const ldmc_train_config *cfg = T->cfg;
    if (cfg->from_cache) {
        if (T->vae_task)
            return LDMC_ERR(err, "%s: the vae task trains on images, not a latent cache",
                            cfg->source_path);
        if (ldmc_cache_open(&T->cache, cfg->data_path, err) != 0) return -1;
        T->have_cache = true;
        if (T->cache.channels != cfg->model.unet.in_channels)
            return LDMC_ERR(err, "%s: latents of %d channels, the UNet takes %d", cfg->data_path,
                            T->cache.channels, cfg->model.unet.in_channels);
        if (fabs(T->cache.scale_factor - T->vae.cfg.scale_factor) > 1e-9)
            return LDMC_ERR(err, "%s: made with scale factor %g, the config's VAE has %g",
                            cfg->data_path, T->cache.scale_factor, T->vae.cfg.scale_factor);
        ldmc_cache_buckets(&T->cache, &T->buckets);
        int lalign = 1 << (cfg->model.unet.levels - 1);
        for (int g = 0; g < T->cache.n_groups; g++)
            if (T->cache.groups[g].h % lalign || T->cache.groups[g].w % lalign)
                return LDMC_ERR(
                    err,
                    "%s: latents of %dx%d (width x height) in group /buckets/%dx%d: the UNet "
                    "needs multiples of %d",
                    cfg->data_path, T->cache.groups[g].w, T->cache.groups[g].h,
                    T->cache.groups[g].height, T->cache.groups[g].width, lalign);
        printf("data: latent cache %s, %lld entries in %d groups\n", cfg->data_path,
               (long long)T->cache.count, T->cache.n_groups);
        if (T->cache.count == 0) return LDMC_ERR(err, "%s: the cache is empty", cfg->data_path);
    } else {
        if (ldmc_dataset_scan(cfg->data_path, cfg->labels, &T->data, err) != 0) return -1;
        T->have_data = true;
        ldmc_dataset_report(&T->data, stdout);
        if (cfg->min_size > 0)
            printf("  %d images with a side below data.min_size %d left out\n",
                   ldmc_dataset_keep_min_size(&T->data, cfg->min_size), cfg->min_size);
        if (T->data.count == 0) return LDMC_ERR(err, "%s: no readable images", cfg->data_path);
        if (ldmc_train_config_buckets(cfg, T->align, &T->buckets, err) != 0) return -1;
    }
    if (!T->vae_task && cfg->model.unet.n_classes) {
        int n = T->have_data ? T->data.n_classes : cfg->model.unet.n_classes;
        if (T->have_data && n == 0)
            return LDMC_ERR(err,
                            "%s: the UNet is class-conditional but the data has no labels (set "
                            "data.labels: folders or metadata)",
                            cfg->source_path);
        if (n > cfg->model.unet.n_classes)
            return LDMC_ERR(err, "%s: %d classes in the data, the UNet has %d", cfg->data_path, n,
                            cfg->model.unet.n_classes);
    }
    record_data(T);
    ldmc_loader_options lo = {.batch_size = cfg->batch_size,
                              .threads = cfg->workers,
                              .prefetch = cfg->prefetch,
                              .flip = cfg->flip,
                              .seed = cfg->seed,
                              .rank = 0,
                              .world = 1,
                              .cache = T->have_cache ? &T->cache : NULL};
    if (ldmc_loader_start(&T->loader, T->have_data ? &T->data : NULL, &T->buckets, &lo,
                          T->st.batches, err) != 0)
        return -1;
    print_bucket_fill(T, ldmc_loader_sampler(T->loader));
    // Previews: the configured size, or the bucket nearest to square.
    T->sample_h = cfg->sample_height, T->sample_w = cfg->sample_width;
    if (!T->sample_h || !T->sample_w) {
        int b = ldmc_bucket_assign(&T->buckets, 1, 1);
        T->sample_h = T->buckets.height[b], T->sample_w = T->buckets.width[b];
    }
    if (!T->vae_task && (T->sample_h % T->align || T->sample_w % T->align))
        return LDMC_ERR(err,
                        "%s: sample size %dx%d (width x height): the models need multiples of %d",
                        cfg->source_path, T->sample_w, T->sample_h, T->align);
    return 0;
}

// ---- one micro-batch
// --------------------------------------------------------------------------------

// The vector conditioning from the batch's micro-conditioning (aesthetic score: 6, the value
// SDXL's refiner is usually sampled with; datasets do not carry one yet), built on the host and
// put where ctx computes.
static ldmc_tensor *vector_cond(trainer *T, ldmc_ctx *ctx, const ldmc_unet_config *c, int B,
                                const int32_t *c_size, const int32_t *c_crop,
                                const int32_t *c_target) {
    ldmc_tensor *parts[LDMC_VECTOR_PART_COUNT] = {0};
    for (int i = 0; i < c->n_vector; i++) {
        ldmc_vector_part part = c->vector[i];
        int k = ldmc_vector_part_scalars(part);
        float *d = ldmc_scratch(&T->host, (size_t)B * k * sizeof(float));
        const int32_t *src = part == LDMC_VECTOR_ORIGINAL_SIZE ? c_size
                             : part == LDMC_VECTOR_CROP_COORDS ? c_crop
                             : part == LDMC_VECTOR_TARGET_SIZE ? c_target
                                                               : NULL;
        for (int b = 0; b < B; b++)
            for (int j = 0; j < k; j++)
                d[b * k + j] = src ? (float)src[b * 2 + j] : 6.0f;
        // the raw sizes (up to 4096) stay f32: the embedding of each scalar is computed from it
        parts[part] = ldmc_input(ctx, LDMC_F32, 2, (int64_t[]){B, k}, d, LDMC_F32);
    }
    return ldmc_unet_vector(ctx, c, parts);
}

// z = scale (mean + std ε) into `z`, ε from the step's LATENT stream for micro-batch `stream`.
static void draw_latents(const trainer *T, const float *mean, const float *std, int64_t n,
                         uint32_t stream, float *z) {
    ldmc_rng rng = ldmc_rng_make(T->cfg->seed, (uint32_t)T->st.step, 0, LDMC_RNG_LATENT);
    ldmc_rng_normal(&rng, (uint64_t)stream << 40, (size_t)n, z);
    const float s = (float)T->vae.cfg.scale_factor;
    for (int64_t i = 0; i < n; i++)
        z[i] = s * (mean[i] + std[i] * z[i]);
}

// The noised batch: x_t (in the context's activation dtype), the f32 target and timesteps, the
// per-sample loss weights (host). On the GPU the noise is drawn there (the same Philox values).
static void noise_inputs(trainer *T, const float *z, int B, int h, int w, int C, uint32_t micro,
                         ldmc_tensor **x_t, ldmc_tensor **target, ldmc_tensor **t,
                         float **weight) {
    const ldmc_train_config *cfg = T->cfg;
    ldmc_ctx *ctx = &T->ctx;
    int64_t shape[4] = {B, h, w, C}, n = (int64_t)B * h * w * C;
    float *tv = ldmc_scratch(&T->host, (size_t)B * sizeof(float));
    *weight = ldmc_scratch(&T->host, (size_t)B * sizeof(float));
    if (ctx->device == LDMC_CPU) {
        float *xv = ldmc_scratch(&T->host, (size_t)n * sizeof(float)),
              *gv = ldmc_scratch(&T->host, (size_t)n * sizeof(float));
        ldmc_noise_batch(&T->sched, &cfg->noise, z, B, h, w, C, cfg->seed, (uint32_t)T->st.step, 0,
                         micro, xv, gv, tv, *weight);
        *x_t = ldmc_input(ctx, LDMC_F32, 4, shape, xv, LDMC_F32);
        *target = ldmc_input(ctx, LDMC_F32, 4, shape, gv, LDMC_F32);
    } else {
        double *sa = ldmc_scratch(&T->host, (size_t)B * sizeof(double)),
               *sb = ldmc_scratch(&T->host, (size_t)B * sizeof(double));
        ldmc_noise_timesteps(&T->sched, &cfg->noise, B, cfg->seed, (uint32_t)T->st.step, 0, micro,
                             tv, *weight, sa, sb);
        *x_t = ldmc_new(ctx, ctx->act_dtype, 4, shape);
        *target = ldmc_new(ctx, LDMC_F32, 4, shape);
        ldmc_tensor *zd = ldmc_input(ctx, LDMC_F32, 4, shape, z, LDMC_F32);
        double *sad = ldmc_scratch(ctx, (size_t)2 * B * sizeof(double));
#ifdef LDMC_HAVE_CUDA
        ldmc_cuda_to_device(sad, sa, (size_t)B * sizeof(double));
        ldmc_cuda_to_device(sad + B, sb, (size_t)B * sizeof(double));
        ldmc_rng noise = ldmc_rng_make(cfg->seed, (uint32_t)T->st.step, 0, LDMC_RNG_NOISE);
        ldmc_cuda_noise_batch(&noise, (uint64_t)micro << 40, zd->data, sad, sad + B, B,
                              (int64_t)h * w * C, C, (float)cfg->noise.offset_noise,
                              cfg->noise.prediction == LDMC_PREDICT_V, (*x_t)->data,
                              (*target)->data);
#else
        (void)zd, (void)sad, (void)n;
#endif
    }
    *t = ldmc_input(ctx, LDMC_F32, 1, (int64_t[]){B}, tv, LDMC_F32);
}

// Starts unrecorded work (encoding, previews) in the encoder's context: resets it and turns
// recording off; the caller puts *was_recording back when done.
static void enc_begin(trainer *T, bool *was_recording) {
    *was_recording = T->enc->recording;
    T->enc->recording = false;
    ldmc_ctx_reset(T->enc);
}

// Forward and backward of one diffusion micro-batch; returns the loss.
static double diffusion_micro(trainer *T, const ldmc_batch *b, uint32_t micro) {
    const ldmc_train_config *cfg = T->cfg;
    const ldmc_unet_config *uc = &cfg->model.unet;
    int B = b->n, C = uc->in_channels, h, w;
    float *z;
    ldmc_ctx_reset(&T->host);
    if (T->have_cache) {
        h = b->lh, w = b->lw;
        z = ldmc_scratch(&T->host, (size_t)B * h * w * C * sizeof(float));
        draw_latents(T, b->mean, b->std, (int64_t)B * h * w * C, micro, z);
    } else { // encode the images with the frozen VAE, outside the tape
        bool rec;
        enc_begin(T, &rec);
        ldmc_tensor *x = ldmc_input(T->enc, T->enc->act_dtype, 4,
                                    (int64_t[]){B, b->height, b->width, 3}, b->pixels, LDMC_F32);
        ldmc_vae_posterior q = ldmc_vae_encode(T->enc, &T->vae, x);
        ldmc_tensor *std = ldmc_vae_std(T->enc, &q);
        h = (int)q.mean->shape[1], w = (int)q.mean->shape[2];
        int64_t n = (int64_t)B * h * w * C;
        float *mean = ldmc_scratch(&T->host, (size_t)n * sizeof(float)),
              *sd = ldmc_scratch(&T->host, (size_t)n * sizeof(float));
        ldmc_read_f32(q.mean, mean);
        ldmc_read_f32(std, sd);
        T->enc->recording = rec;
        z = ldmc_scratch(&T->host, (size_t)n * sizeof(float));
        draw_latents(T, mean, sd, n, micro, z);
    }
    ldmc_ctx_reset(&T->ctx); // (on the GPU, after the encoder's outputs were read out of it)
    T->ctx.rng_seed = cfg->seed, T->ctx.rng_step = (uint64_t)T->st.step, T->ctx.rng_rank = 0;
    ldmc_tensor *x_t, *target, *t;
    float *weight;
    noise_inputs(T, z, B, h, w, C, micro, &x_t, &target, &t, &weight);
    ldmc_unet_cond cond = {0};
    if (uc->n_classes) {
        cond.class_labels = ldmc_input(&T->ctx, LDMC_I64, 1, (int64_t[]){B}, b->class_ids, LDMC_I64);
        if (cfg->cond_dropout > 0) {
            float *keep = ldmc_scratch(&T->host, (size_t)B * sizeof(float));
            ldmc_rng rng = ldmc_rng_make(cfg->seed, (uint32_t)T->st.step, 0, LDMC_RNG_COND_DROP);
            ldmc_rng_uniform(&rng, (uint64_t)micro << 40, (size_t)B, keep);
            for (int i = 0; i < B; i++)
                keep[i] = keep[i] < cfg->cond_dropout ? 0.0f : 1.0f;
            cond.class_keep = keep;
        }
    }
    if (uc->n_vector)
        cond.vector = vector_cond(T, &T->ctx, uc, B, b->c_size, b->c_crop, b->c_target);
    ldmc_tensor *out = ldmc_unet_forward(&T->ctx, &T->unet, x_t, t, &cond);
    ldmc_tensor *loss = ldmc_mse_loss_weighted(&T->ctx, out, target, weight);
    double value = ldmc_read_scalar(loss);
    if (isfinite(value)) {
        float seed = 1.0f / (float)cfg->accumulation;
        ldmc_backward(&T->ctx, loss, &seed);
    }
    return value;
}

// The autoencoder's loss as generative-models' LPIPSWithDiscriminator computes its first two terms
// (no perceptual or adversarial term): (Σ |x - x̂| + kl_weight Σ KL) / B. Returned per image
// element (divided by H W 3) so that it reads like a mean absolute error.
static double vae_micro(trainer *T, const ldmc_batch *b, uint32_t micro) {
    const ldmc_train_config *cfg = T->cfg;
    int B = b->n;
    ldmc_ctx_reset(&T->ctx);
    ldmc_ctx_reset(&T->host);
    T->ctx.rng_seed = cfg->seed, T->ctx.rng_step = (uint64_t)T->st.step, T->ctx.rng_rank = 0;
    ldmc_tensor *x = ldmc_input(&T->ctx, T->ctx.act_dtype, 4,
                                (int64_t[]){B, b->height, b->width, 3}, b->pixels, LDMC_F32);
    ldmc_vae_posterior q = ldmc_vae_encode(&T->ctx, &T->vae, x);
    ldmc_tensor *eps = ldmc_new_like(&T->ctx, q.mean);
    ldmc_rng rng = ldmc_rng_make(cfg->seed, (uint32_t)T->st.step, 0, LDMC_RNG_LATENT);
    ldmc_fill_normal(eps, &rng, (uint64_t)micro << 40);
    ldmc_tensor *rec = ldmc_vae_decode(&T->ctx, &T->vae, ldmc_vae_sample(&T->ctx, &q, eps));
    ldmc_tensor *l1 = ldmc_l1_loss(&T->ctx, rec, x), *kl = ldmc_vae_kl(&T->ctx, &q);
    double elements = (double)b->height * b->width * 3, kl_mean = 0;
    float *kl_values = ldmc_scratch(&T->host, (size_t)B * sizeof(float));
    ldmc_read_f32(kl, kl_values);
    for (int i = 0; i < B; i++)
        kl_mean += kl_values[i] / B;
    double value = ldmc_read_scalar(l1) + cfg->kl_weight * kl_mean / elements;
    if (isfinite(value)) {
        float s_l1 = (float)(elements / cfg->accumulation);
        float *s_kl = ldmc_scratch(&T->host, (size_t)B * sizeof(float));
        for (int i = 0; i < B; i++)
            s_kl[i] = (float)(cfg->kl_weight / B / cfg->accumulation);
        ldmc_backward_many(&T->ctx, (ldmc_tensor *[]){l1, kl}, (const float *[]){&s_l1, s_kl}, 2);
    }
    return value;
}

// The update after a step's micro-batches: clipping, AdamW (update `updates`, from 1), EMA.
static void update(trainer *T, double norm, double lr, int64_t updates) {
    const ldmc_train_config *cfg = T->cfg;
    if (cfg->grad_clip > 0 && norm > cfg->grad_clip)
        ldmc_grad_scale(T->params, cfg->grad_clip / norm);
    ldmc_adamw_step(T->params, &cfg->adamw, lr, updates);
    if (cfg->ema_decay > 0) ldmc_ema_update(T->params, ldmc_ema_decay(cfg->ema_decay, updates));
}

// ---- previews -----------------------------------------------------------------------------------

// DDIM with classifier-free guidance from fixed noise: `per_class` samples of each of the first
// classes (rows), or of the unconditional model. Decoded by the VAE into `images` (n, H, W, 3).
static int sample_images(trainer *T, int rows, int per_row, int H, int W, float *images) {
    const ldmc_train_config *cfg = T->cfg;
    const ldmc_unet_config *uc = &cfg->model.unet;
    int n = rows * per_row, C = uc->in_channels, h = H / T->vae_factor, w = W / T->vae_factor;
    int64_t per = (int64_t)h * w * C;
    bool guided = uc->n_classes && cfg->sample_cfg != 1.0;
    int B = guided ? 2 * n : n;
    float *x = malloc((size_t)n * per * sizeof(float));
    int *ts = malloc((size_t)cfg->sample_steps * sizeof(int));
    if (!x || !ts) {
        free(x);
        free(ts);
        return -1;
    }
    ldmc_rng rng =
        ldmc_rng_make(cfg->seed, 0, 0, LDMC_RNG_SAMPLE); // the same noise at every preview
    ldmc_rng_normal(&rng, 0, (size_t)(n * per), x);
    int steps = ldmc_ddim_timesteps(&T->sched, cfg->sample_steps, ts);
    bool was_recording = T->ctx.recording;
    T->ctx.recording = false;
    for (int k = 0; k < steps; k++) {
        ldmc_ctx_reset(&T->ctx);
        ldmc_ctx_reset(&T->host);
        float *xv = ldmc_scratch(&T->host, (size_t)B * per * sizeof(float));
        float *tv = ldmc_scratch(&T->host, (size_t)B * sizeof(float));
        memcpy(xv, x, (size_t)n * per * sizeof(float));
        if (guided) memcpy(xv + n * per, x, (size_t)n * per * sizeof(float));
        for (int i = 0; i < B; i++)
            tv[i] = (float)ts[k];
        ldmc_tensor *xin =
            ldmc_input(&T->ctx, T->ctx.act_dtype, 4, (int64_t[]){B, h, w, C}, xv, LDMC_F32);
        ldmc_tensor *t = ldmc_input(&T->ctx, LDMC_F32, 1, (int64_t[]){B}, tv, LDMC_F32);
        ldmc_unet_cond cond = {0};
        int32_t *size = ldmc_scratch(&T->host, (size_t)B * 2 * sizeof(int32_t));
        int32_t *crop = ldmc_scratch(&T->host, (size_t)B * 2 * sizeof(int32_t));
        for (int i = 0; i < B; i++)
            size[2 * i] = H, size[2 * i + 1] = W, crop[2 * i] = crop[2 * i + 1] = 0;
        if (uc->n_classes) {
            int64_t *labels = ldmc_scratch(&T->host, (size_t)B * sizeof(int64_t));
            float *keep = ldmc_scratch(&T->host, (size_t)B * sizeof(float));
            for (int i = 0; i < B; i++) {
                labels[i] = (i % n) / per_row;
                keep[i] = i < n ? 1.0f : 0.0f; // the second half: the unconditional branch
            }
            cond.class_labels = ldmc_input(&T->ctx, LDMC_I64, 1, (int64_t[]){B}, labels, LDMC_I64);
            cond.class_keep = keep;
        }
        if (uc->n_vector) cond.vector = vector_cond(T, &T->ctx, uc, B, size, crop, size);
        ldmc_tensor *out = ldmc_unet_forward(&T->ctx, &T->unet, xin, t, &cond);
        float *eps = ldmc_scratch(&T->host, (size_t)B * per * sizeof(float));
        ldmc_read_f32(out, eps);
        if (guided) ldmc_cfg_combine(eps + n * per, eps, cfg->sample_cfg, eps, n * per);
        ldmc_ddim_step(&T->sched, cfg->noise.prediction, ts[k], k + 1 < steps ? ts[k + 1] : -1, eps,
                       x, n * per);
    }
    T->ctx.recording = was_recording;
    // decode, a few images at a time
    for (int i0 = 0; i0 < n; i0 += 4) {
        int m = n - i0 < 4 ? n - i0 : 4;
        bool rec;
        enc_begin(T, &rec);
        ldmc_ctx_reset(&T->host);
        float *zv = ldmc_scratch(&T->host, (size_t)m * per * sizeof(float));
        for (int64_t i = 0; i < m * per; i++)
            zv[i] = x[i0 * per + i] / (float)T->vae.cfg.scale_factor;
        ldmc_tensor *z =
            ldmc_input(T->enc, T->enc->act_dtype, 4, (int64_t[]){m, h, w, C}, zv, LDMC_F32);
        ldmc_tensor *img = ldmc_vae_decode(T->enc, &T->vae, z);
        ldmc_read_f32(img, images + (size_t)i0 * H * W * 3);
        T->enc->recording = rec;
    }
    free(x);
    free(ts);
    return 0;
}

// The preview of step `step`: diffusion samples (a row per class, labelled), or for the vae task
// the batch's images (top row) over their reconstructions (bottom row).
static int write_preview(trainer *T, const ldmc_batch *last, char *path_out, ldmc_err *err) {
    const ldmc_train_config *cfg = T->cfg;
    int rows, cols, H, W;
    float *images;
    const char *labels[16] = {0};
    char names[16][64];
    if (T->vae_task) {
        cols = last->n < 8 ? last->n : 8;
        rows = 2, H = last->height, W = last->width;
        images = malloc((size_t)2 * cols * H * W * 3 * sizeof(float));
        if (!images) return LDMC_ERR(err, "out of memory");
        memcpy(images, last->pixels, (size_t)cols * H * W * 3 * sizeof(float));
        bool was;
        enc_begin(T, &was);
        ldmc_tensor *x = ldmc_input(T->enc, T->enc->act_dtype, 4, (int64_t[]){cols, H, W, 3},
                                    last->pixels, LDMC_F32);
        ldmc_vae_posterior q = ldmc_vae_encode(T->enc, &T->vae, x);
        ldmc_tensor *rec = ldmc_vae_decode(T->enc, &T->vae, q.mean);
        ldmc_read_f32(rec, images + (size_t)cols * H * W * 3);
        T->enc->recording = was;
        labels[0] = "input", labels[1] = "decoded";
    } else {
        if (!T->vae_weights) {
            snprintf(path_out, 4200, "%s", "");
            return 0; // no decoder: nothing to look at (said at the start)
        }
        int n_classes = cfg->model.unet.n_classes;
        rows = n_classes ? (n_classes < 10 ? n_classes : 10) : 2;
        cols = n_classes ? cfg->sample_per_class : 8;
        H = T->sample_h, W = T->sample_w;
        images = malloc((size_t)rows * cols * H * W * 3 * sizeof(float));
        if (!images) return LDMC_ERR(err, "out of memory");
        if (sample_images(T, rows, cols, H, W, images) != 0) {
            free(images);
            return LDMC_ERR(err, "out of memory sampling");
        }
        for (int r = 0; r < rows && n_classes; r++) {
            if (T->have_data && r < T->data.n_classes)
                snprintf(names[r], sizeof names[r], "%s", T->data.class_names[r]);
            else
                snprintf(names[r], sizeof names[r], "class %d", r);
            labels[r] = names[r];
        }
    }
    const int pad = 4, label_w = 8 + 6 * 2 * 10, title_h = 28;
    ldmc_canvas c;
    if (ldmc_canvas_init(&c, label_w + cols * (W + pad) + pad, title_h + rows * (H + pad) + pad,
                         (ldmc_color){255, 255, 255}) != 0) {
        free(images);
        return LDMC_ERR(err, "out of memory");
    }
    char title[160];
    if (T->vae_task)
        snprintf(title, sizeof title, "step %lld: reconstructions", (long long)T->st.step);
    else
        snprintf(title, sizeof title, "step %lld: DDIM %d steps, cfg %g%s", (long long)T->st.step,
                 cfg->sample_steps, cfg->sample_cfg, cfg->ema_decay > 0 ? ", EMA weights" : "");
    ldmc_canvas_text(&c, pad, 6, 2, title, (ldmc_color){0, 0, 0});
    for (int r = 0; r < rows; r++) {
        int y = title_h + pad + r * (H + pad);
        if (labels[r])
            ldmc_canvas_text(&c, pad, y + H / 2 - 6, 2, labels[r], (ldmc_color){0, 0, 0});
        for (int k = 0; k < cols; k++)
            ldmc_canvas_image(&c, label_w + pad + k * (W + pad), y,
                              images + ((size_t)r * cols + k) * H * W * 3, H, W);
    }
    free(images);
    char path[4200];
    snprintf(path, sizeof path, "%s/samples", cfg->out);
    int rc = ldmc_mkdirs(path, err);
    snprintf(path, sizeof path, "%s/samples/step-%08lld.png", cfg->out, (long long)T->st.step);
    if (rc == 0) rc = ldmc_canvas_write_png(&c, path, err);
    if (rc == 0 && T->have_tb)
        ldmc_tensorboard_image(&T->tb, T->vae_task ? "reconstructions" : "samples", T->st.step,
                               c.rgb, c.width, c.height);
    ldmc_canvas_free(&c);
    if (rc == 0) snprintf(path_out, 4200, "%s", path);
    return rc;
}

// ---- metrics ------------------------------------------------------------------------------------

// Keeps the lines of metrics.jsonl up to `step` (a resumed run redoes the steps after its
// checkpoint) and opens it for appending.
static int open_metrics(trainer *T, ldmc_err *err) {
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/metrics.jsonl", T->cfg->out);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *in = fopen(path, "r");
    if (in) {
        FILE *out = fopen(tmp, "w");
        if (!out) {
            fclose(in);
            return LDMC_ERR(err, "%s: cannot create: %s", tmp, strerror(errno));
        }
        char *line = NULL;
        size_t cap = 0;
        while (getline(&line, &cap, in) > 0) {
            long long step = -1;
            const char *s = strstr(line, "\"step\":");
            if (s) step = strtoll(s + 7, NULL, 10);
            if (step >= 0 && step <= T->st.step) fputs(line, out);
        }
        free(line);
        fclose(in);
        if (fclose(out) != 0 || rename(tmp, path) != 0)
            return LDMC_ERR(err, "%s: cannot rewrite: %s", path, strerror(errno));
    }
    T->metrics = fopen(path, "a");
    if (!T->metrics) return LDMC_ERR(err, "%s: cannot open: %s", path, strerror(errno));
    return 0;
}

// Reads (step, loss) back from metrics.jsonl for the loss curve.
static int read_losses(const char *path, int64_t **steps, double **loss) {
    FILE *f = fopen(path, "r");
    *steps = NULL, *loss = NULL;
    if (!f) return 0;
    int n = 0, cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    while (getline(&line, &lcap, f) > 0) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *s = cJSON_GetObjectItem(j, "step"), *l = cJSON_GetObjectItem(j, "loss");
        if (cJSON_IsNumber(s) && (cJSON_IsNumber(l) || cJSON_IsNull(l))) {
            if (n == cap) {
                cap = cap ? 2 * cap : 1024;
                *steps = realloc(*steps, (size_t)cap * sizeof **steps);
                *loss = realloc(*loss, (size_t)cap * sizeof **loss);
            }
            (*steps)[n] = (int64_t)s->valuedouble;
            (*loss)[n] = cJSON_IsNumber(l) ? l->valuedouble : NAN;
            n++;
        }
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    return n;
}

static void json_number(FILE *f, const char *key, double v) {
    if (isfinite(v))
        fprintf(f, ",\"%s\":%.9g", key, v);
    else
        fprintf(f, ",\"%s\":null", key);
}

// ---- the loop
// -------------------------------------------------------------------------------------

static int save(trainer *T, char *saved, ldmc_err *err) {
    // The metrics of the steps a checkpoint holds reach the disk first: a run resumed from it
    // keeps every line up to its step.
    if (T->metrics && (fflush(T->metrics) != 0 || fsync(fileno(T->metrics)) != 0))
        return LDMC_ERR(err, "%s/metrics.jsonl: cannot write: %s", T->cfg->out, strerror(errno));
    ldmc_params_to_host(T->params); // the GPU's master weights, m, v and EMA (no-op on the CPU)
    ldmc_state_model m = {.params = T->params, .map = T->map, .ema = T->cfg->ema_decay > 0};
    return ldmc_state_save(T->cfg->out, &m, &T->st, T->cfg->resolved_yaml, T->cfg->keep, saved,
                           err);
}

// The final weights beside the checkpoints: <out>/model.safetensors, the EMA weights when EMA is
// on (the ones to sample with), in the official layout.
static int export_final(trainer *T, ldmc_err *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", T->cfg->out);
    ldmc_params_to_host(T->params);
    ldmc_save_part part = {T->params, T->map,
                           T->cfg->ema_decay > 0 ? LDMC_ROLE_EMA : LDMC_ROLE_WEIGHTS};
    return ldmc_save_weights(path, &part, 1, LDMC_F32, NULL, err);
}

static void print_change(const char *path, const char *was, const char *now, void *ctx) {
    if ((*(int *)ctx)++ == 0)
        printf("resume: settings changed since the checkpoint (the run goes on with the new "
               "ones; a changed batch size or data order makes it differ from an uninterrupted "
               "run):\n");
    printf("  %s: %s -> %s\n", path, was ? was : "(not set)", now ? now : "(not set)");
}

// A resumed run names every setting that differs from its checkpoint's config.yaml.
static void report_config_changes(const trainer *T, const char *dir) {
    char path[4300];
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    ldmc_err ignore = {0};
    ldmc_cfg *was = ldmc_cfg_load(path, &ignore);
    ldmc_cfg *now = ldmc_cfg_parse(T->cfg->resolved_yaml, T->cfg->source_path, &ignore);
    int changes = 0;
    if (!was)
        printf("resume: %s cannot be read: whether the settings changed is unknown\n", path);
    else if (now)
        ldmc_cfg_diff(was, now, print_change, &changes);
    ldmc_cfg_free(was);
    ldmc_cfg_free(now);
}

static int resume_from(trainer *T, const char *resume, ldmc_err *err) {
    char dir[4200];
    if (!strcmp(resume, "latest")) {
        if (ldmc_state_latest(T->cfg->out, dir, sizeof dir, err) != 0) return -1;
    } else {
        snprintf(dir, sizeof dir, "%s", resume);
    }
    ldmc_state_model m = {.params = T->params, .map = T->map, .ema = T->cfg->ema_decay > 0};
    if (ldmc_state_load(dir, &m, &T->st, err) != 0) return -1;
    if (T->st.seed != T->cfg->seed)
        return LDMC_ERR(
            err,
            "%s: saved with seed %llu, the config says %llu: a resumed run keeps its seed "
            "(set train.seed back)",
            dir, (unsigned long long)T->st.seed, (unsigned long long)T->cfg->seed);
    printf("resume: %s at step %lld (%lld batches consumed, %lld steps skipped so far)\n", dir,
           (long long)T->st.step, (long long)T->st.batches, (long long)T->st.skipped_steps);
    T->resumed = true;
    report_config_changes(T, dir);
    return 0;
}

// One run per output folder: <out>/lock is held (flock) for the run's life, and released by the
// kernel however the process ends.
static int lock_out(trainer *T, ldmc_err *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/lock", T->cfg->out);
    T->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (T->lock_fd < 0) return LDMC_ERR(err, "%s: cannot create: %s", path, strerror(errno));
    if (flock(T->lock_fd, LOCK_EX | LOCK_NB) != 0)
        return LDMC_ERR(err, "%s: another run is using this folder (%s is locked)", T->cfg->out,
                        path);
    return 0;
}

static int refuse_existing(const ldmc_train_config *cfg, ldmc_err *err) {
    char path[4200];
    ldmc_err ignore = {0};
    if (ldmc_state_latest(cfg->out, path, sizeof path, &ignore) == 0)
        return LDMC_ERR(
            err,
            "%s already holds checkpoints (%s): pass --resume latest to continue that run, or "
            "choose another train.out",
            cfg->out, path);
    return 0;
}

static void free_trainer(trainer *T) {
    ldmc_loader_stop(T->loader);
    if (T->have_cache) ldmc_cache_close(&T->cache);
    if (T->have_data) ldmc_dataset_free(&T->data);
    if (T->have_unet) ldmc_unet_free(&T->unet);
    if (T->have_vae) ldmc_vae_free(&T->vae);
    if (T->metrics) fclose(T->metrics);
    if (T->have_tb) ldmc_tensorboard_close(&T->tb);
    ldmc_ctx_free(&T->ctx);
    ldmc_ctx_free(&T->enc_ctx);
    ldmc_ctx_free(&T->host);
    if (T->lock_fd > 0) close(T->lock_fd);
}

static void mean_of_tenths(const double *loss, int64_t n, double *first, double *last) {
    int64_t k = n / 10 > 1 ? n / 10 : 1;
    double a = 0, b = 0;
    int64_t na = 0, nb = 0;
    for (int64_t i = 0; i < k && i < n; i++)
        if (isfinite(loss[i])) a += loss[i], na++;
    for (int64_t i = n - k; i < n; i++)
        if (i >= 0 && isfinite(loss[i])) b += loss[i], nb++;
    *first = na ? a / na : NAN;
    *last = nb ? b / nb : NAN;
}

// What a run and a benchmark start with: threads, the schedule, the host context and, on the
// CPU, the two contexts (the training step's, recording; the frozen encoder's and previews', not
// recording). A GPU run makes its context in setup_device, once the weights are there.
static void trainer_begin(trainer *T, const ldmc_train_config *cfg, bool bench) {
    *T = (trainer){.cfg = cfg, .vae_task = cfg->task == LDMC_TASK_VAE, .bench = bench};
    T->st.seed = cfg->seed;
    if (cfg->threads > 0) ldmc_threads_set(cfg->threads);
    ldmc_schedule_sdxl(&T->sched);
    ldmc_ctx_init(&T->host, DATA_ARENA, META_ARENA);
    T->host.recording = false;
    if (cfg->device == LDMC_CPU) {
        ldmc_ctx_init(&T->ctx, DATA_ARENA, META_ARENA);
        ldmc_ctx_init(&T->enc_ctx, DATA_ARENA, META_ARENA);
        T->ctx.recording = true;
        T->enc_ctx.recording = false;
        T->enc = &T->enc_ctx;
    }
}

// A GPU run: the trained table (bf16 working weights, fp32 master, gradients, Adam m and v, EMA)
// and the frozen autoencoder go to the GPU, and one activation arena takes the free memory but a
// headroom (ldmc_ctx_init_gpu_free). The host buffers stay the checkpoint side
// (ldmc_params_to_host before a save).
static int setup_device(trainer *T, ldmc_err *err) {
    const ldmc_train_config *cfg = T->cfg;
    if (cfg->device == LDMC_CPU) return 0;
    if (!ldmc_cuda_usable())
        return LDMC_ERR(err, "%s: train.device is cuda, but %s", cfg->source_path,
#ifdef LDMC_HAVE_CUDA
                        "no CUDA device is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
#else
                        "this build of ldmc has no CUDA (build where nvcc is found, LDMC_CUDA=ON)"
#endif
        );
#ifdef LDMC_HAVE_CUDA
    ldmc_params_to_device(T->params);
    if (!T->vae_task && T->have_vae) ldmc_params_to_device(&T->vae.params);
    size_t free_b;
    if (ldmc_ctx_init_gpu_free(&T->ctx, META_ARENA, &free_b) != 0)
        return LDMC_ERR(err, "%s: %.1f GiB of GPU memory left after the weights: too little to train",
                        cfg->source_path, (double)free_b / (1 << 30));
    T->ctx.recording = true;
    T->enc = &T->ctx;
    size_t used, total;
    ldmc_cuda_memory(&used, &total);
    if (!T->bench)
        printf("device: %s, %.1f GiB for activations (%.1f GiB used before them: weights, "
               "optimizer, libraries)\n",
               ldmc_cuda_device_name(), (double)T->ctx.data.capacity / (1 << 30),
               (double)(used - T->ctx.data.capacity) / (1 << 30));
#endif
    return 0;
}

int ldmc_train(const ldmc_train_config *cfg, const char *resume, ldmc_train_result *result,
               ldmc_err *err) {
    trainer T_, *T = &T_;
    trainer_begin(T, cfg, false);
    *result = (ldmc_train_result){0};
    double *losses = NULL;
    // A run refused before its first step leaves no out folder behind that it made itself.
    bool fresh = access(cfg->out, F_OK) != 0;
    int rc = ldmc_mkdirs(cfg->out, err);
    if (rc == 0) rc = lock_out(T, err);
    if (rc == 0 && !resume) rc = refuse_existing(cfg, err);
    if (rc == 0) {
        int removed = ldmc_state_clean(cfg->out);
        if (removed)
            printf("removed %d unfinished checkpoint(s) left by an interrupted save\n", removed);
        rc = setup_models(T, err);
    }
    if (rc == 0 && resume) rc = resume_from(T, resume, err);
    if (rc == 0 && T->st.step >= cfg->steps) {
        printf("the run is at step %lld already, train.steps is %lld: nothing to do (raise "
               "train.steps to train on)\n",
               (long long)T->st.step, (long long)cfg->steps);
        *result = (ldmc_train_result){.steps = T->st.step,
                                      .skipped_steps = T->st.skipped_steps,
                                      .first_loss = NAN,
                                      .last_loss = NAN};
        free_trainer(T);
        return 0;
    }
    if (rc == 0) rc = setup_data(T, err);
    if (rc == 0) rc = setup_device(T, err);
    if (rc == 0) rc = open_metrics(T, err);
    if (rc == 0) {
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/tensorboard", cfg->out);
        rc = ldmc_mkdirs(dir, err);
        if (rc == 0) rc = ldmc_tensorboard_open(&T->tb, dir, err);
        T->have_tb = rc == 0;
    }
    if (rc == 0 && !T->vae_task && !T->vae_weights)
        printf("no vae_weights: sample grids are off (the latents cannot be decoded)\n");
    int64_t first_step = T->st.step, todo = cfg->steps - T->st.step;
    if (rc == 0 && todo < 0) todo = 0;
    losses = calloc((size_t)(todo > 0 ? todo : 1), sizeof *losses);
    if (rc == 0 && !losses) rc = LDMC_ERR(err, "out of memory");
    if (rc != 0) {
        free(losses);
        free_trainer(T);
        if (fresh) ldmc_remove_tree(cfg->out);
        return -1;
    }
    printf("training: steps %lld to %lld, batch %d x %d accumulation, %d threads, out %s\n",
           (long long)first_step + 1, (long long)cfg->steps, cfg->batch_size, cfg->accumulation,
           ldmc_threads_get(), cfg->out);
    fflush(stdout);
    interrupted = 0;
    // The first SIGINT or SIGTERM ends the run after the current step, with a checkpoint; the
    // handler then falls back to the default, so a second one stops the process at once.
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESETHAND}, old_int, old_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);

    double t_start = now_seconds(), t_window = t_start,
           wait_window = ldmc_loader_wait_seconds(T->loader);
    int64_t images_window = 0, last_saved = -1;
    double loss_window = 0;
    int loss_window_n = 0;
    const ldmc_batch *last = NULL;
    int64_t empty_batches = 0;
    while (rc == 0 && T->st.step < cfg->steps && !interrupted) {
        ldmc_params_zero_grad(T->params);
        double loss = 0;
        int used = 0;
        bool finite = true;
        for (int micro = 0; micro < cfg->accumulation; micro++) {
            const ldmc_batch *b = ldmc_loader_next(T->loader);
            T->st.batches++;
            for (int k = 0; k < b->n_new_failures; k++)
                printf("  left out: %s\n", b->new_failures[k]);
            if (b->n == 0) { // every image of the batch failed to decode (named in the log)
                if (++empty_batches >
                    ldmc_sampler_steps_per_epoch(ldmc_loader_sampler(T->loader))) {
                    rc = LDMC_ERR(err, "%s: no image of a whole epoch could be decoded",
                                  cfg->data_path);
                    break;
                }
                micro--;
                continue;
            }
            empty_batches = 0;
            double l = T->vae_task ? vae_micro(T, b, (uint32_t)micro)
                                   : diffusion_micro(T, b, (uint32_t)micro);
            finite = finite && isfinite(l);
            loss += l;
            used++;
            T->st.images += b->n;
            images_window += b->n;
            last = b;
        }
        if (rc != 0) break;
        loss /= used;
        double norm = ldmc_grad_norm(T->params);
        finite = finite && isfinite(norm);
        double lr = ldmc_lr_at(&cfg->lr, T->st.step);
        if (!finite) {
            T->st.skipped_steps++;
            if (cfg->nonfinite == LDMC_NONFINITE_STOP) {
                rc = LDMC_ERR(err,
                              "step %lld: non-finite %s (loss %g, gradient norm %g); stopping as "
                              "optim.nonfinite says (skip would skip the step)",
                              (long long)T->st.step + 1, isfinite(loss) ? "gradient" : "loss", loss,
                              norm);
                break;
            }
            printf("step %lld: non-finite %s, step skipped (%lld so far)\n",
                   (long long)T->st.step + 1, isfinite(loss) ? "gradient" : "loss",
                   (long long)T->st.skipped_steps);
        } else {
            update(T, norm, lr, T->st.step + 1 - T->st.skipped_steps);
        }
        T->st.step++;
        losses[T->st.step - 1 - first_step] = finite ? loss : NAN;
        if (finite) loss_window += loss, loss_window_n++;
        // metrics: every step
        fprintf(T->metrics, "{\"step\":%lld", (long long)T->st.step);
        json_number(T->metrics, "loss", finite ? loss : NAN);
        json_number(T->metrics, "lr", lr);
        json_number(T->metrics, "grad_norm", norm);
        fprintf(T->metrics, ",\"images\":%lld,\"skipped\":%lld}\n", (long long)T->st.images,
                (long long)T->st.skipped_steps);
        if (finite) ldmc_tensorboard_scalar(&T->tb, "train/loss", T->st.step, loss);
        ldmc_tensorboard_scalar(&T->tb, "train/lr", T->st.step, lr);
        ldmc_tensorboard_scalar(&T->tb, "train/grad_norm", T->st.step, norm);
        bool final = T->st.step == cfg->steps || interrupted;
        if (T->st.step % cfg->log_every == 0 || final) {
            double t = now_seconds(), dt = t - t_window,
                   waited = ldmc_loader_wait_seconds(T->loader);
            double ips = dt > 0 ? images_window / dt : 0,
                   wait = dt > 0 ? (waited - wait_window) / dt : 0;
            double per_step = (t - t_start) / (double)(T->st.step - first_step);
            char eta[32];
            format_duration(per_step * (double)(cfg->steps - T->st.step), eta, sizeof eta);
            printf(
                "step %*lld/%lld | loss %.4f | lr %.2e | %.2f img/s | data wait %.0f%% | ETA %s\n",
                (int)snprintf(NULL, 0, "%lld", (long long)cfg->steps), (long long)T->st.step,
                (long long)cfg->steps, loss_window_n ? loss_window / loss_window_n : NAN, lr, ips,
                100 * wait, eta);
            fflush(stdout);
            fflush(T->metrics);
            ldmc_tensorboard_scalar(&T->tb, "perf/images_per_second", T->st.step, ips);
            ldmc_tensorboard_scalar(&T->tb, "perf/data_wait_fraction", T->st.step, wait);
            t_window = t, wait_window = waited, images_window = 0, loss_window = 0,
            loss_window_n = 0;
        }
        // (an interrupted run saves its checkpoint at once, without a preview; a preview that
        // cannot be written is a warning: the checkpoint matters more)
        if (last && (T->st.step % cfg->sample_every == 0 || T->st.step == cfg->steps)) {
            bool swap = !T->vae_task && cfg->ema_decay > 0;
            ldmc_err preview_err = {0};
            if (swap) ldmc_ema_swap(T->params);
            int preview = write_preview(T, last, result->last_grid, &preview_err);
            if (swap) ldmc_ema_swap(T->params);
            if (preview != 0) {
                result->last_grid[0] = '\0';
                printf("warning: step %lld: no sample grid: %s (training goes on)\n",
                       (long long)T->st.step, preview_err.message);
            } else if (result->last_grid[0]) {
                printf("samples: %s\n", result->last_grid);
            }
        }
        if (rc == 0 && (T->st.step % cfg->checkpoint_every == 0 || final)) {
            rc = save(T, result->last_checkpoint, err);
            if (rc == 0)
                printf("checkpoint: %s\n", result->last_checkpoint), last_saved = T->st.step;
        }
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (interrupted && T->st.step < cfg->steps) result->interrupted = interrupted;
    if (rc == 0 && T->st.step > first_step && last_saved != T->st.step)
        rc = save(T, result->last_checkpoint, err);
    if (rc == 0 && T->st.step == cfg->steps && T->st.step > first_step) {
        rc = export_final(T, err);
        if (rc == 0)
            printf("weights: %s/model.safetensors%s\n", cfg->out,
                   cfg->ema_decay > 0 ? " (EMA)" : "");
    }
    if (T->metrics) fflush(T->metrics);
    if (rc == 0) { // the loss curve of the whole run, resumed parts included
        char path[4200];
        int64_t *steps;
        double *all;
        snprintf(path, sizeof path, "%s/metrics.jsonl", cfg->out);
        int n = read_losses(path, &steps, &all);
        snprintf(path, sizeof path, "%s/loss_curve.png", cfg->out);
        if (n > 1 && ldmc_loss_curve_png(path, steps, all, n,
                                         T->vae_task ? "VAE loss" : "diffusion loss", err) == 0)
            printf("loss curve: %s\n", path);
        free(steps);
        free(all);
    }
    int64_t done = T->st.step - first_step;
    result->steps = T->st.step;
    result->skipped_steps = T->st.skipped_steps;
    result->skipped_files = T->have_data ? T->data.skipped : 0;
    result->failed_files = T->loader ? ldmc_loader_failed_files(T->loader) : 0;
    result->left_out = T->loader ? ldmc_loader_left_out(T->loader) : 0;
    mean_of_tenths(losses, done, &result->first_loss, &result->last_loss);
    if (rc == 0 && done > 0) {
        char took[32];
        format_duration(now_seconds() - t_start, took, sizeof took);
        char failures[128] = "none";
        if (result->failed_files)
            snprintf(failures, sizeof failures, "%lld file%s, left out %lld times (named above)",
                     (long long)result->failed_files, result->failed_files > 1 ? "s" : "",
                     (long long)result->left_out);
        printf("%s: %lld steps in %s; mean loss of the first 10%% %.4f, of the last 10%% %.4f; "
               "%lld skipped; decode failures: %s\n",
               result->interrupted ? "stopped" : "done", (long long)done, took, result->first_loss,
               result->last_loss, (long long)T->st.skipped_steps, failures);
    }
    if (rc == 0 && result->interrupted)
        printf("interrupted (%s) at step %lld of %lld: checkpoint saved; `--resume latest` "
               "continues\n",
               result->interrupted == SIGINT ? "SIGINT" : "SIGTERM", (long long)T->st.step,
               (long long)cfg->steps);
    free(losses);
    free_trainer(T);
    return rc;
}

int ldmc_train_bench(const ldmc_train_config *cfg, int height, int width, int reps, double *ms,
                     ldmc_err *err) {
    trainer T_, *T = &T_;
    trainer_begin(T, cfg, true);
    int B = cfg->batch_size, rc = setup_models(T, err);
    if (rc == 0) rc = setup_device(T, err);
    if (rc == 0 && (height % T->align || width % T->align))
        rc =
            LDMC_ERR(err, "bench: %dx%d: the models need multiples of %d", height, width, T->align);
    ldmc_batch b = {.n = B, .height = height, .width = width};
    b.pixels = malloc((size_t)B * height * width * 3 * sizeof(float));
    b.c_size = malloc((size_t)B * 2 * sizeof(int32_t));
    b.c_crop = calloc((size_t)B * 2, sizeof(int32_t));
    b.class_ids = malloc((size_t)B * sizeof(int64_t));
    if (rc == 0 && (!b.pixels || !b.c_size || !b.c_crop || !b.class_ids))
        rc = LDMC_ERR(err, "out of memory");
    if (rc == 0) {
        ldmc_rng rng = ldmc_rng_make(cfg->seed, 0, 0, LDMC_RNG_TEST);
        ldmc_rng_signed_uniform(&rng, 0, (size_t)B * height * width * 3, b.pixels);
        int classes = T->vae_task ? 0 : cfg->model.unet.n_classes;
        for (int i = 0; i < B; i++) {
            b.c_size[2 * i] = height, b.c_size[2 * i + 1] = width;
            b.class_ids[i] = classes ? i % classes : -1;
        }
        b.c_target = b.c_size;
        for (int r = -1; r < reps; r++) { // one warm-up
            double t0 = now_seconds();
            ldmc_params_zero_grad(T->params);
            double loss = T->vae_task ? vae_micro(T, &b, 0) : diffusion_micro(T, &b, 0);
            double norm = ldmc_grad_norm(T->params);
            if (isfinite(loss) && isfinite(norm)) update(T, norm, cfg->adamw.lr, T->st.step + 1);
            ldmc_device_synchronize(cfg->device);
            T->st.step++;
            if (r >= 0) ms[r] = 1e3 * (now_seconds() - t0);
        }
    }
    free(b.pixels);
    free(b.c_size);
    free(b.c_crop);
    free(b.class_ids);
    free_trainer(T);
    return rc;
}
