// The micro-step's memory plans (core/memplan.h), one per shape of micro-batch.
// A micro-step's allocations depend on the shapes of its batch only: the first micro-batch of a
// shape is planned by a dry run of the micro-step itself, and every step of that shape replays
// the plan. Tested by tests/test_train.c (every run replays plans, poisoned: LDMC_PLAN_POISON).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/plan.h"
#include "train/trainer_parts.h"

// A memory plan of the micro-step and the batch shape it is for.
typedef struct plan_key {
    int n, height, width, lh, lw, tokens;
    unsigned inputs; // which of pixels, latents, text embeddings, captions the batch has
} plan_key;

struct step_plan_entry {
    plan_key key;
    ldmc_step_plan plan;
    uint64_t used;
};

// At most MAX_PLANS are kept (aspect buckets, a last partial batch), the least
// recently used going first.
enum { MAX_PLANS = 64 };

typedef struct plan_run {
    trainer *T;
    const ldmc_batch *b;
    const ldmc_step_key *key;
    double grad_scale;
} plan_run;

static void plan_micro_step(ldmc_ctx *ctx, void *user) {
    plan_run *r = user;
    r->T->task->micro_step(r->T, ctx, r->b, r->key, r->grad_scale);
}

static const ldmc_step_plan *micro_plan(trainer *T, const ldmc_batch *b, const ldmc_step_key *key,
                                        double grad_scale) {
    plan_key k = {b->n,
                  b->height,
                  b->width,
                  b->lh,
                  b->lw,
                  b->text_tokens,
                  (b->pixels != NULL) | (b->mean != NULL) << 1 | (b->context != NULL) << 2 |
                      (b->captions != NULL) << 3};
    step_plans *P = &T->plans;
    step_plan_entry *e = NULL;
    for (int i = 0; i < P->n && !e; i++)
        if (!memcmp(&P->items[i].key, &k, sizeof k)) e = &P->items[i];
    if (!e) {
        if (P->n < MAX_PLANS) {
            step_plan_entry *items = realloc(P->items, (size_t)(P->n + 1) * sizeof *items);
            LDMC_CHECK(items, "out of memory keeping %d memory plans", P->n + 1);
            P->items = items;
            e = &P->items[P->n++];
            *e = (step_plan_entry){0};
        } else {
            e = &P->items[0];
            for (int i = 1; i < P->n; i++)
                if (P->items[i].used < e->used) e = &P->items[i];
        }
        e->key = k;
        plan_run r = {T, b, key, grad_scale};
        ldmc_plan_step(T->cfg->device, plan_micro_step, &r, &e->plan);
        if (T->lead && !T->bench)
            printf("memory plan: %d x %dx%d%s: %.2f GiB of activations and their gradients "
                   "(%.2f GiB unplanned)\n",
                   b->n, b->mean ? b->lw : b->width, b->mean ? b->lh : b->height,
                   b->mean ? " latents" : " images", (double)e->plan.peak / (1 << 30),
                   (double)e->plan.unplanned / (1 << 30));
    }
    e->used = ++P->clock;
    return &e->plan;
}

double trainer_micro_step(trainer *T, const ldmc_batch *b, const ldmc_step_key *key,
                          double grad_scale) {
    // LDMC_PLAN_POISON (tests): what the plan frees, and the gradients backward writes without
    // zeroing first, are filled with NaN bytes (CPU memory only)
    bool poison = getenv("LDMC_PLAN_POISON") != NULL;
    T->ctx.poison_fresh_grads = poison;
    if (!T->cfg->memory_plan) return T->task->micro_step(T, &T->ctx, b, key, grad_scale);
    ldmc_ctx_use_plan(&T->ctx, micro_plan(T, b, key, grad_scale));
    T->ctx.plan_poison = poison;
    double loss = T->task->micro_step(T, &T->ctx, b, key, grad_scale);
    ldmc_ctx_use_plan(&T->ctx, NULL);
    return loss;
}

void trainer_plans_free(trainer *T) {
    for (int i = 0; i < T->plans.n; i++)
        ldmc_plan_free(&T->plans.items[i].plan);
    free(T->plans.items);
    T->plans = (step_plans){0};
}
