// A model as files and commands see it: a descriptor of its kind (a row per kind of model: UNet,
// VAE, and later the text encoders, LoRA and Inception) and an instance (the module, which owns a
// parameter table under official keys, and the config it was built from). Weights files
// (io/weights.h, io/model_files.h), `ldmc convert`, `ldmc init`, `ldmc info` and the trainer's
// checkpoints work on any model through these, without knowing its kind.
// The descriptors live with their modules (src/nn/models.c).
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "core/error.h"
#include "core/params.h"

typedef struct ldmc_model_desc {
    const char *name;             // "unet", "vae": a model config's section
    const char *title;            // "UNet", "VAE": in messages
    const char *prefix;           // the keys it owns in an official single file
    const char *diffusers_folder; // its subfolder of a diffusers folder
    const char *example_key;      // a key every such model has, without the prefix
    // The diffusers name of an official key without the prefix; -1 when the layout has none.
    // *flatten_1x1 is set when diffusers stores that 1x1 convolution as a linear weight.
    int (*diffusers_key)(const void *config, const char *key, char *out, size_t size,
                         bool *flatten_1x1);
    // Optional: a parameter the diffusers layout stores otherwise: its rows split evenly over n
    // tensors names[0..n) (open_clip's packed q, k, v), or, with *transpose, its 2-D transpose
    // (a projection used as x P stored as a Linear weight). Returns n, 0 when diffusers_key
    // applies. NULL: every parameter is one-to-one.
    int (*diffusers_split)(const void *config, const char *key, char names[][256], bool *transpose);
    const char *diffusers_file; // the weights file in its subfolder (NULL:
                                // diffusion_pytorch_model.safetensors)
    // Globs of keys (without the prefix) of parameters a layout may lack: loading keeps their
    // values, saving to that layout leaves them out (open_clip's logit_scale in diffusers).
    const char *const *optional_keys;
    // Globs of file keys that loading ignores (HF's embeddings.position_ids buffer).
    const char *const *ignored_keys;
    // The diffusers config.json (a string to free), or NULL with an error when diffusers cannot
    // express the config.
    char *(*diffusers_config)(const void *config, ldmc_err *err);
    // The module summary (blocks, widths, resolutions).
    void (*print_summary)(const void *module, FILE *out);
    // Builds the module of a config (parameters registered, no weights allocated), frees it.
    void *(*create)(const void *config);
    void (*destroy)(void *module);
} ldmc_model_desc;

typedef struct ldmc_model {
    const ldmc_model_desc *desc;
    void *module;        // ldmc_unet, ldmc_vae, ...: owns the table
    ldmc_params *params; // the module's parameter table, official keys
    const void *config;  // the module's config
} ldmc_model;
