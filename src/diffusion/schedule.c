// The DDPM schedule (see schedule.h). Tested by tests/test_diffusion.c.
#include "diffusion/schedule.h"

#include <math.h>

#include "core/error.h"

void ldmc_schedule_scaled_linear(ldmc_schedule *s, double beta_start, double beta_end, int steps) {
    LDMC_CHECK(steps >= 2 && steps <= LDMC_DDPM_MAX_STEPS, "schedule: %d steps", steps);
    s->steps = steps;
    double a = sqrt(beta_start), b = sqrt(beta_end), prod = 1;
    for (int i = 0; i < steps; i++) {
        double r = a + (b - a) * i / (steps - 1);
        prod *= 1 - r * r;
        s->alphas_cumprod[i] = prod;
    }
}

void ldmc_schedule_sdxl(ldmc_schedule *s) { ldmc_schedule_scaled_linear(s, 0.00085, 0.012, 1000); }

double ldmc_schedule_sigma(const ldmc_schedule *s, int t) {
    return sqrt((1 - s->alphas_cumprod[t]) / s->alphas_cumprod[t]);
}

double ldmc_schedule_snr(const ldmc_schedule *s, int t) {
    return s->alphas_cumprod[t] / (1 - s->alphas_cumprod[t]);
}
