// The GPU against the CPU (ctest -L cuda; without a device the program reports itself skipped,
// exit code 77):
//   - Philox streams and bf16 conversions bit for bit, and the diffusion ops (posterior draws,
//     noising, guidance, DDIM: the same seed gives the same values on both devices);
//   - every op of src/ops through the op API, forward and the gradient of every input, on the
//     same inputs (f32 values that bf16 holds exactly, so both devices start from identical
//     numbers) with SDXL's channel counts at small spatial sizes;
//   - attention and the convolutions in many chunks and slices (bounds lowered on small
//     tensors) against the CPU and against themselves under the default bounds;
//   - AdamW, EMA and the gradient norm over the flat buffers;
//   - a training step of the tiny UNet (class- and text-conditioned) and the tiny VAE.
//
// The tolerance is harness.h's rule, |got - want| <= rtol (|want| + rms(want)), with one formula
// for rtol: rtol = factor * 2^-7 (bf16's epsilon in place of float's), K = 1. The GPU rounds
// each output to bf16 once (half an epsilon), and rounds an f32 gradient to bf16 once before a
// tensor-core GEMM; f32 accumulation keeps the sum's own error far below that, so the bound does
// not grow with the reduction length. factor is 4, or 8 for ops whose backward chains two
// roundings (a recomputed bf16 probability times a bf16-rounded gradient: attention, softmax;
// statistics of bf16 data: the norms), each case says which. Whole models compare by gradient
// direction and size (cosine, norm ratio), since tens of bf16 roundings compound.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/dtype.h"
#include "core/params.h"
#include "core/rng.h"
#include "harness.h"
#include "kernels/ldmc_cuda.h"
#include "nn/model_config.h"
#include "nn/text_encoder.h"
#include "nn/unet.h"
#include "nn/vae.h"
#include "ops/cpu_kernels.h"
#include "ops/ops.h"
#include "ops/param_ops.h"
#include "pipeline/plan.h"
#include "train/optim.h"

#define BF16_EPSILON 0x1p-7

static double bf16_rtol(double factor) { return factor * BF16_EPSILON; }

static void gpu_ctx_init(ldmc_ctx *ctx) {
    ldmc_ctx_init_device(ctx, LDMC_CUDA, (size_t)2 << 30, (size_t)256 << 20);
    ctx->poison_fresh_grads = true; // (NaN bytes in written gradients: emulated GPUs only)
}

// ---- bit-exact pieces ---------------------------------------------------------------------------

enum { N = 1 << 20 };

static void test_philox_streams_match_the_cpu(void) {
    ldmc_rng rng = ldmc_rng_make(0xfeedbeef12345ull, 17, 2, LDMC_RNG_NOISE);
    float *cpu = malloc(N * sizeof *cpu), *gpu = malloc(N * sizeof *gpu);
    float *dev = ldmc_cuda_malloc(N * sizeof *dev);
    for (int kind = 0; kind < 2; kind++) {
        uint64_t offset = 1 + (uint64_t)kind * 12345; // odd: pairs straddle the start
        if (kind == 0) {
            ldmc_rng_uniform(&rng, offset, N, cpu);
            ldmc_cuda_rng_uniform(&rng, offset, N, dev);
        } else {
            ldmc_rng_normal(&rng, offset, N, cpu);
            ldmc_cuda_rng_normal(&rng, offset, N, dev);
        }
        ldmc_cuda_to_host(gpu, dev, N * sizeof *gpu);
        int64_t differ = 0;
        for (int i = 0; i < N; i++) {
            if (cpu[i] == gpu[i]) continue;
            differ++;
            // Box-Muller runs in double on both sides; a last-bit difference of double log or
            // cos can flip the float rounding, never more than one float ulp.
            CHECK(kind == 1 &&
                      fabsf(cpu[i] - gpu[i]) <= nextafterf(fabsf(cpu[i]), INFINITY) - fabsf(cpu[i]),
                  "%s value %d: CPU %a, GPU %a", kind ? "normal" : "uniform", i, cpu[i], gpu[i]);
        }
        CHECK(differ <= N / 100000, "%lld of %d values differ", (long long)differ, N);
    }
    ldmc_cuda_free(dev);
    free(cpu);
    free(gpu);
}

static void test_bf16_conversions_match_the_cpu(void) {
    float *x = malloc(N * sizeof *x), *back = malloc(N * sizeof *back);
    uint16_t *cpu = malloc(N * sizeof *cpu), *gpu = malloc(N * sizeof *gpu);
    ldmc_rng rng = ldmc_rng_make(3, 0, 0, LDMC_RNG_TEST);
    for (int i = 0; i < N; i++) {
        uint32_t bits = ldmc_rng_bits(&rng, (uint64_t)i);
        memcpy(&x[i], &bits, 4); // every kind of float, NaN and inf included
    }
    for (int i = 0; i < N; i++)
        cpu[i] = ldmc_f32_to_bf16(x[i]);
    float *dx = ldmc_cuda_malloc(N * sizeof *dx), *dback = ldmc_cuda_malloc(N * sizeof *dback);
    uint16_t *dh = ldmc_cuda_malloc(N * sizeof *dh);
    ldmc_cuda_to_device(dx, x, N * sizeof *x);
    ldmc_cuda_f32_to_bf16(dh, dx, N);
    ldmc_cuda_bf16_to_f32(dback, dh, N);
    ldmc_cuda_to_host(gpu, dh, N * sizeof *gpu);
    ldmc_cuda_to_host(back, dback, N * sizeof *back);
    int bad = 0;
    for (int i = 0; i < N && bad < 5; i++) {
        float want = ldmc_bf16_to_f32(gpu[i]);
        bool same_bf16 = cpu[i] == gpu[i], same_f32 = memcmp(&want, &back[i], 4) == 0;
        CHECK(same_bf16, "f32 %a -> bf16: CPU %04x, GPU %04x", x[i], cpu[i], gpu[i]);
        CHECK(same_f32, "bf16 %04x -> f32 differs", gpu[i]);
        bad += !same_bf16 + !same_f32;
    }
    ldmc_cuda_free(dx);
    ldmc_cuda_free(dback);
    ldmc_cuda_free(dh);
    free(x);
    free(back);
    free(cpu);
    free(gpu);
}

// The diffusion ops on both devices from the same inputs (values bf16 holds exactly, so the GPU's
// bf16 operands start from the CPU's numbers): the latents drawn from a posterior (bf16 moments,
// as the encoder gives them, and f32 ones, as a cache does), the noising for both predictions
// (the same ε and offsets from the NOISE stream), the decoder's input, guidance, the sampler step,
// casts and batch concatenation. The GPU computes in the CPU's order with explicit roundings:
// values agree but for a rare last-bit Box-Muller difference (see the Philox test) and the bf16
// rounding of x_t and the decoder's input.
typedef struct diffusion_results {
    float *z, *z32, *x_t[2], *target[2], *unscaled, *guided, *sampler, *history, *rows;
} diffusion_results;

static float *read_all(const ldmc_tensor *t) {
    float *v = malloc((size_t)ldmc_numel(t) * sizeof *v);
    LDMC_CHECK(v, "out of memory");
    ldmc_read_f32(t, v);
    return v;
}

static void run_diffusion_ops(ldmc_ctx *ctx, const float *moments, int B, int h, int w, int C,
                              diffusion_results *r) {
    const int64_t n = (int64_t)B * h * w * C, shape[4] = {B, h, w, C};
    ldmc_ctx_reset(ctx);
    ldmc_rng latent = ldmc_rng_make(11, 7, 0, LDMC_RNG_LATENT),
             noise = ldmc_rng_make(11, 7, 0, LDMC_RNG_NOISE);
    ldmc_tensor *mean = ldmc_input(ctx, ctx->act_dtype, 4, shape, moments, LDMC_F32);
    ldmc_tensor *std = ldmc_input(ctx, ctx->act_dtype, 4, shape, moments + n, LDMC_F32);
    ldmc_tensor *z = ldmc_latent_sample(ctx, mean, std, 0.13025, &latent, (uint64_t)1 << 40);
    r->z = read_all(z);
    ldmc_tensor *mean32 = ldmc_input(ctx, LDMC_F32, 4, shape, moments, LDMC_F32);
    ldmc_tensor *std32 = ldmc_input(ctx, LDMC_F32, 4, shape, moments + n, LDMC_F32);
    r->z32 = read_all(ldmc_latent_sample(ctx, mean32, std32, 0.13025, &latent, 0));
    const double sa[3] = {0.9, 0.5, 0.1}, sb[3] = {sqrt(1 - 0.81), sqrt(0.75), sqrt(0.99)};
    for (int v = 0; v < 2; v++) {
        ldmc_tensor *x_t, *target;
        ldmc_diffusion_noise(ctx, z, sa, sb, 0.05, v == 1, &noise, (uint64_t)1 << 40,
                             ((uint64_t)1 << 40) + ((ldmc_numel(z) + 1) & ~(int64_t)1), &x_t,
                             &target);
        r->x_t[v] = read_all(x_t), r->target[v] = read_all(target);
    }
    r->unscaled = read_all(ldmc_latent_unscale(ctx, z, 0.13025));
    // guidance over (2B, h, w, C): the moments as the conditional and unconditional outputs
    ldmc_tensor *pair =
        ldmc_input(ctx, ctx->act_dtype, 4, (int64_t[]){2 * B, h, w, C}, moments, LDMC_F32);
    ldmc_tensor *guided = ldmc_guidance(ctx, pair, 7.5);
    r->guided = read_all(guided);
    ldmc_tensor *x = ldmc_input(ctx, LDMC_F32, 4, shape, moments, LDMC_F32);
    x = ldmc_concat_rows(ctx, (ldmc_tensor *[]){x}, 1); // a copy of its own, updated in place
    // the sampler step: with the multistep history and ancestral noise, then without either
    ldmc_tensor *history = ldmc_input(ctx, LDMC_F32, 4, shape, moments + n, LDMC_F32);
    history = ldmc_concat_rows(ctx, (ldmc_tensor *[]){history}, 1);
    ldmc_tensor *eps = ldmc_zeros(ctx, LDMC_F32, 4, shape);
    ldmc_fill_normal(eps, &noise, 12);
    const ldmc_sampler_coeffs k1 = {0.4, -3.7, 0.81, 0.19, -0.05, 0.6},
                              k2 = {1, -0.5, 0.25, 0.75, 0, 0};
    ldmc_sampler_update(ctx, x, guided, history, eps, &k1);
    ldmc_sampler_update(ctx, x, guided, NULL, NULL, &k2);
    r->sampler = read_all(x);
    r->history = read_all(history);
    ldmc_tensor *act = ldmc_cast(ctx, mean32, ctx->act_dtype);
    r->rows =
        read_all(ldmc_cast(ctx, ldmc_concat_rows(ctx, (ldmc_tensor *[]){act, act}, 2), LDMC_F32));
}

static void free_diffusion_results(diffusion_results *r) {
    free(r->z), free(r->z32), free(r->unscaled), free(r->guided), free(r->sampler),
        free(r->history), free(r->rows);
    for (int v = 0; v < 2; v++)
        free(r->x_t[v]), free(r->target[v]);
}

// Values that differ in any bit.
static int64_t bits_differ(const float *a, const float *b, int64_t n) {
    int64_t d = 0;
    for (int64_t i = 0; i < n; i++)
        d += memcmp(&a[i], &b[i], sizeof a[i]) != 0;
    return d;
}

static void test_diffusion_ops_match_the_cpu(void) {
    const int B = 3, h = 16, w = 12, C = 4;
    const int64_t n = (int64_t)B * h * w * C;
    float *moments = malloc(2 * n * sizeof *moments);
    test_fill(moments, 2 * n, 5, 2, 0);
    for (int64_t i = 0; i < 2 * n; i++) // bf16-exact, and the stds positive
        moments[i] =
            ldmc_bf16_to_f32(ldmc_f32_to_bf16(i < n ? moments[i] : 0.1f + fabsf(moments[i])));
    ldmc_ctx cpu, gpu;
    test_ctx_init(&cpu);
    gpu_ctx_init(&gpu);
    diffusion_results c, g;
    run_diffusion_ops(&cpu, moments, B, h, w, C, &c);
    run_diffusion_ops(&gpu, moments, B, h, w, C, &g);
    CHECK(bits_differ(g.z, c.z, n) <= 2, "latents from bf16 moments: %lld values differ",
          (long long)bits_differ(g.z, c.z, n));
    CHECK(bits_differ(g.z32, c.z32, n) <= 2, "latents from f32 moments: %lld values differ",
          (long long)bits_differ(g.z32, c.z32, n));
    for (int v = 0; v < 2; v++) {
        const char *what = v ? "v" : "eps";
        int64_t x_differ = 0;
        for (int64_t i = 0; i < n; i++)
            x_differ += ldmc_f32_to_bf16(g.x_t[v][i]) != ldmc_f32_to_bf16(c.x_t[v][i]);
        CHECK(x_differ <= 2, "%s: %lld noised latents differ in bf16", what, (long long)x_differ);
        CHECK(bits_differ(g.target[v], c.target[v], n) <= 2, "%s: %lld targets differ", what,
              (long long)bits_differ(g.target[v], c.target[v], n));
        CHECK_CLOSE("noised latents", g.x_t[v], c.x_t[v], NULL, n, bf16_rtol(1));
    }
    CHECK_CLOSE("the decoder's input", g.unscaled, c.unscaled, NULL, n, bf16_rtol(1));
    CHECK(bits_differ(g.guided, c.guided, n) == 0, "guidance: %lld values differ",
          (long long)bits_differ(g.guided, c.guided, n));
    // (the ancestral noise: a rare last-bit Box-Muller difference, as the latents')
    CHECK(bits_differ(g.sampler, c.sampler, n) <= 2 && bits_differ(g.history, c.history, n) == 0,
          "the sampler step: %lld values and %lld of the history differ",
          (long long)bits_differ(g.sampler, c.sampler, n),
          (long long)bits_differ(g.history, c.history, n));
    CHECK(bits_differ(g.rows, c.rows, 2 * n) == 0 && !memcmp(c.rows, moments, n * sizeof *moments),
          "cast and concat_rows");
    free_diffusion_results(&c);
    free_diffusion_results(&g);
    ldmc_ctx_free(&cpu);
    ldmc_ctx_free(&gpu);
    free(moments);
}

// ---- every op through the op API --------------------------------------------------------------

enum { MAX_IN = 4 };
typedef enum { IN_BF16, IN_F32, IN_LABELS, IN_F32_CONST } in_kind;

typedef struct op_input {
    int ndim;
    int64_t shape[4];
    in_kind kind; // BF16: an activation (bf16 on the GPU); F32: f32 on both (timesteps, a
                  // loss target); LABELS: I64 in [0, label_max); F32_CONST: f32, no gradient
    double scale; // values uniform in [-scale, scale) + shift
    double shift;
    int label_max;
} op_input;

typedef struct op_case {
    const char *name;
    ldmc_tensor *(*run)(ldmc_ctx *ctx, ldmc_tensor **in);
    int n_in;
    op_input in[MAX_IN];
    double factor; // rtol = factor * 2^-7
    // The upstream gradient: random, or (true) the op's output plus half as much noise. Norms,
    // softmax and attention subtract from dy its projection on the output (the mean(dy x^), the
    // Σ dy y, the Σ dO O terms); with a random dy that projection is small and an error in it
    // would hide under the bf16 tolerance, with dy like the output it is most of the gradient.
    bool upstream_like_output;
} op_case;

#define T4(a, b, c, d)                                                                             \
    4, { a, b, c, d }
#define T3(a, b, c)                                                                                \
    3, { a, b, c }
#define T2(a, b)                                                                                   \
    2, { a, b }
#define T1(a)                                                                                      \
    1, { a }

static ldmc_tensor *run_linear(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_linear(c, in[0], in[1], in[2]);
}
static ldmc_tensor *run_matmul_nn(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_matmul(c, in[0], in[1], false, false);
}
static ldmc_tensor *run_matmul_tt(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_matmul(c, in[0], in[1], true, true);
}
static ldmc_tensor *run_matmul_nt(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_matmul(c, in[0], in[1], false, true);
}
static ldmc_tensor *run_conv3(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_conv2d(c, in[0], in[1], in[2], 1, 1);
}
static ldmc_tensor *run_conv3_s2(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_conv2d(c, in[0], in[1], in[2], 2, 1);
}
static ldmc_tensor *run_conv_vae_down(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_conv2d_padded(c, in[0], in[1], in[2], 2, (const int[4]){0, 1, 0, 1});
}
static ldmc_tensor *run_conv1(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_conv2d(c, in[0], in[1], in[2], 1, 0);
}
static ldmc_tensor *run_group_norm(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_group_norm(c, in[0], in[1], in[2], 32, 1e-5);
}
static ldmc_tensor *run_group_norm_plain(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_group_norm(c, in[0], NULL, NULL, 32, 1e-6);
}
static ldmc_tensor *run_layer_norm(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_layer_norm(c, in[0], in[1], in[2], 1e-5);
}
static ldmc_tensor *run_silu(ldmc_ctx *c, ldmc_tensor **in) { return ldmc_silu(c, in[0]); }
static ldmc_tensor *run_gelu(ldmc_ctx *c, ldmc_tensor **in) { return ldmc_gelu(c, in[0], false); }
static ldmc_tensor *run_quick_gelu(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_quick_gelu(c, in[0]);
}
static ldmc_tensor *run_gelu_tanh(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_gelu(c, in[0], true);
}
static ldmc_tensor *run_geglu(ldmc_ctx *c, ldmc_tensor **in) { return ldmc_geglu(c, in[0]); }
static ldmc_tensor *run_softmax(ldmc_ctx *c, ldmc_tensor **in) { return ldmc_softmax(c, in[0]); }
static ldmc_tensor *run_attention10(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_attention(c, in[0], in[1], in[2], 10);
}
static ldmc_tensor *run_attention1(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_attention(c, in[0], in[1], in[2], 1);
}
static ldmc_tensor *run_causal_attention12(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_causal_attention(c, in[0], in[1], in[2], 12);
}
static ldmc_tensor *run_causal_attention2(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_causal_attention(c, in[0], in[1], in[2], 2);
}
static ldmc_tensor *run_concat_rows(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_concat_rows(c, in, 2);
}
static ldmc_tensor *run_add(ldmc_ctx *c, ldmc_tensor **in) { return ldmc_add(c, in[0], in[1]); }
static ldmc_tensor *run_sub(ldmc_ctx *c, ldmc_tensor **in) { return ldmc_sub(c, in[0], in[1]); }
static ldmc_tensor *run_mul(ldmc_ctx *c, ldmc_tensor **in) { return ldmc_mul(c, in[0], in[1]); }
static ldmc_tensor *run_affine(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_affine(c, in[0], -0.75, 0.5);
}
static ldmc_tensor *run_exp(ldmc_ctx *c, ldmc_tensor **in) { return ldmc_exp(c, in[0]); }
static ldmc_tensor *run_clamp(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_clamp(c, in[0], -0.5, 0.75);
}
static ldmc_tensor *run_sum_rows(ldmc_ctx *c, ldmc_tensor **in) { return ldmc_sum_rows(c, in[0]); }
// the VAE's KL ends so: an op on a per-sample sum, which stays f32 on the GPU
static ldmc_tensor *run_affine_of_sums(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_affine(c, ldmc_sum_rows(c, in[0]), 0.5, -128);
}
static ldmc_tensor *run_embedding(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_embedding(c, in[0], in[1]);
}
static ldmc_tensor *run_add_broadcast(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_add_broadcast(c, in[0], in[1]);
}
static ldmc_tensor *run_dropout(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_dropout(c, in[0], 0.25);
}
static ldmc_tensor *run_concat(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_concat(c, (ldmc_tensor *[]){in[0], in[1], in[0]}, 3);
}
// split, then the pieces concatenated in another order: both ops and their backward
static ldmc_tensor *run_split(ldmc_ctx *c, ldmc_tensor **in) {
    ldmc_tensor *p[3];
    ldmc_split(c, in[0], (const int[]){320, 640, 320}, 3, p);
    return ldmc_concat(c, (ldmc_tensor *[]){p[2], p[0], p[1]}, 3);
}
static ldmc_tensor *run_upsample(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_upsample_nearest2x(c, in[0]);
}
static ldmc_tensor *run_avg_pool(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_avg_pool2d(c, in[0], 3, 2, 1, false);
}
static ldmc_tensor *run_avg_pool_pad(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_avg_pool2d(c, in[0], 3, 2, 1, true);
}
static ldmc_tensor *run_max_pool(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_max_pool2d(c, in[0], 3, 2, 1);
}
static ldmc_tensor *run_timestep(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_timestep_embedding(c, in[0], 320, 10000);
}
static ldmc_tensor *run_mse(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_mse_loss(c, in[0], in[1]);
}
static ldmc_tensor *run_l1(ldmc_ctx *c, ldmc_tensor **in) { return ldmc_l1_loss(c, in[0], in[1]); }
static ldmc_tensor *run_mse_weighted(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_mse_loss_weighted(c, in[0], in[1], (const float[]){0.5f, 2.0f});
}
static ldmc_tensor *run_scale_rows(ldmc_ctx *c, ldmc_tensor **in) {
    return ldmc_scale_rows(c, in[0], (const float[]){0.0f, 1.5f});
}

#define ACT(...)                                                                                   \
    { __VA_ARGS__, IN_BF16, 1, 0, 0 }
#define F32IN(...)                                                                                 \
    { __VA_ARGS__, IN_F32, 1, 0, 0 }

static const op_case op_cases[] = {
    {"linear 320->640, 77 tokens",
     run_linear,
     3,
     {ACT(T3(2, 77, 320)), ACT(T2(640, 320)), ACT(T1(640))},
     4,
     false},
    {"matmul", run_matmul_nn, 2, {ACT(T3(3, 40, 64)), ACT(T3(3, 64, 50))}, 4, false},
    {"matmul a^T b^T", run_matmul_tt, 2, {ACT(T3(3, 64, 40)), ACT(T3(3, 50, 64))}, 4, false},
    {"matmul a b^T", run_matmul_nt, 2, {ACT(T3(2, 33, 64)), ACT(T3(2, 47, 64))}, 4, false},
    {"conv2d 3x3 320->320",
     run_conv3,
     3,
     {ACT(T4(2, 12, 10, 320)), ACT(T4(320, 3, 3, 320)), ACT(T1(320))},
     4,
     false},
    {"conv2d 3x3 stride 2 640->640",
     run_conv3_s2,
     3,
     {ACT(T4(1, 12, 12, 640)), ACT(T4(640, 3, 3, 640)), ACT(T1(640))},
     4,
     false},
    {"conv2d VAE downsample pads (0,1,0,1)",
     run_conv_vae_down,
     3,
     {ACT(T4(2, 10, 14, 128)), ACT(T4(128, 3, 3, 128)), ACT(T1(128))},
     4,
     false},
    {"conv2d 1x1 1280->640",
     run_conv1,
     3,
     {ACT(T4(1, 8, 8, 1280)), ACT(T4(640, 1, 1, 1280)), ACT(T1(640))},
     4,
     false},
    {"conv2d 3x3 3->128 (the VAE's first)",
     run_conv3,
     3,
     {ACT(T4(2, 16, 16, 3)), ACT(T4(128, 3, 3, 3)), ACT(T1(128))},
     4,
     false},
    // statistics of bf16 data, x - mean cancels: factor 8
    {"group_norm 32 groups 320",
     run_group_norm,
     3,
     {{T4(2, 9, 11, 320), IN_BF16, 2, 0.5, 0}, ACT(T1(320)), ACT(T1(320))},
     8,
     true},
    {"group_norm 32 groups 1280 no affine",
     run_group_norm_plain,
     1,
     {ACT(T4(1, 6, 6, 1280))},
     8,
     true},
    {"layer_norm 640",
     run_layer_norm,
     3,
     {ACT(T3(2, 77, 640)), ACT(T1(640)), ACT(T1(640))},
     8,
     true},
    {"silu", run_silu, 1, {{T2(64, 320), IN_BF16, 6, 0, 0}}, 4, false},
    {"gelu", run_gelu, 1, {{T2(64, 320), IN_BF16, 4, 0, 0}}, 4, false},
    {"gelu tanh", run_gelu_tanh, 1, {{T2(64, 320), IN_BF16, 4, 0, 0}}, 4, false},
    {"quick gelu", run_quick_gelu, 1, {{T2(64, 320), IN_BF16, 4, 0, 0}}, 4, false},
    {"geglu 2x1280", run_geglu, 1, {{T3(2, 16, 2560), IN_BF16, 3, 0, 0}}, 4, false},
    {"softmax 77", run_softmax, 1, {{T3(2, 30, 77), IN_BF16, 4, 0, 0}}, 8, true},
    {"softmax 1000", run_softmax, 1, {{T2(5, 1000), IN_BF16, 4, 0, 0}}, 8, true},
    // bf16 probabilities and a bf16 copy of the output gradient in backward: factor 8
    {"self-attention 10 heads x 64, 256 tokens",
     run_attention10,
     3,
     {ACT(T3(2, 256, 640)), ACT(T3(2, 256, 640)), ACT(T3(2, 256, 640))},
     8,
     true},
    {"cross-attention 10 heads, 77 keys",
     run_attention10,
     3,
     {ACT(T3(2, 100, 640)), ACT(T3(2, 77, 640)), ACT(T3(2, 77, 640))},
     8,
     true},
    {"attention 1 head x 512 (the VAE's)",
     run_attention1,
     3,
     {ACT(T3(1, 200, 512)), ACT(T3(1, 200, 512)), ACT(T3(1, 200, 512))},
     8,
     true},
    // the mask; a random upstream gradient: with one or two keys the first queries' dS = P (dP -
    // Δ) is a cancelling difference, and an upstream gradient like the output makes Δ, of bf16
    // o, as large as dP (the Δ term is what the cases above check)
    {"causal self-attention 12 heads x 64, 77 tokens (CLIP-L's)",
     run_causal_attention12,
     3,
     {ACT(T3(2, 77, 768)), ACT(T3(2, 77, 768)), ACT(T3(2, 77, 768))},
     8,
     false},
    {"concat_rows", run_concat_rows, 2, {ACT(T3(2, 5, 64)), ACT(T3(1, 5, 64))}, 4, false},
    {"add", run_add, 2, {ACT(T2(100, 320)), ACT(T2(100, 320))}, 4, false},
    {"sub", run_sub, 2, {ACT(T2(100, 320)), ACT(T2(100, 320))}, 4, false},
    {"mul", run_mul, 2, {ACT(T2(100, 320)), ACT(T2(100, 320))}, 4, false},
    {"affine", run_affine, 1, {ACT(T2(100, 320))}, 4, false},
    {"exp", run_exp, 1, {{T2(100, 320), IN_BF16, 3, 0, 0}}, 4, false},
    {"clamp", run_clamp, 1, {ACT(T2(100, 320))}, 4, false},
    {"sum_rows", run_sum_rows, 1, {ACT(T4(3, 8, 8, 4))}, 4, false},
    {"affine of per-sample sums (f32 on the GPU)",
     run_affine_of_sums,
     1,
     {ACT(T4(3, 8, 8, 4))},
     4,
     false},
    {"embedding", run_embedding, 2, {ACT(T2(10, 1280)), {T1(6), IN_LABELS, 0, 0, 10}}, 4, false},
    {"add_broadcast (B, C)",
     run_add_broadcast,
     2,
     {ACT(T4(2, 5, 7, 640)), ACT(T2(2, 640))},
     4,
     false},
    {"add_broadcast (C)", run_add_broadcast, 2, {ACT(T3(2, 35, 320)), ACT(T1(320))}, 4, false},
    {"dropout", run_dropout, 1, {ACT(T2(100, 320))}, 4, false},
    {"concat", run_concat, 2, {ACT(T4(2, 4, 4, 320)), ACT(T4(2, 4, 4, 640))}, 4, false},
    {"split", run_split, 1, {ACT(T3(2, 16, 1280))}, 4, false},
    {"upsample nearest 2x", run_upsample, 1, {ACT(T4(2, 5, 6, 640))}, 4, false},
    {"avg_pool 3x3 s2", run_avg_pool, 1, {ACT(T4(2, 9, 8, 64))}, 4, false},
    {"avg_pool 3x3 s2 count_include_pad", run_avg_pool_pad, 1, {ACT(T4(2, 9, 8, 64))}, 4, false},
    {"max_pool 3x3 s2", run_max_pool, 1, {ACT(T4(2, 9, 8, 64))}, 4, false},
    {"timestep_embedding 320", run_timestep, 1, {{T1(4), IN_F32, 500, 499, 0}}, 4, false},
    {"mse (bf16 output, f32 target)",
     run_mse,
     2,
     {ACT(T4(2, 8, 8, 4)), F32IN(T4(2, 8, 8, 4))},
     4,
     false},
    {"l1", run_l1, 2, {ACT(T4(2, 8, 8, 3)), ACT(T4(2, 8, 8, 3))}, 4, false},
    {"mse weighted", run_mse_weighted, 2, {ACT(T4(2, 8, 8, 4)), F32IN(T4(2, 8, 8, 4))}, 4, false},
    {"scale_rows", run_scale_rows, 1, {ACT(T3(2, 16, 320))}, 4, false},
};

typedef struct op_result {
    float *out;
    int64_t n_out;
    float *grad[MAX_IN]; // NULL where the input takes no gradient
} op_result;

// The case's inputs as host f32 (bf16-exact for activations) or I64 values.
static void *make_input(const op_input *in, int64_t n, uint64_t seed) {
    if (in->kind == IN_LABELS) {
        int64_t *l = malloc((size_t)n * sizeof *l);
        for (int64_t i = 0; i < n; i++)
            l[i] = (i * 7 + 3) % in->label_max; // repeats: the backward sums them
        return l;
    }
    float *x = malloc((size_t)n * sizeof *x);
    test_fill(x, n, seed, in->scale, in->shift);
    if (in->kind == IN_BF16)
        for (int64_t i = 0; i < n; i++)
            x[i] = ldmc_bf16_to_f32(ldmc_f32_to_bf16(x[i]));
    return x;
}

static void to_host_f32(float *dst, const float *src, int64_t n, ldmc_device device) {
    if (device == LDMC_CUDA)
        ldmc_cuda_to_host(dst, src, (size_t)n * sizeof *dst);
    else
        memcpy(dst, src, (size_t)n * sizeof *dst);
}

// With `second_reader`, every input that needs a gradient is also read by 0.5 x, recorded after
// the op: that backward runs first, and the op adds into a gradient that holds a sum already
// (beta 1) instead of writing a fresh one.
static op_result run_op(ldmc_ctx *ctx, const op_case *c, void **host, const float *upstream,
                        bool second_reader) {
    ldmc_tensor *in[MAX_IN];
    op_result r = {0};
    for (int i = 0; i < c->n_in; i++) {
        const op_input *d = &c->in[i];
        ldmc_dtype dtype = d->kind == IN_LABELS ? LDMC_I64
                           : d->kind == IN_BF16 ? ctx->act_dtype
                                                : LDMC_F32;
        in[i] = ldmc_input(ctx, dtype, d->ndim, d->shape, host[i],
                           d->kind == IN_LABELS ? LDMC_I64 : LDMC_F32);
        in[i]->name = "input";
        if (d->kind == IN_BF16 || d->kind == IN_F32) ldmc_requires_grad(in[i]);
    }
    ldmc_tensor *out = c->run(ctx, in);
    r.n_out = ldmc_numel(out);
    r.out = malloc((size_t)r.n_out * sizeof *r.out);
    ldmc_read_f32(out, r.out);
    ldmc_tensor *outs[MAX_IN + 1] = {out};
    float *seeds[MAX_IN + 1] = {(float *)upstream};
    int n_outs = 1;
    for (int i = 0; second_reader && i < c->n_in; i++) {
        if (!in[i]->requires_grad) continue;
        int64_t n = ldmc_numel(in[i]);
        outs[n_outs] = ldmc_scale(ctx, in[i], 0.5);
        seeds[n_outs] = malloc((size_t)(n ? n : 1) * sizeof(float));
        test_fill(seeds[n_outs++], n, 500 + (uint64_t)i, 1, 0);
    }
    ldmc_backward_many(ctx, outs, (const float **)seeds, n_outs);
    for (int o = 1; o < n_outs; o++)
        free(seeds[o]);
    for (int i = 0; i < c->n_in; i++) {
        const float *g = ldmc_grad_if_any(in[i]);
        if (!g) continue;
        int64_t n = ldmc_numel(in[i]);
        r.grad[i] = malloc((size_t)n * sizeof(float));
        to_host_f32(r.grad[i], g, n, ctx->device);
    }
    return r;
}

static void free_result(op_result *r, int n_in) {
    for (int i = 0; i < n_in; i++)
        free(r->grad[i]);
    free(r->out);
}

// The case's inputs (host[i]) and the upstream gradient: random, the same on both devices (sized
// by a CPU dry pass), or like the output (op_case.upstream_like_output).
static float *case_inputs(const op_case *c, void **host) {
    for (int i = 0; i < c->n_in; i++)
        host[i] = make_input(&c->in[i], ldmc_shape_numel(c->in[i].ndim, c->in[i].shape),
                             100 + (uint64_t)i);
    ldmc_tensor *probe_in[MAX_IN];
    ldmc_ctx probe;
    ldmc_ctx_init_dry_run(&probe, (size_t)1 << 34);
    for (int i = 0; i < c->n_in; i++)
        probe_in[i] =
            ldmc_input(&probe, c->in[i].kind == IN_LABELS ? LDMC_I64 : LDMC_F32, c->in[i].ndim,
                       c->in[i].shape, host[i], c->in[i].kind == IN_LABELS ? LDMC_I64 : LDMC_F32);
    int64_t n_out = ldmc_numel(c->run(&probe, probe_in));
    ldmc_ctx_free(&probe);
    float *up = malloc((size_t)n_out * sizeof *up);
    test_fill(up, n_out, 99, 1, 0);
    if (c->upstream_like_output) {
        ldmc_ctx fwd;
        test_ctx_init(&fwd);
        fwd.recording = false;
        ldmc_tensor *in[MAX_IN];
        for (int i = 0; i < c->n_in; i++)
            in[i] = ldmc_input(&fwd, c->in[i].kind == IN_LABELS ? LDMC_I64 : LDMC_F32,
                               c->in[i].ndim, c->in[i].shape, host[i],
                               c->in[i].kind == IN_LABELS ? LDMC_I64 : LDMC_F32);
        const float *out = c->run(&fwd, in)->data;
        double ss = 0;
        for (int64_t i = 0; i < n_out; i++)
            ss += (double)out[i] * out[i];
        float rms = (float)sqrt(ss / (double)(n_out ? n_out : 1));
        for (int64_t i = 0; i < n_out; i++)
            up[i] = out[i] + 0.5f * rms * up[i];
        ldmc_ctx_free(&fwd);
    }
    return up;
}

// got against want within rtol: the output and every input's gradient. `how` names the pair.
static void check_results(const op_case *c, const char *how, const op_result *got,
                          const op_result *want, double rtol) {
    char what[200];
    REQUIRE(want->n_out == got->n_out, "%s%s: %lld outputs, %lld wanted", c->name, how,
            (long long)got->n_out, (long long)want->n_out);
    snprintf(what, sizeof what, "%s forward%s", c->name, how);
    CHECK_CLOSE(what, got->out, want->out, NULL, want->n_out, rtol);
    for (int i = 0; i < c->n_in; i++) {
        CHECK(!want->grad[i] == !got->grad[i], "%s%s: input %d has a gradient on one side only",
              c->name, how, i);
        if (!want->grad[i] || !got->grad[i]) continue;
        snprintf(what, sizeof what, "%s gradient of input %d%s", c->name, i, how);
        CHECK_CLOSE(what, got->grad[i], want->grad[i], NULL,
                    ldmc_shape_numel(c->in[i].ndim, c->in[i].shape), rtol);
    }
}

static void test_ops_match_the_cpu(void) {
    const op_case *c = test_arg;
    void *host[MAX_IN];
    float *up = case_inputs(c, host);
    ldmc_ctx cpu, gpu;
    test_ctx_init(&cpu);
    gpu_ctx_init(&gpu);
    for (int second = 0; second < 2; second++) { // gradients written fresh, then added into
        op_result want = run_op(&cpu, c, host, up, second), got = run_op(&gpu, c, host, up, second);
        check_results(c, second ? " (added to a gradient that holds a sum)" : "", &got, &want,
                      bf16_rtol(c->factor));
        free_result(&want, c->n_in);
        free_result(&got, c->n_in);
        ldmc_ctx_reset(&cpu);
        ldmc_ctx_reset(&gpu);
    }
    for (int i = 0; i < c->n_in; i++)
        free(host[i]);
    free(up);
    ldmc_ctx_free(&cpu);
    ldmc_ctx_free(&gpu);
}

// ---- chunks and slices ------------------------------------------------------------------------
// Attention runs over chunks of queries and the convolutions' implicit GEMM over chunks of output
// pixels, each chunk's temporaries within a byte bound; a convolution whose input or output has
// 2^31 values or more runs as slices along N. Lowered bounds (ldmc_cuda_set_chunk_bytes,
// ldmc_cuda_set_conv_slice_elements) cut small tensors into several pieces, the last one ragged:
// the results must match the CPU's, and the GPU's under the default bounds (one piece; attention:
// chunks of 64 queries). Each case gives the pieces its bound makes (kernels/attention.cu's
// query_chunk, kernels/conv.cu's gemm_chunk_rows and slice_count). The emulation has no pieces
// (there the cases repeat the op tests); on a GPU, a convolution whose channels are multiples of 8
// takes cuDNN, which is sliced but not chunked.
typedef struct piece_case {
    op_case op;
    size_t attention_bytes, conv_bytes; // 0: the default
    int64_t slice_elements;             // 0: the default
} piece_case;

static const piece_case piece_cases[] = {
    // a score row: 10 heads x ld 80 x 6 bytes forward, 12 backward: queries in chunks of 32
    // (32, 32, 32, 4) forward and of 16 (6 x 16, 4) backward
    {{"cross-attention 10 heads, 77 keys, in chunks of queries",
      run_attention10,
      3,
      {ACT(T3(2, 100, 640)), ACT(T3(2, 77, 640)), ACT(T3(2, 77, 640))},
      8,
      true},
     153600,
     0,
     0},
    // 2 heads x ld 80 x 6 (12) bytes: chunks of 25 (25, 25, 25, 2) and 12 (6 x 12, 5) queries;
    // the mask follows each chunk's first query
    {{"causal self-attention 2 heads x 64, 77 tokens, in chunks of queries",
      run_causal_attention2,
      3,
      {ACT(T3(2, 77, 128)), ACT(T3(2, 77, 128)), ACT(T3(2, 77, 128))},
      8,
      false},
     24000,
     0,
     0},
    // K = 27: 54 bytes a pixel forward, 27 x 6 + 128 x 2 = 418 backward: 512 pixels in chunks of
    // 148 (3 x 148, 68) and 19 (26 x 19, 18)
    {{"conv2d 3x3 3->128, implicit GEMM in chunks of pixels",
      run_conv3,
      3,
      {ACT(T4(2, 16, 16, 3)), ACT(T4(128, 3, 3, 3)), ACT(T1(128))},
      4,
      false},
     0,
     8000,
     0},
    // K = 1152: 2304 bytes a pixel forward, 7168 backward: 70 pixels in chunks of 20 (3 x 20,
    // 10) and 6 (11 x 6, 4); stride 2 and asymmetric padding
    {{"conv2d VAE downsample pads (0,1,0,1), implicit GEMM in chunks of pixels",
      run_conv_vae_down,
      3,
      {ACT(T4(2, 10, 14, 128)), ACT(T4(128, 3, 3, 128)), ACT(T1(128))},
      4,
      false},
     0,
     46080,
     0},
    // a sample's padded input is 11 x 15 x 128 = 21120 values: 5 samples in slices of 2, 2, 1
    {{"conv2d VAE downsample pads (0,1,0,1), 5 samples in slices along N",
      run_conv_vae_down,
      3,
      {ACT(T4(5, 10, 14, 128)), ACT(T4(128, 3, 3, 128)), ACT(T1(128))},
      4,
      false},
     0,
     0,
     2 * 21120},
    // a sample's output is 16 x 16 x 128 = 32768 values: slices of 2, 2, 1
    {{"conv2d 3x3 3->128, 5 samples in slices along N",
      run_conv3,
      3,
      {ACT(T4(5, 16, 16, 3)), ACT(T4(128, 3, 3, 3)), ACT(T1(128))},
      4,
      false},
     0,
     0,
     2 * 32768},
};

// Against the GPU under the default bounds, the same arithmetic in other groupings: a GEMM of
// another shape may sum in another order (cuBLAS picks its kernel by shape), dk, dv and dw add the
// pieces one by one (with cuDNN, each slice's dw rounded to bf16 first), and a bf16 output or
// probability may round one step the other way: factor 2.
static void test_pieces_match_the_default(void) {
    const piece_case *k = test_arg;
    const op_case *c = &k->op;
    void *host[MAX_IN];
    float *up = case_inputs(c, host);
    ldmc_ctx cpu, usual_ctx, pieces;
    test_ctx_init(&cpu);
    gpu_ctx_init(&usual_ctx);
    gpu_ctx_init(&pieces);
    op_result want = run_op(&cpu, c, host, up, false),
              usual = run_op(&usual_ctx, c, host, up, false);
    ldmc_cuda_set_chunk_bytes(k->attention_bytes, k->conv_bytes);
    ldmc_cuda_set_conv_slice_elements(k->slice_elements);
    op_result got = run_op(&pieces, c, host, up, false);
    ldmc_cuda_set_chunk_bytes(0, 0);
    ldmc_cuda_set_conv_slice_elements(0);
    check_results(c, "", &got, &want, bf16_rtol(c->factor));
    check_results(c, " (against the default pieces)", &got, &usual, bf16_rtol(2));
    for (int i = 0; i < c->n_in; i++)
        free(host[i]);
    free_result(&want, c->n_in);
    free_result(&usual, c->n_in);
    free_result(&got, c->n_in);
    free(up);
    ldmc_ctx_free(&cpu);
    ldmc_ctx_free(&usual_ctx);
    ldmc_ctx_free(&pieces);
}

// ---- the optimizer over the flat buffers --------------------------------------------------------

static void fill_role(ldmc_params *p, ldmc_param_role role, uint64_t seed, double scale) {
    test_fill(p->buffers[role], (int64_t)p->total, seed, scale, 0);
}

static double rel_l2(const float *a, const float *b, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++)
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), s += (double)b[i] * b[i];
    return sqrt(d / (s > 0 ? s : 1));
}

static void test_adamw_ema_and_norm_match_the_cpu(void) {
    ldmc_params cpu = {0}, gpu = {0};
    ldmc_params *both[2] = {&cpu, &gpu};
    for (int k = 0; k < 2; k++) {
        ldmc_params *p = both[k];
        ldmc_params_add(p, "w", 2, (int64_t[]){300, 70}, 0);
        ldmc_params_add(p, "bias", 1, (int64_t[]){70}, LDMC_PARAM_NO_DECAY);
        ldmc_params_add(p, "frozen", 1, (int64_t[]){33}, LDMC_PARAM_FROZEN);
        for (int r = 0; r < LDMC_ROLE_COUNT; r++)
            if (r != LDMC_ROLE_MASTER) ldmc_params_alloc(p, (ldmc_param_role)r);
        fill_role(p, LDMC_ROLE_WEIGHTS, 1, 1);
        fill_role(p, LDMC_ROLE_ADAM_M, 2, 0.01);
        fill_role(p, LDMC_ROLE_ADAM_V, 3, 1e-4);
        for (size_t i = 0; i < p->total; i++) // v must be non-negative
            p->buffers[LDMC_ROLE_ADAM_V][i] = fabsf(p->buffers[LDMC_ROLE_ADAM_V][i]);
        fill_role(p, LDMC_ROLE_EMA, 4, 1);
    }
    ldmc_params_to_device(&gpu);
    // the same gradients on both: written on the host, uploaded (frozen ones stay zero)
    float *g = calloc(cpu.total, sizeof *g); // padding between tensors stays zero
    for (int i = 0; i < 2; i++)
        test_fill(g + cpu.items[i].offset, cpu.items[i].numel, 5 + (uint64_t)i, 0.1, 0);
    memcpy(cpu.buffers[LDMC_ROLE_GRAD], g, cpu.total * sizeof *g);
    ldmc_cuda_to_device(gpu.device[LDMC_ROLE_GRAD], g, cpu.total * sizeof *g);
    double n_cpu = ldmc_grad_norm(&cpu), n_gpu = ldmc_grad_norm(&gpu);
    CHECK(fabs(n_cpu - n_gpu) <= 1e-9 * n_cpu, "gradient norm: CPU %.12g, GPU %.12g", n_cpu, n_gpu);
    ldmc_params_grad_scale(&cpu, 0.5);
    ldmc_params_grad_scale(&gpu, 0.5);
    ldmc_adamw opt = {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.01};
    for (int step = 1; step <= 3; step++) {
        ldmc_adamw_step(&cpu, &opt, 1e-3, step);
        ldmc_adamw_step(&gpu, &opt, 1e-3, step);
        ldmc_params_ema_update(&cpu, 0.9);
        ldmc_params_ema_update(&gpu, 0.9);
    }
    ldmc_params_to_host(&gpu); // master, m, v, EMA
    // the same f32 formulas; only a fused multiply-add or a library sqrtf can differ in a last bit
    for (int r = 0; r < LDMC_ROLE_COUNT; r++) {
        if (r == LDMC_ROLE_MASTER || r == LDMC_ROLE_GRAD) continue;
        double e = rel_l2(gpu.buffers[r], cpu.buffers[r], cpu.total);
        CHECK(e <= 1e-6, "%s after 3 AdamW steps: relative difference %.3g",
              ldmc_param_role_name((ldmc_param_role)r), e);
    }
    // the bf16 working copy is the master rounded (its high half: ldmc_f32_split), and the
    // master's other half is its low bits
    uint16_t *w16 = malloc(cpu.total * sizeof *w16), *lo16 = malloc(cpu.total * sizeof *lo16);
    ldmc_cuda_to_host(w16, gpu.device[LDMC_ROLE_WEIGHTS], cpu.total * sizeof *w16);
    ldmc_cuda_to_host(lo16, gpu.device[LDMC_ROLE_MASTER], cpu.total * sizeof *lo16);
    int64_t off = 0, ties = 0;
    for (size_t i = 0; i < cpu.total; i++) {
        uint16_t lo, hi = ldmc_f32_split(gpu.buffers[LDMC_ROLE_WEIGHTS][i], &lo);
        off += w16[i] != hi || lo16[i] != lo;
        ties += hi != ldmc_f32_to_bf16(gpu.buffers[LDMC_ROLE_WEIGHTS][i]);
    }
    CHECK(off == 0, "%lld bf16 weights are not the rounded master", (long long)off);
    CHECK(ties <= 2, "%lld of %zu working weights are not the master rounded to nearest even",
          (long long)ties, cpu.total);
    // the frozen parameter did not move
    const ldmc_param *fz = &cpu.items[2];
    for (int64_t i = 0; i < fz->numel; i++)
        CHECK(gpu.buffers[LDMC_ROLE_WEIGHTS][fz->offset + i] ==
                  cpu.buffers[LDMC_ROLE_WEIGHTS][fz->offset + i],
              "frozen value %lld moved", (long long)i);
    // the EMA swap exchanges the master (both halves) and the EMA exactly
    size_t bytes = cpu.total * sizeof(float);
    float *master = malloc(bytes), *ema = malloc(bytes);
    memcpy(master, gpu.buffers[LDMC_ROLE_WEIGHTS], bytes);
    memcpy(ema, gpu.buffers[LDMC_ROLE_EMA], bytes);
    ldmc_params_ema_swap(&gpu);
    ldmc_params_to_host(&gpu);
    CHECK(memcmp(gpu.buffers[LDMC_ROLE_WEIGHTS], ema, bytes) == 0 &&
              memcmp(gpu.buffers[LDMC_ROLE_EMA], master, bytes) == 0,
          "the EMA swap did not exchange the master and the EMA");
    ldmc_cuda_to_host(w16, gpu.device[LDMC_ROLE_WEIGHTS], cpu.total * sizeof *w16);
    for (size_t i = 0; i < cpu.total; i++) {
        uint16_t lo;
        CHECK(w16[i] == ldmc_f32_split(ema[i], &lo), "working weight %zu after the EMA swap", i);
    }
    free(master);
    free(ema);
    free(w16);
    free(lo16);
    free(g);
    ldmc_params_free(&cpu);
    ldmc_params_free(&gpu);
}

// The update of one parameter during backward (optim.fused_backward): Σ g² into a double in GPU
// memory, as the CPU sums it, and AdamW from the gradient the parameter's tensor points at, as
// the CPU's; a gradient with a NaN leaves the parameter, m and v as they were, on both.
static void test_guarded_adamw_matches_the_cpu(void) {
    ldmc_params cpu = {0}, gpu = {0};
    ldmc_params *both[2] = {&cpu, &gpu};
    for (int k = 0; k < 2; k++) {
        ldmc_params *p = both[k];
        ldmc_params_add(p, "w", 2, (int64_t[]){123, 45}, 0);
        ldmc_params_add(p, "b", 1, (int64_t[]){45}, LDMC_PARAM_NO_DECAY);
        for (int r = LDMC_ROLE_WEIGHTS; r <= LDMC_ROLE_ADAM_V; r++)
            if (r != LDMC_ROLE_MASTER) ldmc_params_alloc(p, (ldmc_param_role)r);
        fill_role(p, LDMC_ROLE_WEIGHTS, 31, 1);
        fill_role(p, LDMC_ROLE_GRAD, 32, 0.1);
    }
    ldmc_params_to_device(&gpu);
    ldmc_cuda_to_device(gpu.device[LDMC_ROLE_GRAD], cpu.buffers[LDMC_ROLE_GRAD],
                        cpu.total * sizeof(float));
    ldmc_adamw opt = {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.01};
    double cpu_sums[2], *gpu_sums = ldmc_gpu_malloc(2 * sizeof(double)), got[2];
    for (int i = 0; i < 2; i++) {
        ldmc_adamw_coeffs c = ldmc_adamw_coeffs_at(&opt, 1e-3, 1, cpu.items[i].flags);
        ldmc_params_adamw(&cpu, i, &c, &cpu_sums[i]);
        ldmc_params_adamw(&gpu, i, &c, &gpu_sums[i]);
    }
    ldmc_cuda_to_host(got, gpu_sums, sizeof got);
    for (int i = 0; i < 2; i++)
        CHECK(fabs(got[i] - cpu_sums[i]) <= 1e-12 * cpu_sums[i] && cpu_sums[i] > 0,
              "Σ g² of %s: GPU %.17g, CPU %.17g", cpu.items[i].name, got[i], cpu_sums[i]);
    // a NaN in b's gradient: b stays, w moves on
    float nan = NAN;
    size_t at = cpu.items[1].offset + 7;
    cpu.buffers[LDMC_ROLE_GRAD][at] = nan;
    ldmc_cuda_to_device((float *)gpu.device[LDMC_ROLE_GRAD] + at, &nan, sizeof nan);
    ldmc_params_to_host(&gpu);
    size_t bytes = cpu.total * sizeof(float);
    float *before = malloc(bytes);
    memcpy(before, gpu.buffers[LDMC_ROLE_WEIGHTS], bytes);
    for (int i = 0; i < 2; i++) {
        ldmc_adamw_coeffs c = ldmc_adamw_coeffs_at(&opt, 1e-3, 2, cpu.items[i].flags);
        ldmc_params_adamw(&cpu, i, &c, &cpu_sums[i]);
        ldmc_params_adamw(&gpu, i, &c, &gpu_sums[i]);
    }
    ldmc_cuda_to_host(got, gpu_sums, sizeof got);
    CHECK(isnan(cpu_sums[1]) && isnan(got[1]) && isfinite(got[0]), "sums with a NaN: %g %g", got[0],
          got[1]);
    ldmc_params_to_host(&gpu);
    const ldmc_param *b = &cpu.items[1], *w = &cpu.items[0];
    CHECK(memcmp(gpu.buffers[LDMC_ROLE_WEIGHTS] + b->offset, before + b->offset,
                 (size_t)b->numel * sizeof(float)) == 0,
          "a NaN gradient moved the GPU's parameter");
    CHECK(memcmp(gpu.buffers[LDMC_ROLE_WEIGHTS] + w->offset, before + w->offset,
                 (size_t)w->numel * sizeof(float)) != 0,
          "the parameter with a finite gradient did not move");
    for (int r = LDMC_ROLE_WEIGHTS; r <= LDMC_ROLE_ADAM_V; r++) {
        if (r == LDMC_ROLE_MASTER || r == LDMC_ROLE_GRAD) continue;
        double e = rel_l2(gpu.buffers[r], cpu.buffers[r], cpu.total);
        CHECK(e <= 1e-6, "%s after the guarded updates: relative difference %.3g",
              ldmc_param_role_name((ldmc_param_role)r), e);
    }
    free(before);
    ldmc_gpu_free(gpu_sums);
    ldmc_params_free(&cpu);
    ldmc_params_free(&gpu);
}

// ZeRO-1's table on the GPU (src/train/dist.h): the master's low halves only for the shard's
// range, the bf16 working weights whole. Up and down again, the range's f32 weights come back
// bit for bit; every working weight is its value rounded.
static void test_sharded_master_round_trip(void) {
    ldmc_params p = {0};
    ldmc_params_add(&p, "a", 2, (int64_t[]){40, 13}, 0);
    ldmc_params_add(&p, "b", 1, (int64_t[]){77}, LDMC_PARAM_NO_DECAY);
    ldmc_params_add(&p, "c", 2, (int64_t[]){9, 31}, 0);
    const size_t begin = p.items[1].offset, end = p.items[2].offset;
    ldmc_params_set_shard(&p, begin, end);
    ldmc_params_alloc(&p, LDMC_ROLE_WEIGHTS);
    ldmc_params_alloc(&p, LDMC_ROLE_EMA);
    test_fill(p.buffers[LDMC_ROLE_WEIGHTS], (int64_t)p.total, 21, 3, 0);
    float *want = malloc(p.total * sizeof *want);
    memcpy(want, p.buffers[LDMC_ROLE_WEIGHTS], p.total * sizeof *want);
    ldmc_params_ema_reset(&p);
    ldmc_params_to_device(&p);
    memset(p.buffers[LDMC_ROLE_WEIGHTS], 0, p.total * sizeof(float));
    ldmc_params_to_host(&p);
    for (size_t i = 0; i < p.total; i++) {
        float got = p.buffers[LDMC_ROLE_WEIGHTS][i];
        if (i >= begin && i < end)
            CHECK(memcmp(&got, &want[i], 4) == 0, "master %zu: %a, uploaded %a", i, got, want[i]);
        else
            CHECK(got == 0, "master %zu outside the shard came down: %a", i, got);
    }
    uint16_t *w16 = malloc(p.total * sizeof *w16);
    ldmc_cuda_to_host(w16, p.device[LDMC_ROLE_WEIGHTS], p.total * sizeof *w16);
    for (size_t i = 0; i < p.total; i++) {
        uint16_t lo;
        CHECK(w16[i] == ldmc_f32_split(want[i], &lo), "working weight %zu", i);
    }
    // the shard's EMA swap: the range's master becomes the EMA (here the weights again)
    ldmc_params_ema_swap(&p);
    ldmc_params_to_host(&p);
    for (size_t i = begin; i < end; i++)
        CHECK(p.buffers[LDMC_ROLE_WEIGHTS][i] == want[i], "swapped master %zu", i);
    free(w16);
    free(want);
    ldmc_params_free(&p);
}

// ---- whole training steps of the tiny models ----------------------------------------------------

// Cosine and norm ratio of two gradient buffers: bf16 compounds through a whole model, so the
// direction and the size are what must agree (and the loss, to bf16's precision).
// The cosine of two vectors, and the ratio of their norms |a| / |b|.
static double cosine(const float *a, const float *b, size_t n, double *norm_ratio) {
    double dot = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++)
        dot += (double)a[i] * b[i], aa += (double)a[i] * a[i], bb += (double)b[i] * b[i];
    if (norm_ratio) *norm_ratio = sqrt(aa / (bb + 1e-300));
    return dot / sqrt(aa * bb + 1e-300);
}

static void check_gradients(const char *what, const float *got, const float *want, size_t n) {
    double ratio, cos = cosine(got, want, n, &ratio);
    CHECK(cos >= 0.995 && fabs(ratio - 1) <= 0.03,
          "%s: GPU vs CPU parameter gradients: cosine %.5f (>= 0.995), norm ratio %.4f (1 +- "
          "0.03)",
          what, cos, ratio);
}

static void ready(ldmc_params *p) {
    ldmc_params_alloc(p, LDMC_ROLE_WEIGHTS);
    ldmc_params_alloc(p, LDMC_ROLE_GRAD);
    ldmc_params_alloc(p, LDMC_ROLE_ADAM_M);
    ldmc_params_alloc(p, LDMC_ROLE_ADAM_V);
    ldmc_params_init(p, 1234);
    // The zero-initialized layers (the UNet's last convolution, its residual blocks' second ones,
    // the transformers' proj_out: SGM's zero_module) drawn at random too: at init, they would
    // leave every gradient but the last layer's 0 on both devices, and nothing else compared.
    for (int i = 0; i < p->count; i++) {
        const ldmc_param *it = &p->items[i];
        if (it->init == LDMC_INIT_ZERO && it->ndim > 1)
            test_fill(p->buffers[LDMC_ROLE_WEIGHTS] + it->offset, it->numel, 300 + (uint64_t)i,
                      it->fan_in > 0 ? 1 / sqrt((double)it->fan_in) : 0.05, 0);
    }
    // bf16-exact weights: both devices start from the same numbers
    for (size_t i = 0; i < p->total; i++)
        p->buffers[LDMC_ROLE_WEIGHTS][i] =
            ldmc_bf16_to_f32(ldmc_f32_to_bf16(p->buffers[LDMC_ROLE_WEIGHTS][i]));
}

static float *bf16_exact(int64_t n, uint64_t seed, double scale) {
    float *x = malloc((size_t)n * sizeof *x);
    test_fill(x, n, seed, scale, 0);
    for (int64_t i = 0; i < n; i++)
        x[i] = ldmc_bf16_to_f32(ldmc_f32_to_bf16(x[i]));
    return x;
}

static double unet_step(ldmc_ctx *ctx, ldmc_unet *u, int B, int H, int W) {
    const ldmc_unet_config *c = &u->cfg;
    int64_t n = (int64_t)B * H * W * c->in_channels;
    float *x = bf16_exact(n, 1, 1), *target = bf16_exact(n, 2, 1), t[2] = {17, 803};
    int64_t labels[2] = {1, 3};
    ldmc_unet_cond cond = {0};
    ldmc_tensor *parts[LDMC_VECTOR_PART_COUNT] = {0};
    float *pooled = NULL, *ctxv = NULL, sizes[4] = {512, 768, 1024, 1024}, crops[4] = {0, 16, 8, 0};
    for (int i = 0; i < c->n_vector; i++) {
        ldmc_vector_part part = c->vector[i];
        int k = ldmc_vector_part_scalars(part);
        if (!k) {
            pooled = bf16_exact((int64_t)B * c->pooled_dim, 3, 1);
            parts[part] =
                ldmc_input(ctx, ctx->act_dtype, 2, (int64_t[]){B, c->pooled_dim}, pooled, LDMC_F32);
        } else {
            parts[part] = ldmc_input(ctx, LDMC_F32, 2, (int64_t[]){B, k},
                                     part == LDMC_VECTOR_CROP_COORDS ? crops : sizes, LDMC_F32);
        }
    }
    if (c->n_vector) cond.vector = ldmc_unet_vector(ctx, c, parts);
    if (c->n_classes) {
        cond.class_labels = ldmc_input(ctx, LDMC_I64, 1, (int64_t[]){B}, labels, LDMC_I64);
    } else if (c->context_dim) {
        ctxv = bf16_exact((int64_t)B * 77 * c->context_dim, 4, 1);
        cond.context =
            ldmc_input(ctx, ctx->act_dtype, 3, (int64_t[]){B, 77, c->context_dim}, ctxv, LDMC_F32);
    }
    int64_t shape[4] = {B, H, W, c->in_channels};
    ldmc_tensor *xin = ldmc_input(ctx, ctx->act_dtype, 4, shape, x, LDMC_F32);
    ldmc_tensor *tin = ldmc_input(ctx, LDMC_F32, 1, (int64_t[]){B}, t, LDMC_F32);
    ldmc_tensor *out = ldmc_unet_forward(ctx, u, xin, tin, &cond);
    ldmc_tensor *loss =
        ldmc_mse_loss(ctx, out, ldmc_input(ctx, LDMC_F32, 4, shape, target, LDMC_F32));
    double value = ctx->dry_run ? 0 : ldmc_read_scalar(loss); // (a dry run computes nothing)
    ldmc_backward(ctx, loss, NULL);
    free(x), free(target), free(pooled), free(ctxv);
    return value;
}

static void unet_step_run(ldmc_ctx *ctx, void *u) { unet_step(ctx, u, 2, 16, 16); }

static void check_unet_step(const char *config) {
    ldmc_model_config mc = test_model_config(config);
    ldmc_unet cpu_u, gpu_u;
    ldmc_unet_init(&cpu_u, &mc.unet);
    ldmc_unet_init(&gpu_u, &mc.unet);
    ready(&cpu_u.params);
    ready(&gpu_u.params);
    ldmc_params_to_device(&gpu_u.params);
    ldmc_ctx cpu, gpu;
    test_ctx_init(&cpu);
    gpu_ctx_init(&gpu);
    double l_cpu = unet_step(&cpu, &cpu_u, 2, 16, 16), l_gpu = unet_step(&gpu, &gpu_u, 2, 16, 16);
    CHECK(fabs(l_gpu - l_cpu) <= 0.02 * fabs(l_cpu), "%s loss: CPU %.6f, GPU %.6f", config, l_cpu,
          l_gpu);
    size_t n = cpu_u.params.total;
    float *g = malloc(n * sizeof *g);
    ldmc_cuda_to_host(g, gpu_u.params.device[LDMC_ROLE_GRAD], n * sizeof *g);
    check_gradients(config, g, cpu_u.params.buffers[LDMC_ROLE_GRAD], n);
    // one AdamW step from those gradients: the f32 masters move alike
    ldmc_adamw opt = {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.01};
    float *before = malloc(n * sizeof *before);
    memcpy(before, cpu_u.params.buffers[LDMC_ROLE_WEIGHTS], n * sizeof *before);
    ldmc_adamw_step(&cpu_u.params, &opt, 1e-3, 1);
    ldmc_adamw_step(&gpu_u.params, &opt, 1e-3, 1);
    ldmc_params_to_host(&gpu_u.params);
    for (size_t i = 0; i < n; i++) {
        g[i] = gpu_u.params.buffers[LDMC_ROLE_WEIGHTS][i] - before[i];
        before[i] = cpu_u.params.buffers[LDMC_ROLE_WEIGHTS][i] - before[i];
    }
    // Adam's first step is lr sign(g): a gradient element near zero may flip sign on bf16 noise
    double update_cos = cosine(g, before, n, NULL);
    CHECK(update_cos >= 0.9, "%s: the AdamW updates differ in direction (cosine %.4f)", config,
          update_cos);
    free(g);
    free(before);
    ldmc_ctx_free(&cpu);
    ldmc_ctx_free(&gpu);
    ldmc_unet_free(&cpu_u);
    ldmc_unet_free(&gpu_u);
}

static void test_tiny_unet_class_step_matches_the_cpu(void) {
    check_unet_step("tiny_unet_class.yaml");
}

static void test_tiny_unet_text_step_matches_the_cpu(void) {
    check_unet_step("tiny_unet_text.yaml");
}

static double vae_step(ldmc_ctx *ctx, ldmc_vae *v, const float *x, const int64_t *shape) {
    ldmc_tensor *xin = ldmc_input(ctx, ctx->act_dtype, 4, shape, x, LDMC_F32);
    ldmc_vae_posterior q = ldmc_vae_encode(ctx, v, xin);
    ldmc_tensor *eps = ldmc_new_like(ctx, q.mean);
    ldmc_rng rng = ldmc_rng_make(5, 0, 0, LDMC_RNG_LATENT);
    ldmc_fill_normal(eps, &rng, 0);
    ldmc_tensor *rec = ldmc_vae_decode(ctx, v, ldmc_vae_sample(ctx, &q, eps));
    ldmc_tensor *l1 = ldmc_l1_loss(ctx, rec, xin), *kl = ldmc_vae_kl(ctx, &q);
    double value = ldmc_read_scalar(l1);
    float s_kl[2] = {1e-3f, 1e-3f};
    ldmc_backward_many(ctx, (ldmc_tensor *[]){l1, kl}, (const float *[]){NULL, s_kl}, 2);
    return value;
}

static void test_tiny_vae_step_matches_the_cpu(void) {
    ldmc_model_config mc = test_model_config("tiny_vae.yaml");
    ldmc_vae cpu_v, gpu_v;
    ldmc_vae_init(&cpu_v, &mc.vae);
    ldmc_vae_init(&gpu_v, &mc.vae);
    ready(&cpu_v.params);
    ready(&gpu_v.params);
    ldmc_params_to_device(&gpu_v.params);
    ldmc_ctx cpu, gpu;
    test_ctx_init(&cpu);
    gpu_ctx_init(&gpu);
    int64_t shape[4] = {2, 32, 24, mc.vae.in_channels};
    float *x = bf16_exact(ldmc_shape_numel(4, shape), 7, 1);
    double l_cpu = vae_step(&cpu, &cpu_v, x, shape), l_gpu = vae_step(&gpu, &gpu_v, x, shape);
    CHECK(fabs(l_gpu - l_cpu) <= 0.02 * fabs(l_cpu), "VAE L1: CPU %.6f, GPU %.6f", l_cpu, l_gpu);
    size_t n = cpu_v.params.total;
    float *g = malloc(n * sizeof *g);
    ldmc_cuda_to_host(g, gpu_v.params.device[LDMC_ROLE_GRAD], n * sizeof *g);
    check_gradients("tiny VAE", g, cpu_v.params.buffers[LDMC_ROLE_GRAD], n);
    free(g);
    free(x);
    ldmc_ctx_free(&cpu);
    ldmc_ctx_free(&gpu);
    ldmc_vae_free(&cpu_v);
    ldmc_vae_free(&gpu_v);
}

// The tiny SDXL-shaped text encoders (CLIP-L-like, QuickGELU; bigG-like, GELU, pooled) on the GPU
// against the CPU: context and pooled text within bf16's reach, and every parameter's gradient
// of the MSE of the context and of the pooled text against fixed targets (the encoders'
// backward, for training them).
static double text_step(ldmc_ctx *ctx, ldmc_text_encoder *e, const int32_t *ids, float *out) {
    ldmc_tensor *context, *pooled;
    ldmc_text_encoder_forward(ctx, e, 2, ids, &context, &pooled);
    int64_t nc = ldmc_numel(context), np = pooled ? ldmc_numel(pooled) : 0;
    float *r = bf16_exact(nc + np, 21, 1);
    ldmc_tensor *losses[2] = {
        ldmc_mse_loss(ctx, context,
                      ldmc_input(ctx, LDMC_F32, context->ndim, context->shape, r, LDMC_F32)),
        pooled ? ldmc_mse_loss(ctx, pooled,
                               ldmc_input(ctx, LDMC_F32, 2, pooled->shape, r + nc, LDMC_F32))
               : NULL};
    ldmc_read_f32(context, out);
    if (pooled) ldmc_read_f32(pooled, out + nc);
    double value = ldmc_read_scalar(losses[0]) + (pooled ? ldmc_read_scalar(losses[1]) : 0);
    ldmc_backward_many(ctx, losses, (const float *[]){NULL, NULL}, pooled ? 2 : 1);
    free(r);
    return value;
}

static void test_text_encoders_match_the_cpu(void) {
    ldmc_model_config mc = test_model_config("tiny_unet_text.yaml");
    int32_t ids[2 * 77];
    for (int t = 0; t < 77; t++) { // a 6-token prompt padded as the convention says, a cut one
        ids[t] = t == 0 ? 998 : t < 7 ? 5 + 37 * t : t == 7 ? 999 : 0;
        ids[77 + t] = t == 0 ? 998 : t < 76 ? (13 * t) % 997 : 999;
    }
    for (int k = 0; k < mc.n_text; k++) {
        ldmc_text_encoder cpu_e, gpu_e;
        ldmc_text_encoder_init(&cpu_e, &mc.text[k]);
        ldmc_text_encoder_init(&gpu_e, &mc.text[k]);
        ready(&cpu_e.params);
        ready(&gpu_e.params);
        ldmc_params_to_device(&gpu_e.params);
        ldmc_ctx cpu, gpu;
        test_ctx_init(&cpu);
        gpu_ctx_init(&gpu);
        int64_t n_out = 2 * 77 * mc.text[k].width + 2 * mc.text[k].projection_dim;
        float *a = malloc((size_t)n_out * sizeof *a), *b = malloc((size_t)n_out * sizeof *b);
        double l_cpu = text_step(&cpu, &cpu_e, ids, a), l_gpu = text_step(&gpu, &gpu_e, ids, b);
        double ratio, cos = cosine(b, a, (size_t)n_out, &ratio);
        CHECK(cos >= 0.999 && fabs(ratio - 1) <= 0.01,
              "text encoder %d outputs: cosine %.5f, norm ratio %.4f", k, cos, ratio);
        CHECK(fabs(l_gpu - l_cpu) <= 0.03 * (fabs(l_cpu) + 1),
              "text encoder %d loss: CPU %.5f, GPU %.5f", k, l_cpu, l_gpu);
        size_t n = cpu_e.params.total;
        float *g = malloc(n * sizeof *g);
        ldmc_cuda_to_host(g, gpu_e.params.device[LDMC_ROLE_GRAD], n * sizeof *g);
        check_gradients(k ? "bigG-like text encoder" : "CLIP-L-like text encoder", g,
                        cpu_e.params.buffers[LDMC_ROLE_GRAD], n);
        free(g), free(a), free(b);
        ldmc_ctx_free(&cpu);
        ldmc_ctx_free(&gpu);
        ldmc_text_encoder_free(&cpu_e);
        ldmc_text_encoder_free(&gpu_e);
    }
}

// A step with recomputation (gradient checkpointing) moves region outputs inside the GPU arena
// (overlapping copies) and re-runs regions during backward: the same gradients as without it.
// Gradient checkpointing, and the transformers' projections made again in backward under a
// memory plan (the GPU's bf16 products once more, into planned memory): the plain gradients.
// The tiny text UNet (attention, GEGLU), its weights on the GPU.
static void tiny_text_unet_on_gpu(ldmc_unet *u) {
    ldmc_model_config mc = test_model_config("tiny_unet_text.yaml");
    ldmc_unet_init(u, &mc.unet);
    ready(&u->params);
    ldmc_params_to_device(&u->params);
}

static void test_recompute_on_the_gpu_changes_nothing(void) {
    ldmc_unet u;
    tiny_text_unet_on_gpu(&u);
    size_t n = u.params.total;
    float *plain = malloc(n * sizeof *plain), *other = malloc(n * sizeof *other);
    static const char *const what[] = {"", "recomputed gradients", "projections made again"};
    for (int k = 0; k < 3; k++) {
        ldmc_ctx gpu;
        gpu_ctx_init(&gpu);
        u.recompute = k == 1;
        u.recompute_projections = k == 2;
        ldmc_step_plan plan = {0};
        if (k == 2) {
            ldmc_plan_step(LDMC_CUDA, unet_step_run, &u, &plan);
            ldmc_ctx_use_plan(&gpu, &plan);
            gpu.plan_poison = true; // (memory freed filled with NaN bytes: emulated GPUs only)
        }
        ldmc_params_zero_grad(&u.params);
        unet_step(&gpu, &u, 2, 16, 16);
        ldmc_cuda_to_host(k ? other : plain, u.params.device[LDMC_ROLE_GRAD], n * sizeof(float));
        ldmc_ctx_free(&gpu);
        ldmc_plan_free(&plan);
        if (k) CHECK_CLOSE(what[k], other, plain, NULL, (int64_t)n, 1e-6);
    }
    free(plain);
    free(other);
    ldmc_unet_free(&u);
}

// bf16 activation gradients (core/tape.h) where a product reads them rounded anyway: the
// feed-forward's first product's (GEGLU writes it), q's, k's and v's (attention), the attention
// output's (the output projection writes it). Each is written once and read once, rounded where
// the f32 one would have been: every parameter's gradient comes out bit for bit as with f32
// gradients, but the biases of the products whose dy is bf16 (the column sums of the rounded
// values; here the feed-forward's first, ff.net.0.proj.bias), which stay within bf16's reach.
// Bit for bit where the kernels' products are emulated; on a GPU, cuBLAS may sum a product with a
// bf16 output in another order than with an f32 one: within bf16's reach there. Again with
// attention in chunks of 32 queries (the CUDA kernels, on a GPU or in the SIMT build; the
// emulation has no chunks), where dk and dv in bf16 sum the chunks in f32 first.
static void test_bf16_gradients_change_no_bit(void) {
    ldmc_unet u;
    tiny_text_unet_on_gpu(&u);
    size_t n = u.params.total;
    float *g[2] = {malloc(n * sizeof(float)), malloc(n * sizeof(float))};
    for (int chunked = 0; chunked < 2; chunked++) {
        // 256 tokens, 2 heads: 2 x 256 scores of 12 bytes a query in backward
        ldmc_cuda_set_chunk_bytes(chunked ? 2 * 256 * 12 * 32 : 0, 0);
        int64_t bytes[2], bf16_bytes[2];
        for (int k = 0; k < 2; k++) {
            ldmc_ctx gpu;
            gpu_ctx_init(&gpu);
            CHECK(gpu.bf16_grads, "a GPU context has bf16 gradients on by default");
            gpu.bf16_grads = k == 1;
            ldmc_params_zero_grad(&u.params);
            unet_step(&gpu, &u, 2, 16, 16);
            ldmc_cuda_to_host(g[k], u.params.device[LDMC_ROLE_GRAD], n * sizeof(float));
            bytes[k] = gpu.grad_bytes, bf16_bytes[k] = gpu.grad_bytes_bf16;
            ldmc_ctx_free(&gpu);
        }
        const char *how = chunked ? " (attention in chunks)" : "";
        CHECK(bf16_bytes[0] == 0 && bf16_bytes[1] > 0,
              "bf16 gradient bytes%s: %lld with them off, %lld on", how, (long long)bf16_bytes[0],
              (long long)bf16_bytes[1]);
        // each bf16 gradient takes half the bytes of its f32 twin
        CHECK(bytes[0] - bytes[1] == bf16_bytes[1],
              "gradient bytes%s: %lld in f32, %lld with %lld of them bf16", how,
              (long long)bytes[0], (long long)bytes[1], (long long)bf16_bytes[1]);
        int exact = 0, biases = 0;
        for (int i = 0; i < u.params.count; i++) {
            const ldmc_param *p = &u.params.items[i];
            const float *a = g[0] + p->offset, *b = g[1] + p->offset;
            if (strstr(p->name, "ff.net.0.proj.bias")) {
                char what[256];
                snprintf(what, sizeof what, "%s from bf16 dy%s", p->name, how);
                // each of its 128 summands rounded to bf16 (2^-9 relative): a sum that cancels
                // keeps their errors (about 1% of |want| + rms here, the exact figure depending
                // on the build's order of sums)
                CHECK_CLOSE(what, b, a, NULL, p->numel, 5e-2);
                biases++;
                continue;
            }
#ifdef LDMC_CUDA_EMULATED
            CHECK(memcmp(a, b, (size_t)p->numel * sizeof(float)) == 0,
                  "%s: its gradient changed with bf16 activation gradients%s", p->name, how);
#else // cuBLAS may pick another kernel (another order of sums) for a bf16 output
            char what[256];
            snprintf(what, sizeof what, "%s with bf16 activation gradients%s", p->name, how);
            CHECK_CLOSE_SCALED(what, b, a, NULL, p->numel, 1e-2, 1e-6);
#endif
            exact++;
        }
        CHECK(biases > 0 && exact > biases, "%d parameters compared bit for bit, %d biases", exact,
              biases);
    }
    ldmc_cuda_set_chunk_bytes(0, 0);
    free(g[0]);
    free(g[1]);
    ldmc_unet_free(&u);
}

int main(int argc, char **argv) {
    if (ldmc_cuda_device_count() == 0) {
        printf("no CUDA device (%s): skipped\n", ldmc_cuda_unavailable_reason());
        return 77;
    }
    ldmc_cuda_print_info(stdout);
    enum { N_OPS = sizeof op_cases / sizeof op_cases[0] };
    enum { N_PIECES = sizeof piece_cases / sizeof piece_cases[0] };
    static test_entry tests[12 + N_OPS + N_PIECES];
    int n = 0;
    tests[n++] = (test_entry)TEST_ENTRY(test_philox_streams_match_the_cpu);
    tests[n++] = (test_entry)TEST_ENTRY(test_bf16_conversions_match_the_cpu);
    tests[n++] = (test_entry)TEST_ENTRY(test_diffusion_ops_match_the_cpu);
    for (int i = 0; i < N_OPS; i++)
        tests[n++] = (test_entry){op_cases[i].name, test_ops_match_the_cpu, &op_cases[i]};
    for (int i = 0; i < N_PIECES; i++)
        tests[n++] =
            (test_entry){piece_cases[i].op.name, test_pieces_match_the_default, &piece_cases[i]};
    tests[n++] = (test_entry)TEST_ENTRY(test_adamw_ema_and_norm_match_the_cpu);
    tests[n++] = (test_entry)TEST_ENTRY(test_sharded_master_round_trip);
    tests[n++] = (test_entry)TEST_ENTRY(test_guarded_adamw_matches_the_cpu);
    tests[n++] = (test_entry)TEST_ENTRY(test_tiny_unet_class_step_matches_the_cpu);
    tests[n++] = (test_entry)TEST_ENTRY(test_tiny_unet_text_step_matches_the_cpu);
    tests[n++] = (test_entry)TEST_ENTRY(test_tiny_vae_step_matches_the_cpu);
    tests[n++] = (test_entry)TEST_ENTRY(test_text_encoders_match_the_cpu);
    tests[n++] = (test_entry)TEST_ENTRY(test_recompute_on_the_gpu_changes_nothing);
    tests[n++] = (test_entry)TEST_ENTRY(test_bf16_gradients_change_no_bit);
    return test_main(argc, argv, tests, n);
}
