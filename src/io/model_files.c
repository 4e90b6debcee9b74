// Files of whole models (see model_files.h). Tested by tests/test_weights.c.
#include "io/model_files.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static bool is_dir(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

// How many of the table's parameters `map` finds in the file.
static int count_found(const ldmc_safetensors *st, const ldmc_key_map *map) {
    const ldmc_params *p = map->model->params;
    int found = 0;
    char key[512];
    for (int i = 0; i < p->count; i++)
        found += ldmc_map_key(map, p->items[i].name, key, sizeof key, NULL) == 0 &&
                 ldmc_safetensors_find(st, key) != NULL;
    return found;
}

// A single file: prefixed official keys when any key has the model's prefix, else bare official
// or diffusers keys, whichever finds more of the table.
static int detect_naming(const char *path, const ldmc_model *m, const ldmc_safetensors *st,
                         ldmc_key_map *map, const char **domain, ldmc_err *err) {
    const char *prefix = m->desc->prefix;
    *map = (ldmc_key_map){.layout = LDMC_LAYOUT_OFFICIAL, .model = m};
    *domain = prefix;
    for (int i = 0; i < st->count; i++)
        if (!strncmp(st->tensors[i].name, prefix, strlen(prefix))) return 0;
    ldmc_key_map bare = *map, diffusers = *map;
    bare.bare = true;
    diffusers.layout = LDMC_LAYOUT_DIFFUSERS;
    int n_bare = count_found(st, &bare), n_diffusers = count_found(st, &diffusers);
    *domain = "";
    if (n_bare == 0 && n_diffusers == 0) {
        const char *example = m->desc->example_key;
        return LDMC_ERR(err,
                        "%s: no %s weights in it: expected keys such as '%s%s' (a whole "
                        "official file), '%s' (a stand-alone file) or diffusers names; it has %d "
                        "tensors, the first '%s'",
                        path, m->desc->title, prefix, example, example, st->count,
                        st->count ? st->tensors[0].name : "");
    }
    *map = n_bare >= n_diffusers ? bare : diffusers;
    return 0;
}

// The weights file in the model's diffusers subfolder.
static const char *diffusers_file(const ldmc_model_desc *d) {
    return d->diffusers_file ? d->diffusers_file : "diffusion_pytorch_model.safetensors";
}

int ldmc_open_model_file(const char *path, const ldmc_model *m, ldmc_key_map *map,
                         ldmc_safetensors *st, const char **domain, ldmc_err *err) {
    if (!is_dir(path)) {
        if (ldmc_safetensors_open(st, path, err) != 0) return -1;
        if (detect_naming(path, m, st, map, domain, err) == 0) return 0;
        ldmc_safetensors_close(st);
        return -1;
    }
    *map = (ldmc_key_map){.layout = LDMC_LAYOUT_DIFFUSERS, .model = m};
    *domain = "";
    const char *folder = m->desc->diffusers_folder, *name = diffusers_file(m->desc);
    size_t stem = strlen(name) - strlen(".safetensors");
    char file[4096];
    for (int i = 0; i < 2; i++) { // name.safetensors, name.fp16.safetensors
        snprintf(file, sizeof file, "%s/%s/%.*s%s", path, folder, (int)stem, name,
                 i ? ".fp16.safetensors" : ".safetensors");
        if (access(file, F_OK) == 0) return ldmc_safetensors_open(st, file, err);
    }
    return LDMC_ERR(err, "%s: a diffusers folder needs %s/%s (or %.*s.fp16.safetensors)", path,
                    folder, name, (int)stem, name);
}

int ldmc_load_model(const ldmc_model *m, const char *path, const ldmc_load_options *opt,
                    ldmc_err *err) {
    ldmc_safetensors st;
    ldmc_key_map map;
    const char *domain;
    if (ldmc_open_model_file(path, m, &map, &st, &domain, err) != 0) return -1;
    int rc = ldmc_load_weights(&st, &map, domain, opt, err);
    ldmc_safetensors_close(&st);
    return rc;
}

static int make_dir(const char *path, ldmc_err *err) {
    if (mkdir(path, 0777) != 0 && errno != EEXIST)
        return LDMC_ERR(err, "%s: cannot create the folder: %s", path, strerror(errno));
    return 0;
}

// <folder>/<the model's subfolder>/<its weights file> and config.json.
static int save_diffusers_part(const char *folder, const ldmc_save_part *part, ldmc_dtype dtype,
                               ldmc_err *err) {
    const ldmc_model *m = part->map.model;
    char dir[4096], file[4200];
    snprintf(dir, sizeof dir, "%s/%s", folder, m->desc->diffusers_folder);
    if (make_dir(dir, err) != 0) return -1;
    char *config = m->desc->diffusers_config(m->config, err);
    if (!config) return -1;
    snprintf(file, sizeof file, "%s/config.json", dir);
    FILE *f = fopen(file, "w");
    int rc = f && fputs(config, f) >= 0 && fputc('\n', f) != EOF ? 0 : -1;
    if (f && fclose(f) != 0) rc = -1;
    free(config);
    if (rc != 0) return LDMC_ERR(err, "%s: cannot write: %s", file, strerror(errno));
    snprintf(file, sizeof file, "%s/%s", dir, diffusers_file(m->desc));
    return ldmc_save_weights(file, part, 1, dtype, NULL, err);
}

int ldmc_save_models(const char *path, ldmc_layout layout, const ldmc_model *models, int n,
                     ldmc_dtype dtype, ldmc_param_role role, const ldmc_safetensors *passthrough,
                     ldmc_err *err) {
    ldmc_save_part parts[LDMC_MAX_SAVE_PARTS];
    if (n == 0) return LDMC_ERR(err, "%s: no model to save", path);
    if (n > LDMC_MAX_SAVE_PARTS) return LDMC_ERR(err, "%s: %d models in one file", path, n);
    for (int i = 0; i < n; i++)
        parts[i] = (ldmc_save_part){{.layout = layout, .model = &models[i]}, role, NULL};
    if (layout == LDMC_LAYOUT_OFFICIAL)
        return ldmc_save_weights(path, parts, n, dtype, passthrough, err);
    if (make_dir(path, err) != 0) return -1;
    for (int i = 0; i < n; i++)
        if (save_diffusers_part(path, &parts[i], dtype, err) != 0) return -1;
    return 0;
}
