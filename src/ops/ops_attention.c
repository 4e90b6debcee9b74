// Multi-head attention op (see ops.h). Kernel: src/ops/cpu/attention.inc.
// Tested by tests/test_ops.c and tests/test_gradcheck.c.
#include <math.h>

#include "ops/op_util.h"

typedef struct attention_args {
    int B, Nq, Nk, H, D;
    bool causal;
    float *lse; // (B, H, Nq), saved by forward
} attention_args;

static void attention_backward(ldmc_ctx *ctx, ldmc_node *node) {
    const attention_args *a = node->args;
    ldmc_tensor *q = node->in[0], *k = node->in[1], *v = node->in[2], *o = node->out[0];
    const double scale = 1.0 / sqrt((double)a->D);
    if (ON_GPU(q))
        GPU(ldmc_cuda_attention_backward(
            GRAD_ANY(ctx, q, 0), GRAD_ANY(ctx, k, 1), GRAD_ANY(ctx, v, 2), DOUT_ANY(o), BF(q),
            BF(k), BF(v), BF(o), a->lse, a->B, a->Nq, a->Nk, a->H, a->D, (float)scale, a->causal));
    else
        attention_backward_f32(ldmc_grad(ctx, q), ldmc_grad(ctx, k), ldmc_grad(ctx, v),
                               ldmc_grad_beta(ctx, 0), ldmc_grad_beta(ctx, 1),
                               ldmc_grad_beta(ctx, 2), DOUT(o), DATA(q), DATA(k), DATA(v), DATA(o),
                               a->lse, a->B, a->Nq, a->Nk, a->H, a->D, scale, a->causal);
}

// It writes q's, k's and v's gradients (on the GPU, bf16 ones where the tape says), and reads
// its output's only rounded to bf16 on the GPU.
static const ldmc_op_info attention_op = {"attention", attention_backward,
                                          LDMC_READS_BF16(7, 1, 7, 7, true), NULL};

static ldmc_tensor *attention(ldmc_ctx *ctx, ldmc_tensor *q, ldmc_tensor *k, ldmc_tensor *v,
                              int heads, bool causal) {
    OP_CHECK(q->ndim == 3, "attention", q, "q must be (B, Nq, C)");
    int64_t C = q->shape[2];
    OP_CHECK(heads > 0 && C % heads == 0, "attention", q, "C must be divisible by %d heads", heads);
    OP_CHECK(k->ndim == 3 && k->shape[0] == q->shape[0] && k->shape[2] == C, "attention", k,
             "k must be (B, Nk, C) with B = %lld and C = %lld", (long long)q->shape[0],
             (long long)C);
    OP_CHECK(ldmc_same_shape(k, v), "attention", v, "v must have k's shape");
    attention_args a = {.B = (int)q->shape[0],
                        .Nq = (int)q->shape[1],
                        .Nk = (int)k->shape[1],
                        .H = heads,
                        .D = (int)(C / heads),
                        .causal = causal};
    OP_CHECK(a.Nk > 0, "attention", k, "there must be at least one key");
    OP_CHECK(!causal || a.Nk == a.Nq, "attention", k,
             "causal attention is self-attention: %d keys for %d queries", a.Nk, a.Nq);
    a.lse = ldmc_scratch(ctx, (size_t)a.B * a.H * a.Nq * sizeof(float));
    ldmc_tensor *o = ldmc_new_like(ctx, q);
    const double scale = 1.0 / sqrt((double)a.D);
    ctx->flops += 4.0 * a.B * a.H * (double)a.Nq * a.Nk * a.D; // Q K^T and P V (masked too)
    COMPUTE(ctx) {
        if (ON_GPU(q))
            GPU(ldmc_cuda_attention_forward(BF(o), a.lse, BF(q), BF(k), BF(v), a.B, a.Nq, a.Nk, a.H,
                                            a.D, (float)scale, causal));
        else
            attention_forward_f32(OUT(o), a.lse, DATA(q), DATA(k), DATA(v), a.B, a.Nq, a.Nk, a.H,
                                  a.D, scale, causal);
    }
    ldmc_node *node = RECORD(ctx, &attention_op, o, q, k, v);
    if (node) {
        *(attention_args *)ldmc_node_args(ctx, node, sizeof a) = a;
        // dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q (the recomputed scores not counted)
        node->backward_flops = 8.0 * a.B * a.H * (double)a.Nq * a.Nk * a.D;
    }
    return o;
}

ldmc_tensor *ldmc_attention(ldmc_ctx *ctx, ldmc_tensor *q, ldmc_tensor *k, ldmc_tensor *v,
                            int heads) {
    return attention(ctx, q, k, v, heads, false);
}

ldmc_tensor *ldmc_causal_attention(ldmc_ctx *ctx, ldmc_tensor *q, ldmc_tensor *k, ldmc_tensor *v,
                                   int heads) {
    return attention(ctx, q, k, v, heads, true);
}
