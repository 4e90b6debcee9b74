// The diffusion side of a step as ops on either device (see ops.h, "diffusion and sampling"):
// drawing latents from the VAE posterior, noising them for training, the decoder's input
// scaling, classifier-free guidance, the samplers' step, dtype conversion and concatenation of
// batches. Kernels: src/ops/cpu/diffusion.inc and kernels/diffusion.cu. None of them is
// differentiated but concat_rows: their inputs must not need a gradient.
// Tested by tests/test_diffusion.c and tests/test_cuda.c (GPU vs CPU).
#include <string.h>

#include "ops/op_util.h"

// Fatal, naming the op, when an input that these ops do not differentiate needs a gradient.
static void check_no_grad(const char *op, const ldmc_tensor *t) {
    OP_CHECK(!t->requires_grad, op, t, "the input must not need a gradient (not differentiated)");
}

// A float operand on the GPU: f32, or bf16 (the activation dtype).
static const void *gpu_float(const ldmc_tensor *t, bool *is_f32) {
    *is_f32 = t->dtype == LDMC_F32;
    return *is_f32 ? (const void *)DF(t) : (const void *)BF(t);
}

ldmc_tensor *ldmc_latent_sample(ldmc_ctx *ctx, ldmc_tensor *mean, ldmc_tensor *std, double scale,
                                const ldmc_rng *rng, uint64_t offset) {
    char shape[96];
    OP_CHECK(ldmc_same_shape(mean, std), "latent_sample", std, "mean and std must both be %s",
             ldmc_shape_str(mean, shape, sizeof shape));
    check_no_grad("latent_sample", mean);
    check_no_grad("latent_sample", std);
    ldmc_tensor *z = ldmc_new(ctx, LDMC_F32, mean->ndim, mean->shape);
    int64_t n = ldmc_numel(z);
    COMPUTE(ctx) {
        if (ON_GPU(mean)) {
            bool mean_f32, std_f32;
            const void *m = gpu_float(mean, &mean_f32), *s = gpu_float(std, &std_f32);
            (void)m, (void)s; // (a build without CUDA never gets here)
            GPU(ldmc_cuda_latent_sample(DF(z), m, mean_f32, s, std_f32, rng, offset, (float)scale,
                                        n));
        } else {
            ldmc_rng_normal(rng, offset, (size_t)n, OUT(z)); // ε, replaced in place
            latent_sample_forward_f32(OUT(z), DATA(mean), DATA(std), scale, n);
        }
    }
    return z;
}

ldmc_tensor *ldmc_latent_unscale(ldmc_ctx *ctx, ldmc_tensor *z, double scale) {
    check_no_grad("latent_unscale", z);
    ldmc_tensor *y = ldmc_new(ctx, ctx->act_dtype, z->ndim, z->shape);
    COMPUTE(ctx) {
        if (ON_GPU(z))
            GPU(ldmc_cuda_latent_unscale(BF(y), DF(z), (float)scale, ldmc_numel(z)));
        else
            latent_unscale_forward_f32(OUT(y), DATA(z), scale, ldmc_numel(z));
    }
    return y;
}

void ldmc_diffusion_noise(ldmc_ctx *ctx, ldmc_tensor *z, const double *sa, const double *sb,
                          double offset_noise, bool predict_v, const ldmc_rng *rng, uint64_t offset,
                          uint64_t offsets_at, ldmc_tensor **x_t, ldmc_tensor **target) {
    OP_CHECK(z->ndim >= 2 && z->dtype == LDMC_F32, "diffusion_noise", z,
             "the latents must be f32 (B, ..., C)");
    check_no_grad("diffusion_noise", z);
    const int B = (int)z->shape[0], C = (int)last_dim(z);
    const int64_t n = ldmc_numel(z), per_sample = B ? n / B : 0;
    *x_t = ldmc_new(ctx, ctx->act_dtype, z->ndim, z->shape);
    *target = ldmc_new(ctx, LDMC_F32, z->ndim, z->shape);
    // (the GPU's per-sample coefficients are allocated in a dry run too: it plans the same bytes)
    double *coefficients =
        ON_GPU(z) ? ldmc_scratch(ctx, (size_t)2 * (B ? B : 1) * sizeof(double)) : NULL;
    if (ctx->dry_run) return;
    if (ON_GPU(z)) {
        (void)coefficients; // (a build without CUDA never gets here)
        GPU(ldmc_cuda_to_device(coefficients, sa, (size_t)B * sizeof(double)));
        GPU(ldmc_cuda_to_device(coefficients + B, sb, (size_t)B * sizeof(double)));
        GPU(ldmc_cuda_noise_batch(rng, offset, offsets_at, DF(z), coefficients, coefficients + B, B,
                                  per_sample, C, (float)offset_noise, predict_v, BF(*x_t),
                                  DF(*target)));
        return;
    }
    float *offsets = ldmc_host_scratch(ctx, (size_t)(B ? B : 1) * (C ? C : 1) * sizeof(float));
    ldmc_rng_normal(rng, offset, (size_t)n, OUT(*target)); // ε, replaced by the target in place
    ldmc_rng_normal(rng, offsets_at, (size_t)B * C, offsets);
    diffusion_noise_forward_f32(OUT(*x_t), OUT(*target), DATA(z), offsets, sa, sb, B, per_sample, C,
                                offset_noise, predict_v);
}

ldmc_tensor *ldmc_guidance(ldmc_ctx *ctx, ldmc_tensor *out, double scale) {
    OP_CHECK(out->ndim >= 1 && out->shape[0] % 2 == 0, "guidance", out,
             "the model's output must be (2n, ...): n conditional rows, then n unconditional");
    check_no_grad("guidance", out);
    int64_t shape[LDMC_MAX_DIMS];
    memcpy(shape, out->shape, sizeof shape);
    shape[0] /= 2;
    ldmc_tensor *y = ldmc_new(ctx, LDMC_F32, out->ndim, shape);
    int64_t half = ldmc_numel(y);
    COMPUTE(ctx) {
        if (ON_GPU(out))
            GPU(ldmc_cuda_guidance(DF(y), BF(out), BF(out) + half, scale, half));
        else
            guidance_forward_f32(OUT(y), DATA(out), DATA(out) + half, scale, half);
    }
    return y;
}

void ldmc_sampler_update(ldmc_ctx *ctx, ldmc_tensor *x, ldmc_tensor *model_out,
                         ldmc_tensor *denoised, ldmc_tensor *noise, const ldmc_sampler_coeffs *k) {
    char shape[96];
    ldmc_tensor *operands[] = {model_out, denoised, noise};
    for (int i = 0; i < 3; i++)
        OP_CHECK(!operands[i] ||
                     (operands[i]->dtype == LDMC_F32 && x->dtype == LDMC_F32 &&
                      ldmc_same_shape(x, operands[i]) && operands[i]->device == x->device),
                 "sampler_update", operands[i] ? operands[i] : x,
                 "x, the model's output, the denoised state and the noise must all be f32 %s",
                 ldmc_shape_str(x, shape, sizeof shape));
    check_no_grad("sampler_update", x);
    if (ctx->dry_run) return;
    if (ON_GPU(x))
        GPU(ldmc_cuda_sampler_step(DF(x), DF(model_out), denoised ? DF(denoised) : NULL,
                                   noise ? DF(noise) : NULL, k->p, k->q, k->a, k->b, k->c, k->s,
                                   ldmc_numel(x)));
    else
        sampler_step_f32(OUT(x), DATA(model_out), denoised ? OUT(denoised) : NULL,
                         noise ? DATA(noise) : NULL, k, ldmc_numel(x));
}

ldmc_tensor *ldmc_cast(ldmc_ctx *ctx, ldmc_tensor *x, ldmc_dtype dtype) {
    if (x->dtype == dtype) return x;
    check_no_grad("cast", x);
    OP_CHECK(ON_GPU(x) && (dtype == LDMC_F32 || dtype == LDMC_BF16) &&
                 (x->dtype == LDMC_F32 || x->dtype == LDMC_BF16),
             "cast", x, "casts between f32 and bf16 on the GPU only (the CPU holds f32)");
    ldmc_tensor *y = ldmc_new(ctx, dtype, x->ndim, x->shape);
    COMPUTE(ctx) {
        if (dtype == LDMC_BF16)
            GPU(ldmc_cuda_f32_to_bf16(BF(y), DF(x), ldmc_numel(x)));
        else
            GPU(ldmc_cuda_bf16_to_f32(DF(y), BF(x), ldmc_numel(x)));
    }
    return y;
}

static void concat_rows_backward(ldmc_ctx *ctx, ldmc_node *node) {
    const float *dy = DOUT(node->out[0]);
    int64_t at = 0;
    for (int i = 0; i < node->n_in; i++) {
        int64_t n = ldmc_numel(node->in[i]);
        accumulate_on(node->in[i], ldmc_grad(ctx, node->in[i]), ldmc_grad_beta(ctx, i), dy + at,
                      1.0, n);
        at += n;
    }
}

// Each input's gradient is its rows of dy, copied when fresh (inputs past 31 add).
static const ldmc_op_info concat_rows_op = {"concat_rows", concat_rows_backward,
                                            LDMC_READS_WRITES(0, 0, 0xFFFFFFFFu), NULL};

ldmc_tensor *ldmc_concat_rows(ldmc_ctx *ctx, ldmc_tensor **xs, int n) {
    LDMC_CHECK(n >= 1, "concat_rows: needs at least one tensor");
    const ldmc_tensor *first = xs[0];
    int64_t shape[LDMC_MAX_DIMS];
    memcpy(shape, first->shape, sizeof shape);
    shape[0] = 0;
    char expect[96];
    for (int i = 0; i < n; i++) {
        bool ok = xs[i]->ndim == first->ndim && xs[i]->ndim >= 1 && xs[i]->dtype == first->dtype &&
                  xs[i]->device == first->device;
        for (int d = 1; ok && d < first->ndim; d++)
            ok = xs[i]->shape[d] == first->shape[d];
        OP_CHECK(ok, "concat_rows", xs[i],
                 "all but the first dimension, the dtype and the "
                 "device must match %s",
                 ldmc_shape_str(first, expect, sizeof expect));
        shape[0] += xs[i]->shape[0];
    }
    ldmc_tensor *y = ldmc_new(ctx, first->dtype, first->ndim, shape);
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        size_t bytes = ldmc_nbytes(xs[i]);
        COMPUTE(ctx) {
            if (ON_GPU(y))
                GPU(ldmc_cuda_copy((char *)y->data + at, xs[i]->data, bytes));
            else
                memcpy((char *)y->data + at, xs[i]->data, bytes);
        }
        at += bytes;
    }
    ldmc_record(ctx, &concat_rows_op, xs, n, &y, 1);
    return y;
}
