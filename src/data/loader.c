// Threaded image loading in the batch plan's order (see loader.h). Tested by tests/test_data.c.
#include "data/loader.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/rng.h"

typedef struct slot {
    ldmc_batch batch;
    int64_t ready; // the position whose batch is in the slot, or -1
} slot;

struct ldmc_loader {
    ldmc_dataset *data;
    const ldmc_buckets *buckets;
    ldmc_loader_options opt;
    int *sample_bucket;
    ldmc_batch_plan plan;
    int steps_per_epoch;
    // epoch plans: the two most recent, built on demand under the lock
    ldmc_epoch_plan plans[2];
    pthread_mutex_t lock;
    pthread_cond_t changed;
    pthread_t *workers;
    int n_workers;
    bool stopping;
    // positions: the next batch to decode, the next to hand out, and the first whose slot is not
    // free (the batch the caller holds until its next call)
    int64_t next_to_make, next_to_take, released;
    slot *slots;
    double waited;
    // failure counts of the batches handed out (the caller's thread only)
    uint8_t *failed_once; // per sample
    int64_t failed_files, left_out;
};

// HDF5 (Debian's build) is not thread-safe: cache reads take turns.
static pthread_mutex_t hdf5_lock = PTHREAD_MUTEX_INITIALIZER;

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void ldmc_crop_draws(uint64_t seed, int64_t epoch, int sample, double flip_probability,
                     double *u_top, double *u_left, bool *flip) {
    // Three draws per sample and epoch: crop top, crop left, flip.
    ldmc_rng rng = ldmc_rng_make(seed, (uint32_t)epoch, 0, LDMC_RNG_AUGMENT);
    float u[3];
    ldmc_rng_uniform(&rng, (uint64_t)sample * 4, 3, u);
    *u_top = u[0], *u_left = u[1];
    *flip = u[2] < flip_probability;
}

int ldmc_load_sample(const ldmc_dataset *data, int index, int64_t epoch, int target_h, int target_w,
                     double flip_probability, uint64_t seed, float *pixels, ldmc_crop *plan,
                     ldmc_err *err) {
    const ldmc_sample *s = &data->items[index];
    double u[2];
    bool flip;
    ldmc_crop_draws(seed, epoch, index, flip_probability, &u[0], &u[1], &flip);
    ldmc_crop_plan(s->height, s->width, s->original_height, s->original_width, target_h, target_w,
                   u[0], u[1], flip, plan);
    ldmc_image img, out;
    if (ldmc_image_load(s->path, plan->resized_width, plan->resized_height, &img, err) != 0)
        return -1;
    // The decode may be a DCT-scaled one: plan the same crop on the decoded size.
    ldmc_crop_plan(img.height, img.width, s->original_height, s->original_width, target_h, target_w,
                   u[0], u[1], flip, plan);
    int rc = ldmc_crop_apply(&img, plan, &out);
    ldmc_image_free(&img);
    if (rc != 0) return LDMC_ERR(err, "%s: out of memory resizing", s->path);
    for (int64_t i = 0; i < (int64_t)target_h * target_w * 3; i++)
        pixels[i] = out.pixels[i] / 127.5f - 1.0f;
    ldmc_image_free(&out);
    return 0;
}

// The plan of `epoch`, built if needed (under the lock).
static const ldmc_epoch_plan *plan_of(ldmc_loader *l, int64_t epoch) {
    for (int i = 0; i < 2; i++)
        if (l->plans[i].batches && l->plans[i].epoch == epoch) return &l->plans[i];
    int victim = !l->plans[0].batches   ? 0
                 : !l->plans[1].batches ? 1
                                        : (l->plans[0].epoch < l->plans[1].epoch ? 0 : 1);
    ldmc_epoch_plan_free(&l->plans[victim]);
    ldmc_batch_plan_epoch(&l->plan, epoch, &l->plans[victim]);
    return &l->plans[victim];
}

static void reserve(ldmc_loader *l, ldmc_batch *b, int n, int h, int w) {
    if (l->opt.cache) {
        const ldmc_cache *c = l->opt.cache;
        int g = b->bucket;
        b->lh = c->groups[g].h, b->lw = c->groups[g].w, b->lc = c->channels;
        size_t bytes = (size_t)n * b->lh * b->lw * b->lc * sizeof(float);
        b->mean = realloc(b->mean, bytes);
        b->std = realloc(b->std, bytes);
        LDMC_CHECK(b->mean && b->std, "out of memory for a batch of %d latents", n);
        b->text_tokens = c->text_tokens;
        if (c->text_tokens) {
            b->context = realloc(b->context,
                                 (size_t)n * c->text_tokens * c->text_context_dim * sizeof(float));
            LDMC_CHECK(b->context, "out of memory for a batch of %d text embeddings", n);
        }
        if (c->text_pooled_dim) {
            b->pooled = realloc(b->pooled, (size_t)n * c->text_pooled_dim * sizeof(float));
            LDMC_CHECK(b->pooled, "out of memory for a batch of %d text embeddings", n);
        }
    } else {
        b->pixels = realloc(b->pixels, (size_t)n * h * w * 3 * sizeof(float));
        LDMC_CHECK(b->pixels, "out of memory for a %d x %d x %d batch", n, h, w);
    }
    b->c_size = realloc(b->c_size, (size_t)n * 2 * sizeof(int32_t));
    b->c_crop = realloc(b->c_crop, (size_t)n * 2 * sizeof(int32_t));
    b->c_target = realloc(b->c_target, (size_t)n * 2 * sizeof(int32_t));
    b->class_ids = realloc(b->class_ids, (size_t)n * sizeof(int64_t));
    b->aesthetic = realloc(b->aesthetic, (size_t)n * sizeof(float));
    b->captions = realloc(b->captions, (size_t)n * sizeof(char *));
    b->samples = realloc(b->samples, (size_t)n * sizeof(int));
    for (int k = 0; k < b->failed; k++)
        free(b->failed_messages[k]);
    b->failed = 0;
    b->failed_samples = realloc(b->failed_samples, (size_t)n * sizeof(int));
    b->failed_messages = realloc(b->failed_messages, (size_t)n * sizeof(char *));
    b->new_failures = realloc(b->new_failures, (size_t)n * sizeof(char *));
    LDMC_CHECK(b->c_size && b->c_crop && b->c_target && b->class_ids && b->aesthetic &&
                   b->captions && b->samples && b->failed_samples && b->failed_messages &&
                   b->new_failures,
               "out of memory for a %d x %d x %d batch", n, h, w);
}

// Records that `sample` of the planned batch could not be read.
static void note_failure(ldmc_batch *b, int sample, const char *message) {
    b->failed_samples[b->failed] = sample;
    b->failed_messages[b->failed] = strdup(message);
    LDMC_CHECK(b->failed_messages[b->failed], "out of memory");
    b->failed++;
}

static void make_batch(ldmc_loader *l, int64_t position, ldmc_batch *b) {
    int64_t epoch = position / l->steps_per_epoch;
    pthread_mutex_lock(&l->lock);
    const ldmc_epoch_plan *plan = plan_of(l, epoch);
    ldmc_batch_ref r = ldmc_batch_plan_batch(&l->plan, plan, (int)(position % l->steps_per_epoch));
    int *samples = malloc((size_t)(r.n ? r.n : 1) * sizeof *samples);
    LDMC_CHECK(samples, "out of memory");
    memcpy(samples, plan->order + r.first, (size_t)r.n * sizeof *samples);
    pthread_mutex_unlock(&l->lock);

    int h = l->buckets->height[r.bucket], w = l->buckets->width[r.bucket];
    b->bucket = r.bucket;
    reserve(l, b, r.n ? r.n : 1, h, w);
    b->position = position;
    b->epoch = epoch;
    b->row = r.row;
    b->total = r.total;
    b->height = h;
    b->width = w;
    b->n = 0;
    for (int k = 0; k < r.n && l->opt.cache; k++) {
        size_t latent = (size_t)b->lh * b->lw * b->lc;
        const ldmc_cache *c = l->opt.cache;
        size_t context = (size_t)c->text_tokens * c->text_context_dim;
        ldmc_cache_entry e = {.mean = b->mean + b->n * latent,
                              .std = b->std + b->n * latent,
                              .context = b->context ? b->context + b->n * context : NULL,
                              .pooled = b->pooled ? b->pooled + b->n * c->text_pooled_dim : NULL};
        ldmc_err err = {0};
        pthread_mutex_lock(&hdf5_lock);
        int rc = ldmc_cache_read(l->opt.cache, samples[k], &e, &err);
        pthread_mutex_unlock(&hdf5_lock);
        if (rc != 0) {
            note_failure(b, samples[k], err.message);
            continue;
        }
        int j = b->n++;
        memcpy(b->c_size + 2 * j, e.c_size, sizeof e.c_size);
        memcpy(b->c_crop + 2 * j, e.c_crop, sizeof e.c_crop);
        memcpy(b->c_target + 2 * j, e.c_target, sizeof e.c_target);
        b->class_ids[j] = e.class_id;
        b->aesthetic[j] = e.aesthetic;
        b->captions[j] = NULL;
        b->samples[j] = samples[k];
    }
    for (int k = 0; k < r.n && !l->opt.cache; k++) {
        int i = samples[k];
        ldmc_crop plan_i;
        ldmc_err err = {0};
        float *dst = b->pixels + (size_t)b->n * h * w * 3;
        if (ldmc_load_sample(l->data, i, epoch, h, w, l->opt.flip, l->opt.seed, dst, &plan_i,
                             &err) != 0) {
            note_failure(b, i, err.message);
            continue;
        }
        int j = b->n++;
        memcpy(b->c_size + 2 * j, plan_i.c_size, 2 * sizeof(int32_t));
        memcpy(b->c_crop + 2 * j, plan_i.c_crop, 2 * sizeof(int32_t));
        memcpy(b->c_target + 2 * j, plan_i.c_target, 2 * sizeof(int32_t));
        b->class_ids[j] = l->data->items[i].class_id;
        b->aesthetic[j] = l->data->items[i].aesthetic;
        b->captions[j] = l->data->items[i].caption;
        b->samples[j] = i;
    }
    free(samples);
}

static void *worker(void *arg) {
    ldmc_loader *l = arg;
    pthread_mutex_lock(&l->lock);
    for (;;) {
        while (!l->stopping && l->next_to_make - l->released >= l->opt.prefetch)
            pthread_cond_wait(&l->changed, &l->lock);
        if (l->stopping) break;
        int64_t position = l->next_to_make++;
        slot *s = &l->slots[position % l->opt.prefetch];
        pthread_mutex_unlock(&l->lock);
        make_batch(l, position, &s->batch);
        pthread_mutex_lock(&l->lock);
        s->ready = position;
        pthread_cond_broadcast(&l->changed);
    }
    pthread_mutex_unlock(&l->lock);
    return NULL;
}

int ldmc_loader_start(ldmc_loader **out, ldmc_dataset *data, const ldmc_buckets *buckets,
                      const ldmc_loader_options *opt, int64_t start_position, ldmc_err *err) {
    ldmc_loader *l = calloc(1, sizeof *l);
    if (!l) return LDMC_ERR(err, "out of memory");
    *l = (ldmc_loader){.data = data, .buckets = buckets, .opt = *opt};
    if (l->opt.threads < 1) l->opt.threads = 1;
    if (l->opt.prefetch < 1) l->opt.prefetch = 1;
    int count = opt->cache ? (int)opt->cache->count : data->count;
    l->sample_bucket = malloc((size_t)(count ? count : 1) * sizeof *l->sample_bucket);
    l->failed_once = calloc((size_t)(count ? count : 1), 1);
    l->slots = calloc((size_t)l->opt.prefetch, sizeof *l->slots);
    l->workers = calloc((size_t)l->opt.threads, sizeof *l->workers);
    if (!l->sample_bucket || !l->failed_once || !l->slots || !l->workers) {
        ldmc_loader_stop(l);
        return LDMC_ERR(err, "out of memory");
    }
    for (int i = 0; i < count; i++) {
        if (opt->cache) {
            l->sample_bucket[i] = ldmc_cache_group_of(opt->cache, i);
        } else {
            data->items[i].bucket =
                ldmc_bucket_assign(buckets, data->items[i].height, data->items[i].width);
            l->sample_bucket[i] = data->items[i].bucket;
        }
    }
    ldmc_batch_plan_init(&l->plan, count, l->sample_bucket, buckets->count, opt->batch_size,
                         opt->seed, opt->rank, opt->world);
    l->steps_per_epoch = ldmc_batch_plan_steps_per_epoch(&l->plan);
    if (opt->start_global > 0)
        start_position = ldmc_batch_plan_translate(&l->plan, start_position, opt->start_global);
    for (int i = 0; i < l->opt.prefetch; i++)
        l->slots[i].ready = -1;
    l->next_to_make = l->next_to_take = l->released = start_position;
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->changed, NULL);
    for (int i = 0; i < l->opt.threads; i++) {
        if (pthread_create(&l->workers[i], NULL, worker, l) != 0) {
            ldmc_loader_stop(l);
            return LDMC_ERR(err, "cannot start loader thread %d", i);
        }
        l->n_workers++;
    }
    *out = l;
    return 0;
}

const ldmc_batch *ldmc_loader_next(ldmc_loader *l) {
    double t0 = now_seconds();
    pthread_mutex_lock(&l->lock);
    l->released = l->next_to_take; // the batch handed out last time may now be overwritten
    pthread_cond_broadcast(&l->changed);
    slot *s = &l->slots[l->next_to_take % l->opt.prefetch];
    while (s->ready != l->next_to_take)
        pthread_cond_wait(&l->changed, &l->lock);
    l->next_to_take++; // the slot stays the caller's until the next call
    pthread_mutex_unlock(&l->lock);
    l->waited += now_seconds() - t0;
    ldmc_batch *b = &s->batch;
    b->n_new_failures = 0;
    for (int k = 0; k < b->failed; k++) {
        l->left_out++;
        if (l->failed_once[b->failed_samples[k]]) continue;
        l->failed_once[b->failed_samples[k]] = 1;
        l->failed_files++;
        b->new_failures[b->n_new_failures++] = b->failed_messages[k];
    }
    return b;
}

int64_t ldmc_loader_position(const ldmc_loader *l) { return l->next_to_take; }

const ldmc_batch_plan *ldmc_loader_batch_plan(const ldmc_loader *l) { return &l->plan; }

double ldmc_loader_wait_seconds(const ldmc_loader *l) { return l->waited; }

int64_t ldmc_loader_failed_files(const ldmc_loader *l) { return l->failed_files; }

int64_t ldmc_loader_left_out(const ldmc_loader *l) { return l->left_out; }

static void free_batch(ldmc_batch *b) {
    free(b->pixels);
    free(b->mean);
    free(b->std);
    free(b->context);
    free(b->pooled);
    free(b->c_size);
    free(b->c_crop);
    free(b->c_target);
    free(b->class_ids);
    free(b->aesthetic);
    free(b->captions);
    free(b->samples);
    for (int k = 0; k < b->failed; k++)
        free(b->failed_messages[k]);
    free(b->failed_samples);
    free(b->failed_messages);
    free(b->new_failures);
}

void ldmc_loader_stop(ldmc_loader *l) {
    if (!l) return;
    if (l->n_workers) {
        pthread_mutex_lock(&l->lock);
        l->stopping = true;
        pthread_cond_broadcast(&l->changed);
        pthread_mutex_unlock(&l->lock);
        for (int i = 0; i < l->n_workers; i++)
            pthread_join(l->workers[i], NULL);
        pthread_mutex_destroy(&l->lock);
        pthread_cond_destroy(&l->changed);
    }
    for (int i = 0; l->slots && i < l->opt.prefetch; i++)
        free_batch(&l->slots[i].batch);
    for (int i = 0; i < 2; i++)
        ldmc_epoch_plan_free(&l->plans[i]);
    free(l->slots);
    free(l->workers);
    free(l->sample_bucket);
    free(l->failed_once);
    free(l);
}
