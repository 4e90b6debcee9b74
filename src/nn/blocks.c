// The shared blocks (see blocks.h). Tested through tests/test_models.c.
#include "nn/blocks.h"

#include "core/error.h"
#include "ops/ops.h"

const nn_attention_names nn_attention_names_sgm = {"to_q", "to_k", "to_v", "to_out.0"};
const nn_attention_names nn_attention_names_vae = {"q", "k", "v", "proj_out"};

const nn_transformer_names nn_transformer_names_sgm = {
    .self_attention = "attn1",
    .cross_attention = "attn2",
    .attention = &nn_attention_names_sgm,
    .ff_in = "ff.net.0.proj",
    .ff_out = "ff.net.2",
    .norm_self = "norm1",
    .norm_cross = "norm2",
    .norm_ff = "norm3",
};

const nn_resblock_names nn_resblock_names_sgm = {"in_layers.0",  "in_layers.2",  "emb_layers.1",
                                                 "out_layers.0", "out_layers.3", "skip_connection"};
const nn_resblock_names nn_resblock_names_vae = {"norm1", "conv1", NULL,
                                                 "norm2", "conv2", "nin_shortcut"};

// ---- attention
// ------------------------------------------------------------------------------------

void nn_attention_init(nn_attention *a, ldmc_params *p, const char *prefix,
                       const nn_attention_options *o) {
    char buf[256];
    const nn_attention_names *n = o->names;
    *a = (nn_attention){.projection = o->projection, .heads = o->heads, .causal = o->causal};
    LDMC_CHECK(o->heads > 0 && o->dim % o->heads == 0, "%s: %d channels in %d heads", prefix,
               o->dim, o->heads);
    LDMC_CHECK(!o->causal || o->context_dim == o->dim, "%s: causal attention is self-attention",
               prefix);
    if (o->projection == NN_PROJECTION_CONV1X1) {
        nn_conv_init(&a->cq, p, nn_name(buf, sizeof buf, prefix, "%s", n->q), o->dim, o->dim, 1, 1,
                     NULL);
        nn_conv_init(&a->ck, p, nn_name(buf, sizeof buf, prefix, "%s", n->k), o->context_dim,
                     o->dim, 1, 1, NULL);
        nn_conv_init(&a->cv, p, nn_name(buf, sizeof buf, prefix, "%s", n->v), o->context_dim,
                     o->dim, 1, 1, NULL);
        nn_conv_init(&a->cout, p, nn_name(buf, sizeof buf, prefix, "%s", n->out), o->dim, o->dim, 1,
                     1, NULL);
        return;
    }
    nn_linear_init(&a->q, p, nn_name(buf, sizeof buf, prefix, "%s", n->q), o->dim, o->dim,
                   o->qkv_bias);
    nn_linear_init(&a->k, p, nn_name(buf, sizeof buf, prefix, "%s", n->k), o->context_dim, o->dim,
                   o->qkv_bias);
    nn_linear_init(&a->v, p, nn_name(buf, sizeof buf, prefix, "%s", n->v), o->context_dim, o->dim,
                   o->qkv_bias);
    nn_linear_init(&a->out, p, nn_name(buf, sizeof buf, prefix, "%s", n->out), o->dim, o->dim,
                   true);
}

// One projection of the layer (q, k, v or out: 0..3) applied to x.
static ldmc_tensor *project(ldmc_ctx *ctx, const ldmc_params *p, const nn_attention *a, int which,
                            ldmc_tensor *x) {
    if (a->projection == NN_PROJECTION_CONV1X1) {
        const nn_conv *c[4] = {&a->cq, &a->ck, &a->cv, &a->cout};
        return nn_conv_forward(ctx, p, c[which], x);
    }
    const nn_linear *l[4] = {&a->q, &a->k, &a->v, &a->out};
    return nn_linear_forward(ctx, p, l[which], x);
}

// (B, H, W, C) as the token sequence (B, H W, C); a sequence stays as it is.
static ldmc_tensor *tokens(ldmc_ctx *ctx, ldmc_tensor *t) {
    if (t->ndim == 3) return t;
    return ldmc_reshape(ctx, t, 3,
                        (int64_t[]){t->shape[0], t->shape[1] * t->shape[2], t->shape[3]});
}

ldmc_tensor *nn_attention_forward(ldmc_ctx *ctx, const ldmc_params *p, const nn_attention *a,
                                  ldmc_tensor *x, ldmc_tensor *context) {
    ldmc_tensor *src = context ? context : x;
    ldmc_tensor *q = project(ctx, p, a, 0, x);
    ldmc_tensor *k = tokens(ctx, project(ctx, p, a, 1, src));
    ldmc_tensor *v = tokens(ctx, project(ctx, p, a, 2, src));
    if (ctx->recompute_projections) { // a cross-attention's k and v are a few tokens: kept
        ldmc_remake_later(ctx, q);
        if (!context) ldmc_remake_later(ctx, k), ldmc_remake_later(ctx, v);
    }
    ldmc_tensor *o = a->causal ? ldmc_causal_attention(ctx, tokens(ctx, q), k, v, a->heads)
                               : ldmc_attention(ctx, tokens(ctx, q), k, v, a->heads);
    return project(ctx, p, a, 3, q->ndim == 3 ? o : ldmc_reshape(ctx, o, q->ndim, q->shape));
}

// ---- the feed-forward
// -----------------------------------------------------------------------------

void nn_feed_forward_init(nn_feed_forward *f, ldmc_params *p, const char *in_name,
                          const char *out_name, nn_feed_forward_kind kind, int dim, int hidden) {
    f->kind = kind;
    nn_linear_init(&f->in, p, in_name, dim, kind == NN_FF_GEGLU ? 2 * hidden : hidden, true);
    nn_linear_init(&f->out, p, out_name, hidden, dim, true);
}

ldmc_tensor *nn_feed_forward_forward(ldmc_ctx *ctx, const ldmc_params *p, const nn_feed_forward *f,
                                     ldmc_tensor *x) {
    ldmc_tensor *h = nn_linear_forward(ctx, p, &f->in, x);
    if (ctx->recompute_projections) ldmc_remake_later(ctx, h);
    h = f->kind == NN_FF_GEGLU ? ldmc_geglu(ctx, h) : ldmc_gelu(ctx, h, f->kind == NN_FF_GELU_TANH);
    return nn_linear_forward(ctx, p, &f->out, h);
}

// ---- the transformer block
// ------------------------------------------------------------------------

void nn_transformer_block_init(nn_transformer_block *b, ldmc_params *p, const char *prefix,
                               const nn_transformer_options *o) {
    char buf[256], in[256], out[256];
    const nn_transformer_names *n = o->names;
    *b = (nn_transformer_block){.has_cross = o->context_dim > 0 && n->cross_attention};
    nn_attention_options self = {.names = n->attention,
                                 .projection = NN_PROJECTION_LINEAR,
                                 .dim = o->dim,
                                 .context_dim = o->dim,
                                 .heads = o->heads,
                                 .causal = o->causal};
    nn_attention_init(&b->self, p, nn_name(buf, sizeof buf, prefix, "%s", n->self_attention),
                      &self);
    nn_feed_forward_init(&b->ff, p, nn_name(in, sizeof in, prefix, "%s", n->ff_in),
                         nn_name(out, sizeof out, prefix, "%s", n->ff_out), o->ff, o->dim,
                         o->ff_hidden);
    if (b->has_cross) {
        nn_attention_options cross = self;
        cross.context_dim = o->context_dim, cross.causal = false;
        nn_attention_init(&b->cross, p, nn_name(buf, sizeof buf, prefix, "%s", n->cross_attention),
                          &cross);
    }
    nn_layer_norm_init(&b->norm_self, p, nn_name(buf, sizeof buf, prefix, "%s", n->norm_self),
                       o->dim, o->norm_eps);
    if (b->has_cross)
        nn_layer_norm_init(&b->norm_cross, p, nn_name(buf, sizeof buf, prefix, "%s", n->norm_cross),
                           o->dim, o->norm_eps);
    nn_layer_norm_init(&b->norm_ff, p, nn_name(buf, sizeof buf, prefix, "%s", n->norm_ff), o->dim,
                       o->norm_eps);
}

ldmc_tensor *nn_transformer_block_forward(ldmc_ctx *ctx, const ldmc_params *p,
                                          const nn_transformer_block *b, ldmc_tensor *h,
                                          ldmc_tensor *context) {
    h = ldmc_add(
        ctx,
        nn_attention_forward(ctx, p, &b->self, nn_norm_forward(ctx, p, &b->norm_self, h), NULL), h);
    if (b->has_cross)
        h = ldmc_add(ctx,
                     nn_attention_forward(ctx, p, &b->cross,
                                          nn_norm_forward(ctx, p, &b->norm_cross, h), context),
                     h);
    ldmc_tensor *ff =
        nn_feed_forward_forward(ctx, p, &b->ff, nn_norm_forward(ctx, p, &b->norm_ff, h));
    return ldmc_add(ctx, ff, h);
}

// ---- the ResBlock
// ---------------------------------------------------------------------------------

void nn_resblock_init(nn_resblock *r, ldmc_params *p, const char *prefix,
                      const nn_resblock_names *names, int in_ch, int out_ch, int emb_ch, double eps,
                      bool zero_out) {
    char buf[256];
    *r = (nn_resblock){.params = p,
                       .in_ch = in_ch,
                       .out_ch = out_ch,
                       .has_emb = emb_ch > 0,
                       .has_skip = in_ch != out_ch};
    nn_group_norm_init(&r->norm1, p, nn_name(buf, sizeof buf, prefix, "%s", names->norm1), in_ch,
                       eps);
    nn_conv_init(&r->conv1, p, nn_name(buf, sizeof buf, prefix, "%s", names->conv1), in_ch, out_ch,
                 3, 1, NULL);
    if (r->has_emb)
        nn_linear_init(&r->emb, p, nn_name(buf, sizeof buf, prefix, "%s", names->emb), emb_ch,
                       out_ch, true);
    nn_group_norm_init(&r->norm2, p, nn_name(buf, sizeof buf, prefix, "%s", names->norm2), out_ch,
                       eps);
    nn_conv_init(&r->conv2, p, nn_name(buf, sizeof buf, prefix, "%s", names->conv2), out_ch, out_ch,
                 3, 1, NULL);
    if (zero_out) nn_zero_init(p, r->conv2.weight, r->conv2.bias);
    if (r->has_skip)
        nn_conv_init(&r->skip, p, nn_name(buf, sizeof buf, prefix, "%s", names->skip), in_ch,
                     out_ch, 1, 1, NULL);
}

ldmc_tensor *nn_resblock_forward(ldmc_ctx *ctx, const nn_resblock *r, ldmc_tensor *x,
                                 ldmc_tensor *emb_act) {
    const ldmc_params *p = r->params;
    ldmc_tensor *h = ldmc_silu(ctx, nn_norm_forward(ctx, p, &r->norm1, x));
    h = nn_conv_forward(ctx, p, &r->conv1, h); // (B, H, W, out)
    if (r->has_emb) h = ldmc_add_broadcast(ctx, h, nn_linear_forward(ctx, p, &r->emb, emb_act));
    h = ldmc_silu(ctx, nn_norm_forward(ctx, p, &r->norm2, h)); // dropout 0
    h = nn_conv_forward(ctx, p, &r->conv2, h);
    ldmc_tensor *skip = r->has_skip ? nn_conv_forward(ctx, p, &r->skip, x) : x;
    return ldmc_add(ctx, skip, h);
}

static void resblock_region(ldmc_ctx *ctx, void *user, ldmc_tensor **in, int n_in,
                            ldmc_tensor **out, int n_out) {
    out[0] = nn_resblock_forward(ctx, user, in[0], n_in > 1 ? in[1] : NULL);
}

ldmc_tensor *nn_resblock_run(ldmc_ctx *ctx, const nn_resblock *r, ldmc_tensor *x,
                             ldmc_tensor *emb_act, bool recompute) {
    if (!recompute) return nn_resblock_forward(ctx, r, x, emb_act);
    ldmc_tensor *y;
    ldmc_recompute(ctx, resblock_region, (void *)r, (ldmc_tensor *[]){x, emb_act}, emb_act ? 2 : 1,
                   &y, 1);
    return y;
}
