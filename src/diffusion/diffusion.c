// Noising for training, DDIM for sampling (see diffusion.h). Tested by tests/test_diffusion.c.
#include "diffusion/diffusion.h"

#include <math.h>
#include <stdlib.h>

#include "core/error.h"
#include "core/rng.h"

void ldmc_noise_timesteps(const ldmc_schedule *s, const ldmc_noise_options *o, int B,
                          uint64_t seed, uint32_t step, uint32_t rank, uint32_t stream, float *t,
                          float *weight, double *sa, double *sb) {
    LDMC_CHECK(o->t_min >= 0 && o->t_max <= s->steps && o->t_min < o->t_max,
               "noise: timestep range [%d, %d) outside the schedule's %d steps", o->t_min, o->t_max,
               s->steps);
    ldmc_rng times = ldmc_rng_make(seed, step, rank, LDMC_RNG_TIMESTEP);
    float *u = malloc((size_t)(B ? B : 1) * sizeof *u);
    LDMC_CHECK(u, "out of memory");
    // Each micro-batch (stream) owns 2^40 values of the step's streams, whatever the batch sizes.
    ldmc_rng_uniform(&times, (uint64_t)stream << 40, (size_t)B, u);
    for (int b = 0; b < B; b++) {
        int tb = o->t_min + (int)floor(u[b] * (o->t_max - o->t_min));
        if (tb >= o->t_max) tb = o->t_max - 1;
        t[b] = (float)tb;
        double a = s->alphas_cumprod[tb], snr = a / (1 - a);
        sa[b] = sqrt(a), sb[b] = sqrt(1 - a);
        double gamma = o->min_snr_gamma;
        weight[b] =
            (float)(gamma > 0 ? fmin(snr, gamma) / (o->prediction == LDMC_PREDICT_V ? snr + 1 : snr)
                              : 1.0);
    }
    free(u);
}

void ldmc_noise_batch(const ldmc_schedule *s, const ldmc_noise_options *o, const float *z, int B,
                      int h, int w, int C, uint64_t seed, uint32_t step, uint32_t rank,
                      uint32_t stream, float *x_t, float *target, float *t, float *weight) {
    const int64_t per_sample = (int64_t)h * w * C, n = (int64_t)B * per_sample;
    ldmc_rng noise = ldmc_rng_make(seed, step, rank, LDMC_RNG_NOISE);
    size_t nb = (size_t)(B > 0 ? B : 1);
    float *offset = malloc(nb * (size_t)(C > 0 ? C : 1) * sizeof *offset);
    double *sa = malloc(nb * sizeof *sa), *sb = malloc(nb * sizeof *sb);
    LDMC_CHECK(offset && sa && sb, "out of memory");
    ldmc_noise_timesteps(s, o, B, seed, step, rank, stream, t, weight, sa, sb);
    // The micro-batch's noise: n values of ε, then B*C offsets from the next even index.
    uint64_t base = (uint64_t)stream << 40;
    ldmc_rng_normal(&noise, base, (size_t)n, target); // ε, in place in the target for now
    ldmc_rng_normal(&noise, base + (((uint64_t)n + 1) & ~(uint64_t)1), (size_t)B * C, offset);
    for (int b = 0; b < B; b++)
        for (int64_t i = 0; i < per_sample; i++) {
            int64_t k = b * per_sample + i;
            float eps = target[k] + (float)o->offset_noise * offset[b * C + i % C];
            x_t[k] = (float)(sa[b] * z[k] + sb[b] * eps);
            target[k] = o->prediction == LDMC_PREDICT_V ? (float)(sa[b] * eps - sb[b] * z[k]) : eps;
        }
    free(offset);
    free(sa);
    free(sb);
}

int ldmc_ddim_timesteps(const ldmc_schedule *s, int n, int *out) {
    LDMC_CHECK(n >= 1 && n <= s->steps, "DDIM: %d steps of a %d-step schedule", n, s->steps);
    int c = s->steps / n;
    for (int i = 0; i < n; i++)
        out[i] = (n - 1 - i) * c + 1; // +1: LDM's "uniform" timesteps
    if (out[0] >= s->steps) out[0] = s->steps - 1;
    return n;
}

void ldmc_ddim_step(const ldmc_schedule *s, ldmc_prediction prediction, int t, int t_prev,
                    const float *model_out, float *x, int64_t n) {
    double a = s->alphas_cumprod[t], ap = s->alphas_cumprod[t_prev < 0 ? 0 : t_prev];
    double sa = sqrt(a), sb = sqrt(1 - a), spa = sqrt(ap), spb = sqrt(1 - ap);
    for (int64_t i = 0; i < n; i++) {
        double eps, x0;
        if (prediction == LDMC_PREDICT_V) {
            eps = sa * model_out[i] + sb * x[i];
            x0 = sa * x[i] - sb * model_out[i];
        } else {
            eps = model_out[i];
            x0 = (x[i] - sb * eps) / sa;
        }
        x[i] = (float)(spa * x0 + spb * eps);
    }
}

void ldmc_cfg_combine(const float *uncond, const float *cond, double scale, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        out[i] = (float)(uncond[i] + scale * (cond[i] - uncond[i]));
}
