// `ldmc info [CONFIG [--keys] [--batch B --res H W]]`: what this build is; or a model config's
// module summary and exact parameter count (nothing allocated), its official keys, and the
// memory plan of a training step from a dry run. Tested by tests/test_cli.sh.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "io/buildinfo.h"
#include "io/weights.h"
#include "nn/models.h"
#include "pipeline/plan.h"

static const char *usage_text =
    "usage: ldmc info                     build options, library versions, threads\n"
    "       ldmc info CONFIG [--keys] [--batch B --res H W]\n"
    "  CONFIG          a model config (configs/sdxl_base.yaml, ...): module summary, exact\n"
    "                  parameter count, without allocating the weights\n"
    "  --keys          list every parameter's official key and shape\n"
    "  --batch B --res H W   memory plan of a training step at H x W pixels (a UNet works on\n"
    "                  the latent of the config's autoencoder, H/f x W/f, or of the SDXL\n"
    "                  autoencoder, f = 8, when the config has none)\n";

// 2567463684 -> "2,567,463,684"
static const char *grouped(int64_t v, char *buf, size_t size) {
    char digits[32];
    int n = snprintf(digits, sizeof digits, "%lld", (long long)v), len = 0;
    for (int i = 0; i < n && (size_t)len + 2 < size; i++) {
        buf[len++] = digits[i];
        if ((n - 1 - i) % 3 == 0 && i != n - 1 && digits[i] != '-') buf[len++] = ',';
    }
    buf[len] = '\0';
    return buf;
}

static void print_keys(const ldmc_model *m) {
    const ldmc_params *p = m->params;
    ldmc_key_map official = {.layout = LDMC_LAYOUT_OFFICIAL, .model = m};
    for (int i = 0; i < p->count; i++) {
        int64_t shape[LDMC_MAX_DIMS];
        int ndim = ldmc_file_shape(&p->items[i], &official, shape);
        printf("%s [", p->items[i].name);
        for (int d = 0; d < ndim; d++)
            printf(d ? ", %lld" : "%lld", (long long)shape[d]);
        printf("]\n");
    }
}

static double gib(size_t bytes) { return (double)bytes / (1u << 30); }

static void print_plan(const ldmc_memory_plan *m, int batch, int H, int W, int h, int w) {
    char buf[32];
    printf("memory plan: one training step, batch %d at %dx%d (width x height", batch, W, H);
    if (h != H) printf("; latent %dx%d", w, h);
    printf(")");
    printf(", f32 on the CPU, AdamW\n");
    printf("  parameters    %s (%s trainable)\n", grouped(m->parameters, buf, sizeof buf),
           grouped(m->trainable, buf + 16, sizeof buf - 16));
    printf("  weights       %9.2f GiB\n", gib(m->weights));
    printf("  gradients     %9.2f GiB\n", gib(m->gradients));
    printf("  AdamW m, v    %9.2f GiB\n", gib(m->optimizer));
    size_t fixed = m->weights + m->gradients + m->optimizer;
    printf("  activations   %9.2f GiB   total %.2f GiB\n", gib(m->activations),
           gib(fixed + m->activations));
    printf("  activations with gradient checkpointing %9.2f GiB   total %.2f GiB\n",
           gib(m->activations_recomputed), gib(fixed + m->activations_recomputed));
    if (m->activations_projections)
        printf("  activations with the projections recomputed %9.2f GiB   total %.2f GiB\n",
               gib(m->activations_projections), gib(fixed + m->activations_projections));
    printf("  (activations: the step's memory plan, from a dry run of forward, loss and backward;"
           " %.2f GiB if nothing were freed before the step's end; bf16 activations on the GPU"
           " take about half)\n",
           gib(m->unplanned));
}

// The frozen text encoders of a text model's step: their weights, and the peak of their forward
// at the batch, which the conditioner drops (keeping the context and pooled text) before the
// UNet's forward, so it adds to the step's peak only where it exceeds the UNet's.
static void print_text_plan(const ldmc_model *models, int n, int batch,
                            const ldmc_memory_plan *unet) {
    int64_t params = 0;
    size_t peak = 0;
    int count = 0;
    for (int i = 0; i < n; i++) {
        if (!ldmc_model_is_text(&models[i])) continue;
        params += ldmc_params_count(models[i].params, false);
        ldmc_dry_run r = ldmc_dry_run_text_forward(models[i].module, LDMC_CPU, batch);
        if (r.activations > peak) peak = r.activations;
        count++;
    }
    if (!count) return;
    char buf[32];
    size_t weights = (size_t)params * sizeof(float);
    size_t fixed = unet->weights + unet->gradients + unet->optimizer + weights;
    printf("  text encoders (%d, frozen, forward only): %s parameters, weights %.2f GiB (bf16 on "
           "the GPU: %.2f GiB); forward peak %.2f GiB at batch %d, dropped before the UNet's "
           "forward\n",
           count, grouped(params, buf, sizeof buf), gib(weights), gib(weights / 2), gib(peak),
           batch);
    size_t act = unet->activations > peak ? unet->activations : peak;
    size_t act_r = unet->activations_recomputed > peak ? unet->activations_recomputed : peak;
    size_t act_p = unet->activations_projections > peak ? unet->activations_projections : peak;
    printf("  total with the text encoders %.2f GiB, with gradient checkpointing %.2f GiB, with "
           "the projections recomputed %.2f GiB\n",
           gib(fixed + act), gib(fixed + act_r), gib(fixed + act_p));
}

int ldmc_cmd_info(int argc, char **argv) {
    const char *config = NULL;
    bool keys = false;
    int batch = 0, H = 0, W = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--keys")) {
            keys = true;
        } else if (!strcmp(argv[i], "--batch") && i + 1 < argc) {
            batch = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--res") && i + 2 < argc) {
            H = atoi(argv[++i]);
            W = atoi(argv[++i]);
        } else if (argv[i][0] != '-' && !config) {
            config = argv[i];
        } else {
            fprintf(stderr, "ldmc info: unexpected argument '%s'\n%s", argv[i], usage_text);
            return 2;
        }
    }
    if (!config) {
        if (keys || batch || H) {
            fprintf(stderr, "ldmc info: --keys, --batch and --res need a CONFIG\n");
            return 2;
        }
        printf("ldmc 0.1.0\n");
        ldmc_buildinfo_print(stdout);
        return 0;
    }
    if ((batch || H || W) && (batch < 1 || H < 8 || W < 8)) {
        fprintf(stderr, "ldmc info: a memory plan needs --batch B (>= 1) and --res H W (>= 8)\n");
        return 2;
    }
    ldmc_model_config cfg;
    ldmc_err err = {0};
    if (ldmc_model_config_load(config, &cfg, &err) != 0) {
        fprintf(stderr, "ldmc info: %s\n", err.message);
        return 1;
    }
    ldmc_model models[LDMC_MAX_MODELS];
    int n = ldmc_models_create(&cfg, models), rc = 0;
    // a UNet's plan is at the latent of the config's own autoencoder (demo_model.yaml: f = 4),
    // else at SDXL's (f = 8)
    int f = cfg.has_vae ? 1 << (cfg.vae.levels - 1) : 8;
    for (int i = 0; i < n && rc == 0; i++) {
        const ldmc_model *m = &models[i];
        char buf[32];
        if (keys) {
            print_keys(m);
        } else {
            m->desc->print_summary(m->module, stdout);
            printf("parameters: %s\n",
                   grouped(ldmc_params_count(m->params, false), buf, sizeof buf));
        }
        if (!batch || ldmc_model_is_text(m)) continue; // planned with the UNet's step
        ldmc_memory_plan plan;
        ldmc_err perr = {0};
        int latent = ldmc_model_plan(m, batch, H, W, f, &plan, &perr);
        if (latent < 0) {
            fprintf(stderr, "ldmc info: %s\n", perr.message);
            rc = 2;
        } else {
            print_plan(&plan, batch, H, W, H / latent, W / latent);
            if (latent > 1 && !cfg.has_vae) printf("  (latent: the SDXL autoencoder's, f = 8)\n");
            if (m->desc == &ldmc_unet_desc) print_text_plan(models, n, batch, &plan);
        }
    }
    for (int i = 0; i < n; i++)
        ldmc_model_destroy(&models[i]);
    return rc;
}
