// The loss steps (see loss.h). Tested by tests/test_pipeline.c and tests/test_train.c.
#include "pipeline/loss.h"

#include <math.h>

#include "core/device.h"
#include "core/error.h"
#include "ops/ops.h"
#include "pipeline/latents.h"

// The context's streams (dropout, ldmc_vae_sample) follow the micro-batch's key.
static void begin(ldmc_ctx *ctx, const ldmc_step_key *key) {
    ldmc_ctx_reset(ctx);
    ctx->rng_seed = key->seed, ctx->rng_step = key->step, ctx->rng_rank = key->rank;
}

// The micro-batch's clean latents z (f32): the images encoded by the frozen VAE, whose
// activations are then dropped (z moves down to where they began), or the cached moments.
static ldmc_tensor *latents(ldmc_ctx *ctx, const ldmc_diffusion_step *s, const ldmc_step_batch *b,
                            const ldmc_step_key *key) {
    if (!b->pixels) {
        int C = s->unet->cfg.in_channels;
        return ldmc_draw_latents(
            ctx, ldmc_latent_moments_input(ctx, b->mean, b->std, b->n, b->lh, b->lw, C),
            s->latent_scale, key);
    }
    LDMC_CHECK(s->vae, "diffusion loss: a batch of images and no autoencoder to encode them");
    size_t mark = ldmc_ctx_data_mark(ctx);
    ldmc_latent_moments q = ldmc_encode_images(ctx, s->vae, b->pixels, b->n, b->height, b->width);
    ldmc_tensor *z = ldmc_draw_latents(ctx, q, s->latent_scale, key);
    ldmc_ctx_keep(ctx, mark, &z, 1);
    return z;
}

double ldmc_diffusion_loss(ldmc_ctx *ctx, const ldmc_diffusion_step *s, const ldmc_step_batch *b,
                           const ldmc_step_key *key, double grad_scale) {
    begin(ctx, key);
    const int B = b->n;
    ldmc_tensor *z = latents(ctx, s, b, key);
    float *t = ldmc_host_scratch(ctx, (size_t)B * sizeof *t);
    float *weight = ldmc_host_scratch(ctx, (size_t)B * sizeof *weight);
    double *sa = ldmc_host_scratch(ctx, (size_t)B * sizeof *sa);
    double *sb = ldmc_host_scratch(ctx, (size_t)B * sizeof *sb);
    ldmc_draw_timesteps(s->schedule, s->noise, B, key, t, weight, sa, sb);
    ldmc_tensor *x_t, *target;
    ldmc_rng noise = ldmc_step_rng(key, LDMC_RNG_NOISE);
    const int64_t per_row = B ? ldmc_numel(z) / B : 0, C = z->shape[z->ndim - 1];
    ldmc_diffusion_noise(ctx, z, sa, sb, s->noise->offset_noise,
                         s->noise->prediction == LDMC_PREDICT_V, &noise,
                         ldmc_step_row_offset(key, per_row),
                         ldmc_step_second_block(key, B, per_row, C), &x_t, &target);
    ldmc_cond_batch cond = b->cond;
    cond.keep = ldmc_conditioner_dropout(ctx, s->conditioner, key, B);
    ldmc_unet_cond c = ldmc_condition(ctx, s->conditioner, &cond);
    ldmc_tensor *timesteps = ldmc_input(ctx, LDMC_F32, 1, (int64_t[]){B}, t, LDMC_F32);
    ldmc_tensor *out = ldmc_unet_forward(ctx, s->unet, x_t, timesteps, &c);
    ldmc_tensor *loss = ldmc_mse_loss_weighted(ctx, out, target, weight);
    double value = ctx->dry_run ? NAN : ldmc_read_scalar(loss);
    if (ctx->dry_run || isfinite(value)) {
        float seed = (float)grad_scale;
        ldmc_backward(ctx, loss, &seed);
    }
    return value;
}

double ldmc_vae_loss(ldmc_ctx *ctx, const ldmc_vae_step *s, const ldmc_step_batch *b,
                     const ldmc_step_key *key, double grad_scale) {
    begin(ctx, key);
    const int B = b->n;
    ldmc_tensor *x = ldmc_input(ctx, ctx->act_dtype, 4,
                                (int64_t[]){B, b->height, b->width, s->vae->cfg.in_channels},
                                b->pixels, LDMC_F32);
    ldmc_vae_posterior q = ldmc_vae_encode(ctx, s->vae, x);
    ldmc_tensor *eps = ldmc_new_like(ctx, q.mean);
    ldmc_rng rng = ldmc_step_rng(key, LDMC_RNG_LATENT);
    if (!ctx->dry_run)
        ldmc_fill_normal(eps, &rng, ldmc_step_row_offset(key, B ? ldmc_numel(eps) / B : 0));
    ldmc_tensor *rec = ldmc_vae_decode(ctx, s->vae, ldmc_vae_sample(ctx, &q, eps));
    ldmc_tensor *l1 = ldmc_l1_loss(ctx, rec, x), *kl = ldmc_vae_kl(ctx, &q);
    // Σ|x - x̂| / (B H W 3) is the L1 mean; the KL term is scaled to the same per-element unit.
    double elements = (double)b->height * b->width * s->vae->cfg.in_channels, kl_mean = 0;
    double value = NAN;
    if (!ctx->dry_run) {
        float *kl_values = ldmc_host_scratch(ctx, (size_t)B * sizeof(float));
        ldmc_read_f32(kl, kl_values);
        for (int i = 0; i < B; i++)
            kl_mean += kl_values[i] / B;
        value = ldmc_read_scalar(l1) + s->kl_weight * kl_mean / elements;
    }
    if (ctx->dry_run || isfinite(value)) {
        float s_l1 = (float)(elements * grad_scale);
        float *s_kl = ldmc_host_scratch(ctx, (size_t)B * sizeof(float));
        for (int i = 0; i < B; i++)
            s_kl[i] = (float)(s->kl_weight / B * grad_scale);
        ldmc_backward_many(ctx, (ldmc_tensor *[]){l1, kl}, (const float *[]){&s_l1, s_kl}, 2);
    }
    return value;
}
