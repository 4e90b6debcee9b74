// Folders: creating a path with its parents (mkdir -p) and removing a tree (rm -rf).
// Tested by tests/test_train.c (checkpoint folders) and tests/test_data.c (the demo data).
#pragma once
#include "core/error.h"

// Creates a directory and its parents (mkdir -p).
int ldmc_mkdirs(const char *path, ldmc_err *err);
// Removes a file or a folder with everything in it (rm -rf); 0 on success.
int ldmc_remove_tree(const char *path);
