// Elementwise ops: add, mul, scale, broadcast add, dropout (see ops.h).
// Kernels: src/ops/cpu/elementwise.inc, misc.inc. Tested by tests/test_ops.c and
// tests/test_gradcheck.c.
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
        float *d = ldmc_grad(ctx, node->in[i]);
        if (d) accumulate_f32(d, dy, 1.0, n);
    }
}

static const ldmc_op_info add_op = {"add", add_backward};

ldmc_tensor *ldmc_add(ldmc_ctx *ctx, ldmc_tensor *a, ldmc_tensor *b) {
    check_same("add", a, b);
    ldmc_tensor *y = ldmc_new_like(ctx, a);
    add_forward_f32(OUT(y), DATA(a), DATA(b), ldmc_numel(a));
    RECORD(ctx, &add_op, y, a, b);
    return y;
}

static void mul_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *a = node->in[0], *b = node->in[1];
    mul_backward_f32(ldmc_grad(ctx, a), ldmc_grad(ctx, b), DOUT(node->out[0]), DATA(a), DATA(b),
                     ldmc_numel(a));
}

static const ldmc_op_info mul_op = {"mul", mul_backward};

ldmc_tensor *ldmc_mul(ldmc_ctx *ctx, ldmc_tensor *a, ldmc_tensor *b) {
    check_same("mul", a, b);
    ldmc_tensor *y = ldmc_new_like(ctx, a);
    mul_forward_f32(OUT(y), DATA(a), DATA(b), ldmc_numel(a));
    RECORD(ctx, &mul_op, y, a, b);
    return y;
}

static void scale_backward(ldmc_ctx *ctx, ldmc_node *node) {
    float *dx = ldmc_grad(ctx, node->in[0]);
    accumulate_f32(dx, DOUT(node->out[0]), *(const double *)node->args, ldmc_numel(node->in[0]));
}

static const ldmc_op_info scale_op = {"scale", scale_backward};

ldmc_tensor *ldmc_scale(ldmc_ctx *ctx, ldmc_tensor *x, double s) {
    ldmc_tensor *y = ldmc_new_like(ctx, x);
    scale_forward_f32(OUT(y), DATA(x), s, ldmc_numel(x));
    ldmc_node *node = RECORD(ctx, &scale_op, y, x);
    if (node) *(double *)ldmc_node_args(ctx, node, sizeof(double)) = s;
    return y;
}

// x is viewed as (B, P, C) and v as (B, C); B = 1 when v is a plain (C) vector.
typedef struct broadcast_args {
    int B, C;
    int64_t P;
} broadcast_args;

static void add_broadcast_backward(ldmc_ctx *ctx, ldmc_node *node) {
    const broadcast_args *a = node->args;
    add_broadcast_backward_f32(ldmc_grad(ctx, node->in[0]), ldmc_grad(ctx, node->in[1]),
                               DOUT(node->out[0]), a->B, a->P, a->C);
}

static const ldmc_op_info add_broadcast_op = {"add_broadcast", add_broadcast_backward};

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
    add_broadcast_forward_f32(OUT(y), DATA(x), DATA(v), a.B, a.P, a.C);
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
    dropout_backward_f32(ldmc_grad(ctx, node->in[0]), DOUT(node->out[0]), ldmc_numel(node->in[0]),
                         a->p, &a->rng, a->offset);
}

static const ldmc_op_info dropout_op = {"dropout", dropout_backward};

ldmc_tensor *ldmc_dropout(ldmc_ctx *ctx, ldmc_tensor *x, double p) {
    OP_CHECK(p >= 0 && p < 1, "dropout", x, "p = %g must be in [0, 1)", p);
    if (p == 0) return x;
    dropout_args a = {.p = p,
                      .rng = ldmc_rng_make(ctx->rng_seed, (uint32_t)ctx->rng_step, ctx->rng_rank,
                                           LDMC_RNG_DROPOUT),
                      .offset = ldmc_ctx_rng_take(ctx, (uint64_t)ldmc_numel(x))};
    ldmc_tensor *y = ldmc_new_like(ctx, x);
    dropout_forward_f32(OUT(y), DATA(x), ldmc_numel(x), p, &a.rng, a.offset);
    ldmc_node *node = RECORD(ctx, &dropout_op, y, x);
    if (node) *(dropout_args *)ldmc_node_args(ctx, node, sizeof a) = a;
    return y;
}
