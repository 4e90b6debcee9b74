// `ldmc convert IN OUT --config CONFIG [--to official|diffusers] [--dtype f32|f16|bf16]`:
// converts model weights between the official single-file layout and the diffusers folder
// layout, and between dtypes. Every tensor is checked against the config's models first; an
// official output keeps the input's other tensors (conditioner.*) byte for byte.
// Tested by tests/test_cli.sh and tests/test_weights.c.
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "io/files.h"
#include "io/model_files.h"
#include "nn/models.h"

static const char *usage_text =
    "usage: ldmc convert IN OUT --config CONFIG [--to official|diffusers] [--dtype f32|f16|bf16]\n"
    "  IN      an official .safetensors file, or a diffusers folder (unet/, vae/)\n"
    "  OUT     the file or folder to write (default layout: the other one)\n"
    "  CONFIG  the models in IN (configs/sdxl_base.yaml, a config with unet: and vae:, ...)\n"
    "  --dtype the dtype to write (default: the input's)\n";

int ldmc_cmd_convert(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *config = NULL, *to = NULL, *dtype_name = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--config") && i + 1 < argc) {
            config = argv[++i];
        } else if (!strcmp(argv[i], "--to") && i + 1 < argc) {
            to = argv[++i];
        } else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) {
            dtype_name = argv[++i];
        } else if (argv[i][0] != '-' && (!in || !out)) {
            *(in ? &out : &in) = argv[i];
        } else {
            fprintf(stderr, "ldmc convert: unexpected argument '%s'\n%s", argv[i], usage_text);
            return 2;
        }
    }
    if (!in || !out || !config) {
        fprintf(stderr, "%s", usage_text);
        return 2;
    }
    ldmc_dtype dtype = LDMC_F32;
    if (dtype_name && ldmc_dtype_from_name(dtype_name, &dtype) != 0) {
        fprintf(stderr, "ldmc convert: unknown dtype '%s' (f32, f16 or bf16)\n", dtype_name);
        return 2;
    }
    ldmc_model_config cfg;
    ldmc_err err = {0};
    if (ldmc_model_config_load(config, &cfg, &err) != 0) {
        fprintf(stderr, "ldmc convert: %s\n", err.message);
        return 1;
    }
    ldmc_layout from = ldmc_is_dir(in) ? LDMC_LAYOUT_DIFFUSERS : LDMC_LAYOUT_OFFICIAL;
    ldmc_layout layout =
        from == LDMC_LAYOUT_OFFICIAL ? LDMC_LAYOUT_DIFFUSERS : LDMC_LAYOUT_OFFICIAL;
    if (to && strcmp(to, "official") && strcmp(to, "diffusers")) {
        fprintf(stderr, "ldmc convert: --to takes official or diffusers, not '%s'\n", to);
        return 2;
    }
    if (to) layout = strcmp(to, "official") ? LDMC_LAYOUT_DIFFUSERS : LDMC_LAYOUT_OFFICIAL;

    ldmc_model models[LDMC_MAX_MODELS];
    int n = ldmc_models_create(&cfg, models), rc = 0;
    // The text encoders of the config that the input lacks (a fine-tuned UNet's file, which
    // holds the UNet alone) are left out, and said so; any other model must be there.
    for (int i = 0; i < n; i++) {
        ldmc_safetensors st = {0};
        ldmc_key_map map;
        const char *domain;
        ldmc_err absent = {0};
        if (!ldmc_model_is_text(&models[i])) continue;
        if (ldmc_open_model_file(in, &models[i], &map, &st, &domain, &absent) == 0) {
            ldmc_safetensors_close(&st);
            continue;
        }
        printf("%s has no %s: left out\n", in, models[i].desc->title);
        ldmc_model_destroy(&models[i]);
        memmove(&models[i], &models[i + 1], (size_t)(n - i - 1) * sizeof *models);
        n--, i--;
    }
    if (n == 0) {
        fprintf(stderr, "ldmc convert: %s holds none of the models of %s\n", in, config);
        return 1;
    }
    for (int i = 0; i < n && rc == 0; i++) {
        ldmc_params_alloc(models[i].params, LDMC_ROLE_WEIGHTS);
        rc = ldmc_load_model(&models[i], in, NULL, &err);
    }
    // The input's layout and dtype, from how it holds the first model.
    ldmc_safetensors source = {0};
    ldmc_key_map source_map;
    const char *domain;
    if (rc == 0) rc = ldmc_open_model_file(in, &models[0], &source_map, &source, &domain, &err);
    ldmc_dtype input_dtype = rc == 0 && source.count ? source.tensors[0].dtype : LDMC_F32;
    if (!dtype_name)
        dtype = input_dtype == LDMC_F16 || input_dtype == LDMC_BF16 ? input_dtype : LDMC_F32;
    // Only a whole official file has other tensors (conditioner.*) to pass through to an
    // official output.
    bool passthrough = rc == 0 && source_map.layout == LDMC_LAYOUT_OFFICIAL && !source_map.bare &&
                       layout == LDMC_LAYOUT_OFFICIAL;
    if (rc == 0)
        rc = ldmc_save_models(out, layout, models, n, dtype, LDMC_ROLE_WEIGHTS,
                              passthrough ? &source : NULL, &err);
    if (source.map) ldmc_safetensors_close(&source);
    for (int i = 0; i < n; i++)
        ldmc_model_destroy(&models[i]);
    if (rc != 0) {
        fprintf(stderr, "ldmc convert: %s\n", err.message);
        return 1;
    }
    printf("wrote %s (%s layout, %s)\n", out,
           layout == LDMC_LAYOUT_OFFICIAL ? "official" : "diffusers", ldmc_dtype_name(dtype));
    return 0;
}
