// Sampling jobs and evaluation (src/eval): the tiny class-conditional UNet sampled by every
// sampler into PNGs that read back as the pixels returned; an image remade alone from its seed;
// the refiner hand-off (a refiner with the base's weights changes nothing; another refiner
// does); SDEdit from an image; the job's checks. On tiny models of configs/ with weights written
// by `ldmc init`'s code, on the CPU.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data/image.h"
#include "eval/sample.h"
#include "harness.h"
#include "io/model_files.h"
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
        if (i == 0) test_fill(models[i].params->buffers[LDMC_ROLE_WEIGHTS],
                              (int64_t)models[i].params->total, seed + 1, 0.1, 0);
    }
    ldmc_err err = {0};
    LDMC_CHECK(ldmc_save_models(path, LDMC_LAYOUT_OFFICIAL, models, n, LDMC_F32,
                                LDMC_ROLE_WEIGHTS, NULL, &err) == 0,
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
    LDMC_CHECK(ldmc_sample_model_load(&m, config_path("tiny_unet_class.yaml"), &o, &err) == 0,
               "%s", err.message);
    loaded = true;
    return &m;
}

// A text model (tiny_unet_text.yaml or tiny_refiner_text.yaml) with the tiny vocabulary.
static void text_model(ldmc_sample_model *m, const char *config, const char *weights,
                       uint64_t seed, bool vae) {
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
// them, and the more so the earlier it takes over (--switch: the base's share of the schedule).
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
    CHECK(d_soon > d_late, "a refiner taking the last 80%% of the schedule moved the images less "
                           "(%.0f) than one taking the last 50%% (%.0f)",
          d_soon, d_late);
    // the job's checks: a class on a text model, a prompt on a class model
    const int one_class = 1;
    ldmc_sample_job bad = job;
    bad.refiner = NULL, bad.prompts = NULL, bad.classes = &one_class, bad.n_rows = 1;
    err = (ldmc_err){0};
    CHECK(ldmc_sample_run(ctx(), &base, &bad, NULL, &err) < 0 && strstr(err.message, "--class"),
          "a class for a text model: %s", err.message);
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

int main(int argc, char **argv) {
    static const test_entry tests[] = {
        TEST_ENTRY(test_every_sampler),
        TEST_ENTRY(test_an_image_from_its_seed),
        TEST_ENTRY(test_refiner_hand_off),
        TEST_ENTRY(test_sdedit_and_job_checks),
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
