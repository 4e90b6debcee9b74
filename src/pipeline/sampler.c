// The denoiser and the samplers (see sampler.h). Tested by tests/test_pipeline.c.
#include "pipeline/sampler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "ops/ops.h"

// ---- the denoiser -------------------------------------------------------------------------------

bool ldmc_denoiser_guided(const ldmc_denoiser *d) {
    return d->guidance_scale != 1.0 && ldmc_conditioner_can_drop(d->conditioner);
}

ldmc_tensor *ldmc_denoise(ldmc_ctx *ctx, const ldmc_denoiser *d, ldmc_tensor *x, double sigma,
                          double t) {
    bool guided = ldmc_denoiser_guided(d), was_recording = ctx->recording;
    ctx->recording = false;
    // c_in x in the activation dtype (ldmc_latent_unscale is that division)
    ldmc_tensor *in = ldmc_latent_unscale(ctx, x, sqrt(sigma * sigma + 1));
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

typedef enum { EULER, EULER_ANCESTRAL, DPMPP_2M } sampler_kind;

struct ldmc_sampler {
    const char *name;
    sampler_kind kind;
    ldmc_discretization sigmas; // its default σ list
};

static const ldmc_sampler samplers[] = {
    {"ddim", EULER, LDMC_SIGMAS_LDM},
    {"euler", EULER, LDMC_SIGMAS_SGM},
    {"euler_a", EULER_ANCESTRAL, LDMC_SIGMAS_SGM},
    {"dpmpp_2m", DPMPP_2M, LDMC_SIGMAS_KARRAS},
};
enum { N_SAMPLERS = sizeof samplers / sizeof samplers[0] };

const ldmc_sampler *ldmc_sampler_find(const char *name) {
    for (int i = 0; i < N_SAMPLERS; i++)
        if (!strcmp(samplers[i].name, name)) return &samplers[i];
    return NULL;
}

const char *ldmc_sampler_name(const ldmc_sampler *s) { return s->name; }

const char *ldmc_sampler_names(void) {
    static char names[128];
    if (!names[0])
        for (int i = 0; i < N_SAMPLERS; i++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "",
                     samplers[i].name);
    return names;
}

ldmc_discretization ldmc_sampler_discretization(const ldmc_sample_options *o) {
    return o->discretization != LDMC_SIGMAS_DEFAULT ? o->discretization : o->sampler->sigmas;
}

// The options' σ list (steps + 1) and timesteps (steps), malloc'd together; NULL when out of
// memory.
static double *sigma_list(const ldmc_sample_options *o, double **t) {
    double *s = malloc((size_t)(2 * o->steps + 1) * sizeof *s);
    if (!s) return NULL;
    *t = s + o->steps + 1;
    ldmc_discretize(o->schedule, ldmc_sampler_discretization(o), o->steps, s, *t);
    return s;
}

static double list_value(const ldmc_sample_options *o, int i, bool timestep) {
    LDMC_CHECK(i >= 0 && i <= o->steps - (timestep ? 1 : 0), "sampler: step %d of %d", i, o->steps);
    double *t, *s = sigma_list(o, &t);
    LDMC_CHECK(s, "out of memory");
    double v = timestep ? t[i] : s[i];
    free(s);
    return v;
}

double ldmc_sampler_sigma(const ldmc_sample_options *o, int i) { return list_value(o, i, false); }

double ldmc_sampler_timestep(const ldmc_sample_options *o, int i) { return list_value(o, i, true); }

int ldmc_sampler_switch(const ldmc_sample_options *o, double fraction) {
    double *t, *s = sigma_list(o, &t);
    LDMC_CHECK(s, "out of memory");
    int k = ldmc_switch_step(o->schedule, t, o->steps, fraction);
    free(s);
    return k;
}

// The coefficients of step i (σ_i -> σ_{i+1}) for the update op; *ancestral_sigma receives the
// noise's scale (0: none). `first`: the run's first step (a multistep sampler has no history).
static ldmc_sampler_coeffs step_coeffs(const ldmc_sample_options *o, const double *sig, int i,
                                       bool first, double *ancestral_sigma) {
    const double s = sig[i], sn = sig[i + 1];
    ldmc_sampler_coeffs k = {0};
    if (o->prediction == LDMC_PREDICT_V)
        k.p = 1 / (s * s + 1), k.q = -s / sqrt(s * s + 1);
    else
        k.p = 1, k.q = -s;
    *ancestral_sigma = 0;
    switch (o->sampler->kind) {
    case EULER: // x + (σn - σ) (x - D)/σ
        k.a = sn / s, k.b = 1 - sn / s;
        break;
    case EULER_ANCESTRAL: { // to σ_down, then σ_up of fresh noise (k-diffusion, η = 1)
        double up = sn > 0 ? fmin(sn, sqrt(sn * sn * (s * s - sn * sn) / (s * s))) : 0;
        double down = sqrt(sn * sn - up * up);
        k.a = down / s, k.b = 1 - down / s, k.s = up;
        *ancestral_sigma = up;
        break;
    }
    case DPMPP_2M: { // in t = -log σ: x = (σn/σ) x - expm1(-h) D'
        if (sn == 0) {
            k.a = 0, k.b = 1; // the last step lands on D
            break;
        }
        double h = log(s / sn), e = -expm1(-h);
        k.a = sn / s, k.b = e;
        double r = first ? 0 : log(sig[i - 1] / s) / h;
        if (r > 0 && isfinite(r)) { // D' = (1 + 1/2r) D - (1/2r) D_prev, r = h_prev / h
            k.b = e * (1 + 1 / (2 * r)), k.c = -e / (2 * r);
        } // (else first order: the first step, or a repeated σ)
        break;
    }
    }
    if (i + 1 == o->steps && sn > 0) { // the list ends above 0 (DDIM at ᾱ_0): the VP latents
        double f = 1 / sqrt(sn * sn + 1);
        k.a *= f, k.b *= f, k.c *= f, k.s *= f;
    }
    return k;
}

// Noise like x whose row r is values [offset, ...) of stream rows[r], as a tensor in ctx.
static ldmc_tensor *row_noise(ldmc_ctx *ctx, const ldmc_rng *rows, const ldmc_tensor *x,
                              uint64_t offset) {
    const int64_t n = x->shape[0], per_row = n ? ldmc_numel(x) / n : 0;
    const int64_t total = n * per_row;
    float *z = ldmc_host_scratch(ctx, (size_t)(total > 0 ? total : 1) * sizeof *z);
    if (!ctx->dry_run)
        for (int64_t r = 0; r < n; r++)
            ldmc_rng_normal(&rows[r], offset, (size_t)per_row, z + r * per_row);
    return ldmc_input(ctx, LDMC_F32, x->ndim, x->shape, z, LDMC_F32);
}

// Row r's ancestral noise of step i: values from i · (the row's size, rounded up to even).
static ldmc_tensor *ancestral_noise(ldmc_ctx *ctx, const ldmc_sample_options *o,
                                    const ldmc_tensor *x, int i) {
    const int64_t per_row = x->shape[0] ? ldmc_numel(x) / x->shape[0] : 0;
    return row_noise(ctx, o->noise, x, (uint64_t)i * (((uint64_t)per_row + 1) & ~(uint64_t)1));
}

void ldmc_sampler_add_noise(ldmc_ctx *ctx, ldmc_tensor *x, const ldmc_rng *rows, double scale) {
    ldmc_ctx_mark mark = ldmc_ctx_mark_here(ctx);
    ldmc_sampler_coeffs k = {.a = 1, .s = scale}; // x = x + scale ε (no model output: p = q = 0)
    ldmc_sampler_update(ctx, x, x, NULL, row_noise(ctx, rows, x, 0), &k);
    ldmc_ctx_rewind(ctx, mark);
}

void ldmc_sampler_start_noise(ldmc_ctx *ctx, const ldmc_sample_options *o, ldmc_tensor *x,
                              const ldmc_rng *rows) {
    double sigma = ldmc_sampler_sigma(o, o->first);
    ldmc_sampler_add_noise(ctx, x, rows, sqrt(sigma * sigma + 1));
}

int ldmc_run_sampler(ldmc_ctx *ctx, const ldmc_sample_options *o, const ldmc_denoiser *d,
                     ldmc_tensor *x, ldmc_err *err) {
    if (o->steps < 1 || o->steps > o->schedule->steps)
        return LDMC_ERR(err, "%s: %d steps of a %d-step schedule", o->sampler->name, o->steps,
                        o->schedule->steps);
    if (o->first < 0 || o->first > o->last || o->last > o->steps)
        return LDMC_ERR(err, "%s: steps [%d, %d) of %d", o->sampler->name, o->first, o->last,
                        o->steps);
    if (o->sampler->kind == EULER_ANCESTRAL && !o->noise)
        return LDMC_ERR(err, "%s: an ancestral sampler needs its noise streams", o->sampler->name);
    double *t, *sig = sigma_list(o, &t);
    if (!sig) return LDMC_ERR(err, "out of memory");
    ldmc_tensor *denoised =
        o->sampler->kind == DPMPP_2M ? ldmc_zeros(ctx, LDMC_F32, x->ndim, x->shape) : NULL;
    bool was_recording = ctx->recording;
    ctx->recording = false;
    for (int i = o->first; i < o->last; i++) {
        ldmc_ctx_mark mark = ldmc_ctx_mark_here(ctx);
        double up;
        ldmc_sampler_coeffs k = step_coeffs(o, sig, i, i == o->first, &up);
        ldmc_tensor *out = ldmc_denoise(ctx, d, x, sig[i], t[i]);
        ldmc_tensor *noise = up > 0 ? ancestral_noise(ctx, o, x, i) : NULL;
        ldmc_sampler_update(ctx, x, out, denoised, noise, &k);
        ldmc_ctx_rewind(ctx, mark);
        if (o->progress) o->progress(o->progress_arg, i);
    }
    ctx->recording = was_recording;
    free(sig);
    return 0;
}
