// Parsing and validation of model configs (see model_config.h). Tested by tests/test_config.c.
#include "nn/model_config.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int scalars;
} vector_parts[LDMC_VECTOR_PART_COUNT] = {
    [LDMC_VECTOR_POOLED_TEXT] = {"pooled_text", 0},
    [LDMC_VECTOR_ORIGINAL_SIZE] = {"original_size", 2},
    [LDMC_VECTOR_CROP_COORDS] = {"crop_coords", 2},
    [LDMC_VECTOR_TARGET_SIZE] = {"target_size", 2},
    [LDMC_VECTOR_AESTHETIC_SCORE] = {"aesthetic_score", 1},
};

const char *ldmc_vector_part_name(ldmc_vector_part part) { return vector_parts[part].name; }

int ldmc_vector_part_scalars(ldmc_vector_part part) { return vector_parts[part].scalars; }

bool ldmc_unet_level_has_attention(const ldmc_unet_config *c, int level) {
    for (int i = 0; i < c->n_attention_resolutions; i++)
        if (c->attention_resolutions[i] == 1 << level) return true;
    return false;
}

// Reads a list of whole numbers into int fields.
static int int_list(const ldmc_cfg *s, const char *key, bool required, bool scalar_ok, int min,
                    int max, int *out, int capacity, int *count, ldmc_err *err) {
    int64_t values[LDMC_MAX_LEVELS];
    int n = 0;
    if (ldmc_cfg_int_list(s, key, required, scalar_ok, min, max, values, capacity, &n, err) != 0)
        return -1;
    for (int i = 0; i < n; i++)
        out[i] = (int)values[i];
    if (count) *count = n;
    return 0;
}

static int int_field(const ldmc_cfg *s, const char *key, bool required, int min, int max, int *out,
                     ldmc_err *err) {
    int64_t v = *out;
    if (ldmc_cfg_int(s, key, required, min, max, &v, err) != 0) return -1;
    *out = (int)v;
    return 0;
}

static int parse_vector(const ldmc_cfg *s, ldmc_unet_config *c, ldmc_err *err) {
    const ldmc_cfg *list = ldmc_cfg_get(s, "vector");
    if (!list) return 0;
    if (list->kind != LDMC_CFG_LIST || list->count > LDMC_MAX_VECTOR_PARTS)
        return ldmc_cfg_error(list, err, "expected a list of at most %d part names",
                              LDMC_MAX_VECTOR_PARTS);
    for (int i = 0; i < list->count; i++) {
        const ldmc_cfg *item = list->items[i];
        int found = -1;
        for (int p = 0; p < LDMC_VECTOR_PART_COUNT && item->kind == LDMC_CFG_SCALAR; p++)
            if (strcmp(item->value, vector_parts[p].name) == 0) found = p;
        if (found < 0)
            return ldmc_cfg_error(item, err,
                                  "unknown part (expected pooled_text, original_size, "
                                  "crop_coords, target_size or aesthetic_score)");
        for (int j = 0; j < c->n_vector; j++)
            if (c->vector[j] == (ldmc_vector_part)found)
                return ldmc_cfg_error(item, err, "'%s' is listed twice", item->value);
        c->vector[c->n_vector++] = (ldmc_vector_part)found;
    }
    return 0;
}

int ldmc_unet_config_parse(const ldmc_cfg *s, ldmc_unet_config *c, ldmc_err *err) {
    static const char *const keys[] = {"in_channels",
                                       "out_channels",
                                       "model_channels",
                                       "channel_mult",
                                       "num_res_blocks",
                                       "attention_resolutions",
                                       "transformer_depth",
                                       "transformer_depth_middle",
                                       "num_head_channels",
                                       "context_dim",
                                       "vector",
                                       "pooled_dim",
                                       "adm_in_channels",
                                       "class_embed",
                                       NULL};
    *c = (ldmc_unet_config){0};
    if (s->kind != LDMC_CFG_MAP) return ldmc_cfg_error(s, err, "expected a map of UNet settings");
    if (ldmc_cfg_check_keys(s, keys, err) != 0) return -1;
    int n_depth = 0;
    if (int_field(s, "in_channels", true, 1, 1 << 16, &c->in_channels, err) ||
        int_field(s, "out_channels", true, 1, 1 << 16, &c->out_channels, err) ||
        int_field(s, "model_channels", true, 32, 1 << 16, &c->model_channels, err) ||
        int_list(s, "channel_mult", true, false, 1, 64, c->channel_mult, LDMC_MAX_LEVELS,
                 &c->levels, err) ||
        int_field(s, "num_res_blocks", true, 1, 64, &c->num_res_blocks, err) ||
        int_list(s, "attention_resolutions", true, false, 1, 1 << 10, c->attention_resolutions,
                 LDMC_MAX_LEVELS, &c->n_attention_resolutions, err) ||
        int_list(s, "transformer_depth", true, true, 1, 64, c->transformer_depth, LDMC_MAX_LEVELS,
                 &n_depth, err) ||
        int_field(s, "num_head_channels", true, 1, 1 << 16, &c->num_head_channels, err) ||
        int_field(s, "context_dim", false, 1, 1 << 20, &c->context_dim, err) ||
        parse_vector(s, c, err) ||
        int_field(s, "pooled_dim", false, 1, 1 << 20, &c->pooled_dim, err))
        return -1;
    const ldmc_cfg *depth = ldmc_cfg_get(s, "transformer_depth");
    if (depth->kind == LDMC_CFG_SCALAR) // one depth for every level
        for (int i = 1; i < c->levels; i++)
            c->transformer_depth[i] = c->transformer_depth[0];
    else if (n_depth != c->levels)
        return ldmc_cfg_error(depth, err, "%d entries for %d levels", n_depth, c->levels);
    c->transformer_depth_middle = c->transformer_depth[c->levels - 1];
    if (int_field(s, "transformer_depth_middle", false, 1, 64, &c->transformer_depth_middle, err))
        return -1;
    for (int level = 0; level < c->levels; level++) {
        int ch = c->model_channels * c->channel_mult[level];
        if (ch % 32)
            return ldmc_cfg_error(ldmc_cfg_get(s, "channel_mult"), err,
                                  "level %d has %d channels: GroupNorm's 32 groups need a "
                                  "multiple of 32",
                                  level, ch);
        // transformers: at the levels attention_resolutions names, and the middle block's (at
        // the last level's width) always
        bool attention = ldmc_unet_level_has_attention(c, level) || level == c->levels - 1;
        if (attention && ch % c->num_head_channels)
            return ldmc_cfg_error(ldmc_cfg_get(s, "num_head_channels"), err,
                                  "%d channels (level %d%s) do not split into heads of %d "
                                  "channels: num_head_channels must divide the width of every "
                                  "level with attention",
                                  ch, level, level == c->levels - 1 ? ", the middle block's" : "",
                                  c->num_head_channels);
    }
    const ldmc_cfg *class_embed = ldmc_cfg_get(s, "class_embed");
    if (class_embed) {
        static const char *const class_keys[] = {"n_classes", "dim", NULL};
        if (class_embed->kind != LDMC_CFG_MAP)
            return ldmc_cfg_error(class_embed, err, "expected {n_classes: N, dim: D}");
        if (ldmc_cfg_check_keys(class_embed, class_keys, err) ||
            int_field(class_embed, "n_classes", true, 1, 1 << 24, &c->n_classes, err) ||
            int_field(class_embed, "dim", true, 1, 1 << 20, &c->class_dim, err))
            return -1;
        if (c->context_dim != c->class_dim)
            return ldmc_cfg_error(class_embed, err,
                                  "the class embedding is the cross-attention "
                                  "context: dim %d must equal context_dim %d",
                                  c->class_dim, c->context_dim);
    }
    int width = 0;
    for (int i = 0; i < c->n_vector; i++) {
        if (c->vector[i] == LDMC_VECTOR_POOLED_TEXT && c->pooled_dim == 0)
            return ldmc_cfg_error(ldmc_cfg_get(s, "vector"), err, "pooled_text needs pooled_dim");
        width += c->vector[i] == LDMC_VECTOR_POOLED_TEXT
                     ? c->pooled_dim
                     : LDMC_FOURIER_DIM * ldmc_vector_part_scalars(c->vector[i]);
    }
    c->adm_in_channels = width;
    const ldmc_cfg *adm = ldmc_cfg_get(s, "adm_in_channels");
    if (adm) {
        int64_t given = 0;
        if (ldmc_cfg_int(s, "adm_in_channels", true, 0, 1 << 24, &given, err)) return -1;
        if (given != width)
            return ldmc_cfg_error(adm, err, "%lld, but the vector parts add up to %d",
                                  (long long)given, width);
    }
    return 0;
}

int ldmc_vae_config_parse(const ldmc_cfg *s, ldmc_vae_config *c, ldmc_err *err) {
    static const char *const keys[] = {
        "in_channels", "out_channels", "ch",       "ch_mult",      "num_res_blocks",
        "z_channels",  "embed_dim",    "double_z", "scale_factor", NULL};
    *c = (ldmc_vae_config){.double_z = true, .scale_factor = 0.13025};
    if (s->kind != LDMC_CFG_MAP) return ldmc_cfg_error(s, err, "expected a map of VAE settings");
    if (ldmc_cfg_check_keys(s, keys, err) ||
        int_field(s, "in_channels", true, 1, 64, &c->in_channels, err) ||
        int_field(s, "out_channels", true, 1, 64, &c->out_channels, err) ||
        int_field(s, "ch", true, 32, 1 << 16, &c->ch, err) ||
        int_list(s, "ch_mult", true, false, 1, 64, c->ch_mult, LDMC_MAX_LEVELS, &c->levels, err) ||
        int_field(s, "num_res_blocks", true, 1, 64, &c->num_res_blocks, err) ||
        int_field(s, "z_channels", true, 1, 1024, &c->z_channels, err) ||
        int_field(s, "embed_dim", true, 1, 1024, &c->embed_dim, err) ||
        ldmc_cfg_bool(s, "double_z", false, &c->double_z, err) ||
        ldmc_cfg_double(s, "scale_factor", false, &c->scale_factor, err))
        return -1;
    for (int level = 0; level < c->levels; level++)
        if ((c->ch * c->ch_mult[level]) % 32)
            return ldmc_cfg_error(ldmc_cfg_get(s, "ch_mult"), err,
                                  "level %d has %d channels: not a multiple of 32 (GroupNorm)",
                                  level, c->ch * c->ch_mult[level]);
    if (!c->double_z)
        return ldmc_cfg_error(ldmc_cfg_get(s, "double_z"), err,
                              "only the KL autoencoder (double_z: true) is supported");
    return 0;
}

int ldmc_unet_pooled_text_dim(const ldmc_unet_config *c) {
    for (int i = 0; i < c->n_vector; i++)
        if (c->vector[i] == LDMC_VECTOR_POOLED_TEXT) return c->pooled_dim;
    return 0;
}

const char *ldmc_text_layout_name(ldmc_text_layout layout) {
    return layout == LDMC_TEXT_HF ? "hf" : "open_clip";
}

int ldmc_text_config_parse(const ldmc_cfg *s, ldmc_text_config *c, ldmc_err *err) {
    static const char *const keys[] = {
        "layout",    "vocab_size", "context_length", "width",          "heads", "layers",
        "mlp_width", "activation", "hidden_layer",   "projection_dim", NULL};
    *c = (ldmc_text_config){.context_length = 77, .vocab_size = 49408};
    if (s->kind != LDMC_CFG_MAP)
        return ldmc_cfg_error(s, err, "expected a map of text encoder settings");
    if (ldmc_cfg_check_keys(s, keys, err)) return -1;
    const ldmc_cfg *layout = ldmc_cfg_get(s, "layout"), *act = ldmc_cfg_get(s, "activation");
    if (!layout || layout->kind != LDMC_CFG_SCALAR ||
        (strcmp(layout->value, "hf") && strcmp(layout->value, "open_clip")))
        return ldmc_cfg_error(
            layout ? layout : s, err,
            "layout: expected hf (HF CLIPTextModel keys: CLIP ViT-L) or open_clip "
            "(open_clip keys: OpenCLIP bigG)");
    c->layout = strcmp(layout->value, "hf") ? LDMC_TEXT_OPEN_CLIP : LDMC_TEXT_HF;
    if (!act || act->kind != LDMC_CFG_SCALAR ||
        (strcmp(act->value, "quick_gelu") && strcmp(act->value, "gelu")))
        return ldmc_cfg_error(act ? act : s, err,
                              "activation: expected quick_gelu (CLIP ViT-L) or gelu (exact, bigG)");
    c->quick_gelu = !strcmp(act->value, "quick_gelu");
    if (int_field(s, "vocab_size", false, 3, 1 << 22, &c->vocab_size, err) ||
        int_field(s, "context_length", false, 2, 4096, &c->context_length, err) ||
        int_field(s, "width", true, 1, 1 << 16, &c->width, err) ||
        int_field(s, "heads", true, 1, 1024, &c->heads, err) ||
        int_field(s, "layers", true, 1, 256, &c->layers, err) ||
        int_field(s, "mlp_width", true, 1, 1 << 18, &c->mlp_width, err))
        return -1;
    c->hidden_layer = c->layers - 1;
    if (int_field(s, "hidden_layer", false, 1, c->layers, &c->hidden_layer, err) ||
        int_field(s, "projection_dim", false, 1, 1 << 16, &c->projection_dim, err))
        return -1;
    if (c->width % c->heads)
        return ldmc_cfg_error(ldmc_cfg_get(s, "heads"), err,
                              "width %d does not split into %d heads", c->width, c->heads);
    if (c->projection_dim && c->layout != LDMC_TEXT_OPEN_CLIP)
        return ldmc_cfg_error(ldmc_cfg_get(s, "projection_dim"), err,
                              "a pooled projection is an open_clip layout's (SDXL's CLIP ViT-L has "
                              "none)");
    return 0;
}

// The `text_encoders:` list: the UNet's context is their contexts side by side, its pooled text
// the one pooled output.
static int parse_text_encoders(const ldmc_cfg *list, ldmc_model_config *out, ldmc_err *err) {
    if (list->kind != LDMC_CFG_LIST || list->count < 1 || list->count > LDMC_MAX_TEXT_ENCODERS)
        return ldmc_cfg_error(list, err, "expected a list of 1 or 2 text encoders");
    int context = 0, pooled = 0, n_pooled = 0;
    for (int i = 0; i < list->count; i++) {
        ldmc_text_config *t = &out->text[i];
        if (ldmc_text_config_parse(list->items[i], t, err)) return -1;
        t->index = i;
        if (i && t->context_length != out->text[0].context_length)
            return ldmc_cfg_error(list->items[i], err,
                                  "context_length %d, encoder 0 has %d: their contexts go side by "
                                  "side, token for token",
                                  t->context_length, out->text[0].context_length);
        context += t->width;
        if (t->projection_dim) pooled = t->projection_dim, n_pooled++;
    }
    out->n_text = list->count;
    if (!out->has_unet) return 0;
    const ldmc_unet_config *u = &out->unet;
    if (context != u->context_dim)
        return ldmc_cfg_error(list, err,
                              "the encoders' widths add up to %d, but the UNet's context_dim is %d",
                              context, u->context_dim);
    if (ldmc_unet_pooled_text_dim(u) && (n_pooled != 1 || pooled != u->pooled_dim))
        return ldmc_cfg_error(list, err,
                              "the UNet's vector takes pooled text of %d features: exactly one "
                              "encoder must have projection_dim %d",
                              u->pooled_dim, u->pooled_dim);
    return 0;
}

int ldmc_model_config_load(const char *path, ldmc_model_config *out, ldmc_err *err) {
    static const char *const sections[] = {"unet", "vae", "text_encoders", NULL};
    *out = (ldmc_model_config){0};
    ldmc_cfg *root = ldmc_cfg_load(path, err);
    if (!root) return -1;
    int rc = ldmc_cfg_check_keys(root, sections, err);
    const ldmc_cfg *unet = ldmc_cfg_get(root, "unet"), *vae = ldmc_cfg_get(root, "vae");
    if (rc == 0 && !unet && !vae) rc = LDMC_ERR(err, "%s: no `unet:` or `vae:` section", path);
    if (rc == 0 && unet) rc = ldmc_unet_config_parse(unet, &out->unet, err);
    if (rc == 0 && vae) rc = ldmc_vae_config_parse(vae, &out->vae, err);
    out->has_unet = unet != NULL;
    out->has_vae = vae != NULL;
    const ldmc_cfg *text = ldmc_cfg_get(root, "text_encoders");
    if (rc == 0 && text && (!unet || out->unet.n_classes || !out->unet.context_dim))
        rc = ldmc_cfg_error(text, err, "text encoders condition a UNet with a text context_dim");
    if (rc == 0 && text) rc = parse_text_encoders(text, out, err);
    ldmc_cfg_free(root);
    return rc;
}
