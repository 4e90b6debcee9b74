// The diffusers folder layout of the UNet (UNet2DConditionModel), the VAE (AutoencoderKL) and the
// text encoders (transformers' CLIPTextModel in text_encoder/, CLIPTextModelWithProjection in
// text_encoder_2/: open_clip's packed in_proj split into q, k, v, text_projection transposed):
// the diffusers key of each official key (without the model's prefix) and the config.json of a
// model config. The model descriptors (nn/models.h) point here. Tested by
// tests/test_weights.c (round trips, SDXL's diffusers names) and tests/test_official_layout.sh.
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

// config: an ldmc_unet_config or ldmc_vae_config. -1 when the layout has no such key (a class
// embedding: diffusers' UNet has no such conditioner). *flatten_1x1: the VAE's mid-attention 1x1
// convolutions are linear weights in diffusers.
int ldmc_unet_diffusers_key(const void *config, const char *key, char *out, size_t size,
                            bool *flatten_1x1);
int ldmc_vae_diffusers_key(const void *config, const char *key, char *out, size_t size,
                           bool *flatten_1x1);
// The config.json (a string to free), or NULL with an error when diffusers cannot express it.
char *ldmc_unet_diffusers_config(const void *config, ldmc_err *err);
char *ldmc_vae_diffusers_config(const void *config, ldmc_err *err);
// config: an ldmc_text_config. The key of the one-to-one parameters; the split and transposed
// ones (core/model.h's diffusers_split); config.json (transformers' CLIPTextConfig).
int ldmc_text_diffusers_key(const void *config, const char *key, char *out, size_t size,
                            bool *flatten_1x1);
int ldmc_text_diffusers_split(const void *config, const char *key, char names[][256],
                              bool *transpose);
char *ldmc_text_diffusers_config(const void *config, ldmc_err *err);
