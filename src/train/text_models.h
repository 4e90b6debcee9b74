// A text model's tokenizer and text encoders, as training and `ldmc cache` load them: the
// vocabulary from text.vocab, the encoders from the model config's text_encoders with weights
// from text.weights (else init), every parameter frozen, or, with text.train, with the roles
// the update needs (gradients, Adam m and v, EMA) and only logit_scale frozen.
// Tested by tests/test_train.c (text runs, the text cache).
#pragma once
#include <stdbool.h>

#include "nn/text_encoder.h"
#include "pipeline/conditioner.h"
#include "text/tokenizer.h"
#include "train/train_config.h"

typedef struct ldmc_text_models {
    ldmc_text_encoder enc[LDMC_MAX_TEXT_ENCODERS];
    int n;
    ldmc_tokenizer *tokenizer;
} ldmc_text_models;

// Whether the config's UNet is conditioned on text (a context and no class embedding).
bool ldmc_train_config_has_text(const ldmc_train_config *cfg);
// Loads them for a text model (nothing for another).
int ldmc_text_models_load(ldmc_text_models *t, const ldmc_train_config *cfg, ldmc_err *err);
void ldmc_text_models_free(ldmc_text_models *t);
// Points the conditioner at them (text.uncond from the config).
void ldmc_text_models_attach(const ldmc_text_models *t, const ldmc_train_config *cfg,
                             ldmc_conditioner *c);
