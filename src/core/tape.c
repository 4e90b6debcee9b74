// Context, tape, backward and recomputation (gradient checkpointing; see tape.h). Tested by
// tests/test_autograd.c.
#include "core/tape.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/device.h"
#include "core/error.h"
#include "core/params.h"

// Where new tensors go and what ops write: f32 on the CPU, bf16 on the GPU.
// bf16 activation gradients where the ops allow, on the GPU.
static void set_device(ldmc_ctx *ctx, ldmc_device device) {
    ctx->device = device;
    ctx->act_dtype = device == LDMC_CUDA ? LDMC_BF16 : LDMC_F32;
    ctx->bf16_grads = device == LDMC_CUDA;
}

void ldmc_ctx_init_device(ldmc_ctx *ctx, ldmc_device device, size_t data_bytes, size_t meta_bytes) {
    *ctx = (ldmc_ctx){0};
    if (device == LDMC_CUDA)
        ldmc_arena_init_device(&ctx->data, "GPU activation", data_bytes);
    else
        ldmc_arena_init(&ctx->data, "activation", data_bytes);
    ldmc_arena_init(&ctx->meta, "tensor-header", meta_bytes);
    set_device(ctx, device);
    ctx->recording = true;
}

void ldmc_ctx_init(ldmc_ctx *ctx, size_t data_bytes, size_t meta_bytes) {
    ldmc_ctx_init_device(ctx, LDMC_CPU, data_bytes, meta_bytes);
}

void ldmc_ctx_init_dry_run_device(ldmc_ctx *ctx, ldmc_device device, size_t data_bytes) {
    *ctx = (ldmc_ctx){0};
    ldmc_arena_init_virtual(&ctx->data, "activation (dry run)", data_bytes);
    ldmc_arena_init(&ctx->meta, "tensor-header", (size_t)1 << 30);
    set_device(ctx, device);
    ctx->recording = true;
    ctx->dry_run = true;
}

void ldmc_ctx_init_dry_run(ldmc_ctx *ctx, size_t data_bytes) {
    ldmc_ctx_init_dry_run_device(ctx, LDMC_CPU, data_bytes);
}

void ldmc_ctx_free(ldmc_ctx *ctx) {
    ldmc_arena_free(&ctx->data);
    ldmc_arena_free(&ctx->meta);
    free(ctx->nodes);
    free(ctx->seen);
    free(ctx->due);
    *ctx = (ldmc_ctx){0};
}

// ---- the memory plan (core/memplan.h) -----------------------------------------------------------

static int32_t slot_of(const ldmc_tensor *t) { return t ? (t->base ? t->base : t)->slot : 0; }

static void zero_data(ldmc_ctx *ctx, void *p, size_t bytes) {
    if (ctx->data.virtual_only || bytes == 0) return;
    if (ctx->data.device)
        ldmc_gpu_zero(p, bytes);
    else
        memset(p, 0, bytes);
}

// Every allocation of the activation arena: at its planned offset while a plan is replayed, else
// from the bump arena (and recorded while a plan is recorded). *slot gets the record.
static void *data_alloc(ldmc_ctx *ctx, size_t bytes, bool zero, ldmc_mem_kind kind,
                        const char *name, int32_t *slot) {
    static const char *kinds[] = {"activation", "gradient", "scratch"};
    int32_t s = 0;
    void *p;
    if (ctx->plan) {
        const ldmc_step_plan *plan = ctx->plan;
        LDMC_CHECK(ctx->plan_cursor < plan->n,
                   "memory plan: the step makes more allocations than its plan's %d (a %s of "
                   "%zu bytes for '%s'); a step's allocations may depend on its shapes only",
                   plan->n, kinds[kind], bytes, name ? name : "?");
        const ldmc_mem_rec *r = &plan->recs[ctx->plan_cursor];
        LDMC_CHECK(r->bytes == bytes && r->kind == kind,
                   "memory plan: allocation %d of the step is a %s of %zu bytes for '%s', its "
                   "plan has a %s of %zu bytes for '%s'; a step's allocations may depend on its "
                   "shapes only",
                   ctx->plan_cursor, kinds[kind], bytes, name ? name : "?", kinds[r->kind],
                   r->bytes, r->name ? r->name : "?");
        s = ++ctx->plan_cursor;
        p = ctx->data.base + r->offset;
        if (zero) zero_data(ctx, p, bytes);
    } else {
        p = zero ? ldmc_arena_calloc(&ctx->data, bytes) : ldmc_arena_alloc(&ctx->data, bytes);
        if (ctx->plan_out)
            s = ldmc_plan_add(ctx->plan_out, bytes, (size_t)((char *)p - ctx->data.base),
                              ctx->plan_tick, kind, name);
    }
    if (slot) *slot = s;
    return p;
}

static void plan_use(ldmc_ctx *ctx, int32_t slot, bool consume) {
    if (ctx->plan_out) ldmc_plan_use(ctx->plan_out, slot, ctx->plan_tick, consume);
}

// NaN bytes (0xFF...: a NaN in f32 and bf16) over a record that died, so that a read of freed
// memory shows in tests. Host memory only (the CPU, and the GPU's emulation).
static void poison(ldmc_ctx *ctx, void *p, size_t bytes) {
#ifndef LDMC_CUDA_EMULATED
    if (ctx->data.device) return;
#endif
    memset(p, 0xFF, bytes);
}

// The plan's clock moves on. A replay that poisons fills the records whose last tick this was.
static void plan_tick(ldmc_ctx *ctx) {
    const ldmc_step_plan *p = ctx->plan;
    if (p && ctx->plan_poison)
        while (ctx->plan_freed < p->n &&
               p->recs[p->by_death[ctx->plan_freed]].dies <= ctx->plan_tick) {
            const ldmc_mem_rec *r = &p->recs[p->by_death[ctx->plan_freed++]];
            if (r->dies == ctx->plan_tick) poison(ctx, ctx->data.base + r->offset, r->bytes);
        }
    ctx->plan_tick++;
}

// Releases the activation arena to `mark` (ldmc_ctx_data_mark's): the records above it end now.
static void data_release(ldmc_ctx *ctx, size_t mark) {
    if (ctx->plan) {
        LDMC_CHECK(mark <= (size_t)ctx->plan_cursor,
                   "memory plan: release to a mark ahead of the step");
    } else {
        if (ctx->plan_out) ldmc_plan_release(ctx->plan_out, mark, ctx->plan_tick);
        ldmc_arena_release(&ctx->data, mark);
    }
    plan_tick(ctx);
}

size_t ldmc_ctx_data_mark(const ldmc_ctx *ctx) {
    return ctx->plan ? (size_t)ctx->plan_cursor : ldmc_arena_mark(&ctx->data);
}

// Whether t's data was allocated above the data mark.
static bool above_mark(const ldmc_ctx *ctx, const ldmc_tensor *t, size_t mark) {
    if (ctx->plan) return t->slot > 0 && (size_t)t->slot > mark;
    return ldmc_arena_above(&ctx->data, t->data, mark);
}

static void plan_start(ldmc_ctx *ctx) {
    ctx->plan_tick = 0, ctx->plan_cursor = 0, ctx->plan_freed = 0;
    if (ctx->plan_out) ldmc_plan_clear(ctx->plan_out);
}

void ldmc_ctx_record_plan(ldmc_ctx *ctx, ldmc_step_plan *plan) {
    LDMC_CHECK(ctx->dry_run, "memory plan: only a dry run records a plan");
    ctx->plan_out = plan;
    plan_start(ctx);
}

void ldmc_ctx_finish_plan(ldmc_ctx *ctx) {
    LDMC_CHECK(ctx->plan_out, "memory plan: the context records none");
    ldmc_plan_finish(ctx->plan_out, ctx->plan_tick);
    ctx->plan_out = NULL;
}

void ldmc_ctx_use_plan(ldmc_ctx *ctx, const ldmc_step_plan *plan) {
    LDMC_CHECK(!ctx->plan_out, "memory plan: a context cannot record and replay at once");
    if (plan)
        LDMC_CHECK(
            plan->peak <= ctx->data.capacity,
            "the step needs %.2f GiB of activations and their gradients; the %s arena has "
            "%.2f GiB (a smaller batch or resolution, or gradient checkpointing, needs less)",
            (double)plan->peak / (1 << 30), ctx->data.name, (double)ctx->data.capacity / (1 << 30));
    ctx->plan = plan;
    plan_start(ctx);
    if (plan && plan->peak > ctx->data.high_water) ctx->data.high_water = plan->peak;
}

// ---- contexts
// ------------------------------------------------------------------------------------

void ldmc_ctx_reset(ldmc_ctx *ctx) {
    ldmc_arena_reset(&ctx->data);
    ldmc_arena_reset(&ctx->meta);
    ctx->n_nodes = 0;
    ctx->rng_offset = 0;
    ctx->grad_bytes = ctx->grad_bytes_bf16 = ctx->grad_bytes_zeroed = 0;
    plan_start(ctx);
}

ldmc_ctx_mark ldmc_ctx_mark_here(const ldmc_ctx *ctx) {
    return (ldmc_ctx_mark){.data = ldmc_ctx_data_mark(ctx),
                           .meta = ldmc_arena_mark(&ctx->meta),
                           .nodes = ctx->n_nodes,
                           .rng_offset = ctx->rng_offset};
}

void ldmc_ctx_rewind(ldmc_ctx *ctx, ldmc_ctx_mark mark) {
    LDMC_CHECK(mark.nodes <= ctx->n_nodes, "rewinding a context to a mark past its tape");
    data_release(ctx, mark.data);
    ldmc_arena_release(&ctx->meta, mark.meta);
    ctx->n_nodes = mark.nodes;
    ctx->rng_offset = mark.rng_offset;
}

static ldmc_tensor *new_header(ldmc_ctx *ctx, ldmc_dtype dtype, int ndim, const int64_t *shape) {
    ldmc_tensor *t = ldmc_arena_calloc(&ctx->meta, sizeof *t);
    *t = ldmc_tensor_wrap(dtype, NULL, ndim, shape);
    t->id = ++ctx->next_id;
    t->device = ctx->device;
    return t;
}

ldmc_tensor *ldmc_new(ldmc_ctx *ctx, ldmc_dtype dtype, int ndim, const int64_t *shape) {
    ldmc_tensor *t = new_header(ctx, dtype, ndim, shape);
    t->data = data_alloc(ctx, ldmc_nbytes(t), false, LDMC_MEM_DATA, NULL, &t->slot);
    return t;
}

ldmc_tensor *ldmc_zeros(ldmc_ctx *ctx, ldmc_dtype dtype, int ndim, const int64_t *shape) {
    ldmc_tensor *t = new_header(ctx, dtype, ndim, shape);
    t->data = data_alloc(ctx, ldmc_nbytes(t), true, LDMC_MEM_DATA, NULL, &t->slot);
    return t;
}

ldmc_tensor *ldmc_new_like(ldmc_ctx *ctx, const ldmc_tensor *t) {
    return ldmc_new(ctx, t->dtype, t->ndim, t->shape);
}

ldmc_tensor *ldmc_wrap(ldmc_ctx *ctx, ldmc_dtype dtype, void *data, int ndim,
                       const int64_t *shape) {
    ldmc_tensor *t = new_header(ctx, dtype, ndim, shape);
    t->data = data;
    return t;
}

ldmc_tensor *ldmc_reshape(ldmc_ctx *ctx, ldmc_tensor *t, int ndim, const int64_t *shape) {
    LDMC_CHECK(ldmc_shape_numel(ndim, shape) == ldmc_numel(t),
               "reshape of '%s': %lld elements cannot become %lld", t->name ? t->name : "?",
               (long long)ldmc_numel(t), (long long)ldmc_shape_numel(ndim, shape));
    ldmc_tensor *v = new_header(ctx, t->dtype, ndim, shape);
    v->device = t->device;
    v->data = t->data;
    v->base = t->base ? t->base : t;
    v->requires_grad = t->requires_grad;
    v->is_param = t->is_param;
    v->name = t->name;
    v->slot = slot_of(t);
    return v;
}

void ldmc_requires_grad(ldmc_tensor *t) { t->requires_grad = true; }

static ldmc_tensor *grad_owner(ldmc_tensor *t) { return t->base ? t->base : t; }

// Whether t is a trainable parameter of a table updated in backward
// (ldmc_params_update_in_backward): its gradient is the tape's to make, and to end at its update.
static bool updated_in_backward(const ldmc_tensor *t) {
    return t && t->is_param && t->requires_grad && t->param_table &&
           t->param_table->update_in_backward;
}

// t's gradient, allocated on first use: zeroed, or (`fresh`) for an op that writes it, in bf16
// when `bf16` (fresh ones only).
static void *grad_alloc(ldmc_ctx *ctx, ldmc_tensor *t, bool fresh, bool bf16) {
    if (!t) return NULL;
    ldmc_tensor *owner = grad_owner(t);
    if (!owner->requires_grad) return NULL;
    if (!owner->grad) {
        const bool in_backward = updated_in_backward(owner);
        LDMC_CHECK(!owner->is_param || in_backward,
                   "parameter '%s' needs a gradient but has no gradient buffer",
                   owner->name ? owner->name : "?");
        LDMC_CHECK(owner->param_state != 2,
                   "parameter '%s' needs a gradient after backward updated it (the tape took its "
                   "last use for an earlier one)",
                   owner->name ? owner->name : "?");
        if (in_backward) owner->param_state = 1;
        LDMC_CHECK(in_backward || !ctx->in_recompute || owner->id >= ctx->recompute_first_id,
                   "a recompute region reads tensor '%s' that was not passed to "
                   "ldmc_recompute as an input; its gradient would be lost",
                   owner->name ? owner->name : "?");
        size_t bytes = (size_t)ldmc_numel(owner) * (bf16 ? sizeof(uint16_t) : sizeof(float));
        owner->grad = data_alloc(ctx, bytes, !fresh, LDMC_MEM_GRAD, owner->name, &owner->grad_slot);
        owner->grad_bf16 = bf16;
        if (!owner->is_param) ctx->grad_bytes += (int64_t)bytes;
        if (bf16) ctx->grad_bytes_bf16 += (int64_t)bytes;
        if (fresh && ctx->poison_fresh_grads && !ctx->dry_run) poison(ctx, owner->grad, bytes);
        // a leaf's gradient is the caller's to read after backward (a parameter's updated in
        // backward is not: its update is its last use)
        if (ctx->plan_out && owner->grad_slot && !owner->producer && !owner->is_param)
            ctx->plan_out->recs[owner->grad_slot - 1].to_end = true;
    }
    return owner->grad;
}

// Refuses a bf16 gradient to code that reads f32.
static float *f32_grad(const ldmc_tensor *t, void *g) {
    LDMC_CHECK(!g || !grad_owner((ldmc_tensor *)t)->grad_bf16,
               "the gradient of '%s' is bf16 (tape.h: bf16 gradients), and is read here as f32",
               t->name ? t->name : "?");
    return g;
}

float *ldmc_grad(ldmc_ctx *ctx, ldmc_tensor *t) {
    return f32_grad(t, grad_alloc(ctx, t, false, false));
}

void *ldmc_grad_any(ldmc_ctx *ctx, ldmc_tensor *t) { return grad_alloc(ctx, t, false, false); }

bool ldmc_grad_is_bf16(const ldmc_tensor *t) { return t && (t->base ? t->base : t)->grad_bf16; }

float ldmc_grad_beta(const ldmc_ctx *ctx, int k) {
    return k < 32 && (ctx->grad_fresh >> k & 1) ? 0.0f : 1.0f;
}

// Whether input k of the node gets a fresh gradient its op writes (see ldmc_op_reads.writes).
static bool grad_fresh(const ldmc_node *node, int k) {
    ldmc_tensor *x = node->in[k];
    if (k >= 32 || !(node->op->reads.writes >> k & 1) || !x) return false;
    ldmc_tensor *u = grad_owner(x);
    if (!u->requires_grad || u->grad || u->is_param || ldmc_numel(x) != ldmc_numel(u)) return false;
    for (int j = 0; j < node->n_in; j++)
        if (j != k && node->in[j] && grad_owner(node->in[j]) == u) return false;
    return true;
}

// Whether input k's fresh gradient is bf16: its only reader is this node, whose op writes it in
// bf16, and its producer reads it only rounded to bf16 (see ldmc_op_reads).
static bool grad_bf16(const ldmc_ctx *ctx, const ldmc_node *node, int k) {
    if (!ctx->bf16_grads || k >= 32 || !(node->op->reads.writes_bf16 >> k & 1)) return false;
    const ldmc_tensor *u = grad_owner(node->in[k]);
    if (u->readers != 1 || !u->producer || u->producer > ctx->n_nodes) return false;
    const ldmc_node *p = &ctx->nodes[u->producer - 1];
    return p->op->reads.bf16_dy && p->n_out == 1 && grad_owner(p->out[0]) == u;
}

// The gradient buffer of t if there is one, whatever its dtype.
static void *grad_raw(const ldmc_tensor *t) {
    if (!t) return NULL;
    const ldmc_tensor *owner = t->base ? t->base : t;
    return owner->requires_grad ? owner->grad : NULL;
}

float *ldmc_grad_if_any(const ldmc_tensor *t) { return f32_grad(t, grad_raw(t)); }

const void *ldmc_grad_any_if_any(const ldmc_tensor *t) { return grad_raw(t); }

static ldmc_node *append_node(ldmc_ctx *ctx, const ldmc_op_info *op, ldmc_tensor **in, int n_in,
                              ldmc_tensor **out, int n_out) {
    if (ctx->n_nodes == ctx->cap_nodes) {
        int cap = ctx->cap_nodes ? 2 * ctx->cap_nodes : 256;
        ldmc_node *nodes = realloc(ctx->nodes, (size_t)cap * sizeof *nodes);
        LDMC_CHECK(nodes, "out of memory growing the tape to %d nodes", cap);
        ctx->nodes = nodes;
        ctx->cap_nodes = cap;
    }
    ldmc_node *node = &ctx->nodes[ctx->n_nodes++];
    node->op = op;
    node->n_in = n_in;
    node->n_out = n_out;
    node->in = ldmc_arena_alloc(&ctx->meta, (size_t)(n_in > 0 ? n_in : 1) * sizeof *in);
    node->out = ldmc_arena_alloc(&ctx->meta, (size_t)n_out * sizeof *out);
    memcpy(node->in, in, (size_t)n_in * sizeof *in);
    memcpy(node->out, out, (size_t)n_out * sizeof *out);
    node->args = NULL;
    node->backward_flops = 0;
    node->again_flops = 0;
    node->remake = false;
    for (int i = 0; i < n_out; i++) {
        out[i]->requires_grad = true;
        out[i]->producer = ctx->n_nodes;
        grad_owner(out[i])->producer = ctx->n_nodes;
    }
    for (int i = 0; i < n_in; i++)
        if (in[i] && !in[i]->is_param) grad_owner(in[i])->readers++;
    return node;
}

// ---- op timing
// -----------------------------------------------------------------------------------

static double profile_now(const ldmc_ctx *ctx) {
    ldmc_device_synchronize(ctx->device);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void ldmc_profile_start(ldmc_ctx *ctx, ldmc_profile *profile) {
    ctx->profile = profile;
    if (profile) profile->mark = profile_now(ctx);
}

static void profile_add(ldmc_profile *p, const char *name, bool backward, double seconds) {
    int i = 0;
    while (i < p->count && (strcmp(p->entries[i].name, name) || p->entries[i].backward != backward))
        i++;
    if (i == p->count) {
        if (p->count == (int)(sizeof p->entries / sizeof p->entries[0])) return;
        p->entries[p->count++] = (ldmc_profile_entry){.name = name, .backward = backward};
    }
    p->entries[i].ms += 1e3 * seconds;
    p->entries[i].calls++;
}

static int by_time(const void *a, const void *b) {
    double x = ((const ldmc_profile_entry *)a)->ms, y = ((const ldmc_profile_entry *)b)->ms;
    return (x < y) - (x > y);
}

void ldmc_profile_sort(ldmc_profile *profile) {
    qsort(profile->entries, (size_t)profile->count, sizeof profile->entries[0], by_time);
}

// Every op ends by recording itself (whether or not a node is kept): its time ends here.
static void profile_forward(ldmc_ctx *ctx, const char *name) {
    if (!ctx->profile || ctx->dry_run) return;
    double now = profile_now(ctx);
    profile_add(ctx->profile, name, false, now - ctx->profile->mark);
    ctx->profile->mark = now;
}

// The op's inputs and outputs are read at this tick (every op ends by recording itself).
static void forward_uses(ldmc_ctx *ctx, ldmc_tensor **in, int n_in, ldmc_tensor **out, int n_out) {
    if (!ctx->plan_out) return;
    for (int i = 0; i < n_in; i++)
        plan_use(ctx, slot_of(in[i]), true);
    for (int o = 0; o < n_out; o++) {
        int32_t slot = slot_of(out[o]);
        plan_use(ctx, slot, false);
        ldmc_mem_rec *r = slot ? &ctx->plan_out->recs[slot - 1] : NULL;
        if (r && !r->name) r->name = out[o]->name;
    }
}

// A recompute region's first run: the parameters of tables updated in backward it reads, each
// once.
static void see_region_params(ldmc_ctx *ctx, ldmc_tensor **in, int n_in) {
    for (int i = 0; i < n_in; i++) {
        ldmc_tensor *u = in[i] ? grad_owner(in[i]) : NULL;
        if (!updated_in_backward(u)) continue;
        bool seen = false;
        for (int j = 0; j < ctx->n_seen && !seen; j++)
            seen = ctx->seen[j] == u;
        if (seen) continue;
        if (ctx->n_seen == ctx->cap_seen) {
            ctx->cap_seen = ctx->cap_seen ? 2 * ctx->cap_seen : 64;
            ctx->seen = realloc(ctx->seen, (size_t)ctx->cap_seen * sizeof *ctx->seen);
            LDMC_CHECK(ctx->seen, "out of memory");
        }
        ctx->seen[ctx->n_seen++] = u;
    }
}

ldmc_node *ldmc_record(ldmc_ctx *ctx, const ldmc_op_info *op, ldmc_tensor **in, int n_in,
                       ldmc_tensor **out, int n_out) {
    profile_forward(ctx, op->name);
    const ldmc_tensor *needs = NULL;
    for (int i = 0; i < n_in && !needs; i++)
        if (in[i] && in[i]->requires_grad) needs = in[i];
    for (int i = 0; i < n_out; i++) {
        out[i]->requires_grad = false;
        if (!out[i]->name) out[i]->name = op->name;
    }
    forward_uses(ctx, in, n_in, out, n_out);
    if (ctx->region_params) see_region_params(ctx, in, n_in);
    ldmc_node *node = NULL;
    if (ctx->recording && needs) {
        LDMC_CHECK(op->backward, "op '%s' has no backward, but its input '%s' needs a gradient",
                   op->name, needs->name ? needs->name : "?");
        node = append_node(ctx, op, in, n_in, out, n_out);
    }
    plan_tick(ctx);
    return node;
}

void *ldmc_node_args(ldmc_ctx *ctx, ldmc_node *node, size_t bytes) {
    node->args = ldmc_arena_calloc(&ctx->meta, bytes);
    return node->args;
}

void *ldmc_scratch(ldmc_ctx *ctx, size_t bytes) {
    return data_alloc(ctx, bytes, false, LDMC_MEM_SCRATCH, "scratch", NULL);
}

void *ldmc_host_scratch(ldmc_ctx *ctx, size_t bytes) { return ldmc_arena_alloc(&ctx->meta, bytes); }

static void recompute_backward(ldmc_ctx *ctx, ldmc_node *node);

static bool reads_bit(uint32_t mask, int i) { return (mask >> (i < 31 ? i : 31)) & 1; }

// A node's backward reads the gradients of its outputs, writes its inputs', and reads the
// tensors its op's `reads` names (all of them when the op does not say).
static void backward_uses(ldmc_ctx *ctx, const ldmc_node *node) {
    if (!ctx->plan_out) return;
    const ldmc_op_reads r = node->op->reads;
    for (int i = 0; i < node->n_in; i++) {
        if (!node->in[i]) continue;
        plan_use(ctx, grad_owner(node->in[i])->grad_slot, false);
        if (!r.known || reads_bit(r.in, i)) plan_use(ctx, slot_of(node->in[i]), true);
    }
    for (int o = 0; o < node->n_out; o++) {
        plan_use(ctx, grad_owner(node->out[o])->grad_slot, false);
        if (!r.known || reads_bit(r.out, o)) plan_use(ctx, slot_of(node->out[o]), true);
    }
}

// Makes x's data again when its op's `again` output was dropped (see ldmc_backward_many): first
// the producer's dropped inputs, then the producer's forward once more into a fresh allocation.
// A view takes its base's new data (views are reshapes: the same first byte).
static void remake(ldmc_ctx *ctx, ldmc_tensor *x) {
    if (!x) return;
    ldmc_tensor *u = grad_owner(x);
    if (u->dropped && !u->remade) {
        ldmc_node *p = &ctx->nodes[u->producer - 1];
        for (int i = 0; i < p->n_in; i++)
            remake(ctx, p->in[i]);
        u->data = data_alloc(ctx, ldmc_nbytes(u), false, LDMC_MEM_DATA, u->name, &u->slot);
        u->remade = true;
        ctx->flops += p->again_flops;
        if (!ctx->dry_run) p->op->again(ctx, p);
        for (int i = 0; i < p->n_in; i++)
            if (p->in[i]) plan_use(ctx, slot_of(p->in[i]), true);
        plan_use(ctx, u->slot, false);
    }
    if (x != u) x->data = u->data;
}

// The tensors a node's backward reads, made again where they were dropped.
static void remake_reads(ldmc_ctx *ctx, const ldmc_node *node) {
    const ldmc_op_reads r = node->op->reads;
    bool all =
        !r.known || node->op->backward == recompute_backward; // a region re-runs on its inputs
    for (int i = 0; i < node->n_in; i++)
        if (all || reads_bit(r.in, i)) remake(ctx, node->in[i]);
    if (node->op->backward == recompute_backward) return;
    for (int o = 0; o < node->n_out; o++)
        if (all || reads_bit(r.out, o)) remake(ctx, node->out[o]);
}

// Whether a node in [from - 1, a) reads z (`from` a producer number, node + 1; 0: none).
static bool read_between(const ldmc_ctx *ctx, const ldmc_tensor *z, int32_t from, int a) {
    for (int j = from > 0 ? from - 1 : a; j < a; j++)
        for (int i = 0; i < ctx->nodes[j].n_in; i++)
            if (ctx->nodes[j].in[i] && grad_owner(ctx->nodes[j].in[i]) == z) return true;
    return false;
}

static int32_t earliest(int32_t p, int32_t q) { return !p ? q : !q ? p : p < q ? p : q; }

// Whether a recompute region made t.
static bool made_by_region(const ldmc_ctx *ctx, const ldmc_tensor *t) {
    return t->producer && ldmc_node_is_recompute(&ctx->nodes[t->producer - 1]);
}

// An op with `pass` (an add): its inputs' gradients are its output's, dy. An input whose gradient
// does not exist yet (the whole of a tensor the output's size, not a parameter's, not shared with
// another input) takes dy's buffer instead of a copy; up to two of them, sharing it. Every holder
// of the buffer reads it through its producer's backward, after its own readers' backwards have
// added into it, so no other holder's readers may add into it before then: a holder z joins
// only if no node from the earliest producer among the buffer's other holders up to this one
// reads z (a residual stream joins a branch's output: the branch's nodes do not read the
// stream). A recompute region's output hands its buffer on unchecked: it only takes one alone.
static void pass_through(ldmc_ctx *ctx, const ldmc_node *node) {
    ldmc_tensor *y = grad_owner(node->out[0]), *take[2] = {NULL, NULL};
    if (!y->grad) return;
    const int a = (int)(node - ctx->nodes);
    const int32_t others = y->grad_share ? *y->grad_share : 0;
    int n = 0;
    for (int k = 0; k < node->n_in && n < 2; k++) {
        ldmc_tensor *x = node->in[k] ? grad_owner(node->in[k]) : NULL;
        if (!x || !x->requires_grad || x->grad || x->is_param || ldmc_numel(x) != ldmc_numel(y))
            continue;
        if (ctx->in_recompute && x->id < ctx->recompute_first_id) continue; // (ldmc_grad says why)
        bool shared = false;
        for (int j = 0; j < node->n_in; j++)
            shared = shared || (j != k && node->in[j] && grad_owner(node->in[j]) == x);
        if (shared) continue;
        if (made_by_region(ctx, x) && (others || n)) continue;
        if (read_between(ctx, x, others, a)) continue;
        if (n == 1) { // the two must not add into the buffer before each other's producer reads it
            const ldmc_tensor *u = take[0];
            if (made_by_region(ctx, u) || read_between(ctx, x, u->producer, a) ||
                read_between(ctx, u, x->producer, a))
                continue;
        }
        take[n++] = x;
    }
    int32_t *share = y->grad_share;
    if (n == 2 && !share) share = ldmc_arena_calloc(&ctx->meta, sizeof *share);
    for (int i = 0; i < n; i++) {
        ldmc_tensor *x = take[i];
        x->grad = y->grad, x->grad_slot = y->grad_slot, x->grad_bf16 = y->grad_bf16;
        x->grad_share = share;
        if (share) *share = earliest(*share, x->producer);
        if (ctx->plan_out && x->grad_slot && !x->producer)
            ctx->plan_out->recs[x->grad_slot - 1].to_end = true; // now a leaf's gradient
    }
}

// ---- parameters updated during backward ---------------------------------------------------------

// A trainable parameter of a table updated in backward, and the node after whose backward its
// gradient is complete (-1: after the whole of backward).
enum { MAX_DUE_TABLES = 16 };

typedef struct param_due {
    ldmc_tensor *t;
    int32_t due, table, index;
} param_due;

static int later_first(const void *a, const void *b) {
    const param_due *x = a, *y = b;
    if (x->due != y->due) return x->due > y->due ? -1 : 1;
    if (x->table != y->table) return x->table < y->table ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

// The table (of tables[0..*n), added when new) of a parameter updated in backward; -1 for
// anything else.
static int due_table(ldmc_params **tables, int *n, const ldmc_tensor *x) {
    const ldmc_tensor *u = x ? grad_owner((ldmc_tensor *)x) : NULL;
    if (!updated_in_backward(u)) return -1;
    int t = 0;
    while (t < *n && tables[t] != u->param_table)
        t++;
    if (t == *n) {
        LDMC_CHECK(*n < MAX_DUE_TABLES, "more than %d parameter tables updated in backward",
                   MAX_DUE_TABLES);
        tables[(*n)++] = u->param_table;
    }
    return t;
}

// A recompute region's parameters of tables updated in backward (none for other nodes).
static int region_params(const ldmc_node *node, ldmc_tensor ***params);

// The due list of every trainable parameter of the tables updated in backward that the tape
// reads, latest first. A parameter is due after the backward of the first node (in forward order)
// that reads it, a recompute region's node for those its region reads. One that nothing reads (or
// that backward does not reach) is updated too, with a zero gradient, as the flat buffer's update
// would be.
static void plan_param_updates(ldmc_ctx *ctx) {
    free(ctx->due);
    ctx->due = NULL, ctx->n_due = ctx->next_due = 0;
    ldmc_params *tables[MAX_DUE_TABLES];
    int n_tables = 0;
    for (int i = 0; i < ctx->n_nodes; i++) {
        const ldmc_node *node = &ctx->nodes[i];
        ldmc_tensor **in;
        for (int k = 0, r = region_params(node, &in); k < r; k++)
            due_table(tables, &n_tables, in[k]);
        for (int k = 0; k < node->n_in; k++)
            due_table(tables, &n_tables, node->in[k]);
    }
    if (!n_tables) return;
    int n = 0, start[MAX_DUE_TABLES];
    for (int t = 0; t < n_tables; t++)
        start[t] = n, n += tables[t]->count;
    int *first = malloc((size_t)n * sizeof *first);
    param_due *due = malloc((size_t)n * sizeof *due);
    LDMC_CHECK(first && due, "out of memory");
    for (int j = 0; j < n; j++)
        first[j] = -1;
    for (int i = ctx->n_nodes - 1; i >= 0; i--) { // down: the first reader is written last
        const ldmc_node *node = &ctx->nodes[i];
        ldmc_tensor **in;
        for (int k = 0, r = region_params(node, &in); k < r; k++) {
            int t = due_table(tables, &n_tables, in[k]);
            if (t >= 0) first[start[t] + in[k]->param_index] = i;
        }
        for (int k = 0; k < node->n_in; k++) {
            int t = due_table(tables, &n_tables, node->in[k]);
            if (t >= 0) first[start[t] + grad_owner(node->in[k])->param_index] = i;
        }
    }
    int m = 0;
    for (int t = 0; t < n_tables; t++)
        for (int i = 0; i < tables[t]->count; i++) {
            ldmc_tensor *u = &tables[t]->items[i].tensor;
            if (!u->requires_grad) continue;
            u->param_state = 0;
            due[m++] = (param_due){u, first[start[t] + i], t, i};
        }
    free(first);
    qsort(due, (size_t)m, sizeof *due, later_first);
    ctx->due = due, ctx->n_due = m;
}

// The parameters due once backward has passed node `node` (-1: all that are left): each gets its
// gradient (a zeroed one if backward did not reach it), its table's update (not in dry runs), and
// its gradient's end (the memory plan's last use).
static void update_due_params(ldmc_ctx *ctx, int node) {
    while (ctx->next_due < ctx->n_due && ctx->due[ctx->next_due].due >= node) {
        ldmc_tensor *u = ctx->due[ctx->next_due++].t;
        grad_alloc(ctx, u, false, false);
        ldmc_params *p = u->param_table;
        if (!ctx->dry_run) p->update(p->update_user, p, u->param_index);
        plan_use(ctx, u->grad_slot, true);
        u->grad = NULL, u->grad_slot = 0, u->param_state = 2;
    }
}

// After backward: every parameter updated, their states back for the next step.
static void finish_param_updates(ldmc_ctx *ctx) {
    update_due_params(ctx, -1);
    for (int j = 0; j < ctx->n_due; j++)
        ctx->due[j].t->param_state = 0;
    free(ctx->due);
    ctx->due = NULL, ctx->n_due = ctx->next_due = 0;
}

// The nodes [first, end) backward; `hook` after each (the top-level walk). Each reached node's
// input gradients are allocated (zeroed) before its backward runs, in input order, in dry runs
// and real ones alike: a replayed plan sees the same allocations whatever the op's code does.
static void run_backward(ldmc_ctx *ctx, int first, int end, const ldmc_backward_hook *hook,
                         bool top) {
    for (int i = end - 1; i >= first; i--) {
        ldmc_node *node = &ctx->nodes[i];
        bool reached = false;
        for (int o = 0; o < node->n_out && !reached; o++)
            reached = grad_raw(node->out[o]) != NULL;
        if (hook && i + 1 < end) hook->node_done(hook->user, i + 1);
        if (top && i + 1 < end) update_due_params(ctx, i + 1);
        if (!reached) continue;
        ctx->flops += node->backward_flops; // dry runs too: a plan counts the whole step
        remake_reads(ctx, node);
        ctx->grad_fresh = 0;
        if (node->op->backward != recompute_backward) {
            if (node->op->reads.pass) pass_through(ctx, node);
            for (int k = 0; k < node->n_in; k++) {
                bool fresh = grad_fresh(node, k);
                int64_t before = ctx->grad_bytes; // (counts activations' gradients only)
                grad_alloc(ctx, node->in[k], fresh, fresh && grad_bf16(ctx, node, k));
                if (fresh) ctx->grad_fresh |= 1u << k;
                else ctx->grad_bytes_zeroed += ctx->grad_bytes - before;
            }
            backward_uses(ctx, node);
        }
        if (ctx->dry_run && node->op->backward != recompute_backward) {
            plan_tick(ctx);
            continue;
        }
        if (ctx->profile && node->op->backward != recompute_backward) {
            double t0 = profile_now(ctx);
            node->op->backward(ctx, node);
            double t1 = profile_now(ctx);
            profile_add(ctx->profile, node->op->name, true, t1 - t0);
            ctx->profile->mark = t1;
        } else {
            if (ctx->profile)
                ctx->profile->mark = profile_now(ctx); // a re-run's ops time from here
            node->op->backward(ctx, node);
        }
        plan_tick(ctx);
    }
    ctx->grad_fresh = 0; // (set for each node before its backward, read only there)
    if (hook && first < end) hook->node_done(hook->user, first);
    if (top && first < end) update_due_params(ctx, first);
}

void ldmc_remake_later(ldmc_ctx *ctx, ldmc_tensor *t) {
    ldmc_tensor *u = grad_owner(t);
    if (!ctx->recording || !u->producer || u->producer > ctx->n_nodes) return;
    ldmc_node *node = &ctx->nodes[u->producer - 1];
    if (node->op->again && node->n_out == 1 && node->out[0] == u) node->remake = true;
}

bool ldmc_node_is_recompute(const ldmc_node *node) {
    return node->op->backward == recompute_backward;
}

// g += seed (or 1) for a gradient in GPU memory: the values go up through a scratch buffer (a
// dry run of a GPU step allocates it too).
static void seed_device(ldmc_ctx *ctx, float *g, const float *seed, int64_t count) {
    size_t mark = ldmc_ctx_data_mark(ctx);
    float *tmp = data_alloc(ctx, (size_t)count * sizeof(float), false, LDMC_MEM_SCRATCH,
                            "gradient seed", NULL);
    if (!ctx->dry_run) ldmc_gpu_add_from_host(g, seed, count, tmp);
    data_release(ctx, mark);
}

void ldmc_backward_many(ldmc_ctx *ctx, ldmc_tensor **outs, const float **seed_grads, int n) {
    for (int k = 0; k < n; k++) {
        float *g = ldmc_grad(ctx, outs[k]);
        LDMC_CHECK(g,
                   "backward from '%s', which does not depend on anything that needs a "
                   "gradient",
                   outs[k]->name ? outs[k]->name : "?");
        int64_t count = ldmc_numel(outs[k]);
        const float *seed = seed_grads ? seed_grads[k] : NULL;
        if (ctx->device == LDMC_CUDA) {
            seed_device(ctx, g, seed, count);
            continue;
        }
        if (ctx->dry_run) continue;
#pragma omp parallel for schedule(static) if (count > 65536)
        for (int64_t i = 0; i < count; i++)
            g[i] += seed ? seed[i] : 1.0f;
    }
    // Under a memory plan, the outputs of ops with `again` are not kept for backward: their
    // records end at their last use in forward, and backward makes them again where it reads them.
    if (ctx->plan || ctx->plan_out)
        for (int i = 0; i < ctx->n_nodes; i++) {
            const ldmc_node *node = &ctx->nodes[i];
            // an output cheap to make again (no product) always; a product's where asked
            if (!node->op->again || (node->again_flops > 0 && !node->remake)) continue;
            for (int o = 0; o < node->n_out; o++)
                if (!node->out[o]->base && node->out[o]->slot) node->out[o]->dropped = true;
        }
    bool was_recording = ctx->recording;
    ctx->recording = false;
    const ldmc_backward_hook *hook = ctx->dry_run ? NULL : ctx->backward_hook;
    if (hook) hook->begin(hook->user, ctx);
    plan_param_updates(ctx);
    run_backward(ctx, 0, ctx->n_nodes, hook, true);
    finish_param_updates(ctx);
    ctx->recording = was_recording;
}

void ldmc_backward(ldmc_ctx *ctx, ldmc_tensor *loss, const float *seed_grad) {
    ldmc_backward_many(ctx, &loss, &seed_grad, 1);
}

uint64_t ldmc_ctx_rng_take(ldmc_ctx *ctx, uint64_t count) {
    uint64_t offset = ctx->rng_offset;
    ctx->rng_offset += (count + 3) & ~(uint64_t)3; // whole Philox blocks of 4
    return offset;
}

// ---- recomputation (gradient checkpointing) -----------------------------------------------

typedef struct recompute_args {
    ldmc_region_fn fn;
    void *user;
    uint64_t rng_offset; // the stream position when the region first ran
    // the parameters of tables updated in backward that the region reads (its first run saw
    // them): their gradients are made before the re-run, and they are due after its backward
    ldmc_tensor **params;
    int n_params;
} recompute_args;

static int region_params(const ldmc_node *node, ldmc_tensor ***params) {
    if (!ldmc_node_is_recompute(node)) return 0;
    const recompute_args *args = node->args;
    *params = args->params;
    return args->n_params;
}

static void recompute_backward(ldmc_ctx *ctx, ldmc_node *node) {
    const recompute_args *args = node->args;
    for (int i = 0; i < node->n_in; i++)
        ldmc_grad(ctx, node->in[i]); // kept below the mark
    for (int i = 0; i < args->n_params; i++)
        grad_alloc(ctx, args->params[i], false, false); // (parameters updated in backward)
    size_t data_mark = ldmc_ctx_data_mark(ctx), meta_mark = ldmc_arena_mark(&ctx->meta);
    uint64_t rng_saved = ctx->rng_offset, first_id_saved = ctx->recompute_first_id;
    bool in_recompute_saved = ctx->in_recompute;
    int first = ctx->n_nodes;

    ctx->rng_offset = args->rng_offset;
    ctx->in_recompute = true;
    ctx->recompute_first_id = ctx->next_id + 1;
    ctx->recording = true;
    ldmc_tensor **out = ldmc_arena_calloc(&ctx->meta, (size_t)node->n_out * sizeof *out);
    args->fn(ctx, args->user, node->in, node->n_in, out, node->n_out);
    ctx->recording = false;

    bool any = false;
    for (int o = 0; o < node->n_out; o++) {
        void *g = grad_raw(node->out[o]);
        LDMC_CHECK(ldmc_numel(out[o]) == ldmc_numel(node->out[o]),
                   "recompute region output %d changed size on its re-run", o);
        if (g && out[o]->requires_grad) {
            ldmc_tensor *owner =
                grad_owner(out[o]); // the re-run outputs take the region's gradient
            owner->grad = g;
            owner->grad_slot = grad_owner(node->out[o])->grad_slot;
            owner->grad_bf16 = grad_owner(node->out[o])->grad_bf16;
            owner->grad_share = grad_owner(node->out[o])->grad_share;
            any = true;
        }
    }
    if (any) run_backward(ctx, first, ctx->n_nodes, NULL, false);

    ctx->n_nodes = first;
    data_release(ctx, data_mark);
    ldmc_arena_release(&ctx->meta, meta_mark);
    ctx->rng_offset = rng_saved;
    ctx->in_recompute = in_recompute_saved;
    ctx->recompute_first_id = first_id_saved;
}

static const ldmc_op_info recompute_op = {"recompute", recompute_backward, LDMC_READS_ALL, NULL};

// memmove on the context's device.
static void move_data(ldmc_ctx *ctx, void *dst, const void *src, size_t bytes) {
    if (ctx->device == LDMC_CUDA)
        ldmc_gpu_move(dst, src, bytes);
    else if (dst != src)
        memmove(dst, src, bytes);
}

// Where the bump arena put t (during a replay: where the dry run's did).
static size_t bump_offset(const ldmc_ctx *ctx, const ldmc_tensor *t) {
    if (ctx->plan) return ctx->plan->recs[t->slot - 1].bump;
    return (size_t)((char *)t->data - ctx->data.base);
}

// Moves the tensors above `mark` down to it, in address order (so that no move overwrites one
// not yet moved), and releases everything above them. During a replay they go to their planned
// offsets instead, which the plan keeps clear of their old places (those live one tick more).
static void compact(ldmc_ctx *ctx, size_t mark, ldmc_tensor **keep, int n_keep, const char *what) {
    ldmc_tensor *sorted[64];
    LDMC_CHECK(n_keep <= 64, "%s: %d tensors to keep (at most 64)", what, n_keep);
    int n = 0;
    for (int o = 0; o < n_keep; o++) {
        if (!above_mark(ctx, keep[o], mark)) continue;
        int j = n++;
        while (j > 0 && bump_offset(ctx, sorted[j - 1]) > bump_offset(ctx, keep[o])) {
            sorted[j] = sorted[j - 1];
            j--;
        }
        sorted[j] = keep[o];
    }
    data_release(ctx, mark);
    for (int i = 0; i < n; i++) {
        size_t bytes = ldmc_nbytes(sorted[i]);
        int32_t old = sorted[i]->slot;
        void *dst = data_alloc(ctx, bytes, false, LDMC_MEM_DATA, sorted[i]->name, &sorted[i]->slot);
        LDMC_CHECK(ctx->plan || (char *)dst <= (char *)sorted[i]->data,
                   "%s: tensors kept overlap each other", what);
        if (ctx->plan_out && old) { // the old place is read by the move
            ldmc_mem_rec *r = &ctx->plan_out->recs[old - 1];
            r->dies = ctx->plan_tick;
            ctx->plan_out->recs[sorted[i]->slot - 1].consumed = r->consumed;
        }
        if (!ctx->dry_run) move_data(ctx, dst, sorted[i]->data, bytes);
        sorted[i]->data = dst;
    }
    if (n) plan_tick(ctx);
}

void ldmc_ctx_keep(ldmc_ctx *ctx, size_t data_mark, ldmc_tensor **keep, int n) {
    for (int i = 0; i < n; i++)
        LDMC_CHECK(!keep[i]->base && !keep[i]->requires_grad,
                   "keeping '%s': only fresh tensors that need no gradient move",
                   keep[i]->name ? keep[i]->name : "?");
    compact(ctx, data_mark, keep, n, "ldmc_ctx_keep");
}

void ldmc_recompute(ldmc_ctx *ctx, ldmc_region_fn fn, void *user, ldmc_tensor **in, int n_in,
                    ldmc_tensor **out, int n_out) {
    if (!ctx->recording) {
        fn(ctx, user, in, n_in, out, n_out);
        return;
    }
    // The inputs are copied first: callers may pass the same array for in and out.
    ldmc_tensor **inputs = ldmc_arena_alloc(&ctx->meta, (size_t)(n_in > 0 ? n_in : 1) * sizeof *in);
    memcpy(inputs, in, (size_t)n_in * sizeof *in);
    in = inputs;
    uint64_t rng_offset = ctx->rng_offset;
    size_t mark = ldmc_ctx_data_mark(ctx);
    ctx->recording = false;
    // (a region inside this first run runs plainly, above: its ops are this region's)
    ctx->region_params = true, ctx->n_seen = 0;
    fn(ctx, user, in, n_in, out, n_out);
    ctx->region_params = false;
    ctx->recording = true;
    for (int o = 0; o < n_out; o++) {
        LDMC_CHECK(!out[o]->is_param, "recompute region returns parameter '%s' as output %d",
                   out[o]->name ? out[o]->name : "?", o);
        for (int i = 0; i < n_in; i++)
            LDMC_CHECK(grad_owner(out[o]) != grad_owner(in[i]),
                       "recompute region returns its input %d as output %d", i, o);
        out[o]->base = NULL; // a view of a discarded intermediate becomes a tensor of its own
    }
    compact(ctx, mark, out, n_out, "recompute region");
    ldmc_node *node = append_node(ctx, &recompute_op, in, n_in, out, n_out);
    recompute_args *args = ldmc_node_args(ctx, node, sizeof *args);
    *args = (recompute_args){.fn = fn, .user = user, .rng_offset = rng_offset};
    if (ctx->n_seen) {
        args->params = ldmc_arena_alloc(&ctx->meta, (size_t)ctx->n_seen * sizeof *args->params);
        memcpy(args->params, ctx->seen, (size_t)ctx->n_seen * sizeof *args->params);
        args->n_params = ctx->n_seen;
    }
}
