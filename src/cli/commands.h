// The `ldmc` subcommands. Each takes the arguments after its name and returns the exit status.
#pragma once

int ldmc_cmd_info(int argc, char **argv);
int ldmc_cmd_bench(int argc, char **argv);
int ldmc_cmd_convert(int argc, char **argv);
int ldmc_cmd_init(int argc, char **argv);
int ldmc_cmd_train(int argc, char **argv);
int ldmc_cmd_cache(int argc, char **argv);
int ldmc_cmd_demo_data(int argc, char **argv);
