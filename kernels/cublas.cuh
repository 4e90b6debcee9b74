// cuBLAS for the .cu files that call it: checked calls that keep the file and line, and the
// row-major GEMM the dense layers and the convolutions' fallback share.
#pragma once
#include <cublas_v2.h>

#include "core/error.h"
#include "kernels/common.cuh" // CUDA_CHECK, for the zeroing of an empty product
#include "kernels/ldmc_cuda.h"

#define CUBLAS_CHECK(call)                                                                         \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                           \
            ldmc_fatal_at(__FILE__, __LINE__, "cuBLAS: %s failed: %s", #call,                      \
                          cublasGetStatusString(s_));                                              \
    } while (0)

static inline int checked_int(int64_t v, const char *what) {
    if (v < 0 || v > INT32_MAX) LDMC_FATAL("cuBLAS: %s = %lld exceeds an int", what, (long long)v);
    return (int)v;
}

// Row-major C (M, N) = alpha op(A) op(B) + beta C over `batch` matrices, op(A) (M, K), op(B)
// (K, N); lda, ldb, ldc are the row lengths of the stored matrices. cuBLAS is column-major, where
// a stored row-major matrix reads as its transpose: C^T = op(B)^T op(A)^T is one call with the
// operands swapped.
static inline void gemm_rm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const void *A,
                    int64_t lda, int64_t stride_a, const void *B, int64_t ldb, int64_t stride_b,
                    float beta, void *C, bool c_f32, int64_t ldc, int64_t stride_c, int batch) {
    if (M == 0 || N == 0 || batch == 0) return;
    const float alpha = 1.0f;
    cublasHandle_t h = (cublasHandle_t)ldmc_cuda_cublas();
    cudaDataType ct = c_f32 ? CUDA_R_32F : CUDA_R_16BF;
    cublasOperation_t opb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                      opa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    int m = checked_int(N, "N"), n = checked_int(M, "M"), k = checked_int(K, "K");
    if (k == 0) { // an empty sum: C = beta C (beta 0: a fresh gradient, zeroed)
        if (beta == 0.0f) {
            const size_t es = c_f32 ? sizeof(float) : sizeof(uint16_t);
            for (int s = 0; s < batch; s++)
                CUDA_CHECK(cudaMemset2DAsync((char *)C + (size_t)s * stride_c * es,
                                             (size_t)ldc * es, 0, (size_t)N * es, (size_t)M,
                                             (cudaStream_t)ldmc_cuda_stream()));
        } else if (beta != 1.0f) {
            LDMC_FATAL("cuBLAS: empty inner dimension with beta %g", beta);
        }
        return;
    }
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(h, opb, opa, m, n, k, &alpha, B, CUDA_R_16BF,
                                            checked_int(ldb, "ldb"), stride_b, A, CUDA_R_16BF,
                                            checked_int(lda, "lda"), stride_a, &beta, C, ct,
                                            checked_int(ldc, "ldc"), stride_c, batch,
                                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}
