// The SDXL UNet (generative-models sgm.modules.diffusionmodules.openaimodel.UNetModel) on the
// autograd core, channels-last. Every parameter is registered under its official key
// (model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight, ...), so the
// official weights file loads by name. Configurable to SDXL base and refiner, class-conditional
// ImageNet models (a learned class embedding as a one-token context) and tiny test models.
// Tested by tests/test_models.c against PyTorch (tests/ref/make_model_refs.py).
#pragma once
#include <stdbool.h>
#include <stdio.h>

#include "nn/blocks.h"
#include "nn/model_config.h"
#include "nn/nn.h"

#define LDMC_UNET_PREFIX "model.diffusion_model."
#define LDMC_CLASS_EMBED_KEY "conditioner.embedders.0.embedding.weight"

// GN (eps 1e-6) -> proj_in -> depth x block -> proj_out, plus the input.
typedef struct ldmc_spatial_transformer {
    const ldmc_params *params;
    int channels, depth;
    nn_norm norm;
    nn_linear proj_in, proj_out;
    nn_transformer_block *blocks;
} ldmc_spatial_transformer;

typedef enum ldmc_unet_layer_kind {
    LDMC_UNET_CONV_IN,
    LDMC_UNET_RES,
    LDMC_UNET_ATTN,
    LDMC_UNET_DOWN,
    LDMC_UNET_UP,
} ldmc_unet_layer_kind;

typedef struct ldmc_unet_layer {
    ldmc_unet_layer_kind kind;
    nn_resblock res;
    ldmc_spatial_transformer st;
    nn_conv conv; // conv_in, the downsampling conv (op) or the upsampling conv (conv)
} ldmc_unet_layer;

// One of sgm's TimestepEmbedSequential blocks: up to three layers.
typedef struct ldmc_unet_block {
    int n_layers;
    ldmc_unet_layer layers[3];
    int out_channels;
} ldmc_unet_block;

typedef struct ldmc_unet {
    ldmc_unet_config cfg;
    ldmc_params params;       // owned; official keys
    nn_linear time1, time2;   // time_embed.0, time_embed.2
    nn_linear label1, label2; // label_emb.0.0, label_emb.0.2 (when the config has a vector)
    int class_table;          // conditioner.embedders.0.embedding.weight, or -1
    int n_input, n_output;
    ldmc_unet_block *input, middle, *output;
    nn_norm out_norm;   // out.0
    nn_conv out_conv;   // out.2
    bool recompute;     // gradient checkpointing: each ResBlock, SpatialTransformer recomputed
    // The transformers' q, k, v and feed-forward input products made again in backward, not kept
    // (ldmc_ctx's recompute_projections): less memory for a product more each.
    bool recompute_projections;
} ldmc_unet;

// The conditioning of one forward pass. context (B, L, context_dim) for text models, or
// class_labels (B) of I64 for class-conditional ones; vector (B, adm_in_channels) when the config
// has vector parts (see ldmc_unet_vector).
// class_keep (B), when not NULL, multiplies each sample's class embedding: 0 drops it to zeros,
// as generative-models' conditioning dropout (ucg_rate) does in training and as the unconditional
// branch of classifier-free guidance asks for.
typedef struct ldmc_unet_cond {
    ldmc_tensor *context;
    ldmc_tensor *class_labels;
    ldmc_tensor *vector;
    const float *class_keep;
} ldmc_unet_cond;

// Builds the module tree and registers its parameters (shapes only: no weights allocated). The
// layers point into u->params: an initialized ldmc_unet must not be copied or moved.
void ldmc_unet_init(ldmc_unet *u, const ldmc_unet_config *cfg);
void ldmc_unet_free(ldmc_unet *u);

// x (B, H, W, in_channels), t (B) f32 timesteps -> (B, H, W, out_channels). H and W must be
// divisible by 2^(levels-1).
ldmc_tensor *ldmc_unet_forward(ldmc_ctx *ctx, const ldmc_unet *u, ldmc_tensor *x, ldmc_tensor *t,
                               const ldmc_unet_cond *cond);

// Assembles the vector conditioning in the config's part order: pooled text as given, each
// scalar part through the 256-d [cos | sin] embedding. parts[p] is (B, scalars) for Fourier
// parts and (B, pooled_dim) for pooled_text, indexed by ldmc_vector_part; unused parts NULL.
ldmc_tensor *ldmc_unet_vector(ldmc_ctx *ctx, const ldmc_unet_config *cfg,
                              ldmc_tensor *const parts[LDMC_VECTOR_PART_COUNT]);

// The UNet's ResBlock (nn_resblock with sgm's names, a time embedding of emb_ch, the output conv
// zero-initialized) and SpatialTransformer, for block-level tests. `prefix`: the block's key
// prefix.
void ldmc_unet_resblock_init(nn_resblock *r, ldmc_params *p, const char *prefix, int in_ch,
                             int out_ch, int emb_ch);
void ldmc_spatial_transformer_init(ldmc_spatial_transformer *st, ldmc_params *p, const char *prefix,
                                   int channels, int head_channels, int depth, int context_dim);
void ldmc_spatial_transformer_free(ldmc_spatial_transformer *st);
ldmc_tensor *ldmc_spatial_transformer_forward(ldmc_ctx *ctx, const ldmc_spatial_transformer *st,
                                              ldmc_tensor *x, ldmc_tensor *context);

// Prints the module summary (blocks, widths, resolutions) to `out`.
void ldmc_unet_print_summary(const ldmc_unet *u, FILE *out);
