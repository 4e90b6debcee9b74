// YAML configs (parsed with libyaml) as a small tree of maps, lists and scalars that remembers
// where each node came from, so that every complaint names the file, the line and the key path:
//   configs/x.yaml:12: unet.channel_mult: expected a list of whole numbers, got 'two'
// Typed getters return 0, or -1 with such a message in the ldmc_err. Tested by tests/test_config.c.
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/error.h"

typedef enum ldmc_cfg_kind { LDMC_CFG_SCALAR, LDMC_CFG_LIST, LDMC_CFG_MAP } ldmc_cfg_kind;

typedef struct ldmc_cfg {
    ldmc_cfg_kind kind;
    char *key;               // the key of a map entry, NULL otherwise
    char *value;             // a scalar's text
    int line;                // 1-based line in the file
    struct ldmc_cfg **items; // map entries or list items
    int count;
    struct ldmc_cfg *parent;
    const char *file; // shared by every node of a tree (owned by the root)
} ldmc_cfg;

// Loads a file (or a string, named `name` in messages). NULL on error.
ldmc_cfg *ldmc_cfg_load(const char *path, ldmc_err *err);
ldmc_cfg *ldmc_cfg_parse(const char *text, const char *name, ldmc_err *err);
void ldmc_cfg_free(ldmc_cfg *root);

// Sets "a.b.c" to the scalar `value` (YAML-parsed: `[1, 2]` becomes a list), creating maps on
// the way: command-line overrides (--set optim.lr=1e-4). Fails naming the path when a part of it
// is not a map.
int ldmc_cfg_set(ldmc_cfg *root, const char *path, const char *value, ldmc_err *err);
// Writes the tree back as YAML (the resolved config saved with each checkpoint).
int ldmc_cfg_write(const ldmc_cfg *root, FILE *out);

// Compares two trees scalar by scalar (numbers as numbers: 5e-4 equals 0.0005) and calls
// `report` for each path whose value differs or that only one tree has (`was` or `now` NULL
// then): the scalars of `was` in order, then those only `now` has. Returns how many.
typedef void (*ldmc_cfg_diff_fn)(const char *path, const char *was, const char *now, void *ctx);
int ldmc_cfg_diff(const ldmc_cfg *was, const ldmc_cfg *now, ldmc_cfg_diff_fn report, void *ctx);

// The entry `key` of a map, or NULL.
const ldmc_cfg *ldmc_cfg_get(const ldmc_cfg *map, const char *key);
// "unet.channel_mult" or "unet.vector[2]": the node's path, for messages.
const char *ldmc_cfg_path(const ldmc_cfg *node, char *buf, int size);
// Fails with "file:line: path: " + the message.
int ldmc_cfg_error(const ldmc_cfg *node, ldmc_err *err, const char *fmt, ...) LDMC_PRINTF(3, 4);
// Fails naming the first key of `map` that is not in `allowed` (a NULL-terminated list).
int ldmc_cfg_check_keys(const ldmc_cfg *map, const char *const *allowed, ldmc_err *err);

// Typed reads of map entries. A missing optional entry leaves *out untouched and returns 0.
int ldmc_cfg_int(const ldmc_cfg *map, const char *key, bool required, int64_t min, int64_t max,
                 int64_t *out, ldmc_err *err);
int ldmc_cfg_double(const ldmc_cfg *map, const char *key, bool required, double *out,
                    ldmc_err *err);
int ldmc_cfg_bool(const ldmc_cfg *map, const char *key, bool required, bool *out, ldmc_err *err);
// A list of whole numbers in [min, max], at most `capacity` of them; a single number is accepted
// as a list of one when `scalar_ok`.
int ldmc_cfg_int_list(const ldmc_cfg *map, const char *key, bool required, bool scalar_ok,
                      int64_t min, int64_t max, int64_t *out, int capacity, int *count,
                      ldmc_err *err);
