// Whole-model checkpoint files: where a UNet's or a VAE's weights are in an official single file
// or a diffusers folder, and loading and saving both models in either layout. The trainer and
// `ldmc convert` go through here. Tested by tests/test_checkpoint.c.
#pragma once
#include "io/checkpoint.h"
#include "nn/unet.h"
#include "nn/vae.h"

// Opens the file holding the weights of the model whose table is `p` and finds how it names
// them: `path` itself when it is a file, with official keys (model.diffusion_model.*,
// first_stage_model.*), the same keys without that prefix (a stand-alone file such as
// sdxl_vae.safetensors), or diffusers keys, whichever names most of the table's parameters; or
// <path>/unet/ (or vae/) diffusion_pytorch_model[.fp16].safetensors when it is a folder.
// `map` comes with .unet or .vae set and leaves with the layout (and .bare); `domain` receives
// the key prefix the model owns in the file ("" unless prefixed official).
int ldmc_open_model_file(const char *path, const ldmc_params *p, ldmc_key_map *map,
                         ldmc_safetensors *st, const char **domain, ldmc_err *err);

// Loads a UNet or VAE (weights allocated by the caller) from `path` in either layout.
int ldmc_load_unet(ldmc_unet *u, const char *path, const ldmc_load_options *opt, ldmc_err *err);
int ldmc_load_vae(ldmc_vae *v, const char *path, const ldmc_load_options *opt, ldmc_err *err);

// Saves the given models (either may be NULL) in `layout`: one file (official; tensors of
// `passthrough` that no model wrote, such as conditioner.*, are copied as they are), or a folder
// with unet/ and vae/ holding diffusion_pytorch_model.safetensors and config.json (diffusers).
int ldmc_save_models(const char *path, ldmc_layout layout, const ldmc_unet *u, const ldmc_vae *v,
                     ldmc_dtype dtype, ldmc_param_role role, const ldmc_safetensors *passthrough,
                     ldmc_err *err);
