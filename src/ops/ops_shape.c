// Concatenation and split along channels, nearest 2x upsampling (see ops.h).
// Kernels: src/ops/cpu/elementwise.inc. Tested by tests/test_ops.c and tests/test_gradcheck.c.
#include <string.h>

#include "ops/op_util.h"

// Copies (forward, bf16 or f32 by device) or adds (backward, f32 gradients) columns.
static void copy_cols(const ldmc_tensor *where, void *dst, int dst_C, int dst_off, const void *src,
                      int src_C, int src_off, int64_t M, int C) {
    if (ON_GPU(where))
        GPU(ldmc_cuda_copy_columns(dst, dst_C, dst_off, src, src_C, src_off, M, C));
    else
        copy_columns_f32(dst, dst_C, dst_off, src, src_C, src_off, M, C, false);
}

// beta 0: the columns of a fresh gradient are written (ldmc_grad_beta).
static void add_cols(const ldmc_tensor *where, float *dst, float beta, int dst_C, int dst_off,
                     const float *src, int src_C, int src_off, int64_t M, int C) {
    if (ON_GPU(where))
        GPU(ldmc_cuda_add_columns(dst, beta, dst_C, dst_off, src, src_C, src_off, M, C));
    else
        copy_columns_f32(dst, dst_C, dst_off, src, src_C, src_off, M, C, beta != 0);
}

// The data pointer for a copy kernel, after checking the tensor is where `where` is.
static void *cols_data(const ldmc_tensor *where, const ldmc_tensor *t) {
    return ON_GPU(where) ? (void *)BF(t) : (void *)DATA(t);
}

// Each input or output piece i occupies channels [offset_i, offset_i + C_i) of the whole.
static void concat_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *y = node->out[0];
    int total = (int)last_dim(y), off = 0;
    int64_t M = ldmc_numel(y) / total;
    for (int i = 0; i < node->n_in; i++) {
        int C = (int)last_dim(node->in[i]);
        float *dx = ldmc_grad(ctx, node->in[i]);
        if (dx) add_cols(y, dx, ldmc_grad_beta(ctx, i), C, 0, DOUT(y), total, off, M, C);
        off += C;
    }
}

// Each input's gradient is its columns of dy, written when fresh (inputs past 31 add).
static const ldmc_op_info concat_op = {"concat", concat_backward,
                                       LDMC_READS_WRITES(0, 0, 0xFFFFFFFFu), NULL};

ldmc_tensor *ldmc_concat(ldmc_ctx *ctx, ldmc_tensor **xs, int n) {
    LDMC_CHECK(n >= 1, "concat: needs at least one tensor");
    int64_t shape[LDMC_MAX_DIMS];
    const ldmc_tensor *first = xs[0];
    for (int d = 0; d < first->ndim; d++)
        shape[d] = first->shape[d];
    int64_t total = 0;
    char expect[96];
    for (int i = 0; i < n; i++) {
        bool ok = xs[i]->ndim == first->ndim && xs[i]->ndim >= 1;
        for (int d = 0; ok && d < first->ndim - 1; d++)
            ok = xs[i]->shape[d] == first->shape[d];
        OP_CHECK(ok, "concat", xs[i], "all but the last dimension must match %s",
                 ldmc_shape_str(first, expect, sizeof expect));
        total += last_dim(xs[i]);
    }
    shape[first->ndim - 1] = total;
    ldmc_tensor *y = ldmc_new(ctx, ctx->act_dtype, first->ndim, shape);
    int64_t M = total ? ldmc_numel(y) / total : 0;
    int off = 0;
    for (int i = 0; i < n; i++) {
        int C = (int)last_dim(xs[i]);
        COMPUTE(ctx)
        copy_cols(y, cols_data(y, y), (int)total, off, cols_data(y, xs[i]), C, 0, M, C);
        off += C;
    }
    ldmc_record(ctx, &concat_op, xs, n, &y, 1);
    return y;
}

// Each piece's gradient goes to its columns of a fresh dx, written; pieces nobody used have no
// gradient, and where one of them leaves columns unwritten dx is zeroed first.
static void split_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *x = node->in[0];
    float *dx = ldmc_grad(ctx, x), beta = ldmc_grad_beta(ctx, 0);
    int total = (int)last_dim(x), off = 0;
    int64_t M = ldmc_numel(x) / total;
    for (int i = 0; i < node->n_out && beta == 0; i++) {
        if (DOUT(node->out[i]) || ldmc_numel(node->out[i]) == 0) continue;
        if (ON_GPU(x))
            GPU(ldmc_cuda_fill_f32(dx, 0.0f, ldmc_numel(x)));
        else
            memset(dx, 0, (size_t)ldmc_numel(x) * sizeof *dx);
        beta = 1;
    }
    for (int i = 0; i < node->n_out; i++) {
        int C = (int)last_dim(node->out[i]);
        const float *dy = DOUT(node->out[i]);
        if (dy) add_cols(x, dx, beta, total, off, dy, C, 0, M, C);
        off += C;
    }
}

static const ldmc_op_info split_op = {"split", split_backward, LDMC_READS_WRITES(0, 0, 1), NULL};

void ldmc_split(ldmc_ctx *ctx, ldmc_tensor *x, const int *sizes, int n, ldmc_tensor **out) {
    OP_CHECK(x->ndim >= 1 && n >= 1, "split", x, "needs a tensor of rank >= 1 and pieces");
    int64_t sum = 0;
    for (int i = 0; i < n; i++) {
        OP_CHECK(sizes[i] >= 0, "split", x, "piece %d has the negative size %d", i, sizes[i]);
        sum += sizes[i];
    }
    OP_CHECK(sum == last_dim(x), "split", x,
             "the %d piece sizes add up to %lld, not the last dimension", n, (long long)sum);
    int64_t shape[LDMC_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++)
        shape[d] = x->shape[d];
    int total = (int)last_dim(x), off = 0;
    int64_t M = total ? ldmc_numel(x) / total : 0;
    for (int i = 0; i < n; i++) {
        shape[x->ndim - 1] = sizes[i];
        out[i] = ldmc_new(ctx, ctx->act_dtype, x->ndim, shape);
        COMPUTE(ctx)
        copy_cols(x, cols_data(x, out[i]), sizes[i], 0, cols_data(x, x), total, off, M, sizes[i]);
        off += sizes[i];
    }
    ldmc_record(ctx, &split_op, &x, 1, out, n);
}

static void upsample_backward(ldmc_ctx *ctx, ldmc_node *node) {
    ldmc_tensor *x = node->in[0];
    int N = (int)x->shape[0], H = (int)x->shape[1], W = (int)x->shape[2], C = (int)x->shape[3];
    if (ON_GPU(x))
        GPU(ldmc_cuda_upsample_nearest2x_backward(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0),
                                                  DOUT(node->out[0]), N, H, W, C));
    else
        upsample_nearest2x_backward_f32(ldmc_grad(ctx, x), ldmc_grad_beta(ctx, 0),
                                        DOUT(node->out[0]), N, H, W, C);
}

static const ldmc_op_info upsample_op = {"upsample_nearest2x", upsample_backward,
                                         LDMC_READS_WRITES(0, 0, 1), NULL};

ldmc_tensor *ldmc_upsample_nearest2x(ldmc_ctx *ctx, ldmc_tensor *x) {
    OP_CHECK(x->ndim == 4, "upsample_nearest2x", x, "the input must be (N, H, W, C)");
    ldmc_tensor *y = NEW(ctx, x->shape[0], 2 * x->shape[1], 2 * x->shape[2], x->shape[3]);
    int N = (int)x->shape[0], H = (int)x->shape[1], W = (int)x->shape[2], C = (int)x->shape[3];
    COMPUTE(ctx) {
        if (ON_GPU(x))
            GPU(ldmc_cuda_upsample_nearest2x_forward(BF(y), BF(x), N, H, W, C));
        else
            upsample_nearest2x_forward_f32(OUT(y), DATA(x), N, H, W, C);
    }
    RECORD(ctx, &upsample_op, y, x);
    return y;
}
