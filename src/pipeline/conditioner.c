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
    ldmc_rng_uniform(&rng, ldmc_step_row_offset(key, 1), (size_t)n, keep);
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

int32_t *ldmc_conditioner_tokens(ldmc_ctx *ctx, const ldmc_conditioner *c, int e,
                                 const char *const *captions, const float *keep, int n) {
    const ldmc_text_encoder *enc = c->text[e];
    const int T = enc->cfg.context_length;
    ldmc_tokens_convention convention =
        enc->cfg.layout == LDMC_TEXT_HF ? LDMC_TOKENS_HF : LDMC_TOKENS_OPEN_CLIP;
    int32_t *ids = ldmc_host_scratch(ctx, (size_t)(n ? n : 1) * (size_t)T * sizeof *ids);
    for (int i = 0; i < n; i++) {
        const char *text = captions && captions[i] ? captions[i] : "";
        if (keep && !keep[i]) text = ""; // uncond_empty: the dropped caption
        ldmc_tokenize(c->tokenizer, convention, text, T, ids + (size_t)i * T);
    }
    return ids;
}

// Whether every parameter of the encoders is frozen (their forward then records nothing).
static bool frozen(const ldmc_conditioner *c) {
    for (int e = 0; e < c->n_text; e++)
        for (int i = 0; i < c->text[e]->params.count; i++)
            if (!(c->text[e]->params.items[i].flags & LDMC_PARAM_FROZEN)) return false;
    return true;
}

void ldmc_conditioner_encode(ldmc_ctx *ctx, const ldmc_conditioner *c, int n,
                             const char *const *captions, const float *empty, ldmc_tensor **context,
                             ldmc_tensor **pooled) {
    ldmc_tensor *parts[LDMC_MAX_TEXT_ENCODERS];
    *pooled = NULL;
    // Frozen encoders: their activations are dropped once the context and pooled text exist
    // (only those stay in the arena, under the UNet's step).
    bool drop = frozen(c);
    size_t mark = ldmc_ctx_data_mark(ctx);
    for (int e = 0; e < c->n_text; e++) {
        const int32_t *ids = ldmc_conditioner_tokens(ctx, c, e, captions, empty, n);
        ldmc_tensor *p = NULL;
        ldmc_text_encoder_forward(ctx, c->text[e], n, ids, &parts[e], &p);
        if (p) *pooled = p;
    }
    *context = c->n_text == 1 ? parts[0] : ldmc_concat(ctx, parts, c->n_text);
    if (!drop) return;
    // (a view, such as the pooled rows' reshape, becomes a tensor of its own first: x 1 + 0 is x)
    if ((*context)->base) *context = ldmc_affine(ctx, *context, 1.0, 0.0);
    if (*pooled && (*pooled)->base) *pooled = ldmc_affine(ctx, *pooled, 1.0, 0.0);
    ldmc_tensor *keep[2] = {*context, *pooled};
    ldmc_ctx_keep(ctx, mark, keep, *pooled ? 2 : 1);
}

// The encoders on the batch's captions. Dropped samples: zeros (scaled by keep), or "" encoded
// (uncond_empty).
static void encode_text(ldmc_ctx *ctx, const ldmc_conditioner *c, const ldmc_cond_batch *b,
                        ldmc_tensor **context, ldmc_tensor **pooled) {
    const float *zero = c->uncond_empty ? NULL : b->keep;
    ldmc_conditioner_encode(ctx, c, b->n, b->captions, c->uncond_empty ? b->keep : NULL, context,
                            pooled);
    if (zero) *context = ldmc_scale_rows(ctx, *context, zero);
    if (zero && *pooled) *pooled = ldmc_scale_rows(ctx, *pooled, zero);
}

// Embeddings given on the host (n rows of `row` floats): zeroed where keep says 0, or, with
// uncond_empty, those rows replaced by the empty caption's.
static ldmc_tensor *given_text(ldmc_ctx *ctx, const ldmc_conditioner *c, int ndim,
                               const int64_t *shape, const float *values, const float *empty,
                               const float *keep) {
    if (!keep || !c->uncond_empty) return text_input(ctx, ndim, shape, values, keep);
    LDMC_CHECK(empty, "conditioner: text.uncond empty and no empty caption's embeddings");
    size_t row = 1;
    for (int i = 1; i < ndim; i++)
        row *= (size_t)shape[i];
    float *v = ldmc_host_scratch(ctx, (size_t)(shape[0] ? shape[0] : 1) * row * sizeof *v);
    for (int64_t i = 0; i < shape[0]; i++)
        memcpy(v + (size_t)i * row, keep[i] ? values + (size_t)i * row : empty, row * sizeof *v);
    return text_input(ctx, ndim, shape, v, NULL);
}

ldmc_unet_cond ldmc_condition(ldmc_ctx *ctx, const ldmc_conditioner *c, const ldmc_cond_batch *b) {
    const ldmc_unet_config *u = c->unet;
    const int64_t n = b->n;
    ldmc_unet_cond cond = {0};
    ldmc_tensor *pooled = NULL;
    if (u->n_classes) {
        LDMC_CHECK(b->class_ids, "conditioner: a class-conditional model and no class labels");
        cond.class_labels = ldmc_input(ctx, LDMC_I64, 1, (int64_t[]){n}, b->class_ids, LDMC_I64);
        cond.class_keep = b->keep;
    } else if (u->context_dim && !b->context) {
        LDMC_CHECK(c->n_text > 0 && c->tokenizer,
                   "conditioner: a text-conditioned model without text encoders or embeddings");
        encode_text(ctx, c, b, &cond.context, &pooled);
    } else if (u->context_dim) {
        LDMC_CHECK(b->context_tokens > 0, "conditioner: text embeddings of no tokens");
        cond.context = given_text(ctx, c, 3, (int64_t[]){n, b->context_tokens, u->context_dim},
                                  b->context, c->empty_context, b->keep);
    }
    if (!u->n_vector) return cond;
    ldmc_tensor *parts[LDMC_VECTOR_PART_COUNT] = {0};
    for (int i = 0; i < u->n_vector; i++) {
        ldmc_vector_part part = u->vector[i];
        int k = ldmc_vector_part_scalars(part);
        if (k) { // the raw scalars (sizes up to 4096) stay f32: each embeds through [cos | sin]
            parts[part] = ldmc_input(ctx, LDMC_F32, 2, (int64_t[]){n, k},
                                     vector_scalars(ctx, part, b), LDMC_F32);
        } else if (pooled) {
            parts[part] = pooled;
        } else {
            LDMC_CHECK(b->pooled, "conditioner: the vector has pooled_text and the batch none");
            parts[part] = given_text(ctx, c, 2, (int64_t[]){n, u->pooled_dim}, b->pooled,
                                     c->empty_pooled, b->keep);
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
    // a negative prompt is the unconditional half's caption, kept (encoded) rather than dropped
    const bool negative = b->negative && b->captions && c->n_text > 0;
    float *keep = ldmc_host_scratch(ctx, 2 * (size_t)(n ? n : 1) * sizeof *keep);
    for (int i = 0; i < 2 * n; i++)
        keep[i] = (i < n ? !b->keep || b->keep[i] : negative) ? 1.0f : 0.0f;
    const char **captions = twice(ctx, b->captions, n, sizeof *b->captions);
    for (int i = 0; negative && i < n; i++)
        captions[n + i] = b->negative[i] ? b->negative[i] : "";
    size_t context_row = (size_t)b->context_tokens * (size_t)c->unet->context_dim * sizeof(float);
    // the aesthetic score: the samples' (6 when not given) and, in the unconditional half, 2.5
    // (generative-models' refiner and diffusers' negative_aesthetic_score)
    float *aesthetic = ldmc_host_scratch(ctx, 2 * (size_t)(n ? n : 1) * sizeof *aesthetic);
    for (int i = 0; i < 2 * n; i++)
        aesthetic[i] = i >= n ? 2.5f : b->aesthetic ? b->aesthetic[i] : 6.0f;
    return (ldmc_cond_batch){
        .n = 2 * n,
        .class_ids = twice(ctx, b->class_ids, n, sizeof *b->class_ids),
        .c_size = twice(ctx, b->c_size, n, 2 * sizeof *b->c_size),
        .c_crop = twice(ctx, b->c_crop, n, 2 * sizeof *b->c_crop),
        .c_target = twice(ctx, b->c_target, n, 2 * sizeof *b->c_target),
        .aesthetic = aesthetic,
        .context = twice(ctx, b->context, n, context_row),
        .context_tokens = b->context_tokens,
        .pooled = twice(ctx, b->pooled, n, (size_t)c->unet->pooled_dim * sizeof(float)),
        .captions = captions,
        .keep = keep,
    };
}
