// SiLU, GELU (exact, tanh, quick), GEGLU and softmax ops (see ops.h). Kernels:
// src/ops/cpu/activation.inc. Tested by tests/test_ops.c and tests/test_gradcheck.c.
#include "ops/op_util.h"

static void silu_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *x = node->in[0];
    if (ON_GPU(x))
        GPU(ldmc_cuda_silu_backward(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), DOUT(node->out[0]),
                                    BF(x), ldmc_numel(x)));
    else
        silu_backward_f32(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), DOUT(node->out[0]), DATA(x),
                          ldmc_numel(x));
}

static void silu_compute(ldmc_tensor *y, const ldmc_tensor *x) {
    if (ON_GPU(x))
        GPU(ldmc_cuda_silu_forward(BF(y), BF(x), ldmc_numel(x)));
    else
        silu_forward_f32(OUT(y), DATA(x), ldmc_numel(x));
}

static void silu_again(ldmc_ctx *ctx, ldmc_node *node) {
    (void)ctx;
    silu_compute(node->out[0], node->in[0]);
}

static const ldmc_op_info silu_op = {"silu", silu_backward, LDMC_READS_WRITES(1, 0, 1), silu_again};

ldmc_tensor *ldmc_silu(ldmc_ctx *ctx, ldmc_tensor *x) {
    ldmc_tensor *y = ldmc_new_like(ctx, x);
    COMPUTE(ctx) silu_compute(y, x);
    RECORD(ctx, &silu_op, y, x);
    return y;
}

static void gelu_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *x = node->in[0];
    int kind = *(const int *)node->args;
    if (ON_GPU(x))
        GPU(ldmc_cuda_gelu_backward(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), DOUT(node->out[0]),
                                    BF(x), ldmc_numel(x), kind));
    else
        gelu_backward_f32(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), DOUT(node->out[0]), DATA(x),
                          ldmc_numel(x), kind);
}

static const ldmc_op_info gelu_op = {"gelu", gelu_backward, LDMC_READS_WRITES(1, 0, 1), NULL};

static ldmc_tensor *gelu(ldmc_ctx *ctx, ldmc_tensor *x, int kind) {
    ldmc_tensor *y = ldmc_new_like(ctx, x);
    COMPUTE(ctx) {
        if (ON_GPU(x))
            GPU(ldmc_cuda_gelu_forward(BF(y), BF(x), ldmc_numel(x), kind));
        else
            gelu_forward_f32(OUT(y), DATA(x), ldmc_numel(x), kind);
    }
    ldmc_node *node = RECORD(ctx, &gelu_op, y, x);
    if (node) *(int *)ldmc_node_args(ctx, node, sizeof(int)) = kind;
    return y;
}

ldmc_tensor *ldmc_gelu(ldmc_ctx *ctx, ldmc_tensor *x, bool tanh_approx) {
    return gelu(ctx, x, tanh_approx ? LDMC_GELU_TANH : LDMC_GELU_ERF);
}

ldmc_tensor *ldmc_quick_gelu(ldmc_ctx *ctx, ldmc_tensor *x) {
    return gelu(ctx, x, LDMC_GELU_QUICK);
}

static void geglu_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *x = node->in[0];
    int F = (int)(last_dim(x) / 2);
    int64_t M = ldmc_numel(x) / (2 * F);
    if (ON_GPU(x))
        GPU(ldmc_cuda_geglu_backward(GRAD_ANY(ctx, x, 0), DOUT(node->out[0]), BF(x), M, F));
    else
        geglu_backward_f32(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), DOUT(node->out[0]), DATA(x),
                           M, F);
}

static void geglu_compute(ldmc_tensor *y, const ldmc_tensor *x) {
    int F = (int)last_dim(y);
    int64_t M = ldmc_numel(y) / (F ? F : 1);
    if (ON_GPU(x))
        GPU(ldmc_cuda_geglu_forward(BF(y), BF(x), M, F));
    else
        geglu_forward_f32(OUT(y), DATA(x), M, F);
}

static void geglu_again(ldmc_ctx *ctx, ldmc_node *node) {
    (void)ctx;
    geglu_compute(node->out[0], node->in[0]);
}

// On the GPU its input's gradient (the feed-forward's first product's) may be bf16.
static const ldmc_op_info geglu_op = {"geglu", geglu_backward, LDMC_READS_BF16(1, 0, 1, 1, false),
                                      geglu_again};

ldmc_tensor *ldmc_geglu(ldmc_ctx *ctx, ldmc_tensor *x) {
    OP_CHECK(x->ndim >= 1 && last_dim(x) % 2 == 0, "geglu", x,
             "the last dimension must be even (value and gate halves)");
    int64_t shape[LDMC_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++)
        shape[i] = x->shape[i];
    shape[x->ndim - 1] /= 2;
    ldmc_tensor *y = ldmc_new(ctx, ctx->act_dtype, x->ndim, shape);
    COMPUTE(ctx) geglu_compute(y, x);
    RECORD(ctx, &geglu_op, y, x);
    return y;
}

static void softmax_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *x = node->in[0], *y = node->out[0];
    int C = (int)last_dim(x);
    if (ON_GPU(x))
        GPU(ldmc_cuda_softmax_backward(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), DOUT(y), BF(y),
                                       ldmc_numel(x) / C, C));
    else
        softmax_backward_f32(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), DOUT(y), DATA(y),
                             ldmc_numel(x) / C, C);
}

static const ldmc_op_info softmax_op = {"softmax", softmax_backward, LDMC_READS_WRITES(0, 1, 1),
                                        NULL};

ldmc_tensor *ldmc_softmax(ldmc_ctx *ctx, ldmc_tensor *x) {
    OP_CHECK(x->ndim >= 1 && last_dim(x) > 0, "softmax", x, "the last dimension must be non-empty");
    ldmc_tensor *y = ldmc_new_like(ctx, x);
    int C = (int)last_dim(x);
    COMPUTE(ctx) {
        if (ON_GPU(x))
            GPU(ldmc_cuda_softmax_forward(BF(y), BF(x), ldmc_numel(x) / C, C));
        else
            softmax_forward_f32(OUT(y), DATA(x), ldmc_numel(x) / C, C);
    }
    RECORD(ctx, &softmax_op, y, x);
    return y;
}
