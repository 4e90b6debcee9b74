// The latent cache: a dataset encoded once by the VAE, in HDF5, so that diffusion training reads
// latents instead of decoding and encoding images every step. One group per bucket,
// /buckets/<H>x<W>, with
//   mean, std   (N, h, w, C) f32: the posterior of each (image, variant), unscaled; the trainer
//               draws z = mean + std ε per step and multiplies by the scale factor
//   c_size, c_crop, c_target (N, 2) i32: the micro-conditioning of the crop that was encoded
//   class (N) i64, sample (N) i32 (the image's index in the dataset), caption (N) strings,
//   aesthetic (N) f32 (the refiner's aesthetic score; a cache without it reads 6)
//   context (N, T, D) f16, pooled (N, P) f16: a text model's caption embeddings (the encoders'
//               contexts side by side, the pooled text), when the cache was made for one
// and the root attributes format, scale_factor, latent_channels, and text_tokens,
// text_context_dim, text_pooled_dim (0 without text) with the empty caption's embeddings
// /text_empty/context (T, D) and /text_empty/pooled (P), for text.uncond: empty. Variants: each
// image once, or also flipped (c_crop follows). Rows are read one at a time: nothing of it is
// held in memory but the batch being made.
// Tested by tests/test_train.c.
#pragma once
#include <stdint.h>

#include "core/error.h"
#include "data/buckets.h"
#include "data/dataset.h"

typedef struct ldmc_cache_group {
    int height, width; // pixels
    int h, w;          // latent
    int64_t count;
    int64_t first;       // global index of its first entry
    int64_t datasets[9]; // hid_t of mean, std, c_size, c_crop, c_target, class, context, pooled,
                         // aesthetic (-1 when absent): open while the cache is, so a read
                         // selects a row and nothing more
} ldmc_cache_group;

typedef struct ldmc_cache {
    int64_t hdf5_file; // hid_t
    char path[1024];
    double scale_factor;
    int channels;
    int n_groups;
    ldmc_cache_group groups[LDMC_MAX_BUCKETS];
    int64_t count; // entries over all groups
    // text embeddings: 0 when the cache has none
    int text_tokens, text_context_dim, text_pooled_dim;
    float *empty_context, *empty_pooled; // the empty caption's (T, D) and (P)
} ldmc_cache;

// The text embeddings a cache is made with (all 0: none).
typedef struct ldmc_cache_text {
    int tokens, context_dim, pooled_dim;
    const float *empty_context, *empty_pooled; // the empty caption's
} ldmc_cache_text;

// One entry as it is read back.
typedef struct ldmc_cache_entry {
    float *mean, *std;       // (h, w, C) each, caller's buffers
    float *context, *pooled; // (T, D), (P): caller's buffers, filled when the cache has text
    int32_t c_size[2], c_crop[2], c_target[2];
    int64_t class_id;
    float aesthetic;
} ldmc_cache_entry;

// Opens a cache and checks its structure (a clear error naming the file and what is missing).
int ldmc_cache_open(ldmc_cache *c, const char *path, ldmc_err *err);
void ldmc_cache_close(ldmc_cache *c);
// The group of global entry `index`, and the entry itself.
int ldmc_cache_group_of(const ldmc_cache *c, int64_t index);
int ldmc_cache_read(const ldmc_cache *c, int64_t index, ldmc_cache_entry *e, ldmc_err *err);
// The groups as a bucket list (in pixels), group g being bucket g: for the loader.
void ldmc_cache_buckets(const ldmc_cache *c, ldmc_buckets *out);

// Writing, group by group: begin a group, append entries, end it.
typedef struct ldmc_cache_writer ldmc_cache_writer;
int ldmc_cache_create(ldmc_cache_writer **w, const char *path, double scale_factor, int channels,
                      const ldmc_cache_text *text, ldmc_err *err);
int ldmc_cache_begin_group(ldmc_cache_writer *w, int height, int width, int h, int lw,
                           int64_t count, ldmc_err *err);
int ldmc_cache_append(ldmc_cache_writer *w, const float *mean, const float *std,
                      const int32_t c_size[2], const int32_t c_crop[2], const int32_t c_target[2],
                      int64_t class_id, float aesthetic, int32_t sample, const char *caption,
                      const float *context, const float *pooled, ldmc_err *err);
int ldmc_cache_finish(ldmc_cache_writer *w, ldmc_err *err);
