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
uint16_t ldmc_f32_to_f16(float x);
float ldmc_f16_to_f32(uint16_t x);

// Converts n elements between any two float dtypes (f32, bf16, f16), or copies when they match.
// Integer dtypes convert only to themselves. Returns -1 for an unsupported pair.
int ldmc_convert(void *dst, ldmc_dtype dst_dtype, const void *src, ldmc_dtype src_dtype, size_t n);
