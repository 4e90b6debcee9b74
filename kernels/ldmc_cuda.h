// The C interface of the CUDA kernels (kernels/*.cu): plain C types only, streams as void *.
// Every launcher checks its launch and reports failures with file:line through ldmc_fatal.
// Each kernel has a CPU twin in src/ops or src/core; tests/test_cuda.c compares the two
// (ctest -L cuda, on a machine with a GPU).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/rng.h"

#ifdef __cplusplus
extern "C" {
#endif

// ---- device and memory (info.cu) -------------------------------------------------------------
int ldmc_cuda_device_count(void); // 0 when there is no usable device
void ldmc_cuda_print_info(FILE *out);
void *ldmc_cuda_malloc(size_t bytes);
void ldmc_cuda_free(void *p);
void ldmc_cuda_to_device(void *dst, const void *src, size_t bytes);
void ldmc_cuda_to_host(void *dst, const void *src, size_t bytes);
void ldmc_cuda_zero(void *p, size_t bytes);
void ldmc_cuda_synchronize(void);

// ---- Philox streams, bit-identical to src/core/rng.c (rng.cu) --------------------------------
void ldmc_cuda_rng_uniform(const ldmc_rng *rng, uint64_t offset, size_t n, float *out,
                           void *stream);
void ldmc_cuda_rng_normal(const ldmc_rng *rng, uint64_t offset, size_t n, float *out, void *stream);

// ---- elementwise ops on bf16 storage with f32 math (elementwise.cu) --------------------------
// y = x * sigmoid(x); dx += dy * sigmoid(x) (1 + x (1 - sigmoid(x)))
void ldmc_cuda_silu_forward_bf16(uint16_t *y, const uint16_t *x, int64_t n, void *stream);
void ldmc_cuda_silu_backward_bf16(uint16_t *dx, const uint16_t *dy, const uint16_t *x, int64_t n,
                                  void *stream);
// y = a + b
void ldmc_cuda_add_bf16(uint16_t *y, const uint16_t *a, const uint16_t *b, int64_t n, void *stream);
// f32 <-> bf16 conversions (round to nearest even, as src/core/dtype.c)
void ldmc_cuda_f32_to_bf16(uint16_t *dst, const float *src, int64_t n, void *stream);
void ldmc_cuda_bf16_to_f32(float *dst, const uint16_t *src, int64_t n, void *stream);

#ifdef __cplusplus
}
#endif
