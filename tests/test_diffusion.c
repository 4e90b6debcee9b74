// The diffusion side: the DDPM schedule against the test vectors of
// ../shared/reference/samplers.md §1, noising as the loss step does it (the timestep draws of
// diffusion.h, then the noising op: timestep range, offset noise statistics, ε and v targets,
// min-SNR weights), and the sampling ops (the DDIM update, classifier-free guidance).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/diffusion.h"
#include "harness.h"
#include "ops/ops.h"

// The noising of micro-batch `micro` of step `step` (rank 0), as ldmc_diffusion_loss does it:
// the per-sample draws, then ldmc_diffusion_noise on a CPU context.
static void noise_batch(const ldmc_schedule *s, const ldmc_noise_options *o, const float *z, int B,
                        int H, int W, int C, uint64_t seed, uint32_t step, uint32_t micro,
                        float *xt, float *target, float *t, float *w) {
    double *sa = malloc((size_t)B * sizeof *sa), *sb = malloc((size_t)B * sizeof *sb);
    ldmc_draw_timesteps(s, o, B, seed, step, 0, micro, t, w, sa, sb);
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ldmc_tensor *zt = ldmc_wrap(&ctx, LDMC_F32, (void *)z, 4, (int64_t[]){B, H, W, C}), *x, *tg;
    ldmc_rng noise = ldmc_rng_make(seed, step, 0, LDMC_RNG_NOISE);
    ldmc_diffusion_noise(&ctx, zt, sa, sb, o->offset_noise, o->prediction == LDMC_PREDICT_V, &noise,
                         (uint64_t)micro << 40, &x, &tg);
    memcpy(xt, x->data, ldmc_nbytes(x));
    memcpy(target, tg->data, ldmc_nbytes(tg));
    ldmc_ctx_free(&ctx);
    free(sa);
    free(sb);
}

static void test_schedule_matches_the_reference_vectors(void) {
    static ldmc_schedule s;
    ldmc_schedule_sdxl(&s);
    static const struct {
        int t;
        double alpha_bar, sigma;
    } v[] = {{0, 0.99915000, 0.029167},  {1, 0.99829603, 0.041314},   {19, 0.98224399, 0.134451},
             {21, 0.98038075, 0.141463}, {119, 0.86999443, 0.386565}, {176, 0.79012191, 0.515391},
             {999, -1, 14.614641}};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        if (v[i].alpha_bar > 0)
            CHECK(fabs(s.alphas_cumprod[v[i].t] - v[i].alpha_bar) < 5e-9, "ᾱ_%d = %.9f, want %.8f",
                  v[i].t, s.alphas_cumprod[v[i].t], v[i].alpha_bar);
        CHECK(fabs(ldmc_schedule_sigma(&s, v[i].t) - v[i].sigma) < 5e-7 * (1 + v[i].sigma),
              "σ_%d = %.7f, want %.6f", v[i].t, ldmc_schedule_sigma(&s, v[i].t), v[i].sigma);
    }
    CHECK(s.steps == 1000, "1000 steps");
    for (int t = 1; t < 1000; t++)
        REQUIRE(s.alphas_cumprod[t] < s.alphas_cumprod[t - 1], "ᾱ decreases at %d", t);
    CHECK(fabs(ldmc_schedule_snr(&s, 500) - 1 / pow(ldmc_schedule_sigma(&s, 500), 2)) < 1e-12,
          "snr = 1/σ²");
}

static void test_ddim_timesteps_and_steps(void) {
    static ldmc_schedule s;
    ldmc_schedule_sdxl(&s);
    int ts[1000];
    REQUIRE(ldmc_ddim_timesteps(&s, 50, ts) == 50, "50 steps");
    CHECK(ts[0] == 981 && ts[1] == 961 && ts[49] == 1,
          "LDM's uniform timesteps 981, 961, ..., 1: %d %d %d", ts[0], ts[1], ts[49]);
    // An exact model (it outputs the true ε) takes x_t to x_{t'} = √ᾱ' x0 + √(1-ᾱ') ε; after the
    // last step, to ᾱ_0.
    float x0[4] = {0.5f, -1.0f, 0.25f, 2.0f}, eps[4] = {1.0f, 0.3f, -0.7f, -1.5f}, x[4], v[4];
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    for (int pred = 0; pred < 2; pred++) {
        for (int step = 0; step < 2; step++) {
            int t = step ? 1 : 981, tp = step ? -1 : 961;
            double a = s.alphas_cumprod[t], ap = s.alphas_cumprod[tp < 0 ? 0 : tp];
            for (int i = 0; i < 4; i++) {
                x[i] = (float)(sqrt(a) * x0[i] + sqrt(1 - a) * eps[i]);
                v[i] = (float)(sqrt(a) * eps[i] - sqrt(1 - a) * x0[i]);
            }
            ldmc_tensor *xt = ldmc_wrap(&ctx, LDMC_F32, x, 1, (int64_t[]){4});
            ldmc_tensor *out = ldmc_wrap(&ctx, LDMC_F32, pred ? v : eps, 1, (int64_t[]){4});
            ldmc_ddim_update(&ctx, xt, out, a, ap, pred == 1);
            for (int i = 0; i < 4; i++) {
                double want = sqrt(ap) * x0[i] + sqrt(1 - ap) * eps[i];
                CHECK(fabs(x[i] - want) < 1e-5 * (1 + fabs(want)), "%s step %d->%d: %g, want %g",
                      pred ? "v" : "eps", t, tp, x[i], want);
            }
        }
    }
    // guidance over (2, 3): the conditional row, then the unconditional one
    float outputs[6] = {2, 2, 5, 1, 2, 3};
    ldmc_tensor *g =
        ldmc_guidance(&ctx, ldmc_wrap(&ctx, LDMC_F32, outputs, 2, (int64_t[]){2, 3}), 7.5);
    const float *y = g->data;
    CHECK(g->shape[0] == 1 && y[0] == 8.5f && y[1] == 2.0f && y[2] == 18.0f,
          "guidance: uncond + s (cond - uncond)");
    ldmc_ctx_free(&ctx);
}

// Noising with offset noise: ε = n + offset · m with m one draw per (sample, channel), so the
// per-(sample, channel) mean of ε has variance 1/(h w) + offset², and ε overall 1 + offset².
static void test_offset_noise_statistics(void) {
    static ldmc_schedule s;
    ldmc_schedule_sdxl(&s);
    enum { B = 512, H = 8, W = 8, C = 4 };
    const int64_t n = (int64_t)B * H * W * C;
    float *z = calloc((size_t)n, sizeof *z), *xt = malloc((size_t)n * sizeof *xt),
          *target = malloc((size_t)n * sizeof *target);
    float t[B], w[B];
    for (int k = 0; k < 2; k++) {
        double offset = k ? 0.5 : 0.0;
        ldmc_noise_options o = {
            .prediction = LDMC_PREDICT_EPS, .offset_noise = offset, .t_min = 0, .t_max = 1000};
        noise_batch(&s, &o, z, B, H, W, C, 11, 3, 0, xt, target, t, w);
        double sum = 0, sum2 = 0, mean_var = 0;
        for (int64_t i = 0; i < n; i++)
            sum += target[i], sum2 += (double)target[i] * target[i];
        for (int b = 0; b < B; b++)
            for (int c = 0; c < C; c++) {
                double m = 0;
                for (int p = 0; p < H * W; p++)
                    m += target[((int64_t)b * H * W + p) * C + c];
                m /= H * W;
                mean_var += m * m / (B * C);
            }
        double var = sum2 / n - (sum / n) * (sum / n), want = 1.0 / (H * W) + offset * offset;
        CHECK(fabs(var - (1 + offset * offset)) < 0.03 * (1 + offset * offset),
              "offset %g: var(ε) %.4f, want %.4f", offset, var, 1 + offset * offset);
        // the mean of B*C squared normals: relative standard deviation sqrt(2 / (B C)) ≈ 3%
        CHECK(fabs(mean_var - want) < 0.15 * want,
              "offset %g: var of channel means %.5f, want %.5f", offset, mean_var, want);
        // with z = 0: x_t = √(1-ᾱ_t) ε
        for (int b = 0; b < B; b++) {
            double sb = sqrt(1 - s.alphas_cumprod[(int)t[b]]);
            REQUIRE(fabs(xt[(int64_t)b * H * W * C] - sb * target[(int64_t)b * H * W * C]) < 1e-5,
                    "x_t of sample %d", b);
        }
    }
    free(z);
    free(xt);
    free(target);
}

static void test_timestep_range_targets_and_weights(void) {
    static ldmc_schedule s;
    ldmc_schedule_sdxl(&s);
    enum { B = 4000 };
    static float z[B], xt[B], target[B], t[B], w[B];
    for (int i = 0; i < B; i++)
        z[i] = (float)(0.5 * sin(i));
    // The refiner's range: t in [0, 200), every value used, roughly uniformly.
    ldmc_noise_options o = {
        .prediction = LDMC_PREDICT_V, .t_min = 0, .t_max = 200, .min_snr_gamma = 5};
    noise_batch(&s, &o, z, B, 1, 1, 1, 5, 1, 0, xt, target, t, w);
    int counts[200] = {0};
    for (int i = 0; i < B; i++) {
        REQUIRE(t[i] >= 0 && t[i] < 200 && t[i] == floorf(t[i]), "t = %g outside [0, 200)", t[i]);
        counts[(int)t[i]]++;
    }
    int lo = B, hi = 0;
    for (int k = 0; k < 200; k++)
        lo = counts[k] < lo ? counts[k] : lo, hi = counts[k] > hi ? counts[k] : hi;
    CHECK(lo >= 3 && hi <= 45, "timestep counts from %d to %d (20 expected each)", lo, hi);
    // v = √ᾱ ε - √(1-ᾱ) z, recovered from x_t = √ᾱ z + √(1-ᾱ) ε; min-SNR weight min(snr, γ)/(snr +
    // 1).
    for (int i = 0; i < B; i += 97) {
        double a = s.alphas_cumprod[(int)t[i]], sa = sqrt(a), sb = sqrt(1 - a);
        double eps = (xt[i] - sa * z[i]) / sb, v = sa * eps - sb * z[i], snr = a / (1 - a);
        CHECK(fabs(target[i] - v) < 1e-4 * (1 + fabs(v)), "v target %g, want %g", target[i], v);
        CHECK(fabs(w[i] - fmin(snr, 5) / (snr + 1)) < 1e-6, "min-SNR weight (v) %g at t %g", w[i],
              t[i]);
    }
    o = (ldmc_noise_options){
        .prediction = LDMC_PREDICT_EPS, .t_min = 900, .t_max = 1000, .min_snr_gamma = 5};
    noise_batch(&s, &o, z, B, 1, 1, 1, 5, 1, 0, xt, target, t, w);
    for (int i = 0; i < B; i += 97) {
        double a = s.alphas_cumprod[(int)t[i]], snr = a / (1 - a);
        CHECK(t[i] >= 900 && fabs(w[i] - fmin(snr, 5) / snr) < 1e-6, "min-SNR weight (ε) at t %g",
              t[i]);
        double eps = (xt[i] - sqrt(a) * z[i]) / sqrt(1 - a);
        CHECK(fabs(target[i] - eps) < 1e-4 * (1 + fabs(eps)), "ε target");
    }
    // The draws are keyed by (seed, step, micro-batch): another step or micro-batch draws anew,
    // the same ones draw the same.
    static float t2[B], xt2[B];
    noise_batch(&s, &o, z, B, 1, 1, 1, 5, 1, 0, xt2, target, t2, w);
    CHECK(!memcmp(t, t2, sizeof t) && !memcmp(xt, xt2, sizeof xt), "deterministic");
    noise_batch(&s, &o, z, B, 1, 1, 1, 5, 1, 1, xt2, target, t2, w);
    CHECK(memcmp(xt, xt2, sizeof xt) != 0, "another micro-batch draws other noise");
    noise_batch(&s, &o, z, B, 1, 1, 1, 5, 2, 0, xt2, target, t2, w);
    CHECK(memcmp(xt, xt2, sizeof xt) != 0, "another step draws other noise");
}

int main(int argc, char **argv) {
    static const test_entry tests[] = {
        TEST_ENTRY(test_schedule_matches_the_reference_vectors),
        TEST_ENTRY(test_ddim_timesteps_and_steps),
        TEST_ENTRY(test_offset_noise_statistics),
        TEST_ENTRY(test_timestep_range_targets_and_weights),
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
