// The training benchmarks (see bench.h): `ldmc bench step` (a training config's step) and `ldmc
// bench train` (the SDXL UNet step), both through the pipeline's loss step, as training runs it.
// Tested by tests/test_cli.sh.
#include "train/bench.h"
#include "train/dist.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/rng.h"
#include "ops/ops.h"
#include "pipeline/loss.h"
#include "pipeline/plan.h"
#include "pipeline/sampler.h"
#include "train/optim.h"
#include "train/trainer.h"
#include "train/trainer_parts.h"

#define META_ARENA ((size_t)2 << 30)
#define CPU_ARENA ((size_t)1 << 40) // address space; pages commit on touch
#define TEXT_TOKENS 77

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double ldmc_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, by_value);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static float *draw(int64_t n, uint64_t seed, double scale, double shift) {
    float *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    LDMC_CHECK(v, "out of memory");
    ldmc_rng rng = ldmc_rng_make(seed, 0, 0, LDMC_RNG_TEST);
    ldmc_rng_signed_uniform(&rng, 0, (size_t)n, v);
    for (int64_t i = 0; i < n; i++)
        v[i] = (float)(v[i] * scale + shift);
    return v;
}

// ---- `ldmc bench step`: a training config's step
// -------------------------------------------------

int ldmc_train_bench(const ldmc_train_config *cfg, int height, int width, int reps, double *ms,
                     ldmc_err *err) {
    trainer T_, *T = &T_;
    trainer_begin(T, cfg, true);
    int B = cfg->batch_size, rc = trainer_setup_models(T, err);
    if (rc == 0) rc = trainer_setup_device(T, err);
    if (rc == 0 && (height % T->align || width % T->align))
        rc =
            LDMC_ERR(err, "bench: %dx%d: the models need multiples of %d", height, width, T->align);
    // A synthetic batch as the loader hands it out: random pixels, full-image crops.
    ldmc_batch b = {.n = B, .height = height, .width = width};
    b.pixels = draw((int64_t)B * height * width * 3, cfg->seed, 1, 0);
    b.c_size = malloc((size_t)B * 2 * sizeof(int32_t));
    b.c_crop = calloc((size_t)B * 2, sizeof(int32_t));
    b.class_ids = malloc((size_t)B * sizeof(int64_t));
    if (rc == 0 && (!b.c_size || !b.c_crop || !b.class_ids)) rc = LDMC_ERR(err, "out of memory");
    if (rc == 0) {
        int classes = cfg->model.unet.n_classes; // (the VAE task reads no labels)
        for (int i = 0; i < B; i++) {
            b.c_size[2 * i] = height, b.c_size[2 * i + 1] = width;
            b.class_ids[i] = classes ? i % classes : -1;
        }
        b.c_target = b.c_size;
        for (int r = -1; r < reps; r++) { // one warm-up
            double t0 = train_now();
            trainer_zero_grad(T);
            trainer_fused_begin(T, cfg->adamw.lr, T->st.step + 1);
            ldmc_step_key key = {cfg->seed, (uint32_t)T->st.step, 0, 0, 0, 0};
            double loss = trainer_micro_step(T, &b, &key, 1.0);
            double norm = trainer_grad_norm(T);
            if (isfinite(loss) && isfinite(norm))
                trainer_update(T, norm, cfg->adamw.lr, T->st.step + 1);
            ldmc_device_synchronize(cfg->device);
            T->st.step++;
            if (r >= 0) ms[r] = 1e3 * (train_now() - t0);
        }
    }
    free(b.pixels), free(b.c_size), free(b.c_crop), free(b.class_ids);
    trainer_free(T);
    return rc;
}

// ---- `ldmc bench train`: the SDXL UNet step
// ------------------------------------------------------

// Synthetic inputs of one batch, drawn once on the host: latents as cached posterior moments, a
// 77-token text context and pooled text, sizes of the full image.
typedef struct bench_inputs {
    float *mean, *std, *context, *pooled;
    int32_t *sizes, *crops;
    int64_t *labels;
    ldmc_step_batch batch;
} bench_inputs;

static void inputs_make(bench_inputs *in, const ldmc_unet_config *c, int B, int h, int w,
                        uint64_t seed) {
    *in = (bench_inputs){0};
    int64_t n = (int64_t)B * h * w * c->in_channels;
    in->mean = draw(n, seed, 1.7, 0);
    in->std = draw(n, seed + 1, 0.05, 0.1);
    if (c->context_dim)
        in->context = draw((int64_t)B * TEXT_TOKENS * c->context_dim, seed + 3, 1, 0);
    if (c->pooled_dim) in->pooled = draw((int64_t)B * c->pooled_dim, seed + 4, 1, 0);
    in->sizes = malloc((size_t)B * 2 * sizeof *in->sizes);
    in->crops = calloc((size_t)B * 2, sizeof *in->crops);
    in->labels = calloc((size_t)B, sizeof *in->labels);
    LDMC_CHECK(in->sizes && in->crops && in->labels, "out of memory");
    for (int b = 0; b < B; b++) {
        in->sizes[2 * b] = 8 * h, in->sizes[2 * b + 1] = 8 * w;
        in->labels[b] = c->n_classes ? b % c->n_classes : 0;
    }
    in->batch = (ldmc_step_batch){.n = B,
                                  .mean = in->mean,
                                  .std = in->std,
                                  .lh = h,
                                  .lw = w,
                                  .cond = {.n = B,
                                           .class_ids = in->labels,
                                           .c_size = in->sizes,
                                           .c_crop = in->crops,
                                           .c_target = in->sizes,
                                           .context = in->context,
                                           .context_tokens = TEXT_TOKENS,
                                           .pooled = in->pooled}};
}

static void inputs_free(bench_inputs *in) {
    free(in->mean), free(in->std), free(in->context), free(in->pooled);
    free(in->sizes), free(in->crops), free(in->labels);
}

typedef struct bench_step {
    ldmc_schedule schedule;
    ldmc_noise_options noise;
    ldmc_conditioner conditioner;
    ldmc_diffusion_step step;
} bench_step;

static void bench_step_init(bench_step *s, ldmc_unet *u) {
    ldmc_schedule_sdxl(&s->schedule);
    s->noise = (ldmc_noise_options){.prediction = LDMC_PREDICT_EPS, .t_max = 1000};
    s->conditioner = (ldmc_conditioner){.unet = &u->cfg};
    s->step = (ldmc_diffusion_step){.unet = u,
                                    .latent_scale = 0.13025,
                                    .schedule = &s->schedule,
                                    .noise = &s->noise,
                                    .conditioner = &s->conditioner};
}

static const ldmc_adamw bench_adamw = {
    .lr = 1e-5, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.01};

// --fused-backward: each parameter's AdamW update during backward (core/tape.h), at the step in
// `fused_step`, its Σ g² into `fused_sums` (where the table is).
static int64_t fused_step;
static double *fused_sums;

static void fused_update(void *user, ldmc_params *p, int index) {
    (void)user;
    ldmc_adamw_coeffs c =
        ldmc_adamw_coeffs_at(&bench_adamw, bench_adamw.lr, fused_step, p->items[index].flags);
    ldmc_params_adamw(p, index, &c, fused_sums + index);
}

static void fused_sums_free(ldmc_device device) {
    if (device == LDMC_CUDA)
        ldmc_gpu_free(fused_sums);
    else
        free(fused_sums);
    fused_sums = NULL;
}

// One training step (the loss step, clipping at 1, AdamW; with --fused-backward, AdamW during
// backward and no clipping); returns its milliseconds.
static double train_step(ldmc_ctx *ctx, ldmc_unet *u, const bench_step *s, const bench_inputs *in,
                         int64_t step) {
    double t0 = train_now();
    ldmc_params_zero_grad(&u->params);
    fused_step = step;
    ldmc_diffusion_loss(ctx, &s->step, &in->batch, &(ldmc_step_key){1, (uint32_t)step, 0, 0, 0, 0},
                        1);
    if (!u->params.update_in_backward)
        ldmc_optim_update(&u->params, &bench_adamw, 1.0, 0, ldmc_grad_norm(&u->params),
                          bench_adamw.lr, step);
    ldmc_device_synchronize(ctx->device);
    return 1e3 * (train_now() - t0);
}

// Gradients, Adam m and v where the weights are: the GPU's bf16 and master copies, or the host.
// One rank's bytes of the parameter roles: the working weights (bf16 on the GPU) and f32 gradients
// whole; the fp32 master (GPU: its low halves, 2 bytes), Adam m and v and the EMA (o->ema) whole,
// or under ZeRO-1 the largest of the ranks' parameter-aligned ranges (dist.h).
static size_t plan_role_bytes(const ldmc_params *p, const ldmc_bench_options *o) {
    const bool gpu = o->device == LDMC_CUDA;
    const int ranks = o->ranks > 1 ? o->ranks : 1;
    size_t state = p->total;
    if (o->zero && ranks > 1) {
        size_t *begin = malloc(((size_t)ranks + 1) * sizeof *begin);
        LDMC_CHECK(begin, "out of memory");
        ldmc_zero_ranges(p, ranks, begin);
        state = 0;
        for (int r = 0; r < ranks; r++)
            if (begin[r + 1] - begin[r] > state) state = begin[r + 1] - begin[r];
        free(begin);
    }
    int state_roles = 2 + o->ema; // m, v, the EMA; on the GPU the master's low halves (2 bytes)
    size_t whole = (gpu ? 2 : 4) + (o->fused_backward ? 0 : 4); // weights; gradients unless fused
    return p->total * whole + state * (4 * (size_t)state_roles + (gpu ? 2 : 0));
}

// The table's roles for training where the step runs (no gradient buffer with --fused-backward:
// the table is updated in backward) and the step's context.
static int alloc_training(ldmc_unet *u, ldmc_device device, bool fused, ldmc_ctx *ctx,
                          size_t *weight_bytes, ldmc_err *err) {
    ldmc_params *p = &u->params;
    const size_t sums = (size_t)(p->count ? p->count : 1) * sizeof(double);
    if (fused) ldmc_params_update_in_backward(p, fused_update, NULL);
    const int first = fused ? LDMC_ROLE_ADAM_M : LDMC_ROLE_GRAD;
    if (device == LDMC_CPU) {
        for (int role = first; role <= LDMC_ROLE_ADAM_V; role++)
            ldmc_params_alloc(p, (ldmc_param_role)role);
        ldmc_ctx_init(ctx, CPU_ARENA, META_ARENA);
        *weight_bytes = p->total * 4 * (fused ? 3 : 4);
        if (fused) fused_sums = calloc(1, sums);
        LDMC_CHECK(!fused || fused_sums, "out of memory");
        return 0;
    }
    ldmc_params_to_device(p); // bf16 weights and the f32 master (their low halves)
    for (int role = first; role <= LDMC_ROLE_ADAM_V; role++)
        ldmc_params_device_alloc(p, (ldmc_param_role)role);
    if (fused) fused_sums = ldmc_gpu_malloc(sums);
    size_t free_b;
    if (ldmc_ctx_init_gpu_free(ctx, META_ARENA, &free_b) != 0)
        return LDMC_ERR(err, "%.1f GiB of GPU memory left after the weights",
                        (double)free_b / (1 << 30));
    // bf16 weights, the master's low halves, (g,) m, v
    *weight_bytes = p->total * (2 + 2 + 4 * (fused ? 2 : 3));
    return 0;
}

// The guided forward of a sampling step of one image (the UNet sees 2; 1 for a model without
// conditioning to guide), median of reps.
static double guided_forward_ms(ldmc_ctx *ctx, ldmc_unet *u, const bench_step *s,
                                const bench_inputs *one, int reps, double *ms, int *batch) {
    ldmc_denoiser d = {
        .unet = u, .conditioner = &s->conditioner, .cond = &one->batch.cond, .guidance_scale = 5.0};
    const ldmc_step_batch *b = &one->batch;
    *batch = ldmc_denoiser_guided(&d) ? 2 : 1;
    ctx->recording = false;
    for (int i = -1; i < reps; i++) {
        double t0 = train_now();
        ldmc_ctx_reset(ctx);
        ldmc_tensor *x = ldmc_input(
            ctx, LDMC_F32, 4, (int64_t[]){1, b->lh, b->lw, u->cfg.in_channels}, b->mean, LDMC_F32);
        ldmc_denoise(ctx, &d, x, 1.618, 500); // (σ_500)
        ldmc_device_synchronize(ctx->device);
        if (i >= 0) ms[i] = 1e3 * (train_now() - t0);
    }
    return ldmc_median(ms, reps);
}

int ldmc_unet_train_bench(const ldmc_unet_config *cfg, const ldmc_bench_options *o,
                          ldmc_bench_result *r, ldmc_err *err) {
    *r = (ldmc_bench_result){0};
    int align = 8 << (cfg->levels - 1);
    if (o->batch < 1 || o->height % align || o->width % align || o->height <= 0 || o->width <= 0)
        return LDMC_ERR(err,
                        "batch %d at %dx%d: the UNet needs images whose sides "
                        "are multiples of %d (8 pixels a latent, %d levels)",
                        o->batch, o->height, o->width, align, cfg->levels);
    if (o->device == LDMC_CUDA && !o->dry_run && !ldmc_gpu_available())
        return LDMC_ERR(err, "--device cuda, but no GPU: %s", ldmc_gpu_unavailable_reason());
    ldmc_unet u;
    ldmc_unet_init(&u, cfg);
    u.recompute = o->recompute;
    u.recompute_projections = o->recompute_projections;
    r->parameters = ldmc_params_count(&u.params, false);
    int h = o->height / 8, w = o->width / 8;
    r->plan = (ldmc_step_plan){0};
    if (o->dry_run) {
        if (o->fused_backward) ldmc_params_update_in_backward(&u.params, fused_update, NULL);
        ldmc_dry_run plan = ldmc_dry_run_unet_step(&u, o->device, o->batch, h, w, &r->plan);
        r->weight_bytes = plan_role_bytes(&u.params, o);
        r->flops = plan.flops, r->activation_bytes = plan.activations;
        // the shared workspace a GPU run reserves up front (ldmc_ctx_init_gpu)
        if (o->device == LDMC_CUDA) r->workspace_bytes = ldmc_gpu_workspace_max(0);
        ldmc_unet_free(&u);
        return 0;
    }
    ldmc_params_alloc(&u.params, LDMC_ROLE_WEIGHTS);
    ldmc_params_init(&u.params, o->seed);
    ldmc_ctx ctx;
    if (alloc_training(&u, o->device, o->fused_backward, &ctx, &r->weight_bytes, err) != 0) {
        fused_sums_free(o->device);
        ldmc_unet_free(&u);
        return -1;
    }
    static bench_step s;
    bench_step_init(&s, &u);
    bench_inputs in, one;
    inputs_make(&in, cfg, o->batch, h, w, o->seed);
    inputs_make(&one, cfg, 1, h, w, o->seed + 100);
    int reps = o->reps > 0 ? o->reps : 1;
    double *ms = calloc((size_t)reps, sizeof *ms);
    LDMC_CHECK(ms, "out of memory");
    ldmc_plan_diffusion_step(o->device, &s.step, &in.batch, &r->plan);
    ldmc_ctx_use_plan(&ctx, &r->plan);
    int64_t step = 1;
    for (int i = 0; i < o->warmup; i++)
        train_step(&ctx, &u, &s, &in, step++);
    for (int i = 0; i < reps; i++) {
        ctx.flops = 0;
        ms[i] = train_step(&ctx, &u, &s, &in, step++);
    }
    r->flops = ctx.flops;
    r->step_ms = ldmc_median(ms, reps);
    r->img_per_s = 1e3 * o->batch / r->step_ms;
    r->tflops = r->flops / (r->step_ms * 1e-3) / 1e12;
    r->activation_bytes = ctx.data.high_water;
    if (o->profile) {
        ldmc_profile_start(&ctx, &r->profile);
        train_step(&ctx, &u, &s, &in, step++);
        ldmc_profile_start(&ctx, NULL);
        ldmc_profile_sort(&r->profile);
    }
    ldmc_ctx_use_plan(&ctx, NULL);
    r->guided_forward_ms = guided_forward_ms(&ctx, &u, &s, &one, reps, ms, &r->guided_batch);
    if (o->device == LDMC_CUDA) r->workspace_bytes = ldmc_gpu_workspace_bytes();
    free(ms);
    inputs_free(&one);
    inputs_free(&in);
    ldmc_ctx_free(&ctx);
    fused_sums_free(o->device);
    ldmc_unet_free(&u);
    return 0;
}
