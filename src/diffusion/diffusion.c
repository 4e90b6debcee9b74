// The host side of training draws and sampling timesteps (see diffusion.h).
// Tested by tests/test_diffusion.c.
#include "diffusion/diffusion.h"

#include <math.h>
#include <stdlib.h>

#include "core/error.h"
#include "core/rng.h"

void ldmc_draw_timesteps(const ldmc_schedule *s, const ldmc_noise_options *o, int B, uint64_t seed,
                         uint32_t step, uint32_t rank, uint32_t stream, float *t, float *weight,
                         double *sa, double *sb) {
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

int ldmc_ddim_timesteps(const ldmc_schedule *s, int n, int *out) {
    LDMC_CHECK(n >= 1 && n <= s->steps, "DDIM: %d steps of a %d-step schedule", n, s->steps);
    int c = s->steps / n;
    for (int i = 0; i < n; i++)
        out[i] = (n - 1 - i) * c + 1; // +1: LDM's "uniform" timesteps
    if (out[0] >= s->steps) out[0] = s->steps - 1;
    return n;
}
