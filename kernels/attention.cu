// Multi-head scaled-dot-product attention through cuBLAS, over chunks of queries. CPU twin:
// src/ops/cpu/attention.inc (the same lse and backward formulas). Tested by tests/test_cuda.c
// against the CPU kernels.
//
// q (B, Nq, H*D), k and v (B, Nk, H*D), o (B, Nq, H*D), head h in columns [h*D, (h+1)*D): a
// head's rows are a row-major (L, D) matrix with leading dimension H*D, and the H heads are one
// strided batch (stride D). For each batch element b and chunk of cq queries, all heads at once:
//   forward:  S = scale Q K^T (f32), softmax rows -> lse and P (bf16), O = P V (bf16, into o);
//   backward: S again, P = exp(S - lse), dP = dO V^T, dS = P (dP - Δ) with Δ_i = Σ_d dO o,
//             dq += scale dS K, dk += scale dS^T Q, dv += P^T dO (f32, in place).
// A fresh gradient (beta 0: core/tape.h) is written by the first chunk that reaches it (dq: every
// chunk its own rows; dk, dv: the first chunk, the later ones add). A bf16 gradient (dq, dk, dv
// for products that read them rounded; dO from a product that wrote it so) is written as
// cuBLAS's bf16 output; dk and dv, summed over several chunks, go through an f32 accumulator
// of one batch element first. A bf16 dO is used as is, without its rounded copy.
// The score tiles (H, cq, ld) live in the workspace; cq keeps them under attention_chunk_bytes
// (512 MiB unless ldmc_cuda_set_chunk_bytes says otherwise), so no (Nq, Nk) matrix of every query
// is held. Chunks run in order: dk and dv sum in a fixed order.
// Causal attention (Nq = Nk): query i's scores past key i are left out of the softmax and their
// probabilities (and so dS) are 0, as the CPU's.
//
// cuBLAS is column-major: a row-major (M, N) matrix with leading dimension ld reads as its
// (N, M) transpose, so each row-major product C = A B is issued as C^T = B^T A^T.

#include "kernels/common.cuh"
#include "kernels/cublas.cuh"
#include "kernels/ldmc_cuda.h"

static size_t attention_chunk_bytes = LDMC_CUDA_CHUNK_MAX;

extern "C" void ldmc_cuda_set_chunk_bytes(size_t attention, size_t conv) {
    attention_chunk_bytes = attention ? attention : LDMC_CUDA_CHUNK_MAX;
    conv_set_chunk_bytes(conv);
}

// Score rows padded to 8 values: 16-byte aligned rows for the tensor-core GEMMs.
static int score_ld(int Nk) { return (Nk + 7) / 8 * 8; }

// Queries a chunk: H cq ld bytes_per_score bytes at most (at least one row), a multiple of 64
// when above 64.
static int query_chunk(int Nq, int H, int ld, size_t bytes_per_score) {
    int64_t cq = (int64_t)(attention_chunk_bytes / ((size_t)H * ld * bytes_per_score));
    if (cq > Nq) cq = Nq;
    if (cq > 64) cq -= cq % 64;
    return cq > 1 ? (int)cq : 1;
}

// Column-major C = alpha op(A) op(B) + beta C over the H heads: A and B bf16, f32 math, C f32
// or bf16; strides between heads sa, sb, sc.
static void gemm_heads(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                       int k, float alpha, const uint16_t *A, int lda, int64_t sa,
                       const uint16_t *B, int ldb, int64_t sb, float beta, void *C, bool c_f32,
                       int ldc, int64_t sc, int heads) {
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        h, ta, tb, m, n, k, &alpha, A, CUDA_R_16BF, lda, sa, B, CUDA_R_16BF, ldb, sb, &beta, C,
        c_f32 ? CUDA_R_32F : CUDA_R_16BF, ldc, sc, heads, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// S (H, cq, ld) = scale Q K^T for the chunk's `rows` queries: column-major S^T (Nk, rows) =
// K (Nk, D) Q^T (D, rows), where the stored K reads as K^T (D, Nk), hence op T.
static void scores(cublasHandle_t h, float *S, const uint16_t *qc, const uint16_t *kb, int rows,
                   int cq, int ld, int Nk, int H, int D, float scale) {
    gemm_heads(h, CUBLAS_OP_T, CUBLAS_OP_N, Nk, rows, D, scale, kb, H * D, D, qc, H * D, D, 0.0f, S,
               true, ld, (int64_t)cq * ld, H);
}

// One warp per row t < total, grid-stride by warps (launched with LAUNCH_1D over 32 threads a
// row). A score row t of a chunk is (h, r) = (t / rows, t % rows): offset (h cq + r) ld in the
// (H, cq, ld) tile, index h Nq + r in lse (B, H, Nq) from (b, ., i0).
#define FOR_EACH_ROW(t, total)                                                                     \
    for (int64_t t = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5; t < (total);           \
         t += ((int64_t)gridDim.x * blockDim.x) >> 5)

// The keys query i sees: 0..i when causal, else all.
__device__ __forceinline__ int visible_keys(int i, int Nk, bool causal) {
    return causal && i + 1 < Nk ? i + 1 : Nk;
}

// Each row of S -> lse = log Σ exp(S) and P = exp(S - max) / Σ (bf16). One pass for the maximum
// and the sum (rescaled as the maximum grows), one for P. i0: the chunk's first query.
__global__ static void softmax_rows_kernel(uint16_t *p, float *lse, const float *S, int rows,
                                           int cq, int ld, int Nk, int Nq, int i0, bool causal,
                                           int64_t total) {
    const int lane = threadIdx.x & 31;
    FOR_EACH_ROW(t, total) {
        const int h = (int)(t / rows), r = (int)(t % rows);
        const int64_t off = ((int64_t)h * cq + r) * ld;
        const int keys = visible_keys(i0 + r, Nk, causal);
        const float *row = S + off;
        float mx = -INFINITY, sum = 0.0f;
        for (int j = lane; j < keys; j += 32) {
            const float v = row[j];
            if (v > mx) {
                sum = sum * expf(mx - v) + 1.0f;
                mx = v;
            } else if (v != -INFINITY) { // exp(-inf) adds nothing; NaN gets through
                sum += expf(v - mx);
            }
        }
        for (int o = 16; o > 0; o >>= 1) { // a lane without values (mx = -inf) adds nothing
            const float m2 = __shfl_xor_sync(0xffffffffu, mx, o);
            const float s2 = __shfl_xor_sync(0xffffffffu, sum, o);
            const float mm = fmaxf(mx, m2);
            sum = (mx == -INFINITY ? 0.0f : sum * expf(mx - mm)) +
                  (m2 == -INFINITY ? 0.0f : s2 * expf(m2 - mm));
            mx = mm;
        }
        if (lane == 0) lse[(int64_t)h * Nq + r] = mx + logf(sum);
        const float inv = 1.0f / sum;
        uint16_t *prow = p + off;
        for (int j = lane; j < Nk; j += 32)
            prow[j] = j < keys ? bf16_from(expf(row[j] - mx) * inv) : (uint16_t)0;
    }
}

// Δ (B, H, Nq) = Σ_d dO o per row of each head, and dob = dO as bf16 (dout f32; a bf16 dout is
// read as is, dob NULL). Δ uses the bf16 dO that the dP GEMM sees: then Σ_j P dP = Δ holds up to
// o's rounding, and dS = P (dP - Δ) does not pick up dO's rounding as a constant offset per row.
// One warp per (b, i, h): rows of D values.
__global__ static void delta_kernel(float *delta, uint16_t *dob, const void *dout, bool dout_bf16,
                                    const uint16_t *o, int Nq, int H, int D, int64_t total) {
    const int lane = threadIdx.x & 31;
    FOR_EACH_ROW(t, total) { // t = (b Nq + i) H + h
        const int h = (int)(t % H);
        const int64_t bi = t / H, b = bi / Nq, i = bi % Nq;
        float acc = 0.0f;
        for (int d = lane; d < D; d += 32) {
            const int64_t e = t * D + d;
            const uint16_t g =
                dout_bf16 ? ((const uint16_t *)dout)[e] : bf16_from(((const float *)dout)[e]);
            if (dob) dob[e] = g;
            acc += __uint_as_float((uint32_t)g << 16) * bf16_load(o, e);
        }
        acc = warp_sum(acc);
        if (lane == 0) delta[(b * H + h) * Nq + i] = acc;
    }
}

// Per score row of the chunk: P = exp(S - lse); pb = P (bf16) when dv is wanted; ds = P (dP - Δ)
// (bf16) when dq or dk is. lse and delta point at (b, ., i0) of their (B, H, Nq).
__global__ static void score_grads_kernel(uint16_t *pb, uint16_t *ds, const float *S,
                                          const float *dP, const float *lse, const float *delta,
                                          int rows, int cq, int ld, int Nk, int Nq, int i0,
                                          bool causal, int64_t total) {
    const int lane = threadIdx.x & 31;
    FOR_EACH_ROW(t, total) {
        const int h = (int)(t / rows), r = (int)(t % rows);
        const int64_t off = ((int64_t)h * cq + r) * ld, li = (int64_t)h * Nq + r;
        const int keys = visible_keys(i0 + r, Nk, causal);
        const float shift = lse[li], dl = ds ? delta[li] : 0.0f;
        for (int j = lane; j < Nk; j += 32) {
            const float p = j < keys ? expf(S[off + j] - shift) : 0.0f;
            if (pb) pb[off + j] = bf16_from(p);
            if (ds) ds[off + j] = bf16_from(p * (dP[off + j] - dl));
        }
    }
}

extern "C" void ldmc_cuda_attention_forward(uint16_t *o, float *lse, const uint16_t *q,
                                            const uint16_t *k, const uint16_t *v, int B, int Nq,
                                            int Nk, int H, int D, float scale, bool causal) {
    if (B <= 0 || Nq <= 0 || H <= 0 || D <= 0) return;
    LDMC_CHECK(Nk > 0, "attention: no keys (Nk = %d)", Nk);
    cublasHandle_t h = (cublasHandle_t)ldmc_cuda_cublas(); // before the workspace is carved
    const int HD = H * D, ld = score_ld(Nk), cq = query_chunk(Nq, H, ld, 4 + 2);
    const size_t tile = (size_t)H * cq * ld, s_bytes = align256(tile * sizeof(float));
    char *ws = (char *)ldmc_cuda_workspace(s_bytes + tile * sizeof(uint16_t));
    float *S = (float *)ws;
    uint16_t *P = (uint16_t *)(ws + s_bytes);
    for (int b = 0; b < B; b++) {
        const uint16_t *kb = k + (int64_t)b * Nk * HD, *vb = v + (int64_t)b * Nk * HD;
        for (int i0 = 0; i0 < Nq; i0 += cq) {
            const int rows = Nq - i0 < cq ? Nq - i0 : cq;
            const int64_t qoff = ((int64_t)b * Nq + i0) * HD;
            scores(h, S, q + qoff, kb, rows, cq, ld, Nk, H, D, scale);
            const int64_t total = (int64_t)H * rows;
            LAUNCH_1D(softmax_rows_kernel, total * 32, P, lse + (int64_t)b * H * Nq + i0, S, rows,
                      cq, ld, Nk, Nq, i0, causal, total);
            // O^T (D, rows) = V^T (D, Nk) P^T (Nk, rows): the stored V and P read so already
            gemm_heads(h, CUBLAS_OP_N, CUBLAS_OP_N, D, rows, Nk, 1.0f, vb, HD, D, P, ld,
                       (int64_t)cq * ld, 0.0f, o + qoff, false, HD, D, H);
        }
    }
}

// Workspace: Δ (B, H, Nq) f32, dO (B, Nq, H*D) bf16 (for an f32 dO), the f32 accumulators of one
// batch element's dk and dv (bf16 ones over several chunks), then per chunk S/P (f32), and when
// dq or dk is wanted dP (f32) and dS (bf16), when dv is P (bf16): 4 to 12 bytes a score.
extern "C" void ldmc_cuda_attention_backward(ldmc_cuda_grad dq, ldmc_cuda_grad dk,
                                             ldmc_cuda_grad dv, ldmc_cuda_dy dout,
                                             const uint16_t *q, const uint16_t *k,
                                             const uint16_t *v, const uint16_t *o, const float *lse,
                                             int B, int Nq, int Nk, int H, int D, float scale,
                                             bool causal) {
    if (B <= 0 || Nq <= 0 || Nk <= 0 || H <= 0 || D <= 0 || (!dq.p && !dk.p && !dv.p)) return;
    cublasHandle_t h = (cublasHandle_t)ldmc_cuda_cublas();
    const bool want_ds = dq.p || dk.p, want_p = dv.p != nullptr;
    const int HD = H * D, ld = score_ld(Nk);
    const int cq = query_chunk(Nq, H, ld, 4 + (want_ds ? 4 + 2 : 0) + (want_p ? 2 : 0));
    // dk, dv in bf16 over several chunks: summed in f32 per batch element, then rounded once
    const bool dk_acc = dk.p && dk.bf16 && cq < Nq, dv_acc = dv.p && dv.bf16 && cq < Nq;
    const size_t tile = (size_t)H * cq * ld, kv = (size_t)Nk * HD;
    const size_t delta_bytes = align256((size_t)B * H * Nq * sizeof(float));
    const size_t dob_bytes = dout.bf16 ? 0 : align256((size_t)B * Nq * HD * sizeof(uint16_t));
    const size_t acc_bytes = align256(kv * sizeof(float));
    const size_t dk_bytes = dk_acc ? acc_bytes : 0, dv_bytes = dv_acc ? acc_bytes : 0;
    const size_t s_bytes = align256(tile * sizeof(float));
    const size_t dp_bytes = want_ds ? align256(tile * sizeof(float)) : 0;
    const size_t ds_bytes = want_ds ? align256(tile * sizeof(uint16_t)) : 0;
    const size_t p_bytes = want_p ? align256(tile * sizeof(uint16_t)) : 0;
    char *ws = (char *)ldmc_cuda_workspace(delta_bytes + dob_bytes + dk_bytes + dv_bytes + s_bytes +
                                           dp_bytes + ds_bytes + p_bytes);
    float *delta = (float *)ws;
    uint16_t *dob_copy = dout.bf16 ? nullptr : (uint16_t *)(ws + delta_bytes);
    const uint16_t *dob = dout.bf16 ? (const uint16_t *)dout.p : dob_copy;
    float *dk_sum = dk_acc ? (float *)(ws + delta_bytes + dob_bytes) : nullptr;
    float *dv_sum = dv_acc ? (float *)(ws + delta_bytes + dob_bytes + dk_bytes) : nullptr;
    float *S = (float *)(ws + delta_bytes + dob_bytes + dk_bytes + dv_bytes);
    float *dP = want_ds ? (float *)((char *)S + s_bytes) : nullptr;
    uint16_t *dS = want_ds ? (uint16_t *)((char *)S + s_bytes + dp_bytes) : nullptr;
    uint16_t *P = want_p ? (uint16_t *)((char *)S + s_bytes + dp_bytes + ds_bytes) : nullptr;

    const int64_t rows_all = (int64_t)B * Nq * H;
    LAUNCH_1D(delta_kernel, rows_all * 32, delta, dob_copy, dout.p, dout.bf16, o, Nq, H, D,
              rows_all);
    for (int b = 0; b < B; b++) {
        const uint16_t *kb = k + (int64_t)b * Nk * HD, *vb = v + (int64_t)b * Nk * HD;
        const int64_t kvoff = (int64_t)b * Nk * HD;
        // where this batch element's dk and dv go: the accumulator, or the gradient itself
        void *dkb = dk_acc ? (void *)dk_sum : grad_at(dk.p, dk.bf16, kvoff);
        void *dvb = dv_acc ? (void *)dv_sum : grad_at(dv.p, dv.bf16, kvoff);
        const bool dk_f32 = dk_acc || !dk.bf16, dv_f32 = dv_acc || !dv.bf16;
        for (int i0 = 0; i0 < Nq; i0 += cq) {
            const int rows = Nq - i0 < cq ? Nq - i0 : cq;
            const int64_t qoff = ((int64_t)b * Nq + i0) * HD, lse_off = (int64_t)b * H * Nq + i0;
            const int64_t sstride = (int64_t)cq * ld;
            // the first chunk writes a fresh (or accumulated) dk and dv, the later ones add
            const float bk = i0 == 0 ? (dk_acc ? 0.0f : dk.beta) : 1.0f;
            const float bv = i0 == 0 ? (dv_acc ? 0.0f : dv.beta) : 1.0f;
            scores(h, S, q + qoff, kb, rows, cq, ld, Nk, H, D, scale);
            // dP (rows, Nk) = dO V^T: the same form as S = Q K^T
            if (want_ds)
                gemm_heads(h, CUBLAS_OP_T, CUBLAS_OP_N, Nk, rows, D, 1.0f, vb, HD, D, dob + qoff,
                           HD, D, 0.0f, dP, true, ld, sstride, H);
            const int64_t total = (int64_t)H * rows;
            LAUNCH_1D(score_grads_kernel, total * 32, P, dS, S, dP, lse + lse_off, delta + lse_off,
                      rows, cq, ld, Nk, Nq, i0, causal, total);
            // dv^T (D, Nk) += dO^T (D, rows) P (rows, Nk): the stored P reads as P^T, hence op T
            if (dv.p)
                gemm_heads(h, CUBLAS_OP_N, CUBLAS_OP_T, D, Nk, rows, 1.0f, dob + qoff, HD, D, P, ld,
                           sstride, bv, dvb, dv_f32, HD, D, H);
            // dq^T (D, rows) += scale K^T (D, Nk) dS^T (Nk, rows): each chunk its own rows
            if (dq.p)
                gemm_heads(h, CUBLAS_OP_N, CUBLAS_OP_N, D, rows, Nk, scale, kb, HD, D, dS, ld,
                           sstride, dq.beta, grad_at(dq.p, dq.bf16, qoff), !dq.bf16, HD, D, H);
            // dk^T (D, Nk) += scale Q^T (D, rows) dS (rows, Nk)
            if (dk.p)
                gemm_heads(h, CUBLAS_OP_N, CUBLAS_OP_T, D, Nk, rows, scale, q + qoff, HD, D, dS, ld,
                           sstride, bk, dkb, dk_f32, HD, D, H);
        }
        if (dk_acc) ldmc_cuda_f32_to_bf16((uint16_t *)dk.p + kvoff, dk_sum, (int64_t)kv);
        if (dv_acc) ldmc_cuda_f32_to_bf16((uint16_t *)dv.p + kvoff, dv_sum, (int64_t)kv);
    }
}
