// Loading a text model's tokenizer and encoders (see text_models.h).
#include "train/text_models.h"

#include <string.h>

#include "io/model_files.h"
#include "nn/models.h"
#include "train/dist.h"

bool ldmc_train_config_has_text(const ldmc_train_config *cfg) {
    const ldmc_unet_config *u = &cfg->model.unet;
    return cfg->task == LDMC_TASK_DIFFUSION && u->context_dim && !u->n_classes;
}

int ldmc_text_models_load(ldmc_text_models *t, const ldmc_train_config *cfg, ldmc_err *err) {
    *t = (ldmc_text_models){0};
    const ldmc_model_config *mc = &cfg->model;
    if (!ldmc_train_config_has_text(cfg)) return 0;
    if (!mc->n_text)
        return LDMC_ERR(err,
                        "%s: the UNet is conditioned on text (context_dim %d) and its model "
                        "config has no `text_encoders:` (configs/sdxl_base.yaml has SDXL's two)",
                        cfg->source_path, mc->unet.context_dim);
    if (!cfg->text_vocab[0])
        return LDMC_ERR(err,
                        "%s: a text model needs `text.vocab`: CLIP's bpe_simple_vocab_16e6.txt.gz, "
                        "a tokenizer folder (merges.txt) or a diffusers folder (docs/text.md)",
                        cfg->source_path);
    if (!(t->tokenizer = ldmc_tokenizer_load(cfg->text_vocab, err))) return -1;
    const char *weights = cfg->text_weights[0] ? cfg->text_weights : cfg->init;
    if (!weights[0])
        return LDMC_ERR(err,
                        "%s: the text encoders need weights: `text.weights` or `init` (an "
                        "official SDXL file holds them; `ldmc init` writes one)",
                        cfg->source_path);
    for (int i = 0; i < mc->n_text; i++) {
        ldmc_text_encoder *e = &t->enc[i];
        ldmc_text_encoder_init(e, &mc->text[i]);
        t->n++;
        if (e->cfg.vocab_size != ldmc_tokenizer_vocab_size(t->tokenizer))
            return LDMC_ERR(err,
                            "%s: text encoder %d has a vocabulary of %d tokens, the tokenizer "
                            "(%s) %d",
                            cfg->source_path, i, e->cfg.vocab_size,
                            ldmc_tokenizer_path(t->tokenizer),
                            ldmc_tokenizer_vocab_size(t->tokenizer));
        ldmc_params *p = &e->params;
        if (!cfg->text_train) ldmc_params_flag_matching(p, "*", LDMC_PARAM_FROZEN, true);
        ldmc_params_alloc(p, LDMC_ROLE_WEIGHTS);
        if (cfg->text_train) { // trained with the UNet: every role the update needs
            ldmc_dist_shard(p, cfg->dist_zero);
            if (!cfg->fused_backward) ldmc_params_alloc(p, LDMC_ROLE_GRAD); // (else in backward)
            ldmc_params_alloc(p, LDMC_ROLE_ADAM_M);
            ldmc_params_alloc(p, LDMC_ROLE_ADAM_V);
            if (cfg->ema_decay > 0) ldmc_params_alloc(p, LDMC_ROLE_EMA);
        }
        ldmc_model m = ldmc_text_model(e);
        if (ldmc_load_model(&m, weights, NULL, err) != 0) return -1;
        if (cfg->text_train && cfg->ema_decay > 0) ldmc_params_ema_reset(p);
    }
    return 0;
}

void ldmc_text_models_free(ldmc_text_models *t) {
    for (int i = 0; i < t->n; i++)
        ldmc_text_encoder_free(&t->enc[i]);
    ldmc_tokenizer_free(t->tokenizer);
    *t = (ldmc_text_models){0};
}

void ldmc_text_models_attach(const ldmc_text_models *t, const ldmc_train_config *cfg,
                             ldmc_conditioner *c) {
    c->n_text = t->n;
    for (int i = 0; i < t->n; i++)
        c->text[i] = &t->enc[i];
    c->tokenizer = t->tokenizer;
    c->uncond_empty = cfg->text_uncond_empty;
}
