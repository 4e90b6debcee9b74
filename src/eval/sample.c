// Sampling jobs (see sample.h). Tested by tests/test_cli.sh and tests/test_eval.c.
#include "eval/sample.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/device.h"
#include "data/image.h"
#include "io/config.h"
#include "io/files.h"
#include "io/image_write.h"
#include "io/model_files.h"
#include "nn/models.h"
#include "pipeline/latents.h"

// ---- the model --------------------------------------------------------------------------------

static bool has_vector_part(const ldmc_unet_config *u, ldmc_vector_part part) {
    for (int i = 0; i < u->n_vector; i++)
        if (u->vector[i] == part) return true;
    return false;
}

static int parse_prediction(const char *name, ldmc_prediction *out, ldmc_err *err) {
    if (!strcmp(name, "eps") || !strcmp(name, "epsilon"))
        *out = LDMC_PREDICT_EPS;
    else if (!strcmp(name, "v"))
        *out = LDMC_PREDICT_V;
    else
        return LDMC_ERR(err, "prediction '%s': expected eps or v", name);
    return 0;
}

static bool exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

// --vae: the autoencoder of another model config.
static int vae_from_config(ldmc_train_config *c, const char *path, ldmc_err *err) {
    ldmc_model_config v;
    if (ldmc_model_config_load(path, &v, err) != 0) return -1;
    if (!v.has_vae) return LDMC_ERR(err, "%s: --vae names a config without a `vae:` section", path);
    c->has_vae = true, c->vae = v.vae;
    return 0;
}

// A model config (a `unet:` section) as the training config the loaders take.
static int from_model_config(ldmc_sample_model *m, const char *config,
                             const ldmc_sample_model_options *o, ldmc_err *err) {
    ldmc_train_config *c = &m->cfg;
    c->task = LDMC_TASK_DIFFUSION;
    snprintf(c->source_path, sizeof c->source_path, "%s", config);
    if (ldmc_model_config_load(config, &c->model, err) != 0) return -1;
    if (!c->model.has_unet)
        return LDMC_ERR(err, "%s: no `unet:` section: nothing to sample from", config);
    if (!o->weights)
        return LDMC_ERR(err,
                        "%s: a model config samples from --weights FILE (an official single file, "
                        "or a diffusers folder)",
                        config);
    snprintf(m->weights, sizeof m->weights, "%s", o->weights);
    if (o->vae_config && vae_from_config(c, o->vae_config, err) != 0) return -1;
    if (!o->vae_config && c->model.has_vae) c->has_vae = true, c->vae = c->model.vae;
    snprintf(c->vae_weights, sizeof c->vae_weights, "%s",
             o->vae_weights ? o->vae_weights : o->weights);
    snprintf(c->text_vocab, sizeof c->text_vocab, "%s", o->vocab ? o->vocab : "");
    snprintf(c->text_weights, sizeof c->text_weights, "%s", o->weights);
    c->text_uncond_empty = has_vector_part(&c->model.unet, LDMC_VECTOR_AESTHETIC_SCORE);
    m->prediction = LDMC_PREDICT_EPS;
    return 0;
}

// A training config: the weights its run wrote, its autoencoder, text encoders and prediction.
static int from_train_config(ldmc_sample_model *m, const char *config,
                             const ldmc_sample_model_options *o, ldmc_err *err) {
    ldmc_train_config *c = &m->cfg;
    if (ldmc_train_config_load(config, NULL, 0, c, err) != 0) return -1;
    if (c->task != LDMC_TASK_DIFFUSION)
        return LDMC_ERR(err, "%s: a %s config: an autoencoder has nothing to sample", config,
                        ldmc_task_name(c->task));
    int len = o->weights ? snprintf(m->weights, sizeof m->weights, "%s", o->weights)
                         : snprintf(m->weights, sizeof m->weights, "%.*s/model.safetensors",
                                    (int)sizeof m->weights - 20, c->out);
    if (len >= (int)sizeof m->weights)
        return LDMC_ERR(err, "%s: the weights' path is too long", config);
    if (!exists(m->weights))
        return LDMC_ERR(err,
                        "%s: no weights at %s: the run has not finished (train it, or name a "
                        "checkpoint's model.safetensors or ema.safetensors with --weights)",
                        config, m->weights);
    if (o->vae_config && vae_from_config(c, o->vae_config, err) != 0) return -1;
    if (o->vae_weights) snprintf(c->vae_weights, sizeof c->vae_weights, "%s", o->vae_weights);
    if (o->vocab) snprintf(c->text_vocab, sizeof c->text_vocab, "%s", o->vocab);
    if (c->text_train) // the run trained the encoders: they are in its weights
        snprintf(c->text_weights, sizeof c->text_weights, "%s", m->weights);
    m->prediction = c->noise.prediction;
    return 0;
}

int ldmc_sample_model_load(ldmc_sample_model *m, const char *config,
                           const ldmc_sample_model_options *o, ldmc_err *err) {
    memset(m, 0, sizeof *m);
    ldmc_cfg *root = ldmc_cfg_load(config, err);
    if (!root) return -1;
    // a model config has `unet:` or a `vae:` section; a training config names them (vae: FILE)
    const ldmc_cfg *vae = ldmc_cfg_get(root, "vae");
    bool model_config = ldmc_cfg_get(root, "unet") || (vae && vae->kind == LDMC_CFG_MAP);
    ldmc_cfg_free(root);
    if ((model_config ? from_model_config : from_train_config)(m, config, o, err) != 0) return -1;
    ldmc_train_config *c = &m->cfg;
    if (o->prediction && parse_prediction(o->prediction, &m->prediction, err) != 0) return -1;
    if (o->uncond) {
        if (strcmp(o->uncond, "zeros") && strcmp(o->uncond, "empty"))
            return LDMC_ERR(err, "--uncond %s: expected zeros or empty", o->uncond);
        c->text_uncond_empty = !strcmp(o->uncond, "empty");
    }
    ldmc_unet_init(&m->unet, &c->model.unet);
    ldmc_params_alloc(&m->unet.params, LDMC_ROLE_WEIGHTS);
    ldmc_model um = ldmc_unet_model(&m->unet);
    if (ldmc_load_model(&um, m->weights, NULL, err) != 0) return -1;
    if (o->need_vae) {
        if (!c->has_vae)
            return LDMC_ERR(err,
                            "%s: no autoencoder to decode the samples: name its model config "
                            "with --vae (configs/sdxl_vae.yaml for SDXL)",
                            config);
        if (!c->vae_weights[0])
            return LDMC_ERR(err, "%s: the autoencoder needs weights (--vae-weights)", config);
        if (c->vae.embed_dim != c->model.unet.in_channels)
            return LDMC_ERR(err,
                            "%s: the autoencoder's latents have %d channels, the UNet takes %d",
                            config, c->vae.embed_dim, c->model.unet.in_channels);
        ldmc_vae_init(&m->vae, &c->vae);
        m->have_vae = true;
        ldmc_params_alloc(&m->vae.params, LDMC_ROLE_WEIGHTS);
        ldmc_model vm = ldmc_vae_model(&m->vae);
        if (ldmc_load_model(&vm, c->vae_weights, NULL, err) != 0) return -1;
        m->factor = 1 << (c->vae.levels - 1);
    }
    if (ldmc_text_models_load(&m->text, c, err) != 0) return -1;
    m->conditioner = (ldmc_conditioner){.unet = &m->unet.cfg};
    ldmc_text_models_attach(&m->text, c, &m->conditioner);
    ldmc_schedule_sdxl(&m->schedule);
    return 0;
}

void ldmc_sample_model_free(ldmc_sample_model *m) {
    ldmc_unet_free(&m->unet);
    if (m->have_vae) ldmc_vae_free(&m->vae);
    ldmc_text_models_free(&m->text);
    ldmc_train_config_free(&m->cfg);
}

void ldmc_sample_model_to_device(ldmc_sample_model *m) {
    ldmc_params_to_device(&m->unet.params);
    if (m->have_vae) ldmc_params_to_device(&m->vae.params);
    for (int i = 0; i < m->text.n; i++)
        ldmc_params_to_device(&m->text.enc[i].params);
}

// ---- the job ----------------------------------------------------------------------------------

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

typedef struct progress {
    bool quiet, tty;          // tty: the line is rewritten after each step, else once a batch
    int first, count, images; // the batch's first image and size; the job's images
    int steps;                // of a batch
    int done;                 // steps done in this batch
    int done_before, total;   // steps of earlier batches; of the whole job
    double start;             // of the job
} progress;

static void print_progress(const progress *p) {
    const int done = p->done_before + p->done;
    const double per_step = (now() - p->start) / (done ? done : 1);
    printf("%simages %d-%d of %d | step %d/%d | %.2f s/step | ETA %.0fs%s", p->tty ? "\r" : "",
           p->first + 1, p->first + p->count, p->images, p->done, p->steps, per_step,
           per_step * (p->total - done), p->tty ? "   " : "\n");
    fflush(stdout);
}

// After each step: the progress line on a terminal.
static void on_step(void *arg, int i) {
    (void)i;
    progress *p = arg;
    p->done++;
    if (!p->quiet && p->tty) print_progress(p);
}

// The init image at W x H: scaled to cover, centre-cropped, as [-1, 1] floats (H, W, 3).
static float *init_pixels(const char *path, int W, int H, ldmc_err *err) {
    ldmc_image img, scaled;
    if (ldmc_image_load(path, 0, 0, &img, err) != 0) return NULL;
    double s = fmax((double)W / img.width, (double)H / img.height);
    int sw = (int)ceil(img.width * s - 1e-9), sh = (int)ceil(img.height * s - 1e-9);
    sw = sw < W ? W : sw, sh = sh < H ? H : sh;
    int rc = ldmc_image_resize(&img, sw, sh, &scaled);
    ldmc_image_free(&img);
    if (rc != 0) {
        LDMC_ERR(err, "%s: cannot resize to %dx%d", path, sw, sh);
        return NULL;
    }
    float *px = malloc((size_t)W * H * 3 * sizeof *px);
    if (!px) {
        ldmc_image_free(&scaled);
        LDMC_ERR(err, "out of memory");
        return NULL;
    }
    int x0 = (sw - W) / 2, y0 = (sh - H) / 2;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W * 3; x++)
            px[(size_t)y * W * 3 + x] =
                scaled.pixels[((size_t)(y + y0) * sw + x0) * 3 + x] / 127.5f - 1.0f;
    ldmc_image_free(&scaled);
    return px;
}

// The init image's latents (h, w, C) at the model's scale: the posterior's mean (SDXL's
// posterior std is ~1e-3 of the latents' spread; diffusers draws from it, the mean is its mode).
static float *init_latents(ldmc_ctx *ctx, const ldmc_sample_model *m, const char *path, int W,
                           int H, ldmc_err *err) {
    float *px = init_pixels(path, W, H, err);
    if (!px) return NULL;
    const int f = m->factor, C = m->vae.cfg.embed_dim;
    size_t n = (size_t)(H / f) * (W / f) * C;
    float *z = malloc(n * sizeof *z);
    if (!z) {
        free(px);
        LDMC_ERR(err, "out of memory");
        return NULL;
    }
    ldmc_ctx_reset(ctx);
    ldmc_latent_moments q = ldmc_encode_images(ctx, &m->vae, px, 1, H, W);
    ldmc_read_f32(q.mean, z);
    for (size_t i = 0; i < n; i++)
        z[i] = (float)(z[i] * m->vae.cfg.scale_factor);
    ldmc_ctx_reset(ctx);
    free(px);
    return z;
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    if (s && !s[1]) return path; // a folder given with its slash
    return s ? s + 1 : path;
}

// The `parameters` text: the prompt line, the negative prompt's, then "Key: value" pairs.
static void parameters_text(char *out, size_t size, const ldmc_sample_model *m,
                            const ldmc_sample_job *job, const char *row, uint64_t seed,
                            const ldmc_sample_options *o) {
    size_t at = 0;
#define PUT(...)                                                                                   \
    do {                                                                                           \
        if (at < size) at += (size_t)snprintf(out + at, size - at, __VA_ARGS__);                   \
    } while (0)
    PUT("%s\n", row);
    if (job->negative) PUT("Negative prompt: %s\n", job->negative);
    PUT("Steps: %d, Sampler: %s, Schedule: %s, CFG scale: %g, Seed: %llu, Size: %dx%d, Model: %s",
        job->steps, ldmc_sampler_name(o->sampler),
        ldmc_discretization_name(ldmc_sampler_discretization(o)), job->guidance,
        (unsigned long long)seed, job->width, job->height, base_name(m->weights));
    PUT(", Prediction: %s", m->prediction == LDMC_PREDICT_V ? "v" : "eps");
    if (job->refiner)
        PUT(", Refiner: %s, Refiner switch at: %g", base_name(job->refiner->weights),
            job->switch_at);
    if (job->init_image)
        PUT(", Init image: %s, Denoising strength: %g", base_name(job->init_image), job->strength);
    PUT(", Version: ldmc");
#undef PUT
}

// diffusers' postprocess: (x + 1)/2 clamped to [0, 1], times 255, rounded half to even.
static uint8_t to_u8(float v) {
    double x = (v + 1.0) / 2.0;
    x = x < 0 ? 0 : x > 1 ? 1 : x;
    return (uint8_t)nearbyint(x * 255.0);
}

static int write_grid(const char *dir, const uint8_t *images, int rows, int cols, int W, int H,
                      ldmc_err *err) {
    const int pad = 4, gw = cols * W + (cols + 1) * pad, gh = rows * H + (rows + 1) * pad;
    uint8_t *g = malloc((size_t)gw * gh * 3);
    if (!g) return LDMC_ERR(err, "out of memory");
    memset(g, 255, (size_t)gw * gh * 3);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            const uint8_t *img = images + ((size_t)r * cols + c) * W * H * 3;
            for (int y = 0; y < H; y++)
                memcpy(g + ((size_t)(pad + r * (H + pad) + y) * gw + pad + c * (W + pad)) * 3,
                       img + (size_t)y * W * 3, (size_t)W * 3);
        }
    char path[4200];
    snprintf(path, sizeof path, "%s/grid.png", dir);
    int rc = ldmc_png_write(path, g, gw, gh, err);
    free(g);
    return rc;
}

// Checks the job against the model (and refiner) before anything runs.
static int check_job(const ldmc_sample_model *m, const ldmc_sample_job *job, ldmc_err *err) {
    if (!ldmc_sampler_find(job->sampler))
        return LDMC_ERR(err, "--sampler %s: expected one of %s", job->sampler,
                        ldmc_sampler_names());
    if (job->steps < 1 || job->steps > m->schedule.steps)
        return LDMC_ERR(err, "--steps %d: expected 1 to %d", job->steps, m->schedule.steps);
    ldmc_sample_options so = {.sampler = ldmc_sampler_find(job->sampler),
                              .schedule = &m->schedule,
                              .discretization = job->discretization,
                              .steps = job->steps};
    if (ldmc_sampler_discretization(&so) == LDMC_SIGMAS_LDM) {
        // LDM's uniform timesteps (stride N // n) leave the top of the schedule out when the
        // steps do not divide it: refused when more than two strides are missing (600 steps
        // would start at t = 600) or a timestep repeats (1000 steps: 999 twice)
        const int N = m->schedule.steps, stride = N / job->steps;
        double t0 = ldmc_sampler_timestep(&so, 0),
               t1 = job->steps > 1 ? ldmc_sampler_timestep(&so, 1) : -1;
        if ((N - 1) - t0 >= 2 * stride || t0 == t1)
            return LDMC_ERR(err,
                            "%s with %d steps: LDM's timesteps would start at t = %g of %d (use a "
                            "step count that divides %d, or --schedule sgm)",
                            job->sampler, job->steps, t0, m->schedule.steps, m->schedule.steps);
    }
    if (job->per_row < 1 || job->batch < 1 || job->n_rows < 1)
        return LDMC_ERR(err, "nothing to sample (%d rows of %d, batch %d)", job->n_rows,
                        job->per_row, job->batch);
    const int align = m->factor << (m->unet.cfg.levels - 1);
    if (job->width <= 0 || job->height <= 0 || job->width % align || job->height % align)
        return LDMC_ERR(err, "--size %dx%d: width and height must be multiples of %d", job->width,
                        job->height, align);
    if (m->unet.cfg.n_classes) {
        if (!job->classes)
            return LDMC_ERR(err, "%s: a class-conditional model: name classes with --class",
                            m->cfg.source_path);
        for (int i = 0; i < job->n_rows; i++)
            if (job->classes[i] < 0 || job->classes[i] >= m->unet.cfg.n_classes)
                return LDMC_ERR(err, "--class %d: the model has classes 0 to %d", job->classes[i],
                                m->unet.cfg.n_classes - 1);
    } else if (job->classes) {
        return LDMC_ERR(err, "%s: --class, but the model is not class-conditional",
                        m->cfg.source_path);
    }
    if (m->text.n && !job->prompts)
        return LDMC_ERR(err, "%s: a text model: give --prompt or --prompts", m->cfg.source_path);
    if (job->negative && !m->text.n)
        return LDMC_ERR(err, "%s: --negative, but the model has no text encoders",
                        m->cfg.source_path);
    if (!m->text.n && job->prompts)
        return LDMC_ERR(err, "%s: --prompt, but the model has no text encoders",
                        m->cfg.source_path);
    if (job->init_image && (job->strength <= 0 || job->strength > 1))
        return LDMC_ERR(err, "--strength %g: expected (0, 1]", job->strength);
    if (job->init_image && ldmc_strength_start(job->steps, job->strength) == job->steps)
        return LDMC_ERR(err, "--strength %g of %d steps runs no step", job->strength, job->steps);
    const ldmc_sample_model *r = job->refiner;
    if (r) {
        if (r->unet.cfg.in_channels != m->unet.cfg.in_channels)
            return LDMC_ERR(err, "the refiner takes %d latent channels, the base makes %d",
                            r->unet.cfg.in_channels, m->unet.cfg.in_channels);
        if (r->unet.cfg.n_classes)
            return LDMC_ERR(err, "%s: a class-conditional refiner is not supported",
                            r->cfg.source_path);
        if (r->text.n && !job->prompts)
            return LDMC_ERR(err, "%s: the refiner is a text model: the base needs prompts too",
                            r->cfg.source_path);
        const int ralign = m->factor << (r->unet.cfg.levels - 1);
        if (job->width % ralign || job->height % ralign)
            return LDMC_ERR(err, "--size %dx%d: the refiner needs multiples of %d", job->width,
                            job->height, ralign);
        if (job->switch_at < 0 || job->switch_at > 1)
            return LDMC_ERR(err, "--switch %g: expected [0, 1]", job->switch_at);
    }
    return 0;
}

int ldmc_sample_run(ldmc_ctx *ctx, ldmc_sample_model *m, const ldmc_sample_job *job,
                    uint8_t **images_out, ldmc_err *err) {
    if (images_out) *images_out = NULL;
    if (check_job(m, job, err) != 0) return -1;
    const int W = job->width, H = job->height, f = m->factor, C = m->unet.cfg.in_channels;
    const int h = H / f, w = W / f, all_images = job->n_rows * job->per_row;
    // this shard's images: i = shard, shard + shards, ... (their seeds and names stay global)
    const int shards = job->shards > 0 ? job->shards : 1, shard = job->shard;
    if (shard < 0 || shard >= shards) return LDMC_ERR(err, "shard %d of %d", shard, shards);
    const int total = all_images / shards + (shard < all_images % shards);
    const size_t image_px = (size_t)W * H * 3, latent = (size_t)h * w * C;
    ldmc_sample_options o = {.sampler = ldmc_sampler_find(job->sampler),
                             .schedule = &m->schedule,
                             .prediction = m->prediction,
                             .discretization = job->discretization,
                             .steps = job->steps,
                             .last = job->steps};
    const int first = job->init_image ? ldmc_strength_start(job->steps, job->strength) : 0;
    int k = job->refiner ? ldmc_sampler_switch(&o, job->switch_at) : job->steps;
    if (k < first) k = first;
    if (ldmc_mkdirs(job->out_dir, err) != 0) return -1;
    float *z0 = NULL;
    if (job->init_image && !(z0 = init_latents(ctx, m, job->init_image, W, H, err))) return -1;
    // every image kept only for the caller or the grid; else a batch's worth
    const bool keep_all = images_out || (job->grid && total > 1 && shards == 1);
    uint8_t *all = malloc((size_t)(keep_all ? total : job->batch) * image_px);
    float *decoded = malloc((size_t)job->batch * image_px * sizeof *decoded);
    char *text = malloc(8192);
    if (!all || !decoded || !text) {
        free(z0), free(all), free(decoded), free(text);
        return LDMC_ERR(err, "out of memory");
    }
    progress p = {.quiet = job->quiet,
                  .tty = isatty(fileno(stdout)),
                  .images = total,
                  .steps = job->steps - first,
                  .start = now()};
    p.total = (total + job->batch - 1) / job->batch * p.steps;
    o.progress = on_step, o.progress_arg = &p;
    int rc = 0, written = 0;
    for (int b0 = 0; b0 < total && rc == 0; b0 += job->batch) {
        const int nb = total - b0 < job->batch ? total - b0 : job->batch;
        ldmc_ctx_reset(ctx);
        ldmc_rng *start = ldmc_host_scratch(ctx, (size_t)nb * sizeof *start);
        ldmc_rng *ancestral = ldmc_host_scratch(ctx, (size_t)nb * sizeof *ancestral);
        int64_t *labels = ldmc_host_scratch(ctx, (size_t)nb * sizeof *labels);
        const char **captions = ldmc_host_scratch(ctx, (size_t)nb * sizeof *captions);
        const char **negative = ldmc_host_scratch(ctx, (size_t)nb * sizeof *negative);
        int32_t *size = ldmc_host_scratch(ctx, (size_t)nb * 2 * sizeof *size);
        int32_t *crop = ldmc_host_scratch(ctx, (size_t)nb * 2 * sizeof *crop);
        for (int j = 0; j < nb; j++) {
            const int i = (b0 + j) * shards + shard, row = i / job->per_row;
            const uint64_t seed = job->seed + (uint64_t)i;
            start[j] = ldmc_rng_make(seed, 0, 0, LDMC_RNG_SAMPLE);
            ancestral[j] = ldmc_rng_make(seed, 1, 0, LDMC_RNG_SAMPLE);
            labels[j] = job->classes ? job->classes[row] : 0;
            captions[j] = job->prompts ? job->prompts[row] : NULL;
            negative[j] = job->negative;
            size[2 * j] = H, size[2 * j + 1] = W, crop[2 * j] = crop[2 * j + 1] = 0;
        }
        ldmc_cond_batch cond = {.n = nb,
                                .class_ids = job->classes ? labels : NULL,
                                .c_size = size,
                                .c_crop = crop,
                                .c_target = size,
                                .captions = job->prompts ? captions : NULL,
                                .negative = job->negative ? negative : NULL};
        o.noise = ancestral;
        o.first = first, o.last = k, o.prediction = m->prediction; // the base's part
        ldmc_tensor *x;
        if (z0) {
            float *rows = ldmc_host_scratch(ctx, (size_t)nb * latent * sizeof *rows);
            for (int j = 0; j < nb; j++)
                memcpy(rows + (size_t)j * latent, z0, latent * sizeof *rows);
            x = ldmc_input(ctx, LDMC_F32, 4, (int64_t[]){nb, h, w, C}, rows, LDMC_F32);
            ldmc_sampler_add_noise(ctx, x, start, ldmc_sampler_sigma(&o, first));
        } else {
            x = ldmc_zeros(ctx, LDMC_F32, 4, (int64_t[]){nb, h, w, C});
            ldmc_sampler_start_noise(ctx, &o, x, start);
        }
        p.first = b0, p.count = nb, p.done = 0;
        ldmc_denoiser d = {.unet = &m->unet,
                           .conditioner = &m->conditioner,
                           .cond = &cond,
                           .guidance_scale = job->guidance};
        rc = ldmc_run_sampler(ctx, &o, &d, x, err);
        if (rc == 0 && k < job->steps) { // the refiner takes the latents where the base stopped
            ldmc_denoiser rd = {.unet = &job->refiner->unet,
                                .conditioner = &job->refiner->conditioner,
                                .cond = &cond,
                                .guidance_scale = job->guidance};
            o.first = k, o.last = job->steps, o.prediction = job->refiner->prediction;
            rc = ldmc_run_sampler(ctx, &o, &rd, x, err);
        }
        if (rc != 0) break;
        if (!p.quiet && !p.tty) print_progress(&p);
        p.done_before += p.steps;
        ldmc_decode_latents(ctx, &m->vae, x, decoded);
        for (int j = 0; j < nb && rc == 0; j++) {
            const int i = (b0 + j) * shards + shard, row = i / job->per_row;
            uint8_t *img = all + (size_t)(keep_all ? b0 + j : j) * image_px;
            for (size_t q = 0; q < image_px; q++)
                img[q] = to_u8(decoded[(size_t)j * image_px + q]);
            char row_text[64];
            const char *what = row_text;
            if (job->prompts)
                what = job->prompts[row];
            else if (job->classes)
                snprintf(row_text, sizeof row_text, "class %d", job->classes[row]);
            else
                snprintf(row_text, sizeof row_text, "(unconditional)");
            parameters_text(text, 8192, m, job, what, job->seed + (uint64_t)i, &o);
            char path[4200];
            snprintf(path, sizeof path, "%s/%05d-%llu.png", job->out_dir, i,
                     (unsigned long long)(job->seed + (uint64_t)i));
            rc = ldmc_png_write_text(path, img, W, H, "parameters", text, err);
            if (rc == 0) written++;
        }
    }
    if (!job->quiet && p.tty) printf("\n");
    if (rc == 0 && keep_all && job->grid && total > 1 && shards == 1 &&
        write_grid(job->out_dir, all, job->n_rows, job->per_row, W, H, err) != 0) {
        // the images are written: a grid that cannot be made is a warning
        fprintf(stderr, "warning: no grid.png: %s\n", err->message);
        *err = (ldmc_err){0};
    }
    free(z0), free(decoded), free(text);
    if (rc == 0 && images_out)
        *images_out = all;
    else
        free(all);
    return rc == 0 ? written : -1;
}
