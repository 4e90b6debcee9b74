// Conversions, elementwise arithmetic, per-row ops, dropout and the losses on the GPU: bf16
// storage, f32 math, f32 gradients written (beta 0) or added into (beta 1). CPU twins in
// src/ops/cpu/elementwise.inc and misc.inc; conversions as src/core/dtype.c. Tested by
// tests/test_cuda.c.
#include "kernels/common.cuh"
#include "kernels/ldmc_cuda.h"
#include "kernels/philox.cuh"

// ---- conversions and f32 buffers ------------------------------------------------------------

__global__ static void f32_to_bf16_kernel(uint16_t *dst, const float *src, int64_t n) {
    GRID_STRIDE(i, n) { dst[i] = bf16_from(src[i]); }
}

__global__ static void bf16_to_f32_kernel(float *dst, const uint16_t *src, int64_t n) {
    GRID_STRIDE(i, n) { dst[i] = bf16_load(src, i); }
}

__global__ static void accumulate_kernel(float *dst, float beta, const float *src, float s,
                                         int64_t n) {
    GRID_STRIDE(i, n) { dst[i] = grad_add(beta, dst + i, s == 1.0f ? src[i] : src[i] * s); }
}

__global__ static void scale_kernel(float *x, float s, int64_t n) {
    GRID_STRIDE(i, n) { x[i] *= s; }
}

__global__ static void fill_kernel(float *x, float value, int64_t n) {
    GRID_STRIDE(i, n) { x[i] = value; }
}

extern "C" void ldmc_cuda_f32_to_bf16(uint16_t *dst, const float *src, int64_t n) {
    LAUNCH_1D(f32_to_bf16_kernel, n, dst, src, n);
}

extern "C" void ldmc_cuda_bf16_to_f32(float *dst, const uint16_t *src, int64_t n) {
    LAUNCH_1D(bf16_to_f32_kernel, n, dst, src, n);
}

extern "C" void ldmc_cuda_accumulate(float *dst, float beta, const float *src, float s, int64_t n) {
    if (dst) LAUNCH_1D(accumulate_kernel, n, dst, beta, src, s, n);
}

extern "C" void ldmc_cuda_scale_f32(float *x, float s, int64_t n) { LAUNCH_1D(scale_kernel, n, x, s, n); }

extern "C" void ldmc_cuda_fill_f32(float *x, float value, int64_t n) {
    LAUNCH_1D(fill_kernel, n, x, value, n);
}

// ---- arithmetic -----------------------------------------------------------------------------

enum binary_op { OP_ADD, OP_SUB, OP_MUL };

template <binary_op op>
__global__ static void binary_kernel(uint16_t *y, const uint16_t *a, const uint16_t *b, int64_t n) {
    GRID_STRIDE(i, n) {
        float u = bf16_load(a, i), v = bf16_load(b, i);
        y[i] = bf16_from(op == OP_ADD ? u + v : op == OP_SUB ? u - v : u * v);
    }
}

__global__ static void mul_backward_kernel(float *da, float *db, float beta_a, float beta_b,
                                           const float *dy, const uint16_t *a, const uint16_t *b,
                                           int64_t n) {
    GRID_STRIDE(i, n) {
        if (da) da[i] = grad_add(beta_a, da + i, dy[i] * bf16_load(b, i));
        if (db) db[i] = grad_add(beta_b, db + i, dy[i] * bf16_load(a, i));
    }
}

__global__ static void affine_kernel(uint16_t *y, const uint16_t *x, float a, float b, int64_t n) {
    GRID_STRIDE(i, n) { y[i] = bf16_from(bf16_load(x, i) * a + b); }
}

__global__ static void affine_f32_kernel(float *y, const float *x, float a, float b, int64_t n) {
    GRID_STRIDE(i, n) { y[i] = __fadd_rn(__fmul_rn(x[i], a), b); }
}

__global__ static void exp_kernel(uint16_t *y, const uint16_t *x, int64_t n) {
    GRID_STRIDE(i, n) { y[i] = bf16_from(expf(bf16_load(x, i))); }
}

__global__ static void exp_backward_kernel(float *dx, float beta, const float *dy,
                                           const uint16_t *y, int64_t n) {
    GRID_STRIDE(i, n) { dx[i] = grad_add(beta, dx + i, dy[i] * bf16_load(y, i)); }
}

__global__ static void clamp_kernel(uint16_t *y, const uint16_t *x, float lo, float hi, int64_t n) {
    GRID_STRIDE(i, n) {
        float v = bf16_load(x, i);
        y[i] = bf16_from(v < lo ? lo : (v > hi ? hi : v));
    }
}

__global__ static void clamp_backward_kernel(float *dx, float beta, const float *dy,
                                             const uint16_t *x, float lo, float hi, int64_t n) {
    GRID_STRIDE(i, n) {
        float v = bf16_load(x, i);
        dx[i] = grad_add(beta, dx + i, v >= lo && v <= hi ? dy[i] : 0.0f);
    }
}

extern "C" void ldmc_cuda_add_forward(uint16_t *y, const uint16_t *a, const uint16_t *b, int64_t n) {
    LAUNCH_1D(binary_kernel<OP_ADD>, n, y, a, b, n);
}

extern "C" void ldmc_cuda_sub_forward(uint16_t *y, const uint16_t *a, const uint16_t *b, int64_t n) {
    LAUNCH_1D(binary_kernel<OP_SUB>, n, y, a, b, n);
}

extern "C" void ldmc_cuda_mul_forward(uint16_t *y, const uint16_t *a, const uint16_t *b, int64_t n) {
    LAUNCH_1D(binary_kernel<OP_MUL>, n, y, a, b, n);
}

extern "C" void ldmc_cuda_mul_backward(float *da, float *db, float beta_a, float beta_b,
                                       const float *dy, const uint16_t *a, const uint16_t *b,
                                       int64_t n) {
    if (da || db) LAUNCH_1D(mul_backward_kernel, n, da, db, beta_a, beta_b, dy, a, b, n);
}

extern "C" void ldmc_cuda_affine_forward(uint16_t *y, const uint16_t *x, float a, float b,
                                         int64_t n) {
    LAUNCH_1D(affine_kernel, n, y, x, a, b, n);
}

extern "C" void ldmc_cuda_affine_forward_f32(float *y, const float *x, float a, float b,
                                             int64_t n) {
    LAUNCH_1D(affine_f32_kernel, n, y, x, a, b, n);
}

extern "C" void ldmc_cuda_exp_forward(uint16_t *y, const uint16_t *x, int64_t n) {
    LAUNCH_1D(exp_kernel, n, y, x, n);
}

extern "C" void ldmc_cuda_exp_backward(float *dx, float beta, const float *dy, const uint16_t *y,
                                       int64_t n) {
    if (dx) LAUNCH_1D(exp_backward_kernel, n, dx, beta, dy, y, n);
}

extern "C" void ldmc_cuda_clamp_forward(uint16_t *y, const uint16_t *x, float lo, float hi,
                                        int64_t n) {
    LAUNCH_1D(clamp_kernel, n, y, x, lo, hi, n);
}

extern "C" void ldmc_cuda_clamp_backward(float *dx, float beta, const float *dy, const uint16_t *x,
                                         float lo, float hi, int64_t n) {
    if (dx) LAUNCH_1D(clamp_backward_kernel, n, dx, beta, dy, x, lo, hi, n);
}

// ---- per-row ops ----------------------------------------------------------------------------

// One block per row.
__global__ static void sum_rows_kernel(float *y, const uint16_t *x, int64_t n) {
    __shared__ double shared[32];
    const uint16_t *row = x + blockIdx.x * n;
    double s = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        s += bf16_load(row, i);
    s = block_sum(s, shared);
    if (threadIdx.x == 0) y[blockIdx.x] = (float)s;
}

__global__ static void sum_rows_backward_kernel(float *dx, float beta, const float *dy, int64_t n,
                                                int64_t total) {
    GRID_STRIDE(i, total) { dx[i] = grad_add(beta, dx + i, dy[i / n]); }
}

extern "C" void ldmc_cuda_sum_rows_forward(float *y, const uint16_t *x, int64_t B, int64_t n) {
    if (B <= 0) return;
    sum_rows_kernel<<<(unsigned)B, 256, 0, ldmc_stream()>>>(y, x, n);
    CUDA_CHECK_LAUNCH("sum_rows");
}

extern "C" void ldmc_cuda_sum_rows_backward(float *dx, float beta, const float *dy, int64_t B,
                                            int64_t n) {
    if (dx) LAUNCH_1D(sum_rows_backward_kernel, B * n, dx, beta, dy, n, B * n);
}

__global__ static void embedding_kernel(uint16_t *y, const uint16_t *table, const int64_t *labels,
                                        int64_t total, int D) {
    GRID_STRIDE(i, total) { y[i] = table[labels[i / D] * D + i % D]; }
}

// One thread per table column, walking the batch in order: repeated labels add up
// deterministically, as on the CPU.
__global__ static void embedding_backward_kernel(float *dtable, const float *dy,
                                                 const int64_t *labels, int64_t B, int D) {
    GRID_STRIDE(d, D) {
        for (int64_t b = 0; b < B; b++)
            dtable[labels[b] * D + d] += dy[b * D + d];
    }
}

extern "C" void ldmc_cuda_embedding_forward(uint16_t *y, const uint16_t *table,
                                            const int64_t *labels, int64_t B, int D) {
    LAUNCH_1D(embedding_kernel, B * D, y, table, labels, B * D, D);
}

extern "C" void ldmc_cuda_embedding_backward(float *dtable, const float *dy, const int64_t *labels,
                                             int64_t B, int D) {
    if (dtable) LAUNCH_1D(embedding_backward_kernel, D, dtable, dy, labels, B, D);
}

__global__ static void add_broadcast_kernel(uint16_t *y, const uint16_t *x, const uint16_t *v,
                                            int64_t P, int C, int64_t total) {
    GRID_STRIDE(i, total) {
        int64_t b = i / (P * C);
        y[i] = bf16_from(bf16_load(x, i) + bf16_load(v, b * C + i % C));
    }
}

extern "C" void ldmc_cuda_add_broadcast_forward(uint16_t *y, const uint16_t *x, const uint16_t *v,
                                                int B, int64_t P, int C) {
    int64_t total = (int64_t)B * P * C;
    LAUNCH_1D(add_broadcast_kernel, total, y, x, v, P, C, total);
}

extern "C" void ldmc_cuda_add_broadcast_backward(float *dx, float *dv, float beta_x, float beta_v,
                                                 const float *dy, int B, int64_t P, int C) {
    if (dx) ldmc_cuda_accumulate(dx, beta_x, dy, 1.0f, (int64_t)B * P * C);
    if (dv)
        for (int b = 0; b < B; b++)
            ldmc_cuda_column_sums(dv + (int64_t)b * C, beta_v, dy + (int64_t)b * P * C, P, C);
}

__global__ static void scale_rows_kernel(uint16_t *y, const uint16_t *x, const float *s, int64_t n,
                                         int64_t total) {
    GRID_STRIDE(i, total) { y[i] = bf16_from(bf16_load(x, i) * s[i / n]); }
}

__global__ static void scale_rows_backward_kernel(float *dx, float beta, const float *dy,
                                                  const float *s, int64_t n, int64_t total) {
    GRID_STRIDE(i, total) { dx[i] = grad_add(beta, dx + i, dy[i] * s[i / n]); }
}

extern "C" void ldmc_cuda_scale_rows_forward(uint16_t *y, const uint16_t *x, const float *s,
                                             int64_t B, int64_t n) {
    LAUNCH_1D(scale_rows_kernel, B * n, y, x, s, n, B * n);
}

extern "C" void ldmc_cuda_scale_rows_backward(float *dx, float beta, const float *dy,
                                              const float *s, int64_t B, int64_t n) {
    if (dx) LAUNCH_1D(scale_rows_backward_kernel, B * n, dx, beta, dy, s, n, B * n);
}

// ---- dropout: the CPU's keep rule on the same Philox values ------------------------------------

__device__ __forceinline__ bool dropout_keep(philox_stream s, uint64_t i, double p) {
    return (double)(philox_bits(s, i) >> 8) * 0x1p-24 >= p;
}

__global__ static void dropout_kernel(uint16_t *y, const uint16_t *x, int64_t n, double p,
                                      float keep_scale, philox_stream s, uint64_t offset) {
    GRID_STRIDE(i, n) {
        y[i] = dropout_keep(s, offset + (uint64_t)i, p) ? bf16_from(bf16_load(x, i) * keep_scale)
                                                        : (uint16_t)0;
    }
}

__global__ static void dropout_backward_kernel(float *dx, float beta, const float *dy, int64_t n,
                                               double p, float keep_scale, philox_stream s,
                                               uint64_t offset) {
    GRID_STRIDE(i, n) {
        float g = dropout_keep(s, offset + (uint64_t)i, p) ? dy[i] * keep_scale : 0.0f;
        dx[i] = grad_add(beta, dx + i, g);
    }
}

extern "C" void ldmc_cuda_dropout_forward(uint16_t *y, const uint16_t *x, int64_t n, double p,
                                          const ldmc_rng *rng, uint64_t offset) {
    LAUNCH_1D(dropout_kernel, n, y, x, n, p, (float)(1.0 / (1.0 - p)), philox_of(rng),
              offset);
}

extern "C" void ldmc_cuda_dropout_backward(float *dx, float beta, const float *dy, int64_t n,
                                           double p, const ldmc_rng *rng, uint64_t offset) {
    if (dx)
        LAUNCH_1D(dropout_backward_kernel, n, dx, beta, dy, n, p, (float)(1.0 / (1.0 - p)),
                  philox_of(rng), offset);
}

// ---- losses: two-stage sums in double, a fixed number of blocks: the same result every run ---

enum loss_kind { LOSS_MSE, LOSS_L1, LOSS_MSE_ROWS };
enum { LOSS_BLOCKS = 512, LOSS_THREADS = 256 };

template <loss_kind kind>
__global__ static void loss_partial_kernel(double *partial, const void *a, bool a_f32,
                                           const void *b, bool b_f32, const float *w, int64_t n,
                                           int64_t total) {
    __shared__ double shared[32];
    double s = 0;
    GRID_STRIDE(i, total) {
        double d = (double)load_any(a, a_f32, i) - (double)load_any(b, b_f32, i);
        s += kind == LOSS_L1 ? fabs(d) : kind == LOSS_MSE ? d * d : (double)w[i / n] * d * d;
    }
    s = block_sum(s, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ static void loss_final_kernel(float *out, const double *partial, int count,
                                         double divisor) {
    __shared__ double shared[32];
    double s = 0;
    for (int i = threadIdx.x; i < count; i += blockDim.x)
        s += partial[i];
    s = block_sum(s, shared);
    if (threadIdx.x == 0) *out = divisor > 0 ? (float)(s / divisor) : 0.0f;
}

template <loss_kind kind>
static void loss_forward(float *out, const void *a, bool a_f32, const void *b, bool b_f32,
                         const float *w, int64_t n, int64_t total) {
    double *partial = (double *)ldmc_cuda_workspace(LOSS_BLOCKS * sizeof(double));
    loss_partial_kernel<kind><<<LOSS_BLOCKS, LOSS_THREADS, 0, ldmc_stream()>>>(
        partial, a, a_f32, b, b_f32, w, n, total);
    CUDA_CHECK_LAUNCH("loss_partial");
    loss_final_kernel<<<1, 1024, 0, ldmc_stream()>>>(out, partial, LOSS_BLOCKS, (double)total);
    CUDA_CHECK_LAUNCH("loss_final");
}

extern "C" void ldmc_cuda_mse_forward(float *out, const void *a, bool a_f32, const void *b,
                                      bool b_f32, int64_t n) {
    loss_forward<LOSS_MSE>(out, a, a_f32, b, b_f32, nullptr, n, n);
}

extern "C" void ldmc_cuda_l1_forward(float *out, const void *a, bool a_f32, const void *b,
                                     bool b_f32, int64_t n) {
    loss_forward<LOSS_L1>(out, a, a_f32, b, b_f32, nullptr, n, n);
}

extern "C" void ldmc_cuda_mse_rows_forward(float *out, const void *a, bool a_f32, const void *b,
                                           bool b_f32, const float *w, int64_t B, int64_t n) {
    loss_forward<LOSS_MSE_ROWS>(out, a, a_f32, b, b_f32, w, n, B * n);
}

// d = k (a - b) (MSE: k = 2 g w / count; L1: g sign(a - b) / count, sign(0) = 0)
template <loss_kind kind>
__global__ static void loss_backward_kernel(float *da, float *db, float beta_a, float beta_b,
                                            const float *g, const void *a, bool a_f32,
                                            const void *b, bool b_f32, const float *w, int64_t n,
                                            int64_t total) {
    const double scale = (double)*g / (double)total;
    GRID_STRIDE(i, total) {
        float u = load_any(a, a_f32, i), v = load_any(b, b_f32, i), d;
        if (kind == LOSS_L1)
            d = u > v ? (float)scale : (u < v ? -(float)scale : 0.0f);
        else
            d = (float)(2.0 * scale * (kind == LOSS_MSE_ROWS ? w[i / n] : 1.0f)) * (u - v);
        if (da) da[i] = grad_add(beta_a, da + i, d);
        if (db) db[i] = grad_add(beta_b, db + i, -d);
    }
}

extern "C" void ldmc_cuda_mse_backward(float *da, float *db, float beta_a, float beta_b,
                                       const float *g, const void *a, bool a_f32, const void *b,
                                       bool b_f32, int64_t n) {
    if (da || db)
        LAUNCH_1D(loss_backward_kernel<LOSS_MSE>, n, da, db, beta_a, beta_b, g, a, a_f32, b, b_f32,
                  nullptr, n, n);
}

extern "C" void ldmc_cuda_l1_backward(float *da, float *db, float beta_a, float beta_b,
                                      const float *g, const void *a, bool a_f32, const void *b,
                                      bool b_f32, int64_t n) {
    if (da || db)
        LAUNCH_1D(loss_backward_kernel<LOSS_L1>, n, da, db, beta_a, beta_b, g, a, a_f32, b, b_f32,
                  nullptr, n, n);
}

extern "C" void ldmc_cuda_mse_rows_backward(float *da, float *db, float beta_a, float beta_b,
                                            const float *g, const void *a, bool a_f32,
                                            const void *b, bool b_f32, const float *w, int64_t B,
                                            int64_t n) {
    if (da || db)
        LAUNCH_1D(loss_backward_kernel<LOSS_MSE_ROWS>, B * n, da, db, beta_a, beta_b, g, a, a_f32,
                  b, b_f32, w, n, B * n);
}
