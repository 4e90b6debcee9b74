// `ldmc info`: what this build is and what it links. (Model configs and memory plans join it
// with the models.) Tested by tests/test_cli.sh.
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "io/buildinfo.h"

int ldmc_cmd_info(int argc, char **argv) {
    if (argc > 0 && (strcmp(argv[0], "-h") == 0 || strcmp(argv[0], "--help") == 0)) {
        printf("usage: ldmc info\n  prints the build options, library versions and thread count\n");
        return 0;
    }
    if (argc > 0) {
        fprintf(stderr,
                "ldmc info: unexpected argument '%s' (model configs are not supported yet)\n",
                argv[0]);
        return 2;
    }
    printf("ldmc 0.1.0\n");
    ldmc_buildinfo_print(stdout);
    return 0;
}
