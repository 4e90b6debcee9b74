// Group norm and layer norm ops (see ops.h). Kernels: src/ops/cpu/norm.inc.
// Tested by tests/test_ops.c and tests/test_gradcheck.c.
#include "ops/op_util.h"

typedef struct norm_args {
    int N, P, C, G;     // group norm: (N, P, C), G groups; layer norm: M = N rows of C, G = 1
    float *mean, *rstd; // saved statistics: (N, G) or (M)
    double eps;
} norm_args;

// y (and the statistics) from x; `again` reruns it bit for bit (the same statistics rewritten).
static void group_norm_compute(ldmc_tensor *y, const norm_args *a, const ldmc_tensor *x,
                               const ldmc_tensor *gamma, const ldmc_tensor *beta) {
    if (ON_GPU(x))
        GPU(ldmc_cuda_group_norm_forward(BF(y), a->mean, a->rstd, BF(x), BF(gamma), BF(beta), a->N,
                                         a->P, a->C, a->G, (float)a->eps));
    else
        group_norm_forward_f32(OUT(y), a->mean, a->rstd, DATA(x), DATA(gamma), DATA(beta), a->N,
                               a->P, a->C, a->G, a->eps);
}

static void layer_norm_compute(ldmc_tensor *y, const norm_args *a, const ldmc_tensor *x,
                               const ldmc_tensor *gamma, const ldmc_tensor *beta) {
    if (ON_GPU(x))
        GPU(ldmc_cuda_layer_norm_forward(BF(y), a->mean, a->rstd, BF(x), BF(gamma), BF(beta), a->N,
                                         a->C, (float)a->eps));
    else
        layer_norm_forward_f32(OUT(y), a->mean, a->rstd, DATA(x), DATA(gamma), DATA(beta), a->N,
                               a->C, a->eps);
}

static void group_norm_again(ldmc_ctx *ctx, ldmc_node *node) {
    (void)ctx;
    group_norm_compute(node->out[0], node->args, node->in[0], node->in[1], node->in[2]);
}

static void layer_norm_again(ldmc_ctx *ctx, ldmc_node *node) {
    (void)ctx;
    layer_norm_compute(node->out[0], node->args, node->in[0], node->in[1], node->in[2]);
}

static void group_norm_backward(ldmc_ctx *ctx, ldmc_node *node) {
    const norm_args *a = node->args;
    ldmc_tensor *x = node->in[0], *gamma = node->in[1], *beta = node->in[2];
    if (ON_GPU(x))
        GPU(ldmc_cuda_group_norm_backward(
            ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), ldmc_grad(ctx, gamma), ldmc_grad(ctx, beta),
            DOUT(node->out[0]), BF(x), a->mean, a->rstd, BF(gamma), a->N, a->P, a->C, a->G));
    else
        group_norm_backward_f32(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), ldmc_grad(ctx, gamma),
                                ldmc_grad(ctx, beta), DOUT(node->out[0]), DATA(x), a->mean, a->rstd,
                                DATA(gamma), a->N, a->P, a->C, a->G);
}

static const ldmc_op_info group_norm_op = {"group_norm", group_norm_backward,
                                           LDMC_READS_WRITES(3, 0, 1), group_norm_again};

static void check_affine(const char *op, const ldmc_tensor *p, int64_t C) {
    if (p)
        OP_CHECK(ldmc_numel(p) == C, op, p, "the affine parameter must have C = %lld values",
                 (long long)C);
}

ldmc_tensor *ldmc_group_norm(ldmc_ctx *ctx, ldmc_tensor *x, ldmc_tensor *gamma, ldmc_tensor *beta,
                             int groups, double eps) {
    OP_CHECK(x->ndim >= 2, "group_norm", x, "the input must be (N, ..., C)");
    int64_t C = last_dim(x);
    OP_CHECK(groups > 0 && C % groups == 0, "group_norm", x, "C must be divisible by %d groups",
             groups);
    check_affine("group_norm", gamma, C);
    check_affine("group_norm", beta, C);
    norm_args a = {.N = (int)x->shape[0], .C = (int)C, .G = groups, .eps = eps};
    a.P = (int)(ldmc_numel(x) / a.N / C);
    a.mean = ldmc_scratch(ctx, (size_t)a.N * a.G * sizeof(float));
    a.rstd = ldmc_scratch(ctx, (size_t)a.N * a.G * sizeof(float));
    ldmc_tensor *y = ldmc_new_like(ctx, x);
    COMPUTE(ctx) group_norm_compute(y, &a, x, gamma, beta);
    ldmc_node *node = RECORD(ctx, &group_norm_op, y, x, gamma, beta);
    if (node) *(norm_args *)ldmc_node_args(ctx, node, sizeof a) = a;
    return y;
}

static void layer_norm_backward(ldmc_ctx *ctx, ldmc_node *node) {
    const norm_args *a = node->args;
    ldmc_tensor *x = node->in[0], *gamma = node->in[1], *beta = node->in[2];
    if (ON_GPU(x))
        GPU(ldmc_cuda_layer_norm_backward(
            ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), ldmc_grad(ctx, gamma), ldmc_grad(ctx, beta),
            DOUT(node->out[0]), BF(x), a->mean, a->rstd, BF(gamma), a->N, a->C));
    else
        layer_norm_backward_f32(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), ldmc_grad(ctx, gamma),
                                ldmc_grad(ctx, beta), DOUT(node->out[0]), DATA(x), a->mean, a->rstd,
                                DATA(gamma), a->N, a->C);
}

static const ldmc_op_info layer_norm_op = {"layer_norm", layer_norm_backward,
                                           LDMC_READS_WRITES(3, 0, 1), layer_norm_again};

ldmc_tensor *ldmc_layer_norm(ldmc_ctx *ctx, ldmc_tensor *x, ldmc_tensor *gamma, ldmc_tensor *beta,
                             double eps) {
    OP_CHECK(x->ndim >= 1, "layer_norm", x, "the input must be (..., C)");
    int64_t C = last_dim(x);
    check_affine("layer_norm", gamma, C);
    check_affine("layer_norm", beta, C);
    norm_args a = {.N = (int)(ldmc_numel(x) / C), .C = (int)C, .G = 1, .P = 1, .eps = eps};
    a.mean = ldmc_scratch(ctx, (size_t)a.N * sizeof(float));
    a.rstd = ldmc_scratch(ctx, (size_t)a.N * sizeof(float));
    ldmc_tensor *y = ldmc_new_like(ctx, x);
    COMPUTE(ctx) layer_norm_compute(y, &a, x, gamma, beta);
    ldmc_node *node = RECORD(ctx, &layer_norm_op, y, x, gamma, beta);
    if (node) *(norm_args *)ldmc_node_args(ctx, node, sizeof a) = a;
    return y;
}
