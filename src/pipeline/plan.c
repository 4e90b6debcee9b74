// Memory plans by dry run of the training step (see plan.h). Tested by tests/test_pipeline.c.
#include "pipeline/plan.h"

#include <stdlib.h>

#include "core/error.h"
#include "core/tape.h"
#include "nn/models.h"
#include "pipeline/loss.h"

// Address space reserved for a dry run's arena: enough for any step that can be planned.
#define DRY_RUN_ARENA ((size_t)1 << 42)
#define TEXT_TOKENS 77

static void reserve(ldmc_params *p) {
    ldmc_params_reserve(p, LDMC_ROLE_WEIGHTS); // the dry run needs the tensors, not the bytes
    ldmc_params_reserve(p, LDMC_ROLE_GRAD);
}

static void *zeroed(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    LDMC_CHECK(p, "out of memory planning a step");
    return p;
}

ldmc_dry_run ldmc_dry_run_unet_step(ldmc_unet *u, ldmc_device device, int batch, int h, int w) {
    const ldmc_unet_config *c = &u->cfg;
    reserve(&u->params);
    static ldmc_schedule schedule;
    ldmc_schedule_sdxl(&schedule);
    ldmc_noise_options noise = {.prediction = LDMC_PREDICT_EPS, .t_max = 1000};
    ldmc_conditioner conditioner = {.unet = c};
    ldmc_diffusion_step step = {.unet = u,
                                .latent_scale = 1,
                                .schedule = &schedule,
                                .noise = &noise,
                                .conditioner = &conditioner};
    // The conditioning's host values exist (the conditioner reads them); nothing else is read.
    size_t n = (size_t)batch;
    int32_t *sizes = zeroed(2 * n, sizeof *sizes);
    int64_t *labels = zeroed(n, sizeof *labels);
    float *context =
        c->context_dim ? zeroed(n * TEXT_TOKENS * c->context_dim, sizeof(float)) : NULL;
    float *pooled = c->pooled_dim ? zeroed(n * c->pooled_dim, sizeof(float)) : NULL;
    ldmc_step_batch b = {.n = batch,
                         .lh = h,
                         .lw = w,
                         .cond = {.n = batch,
                                  .class_ids = labels,
                                  .c_size = sizes,
                                  .c_crop = sizes,
                                  .c_target = sizes,
                                  .context = context,
                                  .context_tokens = TEXT_TOKENS,
                                  .pooled = pooled}};
    ldmc_ctx ctx;
    ldmc_ctx_init_dry_run_device(&ctx, device, DRY_RUN_ARENA);
    ldmc_diffusion_loss(&ctx, &step, &b, &(ldmc_step_key){0}, 1);
    ldmc_dry_run r = {ctx.data.high_water, ctx.flops};
    ldmc_ctx_free(&ctx);
    free(sizes), free(labels), free(context), free(pooled);
    return r;
}

ldmc_dry_run ldmc_dry_run_vae_step(ldmc_vae *v, ldmc_device device, int batch, int H, int W) {
    reserve(&v->params);
    ldmc_vae_step step = {.vae = v, .kl_weight = 1e-6};
    ldmc_step_batch b = {.n = batch, .height = H, .width = W};
    ldmc_ctx ctx;
    ldmc_ctx_init_dry_run_device(&ctx, device, DRY_RUN_ARENA);
    ldmc_vae_loss(&ctx, &step, &b, &(ldmc_step_key){0}, 1);
    ldmc_dry_run r = {ctx.data.high_water, ctx.flops};
    ldmc_ctx_free(&ctx);
    return r;
}

static void plan_parameters(const ldmc_params *p, ldmc_memory_plan *plan) {
    plan->parameters = ldmc_params_count(p, false);
    plan->trainable = ldmc_params_count(p, true);
    plan->weights = (size_t)plan->parameters * sizeof(float);
    plan->gradients = (size_t)plan->trainable * sizeof(float);
    plan->optimizer = 2 * plan->gradients;
}

void ldmc_unet_plan(ldmc_unet *u, int batch, int height, int width, ldmc_memory_plan *plan) {
    plan_parameters(&u->params, plan);
    bool was = u->recompute;
    u->recompute = false;
    plan->activations = ldmc_dry_run_unet_step(u, LDMC_CPU, batch, height, width).activations;
    u->recompute = true;
    plan->activations_recomputed =
        ldmc_dry_run_unet_step(u, LDMC_CPU, batch, height, width).activations;
    u->recompute = was;
}

void ldmc_vae_plan(ldmc_vae *v, int batch, int height, int width, ldmc_memory_plan *plan) {
    plan_parameters(&v->params, plan);
    bool was = v->recompute;
    v->recompute = false;
    plan->activations = ldmc_dry_run_vae_step(v, LDMC_CPU, batch, height, width).activations;
    v->recompute = true;
    plan->activations_recomputed =
        ldmc_dry_run_vae_step(v, LDMC_CPU, batch, height, width).activations;
    v->recompute = was;
}

int ldmc_model_plan(const ldmc_model *m, int batch, int H, int W, int f, ldmc_memory_plan *plan,
                    ldmc_err *err) {
    if (m->desc == &ldmc_unet_desc) {
        ldmc_unet *u = m->module;
        int align = f << (u->cfg.levels - 1);
        if (H % align || W % align)
            return LDMC_ERR(err, "--res must be a multiple of %d for this UNet", align);
        ldmc_unet_plan(u, batch, H / f, W / f, plan);
        return f;
    }
    if (m->desc == &ldmc_vae_desc) {
        ldmc_vae *v = m->module;
        int align = 1 << (v->cfg.levels - 1);
        if (H % align || W % align)
            return LDMC_ERR(err, "--res must be a multiple of %d for this VAE", align);
        ldmc_vae_plan(v, batch, H, W, plan);
        return 1;
    }
    return LDMC_ERR(err, "no training step to plan for a %s", m->desc->title);
}
