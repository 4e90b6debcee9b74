// The step's memory plan (see memplan.h).
#include "core/memplan.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"

static size_t align_up(size_t x) {
    return (x + LDMC_PLAN_ALIGN - 1) & ~(size_t)(LDMC_PLAN_ALIGN - 1);
}

int ldmc_plan_add(ldmc_step_plan *p, size_t bytes, size_t bump, int64_t tick, ldmc_mem_kind kind,
                  const char *name) {
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 1024;
        ldmc_mem_rec *recs = realloc(p->recs, (size_t)cap * sizeof *recs);
        LDMC_CHECK(recs, "out of memory growing a step's memory plan to %d records", cap);
        p->recs = recs, p->cap = cap;
    }
    p->recs[p->n] = (ldmc_mem_rec){.bytes = bytes,
                                   .bump = bump,
                                   .born = tick,
                                   .dies = tick,
                                   .name = name,
                                   .kind = (uint8_t)kind,
                                   .to_end = kind == LDMC_MEM_SCRATCH};
    return ++p->n;
}

void ldmc_plan_use(ldmc_step_plan *p, int slot, int64_t tick, bool consume) {
    if (slot <= 0) return;
    ldmc_mem_rec *r = &p->recs[slot - 1];
    LDMC_CHECK(!r->released,
               "memory plan: '%s' is read after the mark it was made above was "
               "released",
               r->name ? r->name : "?");
    if (tick > r->dies) r->dies = tick;
    if (consume) r->consumed = true;
}

void ldmc_plan_release(ldmc_step_plan *p, size_t bump_mark, int64_t tick) {
    for (int i = p->n - 1; i >= 0; i--) {
        ldmc_mem_rec *r = &p->recs[i];
        if (r->released || r->bump < bump_mark) continue;
        r->released = true;
        if (tick > r->dies) r->dies = tick;
    }
}

typedef struct order_item {
    size_t bytes;
    int64_t born;
    int index;
} order_item;

static int larger_first(const void *a, const void *b) {
    const order_item *x = a, *y = b;
    if (x->bytes != y->bytes) return x->bytes < y->bytes ? 1 : -1;
    if (x->born != y->born) return x->born < y->born ? -1 : 1;
    return x->index - y->index;
}

static const ldmc_mem_rec *sort_recs; // qsort has no context argument in C11
static int lower_offset(const void *a, const void *b) {
    size_t x = sort_recs[*(const int *)a].offset, y = sort_recs[*(const int *)b].offset;
    return (x > y) - (x < y);
}
static int earlier_death(const void *a, const void *b) {
    int64_t x = sort_recs[*(const int *)a].dies, y = sort_recs[*(const int *)b].dies;
    if (x != y) return x < y ? -1 : 1;
    return *(const int *)a - *(const int *)b;
}

// The most bytes live at one tick, and where.
static void live_peak(ldmc_step_plan *p) {
    int64_t span = p->end + 2;
    int64_t *delta = calloc((size_t)span, sizeof *delta);
    LDMC_CHECK(delta, "out of memory planning a step");
    for (int i = 0; i < p->n; i++) {
        delta[p->recs[i].born] += (int64_t)align_up(p->recs[i].bytes);
        delta[p->recs[i].dies + 1] -= (int64_t)align_up(p->recs[i].bytes);
    }
    int64_t live = 0;
    p->live_peak = 0, p->live_tick = 0;
    for (int64_t t = 0; t < span; t++) {
        live += delta[t];
        if (live > (int64_t)p->live_peak) p->live_peak = (size_t)live, p->live_tick = t;
    }
    free(delta);
}

void ldmc_plan_finish(ldmc_step_plan *p, int64_t end) {
    p->end = end;
    for (int i = 0; i < p->n; i++) {
        ldmc_mem_rec *r = &p->recs[i];
        if (!r->released && (r->to_end || (r->kind == LDMC_MEM_DATA && !r->consumed)))
            r->dies = end;
    }
    live_peak(p);
    // Greedy by size: each record, largest first, at the lowest offset where it overlaps no
    // record already placed whose interval meets its own.
    order_item *order = malloc((size_t)(p->n ? p->n : 1) * sizeof *order);
    int *placed = malloc((size_t)(p->n ? p->n : 1) * sizeof *placed);
    int *near = malloc((size_t)(p->n ? p->n : 1) * sizeof *near);
    LDMC_CHECK(order && placed && near, "out of memory planning a step");
    for (int i = 0; i < p->n; i++)
        order[i] = (order_item){p->recs[i].bytes, p->recs[i].born, i};
    qsort(order, (size_t)p->n, sizeof *order, larger_first);
    int n_placed = 0;
    p->peak = 0;
    sort_recs = p->recs;
    for (int k = 0; k < p->n; k++) {
        ldmc_mem_rec *r = &p->recs[order[k].index];
        int n_near = 0;
        for (int j = 0; j < n_placed; j++) {
            const ldmc_mem_rec *q = &p->recs[placed[j]];
            if (q->born <= r->dies && r->born <= q->dies) near[n_near++] = placed[j];
        }
        qsort(near, (size_t)n_near, sizeof *near, lower_offset);
        size_t at = 0, need = align_up(r->bytes);
        for (int j = 0; j < n_near; j++) {
            const ldmc_mem_rec *q = &p->recs[near[j]];
            if (q->offset >= at + need) break;
            size_t top = q->offset + align_up(q->bytes);
            if (top > at) at = top;
        }
        r->offset = at;
        if (at + need > p->peak) p->peak = at + need;
        placed[n_placed++] = order[k].index;
    }
    free(order), free(near);
    // Replay frees (poisons, in tests) in order of death.
    free(p->by_death);
    p->by_death = placed;
    for (int i = 0; i < p->n; i++)
        placed[i] = i;
    qsort(placed, (size_t)p->n, sizeof *placed, earlier_death);
    sort_recs = NULL;
}

void ldmc_plan_clear(ldmc_step_plan *p) {
    p->n = 0;
    p->end = 0, p->peak = 0, p->live_peak = 0, p->live_tick = 0, p->unplanned = 0;
    p->grad_bytes = 0, p->grad_bytes_bf16 = 0, p->grad_bytes_zeroed = 0;
    free(p->by_death);
    p->by_death = NULL;
}

void ldmc_plan_free(ldmc_step_plan *p) {
    free(p->recs);
    free(p->by_death);
    *p = (ldmc_step_plan){0};
}

typedef struct holder {
    const char *name;
    uint8_t kind;
    size_t bytes;
    int count;
} holder;

static int more_bytes(const void *a, const void *b) {
    size_t x = ((const holder *)a)->bytes, y = ((const holder *)b)->bytes;
    return (x < y) - (x > y);
}

void ldmc_plan_print_peak(const ldmc_step_plan *p, FILE *out, int max_lines) {
    static const char *kinds[] = {"activations", "activation gradients", "saved values"};
    holder *h = calloc((size_t)(p->n ? p->n : 1), sizeof *h);
    LDMC_CHECK(h, "out of memory");
    int n = 0;
    size_t by_kind[3] = {0};
    for (int i = 0; i < p->n; i++) {
        const ldmc_mem_rec *r = &p->recs[i];
        if (r->born > p->live_tick || r->dies < p->live_tick) continue;
        const char *name = r->name ? r->name : "?";
        by_kind[r->kind] += r->bytes;
        int k = 0;
        while (k < n && (h[k].kind != r->kind || strcmp(h[k].name, name)))
            k++;
        if (k == n) h[n++] = (holder){.name = name, .kind = r->kind};
        h[k].bytes += r->bytes, h[k].count++;
    }
    qsort(h, (size_t)n, sizeof *h, more_bytes);
    const double gib = 1.0 / (1 << 30);
    fprintf(out,
            "  live at the busiest point (%.2f GiB): %.2f GiB activations, %.2f GiB "
            "activation gradients, %.2f GiB saved values\n",
            (double)p->live_peak * gib, (double)by_kind[0] * gib, (double)by_kind[1] * gib,
            (double)by_kind[2] * gib);
    for (int k = 0; k < n && k < max_lines; k++)
        fprintf(out, "    %-24s %-21s %8.2f GiB in %d tensors\n", h[k].name, kinds[h[k].kind],
                (double)h[k].bytes * gib, h[k].count);
    free(h);
}
