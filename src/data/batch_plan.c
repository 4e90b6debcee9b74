// The batch plan (see batch_plan.h). Tested by tests/test_data.c.
#include "data/batch_plan.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"

void ldmc_batch_plan_init(ldmc_batch_plan *s, int n_samples, const int *sample_bucket,
                          int n_buckets, int batch_size, uint64_t seed, int rank, int world) {
    *s = (ldmc_batch_plan){.n_samples = n_samples,
                           .sample_bucket = sample_bucket,
                           .n_buckets = n_buckets,
                           .batch_size = batch_size,
                           .global = batch_size * world,
                           .seed = seed,
                           .rank = rank,
                           .world = world};
    LDMC_CHECK(batch_size >= 1 && world >= 1 && rank >= 0 && rank < world &&
                   (int64_t)batch_size * world <= INT32_MAX && n_buckets <= LDMC_MAX_BUCKETS,
               "batch plan: batch %d, rank %d of %d", batch_size, rank, world);
    for (int i = 0; i < n_samples; i++)
        s->fill[sample_bucket[i]]++;
}

// Fisher-Yates from a Philox stream: a[i] swaps with a[j], j uniform in [0, i].
static void shuffle(int *a, int n, const ldmc_rng *rng) {
    for (int i = n - 1; i > 0; i--) {
        uint64_t r = ((uint64_t)ldmc_rng_bits(rng, 2 * (uint64_t)i) << 32) |
                     ldmc_rng_bits(rng, 2 * (uint64_t)i + 1);
        int j = (int)(r % (uint64_t)(i + 1));
        int t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

void ldmc_batch_plan_epoch(const ldmc_batch_plan *s, int64_t epoch, ldmc_epoch_plan *plan) {
    int max_batches = s->n_buckets; // partial batches: at most one per bucket
    for (int b = 0; b < s->n_buckets; b++)
        max_batches += s->fill[b] / s->global;
    *plan = (ldmc_epoch_plan){.epoch = epoch};
    plan->order = malloc((size_t)(s->n_samples ? s->n_samples : 1) * sizeof *plan->order);
    plan->batches = malloc((size_t)max_batches * sizeof *plan->batches);
    int *tmp = malloc((size_t)(s->n_samples ? s->n_samples : 1) * sizeof *tmp);
    LDMC_CHECK(plan->order && plan->batches && tmp, "out of memory planning an epoch");
    int used = 0;
    for (int b = 0; b < s->n_buckets; b++) {
        int n = 0;
        for (int i = 0; i < s->n_samples; i++)
            if (s->sample_bucket[i] == b) tmp[n++] = i;
        ldmc_rng rng = ldmc_rng_make(s->seed, (uint32_t)epoch, (uint32_t)(1 + b), LDMC_RNG_DATA);
        shuffle(tmp, n, &rng);
        for (int first = 0; first < n; first += s->global) {
            int k = n - first < s->global ? n - first : s->global;
            plan->batches[plan->n_batches++] = (ldmc_batch_ref){.bucket = b, .n = k, .first = used};
            memcpy(plan->order + used, tmp + first, (size_t)k * sizeof *tmp);
            used += k;
        }
    }
    // Order the batches: each step draws a bucket at random, weighted by the batches it has
    // left, other than the previous step's, so that the bucket changes from step to step (SDXL
    // Sec. 2.3); a bucket holding more than half of what is left goes first, so that this stays
    // possible to the end whenever it is possible at all. Each bucket's batches keep their order.
    ldmc_batch_ref *ordered =
        malloc((size_t)(plan->n_batches ? plan->n_batches : 1) * sizeof *ordered);
    int *next = calloc((size_t)s->n_buckets + 1, sizeof *next),
        *left = calloc((size_t)s->n_buckets + 1, sizeof *left);
    int *start = calloc((size_t)s->n_buckets + 1, sizeof *start);
    LDMC_CHECK(ordered && next && left && start, "out of memory planning an epoch");
    for (int i = plan->n_batches - 1; i >= 0; i--)
        start[plan->batches[i].bucket] = i; // batches are grouped by bucket
    for (int i = 0; i < plan->n_batches; i++)
        left[plan->batches[i].bucket]++;
    ldmc_rng rng = ldmc_rng_make(s->seed, (uint32_t)epoch, 0, LDMC_RNG_DATA);
    int prev = -1, remaining = plan->n_batches;
    for (int k = 0; k < plan->n_batches; k++, remaining--) {
        int pick = -1, majority = -1;
        int64_t weight = 0;
        for (int b = 0; b < s->n_buckets; b++) {
            if (left[b] * 2 > remaining && b != prev) majority = b;
            if (b != prev) weight += left[b];
        }
        if (majority >= 0) {
            pick = majority;
        } else if (weight == 0) {
            pick = prev; // only the previous bucket is left
        } else {
            uint64_t u = ((uint64_t)ldmc_rng_bits(&rng, 2 * (uint64_t)k) << 32) |
                         ldmc_rng_bits(&rng, 2 * (uint64_t)k + 1);
            int64_t r = (int64_t)(u % (uint64_t)weight);
            for (int b = 0; b < s->n_buckets && pick < 0; b++) {
                if (b == prev) continue;
                if (r < left[b])
                    pick = b;
                else
                    r -= left[b];
            }
        }
        ordered[k] = plan->batches[start[pick] + next[pick]++];
        left[pick]--;
        prev = pick;
    }
    free(plan->batches);
    plan->batches = ordered;
    free(next);
    free(left);
    free(start);
    free(tmp);
}

void ldmc_epoch_plan_free(ldmc_epoch_plan *plan) {
    free(plan->order);
    free(plan->batches);
    *plan = (ldmc_epoch_plan){0};
}

int ldmc_batch_plan_steps_with(const ldmc_batch_plan *s, int global) {
    int n_batches = 0;
    for (int b = 0; b < s->n_buckets; b++)
        n_batches += (s->fill[b] + global - 1) / global;
    return n_batches;
}

int ldmc_batch_plan_steps_per_epoch(const ldmc_batch_plan *s) {
    return ldmc_batch_plan_steps_with(s, s->global);
}

int ldmc_batch_plan_rank_samples(const ldmc_batch_plan *s, int rank) {
    int n = 0, row = rank * s->batch_size;
    for (int b = 0; b < s->n_buckets; b++) {
        int rest = s->fill[b] % s->global, part = rest > row ? rest - row : 0;
        n += s->fill[b] / s->global * s->batch_size + (part < s->batch_size ? part : s->batch_size);
    }
    return n;
}

int64_t ldmc_batch_plan_translate(const ldmc_batch_plan *s, int64_t position, int global) {
    int before = ldmc_batch_plan_steps_with(s, global), now = ldmc_batch_plan_steps_per_epoch(s);
    if (global == s->global || before == 0) return position;
    int64_t epoch = position / before, index = position % before;
    return epoch * now + index * now / before;
}

ldmc_batch_ref ldmc_batch_plan_batch(const ldmc_batch_plan *s, const ldmc_epoch_plan *plan,
                                     int index) {
    ldmc_batch_ref r = plan->batches[index];
    int row = s->rank * s->batch_size, left = r.n > row ? r.n - row : 0;
    return (ldmc_batch_ref){.bucket = r.bucket,
                            .n = left < s->batch_size ? left : s->batch_size,
                            .first = r.first + (left ? row : 0),
                            .row = row,
                            .total = r.n};
}
