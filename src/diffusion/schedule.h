// The discrete DDPM noise schedule SDXL trains with (generative-models LegacyDDPMDiscretization,
// diffusers "scaled_linear"): β_i = (√0.00085 + i (√0.012 − √0.00085)/999)², ᾱ_t = Π_{i≤t} (1 −
// β_i), σ_t = √((1 − ᾱ_t)/ᾱ_t), all in double. The UNet takes the integer index t. Tested by
// tests/test_diffusion.c against the values in ../shared/reference/samplers.md §1.
#pragma once

#define LDMC_DDPM_MAX_STEPS 4096

typedef struct ldmc_schedule {
    int steps;                                  // 1000
    double alphas_cumprod[LDMC_DDPM_MAX_STEPS]; // ᾱ_t
} ldmc_schedule;

void ldmc_schedule_scaled_linear(ldmc_schedule *s, double beta_start, double beta_end, int steps);
// The SDXL schedule: 0.00085 .. 0.012 over 1000 steps.
void ldmc_schedule_sdxl(ldmc_schedule *s);
double ldmc_schedule_sigma(const ldmc_schedule *s, int t);
// Signal-to-noise ratio ᾱ / (1 − ᾱ) = 1/σ².
double ldmc_schedule_snr(const ldmc_schedule *s, int t);
