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

int ldmc_open_model_file(const char *path, bool vae, ldmc_safetensors *st, ldmc_layout *layout,
                         ldmc_err *err) {
    if (!is_dir(path)) {
        *layout = LDMC_LAYOUT_OFFICIAL;
        return ldmc_safetensors_open(st, path, err);
    }
    *layout = LDMC_LAYOUT_DIFFUSERS;
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

static int load(ldmc_params *p, const char *path, bool vae, const ldmc_unet_config *ucfg,
                const ldmc_vae_config *vcfg, const ldmc_load_options *opt, ldmc_err *err) {
    ldmc_safetensors st;
    ldmc_layout layout;
    if (ldmc_open_model_file(path, vae, &st, &layout, err) != 0) return -1;
    ldmc_key_map map = {.layout = layout, .unet = ucfg, .vae = vcfg};
    const char *domain = layout == LDMC_LAYOUT_DIFFUSERS ? "" : vae ? LDMC_VAE_PREFIX : LDMC_UNET_PREFIX;
    int rc = ldmc_load_weights(p, &st, &map, domain, opt, err);
    ldmc_safetensors_close(&st);
    return rc;
}

int ldmc_load_unet(ldmc_unet *u, const char *path, const ldmc_load_options *opt, ldmc_err *err) {
    return load(&u->params, path, false, &u->cfg, NULL, opt, err);
}

int ldmc_load_vae(ldmc_vae *v, const char *path, const ldmc_load_options *opt, ldmc_err *err) {
    return load(&v->params, path, true, NULL, &v->cfg, opt, err);
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
    if (u) parts[n++] = (ldmc_save_part){&u->params, {layout, &u->cfg, NULL}, role};
    if (v) parts[n++] = (ldmc_save_part){&v->params, {layout, NULL, &v->cfg}, role};
    if (n == 0) return LDMC_ERR(err, "%s: no model to save", path);
    if (layout == LDMC_LAYOUT_OFFICIAL) return ldmc_save_weights(path, parts, n, dtype, passthrough, err);
    if (make_dir(path, err) != 0) return -1;
    for (int i = 0; i < n; i++)
        if (save_diffusers_part(path, parts[i].map.vae ? "vae" : "unet", &parts[i], dtype, err) != 0)
            return -1;
    return 0;
}
