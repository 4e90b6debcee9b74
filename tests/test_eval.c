// Sampling jobs and evaluation (src/eval): the tiny class-conditional UNet sampled by every
// sampler into PNGs that read back as the pixels returned; an image remade alone from its seed;
// the refiner hand-off (a refiner with the base's weights changes nothing; another refiner
// does); SDEdit from an image; the job's checks. On tiny models of configs/ with weights written
// by `ldmc init`'s code, on the CPU.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/rng.h"
#include "data/image.h"
#include "eval/fid.h"
#include "eval/sample.h"
#include "harness.h"
#include "io/files.h"
#include "io/image_write.h"
#include "io/model_files.h"
#include "io/safetensors.h"
#include "nn/inception.h"
#include "nn/models.h"

// `ldmc init CONFIG OUT --vae VAE_CONFIG --seed seed`: freshly initialized weights, one file.
static void write_init(const char *config, const char *vae_config, const char *path,
                       uint64_t seed) {
    ldmc_model_config cfg = test_model_config(config);
    if (vae_config) {
        ldmc_model_config v = test_model_config(vae_config);
        cfg.has_vae = true, cfg.vae = v.vae;
    }
    ldmc_model models[LDMC_MAX_MODELS];
    int n = ldmc_models_create(&cfg, models);
    for (int i = 0; i < n; i++) {
        ldmc_params_alloc(models[i].params, LDMC_ROLE_WEIGHTS);
        ldmc_params_init(models[i].params, seed);
        // the zero-initialized output layers drawn too, so that samples depend on the model
        if (i == 0)
            test_fill(models[i].params->buffers[LDMC_ROLE_WEIGHTS],
                      (int64_t)models[i].params->total, seed + 1, 0.1, 0);
    }
    ldmc_err err = {0};
    LDMC_CHECK(ldmc_save_models(path, LDMC_LAYOUT_OFFICIAL, models, n, LDMC_F32, LDMC_ROLE_WEIGHTS,
                                NULL, &err) == 0,
               "%s", err.message);
    for (int i = 0; i < n; i++)
        ldmc_model_destroy(&models[i]);
}

static const char *config_path(const char *file) {
    static char buf[4][1024];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, 1024, "%s/%s", test_config_dir(), file);
    return p;
}

static const char *vocab_path(void) {
    static char p[1024];
    snprintf(p, sizeof p, "%s/tiny_bpe", test_data_dir());
    return p;
}

// The tiny class UNet and VAE, weights in the temporary folder (written once).
static ldmc_sample_model *class_model(void) {
    static ldmc_sample_model m;
    static bool loaded;
    if (loaded) return &m;
    const char *w = test_tmp_path("class.safetensors");
    write_init("tiny_unet_class.yaml", "tiny_vae.yaml", w, 5);
    ldmc_sample_model_options o = {
        .weights = w, .vae_config = config_path("tiny_vae.yaml"), .need_vae = true};
    ldmc_err err = {0};
    LDMC_CHECK(ldmc_sample_model_load(&m, config_path("tiny_unet_class.yaml"), &o, &err) == 0, "%s",
               err.message);
    loaded = true;
    return &m;
}

// A text model (tiny_unet_text.yaml or tiny_refiner_text.yaml) with the tiny vocabulary.
static void text_model(ldmc_sample_model *m, const char *config, const char *weights, uint64_t seed,
                       bool vae) {
    write_init(config, vae ? "tiny_vae.yaml" : NULL, weights, seed);
    ldmc_sample_model_options o = {.weights = weights,
                                   .vae_config = vae ? config_path("tiny_vae.yaml") : NULL,
                                   .vocab = vocab_path(),
                                   .need_vae = vae};
    ldmc_err err = {0};
    LDMC_CHECK(ldmc_sample_model_load(m, config_path(config), &o, &err) == 0, "%s", err.message);
}

static ldmc_ctx *ctx(void) {
    static ldmc_ctx c;
    static bool made;
    if (!made) test_ctx_init(&c), made = true;
    return &c;
}

static const int classes[2] = {1, 6};

static ldmc_sample_job class_job(const char *sampler, const char *out) {
    return (ldmc_sample_job){.classes = classes,
                             .n_rows = 2,
                             .per_row = 1,
                             .batch = 2,
                             .seed = 42,
                             .steps = 4,
                             .guidance = 3.0,
                             .sampler = sampler,
                             .width = 16,
                             .height = 12,
                             .out_dir = test_tmp_path(out),
                             .grid = true,
                             .quiet = true};
}

static int64_t pixels_differ(const uint8_t *a, const uint8_t *b, size_t n, int *worst) {
    int64_t d = 0;
    *worst = 0;
    for (size_t i = 0; i < n; i++) {
        int e = abs((int)a[i] - (int)b[i]);
        d += e != 0;
        if (e > *worst) *worst = e;
    }
    return d;
}

// Every sampler on the tiny class model: two images each, written as PNGs that read back as the
// returned pixels, not flat, and different from sampler to sampler.
static void test_every_sampler(void) {
    ldmc_sample_model *m = class_model();
    const char *samplers[] = {"ddim", "euler", "euler_a", "dpmpp_2m"};
    enum { PX = 16 * 12 * 3 };
    uint8_t *prev = NULL;
    for (int s = 0; s < 4; s++) {
        char out[64];
        snprintf(out, sizeof out, "samples_%s", samplers[s]);
        ldmc_sample_job job = class_job(samplers[s], out);
        uint8_t *images;
        ldmc_err err = {0};
        int n = ldmc_sample_run(ctx(), m, &job, &images, &err);
        REQUIRE(n == 2, "%s: %d images: %s", samplers[s], n, err.message);
        double mean = 0, var = 0;
        for (int i = 0; i < 2 * PX; i++)
            mean += images[i] / (2.0 * PX);
        for (int i = 0; i < 2 * PX; i++)
            var += (images[i] - mean) * (images[i] - mean) / (2.0 * PX);
        CHECK(sqrt(var) > 2, "%s: the images are flat (std %.2f)", samplers[s], sqrt(var));
        for (int i = 0; i < 2; i++) {
            char path[1200];
            snprintf(path, sizeof path, "%s/%05d-%d.png", job.out_dir, i, 42 + i);
            ldmc_image img;
            REQUIRE(ldmc_image_load(path, 0, 0, &img, &err) == 0, "%s", err.message);
            CHECK(img.width == 16 && img.height == 12 &&
                      !memcmp(img.pixels, images + (size_t)i * PX, PX),
                  "%s: %s reads back as %dx%d, other pixels", samplers[s], path, img.width,
                  img.height);
            ldmc_image_free(&img);
        }
        char grid[1200];
        snprintf(grid, sizeof grid, "%s/grid.png", job.out_dir);
        int gw = 0, gh = 0;
        CHECK(ldmc_image_probe(grid, &gw, &gh, &err) == 0 && gw == 16 + 2 * 4 &&
                  gh == 2 * 12 + 3 * 4,
              "%s: the grid is %dx%d", samplers[s], gw, gh);
        if (prev) {
            int worst;
            CHECK(pixels_differ(prev, images, 2 * PX, &worst) > PX / 4,
                  "%s gives the images of the sampler before it", samplers[s]);
        }
        free(prev);
        prev = images;
    }
    free(prev);
}

// Image i of a batched job is image 0 of a job of one image at seed + i (the noise is the image's
// own), within one level (another batch size may sum in another order).
static void test_an_image_from_its_seed(void) {
    ldmc_sample_model *m = class_model();
    ldmc_sample_job job = class_job("euler_a", "seed_batch");
    job.n_rows = 1, job.per_row = 3;
    uint8_t *batch, *one;
    ldmc_err err = {0};
    REQUIRE(ldmc_sample_run(ctx(), m, &job, &batch, &err) == 3, "%s", err.message);
    job.per_row = 1, job.batch = 1, job.seed = 44, job.out_dir = test_tmp_path("seed_one");
    REQUIRE(ldmc_sample_run(ctx(), m, &job, &one, &err) == 1, "%s", err.message);
    enum { PX = 16 * 12 * 3 };
    int worst;
    int64_t d = pixels_differ(batch + 2 * PX, one, PX, &worst);
    CHECK(worst <= 1, "image 2 of the batch and seed 44 alone: %lld values differ, by up to %d",
          (long long)d, worst);
    d = pixels_differ(batch + PX, one, PX, &worst);
    CHECK(d > PX / 4, "image 1 (seed 43) equals seed 44's");
    free(batch), free(one);
}

// The hand-off: a refiner with the base's own weights continues exactly where the base stops
// (Euler keeps no state), so any switch point gives the base's images; another refiner changes
// them, and the more so the earlier it takes over (--switch: the base's share of the schedule);
// negative prompts.
static void test_refiner_hand_off(void) {
    static ldmc_sample_model base, same, refiner;
    text_model(&base, "tiny_unet_text.yaml", test_tmp_path("text_base.safetensors"), 7, true);
    text_model(&same, "tiny_unet_text.yaml", test_tmp_path("text_base.safetensors"), 7, false);
    text_model(&refiner, "tiny_refiner_text.yaml", test_tmp_path("text_refiner.safetensors"), 8,
               false);
    const char *prompts[] = {"a red circle", "two blue squares"};
    ldmc_sample_job job = {.prompts = prompts,
                           .n_rows = 2,
                           .per_row = 1,
                           .batch = 2,
                           .seed = 3,
                           .steps = 6,
                           .guidance = 4.0,
                           .sampler = "euler",
                           .width = 16,
                           .height = 16,
                           .switch_at = 0.5,
                           .out_dir = test_tmp_path("refined"),
                           .quiet = true};
    uint8_t *alone, *with_same, *refined, *early;
    ldmc_err err = {0};
    REQUIRE(ldmc_sample_run(ctx(), &base, &job, &alone, &err) == 2, "%s", err.message);
    job.refiner = &same;
    REQUIRE(ldmc_sample_run(ctx(), &base, &job, &with_same, &err) == 2, "%s", err.message);
    job.refiner = &refiner;
    REQUIRE(ldmc_sample_run(ctx(), &base, &job, &refined, &err) == 2, "%s", err.message);
    job.switch_at = 0.2; // the base keeps t >= 800 (2 of the 6 steps), the refiner the rest
    REQUIRE(ldmc_sample_run(ctx(), &base, &job, &early, &err) == 2, "%s", err.message);
    enum { PX = 2 * 16 * 16 * 3 };
    int worst, worst_early;
    CHECK(pixels_differ(alone, with_same, PX, &worst) == 0,
          "a refiner with the base's weights changed %d levels", worst);
    int64_t late = pixels_differ(alone, refined, PX, &worst);
    int64_t soon = pixels_differ(alone, early, PX, &worst_early);
    CHECK(late > 0 && soon > 0, "another refiner changed nothing (%lld, %lld values)",
          (long long)late, (long long)soon);
    double d_late = 0, d_soon = 0;
    for (int i = 0; i < PX; i++)
        d_late += fabs((double)alone[i] - refined[i]), d_soon += fabs((double)alone[i] - early[i]);
    CHECK(d_soon > d_late,
          "a refiner taking the last 80%% of the schedule moved the images less "
          "(%.0f) than one taking the last 50%% (%.0f)",
          d_soon, d_late);
    // a negative prompt is the unconditional branch: "" equals the dropped caption when that is
    // "" encoded (uncond empty) and not when it is zeros; another negative prompt moves the images
    uint8_t *neg_empty, *neg_blue, *plain_empty;
    job.refiner = NULL, job.negative = "";
    REQUIRE(ldmc_sample_run(ctx(), &base, &job, &neg_empty, &err) == 2, "%s", err.message);
    job.negative = "blue squares";
    REQUIRE(ldmc_sample_run(ctx(), &base, &job, &neg_blue, &err) == 2, "%s", err.message);
    base.conditioner.uncond_empty = true;
    job.negative = NULL;
    REQUIRE(ldmc_sample_run(ctx(), &base, &job, &plain_empty, &err) == 2, "%s", err.message);
    base.conditioner.uncond_empty = false;
    CHECK(pixels_differ(alone, neg_empty, PX, &worst) > 0,
          "negative \"\" gave the zeroed branch's images");
    CHECK(pixels_differ(plain_empty, neg_empty, PX, &worst) == 0,
          "negative \"\" and the \"\"-encoded branch differ by up to %d levels", worst);
    CHECK(pixels_differ(neg_blue, neg_empty, PX, &worst) > 0,
          "the negative prompt changed nothing");
    free(neg_empty), free(neg_blue), free(plain_empty);
    // the job's checks: a class on a text model, a prompt on a class model
    const int one_class = 1;
    ldmc_sample_job bad = job;
    bad.refiner = NULL, bad.prompts = NULL, bad.classes = &one_class, bad.n_rows = 1;
    err = (ldmc_err){0};
    CHECK(ldmc_sample_run(ctx(), &base, &bad, NULL, &err) < 0 && strstr(err.message, "--class"),
          "a class for a text model: %s", err.message);
    ldmc_sample_job neg = class_job("euler", "negative");
    neg.negative = "blurry";
    err = (ldmc_err){0};
    CHECK(ldmc_sample_run(ctx(), class_model(), &neg, NULL, &err) < 0 &&
              strstr(err.message, "--negative"),
          "a negative prompt for a class model: %s", err.message);
    free(alone), free(with_same), free(refined), free(early);
    ldmc_sample_model_free(&base);
    ldmc_sample_model_free(&same);
    ldmc_sample_model_free(&refiner);
}

// SDEdit: from an image, the last `strength` of the steps; strength 1 from the image's latents at
// the first σ is not pure noise; a strength that runs no step is refused.
static void test_sdedit_and_job_checks(void) {
    ldmc_sample_model *m = class_model();
    ldmc_sample_job job = class_job("ddim", "txt2img");
    job.n_rows = 1;
    uint8_t *plain, *edited, *again;
    ldmc_err err = {0};
    REQUIRE(ldmc_sample_run(ctx(), m, &job, &plain, &err) == 1, "%s", err.message);
    char init[1200];
    snprintf(init, sizeof init, "%s/00000-42.png", job.out_dir);
    job.init_image = init, job.strength = 0.5, job.out_dir = test_tmp_path("sdedit");
    REQUIRE(ldmc_sample_run(ctx(), m, &job, &edited, &err) == 1, "%s", err.message);
    REQUIRE(ldmc_sample_run(ctx(), m, &job, &again, &err) == 1, "%s", err.message);
    enum { PX = 16 * 12 * 3 };
    int worst;
    CHECK(pixels_differ(edited, again, PX, &worst) == 0, "SDEdit is not deterministic");
    CHECK(pixels_differ(plain, edited, PX, &worst) > 0, "SDEdit gave the text-to-image result");
    job.strength = 0.2; // int(4 * 0.2) = 0 steps
    CHECK(ldmc_sample_run(ctx(), m, &job, NULL, &err) < 0 && strstr(err.message, "runs no step"),
          "strength 0.2 of 4 steps: %s", err.message);
    job.init_image = NULL;
    job.sampler = "heun";
    err = (ldmc_err){0};
    CHECK(ldmc_sample_run(ctx(), m, &job, NULL, &err) < 0 && strstr(err.message, "dpmpp_2m"),
          "an unknown sampler: %s", err.message);
    job.sampler = "ddim", job.steps = 600;
    err = (ldmc_err){0};
    CHECK(ldmc_sample_run(ctx(), m, &job, NULL, &err) < 0 && strstr(err.message, "t = 600"),
          "DDIM's LDM timesteps of 600 steps (from t = 600): %s", err.message);
    job.steps = 4;
    job.sampler = "ddim", job.width = 18;
    err = (ldmc_err){0};
    CHECK(ldmc_sample_run(ctx(), m, &job, NULL, &err) < 0 && strstr(err.message, "multiples of 4"),
          "a size the model cannot take: %s", err.message);
    job.width = 16;
    const int big = 10;
    job.classes = &big;
    err = (ldmc_err){0};
    CHECK(ldmc_sample_run(ctx(), m, &job, NULL, &err) < 0 && strstr(err.message, "0 to 9"),
          "class 10 of 10: %s", err.message);
    free(plain), free(edited), free(again);
}

// ---- the FID Inception ------------------------------------------------------------------------

// make_inception_refs.py's weights by key: signed_uniform(FNV-1a-64(key)), scaled by kind.
static int philox_source(void *arg, const char *name, int ndim, const int64_t *shape, float *out,
                         ldmc_err *err) {
    (void)arg, (void)err;
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    ldmc_rng rng = ldmc_rng_make(ldmc_hash_name(name), 0, 0, LDMC_RNG_TEST);
    ldmc_rng_signed_uniform(&rng, 0, (size_t)n, out);
    size_t len = strlen(name);
#define ENDS(s) (len >= strlen(s) && !strcmp(name + len - strlen(s), s))
    for (int64_t i = 0; i < n; i++) {
        double u = out[i], v;
        if (ENDS("conv.weight"))
            v = u * sqrt(6.0 / (double)(n / shape[0]));
        else if (!strcmp(name, "fc.weight"))
            v = u / sqrt(2048.0);
        else if (ENDS(".weight") || ENDS("running_var"))
            v = 1 + u / 4;
        else
            v = u / 4;
        out[i] = (float)v;
    }
#undef ENDS
    return 0;
}

static float *ref_tensor(const ldmc_safetensors *st, const char *name, int64_t *n) {
    const ldmc_st_tensor *t = ldmc_safetensors_find(st, name);
    LDMC_CHECK(t, "%s: no %s", st->path, name);
    *n = ldmc_st_numel(t);
    float *v = malloc((size_t)*n * sizeof *v);
    ldmc_err err = {0};
    LDMC_CHECK(v && ldmc_safetensors_read(st, t, v, LDMC_F32, &err) == 0, "%s", err.message);
    return v;
}

static double max_abs_diff(const float *a, const float *b, int64_t n, double *scale) {
    double worst = 0;
    *scale = 0;
    for (int64_t i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)a[i] - b[i])), *scale = fmax(*scale, fabs((double)b[i]));
    return worst;
}

// pytorch-fid's preprocessing (PyTorch's bilinear to 299, 2x - 1) and torch-fidelity's (TF1's
// legacy bilinear, (x - 128)/128) against PyTorch on the same image; the network's pool3 features
// and unbiased logits against torchvision's Inception3 with pytorch-fid's blocks (float64),
// the same random weights, both images in one batch.
static void test_inception_against_reference(void) {
    ldmc_safetensors ref;
    ldmc_err err = {0};
    char path[1024];
    snprintf(path, sizeof path, "%s/inception.safetensors", test_data_dir());
    REQUIRE(ldmc_safetensors_open(&ref, path, &err) == 0, "%s", err.message);
    const int W[2] = {56, 48}, H[2] = {40, 64}, S = LDMC_INCEPTION_SIZE;
    const size_t in = (size_t)S * S * 3;
    float *x = malloc(2 * in * sizeof *x), *tf = malloc(in * sizeof *tf);
    for (int i = 0; i < 2; i++) {
        char name[16];
        snprintf(name, sizeof name, "image%d", i);
        int64_t n;
        float *px = ref_tensor(&ref, name, &n);
        uint8_t *rgb = malloc((size_t)n);
        for (int64_t k = 0; k < n; k++)
            rgb[k] = (uint8_t)px[k];
        ldmc_fid_preprocess_image(rgb, W[i], H[i], LDMC_FID_PYTORCH, x + i * in);
        if (i == 1) ldmc_fid_preprocess_image(rgb, W[i], H[i], LDMC_FID_TF, tf);
        free(px), free(rgb);
    }
    const char *modes[2] = {"pytorch", "tf"};
    for (int m = 0; m < 2; m++) {
        char key[32];
        int64_t n, n_idx;
        snprintf(key, sizeof key, "%s.input", modes[m]);
        float *want = ref_tensor(&ref, key, &n);
        snprintf(key, sizeof key, "%s.input.idx", modes[m]);
        const ldmc_st_tensor *it = ldmc_safetensors_find(&ref, key);
        REQUIRE(it, "no %s", key);
        n_idx = ldmc_st_numel(it);
        int32_t *idx = malloc((size_t)n_idx * sizeof *idx);
        REQUIRE(ldmc_safetensors_read(&ref, it, idx, LDMC_I32, &err) == 0, "%s", err.message);
        float *got = malloc((size_t)n * sizeof *got);
        for (int64_t k = 0; k < n; k++)
            got[k] = (m ? tf : x + in)[idx[k]];
        double scale, worst = max_abs_diff(got, want, n, &scale);
        // fid-is.md's resize tolerance, 1e-3 on the [0, 255] scale (measured: 4.7e-6 and 0 here)
        CHECK(worst <= 1e-3 / 127.5, "%s preprocessing: max |Δ| %.3g", modes[m], worst);
        free(want), free(idx), free(got);
    }
    ldmc_inception net;
    REQUIRE(ldmc_inception_load(&net, philox_source, NULL, &err) == 0, "%s", err.message);
    float *pool3 = malloc(2 * LDMC_INCEPTION_FEATURES * sizeof *pool3),
          *logits = malloc(2 * LDMC_INCEPTION_CLASSES * sizeof *logits);
    ldmc_inception_forward(ctx(), &net, x, 2, pool3, logits);
    int64_t n;
    float *want = ref_tensor(&ref, "pool3", &n);
    double scale, worst = max_abs_diff(pool3, want, n, &scale);
    // float32 against float64 through 48 convolutions on the longest path: 1e-5 of the largest
    // value (fid-is.md: torch-fidelity's CPU test allows 1e-5 against TF; measured 3e-7 here)
    CHECK(n == 2 * LDMC_INCEPTION_FEATURES && worst <= 1e-5 * scale,
          "pool3: max |Δ| %.3g of max |f| %.3g", worst, scale);
    free(want);
    want = ref_tensor(&ref, "logits", &n);
    worst = max_abs_diff(logits, want, n, &scale);
    CHECK(n == 2 * LDMC_INCEPTION_CLASSES && worst <= 1e-5 * scale,
          "logits: max |Δ| %.3g of max |l| %.3g (measured 5e-7)", worst, scale);
    free(want), free(pool3), free(logits), free(x), free(tf);
    ldmc_inception_free(&net);
    ldmc_safetensors_close(&ref);
}

// ---- FID and IS ---------------------------------------------------------------------------------

// A float64 reference stored as float32 plus its remainder (make_fid_refs.py).
static double ref_double(const ldmc_safetensors *st, const char *name, int k) {
    char lo[80];
    snprintf(lo, sizeof lo, "%.60s.lo", name);
    int64_t n;
    float *hi = ref_tensor(st, name, &n), *rest = ref_tensor(st, lo, &n);
    double v = (double)hi[k] + rest[k];
    free(hi), free(rest);
    return v;
}

static double *ref_features(const ldmc_safetensors *st, const char *name, int *rows) {
    int64_t n;
    float *f = ref_tensor(st, name, &n);
    double *d = malloc((size_t)n * sizeof *d);
    for (int64_t i = 0; i < n; i++)
        d[i] = f[i];
    free(f);
    *rows = (int)(n / 64);
    return d;
}

// Statistics against numpy (mean, np.cov); the distance against pytorch-fid's scipy.sqrtm
// formula, full rank and singular (fewer images than features); pytorch-fid's test fact
// (equal covariances: FID = ||mu1 - mu2||²); the .npz pytorch-fid writes read, ldmc's own written
// and read back exactly, a damaged one refused.
static void test_fid_against_scipy(void) {
    ldmc_safetensors ref;
    ldmc_err err = {0};
    char path[1024];
    snprintf(path, sizeof path, "%s/fid.safetensors", test_data_dir());
    REQUIRE(ldmc_safetensors_open(&ref, path, &err) == 0, "%s", err.message);
    const char *cases[2] = {"full", "singular"};
    // relative to scipy: the eigensolver's round-off against sqrtm's (measured: 2e-14 full rank,
    // 7e-9 singular, where sqrtm works on a defective product)
    const double tol[2] = {1e-9, 1e-7};
    for (int c = 0; c < 2; c++) {
        char name[64];
        int na, nb;
        snprintf(name, sizeof name, "%s.a", cases[c]);
        double *a = ref_features(&ref, name, &na);
        snprintf(name, sizeof name, "%s.b", cases[c]);
        double *b = ref_features(&ref, name, &nb);
        ldmc_fid_stats sa, sb;
        REQUIRE(ldmc_fid_stats_compute(a, na, 64, &sa, &err) == 0 &&
                    ldmc_fid_stats_compute(b, nb, 64, &sb, &err) == 0,
                "%s", err.message);
        int64_t n;
        snprintf(name, sizeof name, "%s.mu_a", cases[c]);
        float *mu = ref_tensor(&ref, name, &n);
        snprintf(name, sizeof name, "%s.sigma_a", cases[c]);
        float *sigma = ref_tensor(&ref, name, &n);
        double worst = 0;
        for (int i = 0; i < 64; i++)
            worst = fmax(worst, fabs(sa.mu[i] - mu[i]) / (1 + fabs(mu[i])));
        for (int i = 0; i < 64 * 64; i++)
            worst = fmax(worst, fabs(sa.sigma[i] - sigma[i]) / (1 + fabs(sigma[i])));
        CHECK(worst < 1e-6, "%s: mu and sigma against numpy: %.3g", cases[c], worst);
        double fid;
        REQUIRE(ldmc_fid_distance(&sa, &sb, &fid, &err) == 0, "%s", err.message);
        snprintf(name, sizeof name, "%s.fid", cases[c]);
        double want = ref_double(&ref, name, 0);
        CHECK(fabs(fid - want) <= tol[c] * want, "%s: FID %.15g, scipy %.15g (rel %.3g)", cases[c],
              fid, want, fabs(fid - want) / want);
        free(a), free(b), free(mu), free(sigma);
        ldmc_fid_stats_free(&sa);
        ldmc_fid_stats_free(&sb);
    }
    // equal covariances (I) and means 0 and 1: FID = d
    enum { D = 2048 };
    ldmc_fid_stats e1 = {.d = D}, e2 = {.d = D};
    e1.mu = calloc(D, sizeof(double)), e2.mu = malloc(D * sizeof(double));
    e1.sigma = calloc((size_t)D * D, sizeof(double)),
    e2.sigma = calloc((size_t)D * D, sizeof(double));
    for (int i = 0; i < D; i++)
        e2.mu[i] = 1, e1.sigma[(size_t)i * D + i] = e2.sigma[(size_t)i * D + i] = 1;
    double fid;
    REQUIRE(ldmc_fid_distance(&e1, &e2, &fid, &err) == 0, "%s", err.message);
    CHECK(fabs(fid - D) < 1e-8, "equal covariances: FID %.12g, want %d", fid, D);
    ldmc_fid_stats_free(&e1);
    ldmc_fid_stats_free(&e2);
    // pytorch-fid's .npz (np.savez_compressed)
    ldmc_fid_stats st, back;
    snprintf(path, sizeof path, "%s/fid_stats.npz", test_data_dir());
    REQUIRE(ldmc_fid_stats_read(path, &st, &err) == 0, "%s", err.message);
    int64_t n;
    float *mu = ref_tensor(&ref, "full.mu_a", &n);
    CHECK(st.d == 64 && fabs(st.mu[5] - mu[5]) < 1e-6, "the .npz's mu: d %d", st.d);
    free(mu);
    const char *mine = test_tmp_path("stats.npz");
    REQUIRE(ldmc_fid_stats_write(mine, &st, &err) == 0, "%s", err.message);
    REQUIRE(ldmc_fid_stats_read(mine, &back, &err) == 0, "%s", err.message);
    CHECK(back.d == 64 && !memcmp(back.mu, st.mu, 64 * sizeof(double)) &&
              !memcmp(back.sigma, st.sigma, 64 * 64 * sizeof(double)),
          "written and read back");
    ldmc_fid_stats_free(&back);
    // damaged: truncated, and not a zip
    FILE *in = fopen(mine, "rb"), *out = fopen(test_tmp_path("cut.npz"), "wb");
    char buf[3000];
    size_t got = fread(buf, 1, sizeof buf, in);
    fwrite(buf, 1, got / 2, out);
    fclose(in), fclose(out);
    err = (ldmc_err){0};
    CHECK(ldmc_fid_stats_read(test_tmp_path("cut.npz"), &back, &err) != 0 &&
              strstr(err.message, "cut.npz"),
          "a truncated .npz: %s", err.message);
    err = (ldmc_err){0};
    CHECK(ldmc_fid_stats_read(path + 0, &back, &err) == 0, "%s", err.message);
    ldmc_fid_stats_free(&back);
    err = (ldmc_err){0};
    snprintf(path, sizeof path, "%s/fid.safetensors", test_data_dir());
    CHECK(ldmc_fid_stats_read(path, &back, &err) != 0 && strstr(err.message, "not a .npz"),
          "a safetensors file as statistics: %s", err.message);
    ldmc_fid_stats_free(&st);
    ldmc_safetensors_close(&ref);
}

// numpy's RandomState(2020).permutation; the Inception Score with torch-fidelity's shuffle and
// OpenAI's sequential splits against torch-fidelity's formula.
static void test_inception_score(void) {
    ldmc_safetensors ref;
    ldmc_err err = {0};
    char path[1024];
    snprintf(path, sizeof path, "%s/fid.safetensors", test_data_dir());
    REQUIRE(ldmc_safetensors_open(&ref, path, &err) == 0, "%s", err.message);
    const ldmc_st_tensor *pt = ldmc_safetensors_find(&ref, "permutation");
    REQUIRE(pt && ldmc_st_numel(pt) == 53, "the permutation");
    int32_t want[53];
    int got[53];
    REQUIRE(ldmc_safetensors_read(&ref, pt, want, LDMC_I32, &err) == 0, "%s", err.message);
    ldmc_numpy_permutation(2020, 53, got);
    bool same = true;
    for (int i = 0; i < 53; i++)
        same &= got[i] == want[i];
    CHECK(same, "RandomState(2020).permutation(53): %d %d %d ..., numpy %d %d %d ...", got[0],
          got[1], got[2], want[0], want[1], want[2]);
    int64_t n;
    float *l = ref_tensor(&ref, "logits", &n);
    double *logits = malloc((size_t)n * sizeof *logits);
    for (int64_t i = 0; i < n; i++)
        logits[i] = l[i];
    const char *keys[2] = {"is.shuffled", "is.sequential"};
    for (int s = 0; s < 2; s++) {
        double mean, std;
        REQUIRE(ldmc_inception_score(logits, 53, 20, 10, s == 0, &mean, &std, &err) == 0, "%s",
                err.message);
        double wm = ref_double(&ref, keys[s], 0), ws = ref_double(&ref, keys[s], 1);
        CHECK(fabs(mean - wm) < 1e-12 * wm && fabs(std - ws) < 1e-10 * ws,
              "%s: %.15g ± %.15g, torch-fidelity %.15g ± %.15g", keys[s], mean, std, wm, ws);
    }
    double mean, std;
    CHECK(ldmc_inception_score(logits, 5, 20, 10, true, &mean, &std, &err) != 0 &&
              strstr(err.message, "5 images in 10 splits"),
          "fewer images than splits: %s", err.message);
    free(l), free(logits);
    ldmc_safetensors_close(&ref);
}

// ---- the command line ---------------------------------------------------------------------------

// The ldmc binary: the build's, or LDMC_CLI from the environment (a build copied elsewhere).
static const char *cli(void) {
    const char *path = getenv("LDMC_CLI");
    return path ? path : LDMC_CLI;
}

// Runs `ldmc <args>` with its output in log; the exit status.
static int run_ldmc(const char *args, const char *log) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' %s >'%s' 2>&1", cli(), args, log);
    int status = system(cmd);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static bool log_has(const char *log, const char *text, char *line, size_t size) {
    FILE *f = fopen(log, "r");
    bool found = false;
    while (f && !found && fgets(line, (int)size, f))
        found = strstr(line, text) != NULL;
    if (f) fclose(f);
    return found;
}

static void produce_inception(const ldmc_st_entry *e, void *dst) {
    ldmc_err err = {0};
    philox_source(NULL, e->name, e->ndim, e->shape, dst, &err);
}

// make_inception_refs.py's random weights as a safetensors file with pytorch-fid's keys.
static void write_random_inception(const char *path) {
    const ldmc_inception_tensor *t;
    int n = ldmc_inception_tensors(&t);
    ldmc_st_entry *e = calloc((size_t)n, sizeof *e);
    for (int i = 0; i < n; i++) {
        e[i] = (ldmc_st_entry){.name = t[i].name,
                               .dtype = LDMC_F32,
                               .src_dtype = LDMC_F32,
                               .ndim = t[i].ndim,
                               .produce = produce_inception};
        memcpy(e[i].shape, t[i].shape, sizeof t[i].shape);
    }
    ldmc_err err = {0};
    LDMC_CHECK(ldmc_safetensors_write(path, e, n, NULL, 0, &err) == 0, "%s", err.message);
    free(e);
}

// A folder of n random 8-bit images of w x h (seeds from `seed`), plus `junk` unreadable files.
static void write_folder(const char *dir, int n, int w, int h, uint64_t seed, int junk) {
    ldmc_err err = {0};
    LDMC_CHECK(ldmc_mkdirs(dir, &err) == 0, "%s", err.message);
    uint8_t *px = malloc((size_t)w * h * 3);
    float *u = malloc((size_t)w * h * 3 * sizeof *u);
    for (int i = 0; i < n; i++) {
        test_fill(u, (int64_t)w * h * 3, seed + (uint64_t)i, 1, 0);
        for (int k = 0; k < w * h * 3; k++) // smooth-ish: a gradient plus noise
            px[k] = (uint8_t)fmin(255, fmax(0, 128 + 60 * u[k] + (k % (w * 3)) / 3.0 - i * 9));
        char path[1200];
        snprintf(path, sizeof path, "%s/img%03d.png", dir, i);
        LDMC_CHECK(ldmc_png_write(path, px, w, h, &err) == 0, "%s", err.message);
    }
    for (int j = 0; j < junk; j++) {
        char path[1200];
        snprintf(path, sizeof path, "%s/broken%d.jpg", dir, j);
        FILE *f = fopen(path, "wb");
        fputs("not a jpeg", f);
        fclose(f);
    }
    free(px), free(u);
}

// `ldmc eval stats|fid|is|run` on folders of random images with random Inception weights: the
// command's numbers equal the library's on the same features; a broken file is left out and
// counted; two .npz files need no network; an evaluation run samples, scores and writes
// metrics.json; usage errors.
static void test_eval_command(void) {
    char weights[1024]; // (test_tmp_path's buffers rotate)
    snprintf(weights, sizeof weights, "%s", test_tmp_path("inception.safetensors"));
    write_random_inception(weights);
    const char *a = test_tmp_path("eval_a"), *b = test_tmp_path("eval_b");
    char dir_a[1024], dir_b[1024], args[4096], line[1024];
    snprintf(dir_a, sizeof dir_a, "%s", a);
    snprintf(dir_b, sizeof dir_b, "%s", b);
    write_folder(dir_a, 3, 40, 32, 100, 1);
    write_folder(dir_b, 3, 48, 48, 200, 0);
    char log[1024];
    snprintf(log, sizeof log, "%s", test_tmp_path("eval.log"));
    char npz_a[1024], npz_b[1024];
    snprintf(npz_a, sizeof npz_a, "%s", test_tmp_path("a.npz"));
    snprintf(npz_b, sizeof npz_b, "%s", test_tmp_path("b.npz"));
    snprintf(args, sizeof args, "eval stats '%s' '%s' --inception '%s' --batch 3", dir_a, npz_a,
             weights);
    REQUIRE(run_ldmc(args, log) == 0, "ldmc %s failed", args);
    CHECK(log_has(log, "3 images, 1 left out", line, sizeof line), "the broken file counted");
    snprintf(args, sizeof args, "eval stats '%s' '%s' --inception '%s'", dir_b, npz_b, weights);
    REQUIRE(run_ldmc(args, log) == 0, "ldmc %s failed", args);
    // the library on the same folders
    ldmc_inception net;
    ldmc_err err = {0};
    REQUIRE(ldmc_inception_load_file(&net, weights, &err) == 0, "%s", err.message);
    ldmc_fid_options o = {.mode = LDMC_FID_PYTORCH, .batch = 2, .quiet = true};
    ldmc_fid_features fa, fb;
    int skipped;
    REQUIRE(ldmc_fid_folder_features(ctx(), &net, dir_a, &o, &fa, &skipped, &err) == 0 &&
                ldmc_fid_folder_features(ctx(), &net, dir_b, &o, &fb, &skipped, &err) == 0,
            "%s", err.message);
    ldmc_fid_stats sa, sb, read_a;
    REQUIRE(ldmc_fid_stats_compute(fa.pool3, fa.n, LDMC_INCEPTION_FEATURES, &sa, &err) == 0 &&
                ldmc_fid_stats_compute(fb.pool3, fb.n, LDMC_INCEPTION_FEATURES, &sb, &err) == 0 &&
                ldmc_fid_stats_read(npz_a, &read_a, &err) == 0,
            "%s", err.message);
    double worst = 0;
    for (int i = 0; i < LDMC_INCEPTION_FEATURES; i++)
        worst = fmax(worst, fabs(read_a.mu[i] - sa.mu[i]));
    // (another batch size may sum a GEMM in another order)
    CHECK(fa.n == 3 && worst < 1e-5, "eval stats: mu differs by %.3g from the library's", worst);
    double fid, fid_cli = -1;
    REQUIRE(ldmc_fid_distance(&sa, &sb, &fid, &err) == 0, "%s", err.message);
    snprintf(args, sizeof args, "eval fid '%s' '%s'", npz_a, npz_b); // no network needed
    REQUIRE(run_ldmc(args, log) == 0, "ldmc %s failed", args);
    CHECK(log_has(log, "FID ", line, sizeof line) && sscanf(line, "FID %lf", &fid_cli) == 1 &&
              fabs(fid_cli - fid) < 1e-4 * (1 + fid),
          "eval fid of the two .npz: %.9g, the library %.9g", fid_cli, fid);
    snprintf(args, sizeof args, "eval fid '%s' '%s' --inception '%s'", dir_a, npz_b, weights);
    REQUIRE(run_ldmc(args, log) == 0, "ldmc %s failed", args);
    CHECK(log_has(log, "FID ", line, sizeof line) && sscanf(line, "FID %lf", &fid_cli) == 1 &&
              fabs(fid_cli - fid) < 1e-4 * (1 + fid),
          "eval fid of a folder and an .npz: %.9g, the library %.9g", fid_cli, fid);
    double mean, std, mean_cli = -1;
    REQUIRE(ldmc_inception_score(fa.logits, fa.n, LDMC_INCEPTION_CLASSES, 2, true, &mean, &std,
                                 &err) == 0,
            "%s", err.message);
    snprintf(args, sizeof args, "eval is '%s' --inception '%s' --splits 2", dir_a, weights);
    REQUIRE(run_ldmc(args, log) == 0, "ldmc %s failed", args);
    CHECK(log_has(log, "IS ", line, sizeof line) && sscanf(line, "IS %lf", &mean_cli) == 1 &&
              fabs(mean_cli - mean) < 1e-5 * mean,
          "eval is: %g, the library %g", mean_cli, mean);
    // an evaluation run of the tiny class model: 10 images (1 of each class)
    class_model();
    char out[1024];
    snprintf(out, sizeof out, "%s", test_tmp_path("eval_run"));
    snprintf(args, sizeof args,
             "eval run '%s' --weights '%s' --vae '%s' --images 10 --ref '%s' --inception '%s' "
             "--out '%s' --steps 2 --size 16x8 --sampler ddim --seed 3 --batch 5 --quiet",
             config_path("tiny_unet_class.yaml"), test_tmp_path("class.safetensors"),
             config_path("tiny_vae.yaml"), npz_b, weights, out);
    REQUIRE(run_ldmc(args, log) == 0, "ldmc %s failed: see %s", args, log);
    char metrics[1200];
    snprintf(metrics, sizeof metrics, "%s/metrics.json", out);
    CHECK(log_has(metrics, "\"fid\": ", line, sizeof line) && strstr(line, "\"images\": 10"),
          "eval run: metrics.json %s", line);
    char png[1200];
    snprintf(png, sizeof png, "%s/00009-12.png", out);
    CHECK(access(png, F_OK) == 0, "eval run: no %s", png);
    // the same run under `mpirun -np 2`: each rank samples its shard, rank 0 scores the folder:
    // the same images, so the same metrics (at the same thread count, LDMC_THREADS)
    if (system("mpirun --version > /dev/null 2>&1") == 0) {
        char cmd[8192], metrics2[1200], line2[1024];
        snprintf(
            cmd, sizeof cmd,
            "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ASAN_OPTIONS=detect_leaks=0 "
            "mpirun --oversubscribe --bind-to none -np 2 '%s' eval run '%s' "
            "--weights '%s' --vae '%s' --images 10 --ref '%s' --inception '%s' --out '%s_mpi' "
            "--steps 2 --size 16x8 --sampler ddim --seed 3 --batch 5 --quiet >'%s' 2>&1",
            cli(), config_path("tiny_unet_class.yaml"), test_tmp_path("class.safetensors"),
            config_path("tiny_vae.yaml"), npz_b, weights, out, log);
        CHECK(system(cmd) == 0, "mpirun -np 2 ldmc eval run failed: see %s", log);
        snprintf(metrics2, sizeof metrics2, "%s_mpi/metrics.json", out);
        CHECK(log_has(metrics2, "\"fid\": ", line2, sizeof line2) && !strcmp(line, line2),
              "eval run on 2 ranks: %s, on one: %s", line2, line);
    }
    snprintf(args, sizeof args,
             "eval run '%s' --weights '%s' --vae '%s' --images 15 --ref '%s' "
             "--inception '%s' --out '%s_15'",
             config_path("tiny_unet_class.yaml"), test_tmp_path("class.safetensors"),
             config_path("tiny_vae.yaml"), npz_b, weights, out);
    CHECK(run_ldmc(args, log) == 2 &&
              log_has(log, "not a multiple of the 10 classes", line, sizeof line),
          "15 images of 10 classes");
    snprintf(args, sizeof args, "eval fid '%s' '%s'", dir_a, npz_b);
    CHECK(run_ldmc(args, log) == 2 && log_has(log, "--inception", line, sizeof line),
          "a folder without the Inception's weights");
    // checked before any sampling: an --out that holds images already, a missing reference
    snprintf(args, sizeof args,
             "eval run '%s' --out '%s' --weights '%s' --vae '%s' --images 10 --ref '%s' "
             "--inception '%s'",
             config_path("tiny_unet_class.yaml"), out, test_tmp_path("class.safetensors"),
             config_path("tiny_vae.yaml"), npz_b, weights);
    CHECK(run_ldmc(args, log) == 2 && log_has(log, "is not empty", line, sizeof line),
          "eval run into a folder of images");
    snprintf(args, sizeof args,
             "eval run '%s' --weights '%s' --vae '%s' --images 10 --ref /nonexistent.npz "
             "--inception '%s' --out '%s_new'",
             config_path("tiny_unet_class.yaml"), test_tmp_path("class.safetensors"),
             config_path("tiny_vae.yaml"), weights, out);
    CHECK(run_ldmc(args, log) == 1 && log_has(log, "/nonexistent.npz", line, sizeof line),
          "eval run with a missing reference");
    char empty[1200];
    snprintf(empty, sizeof empty, "%s_empty", out);
    REQUIRE(ldmc_mkdirs(empty, &err) == 0, "%s", err.message);
    snprintf(args, sizeof args, "eval stats '%s' '%s.npz' --inception '%s'", empty, empty, weights);
    CHECK(run_ldmc(args, log) == 1 && log_has(log, "no PNG or JPEG images", line, sizeof line),
          "eval stats of an empty folder");
    ldmc_fid_stats_free(&sa), ldmc_fid_stats_free(&sb), ldmc_fid_stats_free(&read_a);
    ldmc_fid_features_free(&fa), ldmc_fid_features_free(&fb);
    ldmc_inception_free(&net);
}

int main(int argc, char **argv) {
    static const test_entry tests[] = {
        TEST_ENTRY(test_every_sampler),
        TEST_ENTRY(test_an_image_from_its_seed),
        TEST_ENTRY(test_refiner_hand_off),
        TEST_ENTRY(test_sdedit_and_job_checks),
        TEST_ENTRY(test_inception_against_reference),
        TEST_ENTRY(test_fid_against_scipy),
        TEST_ENTRY(test_inception_score),
        TEST_ENTRY(test_eval_command),
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
