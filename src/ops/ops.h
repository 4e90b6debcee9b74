// The op API: each call checks its inputs (a clear message naming the op and the shapes), writes
// a fresh output into the context's arena, and, when recording, puts a node on the tape whose
// backward accumulates into every input that needs a gradient. CPU tensors are f32; the
// kernels are in src/ops/cpu/; their CUDA twins go in kernels/.
// Shapes are outermost first; images are channels-last (N, H, W, C).
// Tested by tests/test_ops.c (forward and backward against PyTorch) and tests/test_gradcheck.c.
#pragma once
#include <stdbool.h>

#include "core/rng.h"
#include "core/tape.h"
#include "ops/cpu_kernels.h"

// ---- dense ----------------------------------------------------------------------------------
// x (..., in), w (out, in), b (out) or NULL -> (..., out)
ldmc_tensor *ldmc_linear(ldmc_ctx *ctx, ldmc_tensor *x, ldmc_tensor *w, ldmc_tensor *b);
// a (B, M, K) [(B, K, M) if trans_a], b (B, K, N) [(B, N, K) if trans_b] -> (B, M, N)
ldmc_tensor *ldmc_matmul(ldmc_ctx *ctx, ldmc_tensor *a, ldmc_tensor *b, bool trans_a, bool trans_b);
// x (N, H, W, C), w (O, kH, kW, C), b (O) or NULL -> (N, Ho, Wo, O); symmetric padding.
ldmc_tensor *ldmc_conv2d(ldmc_ctx *ctx, ldmc_tensor *x, ldmc_tensor *w, ldmc_tensor *b, int stride,
                         int padding);
// pad = {top, bottom, left, right} (the VAE's downsampling pads (0, 1, 0, 1)).
ldmc_tensor *ldmc_conv2d_padded(ldmc_ctx *ctx, ldmc_tensor *x, ldmc_tensor *w, ldmc_tensor *b,
                                int stride, const int pad[4]);

// ---- normalization --------------------------------------------------------------------------
// x (N, ..., C) with C divisible by groups; statistics over everything but N per group.
// gamma, beta (C) or NULL.
ldmc_tensor *ldmc_group_norm(ldmc_ctx *ctx, ldmc_tensor *x, ldmc_tensor *gamma, ldmc_tensor *beta,
                             int groups, double eps);
// x (..., C); gamma, beta (C) or NULL.
ldmc_tensor *ldmc_layer_norm(ldmc_ctx *ctx, ldmc_tensor *x, ldmc_tensor *gamma, ldmc_tensor *beta,
                             double eps);

// ---- activations ----------------------------------------------------------------------------
ldmc_tensor *ldmc_silu(ldmc_ctx *ctx, ldmc_tensor *x);
// Exact (erf) GELU, or the tanh approximation.
ldmc_tensor *ldmc_gelu(ldmc_ctx *ctx, ldmc_tensor *x, bool tanh_approx);
// CLIP's QuickGELU: x sigmoid(1.702 x) (OpenAI's CLIP, CLIP ViT-L's text model).
ldmc_tensor *ldmc_quick_gelu(ldmc_ctx *ctx, ldmc_tensor *x);
// x (..., 2F) -> (..., F): first half times erf-GELU of the second half.
ldmc_tensor *ldmc_geglu(ldmc_ctx *ctx, ldmc_tensor *x);
// Softmax over the last dimension.
ldmc_tensor *ldmc_softmax(ldmc_ctx *ctx, ldmc_tensor *x);

// ---- attention ------------------------------------------------------------------------------
// Scaled-dot-product attention, self or cross: q (B, Nq, C), k and v (B, Nk, C), C = heads * D,
// head h in channels [h*D, (h+1)*D); scale 1/sqrt(D) -> (B, Nq, C).
ldmc_tensor *ldmc_attention(ldmc_ctx *ctx, ldmc_tensor *q, ldmc_tensor *k, ldmc_tensor *v,
                            int heads);
// The same with a causal mask (Nq = Nk): token i attends to tokens 0..i (CLIP's text encoders).
ldmc_tensor *ldmc_causal_attention(ldmc_ctx *ctx, ldmc_tensor *q, ldmc_tensor *k, ldmc_tensor *v,
                                   int heads);

// ---- elementwise ----------------------------------------------------------------------------
ldmc_tensor *ldmc_add(ldmc_ctx *ctx, ldmc_tensor *a, ldmc_tensor *b);
ldmc_tensor *ldmc_mul(ldmc_ctx *ctx, ldmc_tensor *a, ldmc_tensor *b);
ldmc_tensor *ldmc_sub(ldmc_ctx *ctx, ldmc_tensor *a, ldmc_tensor *b);
ldmc_tensor *ldmc_scale(ldmc_ctx *ctx, ldmc_tensor *x, double s);
// a x + b with scalars a, b.
ldmc_tensor *ldmc_affine(ldmc_ctx *ctx, ldmc_tensor *x, double a, double b);
ldmc_tensor *ldmc_exp(ldmc_ctx *ctx, ldmc_tensor *x);
// min(max(x, lo), hi); the gradient passes where lo <= x <= hi.
ldmc_tensor *ldmc_clamp(ldmc_ctx *ctx, ldmc_tensor *x, double lo, double hi);
// x (B, ...) -> (B): the sum of each sample's values.
ldmc_tensor *ldmc_sum_rows(ldmc_ctx *ctx, ldmc_tensor *x);
// Rows of a table (N, D) picked by labels (B) of I64 -> (B, D). A label outside [0, N) is fatal.
ldmc_tensor *ldmc_embedding(ldmc_ctx *ctx, ldmc_tensor *table, ldmc_tensor *labels);
// x (B, ..., C) + v broadcast over the middle dimensions; v is (B, C), (B, 1, ..., 1, C) or (C).
ldmc_tensor *ldmc_add_broadcast(ldmc_ctx *ctx, ldmc_tensor *x, ldmc_tensor *v);
// Zeroes each value with probability p (from the context's Philox stream) and scales the rest
// by 1/(1-p). p == 0 returns x itself.
ldmc_tensor *ldmc_dropout(ldmc_ctx *ctx, ldmc_tensor *x, double p);

// ---- shape ----------------------------------------------------------------------------------
// Concatenation along the last dimension; all other dimensions equal.
ldmc_tensor *ldmc_concat(ldmc_ctx *ctx, ldmc_tensor **xs, int n);
// Split along the last dimension into n pieces of sizes[i] channels.
void ldmc_split(ldmc_ctx *ctx, ldmc_tensor *x, const int *sizes, int n, ldmc_tensor **out);
// (N, H, W, C) -> (N, 2H, 2W, C), nearest neighbour.
ldmc_tensor *ldmc_upsample_nearest2x(ldmc_ctx *ctx, ldmc_tensor *x);

// ---- pooling --------------------------------------------------------------------------------
// (N, H, W, C) -> (N, Ho, Wo, C), square window, symmetric padding, floor output size.
ldmc_tensor *ldmc_avg_pool2d(ldmc_ctx *ctx, ldmc_tensor *x, int kernel, int stride, int padding,
                             bool count_include_pad);
ldmc_tensor *ldmc_max_pool2d(ldmc_ctx *ctx, ldmc_tensor *x, int kernel, int stride, int padding);

// ---- embeddings and losses ------------------------------------------------------------------
// t (B) -> (B, dim) = [cos(t f) | sin(t f)], f_i = max_period^(-i / (dim/2)) (SDXL: 10000).
ldmc_tensor *ldmc_timestep_embedding(ldmc_ctx *ctx, ldmc_tensor *t, int dim, double max_period);
// Mean squared error and mean absolute error over all elements -> a scalar (shape ()).
ldmc_tensor *ldmc_mse_loss(ldmc_ctx *ctx, ldmc_tensor *a, ldmc_tensor *b);
ldmc_tensor *ldmc_l1_loss(ldmc_ctx *ctx, ldmc_tensor *a, ldmc_tensor *b);
// Σ_b weights[b] mean_i (a - b)² / B over samples (B, ...) -> a scalar: the diffusion loss with
// per-sample weights (min-SNR-γ); `weights` (B) is copied, not differentiated.
ldmc_tensor *ldmc_mse_loss_weighted(ldmc_ctx *ctx, ldmc_tensor *a, ldmc_tensor *b,
                                    const float *weights);
// x (B, ...) with each sample multiplied by a constant: s (B) is copied, not differentiated.
ldmc_tensor *ldmc_scale_rows(ldmc_ctx *ctx, ldmc_tensor *x, const float *s);

// ---- diffusion and sampling (src/ops/ops_diffusion.c) -------------------------------------------
// Not differentiated (but concat_rows): their inputs must not need a gradient. Random values come
// from the Philox stream `rng` from index `offset` on, the same on either device.
// z = scale (mean + std ε): latents drawn from the VAE posterior, f32; mean and std (B, ..., C)
// are f32 or the context's activation dtype.
ldmc_tensor *ldmc_latent_sample(ldmc_ctx *ctx, ldmc_tensor *mean, ldmc_tensor *std, double scale,
                                const ldmc_rng *rng, uint64_t offset);
// z / scale in the activation dtype: the decoder's input for latents z (f32).
ldmc_tensor *ldmc_latent_unscale(ldmc_ctx *ctx, ldmc_tensor *z, double scale);
// Noising for training: z (B, ..., C) f32 -> x_t = sa[b] z + sb[b] ε' (activation dtype) and the
// target ε' or (predict_v) sa[b] ε' - sb[b] z (f32), where ε' = ε + offset_noise · m[b, c]: n
// values of ε from `offset`, then B·C of m from `offsets_at` (a training step takes both at the
// rows' global indices: ldmc_step_row_offset and ldmc_step_second_block). sa, sb (B) are host
// values (√ᾱ_t and √(1-ᾱ_t) of each sample's timestep).
void ldmc_diffusion_noise(ldmc_ctx *ctx, ldmc_tensor *z, const double *sa, const double *sb,
                          double offset_noise, bool predict_v, const ldmc_rng *rng, uint64_t offset,
                          uint64_t offsets_at, ldmc_tensor **x_t, ldmc_tensor **target);
// Classifier-free guidance on a model output (2n, ...) whose rows [0, n) are conditional and
// [n, 2n) unconditional: f32 (n, ...) = uncond + scale (cond - uncond).
ldmc_tensor *ldmc_guidance(ldmc_ctx *ctx, ldmc_tensor *out, double scale);
// One step of a sampler (src/pipeline/sampler.c) on x (f32, in place) from the model's output
// (f32, like x) at σ: the denoised D = k.p x + k.q out (the model's scalings), then
// x = k.a x + k.b D + k.c D_prev + k.s noise, in double per value. `denoised` (f32 like x, or
// NULL) holds a multistep sampler's D_prev on entry and D on return; `noise` (f32 like x, or NULL)
// the ancestral samplers' draws.
void ldmc_sampler_update(ldmc_ctx *ctx, ldmc_tensor *x, ldmc_tensor *model_out,
                         ldmc_tensor *denoised, ldmc_tensor *noise, const ldmc_sampler_coeffs *k);
// x's values in `dtype` (f32 or bf16; on the CPU only f32): x itself when it has that dtype.
ldmc_tensor *ldmc_cast(ldmc_ctx *ctx, ldmc_tensor *x, ldmc_dtype dtype);
// Concatenation along the first dimension (samples); all else equal, dtypes included.
ldmc_tensor *ldmc_concat_rows(ldmc_ctx *ctx, ldmc_tensor **xs, int n);
