// Whole-model checkpoint files (see model_files.h). Tested by tests/test_checkpoint.c.
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
static int count_found(const ldmc_params *p, const ldmc_safetensors *st, const ldmc_key_map *map) {
    int found = 0;
    char key[512];
    for (int i = 0; i < p->count; i++)
        found += ldmc_map_key(map, p->items[i].name, key, sizeof key, NULL) == 0 &&
                 ldmc_safetensors_find(st, key) != NULL;
    return found;
}

// A single file: prefixed official keys when any key has the model's prefix, else bare official
// or diffusers keys, whichever finds more of the table.
static int detect_naming(const char *path, const ldmc_params *p, const ldmc_safetensors *st,
                         ldmc_key_map *map, const char **domain, ldmc_err *err) {
    const char *prefix = map->vae ? LDMC_VAE_PREFIX : LDMC_UNET_PREFIX;
    *map = (ldmc_key_map){.layout = LDMC_LAYOUT_OFFICIAL, .unet = map->unet, .vae = map->vae};
    *domain = prefix;
    for (int i = 0; i < st->count; i++)
        if (!strncmp(st->tensors[i].name, prefix, strlen(prefix))) return 0;
    ldmc_key_map bare = *map, diffusers = *map;
    bare.bare = true;
    diffusers.layout = LDMC_LAYOUT_DIFFUSERS;
    int n_bare = count_found(p, st, &bare), n_diffusers = count_found(p, st, &diffusers);
    *domain = "";
    if (n_bare == 0 && n_diffusers == 0) {
        const char *example = map->vae ? "encoder.conv_in.weight" : "input_blocks.0.0.weight";
        return LDMC_ERR(err,
                        "%s: no %s weights in it: expected keys such as '%s%s' (a whole "
                        "checkpoint), '%s' (a stand-alone file) or diffusers names; it has %d "
                        "tensors, the first '%s'",
                        path, map->vae ? "VAE" : "UNet", prefix, example, example, st->count,
                        st->count ? st->tensors[0].name : "");
    }
    *map = n_bare >= n_diffusers ? bare : diffusers;
    return 0;
}

int ldmc_open_model_file(const char *path, const ldmc_params *p, ldmc_key_map *map,
                         ldmc_safetensors *st, const char **domain, ldmc_err *err) {
    bool vae = map->vae != NULL;
    if (!is_dir(path)) {
        if (ldmc_safetensors_open(st, path, err) != 0) return -1;
        if (detect_naming(path, p, st, map, domain, err) == 0) return 0;
        ldmc_safetensors_close(st);
        return -1;
    }
    map->layout = LDMC_LAYOUT_DIFFUSERS;
    map->bare = false;
    *domain = "";
    static const char *const names[] = {"diffusion_pytorch_model.safetensors",
                                        "diffusion_pytorch_model.fp16.safetensors"};
    char file[4096];
    for (int i = 0; i < 2; i++) {
        snprintf(file, sizeof file, "%s/%s/%s", path, vae ? "vae" : "unet", names[i]);
        if (access(file, F_OK) == 0) return ldmc_safetensors_open(st, file, err);
    }
    return LDMC_ERR(err, "%s: a diffusers folder needs %s/diffusion_pytorch_model.safetensors "
                    "(or .fp16.safetensors)", path, vae ? "vae" : "unet");
}

static int load(ldmc_params *p, const char *path, const ldmc_unet_config *ucfg,
                const ldmc_vae_config *vcfg, const ldmc_load_options *opt, ldmc_err *err) {
    ldmc_safetensors st;
    ldmc_key_map map = {.unet = ucfg, .vae = vcfg};
    const char *domain;
    if (ldmc_open_model_file(path, p, &map, &st, &domain, err) != 0) return -1;
    int rc = ldmc_load_weights(p, &st, &map, domain, opt, err);
    ldmc_safetensors_close(&st);
    return rc;
}

int ldmc_load_unet(ldmc_unet *u, const char *path, const ldmc_load_options *opt, ldmc_err *err) {
    return load(&u->params, path, &u->cfg, NULL, opt, err);
}

int ldmc_load_vae(ldmc_vae *v, const char *path, const ldmc_load_options *opt, ldmc_err *err) {
    return load(&v->params, path, NULL, &v->cfg, opt, err);
}

static int make_dir(const char *path, ldmc_err *err) {
    if (mkdir(path, 0777) != 0 && errno != EEXIST)
        return LDMC_ERR(err, "%s: cannot create the folder: %s", path, strerror(errno));
    return 0;
}

// <folder>/<sub>/diffusion_pytorch_model.safetensors and config.json for one model.
static int save_diffusers_part(const char *folder, const char *sub, const ldmc_save_part *part,
                               ldmc_dtype dtype, ldmc_err *err) {
    char dir[4096], file[4200];
    snprintf(dir, sizeof dir, "%s/%s", folder, sub);
    if (make_dir(dir, err) != 0) return -1;
    char *config = ldmc_diffusers_config_json(&part->map, err);
    if (!config) return -1;
    snprintf(file, sizeof file, "%s/config.json", dir);
    FILE *f = fopen(file, "w");
    int rc = f && fputs(config, f) >= 0 && fputc('\n', f) != EOF ? 0 : -1;
    if (f && fclose(f) != 0) rc = -1;
    free(config);
    if (rc != 0) return LDMC_ERR(err, "%s: cannot write: %s", file, strerror(errno));
    snprintf(file, sizeof file, "%s/diffusion_pytorch_model.safetensors", dir);
    return ldmc_save_weights(file, part, 1, dtype, NULL, err);
}

int ldmc_save_models(const char *path, ldmc_layout layout, const ldmc_unet *u, const ldmc_vae *v,
                     ldmc_dtype dtype, ldmc_param_role role, const ldmc_safetensors *passthrough,
                     ldmc_err *err) {
    ldmc_save_part parts[2];
    int n = 0;
    if (u) parts[n++] = (ldmc_save_part){&u->params, {.layout = layout, .unet = &u->cfg}, role};
    if (v) parts[n++] = (ldmc_save_part){&v->params, {.layout = layout, .vae = &v->cfg}, role};
    if (n == 0) return LDMC_ERR(err, "%s: no model to save", path);
    if (layout == LDMC_LAYOUT_OFFICIAL) return ldmc_save_weights(path, parts, n, dtype, passthrough, err);
    if (make_dir(path, err) != 0) return -1;
    for (int i = 0; i < n; i++)
        if (save_diffusers_part(path, parts[i].map.vae ? "vae" : "unet", &parts[i], dtype, err) != 0)
            return -1;
    return 0;
}
