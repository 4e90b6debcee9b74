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
    if (!p->update_in_backward) ldmc_params_reserve(p, LDMC_ROLE_GRAD); // (else backward's own)
}

static void *zeroed(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    LDMC_CHECK(p, "out of memory planning a step");
    return p;
}

double ldmc_plan_step(ldmc_device device, void (*run)(ldmc_ctx *ctx, void *user), void *user,
                      ldmc_step_plan *plan) {
    ldmc_ctx ctx;
    ldmc_ctx_init_dry_run_device(&ctx, device, DRY_RUN_ARENA);
    run(&ctx, user); // without a plan: the bump arena's high-water mark
    size_t unplanned = ctx.data.high_water;
    ldmc_ctx_free(&ctx);
    ldmc_ctx_init_dry_run_device(&ctx, device, DRY_RUN_ARENA);
    ldmc_ctx_record_plan(&ctx, plan);
    run(&ctx, user);
    double flops = ctx.flops; // outputs made again in backward (ldmc_remake_later) included
    plan->grad_bytes = ctx.grad_bytes, plan->grad_bytes_bf16 = ctx.grad_bytes_bf16;
    plan->grad_bytes_zeroed = ctx.grad_bytes_zeroed;
    ldmc_ctx_finish_plan(&ctx);
    ldmc_ctx_free(&ctx);
    plan->unplanned = unplanned;
    return flops;
}

// The plan of run's step (kept in `plan` when not NULL) and its figures.
static ldmc_dry_run dry_run(ldmc_device device, void (*run)(ldmc_ctx *ctx, void *user), void *user,
                            ldmc_step_plan *plan) {
    ldmc_step_plan own = {0}, *p = plan ? plan : &own;
    double flops = ldmc_plan_step(device, run, user, p);
    ldmc_dry_run r = {p->peak, p->unplanned, p->live_peak, flops};
    ldmc_plan_free(&own);
    return r;
}

typedef struct diffusion_run {
    const ldmc_diffusion_step *step;
    const ldmc_step_batch *b;
} diffusion_run;

static void run_diffusion(ldmc_ctx *ctx, void *user) {
    const diffusion_run *r = user;
    ldmc_diffusion_loss(ctx, r->step, r->b, &(ldmc_step_key){0}, 1);
}

double ldmc_plan_diffusion_step(ldmc_device device, const ldmc_diffusion_step *step,
                                const ldmc_step_batch *b, ldmc_step_plan *plan) {
    return ldmc_plan_step(device, run_diffusion, &(diffusion_run){step, b}, plan);
}

typedef struct vae_run {
    const ldmc_vae_step *step;
    const ldmc_step_batch *b;
} vae_run;

static void run_vae(ldmc_ctx *ctx, void *user) {
    const vae_run *r = user;
    ldmc_vae_loss(ctx, r->step, r->b, &(ldmc_step_key){0}, 1);
}

ldmc_dry_run ldmc_dry_run_unet_step(ldmc_unet *u, ldmc_device device, int batch, int h, int w,
                                    ldmc_step_plan *plan) {
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
    ldmc_dry_run r = dry_run(device, run_diffusion, &(diffusion_run){&step, &b}, plan);
    free(sizes), free(labels), free(context), free(pooled);
    return r;
}

ldmc_dry_run ldmc_dry_run_vae_step(ldmc_vae *v, ldmc_device device, int batch, int H, int W,
                                   ldmc_step_plan *plan) {
    reserve(&v->params);
    ldmc_vae_step step = {.vae = v, .kl_weight = 1e-6};
    ldmc_step_batch b = {.n = batch, .height = H, .width = W};
    return dry_run(device, run_vae, &(vae_run){&step, &b}, plan);
}

ldmc_dry_run ldmc_dry_run_text_forward(ldmc_text_encoder *e, ldmc_device device, int batch) {
    ldmc_params_reserve(&e->params, LDMC_ROLE_WEIGHTS);
    int32_t *ids = zeroed((size_t)batch * (size_t)e->cfg.context_length, sizeof *ids);
    ldmc_ctx ctx;
    ldmc_ctx_init_dry_run_device(&ctx, device, DRY_RUN_ARENA);
    ldmc_tensor *context, *pooled;
    ldmc_text_encoder_forward(&ctx, e, batch, ids, &context, &pooled);
    ldmc_dry_run r = {ctx.data.high_water, ctx.data.high_water, ctx.data.high_water, ctx.flops};
    ldmc_ctx_free(&ctx);
    free(ids);
    return r;
}

// m's step on the CPU at (batch, h, w): latents for a UNet, images for a VAE.
static ldmc_dry_run step_activations(const ldmc_model *m, int batch, int h, int w) {
    return m->desc == &ldmc_unet_desc
               ? ldmc_dry_run_unet_step(m->module, LDMC_CPU, batch, h, w, NULL)
               : ldmc_dry_run_vae_step(m->module, LDMC_CPU, batch, h, w, NULL);
}

int ldmc_model_plan(const ldmc_model *m, int batch, int H, int W, int f, ldmc_memory_plan *plan,
                    ldmc_err *err) {
    int align, step_f; // sides must be multiples of align; the step works at H/step_f x W/step_f
    bool *recompute;   // the module's gradient checkpointing switch
    if (m->desc == &ldmc_unet_desc) {
        ldmc_unet *u = m->module;
        step_f = f, align = f << (u->cfg.levels - 1), recompute = &u->recompute;
    } else if (m->desc == &ldmc_vae_desc) {
        ldmc_vae *v = m->module;
        step_f = 1, align = 1 << (v->cfg.levels - 1), recompute = &v->recompute;
    } else {
        return LDMC_ERR(err, "no training step to plan for a %s", m->desc->title);
    }
    if (H % align || W % align)
        return LDMC_ERR(err, "--res must be a multiple of %d for this %s", align, m->desc->title);
    plan->parameters = ldmc_params_count(m->params, false);
    plan->trainable = ldmc_params_count(m->params, true);
    plan->weights = (size_t)plan->parameters * sizeof(float);
    plan->gradients = (size_t)plan->trainable * sizeof(float);
    plan->optimizer = 2 * plan->gradients;
    bool was = *recompute;
    *recompute = false;
    ldmc_dry_run plain = step_activations(m, batch, H / step_f, W / step_f);
    plan->activations = plain.activations, plan->unplanned = plain.unplanned;
    *recompute = true;
    plan->activations_recomputed = step_activations(m, batch, H / step_f, W / step_f).activations;
    *recompute = was;
    plan->activations_projections = 0;
    if (m->desc == &ldmc_unet_desc) {
        ldmc_unet *u = m->module;
        bool projections_were = u->recompute_projections;
        u->recompute = false, u->recompute_projections = true;
        plan->activations_projections =
            step_activations(m, batch, H / step_f, W / step_f).activations;
        u->recompute = was, u->recompute_projections = projections_were;
    }
    return step_f;
}
