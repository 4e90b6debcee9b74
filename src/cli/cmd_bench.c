// `ldmc bench ops`: forward and forward+backward times of the CPU ops that dominate an SDXL step
// (3x3 convolutions at SDXL's channel counts, attention at 1024 and 4096 tokens, group norm),
// each the median of several runs after a warm-up, through the same op API the models use.
// `--json` prints one object per case with its parameters, which bench/ops_vs_torch.py reads
// to time the same cases in PyTorch in the same run and report the ratios.
// Tested by tests/test_cli.sh (a quick run).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/commands.h"
#include "core/device.h"
#include "core/rng.h"
#include "core/tape.h"
#include "core/threads.h"
#include "eval/fid.h"
#include "nn/inception.h"
#include "nn/text_encoder.h"
#include "ops/ops.h"
#include "pipeline/sampler.h"
#include "train/bench.h"
#include "train/trainer.h"

typedef enum { CASE_CONV2D, CASE_ATTENTION, CASE_GROUP_NORM } case_kind;

typedef struct bench_case {
    case_kind kind;
    const char *name;
    int N, H, W, C; // conv2d, group_norm: (N, H, W, C); attention: B = N, tokens = H * W
    int O, kernel, stride, padding; // conv2d
    int heads;                      // attention
    int groups;                     // group_norm
} bench_case;

static const bench_case cases[] = {
    {CASE_CONV2D, "conv2d 3x3 320->320 64x64", 1, 64, 64, 320, .O = 320, .kernel = 3, .stride = 1,
     .padding = 1},
    {CASE_CONV2D, "conv2d 3x3 640->640 32x32", 1, 32, 32, 640, .O = 640, .kernel = 3, .stride = 1,
     .padding = 1},
    {CASE_CONV2D, "conv2d 3x3 1280->1280 16x16", 1, 16, 16, 1280, .O = 1280, .kernel = 3,
     .stride = 1, .padding = 1},
    {CASE_CONV2D, "conv2d 3x3 s2 320->320 64x64", 1, 64, 64, 320, .O = 320, .kernel = 3,
     .stride = 2, .padding = 1},
    {CASE_ATTENTION, "attention 1024 tokens 10x64", 1, 32, 32, 640, .heads = 10},
    {CASE_ATTENTION, "attention 4096 tokens 10x64", 1, 64, 64, 640, .heads = 10},
    {CASE_GROUP_NORM, "group_norm 32g 320ch 64x64", 1, 64, 64, 320, .groups = 32},
    {CASE_GROUP_NORM, "group_norm 32g 1280ch 32x32", 1, 32, 32, 1280, .groups = 32},
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static ldmc_tensor *random_tensor(ldmc_ctx *ctx, uint64_t seed, int ndim, const int64_t *shape) {
    ldmc_tensor *t = ldmc_new(ctx, LDMC_F32, ndim, shape);
    ldmc_rng rng = ldmc_rng_make(seed, 0, 0, LDMC_RNG_TEST);
    ldmc_rng_signed_uniform(&rng, 0, (size_t)ldmc_numel(t), t->data);
    ldmc_requires_grad(t);
    return t;
}

// Builds the inputs, runs the forward (timed) and the backward from a random upstream gradient.
static void run_case(ldmc_ctx *ctx, const bench_case *c, double *ms_forward, double *ms_total) {
    ldmc_ctx_reset(ctx);
    ldmc_tensor *out = NULL;
    double t0 = 0;
    if (c->kind == CASE_CONV2D) {
        ldmc_tensor *x = random_tensor(ctx, 1, 4, (int64_t[]){c->N, c->H, c->W, c->C});
        ldmc_tensor *w = random_tensor(ctx, 2, 4, (int64_t[]){c->O, c->kernel, c->kernel, c->C});
        ldmc_tensor *b = random_tensor(ctx, 3, 1, (int64_t[]){c->O});
        t0 = now_ms();
        out = ldmc_conv2d(ctx, x, w, b, c->stride, c->padding);
    } else if (c->kind == CASE_ATTENTION) {
        int64_t shape[3] = {c->N, (int64_t)c->H * c->W, c->C};
        ldmc_tensor *q = random_tensor(ctx, 1, 3, shape), *k = random_tensor(ctx, 2, 3, shape);
        ldmc_tensor *v = random_tensor(ctx, 3, 3, shape);
        t0 = now_ms();
        out = ldmc_attention(ctx, q, k, v, c->heads);
    } else {
        ldmc_tensor *x = random_tensor(ctx, 1, 4, (int64_t[]){c->N, c->H, c->W, c->C});
        ldmc_tensor *g = random_tensor(ctx, 2, 1, (int64_t[]){c->C});
        ldmc_tensor *b = random_tensor(ctx, 3, 1, (int64_t[]){c->C});
        t0 = now_ms();
        out = ldmc_group_norm(ctx, x, g, b, c->groups, 1e-5);
    }
    double t1 = now_ms();
    float *seed = ldmc_scratch(ctx, (size_t)ldmc_numel(out) * sizeof(float));
    ldmc_rng rng = ldmc_rng_make(4, 0, 0, LDMC_RNG_TEST);
    ldmc_rng_signed_uniform(&rng, 0, (size_t)ldmc_numel(out), seed);
    double t2 = now_ms();
    ldmc_backward(ctx, out, seed);
    double t3 = now_ms();
    *ms_forward = t1 - t0;
    *ms_total = (t1 - t0) + (t3 - t2);
}

static void print_json(const bench_case *c, double fwd, double total, int reps) {
    static const char *kinds[] = {"conv2d", "attention", "group_norm"};
    printf("{\"op\": \"%s\", \"name\": \"%s\", \"N\": %d, \"H\": %d, \"W\": %d, \"C\": %d, "
           "\"O\": %d, \"kernel\": %d, \"stride\": %d, \"padding\": %d, \"heads\": %d, "
           "\"groups\": %d, \"threads\": %d, \"reps\": %d, \"ms_forward\": %.3f, "
           "\"ms_forward_backward\": %.3f}\n",
           kinds[c->kind], c->name, c->N, c->H, c->W, c->C, c->O, c->kernel, c->stride, c->padding,
           c->heads, c->groups, ldmc_threads_get(), reps, fwd, total);
}

static int bench_ops(int argc, char **argv) {
    bool json = false;
    int reps = 5;
    const char *filter = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc) {
            filter = argv[++i];
        } else {
            fprintf(stderr, "usage: ldmc bench ops [--json] [--reps N] [--filter TEXT]\n");
            return 2;
        }
    }
    if (reps < 1 || reps > 1000) {
        fprintf(stderr, "ldmc bench ops: --reps must be 1..1000\n");
        return 2;
    }
    ldmc_ctx ctx;
    ldmc_ctx_init(&ctx, (size_t)16 << 30, (size_t)256 << 20);
    if (!json)
        printf("CPU ops, forward and forward+backward, median of %d runs, %d threads\n"
               "%-32s %12s %12s\n",
               reps, ldmc_threads_get(), "case", "fwd ms", "fwd+bwd ms");
    double *fwd = calloc((size_t)reps, sizeof *fwd), *total = calloc((size_t)reps, sizeof *total);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bench_case *c = &cases[i];
        if (filter && !strstr(c->name, filter)) continue;
        double f, t;
        run_case(&ctx, c, &f, &t); // warm-up
        for (int r = 0; r < reps; r++)
            run_case(&ctx, c, &fwd[r], &total[r]);
        double f_med = ldmc_median(fwd, reps), t_med = ldmc_median(total, reps);
        if (json)
            print_json(c, f_med, t_med, reps);
        else
            printf("%-32s %12.2f %12.2f\n", c->name, f_med, t_med);
        fflush(stdout);
    }
    if (!json)
        printf("activation arena high-water mark: %.1f MiB\n", ctx.data.high_water / 1048576.0);
    free(fwd);
    free(total);
    ldmc_ctx_free(&ctx);
    return 0;
}

static const char *step_usage =
    "usage: ldmc bench step TRAIN_CONFIG [--res H W] [--reps N] [--json] [--set key=value ...]\n";

// One training step of a training config's models (everything but the data loader), median of
// N after a warm-up: the number bench/step_vs_torch.py sets next to PyTorch's.
static int bench_step(int argc, char **argv) {
    const char *config = NULL;
    const char **sets = calloc((size_t)argc + 1, sizeof *sets);
    int n_sets = 0, reps = 10, H = 0, W = 0;
    bool json = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--res") && i + 2 < argc) {
            H = atoi(argv[++i]);
            W = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--set") && i + 1 < argc) {
            sets[n_sets++] = argv[++i];
        } else if (argv[i][0] != '-' && !config) {
            config = argv[i];
        } else {
            config = NULL;
            break;
        }
    }
    if (!config || reps < 1 || reps > 1000) {
        fputs(step_usage, stderr);
        free(sets);
        return 2;
    }
    ldmc_train_config cfg;
    ldmc_err err = {0};
    int rc = ldmc_cli_train_config("bench step", config, sets, n_sets, &cfg);
    free(sets);
    if (rc != 0) return 1;
    if (!H || !W) H = cfg.sample_height, W = cfg.sample_width;
    double *ms = calloc((size_t)reps, sizeof *ms);
    rc = H > 0 && W > 0
             ? ldmc_train_bench(&cfg, H, W, reps, ms, &err)
             : LDMC_ERR(&err, "%s: no sample size in the config: pass --res H W", config);
    if (rc == 0) {
        double med = ldmc_median(ms, reps);
        if (json)
            printf("{\"config\": \"%s\", \"task\": \"%s\", \"batch\": %d, \"height\": %d, "
                   "\"width\": %d, \"threads\": %d, \"reps\": %d, \"ms_step\": %.3f}\n",
                   config, ldmc_task_name(cfg.task), cfg.batch_size, H, W, ldmc_threads_get(), reps,
                   med);
        else
            printf("%s: one training step, batch %d at %dx%d, %d threads: %.2f ms (median of %d)\n",
                   config, cfg.batch_size, H, W, ldmc_threads_get(), med, reps);
    } else {
        fprintf(stderr, "ldmc bench step: %s\n", err.message);
    }
    free(ms);
    ldmc_train_config_free(&cfg);
    return rc == 0 ? 0 : 1;
}

static const char *train_usage =
    "usage: ldmc bench train --config MODEL [--batch B] [--res H [W]] [--device cuda|cpu]\n"
    "                        [--reps N] [--warmup N] [--gradient-checkpointing]\n"
    "                        [--recompute-projections] [--fused-backward] [--profile]\n"
    "                        [--dry-run] [--ranks N] [--zero] [--ema] [--json]\n"
    "  MODEL: a model config (configs/sdxl_base.yaml), or a name in configs/ (sdxl_base)\n"
    "  --recompute-projections makes the transformers' q, k, v and feed-forward input products\n"
    "  again in backward instead of keeping them (train.recompute_projections)\n"
    "  --fused-backward updates each parameter during backward, its gradient then freed: no\n"
    "  gradient buffer, and no clipping (optim.fused_backward)\n"
    "  --dry-run plans the step's memory without running it; with --ranks N, one rank's of a\n"
    "  data-parallel run of N ranks (--zero: ZeRO-1, the master, Adam m, v and EMA sharded;\n"
    "  --ema: an fp32 EMA too)\n";

// A model config by path, or by name from the configs/ folder of the working directory.
static const char *model_path(const char *name, char *path, size_t size) {
    if (strchr(name, '/') || strstr(name, ".yaml"))
        snprintf(path, size, "%s", name);
    else
        snprintf(path, size, "configs/%s.yaml", name);
    return path;
}

static int load_model(const char *name, ldmc_model_config *mc, ldmc_err *err) {
    char path[1200];
    if (ldmc_model_config_load(model_path(name, path, sizeof path), mc, err) != 0) return -1;
    if (!mc->has_unet) return LDMC_ERR(err, "%s: no unet section", path);
    return 0;
}

static void print_bytes_json(const char *key, size_t bytes) {
    printf(", \"%s\": %.3f", key, (double)bytes / (1 << 30));
}

// The SDXL training step (see src/train/bench.h): `ldmc bench train --config sdxl_base --batch 8
// --res 1024` on the GPU; bench/sdxl_train_torch.py times PyTorch's on the same card.
static int bench_train(int argc, char **argv) {
    const char *config = NULL;
    ldmc_bench_options o = {.batch = 8,
                            .height = 1024,
                            .width = 1024,
                            .reps = 10,
                            .warmup = 3,
                            .seed = 1,
                            .ranks = 1,
                            .device = ldmc_gpu_available() ? LDMC_CUDA : LDMC_CPU};
    bool json = false, ok = true;
    for (int i = 0; i < argc && ok; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (!strcmp(a, "--config") && more) {
            config = argv[++i];
        } else if (!strcmp(a, "--batch") && more) {
            o.batch = atoi(argv[++i]);
        } else if (!strcmp(a, "--res") && more) {
            o.height = o.width = atoi(argv[++i]);
            if (i + 1 < argc && argv[i + 1][0] != '-') o.width = atoi(argv[++i]);
        } else if (!strcmp(a, "--reps") && more) {
            o.reps = atoi(argv[++i]);
        } else if (!strcmp(a, "--warmup") && more) {
            o.warmup = atoi(argv[++i]);
        } else if (!strcmp(a, "--device") && more) {
            ok = ldmc_device_parse(argv[++i], &o.device) == 0;
        } else if (!strcmp(a, "--gradient-checkpointing")) {
            o.recompute = true;
        } else if (!strcmp(a, "--recompute-projections")) {
            o.recompute_projections = true;
        } else if (!strcmp(a, "--fused-backward")) {
            o.fused_backward = true;
        } else if (!strcmp(a, "--profile")) {
            o.profile = true;
        } else if (!strcmp(a, "--dry-run")) {
            o.dry_run = true;
        } else if (!strcmp(a, "--ranks") && more) {
            o.ranks = atoi(argv[++i]);
        } else if (!strcmp(a, "--zero")) {
            o.zero = true;
        } else if (!strcmp(a, "--ema")) {
            o.ema = true;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else {
            ok = false;
        }
    }
    if (!ok || !config || o.reps < 1 || o.reps > 1000 || o.warmup < 0 || o.ranks < 1 ||
        o.ranks > 65536) {
        fputs(train_usage, stderr);
        return 2;
    }
    if ((o.ranks > 1 || o.zero || o.ema) && !o.dry_run) {
        fprintf(stderr, "ldmc bench train: --ranks, --zero and --ema plan a run: with --dry-run\n");
        return 2;
    }
    ldmc_model_config mc;
    ldmc_err err = {0};
    ldmc_bench_result r;
    int rc = load_model(config, &mc, &err);
    if (rc == 0) rc = ldmc_unet_train_bench(&mc.unet, &o, &r, &err);
    if (rc != 0) {
        fprintf(stderr, "ldmc bench train: %s\n", err.message);
        return 1;
    }
    const char *dev = ldmc_device_name(o.device);
    if (o.device == LDMC_CUDA && !o.dry_run) dev = ldmc_gpu_name();
    size_t peak = r.weight_bytes + r.activation_bytes + r.workspace_bytes;
    if (json) {
        printf("{\"config\": \"%s\", \"device\": \"%s\", \"dry_run\": %s, \"batch\": %d, "
               "\"height\": %d, \"width\": %d, \"gradient_checkpointing\": %s, "
               "\"recompute_projections\": %s, \"fused_backward\": %s, \"parameters\": %lld, "
               "\"tflop_per_image\": %.4f",
               config, dev, o.dry_run ? "true" : "false", o.batch, o.height, o.width,
               o.recompute ? "true" : "false", o.recompute_projections ? "true" : "false",
               o.fused_backward ? "true" : "false", (long long)r.parameters,
               r.flops / o.batch / 1e12);
        print_bytes_json("weights_gib", r.weight_bytes);
        print_bytes_json("activations_gib", r.activation_bytes);
        print_bytes_json("activations_unplanned_gib", r.plan.unplanned);
        print_bytes_json("activations_live_gib", r.plan.live_peak);
        print_bytes_json("activation_gradients_gib", (size_t)r.plan.grad_bytes);
        print_bytes_json("activation_gradients_bf16_gib", (size_t)r.plan.grad_bytes_bf16);
        printf(", \"activation_gradients_zeroed_bytes\": %lld",
               (long long)r.plan.grad_bytes_zeroed);
        print_bytes_json("workspace_gib", r.workspace_bytes);
        print_bytes_json("peak_gib", peak);
        printf(", \"ranks\": %d, \"zero\": %s, \"ema\": %s", o.ranks, o.zero ? "true" : "false",
               o.ema ? "true" : "false");
        if (!o.dry_run) {
            printf(", \"reps\": %d, \"step_ms\": %.3f, \"img_per_s\": %.4f, \"tflops\": %.3f, "
                   "\"guided_forward_ms\": %.3f, \"guided_forward_batch\": %d",
                   o.reps, r.step_ms, r.img_per_s, r.tflops, r.guided_forward_ms, r.guided_batch);
            printf(", \"top_ops\": [");
            for (int i = 0; i < r.profile.count && i < 10; i++)
                printf("%s{\"op\": \"%s %s\", \"ms\": %.3f, \"calls\": %lld}", i ? ", " : "",
                       r.profile.entries[i].name,
                       r.profile.entries[i].backward ? "backward" : "forward",
                       r.profile.entries[i].ms, (long long)r.profile.entries[i].calls);
            printf("]");
        }
        printf("}\n");
        ldmc_plan_free(&r.plan);
        return 0;
    }
    printf("%s on %s: batch %d at %dx%d%s%s%s, %.3fB parameters\n", config, dev, o.batch, o.height,
           o.width, o.recompute ? ", gradient checkpointing" : "",
           o.recompute_projections ? ", projections recomputed" : "",
           o.fused_backward ? ", AdamW during backward" : "", r.parameters / 1e9);
    printf("  model FLOPs: %.2f TFLOP a step, %.3f an image (forward + backward)\n", r.flops / 1e12,
           r.flops / o.batch / 1e12);
    char per_rank[96] = "";
    if (o.ranks > 1 || o.zero || o.ema)
        snprintf(per_rank, sizeof per_rank, " (one rank of %d%s%s)", o.ranks,
                 o.zero && o.ranks > 1 ? ", ZeRO-1" : "", o.ema ? ", fp32 EMA" : "");
    printf("  memory%s: weights and optimizer %.2f GiB, activations %.2f GiB, workspace %.2f GiB: "
           "%.2f GiB\n",
           per_rank, (double)r.weight_bytes / (1 << 30), (double)r.activation_bytes / (1 << 30),
           (double)r.workspace_bytes / (1 << 30), (double)peak / (1 << 30));
    printf("  activations by the step's memory plan: %.2f GiB (%.2f GiB live at once at most; "
           "%.2f GiB if nothing were freed before the step's end)\n",
           (double)r.plan.peak / (1 << 30), (double)r.plan.live_peak / (1 << 30),
           (double)r.plan.unplanned / (1 << 30));
    printf("  activation gradients allocated in the step: %.2f GiB, %.2f GiB of them bf16 (%.2f "
           "GiB were all f32); zeroed before their first sum: %lld bytes\n",
           (double)r.plan.grad_bytes / (1 << 30), (double)r.plan.grad_bytes_bf16 / (1 << 30),
           (double)(r.plan.grad_bytes + r.plan.grad_bytes_bf16) / (1 << 30),
           (long long)r.plan.grad_bytes_zeroed);
    if (o.dry_run) ldmc_plan_print_peak(&r.plan, stdout, 12);
    ldmc_plan_free(&r.plan);
    if (o.dry_run) return 0;
    printf("  training step: %.1f ms (median of %d): %.2f img/s, %.1f TFLOP/s\n", r.step_ms, o.reps,
           r.img_per_s, r.tflops);
    printf("  sampling forward of one image, the UNet at batch %d (%s): %.1f ms\n", r.guided_batch,
           r.guided_batch == 2 ? "guided" : "nothing to guide", r.guided_forward_ms);
    if (r.profile.count) {
        double total = 0;
        for (int i = 0; i < r.profile.count; i++)
            total += r.profile.entries[i].ms;
        printf("  most expensive ops (one profiled step, %.1f ms synchronized):\n", total);
        for (int i = 0; i < r.profile.count && i < 5; i++)
            printf("    %-22s %-8s %9.1f ms  %5.1f%%  %5lld calls\n", r.profile.entries[i].name,
                   r.profile.entries[i].backward ? "backward" : "forward", r.profile.entries[i].ms,
                   100 * r.profile.entries[i].ms / total, (long long)r.profile.entries[i].calls);
    }
    return 0;
}

// ---- the text encoders' forward
// --------------------------------------------------------------------

static const char *text_usage =
    "usage: ldmc bench text --config MODEL [--batch B] [--reps N] [--json] [--profile]\n"
    "  MODEL: a model config with text_encoders (configs/sdxl_base.yaml), or a name in configs/\n";

// The frozen text encoders of a model config (SDXL base: CLIP-L and bigG) on B prompts, as the
// conditioner runs them in training: random weights, ids of prompts of 8 to 77 tokens, forward
// only, median of several runs after a warm-up. `--json` prints one object per encoder, which
// bench/text_vs_torch.py reads to time the same in PyTorch in the same run.
static int bench_text(int argc, char **argv) {
    const char *config = NULL;
    bool json = false, profile = false;
    int batch = 4, reps = 5;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            config = argv[++i];
        else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc)
            batch = atoi(argv[++i]);
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--json") == 0)
            json = true;
        else if (strcmp(argv[i], "--profile") == 0)
            profile = true;
        else {
            fputs(text_usage, stderr);
            return 2;
        }
    }
    if (!config || batch < 1 || batch > 1024 || reps < 1 || reps > 1000) {
        fputs(text_usage, stderr);
        return 2;
    }
    char path[4096];
    ldmc_model_config cfg;
    ldmc_err err = {0};
    if (ldmc_model_config_load(model_path(config, path, sizeof path), &cfg, &err) != 0) {
        fprintf(stderr, "ldmc bench text: %s\n", err.message);
        return 1;
    }
    if (!cfg.n_text) {
        fprintf(stderr, "ldmc bench text: %s has no text_encoders\n", path);
        return 1;
    }
    ldmc_ctx ctx;
    ldmc_ctx_init(&ctx, (size_t)16 << 30, (size_t)256 << 20);
    double *ms = calloc((size_t)reps, sizeof *ms);
    for (int e = 0; e < cfg.n_text; e++) {
        ldmc_text_encoder enc;
        ldmc_text_encoder_init(&enc, &cfg.text[e]);
        ldmc_params_flag_matching(&enc.params, "*", LDMC_PARAM_FROZEN, true);
        ldmc_params_alloc(&enc.params, LDMC_ROLE_WEIGHTS);
        ldmc_params_init(&enc.params, 1 + (uint64_t)e);
        const int T = enc.cfg.context_length, V = enc.cfg.vocab_size;
        int32_t *ids = malloc((size_t)batch * T * sizeof *ids);
        for (int b = 0; b < batch; b++) { // prompt b: 8 + 23 b tokens (mod the context)
            int len = T > 8 ? 8 + (23 * b) % (T - 8) : T;
            for (int t = 0; t < T; t++)
                ids[b * T + t] = t == 0         ? V - 2
                                 : t < len - 1  ? (int32_t)((t * 7919 + b * 104729) % (V - 2))
                                 : t == len - 1 ? V - 1
                                 : enc.cfg.layout == LDMC_TEXT_HF ? V - 1
                                                                  : 0;
        }
        static ldmc_profile prof;
        prof = (ldmc_profile){0};
        for (int r = -1; r < reps + profile; r++) { // r = -1: the warm-up; r = reps: profiled
            ldmc_ctx_reset(&ctx);
            if (r == reps) ldmc_profile_start(&ctx, &prof);
            double t0 = now_ms();
            ldmc_tensor *context, *pooled;
            ldmc_text_encoder_forward(&ctx, &enc, batch, ids, &context, &pooled);
            if (r >= 0 && r < reps) ms[r] = now_ms() - t0;
            ldmc_profile_start(&ctx, NULL);
        }
        double med = ldmc_median(ms, reps);
        const ldmc_text_config *c = &enc.cfg;
        if (json)
            printf("{\"encoder\": %d, \"layout\": \"%s\", \"vocab_size\": %d, "
                   "\"context_length\": %d, \"width\": %d, \"heads\": %d, \"layers\": %d, "
                   "\"mlp_width\": %d, \"quick_gelu\": %s, \"hidden_layer\": %d, "
                   "\"projection_dim\": %d, \"batch\": %d, \"threads\": %d, \"reps\": %d, "
                   "\"ids\": [",
                   e, ldmc_text_layout_name(c->layout), c->vocab_size, c->context_length, c->width,
                   c->heads, c->layers, c->mlp_width, c->quick_gelu ? "true" : "false",
                   c->hidden_layer, c->projection_dim, batch, ldmc_threads_get(), reps);
        if (json) {
            for (int i = 0; i < batch * T; i++)
                printf("%s%d", i ? ", " : "", ids[i]);
            printf("], \"ms_forward\": %.3f}\n", med);
        } else {
            printf("text encoder %d (%s, %d blocks of %d): forward of %d prompts, %d threads: "
                   "%.1f ms (median of %d)\n",
                   e, ldmc_text_layout_name(c->layout), c->layers, c->width, batch,
                   ldmc_threads_get(), med, reps);
        }
        if (profile) {
            ldmc_profile_sort(&prof);
            for (int i = 0; i < prof.count && i < 8; i++)
                printf("  %-20s %9.1f ms  %6lld calls\n", prof.entries[i].name, prof.entries[i].ms,
                       (long long)prof.entries[i].calls);
        }
        fflush(stdout);
        free(ids);
        ldmc_text_encoder_free(&enc);
    }
    free(ms);
    ldmc_ctx_free(&ctx);
    return 0;
}

static const char *inception_usage =
    "usage: ldmc bench inception [--batch B] [--reps N] [--json] [--profile]\n";

// The FID Inception's features (random weights; the preprocessing of 512x512 images included),
// images/s on the CPU; bench/inception_vs_torch.py times torchvision's in the same run.
static int bench_inception(int argc, char **argv) {
    int batch = 8, reps = 3;
    bool json = false, profile = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--profile"))
            profile = true;
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json"))
            json = true;
        else {
            fputs(inception_usage, stderr);
            return 2;
        }
    }
    if (batch < 1 || batch > 256 || reps < 1 || reps > 100) {
        fputs(inception_usage, stderr);
        return 2;
    }
    ldmc_inception net;
    ldmc_err err = {0};
    if (ldmc_inception_init_random(&net, 1, &err) != 0) {
        fprintf(stderr, "ldmc bench inception: %s\n", err.message);
        return 1;
    }
    const int S = 512, R = LDMC_INCEPTION_SIZE;
    uint8_t *images = malloc((size_t)batch * S * S * 3);
    float *x = malloc((size_t)batch * R * R * 3 * sizeof *x),
          *pool3 = malloc((size_t)batch * LDMC_INCEPTION_FEATURES * sizeof *pool3),
          *logits = malloc((size_t)batch * LDMC_INCEPTION_CLASSES * sizeof *logits);
    for (size_t i = 0; i < (size_t)batch * S * S * 3; i++)
        images[i] = (uint8_t)((i * 2654435761u) >> 24);
    ldmc_ctx ctx;
    ldmc_ctx_init(&ctx, (size_t)16 << 30, (size_t)256 << 20);
    double *ms = calloc((size_t)reps, sizeof *ms);
    static ldmc_profile prof;
    double prep_ms = 0;
    for (int r = -1; r < reps + profile; r++) { // r = -1: the warm-up; r = reps: profiled
        if (r == reps) ldmc_profile_start(&ctx, &prof);
        double t0 = now_ms();
        for (int b = 0; b < batch; b++)
            ldmc_fid_preprocess_image(images + (size_t)b * S * S * 3, S, S, LDMC_FID_PYTORCH,
                                      x + (size_t)b * R * R * 3);
        if (r == reps) prep_ms = now_ms() - t0;
        ldmc_inception_forward(&ctx, &net, x, batch, pool3, logits);
        if (r >= 0 && r < reps) ms[r] = now_ms() - t0;
        ldmc_profile_start(&ctx, NULL);
    }
    double med = ldmc_median(ms, reps), ips = 1e3 * batch / med;
    if (json)
        printf("{\"batch\": %d, \"size\": %d, \"threads\": %d, \"reps\": %d, \"ms\": %.3f, "
               "\"images_per_s\": %.3f}\n",
               batch, S, ldmc_threads_get(), reps, med, ips);
    else
        printf("FID Inception: %d images of %dx%d, %d threads: %.1f ms a batch, %.2f images/s "
               "(median of %d)\n",
               batch, S, S, ldmc_threads_get(), med, ips, reps);
    if (profile) {
        printf("  %-20s %9.1f ms\n", "preprocessing", prep_ms);
        ldmc_profile_sort(&prof);
        for (int i = 0; i < prof.count && i < 8; i++)
            printf("  %-20s %9.1f ms  %6lld calls\n", prof.entries[i].name, prof.entries[i].ms,
                   (long long)prof.entries[i].calls);
    }
    free(images), free(x), free(pool3), free(logits), free(ms);
    ldmc_ctx_free(&ctx);
    ldmc_inception_free(&net);
    return 0;
}

static const char *sample_usage =
    "usage: ldmc bench sample --config MODEL [--batch B] [--res H [W]] [--steps N] [--cfg S]\n"
    "                         [--sampler NAME] [--reps N] [--json]\n";

// Sampler steps of a UNet (random weights; a class model's classes, a text model's random text
// embeddings of 77 tokens): ms a step (the guided UNet pass over 2B and the update), median of
// reps runs of --steps steps. bench/sample_vs_torch.py times the same step in PyTorch.
static int bench_sample(int argc, char **argv) {
    const char *config = NULL, *sampler = "euler";
    int batch = 1, H = 64, W = 64, steps = 4, reps = 3;
    double cfg_scale = 5;
    bool json = false;
    for (int i = 0; i < argc; i++) {
        bool more = i + 1 < argc;
        if (!strcmp(argv[i], "--config") && more)
            config = argv[++i];
        else if (!strcmp(argv[i], "--batch") && more)
            batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--res") && more) {
            H = W = atoi(argv[++i]);
            if (i + 1 < argc && argv[i + 1][0] != '-') W = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--steps") && more)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cfg") && more)
            cfg_scale = atof(argv[++i]);
        else if (!strcmp(argv[i], "--sampler") && more)
            sampler = argv[++i];
        else if (!strcmp(argv[i], "--reps") && more)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json"))
            json = true;
        else {
            fputs(sample_usage, stderr);
            return 2;
        }
    }
    ldmc_model_config mc;
    ldmc_err err = {0};
    if (!config || batch < 1 || steps < 2 || reps < 1 || H < 8 || W < 8 ||
        !ldmc_sampler_find(sampler)) {
        fputs(sample_usage, stderr);
        return 2;
    }
    if (load_model(config, &mc, &err) != 0) {
        fprintf(stderr, "ldmc bench sample: %s\n", err.message);
        return 1;
    }
    const int align = 8 << (mc.unet.levels - 1), h = H / 8, w = W / 8, C = mc.unet.in_channels;
    if (H % align || W % align) {
        fprintf(stderr, "ldmc bench sample: --res %d %d: multiples of %d\n", H, W, align);
        return 2;
    }
    ldmc_unet u;
    ldmc_unet_init(&u, &mc.unet);
    ldmc_params_alloc(&u.params, LDMC_ROLE_WEIGHTS);
    ldmc_params_init(&u.params, 1);
    const int T = 77, P = ldmc_unet_pooled_text_dim(&mc.unet);
    bool text = mc.unet.context_dim && !mc.unet.n_classes;
    int64_t *labels = calloc((size_t)batch, sizeof *labels);
    int32_t *size = malloc((size_t)batch * 2 * sizeof *size);
    float *context = text ? malloc((size_t)batch * T * mc.unet.context_dim * sizeof(float)) : NULL,
          *pooled = P ? malloc((size_t)batch * P * sizeof(float)) : NULL;
    for (int b = 0; b < batch; b++)
        labels[b] = b % (mc.unet.n_classes ? mc.unet.n_classes : 1), size[2 * b] = H,
        size[2 * b + 1] = W;
    ldmc_rng rng = ldmc_rng_make(3, 0, 0, LDMC_RNG_TEST);
    if (context) ldmc_rng_normal(&rng, 0, (size_t)batch * T * mc.unet.context_dim, context);
    if (pooled) ldmc_rng_normal(&rng, 1u << 30, (size_t)batch * P, pooled);
    int32_t *crop = calloc((size_t)batch * 2, sizeof *crop);
    float *aesthetic = malloc((size_t)batch * sizeof *aesthetic);
    for (int b = 0; b < batch; b++)
        aesthetic[b] = 6;
    ldmc_cond_batch cond = {.n = batch,
                            .class_ids = mc.unet.n_classes ? labels : NULL,
                            .c_size = size,
                            .c_crop = crop,
                            .c_target = size,
                            .aesthetic = aesthetic,
                            .context = context,
                            .context_tokens = text ? T : 0,
                            .pooled = pooled};
    ldmc_conditioner cond_model = {.unet = &u.cfg}; // (unconditional: the embeddings zeroed)
    ldmc_denoiser d = {
        .unet = &u, .conditioner = &cond_model, .cond = &cond, .guidance_scale = cfg_scale};
    ldmc_schedule schedule;
    ldmc_schedule_sdxl(&schedule);
    ldmc_rng *noise = malloc((size_t)batch * sizeof *noise);
    for (int b = 0; b < batch; b++)
        noise[b] = ldmc_rng_make(7 + (uint64_t)b, 1, 0, LDMC_RNG_SAMPLE);
    ldmc_sample_options o = {.sampler = ldmc_sampler_find(sampler),
                             .schedule = &schedule,
                             .steps = steps,
                             .last = steps,
                             .noise = noise};
    ldmc_ctx ctx;
    ldmc_ctx_init(&ctx, (size_t)64 << 30, (size_t)1 << 30);
    double *ms = calloc((size_t)reps, sizeof *ms);
    for (int r = -1; r < reps; r++) {
        ldmc_ctx_reset(&ctx);
        ldmc_tensor *x = ldmc_zeros(&ctx, LDMC_F32, 4, (int64_t[]){batch, h, w, C});
        ldmc_sampler_start_noise(&ctx, &o, x, noise);
        double t0 = now_ms();
        if (ldmc_run_sampler(&ctx, &o, &d, x, &err) != 0) {
            fprintf(stderr, "ldmc bench sample: %s\n", err.message);
            return 1;
        }
        if (r >= 0) ms[r] = (now_ms() - t0) / steps;
    }
    double med = ldmc_median(ms, reps);
    int passes = ldmc_denoiser_guided(&d) ? 2 * batch : batch;
    if (json)
        printf("{\"config\": \"%s\", \"batch\": %d, \"height\": %d, \"width\": %d, "
               "\"unet_batch\": %d, \"sampler\": \"%s\", \"cfg\": %g, \"steps\": %d, "
               "\"threads\": %d, \"reps\": %d, \"ms_per_step\": %.3f}\n",
               config, batch, H, W, passes, sampler, cfg_scale, steps, ldmc_threads_get(), reps,
               med);
    else
        printf("%s: %s at %dx%d, batch %d (the UNet sees %d), %d threads: %.1f ms a step "
               "(median of %d runs of %d steps)\n",
               config, sampler, W, H, batch, passes, ldmc_threads_get(), med, reps, steps);
    free(ms), free(labels), free(size), free(crop), free(aesthetic), free(context), free(pooled),
        free(noise);
    ldmc_ctx_free(&ctx);
    ldmc_unet_free(&u);
    return 0;
}

int ldmc_cmd_bench(int argc, char **argv) {
    if (argc >= 1 && strcmp(argv[0], "ops") == 0) return bench_ops(argc - 1, argv + 1);
    if (argc >= 1 && strcmp(argv[0], "step") == 0) return bench_step(argc - 1, argv + 1);
    if (argc >= 1 && strcmp(argv[0], "train") == 0) return bench_train(argc - 1, argv + 1);
    if (argc >= 1 && strcmp(argv[0], "text") == 0) return bench_text(argc - 1, argv + 1);
    if (argc >= 1 && strcmp(argv[0], "inception") == 0) return bench_inception(argc - 1, argv + 1);
    if (argc >= 1 && strcmp(argv[0], "sample") == 0) return bench_sample(argc - 1, argv + 1);
    fprintf(stderr, "usage: ldmc bench ops [--json] [--reps N] [--filter TEXT]\n%s%s%s%s%s",
            step_usage, train_usage, text_usage, inception_usage, sample_usage);
    return 2;
}
