// The kinds of models ldmc builds, as descriptors (core/model.h): the UNet, the VAE and the text
// encoders (one descriptor per key prefix), and the models a model config describes. Tested by tests/test_weights.c and tests/test_cli.sh.
#pragma once
#include "core/model.h"
#include "nn/model_config.h"
#include "nn/unet.h"
#include "nn/text_encoder.h"
#include "nn/vae.h"

extern const ldmc_model_desc ldmc_unet_desc, ldmc_vae_desc;

#define LDMC_MAX_MODELS 4

// The model view of a module built by ldmc_unet_init / ldmc_vae_init (not owned).
ldmc_model ldmc_unet_model(ldmc_unet *u);
ldmc_model ldmc_vae_model(ldmc_vae *v);
ldmc_model ldmc_text_model(ldmc_text_encoder *e);
bool ldmc_model_is_text(const ldmc_model *m);
// The models of a model config (its `unet:`, its `vae:`, then its text encoders), built (parameters registered, no
// weights allocated) into out[LDMC_MAX_MODELS]; returns how many.
int ldmc_models_create(const ldmc_model_config *cfg, ldmc_model *out);
// Frees a model made by ldmc_models_create.
void ldmc_model_destroy(ldmc_model *m);
