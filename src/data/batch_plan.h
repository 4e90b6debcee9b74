// The batch plan: one bucket per batch, the samples of a bucket shuffled into its batches, and
// the batches ordered at random so that consecutive steps change bucket (SDXL Sec. 2.3) whenever
// no bucket holds more than half of the epoch's batches. A pure function of (seed, epoch): the
// same on every rank, resumable at any batch. Under data parallelism the plan's batches are
// global (world x the batch size) and rank r takes rows [r B, (r + 1) B) of each: every rank is in
// the same bucket at every step, on disjoint samples, and the global batches are those of one
// rank with the whole batch size. A bucket's last batch may be smaller (then the last ranks' parts
// are smaller, or empty); no image is dropped. Tested by tests/test_data.c.
#pragma once
#include <stdint.h>

#include "data/buckets.h"

typedef struct ldmc_batch_ref {
    int bucket;
    int n;     // samples in the batch (the batch size, or fewer for a bucket's last batch)
    int first; // into the plan's `order`
    // a rank's part (ldmc_batch_plan_batch): its first row within the global batch, and the
    // global batch's rows
    int row, total;
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
    int batch_size; // per rank
    int global;     // batch_size x world: the plan's batches
    uint64_t seed;
    int rank, world;
    int fill[LDMC_MAX_BUCKETS]; // samples per bucket
} ldmc_batch_plan;

void ldmc_batch_plan_init(ldmc_batch_plan *s, int n_samples, const int *sample_bucket,
                          int n_buckets, int batch_size, uint64_t seed, int rank, int world);
void ldmc_batch_plan_epoch(const ldmc_batch_plan *s, int64_t epoch, ldmc_epoch_plan *plan);
void ldmc_epoch_plan_free(ldmc_epoch_plan *plan);
// Global batches per epoch (every rank takes part in each), and what that would be with global
// batches of `global` samples.
int ldmc_batch_plan_steps_per_epoch(const ldmc_batch_plan *s);
int ldmc_batch_plan_steps_with(const ldmc_batch_plan *s, int global);
// The samples rank `rank` takes per epoch (every rank's add up to n_samples: none dropped).
int ldmc_batch_plan_rank_samples(const ldmc_batch_plan *s, int rank);
// A position (global batches since the start) counted with global batches of `global` samples,
// moved to the same point of its epoch with this plan's global batch.
int64_t ldmc_batch_plan_translate(const ldmc_batch_plan *s, int64_t position, int global);
// This rank's part of the epoch's `index`-th global batch: its samples are plan->order[first ..
// first + n), rows [row, row + n) of the global batch's `total` (n may be 0).
ldmc_batch_ref ldmc_batch_plan_batch(const ldmc_batch_plan *s, const ldmc_epoch_plan *plan,
                                     int index);
