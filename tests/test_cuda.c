// The CUDA kernels (kernels/*.cu) against their CPU twins: Philox streams bit for bit, bf16
// conversions bit for bit, and the elementwise ops within the bf16 tolerance (harness.h's rule
// with bf16's epsilon, 2^-7, in place of float's). Needs a GPU: `ctest -L cuda`; without one
// it reports itself skipped (exit code 77).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "core/rng.h"
#include "harness.h"
#include "kernels/ldmc_cuda.h"
#include "ops/cpu_kernels.h"

#define BF16_EPSILON 0x1p-7

enum { N = 1 << 20 };

static void test_philox_streams_match_the_cpu(void) {
    ldmc_rng rng = ldmc_rng_make(0xfeedbeef12345ull, 17, 2, LDMC_RNG_NOISE);
    float *cpu = malloc(N * sizeof *cpu), *gpu = malloc(N * sizeof *gpu);
    float *dev = ldmc_cuda_malloc(N * sizeof *dev);
    for (int kind = 0; kind < 2; kind++) {
        uint64_t offset = 1 + (uint64_t)kind * 12345; // odd: pairs straddle the start
        if (kind == 0) {
            ldmc_rng_uniform(&rng, offset, N, cpu);
            ldmc_cuda_rng_uniform(&rng, offset, N, dev, NULL);
        } else {
            ldmc_rng_normal(&rng, offset, N, cpu);
            ldmc_cuda_rng_normal(&rng, offset, N, dev, NULL);
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
    ldmc_cuda_f32_to_bf16(dh, dx, N, NULL);
    ldmc_cuda_bf16_to_f32(dback, dh, N, NULL);
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

// Rounds f32 values to bf16 (what the GPU stores) and back.
static void round_bf16(float *x, int64_t n, uint16_t *bits) {
    for (int64_t i = 0; i < n; i++) {
        bits[i] = ldmc_f32_to_bf16(x[i]);
        x[i] = ldmc_bf16_to_f32(bits[i]);
    }
}

static void test_elementwise_ops_match_the_cpu(void) {
    float *x = malloc(N * sizeof *x), *b = malloc(N * sizeof *b), *dy = malloc(N * sizeof *dy);
    float *want = malloc(N * sizeof *want), *got = malloc(N * sizeof *got);
    uint16_t *hx = malloc(N * 2), *hb = malloc(N * 2), *hdy = malloc(N * 2), *hout = malloc(N * 2);
    test_fill(x, N, 1, 6, 0);
    test_fill(b, N, 2, 1, 0);
    test_fill(dy, N, 3, 1, 0);
    round_bf16(x, N, hx);
    round_bf16(b, N, hb);
    round_bf16(dy, N, hdy);
    uint16_t *dx = ldmc_cuda_malloc(N * 2), *db = ldmc_cuda_malloc(N * 2),
             *ddy = ldmc_cuda_malloc(N * 2);
    uint16_t *dout = ldmc_cuda_malloc(N * 2);
    ldmc_cuda_to_device(dx, hx, N * 2);
    ldmc_cuda_to_device(db, hb, N * 2);
    ldmc_cuda_to_device(ddy, hdy, N * 2);
    double rtol = 4 * BF16_EPSILON; // the output is rounded to bf16 once: half an ulp, times 4

    silu_forward_f32(want, x, N);
    ldmc_cuda_silu_forward_bf16(dout, dx, N, NULL);
    ldmc_cuda_to_host(hout, dout, N * 2);
    for (int i = 0; i < N; i++)
        got[i] = ldmc_bf16_to_f32(hout[i]);
    CHECK_CLOSE("silu forward (bf16)", got, want, NULL, N, rtol);

    memset(want, 0, N * sizeof *want);
    silu_backward_f32(want, dy, x, N);
    ldmc_cuda_zero(dout, N * 2);
    ldmc_cuda_silu_backward_bf16(dout, ddy, dx, N, NULL);
    ldmc_cuda_to_host(hout, dout, N * 2);
    for (int i = 0; i < N; i++)
        got[i] = ldmc_bf16_to_f32(hout[i]);
    CHECK_CLOSE("silu backward (bf16)", got, want, NULL, N, rtol);

    add_forward_f32(want, x, b, N);
    ldmc_cuda_add_bf16(dout, dx, db, N, NULL);
    ldmc_cuda_to_host(hout, dout, N * 2);
    for (int i = 0; i < N; i++)
        got[i] = ldmc_bf16_to_f32(hout[i]);
    CHECK_CLOSE("add (bf16)", got, want, NULL, N, rtol);

    ldmc_cuda_free(dx);
    ldmc_cuda_free(db);
    ldmc_cuda_free(ddy);
    ldmc_cuda_free(dout);
    free(x), free(b), free(dy), free(want), free(got), free(hx), free(hb), free(hdy), free(hout);
}

int main(int argc, char **argv) {
    if (ldmc_cuda_device_count() == 0) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    ldmc_cuda_print_info(stdout);
    static const test_entry tests[] = {
        TEST_ENTRY(test_philox_streams_match_the_cpu),
        TEST_ENTRY(test_bf16_conversions_match_the_cpu),
        TEST_ENTRY(test_elementwise_ops_match_the_cpu),
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
