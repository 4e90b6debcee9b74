// Philox4x32-10 streams (see rng.h). Tested by tests/test_core.c.
#include "core/rng.h"

#include <math.h>
#include <string.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

uint64_t ldmc_hash_bytes(uint64_t h, const void *data, size_t n) {
    const unsigned char *c = data;
    for (size_t i = 0; i < n; i++)
        h = (h ^ c[i]) * 0x100000001b3ull;
    return h;
}

ldmc_rng ldmc_step_rng(const ldmc_step_key *key, uint32_t purpose) {
    return ldmc_rng_make(key->seed, key->step, 0, purpose);
}

uint64_t ldmc_step_offset(const ldmc_step_key *key) { return (uint64_t)key->micro << 40; }

uint64_t ldmc_step_row_offset(const ldmc_step_key *key, int64_t per_row) {
    return ldmc_step_offset(key) + (uint64_t)key->first * (uint64_t)per_row;
}

uint64_t ldmc_step_second_block(const ldmc_step_key *key, int n, int64_t per_row,
                                int64_t per_row2) {
    uint64_t rows = (uint64_t)(key->total > 0 ? key->total : n);
    return ldmc_step_offset(key) + ((rows * (uint64_t)per_row + 1) & ~(uint64_t)1) +
           (uint64_t)key->first * (uint64_t)per_row2;
}

uint64_t ldmc_hash_name(const char *name) {
    return ldmc_hash_bytes(LDMC_HASH_START, name, strlen(name));
}

void ldmc_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

ldmc_rng ldmc_rng_make(uint64_t seed, uint32_t step, uint32_t rank, uint32_t purpose) {
    ldmc_rng rng = {
        .key = {(uint32_t)seed, (uint32_t)(seed >> 32)},
        .ctr_hi = {step, (rank << 16) | (purpose & 0xffffu)},
    };
    return rng;
}

static void block(const ldmc_rng *rng, uint64_t b, uint32_t out[4]) {
    uint32_t ctr[4] = {(uint32_t)b, (uint32_t)(b >> 32), rng->ctr_hi[0], rng->ctr_hi[1]};
    ldmc_philox4x32_10(ctr, rng->key, out);
}

uint32_t ldmc_rng_bits(const ldmc_rng *rng, uint64_t i) {
    uint32_t out[4];
    block(rng, i >> 2, out);
    return out[i & 3];
}

void ldmc_rng_uniform(const ldmc_rng *rng, uint64_t offset, size_t n, float *out) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t k = 0; k < n; k++)
        out[k] = (float)(ldmc_rng_bits(rng, offset + k) >> 8) * 0x1p-24f;
}

void ldmc_rng_signed_uniform(const ldmc_rng *rng, uint64_t offset, size_t n, float *out) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t k = 0; k < n; k++) {
        int32_t m = (int32_t)(ldmc_rng_bits(rng, offset + k) >> 8) - (1 << 23);
        out[k] = (float)m * 0x1p-23f;
    }
}

static float box_muller(const ldmc_rng *rng, uint64_t i) {
    double u0 = (double)(ldmc_rng_bits(rng, i & ~(uint64_t)1) >> 8) * 0x1p-24;
    double u1 = (double)(ldmc_rng_bits(rng, i | 1) >> 8) * 0x1p-24;
    double r = sqrt(-2.0 * log(1.0 - u0));
    double a = 2.0 * M_PI * u1;
    return (float)(r * ((i & 1) ? sin(a) : cos(a)));
}

void ldmc_rng_normal(const ldmc_rng *rng, uint64_t offset, size_t n, float *out) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t k = 0; k < n; k++)
        out[k] = box_muller(rng, offset + k);
}
