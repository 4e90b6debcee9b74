// Memory plans by dry run (see plan.h). Tested by tests/test_models.c.
#include "nn/plan.h"

#include "core/tape.h"
#include "ops/ops.h"

// Address space reserved for a dry run's arena: enough for any step that can be planned.
#define DRY_RUN_ARENA ((size_t)1 << 42)

static void plan_parameters(ldmc_params *p, ldmc_memory_plan *plan) {
    plan->parameters = ldmc_params_count(p, false);
    plan->trainable = ldmc_params_count(p, true);
    plan->weights = (size_t)plan->parameters * sizeof(float);
    plan->gradients = (size_t)plan->trainable * sizeof(float);
    plan->optimizer = 2 * plan->gradients;
    ldmc_params_reserve(p, LDMC_ROLE_WEIGHTS);  // the dry run needs the tensors, not the bytes
    ldmc_params_reserve(p, LDMC_ROLE_GRAD);
}

static ldmc_tensor *input(ldmc_ctx *ctx, ldmc_dtype dtype, int ndim, const int64_t *shape) {
    ldmc_tensor *t = ldmc_new(ctx, dtype, ndim, shape);
    t->name = "input";
    return t;
}

static size_t unet_step(ldmc_unet *u, int B, int H, int W, bool checkpointing) {
    const ldmc_unet_config *c = &u->cfg;
    ldmc_ctx ctx;
    ldmc_ctx_init_dry_run(&ctx, DRY_RUN_ARENA);
    u->checkpointing = checkpointing;
    ldmc_tensor *x = input(&ctx, LDMC_F32, 4, (int64_t[]){B, H, W, c->in_channels});
    ldmc_tensor *t = input(&ctx, LDMC_F32, 1, (int64_t[]){B});
    ldmc_unet_cond cond = {0};
    if (c->n_classes)
        cond.class_labels = input(&ctx, LDMC_I64, 1, (int64_t[]){B});
    else if (c->context_dim)
        cond.context = input(&ctx, LDMC_F32, 3, (int64_t[]){B, 77, c->context_dim});
    if (c->n_vector) cond.vector = input(&ctx, LDMC_F32, 2, (int64_t[]){B, c->adm_in_channels});
    ldmc_tensor *out = ldmc_unet_forward(&ctx, u, x, t, &cond);
    ldmc_tensor *target = input(&ctx, LDMC_F32, out->ndim, out->shape);
    ldmc_backward(&ctx, ldmc_mse_loss(&ctx, out, target), NULL);
    size_t high = ctx.data.high_water;
    ldmc_ctx_free(&ctx);
    u->checkpointing = false;
    return high;
}

void ldmc_unet_plan(ldmc_unet *u, int batch, int height, int width, ldmc_memory_plan *plan) {
    plan_parameters(&u->params, plan);
    plan->activations = unet_step(u, batch, height, width, false);
    plan->activations_checkpointed = unet_step(u, batch, height, width, true);
}

static size_t vae_step(ldmc_vae *v, int B, int H, int W, bool checkpointing) {
    ldmc_ctx ctx;
    ldmc_ctx_init_dry_run(&ctx, DRY_RUN_ARENA);
    v->checkpointing = checkpointing;
    ldmc_tensor *x = input(&ctx, LDMC_F32, 4, (int64_t[]){B, H, W, v->cfg.in_channels});
    ldmc_vae_posterior q = ldmc_vae_encode(&ctx, v, x);
    ldmc_tensor *recon = ldmc_vae_decode(&ctx, v, ldmc_vae_sample(&ctx, &q, NULL));
    ldmc_tensor *losses[2] = {ldmc_l1_loss(&ctx, recon, x), ldmc_vae_kl(&ctx, &q)};
    ldmc_backward_many(&ctx, losses, NULL, 2);
    size_t high = ctx.data.high_water;
    ldmc_ctx_free(&ctx);
    v->checkpointing = false;
    return high;
}

void ldmc_vae_plan(ldmc_vae *v, int batch, int height, int width, ldmc_memory_plan *plan) {
    plan_parameters(&v->params, plan);
    plan->activations = vae_step(v, batch, height, width, false);
    plan->activations_checkpointed = vae_step(v, batch, height, width, true);
}
