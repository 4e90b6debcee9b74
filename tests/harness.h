// The test harness: tests are plain functions listed in a table; CHECK records a failure with
// file:line and carries on, REQUIRE returns from the test; EXPECT_FATAL runs a statement that
// must fail through ldmc_fatal with a message containing a given text. Comparisons follow the
// one tolerance rule below. A test program exits non-zero when anything failed.
// Usage: test_x [substring]   runs the tests whose names contain the substring.
#pragma once
#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/error.h"
#include "core/tape.h"

typedef struct test_entry {
    const char *name;
    void (*fn)(void);
    const void *arg; // handed to the test through test_arg (table-driven tests)
} test_entry;

#define TEST_ENTRY(fn)                                                                             \
    { #fn, fn, NULL }

extern const void *test_arg; // the running test's arg

extern int test_failures; // failures in the current test
extern bool test_quiet;   // count failures without printing them (tests of the checks)

void test_fail_at(const char *file, int line, const char *fmt, ...) LDMC_PRINTF(3, 4);
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) test_fail_at(__FILE__, __LINE__, __VA_ARGS__);                                \
    } while (0)
#define REQUIRE(cond, ...)                                                                         \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            test_fail_at(__FILE__, __LINE__, __VA_ARGS__);                                         \
            return;                                                                                \
        }                                                                                          \
    } while (0)

// Fatal errors inside EXPECT_FATAL land here instead of exiting.
extern jmp_buf test_fatal_jump;
extern char test_fatal_message[1024];
void test_expect_fatal_begin(void);
void test_expect_fatal_end(void);
#define EXPECT_FATAL(stmt, text)                                                                   \
    do {                                                                                           \
        test_expect_fatal_begin();                                                                 \
        if (setjmp(test_fatal_jump) == 0) {                                                        \
            stmt;                                                                                  \
            test_expect_fatal_end();                                                               \
            test_fail_at(__FILE__, __LINE__, "expected a fatal error containing '%s'", (text));    \
        } else {                                                                                   \
            test_expect_fatal_end();                                                               \
            CHECK(strstr(test_fatal_message, (text)) != NULL,                                      \
                  "fatal error '%s' does not mention '%s'", test_fatal_message, (text));           \
        }                                                                                          \
    } while (0)

int test_main(int argc, char **argv, const test_entry *tests, int count);

// ---- the tolerance rule ------------------------------------------------------------------------
// Every comparison of a computed tensor `got` with a reference `want` passes element i when
//     |got_i - want_i| <= rtol * (|want_i| + rms(want))
// The rms term is the scale of the tensor: an element that is small only because large terms
// cancelled carries the absolute error of those terms. rtol comes from the error source:
//   - float32 op vs a float64 reference:  rtol = factor * FLT_EPSILON * sqrt(K), K the longest
//     reduction the op performs (1 for elementwise ops), factor 4 unless an op's override says
//     otherwise (tests/test_ops.c, with the reason);
//   - double-precision backward vs central differences with step h = 1e-4: rtol = 1e-6
//     (truncation ~h^2 = 1e-8, rounding ~DBL_EPSILON * |loss| / h), see tests/test_gradcheck.c.
double tolerance_f32(double factor, double K);
#define TOLERANCE_FD 1e-6

// Compares n values (at positions idx[0..n) of got when idx is not NULL); on failure prints the
// worst element, the error and how much of the budget it used, and records a failure.
bool check_close_at(const char *file, int line, const char *what, const float *got,
                    const float *want, const int32_t *idx, int64_t n, double rtol);
bool check_close_f64_at(const char *file, int line, const char *what, const double *got,
                        const double *want, int64_t n, double rtol);
#define CHECK_CLOSE(what, got, want, idx, n, rtol)                                                 \
    check_close_at(__FILE__, __LINE__, (what), (got), (want), (idx), (n), (rtol))
// The same with the scale term at least `min_scale`: for a tensor that is zero in exact
// arithmetic (a bias feeding a one-channel GroupNorm group, a query attending to one key), the
// terms that cancelled have the scale of the model's other gradients, not the result's.
bool check_close_scaled_at(const char *file, int line, const char *what, const float *got,
                           const float *want, const int32_t *idx, int64_t n, double rtol,
                           double min_scale);
#define CHECK_CLOSE_SCALED(what, got, want, idx, n, rtol, min_scale)                               \
    check_close_scaled_at(__FILE__, __LINE__, (what), (got), (want), (idx), (n), (rtol),           \
                          (min_scale))
#define CHECK_CLOSE_F64(what, got, want, n, rtol)                                                  \
    check_close_f64_at(__FILE__, __LINE__, (what), (got), (want), (n), (rtol))

// Test inputs: float32(signed_uniform(seed) * scale + shift), computed in double, exactly as
// tests/ref/make_op_refs.py draws them (tests are built with -ffp-contract=off).
void test_fill(float *x, int64_t n, uint64_t seed, double scale, double shift);
// The same, rounded to whole numbers (floor(v + 0.5)) when quantize: inputs with ties.
void test_fill_quantized(float *x, int64_t n, uint64_t seed, double scale, double shift,
                         bool quantize);
void test_fill_f64(double *x, int64_t n, uint64_t seed, double scale, double shift);
// A context with generous arenas for tests.
void test_ctx_init(ldmc_ctx *ctx);
// The directory of the committed reference data (tests/ref/data).
const char *test_data_dir(void);
// A temporary directory for this test program, made on first use and removed (with everything
// in it) when the program exits (kept when LDMC_TEST_KEEP is set); and <that directory>/<name>
// (8 rotating buffers).
const char *test_tmpdir(void);
const char *test_tmp_path(const char *name);
// The configs/ folder (LDMC_CONFIG_DIR in the environment overrides the build's path: a build
// copied to a GPU machine runs its tests from another checkout).
const char *test_config_dir(void);
// Files of whole-run tests: writes `text` to path (0, or -1); whether two files hold the same
// bytes (false when either cannot be read); how often `text` occurs in a file (its first 4 MiB;
// -1 when it cannot be read).
int test_write_text(const char *path, const char *text);
// configs/tiny_vae.yaml's weights initialized from `seed` into an official file at path; with
// `poison`, its first weight is infinite (every latent, and so every loss, is not finite).
void test_write_tiny_vae(const char *path, uint64_t seed, bool poison);
bool test_same_file(const char *a, const char *b);
int test_count_in_file(const char *path, const char *text);
// `open` (ldmc_safetensors_open or ldmc_torch_open) on path must fail with a message that names
// the file and contains `text`, and leave nothing behind.
struct ldmc_safetensors;
void test_expect_open_failure(int (*open)(struct ldmc_safetensors *, const char *, ldmc_err *),
                              const char *path, const char *text);
// make_model_refs.py's test weights (allocated by the caller): every parameter signed_uniform
// from Philox keyed by the FNV-1a-64 hash of its official key, in the official layout, over
// √fan_in for matrices and convolutions, 1 + u/4 for a 1-D .weight, u/4 for a 1-D .bias.
struct ldmc_params;
void test_init_weights(struct ldmc_params *p);
// A bundled model config (configs/<file>); fatal if it does not load.
struct ldmc_model_config test_model_config(const char *file);
// A UNet's or VAE's weights from a file or folder in any layout (io/model_files.h through the
// module's model view), and saving either or both (NULL: left out) with their weights.
struct ldmc_unet;
struct ldmc_vae;
struct ldmc_load_options;
struct ldmc_safetensors;
int test_load_unet(struct ldmc_unet *u, const char *path, const struct ldmc_load_options *opt,
                   ldmc_err *err);
int test_load_vae(struct ldmc_vae *v, const char *path, const struct ldmc_load_options *opt,
                  ldmc_err *err);
int test_save_models(const char *path, int layout, struct ldmc_unet *u, struct ldmc_vae *v,
                     int dtype, const struct ldmc_safetensors *passthrough, ldmc_err *err);
