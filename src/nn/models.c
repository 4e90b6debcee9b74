// The model descriptors (see models.h). Tested by tests/test_weights.c and tests/test_cli.sh.
#include "nn/models.h"

#include <stdlib.h>

#include "nn/diffusers.h"

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
    return n;
}

void ldmc_model_destroy(ldmc_model *m) {
    if (m->module) m->desc->destroy(m->module);
    *m = (ldmc_model){0};
}
