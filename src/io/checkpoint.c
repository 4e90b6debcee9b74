// Checkpoint layouts, loading and saving (see checkpoint.h). Tested by tests/test_checkpoint.c.
//
// The diffusers names follow diffusers' own converter (loaders/single_file_utils.py,
// convert_ldm_unet_checkpoint and convert_ldm_vae_checkpoint): block indices by formula, the
// names inside blocks by the rename tables below.
#include "io/checkpoint.h"

#include <cjson/cJSON.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/nn.h"
#include "nn/unet.h"
#include "nn/vae.h"

// ---- the name-mapping tables
// ----------------------------------------------------------------------

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
static int unet_diffusers_key(const ldmc_unet_config *c, const char *key, char *out, size_t size) {
    char buf[512];
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
static int vae_diffusers_key(const ldmc_vae_config *c, const char *key, char *out, size_t size,
                             bool *flatten) {
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

int ldmc_map_key(const ldmc_key_map *map, const char *official, char *out, size_t size,
                 bool *flatten_1x1) {
    bool flatten = false;
    int rc = -1;
    if (map->layout == LDMC_LAYOUT_OFFICIAL && map->bare) { // the official key, unprefixed
        size_t skip = 0;
        if (!strncmp(official, LDMC_UNET_PREFIX, strlen(LDMC_UNET_PREFIX)))
            skip = strlen(LDMC_UNET_PREFIX);
        else if (!strncmp(official, LDMC_VAE_PREFIX, strlen(LDMC_VAE_PREFIX)))
            skip = strlen(LDMC_VAE_PREFIX);
        rc = put(out, size, "%s", official + skip);
    } else if (map->layout == LDMC_LAYOUT_OFFICIAL) {
        rc = put(out, size, "%s", official);
    } else if (map->unet && strncmp(official, LDMC_UNET_PREFIX, strlen(LDMC_UNET_PREFIX)) == 0) {
        rc = unet_diffusers_key(map->unet, official + strlen(LDMC_UNET_PREFIX), out, size);
    } else if (map->vae && strncmp(official, LDMC_VAE_PREFIX, strlen(LDMC_VAE_PREFIX)) == 0) {
        rc = vae_diffusers_key(map->vae, official + strlen(LDMC_VAE_PREFIX), out, size, &flatten);
    }
    if (flatten_1x1) *flatten_1x1 = flatten;
    return rc;
}

int ldmc_file_shape(const ldmc_param *param, const ldmc_key_map *map, int64_t *shape) {
    bool flatten = false;
    char key[512];
    if (ldmc_map_key(map, param->name, key, sizeof key, &flatten) != 0) flatten = false;
    if (!(param->flags & LDMC_PARAM_CONV)) {
        memcpy(shape, param->shape, (size_t)param->ndim * sizeof *shape);
        return param->ndim;
    }
    // ldmc (O, kH, kW, C) -> file (O, C, kH, kW), or (O, C) for a flattened 1x1
    shape[0] = param->shape[0];
    shape[1] = param->shape[3];
    if (flatten) return 2;
    shape[2] = param->shape[1];
    shape[3] = param->shape[2];
    return 4;
}

// ---- loading
// --------------------------------------------------------------------------------------

// Up to LIST_SHOWN names per kind of problem are named; the rest are counted.
enum { LIST_SHOWN = 4 };

typedef struct problem_list {
    const char *what;
    int count;
    char text[640];
    int len;
} problem_list;

static void note(problem_list *l, const char *fmt, ...) LDMC_PRINTF(2, 3);
static void note(problem_list *l, const char *fmt, ...) {
    if (l->count++ >= LIST_SHOWN || l->len >= (int)sizeof l->text - 1) return;
    va_list args;
    va_start(args, fmt);
    if (l->count > 1) l->len += snprintf(l->text + l->len, sizeof l->text - (size_t)l->len, "; ");
    if (l->len < (int)sizeof l->text)
        l->len += vsnprintf(l->text + l->len, sizeof l->text - (size_t)l->len, fmt, args);
    va_end(args);
}

static int describe(char *buf, int size, const problem_list *l) {
    if (!l->count) return 0;
    return snprintf(buf, (size_t)size, " %d %s: %s%s.", l->count, l->what, l->text,
                    l->count > LIST_SHOWN ? "; ..." : "");
}

static const char *shape_text(int ndim, const int64_t *shape, char *buf, size_t size) {
    ldmc_tensor t = ldmc_tensor_wrap(LDMC_F32, NULL, ndim, shape);
    return ldmc_shape_str(&t, buf, size);
}

static bool may_be_new(const ldmc_load_options *opt, const char *name) {
    for (int i = 0; opt && i < opt->n_may_be_new; i++)
        if (fnmatch(opt->may_be_new[i], name, 0) == 0) return true;
    return false;
}

static bool is_float(ldmc_dtype d) { return d == LDMC_F32 || d == LDMC_F16 || d == LDMC_BF16; }

// Reads one tensor into the weights, turning a file convolution (O, C, kH, kW) into (O, kH, kW, C).
static int read_param(const ldmc_safetensors *st, const ldmc_st_tensor *t, const ldmc_param *param,
                      float *dst, ldmc_err *err) {
    if (!(param->flags & LDMC_PARAM_CONV) || t->ndim == 2 ||
        (param->shape[1] == 1 && param->shape[2] == 1)) // 1x1: the two layouts coincide
        return ldmc_safetensors_read(st, t, dst, LDMC_F32, err);
    float *tmp = malloc((size_t)param->numel * sizeof *tmp);
    if (!tmp) return LDMC_ERR(err, "%s: out of memory reading '%s'", st->path, t->name);
    int rc = ldmc_safetensors_read(st, t, tmp, LDMC_F32, err);
    if (rc == 0)
        ldmc_conv_from_official(dst, tmp, param->shape[0], param->shape[1], param->shape[2],
                                param->shape[3]);
    free(tmp);
    return rc;
}

int ldmc_load_weights(ldmc_params *p, const ldmc_safetensors *st, const ldmc_key_map *map,
                      const char *domain, const ldmc_load_options *opt, ldmc_err *err) {
    ldmc_param_role role = opt ? opt->role : LDMC_ROLE_WEIGHTS;
    float *weights = p->buffers[role];
    if (!weights)
        return LDMC_ERR(err, "%s: the model's %s buffer is not allocated", st->path,
                        ldmc_param_role_name(role));
    problem_list missing = {.what = "missing"}, unexpected = {.what = "unexpected"},
                 wrong = {.what = "with the wrong shape or dtype"},
                 unmapped = {.what = "without an equivalent in this layout"};
    const ldmc_st_tensor **found = calloc((size_t)(p->count ? p->count : 1), sizeof *found);
    bool *used = calloc((size_t)(st->count ? st->count : 1), sizeof *used);
    if (!found || !used) {
        free(found);
        free(used);
        return LDMC_ERR(err, "%s: out of memory", st->path);
    }
    int n_new = 0;
    char key[512], a[96], b[96];
    for (int i = 0; i < p->count; i++) {
        const ldmc_param *param = &p->items[i];
        if (ldmc_map_key(map, param->name, key, sizeof key, NULL) != 0) {
            note(&unmapped, "%s", param->name);
            continue;
        }
        const ldmc_st_tensor *t = ldmc_safetensors_find(st, key);
        if (!t) {
            if (may_be_new(opt, param->name))
                n_new++;
            else
                note(&missing, "%s", key);
            continue;
        }
        used[t - st->tensors] = true;
        int64_t shape[LDMC_MAX_DIMS];
        int ndim = ldmc_file_shape(param, map, shape);
        bool same = ndim == t->ndim && is_float(t->dtype);
        for (int d = 0; same && d < ndim; d++)
            same = shape[d] == t->shape[d];
        if (!same)
            note(&wrong, "%s is %s %s, the model needs F32/F16/BF16 %s", key,
                 ldmc_dtype_name(t->dtype), shape_text(t->ndim, t->shape, a, sizeof a),
                 shape_text(ndim, shape, b, sizeof b));
        else
            found[i] = t;
    }
    size_t domain_len = strlen(domain);
    for (int i = 0; i < st->count; i++)
        if (!used[i] && strncmp(st->tensors[i].name, domain, domain_len) == 0)
            note(&unexpected, "%s", st->tensors[i].name);
    int rc = 0;
    if (missing.count || unexpected.count || wrong.count || unmapped.count) {
        char text[1800];
        int len = snprintf(text, sizeof text, "%s does not match the model:", st->path);
        const problem_list *lists[] = {&missing, &unexpected, &wrong, &unmapped};
        for (int k = 0; k < 4 && len < (int)sizeof text; k++)
            len += describe(text + len, (int)sizeof text - len, lists[k]);
        if (missing.count && len < (int)sizeof text)
            snprintf(text + len, sizeof text - (size_t)len,
                     " Parameters meant to start fresh must be declared new.");
        rc = LDMC_ERR(err, "%s", text);
    }
    for (int i = 0; rc == 0 && i < p->count; i++)
        if (found[i])
            rc = read_param(st, found[i], &p->items[i], weights + p->items[i].offset, err);
    if (opt && opt->n_new) *opt->n_new = n_new;
    free(found);
    free(used);
    return rc;
}

// ---- saving
// ---------------------------------------------------------------------------------------

void ldmc_conv_to_official(float *dst, const float *src, int64_t O, int64_t kh, int64_t kw,
                           int64_t C) {
    for (int64_t o = 0; o < O; o++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < kh * kw; i++)
                dst[(o * C + c) * kh * kw + i] = src[(o * kh * kw + i) * C + c];
}

void ldmc_conv_from_official(float *dst, const float *src, int64_t O, int64_t kh, int64_t kw,
                             int64_t C) {
    for (int64_t o = 0; o < O; o++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < kh * kw; i++)
                dst[(o * kh * kw + i) * C + c] = src[(o * C + c) * kh * kw + i];
}

// The entry's `data` is the parameter (O, kH, kW, C), `shape` the file's (O, C, kH, kW).
static void produce_conv(const ldmc_st_entry *e, void *dst) {
    ldmc_conv_to_official(dst, e->data, e->shape[0], e->shape[2], e->shape[3], e->shape[1]);
}

int ldmc_save_weights(const char *path, const ldmc_save_part *parts, int n_parts, ldmc_dtype dtype,
                      const ldmc_safetensors *passthrough, ldmc_err *err) {
    if (!is_float(dtype))
        return LDMC_ERR(err, "%s: weights are saved as F32, F16 or BF16, not %s", path,
                        ldmc_dtype_name(dtype));
    int total = passthrough ? passthrough->count : 0;
    for (int k = 0; k < n_parts; k++)
        total += parts[k].params->count;
    ldmc_st_entry *entries = calloc((size_t)(total ? total : 1), sizeof *entries);
    char *names = calloc((size_t)(total ? total : 1), 512);
    if (!entries || !names) {
        free(entries);
        free(names);
        return LDMC_ERR(err, "%s: out of memory", path);
    }
    int n = 0, rc = 0;
    for (int k = 0; k < n_parts && rc == 0; k++) {
        const ldmc_params *p = parts[k].params;
        const float *buffer = p->buffers[parts[k].role];
        if (!buffer) {
            rc = LDMC_ERR(err, "%s: the %s buffer to save does not exist", path,
                          ldmc_param_role_name(parts[k].role));
            break;
        }
        for (int i = 0; i < p->count && rc == 0; i++) {
            const ldmc_param *param = &p->items[i];
            ldmc_st_entry *e = &entries[n];
            char *name = names + (size_t)n * 512;
            bool flatten = false;
            if (ldmc_map_key(&parts[k].map, param->name, name, 512, &flatten) != 0) {
                rc = LDMC_ERR(err, "%s: '%s' has no equivalent in the diffusers layout", path,
                              param->name);
                break;
            }
            *e = (ldmc_st_entry){.name = name,
                                 .dtype = dtype,
                                 .src_dtype = LDMC_F32,
                                 .data = buffer + param->offset};
            e->ndim = ldmc_file_shape(param, &parts[k].map, e->shape);
            bool spatial = (param->flags & LDMC_PARAM_CONV) && !flatten &&
                           !(param->shape[1] == 1 && param->shape[2] == 1);
            if (spatial) e->produce = produce_conv;
            n++;
        }
    }
    for (int i = 0; rc == 0 && passthrough && i < passthrough->count; i++) {
        const ldmc_st_tensor *t = &passthrough->tensors[i];
        bool written = false;
        for (int j = 0; j < n && !written; j++)
            written = strcmp(entries[j].name, t->name) == 0;
        if (written) continue;
        ldmc_st_entry *e = &entries[n++];
        *e = (ldmc_st_entry){.name = t->name,
                             .dtype = t->dtype,
                             .src_dtype = t->dtype,
                             .ndim = t->ndim,
                             .data = t->data};
        memcpy(e->shape, t->shape, sizeof e->shape);
    }
    ldmc_st_meta meta[] = {{"format", "pt"}, {"written_by", "ldmc"}};
    if (rc == 0) rc = ldmc_safetensors_write(path, entries, n, meta, 2, err);
    free(entries);
    free(names);
    return rc;
}

// ---- diffusers configs
// ----------------------------------------------------------------------------

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

char *ldmc_diffusers_config_json(const ldmc_key_map *map, ldmc_err *err) {
    cJSON *j = map->unet  ? unet_config_json(map->unet, err)
               : map->vae ? vae_config_json(map->vae)
                          : NULL;
    if (!j) {
        if (!map->unet && !map->vae) LDMC_ERR(err, "no model config for the diffusers config.json");
        return NULL;
    }
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    if (!text) LDMC_ERR(err, "out of memory printing a diffusers config");
    return text;
}
