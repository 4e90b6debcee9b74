// Aspect-ratio buckets (SDXL paper Sec. 2.3): a list of (height, width) targets of about one pixel
// budget; every image goes to the bucket nearest to its aspect ratio (|log(h/w) - log(bh/bw)|,
// the first of equals), and every batch is drawn from one bucket. The SDXL list is a data file
// (data/buckets/sdxl_1024.txt); lists for other budgets are generated.
// Tested by tests/test_data.c.
#pragma once

#include "core/error.h"

#define LDMC_MAX_BUCKETS 256

typedef struct ldmc_buckets {
    int count;
    int height[LDMC_MAX_BUCKETS], width[LDMC_MAX_BUCKETS];
} ldmc_buckets;

// Reads "height width" lines ('#' starts a comment).
int ldmc_buckets_load(const char *path, ldmc_buckets *out, ldmc_err *err);
// For every side s (a multiple of `multiple`) the longest other side o with s * o <= pixels, as
// (s, o) and (o, s): a symmetric list; aspect ratios within [1/max_ratio, max_ratio], one bucket
// (the largest) per ratio, ordered by h/w from tall to wide.
int ldmc_buckets_generate(int pixels, int multiple, double max_ratio, ldmc_buckets *out,
                          ldmc_err *err);
int ldmc_bucket_assign(const ldmc_buckets *b, int height, int width);
