// Elementwise ops: add, mul, scale, broadcast add, dropout (see ops.h).
// Kernels: src/ops/cpu/elementwise.inc, misc.inc. Tested by tests/test_ops.c and
// tests/test_gradcheck.c.
#include <stdlib.h>

#include "ops/op_util.h"

static void check_same(const char *op, const ldmc_tensor *a, const ldmc_tensor *b) {
    char shape[96];
    OP_CHECK(ldmc_same_shape(a, b), op, b, "both operands must have the shape %s",
             ldmc_shape_str(a, shape, sizeof shape));
}

static void add_backward(ldmc_ctx *ctx, ldmc_node *node) {
    const float *dy = DOUT(node->out[0]);
    int64_t n = ldmc_numel(node->out[0]);
    for (int i = 0; i < 2; i++) {
        float *dx = ldmc_grad(ctx, node->in[i]);
        if (dx != dy) // (dy itself: passed through)
            accumulate_on(node->in[i], dx, ldmc_grad_beta(ctx, i), dy, 1.0, n);
    }
}

// An input that cannot take dy's buffer gets a copy of dy when its gradient is fresh.
static const ldmc_op_info add_op = {"add", add_backward, LDMC_READS_PASS_WRITES(0, 0, 3), NULL};

ldmc_tensor *ldmc_add(ldmc_ctx *ctx, ldmc_tensor *a, ldmc_tensor *b) {
    check_same("add", a, b);
    ldmc_tensor *y = ldmc_new_like(ctx, a);
    COMPUTE(ctx) {
        if (ON_GPU(a))
            GPU(ldmc_cuda_add_forward(BF(y), BF(a), BF(b), ldmc_numel(a)));
        else
            add_forward_f32(OUT(y), DATA(a), DATA(b), ldmc_numel(a));
    }
    RECORD(ctx, &add_op, y, a, b);
    return y;
}

static void mul_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *a = node->in[0], *b = node->in[1];
    if (ON_GPU(a))
        GPU(ldmc_cuda_mul_backward(ldmc_grad(ctx, a), ldmc_grad(ctx, b), ldmc_grad_beta(ctx, 0),
                                   ldmc_grad_beta(ctx, 1), DOUT(node->out[0]), BF(a), BF(b),
                                   ldmc_numel(a)));
    else
        mul_backward_f32(ldmc_grad(ctx, a), ldmc_grad(ctx, b), ldmc_grad_beta(ctx, 0),
                         ldmc_grad_beta(ctx, 1), DOUT(node->out[0]), DATA(a), DATA(b),
                         ldmc_numel(a));
}

static const ldmc_op_info mul_op = {"mul", mul_backward, LDMC_READS_WRITES(3, 0, 3), NULL};

ldmc_tensor *ldmc_mul(ldmc_ctx *ctx, ldmc_tensor *a, ldmc_tensor *b) {
    check_same("mul", a, b);
    ldmc_tensor *y = ldmc_new_like(ctx, a);
    COMPUTE(ctx) {
        if (ON_GPU(a))
            GPU(ldmc_cuda_mul_forward(BF(y), BF(a), BF(b), ldmc_numel(a)));
        else
            mul_forward_f32(OUT(y), DATA(a), DATA(b), ldmc_numel(a));
    }
    RECORD(ctx, &mul_op, y, a, b);
    return y;
}

static void sub_backward(ldmc_ctx *ctx, ldmc_node *node) {
    const float *dy = DOUT(node->out[0]);
    int64_t n = ldmc_numel(node->out[0]);
    accumulate_on(node->in[0], ldmc_grad(ctx, node->in[0]), ldmc_grad_beta(ctx, 0), dy, 1.0, n);
    accumulate_on(node->in[1], ldmc_grad(ctx, node->in[1]), ldmc_grad_beta(ctx, 1), dy, -1.0, n);
}

static const ldmc_op_info sub_op = {"sub", sub_backward, LDMC_READS_WRITES(0, 0, 3), NULL};

ldmc_tensor *ldmc_sub(ldmc_ctx *ctx, ldmc_tensor *a, ldmc_tensor *b) {
    check_same("sub", a, b);
    ldmc_tensor *y = ldmc_new_like(ctx, a);
    COMPUTE(ctx) {
        if (ON_GPU(a))
            GPU(ldmc_cuda_sub_forward(BF(y), BF(a), BF(b), ldmc_numel(a)));
        else
            sub_forward_f32(OUT(y), DATA(a), DATA(b), ldmc_numel(a));
    }
    RECORD(ctx, &sub_op, y, a, b);
    return y;
}

static void affine_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *x = node->in[0];
    accumulate_on(x, ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), DOUT(node->out[0]),
                  *(const double *)node->args, ldmc_numel(x));
}

static const ldmc_op_info affine_op = {"affine", affine_backward, LDMC_READS_WRITES(0, 0, 1), NULL};

ldmc_tensor *ldmc_affine(ldmc_ctx *ctx, ldmc_tensor *x, double a, double b) {
    ldmc_tensor *y = ldmc_new_like(ctx, x);
    COMPUTE(ctx) {
        if (ON_GPU(x) && x->dtype == LDMC_F32) // a per-sample sum kept in f32
            GPU(ldmc_cuda_affine_forward_f32(DF(y), DF(x), (float)a, (float)b, ldmc_numel(x)));
        else if (ON_GPU(x))
            GPU(ldmc_cuda_affine_forward(BF(y), BF(x), (float)a, (float)b, ldmc_numel(x)));
        else
            affine_forward_f32(OUT(y), DATA(x), a, b, ldmc_numel(x));
    }
    ldmc_node *node = RECORD(ctx, &affine_op, y, x);
    if (node) *(double *)ldmc_node_args(ctx, node, sizeof(double)) = a;
    return y;
}

ldmc_tensor *ldmc_scale(ldmc_ctx *ctx, ldmc_tensor *x, double s) {
    return ldmc_affine(ctx, x, s, 0);
}

// d exp(x) = exp(x) dx: the output is the saved value.
static void exp_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *x = node->in[0], *y = node->out[0];
    if (ON_GPU(x))
        GPU(ldmc_cuda_exp_backward(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), DOUT(y), BF(y),
                                   ldmc_numel(x)));
    else
        mul_backward_f32(ldmc_grad(ctx, x), NULL, ldmc_grad_beta(ctx, 0), 1, DOUT(y), NULL, DATA(y),
                         ldmc_numel(x));
}

static const ldmc_op_info exp_op = {"exp", exp_backward, LDMC_READS_WRITES(0, 1, 1), NULL};

ldmc_tensor *ldmc_exp(ldmc_ctx *ctx, ldmc_tensor *x) {
    ldmc_tensor *y = ldmc_new_like(ctx, x);
    COMPUTE(ctx) {
        if (ON_GPU(x))
            GPU(ldmc_cuda_exp_forward(BF(y), BF(x), ldmc_numel(x)));
        else
            exp_forward_f32(OUT(y), DATA(x), ldmc_numel(x));
    }
    RECORD(ctx, &exp_op, y, x);
    return y;
}

typedef struct clamp_args {
    double lo, hi;
} clamp_args;

static void clamp_backward(ldmc_ctx *ctx, ldmc_node *node) {
    const clamp_args *a = node->args;
    ldmc_tensor *x = node->in[0];
    if (ON_GPU(x))
        GPU(ldmc_cuda_clamp_backward(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), DOUT(node->out[0]),
                                     BF(x), (float)a->lo, (float)a->hi, ldmc_numel(x)));
    else
        clamp_backward_f32(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), DOUT(node->out[0]), DATA(x),
                           a->lo, a->hi, ldmc_numel(x));
}

static const ldmc_op_info clamp_op = {"clamp", clamp_backward, LDMC_READS_WRITES(1, 0, 1), NULL};

ldmc_tensor *ldmc_clamp(ldmc_ctx *ctx, ldmc_tensor *x, double lo, double hi) {
    OP_CHECK(lo <= hi, "clamp", x, "the bounds [%g, %g] are reversed", lo, hi);
    ldmc_tensor *y = ldmc_new_like(ctx, x);
    COMPUTE(ctx) {
        if (ON_GPU(x))
            GPU(ldmc_cuda_clamp_forward(BF(y), BF(x), (float)lo, (float)hi, ldmc_numel(x)));
        else
            clamp_forward_f32(OUT(y), DATA(x), lo, hi, ldmc_numel(x));
    }
    ldmc_node *node = RECORD(ctx, &clamp_op, y, x);
    if (node) *(clamp_args *)ldmc_node_args(ctx, node, sizeof(clamp_args)) = (clamp_args){lo, hi};
    return y;
}

static void sum_rows_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *x = node->in[0];
    int64_t B = x->shape[0], n = B ? ldmc_numel(x) / B : 0;
    if (ON_GPU(x))
        GPU(ldmc_cuda_sum_rows_backward(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0),
                                        DOUT(node->out[0]), B, n));
    else
        sum_rows_backward_f32(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), DOUT(node->out[0]), B, n);
}

static const ldmc_op_info sum_rows_op = {"sum_rows", sum_rows_backward, LDMC_READS_WRITES(0, 0, 1),
                                         NULL};

ldmc_tensor *ldmc_sum_rows(ldmc_ctx *ctx, ldmc_tensor *x) {
    OP_CHECK(x->ndim >= 1, "sum_rows", x, "the input must be (B, ...)");
    int64_t B = x->shape[0], n = B ? ldmc_numel(x) / B : 0;
    ldmc_tensor *y = ldmc_new(ctx, LDMC_F32, 1, (int64_t[]){B}); // sums stay f32 on the GPU
    COMPUTE(ctx) {
        if (ON_GPU(x))
            GPU(ldmc_cuda_sum_rows_forward(DF(y), BF(x), B, n));
        else
            sum_rows_forward_f32(OUT(y), DATA(x), B, n);
    }
    RECORD(ctx, &sum_rows_op, y, x);
    return y;
}

static void embedding_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *table = node->in[0], *labels = node->in[1];
    if (ON_GPU(table))
        GPU(ldmc_cuda_embedding_backward(ldmc_grad(ctx, table), DOUT(node->out[0]), labels->data,
                                         ldmc_numel(labels), (int)table->shape[1]));
    else
        embedding_backward_f32(ldmc_grad(ctx, table), DOUT(node->out[0]), labels->data,
                               ldmc_numel(labels), (int)table->shape[1]);
}

static const ldmc_op_info embedding_op = {"embedding", embedding_backward, LDMC_READS(2, 0), NULL};

ldmc_tensor *ldmc_embedding(ldmc_ctx *ctx, ldmc_tensor *table, ldmc_tensor *labels) {
    OP_CHECK(table->ndim == 2, "embedding", table, "the table must be (N, D)");
    OP_CHECK(labels->ndim == 1 && labels->dtype == LDMC_I64, "embedding", labels,
             "the labels must be (B) of I64");
    // (a dry run's parameters are reserved on the host whatever its device: pipeline/plan.c)
    OP_CHECK(ctx->dry_run || labels->device == table->device, "embedding", labels,
             "the labels must be on the table's device");
    const int64_t B = labels->shape[0], N = table->shape[0];
    const int64_t *l = labels->data;
    int64_t *host = NULL;
    if (ON_GPU(labels) && !ctx->dry_run) { // a few values, checked on the host
        host = malloc((size_t)(B ? B : 1) * sizeof *host);
        LDMC_CHECK(host, "out of memory");
        GPU(ldmc_cuda_to_host(host, labels->data, (size_t)B * sizeof *host));
        l = host;
    }
    for (int64_t b = 0; b < B && !ctx->dry_run; b++)
        OP_CHECK(l[b] >= 0 && l[b] < N, "embedding", labels,
                 "label %lld at %lld is outside [0, %lld)", (long long)l[b], (long long)b,
                 (long long)N);
    free(host);
    ldmc_tensor *y = NEW(ctx, B, table->shape[1]);
    COMPUTE(ctx) {
        if (ON_GPU(table))
            GPU(ldmc_cuda_embedding_forward(BF(y), BF(table), labels->data, B,
                                            (int)table->shape[1]));
        else
            embedding_forward_f32(OUT(y), DATA(table), labels->data, B, (int)table->shape[1]);
    }
    RECORD(ctx, &embedding_op, y, table, labels);
    return y;
}

// x is viewed as (B, P, C) and v as (B, C); B = 1 when v is a plain (C) vector.
typedef struct broadcast_args {
    int B, C;
    int64_t P;
} broadcast_args;

static void add_broadcast_backward(ldmc_ctx *ctx, ldmc_node *node) {
    const broadcast_args *a = node->args;
    ldmc_tensor *x = node->in[0], *v = node->in[1];
    const float *dy = DOUT(node->out[0]);
    // an input whose gradient is dy itself was passed through (`pass`): x, or v when P = 1
    float *dx = ldmc_grad(ctx, x), *dv = ldmc_grad(ctx, v);
    if (dx == dy) dx = NULL;
    if (dv == dy) dv = NULL;
    float beta_x = ldmc_grad_beta(ctx, 0), beta_v = ldmc_grad_beta(ctx, 1);
    if (ON_GPU(x))
        GPU(ldmc_cuda_add_broadcast_backward(dx, dv, beta_x, beta_v, dy, a->B, a->P, a->C));
    else
        add_broadcast_backward_f32(dx, dv, beta_x, beta_v, dy, a->B, a->P, a->C);
}

// x's gradient is dy: x takes dy's buffer when it has none yet (an add's pass), else a copy when
// fresh; v's, dy's column sums, is written when fresh.
static const ldmc_op_info add_broadcast_op = {"add_broadcast", add_broadcast_backward,
                                              LDMC_READS_PASS_WRITES(0, 0, 3), NULL};

ldmc_tensor *ldmc_add_broadcast(ldmc_ctx *ctx, ldmc_tensor *x, ldmc_tensor *v) {
    OP_CHECK(x->ndim >= 2, "add_broadcast", x, "x must be (B, ..., C)");
    broadcast_args a = {.C = (int)last_dim(x)};
    bool vector = v->ndim == 1;
    a.B = vector ? 1 : (int)x->shape[0];
    OP_CHECK(last_dim(v) == a.C && ldmc_numel(v) == (int64_t)a.B * a.C &&
                 (vector || v->shape[0] == x->shape[0]),
             "add_broadcast", v,
             "v must be (C), (B, C) or (B, 1, ..., 1, C) for x of B = %lld, C = %d",
             (long long)x->shape[0], a.C);
    a.P = ldmc_numel(x) / a.B / a.C;
    ldmc_tensor *y = ldmc_new_like(ctx, x);
    COMPUTE(ctx) {
        if (ON_GPU(x))
            GPU(ldmc_cuda_add_broadcast_forward(BF(y), BF(x), BF(v), a.B, a.P, a.C));
        else
            add_broadcast_forward_f32(OUT(y), DATA(x), DATA(v), a.B, a.P, a.C);
    }
    ldmc_node *node = RECORD(ctx, &add_broadcast_op, y, x, v);
    if (node) *(broadcast_args *)ldmc_node_args(ctx, node, sizeof a) = a;
    return y;
}

typedef struct dropout_args {
    double p;
    ldmc_rng rng;
    uint64_t offset;
} dropout_args;

static void dropout_backward(ldmc_ctx *ctx, ldmc_node *node) {
    const dropout_args *a = node->args;
    ldmc_tensor *x = node->in[0];
    if (ON_GPU(x))
        GPU(ldmc_cuda_dropout_backward(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0),
                                       DOUT(node->out[0]), ldmc_numel(x), a->p, &a->rng,
                                       a->offset));
    else
        dropout_backward_f32(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), DOUT(node->out[0]),
                             ldmc_numel(x), a->p, &a->rng, a->offset);
}

static const ldmc_op_info dropout_op = {"dropout", dropout_backward, LDMC_READS_WRITES(0, 0, 1),
                                        NULL};

ldmc_tensor *ldmc_dropout(ldmc_ctx *ctx, ldmc_tensor *x, double p) {
    OP_CHECK(p >= 0 && p < 1, "dropout", x, "p = %g must be in [0, 1)", p);
    if (p == 0) return x;
    dropout_args a = {.p = p,
                      .rng = ldmc_rng_make(ctx->rng_seed, (uint32_t)ctx->rng_step, ctx->rng_rank,
                                           LDMC_RNG_DROPOUT),
                      .offset = ldmc_ctx_rng_take(ctx, (uint64_t)ldmc_numel(x))};
    ldmc_tensor *y = ldmc_new_like(ctx, x);
    COMPUTE(ctx) {
        if (ON_GPU(x))
            GPU(ldmc_cuda_dropout_forward(BF(y), BF(x), ldmc_numel(x), p, &a.rng, a.offset));
        else
            dropout_forward_f32(OUT(y), DATA(x), ldmc_numel(x), p, &a.rng, a.offset);
    }
    ldmc_node *node = RECORD(ctx, &dropout_op, y, x);
    if (node) *(dropout_args *)ldmc_node_args(ctx, node, sizeof a) = a;
    return y;
}
