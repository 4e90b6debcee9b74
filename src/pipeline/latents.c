// Between images and latents (see latents.h). Tested by tests/test_pipeline.c.
#include "pipeline/latents.h"

#include "core/device.h"
#include "ops/ops.h"

enum { DECODE_CHUNK = 4 }; // images decoded at once: the decoder's activations are large

ldmc_latent_moments ldmc_encode_images(ldmc_ctx *ctx, const ldmc_vae *vae, const float *pixels,
                                       int n, int H, int W) {
    bool was_recording = ctx->recording;
    ctx->recording = false;
    ldmc_tensor *x = ldmc_input(ctx, ctx->act_dtype, 4, (int64_t[]){n, H, W, vae->cfg.in_channels},
                                pixels, LDMC_F32);
    ldmc_vae_posterior q = ldmc_vae_encode(ctx, vae, x);
    ldmc_latent_moments m = {q.mean, ldmc_vae_std(ctx, &q)};
    ctx->recording = was_recording;
    return m;
}

ldmc_latent_moments ldmc_latent_moments_input(ldmc_ctx *ctx, const float *mean, const float *std,
                                              int n, int h, int w, int C) {
    int64_t shape[4] = {n, h, w, C};
    return (ldmc_latent_moments){ldmc_input(ctx, LDMC_F32, 4, shape, mean, LDMC_F32),
                                 ldmc_input(ctx, LDMC_F32, 4, shape, std, LDMC_F32)};
}

ldmc_tensor *ldmc_draw_latents(ldmc_ctx *ctx, ldmc_latent_moments q, double scale,
                               const ldmc_step_key *key) {
    ldmc_rng rng = ldmc_step_rng(key, LDMC_RNG_LATENT);
    int64_t per_row = q.mean->shape[0] ? ldmc_numel(q.mean) / q.mean->shape[0] : 0;
    return ldmc_latent_sample(ctx, q.mean, q.std, scale, &rng, ldmc_step_row_offset(key, per_row));
}

void ldmc_decode_latents(ldmc_ctx *ctx, const ldmc_vae *vae, ldmc_tensor *z, float *images) {
    const int n = (int)z->shape[0], h = (int)z->shape[1], w = (int)z->shape[2];
    const int C = (int)z->shape[3], f = 1 << (vae->cfg.levels - 1);
    const int64_t per = (int64_t)h * w * C, image = (int64_t)h * f * w * f * vae->cfg.out_channels;
    bool was_recording = ctx->recording;
    ctx->recording = false;
    for (int i0 = 0; i0 < n; i0 += DECODE_CHUNK) {
        int m = n - i0 < DECODE_CHUNK ? n - i0 : DECODE_CHUNK;
        ldmc_ctx_mark mark = ldmc_ctx_mark_here(ctx);
        ldmc_tensor *rows =
            ldmc_wrap(ctx, LDMC_F32, (float *)z->data + i0 * per, 4, (int64_t[]){m, h, w, C});
        ldmc_tensor *img =
            ldmc_vae_decode(ctx, vae, ldmc_latent_unscale(ctx, rows, vae->cfg.scale_factor));
        ldmc_read_f32(img, images + i0 * image);
        ldmc_ctx_rewind(ctx, mark);
    }
    ctx->recording = was_recording;
}

void ldmc_reconstruct_images(ldmc_ctx *ctx, const ldmc_vae *vae, const float *pixels, int n, int H,
                             int W, float *images) {
    ldmc_ctx_mark mark = ldmc_ctx_mark_here(ctx);
    bool was_recording = ctx->recording;
    ldmc_latent_moments q = ldmc_encode_images(ctx, vae, pixels, n, H, W);
    ctx->recording = false;
    ldmc_read_f32(ldmc_vae_decode(ctx, vae, q.mean), images);
    ctx->recording = was_recording;
    ldmc_ctx_rewind(ctx, mark);
}
