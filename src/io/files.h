// Paths and folders: a path given relative to another file's folder, resolved and shown as short
// as it can be; creating a path with its parents (mkdir -p) and removing a tree (rm -rf).
// Tested by tests/test_config.c (paths), tests/test_train.c (checkpoint folders) and
// tests/test_data.c (the demo data).
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

// `path` as seen from folder `base` (absolute paths as they are), with "." and ".." resolved:
// ".." of an existing folder is its real parent (symbolic links followed, as the system would),
// of a folder not made yet the lexical one. The result is relative to the working directory when
// it lies under it (configs/../runs/demo -> runs/demo), else absolute. -1 when it does not fit.
int ldmc_path_resolve(const char *base, const char *path, char *out, size_t size);

// Whether path is a folder (following symbolic links).
bool ldmc_is_dir(const char *path);
// Creates a directory and its parents (mkdir -p).
int ldmc_mkdirs(const char *path, ldmc_err *err);
// Removes a file or a folder with everything in it (rm -rf); 0 on success.
int ldmc_remove_tree(const char *path);
