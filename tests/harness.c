// The test harness (see harness.h).
#include "harness.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/threads.h"
#include "io/model_files.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "nn/model_config.h"
#include "nn/models.h"
#include "nn/vae.h"

int test_failures;
bool test_quiet;
const void *test_arg;
jmp_buf test_fatal_jump;
char test_fatal_message[1024];

void test_fail_at(const char *file, int line, const char *fmt, ...) {
    test_failures++;
    if (test_quiet) return;
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "  FAIL %s:%d: ", file, line);
    vfprintf(stderr, fmt, args);
    fprintf(stderr, "\n");
    va_end(args);
}

static void fatal_to_jump(const char *message) {
    snprintf(test_fatal_message, sizeof test_fatal_message, "%s", message);
    longjmp(test_fatal_jump, 1);
}

void test_expect_fatal_begin(void) {
    test_fatal_message[0] = '\0';
    ldmc_set_fatal_handler(fatal_to_jump);
}

void test_expect_fatal_end(void) { ldmc_set_fatal_handler(NULL); }

int test_main(int argc, char **argv, const test_entry *tests, int count) {
    ldmc_threads_init_from_env();
    const char *filter = argc > 1 ? argv[1] : NULL;
    int failed = 0, run = 0;
    for (int i = 0; i < count; i++) {
        if (filter && !strstr(tests[i].name, filter)) continue;
        test_failures = 0;
        test_arg = tests[i].arg;
        tests[i].fn();
        run++;
        printf("%s %s\n", test_failures ? "FAIL" : "ok  ", tests[i].name);
        fflush(stdout);
        if (test_failures) failed++;
    }
    printf("%d of %d tests passed\n", run - failed, run);
    if (run == 0) {
        fprintf(stderr, "no test matches '%s'\n", filter ? filter : "");
        return 1;
    }
    return failed ? 1 : 0;
}

double tolerance_f32(double factor, double K) { return factor * FLT_EPSILON * sqrt(K < 1 ? 1 : K); }

static double rms_f32(const float *x, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return n ? sqrt(s / n) : 0;
}

bool check_close_at(const char *file, int line, const char *what, const float *got,
                    const float *want, const int32_t *idx, int64_t n, double rtol) {
    return check_close_scaled_at(file, line, what, got, want, idx, n, rtol, 0);
}

bool check_close_scaled_at(const char *file, int line, const char *what, const float *got,
                           const float *want, const int32_t *idx, int64_t n, double rtol,
                           double min_scale) {
    double scale = rms_f32(want, n), worst_ratio = 0;
    if (scale < min_scale) scale = min_scale;
    int64_t worst = -1;
    for (int64_t i = 0; i < n; i++) {
        float g = got[idx ? idx[i] : i];
        double err = fabs((double)g - want[i]), budget = rtol * (fabs(want[i]) + scale);
        double ratio = budget > 0 ? err / budget : (err > 0 ? INFINITY : 0);
        if (isnan(g) || isnan(want[i])) ratio = isnan(g) && isnan(want[i]) ? 0 : INFINITY;
        if (ratio > worst_ratio || worst < 0) {
            worst_ratio = ratio;
            worst = i;
        }
    }
    if (worst < 0) return true;
    int64_t at = idx ? idx[worst] : worst;
    if (worst_ratio > 1) {
        test_fail_at(file, line,
                     "%s: element %lld: got %.9g, want %.9g (error %.3g, %.0f%% of the "
                     "budget %.3g = %.3g x (|want| + rms %.3g))",
                     what, (long long)at, got[at], want[worst], fabs((double)got[at] - want[worst]),
                     100 * worst_ratio, rtol * (fabs(want[worst]) + scale), rtol, scale);
        return false;
    }
    if (getenv("LDMC_TEST_VERBOSE"))
        printf("    %-48s max %5.1f%% of budget (rtol %.2g)\n", what, 100 * worst_ratio, rtol);
    return true;
}

bool check_close_f64_at(const char *file, int line, const char *what, const double *got,
                        const double *want, int64_t n, double rtol) {
    double s = 0, worst_ratio = 0;
    for (int64_t i = 0; i < n; i++)
        s += want[i] * want[i];
    double scale = n ? sqrt(s / n) : 0;
    int64_t worst = -1;
    for (int64_t i = 0; i < n; i++) {
        double err = fabs(got[i] - want[i]), budget = rtol * (fabs(want[i]) + scale);
        double ratio = budget > 0 ? err / budget : (err > 0 ? INFINITY : 0);
        if (isnan(got[i]) || isnan(want[i])) ratio = INFINITY;
        if (ratio > worst_ratio || worst < 0) {
            worst_ratio = ratio;
            worst = i;
        }
    }
    if (worst < 0) return true;
    if (worst_ratio > 1) {
        test_fail_at(file, line,
                     "%s: sample %lld: got %.12g, want %.12g (%.0f%% of the budget; "
                     "rtol %.2g, rms %.3g)",
                     what, (long long)worst, got[worst], want[worst], 100 * worst_ratio, rtol,
                     scale);
        return false;
    }
    if (getenv("LDMC_TEST_VERBOSE"))
        printf("    %-48s max %5.1f%% of budget (rtol %.2g)\n", what, 100 * worst_ratio, rtol);
    return true;
}

void test_fill_quantized(float *x, int64_t n, uint64_t seed, double scale, double shift,
                         bool quantize) {
    ldmc_rng rng = ldmc_rng_make(seed, 0, 0, LDMC_RNG_TEST);
    ldmc_rng_signed_uniform(&rng, 0, (size_t)n, x);
    for (int64_t i = 0; i < n; i++) {
        double v = (double)x[i] * scale;
        v += shift;
        x[i] = (float)(quantize ? floor(v + 0.5) : v);
    }
}

void test_fill(float *x, int64_t n, uint64_t seed, double scale, double shift) {
    test_fill_quantized(x, n, seed, scale, shift, false);
}

void test_fill_f64(double *x, int64_t n, uint64_t seed, double scale, double shift) {
    float *tmp = malloc((size_t)(n ? n : 1) * sizeof *tmp);
    test_fill(tmp, n, seed, scale, shift);
    for (int64_t i = 0; i < n; i++)
        x[i] = tmp[i];
    free(tmp);
}

// Gradients an op writes instead of adding into (ldmc_op_reads.writes) start as NaN bytes, so an
// element such a backward leaves unwritten shows.
void test_ctx_init(ldmc_ctx *ctx) {
    ldmc_ctx_init(ctx, (size_t)4 << 30, (size_t)256 << 20);
    ctx->poison_fresh_grads = true;
}

const char *test_data_dir(void) {
    const char *dir = getenv("LDMC_TEST_DATA");
    return dir ? dir : LDMC_TEST_DATA_DIR;
}

static char tmpdir[512];

static void remove_tmpdir(void) {
    if (getenv("LDMC_TEST_KEEP")) { // for a look at what a failing test left
        fprintf(stderr, "kept %s (LDMC_TEST_KEEP)\n", tmpdir);
        return;
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
}

const char *test_tmpdir(void) {
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof tmpdir, "%s/ldmc_test_XXXXXX",
                 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        LDMC_CHECK(mkdtemp(tmpdir), "cannot create a temporary directory %s", tmpdir);
        atexit(remove_tmpdir);
    }
    return tmpdir;
}

const char *test_tmp_path(const char *name) {
    static char path[8][1024];
    static int next;
    char *p = path[next++ % 8];
    snprintf(p, sizeof path[0], "%s/%s", test_tmpdir(), name);
    return p;
}

void test_write_tiny_vae(const char *path, uint64_t seed, bool poison) {
    ldmc_model_config vc = test_model_config("tiny_vae.yaml");
    static ldmc_vae v;
    ldmc_vae_init(&v, &vc.vae);
    ldmc_params_alloc(&v.params, LDMC_ROLE_WEIGHTS);
    ldmc_params_init(&v.params, seed);
    if (poison) v.params.buffers[LDMC_ROLE_WEIGHTS][v.params.items[0].offset] = INFINITY;
    ldmc_err err = {0};
    LDMC_CHECK(test_save_models(path, LDMC_LAYOUT_OFFICIAL, NULL, &v, LDMC_F32, NULL, &err) == 0,
               "%s", err.message);
    ldmc_vae_free(&v);
}

int test_write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

bool test_same_file(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    bool same = fa && fb;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        same = ca == cb;
        if (ca == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

int test_count_in_file(const char *path, const char *text) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    char *data = malloc(1 << 22);
    LDMC_CHECK(data, "out of memory");
    size_t n = fread(data, 1, (1 << 22) - 1, f);
    fclose(f);
    data[n] = '\0';
    int count = 0;
    for (const char *p = data; (p = strstr(p, text)); p += strlen(text))
        count++;
    free(data);
    return count;
}

const char *test_config_dir(void) {
    const char *dir = getenv("LDMC_CONFIG_DIR");
    return dir ? dir : LDMC_CONFIG_DIR;
}

ldmc_model_config test_model_config(const char *file) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", test_config_dir(), file);
    ldmc_model_config cfg;
    ldmc_err err = {0};
    LDMC_CHECK(ldmc_model_config_load(path, &cfg, &err) == 0, "%s", err.message);
    return cfg;
}

int test_load_unet(ldmc_unet *u, const char *path, const ldmc_load_options *opt, ldmc_err *err) {
    ldmc_model m = ldmc_unet_model(u);
    return ldmc_load_model(&m, path, opt, err);
}

int test_load_vae(ldmc_vae *v, const char *path, const ldmc_load_options *opt, ldmc_err *err) {
    ldmc_model m = ldmc_vae_model(v);
    return ldmc_load_model(&m, path, opt, err);
}

int test_save_models(const char *path, int layout, ldmc_unet *u, ldmc_vae *v, int dtype,
                     const ldmc_safetensors *passthrough, ldmc_err *err) {
    ldmc_model models[2];
    int n = 0;
    if (u) models[n++] = ldmc_unet_model(u);
    if (v) models[n++] = ldmc_vae_model(v);
    return ldmc_save_models(path, (ldmc_layout)layout, models, n, (ldmc_dtype)dtype,
                            LDMC_ROLE_WEIGHTS, passthrough, err);
}

// ---- the test initialization of make_model_refs.py ---------------------------------------------

void test_init_weights(ldmc_params *p) {
    ldmc_key_map official = {.layout = LDMC_LAYOUT_OFFICIAL};
    for (int i = 0; i < p->count; i++) {
        const ldmc_param *param = &p->items[i];
        float *w = p->buffers[LDMC_ROLE_WEIGHTS] + param->offset;
        float *u = malloc((size_t)param->numel * sizeof *u);
        ldmc_rng rng = ldmc_rng_make(ldmc_hash_name(param->name), 0, 0, LDMC_RNG_TEST);
        ldmc_rng_signed_uniform(&rng, 0, (size_t)param->numel, u);
        int64_t shape[LDMC_MAX_DIMS];
        int ndim = ldmc_file_shape(param, &official, shape);
        size_t len = strlen(param->name);
        for (int64_t k = 0; k < param->numel; k++) {
            double v = u[k];
            if (ndim >= 2)
                v /= sqrt((double)(param->numel / shape[0]));
            else if (len > 7 && strcmp(param->name + len - 7, ".weight") == 0)
                v = 1 + v / 4;
            else
                v /= 4;
            u[k] = (float)v;
        }
        if (param->flags & LDMC_PARAM_CONV)
            ldmc_conv_from_official(w, u, param->shape[0], param->shape[1], param->shape[2],
                                    param->shape[3]);
        else
            memcpy(w, u, (size_t)param->numel * sizeof *u);
        free(u);
    }
}

void test_expect_open_failure(int (*open)(ldmc_safetensors *, const char *, ldmc_err *),
                              const char *path, const char *text) {
    ldmc_err err = {0};
    ldmc_safetensors st;
    int rc = open(&st, path, &err);
    CHECK(rc == -1 && err.failed, "%s: opened, expected an error containing '%s'", path, text);
    if (rc != -1) {
        ldmc_safetensors_close(&st);
        return;
    }
    CHECK(strstr(err.message, path) != NULL, "the message does not name the file: %s", err.message);
    CHECK(strstr(err.message, text) != NULL, "message '%s' does not contain '%s'", err.message,
          text);
    CHECK(st.map == NULL && st.tensors == NULL && st.count == 0,
          "a failed open leaves state behind");
}
