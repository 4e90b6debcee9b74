// The step's memory plan: every allocation of a training step's activation arena (activations,
// saved values, activation gradients) with the interval of the step during which it is live, and
// an offset for it such that no two allocations live at the same time overlap, found before the
// step runs (as ggml's graph allocator plans a graph, but from the tape of a dry run, since ldmc
// builds its graph by running it).
//
// A dry run of the step (tape.h: ctx->plan_out) adds one record per allocation in the order the
// step makes them and marks their uses on a clock that ticks once per op, once per node of
// backward and once per release of a mark; ldmc_plan_finish then places them. The real step
// replays the plan (ctx->plan): the k-th allocation must have the k-th record's size and gets its
// offset. A record is live from the tick it is made to its last use:
//   - an activation: the op that reads it last in forward, or the backward of the last node (in
//     backward order) that saves it (ldmc_op_info's `reads`), whichever comes later; one that no
//     op reads (the loss, a result the caller reads) lives to the end of the step;
//   - an activation gradient: from its first write in backward to the backward of the node that
//     produced the tensor; a leaf's (an input marked ldmc_requires_grad) lives to the end;
//   - an op's scratch (saved statistics) lives to the end of the step.
// Offsets: greedy by size (the largest record first, each at the lowest offset free for its whole
// interval), which typically lands within a few percent of the most bytes live at one tick, the
// lower bound of any placement. Tested by tests/test_autograd.c and tests/test_pipeline.c.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define LDMC_PLAN_ALIGN 256 // every offset (cuBLAS and cuDNN prefer 256-byte alignment)

typedef enum ldmc_mem_kind {
    LDMC_MEM_DATA,    // an activation (a tensor's data)
    LDMC_MEM_GRAD,    // an activation gradient (f32)
    LDMC_MEM_SCRATCH, // values an op saves for its backward, or a temporary
} ldmc_mem_kind;

typedef struct ldmc_mem_rec {
    size_t bytes;
    size_t offset;      // placed by ldmc_plan_finish
    size_t bump;        // where the dry run's bump arena put it (the order of marks and moves)
    int64_t born, dies; // ticks, both inclusive
    const char *name;   // the op that made it
    uint8_t kind;       // ldmc_mem_kind
    bool consumed;      // read by some op after the one that made it (else live to the end)
    bool to_end;        // live to the end of the step (a leaf's gradient, scratch)
    bool released;      // its mark was released (dry run bookkeeping)
} ldmc_mem_rec;

typedef struct ldmc_step_plan {
    ldmc_mem_rec *recs;
    int n, cap;
    int64_t end;       // the last tick of the step
    size_t peak;       // the placement's top: the arena bytes the step needs
    size_t live_peak;  // the most bytes live at one tick (a lower bound for any placement)
    int64_t live_tick; // where live_peak is reached
    size_t unplanned;  // what the step needs when nothing is freed before its end: the bump
                       // arena of a plain dry run (ldmc_plan_step, src/pipeline/plan.h)
    int *by_death;     // record indices ordered by `dies` (replay frees in this order)
    // Bytes of the activation gradients the step allocates, of those bf16, and of those zeroed
    // first (core/tape.h).
    int64_t grad_bytes, grad_bytes_bf16, grad_bytes_zeroed;
} ldmc_step_plan;

// Adds a record; returns its slot (index + 1; 0 means "no record").
int ldmc_plan_add(ldmc_step_plan *p, size_t bytes, size_t bump, int64_t tick, ldmc_mem_kind kind,
                  const char *name);
// The record in `slot` is read at `tick`; `consume` when the reader is not the op that made it.
void ldmc_plan_use(ldmc_step_plan *p, int slot, int64_t tick, bool consume);
// Every record not yet released whose bump offset is at or above `bump_mark` ends at `tick`.
void ldmc_plan_release(ldmc_step_plan *p, size_t bump_mark, int64_t tick);
// Closes the step at `end` and places every record.
void ldmc_plan_finish(ldmc_step_plan *p, int64_t end);
void ldmc_plan_clear(ldmc_step_plan *p); // no records (kept allocated for the next recording)
void ldmc_plan_free(ldmc_step_plan *p);

// What is live at the plan's busiest tick, by kind and by the op that made it, largest first
// (`ldmc bench train --dry-run` prints it: what holds the step's memory).
void ldmc_plan_print_peak(const ldmc_step_plan *p, FILE *out, int max_lines);
