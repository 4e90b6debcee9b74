// The host side of training draws and sampling timesteps (see diffusion.h).
// Tested by tests/test_diffusion.c.
#include "diffusion/diffusion.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"

void ldmc_draw_timesteps(const ldmc_schedule *s, const ldmc_noise_options *o, int B,
                         const ldmc_step_key *key, float *t, float *weight, double *sa,
                         double *sb) {
    LDMC_CHECK(o->t_min >= 0 && o->t_max <= s->steps && o->t_min < o->t_max,
               "noise: timestep range [%d, %d) outside the schedule's %d steps", o->t_min, o->t_max,
               s->steps);
    ldmc_rng times = ldmc_step_rng(key, LDMC_RNG_TIMESTEP);
    float *u = malloc((size_t)(B ? B : 1) * sizeof *u);
    LDMC_CHECK(u, "out of memory");
    ldmc_rng_uniform(&times, ldmc_step_row_offset(key, 1), (size_t)B, u);
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

static int ldm_timestep(const ldmc_schedule *s, int steps, int k) {
    int t = (steps - 1 - k) * (s->steps / steps) + 1; // +1: LDM's "uniform" timesteps
    return t < s->steps ? t : s->steps - 1;
}

int ldmc_discretize(const ldmc_schedule *s, ldmc_discretization d, int steps, double *sigmas,
                    double *t) {
    LDMC_CHECK(steps >= 1 && steps <= s->steps, "sampling: %d steps of a %d-step schedule", steps,
               s->steps);
    const int last = s->steps - 1;
    switch (d) {
    case LDMC_SIGMAS_LDM:
        for (int k = 0; k < steps; k++)
            t[k] = ldm_timestep(s, steps, k), sigmas[k] = ldmc_schedule_sigma(s, (int)t[k]);
        sigmas[steps] = ldmc_schedule_sigma(s, 0);
        break;
    case LDMC_SIGMAS_SGM:
        for (int k = 0; k < steps; k++) {
            int tk = (int)(last + k * (-(double)last / steps)); // numpy's linspace, truncated
            t[k] = tk, sigmas[k] = ldmc_schedule_sigma(s, tk);
        }
        sigmas[steps] = 0;
        break;
    case LDMC_SIGMAS_KARRAS: {
        const double rho = 7, lo = pow(ldmc_schedule_sigma(s, 0), 1 / rho),
                     hi = pow(ldmc_schedule_sigma(s, last), 1 / rho);
        for (int k = 0; k < steps; k++) {
            double r = steps > 1 ? (double)k / (steps - 1) : 0;
            sigmas[k] = pow(hi + r * (lo - hi), rho);
            t[k] = ldmc_sigma_to_t(s, sigmas[k]);
        }
        sigmas[steps] = 0;
        break;
    }
    default: LDMC_FATAL("discretization %d", (int)d);
    }
    return steps;
}

static const char *const discretization_names[] = {"default", "ldm", "sgm", "karras"};

int ldmc_discretization_from_name(const char *name) {
    for (int i = LDMC_SIGMAS_LDM; i <= LDMC_SIGMAS_KARRAS; i++)
        if (!strcmp(name, discretization_names[i])) return i;
    return LDMC_SIGMAS_DEFAULT;
}

const char *ldmc_discretization_name(ldmc_discretization d) { return discretization_names[d]; }

double ldmc_sigma_to_t(const ldmc_schedule *s, double sigma) {
    const int n = s->steps;
    double ls = log(sigma);
    int low = 0; // the last entry with log σ_i <= log σ, at most n - 2
    for (int i = 0; i < n; i++)
        if (log(ldmc_schedule_sigma(s, i)) <= ls) low = i;
    if (low > n - 2) low = n - 2;
    double a = log(ldmc_schedule_sigma(s, low)), b = log(ldmc_schedule_sigma(s, low + 1));
    double w = (a - ls) / (a - b);
    w = w < 0 ? 0 : w > 1 ? 1 : w;
    return (1 - w) * low + w * (low + 1);
}

int ldmc_switch_step(const ldmc_schedule *s, const double *t, int steps, double fraction) {
    double cutoff = round(s->steps - fraction * s->steps);
    int k = 0;
    while (k < steps && t[k] >= cutoff)
        k++;
    return k;
}

int ldmc_strength_start(int steps, double strength) {
    int init = (int)(steps * strength);
    if (init > steps) init = steps;
    if (init < 0) init = 0;
    return steps - init;
}
