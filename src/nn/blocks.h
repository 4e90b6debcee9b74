// The blocks the models are made of, one implementation each: attention (self or cross, with an
// optional causal mask), the feed-forward (GEGLU, or an MLP with an activation), the pre-norm
// transformer block, and the ResBlock (with or without a time embedding). Every block registers
// its parameters under names its model gives (sgm's UNet, the VAE; the text encoders next), in the
// order the model's official state dict has them; the forwards record the same ops in the same
// order whoever calls them. Tested through the models (tests/test_models.c: the UNet's and the
// VAE's blocks against PyTorch) and tests/test_ops.c (causal attention).
#pragma once
#include <stdbool.h>

#include "nn/nn.h"

// ---- attention
// ------------------------------------------------------------------------------------

// How the projections are stored: linear layers (the UNet's transformers, CLIP), or 1x1
// convolutions over (B, H, W, C) (the VAE's mid attention, whose official weights are convs).
typedef enum nn_projection { NN_PROJECTION_LINEAR, NN_PROJECTION_CONV1X1 } nn_projection;

// The names of the four projections under the block's prefix.
typedef struct nn_attention_names {
    const char *q, *k, *v, *out;
} nn_attention_names;

extern const nn_attention_names nn_attention_names_sgm; // to_q, to_k, to_v, to_out.0
extern const nn_attention_names nn_attention_names_vae; // q, k, v, proj_out

typedef struct nn_attention_options {
    const nn_attention_names *names;
    nn_projection projection;
    int dim;         // the queries' (and the output's) width
    int context_dim; // the keys' and values' source width (dim for self-attention)
    int heads;
    bool qkv_bias; // q, k, v with biases (the VAE's convs, CLIP); the output always has one
    bool causal;   // token i attends to tokens 0..i (self-attention only)
} nn_attention_options;

typedef struct nn_attention {
    nn_projection projection;
    nn_linear q, k, v, out;   // NN_PROJECTION_LINEAR
    nn_conv cq, ck, cv, cout; // NN_PROJECTION_CONV1X1
    int heads;
    bool causal;
} nn_attention;

void nn_attention_init(nn_attention *a, ldmc_params *p, const char *prefix,
                       const nn_attention_options *o);
// x (B, N, dim) with linear projections, or (B, H, W, dim) with 1x1 convolutions; context
// (B, L, context_dim) or NULL for self-attention -> x's shape. Under ctx->recompute_projections,
// q (and a self-attention's k and v) are made again in backward, not kept.
ldmc_tensor *nn_attention_forward(ldmc_ctx *ctx, const ldmc_params *p, const nn_attention *a,
                                  ldmc_tensor *x, ldmc_tensor *context);

// ---- the feed-forward
// -----------------------------------------------------------------------------

typedef enum nn_feed_forward_kind {
    NN_FF_GEGLU,     // in: dim -> 2 hidden, GEGLU, out: hidden -> dim (sgm's FeedForward)
    NN_FF_GELU,      // in: dim -> hidden, exact GELU, out: hidden -> dim
    NN_FF_GELU_TANH, // the same with GELU's tanh approximation
} nn_feed_forward_kind;

typedef struct nn_feed_forward {
    nn_feed_forward_kind kind;
    nn_linear in, out;
} nn_feed_forward;

void nn_feed_forward_init(nn_feed_forward *f, ldmc_params *p, const char *in_name,
                          const char *out_name, nn_feed_forward_kind kind, int dim, int hidden);
// Under ctx->recompute_projections, the first product's output is made again in backward.
ldmc_tensor *nn_feed_forward_forward(ldmc_ctx *ctx, const ldmc_params *p, const nn_feed_forward *f,
                                     ldmc_tensor *x);

// ---- the transformer block
// ------------------------------------------------------------------------

// Pre-norm residual sub-layers: x + self-attention(norm(x)), then, with a context, x +
// cross-attention(norm(x), context), then x + feed-forward(norm(x)).
typedef struct nn_transformer_names {
    const char *self_attention, *cross_attention; // cross NULL: no cross-attention
    const nn_attention_names *attention;
    const char *ff_in, *ff_out;
    const char *norm_self, *norm_cross, *norm_ff;
} nn_transformer_names;

extern const nn_transformer_names nn_transformer_names_sgm; // BasicTransformerBlock

typedef struct nn_transformer_options {
    const nn_transformer_names *names;
    int dim, context_dim, heads; // context_dim 0: no cross-attention
    nn_feed_forward_kind ff;
    int ff_hidden;
    double norm_eps;
    bool causal; // the self-attention's mask
} nn_transformer_options;

typedef struct nn_transformer_block {
    nn_norm norm_self, norm_cross, norm_ff;
    nn_attention self, cross;
    bool has_cross;
    nn_feed_forward ff;
} nn_transformer_block;

// Registers in sgm's order (self-attention, feed-forward, cross-attention, the norms), which is
// its state dict's.
void nn_transformer_block_init(nn_transformer_block *b, ldmc_params *p, const char *prefix,
                               const nn_transformer_options *o);
// h (B, N, dim), context (B, L, context_dim) when the block has cross-attention.
ldmc_tensor *nn_transformer_block_forward(ldmc_ctx *ctx, const ldmc_params *p,
                                          const nn_transformer_block *b, ldmc_tensor *h,
                                          ldmc_tensor *context);

// ---- the ResBlock
// ---------------------------------------------------------------------------------

// GN -> SiLU -> conv3x3, (+ Linear(emb) per channel when there is a time embedding), GN -> SiLU ->
// conv3x3, plus the input (through a 1x1 conv when the width changes).
typedef struct nn_resblock_names {
    const char *norm1, *conv1, *emb, *norm2, *conv2, *skip;
} nn_resblock_names;

extern const nn_resblock_names nn_resblock_names_sgm; // the UNet's ResBlock: in_layers.0, ...
extern const nn_resblock_names nn_resblock_names_vae; // the VAE's ResnetBlock: norm1, ...

typedef struct nn_resblock {
    const ldmc_params *params;
    int in_ch, out_ch;
    nn_norm norm1, norm2;
    nn_conv conv1, conv2;
    bool has_emb, has_skip;
    nn_linear emb;
    nn_conv skip;
} nn_resblock;

// emb_ch 0: no time embedding. zero_out: conv2 zero-initialized (generative-models' zero_module in
// the UNet). GroupNorm with 32 groups and `eps`.
void nn_resblock_init(nn_resblock *r, ldmc_params *p, const char *prefix,
                      const nn_resblock_names *names, int in_ch, int out_ch, int emb_ch, double eps,
                      bool zero_out);
// x (B, H, W, in_ch), emb_act (B, emb_ch) = SiLU(emb) or NULL -> (B, H, W, out_ch)
ldmc_tensor *nn_resblock_forward(ldmc_ctx *ctx, const nn_resblock *r, ldmc_tensor *x,
                                 ldmc_tensor *emb_act);
// The same as a recompute region when `recompute` (gradient checkpointing).
ldmc_tensor *nn_resblock_run(ldmc_ctx *ctx, const nn_resblock *r, ldmc_tensor *x,
                             ldmc_tensor *emb_act, bool recompute);
