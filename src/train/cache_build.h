// `ldmc cache`: encodes a training config's images with its VAE into an HDF5 latent cache
// (src/data/cache.h), each image cropped as Algorithm 1 says for its bucket (the crop of epoch 0)
// and optionally also flipped. Training from the cache then reads latents instead of images.
// Tested by tests/test_train.c.
#pragma once
#include <stdbool.h>

#include "core/error.h"
#include "train/train_config.h"

int ldmc_cache_build(const ldmc_train_config *cfg, const char *out, bool flip_variants,
                     ldmc_err *err);
