// Timestep embedding and losses (see ops.h). Kernels: src/ops/cpu/misc.inc.
// Tested by tests/test_ops.c and tests/test_gradcheck.c.
#include <string.h>

#include "ops/op_util.h"

typedef struct embedding_args {
    int dim;
    double max_period;
} embedding_args;

static void timestep_embedding_backward(ldmc_ctx *ctx, ldmc_node *node) {
    const embedding_args *a = node->args;
    ldmc_tensor *t = node->in[0];
    if (ON_GPU(t))
        GPU(ldmc_cuda_timestep_embedding_backward(ldmc_grad(ctx, t), DOUT(node->out[0]), DF(t),
                                                  (int)ldmc_numel(t), a->dim,
                                                  (float)a->max_period));
    else
        timestep_embedding_backward_f32(ldmc_grad(ctx, t), DOUT(node->out[0]), DATA(t),
                                        (int)ldmc_numel(t), a->dim, a->max_period);
}

static const ldmc_op_info timestep_embedding_op = {
    "timestep_embedding", timestep_embedding_backward, LDMC_READS(1, 0), NULL};

ldmc_tensor *ldmc_timestep_embedding(ldmc_ctx *ctx, ldmc_tensor *t, int dim, double max_period) {
    OP_CHECK(t->ndim == 1, "timestep_embedding", t, "the timesteps must be (B), as f32");
    OP_CHECK(dim >= 2 && max_period > 0, "timestep_embedding", t,
             "dim %d must be >= 2 and max_period %g positive", dim, max_period);
    ldmc_tensor *y = NEW(ctx, t->shape[0], dim);
    COMPUTE(ctx) {
        if (ON_GPU(t)) // timesteps stay f32 on the GPU: bf16 cannot hold 999
            GPU(ldmc_cuda_timestep_embedding_forward(BF(y), DF(t), (int)t->shape[0], dim,
                                                     (float)max_period));
        else
            timestep_embedding_forward_f32(OUT(y), DATA(t), (int)t->shape[0], dim, max_period);
    }
    ldmc_node *node = RECORD(ctx, &timestep_embedding_op, y, t);
    if (node)
        *(embedding_args *)ldmc_node_args(ctx, node, sizeof(embedding_args)) =
            (embedding_args){dim, max_period};
    return y;
}

// Loss operands on the GPU: bf16 (a model's output) or f32 (a target kept in full precision).
static void loss_operands(const ldmc_tensor *a, const ldmc_tensor *b, const void **pa, bool *fa,
                          const void **pb, bool *fb) {
    *fa = a->dtype == LDMC_F32, *fb = b->dtype == LDMC_F32;
    *pa = *fa ? (const void *)DF(a) : (const void *)BF(a);
    *pb = *fb ? (const void *)DF(b) : (const void *)BF(b);
}

static void mse_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *a = node->in[0], *b = node->in[1];
    if (ON_GPU(a)) {
        bool fa, fb;
        const void *pa, *pb;
        loss_operands(a, b, &pa, &fa, &pb, &fb);
        GPU(ldmc_cuda_mse_backward(ldmc_grad(ctx, a), ldmc_grad(ctx, b), ldmc_grad_beta(ctx, 0),
                                   ldmc_grad_beta(ctx, 1), DOUT(node->out[0]), pa, fa, pb, fb,
                                   ldmc_numel(a)));
        return;
    }
    mse_backward_f32(ldmc_grad(ctx, a), ldmc_grad(ctx, b), ldmc_grad_beta(ctx, 0),
                     ldmc_grad_beta(ctx, 1), DOUT(node->out[0])[0], DATA(a), DATA(b),
                     ldmc_numel(a));
}

static void l1_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *a = node->in[0], *b = node->in[1];
    if (ON_GPU(a)) {
        bool fa, fb;
        const void *pa, *pb;
        loss_operands(a, b, &pa, &fa, &pb, &fb);
        GPU(ldmc_cuda_l1_backward(ldmc_grad(ctx, a), ldmc_grad(ctx, b), ldmc_grad_beta(ctx, 0),
                                  ldmc_grad_beta(ctx, 1), DOUT(node->out[0]), pa, fa, pb, fb,
                                  ldmc_numel(a)));
        return;
    }
    l1_backward_f32(ldmc_grad(ctx, a), ldmc_grad(ctx, b), ldmc_grad_beta(ctx, 0),
                    ldmc_grad_beta(ctx, 1), DOUT(node->out[0])[0], DATA(a), DATA(b), ldmc_numel(a));
}

// The losses write their operands' gradients when fresh (the model output's: no zeroing pass).
static const ldmc_op_info mse_op = {"mse_loss", mse_backward, LDMC_READS_WRITES(3, 0, 3), NULL};
static const ldmc_op_info l1_op = {"l1_loss", l1_backward, LDMC_READS_WRITES(3, 0, 3), NULL};

static ldmc_tensor *loss(ldmc_ctx *ctx, ldmc_tensor *a, ldmc_tensor *b, bool l1) {
    const char *name = l1 ? "l1_loss" : "mse_loss";
    char shape[96];
    OP_CHECK(ldmc_same_shape(a, b), name, b, "both operands must have the shape %s",
             ldmc_shape_str(a, shape, sizeof shape));
    ldmc_tensor *y = ldmc_new(ctx, LDMC_F32, 0, NULL);
    int64_t n = ldmc_numel(a);
    COMPUTE(ctx) {
        if (ON_GPU(a)) {
            bool fa, fb;
            const void *pa, *pb;
            loss_operands(a, b, &pa, &fa, &pb, &fb);
            if (l1)
                GPU(ldmc_cuda_l1_forward(DF(y), pa, fa, pb, fb, n));
            else
                GPU(ldmc_cuda_mse_forward(DF(y), pa, fa, pb, fb, n));
        } else {
            *OUT(y) = (float)(l1 ? l1_forward_f32(DATA(a), DATA(b), n)
                                 : mse_forward_f32(DATA(a), DATA(b), n));
        }
    }
    RECORD(ctx, l1 ? &l1_op : &mse_op, y, a, b);
    return y;
}

ldmc_tensor *ldmc_mse_loss(ldmc_ctx *ctx, ldmc_tensor *a, ldmc_tensor *b) {
    return loss(ctx, a, b, false);
}

ldmc_tensor *ldmc_l1_loss(ldmc_ctx *ctx, ldmc_tensor *a, ldmc_tensor *b) {
    return loss(ctx, a, b, true);
}

// Per-sample constants of the weighted loss and of row scaling, kept for backward.
// On the GPU, w is a copy in GPU memory.
typedef struct rows_args {
    float *w;
} rows_args;

static float *copy_rows(ldmc_ctx *ctx, const ldmc_tensor *x, const float *w, int64_t B) {
    if (ON_GPU(x)) {
        float *copy = ldmc_scratch(ctx, (size_t)(B ? B : 1) * sizeof *copy);
        if (!ctx->dry_run) GPU(ldmc_cuda_to_device(copy, w, (size_t)B * sizeof *copy));
        return copy;
    }
    float *copy = ldmc_arena_alloc(&ctx->meta, (size_t)(B ? B : 1) * sizeof *copy);
    memcpy(copy, w, (size_t)B * sizeof *copy);
    return copy;
}

static void mse_weighted_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *a = node->in[0], *b = node->in[1];
    int64_t B = a->shape[0];
    const float *w = ((const rows_args *)node->args)->w;
    if (ON_GPU(a)) {
        bool fa, fb;
        const void *pa, *pb;
        loss_operands(a, b, &pa, &fa, &pb, &fb);
        GPU(ldmc_cuda_mse_rows_backward(
            ldmc_grad(ctx, a), ldmc_grad(ctx, b), ldmc_grad_beta(ctx, 0), ldmc_grad_beta(ctx, 1),
            DOUT(node->out[0]), pa, fa, pb, fb, w, B, ldmc_numel(a) / B));
        return;
    }
    mse_rows_backward_f32(ldmc_grad(ctx, a), ldmc_grad(ctx, b), ldmc_grad_beta(ctx, 0),
                          ldmc_grad_beta(ctx, 1), DOUT(node->out[0])[0], DATA(a), DATA(b), w, B,
                          ldmc_numel(a) / B);
}

static const ldmc_op_info mse_weighted_op = {"mse_loss_weighted", mse_weighted_backward,
                                             LDMC_READS_WRITES(3, 0, 3), NULL};

ldmc_tensor *ldmc_mse_loss_weighted(ldmc_ctx *ctx, ldmc_tensor *a, ldmc_tensor *b,
                                    const float *weights) {
    char shape[96];
    OP_CHECK(ldmc_same_shape(a, b) && a->ndim >= 1 && a->shape[0] > 0, "mse_loss_weighted", b,
             "both operands must have the shape %s, with samples first",
             ldmc_shape_str(a, shape, sizeof shape));
    int64_t B = a->shape[0];
    float *w = copy_rows(ctx, a, weights, B);
    ldmc_tensor *y = ldmc_new(ctx, LDMC_F32, 0, NULL);
    COMPUTE(ctx) {
        if (ON_GPU(a)) {
            bool fa, fb;
            const void *pa, *pb;
            loss_operands(a, b, &pa, &fa, &pb, &fb);
            GPU(ldmc_cuda_mse_rows_forward(DF(y), pa, fa, pb, fb, w, B, ldmc_numel(a) / B));
        } else {
            *OUT(y) = (float)mse_rows_forward_f32(DATA(a), DATA(b), w, B, ldmc_numel(a) / B);
        }
    }
    ldmc_node *node = RECORD(ctx, &mse_weighted_op, y, a, b);
    if (node) ((rows_args *)ldmc_node_args(ctx, node, sizeof(rows_args)))->w = w;
    return y;
}

static void scale_rows_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *x = node->in[0];
    int64_t B = x->shape[0];
    const float *w = ((const rows_args *)node->args)->w;
    if (ON_GPU(x))
        GPU(ldmc_cuda_scale_rows_backward(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0),
                                          DOUT(node->out[0]), w, B, ldmc_numel(x) / B));
    else
        scale_rows_backward_f32(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0), DOUT(node->out[0]), w, B,
                                ldmc_numel(x) / B);
}

static const ldmc_op_info scale_rows_op = {"scale_rows", scale_rows_backward,
                                           LDMC_READS_WRITES(0, 0, 1), NULL};

ldmc_tensor *ldmc_scale_rows(ldmc_ctx *ctx, ldmc_tensor *x, const float *s) {
    OP_CHECK(x->ndim >= 1, "scale_rows", x, "the input must be (B, ...)");
    int64_t B = x->shape[0];
    float *w = copy_rows(ctx, x, s, B);
    ldmc_tensor *y = ldmc_new_like(ctx, x);
    COMPUTE(ctx) {
        if (ON_GPU(x))
            GPU(ldmc_cuda_scale_rows_forward(BF(y), BF(x), w, B, B ? ldmc_numel(x) / B : 0));
        else
            scale_rows_forward_f32(OUT(y), DATA(x), w, B, B ? ldmc_numel(x) / B : 0);
    }
    ldmc_node *node = RECORD(ctx, &scale_rows_op, y, x);
    if (node) ((rows_args *)ldmc_node_args(ctx, node, sizeof(rows_args)))->w = w;
    return y;
}
