// `ldmc train CONFIG [--set key=value ...] [--resume latest|DIR]`: trains a UNet or a VAE as the
// config describes (docs/training.md). Tested by tests/test_train.c and tests/test_cli.sh.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "train/dist.h"
#include "train/trainer.h"

static const char *usage_text =
    "usage: ldmc train CONFIG [--set key.path=value ...] [--resume latest|CHECKPOINT_DIR]\n"
    "  --set      overrides a config value (repeatable), e.g. --set optim.lr=5e-5\n"
    "  --resume   continues a run from its newest checkpoint (latest) or a given one\n"
    "exit status: 0 trained to train.steps (or nothing left to do), 1 an error, 2 a usage error,\n"
    "  130 (SIGINT), 143 (SIGTERM) or 138 (SIGUSR1, SLURM's pre-emption warning): stopped by the\n"
    "  signal after saving a checkpoint, resumable with --resume latest (a second signal stops at\n"
    "  once, without saving); 3: a data-parallel rank saw no step for dist.timeout seconds\n"
    "data parallelism: run under `mpirun -np N` or `srun --mpi=pmix` (docs/multigpu.md); rank 0\n"
    "  prints the log, the other ranks only their errors (LDMC_LOG_ALL_RANKS=1: all of it)\n";

int ldmc_cli_train_config(const char *command, const char *path, const char *const *sets,
                          int n_sets, ldmc_train_config *cfg) {
    ldmc_err err = {0};
    if (ldmc_train_config_load(path, sets, n_sets, cfg, &err) == 0) return 0;
    fprintf(stderr, "ldmc %s: %s\n", command, err.message);
    return -1;
}

int ldmc_cmd_train(int argc, char **argv) {
    const char *config = NULL, *resume = NULL;
    const char **sets = calloc((size_t)argc + 1, sizeof *sets);
    int n_sets = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(usage_text, stdout);
            free(sets);
            return 0;
        } else if (!strcmp(argv[i], "--set") && i + 1 < argc) {
            sets[n_sets++] = argv[++i];
        } else if (!strcmp(argv[i], "--resume") && i + 1 < argc) {
            resume = argv[++i];
        } else if (argv[i][0] != '-' && !config) {
            config = argv[i];
        } else {
            fprintf(stderr, "ldmc train: unexpected argument '%s'\n%s", argv[i], usage_text);
            free(sets);
            return 2;
        }
    }
    if (!config) {
        fputs(usage_text, stderr);
        free(sets);
        return 2;
    }
    ldmc_train_config cfg;
    ldmc_train_result result;
    ldmc_err err = {0};
    if (ldmc_dist_init(&err) != 0) {
        fprintf(stderr, "ldmc train: %s\n", err.message);
        free(sets);
        return 1;
    }
    const ldmc_dist *d = ldmc_dist_get();
    char who[96] = "";
    if (d->world > 1) snprintf(who, sizeof who, " (rank %d of %d, %s)", d->rank, d->world, d->host);
    ldmc_dist_quiet_ranks();
    int rc = ldmc_cli_train_config("train", config, sets, n_sets, &cfg);
    free(sets);
    if (rc == 0) {
        rc = ldmc_train(&cfg, resume, &result, &err);
        ldmc_train_config_free(&cfg);
        if (rc != 0) fprintf(stderr, "ldmc train%s: %s\n", who, err.message);
    } else {
        rc = -1;
    }
    if (rc == 0 && result.interrupted) return 128 + result.interrupted; // as a shell reports it
    return rc == 0 ? 0 : 1;
}
