// Training configs (see train_config.h). Tested by tests/test_train.c.
#include "train/train_config.h"

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/rng.h"
#include "io/files.h"

// A path relative to the config's folder (unless absolute), resolved (see ldmc_path_resolve).
static void resolve(const char *config_path, const char *value, char *out) {
    char copy[LDMC_PATH_MAX];
    snprintf(copy, sizeof copy, "%s", config_path);
    const char *dir = dirname(copy);
    if (value[0] && ldmc_path_resolve(dir, value, out, LDMC_PATH_MAX) == 0) return;
    if (!value[0] || value[0] == '/') // (too long to resolve: as written)
        snprintf(out, LDMC_PATH_MAX, "%s", value);
    else
        snprintf(out, LDMC_PATH_MAX, "%s/%s", dir, value);
}

static int get_string(const ldmc_cfg *map, const char *key, bool required, const char **out,
                      ldmc_err *err) {
    const ldmc_cfg *n = ldmc_cfg_get(map, key);
    if (!n) {
        if (!required) return 0;
        char path[256];
        return LDMC_ERR(err, "%s:%d: %s%s%s: missing (required)", map->file, map->line,
                        ldmc_cfg_path(map, path, sizeof path), map->parent ? "." : "", key);
    }
    if (n->kind != LDMC_CFG_SCALAR) return ldmc_cfg_error(n, err, "expected a text value");
    *out = n->value;
    return 0;
}

static int get_path(const ldmc_cfg *map, const char *key, bool required, const char *config_path,
                    char *out, ldmc_err *err) {
    const char *v = NULL;
    if (get_string(map, key, required, &v, err) != 0) return -1;
    if (v) resolve(config_path, v, out);
    return 0;
}

static int get_choice(const ldmc_cfg *map, const char *key, const char *const *names, int *out,
                      ldmc_err *err) {
    const char *v = NULL;
    if (get_string(map, key, false, &v, err) != 0) return -1;
    if (!v) return 0;
    char list[256] = "";
    for (int i = 0; names[i]; i++) {
        if (!strcmp(v, names[i])) {
            *out = i;
            return 0;
        }
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", names[i]);
    }
    return ldmc_cfg_error(ldmc_cfg_get(map, key), err, "'%s' is not one of: %s", v, list);
}

// A list of at most LDMC_MAX_PATTERNS strings (`what`: glob patterns, prompts).
static int get_strings(const ldmc_cfg *map, const char *key, const char *what, char **out,
                       int *count, ldmc_err *err) {
    const ldmc_cfg *n = ldmc_cfg_get(map, key);
    *count = 0;
    if (!n) return 0;
    if (n->kind != LDMC_CFG_LIST || n->count > LDMC_MAX_PATTERNS)
        return ldmc_cfg_error(n, err, "expected a list of at most %d %s", LDMC_MAX_PATTERNS, what);
    for (int i = 0; i < n->count; i++) {
        if (n->items[i]->kind != LDMC_CFG_SCALAR)
            return ldmc_cfg_error(n->items[i], err, "expected one of the %s", what);
        out[(*count)++] = strdup(n->items[i]->value);
    }
    return 0;
}

static int get_int(const ldmc_cfg *map, const char *key, int64_t min, int64_t max, int64_t *out,
                   ldmc_err *err) {
    return map ? ldmc_cfg_int(map, key, false, min, max, out, err) : 0;
}

static int get_int32(const ldmc_cfg *map, const char *key, int min, int max, int *out,
                     ldmc_err *err) {
    int64_t v = *out;
    if (get_int(map, key, min, max, &v, err) != 0) return -1;
    *out = (int)v;
    return 0;
}

static int get_double(const ldmc_cfg *map, const char *key, double min, double max, double *out,
                      ldmc_err *err) {
    if (!map || ldmc_cfg_double(map, key, false, out, err) != 0) return map ? -1 : 0;
    if (*out < min || *out > max)
        return ldmc_cfg_error(ldmc_cfg_get(map, key), err, "%g is outside [%g, %g]", *out, min,
                              max);
    return 0;
}

// A model given as a file (a path) or inline (a map with a `unet:` or `vae:` section's keys).
static int get_model(const ldmc_cfg *root, const char *key, const char *config_path, bool want_vae,
                     ldmc_model_config *out, ldmc_err *err) {
    const ldmc_cfg *n = ldmc_cfg_get(root, key);
    if (!n) return 1;
    if (n->kind == LDMC_CFG_SCALAR) {
        char path[LDMC_PATH_MAX];
        resolve(config_path, n->value, path);
        if (ldmc_model_config_load(path, out, err) != 0) return -1;
    } else if (want_vae) {
        out->has_vae = true;
        if (ldmc_vae_config_parse(n, &out->vae, err) != 0) return -1;
    } else {
        out->has_unet = true;
        if (ldmc_unet_config_parse(n, &out->unet, err) != 0) return -1;
    }
    if (want_vae ? !out->has_vae : !out->has_unet)
        return ldmc_cfg_error(n, err, "expected a %s config", want_vae ? "vae" : "unet");
    return 0;
}

static const char *const task_names[] = {"diffusion", "vae", NULL};

const char *ldmc_task_name(ldmc_task task) { return task_names[task]; }

const ldmc_vae_config *ldmc_train_config_vae(const ldmc_train_config *c) {
    return c->task == LDMC_TASK_VAE ? &c->model.vae : &c->vae;
}

static int parse(const ldmc_cfg *root, ldmc_train_config *c, ldmc_err *err) {
    static const char *const top[] = {"task",  "model",      "vae",      "vae_weights", "init",
                                      "text",  "new_params", "freeze",   "data",        "diffusion",
                                      "optim", "ema",        "vae_loss", "train",       "sample",
                                      "dist",  NULL};
    if (ldmc_cfg_check_keys(root, top, err) != 0) return -1;
    int task = 0;
    if (get_choice(root, "task", task_names, &task, err) != 0) return -1;
    c->task = (ldmc_task)task;
    bool vae_task = c->task == LDMC_TASK_VAE;
    int rc = get_model(root, "model", c->source_path, vae_task, &c->model, err);
    if (rc)
        return rc > 0
                   ? LDMC_ERR(err, "%s: `model:` is required (a model config file)", c->source_path)
                   : -1;
    if (!vae_task) {
        ldmc_model_config vae = {0};
        rc = get_model(root, "vae", c->source_path, true, &vae, err);
        if (rc < 0) return -1;
        c->has_vae = rc == 0;
        c->vae = vae.vae;
    }
    if (get_path(root, "vae_weights", false, c->source_path, c->vae_weights, err) ||
        get_path(root, "init", false, c->source_path, c->init, err) ||
        get_strings(root, "new_params", "glob patterns", c->new_params, &c->n_new_params, err) ||
        get_strings(root, "freeze", "glob patterns", c->freeze, &c->n_freeze, err))
        return -1;
    const ldmc_cfg *text = ldmc_cfg_get(root, "text");
    if (text) {
        static const char *const keys[] = {"vocab", "weights", "uncond", "train", "lr", NULL};
        static const char *const unconds[] = {"zeros", "empty", NULL};
        int uncond = 0;
        if (text->kind != LDMC_CFG_MAP)
            return ldmc_cfg_error(text, err, "expected {vocab: ..., weights: ..., uncond: ...}");
        if (ldmc_cfg_check_keys(text, keys, err) ||
            get_path(text, "vocab", false, c->source_path, c->text_vocab, err) ||
            get_path(text, "weights", false, c->source_path, c->text_weights, err) ||
            get_choice(text, "uncond", unconds, &uncond, err) ||
            ldmc_cfg_bool(text, "train", false, &c->text_train, err))
            return -1;
        const ldmc_cfg *lr = ldmc_cfg_get(text, "lr");
        c->text_lr[0] = c->text_lr[1] = -1; // optim.lr (known once optim is read)
        if (lr && lr->kind == LDMC_CFG_SCALAR) {
            if (ldmc_cfg_double(text, "lr", false, &c->text_lr[0], err)) return -1;
            c->text_lr[1] = c->text_lr[0];
        } else if (lr) {
            if (lr->kind != LDMC_CFG_LIST || lr->count < 1 || lr->count > 2)
                return ldmc_cfg_error(lr, err, "expected a learning rate, or one per encoder");
            for (int i = 0; i < lr->count; i++) {
                char *end;
                const char *v = lr->items[i]->value;
                c->text_lr[i] = v ? strtod(v, &end) : -1;
                if (!v || *end || c->text_lr[i] < 0)
                    return ldmc_cfg_error(lr->items[i], err, "expected a learning rate >= 0");
            }
            if (lr->count == 1) c->text_lr[1] = c->text_lr[0];
        }
        if (lr && !c->text_train)
            return ldmc_cfg_error(lr, err, "text.lr without text.train: true");
        if (lr && (c->text_lr[0] < 0 || c->text_lr[1] < 0))
            return ldmc_cfg_error(lr, err, "a learning rate must be >= 0");
        c->text_uncond_empty = uncond == 1;
        if (!c->model.n_text)
            return ldmc_cfg_error(text, err, "the model (%s) has no text_encoders", c->source_path);
    }

    const ldmc_cfg *data = ldmc_cfg_get(root, "data");
    if (!data || data->kind != LDMC_CFG_MAP)
        return LDMC_ERR(err, "%s: a `data:` section is required", c->source_path);
    static const char *const data_keys[] = {"source",     "path",    "labels",   "buckets",
                                            "batch_size", "workers", "prefetch", "flip",
                                            "min_size",   NULL};
    static const char *const sources[] = {"images", "cache", NULL};
    static const char *const labels[] = {"none", "folders", "metadata", NULL};
    int source = 0, lab = 0;
    if (ldmc_cfg_check_keys(data, data_keys, err) ||
        get_choice(data, "source", sources, &source, err) ||
        get_path(data, "path", true, c->source_path, c->data_path, err) ||
        get_choice(data, "labels", labels, &lab, err) ||
        get_int32(data, "batch_size", 1, 1 << 16, &c->batch_size, err) ||
        get_int32(data, "workers", 1, 256, &c->workers, err) ||
        get_int32(data, "prefetch", 1, 1024, &c->prefetch, err) ||
        get_double(data, "flip", 0, 1, &c->flip, err) ||
        get_int32(data, "min_size", 0, 1 << 20, &c->min_size, err))
        return -1;
    c->from_cache = source == 1;
    c->labels = (ldmc_labels)lab;
    const ldmc_cfg *buckets = ldmc_cfg_get(data, "buckets");
    if (buckets) {
        static const char *const bucket_keys[] = {"file", "pixels", "multiple", "max_ratio", NULL};
        if (buckets->kind != LDMC_CFG_MAP)
            return ldmc_cfg_error(buckets, err, "expected {file: ...} or {pixels: N, multiple: M}");
        if (ldmc_cfg_check_keys(buckets, bucket_keys, err) ||
            get_path(buckets, "file", false, c->source_path, c->bucket_file, err) ||
            get_int32(buckets, "pixels", 64, 1 << 26, &c->bucket_pixels, err) ||
            get_int32(buckets, "multiple", 1, 1024, &c->bucket_multiple, err) ||
            get_double(buckets, "max_ratio", 1, 16, &c->bucket_max_ratio, err))
            return -1;
    }

    const ldmc_cfg *diff = ldmc_cfg_get(root, "diffusion");
    if (diff) {
        static const char *const keys[] = {"prediction",   "offset_noise",  "t_min", "t_max",
                                           "cond_dropout", "min_snr_gamma", NULL};
        static const char *const predictions[] = {"eps", "v", NULL};
        int prediction = 0;
        if (ldmc_cfg_check_keys(diff, keys, err) ||
            get_choice(diff, "prediction", predictions, &prediction, err) ||
            get_double(diff, "offset_noise", 0, 1, &c->noise.offset_noise, err) ||
            get_int32(diff, "t_min", 0, 999, &c->noise.t_min, err) ||
            get_int32(diff, "t_max", 1, 1000, &c->noise.t_max, err) ||
            get_double(diff, "cond_dropout", 0, 1, &c->cond_dropout, err) ||
            get_double(diff, "min_snr_gamma", 0, 1000, &c->noise.min_snr_gamma, err))
            return -1;
        c->noise.prediction = (ldmc_prediction)prediction;
        if (c->noise.t_min >= c->noise.t_max)
            return ldmc_cfg_error(diff, err, "t_min %d must be below t_max %d", c->noise.t_min,
                                  c->noise.t_max);
    }
    const ldmc_cfg *optim = ldmc_cfg_get(root, "optim");
    if (optim) {
        static const char *const keys[] = {
            "lr",           "min_lr",         "beta1",    "beta2",     "eps",
            "weight_decay", "warmup",         "schedule", "grad_clip", "accumulation",
            "nonfinite",    "fused_backward", NULL};
        static const char *const shapes[] = {"constant", "cosine", NULL};
        static const char *const nonfinite[] = {"skip", "stop", NULL};
        int shape = 0, nf = 0;
        if (ldmc_cfg_check_keys(optim, keys, err) ||
            get_double(optim, "lr", 0, 10, &c->adamw.lr, err) ||
            get_double(optim, "min_lr", 0, 10, &c->lr.min_lr, err) ||
            get_double(optim, "beta1", 0, 1, &c->adamw.beta1, err) ||
            get_double(optim, "beta2", 0, 1, &c->adamw.beta2, err) ||
            get_double(optim, "eps", 0, 1, &c->adamw.eps, err) ||
            get_double(optim, "weight_decay", 0, 10, &c->adamw.weight_decay, err) ||
            get_int(optim, "warmup", 0, INT64_MAX, &c->lr.warmup_steps, err) ||
            get_choice(optim, "schedule", shapes, &shape, err) ||
            get_double(optim, "grad_clip", 0, 1e9, &c->grad_clip, err) ||
            get_int32(optim, "accumulation", 1, 4096, &c->accumulation, err) ||
            get_choice(optim, "nonfinite", nonfinite, &nf, err) ||
            ldmc_cfg_bool(optim, "fused_backward", false, &c->fused_backward, err))
            return -1;
        c->lr.shape = (ldmc_lr_shape)shape;
        c->nonfinite = (ldmc_nonfinite)nf;
        // each parameter is updated during backward, as soon as its gradient is complete: the
        // update cannot wait for the whole step's gradient
        if (c->fused_backward && c->grad_clip > 0)
            return ldmc_cfg_error(ldmc_cfg_get(optim, "fused_backward"), err,
                                  "fused_backward updates each parameter during backward, before "
                                  "the global gradient norm exists: it needs grad_clip: 0");
        if (c->fused_backward && c->accumulation > 1)
            return ldmc_cfg_error(ldmc_cfg_get(optim, "fused_backward"), err,
                                  "fused_backward updates each parameter during backward: it "
                                  "needs accumulation: 1 (the step's gradient in one micro-batch)");
    }
    const ldmc_cfg *ema = ldmc_cfg_get(root, "ema");
    if (ema) {
        static const char *const keys[] = {"decay", NULL};
        if (ldmc_cfg_check_keys(ema, keys, err) ||
            get_double(ema, "decay", 0, 1, &c->ema_decay, err))
            return -1;
    }
    const ldmc_cfg *vae_loss = ldmc_cfg_get(root, "vae_loss");
    if (vae_loss) {
        static const char *const keys[] = {"kl_weight", NULL};
        if (ldmc_cfg_check_keys(vae_loss, keys, err) ||
            get_double(vae_loss, "kl_weight", 0, 1e3, &c->kl_weight, err))
            return -1;
    }
    const ldmc_cfg *dist = ldmc_cfg_get(root, "dist");
    if (dist) {
        static const char *const keys[] = {"zero", "bucket_mb", "timeout", NULL};
        if (ldmc_cfg_check_keys(dist, keys, err) ||
            ldmc_cfg_bool(dist, "zero", false, &c->dist_zero, err) ||
            get_double(dist, "bucket_mb", 0.001, 4096, &c->dist_bucket_mb, err) ||
            get_double(dist, "timeout", 0, 1e7, &c->dist_timeout, err))
            return -1;
    }
    const ldmc_cfg *train = ldmc_cfg_get(root, "train");
    if (!train) return LDMC_ERR(err, "%s: a `train:` section is required", c->source_path);
    // clang-format off
    static const char *const train_keys[] = {
        "steps", "seed", "out", "checkpoint_every", "keep", "log_every", "sample_every", "threads",
        "device", "gradient_checkpointing", "memory_plan", "recompute_projections", NULL};
    // clang-format on
    int64_t seed = 0;
    const char *device = "cpu";
    c->memory_plan = true;
    if (ldmc_cfg_check_keys(train, train_keys, err) ||
        get_int(train, "steps", 1, LDMC_MAX_STEPS, &c->steps, err) ||
        get_int(train, "seed", 0, INT64_MAX, &seed, err) ||
        get_path(train, "out", true, c->source_path, c->out, err) ||
        get_int(train, "checkpoint_every", 1, INT64_MAX, &c->checkpoint_every, err) ||
        get_int32(train, "keep", 1, 1000, &c->keep, err) ||
        get_int(train, "log_every", 1, INT64_MAX, &c->log_every, err) ||
        get_int(train, "sample_every", 1, INT64_MAX, &c->sample_every, err) ||
        get_int32(train, "threads", 0, 4096, &c->threads, err) ||
        ldmc_cfg_bool(train, "gradient_checkpointing", false, &c->recompute, err) ||
        ldmc_cfg_bool(train, "memory_plan", false, &c->memory_plan, err) ||
        ldmc_cfg_bool(train, "recompute_projections", false, &c->recompute_projections, err) ||
        get_string(train, "device", false, &device, err))
        return -1;
    if (c->recompute_projections && (!c->memory_plan || vae_task))
        return ldmc_cfg_error(ldmc_cfg_get(train, "recompute_projections"), err,
                              "recompute_projections is for the UNet's transformers (a diffusion "
                              "task) and works through the step's memory plan (memory_plan: true)");
    if (ldmc_device_parse(device, &c->device) != 0)
        return ldmc_cfg_error(ldmc_cfg_get(train, "device"), err,
                              "device '%s': expected cpu or cuda", device);
    c->seed = (uint64_t)seed;
    const ldmc_cfg *sample = ldmc_cfg_get(root, "sample");
    if (sample) {
        static const char *const keys[] = {"steps", "guidance_scale", "per_class", "height",
                                           "width", "prompts",        NULL};
        if (ldmc_cfg_check_keys(sample, keys, err) ||
            get_strings(sample, "prompts", "prompts", c->sample_prompts, &c->n_sample_prompts,
                        err) ||
            get_int32(sample, "steps", 1, 1000, &c->sample_steps, err) ||
            get_double(sample, "guidance_scale", 0, 100, &c->sample_guidance, err) ||
            get_int32(sample, "per_class", 1, 64, &c->sample_per_class, err) ||
            get_int32(sample, "height", 8, 4096, &c->sample_height, err) ||
            get_int32(sample, "width", 8, 4096, &c->sample_width, err))
            return -1;
    }
    if (!vae_task && !c->has_vae)
        return LDMC_ERR(err, "%s: diffusion training needs a `vae:` config (latents and samples)",
                        c->source_path);
    const ldmc_vae_config *v = ldmc_train_config_vae(c);
    if (v->in_channels != 3 || v->out_channels != 3)
        return LDMC_ERR(err,
                        "%s: the autoencoder takes %d channels and gives %d: ldmc trains on RGB "
                        "images (3 and 3)",
                        c->source_path, v->in_channels, v->out_channels);
    c->lr.lr = c->adamw.lr;
    for (int i = 0; i < 2; i++)
        if (c->text_lr[i] < 0) c->text_lr[i] = c->adamw.lr;
    c->lr.total_steps = c->steps;
    return 0;
}

int ldmc_train_config_load(const char *path, const char *const *overrides, int n_overrides,
                           ldmc_train_config *out, ldmc_err *err) {
    *out = (ldmc_train_config){
        .labels = LDMC_LABELS_NONE,
        .bucket_pixels = 1024 * 1024,
        .bucket_multiple = 64,
        .bucket_max_ratio = 4.0,
        .batch_size = 4,
        .workers = 2,
        .prefetch = 4,
        .noise = {.prediction = LDMC_PREDICT_EPS, .t_min = 0, .t_max = 1000},
        .adamw = {.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.01},
        .lr = {.shape = LDMC_LR_CONSTANT},
        .accumulation = 1,
        .nonfinite = LDMC_NONFINITE_SKIP,
        .kl_weight = 1e-6,
        .dist_bucket_mb = 100,
        .dist_timeout = 600,
        .keep = 2,
        .log_every = 10,
        .checkpoint_every = 1000,
        .sample_every = 1000,
        .sample_steps = 50,
        .sample_guidance = 5.0,
        .sample_per_class = 4,
        .text_lr = {-1, -1}};
    snprintf(out->source_path, sizeof out->source_path, "%s", path);
    ldmc_cfg *root = ldmc_cfg_load(path, err);
    if (!root) return -1;
    int rc = 0;
    for (int i = 0; i < n_overrides && rc == 0; i++) {
        char key[256];
        const char *eq = strchr(overrides[i], '=');
        if (!eq || eq == overrides[i] || (size_t)(eq - overrides[i]) >= sizeof key) {
            rc = LDMC_ERR(err, "--set %s: expected key.path=value", overrides[i]);
            break;
        }
        snprintf(key, (size_t)(eq - overrides[i]) + 1, "%s", overrides[i]);
        rc = ldmc_cfg_set(root, key, eq + 1, err);
    }
    if (rc == 0) rc = parse(root, out, err);
    if (rc == 0) {
        char *text = NULL;
        size_t size = 0;
        FILE *mem = open_memstream(&text, &size);
        if (mem && ldmc_cfg_write(root, mem) == 0 && fclose(mem) == 0)
            out->resolved_yaml = text;
        else
            rc = LDMC_ERR(err, "out of memory");
    }
    ldmc_cfg_free(root);
    if (rc != 0) ldmc_train_config_free(out);
    return rc;
}

void ldmc_train_config_free(ldmc_train_config *c) {
    for (int i = 0; i < c->n_new_params; i++)
        free(c->new_params[i]);
    for (int i = 0; i < c->n_freeze; i++)
        free(c->freeze[i]);
    for (int i = 0; i < c->n_sample_prompts; i++)
        free(c->sample_prompts[i]);
    c->n_sample_prompts = 0;
    free(c->resolved_yaml);
    c->n_new_params = c->n_freeze = 0;
    c->resolved_yaml = NULL;
}

int ldmc_train_config_buckets(const ldmc_train_config *c, int align, ldmc_buckets *out,
                              ldmc_err *err) {
    int rc = c->bucket_file[0] ? ldmc_buckets_load(c->bucket_file, out, err)
                               : ldmc_buckets_generate(c->bucket_pixels, c->bucket_multiple,
                                                       c->bucket_max_ratio, out, err);
    for (int b = 0; rc == 0 && b < out->count; b++)
        if (out->height[b] % align || out->width[b] % align)
            rc = LDMC_ERR(err, "%s: bucket %dx%d: the models need sides that are multiples of %d",
                          c->bucket_file[0] ? c->bucket_file : c->source_path, out->height[b],
                          out->width[b], align);
    return rc;
}
