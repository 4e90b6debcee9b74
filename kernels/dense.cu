// Linear layers and batched matrix products through cuBLAS: bf16 operands on tensor cores, f32
// accumulation; forward outputs bf16, gradients accumulate (beta = 1) straight into the f32
// gradient buffers, or are written (beta 0, or a bf16 gradient: core/tape.h). CPU twins in
// src/ops/cpu/dense.inc. Tested by tests/test_cuda.c.

#include "kernels/common.cuh"
#include "kernels/cublas.cuh"
#include "kernels/ldmc_cuda.h"


// A bf16 copy of an f32 gradient in the workspace, for the tensor-core GEMMs of backward.
static uint16_t *bf16_copy(const float *src, int64_t n) {
    uint16_t *dst = (uint16_t *)ldmc_cuda_workspace((size_t)n * sizeof(uint16_t));
    ldmc_cuda_f32_to_bf16(dst, src, n);
    return dst;
}

__global__ static void bias_rows_kernel(uint16_t *y, const uint16_t *b, int C, int64_t total) {
    GRID_STRIDE(i, total) { y[i] = bf16_from(bf16_load(y, i) + bf16_load(b, i % C)); }
}

extern "C" void ldmc_cuda_add_bias(uint16_t *y, const uint16_t *b, int64_t M, int C) {
    LAUNCH_1D(bias_rows_kernel, M * C, y, b, C, M * C);
}

extern "C" void ldmc_cuda_linear_forward(uint16_t *y, const uint16_t *x, const uint16_t *w,
                                         const uint16_t *b, int64_t M, int in, int out) {
    gemm_rm(false, true, M, out, in, x, in, 0, w, in, 0, 0.0f, y, false, out, 0, 1);
    if (b) ldmc_cuda_add_bias(y, b, M, out);
}

static void column_sums(float *out, float beta, const void *x, bool bf16, int64_t M, int C);

// A bf16 dy (core/tape.h) goes to the products as is; an f32 one through its bf16 copy.
extern "C" void ldmc_cuda_linear_backward(ldmc_cuda_grad dx, float *dw, float *db, ldmc_cuda_dy dy,
                                          const uint16_t *x, const uint16_t *w, int64_t M, int in,
                                          int out) {
    if (db) column_sums(db, 1.0f, dy.p, dy.bf16, M, out); // before the workspace holds dy's copy
    if (!dx.p && !dw) return;
    const uint16_t *dyb =
        dy.bf16 ? (const uint16_t *)dy.p : bf16_copy((const float *)dy.p, M * out);
    if (dx.p)
        gemm_rm(false, false, M, in, out, dyb, out, 0, w, in, 0, dx.beta, dx.p, !dx.bf16, in, 0, 1);
    if (dw) gemm_rm(true, false, out, in, M, dyb, out, 0, x, in, 0, 1.0f, dw, true, in, 0, 1);
}

extern "C" void ldmc_cuda_bmm_forward(uint16_t *c, const uint16_t *a, const uint16_t *b, int B,
                                      int M, int N, int K, bool trans_a, bool trans_b) {
    gemm_rm(trans_a, trans_b, M, N, K, a, trans_a ? M : K, (int64_t)M * K, b, trans_b ? K : N,
            (int64_t)K * N, 0.0f, c, false, N, (int64_t)M * N, B);
}

extern "C" void ldmc_cuda_bmm_backward(float *da, float *db, float beta_a, float beta_b,
                                       const float *dc, const uint16_t *a, const uint16_t *b, int B,
                                       int M, int N, int K, bool trans_a, bool trans_b) {
    if (!da && !db) return;
    const uint16_t *dcb = bf16_copy(dc, (int64_t)B * M * N);
    const int64_t sa = (int64_t)M * K, sb = (int64_t)K * N, sc = (int64_t)M * N;
    const int lda = trans_a ? M : K, ldb = trans_b ? K : N;
    if (da) {
        if (!trans_a) // da (M, K) += dc (M, N) op(b)^T
            gemm_rm(false, !trans_b, M, K, N, dcb, N, sc, b, ldb, sb, beta_a, da, true, K, sa, B);
        else // da (K, M) += op(b) (K, N) dc^T
            gemm_rm(trans_b, true, K, M, N, b, ldb, sb, dcb, N, sc, beta_a, da, true, M, sa, B);
    }
    if (db) {
        if (!trans_b) // db (K, N) += op(a)^T dc
            gemm_rm(!trans_a, false, K, N, M, a, lda, sa, dcb, N, sc, beta_b, db, true, N, sb, B);
        else // db (N, K) += dc^T op(a)
            gemm_rm(true, trans_a, N, K, M, dcb, N, sc, a, lda, sa, beta_b, db, true, K, sb, B);
    }
}

// Column sums in two passes with a fixed order: partial sums of row chunks (a 32 x 8 block per
// 32 columns and chunk), then the chunks in order. Deterministic, unlike atomics.
enum { COLSUM_CHUNKS = 256 };

__global__ static void column_partial_kernel(float *partial, const void *x, bool is_f32, int64_t M,
                                             int C, int64_t rows_per_chunk) {
    __shared__ float tile[8][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    int64_t r0 = (int64_t)blockIdx.y * rows_per_chunk, r1 = min(M, r0 + rows_per_chunk);
    float s = 0;
    if (c < C)
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8)
            s += load_any(x, is_f32, r * C + c);
    tile[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        for (int k = 1; k < 8; k++)
            s += tile[k][threadIdx.x];
        partial[(int64_t)blockIdx.y * C + c] = s;
    }
}

__global__ static void column_final_kernel(float *out, float beta, const float *partial, int chunks,
                                           int C) {
    GRID_STRIDE(c, C) {
        float s = 0;
        for (int k = 0; k < chunks; k++)
            s += partial[(int64_t)k * C + c];
        out[c] = grad_add(beta, out + c, s);
    }
}

extern "C" void ldmc_cuda_column_sums(float *out, float beta, const float *x, int64_t M, int C) {
    column_sums(out, beta, x, false, M, C);
}

// out (C) (+)= the column sums of x (M, C), f32 or bf16 (beta 0: out written).
static void column_sums(float *out, float beta, const void *x, bool bf16, int64_t M, int C) {
    if (C <= 0) return;
    if (M <= 0) {
        if (beta == 0.0f) ldmc_cuda_fill_f32(out, 0.0f, C);
        return;
    }
    int64_t rows = (M + COLSUM_CHUNKS - 1) / COLSUM_CHUNKS;
    int chunks = (int)((M + rows - 1) / rows);
    float *partial = (float *)ldmc_cuda_workspace((size_t)chunks * C * sizeof(float));
    dim3 grid((unsigned)((C + 31) / 32), (unsigned)chunks), block(32, 8);
    column_partial_kernel<<<grid, block, 0, ldmc_stream()>>>(partial, x, !bf16, M, C, rows);
    CUDA_CHECK_LAUNCH("column_partial");
    LAUNCH_1D(column_final_kernel, C, out, beta, partial, chunks, C);
}
