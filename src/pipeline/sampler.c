// The denoiser and the samplers (see sampler.h). Tested by tests/test_pipeline.c.
#include "pipeline/sampler.h"

#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "ops/ops.h"

// ---- the denoiser -------------------------------------------------------------------------------

bool ldmc_denoiser_guided(const ldmc_denoiser *d) {
    return d->guidance_scale != 1.0 && ldmc_conditioner_can_drop(d->conditioner);
}

ldmc_tensor *ldmc_denoise(ldmc_ctx *ctx, const ldmc_denoiser *d, ldmc_tensor *x, double t) {
    bool guided = ldmc_denoiser_guided(d), was_recording = ctx->recording;
    ctx->recording = false;
    ldmc_tensor *in = ldmc_cast(ctx, x, ctx->act_dtype);
    ldmc_cond_batch cond = guided ? ldmc_cond_batch_guided(ctx, d->conditioner, d->cond) : *d->cond;
    if (guided) in = ldmc_concat_rows(ctx, (ldmc_tensor *[]){in, in}, 2);
    int B = cond.n;
    float *tv = ldmc_host_scratch(ctx, (size_t)B * sizeof *tv);
    for (int i = 0; i < B; i++)
        tv[i] = (float)t;
    ldmc_unet_cond c = ldmc_condition(ctx, d->conditioner, &cond);
    ldmc_tensor *out = ldmc_unet_forward(
        ctx, d->unet, in, ldmc_input(ctx, LDMC_F32, 1, (int64_t[]){B}, tv, LDMC_F32), &c);
    out = guided ? ldmc_guidance(ctx, out, d->guidance_scale) : ldmc_cast(ctx, out, LDMC_F32);
    ctx->recording = was_recording;
    return out;
}

// ---- samplers -----------------------------------------------------------------------------------

enum { MAX_SAMPLER_STATE = 2 };

// A sampler's run: its options, the timesteps it visits and the state it keeps across steps
// (tensors like x, zeroed at the start).
typedef struct sampler_run {
    const ldmc_sample_options *o;
    const int *timesteps;
    int n;
    ldmc_tensor *state[MAX_SAMPLER_STATE];
} sampler_run;

struct ldmc_sampler {
    const char *name;
    int state_tensors; // how many tensors of state the sampler keeps (<= MAX_SAMPLER_STATE)
    // The timesteps visited, descending; returns how many (at most `steps`).
    int (*timesteps)(const ldmc_schedule *s, int steps, int *out);
    // x (f32, in place) from timesteps[i] to the next (the last step lands on ᾱ_0), given the
    // guided model output at timesteps[i].
    void (*step)(ldmc_ctx *ctx, const sampler_run *run, int i, ldmc_tensor *x,
                 ldmc_tensor *model_out);
};

static void ddim_step(ldmc_ctx *ctx, const sampler_run *run, int i, ldmc_tensor *x,
                      ldmc_tensor *model_out) {
    const double *a = run->o->schedule->alphas_cumprod;
    int t = run->timesteps[i], t_prev = i + 1 < run->n ? run->timesteps[i + 1] : 0;
    ldmc_ddim_update(ctx, x, model_out, a[t], a[t_prev], run->o->prediction == LDMC_PREDICT_V);
}

static const ldmc_sampler samplers[] = {
    {"ddim", 0, ldmc_ddim_timesteps, ddim_step},
};

const ldmc_sampler *ldmc_sampler_find(const char *name) {
    for (size_t i = 0; i < sizeof samplers / sizeof samplers[0]; i++)
        if (!strcmp(samplers[i].name, name)) return &samplers[i];
    return NULL;
}

const char *ldmc_sampler_name(const ldmc_sampler *s) { return s->name; }

int ldmc_run_sampler(ldmc_ctx *ctx, const ldmc_sample_options *o, const ldmc_denoiser *d,
                     ldmc_tensor *x, ldmc_err *err) {
    if (o->steps < 1 || o->steps > o->schedule->steps)
        return LDMC_ERR(err, "%s: %d steps of a %d-step schedule", o->sampler->name, o->steps,
                        o->schedule->steps);
    int *timesteps = malloc((size_t)o->steps * sizeof *timesteps);
    if (!timesteps) return LDMC_ERR(err, "out of memory");
    sampler_run run = {.o = o, .timesteps = timesteps};
    run.n = o->sampler->timesteps(o->schedule, o->steps, timesteps);
    int last = o->last < run.n ? o->last : run.n;
    if (o->first < 0 || o->first > last) {
        free(timesteps);
        return LDMC_ERR(err, "%s: steps [%d, %d) of %d", o->sampler->name, o->first, o->last,
                        run.n);
    }
    for (int k = 0; k < o->sampler->state_tensors; k++)
        run.state[k] = ldmc_zeros(ctx, LDMC_F32, x->ndim, x->shape);
    bool was_recording = ctx->recording;
    ctx->recording = false;
    for (int i = o->first; i < last; i++) {
        ldmc_ctx_mark mark = ldmc_ctx_mark_here(ctx);
        o->sampler->step(ctx, &run, i, x, ldmc_denoise(ctx, d, x, timesteps[i]));
        ldmc_ctx_rewind(ctx, mark);
    }
    ctx->recording = was_recording;
    free(timesteps);
    return 0;
}
