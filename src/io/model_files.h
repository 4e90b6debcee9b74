// Files of whole models, for any model with a descriptor (core/model.h): finding a model's
// weights in an official single file (prefixed keys, the same keys bare as in stand-alone files
// such as sdxl_vae.safetensors, or diffusers names) or in a diffusers folder, and loading and
// saving models in either layout. The trainer, `ldmc convert` and `ldmc init` go through here.
// Tested by tests/test_weights.c.
#pragma once
#include "core/model.h"
#include "io/weights.h"

#define LDMC_MAX_SAVE_PARTS 8

// Opens the file holding model m's weights and finds how it names them: `path` itself when it is
// a file, with official keys (the model's prefix), the same keys without the prefix, or diffusers
// keys, whichever names most of the table's parameters; or <path>/<the model's diffusers
// folder>/diffusion_pytorch_model[.fp16].safetensors when it is a folder. `map` receives the
// layout (and .bare); `domain` the key prefix the model owns in the file ("" unless prefixed
// official).
int ldmc_open_model_file(const char *path, const ldmc_model *m, ldmc_key_map *map,
                         ldmc_safetensors *st, const char **domain, ldmc_err *err);

// Loads model m (weights allocated by the caller) from `path` in either layout.
int ldmc_load_model(const ldmc_model *m, const char *path, const ldmc_load_options *opt,
                    ldmc_err *err);

// Saves the models in `layout`: one file (official; tensors of `passthrough` that no model wrote,
// such as conditioner.*, are copied as they are), or a folder with a subfolder per model holding
// diffusion_pytorch_model.safetensors and config.json (diffusers).
int ldmc_save_models(const char *path, ldmc_layout layout, const ldmc_model *models, int n,
                     ldmc_dtype dtype, ldmc_param_role role, const ldmc_safetensors *passthrough,
                     ldmc_err *err);
