// Weights files: a model's parameters in the official single-file layout (model.diffusion_model.*,
// first_stage_model.*, conditioner.* kept as it is) or the diffusers folder layout
// (unet/diffusion_pytorch_model.safetensors, vae/...), in F32, F16 or BF16, for any model with a
// descriptor (core/model.h): the descriptor says the prefix and the diffusers names.
//
// Loading checks the whole file against the model first and names every missing, unexpected and
// wrong-shape tensor; it refuses to load on any mismatch, except for tensors the caller declares
// new (glob patterns: partial loads for fine-tuning new embedders). Data goes straight from the
// mapped file into the weights buffer, converting dtype and, for convolutions, layout: the file's
// (O, C, kH, kW) becomes ldmc's (O, kH, kW, C). Saving converts back.
// Tested by tests/test_weights.c (and tests/ref/check_official_keys.py reads what it writes).
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "core/dtype.h"
#include "core/error.h"
#include "core/model.h"
#include "core/params.h"
#include "io/safetensors.h"

typedef enum ldmc_layout { LDMC_LAYOUT_OFFICIAL, LDMC_LAYOUT_DIFFUSERS } ldmc_layout;

// How a model's official keys map to a file's keys.
typedef struct ldmc_key_map {
    ldmc_layout layout;
    const ldmc_model *model;
    // Official layout only: the file's keys lack the model's prefix (model.diffusion_model.,
    // first_stage_model.), as in stand-alone files such as sdxl_vae.safetensors.
    bool bare;
} ldmc_key_map;

// The file key of an official key; `flatten_1x1` is set when the file stores a 1x1 convolution
// as a linear weight (diffusers' VAE attention). Returns -1 when the layout has no equivalent.
int ldmc_map_key(const ldmc_key_map *map, const char *official, char *out, size_t size,
                 bool *flatten_1x1);

typedef struct ldmc_load_options {
    const char *const *may_be_new; // glob patterns of parameters the file may lack
    int n_may_be_new;
    int *n_new;           // out: how many parameters kept their values (may be NULL)
    ldmc_param_role role; // the buffer to fill (LDMC_ROLE_WEIGHTS unless EMA weights)
} ldmc_load_options;

// Loads every parameter of map->model (its weights buffer must exist) from `st`. `domain` is the
// key prefix the model owns in the file ("model.diffusion_model.", "first_stage_model.", or ""
// for a file of one model): a file key in the domain that the table lacks is unexpected.
int ldmc_load_weights(const ldmc_safetensors *st, const ldmc_key_map *map, const char *domain,
                      const ldmc_load_options *opt, ldmc_err *err);

// One model's part of a file being written.
typedef struct ldmc_save_part {
    ldmc_key_map map;
    ldmc_param_role role; // LDMC_ROLE_WEIGHTS, or LDMC_ROLE_EMA for the averaged weights
    const float *data;    // the values in the table's layout instead of the role's buffer (a
                          // sharded EMA gathered whole), or NULL
} ldmc_save_part;

// Writes the parts' parameters in `dtype` (F32, F16 or BF16), in table order, followed by every
// tensor of `passthrough` (may be NULL) whose key no part wrote, byte for byte.
int ldmc_save_weights(const char *path, const ldmc_save_part *parts, int n_parts, ldmc_dtype dtype,
                      const ldmc_safetensors *passthrough, ldmc_err *err);

// Convolution weights between ldmc's (O, kH, kW, C) and the official (O, C, kH, kW).
void ldmc_conv_to_official(float *dst, const float *src, int64_t O, int64_t kh, int64_t kw,
                           int64_t C);
void ldmc_conv_from_official(float *dst, const float *src, int64_t O, int64_t kh, int64_t kw,
                             int64_t C);

// The shape of a parameter as a weights file of `map`'s layout stores it (the official layout
// needs no model in the map).
int ldmc_file_shape(const ldmc_param *param, const ldmc_key_map *map, int64_t *shape);
