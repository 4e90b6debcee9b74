// Context, tape, backward and recomputation (gradient checkpointing; see tape.h). Tested by
// tests/test_autograd.c.
#include "core/tape.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/device.h"
#include "core/error.h"

// Where new tensors go and what ops write: f32 on the CPU, bf16 on the GPU.
static void set_device(ldmc_ctx *ctx, ldmc_device device) {
    ctx->device = device;
    ctx->act_dtype = device == LDMC_CUDA ? LDMC_BF16 : LDMC_F32;
}

void ldmc_ctx_init_device(ldmc_ctx *ctx, ldmc_device device, size_t data_bytes,
                          size_t meta_bytes) {
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
    *ctx = (ldmc_ctx){0};
}

void ldmc_ctx_reset(ldmc_ctx *ctx) {
    ldmc_arena_reset(&ctx->data);
    ldmc_arena_reset(&ctx->meta);
    ctx->n_nodes = 0;
    ctx->rng_offset = 0;
}

ldmc_ctx_mark ldmc_ctx_mark_here(const ldmc_ctx *ctx) {
    return (ldmc_ctx_mark){.data = ldmc_arena_mark(&ctx->data),
                           .meta = ldmc_arena_mark(&ctx->meta),
                           .nodes = ctx->n_nodes,
                           .rng_offset = ctx->rng_offset};
}

void ldmc_ctx_rewind(ldmc_ctx *ctx, ldmc_ctx_mark mark) {
    LDMC_CHECK(mark.nodes <= ctx->n_nodes, "rewinding a context to a mark past its tape");
    ldmc_arena_release(&ctx->data, mark.data);
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
    t->data = ldmc_arena_alloc(&ctx->data, ldmc_nbytes(t));
    return t;
}

ldmc_tensor *ldmc_zeros(ldmc_ctx *ctx, ldmc_dtype dtype, int ndim, const int64_t *shape) {
    ldmc_tensor *t = new_header(ctx, dtype, ndim, shape);
    t->data = ldmc_arena_calloc(&ctx->data, ldmc_nbytes(t));
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
    return v;
}

void ldmc_requires_grad(ldmc_tensor *t) { t->requires_grad = true; }

static ldmc_tensor *grad_owner(ldmc_tensor *t) { return t->base ? t->base : t; }

float *ldmc_grad(ldmc_ctx *ctx, ldmc_tensor *t) {
    if (!t) return NULL;
    ldmc_tensor *owner = grad_owner(t);
    if (!owner->requires_grad) return NULL;
    if (!owner->grad) {
        LDMC_CHECK(!owner->is_param, "parameter '%s' needs a gradient but has no gradient buffer",
                   owner->name ? owner->name : "?");
        LDMC_CHECK(!ctx->in_recompute || owner->id >= ctx->recompute_first_id,
                   "a recompute region reads tensor '%s' that was not passed to "
                   "ldmc_recompute as an input; its gradient would be lost",
                   owner->name ? owner->name : "?");
        owner->grad = ldmc_arena_calloc(&ctx->data, (size_t)ldmc_numel(owner) * sizeof(float));
    }
    return owner->grad;
}

float *ldmc_grad_if_any(const ldmc_tensor *t) {
    if (!t) return NULL;
    const ldmc_tensor *owner = t->base ? t->base : t;
    return owner->requires_grad ? owner->grad : NULL;
}

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
    for (int i = 0; i < n_out; i++)
        out[i]->requires_grad = true;
    return node;
}

// ---- op timing -----------------------------------------------------------------------------------

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
    if (!ctx->recording || !needs) return NULL;
    LDMC_CHECK(op->backward, "op '%s' has no backward, but its input '%s' needs a gradient",
               op->name, needs->name ? needs->name : "?");
    return append_node(ctx, op, in, n_in, out, n_out);
}

void *ldmc_node_args(ldmc_ctx *ctx, ldmc_node *node, size_t bytes) {
    node->args = ldmc_arena_calloc(&ctx->meta, bytes);
    return node->args;
}

void *ldmc_scratch(ldmc_ctx *ctx, size_t bytes) { return ldmc_arena_alloc(&ctx->data, bytes); }

void *ldmc_host_scratch(ldmc_ctx *ctx, size_t bytes) { return ldmc_arena_alloc(&ctx->meta, bytes); }

static void recompute_backward(ldmc_ctx *ctx, ldmc_node *node);

// The nodes [first, end) backward; `hook` after each (the top-level walk).
static void run_backward(ldmc_ctx *ctx, int first, int end, const ldmc_backward_hook *hook) {
    for (int i = end - 1; i >= first; i--) {
        ldmc_node *node = &ctx->nodes[i];
        bool reached = false;
        for (int o = 0; o < node->n_out && !reached; o++)
            reached = ldmc_grad_if_any(node->out[o]) != NULL;
        if (hook && i + 1 < end) hook->node_done(hook->user, i + 1);
        if (!reached) continue;
        ctx->flops += node->backward_flops; // dry runs too: a plan counts the whole step
        if (ctx->dry_run && node->op->backward != recompute_backward) {
            for (int k = 0; k < node->n_in; k++) ldmc_grad(ctx, node->in[k]); // allocations only
            continue;
        }
        if (ctx->profile && node->op->backward != recompute_backward) {
            double t0 = profile_now(ctx);
            node->op->backward(ctx, node);
            double t1 = profile_now(ctx);
            profile_add(ctx->profile, node->op->name, true, t1 - t0);
            ctx->profile->mark = t1;
        } else {
            if (ctx->profile) ctx->profile->mark = profile_now(ctx); // a re-run's ops time from here
            node->op->backward(ctx, node);
        }
    }
    if (hook && first < end) hook->node_done(hook->user, first);
}

bool ldmc_node_is_recompute(const ldmc_node *node) {
    return node->op->backward == recompute_backward;
}

// g += seed (or 1) for a gradient in GPU memory: the values go up through a scratch buffer.
static void seed_device(ldmc_ctx *ctx, float *g, const float *seed, int64_t count) {
    size_t mark = ldmc_arena_mark(&ctx->data);
    float *tmp = ldmc_arena_alloc(&ctx->data, (size_t)count * sizeof(float));
    ldmc_gpu_add_from_host(g, seed, count, tmp);
    ldmc_arena_release(&ctx->data, mark);
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
        if (ctx->dry_run) continue;
        if (ctx->device == LDMC_CUDA) {
            seed_device(ctx, g, seed, count);
            continue;
        }
#pragma omp parallel for schedule(static) if (count > 65536)
        for (int64_t i = 0; i < count; i++)
            g[i] += seed ? seed[i] : 1.0f;
    }
    bool was_recording = ctx->recording;
    ctx->recording = false;
    const ldmc_backward_hook *hook = ctx->dry_run ? NULL : ctx->backward_hook;
    if (hook) hook->begin(hook->user, ctx);
    run_backward(ctx, 0, ctx->n_nodes, hook);
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
} recompute_args;

static void recompute_backward(ldmc_ctx *ctx, ldmc_node *node) {
    const recompute_args *args = node->args;
    for (int i = 0; i < node->n_in; i++)
        ldmc_grad(ctx, node->in[i]); // kept below the mark
    size_t data_mark = ldmc_arena_mark(&ctx->data), meta_mark = ldmc_arena_mark(&ctx->meta);
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
        float *g = ldmc_grad_if_any(node->out[o]);
        LDMC_CHECK(ldmc_numel(out[o]) == ldmc_numel(node->out[o]),
                   "recompute region output %d changed size on its re-run", o);
        if (g && out[o]->requires_grad) {
            grad_owner(out[o])->grad = g; // the recorded outputs take the region's gradient
            any = true;
        }
    }
    if (any) run_backward(ctx, first, ctx->n_nodes, NULL);

    ctx->n_nodes = first;
    ldmc_arena_release(&ctx->data, data_mark);
    ldmc_arena_release(&ctx->meta, meta_mark);
    ctx->rng_offset = rng_saved;
    ctx->in_recompute = in_recompute_saved;
    ctx->recompute_first_id = first_id_saved;
}

static const ldmc_op_info recompute_op = {"recompute", recompute_backward};

// memmove on the context's device.
static void move_data(ldmc_ctx *ctx, void *dst, const void *src, size_t bytes) {
    if (ctx->device == LDMC_CUDA)
        ldmc_gpu_move(dst, src, bytes);
    else if (dst != src)
        memmove(dst, src, bytes);
}

// Moves the tensors above `mark` down to it, in address order (so that no move overwrites one
// not yet moved), and releases everything above them.
static void compact(ldmc_ctx *ctx, size_t mark, ldmc_tensor **keep, int n_keep, const char *what) {
    ldmc_tensor *sorted[64];
    LDMC_CHECK(n_keep <= 64, "%s: %d tensors to keep (at most 64)", what, n_keep);
    int n = 0;
    for (int o = 0; o < n_keep; o++) {
        if (!ldmc_arena_above(&ctx->data, keep[o]->data, mark)) continue;
        int j = n++;
        while (j > 0 && (char *)sorted[j - 1]->data > (char *)keep[o]->data) {
            sorted[j] = sorted[j - 1];
            j--;
        }
        sorted[j] = keep[o];
    }
    ldmc_arena_release(&ctx->data, mark);
    for (int i = 0; i < n; i++) {
        size_t bytes = ldmc_nbytes(sorted[i]);
        void *dst = ldmc_arena_alloc(&ctx->data, bytes);
        LDMC_CHECK((char *)dst <= (char *)sorted[i]->data, "%s: tensors kept overlap each other",
                   what);
        if (!ctx->dry_run) move_data(ctx, dst, sorted[i]->data, bytes);
        sorted[i]->data = dst;
    }
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
    size_t mark = ldmc_arena_mark(&ctx->data);
    ctx->recording = false;
    fn(ctx, user, in, n_in, out, n_out);
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
}
