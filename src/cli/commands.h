// The `ldmc` subcommands. Each takes the arguments after its name and returns the exit status.
#pragma once

int ldmc_cmd_info(int argc, char **argv);
int ldmc_cmd_bench(int argc, char **argv);
int ldmc_cmd_convert(int argc, char **argv);
int ldmc_cmd_init(int argc, char **argv);
int ldmc_cmd_train(int argc, char **argv);
int ldmc_cmd_cache(int argc, char **argv);
int ldmc_cmd_demo_data(int argc, char **argv);
int ldmc_cmd_sample(int argc, char **argv);
int ldmc_cmd_eval(int argc, char **argv);

// For the commands that read a training config (train, cache, bench step): loads it with the
// --set overrides; on failure prints "ldmc <command>: <message>" and returns -1.
struct ldmc_train_config;
int ldmc_cli_train_config(const char *command, const char *path, const char *const *sets,
                          int n_sets, struct ldmc_train_config *cfg);
