// `ldmc demo-data OUT [--per-class N] [--seed S]`: draws the demo dataset (src/data/shapes.h).
// Tested by tests/test_cli.sh.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "data/shapes.h"

static const char *usage_text = "usage: ldmc demo-data OUT [--per-class N] [--seed S]\n";

int ldmc_cmd_demo_data(int argc, char **argv) {
    const char *out = NULL;
    long per_class = 160;
    unsigned long long seed = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--per-class") && i + 1 < argc) {
            per_class = strtol(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            seed = strtoull(argv[++i], NULL, 10);
        } else if (argv[i][0] != '-' && !out) {
            out = argv[i];
        } else {
            fprintf(stderr, "ldmc demo-data: unexpected argument '%s'\n%s", argv[i], usage_text);
            return 2;
        }
    }
    if (!out || per_class < 1 || per_class > 100000) {
        fputs(usage_text, stderr);
        return 2;
    }
    ldmc_err err = {0};
    if (ldmc_shapes_write(out, (int)per_class, seed, &err) != 0) {
        fprintf(stderr, "ldmc demo-data: %s\n", err.message);
        return 1;
    }
    printf("wrote %ld pictures of each of %d classes (", per_class, LDMC_SHAPE_CLASSES);
    for (int c = 0; c < LDMC_SHAPE_CLASSES; c++)
        printf("%s%s", c ? ", " : "", ldmc_shape_class_name(c));
    printf(") under %s\n", out);
    return 0;
}
