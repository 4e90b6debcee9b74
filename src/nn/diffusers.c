// The diffusers layout of the UNet and the VAE (see diffusers.h). The names follow diffusers' own
// converter (loaders/single_file_utils.py, convert_ldm_unet_checkpoint and
// convert_ldm_vae_checkpoint): block indices by formula, the names inside blocks by the rename
// tables below. Tested by tests/test_weights.c and tests/test_official_layout.sh.
#include "nn/diffusers.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "nn/model_config.h"

// ---- key names ------------------------------------------------------------------------------

typedef struct key_rename {
    const char *official, *diffusers;
} key_rename;

// Inside a UNet ResBlock.
static const key_rename unet_resnet_renames[] = {
    {"in_layers.0.", "norm1."},          {"in_layers.2.", "conv1."},
    {"emb_layers.1.", "time_emb_proj."}, {"out_layers.0.", "norm2."},
    {"out_layers.3.", "conv2."},         {"skip_connection.", "conv_shortcut."},
};

// Inside a VAE ResnetBlock and the VAE's mid attention (whose 1x1 convs become linear weights).
static const key_rename vae_renames[] = {
    {"nin_shortcut.", "conv_shortcut."},
    {"norm.", "group_norm."},
    {"q.", "to_q."},
    {"k.", "to_k."},
    {"v.", "to_v."},
    {"proj_out.", "to_out.0."},
};

// Top-level UNet names.
static const key_rename unet_top_renames[] = {
    {"time_embed.0.", "time_embedding.linear_1."},
    {"time_embed.2.", "time_embedding.linear_2."},
    {"label_emb.0.0.", "add_embedding.linear_1."},
    {"label_emb.0.2.", "add_embedding.linear_2."},
    {"input_blocks.0.0.", "conv_in."},
    {"out.0.", "conv_norm_out."},
    {"out.2.", "conv_out."},
};

static int put(char *out, size_t size, const char *fmt, ...) LDMC_PRINTF(3, 4);
static int put(char *out, size_t size, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(out, size, fmt, args);
    va_end(args);
    return n >= 0 && (size_t)n < size ? 0 : -1;
}

// Applies the first rename whose official prefix starts `rest`; copies `rest` unchanged when
// none does.
static const char *renamed(const key_rename *table, size_t count, const char *rest, char *buf,
                           size_t size) {
    for (size_t i = 0; i < count; i++) {
        size_t len = strlen(table[i].official);
        if (strncmp(rest, table[i].official, len) == 0) {
            snprintf(buf, size, "%s%s", table[i].diffusers, rest + len);
            return buf;
        }
    }
    snprintf(buf, size, "%s", rest);
    return buf;
}

#define RENAMED(table, rest, buf)                                                                  \
    renamed(table, sizeof table / sizeof table[0], rest, buf, sizeof buf)

// key is an official UNet key without "model.diffusion_model.".
int ldmc_unet_diffusers_key(const void *config, const char *key, char *out, size_t size,
                            bool *flatten_1x1) {
    const ldmc_unet_config *c = config;
    char buf[512];
    *flatten_1x1 = false;
    const int per_level = c->num_res_blocks + 1;
    int i, j, n = 0;
    for (size_t r = 0; r < sizeof unet_top_renames / sizeof unet_top_renames[0]; r++)
        if (strncmp(key, unet_top_renames[r].official, strlen(unet_top_renames[r].official)) == 0)
            return put(out, size, "%s", RENAMED(unet_top_renames, key, buf));
    if (sscanf(key, "input_blocks.%d.%d.%n", &i, &j, &n) == 2 && n > 0 && i >= 1) {
        int level = (i - 1) / per_level, slot = (i - 1) % per_level;
        if (slot == c->num_res_blocks) // the level's downsampling conv, key `op`
            return strncmp(key + n, "op.", 3)
                       ? -1
                       : put(out, size, "down_blocks.%d.downsamplers.0.conv.%s", level,
                             key + n + 3);
        if (j == 0)
            return put(out, size, "down_blocks.%d.resnets.%d.%s", level, slot,
                       RENAMED(unet_resnet_renames, key + n, buf));
        return put(out, size, "down_blocks.%d.attentions.%d.%s", level, slot, key + n);
    }
    if (sscanf(key, "middle_block.%d.%n", &j, &n) == 1 && n > 0) {
        if (j == 1) return put(out, size, "mid_block.attentions.0.%s", key + n);
        return put(out, size, "mid_block.resnets.%d.%s", j / 2,
                   RENAMED(unet_resnet_renames, key + n, buf));
    }
    if (sscanf(key, "output_blocks.%d.%d.%n", &i, &j, &n) == 2 && n > 0) {
        int level = i / per_level, slot = i % per_level;
        if (j == 0)
            return put(out, size, "up_blocks.%d.resnets.%d.%s", level, slot,
                       RENAMED(unet_resnet_renames, key + n, buf));
        if (strncmp(key + n, "conv.", 5) == 0) // the level's upsampling conv
            return put(out, size, "up_blocks.%d.upsamplers.0.conv.%s", level, key + n + 5);
        return put(out, size, "up_blocks.%d.attentions.%d.%s", level, slot, key + n);
    }
    return -1; // e.g. a class embedding: diffusers' UNet has no such conditioner
}

// key is an official VAE key without "first_stage_model.".
int ldmc_vae_diffusers_key(const void *config, const char *key, char *out, size_t size,
                           bool *flatten) {
    const ldmc_vae_config *c = config;
    char buf[512];
    int i, j, n = 0;
    const char *coder = strncmp(key, "encoder.", 8) == 0 ? "encoder" : "decoder";
    *flatten = false;
    if (sscanf(key, "encoder.down.%d.block.%d.%n", &i, &j, &n) == 2 && n > 0)
        return put(out, size, "encoder.down_blocks.%d.resnets.%d.%s", i, j,
                   RENAMED(vae_renames, key + n, buf));
    if (sscanf(key, "encoder.down.%d.downsample.%n", &i, &n) == 1 && n > 0)
        return put(out, size, "encoder.down_blocks.%d.downsamplers.0.%s", i, key + n);
    if (sscanf(key, "decoder.up.%d.block.%d.%n", &i, &j, &n) == 2 && n > 0)
        return put(out, size, "decoder.up_blocks.%d.resnets.%d.%s", c->levels - 1 - i, j,
                   RENAMED(vae_renames, key + n, buf));
    if (sscanf(key, "decoder.up.%d.upsample.%n", &i, &n) == 1 && n > 0)
        return put(out, size, "decoder.up_blocks.%d.upsamplers.0.%s", c->levels - 1 - i, key + n);
    const char *rest = key + 8; // after "encoder." or "decoder."
    if (strncmp(rest, "mid.block_1.", 12) == 0)
        return put(out, size, "%s.mid_block.resnets.0.%s", coder,
                   RENAMED(vae_renames, rest + 12, buf));
    if (strncmp(rest, "mid.block_2.", 12) == 0)
        return put(out, size, "%s.mid_block.resnets.1.%s", coder,
                   RENAMED(vae_renames, rest + 12, buf));
    if (strncmp(rest, "mid.attn_1.", 11) == 0) {
        const char *r = RENAMED(vae_renames, rest + 11, buf);
        *flatten = strncmp(r, "group_norm.", 11) != 0 && strstr(r, ".weight") != NULL;
        return put(out, size, "%s.mid_block.attentions.0.%s", coder, r);
    }
    if (strncmp(rest, "norm_out.", 9) == 0)
        return put(out, size, "%s.conv_norm_out.%s", coder, rest + 9);
    return put(out, size, "%s", key); // conv_in, conv_out, quant_conv, post_quant_conv
}

// ---- config.json ----------------------------------------------------------------------------

static cJSON *int_array(const int *values, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(values[i]));
    return a;
}

static cJSON *string_array(const char *const *values, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateString(values[i]));
    return a;
}

static cJSON *unet_config_json(const ldmc_unet_config *c, ldmc_err *err) {
    if (c->n_classes) {
        LDMC_ERR(err, "class-conditional UNets have no diffusers layout (their class embedding is "
                      "a conditioner)");
        return NULL;
    }
    if (c->transformer_depth_middle != c->transformer_depth[c->levels - 1]) {
        LDMC_ERR(err,
                 "diffusers gives the middle block the last level's transformer depth (%d), "
                 "not %d",
                 c->transformer_depth[c->levels - 1], c->transformer_depth_middle);
        return NULL;
    }
    bool text_time = c->n_vector > 0;
    for (int i = 0; i < c->n_vector; i++)
        if (c->vector[i] == LDMC_VECTOR_POOLED_TEXT && i != 0) text_time = false;
    if (c->n_vector && !text_time) {
        LDMC_ERR(err, "diffusers' text_time embedding wants the pooled text first in the vector");
        return NULL;
    }
    int widths[LDMC_MAX_LEVELS], heads[LDMC_MAX_LEVELS];
    const char *down[LDMC_MAX_LEVELS], *up[LDMC_MAX_LEVELS];
    for (int i = 0; i < c->levels; i++) {
        widths[i] = c->model_channels * c->channel_mult[i];
        heads[i] = widths[i] / c->num_head_channels;
        bool attn = ldmc_unet_level_has_attention(c, i);
        down[i] = attn ? "CrossAttnDownBlock2D" : "DownBlock2D";
        up[c->levels - 1 - i] = attn ? "CrossAttnUpBlock2D" : "UpBlock2D";
    }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "_class_name", "UNet2DConditionModel");
    cJSON_AddStringToObject(j, "act_fn", "silu");
    if (text_time) {
        cJSON_AddStringToObject(j, "addition_embed_type", "text_time");
        cJSON_AddNumberToObject(j, "addition_time_embed_dim", LDMC_FOURIER_DIM);
        cJSON_AddNumberToObject(j, "projection_class_embeddings_input_dim", c->adm_in_channels);
    }
    cJSON_AddItemToObject(j, "attention_head_dim", int_array(heads, c->levels));
    cJSON_AddItemToObject(j, "block_out_channels", int_array(widths, c->levels));
    cJSON_AddNumberToObject(j, "cross_attention_dim", c->context_dim);
    cJSON_AddItemToObject(j, "down_block_types", string_array(down, c->levels));
    cJSON_AddBoolToObject(j, "flip_sin_to_cos", true);
    cJSON_AddNumberToObject(j, "freq_shift", 0);
    cJSON_AddNumberToObject(j, "in_channels", c->in_channels);
    cJSON_AddNumberToObject(j, "layers_per_block", c->num_res_blocks);
    cJSON_AddStringToObject(j, "mid_block_type", "UNetMidBlock2DCrossAttn");
    cJSON_AddNumberToObject(j, "norm_eps", 1e-5);
    cJSON_AddNumberToObject(j, "norm_num_groups", 32);
    cJSON_AddNumberToObject(j, "out_channels", c->out_channels);
    cJSON_AddItemToObject(j, "transformer_layers_per_block",
                          int_array(c->transformer_depth, c->levels));
    cJSON_AddItemToObject(j, "up_block_types", string_array(up, c->levels));
    cJSON_AddBoolToObject(j, "use_linear_projection", true);
    return j;
}

static cJSON *vae_config_json(const ldmc_vae_config *c) {
    int widths[LDMC_MAX_LEVELS];
    const char *down[LDMC_MAX_LEVELS], *up[LDMC_MAX_LEVELS];
    for (int i = 0; i < c->levels; i++) {
        widths[i] = c->ch * c->ch_mult[i];
        down[i] = "DownEncoderBlock2D";
        up[i] = "UpDecoderBlock2D";
    }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "_class_name", "AutoencoderKL");
    cJSON_AddStringToObject(j, "act_fn", "silu");
    cJSON_AddItemToObject(j, "block_out_channels", int_array(widths, c->levels));
    cJSON_AddItemToObject(j, "down_block_types", string_array(down, c->levels));
    cJSON_AddNumberToObject(j, "in_channels", c->in_channels);
    cJSON_AddNumberToObject(j, "latent_channels", c->embed_dim);
    cJSON_AddNumberToObject(j, "layers_per_block", c->num_res_blocks);
    cJSON_AddNumberToObject(j, "norm_num_groups", 32);
    cJSON_AddNumberToObject(j, "out_channels", c->out_channels);
    cJSON_AddNumberToObject(j, "scaling_factor", c->scale_factor);
    cJSON_AddItemToObject(j, "up_block_types", string_array(up, c->levels));
    return j;
}

// A cJSON object printed to a string (to free), the object freed.
static char *printed(cJSON *j, ldmc_err *err) {
    if (!j) return NULL;
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    if (!text) LDMC_ERR(err, "out of memory printing a diffusers config");
    return text;
}

char *ldmc_unet_diffusers_config(const void *config, ldmc_err *err) {
    return printed(unet_config_json(config, err), err);
}

char *ldmc_vae_diffusers_config(const void *config, ldmc_err *err) {
    return printed(vae_config_json(config), err);
}

// ---- the text encoders: transformers' CLIPTextModel (text_encoder/) and
// CLIPTextModelWithProjection (text_encoder_2/) -------------------------------------------------

// open_clip's names -> transformers' (the hf layout's keys are transformers' already).
static const char *const open_clip_renames[][2] = {
    {"token_embedding.weight", "text_model.embeddings.token_embedding.weight"},
    {"positional_embedding", "text_model.embeddings.position_embedding.weight"},
    {"ln_final.", "text_model.final_layer_norm."},
};
static const char *const open_clip_block_renames[][2] = {
    {"ln_1.", "layer_norm1."},
    {"ln_2.", "layer_norm2."},
    {"attn.out_proj.", "self_attn.out_proj."},
    {"mlp.c_fc.", "mlp.fc1."},
    {"mlp.c_proj.", "mlp.fc2."},
};

int ldmc_text_diffusers_key(const void *config, const char *key, char *out, size_t size,
                            bool *flatten_1x1) {
    const ldmc_text_config *c = config;
    *flatten_1x1 = false;
    int n = -1;
    if (c->layout == LDMC_TEXT_HF) {
        n = snprintf(out, size, "%s", key);
        return n >= 0 && (size_t)n < size ? 0 : -1;
    }
    for (size_t i = 0; i < sizeof open_clip_renames / sizeof *open_clip_renames; i++) {
        size_t len = strlen(open_clip_renames[i][0]);
        if (!strncmp(key, open_clip_renames[i][0], len))
            n = snprintf(out, size, "%s%s", open_clip_renames[i][1], key + len);
    }
    int block, used = 0;
    if (n < 0 && sscanf(key, "transformer.resblocks.%d.%n", &block, &used) == 1 && used)
        for (size_t i = 0; i < sizeof open_clip_block_renames / sizeof *open_clip_block_renames;
             i++) {
            size_t len = strlen(open_clip_block_renames[i][0]);
            if (!strncmp(key + used, open_clip_block_renames[i][0], len))
                n = snprintf(out, size, "text_model.encoder.layers.%d.%s%s", block,
                             open_clip_block_renames[i][1], key + used + len);
        }
    return n >= 0 && (size_t)n < size ? 0
                                      : -1; // in_proj, text_projection: split; logit_scale: none
}

int ldmc_text_diffusers_split(const void *config, const char *key, char names[][256],
                              bool *transpose) {
    const ldmc_text_config *c = config;
    *transpose = false;
    if (c->layout != LDMC_TEXT_OPEN_CLIP) return 0;
    if (!strcmp(key, "text_projection")) { // P (in, out) is used as x P; a Linear holds P^T
        snprintf(names[0], 256, "text_projection.weight");
        *transpose = true;
        return 1;
    }
    int block, used = 0;
    if (sscanf(key, "transformer.resblocks.%d.attn.in_proj_%n", &block, &used) != 1 || !used)
        return 0;
    const char *kind = key + used; // weight or bias: rows q, k, v
    if (strcmp(kind, "weight") && strcmp(kind, "bias")) return 0;
    static const char *const qkv[3] = {"q", "k", "v"};
    for (int j = 0; j < 3; j++)
        snprintf(names[j], 256, "text_model.encoder.layers.%d.self_attn.%s_proj.%s", block, qkv[j],
                 kind);
    return 3;
}

char *ldmc_text_diffusers_config(const void *config, ldmc_err *err) {
    const ldmc_text_config *c = config;
    bool projection = c->projection_dim > 0;
    cJSON *j = cJSON_CreateObject();
    const char *architectures[1] = {projection ? "CLIPTextModelWithProjection" : "CLIPTextModel"};
    cJSON_AddItemToObject(j, "architectures", string_array(architectures, 1));
    cJSON_AddNumberToObject(j, "attention_dropout", 0.0);
    cJSON_AddNumberToObject(j, "bos_token_id", 0);
    cJSON_AddNumberToObject(j, "dropout", 0.0);
    cJSON_AddNumberToObject(j, "eos_token_id", 2);
    cJSON_AddStringToObject(j, "hidden_act", c->quick_gelu ? "quick_gelu" : "gelu");
    cJSON_AddNumberToObject(j, "hidden_size", c->width);
    cJSON_AddNumberToObject(j, "initializer_factor", 1.0);
    cJSON_AddNumberToObject(j, "initializer_range", 0.02);
    cJSON_AddNumberToObject(j, "intermediate_size", c->mlp_width);
    cJSON_AddNumberToObject(j, "layer_norm_eps", 1e-5);
    cJSON_AddNumberToObject(j, "max_position_embeddings", c->context_length);
    cJSON_AddStringToObject(j, "model_type", "clip_text_model");
    cJSON_AddNumberToObject(j, "num_attention_heads", c->heads);
    cJSON_AddNumberToObject(j, "num_hidden_layers", c->layers);
    cJSON_AddNumberToObject(j, "pad_token_id", 1);
    cJSON_AddNumberToObject(j, "projection_dim", projection ? c->projection_dim : c->width);
    cJSON_AddStringToObject(j, "torch_dtype", "float32");
    cJSON_AddNumberToObject(j, "vocab_size", c->vocab_size);
    return printed(j, err);
}
