// `ldmc sample CONFIG ...`: images from a diffusion model (src/eval/sample.h): a training config
// (the run's weights) or a model config with --weights. Tested by tests/test_cli.sh.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/commands.h"
#include "core/device.h"
#include "eval/sample.h"
#include "train/dist.h"

static const char *usage_text =
    "usage: ldmc sample CONFIG (--prompt TEXT ... | --prompts FILE | --class N[,N...]) --out DIR\n"
    "                   [--n N] [--batch B] [--seed S] [--steps N] [--cfg S] [--sampler NAME]\n"
    "                   [--schedule ldm|sgm|karras] [--size WxH] [--negative TEXT]\n"
    "                   [--init IMAGE --strength S]\n"
    "                   [--refiner CONFIG [--refiner-weights FILE] [--switch F]]\n"
    "                   [--weights FILE] [--vae VAE_CONFIG] [--vae-weights FILE] [--vocab PATH]\n"
    "                   [--prediction eps|v] [--uncond zeros|empty] [--device cpu|cuda]\n"
    "                   [--shard R/W] [--no-grid] [--quiet]\n"
    "  CONFIG       a training config (samples its run's model.safetensors) or a model config\n"
    "               with --weights (an official SDXL file holds UNet, VAE and text encoders)\n"
    "  --prompt     a prompt (repeatable); --prompts: a file of prompts, one per line\n"
    "  --negative   a text model's negative prompt: the unconditional branch of guidance\n"
    "  --class      classes of a class-conditional model\n"
    "  --n          images per prompt or class (1); --batch: images per run (1)\n"
    "  --seed       image i gets seed + i (default: from the clock, printed)\n"
    "  --steps      sampler steps (50; a training config: its sample.steps)\n"
    "  --cfg        classifier-free guidance scale (5; a training config: sample.guidance_scale)\n"
    "  --sampler    ddim, euler, euler_a, dpmpp_2m (euler); --schedule: the sigmas (the "
    "sampler's)\n"
    "  --size       WxH (1024x1024; a training config: sample.width x sample.height)\n"
    "  --init       SDEdit from an image, running the last --strength of the steps (0.3)\n"
    "  --refiner    the refiner's config: it takes the latents at --switch of the schedule (0.8)\n"
    "  --shard      make only images i with i % W == R (one of W processes of an evaluation);\n"
    "               under mpirun or srun each rank takes its own (rank/world) by itself\n"
    "  --out        the folder for NNNNN-SEED.png (generation parameters in a text chunk), "
    "grid.png\n";

// The prompts of a file, one per line (blank lines skipped); NULL with a message on failure.
static char **read_prompts(const char *path, int *n) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "ldmc sample: %s: cannot read: %s\n", path, strerror(errno));
        return NULL;
    }
    char **out = NULL, line[8192];
    int cap = 0;
    *n = 0;
    while (fgets(line, sizeof line, f)) {
        size_t len = strlen(line);
        if (len == sizeof line - 1 && line[len - 1] != '\n') {
            fprintf(stderr, "ldmc sample: %s: line %d is longer than %zu bytes\n", path, *n + 1,
                    sizeof line - 2);
            goto fail;
        }
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (!len) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            char **grown = realloc(out, (size_t)cap * sizeof *out);
            if (!grown) goto fail;
            out = grown;
        }
        if (!(out[(*n)++] = strdup(line))) goto fail;
    }
    fclose(f);
    if (*n == 0) {
        fprintf(stderr, "ldmc sample: %s: no prompts (one per line)\n", path);
        free(out);
        return NULL;
    }
    return out;
fail:
    fclose(f);
    for (int i = 0; i < *n; i++)
        free(out[i]);
    free(out);
    return NULL;
}

// "3" or "0,1,2": the classes; -1 on a malformed list.
static int parse_classes(const char *s, int *out, int max) {
    int n = 0;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > 1000000 || n == max || (*end && *end != ',')) return -1;
        out[n++] = (int)v;
        s = *end ? end + 1 : end;
    }
    return n;
}

typedef struct args {
    const char *config, *out, *prompts_file, *classes, *refiner, *refiner_weights, *init, *negative;
    const char *sampler, *schedule, *size, *device, *shard;
    ldmc_sample_model_options model;
    const char **prompts;
    int n_prompts, n, batch, steps;
    double cfg, switch_at, strength;
    unsigned long long seed;
    bool have_seed, have_steps, have_cfg, grid, quiet;
} args;

static int parse_args(int argc, char **argv, args *a) {
    *a = (args){.n = 1, .batch = 1, .switch_at = 0.8, .strength = 0.3, .grid = true};
    a->prompts = calloc((size_t)argc + 1, sizeof *a->prompts);
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool take = true;
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            fputs(usage_text, stdout);
            return 1;
        } else if (!strcmp(o, "--no-grid")) {
            a->grid = false, take = false;
        } else if (!strcmp(o, "--quiet")) {
            a->quiet = true, take = false;
        } else if (o[0] != '-') {
            if (a->config) goto bad;
            a->config = o, take = false;
        } else if (!v) {
            goto bad;
        } else if (!strcmp(o, "--prompt")) {
            a->prompts[a->n_prompts++] = v;
        } else if (!strcmp(o, "--negative")) {
            a->negative = v;
        } else if (!strcmp(o, "--prompts")) {
            a->prompts_file = v;
        } else if (!strcmp(o, "--class")) {
            a->classes = v;
        } else if (!strcmp(o, "--out")) {
            a->out = v;
        } else if (!strcmp(o, "--n")) {
            a->n = atoi(v);
        } else if (!strcmp(o, "--batch")) {
            a->batch = atoi(v);
        } else if (!strcmp(o, "--seed")) {
            char *end;
            errno = 0;
            a->seed = strtoull(v, &end, 10), a->have_seed = true;
            if (*end || errno || v[0] == '-') goto bad;
        } else if (!strcmp(o, "--steps")) {
            a->steps = atoi(v), a->have_steps = true;
        } else if (!strcmp(o, "--cfg")) {
            a->cfg = atof(v), a->have_cfg = true;
        } else if (!strcmp(o, "--sampler")) {
            a->sampler = v;
        } else if (!strcmp(o, "--schedule")) {
            a->schedule = v;
        } else if (!strcmp(o, "--size")) {
            a->size = v;
        } else if (!strcmp(o, "--init")) {
            a->init = v;
        } else if (!strcmp(o, "--strength")) {
            a->strength = atof(v);
        } else if (!strcmp(o, "--refiner")) {
            a->refiner = v;
        } else if (!strcmp(o, "--refiner-weights")) {
            a->refiner_weights = v;
        } else if (!strcmp(o, "--switch")) {
            a->switch_at = atof(v);
        } else if (!strcmp(o, "--weights")) {
            a->model.weights = v;
        } else if (!strcmp(o, "--vae")) {
            a->model.vae_config = v;
        } else if (!strcmp(o, "--vae-weights")) {
            a->model.vae_weights = v;
        } else if (!strcmp(o, "--vocab")) {
            a->model.vocab = v;
        } else if (!strcmp(o, "--prediction")) {
            a->model.prediction = v;
        } else if (!strcmp(o, "--uncond")) {
            a->model.uncond = v;
        } else if (!strcmp(o, "--device")) {
            a->device = v;
        } else if (!strcmp(o, "--shard")) {
            a->shard = v;
        } else {
            goto bad;
        }
        if (take) i++;
        continue;
    bad:
        fprintf(stderr, "ldmc sample: unexpected argument '%s'\n%s", o, usage_text);
        return 2;
    }
    if (!a->config || !a->out) {
        fprintf(stderr, "ldmc sample: %s\n%s", !a->config ? "no CONFIG" : "no --out DIR",
                usage_text);
        return 2;
    }
    if ((a->n_prompts || a->prompts_file) + !!a->classes > 1 || (a->n_prompts && a->prompts_file)) {
        fprintf(stderr, "ldmc sample: give prompts (--prompt or --prompts) or --class, one way\n");
        return 2;
    }
    return 0;
}

int ldmc_cmd_sample(int argc, char **argv) {
    args a;
    int rc = parse_args(argc, argv, &a);
    if (rc != 0) {
        free(a.prompts);
        return rc == 1 ? 0 : rc;
    }
    char **file_prompts = NULL;
    int n_file = 0, classes[1024], n_classes = 0;
    ldmc_device device = LDMC_CPU;
    if (a.device && ldmc_device_parse(a.device, &device) != 0) {
        fprintf(stderr, "ldmc sample: --device %s: expected cpu or cuda\n", a.device);
        free(a.prompts);
        return 2;
    }
    if (a.classes && (n_classes = parse_classes(a.classes, classes, 1024)) <= 0) {
        fprintf(stderr, "ldmc sample: --class %s: expected class numbers, e.g. 3 or 0,1,2\n",
                a.classes);
        free(a.prompts);
        return 2;
    }
    if (a.prompts_file && !(file_prompts = read_prompts(a.prompts_file, &n_file))) {
        free(a.prompts);
        return 1;
    }
    ldmc_sample_job job = {.prompts = a.n_prompts    ? a.prompts
                                      : file_prompts ? (const char *const *)file_prompts
                                                     : NULL,
                           .negative = a.negative,
                           .classes = n_classes ? classes : NULL,
                           .n_rows = a.n_prompts ? a.n_prompts
                                     : n_file    ? n_file
                                     : n_classes ? n_classes
                                                 : 1,
                           .per_row = a.n,
                           .batch = a.batch,
                           .sampler = a.sampler ? a.sampler : "euler",
                           .switch_at = a.switch_at,
                           .init_image = a.init,
                           .strength = a.strength,
                           .out_dir = a.out,
                           .grid = a.grid,
                           .quiet = a.quiet};
    if (a.schedule && !(job.discretization = ldmc_discretization_from_name(a.schedule))) {
        fprintf(stderr, "ldmc sample: --schedule %s: expected ldm, sgm or karras\n", a.schedule);
        rc = 2;
    }
    char tail;
    if (a.shard && (sscanf(a.shard, "%d/%d%c", &job.shard, &job.shards, &tail) != 2 ||
                    job.shards < 1 || job.shard < 0 || job.shard >= job.shards)) {
        fprintf(stderr, "ldmc sample: --shard %s: expected R/W with 0 <= R < W, e.g. 0/8\n",
                a.shard);
        rc = 2;
    } else if (a.shard && !a.have_seed) {
        fprintf(stderr, "ldmc sample: --shard: every shard needs the same --seed (image i gets "
                        "seed + i)\n");
        rc = 2;
    }
    // under mpirun or srun each rank makes its shard of the images (rank/world), on its GPU
    ldmc_err dist_err = {0};
    if (rc == 0 && ldmc_dist_init(&dist_err) != 0) {
        fprintf(stderr, "ldmc sample: %s\n", dist_err.message);
        rc = 1;
    } else if (rc == 0 && ldmc_dist_get()->world > 1 && !a.shard) {
        const ldmc_dist *d = ldmc_dist_get();
        if (!a.have_seed) {
            fprintf(stderr,
                    "ldmc sample: %d ranks: every rank needs the same --seed (image i gets "
                    "seed + i)\n",
                    d->world);
            rc = 2;
        }
        job.shard = d->rank, job.shards = d->world;
        job.grid = false;
        ldmc_dist_quiet_ranks();
        if (device == LDMC_CUDA) ldmc_dist_use_local_gpu();
    }
    if (a.size && (sscanf(a.size, "%dx%d", &job.width, &job.height) != 2 || job.width <= 0 ||
                   job.height <= 0)) {
        fprintf(stderr, "ldmc sample: --size %s: expected WIDTHxHEIGHT, e.g. 1024x1024\n", a.size);
        rc = 2;
    }
    ldmc_sample_model base, refiner;
    bool have_base = false, have_refiner = false;
    ldmc_ctx ctx;
    bool have_ctx = false;
    ldmc_err err = {0};
    if (rc == 0) {
        a.model.need_vae = true;
        if (ldmc_sample_model_load(&base, a.config, &a.model, &err) != 0) rc = 1;
        have_base = true;
    }
    if (rc == 0 && a.refiner) {
        ldmc_sample_model_options ro = {.weights = a.refiner_weights, .vocab = a.model.vocab};
        if (ldmc_sample_model_load(&refiner, a.refiner, &ro, &err) != 0) rc = 1;
        have_refiner = true;
        job.refiner = &refiner;
    }
    if (rc == 0) { // the defaults a training config gives, else SDXL's
        const ldmc_train_config *c = &base.cfg;
        bool trained = c->sample_steps > 0;
        job.steps = a.have_steps ? a.steps : trained ? c->sample_steps : 50;
        job.guidance = a.have_cfg ? a.cfg : trained ? c->sample_guidance : 5.0;
        if (!a.size) {
            job.width = trained && c->sample_width ? c->sample_width : 1024;
            job.height = trained && c->sample_height ? c->sample_height : 1024;
        }
        job.seed = a.have_seed ? a.seed : (unsigned long long)time(NULL);
        if (!a.have_seed) printf("seed %llu\n", (unsigned long long)job.seed);
        if (device == LDMC_CUDA) {
            if (!ldmc_gpu_available()) {
                err = (ldmc_err){0};
                LDMC_ERR(&err, "--device cuda, but no GPU: %s", ldmc_gpu_unavailable_reason());
                rc = 1;
            } else {
                ldmc_sample_model_to_device(&base);
                if (have_refiner) ldmc_sample_model_to_device(&refiner);
                size_t free_b;
                if (ldmc_ctx_init_gpu_free(&ctx, (size_t)2 << 30, &free_b) != 0) {
                    LDMC_ERR(&err, "%.1f GiB of GPU memory left after the weights",
                             (double)free_b / (1 << 30));
                    rc = 1;
                } else {
                    have_ctx = true;
                }
            }
        } else {
            // address space: only what sampling touches is committed
            ldmc_ctx_init(&ctx, (size_t)64 << 30, (size_t)2 << 30);
            have_ctx = true;
        }
    }
    if (rc == 0) {
        int written = ldmc_sample_run(&ctx, &base, &job, NULL, &err);
        if (written < 0)
            rc = 1;
        else
            printf("wrote %d image%s to %s%s\n", written, written == 1 ? "" : "s", a.out,
                   job.shards > 1            ? " (this process's shard; the others write theirs)"
                   : job.grid && written > 1 ? " (and grid.png)"
                                             : "");
    }
    if (rc == 1) fprintf(stderr, "ldmc sample: %s\n", err.message);
    if (have_ctx) ldmc_ctx_free(&ctx);
    if (have_base) ldmc_sample_model_free(&base);
    if (have_refiner) ldmc_sample_model_free(&refiner);
    for (int i = 0; i < n_file; i++)
        free(file_prompts[i]);
    free(file_prompts);
    free(a.prompts);
    return rc;
}
