// The diffusion side: the DDPM schedule against the test vectors of
// ../shared/reference/samplers.md §1, noising as the loss step does it (the timestep draws of
// diffusion.h, then the noising op: timestep range, offset noise statistics, ε and v targets,
// min-SNR weights), the samplers' σ lists, and the sampling ops (the sampler step,
// classifier-free guidance).
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
    ldmc_step_key key = {seed, step, 0, micro, 0, 0};
    ldmc_draw_timesteps(s, o, B, &key, t, w, sa, sb);
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ldmc_tensor *zt = ldmc_wrap(&ctx, LDMC_F32, (void *)z, 4, (int64_t[]){B, H, W, C}), *x, *tg;
    ldmc_rng noise = ldmc_rng_make(seed, step, 0, LDMC_RNG_NOISE);
    ldmc_diffusion_noise(&ctx, zt, sa, sb, o->offset_noise, o->prediction == LDMC_PREDICT_V, &noise,
                         ldmc_step_row_offset(&key, (int64_t)H * W * C),
                         ldmc_step_second_block(&key, B, (int64_t)H * W * C, C), &x, &tg);
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

static bool near(double got, double want, double tol) { return fabs(got - want) <= tol; }

// The σ lists against samplers.md §2, §3.6, §5 and §8; σ -> t; the hand-off and SDEdit steps.
static void test_sigma_lists(void) {
    static ldmc_schedule s;
    ldmc_schedule_sdxl(&s);
    double sig[1001], t[1000];
    // LDM: 981, 961, ..., 1, then ᾱ_0
    REQUIRE(ldmc_discretize(&s, LDMC_SIGMAS_LDM, 50, sig, t) == 50, "50 steps");
    CHECK(t[0] == 981 && t[1] == 961 && t[49] == 1 && near(sig[0], 13.120411, 1e-6) &&
              near(sig[50], 0.029167, 1e-6),
          "LDM: t %g %g ... %g, σ %.6f ... %.6f", t[0], t[1], t[49], sig[0], sig[50]);
    // generative-models: 999, 979, ..., 19, then 0; for 30 steps 965 second (diffusers' trailing
    // has 966)
    ldmc_discretize(&s, LDMC_SIGMAS_SGM, 50, sig, t);
    CHECK(t[0] == 999 && t[1] == 979 && t[49] == 19 && sig[50] == 0 &&
              near(sig[0], 14.614641, 1e-6) && near(sig[49], 0.134451, 1e-6),
          "sgm: t %g %g ... %g, σ %.6f", t[0], t[1], t[49], sig[0]);
    ldmc_discretize(&s, LDMC_SIGMAS_SGM, 30, sig, t);
    CHECK(t[1] == 965, "sgm, 30 steps: t_1 = %g, want 965", t[1]);
    // Karras, ρ = 7, over the table's ends
    ldmc_discretize(&s, LDMC_SIGMAS_KARRAS, 50, sig, t);
    const double want[] = {14.6146, 13.4292, 12.3272, 11.3036, 10.3538};
    const double want_end[] = {0.06319, 0.05250, 0.04339, 0.03568, 0.02917};
    for (int i = 0; i < 5; i++)
        CHECK(near(sig[i], want[i], 1e-4) && near(sig[45 + i], want_end[i], 1e-5),
              "karras σ_%d = %.5f (want %.4f), σ_%d = %.5f (want %.5f)", i, sig[i], want[i], 45 + i,
              sig[45 + i], want_end[i]);
    CHECK(sig[50] == 0 && near(t[0], 999, 1e-9) && round(t[1]) == 985 && round(t[2]) == 970 &&
              near(t[49], 0, 1e-9),
          "karras t: %g %g %g ... %g (ComfyUI: 999, 985, 970 ... 0)", t[0], t[1], t[2], t[49]);
    // σ -> t: the table's values give their own t; between them, log-linear; clamped outside
    bool table = true;
    for (int k = 0; k < 1000; k += 37)
        table &= near(ldmc_sigma_to_t(&s, ldmc_schedule_sigma(&s, k)), k, 1e-9);
    double mid = exp((log(ldmc_schedule_sigma(&s, 500)) + log(ldmc_schedule_sigma(&s, 501))) / 2);
    CHECK(table && near(ldmc_sigma_to_t(&s, mid), 500.5, 1e-9) && ldmc_sigma_to_t(&s, 0.001) == 0 &&
              ldmc_sigma_to_t(&s, 100) == 999,
          "σ -> t");
    // the hand-off at 0.8 (diffusers' denoising_end): 40 of 50 steps (the last at 201), and 32
    // of 40 (refiner from 176)
    ldmc_discretize(&s, LDMC_SIGMAS_LDM, 50, sig, t);
    int k = ldmc_switch_step(&s, t, 50, 0.8);
    CHECK(k == 40 && t[39] == 201 && t[40] == 181, "switch at 0.8 of 50: %d steps", k);
    ldmc_discretize(&s, LDMC_SIGMAS_LDM, 40, sig, t);
    k = ldmc_switch_step(&s, t, 40, 0.8);
    CHECK(k == 32 && t[32] == 176 && near(sig[32], 0.515391, 1e-6), "switch at 0.8 of 40: %d", k);
    CHECK(ldmc_switch_step(&s, t, 40, 1.0) == 40 && ldmc_switch_step(&s, t, 40, 0.0) == 0,
          "switch at 1 and 0");
    // SDEdit (samplers.md §5): strength 0.3 -> 15 steps from t 281, 0.15 -> 7 from 121, 0.75 ->
    // 37 from 721
    ldmc_discretize(&s, LDMC_SIGMAS_LDM, 50, sig, t);
    const double strength[] = {0.3, 0.15, 0.75}, first_t[] = {281, 121, 721},
                 first_sigma[] = {0.778923, 0.391038, 3.630653};
    for (int i = 0; i < 3; i++) {
        int start = ldmc_strength_start(50, strength[i]);
        CHECK(t[start] == first_t[i] && near(sig[start], first_sigma[i], 1e-6),
              "strength %g: from step %d, t %g, σ %.6f", strength[i], start, t[start], sig[start]);
    }
    CHECK(ldmc_strength_start(50, 1) == 0 && ldmc_strength_start(50, 0) == 50, "strength 1 and 0");
    CHECK(ldmc_discretization_from_name("karras") == LDMC_SIGMAS_KARRAS &&
              ldmc_discretization_from_name("nope") == LDMC_SIGMAS_DEFAULT,
          "names");
}

// The sampler step op with an exact model (it outputs the true ε or v of x = x0 + σ ε): the
// model's scalings give D = x0, and Euler's coefficients move x to x0 + σ' ε; the history gets D,
// the noise adds s z.
static void test_sampler_step(void) {
    float x0[4] = {0.5f, -1.0f, 0.25f, 2.0f}, eps[4] = {1.0f, 0.3f, -0.7f, -1.5f}, x[4], out[4],
          hist[4] = {9, 9, 9, 9}, z[4] = {1, -1, 2, 0.5f};
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    const double sigma = 3.2, next = 1.1;
    for (int pred = 0; pred < 2; pred++) {
        for (int i = 0; i < 4; i++) {
            x[i] = (float)(x0[i] + sigma * eps[i]);
            out[i] = pred ? (float)((eps[i] - sigma * x0[i]) / sqrt(1 + sigma * sigma)) : eps[i];
        }
        ldmc_sampler_coeffs k = {.a = next / sigma, .b = 1 - next / sigma, .c = 0.5, .s = 0.25};
        if (pred)
            k.p = 1 / (sigma * sigma + 1), k.q = -sigma / sqrt(sigma * sigma + 1);
        else
            k.p = 1, k.q = -sigma;
        ldmc_tensor *xt = ldmc_wrap(&ctx, LDMC_F32, x, 1, (int64_t[]){4});
        ldmc_sampler_update(&ctx, xt, ldmc_wrap(&ctx, LDMC_F32, out, 1, (int64_t[]){4}),
                            ldmc_wrap(&ctx, LDMC_F32, hist, 1, (int64_t[]){4}),
                            ldmc_wrap(&ctx, LDMC_F32, z, 1, (int64_t[]){4}), &k);
        for (int i = 0; i < 4; i++) {
            double want = x0[i] + next * eps[i] + 0.5 * (pred ? x0[i] : 9) + 0.25 * z[i];
            CHECK(fabs(x[i] - want) < 1e-5 * (1 + fabs(want)) && fabs(hist[i] - x0[i]) < 1e-5,
                  "%s: x %g, want %g; D %g, want %g", pred ? "v" : "eps", x[i], want, hist[i],
                  x0[i]);
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
        TEST_ENTRY(test_sigma_lists),
        TEST_ENTRY(test_sampler_step),
        TEST_ENTRY(test_offset_noise_statistics),
        TEST_ENTRY(test_timestep_range_targets_and_weights),
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
