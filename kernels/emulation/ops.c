// The CPU emulation of every launcher but the convolutions' (see runtime.c): the CPU twin on f32
// copies of the bf16 operands, outputs rounded to bf16.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/emulation/emulation.h"
#include "kernels/ldmc_cuda.h"
#include "ops/cpu_kernels.h"

void ldmc_cuda_f32_to_bf16(uint16_t *dst, const float *src, int64_t n) { store(dst, src, n); }

void ldmc_cuda_bf16_to_f32(float *dst, const uint16_t *src, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        dst[i] = ldmc_bf16_to_f32(src[i]);
}

void ldmc_cuda_accumulate(float *dst, float beta, const float *src, float s, int64_t n) {
    if (dst) accumulate_f32(dst, beta, src, s, n);
}

void ldmc_cuda_scale_f32(float *x, float s, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        x[i] *= s;
}

void ldmc_cuda_fill_f32(float *x, float value, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        x[i] = value;
}

// ---- random numbers -----------------------------------------------------------------------------

void ldmc_cuda_rng_uniform(const ldmc_rng *rng, uint64_t offset, size_t n, float *out) {
    ldmc_rng_uniform(rng, offset, n, out);
}

void ldmc_cuda_rng_normal(const ldmc_rng *rng, uint64_t offset, size_t n, float *out) {
    ldmc_rng_normal(rng, offset, n, out);
}

// ---- the diffusion side: the CPU kernels of src/ops/cpu/diffusion.inc --------------------------

// A float operand given as bf16 or f32, as f32 (a copy to free, or NULL when it was f32 already).
static const float *as_f32(const void *x, bool is_f32, int64_t n, float **copy) {
    *copy = is_f32 ? NULL : f32_of(x, n);
    return is_f32 ? x : *copy;
}

void ldmc_cuda_latent_sample(float *z, const void *mean, bool mean_f32, const void *std,
                             bool std_f32, const ldmc_rng *rng, uint64_t offset, float scale,
                             int64_t n) {
    float *mean_copy, *std_copy;
    const float *m = as_f32(mean, mean_f32, n, &mean_copy), *s = as_f32(std, std_f32, n, &std_copy);
    ldmc_rng_normal(rng, offset, (size_t)n, z);
    latent_sample_forward_f32(z, m, s, scale, n);
    free(mean_copy);
    free(std_copy);
}

void ldmc_cuda_latent_unscale(uint16_t *y, const float *z, float scale, int64_t n) {
    float *v = zeros(n);
    latent_unscale_forward_f32(v, z, scale, n);
    store(y, v, n);
    free(v);
}

void ldmc_cuda_noise_batch(const ldmc_rng *noise_rng, uint64_t noise_offset, uint64_t offset_start,
                           const float *z, const double *sa, const double *sb, int B,
                           int64_t per_sample, int C, float offset_noise, bool predict_v,
                           uint16_t *x_t, float *target) {
    int64_t n = (int64_t)B * per_sample;
    float *x = zeros(n), *offsets = zeros((int64_t)B * C);
    ldmc_rng_normal(noise_rng, noise_offset, (size_t)n, target);
    ldmc_rng_normal(noise_rng, offset_start, (size_t)B * C, offsets);
    diffusion_noise_forward_f32(x, target, z, offsets, sa, sb, B, per_sample, C, offset_noise,
                                predict_v);
    store(x_t, x, n);
    free(x);
    free(offsets);
}

void ldmc_cuda_guidance(float *y, const uint16_t *cond, const uint16_t *uncond, double scale,
                        int64_t n) {
    float *c = f32_of(cond, n), *u = f32_of(uncond, n);
    guidance_forward_f32(y, c, u, scale, n);
    free(c);
    free(u);
}

void ldmc_cuda_sampler_step(float *x, const float *model_out, float *denoised, const float *noise,
                            double p, double q, double a, double b, double c, double s, int64_t n) {
    ldmc_sampler_coeffs k = {p, q, a, b, c, s};
    sampler_step_f32(x, model_out, denoised, noise, &k, n);
}

// ---- elementwise ----------------------------------------------------------------------------------

// y = f(a, b) through the CPU kernel, bf16 in and out
typedef void (*binary_fn)(float *, const float *, const float *, int64_t);

static void binary(binary_fn fn, uint16_t *y, const uint16_t *a, const uint16_t *b, int64_t n) {
    float *fa = f32_of(a, n), *fb = f32_of(b, n), *fy = zeros(n);
    fn(fy, fa, fb, n);
    store(y, fy, n);
    free(fa), free(fb), free(fy);
}

void ldmc_cuda_add_forward(uint16_t *y, const uint16_t *a, const uint16_t *b, int64_t n) {
    binary(add_forward_f32, y, a, b, n);
}

void ldmc_cuda_sub_forward(uint16_t *y, const uint16_t *a, const uint16_t *b, int64_t n) {
    binary(sub_forward_f32, y, a, b, n);
}

void ldmc_cuda_mul_forward(uint16_t *y, const uint16_t *a, const uint16_t *b, int64_t n) {
    binary(mul_forward_f32, y, a, b, n);
}

void ldmc_cuda_mul_backward(float *da, float *db, float beta_a, float beta_b, const float *dy,
                            const uint16_t *a, const uint16_t *b, int64_t n) {
    float *fa = f32_of(a, n), *fb = f32_of(b, n);
    mul_backward_f32(da, db, beta_a, beta_b, dy, fa, fb, n);
    free(fa), free(fb);
}

void ldmc_cuda_affine_forward(uint16_t *y, const uint16_t *x, float a, float b, int64_t n) {
    float *fx = f32_of(x, n), *fy = zeros(n);
    affine_forward_f32(fy, fx, a, b, n);
    store(y, fy, n);
    free(fx), free(fy);
}

void ldmc_cuda_affine_forward_f32(float *y, const float *x, float a, float b, int64_t n) {
    affine_forward_f32(y, x, a, b, n);
}

void ldmc_cuda_exp_forward(uint16_t *y, const uint16_t *x, int64_t n) {
    float *fx = f32_of(x, n), *fy = zeros(n);
    exp_forward_f32(fy, fx, n);
    store(y, fy, n);
    free(fx), free(fy);
}

void ldmc_cuda_exp_backward(float *dx, float beta, const float *dy, const uint16_t *y, int64_t n) {
    float *fy = f32_of(y, n);
    if (dx) mul_backward_f32(dx, NULL, beta, 1, dy, NULL, fy, n);
    free(fy);
}

void ldmc_cuda_clamp_forward(uint16_t *y, const uint16_t *x, float lo, float hi, int64_t n) {
    float *fx = f32_of(x, n), *fy = zeros(n);
    clamp_forward_f32(fy, fx, lo, hi, n);
    store(y, fy, n);
    free(fx), free(fy);
}

void ldmc_cuda_clamp_backward(float *dx, float beta, const float *dy, const uint16_t *x, float lo,
                              float hi, int64_t n) {
    float *fx = f32_of(x, n);
    if (dx) clamp_backward_f32(dx, beta, dy, fx, lo, hi, n);
    free(fx);
}

void ldmc_cuda_sum_rows_forward(float *y, const uint16_t *x, int64_t B, int64_t n) {
    float *fx = f32_of(x, B * n);
    sum_rows_forward_f32(y, fx, B, n);
    free(fx);
}

void ldmc_cuda_sum_rows_backward(float *dx, float beta, const float *dy, int64_t B, int64_t n) {
    if (dx) sum_rows_backward_f32(dx, beta, dy, B, n);
}

void ldmc_cuda_embedding_forward(uint16_t *y, const uint16_t *table, const int64_t *labels,
                                 int64_t B, int D) {
    for (int64_t b = 0; b < B; b++)
        memcpy(y + b * D, table + labels[b] * D, (size_t)D * sizeof *y);
}

void ldmc_cuda_embedding_backward(float *dtable, const float *dy, const int64_t *labels, int64_t B,
                                  int D) {
    if (dtable) embedding_backward_f32(dtable, dy, labels, B, D);
}

void ldmc_cuda_add_broadcast_forward(uint16_t *y, const uint16_t *x, const uint16_t *v, int B,
                                     int64_t P, int C) {
    int64_t n = (int64_t)B * P * C;
    float *fx = f32_of(x, n), *fv = f32_of(v, (int64_t)B * C), *fy = zeros(n);
    add_broadcast_forward_f32(fy, fx, fv, B, P, C);
    store(y, fy, n);
    free(fx), free(fv), free(fy);
}

void ldmc_cuda_add_broadcast_backward(float *dx, float *dv, float beta_x, float beta_v,
                                      const float *dy, int B, int64_t P, int C) {
    add_broadcast_backward_f32(dx, dv, beta_x, beta_v, dy, B, P, C);
}

void ldmc_cuda_scale_rows_forward(uint16_t *y, const uint16_t *x, const float *s, int64_t B,
                                  int64_t n) {
    float *fx = f32_of(x, B * n), *fy = zeros(B * n);
    scale_rows_forward_f32(fy, fx, s, B, n);
    store(y, fy, B * n);
    free(fx), free(fy);
}

void ldmc_cuda_scale_rows_backward(float *dx, float beta, const float *dy, const float *s,
                                   int64_t B, int64_t n) {
    if (dx) scale_rows_backward_f32(dx, beta, dy, s, B, n);
}

void ldmc_cuda_dropout_forward(uint16_t *y, const uint16_t *x, int64_t n, double p,
                               const ldmc_rng *rng, uint64_t offset) {
    float *fx = f32_of(x, n), *fy = zeros(n);
    dropout_forward_f32(fy, fx, n, p, rng, offset);
    store(y, fy, n);
    free(fx), free(fy);
}

void ldmc_cuda_dropout_backward(float *dx, float beta, const float *dy, int64_t n, double p,
                                const ldmc_rng *rng, uint64_t offset) {
    if (dx) dropout_backward_f32(dx, beta, dy, n, p, rng, offset);
}

// ---- losses: operands bf16 or f32 ----------------------------------------------------------------

static float *operand(const void *p, bool is_f32, int64_t n) {
    if (!is_f32) return f32_of(p, n);
    float *v = calloc((size_t)(n > 0 ? n : 1), sizeof *v);
    LDMC_CHECK(v, "out of memory");
    memcpy(v, p, (size_t)n * sizeof *v);
    return v;
}

void ldmc_cuda_mse_forward(float *out, const void *a, bool a_f32, const void *b, bool b_f32,
                           int64_t n) {
    float *fa = operand(a, a_f32, n), *fb = operand(b, b_f32, n);
    *out = (float)mse_forward_f32(fa, fb, n);
    free(fa), free(fb);
}

void ldmc_cuda_l1_forward(float *out, const void *a, bool a_f32, const void *b, bool b_f32,
                          int64_t n) {
    float *fa = operand(a, a_f32, n), *fb = operand(b, b_f32, n);
    *out = (float)l1_forward_f32(fa, fb, n);
    free(fa), free(fb);
}

void ldmc_cuda_mse_rows_forward(float *out, const void *a, bool a_f32, const void *b, bool b_f32,
                                const float *w, int64_t B, int64_t n) {
    float *fa = operand(a, a_f32, B * n), *fb = operand(b, b_f32, B * n);
    *out = (float)mse_rows_forward_f32(fa, fb, w, B, n);
    free(fa), free(fb);
}

void ldmc_cuda_mse_backward(float *da, float *db, float beta_a, float beta_b, const float *g,
                            const void *a, bool a_f32, const void *b, bool b_f32, int64_t n) {
    float *fa = operand(a, a_f32, n), *fb = operand(b, b_f32, n);
    mse_backward_f32(da, db, beta_a, beta_b, *g, fa, fb, n);
    free(fa), free(fb);
}

void ldmc_cuda_l1_backward(float *da, float *db, float beta_a, float beta_b, const float *g,
                           const void *a, bool a_f32, const void *b, bool b_f32, int64_t n) {
    float *fa = operand(a, a_f32, n), *fb = operand(b, b_f32, n);
    l1_backward_f32(da, db, beta_a, beta_b, *g, fa, fb, n);
    free(fa), free(fb);
}

void ldmc_cuda_mse_rows_backward(float *da, float *db, float beta_a, float beta_b, const float *g,
                                 const void *a, bool a_f32, const void *b, bool b_f32,
                                 const float *w, int64_t B, int64_t n) {
    float *fa = operand(a, a_f32, B * n), *fb = operand(b, b_f32, B * n);
    mse_rows_backward_f32(da, db, beta_a, beta_b, *g, fa, fb, w, B, n);
    free(fa), free(fb);
}

// ---- activations ------------------------------------------------------------------------------------

void ldmc_cuda_silu_forward(uint16_t *y, const uint16_t *x, int64_t n) {
    float *fx = f32_of(x, n), *fy = zeros(n);
    silu_forward_f32(fy, fx, n);
    store(y, fy, n);
    free(fx), free(fy);
}

void ldmc_cuda_silu_backward(float *dx, float beta, const float *dy, const uint16_t *x, int64_t n) {
    float *fx = f32_of(x, n);
    if (dx) silu_backward_f32(dx, beta, dy, fx, n);
    free(fx);
}

void ldmc_cuda_gelu_forward(uint16_t *y, const uint16_t *x, int64_t n, int kind) {
    float *fx = f32_of(x, n), *fy = zeros(n);
    gelu_forward_f32(fy, fx, n, kind);
    store(y, fy, n);
    free(fx), free(fy);
}

void ldmc_cuda_gelu_backward(float *dx, float beta, const float *dy, const uint16_t *x, int64_t n,
                             int kind) {
    float *fx = f32_of(x, n);
    if (dx) gelu_backward_f32(dx, beta, dy, fx, n, kind);
    free(fx);
}

void ldmc_cuda_geglu_forward(uint16_t *y, const uint16_t *x, int64_t M, int F) {
    float *fx = f32_of(x, M * 2 * F), *fy = zeros(M * F);
    geglu_forward_f32(fy, fx, M, F);
    store(y, fy, M * F);
    free(fx), free(fy);
}

void ldmc_cuda_geglu_backward(ldmc_cuda_grad dx, const float *dy, const uint16_t *x, int64_t M,
                              int F) {
    float *fx = f32_of(x, M * 2 * F), *gx = grad_f32(dx, M * 2 * F);
    if (gx) geglu_backward_f32(gx, dx.beta, dy, fx, M, F);
    grad_done(dx, gx, M * 2 * F);
    free(fx);
}

void ldmc_cuda_softmax_forward(uint16_t *y, const uint16_t *x, int64_t M, int C) {
    float *fx = f32_of(x, M * C), *fy = zeros(M * C);
    softmax_forward_f32(fy, fx, M, C);
    store(y, fy, M * C);
    free(fx), free(fy);
}

void ldmc_cuda_softmax_backward(float *dx, float beta, const float *dy, const uint16_t *y,
                                int64_t M, int C) {
    float *fy = f32_of(y, M * C);
    if (dx) softmax_backward_f32(dx, beta, dy, fy, M, C);
    free(fy);
}

// ---- dense and convolution: gradients rounded to bf16 before the products, as on the GPU -------------

void ldmc_cuda_linear_forward(uint16_t *y, const uint16_t *x, const uint16_t *w, const uint16_t *b,
                              int64_t M, int in, int out) {
    float *fx = f32_of(x, M * in), *fw = f32_of(w, (int64_t)out * in), *fb = f32_of(b, out),
          *fy = zeros(M * out);
    linear_forward_f32(fy, fx, fw, fb, (int)M, in, out);
    store(y, fy, M * out);
    free(fx), free(fw), free(fb), free(fy);
}

void ldmc_cuda_linear_backward(ldmc_cuda_grad dx, float *dw, float *db, ldmc_cuda_dy dy,
                               const uint16_t *x, const uint16_t *w, int64_t M, int in, int out) {
    float *fx = f32_of(x, M * in), *fw = f32_of(w, (int64_t)out * in),
          *ry = dy_rounded(dy, M * out), *gx = grad_f32(dx, M * in);
    // db from dy as it is: f32, or bf16 (then its values are ry's)
    if (db)
        linear_backward_f32(NULL, 1, NULL, db, dy.bf16 ? ry : dy.p, NULL, NULL, (int)M, in, out);
    linear_backward_f32(gx, dx.beta, dw, NULL, ry, fx, fw, (int)M, in, out);
    grad_done(dx, gx, M * in);
    free(fx), free(fw), free(ry);
}

void ldmc_cuda_bmm_forward(uint16_t *c, const uint16_t *a, const uint16_t *b, int B, int M, int N,
                           int K, bool trans_a, bool trans_b) {
    float *fa = f32_of(a, (int64_t)B * M * K), *fb = f32_of(b, (int64_t)B * K * N),
          *fc = zeros((int64_t)B * M * N);
    bmm_forward_f32(fc, fa, fb, B, M, N, K, trans_a, trans_b);
    store(c, fc, (int64_t)B * M * N);
    free(fa), free(fb), free(fc);
}

void ldmc_cuda_bmm_backward(float *da, float *db, float beta_a, float beta_b, const float *dc,
                            const uint16_t *a, const uint16_t *b, int B, int M, int N, int K,
                            bool trans_a, bool trans_b) {
    float *fa = f32_of(a, (int64_t)B * M * K), *fb = f32_of(b, (int64_t)B * K * N),
          *rc = rounded(dc, (int64_t)B * M * N);
    bmm_backward_f32(da, db, beta_a, beta_b, rc, fa, fb, B, M, N, K, trans_a, trans_b);
    free(fa), free(fb), free(rc);
}

void ldmc_cuda_add_bias(uint16_t *y, const uint16_t *b, int64_t M, int C) {
    for (int64_t m = 0; m < M; m++)
        for (int c = 0; c < C; c++)
            y[m * C + c] = ldmc_f32_to_bf16(ldmc_bf16_to_f32(y[m * C + c]) + ldmc_bf16_to_f32(b[c]));
}

void ldmc_cuda_column_sums(float *out, float beta, const float *x, int64_t M, int C) {
    for (int c = 0; beta == 0 && c < C; c++)
        out[c] = 0;
    for (int64_t m = 0; m < M; m++)
        for (int c = 0; c < C; c++)
            out[c] += x[m * C + c];
}

// ---- normalization --------------------------------------------------------------------------------

void ldmc_cuda_group_norm_forward(uint16_t *y, float *mean, float *rstd, const uint16_t *x,
                                  const uint16_t *gamma, const uint16_t *beta, int N, int64_t P,
                                  int C, int G, float eps) {
    int64_t n = (int64_t)N * P * C;
    float *fx = f32_of(x, n), *fg = f32_of(gamma, C), *fb = f32_of(beta, C), *fy = zeros(n);
    group_norm_forward_f32(fy, mean, rstd, fx, fg, fb, N, (int)P, C, G, eps);
    store(y, fy, n);
    free(fx), free(fg), free(fb), free(fy);
}

void ldmc_cuda_group_norm_backward(float *dx, float dx_beta, float *dgamma, float *dbeta,
                                   const float *dy, const uint16_t *x, const float *mean,
                                   const float *rstd, const uint16_t *gamma, int N, int64_t P,
                                   int C, int G) {
    int64_t n = (int64_t)N * P * C;
    float *fx = f32_of(x, n), *fg = f32_of(gamma, C);
    group_norm_backward_f32(dx, dx_beta, dgamma, dbeta, dy, fx, mean, rstd, fg, N, (int)P, C, G);
    free(fx), free(fg);
}

void ldmc_cuda_layer_norm_forward(uint16_t *y, float *mean, float *rstd, const uint16_t *x,
                                  const uint16_t *gamma, const uint16_t *beta, int64_t M, int C,
                                  float eps) {
    float *fx = f32_of(x, M * C), *fg = f32_of(gamma, C), *fb = f32_of(beta, C), *fy = zeros(M * C);
    layer_norm_forward_f32(fy, mean, rstd, fx, fg, fb, (int)M, C, eps);
    store(y, fy, M * C);
    free(fx), free(fg), free(fb), free(fy);
}

void ldmc_cuda_layer_norm_backward(float *dx, float dx_beta, float *dgamma, float *dbeta,
                                   const float *dy, const uint16_t *x, const float *mean,
                                   const float *rstd, const uint16_t *gamma, int64_t M, int C) {
    float *fx = f32_of(x, M * C), *fg = f32_of(gamma, C);
    layer_norm_backward_f32(dx, dx_beta, dgamma, dbeta, dy, fx, mean, rstd, fg, (int)M, C);
    free(fx), free(fg);
}

// ---- attention -------------------------------------------------------------------------------------

// The CPU twins compute in one piece: there are no chunks to bound.
void ldmc_cuda_set_chunk_bytes(size_t attention, size_t conv) { (void)attention, (void)conv; }

void ldmc_cuda_attention_forward(uint16_t *o, float *lse, const uint16_t *q, const uint16_t *k,
                                 const uint16_t *v, int B, int Nq, int Nk, int H, int D,
                                 float scale, bool causal) {
    int64_t nq = (int64_t)B * Nq * H * D, nk = (int64_t)B * Nk * H * D;
    float *fq = f32_of(q, nq), *fk = f32_of(k, nk), *fv = f32_of(v, nk), *fo = zeros(nq);
    attention_forward_f32(fo, lse, fq, fk, fv, B, Nq, Nk, H, D, scale, causal);
    store(o, fo, nq);
    free(fq), free(fk), free(fv), free(fo);
}

void ldmc_cuda_attention_backward(ldmc_cuda_grad dq, ldmc_cuda_grad dk, ldmc_cuda_grad dv,
                                  ldmc_cuda_dy dout, const uint16_t *q, const uint16_t *k,
                                  const uint16_t *v, const uint16_t *o, const float *lse, int B,
                                  int Nq, int Nk, int H, int D, float scale, bool causal) {
    int64_t nq = (int64_t)B * Nq * H * D, nk = (int64_t)B * Nk * H * D;
    float *fq = f32_of(q, nq), *fk = f32_of(k, nk), *fv = f32_of(v, nk), *fo = f32_of(o, nq),
          *rd = dy_rounded(dout, nq);
    float *gq = grad_f32(dq, nq), *gk = grad_f32(dk, nk), *gv = grad_f32(dv, nk);
    attention_backward_f32(gq, gk, gv, dq.beta, dk.beta, dv.beta, rd, fq, fk, fv, fo, lse, B, Nq,
                           Nk, H, D, scale, causal);
    grad_done(dq, gq, nq), grad_done(dk, gk, nk), grad_done(dv, gv, nk);
    free(fq), free(fk), free(fv), free(fo), free(rd);
}

// ---- shape, pooling, embeddings -----------------------------------------------------------------

void ldmc_cuda_copy_columns(uint16_t *dst, int dst_C, int dst_off, const uint16_t *src, int src_C,
                            int src_off, int64_t M, int C) {
    for (int64_t m = 0; m < M; m++)
        memcpy(dst + m * dst_C + dst_off, src + m * src_C + src_off, (size_t)C * sizeof *dst);
}

void ldmc_cuda_add_columns(float *dst, float beta, int dst_C, int dst_off, const float *src,
                           int src_C, int src_off, int64_t M, int C) {
    copy_columns_f32(dst, dst_C, dst_off, src, src_C, src_off, M, C, beta != 0);
}

void ldmc_cuda_upsample_nearest2x_forward(uint16_t *y, const uint16_t *x, int N, int H, int W,
                                          int C) {
    for (int n = 0; n < N; n++)
        for (int oh = 0; oh < 2 * H; oh++)
            for (int ow = 0; ow < 2 * W; ow++)
                memcpy(y + (((int64_t)n * 2 * H + oh) * 2 * W + ow) * C,
                       x + (((int64_t)n * H + oh / 2) * W + ow / 2) * C, (size_t)C * sizeof *y);
}

void ldmc_cuda_upsample_nearest2x_backward(float *dx, float beta, const float *dy, int N, int H,
                                           int W, int C) {
    if (dx) upsample_nearest2x_backward_f32(dx, beta, dy, N, H, W, C);
}

void ldmc_cuda_avg_pool2d_forward(uint16_t *y, const uint16_t *x, const ldmc_conv_geom *g,
                                  bool count_include_pad) {
    int64_t nx = (int64_t)g->N * g->H * g->W * g->C, ny = (int64_t)g->N * g->Ho * g->Wo * g->C;
    float *fx = f32_of(x, nx), *fy = zeros(ny);
    avg_pool2d_forward_f32(fy, fx, g, count_include_pad);
    store(y, fy, ny);
    free(fx), free(fy);
}

void ldmc_cuda_avg_pool2d_backward(float *dx, const float *dy, const ldmc_conv_geom *g,
                                   bool count_include_pad) {
    if (dx) avg_pool2d_backward_f32(dx, dy, g, count_include_pad);
}

void ldmc_cuda_max_pool2d_forward(uint16_t *y, const uint16_t *x, const ldmc_conv_geom *g) {
    int64_t nx = (int64_t)g->N * g->H * g->W * g->C, ny = (int64_t)g->N * g->Ho * g->Wo * g->C;
    float *fx = f32_of(x, nx), *fy = zeros(ny);
    max_pool2d_forward_f32(fy, fx, g);
    store(y, fy, ny);
    free(fx), free(fy);
}

void ldmc_cuda_max_pool2d_backward(float *dx, const float *dy, const uint16_t *x,
                                   const ldmc_conv_geom *g) {
    float *fx = f32_of(x, (int64_t)g->N * g->H * g->W * g->C);
    if (dx) max_pool2d_backward_f32(dx, dy, fx, g);
    free(fx);
}

void ldmc_cuda_timestep_embedding_forward(uint16_t *y, const float *t, int B, int dim,
                                          float max_period) {
    float *fy = zeros((int64_t)B * dim);
    timestep_embedding_forward_f32(fy, t, B, dim, max_period);
    store(y, fy, (int64_t)B * dim);
    free(fy);
}

void ldmc_cuda_timestep_embedding_backward(float *dt, const float *dy, const float *t, int B,
                                           int dim, float max_period) {
    if (dt) timestep_embedding_backward_f32(dt, dy, t, B, dim, max_period);
}

// ---- optimizer --------------------------------------------------------------------------------------

double ldmc_cuda_sum_squares(const float *x, size_t n) { return sum_squares_f32(x, (int64_t)n); }

void ldmc_cuda_sum_squares_to(double *dst, const float *x, size_t n) {
    *dst = sum_squares_f32(x, (int64_t)n);
}

// The master's two halves joined into f32 values and split back (ldmc_f32_join_n,
// ldmc_f32_split_n), a block at a time, around the CPU's own AdamW, EMA and swap (the same f32
// arithmetic as optim.cu's).
enum { MASTER_BLOCK = 4096 };

void ldmc_cuda_adamw(uint16_t *master_lo, uint16_t *weights, const float *grad, float *m, float *v,
                     int64_t n, float decay, float step_size, float denom_scale, float beta1,
                     float beta2, float eps, const double *guard) {
    if (guard && !isfinite(*guard)) return; // a gradient not finite: the parameter stays
    float w[MASTER_BLOCK];
    for (int64_t at = 0; at < n; at += MASTER_BLOCK) {
        int64_t k = n - at < MASTER_BLOCK ? n - at : MASTER_BLOCK;
        ldmc_f32_join_n(w, weights + at, master_lo + at, (size_t)k);
        adamw_update_f32(w, grad + at, m + at, v + at, k, decay, step_size, denom_scale, beta1,
                         beta2, eps);
        ldmc_f32_split_n(weights + at, master_lo + at, w, (size_t)k);
    }
}

void ldmc_cuda_ema(float *ema, const uint16_t *master_lo, const uint16_t *weights, int64_t n,
                   double decay) {
    float w[MASTER_BLOCK];
    for (int64_t at = 0; at < n; at += MASTER_BLOCK) {
        int64_t k = n - at < MASTER_BLOCK ? n - at : MASTER_BLOCK;
        ldmc_f32_join_n(w, weights + at, master_lo + at, (size_t)k);
        ema_update_f32(ema + at, w, k, decay);
    }
}

void ldmc_cuda_master_swap(uint16_t *master_lo, uint16_t *weights, float *other, int64_t n) {
    float w[MASTER_BLOCK];
    for (int64_t at = 0; at < n; at += MASTER_BLOCK) {
        int64_t k = n - at < MASTER_BLOCK ? n - at : MASTER_BLOCK;
        ldmc_f32_join_n(w, weights + at, master_lo + at, (size_t)k);
        swap_values_f32(w, other + at, k);
        ldmc_f32_split_n(weights + at, master_lo + at, w, (size_t)k);
    }
}
