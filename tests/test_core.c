// The core: dtype conversions, the arena, the Philox streams, the parameter table, tensors,
// errors and the thread setting.
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "core/dtype.h"
#include "core/memplan.h"
#include "core/params.h"
#include "core/rng.h"
#include "core/tape.h"
#include "core/threads.h"
#include "harness.h"

static float float_of(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

static void test_dtype_names_and_sizes(void) {
    static const char *names[] = {"F32", "BF16", "F16", "I32", "I64"};
    static const size_t sizes[] = {4, 2, 2, 4, 8};
    for (int i = 0; i < LDMC_DTYPE_COUNT; i++) {
        ldmc_dtype d;
        CHECK(ldmc_dtype_parse(names[i], &d) == 0 && d == (ldmc_dtype)i, "parse %s", names[i]);
        CHECK(strcmp(ldmc_dtype_name((ldmc_dtype)i), names[i]) == 0, "name of %d", i);
        CHECK(ldmc_dtype_size((ldmc_dtype)i) == sizes[i], "size of %s", names[i]);
    }
    ldmc_dtype d;
    CHECK(ldmc_dtype_parse("F64", &d) != 0 && ldmc_dtype_parse("f32", &d) != 0, "unknown dtypes");
}

// Every bf16 and f16 value converts to f32 and back unchanged (NaNs stay NaN).
static void test_half_types_round_trip(void) {
    for (uint32_t h = 0; h < 65536; h++) {
        float b = ldmc_bf16_to_f32((uint16_t)h), f = ldmc_f16_to_f32((uint16_t)h);
        if (isnan(b))
            CHECK(isnan(ldmc_bf16_to_f32(ldmc_f32_to_bf16(b))), "bf16 NaN %04x", h);
        else
            CHECK(ldmc_f32_to_bf16(b) == h, "bf16 %04x -> %g -> %04x", h, b, ldmc_f32_to_bf16(b));
        if (isnan(f))
            CHECK(isnan(ldmc_f16_to_f32(ldmc_f32_to_f16(f))), "f16 NaN %04x", h);
        else
            CHECK(ldmc_f32_to_f16(f) == h, "f16 %04x -> %g -> %04x", h, f, ldmc_f32_to_f16(f));
    }
}

static void test_half_types_rounding(void) {
    // bf16 keeps 8 bits of mantissa: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 -> even (1)
    CHECK(ldmc_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80, "bf16 tie to even (down)");
    CHECK(ldmc_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82, "bf16 tie to even (up)");
    CHECK(ldmc_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 0x3f81, "bf16 above half rounds up");
    CHECK(ldmc_f32_to_bf16(INFINITY) == 0x7f80 && ldmc_f32_to_bf16(-INFINITY) == 0xff80,
          "bf16 inf");
    CHECK(ldmc_f32_to_bf16(FLT_MAX) == 0x7f80, "bf16 FLT_MAX rounds to inf");
    // f16: max 65504; 65519.99 rounds to 65504, 65520 to inf
    CHECK(ldmc_f32_to_f16(65504.0f) == 0x7bff, "f16 max");
    CHECK(ldmc_f32_to_f16(65519.0f) == 0x7bff, "f16 just below the rounding edge");
    CHECK(ldmc_f32_to_f16(65520.0f) == 0x7c00, "f16 overflow to inf");
    CHECK(ldmc_f32_to_f16(-1e9f) == 0xfc00, "f16 -inf");
    CHECK(ldmc_f32_to_f16(0x1p-24f) == 0x0001, "smallest f16 subnormal");
    CHECK(ldmc_f32_to_f16(0x1p-25f) == 0x0000, "half the smallest subnormal: tie to even (0)");
    CHECK(ldmc_f32_to_f16(0x1.8p-24f) == 0x0002, "1.5 x 2^-24: tie to even (2)");
    CHECK(ldmc_f32_to_f16(0x1.4p-24f) == 0x0001, "1.25 x 2^-24 rounds down");
    CHECK(ldmc_f32_to_f16(0x1.ffcp-15f) == 0x0400,
          "largest subnormal carry into the smallest normal");
    CHECK(ldmc_f32_to_f16(-0.0f) == 0x8000, "negative zero");
    CHECK(ldmc_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00, "f16 tie to even (down)");
    CHECK(ldmc_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02, "f16 tie to even (up)");
#ifdef __FLT16_MAX__
    // Against the compiler's own _Float16 conversion, over many bit patterns.
    ldmc_rng rng = ldmc_rng_make(5, 0, 0, LDMC_RNG_TEST);
    for (uint64_t i = 0; i < 200000; i++) {
        float x = float_of(ldmc_rng_bits(&rng, i));
        if (isnan(x)) continue;
        _Float16 h = (_Float16)x;
        uint16_t want;
        memcpy(&want, &h, 2);
        CHECK(ldmc_f32_to_f16(x) == want, "f16(%a): got %04x, want %04x", x, ldmc_f32_to_f16(x),
              want);
    }
#endif
}

// The GPU's f32 master as two halves (ldmc_f32_split): every high half with low halves at and
// around the rounding edge and random ones. The f32 comes back bit for bit; the high half is
// the bf16 rounding (ties away from zero instead of to even: only a low half of exactly 0x8000).
static void test_master_split_is_exact(void) {
    ldmc_rng rng = ldmc_rng_make(11, 0, 0, LDMC_RNG_TEST);
    static const uint16_t edges[] = {0, 1, 0x7fff, 0x8000, 0x8001, 0xffff};
    enum { EDGES = sizeof edges / sizeof edges[0], LOWS = EDGES + 4 };
    int64_t ties = 0;
    for (uint32_t top = 0; top < 65536; top++) {
        for (int j = 0; j < LOWS; j++) {
            uint32_t low = j < EDGES ? edges[j] : ldmc_rng_bits(&rng, top * LOWS + j) & 0xffffu;
            uint32_t u = top << 16 | low;
            float x = float_of(u);
            uint16_t lo, hi = ldmc_f32_split(x, &lo);
            float back = ldmc_f32_join(hi, lo);
            if (isnan(x)) {
                CHECK(isnan(back) && isnan(ldmc_bf16_to_f32(hi)), "NaN %08x: %a, hi %04x", u, back,
                      hi);
                continue;
            }
            uint32_t ub;
            memcpy(&ub, &back, 4);
            CHECK(ub == u, "%08x split into %04x %04x joins to %08x", u, hi, lo, ub);
            uint16_t even = ldmc_f32_to_bf16(x);
            if (low == 0x8000 && (top & 1) == 0) {
                // a tie with an even high half: to even keeps it, away from zero goes one up
                CHECK(hi == top + 1 && even == top, "tie %08x: %04x (to even %04x)", u, hi, even);
                ties++;
            } else {
                CHECK(hi == even, "%08x: bf16 half %04x, rounded to nearest %04x", u, hi, even);
            }
        }
    }
    CHECK(ties > 30000, "%lld ties checked", (long long)ties);
    // the largest finite values round to infinity, and still join back
    uint16_t lo, hi = ldmc_f32_split(FLT_MAX, &lo);
    CHECK(hi == 0x7f80 && ldmc_f32_join(hi, lo) == FLT_MAX, "FLT_MAX: %04x %04x", hi, lo);
    hi = ldmc_f32_split(-0.0f, &lo);
    CHECK(hi == 0x8000 && lo == 0 && signbit(ldmc_f32_join(hi, lo)), "-0");
}

static void test_convert(void) {
    float src[5] = {1.0f, -2.5f, 65504.0f, 0.1f, 0.0f}, back[5];
    uint16_t half[5];
    CHECK(ldmc_convert(half, LDMC_F16, src, LDMC_F32, 5) == 0, "f32 -> f16");
    CHECK(ldmc_convert(back, LDMC_F32, half, LDMC_F16, 5) == 0, "f16 -> f32");
    for (int i = 0; i < 5; i++)
        CHECK(fabsf(back[i] - src[i]) <= fabsf(src[i]) * 0x1p-11f, "value %d", i);
    uint16_t bf[5];
    CHECK(ldmc_convert(bf, LDMC_BF16, half, LDMC_F16, 5) == 0, "f16 -> bf16");
    CHECK(ldmc_bf16_to_f32(bf[1]) == -2.5f, "f16 -> bf16 value");
    int32_t ints[2] = {1, 2};
    CHECK(ldmc_convert(back, LDMC_F32, ints, LDMC_I32, 2) != 0, "i32 -> f32 refused");
}

static void test_arena(void) {
    ldmc_arena a;
    ldmc_arena_init(&a, "test", 1 << 20);
    char *p = ldmc_arena_alloc(&a, 10), *q = ldmc_arena_alloc(&a, 100);
    CHECK(((uintptr_t)p % LDMC_ARENA_ALIGN) == 0 && ((uintptr_t)q % LDMC_ARENA_ALIGN) == 0,
          "alignment");
    CHECK(q >= p + 10, "no overlap");
    size_t mark = ldmc_arena_mark(&a);
    memset(ldmc_arena_alloc(&a, 5000), 0xab, 5000);
    size_t high = a.high_water;
    CHECK(high >= mark + 5000, "high-water mark %zu", high);
    ldmc_arena_release(&a, mark);
    CHECK(a.used == mark && a.high_water == high, "release keeps the high-water mark");
    unsigned char *z = ldmc_arena_calloc(&a, 5000);
    bool zero = true;
    for (int i = 0; i < 5000; i++)
        zero &= z[i] == 0;
    CHECK(zero, "calloc after reuse is zeroed");
    EXPECT_FATAL(ldmc_arena_alloc(&a, 2 << 20), "test arena exhausted");
    ldmc_arena_reset(&a);
    CHECK(a.used == 0, "reset");
    ldmc_arena_free(&a);
}

static void test_philox_known_answers(void) {
    // Random123's kat_vectors for philox4x32_10: counter, key, result
    static const uint32_t kat[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d,
         0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09,
         0x94fdcceb, 0x5001e420, 0x24126ea1},
    };
    for (int k = 0; k < 3; k++) {
        uint32_t out[4];
        ldmc_philox4x32_10(kat[k], kat[k] + 4, out);
        for (int i = 0; i < 4; i++)
            CHECK(out[i] == kat[k][6 + i], "vector %d word %d: %08x != %08x", k, i, out[i],
                  kat[k][6 + i]);
    }
}

static void test_rng_streams(void) {
    ldmc_rng rng = ldmc_rng_make(0x123456789abcdefull, 7, 3, LDMC_RNG_NOISE);
    CHECK(rng.key[0] == 0x89abcdef && rng.key[1] == 0x01234567, "key from the seed");
    CHECK(rng.ctr_hi[0] == 7 && rng.ctr_hi[1] == ((3u << 16) | LDMC_RNG_NOISE), "counter words");
    enum { N = 1000 };
    float u[N], shifted[N - 5], s[N];
    ldmc_rng_uniform(&rng, 0, N, u);
    ldmc_rng_uniform(&rng, 5, N - 5, shifted);
    ldmc_rng_signed_uniform(&rng, 0, N, s);
    for (int i = 0; i < N; i++) {
        uint32_t bits = ldmc_rng_bits(&rng, (uint64_t)i);
        CHECK(u[i] == (float)(bits >> 8) * 0x1p-24f && u[i] >= 0 && u[i] < 1, "uniform %d", i);
        CHECK(s[i] == (float)((int32_t)(bits >> 8) - (1 << 23)) * 0x1p-23f && s[i] >= -1 &&
                  s[i] < 1,
              "signed uniform %d", i);
        if (i >= 5) CHECK(shifted[i - 5] == u[i], "offset %d", i);
    }
    // Each key field changes the stream.
    ldmc_rng others[4] = {ldmc_rng_make(0x123456789abcdeeull, 7, 3, LDMC_RNG_NOISE),
                          ldmc_rng_make(0x123456789abcdefull, 8, 3, LDMC_RNG_NOISE),
                          ldmc_rng_make(0x123456789abcdefull, 7, 4, LDMC_RNG_NOISE),
                          ldmc_rng_make(0x123456789abcdefull, 7, 3, LDMC_RNG_DROPOUT)};
    for (int k = 0; k < 4; k++) {
        int same = 0;
        for (int i = 0; i < 64; i++)
            same += ldmc_rng_bits(&others[k], (uint64_t)i) == ldmc_rng_bits(&rng, (uint64_t)i);
        CHECK(same < 2, "stream %d repeats the base stream (%d of 64 equal)", k, same);
    }
}

// Moments of a million draws, each within 6 standard errors of its expectation.
static void test_rng_distributions(void) {
    enum { N = 1 << 20 };
    float *x = malloc(N * sizeof *x);
    ldmc_rng rng = ldmc_rng_make(42, 0, 0, LDMC_RNG_NOISE);
    ldmc_rng_uniform(&rng, 0, N, x);
    double m1 = 0, m2 = 0;
    for (int i = 0; i < N; i++) {
        m1 += x[i];
        m2 += (double)x[i] * x[i];
    }
    m1 /= N;
    m2 /= N;
    CHECK(fabs(m1 - 0.5) < 6 * sqrt(1.0 / 12 / N), "uniform mean %g", m1);
    CHECK(fabs(m2 - 1.0 / 3) < 6 * sqrt((1.0 / 5 - 1.0 / 9) / N), "uniform second moment %g", m2);
    ldmc_rng_normal(&rng, 0, N, x);
    double n1 = 0, n2 = 0, n4 = 0;
    for (int i = 0; i < N; i++) {
        double v = x[i];
        n1 += v;
        n2 += v * v;
        n4 += v * v * v * v;
    }
    n1 /= N;
    n2 /= N;
    n4 /= N;
    CHECK(fabs(n1) < 6 / sqrt(N), "normal mean %g", n1);
    CHECK(fabs(n2 - 1) < 6 * sqrt(2.0 / N), "normal variance %g", n2);
    CHECK(fabs(n4 - 3) < 6 * sqrt(96.0 / N), "normal fourth moment %g", n4);
    // Value i of the normal stream is Box-Muller on uniforms (i & ~1, i | 1), cos for even i.
    double u0 = (double)(ldmc_rng_bits(&rng, 10) >> 8) * 0x1p-24;
    double u1 = (double)(ldmc_rng_bits(&rng, 11) >> 8) * 0x1p-24;
    double r = sqrt(-2 * log(1 - u0)), a = 2 * M_PI * u1;
    CHECK(x[10] == (float)(r * cos(a)) && x[11] == (float)(r * sin(a)), "Box-Muller pair");
    free(x);
}

static void test_params_table(void) {
    ldmc_params p = {0};
    int a = ldmc_params_add(&p, "in.weight", 2, (int64_t[]){3, 5}, 0);
    int b = ldmc_params_add(&p, "in.bias", 1, (int64_t[]){3}, LDMC_PARAM_NO_DECAY);
    int c = ldmc_params_add(&p, "norm.weight", 1, (int64_t[]){7}, LDMC_PARAM_NO_DECAY);
    EXPECT_FATAL(ldmc_params_add(&p, "in.bias", 1, (int64_t[]){3}, 0), "added twice");
    CHECK(a == 0 && b == 1 && c == 2 && p.count == 3, "indices");
    CHECK(p.items[0].offset == 0 && p.items[1].offset == 16 && p.items[2].offset == 32,
          "64-byte aligned offsets: %zu %zu %zu", p.items[0].offset, p.items[1].offset,
          p.items[2].offset);
    CHECK(ldmc_params_count(&p, false) == 25, "count %lld",
          (long long)ldmc_params_count(&p, false));
    CHECK(ldmc_params_find(&p, "norm.weight") == 2 && ldmc_params_find(&p, "nope") < 0, "find");
    CHECK(ldmc_params_flag_matching(&p, "in.*", LDMC_PARAM_FROZEN, true) == 2, "glob match");
    CHECK(ldmc_params_count(&p, true) == 7, "trainable count");
    ldmc_params_alloc(&p, LDMC_ROLE_WEIGHTS);
    ldmc_params_alloc(&p, LDMC_ROLE_GRAD);
    ldmc_params_alloc(&p, LDMC_ROLE_ADAM_M);
    EXPECT_FATAL(ldmc_params_add(&p, "late", 1, (int64_t[]){1}, 0), "after the buffers");
    ldmc_tensor *w = ldmc_params_tensor(&p, 0), *n = ldmc_params_tensor(&p, 2);
    CHECK(w->data == p.buffers[LDMC_ROLE_WEIGHTS] && !w->requires_grad && !w->grad, "frozen view");
    CHECK(n->data == p.buffers[LDMC_ROLE_WEIGHTS] + 32 &&
              n->grad == p.buffers[LDMC_ROLE_GRAD] + 32 && n->requires_grad && n->is_param &&
              strcmp(n->name, "norm.weight") == 0,
          "trainable view");
    CHECK(ldmc_params_flag_matching(&p, "in.*", LDMC_PARAM_FROZEN, false) == 2 &&
              ldmc_params_tensor(&p, 0)->requires_grad,
          "unfreeze re-binds the views");
    n->grad[0] = 3;
    ldmc_params_zero_grad(&p);
    CHECK(n->grad[0] == 0, "zero_grad");
    ldmc_params_free(&p);
}

static void test_tensor_helpers(void) {
    float data[6];
    ldmc_tensor t = ldmc_tensor_wrap(LDMC_F32, data, 3, (int64_t[]){1, 2, 3});
    char buf[64];
    CHECK(strcmp(ldmc_shape_str(&t, buf, sizeof buf), "(1, 2, 3)") == 0, "shape string %s", buf);
    CHECK(ldmc_numel(&t) == 6 && ldmc_nbytes(&t) == 24, "numel");
    ldmc_tensor h = ldmc_tensor_wrap(LDMC_BF16, data, 1, (int64_t[]){4});
    h.name = "half";
    EXPECT_FATAL(ldmc_data_f32(&h), "tensor 'half' is BF16");
    EXPECT_FATAL(ldmc_tensor_wrap(LDMC_F32, data, 7, (int64_t[]){1, 1, 1, 1, 1, 1, 1}), "rank 7");
}

static void test_errors(void) {
    ldmc_err err = {0};
    CHECK(LDMC_ERR(&err, "first %d", 1) == -1 && err.failed, "LDMC_ERR returns -1");
    LDMC_ERR(&err, "second");
    CHECK(strncmp(err.message, "first 1 (tests/test_core.c:", 27) == 0, "first message kept: %s",
          err.message);
    ldmc_err_clear(&err);
    CHECK(!err.failed && err.message[0] == 0, "clear");
    EXPECT_FATAL(LDMC_CHECK(1 == 2, "broken %s", "invariant"), "tests/test_core.c:");
    EXPECT_FATAL(LDMC_FATAL("named %s", "thing"), "named thing");
}

static void test_threads(void) {
    int before = ldmc_threads_get();
    ldmc_threads_set(1);
    CHECK(ldmc_threads_get() == 1, "set 1");
    ldmc_threads_set(before);
    CHECK(ldmc_threads_get() == before, "restore");
}

// The memory plan's placement: random intervals of random sizes (some released by a mark, some
// live to the end) never share bytes while both are live; the top is at least the most bytes
// live at once and, on these, within 10% of it; records come out in order of death.
static void test_memory_plan_placement(void) {
    ldmc_step_plan p = {0};
    uint64_t state = 12345;
    int64_t tick = 0;
    for (int i = 0; i < 3000; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        size_t bytes = 1 + (size_t)(state >> 40) % 100000;
        int slot = ldmc_plan_add(&p, bytes, (size_t)i, tick, (ldmc_mem_kind)(i % 3 == 2), "t");
        ldmc_plan_use(&p, slot, tick + (int64_t)((state >> 20) % 200), i % 5 != 0);
        if (i % 7 == 0) tick++;
        if (i % 500 == 499) ldmc_plan_release(&p, (size_t)i - 20, tick++);
    }
    int slot = ldmc_plan_add(&p, 0, 3000, tick, LDMC_MEM_DATA, "empty");
    ldmc_plan_use(&p, slot, tick, true);
    ldmc_plan_finish(&p, tick + 300);
    CHECK(p.recs[0].dies == p.end, "a record no op reads lives to the end");
    int bad = 0;
    for (int i = 0; i < p.n && !bad; i++)
        for (int j = i + 1; j < p.n; j++) {
            const ldmc_mem_rec *a = &p.recs[i], *b = &p.recs[j];
            bool time = a->born <= b->dies && b->born <= a->dies;
            bool space = a->offset < b->offset + b->bytes && b->offset < a->offset + a->bytes;
            if (time && space && a->bytes && b->bytes) bad = 1;
        }
    CHECK(!bad, "two records live at once share bytes");
    for (int i = 0; i < p.n; i++)
        CHECK(p.recs[i].offset % LDMC_PLAN_ALIGN == 0 &&
                  p.recs[i].offset + p.recs[i].bytes <= p.peak,
              "record %d at %zu (+%zu) within the top %zu, aligned", i, p.recs[i].offset,
              p.recs[i].bytes, p.peak);
    CHECK(p.peak >= p.live_peak && p.peak <= p.live_peak + p.live_peak / 10,
          "top %zu against %zu live at once", p.peak, p.live_peak);
    for (int i = 1; i < p.n; i++)
        CHECK(p.recs[p.by_death[i - 1]].dies <= p.recs[p.by_death[i]].dies, "order of death");
    ldmc_plan_free(&p);
}

int main(int argc, char **argv) {
    static const test_entry tests[] = {
        TEST_ENTRY(test_dtype_names_and_sizes),
        TEST_ENTRY(test_half_types_round_trip),
        TEST_ENTRY(test_half_types_rounding),
        TEST_ENTRY(test_master_split_is_exact),
        TEST_ENTRY(test_convert),
        TEST_ENTRY(test_arena),
        TEST_ENTRY(test_philox_known_answers),
        TEST_ENTRY(test_rng_streams),
        TEST_ENTRY(test_rng_distributions),
        TEST_ENTRY(test_params_table),
        TEST_ENTRY(test_tensor_helpers),
        TEST_ENTRY(test_errors),
        TEST_ENTRY(test_threads),
        TEST_ENTRY(test_memory_plan_placement),
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
