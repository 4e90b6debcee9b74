// What this build of ldmc is made of: optional subsystems and the versions of the libraries it
// links, as `ldmc info` prints them. Tested by tests/test_cli.sh (through `ldmc info`).
#pragma once
#include <stdio.h>

void ldmc_buildinfo_print(FILE *out);
