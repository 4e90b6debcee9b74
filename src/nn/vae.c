// The SDXL autoencoder (see vae.h), built in sgm's registration order so that keys and their
// order match the official weights file. Tested by tests/test_models.c.
#include "nn/vae.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/error.h"
#include "core/rng.h"
#include "ops/ops.h"

#define VAE_GN_EPS 1e-6  // sgm model.py Normalize()

static void resblock_init(nn_resblock *r, ldmc_params *p, const char *prefix, int in_ch,
                          int out_ch) {
    nn_resblock_init(r, p, prefix, &nn_resblock_names_vae, in_ch, out_ch, 0, VAE_GN_EPS, false);
}

static void attention_init(ldmc_vae_attention *a, ldmc_params *p, const char *prefix, int ch) {
    char buf[256];
    nn_group_norm_init(&a->norm, p, nn_name(buf, sizeof buf, prefix, "norm"), ch, VAE_GN_EPS);
    nn_attention_options o = {.names = &nn_attention_names_vae,
                              .projection = NN_PROJECTION_CONV1X1,
                              .dim = ch,
                              .context_dim = ch,
                              .heads = 1,
                              .qkv_bias = true};
    nn_attention_init(&a->attention, p, prefix, &o);
}

static void mid_init(ldmc_vae_coder *c, ldmc_params *p, const char *prefix, int ch) {
    char buf[256];
    resblock_init(&c->mid_block_1, p, nn_name(buf, sizeof buf, prefix, "mid.block_1"), ch, ch);
    attention_init(&c->mid_attn, p, nn_name(buf, sizeof buf, prefix, "mid.attn_1"), ch);
    resblock_init(&c->mid_block_2, p, nn_name(buf, sizeof buf, prefix, "mid.block_2"), ch, ch);
}

static ldmc_vae_level *new_levels(int n) {
    ldmc_vae_level *levels = calloc((size_t)n, sizeof *levels);
    LDMC_CHECK(levels, "out of memory");
    return levels;
}

static void level_blocks(ldmc_vae_level *l, int n) {
    l->n_blocks = n;
    l->blocks = calloc((size_t)n, sizeof *l->blocks);
    LDMC_CHECK(l->blocks, "out of memory");
}

// Encoder: conv_in, per level num_res_blocks ResnetBlocks and (but the last) a downsampling
// conv, mid (block, attention, block), norm_out, conv_out to 2 z_channels (mean and logvar).
static void encoder_init(ldmc_vae *v) {
    const ldmc_vae_config *c = &v->cfg;
    ldmc_vae_coder *e = &v->encoder;
    ldmc_params *p = &v->params;
    char prefix[256];
    static const int vae_down_pad[4] = {0, 1, 0, 1};  // sgm pads right and bottom only
    nn_conv_init(&e->conv_in, p, LDMC_VAE_PREFIX "encoder.conv_in", c->in_channels, c->ch, 3, 1, NULL);
    e->n_levels = c->levels;
    e->levels = new_levels(c->levels);
    int ch = c->ch;
    for (int i = 0; i < c->levels; i++) {
        ldmc_vae_level *l = &e->levels[i];
        level_blocks(l, c->num_res_blocks);
        for (int j = 0; j < c->num_res_blocks; j++) {
            snprintf(prefix, sizeof prefix, LDMC_VAE_PREFIX "encoder.down.%d.block.%d", i, j);
            resblock_init(&l->blocks[j], p, prefix, ch, c->ch * c->ch_mult[i]);
            ch = c->ch * c->ch_mult[i];
        }
        if (i != c->levels - 1) {
            l->has_resample = true;
            snprintf(prefix, sizeof prefix, LDMC_VAE_PREFIX "encoder.down.%d.downsample.conv", i);
            nn_conv_init(&l->resample, p, prefix, ch, ch, 3, 2, vae_down_pad);
        }
    }
    mid_init(e, p, LDMC_VAE_PREFIX "encoder", ch);
    nn_group_norm_init(&e->norm_out, p, LDMC_VAE_PREFIX "encoder.norm_out", ch, VAE_GN_EPS);
    nn_conv_init(&e->conv_out, p, LDMC_VAE_PREFIX "encoder.conv_out", ch, 2 * c->z_channels, 3, 1,
                 NULL);
}

// Decoder: conv_in, mid, per level (registered 0 .. n-1, run from the last) num_res_blocks + 1
// ResnetBlocks and (but level 0) an upsampling conv, norm_out, conv_out.
static void decoder_init(ldmc_vae *v) {
    const ldmc_vae_config *c = &v->cfg;
    ldmc_vae_coder *d = &v->decoder;
    ldmc_params *p = &v->params;
    char prefix[256];
    int ch = c->ch * c->ch_mult[c->levels - 1];
    nn_conv_init(&d->conv_in, p, LDMC_VAE_PREFIX "decoder.conv_in", c->z_channels, ch, 3, 1, NULL);
    mid_init(d, p, LDMC_VAE_PREFIX "decoder", ch);
    d->n_levels = c->levels;
    d->levels = new_levels(c->levels);
    // Widths flow from the last level down; compute each level's input width first.
    int in_ch[LDMC_MAX_LEVELS];
    for (int i = c->levels - 1; i >= 0; i--) {
        in_ch[i] = ch;
        ch = c->ch * c->ch_mult[i];
    }
    for (int i = 0; i < c->levels; i++) {
        ldmc_vae_level *l = &d->levels[i];
        int block_in = in_ch[i], block_out = c->ch * c->ch_mult[i];
        level_blocks(l, c->num_res_blocks + 1);
        for (int j = 0; j <= c->num_res_blocks; j++) {
            snprintf(prefix, sizeof prefix, LDMC_VAE_PREFIX "decoder.up.%d.block.%d", i, j);
            resblock_init(&l->blocks[j], p, prefix, block_in, block_out);
            block_in = block_out;
        }
        if (i != 0) {
            l->has_resample = true;
            snprintf(prefix, sizeof prefix, LDMC_VAE_PREFIX "decoder.up.%d.upsample.conv", i);
            nn_conv_init(&l->resample, p, prefix, block_out, block_out, 3, 1, NULL);
        }
    }
    int out_ch = c->ch * c->ch_mult[0];
    nn_group_norm_init(&d->norm_out, p, LDMC_VAE_PREFIX "decoder.norm_out", out_ch, VAE_GN_EPS);
    nn_conv_init(&d->conv_out, p, LDMC_VAE_PREFIX "decoder.conv_out", out_ch, c->out_channels, 3,
                 1, NULL);
}

void ldmc_vae_init(ldmc_vae *v, const ldmc_vae_config *cfg) {
    *v = (ldmc_vae){.cfg = *cfg};
    encoder_init(v);
    decoder_init(v);
    nn_conv_init(&v->quant_conv, &v->params, LDMC_VAE_PREFIX "quant_conv", 2 * cfg->z_channels,
                 2 * cfg->embed_dim, 1, 1, NULL);
    nn_conv_init(&v->post_quant_conv, &v->params, LDMC_VAE_PREFIX "post_quant_conv",
                 cfg->embed_dim, cfg->z_channels, 1, 1, NULL);
}

static void coder_free(ldmc_vae_coder *c) {
    for (int i = 0; i < c->n_levels; i++) free(c->levels[i].blocks);
    free(c->levels);
}

void ldmc_vae_free(ldmc_vae *v) {
    coder_free(&v->encoder);
    coder_free(&v->decoder);
    ldmc_params_free(&v->params);
    memset(v, 0, sizeof *v);
}

// ---- forward --------------------------------------------------------------------------------------

static ldmc_tensor *run_resblock(ldmc_ctx *ctx, const ldmc_vae *v, const nn_resblock *r,
                                 ldmc_tensor *x) {
    return nn_resblock_run(ctx, r, x, NULL, v->recompute);
}

// x (B, H, W, C): single-head attention over the H*W pixels, scale 1/sqrt(C), plus the input.
static ldmc_tensor *attention_forward(ldmc_ctx *ctx, const ldmc_params *p,
                                      const ldmc_vae_attention *a, ldmc_tensor *x) {
    ldmc_tensor *h = nn_norm_forward(ctx, p, &a->norm, x);
    return ldmc_add(ctx, x, nn_attention_forward(ctx, p, &a->attention, h, NULL));
}

static ldmc_tensor *mid_forward(ldmc_ctx *ctx, const ldmc_vae *v, const ldmc_vae_coder *c,
                                ldmc_tensor *h) {
    h = run_resblock(ctx, v, &c->mid_block_1, h);
    h = attention_forward(ctx, &v->params, &c->mid_attn, h);
    return run_resblock(ctx, v, &c->mid_block_2, h);
}

static ldmc_tensor *head(ldmc_ctx *ctx, const ldmc_params *p, const ldmc_vae_coder *c,
                         ldmc_tensor *h) {
    return nn_conv_forward(ctx, p, &c->conv_out, ldmc_silu(ctx, nn_norm_forward(ctx, p, &c->norm_out, h)));
}

ldmc_vae_posterior ldmc_vae_encode(ldmc_ctx *ctx, const ldmc_vae *v, ldmc_tensor *x) {
    const ldmc_vae_config *c = &v->cfg;
    const ldmc_vae_coder *e = &v->encoder;
    int64_t align = (int64_t)1 << (c->levels - 1);
    LDMC_CHECK(x->ndim == 4 && x->shape[3] == c->in_channels && x->shape[1] % align == 0 &&
                   x->shape[2] % align == 0,
               "vae encode: the image must be (B, H, W, %d) with H and W divisible by %lld",
               c->in_channels, (long long)align);
    ldmc_tensor *h = nn_conv_forward(ctx, &v->params, &e->conv_in, x);
    for (int i = 0; i < e->n_levels; i++) {
        const ldmc_vae_level *l = &e->levels[i];
        for (int j = 0; j < l->n_blocks; j++) h = run_resblock(ctx, v, &l->blocks[j], h);
        if (l->has_resample) h = nn_conv_forward(ctx, &v->params, &l->resample, h);
    }
    h = head(ctx, &v->params, e, mid_forward(ctx, v, e, h));
    ldmc_tensor *moments = nn_conv_forward(ctx, &v->params, &v->quant_conv, h);  // (B, h, w, 2e)
    ldmc_tensor *halves[2];
    ldmc_split(ctx, moments, (const int[]){c->embed_dim, c->embed_dim}, 2, halves);
    return (ldmc_vae_posterior){.mean = halves[0], .logvar = ldmc_clamp(ctx, halves[1], -30, 20)};
}

ldmc_tensor *ldmc_vae_std(ldmc_ctx *ctx, const ldmc_vae_posterior *q) {
    return ldmc_exp(ctx, ldmc_scale(ctx, q->logvar, 0.5));
}

ldmc_tensor *ldmc_vae_sample(ldmc_ctx *ctx, const ldmc_vae_posterior *q, ldmc_tensor *noise) {
    if (!noise) {
        noise = ldmc_new_like(ctx, q->mean);
        ldmc_rng rng = ldmc_rng_make(ctx->rng_seed, (uint32_t)ctx->rng_step, ctx->rng_rank,
                                     LDMC_RNG_NOISE);
        uint64_t n = (uint64_t)ldmc_numel(noise), offset = ldmc_ctx_rng_take(ctx, n);
        if (!ctx->dry_run) ldmc_fill_normal(noise, &rng, offset); // on the context's device
    }
    ldmc_tensor *std = ldmc_vae_std(ctx, q);
    return ldmc_add(ctx, q->mean, ldmc_mul(ctx, std, noise));
}

ldmc_tensor *ldmc_vae_kl(ldmc_ctx *ctx, const ldmc_vae_posterior *q) {
    ldmc_tensor *terms = ldmc_add(ctx, ldmc_mul(ctx, q->mean, q->mean), ldmc_exp(ctx, q->logvar));
    terms = ldmc_sub(ctx, terms, q->logvar);
    double per_sample = (double)(ldmc_numel(q->mean) / q->mean->shape[0]);
    return ldmc_affine(ctx, ldmc_sum_rows(ctx, terms), 0.5, -0.5 * per_sample);  // the "- 1" terms
}

ldmc_tensor *ldmc_vae_decode(ldmc_ctx *ctx, const ldmc_vae *v, ldmc_tensor *z) {
    const ldmc_vae_coder *d = &v->decoder;
    LDMC_CHECK(z->ndim == 4 && z->shape[3] == v->cfg.embed_dim,
               "vae decode: the latent must be (B, h, w, %d)", v->cfg.embed_dim);
    ldmc_tensor *h = nn_conv_forward(ctx, &v->params, &v->post_quant_conv, z);
    h = nn_conv_forward(ctx, &v->params, &d->conv_in, h);
    h = mid_forward(ctx, v, d, h);
    for (int i = d->n_levels - 1; i >= 0; i--) {
        const ldmc_vae_level *l = &d->levels[i];
        for (int j = 0; j < l->n_blocks; j++) h = run_resblock(ctx, v, &l->blocks[j], h);
        if (l->has_resample)
            h = nn_conv_forward(ctx, &v->params, &l->resample, ldmc_upsample_nearest2x(ctx, h));
    }
    return head(ctx, &v->params, d, h);
}

void ldmc_vae_print_summary(const ldmc_vae *v, FILE *out) {
    const ldmc_vae_config *c = &v->cfg;
    fprintf(out, "VAE (AutoencoderKL): f = %d, %d latent channels, scale factor %g\n",
            1 << (c->levels - 1), c->embed_dim, c->scale_factor);
    fprintf(out, "  encoder: conv_in %d->%d", c->in_channels, c->ch);
    for (int i = 0; i < c->levels; i++)
        fprintf(out, ", %d x ResnetBlock %d%s", c->num_res_blocks, c->ch * c->ch_mult[i],
                i != c->levels - 1 ? " + downsample" : "");
    fprintf(out, ", mid (ResnetBlock, attention, ResnetBlock), conv_out -> %d\n", 2 * c->z_channels);
    fprintf(out, "  decoder: conv_in %d->%d, mid", c->z_channels, c->ch * c->ch_mult[c->levels - 1]);
    for (int i = c->levels - 1; i >= 0; i--)
        fprintf(out, ", %d x ResnetBlock %d%s", c->num_res_blocks + 1, c->ch * c->ch_mult[i],
                i ? " + upsample" : "");
    fprintf(out, ", conv_out -> %d\n", c->out_channels);
}
