// The data of a run (see trainer_parts.h): an image folder or a latent cache, its buckets, the
// loader started at the run's position, the previews' size. Tested by tests/test_train.c.
#include <stdio.h>

#include "train/trainer_parts.h"

static void print_bucket_fill(const train_data *d, const ldmc_batch_plan *s) {
    int used = 0;
    for (int b = 0; b < d->buckets.count; b++)
        used += s->fill[b] > 0;
    printf("buckets (width x height): %d of %d in use, batch size %d%s, %d batches per epoch\n",
           used, d->buckets.count, s->global, s->world > 1 ? " (global)" : "",
           ldmc_batch_plan_steps_per_epoch(s));
    for (int b = 0; b < d->buckets.count; b++) {
        if (!s->fill[b]) continue;
        int batches = (s->fill[b] + s->global - 1) / s->global;
        printf("  %5d x %-5d  %6d samples  %5d batches%s\n", d->buckets.width[b],
               d->buckets.height[b], s->fill[b], batches,
               s->fill[b] % s->global ? " (the last one partial)" : "");
    }
    printf("  every sample is in a bucket: %d in all, none dropped\n", s->n_samples);
    if (s->world == 1) return;
    // every rank's part of an epoch: the same bucket at every step, disjoint samples
    int total = 0;
    for (int r = 0; r < s->world; r++) {
        int n = ldmc_batch_plan_rank_samples(s, r);
        total += n;
        printf("  rank %d: %d samples per epoch (batch %d of each global batch)\n", r, n,
               s->batch_size);
    }
    printf("  ranks together: %d samples per epoch, %s\n", total,
           total == s->n_samples ? "each once" : "MISMATCH (a bug: please report)");
}

// The data's sample count and fingerprint go into every checkpoint; a resumed run says when they
// changed (the batch order from there on differs from an uninterrupted run's).
static void record_data(trainer *T) {
    train_data *d = &T->data;
    int64_t samples = d->have_dataset ? d->dataset.count : d->cache.count;
    uint64_t fingerprint = d->have_dataset ? ldmc_dataset_fingerprint(&d->dataset) : 0;
    int64_t then = T->st.data_samples;
    bool other_files =
        fingerprint && T->st.data_fingerprint && fingerprint != T->st.data_fingerprint;
    if (T->dir.resumed && then > 0 && (samples != then || other_files))
        printf("resume: the data changed since the checkpoint (%lld samples then, %lld now%s): the "
               "batch order from here on differs from an uninterrupted run's\n",
               (long long)then, (long long)samples,
               samples == then ? "; other files, sizes, classes or captions" : "");
    T->st.data_samples = samples;
    T->st.data_fingerprint = fingerprint;
}

static int open_cache(const ldmc_train_config *cfg, train_data *d, ldmc_err *err) {
    if (ldmc_cache_open(&d->cache, cfg->data_path, err) != 0) return -1;
    d->have_cache = true;
    ldmc_cache_buckets(&d->cache, &d->buckets);
    printf("data: latent cache %s, %lld entries in %d groups\n", cfg->data_path,
           (long long)d->cache.count, d->cache.n_groups);
    if (d->cache.count == 0) return LDMC_ERR(err, "%s: the cache is empty", cfg->data_path);
    return 0;
}

static int open_images(const ldmc_train_config *cfg, int align, train_data *d, ldmc_err *err) {
    if (ldmc_dataset_scan(cfg->data_path, cfg->labels, &d->dataset, err) != 0) return -1;
    d->have_dataset = true;
    ldmc_dataset_report(&d->dataset, stdout);
    if (cfg->min_size > 0)
        printf("  %d images with a side below data.min_size %d left out\n",
               ldmc_dataset_keep_min_size(&d->dataset, cfg->min_size), cfg->min_size);
    if (d->dataset.count == 0) return LDMC_ERR(err, "%s: no readable images", cfg->data_path);
    return ldmc_train_config_buckets(cfg, align, &d->buckets, err);
}

int train_data_open(trainer *T, ldmc_err *err) {
    const ldmc_train_config *cfg = T->cfg;
    train_data *d = &T->data;
    int rc = cfg->from_cache ? open_cache(cfg, d, err) : open_images(cfg, T->align, d, err);
    if (rc != 0) return -1;
    // Previews: the configured size, or the bucket nearest to square.
    d->sample_h = cfg->sample_height, d->sample_w = cfg->sample_width;
    if (!d->sample_h || !d->sample_w) {
        int b = ldmc_bucket_assign(&d->buckets, 1, 1);
        d->sample_h = d->buckets.height[b], d->sample_w = d->buckets.width[b];
    }
    if (T->task->check_data(T, err) != 0) return -1;
    record_data(T);
    ldmc_loader_options lo = {.batch_size = cfg->batch_size,
                              .threads = cfg->workers,
                              .prefetch = cfg->prefetch,
                              .flip = cfg->flip,
                              .seed = cfg->seed,
                              .rank = T->dist->rank,
                              .world = T->dist->world,
                              .cache = d->have_cache ? &d->cache : NULL};
    // a resume with another global batch (world x batch size) continues at the same point of
    // its epoch
    int global = T->dist->world * cfg->batch_size;
    bool moved = T->dir.resumed && T->st.global_batch > 0 && T->st.global_batch != global;
    if (moved) lo.start_global = (int)T->st.global_batch;
    if (ldmc_loader_start(&d->loader, d->have_dataset ? &d->dataset : NULL, &d->buckets, &lo,
                          T->st.batches, err) != 0)
        return -1;
    if (moved) {
        int64_t now = ldmc_loader_position(d->loader);
        printf("resume: the global batch was %lld (%lld ranks), it is %d (%d ranks): the data "
               "resumes at the same point of its epoch (batch %lld, was %lld)\n",
               (long long)T->st.global_batch, (long long)T->st.world, global, T->dist->world,
               (long long)now, (long long)T->st.batches);
        T->st.batches = now;
    }
    print_bucket_fill(d, ldmc_loader_batch_plan(d->loader));
    return 0;
}

void train_data_close(train_data *d) {
    ldmc_loader_stop(d->loader);
    if (d->have_cache) ldmc_cache_close(&d->cache);
    if (d->have_dataset) ldmc_dataset_free(&d->dataset);
    *d = (train_data){0};
}
