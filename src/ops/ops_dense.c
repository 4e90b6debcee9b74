// Linear, batched matmul and conv2d ops (see ops.h). Kernels: src/ops/cpu/dense.inc, conv2d.inc.
// Tested by tests/test_ops.c and tests/test_gradcheck.c.
#include "ops/op_util.h"

// ---- linear ---------------------------------------------------------------------------------

// 1 when backward computes x's gradient (a product as large as the forward's), else 0.
static int needs(const ldmc_tensor *x) { return x && (x->base ? x->base : x)->requires_grad; }

static double conv_flops(const ldmc_conv_geom *g) {
    return 2.0 * g->N * g->Ho * g->Wo * (double)g->O * g->kh * g->kw * g->C;
}

static void linear_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *x = node->in[0], *w = node->in[1], *b = node->in[2];
    int in = (int)w->shape[1], out = (int)w->shape[0];
    if (ON_GPU(x))
        GPU(ldmc_cuda_linear_backward(GRAD_ANY(ctx, x, 0), ldmc_grad(ctx, w), ldmc_grad(ctx, b),
                                      DOUT_ANY(node->out[0]), BF(x), BF(w), ldmc_numel(x) / in, in,
                                      out));
    else
        linear_backward_f32(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), ldmc_grad(ctx, w),
                            ldmc_grad(ctx, b), DOUT(node->out[0]), DATA(x), DATA(w),
                            (int)(ldmc_numel(x) / in), in, out);
}

static void linear_compute(ldmc_tensor *y, ldmc_tensor *x, ldmc_tensor *w, ldmc_tensor *b) {
    int in = (int)w->shape[1], out = (int)w->shape[0];
    int64_t M = ldmc_numel(x) / in;
    if (ON_GPU(x))
        GPU(ldmc_cuda_linear_forward(BF(y), BF(x), BF(w), BF(b), M, in, out));
    else
        linear_forward_f32(OUT(y), DATA(x), DATA(w), DATA(b), (int)M, in, out);
}

static void linear_again(ldmc_ctx *ctx, ldmc_node *node) {
    (void)ctx;
    linear_compute(node->out[0], node->in[0], node->in[1], node->in[2]);
}

// On the GPU both its output's gradient and its input's may be bf16: its products read dy
// rounded, and write dx once.
static const ldmc_op_info linear_op = {"linear", linear_backward, LDMC_READS_BF16(3, 0, 1, 1, true),
                                       linear_again};

ldmc_tensor *ldmc_linear(ldmc_ctx *ctx, ldmc_tensor *x, ldmc_tensor *w, ldmc_tensor *b) {
    OP_CHECK(w->ndim == 2, "linear", w, "the weight must be (out, in)");
    OP_CHECK(x->ndim >= 1 && last_dim(x) == w->shape[1], "linear", x,
             "the last dimension must be the weight's in = %lld", (long long)w->shape[1]);
    if (b)
        OP_CHECK(ldmc_numel(b) == w->shape[0], "linear", b, "the bias must have out = %lld values",
                 (long long)w->shape[0]);
    int64_t shape[LDMC_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++)
        shape[i] = x->shape[i];
    shape[x->ndim - 1] = w->shape[0];
    ldmc_tensor *y = ldmc_new(ctx, ctx->act_dtype, x->ndim, shape);
    int64_t M = ldmc_numel(x) / w->shape[1];
    double flops = 2.0 * (double)M * (double)w->shape[1] * (double)w->shape[0];
    ctx->flops += flops;
    COMPUTE(ctx) { linear_compute(y, x, w, b); }
    ldmc_node *node = RECORD(ctx, &linear_op, y, x, w, b);
    if (node) {
        node->backward_flops = flops * (needs(x) + needs(w));
        node->again_flops = flops; // a product: made again only where a model asks
    }
    return y;
}

// ---- matmul ---------------------------------------------------------------------------------

typedef struct matmul_args {
    int B, M, N, K;
    bool trans_a, trans_b;
} matmul_args;

static void matmul_backward(ldmc_ctx *ctx, ldmc_node *node) {
    const matmul_args *a = node->args;
    ldmc_tensor *x = node->in[0], *y = node->in[1];
    if (ON_GPU(x))
        GPU(ldmc_cuda_bmm_backward(ldmc_grad(ctx, x), ldmc_grad(ctx, y), ldmc_grad_beta(ctx, 0),
                                   ldmc_grad_beta(ctx, 1), DOUT(node->out[0]), BF(x), BF(y), a->B,
                                   a->M, a->N, a->K, a->trans_a, a->trans_b));
    else
        bmm_backward_f32(ldmc_grad(ctx, x), ldmc_grad(ctx, y), ldmc_grad_beta(ctx, 0),
                         ldmc_grad_beta(ctx, 1), DOUT(node->out[0]), DATA(x), DATA(y), a->B, a->M,
                         a->N, a->K, a->trans_a, a->trans_b);
}

// Each product writes its operand's gradient when fresh.
static const ldmc_op_info matmul_op = {"matmul", matmul_backward, LDMC_READS_WRITES(3, 0, 3), NULL};

ldmc_tensor *ldmc_matmul(ldmc_ctx *ctx, ldmc_tensor *a, ldmc_tensor *b, bool trans_a,
                         bool trans_b) {
    OP_CHECK(a->ndim == 3, "matmul", a, "a must be (B, M, K) or (B, K, M)");
    OP_CHECK(b->ndim == 3 && b->shape[0] == a->shape[0], "matmul", b,
             "b must be (B, K, N) or (B, N, K) with B = %lld", (long long)a->shape[0]);
    matmul_args args = {.B = (int)a->shape[0], .trans_a = trans_a, .trans_b = trans_b};
    args.M = (int)a->shape[trans_a ? 2 : 1];
    args.K = (int)a->shape[trans_a ? 1 : 2];
    args.N = (int)b->shape[trans_b ? 1 : 2];
    OP_CHECK(b->shape[trans_b ? 2 : 1] == args.K, "matmul", b, "the inner dimension must be K = %d",
             args.K);
    ldmc_tensor *c = NEW(ctx, args.B, args.M, args.N);
    ctx->flops += 2.0 * args.B * args.M * args.N * (double)args.K;
    COMPUTE(ctx) {
        if (ON_GPU(a))
            GPU(ldmc_cuda_bmm_forward(BF(c), BF(a), BF(b), args.B, args.M, args.N, args.K, trans_a,
                                      trans_b));
        else
            bmm_forward_f32(OUT(c), DATA(a), DATA(b), args.B, args.M, args.N, args.K, trans_a,
                            trans_b);
    }
    ldmc_node *node = RECORD(ctx, &matmul_op, c, a, b);
    if (node) {
        *(matmul_args *)ldmc_node_args(ctx, node, sizeof args) = args;
        node->backward_flops =
            2.0 * args.B * args.M * args.N * (double)args.K * (needs(a) + needs(b));
    }
    return c;
}

// ---- conv2d ---------------------------------------------------------------------------------

static void conv2d_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *x = node->in[0], *w = node->in[1], *b = node->in[2];
    if (ON_GPU(x))
        GPU(ldmc_cuda_conv2d_backward(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), ldmc_grad(ctx, w),
                                      ldmc_grad(ctx, b), DOUT(node->out[0]), BF(x), BF(w),
                                      node->args));
    else
        conv2d_backward_f32(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), ldmc_grad(ctx, w),
                            ldmc_grad(ctx, b), DOUT(node->out[0]), DATA(x), DATA(w), node->args);
}

static const ldmc_op_info conv2d_op = {"conv2d", conv2d_backward, LDMC_READS_WRITES(3, 0, 1), NULL};

ldmc_tensor *ldmc_conv2d_padded(ldmc_ctx *ctx, ldmc_tensor *x, ldmc_tensor *w, ldmc_tensor *b,
                                int stride, const int pad[4]) {
    OP_CHECK(w->ndim == 4, "conv2d", w, "the weight must be (O, kH, kW, C)");
    OP_CHECK(x->ndim == 4 && x->shape[3] == w->shape[3], "conv2d", x,
             "the input must be (N, H, W, C) with C = %lld, the weight's last dimension",
             (long long)w->shape[3]);
    if (b)
        OP_CHECK(ldmc_numel(b) == w->shape[0], "conv2d", b, "the bias must have O = %lld values",
                 (long long)w->shape[0]);
    ldmc_conv_geom g = {
        .N = (int)x->shape[0],
        .H = (int)x->shape[1],
        .W = (int)x->shape[2],
        .C = (int)x->shape[3],
        .O = (int)w->shape[0],
        .kh = (int)w->shape[1],
        .kw = (int)w->shape[2],
        .stride = stride,
        .pad_top = pad[0],
        .pad_bottom = pad[1],
        .pad_left = pad[2],
        .pad_right = pad[3],
    };
    OP_CHECK(ldmc_conv_geom_finish(&g) == 0, "conv2d", x,
             "a %dx%d window with stride %d and padding (%d, %d, %d, %d) does not fit", g.kh, g.kw,
             stride, pad[0], pad[1], pad[2], pad[3]);
    ldmc_tensor *y = NEW(ctx, g.N, g.Ho, g.Wo, g.O);
    ctx->flops += conv_flops(&g);
    COMPUTE(ctx) {
        if (ON_GPU(x))
            GPU(ldmc_cuda_conv2d_forward(BF(y), BF(x), BF(w), BF(b), &g));
        else
            conv2d_forward_f32(OUT(y), DATA(x), DATA(w), DATA(b), &g);
    }
    ldmc_node *node = RECORD(ctx, &conv2d_op, y, x, w, b);
    if (node) {
        *(ldmc_conv_geom *)ldmc_node_args(ctx, node, sizeof g) = g;
        node->backward_flops = conv_flops(&g) * (needs(x) + needs(w));
    }
    return y;
}

ldmc_tensor *ldmc_conv2d(ldmc_ctx *ctx, ldmc_tensor *x, ldmc_tensor *w, ldmc_tensor *b, int stride,
                         int padding) {
    return ldmc_conv2d_padded(ctx, x, w, b, stride,
                              (const int[4]){padding, padding, padding, padding});
}
