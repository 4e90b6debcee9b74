// The C interface of the CUDA kernels (kernels/*.cu): plain C types only.
//
// Conventions, for every launcher below:
// - It runs on ldmc's compute stream (ldmc_cuda_stream()) and returns without waiting; copies to
//   the host wait for the stream. Failures are fatal with the .cu file and line.
// - Activations and working weights are bf16, passed as uint16_t bit patterns; all math is f32.
// - Gradients are f32 and a backward ADDS into them (+=), as the CPU kernels do, unless its beta
//   is 0 (a fresh buffer, written and never read: core/tape.h); a NULL gradient pointer means
//   "not needed" and is skipped. Some activation gradients are bf16 (core/tape.h: bf16
//   gradients): the launchers that take them say so with ldmc_cuda_grad and ldmc_cuda_dy.
// - Shapes and argument meanings are those of the CPU twin of the same name in
//   src/ops/cpu/decl.inc (images channels-last (N, H, W, C), tokens (B, L, C)).
// - Temporary memory (bf16 copies of gradients for tensor-core GEMMs, cuDNN workspaces, score
//   tiles) comes from one device workspace (ldmc_cuda_workspace), reserved before a run at the
//   most its launchers ask for (ldmc_cuda_workspace_max).
// tests/test_cuda.c checks every op against the CPU through the op API (ctest -L cuda).
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/rng.h"
#include "ops/cpu_kernels.h" // ldmc_conv_geom

#ifdef __cplusplus
extern "C" {
#endif

// An activation gradient a backward writes: f32 with beta (0: write, 1: add), or bf16 (always
// fresh: written, beta 0). p NULL: not needed.
typedef struct ldmc_cuda_grad {
    void *p;
    bool bf16;
    float beta;
} ldmc_cuda_grad;
// An upstream gradient a backward reads: f32, or bf16.
typedef struct ldmc_cuda_dy {
    const void *p;
    bool bf16;
} ldmc_cuda_dy;

// ---- runtime: device, streams, memory (runtime.cu) -------------------------------------------
int ldmc_cuda_device_count(void); // 0 when there is no usable device
// NULL when a device is usable; else why not: cudaGetDeviceCount's error (an insufficient
// driver, no device), the driver's version (none: no driver loaded) and the runtime's.
const char *ldmc_cuda_unavailable_reason(void);
void ldmc_cuda_set_device(int device);
// The driver's and runtime's versions, the devices (or why there is none), and the versions of
// cuBLAS, cuDNN and NCCL, each as loaded and as built against.
void ldmc_cuda_print_info(FILE *out);
void *ldmc_cuda_stream(void); // the compute stream (created on first use)
void *ldmc_cuda_malloc(size_t bytes);
void ldmc_cuda_free(void *p);
// Host -> device in order on the compute stream, through page-locked staging buffers: returns
// without waiting for the GPU, and src may be reused at once.
void ldmc_cuda_to_device(void *dst, const void *src, size_t bytes);
// Device -> host: waits for the compute stream, then copies.
void ldmc_cuda_to_host(void *dst, const void *src, size_t bytes);
void ldmc_cuda_copy(void *dst, const void *src, size_t bytes); // device -> device
void ldmc_cuda_zero(void *p, size_t bytes);
void ldmc_cuda_synchronize(void);
// The shared device workspace, at least `bytes` (valid until the next call that grows it). A run
// reserves it up front (ldmc_cuda_workspace_reserve, src/core/device.c) at ldmc_cuda_workspace_max,
// before it measures the memory left for its activations; a request beyond the reservation
// still grows it, saying so on stderr, since the reservation rests on the caller's bound of its
// largest tensor (a growth that does not fit is fatal, naming the reservation).
void *ldmc_cuda_workspace(size_t bytes);
// Frees the workspace and allocates exactly `bytes` (rounded up to a MiB), now.
void ldmc_cuda_workspace_reserve(size_t bytes);
size_t ldmc_cuda_workspace_bytes(void);    // its size now
size_t ldmc_cuda_workspace_reserved(void); // the last reservation (0: none)

// The workspace's bounds, as the launchers size their requests (keep in step with them): the
// most one chunk of attention's score tiles or of the implicit GEMM's columns holds (the default
// of ldmc_cuda_set_chunk_bytes; common.cuh), and the most workspace a cuDNN algorithm may ask for
// (conv.cu: a convolution with none within it takes the implicit GEMM).
#define LDMC_CUDA_CHUNK_MAX ((size_t)512 << 20)
#define LDMC_CUDA_CUDNN_WORKSPACE_MAX ((size_t)1 << 30)
// The most workspace one launcher asks for when no tensor it is given holds more than `largest`
// values (the zero-padded copy of an asymmetrically padded convolution input counts as one):
//   - a cuDNN convolution's backward: dy, dx (padded), the padded x and dw as bf16 beside the
//     algorithm's workspace: 8 bytes a value + LDMC_CUDA_CUDNN_WORKSPACE_MAX (its forward: the
//     padded x, 2 bytes a value, + the same);
//   - attention's backward: Δ (f32) and dO (bf16), 6 bytes a value, + one chunk of score tiles;
//   - the implicit GEMM: one chunk (its rows of dy, columns and their gradients);
//   - a linear layer's backward: dy as bf16 (2 bytes a value); src/core/device.c's staging of
//     host values or of a bf16 read: f32 (4 bytes a value), and its overlapping moves (the kept
//     latents, a part of a gradient bucket);
// and 1 MiB for the pieces' 256-byte alignment. The norms', losses' and column sums' partial
// sums (tens of MiB at SDXL's sizes) stay below the cuDNN term.
static inline size_t ldmc_cuda_workspace_max(int64_t largest) {
    size_t n = largest > 0 ? (size_t)largest : 0;
    size_t conv = 8 * n + LDMC_CUDA_CUDNN_WORKSPACE_MAX, attention = 6 * n + LDMC_CUDA_CHUNK_MAX;
    return (conv > attention ? conv : attention) + ((size_t)1 << 20);
}
// Bytes of device memory in use by this process, and the device's total.
void ldmc_cuda_memory(size_t *used, size_t *total);
const char *ldmc_cuda_device_name(void);
// The cuBLAS handle (cublasHandle_t) bound to the compute stream.
void *ldmc_cuda_cublas(void);
// The cuDNN handle (cudnnHandle_t) bound to the compute stream; NULL in a build without cuDNN or
// when cuDNN cannot start.
void *ldmc_cuda_cudnn(void);

// ---- Philox streams, bit-identical to src/core/rng.c (rng.cu) --------------------------------
void ldmc_cuda_rng_uniform(const ldmc_rng *rng, uint64_t offset, size_t n, float *out);
void ldmc_cuda_rng_normal(const ldmc_rng *rng, uint64_t offset, size_t n, float *out);

// ---- the diffusion side (diffusion.cu): twins of src/ops/cpu/diffusion.inc ---------------------
// z (f32) = scale (mean + std ε), ε = normal values offset.. of the stream; mean, std bf16 or f32.
void ldmc_cuda_latent_sample(float *z, const void *mean, bool mean_f32, const void *std,
                             bool std_f32, const ldmc_rng *rng, uint64_t offset, float scale,
                             int64_t n);
// y (bf16) = z / scale
void ldmc_cuda_latent_unscale(uint16_t *y, const float *z, float scale, int64_t n);
// The noising of a training batch: eps from the stream at `noise_offset` (n = B * per_sample
// values) plus offset noise (B * C values from the next even offset), then per sample b:
// x_t = sa[b] z + sb[b] eps', target = eps' (epsilon) or sa[b] eps' - sb[b] z (v). z is f32; x_t
// is bf16; target is f32; sa, sb (B) are device doubles.
void ldmc_cuda_noise_batch(const ldmc_rng *noise_rng, uint64_t noise_offset, uint64_t offset_start,
                           const float *z, const double *sa, const double *sb, int B,
                           int64_t per_sample, int C, float offset_noise, bool predict_v,
                           uint16_t *x_t, float *target);
// y (f32) = uncond + scale (cond - uncond) over n values (bf16 operands)
void ldmc_cuda_guidance(float *y, const uint16_t *cond, const uint16_t *uncond, double scale,
                        int64_t n);
// One sampler step of x (f32) in place: D = p x + q out, x = a x + b D [+ c denoised]
// [+ s noise], denoised = D; denoised and noise may be NULL.
void ldmc_cuda_sampler_step(float *x, const float *model_out, float *denoised, const float *noise,
                            double p, double q, double a, double b, double c, double s, int64_t n);

// ---- conversions and elementwise ops (elementwise.cu) ----------------------------------------
void ldmc_cuda_f32_to_bf16(uint16_t *dst, const float *src, int64_t n);
void ldmc_cuda_bf16_to_f32(float *dst, const uint16_t *src, int64_t n);
// Backward launchers with a beta (0 or 1) write that gradient when it is 0 (a fresh buffer, never
// read) and add into it when 1 (ldmc_op_reads.writes, src/core/tape.h); the others add.
// dst (+)= s * src (f32, by beta); dst = s * dst
void ldmc_cuda_accumulate(float *dst, float beta, const float *src, float s, int64_t n);
void ldmc_cuda_scale_f32(float *x, float s, int64_t n);
void ldmc_cuda_fill_f32(float *x, float value, int64_t n);
void ldmc_cuda_add_forward(uint16_t *y, const uint16_t *a, const uint16_t *b, int64_t n);
void ldmc_cuda_sub_forward(uint16_t *y, const uint16_t *a, const uint16_t *b, int64_t n);
void ldmc_cuda_mul_forward(uint16_t *y, const uint16_t *a, const uint16_t *b, int64_t n);
void ldmc_cuda_mul_backward(float *da, float *db, float beta_a, float beta_b, const float *dy,
                            const uint16_t *a, const uint16_t *b, int64_t n);
void ldmc_cuda_affine_forward(uint16_t *y, const uint16_t *x, float a, float b, int64_t n);
// the same on f32 values (per-sample sums: the VAE's KL is 0.5 Σ(...) - 0.5 n)
void ldmc_cuda_affine_forward_f32(float *y, const float *x, float a, float b, int64_t n);
void ldmc_cuda_exp_forward(uint16_t *y, const uint16_t *x, int64_t n);
// dx (+)= dy * y (y = exp(x), as saved)
void ldmc_cuda_exp_backward(float *dx, float beta, const float *dy, const uint16_t *y, int64_t n);
void ldmc_cuda_clamp_forward(uint16_t *y, const uint16_t *x, float lo, float hi, int64_t n);
void ldmc_cuda_clamp_backward(float *dx, float beta, const float *dy, const uint16_t *x, float lo,
                              float hi, int64_t n);
// y (B) f32 = Σ x (B, n)
void ldmc_cuda_sum_rows_forward(float *y, const uint16_t *x, int64_t B, int64_t n);
void ldmc_cuda_sum_rows_backward(float *dx, float beta, const float *dy, int64_t B, int64_t n);
// labels: I64 on the device, already checked to lie in [0, N)
void ldmc_cuda_embedding_forward(uint16_t *y, const uint16_t *table, const int64_t *labels,
                                 int64_t B, int D);
void ldmc_cuda_embedding_backward(float *dtable, const float *dy, const int64_t *labels, int64_t B,
                                  int D);
void ldmc_cuda_add_broadcast_forward(uint16_t *y, const uint16_t *x, const uint16_t *v, int B,
                                     int64_t P, int C);
void ldmc_cuda_add_broadcast_backward(float *dx, float *dv, float beta_x, float beta_v,
                                      const float *dy, int B, int64_t P, int C);
// s: B f32 values on the device
void ldmc_cuda_scale_rows_forward(uint16_t *y, const uint16_t *x, const float *s, int64_t B,
                                  int64_t n);
void ldmc_cuda_scale_rows_backward(float *dx, float beta, const float *dy, const float *s,
                                   int64_t B, int64_t n);
void ldmc_cuda_dropout_forward(uint16_t *y, const uint16_t *x, int64_t n, double p,
                               const ldmc_rng *rng, uint64_t offset);
void ldmc_cuda_dropout_backward(float *dx, float beta, const float *dy, int64_t n, double p,
                                const ldmc_rng *rng, uint64_t offset);

// ---- losses (elementwise.cu): a and b are bf16 or f32 (a_f32, b_f32); results are f32 --------
// *out (device) = mean (a - b)², mean |a - b|, or (1/(B n)) Σ_b w[b] Σ_i (a - b)² (w on the device)
void ldmc_cuda_mse_forward(float *out, const void *a, bool a_f32, const void *b, bool b_f32,
                           int64_t n);
void ldmc_cuda_l1_forward(float *out, const void *a, bool a_f32, const void *b, bool b_f32,
                          int64_t n);
void ldmc_cuda_mse_rows_forward(float *out, const void *a, bool a_f32, const void *b, bool b_f32,
                                const float *w, int64_t B, int64_t n);
// g: the device scalar ∂L/∂loss
void ldmc_cuda_mse_backward(float *da, float *db, float beta_a, float beta_b, const float *g,
                            const void *a, bool a_f32, const void *b, bool b_f32, int64_t n);
void ldmc_cuda_l1_backward(float *da, float *db, float beta_a, float beta_b, const float *g,
                           const void *a, bool a_f32, const void *b, bool b_f32, int64_t n);
void ldmc_cuda_mse_rows_backward(float *da, float *db, float beta_a, float beta_b, const float *g,
                                 const void *a, bool a_f32, const void *b, bool b_f32,
                                 const float *w, int64_t B, int64_t n);

// ---- activations (activation.cu) --------------------------------------------------------------
void ldmc_cuda_silu_forward(uint16_t *y, const uint16_t *x, int64_t n);
void ldmc_cuda_silu_backward(float *dx, float beta, const float *dy, const uint16_t *x, int64_t n);
// kind: 0 exact (erf), 1 tanh approximation, 2 QuickGELU (as src/ops/cpu_kernels.h numbers them).
void ldmc_cuda_gelu_forward(uint16_t *y, const uint16_t *x, int64_t n, int kind);
void ldmc_cuda_gelu_backward(float *dx, float beta, const float *dy, const uint16_t *x, int64_t n,
                             int kind);
void ldmc_cuda_geglu_forward(uint16_t *y, const uint16_t *x, int64_t M, int F);
void ldmc_cuda_geglu_backward(ldmc_cuda_grad dx, const float *dy, const uint16_t *x, int64_t M,
                              int F);
void ldmc_cuda_softmax_forward(uint16_t *y, const uint16_t *x, int64_t M, int C);
void ldmc_cuda_softmax_backward(float *dx, float beta, const float *dy, const uint16_t *y,
                                int64_t M, int C);

// ---- dense: cuBLAS, bf16 in, f32 accumulation (dense.cu) ---------------------------------------
void ldmc_cuda_linear_forward(uint16_t *y, const uint16_t *x, const uint16_t *w, const uint16_t *b,
                              int64_t M, int in, int out);
// dy bf16: db sums the bf16 values (the products read dy rounded either way).
void ldmc_cuda_linear_backward(ldmc_cuda_grad dx, float *dw, float *db, ldmc_cuda_dy dy,
                               const uint16_t *x, const uint16_t *w, int64_t M, int in, int out);
void ldmc_cuda_bmm_forward(uint16_t *c, const uint16_t *a, const uint16_t *b, int B, int M, int N,
                           int K, bool trans_a, bool trans_b);
void ldmc_cuda_bmm_backward(float *da, float *db, float beta_a, float beta_b, const float *dc,
                            const uint16_t *a, const uint16_t *b, int B, int M, int N, int K,
                            bool trans_a, bool trans_b);
// y (M, C) += b (C), bf16: the bias of the linear layers and the convolutions
void ldmc_cuda_add_bias(uint16_t *y, const uint16_t *b, int64_t M, int C);
// Σ over rows of (M, C) f32 added into out (C) (beta 0: written): bias gradients
void ldmc_cuda_column_sums(float *out, float beta, const float *x, int64_t M, int C);

// ---- convolution on NHWC bf16: cuDNN, or an implicit GEMM of our own (conv.cu) -----------------
void ldmc_cuda_conv2d_forward(uint16_t *y, const uint16_t *x, const uint16_t *w, const uint16_t *b,
                              const ldmc_conv_geom *g);
void ldmc_cuda_conv2d_backward(float *dx, float dx_beta, float *dw, float *db, const float *dy,
                               const uint16_t *x, const uint16_t *w, const ldmc_conv_geom *g);

// ---- chunk and slice bounds (attention.cu, conv.cu): for tests, which run many chunks of small
// tensors; the defaults suit training ----------------------------------------------------------
// The bytes of temporaries one chunk may hold: attention's score tiles per chunk of queries, the
// convolutions' implicit GEMM's columns per chunk of output pixels; 0 = the default,
// LDMC_CUDA_CHUNK_MAX (a larger bound outgrows the workspace a run reserves).
void ldmc_cuda_set_chunk_bytes(size_t attention, size_t conv);
// The most values one convolution call's input or output may hold before the batch is cut along
// N into slices; 0 = the default, 2^31 - 1 (cuDNN's int32 indexing).
void ldmc_cuda_set_conv_slice_elements(int64_t max_elements);

// ---- normalization (norm.cu): mean and rstd are f32, saved for backward ------------------------
void ldmc_cuda_group_norm_forward(uint16_t *y, float *mean, float *rstd, const uint16_t *x,
                                  const uint16_t *gamma, const uint16_t *beta, int N, int64_t P,
                                  int C, int G, float eps);
void ldmc_cuda_group_norm_backward(float *dx, float dx_beta, float *dgamma, float *dbeta,
                                   const float *dy, const uint16_t *x, const float *mean,
                                   const float *rstd, const uint16_t *gamma, int N, int64_t P,
                                   int C, int G);
void ldmc_cuda_layer_norm_forward(uint16_t *y, float *mean, float *rstd, const uint16_t *x,
                                  const uint16_t *gamma, const uint16_t *beta, int64_t M, int C,
                                  float eps);
void ldmc_cuda_layer_norm_backward(float *dx, float dx_beta, float *dgamma, float *dbeta,
                                   const float *dy, const uint16_t *x, const float *mean,
                                   const float *rstd, const uint16_t *gamma, int64_t M, int C);

// ---- attention (attention.cu): lse (B, H, Nq) f32; never a score matrix for every query -------
// causal (Nq = Nk): query i attends to keys 0..i; the others' probabilities are 0.
void ldmc_cuda_attention_forward(uint16_t *o, float *lse, const uint16_t *q, const uint16_t *k,
                                 const uint16_t *v, int B, int Nq, int Nk, int H, int D,
                                 float scale, bool causal);
void ldmc_cuda_attention_backward(ldmc_cuda_grad dq, ldmc_cuda_grad dk, ldmc_cuda_grad dv,
                                  ldmc_cuda_dy dout, const uint16_t *q, const uint16_t *k,
                                  const uint16_t *v, const uint16_t *o, const float *lse, int B,
                                  int Nq, int Nk, int H, int D, float scale, bool causal);

// ---- shape, pooling, embeddings (shape.cu) -----------------------------------------------------
// Columns [src_off, src_off + C) of src (M, src_C) to columns [dst_off, ...) of dst (M, dst_C):
// copied (bf16) or added (f32 gradients).
void ldmc_cuda_copy_columns(uint16_t *dst, int dst_C, int dst_off, const uint16_t *src, int src_C,
                            int src_off, int64_t M, int C);
// (beta 0: written)
void ldmc_cuda_add_columns(float *dst, float beta, int dst_C, int dst_off, const float *src,
                           int src_C, int src_off, int64_t M, int C);
void ldmc_cuda_upsample_nearest2x_forward(uint16_t *y, const uint16_t *x, int N, int H, int W,
                                          int C);
void ldmc_cuda_upsample_nearest2x_backward(float *dx, float beta, const float *dy, int N, int H,
                                           int W, int C);
void ldmc_cuda_avg_pool2d_forward(uint16_t *y, const uint16_t *x, const ldmc_conv_geom *g,
                                  bool count_include_pad);
void ldmc_cuda_avg_pool2d_backward(float *dx, const float *dy, const ldmc_conv_geom *g,
                                   bool count_include_pad);
void ldmc_cuda_max_pool2d_forward(uint16_t *y, const uint16_t *x, const ldmc_conv_geom *g);
void ldmc_cuda_max_pool2d_backward(float *dx, const float *dy, const uint16_t *x,
                                   const ldmc_conv_geom *g);
// t (B) f32 -> y (B, dim) bf16
void ldmc_cuda_timestep_embedding_forward(uint16_t *y, const float *t, int B, int dim,
                                          float max_period);
void ldmc_cuda_timestep_embedding_backward(float *dt, const float *dy, const float *t, int B,
                                           int dim, float max_period);

// ---- optimizer over the flat parameter buffers (optim.cu) -------------------------------------
// Σ x² over n f32 values, in double, in a fixed order (the same result on every run).
double ldmc_cuda_sum_squares(const float *x, size_t n);
// The same sum into *dst, a double in GPU memory, without waiting for it.
void ldmc_cuda_sum_squares_to(double *dst, const float *x, size_t n);
// The f32 master weights are the bf16 working weights (`weights`, rounded ties away from zero)
// and the f32's low halves (`master_lo`): ldmc_f32_split / ldmc_f32_join (core/dtype.h).
// One AdamW update of n values, PyTorch's order: master = master * decay - step_size m̂ / ...,
// both halves written; nothing when `guard` (a double in GPU memory, or NULL) is not finite.
void ldmc_cuda_adamw(uint16_t *master_lo, uint16_t *weights, const float *grad, float *m, float *v,
                     int64_t n, float decay, float step_size, float denom_scale, float beta1,
                     float beta2, float eps, const double *guard);
// ema = d ema + (1 - d) master, with d and 1 - d rounded to f32 from the double, as the CPU does
void ldmc_cuda_ema(float *ema, const uint16_t *master_lo, const uint16_t *weights, int64_t n,
                   double decay);
// Exchanges the master (both halves) and n f32 values of `other` (the EMA).
void ldmc_cuda_master_swap(uint16_t *master_lo, uint16_t *weights, float *other, int64_t n);

#ifdef __cplusplus
}
#endif
