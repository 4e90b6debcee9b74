// `ldmc init CONFIG OUT [--vae VAE_CONFIG] [--seed N] [--to official|diffusers] [--dtype ...]`:
// writes the freshly initialized weights of the config's models (PyTorch's default
// initialization, with generative-models' zero-initialized layers), the starting point of
// training from scratch; with --vae, also that config's autoencoder, so that
// `ldmc init configs/sdxl_base.yaml --vae configs/sdxl_vae.yaml` writes a whole SDXL file (UNet,
// VAE, both text encoders) without downloaded weights.
// Tested by tests/test_cli.sh and tests/test_official_layout.sh.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "io/model_files.h"
#include "nn/models.h"

static const char *usage_text =
    "usage: ldmc init CONFIG OUT [--vae VAE_CONFIG] [--seed N] [--to official|diffusers]\n"
    "                 [--dtype f32|f16|bf16]\n";

int ldmc_cmd_init(int argc, char **argv) {
    const char *config = NULL, *out = NULL, *to = "official", *dtype_name = "f32", *vae = NULL;
    unsigned long long seed = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            seed = strtoull(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--vae") && i + 1 < argc) {
            vae = argv[++i];
        } else if (!strcmp(argv[i], "--to") && i + 1 < argc) {
            to = argv[++i];
        } else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) {
            dtype_name = argv[++i];
        } else if (argv[i][0] != '-' && (!config || !out)) {
            *(config ? &out : &config) = argv[i];
        } else {
            fprintf(stderr, "ldmc init: unexpected argument '%s'\n%s", argv[i], usage_text);
            return 2;
        }
    }
    ldmc_dtype dtype;
    if (!config || !out || (strcmp(to, "official") && strcmp(to, "diffusers")) ||
        ldmc_dtype_from_name(dtype_name, &dtype) != 0) {
        fprintf(stderr, "%s", usage_text);
        return 2;
    }
    ldmc_model_config cfg;
    ldmc_err err = {0};
    if (ldmc_model_config_load(config, &cfg, &err) != 0) {
        fprintf(stderr, "ldmc init: %s\n", err.message);
        return 1;
    }
    if (vae) {
        ldmc_model_config v;
        if (ldmc_model_config_load(vae, &v, &err) != 0) {
            fprintf(stderr, "ldmc init: %s\n", err.message);
            return 1;
        }
        if (!v.has_vae || cfg.has_vae) {
            fprintf(stderr, "ldmc init: %s: %s\n", !v.has_vae ? vae : config,
                    !v.has_vae ? "--vae names a config without a vae: section"
                               : "--vae, and the config has an autoencoder already");
            return 1;
        }
        cfg.has_vae = true;
        cfg.vae = v.vae;
    }
    ldmc_model models[LDMC_MAX_MODELS];
    int n = ldmc_models_create(&cfg, models);
    for (int i = 0; i < n; i++) {
        ldmc_params_alloc(models[i].params, LDMC_ROLE_WEIGHTS);
        ldmc_params_init(models[i].params, seed);
    }
    ldmc_layout layout = strcmp(to, "official") ? LDMC_LAYOUT_DIFFUSERS : LDMC_LAYOUT_OFFICIAL;
    int rc = ldmc_save_models(out, layout, models, n, dtype, LDMC_ROLE_WEIGHTS, NULL, &err);
    for (int i = 0; i < n; i++)
        ldmc_model_destroy(&models[i]);
    if (rc != 0) {
        fprintf(stderr, "ldmc init: %s\n", err.message);
        return 1;
    }
    printf("wrote %s (%s layout, %s, seed %llu)\n", out, to, ldmc_dtype_name(dtype), seed);
    return 0;
}
