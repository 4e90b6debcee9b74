// Average and max pooling ops (see ops.h). Kernels: src/ops/cpu/pool.inc.
// Tested by tests/test_ops.c and tests/test_gradcheck.c.
#include "ops/op_util.h"

typedef struct pool_args {
    ldmc_conv_geom g;
    bool count_include_pad;
} pool_args;

static void avg_pool_backward(ldmc_ctx *ctx, ldmc_node *node) {
    const pool_args *a = node->args;
    ldmc_tensor *x = node->in[0];
    if (ON_GPU(x))
        GPU(ldmc_cuda_avg_pool2d_backward(ldmc_grad(ctx, x), DOUT(node->out[0]), &a->g,
                                          a->count_include_pad));
    else
        avg_pool2d_backward_f32(ldmc_grad(ctx, x), DOUT(node->out[0]), &a->g, a->count_include_pad);
}

static void max_pool_backward(ldmc_ctx *ctx, ldmc_node *node) {
    const pool_args *a = node->args;
    ldmc_tensor *x = node->in[0];
    if (ON_GPU(x))
        GPU(ldmc_cuda_max_pool2d_backward(ldmc_grad(ctx, x), DOUT(node->out[0]), BF(x), &a->g));
    else
        max_pool2d_backward_f32(ldmc_grad(ctx, x), DOUT(node->out[0]), DATA(x), &a->g);
}

static const ldmc_op_info avg_pool_op = {"avg_pool2d", avg_pool_backward, LDMC_READS(0, 0), NULL};
static const ldmc_op_info max_pool_op = {"max_pool2d", max_pool_backward, LDMC_READS(1, 0), NULL};

static ldmc_tensor *pool(ldmc_ctx *ctx, ldmc_tensor *x, int kernel, int stride, int padding,
                         bool is_max, bool count_include_pad) {
    const char *name = is_max ? "max_pool2d" : "avg_pool2d";
    OP_CHECK(x->ndim == 4, name, x, "the input must be (N, H, W, C)");
    OP_CHECK(padding >= 0 && 2 * padding <= kernel, name, x,
             "padding %d must be at most half the kernel %d", padding, kernel);
    pool_args a = {.count_include_pad = count_include_pad};
    a.g = (ldmc_conv_geom){.N = (int)x->shape[0],
                           .H = (int)x->shape[1],
                           .W = (int)x->shape[2],
                           .C = (int)x->shape[3],
                           .O = (int)x->shape[3],
                           .kh = kernel,
                           .kw = kernel,
                           .stride = stride,
                           .pad_top = padding,
                           .pad_bottom = padding,
                           .pad_left = padding,
                           .pad_right = padding};
    OP_CHECK(ldmc_conv_geom_finish(&a.g) == 0, name, x,
             "a %dx%d window with stride %d and padding %d does not fit", kernel, kernel, stride,
             padding);
    ldmc_tensor *y = NEW(ctx, a.g.N, a.g.Ho, a.g.Wo, a.g.C);
    COMPUTE(ctx) {
        if (ON_GPU(x) && is_max)
            GPU(ldmc_cuda_max_pool2d_forward(BF(y), BF(x), &a.g));
        else if (ON_GPU(x))
            GPU(ldmc_cuda_avg_pool2d_forward(BF(y), BF(x), &a.g, count_include_pad));
        else if (is_max)
            max_pool2d_forward_f32(OUT(y), DATA(x), &a.g);
        else
            avg_pool2d_forward_f32(OUT(y), DATA(x), &a.g, count_include_pad);
    }
    ldmc_node *node = RECORD(ctx, is_max ? &max_pool_op : &avg_pool_op, y, x);
    if (node) *(pool_args *)ldmc_node_args(ctx, node, sizeof a) = a;
    return y;
}

ldmc_tensor *ldmc_avg_pool2d(ldmc_ctx *ctx, ldmc_tensor *x, int kernel, int stride, int padding,
                             bool count_include_pad) {
    return pool(ctx, x, kernel, stride, padding, false, count_include_pad);
}

ldmc_tensor *ldmc_max_pool2d(ldmc_ctx *ctx, ldmc_tensor *x, int kernel, int stride, int padding) {
    return pool(ctx, x, kernel, stride, padding, true, false);
}
