// The task table (see trainer_parts.h): what differs between training the diffusion UNet (on the
// frozen autoencoder's latents) and the autoencoder itself. Tested by tests/test_train.c.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/rng.h"
#include "io/model_files.h"
#include "nn/models.h"
#include "ops/param_ops.h"
#include "pipeline/latents.h"
#include "pipeline/loss.h"
#include "pipeline/sampler.h"
#include "train/trainer_parts.h"

// A loader's batch as the loss steps take it.
static ldmc_step_batch step_batch(const ldmc_batch *b) {
    return (ldmc_step_batch){.n = b->n,
                             .pixels = b->mean ? NULL : b->pixels,
                             .height = b->height,
                             .width = b->width,
                             .mean = b->mean,
                             .std = b->std,
                             .lh = b->lh,
                             .lw = b->lw,
                             .cond = {.n = b->n,
                                      .class_ids = b->class_ids,
                                      .c_size = b->c_size,
                                      .c_crop = b->c_crop,
                                      .c_target = b->c_target,
                                      .aesthetic = b->aesthetic,
                                      .context = b->context,
                                      .context_tokens = b->text_tokens,
                                      .pooled = b->pooled,
                                      .captions = b->captions}};
}

// ---- diffusion ----------------------------------------------------------------------------------

// The UNet trained, the autoencoder frozen: its weights from vae_weights (random in a
// benchmark), needed to encode images (unless the data is a latent cache) and for previews.
static int diffusion_setup(trainer *T, ldmc_err *err) {
    const ldmc_train_config *cfg = T->cfg;
    ldmc_unet_init(&T->unet, &cfg->model.unet);
    T->have_unet = true;
    T->unet.recompute = cfg->recompute;
    T->unet.recompute_projections = cfg->recompute_projections;
    T->model = ldmc_unet_model(&T->unet);
    T->conditioner = (ldmc_conditioner){.unet = &T->unet.cfg, .dropout = cfg->cond_dropout};
    // (a benchmark's batches bring random text embeddings: `ldmc bench text` times the encoders)
    if (!T->bench && ldmc_text_models_load(&T->text, cfg, err) != 0) return -1;
    ldmc_text_models_attach(&T->text, cfg, &T->conditioner);
    ldmc_vae_init(&T->vae, &cfg->vae);
    T->have_vae = true;
    ldmc_params_alloc(&T->vae.params, LDMC_ROLE_WEIGHTS);
    if (T->bench) {
        ldmc_params_init(&T->vae.params, cfg->seed); // timing only: any weights do
        T->vae_weights = true;
    } else if (cfg->vae_weights[0]) {
        ldmc_model vae = ldmc_vae_model(&T->vae);
        if (ldmc_load_model(&vae, cfg->vae_weights, NULL, err) != 0) return -1;
        T->vae_weights = true;
    } else if (!cfg->from_cache) {
        return LDMC_ERR(err,
                        "%s: `vae_weights` is required to encode images (or train from a latent "
                        "cache made by `ldmc cache`)",
                        cfg->source_path);
    } else {
        printf("no vae_weights: sample grids are off (the latents cannot be decoded)\n");
    }
    if (T->vae.cfg.embed_dim != cfg->model.unet.in_channels)
        return LDMC_ERR(err, "%s: the VAE's latent has %d channels but the UNet takes %d",
                        cfg->source_path, T->vae.cfg.embed_dim, cfg->model.unet.in_channels);
    T->align = (1 << (T->vae.cfg.levels - 1)) << (cfg->model.unet.levels - 1);
    return 0;
}

static int check_cache(trainer *T, ldmc_err *err) {
    const ldmc_train_config *cfg = T->cfg;
    const ldmc_cache *c = &T->data.cache;
    if (c->channels != cfg->model.unet.in_channels)
        return LDMC_ERR(err, "%s: latents of %d channels, the UNet takes %d", cfg->data_path,
                        c->channels, cfg->model.unet.in_channels);
    if (fabs(c->scale_factor - T->vae.cfg.scale_factor) > 1e-9)
        return LDMC_ERR(err, "%s: made with scale factor %g, the config's VAE has %g",
                        cfg->data_path, c->scale_factor, T->vae.cfg.scale_factor);
    const ldmc_unet_config *u = &cfg->model.unet;
    if (ldmc_train_config_has_text(cfg)) {
        if (cfg->text_train)
            return LDMC_ERR(err,
                            "%s: text.train trains the encoders, and a latent cache holds their "
                            "outputs as they were: train from images (data.source: images)",
                            cfg->source_path);
        int pooled = ldmc_unet_pooled_text_dim(u);
        if (!c->text_tokens)
            return LDMC_ERR(err,
                            "%s: made without text embeddings: make it again with `ldmc cache` "
                            "from this text model's config",
                            cfg->data_path);
        if (c->text_tokens != cfg->model.text[0].context_length ||
            c->text_context_dim != u->context_dim || c->text_pooled_dim != pooled)
            return LDMC_ERR(err,
                            "%s: text embeddings of %d x %d and pooled %d, the model takes %d x %d "
                            "and pooled %d",
                            cfg->data_path, c->text_tokens, c->text_context_dim, c->text_pooled_dim,
                            cfg->model.text[0].context_length, u->context_dim, pooled);
        T->conditioner.empty_context = c->empty_context;
        T->conditioner.empty_pooled = c->empty_pooled;
    }
    int lalign = 1 << (cfg->model.unet.levels - 1);
    for (int g = 0; g < c->n_groups; g++)
        if (c->groups[g].h % lalign || c->groups[g].w % lalign)
            return LDMC_ERR(err,
                            "%s: latents of %dx%d (width x height) in group /buckets/%dx%d: the "
                            "UNet needs multiples of %d",
                            cfg->data_path, c->groups[g].w, c->groups[g].h, c->groups[g].height,
                            c->groups[g].width, lalign);
    return 0;
}

static int diffusion_check_data(trainer *T, ldmc_err *err) {
    const ldmc_train_config *cfg = T->cfg;
    if (T->data.have_cache && check_cache(T, err) != 0) return -1;
    if (T->data.sample_h % T->align || T->data.sample_w % T->align)
        return LDMC_ERR(err,
                        "%s: sample size %dx%d (width x height): the models need multiples of %d",
                        cfg->source_path, T->data.sample_w, T->data.sample_h, T->align);
    if (!cfg->model.unet.n_classes) return 0;
    bool images = T->data.have_dataset;
    int n = images ? T->data.dataset.n_classes : cfg->model.unet.n_classes;
    if (images && n == 0)
        return LDMC_ERR(err,
                        "%s: the UNet is class-conditional but the data has no labels (set "
                        "data.labels: folders or metadata)",
                        cfg->source_path);
    if (n > cfg->model.unet.n_classes)
        return LDMC_ERR(err, "%s: %d classes in the data, the UNet has %d", cfg->data_path, n,
                        cfg->model.unet.n_classes);
    return 0;
}

static double diffusion_micro(trainer *T, ldmc_ctx *ctx, const ldmc_batch *b,
                              const ldmc_step_key *key, double grad_scale) {
    const ldmc_train_config *cfg = T->cfg;
    ldmc_diffusion_step s = {.unet = &T->unet,
                             .vae = T->vae_weights ? &T->vae : NULL,
                             .latent_scale = T->vae.cfg.scale_factor,
                             .schedule = &T->schedule,
                             .noise = &cfg->noise,
                             .conditioner = &T->conditioner};
    ldmc_step_batch sb = step_batch(b);
    return ldmc_diffusion_loss(ctx, &s, &sb, key, grad_scale);
}

// A text model's preview prompts: sample.prompts, else the data's first distinct captions (up to
// 4). Returns how many.
static int preview_prompts(const trainer *T, const char **out, int max) {
    const ldmc_train_config *cfg = T->cfg;
    int n = 0;
    for (int i = 0; i < cfg->n_sample_prompts && n < max; i++)
        out[n++] = cfg->sample_prompts[i];
    if (n || !T->data.have_dataset) return n;
    const ldmc_dataset *d = &T->data.dataset;
    for (int i = 0; i < d->count && n < 4 && n < max; i++) {
        const char *c = d->items[i].caption;
        bool seen = !c;
        for (int j = 0; j < n && !seen; j++)
            seen = !strcmp(out[j], c);
        if (!seen) out[n++] = c;
    }
    return n;
}

// Samples of the first classes or prompts (a row each, up to 10), or of the unconditional model,
// from the same noise at every preview: DDIM with classifier-free guidance, the EMA weights when
// EMA is on, decoded by the autoencoder. `prompts` (rows) for a text model, else NULL.
static int sample_grid(trainer *T, train_grid *g, const char *const *prompts, ldmc_err *err) {
    const ldmc_train_config *cfg = T->cfg;
    const ldmc_unet_config *uc = &cfg->model.unet;
    const int n = g->rows * g->cols, f = 1 << (T->vae.cfg.levels - 1);
    const int h = g->H / f, w = g->W / f, C = uc->in_channels;
    ldmc_ctx *ctx = &T->ctx;
    ldmc_ctx_reset(ctx);
    int64_t *labels = ldmc_host_scratch(ctx, (size_t)n * sizeof *labels);
    const char **captions = ldmc_host_scratch(ctx, (size_t)n * sizeof *captions);
    int32_t *size = ldmc_host_scratch(ctx, (size_t)n * 2 * sizeof *size);
    int32_t *crop = ldmc_host_scratch(ctx, (size_t)n * 2 * sizeof *crop);
    for (int i = 0; i < n; i++) {
        labels[i] = i / g->cols;
        captions[i] = prompts ? prompts[i / g->cols] : NULL;
        size[2 * i] = g->H, size[2 * i + 1] = g->W, crop[2 * i] = crop[2 * i + 1] = 0;
    }
    ldmc_cond_batch cond = {.n = n,
                            .class_ids = labels,
                            .c_size = size,
                            .c_crop = crop,
                            .c_target = size,
                            .captions = captions};
    ldmc_denoiser d = {.unet = &T->unet,
                       .conditioner = &T->conditioner,
                       .cond = &cond,
                       .guidance_scale = cfg->sample_guidance};
    ldmc_sample_options o = {.sampler = ldmc_sampler_find("ddim"),
                             .schedule = &T->schedule,
                             .prediction = cfg->noise.prediction,
                             .steps = cfg->sample_steps,
                             .first = 0,
                             .last = cfg->sample_steps};
    ldmc_tensor *x = ldmc_zeros(ctx, LDMC_F32, 4, (int64_t[]){n, h, w, C});
    ldmc_rng *noise = ldmc_host_scratch(ctx, (size_t)n * sizeof *noise);
    for (int i = 0; i < n; i++) // the same at every preview
        noise[i] = ldmc_rng_make(cfg->seed, (uint32_t)i, 0, LDMC_RNG_SAMPLE);
    ldmc_sampler_start_noise(ctx, &o, x, noise);
    bool swap = cfg->ema_decay > 0; // (the caller swapped the EMA weights in: preview_ema)
    int rc = ldmc_run_sampler(ctx, &o, &d, x, err);
    if (rc == 0) ldmc_decode_latents(ctx, &T->vae, x, g->images);
    char guidance[32] = "";
    if (ldmc_denoiser_guided(&d))
        snprintf(guidance, sizeof guidance, ", guidance %g", d.guidance_scale);
    snprintf(g->title, sizeof g->title, "step %lld: DDIM %d steps%s%s", (long long)T->st.step,
             cfg->sample_steps, guidance, swap ? ", EMA weights" : "");
    return rc;
}

static int diffusion_preview(trainer *T, const ldmc_batch *last, train_grid *g, ldmc_err *err) {
    (void)last;
    if (!T->vae_weights) return 0; // no decoder: nothing to look at (said at the start)
    const ldmc_train_config *cfg = T->cfg;
    int n_classes = cfg->model.unet.n_classes;
    const char *prompts[LDMC_MAX_PATTERNS];
    int n_prompts = T->text.n ? preview_prompts(T, prompts, 10) : 0;
    if (T->text.n && !n_prompts) prompts[n_prompts++] = ""; // no captions: the empty prompt
    int rows = n_classes ? n_classes : n_prompts;
    *g = (train_grid){.rows = rows ? (rows < 10 ? rows : 10) : 2,
                      .cols = rows ? cfg->sample_per_class : 8,
                      .H = T->data.sample_h,
                      .W = T->data.sample_w,
                      .tag = "samples"};
    g->images = malloc((size_t)g->rows * g->cols * g->H * g->W * 3 * sizeof(float));
    if (!g->images) return LDMC_ERR(err, "out of memory");
    for (int r = 0; r < g->rows && n_classes; r++) {
        if (T->data.have_dataset && r < T->data.dataset.n_classes)
            snprintf(g->label_text[r], sizeof g->label_text[r], "%s",
                     T->data.dataset.class_names[r]);
        else
            snprintf(g->label_text[r], sizeof g->label_text[r], "class %d", r);
        g->labels[r] = g->label_text[r];
    }
    for (int r = 0; r < g->rows && n_prompts; r++) {
        snprintf(g->label_text[r], sizeof g->label_text[r], "%s", prompts[r]);
        g->labels[r] = g->label_text[r];
    }
    return sample_grid(T, g, n_prompts ? prompts : NULL, err);
}

static void diffusion_to_device(trainer *T) {
    ldmc_params_to_device(&T->vae.params);
    for (int i = 0; i < T->text.n; i++)
        ldmc_params_to_device(&T->text.enc[i].params);
}

// ---- the autoencoder ----------------------------------------------------------------------------

static int vae_setup(trainer *T, ldmc_err *err) {
    const ldmc_train_config *cfg = T->cfg;
    if (cfg->from_cache)
        return LDMC_ERR(err, "%s: the vae task trains on images, not a latent cache",
                        cfg->source_path);
    ldmc_vae_init(&T->vae, &cfg->model.vae);
    T->have_vae = true;
    T->vae.recompute = cfg->recompute;
    T->model = ldmc_vae_model(&T->vae);
    T->align = 1 << (T->vae.cfg.levels - 1);
    return 0;
}

static int vae_check_data(trainer *T, ldmc_err *err) {
    (void)T, (void)err;
    return 0;
}

static double vae_micro(trainer *T, ldmc_ctx *ctx, const ldmc_batch *b, const ldmc_step_key *key,
                        double grad_scale) {
    ldmc_vae_step s = {.vae = &T->vae, .kl_weight = T->cfg->kl_weight};
    ldmc_step_batch sb = step_batch(b);
    return ldmc_vae_loss(ctx, &s, &sb, key, grad_scale);
}

// The last batch's first images (top row) over their reconstructions (bottom row).
static int vae_preview(trainer *T, const ldmc_batch *last, train_grid *g, ldmc_err *err) {
    if (!last || last->n == 0) return 0; // (rank 0's part of the last batch was empty)
    *g = (train_grid){.rows = 2,
                      .cols = last->n < 8 ? last->n : 8,
                      .H = last->height,
                      .W = last->width,
                      .labels = {"input", "decoded"},
                      .tag = "reconstructions"};
    size_t image = (size_t)g->H * g->W * 3;
    g->images = malloc(2 * g->cols * image * sizeof(float));
    if (!g->images) return LDMC_ERR(err, "out of memory");
    memcpy(g->images, last->pixels, g->cols * image * sizeof(float));
    ldmc_ctx_reset(&T->ctx);
    ldmc_reconstruct_images(&T->ctx, &T->vae, last->pixels, g->cols, g->H, g->W,
                            g->images + g->cols * image);
    snprintf(g->title, sizeof g->title, "step %lld: reconstructions", (long long)T->st.step);
    return 0;
}

static void vae_to_device(trainer *T) { (void)T; }

// ---- the table
// ------------------------------------------------------------------------------------

static const train_task tasks[] = {
    [LDMC_TASK_DIFFUSION] = {"diffusion loss", diffusion_setup, diffusion_check_data,
                             diffusion_micro, diffusion_preview, diffusion_to_device, true},
    [LDMC_TASK_VAE] = {"VAE loss", vae_setup, vae_check_data, vae_micro, vae_preview, vae_to_device,
                       false},
};

const train_task *train_task_of(ldmc_task task) { return &tasks[task]; }
