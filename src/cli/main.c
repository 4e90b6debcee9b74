// `ldmc`: one binary, one subcommand per job. Tested by tests/test_cli.sh.
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "core/threads.h"
#include "train/dist.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} commands[] = {
    {"train", ldmc_cmd_train,
     "train a UNet or a VAE from a config (configs/demo.yaml, the recipes)"},
    {"sample", ldmc_cmd_sample,
     "images from a trained run or a model's weights: prompts or classes, samplers, guidance, "
     "the refiner, SDEdit"},
    {"eval", ldmc_cmd_eval,
     "FID and Inception Score of image folders and statistics (pytorch-fid, torch-fidelity), "
     "and evaluation runs"},
    {"cache", ldmc_cmd_cache, "encode a training config's images into an HDF5 latent cache"},
    {"demo-data", ldmc_cmd_demo_data,
     "draw the demo dataset: shapes of four classes, varied sizes"},
    {"info", ldmc_cmd_info,
     "build, libraries, threads; or a model config's summary, parameter "
     "count, official keys and memory plan"},
    {"init", ldmc_cmd_init, "write a config's freshly initialized weights"},
    {"convert", ldmc_cmd_convert,
     "model weights between the official and diffusers layouts "
     "and between dtypes"},
    {"bench", ldmc_cmd_bench,
     "benchmarks: `ldmc bench ops` (CPU ops), `bench step` (a training config), `bench train` "
     "(the SDXL UNet step, GPU or CPU)"},
};

static void usage(FILE *out) {
    fprintf(out, "usage: ldmc <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(out, "\nenvironment: LDMC_THREADS=n sets the thread count (default: all cores)\n");
}

int main(int argc, char **argv) {
    ldmc_blas_select_kernels(argv);
    ldmc_threads_init_from_env();
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) {
            int rc = commands[i].run(argc - 2, argv + 2);
            // under mpirun: MPI ends with every rank's success; a rank that failed exits without
            // it, and the launcher ends the others
            if (rc == 0 || rc >= 128) ldmc_dist_finalize();
            return rc;
        }
    fprintf(stderr, "ldmc: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
