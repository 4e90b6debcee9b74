// `ldmc cache CONFIG OUT.h5 [--flip] [--set key=value ...]`: encodes the config's images into an
// HDF5 latent cache (src/train/cache_build.h). Tested by tests/test_cli.sh.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "train/cache_build.h"

static const char *usage_text =
    "usage: ldmc cache CONFIG OUT.h5 [--flip] [--set key.path=value ...]\n"
    "  --flip   also store each image flipped (c_crop follows the flip)\n";

int ldmc_cmd_cache(int argc, char **argv) {
    const char *config = NULL, *out = NULL;
    const char **sets = calloc((size_t)argc + 1, sizeof *sets);
    int n_sets = 0;
    bool flip = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(usage_text, stdout);
            free(sets);
            return 0;
        } else if (!strcmp(argv[i], "--set") && i + 1 < argc) {
            sets[n_sets++] = argv[++i];
        } else if (!strcmp(argv[i], "--flip")) {
            flip = true;
        } else if (argv[i][0] != '-' && (!config || !out)) {
            *(config ? &out : &config) = argv[i];
        } else {
            fprintf(stderr, "ldmc cache: unexpected argument '%s'\n%s", argv[i], usage_text);
            free(sets);
            return 2;
        }
    }
    if (!config || !out) {
        fputs(usage_text, stderr);
        free(sets);
        return 2;
    }
    ldmc_train_config cfg;
    ldmc_err err = {0};
    int rc = ldmc_cli_train_config("cache", config, sets, n_sets, &cfg);
    free(sets);
    if (rc != 0) return 1;
    rc = ldmc_cache_build(&cfg, out, flip, &err);
    ldmc_train_config_free(&cfg);
    if (rc != 0) fprintf(stderr, "ldmc cache: %s\n", err.message);
    return rc == 0 ? 0 : 1;
}
