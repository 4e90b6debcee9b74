// SDXL's text encoders: CLIP's text transformer (token and position embeddings, pre-norm blocks
// of causal self-attention and an MLP) in the two key layouts SDXL files use:
//   - hf: HF CLIPTextModel (CLIP ViT-L/14, QuickGELU): text_model.embeddings.*,
//     text_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj, layer_norm1, mlp.fc1, mlp.fc2,
//     layer_norm2}, text_model.final_layer_norm;
//   - open_clip: open_clip's text tower (OpenCLIP ViT-bigG/14, exact GELU): token_embedding,
//     positional_embedding, transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2,
//     mlp.c_fc, mlp.c_proj}, ln_final, text_projection (used as x P), logit_scale.
// The context is the hidden state `hidden_layer` (the output of that many blocks, without the
// final norm: SDXL takes CLIP-L's 11th and bigG's 31st); the pooled output (open_clip with a
// projection) is ln_final of the last block's output at each sample's end token, times P.
// Every parameter of the official file is registered, used or not (CLIP-L's last block and final
// norm, logit_scale), so that `ldmc info` counts 123,060,480 and 694,659,841.
// Tested by tests/test_text.c (against tests/ref/clip_ref.py, outputs and every gradient).
#pragma once
#include "core/params.h"
#include "core/tape.h"
#include "nn/model_config.h"
#include "nn/nn.h"

#include <stdio.h>

typedef struct ldmc_text_block {
    nn_norm norm1, norm2;
    nn_linear q, k, v; // hf
    nn_linear in_proj; // open_clip: q, k, v packed (3 width, width)
    nn_linear out, fc1, fc2;
} ldmc_text_block;

typedef struct ldmc_text_encoder {
    ldmc_text_config cfg;
    ldmc_params params;
    int token_embedding, position_embedding; // parameter indices
    ldmc_text_block *blocks;
    nn_norm final_norm;
    int projection, logit_scale; // open_clip; -1 when absent
} ldmc_text_encoder;

// The keys an encoder owns in an official SDXL file: conditioner.embedders.<index>.transformer.
// (hf) or conditioner.embedders.<index>.model. (open_clip).
const char *ldmc_text_prefix(const ldmc_text_config *cfg);

void ldmc_text_encoder_init(ldmc_text_encoder *e, const ldmc_text_config *cfg);
void ldmc_text_encoder_free(ldmc_text_encoder *e);
void ldmc_text_encoder_print_summary(const ldmc_text_encoder *e, FILE *out);

// ids (n, context_length) on the host -> *context (n, context_length, width) and, with a
// projection, *pooled (n, projection_dim) (else NULL). The pooled row of a sample is its first
// end token (the largest id, as argmax finds it). The table's weights must be bound.
void ldmc_text_encoder_forward(ldmc_ctx *ctx, const ldmc_text_encoder *e, int n, const int32_t *ids,
                               ldmc_tensor **context, ldmc_tensor **pooled);
