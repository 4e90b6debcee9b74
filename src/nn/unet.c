// The SDXL UNet (see unet.h). The construction follows sgm's UNetModel.__init__ step by step, so
// that block indices, widths and key names come out as in the official weights file; shapes in the
// comments are channels-last. Tested by tests/test_models.c.
#include "nn/unet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "ops/ops.h"

#define GN_EPS_RESBLOCK 1e-5    // normalization() = GroupNorm32, PyTorch's default eps
#define GN_EPS_TRANSFORMER 1e-6 // SpatialTransformer's Normalize()
#define LN_EPS 1e-5             // BasicTransformerBlock's LayerNorms

// ---- ResBlock and SpatialTransformer ------------------------------------------------------------

void ldmc_unet_resblock_init(nn_resblock *r, ldmc_params *p, const char *prefix, int in_ch,
                             int out_ch, int emb_ch) {
    nn_resblock_init(r, p, prefix, &nn_resblock_names_sgm, in_ch, out_ch, emb_ch, GN_EPS_RESBLOCK,
                     true); // out_layers.3 is a zero_module
}

void ldmc_spatial_transformer_init(ldmc_spatial_transformer *st, ldmc_params *p, const char *prefix,
                                   int channels, int head_channels, int depth, int context_dim) {
    char buf[256];
    *st = (ldmc_spatial_transformer){.params = p, .channels = channels, .depth = depth};
    nn_group_norm_init(&st->norm, p, nn_name(buf, sizeof buf, prefix, "norm"), channels,
                       GN_EPS_TRANSFORMER);
    nn_linear_init(&st->proj_in, p, nn_name(buf, sizeof buf, prefix, "proj_in"), channels, channels,
                   true);
    st->blocks = calloc((size_t)depth, sizeof *st->blocks);
    LDMC_CHECK(st->blocks, "out of memory");
    // sgm's BasicTransformerBlock: without a context its attn2 attends to the tokens themselves
    nn_transformer_options o = {.names = &nn_transformer_names_sgm,
                                .dim = channels,
                                .context_dim = context_dim ? context_dim : channels,
                                .heads = channels / head_channels,
                                .ff = NN_FF_GEGLU,
                                .ff_hidden = 4 * channels,
                                .norm_eps = LN_EPS};
    for (int d = 0; d < depth; d++)
        nn_transformer_block_init(&st->blocks[d], p,
                                  nn_name(buf, sizeof buf, prefix, "transformer_blocks.%d", d), &o);
    nn_linear_init(&st->proj_out, p, nn_name(buf, sizeof buf, prefix, "proj_out"), channels,
                   channels, true);
    nn_zero_init(p, st->proj_out.weight, st->proj_out.bias);
}

void ldmc_spatial_transformer_free(ldmc_spatial_transformer *st) {
    free(st->blocks);
    st->blocks = NULL;
}

// x (B, H, W, C), context (B, L, Cc) or NULL -> (B, H, W, C). Channels-last: the feature map is
// already the token sequence (B, H*W, C), so no permute is needed.
ldmc_tensor *ldmc_spatial_transformer_forward(ldmc_ctx *ctx, const ldmc_spatial_transformer *st,
                                              ldmc_tensor *x, ldmc_tensor *context) {
    const ldmc_params *p = st->params;
    int64_t B = x->shape[0], N = x->shape[1] * x->shape[2], C = x->shape[3];
    ldmc_tensor *h = nn_norm_forward(ctx, p, &st->norm, x);
    h = nn_linear_forward(ctx, p, &st->proj_in, ldmc_reshape(ctx, h, 3, (int64_t[]){B, N, C}));
    for (int d = 0; d < st->depth; d++)
        h = nn_transformer_block_forward(ctx, p, &st->blocks[d], h, context);
    h = nn_linear_forward(ctx, p, &st->proj_out, h);
    return ldmc_add(ctx, ldmc_reshape(ctx, h, 4, x->shape), x);
}

static void transformer_region(ldmc_ctx *ctx, void *user, ldmc_tensor **in, int n_in,
                               ldmc_tensor **out, int n_out) {
    out[0] = ldmc_spatial_transformer_forward(ctx, user, in[0], n_in > 1 ? in[1] : NULL);
}

// ---- the UNet -----------------------------------------------------------------------------------

static ldmc_unet_layer *add_layer(ldmc_unet_block *b, ldmc_unet_layer_kind kind) {
    LDMC_CHECK(b->n_layers < 3, "a UNet block with more than 3 layers");
    ldmc_unet_layer *l = &b->layers[b->n_layers++];
    memset(l, 0, sizeof *l);
    l->kind = kind;
    return l;
}

static void add_transformer(ldmc_unet *u, ldmc_unet_block *b, const char *prefix, int ch,
                            int depth) {
    char buf[256];
    ldmc_unet_layer *l = add_layer(b, LDMC_UNET_ATTN);
    ldmc_spatial_transformer_init(&l->st, &u->params,
                                  nn_name(buf, sizeof buf, prefix, "%d", b->n_layers - 1), ch,
                                  u->cfg.num_head_channels, depth, u->cfg.context_dim);
}

static void add_resblock(ldmc_unet *u, ldmc_unet_block *b, const char *prefix, int in, int out) {
    char buf[256];
    ldmc_unet_layer *l = add_layer(b, LDMC_UNET_RES);
    ldmc_unet_resblock_init(&l->res, &u->params,
                            nn_name(buf, sizeof buf, prefix, "%d", b->n_layers - 1), in, out,
                            4 * u->cfg.model_channels);
}

void ldmc_unet_init(ldmc_unet *u, const ldmc_unet_config *cfg) {
    *u = (ldmc_unet){.cfg = *cfg, .class_table = -1};
    const ldmc_unet_config *c = &u->cfg;
    ldmc_params *p = &u->params;
    const int C = c->model_channels, E = 4 * C; // E = time_embed_dim
    char prefix[256];
    nn_linear_init(&u->time1, p, LDMC_UNET_PREFIX "time_embed.0", C, E, true);
    nn_linear_init(&u->time2, p, LDMC_UNET_PREFIX "time_embed.2", E, E, true);
    if (c->n_vector) {
        nn_linear_init(&u->label1, p, LDMC_UNET_PREFIX "label_emb.0.0", c->adm_in_channels, E,
                       true);
        nn_linear_init(&u->label2, p, LDMC_UNET_PREFIX "label_emb.0.2", E, E, true);
    }
    int max_input = 1 + c->levels * (c->num_res_blocks + 1);
    u->input = calloc((size_t)max_input, sizeof *u->input);
    u->output = calloc((size_t)c->levels * (c->num_res_blocks + 1), sizeof *u->output);
    int *skip_channels = calloc((size_t)max_input, sizeof *skip_channels);
    LDMC_CHECK(u->input && u->output && skip_channels, "out of memory");

    // input_blocks.0: conv_in
    ldmc_unet_block *b = &u->input[u->n_input++];
    nn_conv_init(&add_layer(b, LDMC_UNET_CONV_IN)->conv, p, LDMC_UNET_PREFIX "input_blocks.0.0",
                 c->in_channels, C, 3, 1, NULL);
    int ch = C, n_skip = 0;
    b->out_channels = skip_channels[n_skip++] = ch;
    for (int level = 0; level < c->levels; level++) {
        for (int r = 0; r < c->num_res_blocks; r++) {
            snprintf(prefix, sizeof prefix, LDMC_UNET_PREFIX "input_blocks.%d", u->n_input);
            b = &u->input[u->n_input++];
            add_resblock(u, b, prefix, ch, C * c->channel_mult[level]);
            ch = C * c->channel_mult[level];
            if (ldmc_unet_level_has_attention(c, level))
                add_transformer(u, b, prefix, ch, c->transformer_depth[level]);
            b->out_channels = skip_channels[n_skip++] = ch;
        }
        if (level != c->levels - 1) { // Downsample: conv 3x3, stride 2, padding 1 (key `op`)
            snprintf(prefix, sizeof prefix, LDMC_UNET_PREFIX "input_blocks.%d.0.op", u->n_input);
            b = &u->input[u->n_input++];
            nn_conv_init(&add_layer(b, LDMC_UNET_DOWN)->conv, p, prefix, ch, ch, 3, 2, NULL);
            b->out_channels = skip_channels[n_skip++] = ch;
        }
    }
    // The middle block always has a transformer, whatever attention_resolutions says.
    add_resblock(u, &u->middle, LDMC_UNET_PREFIX "middle_block", ch, ch);
    add_transformer(u, &u->middle, LDMC_UNET_PREFIX "middle_block", ch,
                    c->transformer_depth_middle);
    add_resblock(u, &u->middle, LDMC_UNET_PREFIX "middle_block", ch, ch);
    u->middle.out_channels = ch;

    for (int level = c->levels - 1; level >= 0; level--) {
        for (int r = 0; r <= c->num_res_blocks; r++) {
            snprintf(prefix, sizeof prefix, LDMC_UNET_PREFIX "output_blocks.%d", u->n_output);
            b = &u->output[u->n_output++];
            int skip = skip_channels[--n_skip];
            add_resblock(u, b, prefix, ch + skip, C * c->channel_mult[level]);
            ch = C * c->channel_mult[level];
            if (ldmc_unet_level_has_attention(c, level))
                add_transformer(u, b, prefix, ch, c->transformer_depth[level]);
            if (level > 0 && r == c->num_res_blocks) { // Upsample: nearest 2x + conv (key `conv`)
                char name[300];
                snprintf(name, sizeof name, "%s.%d.conv", prefix, b->n_layers);
                nn_conv_init(&add_layer(b, LDMC_UNET_UP)->conv, p, name, ch, ch, 3, 1, NULL);
            }
            b->out_channels = ch;
        }
    }
    free(skip_channels);
    nn_group_norm_init(&u->out_norm, p, LDMC_UNET_PREFIX "out.0", ch, GN_EPS_RESBLOCK);
    nn_conv_init(&u->out_conv, p, LDMC_UNET_PREFIX "out.2", ch, c->out_channels, 3, 1, NULL);
    nn_zero_init(p, u->out_conv.weight, u->out_conv.bias);
    if (c->n_classes)
        u->class_table =
            ldmc_params_add(p, LDMC_CLASS_EMBED_KEY, 2, (int64_t[]){c->n_classes, c->class_dim},
                            LDMC_PARAM_NO_DECAY);
    if (c->n_classes) ldmc_params_set_init(p, u->class_table, LDMC_INIT_NORMAL, 1);
}

static void free_block(ldmc_unet_block *b) {
    for (int i = 0; i < b->n_layers; i++)
        if (b->layers[i].kind == LDMC_UNET_ATTN) ldmc_spatial_transformer_free(&b->layers[i].st);
}

void ldmc_unet_free(ldmc_unet *u) {
    for (int i = 0; i < u->n_input; i++)
        free_block(&u->input[i]);
    for (int i = 0; i < u->n_output; i++)
        free_block(&u->output[i]);
    free_block(&u->middle);
    free(u->input);
    free(u->output);
    ldmc_params_free(&u->params);
    memset(u, 0, sizeof *u);
}

// Runs one TimestepEmbedSequential block: ResBlocks get the embedding, transformers the context.
static ldmc_tensor *block_forward(ldmc_ctx *ctx, const ldmc_unet *u, const ldmc_unet_block *b,
                                  ldmc_tensor *h, ldmc_tensor *emb_act, ldmc_tensor *context) {
    for (int i = 0; i < b->n_layers; i++) {
        const ldmc_unet_layer *l = &b->layers[i];
        switch (l->kind) {
        case LDMC_UNET_CONV_IN:
        case LDMC_UNET_DOWN: h = nn_conv_forward(ctx, &u->params, &l->conv, h); break;
        case LDMC_UNET_UP:
            h = nn_conv_forward(ctx, &u->params, &l->conv, ldmc_upsample_nearest2x(ctx, h));
            break;
        case LDMC_UNET_RES: h = nn_resblock_run(ctx, &l->res, h, emb_act, u->recompute); break;
        case LDMC_UNET_ATTN:
            if (u->recompute)
                ldmc_recompute(ctx, transformer_region, (void *)&l->st,
                               (ldmc_tensor *[]){h, context}, context ? 2 : 1, &h, 1);
            else
                h = ldmc_spatial_transformer_forward(ctx, &l->st, h, context);
            break;
        }
    }
    return h;
}

static void check_cond(const ldmc_unet *u, ldmc_tensor *x, ldmc_tensor *t,
                       const ldmc_unet_cond *cond) {
    const ldmc_unet_config *c = &u->cfg;
    int64_t B = x->shape[0], align = (int64_t)1 << (c->levels - 1);
    LDMC_CHECK(x->ndim == 4 && x->shape[3] == c->in_channels && x->shape[1] % align == 0 &&
                   x->shape[2] % align == 0,
               "unet: x must be (B, H, W, %d) with H and W divisible by %lld", c->in_channels,
               (long long)align);
    LDMC_CHECK(t->ndim == 1 && t->shape[0] == B, "unet: t must be (B) = (%lld)", (long long)B);
    if (c->n_classes) {
        LDMC_CHECK(cond && cond->class_labels && cond->class_labels->shape[0] == B,
                   "unet: a class-conditional model needs class_labels (B)");
    } else if (c->context_dim) {
        LDMC_CHECK(cond && cond->context && cond->context->ndim == 3 &&
                       cond->context->shape[0] == B && cond->context->shape[2] == c->context_dim,
                   "unet: the context must be (B, L, %d)", c->context_dim);
    }
    if (c->n_vector)
        LDMC_CHECK(cond && cond->vector && cond->vector->ndim == 2 && cond->vector->shape[0] == B &&
                       cond->vector->shape[1] == c->adm_in_channels,
                   "unet: the vector conditioning must be (B, %d)", c->adm_in_channels);
}

ldmc_tensor *ldmc_unet_forward(ldmc_ctx *ctx, const ldmc_unet *u, ldmc_tensor *x, ldmc_tensor *t,
                               const ldmc_unet_cond *cond) {
    check_cond(u, x, t, cond);
    const ldmc_params *p = &u->params;
    const ldmc_unet_config *c = &u->cfg;
    // emb (B, 4C) = time_embed(timestep_embedding(t)) + label_emb(vector)
    ldmc_tensor *emb = ldmc_timestep_embedding(ctx, t, c->model_channels, 10000.0);
    emb = nn_linear_forward(ctx, p, &u->time2,
                            ldmc_silu(ctx, nn_linear_forward(ctx, p, &u->time1, emb)));
    if (c->n_vector) {
        ldmc_tensor *y = nn_linear_forward(ctx, p, &u->label1, cond->vector);
        emb = ldmc_add(ctx, emb, nn_linear_forward(ctx, p, &u->label2, ldmc_silu(ctx, y)));
    }
    ldmc_tensor *emb_act = ldmc_silu(ctx, emb); // every ResBlock's emb_layers begin with SiLU
    ldmc_tensor *context = cond ? cond->context : NULL;
    if (c->n_classes) { // the class embedding is a one-token context (B, 1, dim)
        ldmc_tensor *e = ldmc_embedding(ctx, nn_param(p, u->class_table), cond->class_labels);
        if (cond->class_keep) e = ldmc_scale_rows(ctx, e, cond->class_keep);
        context = ldmc_reshape(ctx, e, 3, (int64_t[]){e->shape[0], 1, e->shape[1]});
    }
    ldmc_tensor **skips = ldmc_arena_alloc(&ctx->meta, (size_t)u->n_input * sizeof *skips);
    bool projections_were = ctx->recompute_projections;
    ctx->recompute_projections = projections_were || u->recompute_projections;
    ldmc_tensor *h = x;
    for (int i = 0; i < u->n_input; i++)
        h = skips[i] = block_forward(ctx, u, &u->input[i], h, emb_act, context);
    h = block_forward(ctx, u, &u->middle, h, emb_act, context);
    for (int i = 0; i < u->n_output; i++) {
        h = ldmc_concat(ctx, (ldmc_tensor *[]){h, skips[u->n_input - 1 - i]}, 2);
        h = block_forward(ctx, u, &u->output[i], h, emb_act, context);
    }
    ctx->recompute_projections = projections_were;
    h = ldmc_silu(ctx, nn_norm_forward(ctx, p, &u->out_norm, h));
    return nn_conv_forward(ctx, p, &u->out_conv, h);
}

ldmc_tensor *ldmc_unet_vector(ldmc_ctx *ctx, const ldmc_unet_config *cfg,
                              ldmc_tensor *const parts[LDMC_VECTOR_PART_COUNT]) {
    ldmc_tensor *pieces[LDMC_MAX_VECTOR_PARTS];
    for (int i = 0; i < cfg->n_vector; i++) {
        ldmc_vector_part part = cfg->vector[i];
        ldmc_tensor *v = parts[part];
        int scalars = ldmc_vector_part_scalars(part);
        LDMC_CHECK(v && v->ndim == 2 && v->shape[1] == (scalars ? scalars : cfg->pooled_dim),
                   "unet vector: part '%s' must be (B, %d)", ldmc_vector_part_name(part),
                   scalars ? scalars : cfg->pooled_dim);
        if (!scalars) {
            pieces[i] = v;
            continue;
        }
        // (B, k) scalars -> (B*k) -> (B*k, 256) -> (B, k*256), each scalar's [cos | sin] in turn
        int64_t B = v->shape[0];
        ldmc_tensor *flat = ldmc_reshape(ctx, v, 1, (int64_t[]){B * scalars});
        ldmc_tensor *f = ldmc_timestep_embedding(ctx, flat, LDMC_FOURIER_DIM, 10000.0);
        pieces[i] = ldmc_reshape(ctx, f, 2, (int64_t[]){B, (int64_t)scalars * LDMC_FOURIER_DIM});
    }
    LDMC_CHECK(cfg->n_vector > 0, "unet vector: the config has no vector parts");
    return cfg->n_vector == 1 ? pieces[0] : ldmc_concat(ctx, pieces, cfg->n_vector);
}

static const char *layer_name(const ldmc_unet_layer *l, char *buf, size_t size) {
    switch (l->kind) {
    case LDMC_UNET_CONV_IN: snprintf(buf, size, "conv_in %d->%d", l->conv.in, l->conv.out); break;
    case LDMC_UNET_RES: snprintf(buf, size, "ResBlock %d->%d", l->res.in_ch, l->res.out_ch); break;
    case LDMC_UNET_ATTN:
        snprintf(buf, size, "SpatialTransformer %d (%d heads, depth %d)", l->st.channels,
                 l->st.blocks[0].self.heads, l->st.depth);
        break;
    case LDMC_UNET_DOWN: snprintf(buf, size, "Downsample %d (stride 2)", l->conv.out); break;
    case LDMC_UNET_UP: snprintf(buf, size, "Upsample %d (nearest 2x + conv)", l->conv.out); break;
    }
    return buf;
}

static void print_block(const char *name, const ldmc_unet_block *b, int ds, FILE *out) {
    char buf[128];
    fprintf(out, "  %-18s 1/%-2d ", name, ds);
    for (int i = 0; i < b->n_layers; i++)
        fprintf(out, "%s%s", i ? ", " : "", layer_name(&b->layers[i], buf, sizeof buf));
    fprintf(out, "\n");
}

void ldmc_unet_print_summary(const ldmc_unet *u, FILE *out) {
    const ldmc_unet_config *c = &u->cfg;
    fprintf(out, "UNet: %d levels, widths", c->levels);
    for (int i = 0; i < c->levels; i++)
        fprintf(out, " %d", c->model_channels * c->channel_mult[i]);
    fprintf(out, ", time embedding %d", 4 * c->model_channels);
    if (c->n_vector) {
        fprintf(out, ", vector %d = [", c->adm_in_channels);
        for (int i = 0; i < c->n_vector; i++)
            fprintf(out, "%s%s", i ? ", " : "", ldmc_vector_part_name(c->vector[i]));
        fprintf(out, "]");
    }
    if (c->context_dim) fprintf(out, ", context %d", c->context_dim);
    if (c->n_classes) fprintf(out, ", %d classes", c->n_classes);
    fprintf(out, "\n");
    char name[32];
    int ds = 1;
    for (int i = 0; i < u->n_input; i++) {
        snprintf(name, sizeof name, "input_blocks.%d", i);
        print_block(name, &u->input[i], ds, out);
        if (u->input[i].layers[0].kind == LDMC_UNET_DOWN) ds *= 2;
    }
    print_block("middle_block", &u->middle, ds, out);
    for (int i = 0; i < u->n_output; i++) {
        snprintf(name, sizeof name, "output_blocks.%d", i);
        print_block(name, &u->output[i], ds, out);
        if (u->output[i].layers[u->output[i].n_layers - 1].kind == LDMC_UNET_UP) ds /= 2;
    }
    fprintf(out, "  %-18s 1/%-2d GroupNorm, SiLU, conv %d->%d\n", "out", ds, u->out_conv.in,
            u->out_conv.out);
}
