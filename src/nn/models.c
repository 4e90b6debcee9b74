// The model descriptors (see models.h). Tested by tests/test_weights.c and tests/test_cli.sh.
#include "nn/models.h"

#include <stdlib.h>
#include <string.h>

#include "nn/diffusers.h"
#include "nn/text_encoder.h"

static void *unet_create(const void *config) {
    ldmc_unet *u = malloc(sizeof *u);
    LDMC_CHECK(u, "out of memory");
    ldmc_unet_init(u, config);
    return u;
}

static void unet_destroy(void *module) {
    ldmc_unet_free(module);
    free(module);
}

static void unet_summary(const void *module, FILE *out) { ldmc_unet_print_summary(module, out); }

const ldmc_model_desc ldmc_unet_desc = {
    .name = "unet",
    .title = "UNet",
    .prefix = LDMC_UNET_PREFIX,
    .diffusers_folder = "unet",
    .example_key = "input_blocks.0.0.weight",
    .diffusers_key = ldmc_unet_diffusers_key,
    .diffusers_config = ldmc_unet_diffusers_config,
    .print_summary = unet_summary,
    .create = unet_create,
    .destroy = unet_destroy,
};

static void *vae_create(const void *config) {
    ldmc_vae *v = malloc(sizeof *v);
    LDMC_CHECK(v, "out of memory");
    ldmc_vae_init(v, config);
    return v;
}

static void vae_destroy(void *module) {
    ldmc_vae_free(module);
    free(module);
}

static void vae_summary(const void *module, FILE *out) { ldmc_vae_print_summary(module, out); }

const ldmc_model_desc ldmc_vae_desc = {
    .name = "vae",
    .title = "VAE",
    .prefix = LDMC_VAE_PREFIX,
    .diffusers_folder = "vae",
    .example_key = "encoder.conv_in.weight",
    .diffusers_key = ldmc_vae_diffusers_key,
    .diffusers_config = ldmc_vae_diffusers_config,
    .print_summary = vae_summary,
    .create = vae_create,
    .destroy = vae_destroy,
};

// ---- the text encoders: one descriptor per key prefix (layout x place in the conditioner)

static void *text_create(const void *config) {
    ldmc_text_encoder *e = malloc(sizeof *e);
    LDMC_CHECK(e, "out of memory");
    ldmc_text_encoder_init(e, config);
    return e;
}

static void text_destroy(void *module) {
    ldmc_text_encoder_free(module);
    free(module);
}

static void text_summary(const void *module, FILE *out) {
    ldmc_text_encoder_print_summary(module, out);
}

static const char *const text_optional[] = {"logit_scale", NULL};             // not in diffusers
static const char *const text_ignored[] = {"*embeddings.position_ids", NULL}; // HF's buffer

#define TEXT_DESC(layout_name, index, prefix_text, example, folder)                                \
    {                                                                                              \
        .name = "text_encoder", .title = "text encoder " #index " (" layout_name ")",              \
        .prefix = prefix_text, .diffusers_folder = index ? "text_encoder_2" : "text_encoder",      \
        .example_key = example, .diffusers_key = ldmc_text_diffusers_key,                          \
        .diffusers_split = ldmc_text_diffusers_split, .diffusers_file = "model.safetensors",       \
        .optional_keys = text_optional, .ignored_keys = text_ignored,                              \
        .diffusers_config = ldmc_text_diffusers_config, .print_summary = text_summary,             \
        .create = text_create, .destroy = text_destroy                                             \
    }

// [layout][index], the prefixes of ldmc_text_prefix
static const ldmc_model_desc text_descs[2][LDMC_MAX_TEXT_ENCODERS] = {
    // diffusers keeps CLIP-L in text_encoder/ and bigG in text_encoder_2/, the refiner's too
    {TEXT_DESC("hf", 0, "conditioner.embedders.0.transformer.",
               "text_model.embeddings.token_embedding.weight", "text_encoder"),
     TEXT_DESC("hf", 1, "conditioner.embedders.1.transformer.",
               "text_model.embeddings.token_embedding.weight", "text_encoder")},
    {TEXT_DESC("open_clip", 0, "conditioner.embedders.0.model.", "token_embedding.weight",
               "text_encoder_2"),
     TEXT_DESC("open_clip", 1, "conditioner.embedders.1.model.", "token_embedding.weight",
               "text_encoder_2")},
};

bool ldmc_model_is_text(const ldmc_model *m) {
    return m->desc >= &text_descs[0][0] && m->desc <= &text_descs[1][LDMC_MAX_TEXT_ENCODERS - 1];
}

ldmc_model ldmc_text_model(ldmc_text_encoder *e) {
    const ldmc_model_desc *d = &text_descs[e->cfg.layout == LDMC_TEXT_OPEN_CLIP][e->cfg.index];
    LDMC_CHECK(!strcmp(d->prefix, ldmc_text_prefix(&e->cfg)), "text encoder prefixes disagree");
    return (ldmc_model){d, e, &e->params, &e->cfg};
}

ldmc_model ldmc_unet_model(ldmc_unet *u) {
    return (ldmc_model){&ldmc_unet_desc, u, &u->params, &u->cfg};
}

ldmc_model ldmc_vae_model(ldmc_vae *v) {
    return (ldmc_model){&ldmc_vae_desc, v, &v->params, &v->cfg};
}

int ldmc_models_create(const ldmc_model_config *cfg, ldmc_model *out) {
    int n = 0;
    if (cfg->has_unet) out[n++] = ldmc_unet_model(ldmc_unet_desc.create(&cfg->unet));
    if (cfg->has_vae) out[n++] = ldmc_vae_model(ldmc_vae_desc.create(&cfg->vae));
    for (int i = 0; i < cfg->n_text; i++)
        out[n++] = ldmc_text_model(text_create(&cfg->text[i]));
    return n;
}

void ldmc_model_destroy(ldmc_model *m) {
    if (m->module) m->desc->destroy(m->module);
    *m = (ldmc_model){0};
}
