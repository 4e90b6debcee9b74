// A stand-in for cublas_v2.h for the SIMT emulation (tests/simt/simt.cpp): the one GEMM the
// kernels call, computed on the CPU with cuBLAS's column-major semantics.
#pragma once
#include <stdint.h>

typedef void *cublasHandle_t;
typedef enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7 } cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum { CUDA_R_32F = 0, CUDA_R_16BF = 14 } cudaDataType;
typedef enum { CUBLAS_COMPUTE_32F = 68 } cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0 } cublasMath_t;

const char *cublasGetStatusString(cublasStatus_t status);
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa,
                                          cublasOperation_t transb, int m, int n, int k,
                                          const void *alpha, const void *A, cudaDataType Atype,
                                          int lda, int64_t strideA, const void *B,
                                          cudaDataType Btype, int ldb, int64_t strideB,
                                          const void *beta, void *C, cudaDataType Ctype, int ldc,
                                          int64_t strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t algo);
