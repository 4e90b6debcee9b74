// Aspect-ratio buckets (see buckets.h). Tested by tests/test_data.c.
#include "data/buckets.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ldmc_buckets_load(const char *path, ldmc_buckets *out, ldmc_err *err) {
    out->count = 0;
    FILE *f = fopen(path, "r");
    if (!f) return LDMC_ERR(err, "%s: cannot open: %s", path, strerror(errno));
    char line[256];
    int lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        int h, w;
        char extra;
        int n = sscanf(line, "%d %d %c", &h, &w, &extra);
        if (n == EOF || (n <= 0 && strspn(line, " \t\r\n") == strlen(line))) continue;
        if (n != 2 || h < 8 || w < 8)
            rc = LDMC_ERR(err, "%s:%d: expected \"height width\", two whole numbers of at least 8",
                          path, lineno);
        else if (out->count == LDMC_MAX_BUCKETS)
            rc = LDMC_ERR(err, "%s:%d: more than %d buckets", path, lineno, LDMC_MAX_BUCKETS);
        else
            out->height[out->count] = h, out->width[out->count++] = w;
    }
    fclose(f);
    if (rc == 0 && out->count == 0) rc = LDMC_ERR(err, "%s: no buckets", path);
    return rc;
}

static int compare_tall_first(const void *a, const void *b) {
    const int *x = a, *y = b; // (h, w): larger h/w first
    int64_t l = (int64_t)x[0] * y[1], r = (int64_t)y[0] * x[1];
    return l > r ? -1 : l < r ? 1 : 0;
}

int ldmc_buckets_generate(int pixels, int multiple, double max_ratio, ldmc_buckets *out,
                          ldmc_err *err) {
    out->count = 0;
    if (multiple < 1 || pixels < multiple * multiple || max_ratio < 1)
        return LDMC_ERR(err,
                        "buckets: a budget of %d pixels in multiples of %d with aspect ratio "
                        "up to %g gives no bucket",
                        pixels, multiple, max_ratio);
    // Every side s with the longest other side that fits, both ways round (the list is symmetric).
    int n = 0, max_side = pixels / multiple;
    int(*pairs)[2] = malloc(sizeof *pairs * 2 * (size_t)(max_side / multiple + 1));
    if (!pairs) return LDMC_ERR(err, "out of memory");
    for (int s = multiple; s <= max_side; s += multiple) {
        int o = pixels / s / multiple * multiple;
        if (o < multiple || (double)s / o > max_ratio || (double)o / s > max_ratio) continue;
        pairs[n][0] = s, pairs[n++][1] = o;
        pairs[n][0] = o, pairs[n++][1] = s;
    }
    qsort(pairs, (size_t)n, sizeof *pairs, compare_tall_first);
    for (int i = 0; i < n; i++) {
        // one bucket per aspect ratio: the largest
        if (out->count && compare_tall_first(pairs[i], (int[]){out->height[out->count - 1],
                                                               out->width[out->count - 1]}) == 0) {
            int k = out->count - 1;
            if ((int64_t)pairs[i][0] * pairs[i][1] > (int64_t)out->height[k] * out->width[k])
                out->height[k] = pairs[i][0], out->width[k] = pairs[i][1];
            continue;
        }
        if (out->count == LDMC_MAX_BUCKETS) break;
        out->height[out->count] = pairs[i][0], out->width[out->count++] = pairs[i][1];
    }
    free(pairs);
    if (out->count == 0) return LDMC_ERR(err, "buckets: no bucket fits %d pixels", pixels);
    return 0;
}

int ldmc_bucket_assign(const ldmc_buckets *b, int height, int width) {
    double r = log((double)height / width), best_d = INFINITY;
    int best = 0;
    for (int i = 0; i < b->count; i++) {
        double d = fabs(r - log((double)b->height[i] / b->width[i]));
        if (d < best_d - 1e-12) best_d = d, best = i;
    }
    return best;
}
