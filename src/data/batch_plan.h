// The batch plan: one bucket per batch, the samples of a bucket shuffled into its batches, and
// the batches ordered at random so that consecutive steps change bucket (SDXL Sec. 2.3) whenever
// no bucket holds more than half of the epoch's batches. A pure
// function of (seed, epoch): the same on every rank, resumable at any batch, and sharded by
// taking every world-th batch. A bucket's last batch may be smaller than the batch size; no
// image is dropped. Tested by tests/test_data.c.
#pragma once
#include <stdint.h>

#include "data/buckets.h"

typedef struct ldmc_batch_ref {
    int bucket;
    int n;     // samples in the batch (the batch size, or fewer for a bucket's last batch)
    int first; // into the plan's `order`
} ldmc_batch_ref;

typedef struct ldmc_epoch_plan {
    int64_t epoch;
    int n_batches;
    ldmc_batch_ref *batches;
    int *order; // sample indices, batch after batch
} ldmc_epoch_plan;

typedef struct ldmc_batch_plan {
    int n_samples;
    const int *sample_bucket; // the bucket of each sample
    int n_buckets;
    int batch_size;
    uint64_t seed;
    int rank, world;
    int fill[LDMC_MAX_BUCKETS]; // samples per bucket
} ldmc_batch_plan;

void ldmc_batch_plan_init(ldmc_batch_plan *s, int n_samples, const int *sample_bucket,
                          int n_buckets, int batch_size, uint64_t seed, int rank, int world);
void ldmc_batch_plan_epoch(const ldmc_batch_plan *s, int64_t epoch, ldmc_epoch_plan *plan);
void ldmc_epoch_plan_free(ldmc_epoch_plan *plan);
// Batches each rank takes per epoch: ceil(n_batches / world); a rank past the end of the epoch's
// batches takes them again from the start (only when world does not divide n_batches).
int ldmc_batch_plan_steps_per_epoch(const ldmc_batch_plan *s);
// The batch (within `plan`) that this rank's `index`-th batch of the epoch is.
const ldmc_batch_ref *ldmc_batch_plan_batch(const ldmc_batch_plan *s, const ldmc_epoch_plan *plan,
                                            int index);
