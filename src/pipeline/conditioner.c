// The conditioner (see conditioner.h). Tested by tests/test_pipeline.c and tests/test_train.c.
#include "pipeline/conditioner.h"

#include <string.h>

#include "core/device.h"
#include "core/error.h"
#include "ops/ops.h"

bool ldmc_conditioner_can_drop(const ldmc_conditioner *c) {
    return c->unet->n_classes > 0 || c->unet->context_dim > 0;
}

const float *ldmc_conditioner_dropout(ldmc_ctx *ctx, const ldmc_conditioner *c,
                                      const ldmc_step_key *key, int n) {
    if (c->dropout <= 0 || !ldmc_conditioner_can_drop(c)) return NULL;
    float *keep = ldmc_host_scratch(ctx, (size_t)(n ? n : 1) * sizeof *keep);
    ldmc_rng rng = ldmc_step_rng(key, LDMC_RNG_COND_DROP);
    ldmc_rng_uniform(&rng, ldmc_step_offset(key), (size_t)n, keep);
    for (int i = 0; i < n; i++)
        keep[i] = keep[i] < c->dropout ? 0.0f : 1.0f;
    return keep;
}

// The scalars of one Fourier part of the vector, (n, k) f32 on the host: sizes and crops as
// given, the aesthetic score per sample (6 when the batch has none).
static const float *vector_scalars(ldmc_ctx *ctx, ldmc_vector_part part, const ldmc_cond_batch *b) {
    int k = ldmc_vector_part_scalars(part), n = b->n;
    float *d = ldmc_host_scratch(ctx, (size_t)(n ? n : 1) * k * sizeof *d);
    const int32_t *src = part == LDMC_VECTOR_ORIGINAL_SIZE ? b->c_size
                         : part == LDMC_VECTOR_CROP_COORDS ? b->c_crop
                         : part == LDMC_VECTOR_TARGET_SIZE ? b->c_target
                                                           : NULL;
    LDMC_CHECK(src || part == LDMC_VECTOR_AESTHETIC_SCORE,
               "conditioner: the batch has no %s for the vector", ldmc_vector_part_name(part));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < k; j++)
            d[i * k + j] = src ? (float)src[i * 2 + j] : b->aesthetic ? b->aesthetic[i] : 6.0f;
    return d;
}

// Text embeddings (n, ...) in ctx, each sample's zeroed where keep says 0.
static ldmc_tensor *text_input(ldmc_ctx *ctx, int ndim, const int64_t *shape, const float *values,
                               const float *keep) {
    ldmc_tensor *t = ldmc_input(ctx, ctx->act_dtype, ndim, shape, values, LDMC_F32);
    return keep ? ldmc_scale_rows(ctx, t, keep) : t;
}

ldmc_unet_cond ldmc_condition(ldmc_ctx *ctx, const ldmc_conditioner *c, const ldmc_cond_batch *b) {
    const ldmc_unet_config *u = c->unet;
    const int64_t n = b->n;
    ldmc_unet_cond cond = {0};
    if (u->n_classes) {
        LDMC_CHECK(b->class_ids, "conditioner: a class-conditional model and no class labels");
        cond.class_labels = ldmc_input(ctx, LDMC_I64, 1, (int64_t[]){n}, b->class_ids, LDMC_I64);
        cond.class_keep = b->keep;
    } else if (u->context_dim) {
        LDMC_CHECK(b->context && b->context_tokens > 0,
                   "conditioner: a text-conditioned model and no text embeddings (ldmc has no "
                   "text encoders yet)");
        cond.context = text_input(ctx, 3, (int64_t[]){n, b->context_tokens, u->context_dim},
                                  b->context, b->keep);
    }
    if (!u->n_vector) return cond;
    ldmc_tensor *parts[LDMC_VECTOR_PART_COUNT] = {0};
    for (int i = 0; i < u->n_vector; i++) {
        ldmc_vector_part part = u->vector[i];
        int k = ldmc_vector_part_scalars(part);
        if (k) { // the raw scalars (sizes up to 4096) stay f32: each embeds through [cos | sin]
            parts[part] = ldmc_input(ctx, LDMC_F32, 2, (int64_t[]){n, k},
                                     vector_scalars(ctx, part, b), LDMC_F32);
        } else {
            LDMC_CHECK(b->pooled, "conditioner: the vector has pooled_text and the batch none");
            parts[part] = text_input(ctx, 2, (int64_t[]){n, u->pooled_dim}, b->pooled, b->keep);
        }
    }
    cond.vector = ldmc_unet_vector(ctx, u, parts);
    return cond;
}

// Host memory of ctx holding two copies of n items of `size` bytes (NULL stays NULL).
static void *twice(ldmc_ctx *ctx, const void *items, int n, size_t size) {
    if (!items) return NULL;
    char *d = ldmc_host_scratch(ctx, 2 * (size_t)(n ? n : 1) * size);
    memcpy(d, items, (size_t)n * size);
    memcpy(d + (size_t)n * size, items, (size_t)n * size);
    return d;
}

ldmc_cond_batch ldmc_cond_batch_guided(ldmc_ctx *ctx, const ldmc_conditioner *c,
                                       const ldmc_cond_batch *b) {
    int n = b->n;
    float *keep = ldmc_host_scratch(ctx, 2 * (size_t)(n ? n : 1) * sizeof *keep);
    for (int i = 0; i < 2 * n; i++)
        keep[i] = i < n && (!b->keep || b->keep[i]) ? 1.0f : 0.0f; // then the unconditional half
    size_t context_row = (size_t)b->context_tokens * (size_t)c->unet->context_dim * sizeof(float);
    return (ldmc_cond_batch){
        .n = 2 * n,
        .class_ids = twice(ctx, b->class_ids, n, sizeof *b->class_ids),
        .c_size = twice(ctx, b->c_size, n, 2 * sizeof *b->c_size),
        .c_crop = twice(ctx, b->c_crop, n, 2 * sizeof *b->c_crop),
        .c_target = twice(ctx, b->c_target, n, 2 * sizeof *b->c_target),
        .aesthetic = twice(ctx, b->aesthetic, n, sizeof *b->aesthetic),
        .context = twice(ctx, b->context, n, context_row),
        .context_tokens = b->context_tokens,
        .pooled = twice(ctx, b->pooled, n, (size_t)c->unet->pooled_dim * sizeof(float)),
        .keep = keep,
    };
}
