// The UNet training-step benchmark (see bench.h).
#include "train/bench.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/device.h"
#include "core/rng.h"
#include "nn/unet.h"
#include "ops/ops.h"
#include "train/optim.h"
#ifdef LDMC_HAVE_CUDA
#include "kernels/ldmc_cuda.h"
#endif

#define META_ARENA ((size_t)2 << 30)
#define CPU_ARENA ((size_t)1 << 40)        // address space; pages commit on touch
#define DRY_RUN_ARENA ((size_t)1 << 42)    // never touched

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double ldmc_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, by_value);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Synthetic inputs of one batch, drawn once on the host: the step uploads them as a loader's
// batch would arrive.
typedef struct bench_inputs {
    int B, h, w;
    float *x, *target, *t, *context, *pooled, *sizes, *crops;
    int64_t *labels;
} bench_inputs;

static float *draw(int64_t n, uint64_t seed, double scale, double shift) {
    float *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    LDMC_CHECK(v, "out of memory");
    ldmc_rng rng = ldmc_rng_make(seed, 0, 0, LDMC_RNG_TEST);
    ldmc_rng_signed_uniform(&rng, 0, (size_t)n, v);
    for (int64_t i = 0; i < n; i++)
        v[i] = (float)(v[i] * scale + shift);
    return v;
}

static void inputs_make(bench_inputs *in, const ldmc_unet_config *c, int B, int h, int w,
                        uint64_t seed) {
    *in = (bench_inputs){.B = B, .h = h, .w = w};
    int64_t n = (int64_t)B * h * w * c->in_channels;
    in->x = draw(n, seed, 1.7, 0);
    in->target = draw(n, seed + 1, 1.7, 0);
    in->t = draw(B, seed + 2, 499, 500);
    if (c->context_dim) in->context = draw((int64_t)B * 77 * c->context_dim, seed + 3, 1, 0);
    if (c->pooled_dim) in->pooled = draw((int64_t)B * c->pooled_dim, seed + 4, 1, 0);
    in->sizes = draw((int64_t)B * 2, seed + 5, 0, 8.0 * h); // original and target size
    in->crops = draw((int64_t)B * 2, seed + 6, 0, 0);
    in->labels = calloc((size_t)B, sizeof *in->labels);
    LDMC_CHECK(in->labels, "out of memory");
    for (int b = 0; b < B && c->n_classes; b++)
        in->labels[b] = b % c->n_classes;
}

static void inputs_free(bench_inputs *in) {
    free(in->x), free(in->target), free(in->t), free(in->context), free(in->pooled);
    free(in->sizes), free(in->crops), free(in->labels);
}

// The UNet's output for the inputs (put where ctx computes).
static ldmc_tensor *forward(ldmc_ctx *ctx, const ldmc_unet *u, const bench_inputs *in) {
    const ldmc_unet_config *c = &u->cfg;
    int B = in->B;
    ldmc_unet_cond cond = {0};
    ldmc_tensor *parts[LDMC_VECTOR_PART_COUNT] = {0};
    for (int i = 0; i < c->n_vector; i++) {
        ldmc_vector_part part = c->vector[i];
        int k = ldmc_vector_part_scalars(part);
        if (!k)
            parts[part] = ldmc_input(ctx, ctx->act_dtype, 2, (int64_t[]){B, c->pooled_dim},
                                     in->pooled, LDMC_F32);
        else
            parts[part] = ldmc_input(ctx, LDMC_F32, 2, (int64_t[]){B, k},
                                     part == LDMC_VECTOR_CROP_COORDS ? in->crops : in->sizes,
                                     LDMC_F32);
    }
    if (c->n_vector) cond.vector = ldmc_unet_vector(ctx, c, parts);
    if (c->n_classes)
        cond.class_labels = ldmc_input(ctx, LDMC_I64, 1, (int64_t[]){B}, in->labels, LDMC_I64);
    else if (c->context_dim)
        cond.context = ldmc_input(ctx, ctx->act_dtype, 3, (int64_t[]){B, 77, c->context_dim},
                                  in->context, LDMC_F32);
    ldmc_tensor *x = ldmc_input(ctx, ctx->act_dtype, 4, (int64_t[]){B, in->h, in->w, c->in_channels},
                                in->x, LDMC_F32);
    ldmc_tensor *t = ldmc_input(ctx, LDMC_F32, 1, (int64_t[]){B}, in->t, LDMC_F32);
    return ldmc_unet_forward(ctx, u, x, t, &cond);
}

// One training step; returns its milliseconds (device synchronized).
static double train_step(ldmc_ctx *ctx, ldmc_unet *u, const bench_inputs *in, int64_t step) {
    static const ldmc_adamw opt = {
        .lr = 1e-5, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.01};
    double t0 = now_ms();
    ldmc_params_zero_grad(&u->params);
    ldmc_ctx_reset(ctx);
    ldmc_tensor *out = forward(ctx, u, in);
    ldmc_tensor *target = ldmc_input(ctx, LDMC_F32, out->ndim, out->shape, in->target, LDMC_F32);
    ldmc_tensor *loss = ldmc_mse_loss(ctx, out, target);
    ldmc_backward(ctx, loss, NULL);
    if (!ctx->dry_run) {
        double norm = ldmc_grad_norm(&u->params);
        if (norm > 1.0) ldmc_grad_scale(&u->params, 1.0 / norm);
        ldmc_adamw_step(&u->params, &opt, opt.lr, step);
    }
    if (!ctx->dry_run) ldmc_device_synchronize(ctx->device);
    return now_ms() - t0;
}

int ldmc_unet_train_bench(const ldmc_unet_config *cfg, const ldmc_bench_options *o,
                          ldmc_bench_result *r, ldmc_err *err) {
    *r = (ldmc_bench_result){0};
    int align = 8 << (cfg->levels - 1);
    if (o->batch < 1 || o->height % align || o->width % align || o->height <= 0 || o->width <= 0)
        return LDMC_ERR(err, "batch %d at %dx%d: the UNet needs images whose sides "
                             "are multiples of %d (8 pixels a latent, %d levels)",
                        o->batch, o->height, o->width, align, cfg->levels);
    if (o->device == LDMC_CUDA && !o->dry_run && !ldmc_cuda_usable())
        return LDMC_ERR(err, "--device cuda, but %s",
#ifdef LDMC_HAVE_CUDA
                        "no CUDA device is visible"
#else
                        "this build of ldmc has no CUDA"
#endif
        );
    ldmc_unet u;
    ldmc_unet_init(&u, cfg);
    u.checkpointing = o->checkpointing;
    ldmc_params *p = &u.params;
    r->parameters = ldmc_params_count(p, false);
    size_t n = p->total;
    bench_inputs in;
    inputs_make(&in, cfg, o->batch, o->height / 8, o->width / 8, o->seed);
    ldmc_ctx ctx;
    if (o->dry_run) {
        ldmc_params_reserve(p, LDMC_ROLE_WEIGHTS);
        ldmc_params_reserve(p, LDMC_ROLE_GRAD);
        ldmc_ctx_init_dry_run_device(&ctx, o->device, DRY_RUN_ARENA);
        r->weight_bytes = n * (o->device == LDMC_CUDA ? 2 + 4 * 4 : 4 * 4);
        ctx.flops = 0;
        train_step(&ctx, &u, &in, 1);
        r->flops = ctx.flops;
        r->activation_bytes = ctx.data.high_water;
        ldmc_ctx_free(&ctx);
        inputs_free(&in);
        ldmc_unet_free(&u);
        return 0;
    }
    ldmc_params_alloc(p, LDMC_ROLE_WEIGHTS);
    ldmc_params_init(p, o->seed);
    if (o->device == LDMC_CUDA) {
#ifdef LDMC_HAVE_CUDA
        ldmc_params_to_device(p); // bf16 weights and the f32 master
        for (int role = LDMC_ROLE_GRAD; role <= LDMC_ROLE_ADAM_V; role++)
            ldmc_params_device_alloc(p, (ldmc_param_role)role);
        size_t free_b;
        if (ldmc_ctx_init_gpu_free(&ctx, META_ARENA, &free_b) != 0) {
            inputs_free(&in);
            ldmc_unet_free(&u);
            return LDMC_ERR(err, "%.1f GiB of GPU memory left after the weights",
                            (double)free_b / (1 << 30));
        }
        r->weight_bytes = n * (2 + 4 * 4);
#endif
    } else {
        for (int role = LDMC_ROLE_GRAD; role <= LDMC_ROLE_ADAM_V; role++)
            if (role != LDMC_ROLE_MASTER) ldmc_params_alloc(p, (ldmc_param_role)role);
        ldmc_ctx_init(&ctx, CPU_ARENA, META_ARENA);
        r->weight_bytes = n * 4 * 4;
    }
    int reps = o->reps > 0 ? o->reps : 1;
    double *ms = calloc((size_t)reps, sizeof *ms);
    LDMC_CHECK(ms, "out of memory");
    int64_t step = 1;
    for (int i = 0; i < o->warmup; i++)
        train_step(&ctx, &u, &in, step++);
    for (int i = 0; i < reps; i++) {
        ctx.flops = 0;
        ms[i] = train_step(&ctx, &u, &in, step++);
    }
    r->flops = ctx.flops;
    r->step_ms = ldmc_median(ms, reps);
    r->img_per_s = 1e3 * o->batch / r->step_ms;
    r->tflops = r->flops / (r->step_ms * 1e-3) / 1e12;
    r->activation_bytes = ctx.data.high_water;
    if (o->profile) {
        ldmc_profile_start(&ctx, &r->profile);
        train_step(&ctx, &u, &in, step++);
        ldmc_profile_start(&ctx, NULL);
        ldmc_profile_sort(&r->profile);
    }
    // one classifier-free-guidance sampling step: the batch of 2 (conditional, unconditional)
    bench_inputs two;
    inputs_make(&two, cfg, 2, o->height / 8, o->width / 8, o->seed + 100);
    ctx.recording = false;
    for (int i = -1; i < reps; i++) {
        double t0 = now_ms();
        ldmc_ctx_reset(&ctx);
        forward(&ctx, &u, &two);
        ldmc_device_synchronize(ctx.device);
        if (i >= 0) ms[i] = now_ms() - t0;
    }
    r->cfg_forward_ms = ldmc_median(ms, reps);
#ifdef LDMC_HAVE_CUDA
    if (o->device == LDMC_CUDA) r->workspace_bytes = ldmc_cuda_workspace_bytes();
#endif
    free(ms);
    inputs_free(&two);
    inputs_free(&in);
    ldmc_ctx_free(&ctx);
    ldmc_unet_free(&u);
    return 0;
}
