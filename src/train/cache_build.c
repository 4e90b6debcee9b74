// Building a latent cache (see cache_build.h).
#include "train/cache_build.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/tape.h"
#include "data/buckets.h"
#include "data/cache.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "io/model_files.h"
#include "nn/models.h"
#include "pipeline/conditioner.h"
#include "pipeline/latents.h"
#include "train/text_models.h"

// The captions' embeddings of a text model into host buffers: context (m, T, D), pooled (m, P).
static void encode_captions(ldmc_ctx *ctx, const ldmc_conditioner *cond, int m,
                            const char *const *captions, float *context, float *pooled) {
    ldmc_tensor *c, *p;
    ldmc_conditioner_encode(ctx, cond, m, captions, NULL, &c, &p);
    ldmc_read_f32(c, context);
    if (p && pooled) ldmc_read_f32(p, pooled); // (pooled NULL: the UNet takes no pooled text)
}

// The text embeddings a text model's cache holds, with the empty caption's (malloc'ed into
// *empty); tokens 0 for other models.
static ldmc_cache_text cache_text(ldmc_ctx *ctx, const ldmc_train_config *cfg,
                                  const ldmc_conditioner *cond, float **empty) {
    ldmc_cache_text t = {0};
    *empty = NULL;
    if (!cond->n_text) return t;
    const ldmc_unet_config *u = &cfg->model.unet;
    t.tokens = cfg->model.text[0].context_length;
    t.context_dim = u->context_dim;
    t.pooled_dim = ldmc_unet_pooled_text_dim(u);
    *empty = malloc(((size_t)t.tokens * t.context_dim + (size_t)t.pooled_dim + 1) * sizeof(float));
    LDMC_CHECK(*empty, "out of memory");
    const char *nothing[1] = {""};
    ldmc_ctx_reset(ctx);
    encode_captions(ctx, cond, 1, nothing, *empty,
                    t.pooled_dim ? *empty + (size_t)t.tokens * t.context_dim : NULL);
    t.empty_context = *empty;
    t.empty_pooled = t.pooled_dim ? *empty + (size_t)t.tokens * t.context_dim : NULL;
    return t;
}

int ldmc_cache_build(const ldmc_train_config *cfg, const char *out, bool flip_variants,
                     ldmc_err *err) {
    if (cfg->from_cache)
        return LDMC_ERR(err, "%s: data.source is already a cache", cfg->source_path);
    const ldmc_vae_config *vc = ldmc_train_config_vae(cfg);
    if (!cfg->vae_weights[0])
        return LDMC_ERR(err, "%s: `vae_weights` is required to encode the images",
                        cfg->source_path);
    static ldmc_vae vae; // large: not on the stack
    ldmc_vae_init(&vae, vc);
    ldmc_params_alloc(&vae.params, LDMC_ROLE_WEIGHTS);
    ldmc_dataset data;
    ldmc_buckets buckets;
    ldmc_cache_writer *w = NULL;
    ldmc_model model = ldmc_vae_model(&vae);
    int rc = ldmc_load_model(&model, cfg->vae_weights, NULL, err);
    if (rc != 0) {
        ldmc_vae_free(&vae);
        return -1;
    }
    if (ldmc_dataset_scan(cfg->data_path, cfg->labels, &data, err) != 0) {
        ldmc_vae_free(&vae);
        return -1;
    }
    ldmc_dataset_report(&data, stdout);
    if (cfg->min_size > 0)
        printf("  %d images with a side below data.min_size %d left out\n",
               ldmc_dataset_keep_min_size(&data, cfg->min_size), cfg->min_size);
    int f = 1 << (vc->levels - 1), variants = flip_variants ? 2 : 1;
    rc = ldmc_train_config_buckets(cfg, f, &buckets, err);
    int *fill = calloc((size_t)buckets.count + 1, sizeof *fill);
    if (rc == 0 && !fill) rc = LDMC_ERR(err, "out of memory");
    for (int i = 0; rc == 0 && i < data.count; i++) {
        data.items[i].bucket =
            ldmc_bucket_assign(&buckets, data.items[i].height, data.items[i].width);
        fill[data.items[i].bucket]++;
    }
    ldmc_ctx ctx;
    ldmc_ctx_init(&ctx, (size_t)64 << 30, (size_t)1 << 30);
    // a text model's captions are embedded too (context and pooled text, f16)
    static ldmc_text_models text; // large: not on the stack
    ldmc_conditioner cond = {.unet = &cfg->model.unet};
    float *empty = NULL;
    ldmc_cache_text tc = {0};
    if (rc == 0) rc = ldmc_text_models_load(&text, cfg, err);
    if (rc == 0) {
        ldmc_text_models_attach(&text, cfg, &cond);
        tc = cache_text(&ctx, cfg, &cond, &empty);
    }
    if (rc == 0) rc = ldmc_cache_create(&w, out, vc->scale_factor, vc->embed_dim, &tc, err);
    int chunk = cfg->batch_size, written = 0, failed = 0;
    double sum = 0, sum2 = 0, count = 0; // over the posterior means: the latent scale
    for (int b = 0; rc == 0 && b < buckets.count; b++) {
        if (!fill[b]) continue;
        int H = buckets.height[b], W = buckets.width[b], h = H / f, lw = W / f;
        // Decode first (images can fail), then size the group by what decoded.
        int n = fill[b] * variants, got = 0;
        float *pixels = malloc((size_t)n * H * W * 3 * sizeof(float));
        ldmc_crop *plans = malloc((size_t)n * sizeof *plans);
        int *index = malloc((size_t)n * sizeof *index);
        if (!pixels || !plans || !index) rc = LDMC_ERR(err, "out of memory for bucket %dx%d", H, W);
        for (int i = 0; rc == 0 && i < data.count; i++) {
            if (data.items[i].bucket != b) continue;
            for (int v = 0; v < variants; v++) {
                ldmc_err e = {0};
                if (ldmc_load_sample(&data, i, 0, H, W, v ? 1.0 : 0.0, cfg->seed,
                                     pixels + (size_t)got * H * W * 3, &plans[got], &e) != 0) {
                    printf("  left out: %s\n", e.message);
                    failed++;
                    break;
                }
                index[got++] = i;
            }
        }
        if (rc == 0 && got) rc = ldmc_cache_begin_group(w, H, W, h, lw, got, err);
        size_t per = (size_t)h * lw * vc->embed_dim;
        float *mean = malloc((size_t)chunk * per * sizeof *mean),
              *std = malloc((size_t)chunk * per * sizeof *std);
        size_t cper = (size_t)tc.tokens * tc.context_dim;
        float *context = malloc(((size_t)chunk * cper + 1) * sizeof *context),
              *pooled = malloc(((size_t)chunk * tc.pooled_dim + 1) * sizeof *pooled);
        const char **captions = malloc((size_t)chunk * sizeof *captions);
        if (rc == 0 && (!mean || !std || !context || !pooled || !captions))
            rc = LDMC_ERR(err, "out of memory for bucket %dx%d", H, W);
        for (int i0 = 0; rc == 0 && i0 < got; i0 += chunk) {
            int m = got - i0 < chunk ? got - i0 : chunk;
            ldmc_ctx_reset(&ctx);
            ldmc_latent_moments q =
                ldmc_encode_images(&ctx, &vae, pixels + (size_t)i0 * H * W * 3, m, H, W);
            ldmc_read_f32(q.mean, mean);
            ldmc_read_f32(q.std, std);
            for (size_t k = 0; k < (size_t)m * per; k++) {
                double v = mean[k];
                sum += v, sum2 += v * v, count++;
            }
            for (int k = 0; k < m; k++)
                captions[k] = data.items[index[i0 + k]].caption;
            if (tc.tokens) {
                ldmc_ctx_reset(&ctx);
                encode_captions(&ctx, &cond, m, captions, context, tc.pooled_dim ? pooled : NULL);
            }
            for (int k = 0; rc == 0 && k < m; k++) {
                const ldmc_crop *p = &plans[i0 + k];
                const ldmc_sample *smp = &data.items[index[i0 + k]];
                rc = ldmc_cache_append(w, mean + k * per, std + k * per, p->c_size, p->c_crop,
                                       p->c_target, smp->class_id, smp->aesthetic, index[i0 + k],
                                       smp->caption, tc.tokens ? context + k * cper : NULL,
                                       tc.pooled_dim ? pooled + k * tc.pooled_dim : NULL, err);
            }
            written += m;
        }
        free(mean);
        free(std);
        free(context);
        free(pooled);
        free(captions);
        if (rc == 0 && got) printf("  %5d x %-5d %6d latents\n", W, H, got);
        free(pixels);
        free(plans);
        free(index);
    }
    if (w && ldmc_cache_finish(w, rc == 0 ? err : &(ldmc_err){0}) != 0) rc = -1;
    if (rc == 0 && count > 1) {
        double mean = sum / count, sd = sqrt(fmax(sum2 / count - mean * mean, 0));
        printf(
            "latents: mean %.4f, standard deviation %.4f (a VAE trained for this data would take "
            "scale_factor %.5f = 1/std; the config has %g)\n",
            mean, sd, sd > 0 ? 1 / sd : 0, vc->scale_factor);
    }
    if (rc == 0)
        printf("cache: %s, %d latents of %d images (%s); %d skipped at scan, %d failed to "
               "decode%s\n",
               out, written, data.count, flip_variants ? "each also flipped" : "one crop each",
               data.skipped, failed, failed ? " (named above)" : "");
    if (rc == 0 && tc.tokens)
        printf("text: each caption's context (%d x %d) and pooled text (%d), f16\n", tc.tokens,
               tc.context_dim, tc.pooled_dim);
    ldmc_ctx_free(&ctx);
    ldmc_text_models_free(&text);
    free(empty);
    free(fill);
    ldmc_dataset_free(&data);
    ldmc_vae_free(&vae);
    return rc;
}
