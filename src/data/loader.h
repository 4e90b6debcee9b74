// The batch loader: worker threads decode, resize, crop and flip (Algorithm 1) the batches the
// batch plan lays out, ahead of the trainer, into a bounded ring of prefetched batches; batches
// come out in order whatever the threads' timing, so a run is the same with 1 or 8 workers. The
// time the trainer spends waiting is counted. A file that fails to decode now (it was readable at
// scan time) is left out of its batch; the batch carries the message, naming the file. Failures are
// counted when a batch is handed out, never when it is prefetched, so the counts do not depend on
// data.prefetch: each failing file once, and each time it was left out. With a latent cache
// instead of images, the workers read posterior moments (one bucket per cache group).
// Tested by tests/test_data.c.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "data/batch_plan.h"
#include "data/buckets.h"
#include "data/cache.h"
#include "data/dataset.h"
#include "data/microcond.h"

typedef struct ldmc_batch {
    int64_t position; // the global batch's number since the start of training
    int64_t epoch;
    int bucket, n, height, width;
    // this rank's part of the global batch: rows [row, row + planned) of `total` (n is what
    // decoded of the planned rows)
    int row, total;
    float *pixels;     // (n, height, width, 3) in [-1, 1] (images)
    int lh, lw, lc;    // latent height, width and channels (cache)
    float *mean, *std; // (n, lh, lw, lc) each: the posterior of each entry (cache)
    // a cache with text embeddings: (n, text_tokens, context_dim) and (n, pooled_dim), else NULL
    float *context, *pooled;
    int text_tokens;
    int32_t *c_size;    // (n, 2): original (height, width)
    int32_t *c_crop;    // (n, 2): (top, left)
    int32_t *c_target;  // (n, 2): (height, width)
    int64_t *class_ids; // (n)
    float *aesthetic;   // (n): the refiner's aesthetic score of each sample (6 when not given)
    const char **captions;
    int *samples;           // (n) dataset indices
    int failed;             // samples of the planned batch that could not be read, and for each:
    int *failed_samples;    // (failed) its dataset (or cache entry) index
    char **failed_messages; // (failed) why, naming the file
    // The messages of the files failing for the first time in this run (set by
    // ldmc_loader_next): the ones to report.
    int n_new_failures;
    const char **new_failures;
} ldmc_batch;

typedef struct ldmc_loader_options {
    int batch_size;
    int threads;  // decoding workers (>= 1)
    int prefetch; // batches prepared ahead (>= 1)
    double flip;  // probability of a horizontal flip
    uint64_t seed;
    int rank, world;         // this rank's part of every global batch (world x batch_size)
    const ldmc_cache *cache; // read latents from this cache instead of images (data is NULL)
    // The global batch size the start position counts in, when it differs from this run's (a
    // resume at another world size): the start moves to the same point of its epoch. 0: the same.
    int start_global;
} ldmc_loader_options;

typedef struct ldmc_loader ldmc_loader;

// Assigns every sample of `data` to a bucket, plans epochs and starts the workers at this rank's
// batch number `start_position` (0 for a new run; the saved position when resuming). With
// opt->cache, `data` is NULL and `buckets` must list the cache's groups in order
// (ldmc_cache_buckets).
int ldmc_loader_start(ldmc_loader **out, ldmc_dataset *data, const ldmc_buckets *buckets,
                      const ldmc_loader_options *opt, int64_t start_position, ldmc_err *err);
// The next batch, valid until the following call.
const ldmc_batch *ldmc_loader_next(ldmc_loader *l);
// The position of the next batch (global batches since the start of training).
int64_t ldmc_loader_position(const ldmc_loader *l);
const ldmc_batch_plan *ldmc_loader_batch_plan(const ldmc_loader *l);
// Seconds the caller has spent blocked in ldmc_loader_next since the start.
double ldmc_loader_wait_seconds(const ldmc_loader *l);
// Of the batches handed out so far: the files (or cache entries) that could not be read, each
// counted once, and the times a sample was left out for it (a file fails again every epoch).
int64_t ldmc_loader_failed_files(const ldmc_loader *l);
int64_t ldmc_loader_left_out(const ldmc_loader *l);
void ldmc_loader_stop(ldmc_loader *l);

// The random draws of a sample's crop and flip in an epoch (u in [0, 1), for ldmc_crop_plan).
void ldmc_crop_draws(uint64_t seed, int64_t epoch, int sample, double flip_probability,
                     double *u_top, double *u_left, bool *flip);
// Decodes and conditions one sample as the loader does (Algorithm 1 with the sample's own
// random crop and flip draws for the epoch) into `pixels` (target_h, target_w, 3) in [-1, 1].
int ldmc_load_sample(const ldmc_dataset *data, int sample, int64_t epoch, int target_h,
                     int target_w, double flip_probability, uint64_t seed, float *pixels,
                     ldmc_crop *plan, ldmc_err *err);
