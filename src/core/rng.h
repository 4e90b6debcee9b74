// Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11; the Random123 constants).
// A stream is keyed by (seed, step, rank, purpose); value i of a stream is a pure function of the
// stream and i, so any thread, any device and a resumed run draw exactly the same numbers.
//   key  = (seed & 0xffffffff, seed >> 32)
//   ctr  = (block & 0xffffffff, block >> 32, step, rank << 16 | purpose),  block = i / 4
//   bits = lane i % 4 of Philox(ctr, key)
//   uniform(i) = (bits >> 8) * 2^-24                                   in [0, 1), exact in f32
//   signed_uniform(i) = ((bits >> 8) - 2^23) * 2^-23                   in [-1, 1), exact in f32
//   normal(i) = Box-Muller on uniform(i & ~1), uniform(i | 1), in double, rounded to f32:
//               sqrt(-2 ln(1 - u0)) * (i even ? cos(2π u1) : sin(2π u1))
// Tested by tests/test_core.c (Random123 known answers, stream identities, moments).
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct ldmc_rng {
    uint32_t key[2];
    uint32_t ctr_hi[2]; // counter words 2 and 3: step, rank << 16 | purpose
} ldmc_rng;

// Purposes: one per consumer so that streams never overlap.
enum {
    LDMC_RNG_TEST = 0, // test inputs and reference data
    LDMC_RNG_DROPOUT = 1,
    LDMC_RNG_NOISE = 2, // diffusion noise
    LDMC_RNG_TIMESTEP = 3,
    LDMC_RNG_INIT = 4,      // parameter initialization
    LDMC_RNG_DATA = 5,      // data order: shuffles of samples and batches
    LDMC_RNG_AUGMENT = 6,   // per-sample crops and flips
    LDMC_RNG_COND_DROP = 7, // conditioning dropout for classifier-free guidance
    LDMC_RNG_SAMPLE = 8,    // the sampler's starting noise
    LDMC_RNG_LATENT = 9,    // draws from the VAE posterior (z = mean + std ε) in training
};

// FNV-1a (64-bit) of a string: a stable per-name key, e.g. for a parameter's initialization stream.
uint64_t ldmc_hash_name(const char *name);
// FNV-1a continued over n more bytes from the hash h (LDMC_HASH_START to begin).
#define LDMC_HASH_START 0xcbf29ce484222325ull
uint64_t ldmc_hash_bytes(uint64_t h, const void *data, size_t n);

void ldmc_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

ldmc_rng ldmc_rng_make(uint64_t seed, uint32_t step, uint32_t rank, uint32_t purpose);

// The key of a training micro-batch's draws: every stream of step `step`, of which micro-batch
// `micro` (the accumulation index) owns the 2^40 values from micro << 40, whatever the batch
// sizes. Under data parallelism a rank holds rows [first, first + n) of a global micro-batch of
// `total` rows (0: the rank holds it all), and every per-sample draw is taken at the sample's
// global row: the draws of a step do not depend on how many ranks share it. `rank` keys only the
// context's streams (dropout inside the model), which stay distinct per rank.
typedef struct ldmc_step_key {
    uint64_t seed;
    uint32_t step, rank, micro;
    int32_t first, total;
} ldmc_step_key;
// The step's stream for `purpose` (the same on every rank), and where the micro-batch's values
// start in it.
ldmc_rng ldmc_step_rng(const ldmc_step_key *key, uint32_t purpose);
uint64_t ldmc_step_offset(const ldmc_step_key *key);
// Where this rank's rows start when each row takes `per_row` values of a stream, and where a
// second block of `per_row2` values per row starts after the whole global micro-batch's first
// block of `per_row` values (from an even index: normals come in pairs).
uint64_t ldmc_step_row_offset(const ldmc_step_key *key, int64_t per_row);
uint64_t ldmc_step_second_block(const ldmc_step_key *key, int n, int64_t per_row, int64_t per_row2);
// The largest training step a run may reach: streams are keyed by a 32-bit step (kept below 2^31
// so that a step count fits an int everywhere).
#define LDMC_MAX_STEPS ((int64_t)INT32_MAX)
uint32_t ldmc_rng_bits(const ldmc_rng *rng, uint64_t i);
// Fill out[0..n) with values offset .. offset+n-1 of the stream.
void ldmc_rng_uniform(const ldmc_rng *rng, uint64_t offset, size_t n, float *out);
void ldmc_rng_signed_uniform(const ldmc_rng *rng, uint64_t offset, size_t n, float *out);
void ldmc_rng_normal(const ldmc_rng *rng, uint64_t offset, size_t n, float *out);
