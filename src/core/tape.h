// The execution context and the autograd tape.
//
// A context owns two arenas (activation data and gradients; tensor headers and node records) and
// the tape. While recording, each op appends a node {op, inputs, outputs, args}; ldmc_backward
// walks the nodes in reverse and calls each op's backward. The gradient rule, for every op:
// gradients accumulate (+=) into zero-initialized buffers, so a tensor used twice (residuals,
// skip concatenations) receives the sum, and parameter gradients accumulate across micro-batches
// until the trainer zeroes the flat gradient buffer. Two exceptions save the zeroing: an op with
// `writes` writes an activation gradient its node is the first to reach, and an add hands its
// gradient on (`pass`); see ldmc_op_reads. On the GPU, a gradient written once and read only by
// a product that rounds it is bf16 (ldmc_op_reads: bf16 gradients).
//
// Parameters updated during backward (ldmc_params_update_in_backward, a trainer's
// optim.fused_backward): such a table has no gradient buffer. Backward gives each of its trainable
// parameters a zeroed f32 gradient in the step's arena when the first node (in backward order)
// needs it, calls the table's `update` once backward has passed the parameter's every use (the
// backward of its first reader in forward; a recompute region reads those its first run saw, and
// makes their gradients before its re-run), and frees it: a memory plan gives it the interval
// from the first write to the update. Parameters backward never reaches are updated at its end with
// a zero gradient. Dry runs plan the same allocations and call nothing.
//
// Recomputation (what trainers call gradient checkpointing): ldmc_recompute runs a region
// unrecorded, keeps only its outputs, and re-runs it recorded during backward. Everything the
// region reads that needs a gradient must be passed as an input (or be a parameter); anything else
// is caught by name. Tested by tests/test_autograd.c.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "core/arena.h"
#include "core/memplan.h"
#include "core/tensor.h"

typedef struct ldmc_ctx ldmc_ctx;
typedef struct ldmc_node ldmc_node;

// Time per op kind (forward and backward apart), for `ldmc bench --profile`: each op's time is
// measured from the end of the previous one with the device synchronized in between, so it
// includes the op's kernels and launch overhead and nothing else of note.
typedef struct ldmc_profile_entry {
    const char *name;
    bool backward;
    double ms;
    int64_t calls;
} ldmc_profile_entry;

typedef struct ldmc_profile {
    ldmc_profile_entry entries[128];
    int count;
    double mark; // seconds: the end of the last timed op
} ldmc_profile;

typedef void (*ldmc_backward_fn)(ldmc_ctx *ctx, ldmc_node *node);

// A hook on backward (the data-parallel gradient reduction, src/train/dist.h): `begin` once the
// tape is complete, before the first node's backward; `node_done` after each recorded node's
// backward, from the last node down (not for the nodes of a recompute region's re-run, which all
// come under their region's node). Dry runs call neither.
typedef struct ldmc_backward_hook {
    void (*begin)(void *user, const ldmc_ctx *ctx);
    void (*node_done)(void *user, int node);
    void *user;
} ldmc_backward_hook;

// One entry per op kind: its name (used in every message about it) and its backward, or NULL
// for ops without one (recording such an op with an input that needs a gradient is fatal).
// `reads` says which of a node's tensors its backward reads (besides the gradients): bit i of
// `in` for input i (inputs past 31 share bit 31), bit o of `out` for output o. An op without it
// is taken to read all of them. The memory plan (core/memplan.h) frees an activation once no
// backward still to run reads it: a bit missing here where backward does read the tensor is a
// read of freed memory, which tests/test_autograd.c's poisoned replays catch.
// `pass`: the op's backward adds its output's gradient unchanged into each input's (an add), so
// an input whose gradient does not exist yet takes the output's gradient buffer itself (no
// zeroing, no copy), and a second one shares it where neither adds into it before the other has
// read it (tape.c: pass_through); the backward then skips every input whose gradient is dy.
// `writes` (bit k for input k, k < 32): the op's backward can write input k's gradient instead of
// adding into it: when that gradient does not exist yet (and is the whole of a tensor no other
// input of the node shares, not a parameter's), the tape allocates it without zeroing and
// ldmc_grad_beta(ctx, k) is 0, else 1; the op then writes every element (beta 0: never reading
// the buffer) or adds its part (beta 1).
// bf16 gradients (GPU contexts, ctx->bf16_grads): `bf16_dy` says the op's backward reads its
// output's gradient only rounded to bf16 (a product's operand: linear, attention), and
// `writes_bf16` (bit k, a subset of `writes`) that it can write input k's gradient as bf16. An
// activation whose producer has `bf16_dy` and whose one reader has `writes_bf16` for it gets a
// bf16 gradient: written once, read once, rounded where the f32 one would have been (the same
// bits, at half the bytes, without the rounding pass). ldmc_grad refuses such a gradient; the ops
// that take them reach it through ldmc_grad_any.
typedef struct ldmc_op_reads {
    bool known;
    uint32_t in, out;
    bool pass;
    uint32_t writes, writes_bf16;
    bool bf16_dy;
} ldmc_op_reads;
// clang-format off
#define LDMC_READS(in_mask, out_mask) {true, (in_mask), (out_mask), false, 0, 0, false}
#define LDMC_READS_PASS_WRITES(in_mask, out_mask, writes_mask) \
    {true, (in_mask), (out_mask), true, (writes_mask), 0, false}
#define LDMC_READS_WRITES(in_mask, out_mask, writes_mask) \
    {true, (in_mask), (out_mask), false, (writes_mask), 0, false}
#define LDMC_READS_BF16(in_mask, out_mask, writes_mask, writes_bf16_mask, reads_bf16_dy) \
    {true, (in_mask), (out_mask), false, (writes_mask), (writes_bf16_mask), (reads_bf16_dy)}
#define LDMC_READS_ALL {false, 0, 0, false, 0, 0, false}
// clang-format on

// `again` (NULL: none) runs a node's forward once more into node->out[0]->data, from its inputs
// and args, bit for bit as the first time: an output so cheap to recompute (a normalization, an
// activation) is not kept for backward under a memory plan, but made again, right before the
// first backward that reads it, into memory of its own (see ldmc_backward_many).
// An output whose making again costs a product (the node's again_flops > 0: a linear layer's) is
// made again only where a model asks (ldmc_remake_later), and kept otherwise.
typedef void (*ldmc_again_fn)(ldmc_ctx *ctx, ldmc_node *node);

typedef struct ldmc_op_info {
    const char *name;
    ldmc_backward_fn backward;
    ldmc_op_reads reads;
    ldmc_again_fn again;
} ldmc_op_info;

struct ldmc_node {
    const ldmc_op_info *op;
    ldmc_tensor **in;
    int n_in;
    ldmc_tensor **out;
    int n_out;
    void *args;            // op-specific, allocated with ldmc_node_args
    double backward_flops; // set by the op: what its backward adds to ctx->flops
    double again_flops;    // set by the op: what making its output again adds to ctx->flops
    bool remake; // asked for by ldmc_remake_later (for outputs that cost a product to make again)
};

// A region for ldmc_recompute: reads in[0..n_in), writes out[0..n_out) (fresh tensors).
typedef void (*ldmc_region_fn)(ldmc_ctx *ctx, void *user, ldmc_tensor **in, int n_in,
                               ldmc_tensor **out, int n_out);

struct ldmc_ctx {
    ldmc_arena data; // activations, saved values, activation gradients
    ldmc_arena meta; // tensor headers, node argument records
    ldmc_node *nodes;
    int n_nodes, cap_nodes;
    ldmc_device device;   // where the data arena lives and every new tensor with it
    ldmc_dtype act_dtype; // what ops write: f32 on the CPU, bf16 on the GPU
    bool recording;       // record ops for backward (training); off for inference
    bool dry_run;         // shapes and memory only: ops allocate but compute nothing (memory plans)
    uint64_t next_id;
    // Random streams for ops such as dropout: each call draws a fresh range of the Philox stream
    // keyed by (seed, step, rank); the offset is restored when a recompute region is re-run.
    uint64_t rng_seed, rng_step, rng_offset;
    uint32_t rng_rank;
    // While a recompute region is re-run during backward: the first tensor id of the re-run.
    uint64_t recompute_first_id;
    bool in_recompute;
    // Models ask for their attention's q, k, v (self-attention) and q (cross-attention), and for
    // their feed-forward's first product, to be made again in backward (ldmc_remake_later) rather
    // than kept: a product more each, for the largest activations a transformer keeps. Set for
    // the duration of a forward by the module that has it on (a UNet's recompute_projections).
    bool recompute_projections;
    // Matrix-product FLOPs of the ops run (linear, matmul, conv2d, attention; forward and the
    // backward products of the gradients needed), dry runs included: a step's model FLOPs.
    double flops;
    ldmc_profile *profile;                   // NULL: no timing
    const ldmc_backward_hook *backward_hook; // NULL: none
    // The step's memory plan (core/memplan.h). A dry run records one into plan_out; a real step
    // replays `plan` (ldmc_ctx_use_plan): its allocations take the planned offsets, checked
    // against the records one by one. plan_tick is the plan's clock; plan_cursor the next record.
    ldmc_step_plan *plan_out;
    const ldmc_step_plan *plan;
    int64_t plan_tick;
    int plan_cursor, plan_freed; // plan_freed: records (in order of death) already past
    bool plan_poison;            // replay: fill each record with NaN bytes when it dies (tests)
    // Tests: fill a gradient allocated without zeroing (`writes`) with NaN bytes (host memory).
    bool poison_fresh_grads;
    // During a node's backward: bit k when input k's gradient was allocated for it unzeroed.
    uint32_t grad_fresh;
    // Activation gradients in bf16 where the ops allow (ldmc_op_reads.bf16_dy, writes_bf16): on
    // by default in GPU contexts, dry runs included; never on the CPU (f32 activations).
    bool bf16_grads;
    // Bytes of activation gradients allocated since the context's last reset, of those bf16, and
    // of those an op's backward found zeroed to add into (its op does not write them).
    int64_t grad_bytes, grad_bytes_bf16, grad_bytes_zeroed;
    // During backward: the parameters updated in backward, in the order they are due (tape.c);
    // during a recompute region's first run: those it reads (`seen`).
    struct param_due *due;
    int n_due, next_due;
    bool region_params;
    ldmc_tensor **seen;
    int n_seen, cap_seen;
};

// data_bytes / meta_bytes: address space reserved for each arena (committed only when touched).
void ldmc_ctx_init(ldmc_ctx *ctx, size_t data_bytes, size_t meta_bytes);
// A dry-run context: every tensor and gradient is allocated as in a real step, in address space
// that is never touched, and no kernel runs; data.high_water is then the step's activation
// memory. Inputs made with ldmc_new in it must not be written either.
void ldmc_ctx_init_dry_run(ldmc_ctx *ctx, size_t data_bytes);
// The same for a device: LDMC_CUDA allocates the data arena in GPU memory up front (activations in
// bf16, gradients in f32); the dry run of a GPU step measures bf16 activations without a GPU.
void ldmc_ctx_init_device(ldmc_ctx *ctx, ldmc_device device, size_t data_bytes, size_t meta_bytes);
void ldmc_ctx_init_dry_run_device(ldmc_ctx *ctx, ldmc_device device, size_t data_bytes);
void ldmc_ctx_free(ldmc_ctx *ctx);
// Starts a new step: drops all activations, gradients of activations and the tape.
void ldmc_ctx_reset(ldmc_ctx *ctx);
// A point to return to within a step: what was allocated and recorded before it stays (a
// sampler's state across its steps; a frozen encoder's output under the training step).
typedef struct ldmc_ctx_mark {
    size_t data, meta;
    int nodes;
    uint64_t rng_offset;
} ldmc_ctx_mark;
ldmc_ctx_mark ldmc_ctx_mark_here(const ldmc_ctx *ctx);
// Drops everything allocated and recorded since the mark.
void ldmc_ctx_rewind(ldmc_ctx *ctx, ldmc_ctx_mark mark);
// The activation arena's mark (ldmc_ctx_keep's data_mark): its top, or during a replayed plan
// the next record.
size_t ldmc_ctx_data_mark(const ldmc_ctx *ctx);

// Memory plans (core/memplan.h). ldmc_ctx_record_plan makes a dry-run context record the step it
// runs next (from its ldmc_ctx_reset) into `plan`; ldmc_ctx_finish_plan places it. A context
// replays `plan` (NULL: back to the bump arena) from its next ldmc_ctx_reset on; fatal, naming
// the sizes, when the plan's peak exceeds the arena. The plan must outlive its use.
void ldmc_ctx_record_plan(ldmc_ctx *ctx, ldmc_step_plan *plan);
void ldmc_ctx_finish_plan(ldmc_ctx *ctx);
void ldmc_ctx_use_plan(ldmc_ctx *ctx, const ldmc_step_plan *plan);
// Drops the activations allocated since `data_mark` but `keep`'s, which move down to the mark
// (their headers stay where they are): an unrecorded computation's results, without its
// intermediates.
void ldmc_ctx_keep(ldmc_ctx *ctx, size_t data_mark, ldmc_tensor **keep, int n);

// A fresh tensor with uninitialized (ldmc_new) or zeroed (ldmc_zeros) data in the data arena, on
// the context's device.
ldmc_tensor *ldmc_new(ldmc_ctx *ctx, ldmc_dtype dtype, int ndim, const int64_t *shape);
ldmc_tensor *ldmc_zeros(ldmc_ctx *ctx, ldmc_dtype dtype, int ndim, const int64_t *shape);
ldmc_tensor *ldmc_new_like(ldmc_ctx *ctx, const ldmc_tensor *t);
// A header over memory the caller owns (inputs, reference data), on the context's device. Not
// copied.
ldmc_tensor *ldmc_wrap(ldmc_ctx *ctx, ldmc_dtype dtype, void *data, int ndim, const int64_t *shape);
// A view with another shape of the same number of elements; shares data and gradient.
ldmc_tensor *ldmc_reshape(ldmc_ctx *ctx, ldmc_tensor *t, int ndim, const int64_t *shape);
// Marks a leaf (an input that is not a parameter) as needing a gradient.
void ldmc_requires_grad(ldmc_tensor *t);

// The f32 gradient of t, allocated zeroed on first use; NULL when t is NULL or needs none.
// Fatal, naming t, when t's gradient is bf16 (see ldmc_op_reads).
float *ldmc_grad(ldmc_ctx *ctx, ldmc_tensor *t);
// The gradient if one has been allocated, else NULL (no upstream gradient reached it). Fatal
// when it is bf16, as ldmc_grad.
float *ldmc_grad_if_any(const ldmc_tensor *t);
// The same for ops that take bf16 gradients (GPU launchers): the buffer, f32 or bf16 as
// ldmc_grad_is_bf16 says.
void *ldmc_grad_any(ldmc_ctx *ctx, ldmc_tensor *t);
const void *ldmc_grad_any_if_any(const ldmc_tensor *t);
bool ldmc_grad_is_bf16(const ldmc_tensor *t);
// In the backward of an op with `writes` (see ldmc_op_reads): 0 when input k's gradient is fresh
// (unzeroed: write it), 1 when it holds a sum already (add into it).
float ldmc_grad_beta(const ldmc_ctx *ctx, int k);

// Records a node when recording and some input needs a gradient; returns NULL otherwise.
// Sets requires_grad on the outputs accordingly. Fatal, naming the op, when the op has no
// backward and an input needs a gradient.
ldmc_node *ldmc_record(ldmc_ctx *ctx, const ldmc_op_info *op, ldmc_tensor **in, int n_in,
                       ldmc_tensor **out, int n_out);
// Op-specific arguments for a recorded node (zeroed; kept until the context is reset).
void *ldmc_node_args(ldmc_ctx *ctx, ldmc_node *node, size_t bytes);
// Scratch memory in the data arena for saved values (kept until reset).
void *ldmc_scratch(ldmc_ctx *ctx, size_t bytes);
// Host memory kept until the context is reset, on either device: the host side of a step's inputs
// (a CPU context wraps such memory as tensors without copying it; see ldmc_input).
void *ldmc_host_scratch(ldmc_ctx *ctx, size_t bytes);

// Seeds ∂loss/∂loss with `seed_grad` (NULL means 1 for every element: a scalar loss) and runs
// the tape backward. Parameter gradients accumulate into the flat gradient buffer. After it, the
// gradients of parameters and of leaves (ldmc_requires_grad) are defined; an intermediate
// tensor's buffer may have been handed on (an add's `pass`) or freed (a memory plan).
void ldmc_backward(ldmc_ctx *ctx, ldmc_tensor *loss, const float *seed_grad);
// The same from several outputs at once (an op with several outputs, or several losses).
void ldmc_backward_many(ldmc_ctx *ctx, ldmc_tensor **outs, const float **seed_grads, int n);

// Asks that t, a recorded op's output, be made again in backward rather than kept for it, when a
// memory plan is in use and the op can (`again`); otherwise (not recorded, no `again`, no plan)
// the output is kept as usual. Whatever reads t in backward gets the same bits either way.
void ldmc_remake_later(ldmc_ctx *ctx, ldmc_tensor *t);

// Whether the node is a recompute region's (whose re-run reads parameters the tape does not list).
bool ldmc_node_is_recompute(const ldmc_node *node);

// Runs `fn` as a recompute region (see the top of this file). When not recording, or when no
// input needs a gradient, this is a plain call.
void ldmc_recompute(ldmc_ctx *ctx, ldmc_region_fn fn, void *user, ldmc_tensor **in, int n_in,
                    ldmc_tensor **out, int n_out);

// Starts timing ops into `profile` (NULL stops). Slows every op down by a device synchronization.
void ldmc_profile_start(ldmc_ctx *ctx, ldmc_profile *profile);
// The entries sorted by time, longest first.
void ldmc_profile_sort(ldmc_profile *profile);

// Reserves `count` values of the context's random stream for one op call; returns the offset
// of the first (the counter base for rng.h).
uint64_t ldmc_ctx_rng_take(ldmc_ctx *ctx, uint64_t count);
