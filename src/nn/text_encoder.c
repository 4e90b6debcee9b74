// CLIP text encoders (see text_encoder.h). Tested by tests/test_text.c.
#include "nn/text_encoder.h"

#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/error.h"
#include "ops/ops.h"

const char *ldmc_text_prefix(const ldmc_text_config *cfg) {
    static const char *const prefixes[2][LDMC_MAX_TEXT_ENCODERS] = {
        {"conditioner.embedders.0.transformer.", "conditioner.embedders.1.transformer."},
        {"conditioner.embedders.0.model.", "conditioner.embedders.1.model."}};
    LDMC_CHECK(cfg->index >= 0 && cfg->index < LDMC_MAX_TEXT_ENCODERS, "text encoder index %d",
               cfg->index);
    return prefixes[cfg->layout == LDMC_TEXT_OPEN_CLIP][cfg->index];
}

// prefix + key (the prefixes end in '.').
static const char *join(char *buf, size_t size, const char *prefix, const char *key) {
    snprintf(buf, size, "%s%s", prefix, key);
    return buf;
}

// open_clip's packed projection: <block>.attn.in_proj_weight (3 width, width) and in_proj_bias.
static void packed_init(nn_linear *l, ldmc_params *p, const char *prefix, int width) {
    char buf[256];
    *l = (nn_linear){.in = width, .out = 3 * width};
    l->weight = ldmc_params_add(p, nn_name(buf, sizeof buf, prefix, "attn.in_proj_weight"), 2,
                                (int64_t[]){3 * width, width}, 0);
    l->bias = ldmc_params_add(p, nn_name(buf, sizeof buf, prefix, "attn.in_proj_bias"), 1,
                              (int64_t[]){3 * width}, LDMC_PARAM_NO_DECAY);
    ldmc_params_set_init(p, l->bias, LDMC_INIT_FAN_IN, width);
}

static void block_init(ldmc_text_block *b, ldmc_params *p, const ldmc_text_config *c, int i) {
    char prefix[192], buf[256];
    const int W = c->width;
    if (c->layout == LDMC_TEXT_HF) {
        snprintf(prefix, sizeof prefix, "%stext_model.encoder.layers.%d", ldmc_text_prefix(c), i);
        // HF's CLIPAttention registers k, v, q, then out
        nn_linear_init(&b->k, p, nn_name(buf, sizeof buf, prefix, "self_attn.k_proj"), W, W, true);
        nn_linear_init(&b->v, p, nn_name(buf, sizeof buf, prefix, "self_attn.v_proj"), W, W, true);
        nn_linear_init(&b->q, p, nn_name(buf, sizeof buf, prefix, "self_attn.q_proj"), W, W, true);
        nn_linear_init(&b->out, p, nn_name(buf, sizeof buf, prefix, "self_attn.out_proj"), W, W,
                       true);
        nn_layer_norm_init(&b->norm1, p, nn_name(buf, sizeof buf, prefix, "layer_norm1"), W, 1e-5);
        nn_linear_init(&b->fc1, p, nn_name(buf, sizeof buf, prefix, "mlp.fc1"), W, c->mlp_width,
                       true);
        nn_linear_init(&b->fc2, p, nn_name(buf, sizeof buf, prefix, "mlp.fc2"), c->mlp_width, W,
                       true);
        nn_layer_norm_init(&b->norm2, p, nn_name(buf, sizeof buf, prefix, "layer_norm2"), W, 1e-5);
        return;
    }
    snprintf(prefix, sizeof prefix, "%stransformer.resblocks.%d", ldmc_text_prefix(c), i);
    nn_layer_norm_init(&b->norm1, p, nn_name(buf, sizeof buf, prefix, "ln_1"), W, 1e-5);
    packed_init(&b->in_proj, p, prefix, W);
    nn_linear_init(&b->out, p, nn_name(buf, sizeof buf, prefix, "attn.out_proj"), W, W, true);
    nn_layer_norm_init(&b->norm2, p, nn_name(buf, sizeof buf, prefix, "ln_2"), W, 1e-5);
    nn_linear_init(&b->fc1, p, nn_name(buf, sizeof buf, prefix, "mlp.c_fc"), W, c->mlp_width, true);
    nn_linear_init(&b->fc2, p, nn_name(buf, sizeof buf, prefix, "mlp.c_proj"), c->mlp_width, W,
                   true);
}

// The parameters in the order of the official state dicts (tests/ref/data/keys_*.json): HF's
// embeddings, layers, final norm; open_clip's own parameters (positional_embedding,
// text_projection, logit_scale) before its submodules (the blocks, token_embedding, ln_final).
void ldmc_text_encoder_init(ldmc_text_encoder *e, const ldmc_text_config *cfg) {
    *e = (ldmc_text_encoder){.cfg = *cfg, .projection = -1, .logit_scale = -1};
    ldmc_params *p = &e->params;
    const bool hf = cfg->layout == LDMC_TEXT_HF;
    const int W = cfg->width;
    const char *prefix = ldmc_text_prefix(cfg);
    char buf[256];
    if (hf) {
        e->token_embedding = ldmc_params_add(
            p, join(buf, sizeof buf, prefix, "text_model.embeddings.token_embedding.weight"), 2,
            (int64_t[]){cfg->vocab_size, W}, LDMC_PARAM_NO_DECAY);
        e->position_embedding = ldmc_params_add(
            p, join(buf, sizeof buf, prefix, "text_model.embeddings.position_embedding.weight"), 2,
            (int64_t[]){cfg->context_length, W}, LDMC_PARAM_NO_DECAY);
    } else {
        e->position_embedding =
            ldmc_params_add(p, join(buf, sizeof buf, prefix, "positional_embedding"), 2,
                            (int64_t[]){cfg->context_length, W}, LDMC_PARAM_NO_DECAY);
        int P = cfg->projection_dim ? cfg->projection_dim : W;
        e->projection = ldmc_params_add(p, join(buf, sizeof buf, prefix, "text_projection"), 2,
                                        (int64_t[]){W, P}, 0);
        ldmc_params_set_init(p, e->projection, LDMC_INIT_FAN_IN, W);
        // CLIP's contrastive temperature: in every open_clip file, unused by SDXL
        e->logit_scale = ldmc_params_add(p, join(buf, sizeof buf, prefix, "logit_scale"), 0, NULL,
                                         LDMC_PARAM_NO_DECAY | LDMC_PARAM_FROZEN);
        ldmc_params_set_init(p, e->logit_scale, LDMC_INIT_ZERO, 1);
    }
    ldmc_params_set_init(p, e->position_embedding, LDMC_INIT_NORMAL, 1);
    e->blocks = calloc((size_t)cfg->layers, sizeof *e->blocks);
    LDMC_CHECK(e->blocks, "out of memory");
    for (int i = 0; i < cfg->layers; i++)
        block_init(&e->blocks[i], p, cfg, i);
    if (!hf)
        e->token_embedding =
            ldmc_params_add(p, join(buf, sizeof buf, prefix, "token_embedding.weight"), 2,
                            (int64_t[]){cfg->vocab_size, W}, LDMC_PARAM_NO_DECAY);
    ldmc_params_set_init(p, e->token_embedding, LDMC_INIT_NORMAL, 1);
    nn_layer_norm_init(
        &e->final_norm, p,
        join(buf, sizeof buf, prefix, hf ? "text_model.final_layer_norm" : "ln_final"), W, 1e-5);
}

void ldmc_text_encoder_free(ldmc_text_encoder *e) {
    ldmc_params_free(&e->params);
    free(e->blocks);
    *e = (ldmc_text_encoder){0};
}

void ldmc_text_encoder_print_summary(const ldmc_text_encoder *e, FILE *out) {
    const ldmc_text_config *c = &e->cfg;
    fprintf(out,
            "  text encoder %d (%s keys, %s): %d blocks of width %d, %d heads, MLP %d (%s); "
            "vocabulary %d, %d positions\n",
            c->index, ldmc_text_layout_name(c->layout), ldmc_text_prefix(c), c->layers, c->width,
            c->heads, c->mlp_width, c->quick_gelu ? "QuickGELU" : "GELU", c->vocab_size,
            c->context_length);
    fprintf(out, "    context: hidden state %d (%d of %d blocks, no final norm)", c->hidden_layer,
            c->hidden_layer, c->layers);
    if (c->projection_dim)
        fprintf(out, "; pooled: final norm at the end token, projected to %d", c->projection_dim);
    fprintf(out, "\n");
}

static ldmc_tensor *block_forward(ldmc_ctx *ctx, const ldmc_text_encoder *e,
                                  const ldmc_text_block *b, ldmc_tensor *x) {
    const ldmc_params *p = &e->params;
    const int W = e->cfg.width;
    ldmc_tensor *h = nn_norm_forward(ctx, p, &b->norm1, x), *qkv[3];
    if (e->cfg.layout == LDMC_TEXT_HF) {
        qkv[0] = nn_linear_forward(ctx, p, &b->q, h);
        qkv[1] = nn_linear_forward(ctx, p, &b->k, h);
        qkv[2] = nn_linear_forward(ctx, p, &b->v, h);
    } else {
        ldmc_split(ctx, nn_linear_forward(ctx, p, &b->in_proj, h), (int[]){W, W, W}, 3, qkv);
    }
    h = ldmc_causal_attention(ctx, qkv[0], qkv[1], qkv[2], e->cfg.heads);
    x = ldmc_add(ctx, x, nn_linear_forward(ctx, p, &b->out, h));
    h = nn_linear_forward(ctx, p, &b->fc1, nn_norm_forward(ctx, p, &b->norm2, x));
    h = e->cfg.quick_gelu ? ldmc_quick_gelu(ctx, h) : ldmc_gelu(ctx, h, false);
    return ldmc_add(ctx, x, nn_linear_forward(ctx, p, &b->fc2, h));
}

void ldmc_text_encoder_forward(ldmc_ctx *ctx, const ldmc_text_encoder *e, int n, const int32_t *ids,
                               ldmc_tensor **context, ldmc_tensor **pooled) {
    const ldmc_text_config *c = &e->cfg;
    const int64_t T = c->context_length, W = c->width, N = (int64_t)n * T;
    int64_t *tok = ldmc_host_scratch(ctx, (size_t)(N ? N : 1) * sizeof *tok);
    int64_t *pos = ldmc_host_scratch(ctx, (size_t)(N ? N : 1) * sizeof *pos);
    int64_t *end = ldmc_host_scratch(ctx, (size_t)(n ? n : 1) * sizeof *end);
    for (int b = 0; b < n; b++) {
        int64_t best = 0;
        for (int64_t t = 0; t < T; t++) {
            tok[b * T + t] = ids[b * T + t];
            pos[b * T + t] = t;
            if (ids[b * T + t] > ids[b * T + best]) best = t;
        }
        end[b] = b * T + best;
    }
    const ldmc_params *p = &e->params;
    ldmc_tensor *x =
        ldmc_add(ctx,
                 ldmc_embedding(ctx, nn_param(p, e->token_embedding),
                                ldmc_input(ctx, LDMC_I64, 1, (int64_t[]){N}, tok, LDMC_I64)),
                 ldmc_embedding(ctx, nn_param(p, e->position_embedding),
                                ldmc_input(ctx, LDMC_I64, 1, (int64_t[]){N}, pos, LDMC_I64)));
    x = ldmc_reshape(ctx, x, 3, (int64_t[]){n, T, W});
    const bool want_pooled = pooled && e->projection >= 0 && c->projection_dim;
    const int run = want_pooled ? c->layers : c->hidden_layer;
    *context = NULL;
    for (int i = 0; i < run; i++) {
        if (i == c->hidden_layer) *context = x;
        x = block_forward(ctx, e, &e->blocks[i], x);
    }
    if (!*context) *context = x;
    if (pooled) *pooled = NULL;
    if (!want_pooled) return;
    ldmc_tensor *rows = ldmc_embedding(ctx, ldmc_reshape(ctx, x, 2, (int64_t[]){N, W}),
                                       ldmc_input(ctx, LDMC_I64, 1, (int64_t[]){n}, end, LDMC_I64));
    rows = nn_norm_forward(ctx, p, &e->final_norm, rows);
    const int64_t P = c->projection_dim;
    ldmc_tensor *proj = ldmc_reshape(ctx, nn_param(p, e->projection), 3, (int64_t[]){1, W, P});
    *pooled = ldmc_reshape(
        ctx, ldmc_matmul(ctx, ldmc_reshape(ctx, rows, 3, (int64_t[]){1, n, W}), proj, false, false),
        2, (int64_t[]){n, P});
}
