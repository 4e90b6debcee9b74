// Element types: f32 (all CPU math), bf16 and f16 (storage on disk and on the GPU), i32 and i64
// (indices, labels). Conversions round to nearest even and keep inf/NaN. Tested by
// tests/test_core.c (every f16 and bf16 value round-trips; rounding ties; overflow; subnormals).
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef enum ldmc_dtype {
    LDMC_F32,
    LDMC_BF16,
    LDMC_F16,
    LDMC_I32,
    LDMC_I64,
    LDMC_DTYPE_COUNT
} ldmc_dtype;

size_t ldmc_dtype_size(ldmc_dtype dtype);
// The safetensors spelling: "F32", "BF16", "F16", "I32", "I64".
const char *ldmc_dtype_name(ldmc_dtype dtype);
// Parses the safetensors spelling; returns -1 for anything else.
int ldmc_dtype_parse(const char *name, ldmc_dtype *out);

// Parses a user's dtype name: f32/fp32/float32, f16/fp16/float16, bf16/bfloat16 (any case), or
// the safetensors spelling. Returns -1 for anything else.
int ldmc_dtype_from_name(const char *name, ldmc_dtype *out);

uint16_t ldmc_f32_to_bf16(float x);
float ldmc_bf16_to_f32(uint16_t x);
// An f32 as two 16-bit halves with nothing lost (the GPU's f32 master weights, core/params.h):
// `hi` is the f32 rounded to bf16, to nearest with ties away from zero (ldmc_f32_to_bf16 rounds
// ties to even: they differ when the low half is exactly 0x8000), so it serves as the bf16
// working copy; `lo` is the f32's low half. ldmc_f32_join gives the f32 back bit for bit (a NaN
// comes back as a quiet NaN). kernels/common.cuh has the same two on the GPU.
uint16_t ldmc_f32_split(float x, uint16_t *lo);
float ldmc_f32_join(uint16_t hi, uint16_t lo);
// The same over n values.
void ldmc_f32_split_n(uint16_t *hi, uint16_t *lo, const float *x, size_t n);
void ldmc_f32_join_n(float *x, const uint16_t *hi, const uint16_t *lo, size_t n);
uint16_t ldmc_f32_to_f16(float x);
float ldmc_f16_to_f32(uint16_t x);

// Converts n elements between any two float dtypes (f32, bf16, f16), or copies when they match.
// Integer dtypes convert only to themselves. Returns -1 for an unsupported pair.
int ldmc_convert(void *dst, ldmc_dtype dst_dtype, const void *src, ldmc_dtype src_dtype, size_t n);
