// Philox4x32-10 on the device: the same counter layout and the same uniform and Box-Muller
// formulas as src/core/rng.c (see rng.h), shared by rng.cu (noise) and elementwise.cu (dropout).
#pragma once
#include <stdint.h>

#include "core/rng.h"

struct philox_stream {
    uint32_t key0, key1, ctr2, ctr3;
};

static inline philox_stream philox_of(const ldmc_rng *rng) {
    return philox_stream{rng->key[0], rng->key[1], rng->ctr_hi[0], rng->ctr_hi[1]};
}

__device__ __forceinline__ uint32_t philox_bits(philox_stream s, uint64_t i) {
    uint64_t blk = i >> 2;
    uint32_t c0 = (uint32_t)blk, c1 = (uint32_t)(blk >> 32), c2 = s.ctr2, c3 = s.ctr3;
    uint32_t k0 = s.key0, k1 = s.key1;
#pragma unroll
    for (int round = 0; round < 10; round++) {
        uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c1 = lo1;
        c3 = lo0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    switch (i & 3) {
    case 0: return c0;
    case 1: return c1;
    case 2: return c2;
    default: return c3;
    }
}

__device__ __forceinline__ float philox_uniform(philox_stream s, uint64_t i) {
    return (float)(philox_bits(s, i) >> 8) * 0x1p-24f;
}

__device__ __forceinline__ float philox_normal(philox_stream s, uint64_t i) {
    double u0 = (double)(philox_bits(s, i & ~(uint64_t)1) >> 8) * 0x1p-24;
    double u1 = (double)(philox_bits(s, i | 1) >> 8) * 0x1p-24;
    double r = sqrt(-2.0 * log(1.0 - u0));
    double a = 2.0 * 3.14159265358979323846 * u1;
    return (float)(r * ((i & 1) ? sin(a) : cos(a)));
}
