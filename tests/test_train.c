// Training: AdamW, the learning rate schedule, clipping and EMA against their formulas; training
// configs; TensorBoard records; the latent cache; and whole runs of tiny models: a resumed run
// (after a kill -9) is bit-identical to an uninterrupted one, a kill during a checkpoint write
// leaves the previous checkpoint loadable, bad images are counted, non-finite steps handled.
#include <dirent.h>
#include <hdf5.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/device.h"
#include "data/cache.h"
#include "data/image.h"
#include "data/loader.h"
#include "data/shapes.h"
#include "harness.h"
#include "io/files.h"
#include "io/image_write.h"
#include "io/model_files.h"
#include "io/safetensors.h"
#include "io/tensorboard.h"
#include "nn/models.h"
#include "ops/param_ops.h"
#include "tensorboard.pb-c.h"
#include "train/cache_build.h"
#include "train/canvas.h"
#include "train/checkpoint.h"
#include "train/text_models.h"
#include "train/optim.h"
#include "train/trainer.h"

// ---- the optimizer side, against PyTorch's formulas
// ----------------------------------------------

static void make_table(ldmc_params *p) {
    *p = (ldmc_params){0};
    ldmc_params_add(p, "w", 2, (int64_t[]){3, 5}, 0);
    ldmc_params_add(p, "b", 1, (int64_t[]){5}, LDMC_PARAM_NO_DECAY);
    ldmc_params_add(p, "frozen", 1, (int64_t[]){4}, LDMC_PARAM_FROZEN);
    for (int r = 0; r < LDMC_ROLE_COUNT; r++)
        if (r != LDMC_ROLE_MASTER) ldmc_params_alloc(p, (ldmc_param_role)r);
}

static void test_adamw_matches_pytorch_formula(void) {
    ldmc_params p;
    make_table(&p);
    const int n = (int)p.total;
    double w[64] = {0}, m[64] = {0}, v[64] = {0};
    float *W = p.buffers[LDMC_ROLE_WEIGHTS], *G = p.buffers[LDMC_ROLE_GRAD];
    test_fill(W, n, 1, 1.0, 0.0);
    for (int i = 0; i < n; i++)
        w[i] = W[i];
    ldmc_adamw opt = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1};
    for (int step = 1; step <= 5; step++) {
        test_fill(G, n, 100 + step, 0.5, 0.0);
        double lr = opt.lr * (step == 1 ? 0.5 : 1.0);
        ldmc_adamw_step(&p, &opt, lr, step);
        for (int k = 0; k < p.count; k++) {
            const ldmc_param *it = &p.items[k];
            for (int64_t j = 0; j < it->numel; j++) {
                size_t i = it->offset + (size_t)j;
                if (it->flags & LDMC_PARAM_FROZEN) continue;
                // torch.optim.AdamW: p *= 1 - lr wd; m, v; p -= lr m̂ / (sqrt(v̂) + eps)
                if (!(it->flags & LDMC_PARAM_NO_DECAY)) w[i] *= 1 - lr * opt.weight_decay;
                m[i] = opt.beta1 * m[i] + (1 - opt.beta1) * G[i];
                v[i] = opt.beta2 * v[i] + (1 - opt.beta2) * (double)G[i] * G[i];
                double mh = m[i] / (1 - pow(opt.beta1, step)),
                       vh = v[i] / (1 - pow(opt.beta2, step));
                w[i] -= lr * mh / (sqrt(vh) + opt.eps);
            }
        }
    }
    for (int k = 0; k < p.count; k++) {
        const ldmc_param *it = &p.items[k];
        for (int64_t j = 0; j < it->numel; j++) {
            size_t i = it->offset + (size_t)j;
            CHECK(fabs(W[i] - w[i]) < 2e-6 * (1 + fabs(w[i])), "%s[%lld] = %.8f, want %.8f",
                  it->name, (long long)j, W[i], w[i]);
        }
    }
    // frozen: untouched; its m and v stay zero
    float *F = W + p.items[2].offset, orig[64];
    test_fill(orig, n, 1, 1.0, 0.0);
    CHECK(!memcmp(F, orig + p.items[2].offset, 4 * sizeof(float)),
          "a frozen parameter is not updated");
    CHECK(p.buffers[LDMC_ROLE_ADAM_M][p.items[2].offset] == 0,
          "a frozen parameter has no Adam state");
    ldmc_params_free(&p);
}

static void test_lr_clip_and_ema(void) {
    ldmc_lr_schedule s = {.lr = 1e-3,
                          .min_lr = 1e-5,
                          .warmup_steps = 10,
                          .total_steps = 110,
                          .shape = LDMC_LR_COSINE};
    CHECK(fabs(ldmc_lr_at(&s, 0) - 1e-4) < 1e-15 && fabs(ldmc_lr_at(&s, 9) - 1e-3) < 1e-15,
          "linear warmup");
    CHECK(fabs(ldmc_lr_at(&s, 10) - 1e-3) < 1e-15, "the peak after the warmup");
    CHECK(fabs(ldmc_lr_at(&s, 60) - (1e-5 + 0.5 * (1e-3 - 1e-5))) < 1e-12, "cosine midpoint");
    CHECK(fabs(ldmc_lr_at(&s, 110) - 1e-5) < 1e-15 && fabs(ldmc_lr_at(&s, 500) - 1e-5) < 1e-15,
          "min_lr at the end");
    s.shape = LDMC_LR_CONSTANT;
    CHECK(ldmc_lr_at(&s, 100) == 1e-3, "constant");

    ldmc_params p;
    make_table(&p);
    float *G = p.buffers[LDMC_ROLE_GRAD];
    for (size_t i = 0; i < p.total; i++)
        G[i] = 0;
    for (int k = 0; k < p.count; k++)
        for (int64_t j = 0; j < p.items[k].numel; j++)
            G[p.items[k].offset + (size_t)j] = 2.0f;
    // trainable: 15 + 5 values of 2 -> norm sqrt(80); the frozen one does not count
    CHECK(fabs(ldmc_grad_norm(&p) - sqrt(80.0)) < 1e-6, "grad norm %g", ldmc_grad_norm(&p));
    ldmc_params_grad_scale(&p, 1.0 / sqrt(80.0));
    CHECK(fabs(ldmc_grad_norm(&p) - 1.0) < 1e-6, "clipped to 1");

    // EMA: LitEma's warmup min(decay, (1 + n)/(10 + n)), then e = d e + (1 - d) w, frozen included.
    CHECK(fabs(ldmc_ema_decay(0.9999, 1) - 2.0 / 11) < 1e-15, "decay after one update");
    CHECK(fabs(ldmc_ema_decay(0.9999, 100) - 101.0 / 110) < 1e-15, "decay after 100");
    CHECK(ldmc_ema_decay(0.9999, 1000000) == 0.9999, "the configured decay once warm");
    float *W = p.buffers[LDMC_ROLE_WEIGHTS], *E = p.buffers[LDMC_ROLE_EMA];
    for (size_t i = 0; i < p.total; i++)
        W[i] = 1.0f, E[i] = 3.0f;
    ldmc_params_ema_update(&p, 0.75);
    bool ok = true;
    for (int k = 0; k < p.count; k++)
        for (int64_t j = 0; j < p.items[k].numel; j++)
            ok = ok && E[p.items[k].offset + (size_t)j] == 2.5f;
    CHECK(ok, "ema = 0.75 * 3 + 0.25 * 1 = 2.5 everywhere");
    ldmc_params_free(&p);
}

// ---- TensorBoard
// ---------------------------------------------------------------------------------

static uint32_t le32(const uint8_t *p) {
    return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

static void test_tensorboard_records(void) {
    // CRC-32C("123456789") = 0xE3069283, masked as TFRecord does
    uint32_t crc = 0xE3069283u, masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
    CHECK(ldmc_tfrecord_crc("123456789", 9) == masked, "masked CRC-32C %08x, want %08x",
          ldmc_tfrecord_crc("123456789", 9), masked);
    ldmc_err err = {0};
    ldmc_tensorboard tb;
    const char *dir = test_tmp_path("tb");
    REQUIRE(ldmc_mkdirs(dir, &err) == 0 && ldmc_tensorboard_open(&tb, dir, &err) == 0, "%s",
            err.message);
    uint8_t rgb[4 * 3 * 3] = {255, 0, 0};
    CHECK(ldmc_tensorboard_scalar(&tb, "train/loss", 7, 0.125) == 0, "scalar");
    CHECK(ldmc_tensorboard_image(&tb, "samples", 8, rgb, 4, 3) == 0, "image");
    char path[1100];
    snprintf(path, sizeof path, "%s", tb.path);
    ldmc_tensorboard_close(&tb);
    FILE *f = fopen(path, "rb");
    REQUIRE(f, "cannot read %s", path);
    uint8_t *buf = malloc(1 << 16);
    size_t size = fread(buf, 1, 1 << 16, f), at = 0;
    fclose(f);
    int records = 0;
    bool saw_scalar = false, saw_image = false, saw_version = false;
    while (at + 12 <= size) {
        uint64_t len = 0;
        for (int i = 0; i < 8; i++)
            len |= (uint64_t)buf[at + i] << (8 * i);
        REQUIRE(le32(buf + at + 8) == ldmc_tfrecord_crc(buf + at, 8), "record %d: length CRC",
                records);
        REQUIRE(at + 12 + len + 4 <= size, "record %d runs past the end", records);
        const uint8_t *data = buf + at + 12;
        REQUIRE(le32(data + len) == ldmc_tfrecord_crc(data, len), "record %d: data CRC", records);
        Ldmc__Tensorboard__Event *e = ldmc__tensorboard__event__unpack(NULL, len, data);
        REQUIRE(e, "record %d is not an Event", records);
        if (e->what_case == LDMC__TENSORBOARD__EVENT__WHAT_FILE_VERSION)
            saw_version = !strcmp(e->file_version, "brain.Event:2") && records == 0;
        if (e->what_case == LDMC__TENSORBOARD__EVENT__WHAT_SUMMARY && e->summary->n_value == 1) {
            const Ldmc__Tensorboard__SummaryValue *v = e->summary->value[0];
            if (!strcmp(v->tag, "train/loss"))
                saw_scalar = e->step == 7 && v->simple_value == 0.125f;
            if (!strcmp(v->tag, "samples"))
                saw_image = e->step == 8 && v->image->width == 4 && v->image->height == 3 &&
                            v->image->encoded_image_string.len > 8 &&
                            !memcmp(v->image->encoded_image_string.data, "\x89PNG", 4);
        }
        ldmc__tensorboard__event__free_unpacked(e, NULL);
        at += 12 + len + 4;
        records++;
    }
    CHECK(at == size && records == 3, "%d records, %zu of %zu bytes", records, at, size);
    CHECK(saw_version && saw_scalar && saw_image, "version %d, scalar %d, image %d", saw_version,
          saw_scalar, saw_image);
    free(buf);
}

static void test_loss_curve_png(void) {
    int64_t steps[300];
    double loss[300];
    for (int i = 0; i < 300; i++)
        steps[i] = i + 1, loss[i] = 1.0 / (1 + i * 0.02) + 0.05 * sin(i);
    loss[100] = NAN; // a skipped step leaves a gap, not a crash
    ldmc_err err = {0};
    const char *path = test_tmp_path("curve.png");
    REQUIRE(ldmc_loss_curve_png(path, steps, loss, 300, "loss", &err) == 0, "%s", err.message);
    ldmc_image img;
    REQUIRE(ldmc_image_load(path, 0, 0, &img, &err) == 0, "%s", err.message);
    int dark = 0;
    for (int i = 0; i < img.width * img.height; i++)
        dark += img.pixels[3 * i + 2] > 120 && img.pixels[3 * i] < 60;
    CHECK(img.width == 960 && img.height == 540 && dark > 500, "%dx%d with %d curve pixels",
          img.width, img.height, dark);
    ldmc_image_free(&img);
}

// ---- configs
// ---------------------------------------------------------------------------------------

static void test_recipe_configs(void) {
    static const char *const recipes[] = {"demo.yaml",
                                          "demo_vae.yaml",
                                          "sdxl_finetune.yaml",
                                          "refiner_finetune.yaml",
                                          "cin_size_cond_train.yaml",
                                          "cin_nocond_train.yaml",
                                          "cin_512_only_train.yaml"};
    ldmc_train_config c[7];
    for (int i = 0; i < 7; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", LDMC_CONFIG_DIR, recipes[i]);
        ldmc_err err = {0};
        REQUIRE(ldmc_train_config_load(path, NULL, 0, &c[i], &err) == 0, "%s", err.message);
    }
    CHECK(c[0].task == LDMC_TASK_DIFFUSION && c[1].task == LDMC_TASK_VAE, "demo tasks");
    // SDXL fine-tuning: multi-aspect (the 40 buckets), offset noise 0.05, from the official file
    CHECK(c[2].noise.offset_noise == 0.05 && strstr(c[2].bucket_file, "sdxl_1024.txt") &&
              c[2].init[0],
          "sdxl_finetune: offset %g, buckets %s", c[2].noise.offset_noise, c[2].bucket_file);
    // the refiner: t in [0, 200)
    CHECK(c[3].noise.t_min == 0 && c[3].noise.t_max == 200, "refiner range [%d, %d)",
          c[3].noise.t_min, c[3].noise.t_max);
    // the text encoders: CLIP-L and bigG for the base, bigG for the refiner, whose dropped
    // captions are "" encoded; both need CLIP's vocabulary
    CHECK(c[2].model.n_text == 2 && c[3].model.n_text == 1 && c[2].text_vocab[0] &&
              !c[2].text_uncond_empty && c[3].text_uncond_empty &&
              c[2].model.text[1].projection_dim == 1280 && c[2].n_sample_prompts == 2,
          "the recipes' text conditioning");
    // the CIN ablation: the same training, with and without size conditioning, and 512-only
    CHECK(c[4].model.unet.n_vector == 2 && c[5].model.unet.n_vector == 0 &&
              c[4].model.unet.n_classes == 1000,
          "cin size-cond has original_size and crop_coords, nocond none");
    CHECK(c[6].bucket_pixels == 512 * 512 && c[6].min_size == 512 && c[4].min_size == 0 &&
              c[5].min_size == 0,
          "cin 512-only leaves out images below 512");
    CHECK(c[4].batch_size == c[5].batch_size && c[5].batch_size == c[6].batch_size &&
              c[4].steps == c[6].steps,
          "the ablation runs train alike");
    for (int i = 0; i < 7; i++)
        ldmc_train_config_free(&c[i]);

    // --set overrides, and mistakes named with the file and key
    ldmc_train_config o;
    ldmc_err err = {0};
    char path[512];
    snprintf(path, sizeof path, "%s/demo.yaml", LDMC_CONFIG_DIR);
    const char *sets[] = {"optim.lr=5e-5", "diffusion.t_max=200", "train.steps=7"};
    REQUIRE(ldmc_train_config_load(path, sets, 3, &o, &err) == 0, "%s", err.message);
    CHECK(o.adamw.lr == 5e-5 && o.noise.t_max == 200 && o.steps == 7 &&
              strstr(o.resolved_yaml, "t_max: 200"),
          "overrides applied and in the resolved config");
    ldmc_train_config_free(&o);
    const char *bad[] = {"optim.learning_rate=1"};
    CHECK(ldmc_train_config_load(path, bad, 1, &o, &err) != 0 &&
              strstr(err.message, "(--set): optim.learning_rate"),
          "%s", err.message);
    ldmc_err_clear(&err);
    const char *range[] = {"diffusion.t_min=300", "diffusion.t_max=200"};
    CHECK(ldmc_train_config_load(path, range, 2, &o, &err) != 0 && strstr(err.message, "t_min"),
          "%s", err.message);
    // projections made again: through a memory plan, and for a UNet only
    const char *no_plan[] = {"train.recompute_projections=true", "train.memory_plan=false"};
    ldmc_err_clear(&err);
    CHECK(ldmc_train_config_load(path, no_plan, 2, &o, &err) != 0 &&
              strstr(err.message, "train.recompute_projections") &&
              strstr(err.message, "memory_plan: true"),
          "%s", err.message);
    ldmc_err_clear(&err);
    snprintf(path, sizeof path, "%s/demo_vae.yaml", LDMC_CONFIG_DIR);
    CHECK(ldmc_train_config_load(path, no_plan, 1, &o, &err) != 0 &&
              strstr(err.message, "a diffusion task"),
          "%s", err.message);
    snprintf(path, sizeof path, "%s/demo.yaml", LDMC_CONFIG_DIR);
    // an autoencoder of other than RGB images: refused (every image ldmc reads has 3 channels)
    ldmc_err_clear(&err);
    const char *gray[] = {"vae={in_channels: 1, out_channels: 1, ch: 32, ch_mult: [1], "
                          "num_res_blocks: 1, z_channels: 4, embed_dim: 4}"};
    CHECK(ldmc_train_config_load(path, gray, 1, &o, &err) != 0 &&
              strstr(err.message, "takes 1 channels and gives 1: ldmc trains on RGB images"),
          "%s", err.message);
}

// ---- whole runs of tiny models
// ------------------------------------------------------------------------

static char fixture[1024];

// Pictures (with one truncated file), the tiny VAE's weights, and a config template.
static void make_fixture(void) {
    if (fixture[0]) return;
    snprintf(fixture, sizeof fixture, "%s", test_tmp_path("fixture"));
    ldmc_err err = {0};
    char path[1200];
    snprintf(path, sizeof path, "%s/data", fixture);
    LDMC_CHECK(ldmc_shapes_write(path, 6, 1, &err) == 0, "%s", err.message);
    // a JPEG cut in its data: readable at scan, fails at decode
    char src[1300], dst[1300];
    snprintf(src, sizeof src, "%s/data/circle/0002.jpg", fixture);
    snprintf(dst, sizeof dst, "%s/data/circle/cut.jpg", fixture);
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    LDMC_CHECK(in && out, "fixture files");
    uint8_t buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, in);
    fwrite(buf, 1, n * 3 / 4, out);
    fclose(in);
    fclose(out);
    snprintf(path, sizeof path, "%s/vae.safetensors", fixture);
    test_write_tiny_vae(path, 5, false);
    // the same weights with one infinity: every latent, and so every loss, is not finite
    snprintf(path, sizeof path, "%s/vae_inf.safetensors", fixture);
    test_write_tiny_vae(path, 5, true);
}

// Writes <fixture>/<name>.yaml for a tiny run on <fixture>/<data> into <fixture>/<name>/; `extra`
// is appended.
static const char *tiny_config_on(const char *name, bool vae_task, const char *data,
                                  const char *extra) {
    static char path[8][1200];
    static int next;
    char *p = path[next++ % 8];
    snprintf(p, 1200, "%s/%s.yaml", fixture, name);
    char text[4096];
    if (vae_task)
        snprintf(text, sizeof text,
                 "task: vae\nmodel: %s/tiny_vae.yaml\n"
                 "data: {source: images, path: %s, labels: folders, buckets: {pixels: 1024, "
                 "multiple: 8, max_ratio: 2},"
                 " batch_size: 4, workers: 2, prefetch: 3, flip: 0.5}\n"
                 "optim: {lr: 1.0e-3, warmup: 2}\nema: {decay: 0.9}\n"
                 "train: {steps: 4, seed: 3, out: %s, checkpoint_every: 2, keep: 5, log_every: 1, "
                 "sample_every: 4}\n%s",
                 test_config_dir(), data, name, extra);
    else
        snprintf(
            text, sizeof text,
            "task: diffusion\nmodel: %s/tiny_unet_class.yaml\nvae: %s/tiny_vae.yaml\nvae_weights: "
            "vae.safetensors\n"
            "data: {source: images, path: %s, labels: folders, buckets: {pixels: 1024, multiple: "
            "8, max_ratio: 2},"
            " batch_size: 3, workers: 2, prefetch: 3, flip: 0.5}\n"
            "diffusion: {prediction: v, offset_noise: 0.05, cond_dropout: 0.3, min_snr_gamma: 5}\n"
            "optim: {lr: 1.0e-3, warmup: 2, grad_clip: 1.0, accumulation: 2, schedule: "
            "cosine}\nema: {decay: 0.9}\n"
            "sample: {steps: 3, guidance_scale: 2.0, per_class: 2, height: 16, width: 16}\n"
            "train: {steps: 6, seed: 3, out: %s, checkpoint_every: 3, keep: 5, log_every: 2, "
            "sample_every: 6}\n%s",
            test_config_dir(), test_config_dir(), data, name, extra);
    LDMC_CHECK(test_write_text(p, text) == 0, "cannot write %s", p);
    return p;
}

static const char *tiny_config(const char *name, bool vae_task, const char *extra) {
    return tiny_config_on(name, vae_task, "data", extra);
}

// A run in this process with `--set`s, its progress lines appended to <out>/train.log.
static int run_in_process_set(const char *config, const char *resume, const char *const *sets,
                              int n_sets, ldmc_train_result *r, ldmc_err *err) {
    ldmc_train_config c;
    if (ldmc_train_config_load(config, sets, n_sets, &c, err) != 0) return -1;
    fflush(stdout);
    int saved = dup(1); // the run's progress lines go to its out folder's log
    char log[1400];
    snprintf(log, sizeof log, "%s/train.log", c.out);
    ldmc_mkdirs(c.out, err);
    FILE *f = freopen(log, "a", stdout);
    int rc = f ? ldmc_train(&c, resume, r, err) : -1;
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    ldmc_train_config_free(&c);
    return rc;
}

static int run_in_process(const char *config, const char *resume, ldmc_train_result *r,
                          ldmc_err *err) {
    return run_in_process_set(config, resume, NULL, 0, r, err);
}

// The ldmc binary: the build's, or LDMC_CLI from the environment (a build copied elsewhere).
static const char *cli(void) {
    const char *path = getenv("LDMC_CLI");
    return path ? path : LDMC_CLI;
}

// `ldmc train CONFIG [--resume latest]` in a child process with LDMC_CHECKPOINT_KILL_POINT set;
// returns the signal that ended it (0 when it exited).
static int run_child(const char *config, const char *kill_point, bool resume) {
    pid_t pid = fork();
    if (pid == 0) {
        if (kill_point) setenv("LDMC_CHECKPOINT_KILL_POINT", kill_point, 1);
        if (!freopen("/dev/null", "w", stdout)) _exit(126);
        if (resume)
            execl(cli(), cli(), "train", config, "--resume", "latest", (char *)NULL);
        else
            execl(cli(), cli(), "train", config, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFSIGNALED(status) ? WTERMSIG(status)
                               : (WEXITSTATUS(status) ? -WEXITSTATUS(status) : 0);
}

// `ldmc train CONFIG --set SETTING [--resume latest]` in a child process, as run_child.
static int run_child_set(const char *config, const char *kill_point, bool resume,
                         const char *setting) {
    pid_t pid = fork();
    if (pid == 0) {
        if (kill_point) setenv("LDMC_CHECKPOINT_KILL_POINT", kill_point, 1);
        if (!freopen("/dev/null", "w", stdout)) _exit(126);
        if (resume)
            execl(cli(), cli(), "train", config, "--set", setting, "--resume", "latest",
                  (char *)NULL);
        else
            execl(cli(), cli(), "train", config, "--set", setting, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFSIGNALED(status) ? WTERMSIG(status)
                               : (WEXITSTATUS(status) ? -WEXITSTATUS(status) : 0);
}

// Signals for a child run: `count` times `sig`, `gap_ms` apart, `delay_ms` after its
// metrics.jsonl (flushed at every logged step) has `after_lines` lines.
typedef struct child_signals {
    const char *metrics;
    int after_lines, delay_ms, sig, count, gap_ms;
} child_signals;

// `ldmc ARGS...` (NULL-terminated) in a child process with stdout and stderr appended to `log`;
// returns its exit status, or 128 + the signal that ended it, as a shell does.
static int run_cli(const char *log, const char *const *args, const child_signals *sigs) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(log, "a", stdout) || dup2(fileno(stdout), 2) < 0) _exit(126);
        char *argv[32] = {(char *)cli()};
        for (int i = 0; args[i] && i < 30; i++)
            argv[i + 1] = (char *)args[i];
        execv(cli(), argv);
        _exit(127);
    }
    int status = 0;
    for (int sent = 0; sigs && sent < sigs->count;) {
        if (waitpid(pid, &status, WNOHANG) == pid) // it ended before the signals
            return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
        int lines = 0;
        FILE *f = fopen(sigs->metrics, "r");
        for (int c; f && (c = fgetc(f)) != EOF;)
            lines += c == '\n';
        if (f) fclose(f);
        if (lines < sigs->after_lines) {
            usleep(2000);
            continue;
        }
        if (sent == 0) usleep((useconds_t)sigs->delay_ms * 1000);
        kill(pid, sigs->sig);
        if (++sent < sigs->count) usleep((useconds_t)sigs->gap_ms * 1000);
    }
    waitpid(pid, &status, 0);
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

static void copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    LDMC_CHECK(in && out, "cannot copy %s to %s", from, to);
    char buf[1 << 16];
    for (size_t n; (n = fread(buf, 1, sizeof buf, in)) > 0;)
        LDMC_CHECK(fwrite(buf, 1, n, out) == n, "cannot write %s", to);
    fclose(in);
    LDMC_CHECK(fclose(out) == 0, "cannot write %s", to);
}

static void check_same_checkpoint(const char *run_a, const char *run_b, int step, bool ema) {
    static const char *const files[] = {"model.safetensors", "optimizer.safetensors", "state.json",
                                        "ema.safetensors"};
    for (int i = 0; i < (ema ? 4 : 3); i++) {
        char a[1400], b[1400];
        snprintf(a, sizeof a, "%s/%s/checkpoints/step-%08d/%s", fixture, run_a, step, files[i]);
        snprintf(b, sizeof b, "%s/%s/checkpoints/step-%08d/%s", fixture, run_b, step, files[i]);
        CHECK(test_same_file(a, b), "%s differs between %s and %s at step %d", files[i], run_a,
              run_b, step);
    }
}

// 2N steps in one go, against N steps, kill -9, and N more after --resume latest.
static void test_resume_after_kill_is_bit_identical(void) {
    make_fixture();
    ldmc_err err = {0};
    ldmc_train_result r;
    REQUIRE(run_in_process(tiny_config("straight", false, ""), NULL, &r, &err) == 0, "%s",
            err.message);
    CHECK(r.steps == 6 && r.last_grid[0] && r.last_checkpoint[0],
          "6 steps, a grid and a checkpoint");
    CHECK(r.failed_files == 1 && r.left_out >= 1 && r.skipped_files == 0,
          "the cut JPEG is left out and counted once (%lld files, left out %lld times, %d skipped "
          "at scan)",
          (long long)r.failed_files, (long long)r.left_out, r.skipped_files);
    const char *killed = tiny_config("killed", false, "");
    CHECK(run_child(killed, "saved@3", false) == SIGKILL,
          "the child is killed after its step-3 checkpoint");
    char path[1400];
    snprintf(path, sizeof path, "%s/killed/checkpoints/step-00000006", fixture);
    CHECK(access(path, F_OK) != 0, "the killed run did not get to step 6");
    REQUIRE(run_in_process(killed, "latest", &r, &err) == 0, "%s", err.message);
    CHECK(r.steps == 6, "resumed to step %lld", (long long)r.steps);
    check_same_checkpoint("straight", "killed", 6, true);
    // metrics.jsonl has each step once, in order
    snprintf(path, sizeof path, "%s/killed/metrics.jsonl", fixture);
    FILE *f = fopen(path, "r");
    REQUIRE(f, "no metrics.jsonl");
    char line[512];
    int expect = 1;
    while (fgets(line, sizeof line, f)) {
        int step = -1;
        sscanf(line, "{\"step\":%d", &step);
        CHECK(step == expect, "metrics line for step %d, want %d", step, expect);
        expect++;
    }
    fclose(f);
    CHECK(expect == 7, "6 metrics lines, got %d", expect - 1);
    // and the same lines as the uninterrupted run's (losses, norms, the image count)
    char straight[1400];
    snprintf(straight, sizeof straight, "%s/straight/metrics.jsonl", fixture);
    CHECK(test_same_file(path, straight), "metrics.jsonl differs from the uninterrupted run's");
    snprintf(path, sizeof path, "%s/killed/loss_curve.png", fixture);
    CHECK(access(path, F_OK) == 0, "the loss curve is drawn");
    // the same for the autoencoder
    REQUIRE(run_in_process(tiny_config("vae_straight", true, ""), NULL, &r, &err) == 0, "%s",
            err.message);
    const char *vkilled = tiny_config("vae_killed", true, "");
    CHECK(run_child(vkilled, "saved@2", false) == SIGKILL, "the vae child is killed after step 2");
    REQUIRE(run_in_process(vkilled, "latest", &r, &err) == 0, "%s", err.message);
    check_same_checkpoint("vae_straight", "vae_killed", 4, true);
    // a new run refuses an out folder that holds checkpoints
    CHECK(run_in_process(killed, NULL, &r, &err) != 0 && strstr(err.message, "--resume latest"),
          "%s", err.message);
    ldmc_err_clear(&err);
    // resuming a finished run does nothing, and says so
    CHECK(run_in_process(killed, "latest", &r, &err) == 0 && r.steps == 6, "%s", err.message);
    // a second run into a folder in use is refused
    snprintf(path, sizeof path, "%s/killed/lock", fixture);
    int fd = open(path, O_RDWR);
    REQUIRE(fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0, "cannot take %s", path);
    CHECK(run_in_process(killed, "latest", &r, &err) != 0 && strstr(err.message, "another run"),
          "%s", err.message);
    close(fd);
}

// Loads a tiny diffusion run's checkpoint (weights, EMA, optimizer) into a fresh UNet.
static int load_tiny_unet(const char *dir, ldmc_unet *u, ldmc_train_state *st, ldmc_err *err) {
    ldmc_model_config mc = test_model_config("tiny_unet_class.yaml");
    ldmc_unet_init(u, &mc.unet);
    ldmc_params_alloc(&u->params, LDMC_ROLE_WEIGHTS);
    ldmc_params_alloc(&u->params, LDMC_ROLE_ADAM_M);
    ldmc_params_alloc(&u->params, LDMC_ROLE_ADAM_V);
    ldmc_params_alloc(&u->params, LDMC_ROLE_EMA);
    ldmc_model model = ldmc_unet_model(u);
    ldmc_checkpoint_model m = {.model = &model, .ema = true};
    return ldmc_checkpoint_load(dir, &m, st, err);
}

// A kill in the middle of writing a checkpoint leaves the previous one whole.
static void test_kill_during_checkpoint_write(void) {
    make_fixture();
    static const char *const points[] = {"model@6", "optimizer@6", "before-rename@6"};
    for (int i = 0; i < 3; i++) {
        char name[64];
        snprintf(name, sizeof name, "torn%d", i);
        const char *config = tiny_config(name, false, "");
        CHECK(run_child(config, points[i], false) == SIGKILL, "killed at %s", points[i]);
        char out[1200], latest[4200], tmp[1400];
        snprintf(out, sizeof out, "%s/%s", fixture, name);
        ldmc_err err = {0};
        REQUIRE(ldmc_checkpoint_latest(out, latest, sizeof latest, &err) == 0, "%s", err.message);
        CHECK(strstr(latest, "step-00000003") != NULL, "%s: latest is %s", points[i], latest);
        snprintf(tmp, sizeof tmp, "%s/checkpoints/step-00000006.tmp", out);
        CHECK(access(tmp, F_OK) == 0, "%s: the torn write is a .tmp folder", points[i]);
        // the previous checkpoint loads
        static ldmc_unet u;
        ldmc_train_state st;
        CHECK(load_tiny_unet(latest, &u, &st, &err) == 0 && st.step == 3 && st.batches == 6,
              "%s (step %lld)", err.message, (long long)st.step);
        ldmc_unet_free(&u);
        // and the run resumes from it to the same end as an uninterrupted one
        CHECK(run_child(config, NULL, true) == 0, "resume after the torn write");
        CHECK(access(tmp, F_OK) != 0, "the .tmp folder is cleaned up");
        check_same_checkpoint("straight", name, 6, true);
    }
}

static void test_nonfinite_steps(void) {
    make_fixture();
    ldmc_err err = {0};
    ldmc_train_result r;
    // An autoencoder with an infinite weight: every latent and every loss is not finite.
    const char *skip = tiny_config("nan_skip", false, "");
    const char *sets[] = {"vae_weights=vae_inf.safetensors", "train.steps=3"};
    ldmc_train_config c;
    REQUIRE(ldmc_train_config_load(skip, sets, 2, &c, &err) == 0, "%s", err.message);
    REQUIRE(ldmc_train(&c, NULL, &r, &err) == 0, "%s", err.message);
    CHECK(r.steps == 3 && r.skipped_steps == 3, "%lld skipped of 3", (long long)r.skipped_steps);
    ldmc_train_config_free(&c);
    const char *stop = tiny_config("nan_stop", false, "");
    const char *sets_stop[] = {"vae_weights=vae_inf.safetensors", "optim.nonfinite=stop"};
    REQUIRE(ldmc_train_config_load(stop, sets_stop, 2, &c, &err) == 0, "%s", err.message);
    CHECK(ldmc_train(&c, NULL, &r, &err) != 0 && strstr(err.message, "non-finite"), "%s",
          err.message);
    ldmc_train_config_free(&c);
}

// optim.fused_backward: each parameter updated during backward, its gradient then freed, gives
// the run the flat gradient buffer gives, bit for bit: weights, Adam m and v, and EMA at every
// checkpoint (every `every` steps to `last`; clipping off and one micro-batch a step, as it
// needs). `sets` (n of them) apply to both runs.
static void fused_run_matches(const char *plain, const char *fused, const char *const *sets, int n,
                              const char *device, int every, int last) {
    ldmc_err err = {0};
    ldmc_train_result r;
    const char *both[8];
    for (int i = 0; i < n; i++)
        both[i] = sets[i];
    both[n] = device;
    REQUIRE(run_in_process_set(plain, NULL, both, n + 1, &r, &err) == 0, "%s", err.message);
    both[n + 1] = "optim.fused_backward=true";
    REQUIRE(run_in_process_set(fused, NULL, both, n + 2, &r, &err) == 0, "%s", err.message);
    static const char *const files[] = {"model.safetensors", "optimizer.safetensors",
                                        "ema.safetensors"};
    const char *a_name = strrchr(plain, '/') + 1, *b_name = strrchr(fused, '/') + 1;
    for (int step = every; step <= last; step += every)
        for (int i = 0; i < 3; i++) {
            char a[1400], b[1400];
            snprintf(a, sizeof a, "%s/%.*s/checkpoints/step-%08d/%s", fixture,
                     (int)strcspn(a_name, "."), a_name, step, files[i]);
            snprintf(b, sizeof b, "%s/%.*s/checkpoints/step-%08d/%s", fixture,
                     (int)strcspn(b_name, "."), b_name, step, files[i]);
            CHECK(test_same_file(a, b), "%s at step %d: %s differs with fused_backward (%s)",
                  files[i], step, b, device);
        }
}

static void test_fused_backward_is_the_same_update(void) {
    make_fixture();
    const char *sets[] = {"optim.grad_clip=0", "optim.accumulation=1"};
    fused_run_matches(tiny_config("fused_plain", false, ""), tiny_config("fused_on", false, ""),
                      sets, 2, "train.device=cpu", 3, 6);
    // gradient checkpointing: the parameters read in a recompute region wait for its backward
    const char *ckpt[] = {"optim.grad_clip=0", "optim.accumulation=1",
                          "train.gradient_checkpointing=true"};
    fused_run_matches(tiny_config("fused_ckpt_plain", false, ""),
                      tiny_config("fused_ckpt_on", false, ""), ckpt, 3, "train.device=cpu", 3, 6);
    // the autoencoder task
    fused_run_matches(tiny_config("fused_vae_plain", true, ""),
                      tiny_config("fused_vae_on", true, ""), sets, 1, "train.device=cpu", 2, 4);
    // what it cannot do is refused by name
    ldmc_err err = {0};
    ldmc_train_config c;
    const char *clip[] = {"optim.fused_backward=true"};
    CHECK(ldmc_train_config_load(tiny_config("fused_clip", false, ""), clip, 1, &c, &err) != 0 &&
              strstr(err.message, "grad_clip: 0"),
          "fused_backward with grad_clip 1: %s", err.message);
    const char *accum[] = {"optim.fused_backward=true", "optim.grad_clip=0"};
    err = (ldmc_err){0};
    CHECK(ldmc_train_config_load(tiny_config("fused_accum", false, ""), accum, 2, &c, &err) != 0 &&
              strstr(err.message, "accumulation: 1"),
          "fused_backward with accumulation 2: %s", err.message);
    // every gradient NaN (an infinite autoencoder weight): every parameter keeps its value, as a
    // skipped step's do
    ldmc_train_result r;
    err = (ldmc_err){0};
    const char *nan[] = {"vae_weights=vae_inf.safetensors", "train.steps=3", "optim.grad_clip=0",
                         "optim.accumulation=1", "optim.fused_backward=true"};
    REQUIRE(run_in_process_set(tiny_config("fused_nan", false, ""), NULL, nan, 5, &r, &err) == 0,
            "%s", err.message);
    CHECK(r.steps == 3 && r.skipped_steps == 3, "%lld skipped of 3", (long long)r.skipped_steps);
    REQUIRE(run_in_process_set(tiny_config("fused_nan_plain", false, ""), NULL, nan, 4, &r, &err) ==
                0,
            "%s", err.message);
    char a[1400], b[1400];
    snprintf(a, sizeof a, "%s/fused_nan/checkpoints/step-%08d/model.safetensors", fixture, 3);
    snprintf(b, sizeof b, "%s/fused_nan_plain/checkpoints/step-%08d/model.safetensors", fixture, 3);
    CHECK(test_same_file(a, b), "NaN gradients: the fused run's weights moved");
}

// The same on the GPU (the emulation: the same bits; a real GPU: see test_cuda for its own).
static void test_gpu_fused_backward_is_the_same_update(void) {
    make_fixture();
    const char *sets[] = {"optim.grad_clip=0", "optim.accumulation=1"};
    fused_run_matches(tiny_config("gpu_fused_plain", false, ""),
                      tiny_config("gpu_fused_on", false, ""), sets, 2, "train.device=cuda", 3, 6);
}

// `ldmc cache` of a config into h5, its output into `log`.
static int build_cache_logged(const ldmc_train_config *c, const char *h5, bool flip,
                              const char *log, ldmc_err *err) {
    fflush(stdout);
    int saved = dup(1);
    if (!freopen(log, "w", stdout)) return LDMC_ERR(err, "cannot write %s", log);
    int built = ldmc_cache_build(c, h5, flip, err);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    return built;
}

// ---- text models: SDXL-shaped (CLIP-L-like + bigG-like) and refiner-shaped tiny runs ---------------

// <fixture>/captioned: the shapes with a caption .txt beside each picture; <fixture>/<model>.init:
// `ldmc init` of the model config (UNet and text encoders in one official file).
static void make_text_fixture(const char *model) {
    make_fixture();
    char path[1400];
    ldmc_err err = {0};
    snprintf(path, sizeof path, "%s/captioned", fixture);
    if (access(path, F_OK) != 0) {
        LDMC_CHECK(ldmc_shapes_write(path, 3, 2, &err) == 0, "%s", err.message);
        static const char *const shapes[] = {"circle", "cross", "square", "triangle"};
        static const char *const moods[] = {"a bright", "a small, dark", "one big"};
        for (int s = 0; s < 4; s++)
            for (int k = 0; k < 3; k++) {
                char dir[1500], image[1800], caption[1800];
                snprintf(dir, sizeof dir, "%s/%s", path, shapes[s]);
                DIR *d = opendir(dir);
                LDMC_CHECK(d, "%s", dir);
                struct dirent *e;
                int seen = 0;
                while ((e = readdir(d)))
                    if (e->d_name[0] != '.' && seen++ == k) {
                        snprintf(image, sizeof image, "%s/%s", dir, e->d_name);
                        snprintf(caption, sizeof caption, "%.*s.txt",
                                 (int)(strrchr(image, '.') - image), image);
                        char text[128];
                        snprintf(text, sizeof text, "%s %s &amp; its shadow, photo #%d", moods[k],
                                 shapes[s], k);
                        LDMC_CHECK(test_write_text(caption, text) == 0, "%s", caption);
                    }
                closedir(d);
            }
    }
    snprintf(path, sizeof path, "%s/%s.init", fixture, model);
    if (access(path, F_OK) == 0) return;
    ldmc_model_config mc = test_model_config(model);
    ldmc_model models[LDMC_MAX_MODELS];
    int n = ldmc_models_create(&mc, models);
    for (int i = 0; i < n; i++) {
        ldmc_params_alloc(models[i].params, LDMC_ROLE_WEIGHTS);
        ldmc_params_init(models[i].params, 11);
    }
    LDMC_CHECK(ldmc_save_models(path, LDMC_LAYOUT_OFFICIAL, models, n, LDMC_F32,
                                LDMC_ROLE_WEIGHTS, NULL, &err) == 0,
               "%s", err.message);
    for (int i = 0; i < n; i++)
        ldmc_model_destroy(&models[i]);
}

// A text run's config: the tiny model, its init file, the tests' vocabulary, text.uncond;
// `extra` appended.
static const char *text_config(const char *name, const char *model, const char *uncond,
                               const char *extra) {
    make_text_fixture(model);
    static char path[4][1200];
    static int next;
    char *p = path[next++ % 4];
    snprintf(p, 1200, "%s/%s.yaml", fixture, name);
    char text[4096];
    snprintf(text, sizeof text,
             "task: diffusion\nmodel: %s/%s\nvae: %s/tiny_vae.yaml\nvae_weights: vae.safetensors\n"
             "init: %s.init\ntext: {vocab: %s/tiny_bpe, uncond: %s}\n"
             "data: {source: images, path: captioned, buckets: {pixels: 1024, multiple: 8, "
             "max_ratio: 2}, batch_size: 3, workers: 2, prefetch: 3, flip: 0.5}\n"
             "optim: {lr: 1.0e-3, warmup: 2, grad_clip: 1.0, accumulation: 2}\nema: {decay: 0.9}\n"
             "sample: {steps: 3, guidance_scale: 2.0, per_class: 2, height: 16, width: 16, "
             "prompts: [a bright circle, one big cross]}\n"
             "train: {steps: 4, seed: 5, out: %s, checkpoint_every: 2, keep: 5, log_every: 1, "
             "sample_every: 4}\n%s",
             test_config_dir(), model, test_config_dir(), model, test_data_dir(), uncond, name,
             extra);
    LDMC_CHECK(test_write_text(p, text) == 0, "cannot write %s", p);
    return p;
}

// A straight run, and one killed after its first checkpoint and resumed: the same end, bit for
// bit; and the captions matter: a run whose captions are all dropped ends elsewhere.
static void text_run_resumes(const char *name, const char *model, const char *uncond,
                             const char *extra) {
    char straight[128], killed[128], dropped[128];
    snprintf(straight, sizeof straight, "%s_straight", name);
    snprintf(killed, sizeof killed, "%s_killed", name);
    snprintf(dropped, sizeof dropped, "%s_dropped", name);
    ldmc_err err = {0};
    ldmc_train_result r;
    REQUIRE(run_in_process(text_config(straight, model, uncond, extra), NULL, &r, &err) == 0, "%s",
            err.message);
    CHECK(r.steps == 4 && r.last_grid[0] && r.last_checkpoint[0],
          "%s: 4 steps, a grid and a checkpoint", name);
    const char *k = text_config(killed, model, uncond, extra);
    CHECK(run_child(k, "saved@2", false) == SIGKILL, "%s: killed after step 2", name);
    REQUIRE(run_in_process(k, "latest", &r, &err) == 0, "%s", err.message);
    CHECK(r.steps == 4, "%s: resumed to step %lld", name, (long long)r.steps);
    check_same_checkpoint(straight, killed, 4, true);
    const char *all_dropped[] = {"diffusion.cond_dropout=1.0"};
    REQUIRE(run_in_process_set(text_config(dropped, model, uncond, extra), NULL, all_dropped, 1, &r,
                               &err) == 0,
            "%s", err.message);
    char a[1400], b[1400];
    snprintf(a, sizeof a, "%s/%s/checkpoints/step-00000004/model.safetensors", fixture, straight);
    snprintf(b, sizeof b, "%s/%s/checkpoints/step-00000004/model.safetensors", fixture, dropped);
    CHECK(!test_same_file(a, b), "%s: the captions change nothing", name);
}

// `ldmc cache` of a text run's data holds each caption's embeddings (checked against the
// encoders on the caption, to f16's precision) and the empty caption's; a run on the cache
// trains, and resumes bit for bit.
static void text_cache_run(const char *name, const char *model, const char *uncond,
                           const char *extra) {
    char base[128], cached[128], killed[128], h5[1200], path[1300];
    snprintf(base, sizeof base, "%s_for_cache", name);
    snprintf(cached, sizeof cached, "%s_cached", name);
    snprintf(killed, sizeof killed, "%s_cached_killed", name);
    snprintf(h5, sizeof h5, "%s/%s.h5", fixture, name);
    ldmc_err err = {0};
    ldmc_train_config c;
    REQUIRE(ldmc_train_config_load(text_config(base, model, uncond, extra), NULL, 0, &c, &err) == 0,
            "%s", err.message);
    snprintf(path, sizeof path, "%s/%s.log", fixture, name);
    REQUIRE(build_cache_logged(&c, h5, false, path, &err) == 0, "%s", err.message);
    ldmc_cache cache;
    REQUIRE(ldmc_cache_open(&cache, h5, &err) == 0, "%s", err.message);
    const ldmc_unet_config *u = &c.model.unet;
    CHECK(cache.text_tokens == 77 && cache.text_context_dim == u->context_dim &&
              cache.text_pooled_dim == u->pooled_dim && cache.empty_context && cache.empty_pooled,
          "%s: text embeddings %d x %d, pooled %d", name, cache.text_tokens,
          cache.text_context_dim, cache.text_pooled_dim);
    // entry 0 and the empty caption against the encoders
    ldmc_text_models tm;
    REQUIRE(ldmc_text_models_load(&tm, &c, &err) == 0, "%s", err.message);
    ldmc_conditioner cond = {.unet = u};
    ldmc_text_models_attach(&tm, &c, &cond);
    ldmc_dataset d;
    REQUIRE(ldmc_dataset_scan(c.data_path, c.labels, &d, &err) == 0, "%s", err.message);
    size_t nc = (size_t)77 * u->context_dim;
    float *got = malloc((nc + (size_t)u->pooled_dim) * sizeof *got);
    float *want = malloc((nc + (size_t)u->pooled_dim) * sizeof *want);
    int32_t sample = -1;
    ldmc_cache_entry e = {.mean = malloc(4096 * sizeof(float)),
                          .std = malloc(4096 * sizeof(float)),
                          .context = got,
                          .pooled = got + nc};
    REQUIRE(cache.groups[0].h * cache.groups[0].w * cache.channels <= 4096, "latent size");
    REQUIRE(ldmc_cache_read(&cache, 0, &e, &err) == 0, "%s", err.message);
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    for (int which = 0; which < 2; which++) {
        const char *caption = "";
        if (!which) { // entry 0's caption: the cache's sample index names its image
            hid_t f = H5Fopen(h5, H5F_ACC_RDONLY, H5P_DEFAULT);
            char group[128];
            snprintf(group, sizeof group, "buckets/%dx%d/sample", cache.groups[0].height,
                     cache.groups[0].width);
            hid_t ds = H5Dopen2(f, group, H5P_DEFAULT);
            hid_t space = H5Dget_space(ds), mem = H5Screate_simple(1, (hsize_t[]){1}, NULL);
            H5Sselect_hyperslab(space, H5S_SELECT_SET, (hsize_t[]){0}, NULL, (hsize_t[]){1}, NULL);
            H5Dread(ds, H5T_NATIVE_INT32, mem, space, H5P_DEFAULT, &sample);
            H5Sclose(mem), H5Sclose(space), H5Dclose(ds), H5Fclose(f);
            REQUIRE(sample >= 0 && sample < d.count, "sample %d", sample);
            caption = d.items[sample].caption ? d.items[sample].caption : "";
        } else {
            memcpy(got, cache.empty_context, nc * sizeof *got);
            memcpy(got + nc, cache.empty_pooled, (size_t)u->pooled_dim * sizeof *got);
        }
        ldmc_ctx_reset(&ctx);
        ldmc_tensor *context, *pooled;
        ldmc_conditioner_encode(&ctx, &cond, 1, &caption, NULL, &context, &pooled);
        ldmc_read_f32(context, want);
        ldmc_read_f32(pooled, want + nc);
        double worst = 0;
        for (size_t k = 0; k < nc + (size_t)u->pooled_dim; k++)
            worst = fmax(worst, fabs(got[k] - want[k]) / (fabs(want[k]) + 1e-2));
        CHECK(worst < 1e-3, "%s: %s embeddings differ from the encoders' by %g (relative)", name,
              which ? "the empty caption's" : "entry 0's", worst);
    }
    ldmc_ctx_free(&ctx);
    free(e.mean), free(e.std), free(got), free(want);
    ldmc_dataset_free(&d);
    ldmc_text_models_free(&tm);
    ldmc_cache_close(&cache);
    ldmc_train_config_free(&c);
    // training on it, resumed after a kill: the same end
    char setting[1400];
    snprintf(setting, sizeof setting, "data={source: cache, path: %s, batch_size: 3}", h5);
    const char *sets[] = {setting};
    ldmc_train_result r;
    REQUIRE(run_in_process_set(text_config(cached, model, uncond, extra), NULL, sets, 1, &r,
                               &err) == 0,
            "%s", err.message);
    CHECK(r.steps == 4 && r.last_checkpoint[0], "%s: 4 steps on the cache", name);
    const char *k = text_config(killed, model, uncond, extra);
    CHECK(run_child_set(k, "saved@2", false, setting) == SIGKILL, "%s: killed after step 2", name);
    REQUIRE(run_in_process_set(k, "latest", sets, 1, &r, &err) == 0, "%s", err.message);
    check_same_checkpoint(cached, killed, 4, true);
}

static void test_text_sdxl_shaped_run(void) {
    const char *extra = "diffusion: {prediction: eps, offset_noise: 0.05, cond_dropout: 0.3}\n";
    text_run_resumes("sdxl_text", "tiny_unet_text.yaml", "zeros", extra);
    // the transformers' projections made again in backward: the same run, bit for bit
    const char *remade[] = {"train.recompute_projections=true"};
    ldmc_err err = {0};
    ldmc_train_result r;
    REQUIRE(
        run_in_process_set(text_config("sdxl_text_remade", "tiny_unet_text.yaml", "zeros", extra),
                           NULL, remade, 1, &r, &err) == 0,
        "%s", err.message);
    check_same_checkpoint("sdxl_text_straight", "sdxl_text_remade", 4, true);
    text_cache_run("sdxl_text", "tiny_unet_text.yaml", "zeros", extra);
}

// The refiner's: bigG-like only, t in [0, 200), aesthetic score in the vector, "" for dropped
// captions (sgm's legacy refiner).
static void test_text_refiner_shaped_run(void) {
    const char *extra = "diffusion: {prediction: eps, t_min: 0, t_max: 200, cond_dropout: 0.3}\n";
    text_run_resumes("refiner_text", "tiny_refiner_text.yaml", "empty", extra);
    text_cache_run("refiner_text", "tiny_refiner_text.yaml", "empty", extra);
}

// metadata.jsonl: captions, original sizes and the refiner's aesthetic scores per file; a bad
// score skips its line, named. A refiner run trains on them, and the latent cache keeps them
// (test_pipeline.c checks that the score changes the vector).
static void test_metadata_and_aesthetic_scores(void) {
    make_text_fixture("tiny_refiner_text.yaml");
    char path[1400];
    snprintf(path, sizeof path, "%s/captioned/metadata.jsonl", fixture);
    FILE *f = fopen(path, "w");
    REQUIRE(f, "cannot write %s", path);
    static const char *const shapes[] = {"circle", "cross", "square", "triangle"};
    int lines = 0;
    for (int s = 0; s < 4; s++) {
        char dir[1500];
        snprintf(dir, sizeof dir, "%s/captioned/%s", fixture, shapes[s]);
        DIR *d = opendir(dir);
        REQUIRE(d, "%s", dir);
        struct dirent *e;
        while ((e = readdir(d))) {
            size_t len = strlen(e->d_name);
            if (e->d_name[0] == '.' || len < 4 || strcmp(e->d_name + len - 4, ".txt") == 0)
                continue;
            fprintf(f,
                    "{\"file\": \"%s/%s\", \"caption\": \"a %s, scored\", \"original_size\": "
                    "[%d, %d], \"aesthetic_score\": %.2f}\n",
                    shapes[s], e->d_name, shapes[s], 500 + lines, 600, 1.0 + 0.25 * lines);
            lines++;
        }
        closedir(d);
    }
    fprintf(f, "{\"file\": \"circle/x.png\", \"aesthetic_score\": \"high\"}\n");
    fclose(f);
    snprintf(path, sizeof path, "%s/captioned", fixture);
    ldmc_dataset d;
    ldmc_err err = {0};
    REQUIRE(ldmc_dataset_scan(path, LDMC_LABELS_METADATA, &d, &err) == 0, "%s", err.message);
    CHECK(d.count == lines && d.skipped == 1 && strstr(d.skip_reasons[0], "aesthetic_score"),
          "%d samples (want %d), %d skipped", d.count, lines, d.skipped);
    bool scored = d.count > 0;
    for (int i = 0; i < d.count; i++)
        scored &= d.items[i].has_aesthetic && d.items[i].original_width == 600 &&
                  d.items[i].aesthetic == 1.0f + 0.25f * (float)(d.items[i].original_height - 500) &&
                  d.items[i].caption && strstr(d.items[i].caption, "scored");
    CHECK(scored, "the metadata's scores, sizes and captions");
    ldmc_dataset_free(&d);
    // a refiner run on them, and their cache
    const char *extra = "diffusion: {prediction: eps, t_min: 0, t_max: 200}\n";
    const char *sets[] = {"data.labels=metadata", "train.steps=2"};
    ldmc_train_result r;
    REQUIRE(run_in_process_set(text_config("scored", "tiny_refiner_text.yaml", "empty", extra),
                               NULL, sets, 2, &r, &err) == 0,
            "%s", err.message);
    CHECK(r.steps == 2, "a refiner run on metadata with scores");
    ldmc_train_config c;
    REQUIRE(ldmc_train_config_load(text_config("scored_cache", "tiny_refiner_text.yaml", "empty",
                                               extra),
                                   sets, 1, &c, &err) == 0,
            "%s", err.message);
    char h5[1300], log[1300];
    snprintf(h5, sizeof h5, "%s/scored.h5", fixture);
    snprintf(log, sizeof log, "%s/scored_cache.log", fixture);
    REQUIRE(build_cache_logged(&c, h5, false, log, &err) == 0, "%s", err.message);
    ldmc_cache cache;
    REQUIRE(ldmc_cache_open(&cache, h5, &err) == 0, "%s", err.message);
    float mean[4096], std[4096];
    REQUIRE(cache.groups[0].h * cache.groups[0].w * cache.channels <= 4096, "latent size");
    bool arrived = true;
    for (int64_t i = 0; i < cache.count; i++) {
        ldmc_cache_entry e = {.mean = mean, .std = std};
        REQUIRE(ldmc_cache_read(&cache, i, &e, &err) == 0, "%s", err.message);
        arrived &= e.aesthetic >= 1.0f && e.aesthetic < 1.0f + 0.25f * (float)lines &&
                   e.aesthetic != 6.0f;
    }
    CHECK(arrived && cache.count == lines, "the cache's aesthetic scores (%lld entries)",
          (long long)cache.count);
    ldmc_cache_close(&cache);
    ldmc_train_config_free(&c);
    // (remove the metadata: the other text tests read .txt captions of the same folder)
    snprintf(path, sizeof path, "%s/captioned/metadata.jsonl", fixture);
    remove(path);
}

// text.train: the encoders train with the UNet at their own learning rates (kohya's
// --train_text_encoder): their weights move (logit_scale, which SDXL does not use, stays), the
// checkpoints hold them with their EMA and Adam state, and a killed run resumes bit for bit.
static void test_text_encoders_trained(void) {
    const char *extra = "diffusion: {prediction: eps, cond_dropout: 0.3}\n";
    char setting[1400];
    snprintf(setting, sizeof setting,
             "text={vocab: %s/tiny_bpe, uncond: zeros, train: true, lr: [1.0e-3, 5.0e-4]}",
             test_data_dir());
    const char *sets[] = {setting};
    ldmc_err err = {0};
    ldmc_train_result r;
    REQUIRE(run_in_process_set(text_config("te_straight", "tiny_unet_text.yaml", "zeros", extra),
                               NULL, sets, 1, &r, &err) == 0,
            "%s", err.message);
    const char *k = text_config("te_killed", "tiny_unet_text.yaml", "zeros", extra);
    CHECK(run_child_set(k, "saved@2", false, setting) == SIGKILL, "killed after step 2");
    REQUIRE(run_in_process_set(k, "latest", sets, 1, &r, &err) == 0, "%s", err.message);
    CHECK(r.steps == 4, "resumed to step %lld", (long long)r.steps);
    check_same_checkpoint("te_straight", "te_killed", 4, true);
    // the encoders moved from their init; logit_scale did not
    char init[1300], ckpt[1400];
    snprintf(init, sizeof init, "%s/tiny_unet_text.yaml.init", fixture);
    snprintf(ckpt, sizeof ckpt, "%s/te_straight/checkpoints/step-00000004/model.safetensors",
             fixture);
    ldmc_safetensors a, b;
    REQUIRE(ldmc_safetensors_open(&a, init, &err) == 0 && ldmc_safetensors_open(&b, ckpt, &err) == 0,
            "%s", err.message);
    static const char *const keys[] = {
        "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
        "conditioner.embedders.1.model.text_projection", "conditioner.embedders.1.model.logit_scale"};
    for (int i = 0; i < 3; i++) {
        const ldmc_st_tensor *ta = ldmc_safetensors_find(&a, keys[i]), *tb = ldmc_safetensors_find(&b, keys[i]);
        REQUIRE(ta && tb, "%s in the init and the checkpoint", keys[i]);
        int64_t n = ldmc_st_numel(ta);
        float *va = malloc((size_t)n * sizeof *va), *vb = malloc((size_t)n * sizeof *vb);
        REQUIRE(ldmc_safetensors_read(&a, ta, va, LDMC_F32, &err) == 0 &&
                    ldmc_safetensors_read(&b, tb, vb, LDMC_F32, &err) == 0,
                "%s", err.message);
        bool same = !memcmp(va, vb, (size_t)n * sizeof *va);
        CHECK(i == 2 ? same : !same, "%s %s", keys[i], i == 2 ? "changed" : "did not change");
        free(va), free(vb);
    }
    ldmc_safetensors_close(&a);
    ldmc_safetensors_close(&b);
    // updated during backward (optim.fused_backward), the UNet's and both encoders' tables: the
    // same run, bit for bit
    const char *fused_sets[] = {setting, "optim.grad_clip=0", "optim.accumulation=1"};
    fused_run_matches(text_config("te_fused_plain", "tiny_unet_text.yaml", "zeros", extra),
                      text_config("te_fused_on", "tiny_unet_text.yaml", "zeros", extra), fused_sets,
                      3, "train.device=cpu", 2, 4);
}

// A text model without a vocabulary is refused before anything is written.
static void test_text_model_needs_a_vocabulary(void) {
    make_fixture();
    char path[1200];
    snprintf(path, sizeof path, "%s/text.yaml", fixture);
    char text[2048];
    snprintf(text, sizeof text,
             "model: %s/tiny_unet_text.yaml\nvae: %s/tiny_vae.yaml\nvae_weights: vae.safetensors\n"
             "data: {path: data}\ntrain: {steps: 1, out: text}\n",
             LDMC_CONFIG_DIR, LDMC_CONFIG_DIR);
    REQUIRE(test_write_text(path, text) == 0, "write");
    char log[1300];
    snprintf(log, sizeof log, "%s/text.log", fixture);
    int status = run_cli(log, (const char *[]){"train", path, NULL}, NULL);
    CHECK(status == 1 && test_count_in_file(log, "text.vocab") == 1, "exit %d, log: %s", status,
          log);
    // a refused run leaves nothing behind (no out folder with a lock in it)
    snprintf(path, sizeof path, "%s/text", fixture);
    struct stat sb;
    CHECK(stat(path, &sb) != 0, "the refused run left %s behind", path);
}

// The cache holds, for every image (and its flip), the crop Algorithm 1 planned and the VAE's
// posterior of exactly those pixels; training reads it.
static void test_latent_cache(void) {
    make_fixture();
    ldmc_err err = {0};
    ldmc_train_config c;
    REQUIRE(ldmc_train_config_load(tiny_config("cached", false, ""), NULL, 0, &c, &err) == 0, "%s",
            err.message);
    char h5[1200];
    snprintf(h5, sizeof h5, "%s/latents.h5", fixture);
    char log[1300];
    snprintf(log, sizeof log, "%s/cache.log", fixture);
    REQUIRE(build_cache_logged(&c, h5, true, log, &err) == 0, "%s", err.message);
    // the cut JPEG passes the scan and fails to decode: named once, counted once
    CHECK(test_count_in_file(log, "cut.jpg") == 1 &&
              test_count_in_file(log, "1 failed to decode (named above)") == 1 &&
              test_count_in_file(log, "; 0 skipped at scan") == 1,
          "the cache's log (%s) does not name the cut JPEG once and count it once", log);
    ldmc_cache cache;
    REQUIRE(ldmc_cache_open(&cache, h5, &err) == 0, "%s", err.message);
    ldmc_dataset d;
    REQUIRE(ldmc_dataset_scan(c.data_path, LDMC_LABELS_FOLDERS, &d, &err) == 0, "%s", err.message);
    CHECK(cache.count == 2 * (d.count - 1),
          "%lld entries for %d decodable images, each also flipped", (long long)cache.count,
          d.count - 1);
    CHECK(cache.channels == 4 && cache.scale_factor == c.vae.scale_factor, "cache attributes");
    static ldmc_vae v;
    ldmc_vae_init(&v, &c.vae);
    ldmc_params_alloc(&v.params, LDMC_ROLE_WEIGHTS);
    REQUIRE(test_load_vae(&v, c.vae_weights, NULL, &err) == 0, "%s", err.message);
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ctx.recording = false;
    for (int64_t i = 0; i < cache.count; i += 5) {
        const ldmc_cache_group *g = &cache.groups[ldmc_cache_group_of(&cache, i)];
        size_t per = (size_t)g->h * g->w * 4;
        float *mean = malloc(per * sizeof(float)), *std = malloc(per * sizeof(float));
        float *pixels = malloc((size_t)g->height * g->width * 3 * sizeof(float));
        ldmc_cache_entry e = {.mean = mean, .std = std};
        REQUIRE(ldmc_cache_read(&cache, i, &e, &err) == 0, "%s", err.message);
        // which sample and variant: entries come image by image, plain then flipped
        int64_t row = i - g->first;
        int sample = -1;
        ldmc_crop plan;
        // find the entry's image by its c_size and crop among the bucket's images
        for (int s = 0; s < d.count && sample < 0; s++) {
            if (strstr(d.items[s].path, "cut.jpg")) continue;
            for (int flip = 0; flip < 2 && sample < 0; flip++) {
                ldmc_err e2 = {0};
                if (ldmc_load_sample(&d, s, 0, g->height, g->width, flip, c.seed, pixels, &plan,
                                     &e2) != 0)
                    continue;
                if (plan.c_size[0] == e.c_size[0] && plan.c_size[1] == e.c_size[1] &&
                    plan.c_crop[0] == e.c_crop[0] && plan.c_crop[1] == e.c_crop[1] &&
                    d.items[s].class_id == e.class_id) {
                    ldmc_ctx_reset(&ctx);
                    ldmc_tensor *x = ldmc_wrap(&ctx, LDMC_F32, pixels, 4,
                                               (int64_t[]){1, g->height, g->width, 3});
                    ldmc_vae_posterior q = ldmc_vae_encode(&ctx, &v, x);
                    double worst = 0;
                    for (size_t k = 0; k < per; k++)
                        worst = fmax(worst, fabs(((float *)q.mean->data)[k] - mean[k]));
                    if (worst < 1e-4) sample = s;
                }
            }
        }
        CHECK(sample >= 0, "entry %lld (row %lld of %dx%d) matches no image's planned crop",
              (long long)i, (long long)row, g->height, g->width);
        CHECK(e.c_target[0] == g->height && e.c_target[1] == g->width, "c_target is the bucket");
        free(mean);
        free(std);
        free(pixels);
    }
    ldmc_ctx_free(&ctx);
    ldmc_vae_free(&v);
    ldmc_cache_close(&cache);
    ldmc_dataset_free(&d);
    ldmc_train_config_free(&c);
    // training from it
    const char *from_cache = tiny_config("from_cache", false, "");
    const char *sets[] = {"data.source=cache", "data.path=latents.h5", "train.steps=3"};
    ldmc_train_result r;
    REQUIRE(ldmc_train_config_load(from_cache, sets, 3, &c, &err) == 0, "%s", err.message);
    REQUIRE(ldmc_train(&c, NULL, &r, &err) == 0, "%s", err.message);
    CHECK(r.steps == 3 && isfinite(r.last_loss), "3 steps from the cache");
    ldmc_train_config_free(&c);
    // a file that is not a cache is named
    CHECK(ldmc_cache_open(&cache, "/nonexistent.h5", &err) != 0 &&
              strstr(err.message, "/nonexistent.h5"),
          "%s", err.message);
}

// ---- what a run does with unusual data, a bad state, a failed preview, signals and changes ----

// tests/ref/data/images (alpha, 16-bit, palettes, gray, CMYK and YCCK, EXIF orientations,
// progressive, interlaced, 1x1, 1:4, 4:1, upper-case extensions) in two class folders.
static const char *unusual_folder(void) {
    char dir[1300], from[1700], to[1700];
    snprintf(dir, sizeof dir, "%s/unusual", fixture);
    if (access(dir, F_OK) == 0) return "unusual";
    ldmc_err err = {0};
    for (int c = 0; c < 2; c++) {
        snprintf(to, sizeof to, "%s/%c", dir, 'a' + c);
        LDMC_CHECK(ldmc_mkdirs(to, &err) == 0, "%s", err.message);
    }
    snprintf(from, sizeof from, "%s/images", test_data_dir());
    DIR *d = opendir(from);
    LDMC_CHECK(d, "cannot open %s", from);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        snprintf(from, sizeof from, "%s/images/%s", test_data_dir(), e->d_name);
        snprintf(to, sizeof to, "%s/%c/%s", dir, 'a' + (int)(strlen(e->d_name) % 2), e->d_name);
        copy_file(from, to);
        n++;
    }
    closedir(d);
    LDMC_CHECK(n >= 27, "%d unusual images", n);
    return "unusual";
}

// Two runs (separate processes) on unusual but valid images decode every file, the same way:
// byte-identical checkpoints.
static void test_unusual_images_train_the_same_twice(void) {
    make_fixture();
    const char *data = unusual_folder();
    char log[2][1300];
    for (int i = 0; i < 2; i++) {
        char name[32];
        snprintf(name, sizeof name, "unusual_%d", i);
        snprintf(log[i], sizeof log[i], "%s/%s.log", fixture, name);
        const char *config = tiny_config_on(name, false, data, "");
        int status = run_cli(log[i], (const char *[]){"train", config, NULL}, NULL);
        REQUIRE(status == 0, "run %d exited %d (%s)", i, status, log[i]);
    }
    check_same_checkpoint("unusual_0", "unusual_1", 6, true);
    CHECK(test_count_in_file(log[0], ", 0 files skipped") == 1 &&
              test_count_in_file(log[0], "left out:") == 0 &&
              test_count_in_file(log[0], "decode failures: none") == 1,
          "every unusual file is read (%s)", log[0]);
}

// The two runs' decode failures: named once in the log, counted once per file and once per
// time left out, whatever data.prefetch and data.workers; and the same checkpoints.
static void test_decode_failures_are_named_once(void) {
    make_fixture();
    ldmc_err err = {0};
    ldmc_train_result r[2];
    const char *sets[2][2] = {{"data.prefetch=1", "data.workers=1"},
                              {"data.prefetch=8", "data.workers=3"}};
    const char *names[2] = {"prefetch_1", "prefetch_8"};
    for (int i = 0; i < 2; i++)
        REQUIRE(run_in_process_set(tiny_config(names[i], false, ""), NULL, sets[i], 2, &r[i],
                                   &err) == 0,
                "%s", err.message);
    CHECK(r[0].failed_files == 1 && r[1].failed_files == 1 && r[0].left_out >= 1 &&
              r[0].left_out == r[1].left_out,
          "prefetch 1: %lld files, left out %lld times; prefetch 8: %lld, %lld",
          (long long)r[0].failed_files, (long long)r[0].left_out, (long long)r[1].failed_files,
          (long long)r[1].left_out);
    for (int i = 0; i < 2; i++) {
        char log[1300], line[128];
        snprintf(log, sizeof log, "%s/%s/train.log", fixture, names[i]);
        snprintf(line, sizeof line, "decode failures: 1 file, left out %lld times (named above)",
                 (long long)r[0].left_out);
        CHECK(test_count_in_file(log, "cut.jpg") == 1 && test_count_in_file(log, line) == 1,
              "%s: the cut JPEG is not named once, or not counted as '%s'", log, line);
    }
    check_same_checkpoint("prefetch_1", "prefetch_8", 6, true);
}

// Edited state.json files: each refused with a message naming the file and the field, never a
// crash (the test runs under ASan in CI); the untouched file resumes.
static void test_state_json_is_checked(void) {
    make_fixture();
    ldmc_err err = {0};
    ldmc_train_result r;
    const char *config = tiny_config("state_edits", false, "");
    REQUIRE(run_in_process(config, NULL, &r, &err) == 0, "%s", err.message);
    char path[1400];
    snprintf(path, sizeof path, "%s/state_edits/checkpoints/step-00000006/state.json", fixture);
    size_t n = 0;
    FILE *f = fopen(path, "rb");
    REQUIRE(f, "no %s", path);
    char good[4096];
    n = fread(good, 1, sizeof good - 1, f);
    fclose(f);
    good[n] = '\0';
    // (field, its value replaced by)
    static const char *const edits[][2] = {
        {"batches", "-5"},
        {"batches", "2"}, // fewer batches than steps
        {"batches", "1e300"},
        {"step", "-1"},
        {"step", "2.5"},
        {"step", "99999999999"},
        {"step", "\"6\""},
        {"skipped_steps", "7"},
        {"images", "-1"},
        {"seed", "\"3x\""},
        {"seed", "3"},
        {"seed", "\"99999999999999999999999\""},
        {"ema", "\"yes\""},
        {"format", "\"something else\""},
        {"data_fingerprint", "7"},
        {"data_samples", "-2"},
    };
    const char *sets[] = {"train.steps=8"};
    for (size_t e = 0; e < sizeof edits / sizeof edits[0]; e++) {
        char key[64], text[8192];
        snprintf(key, sizeof key, "\"%s\":", edits[e][0]);
        const char *at = strstr(good, key);
        REQUIRE(at, "state.json has no %s", key);
        const char *end = at + strcspn(at, ",\n");
        snprintf(text, sizeof text, "%.*s%s %s%s", (int)(at - good), good, key, edits[e][1], end);
        REQUIRE(test_write_text(path, text) == 0, "write %s", path);
        ldmc_err_clear(&err);
        CHECK(run_in_process_set(config, "latest", sets, 1, &r, &err) != 0 &&
                  strstr(err.message, path) && strstr(err.message, edits[e][0]),
              "%s %s: %s", key, edits[e][1], err.message);
    }
    // not JSON, cut short, empty, and much too long
    const char *bodies[] = {"{\"step\": 6, \"batch", "", "[1, 2, 3]"};
    for (int b = 0; b < 3; b++) {
        REQUIRE(test_write_text(path, bodies[b]) == 0, "write %s", path);
        ldmc_err_clear(&err);
        CHECK(run_in_process_set(config, "latest", sets, 1, &r, &err) != 0 &&
                  strstr(err.message, path),
              "'%s': %s", bodies[b], err.message);
    }
    char *huge = malloc(1 << 17);
    memset(huge, ' ', 1 << 17);
    memcpy(huge, good, n);
    huge[(1 << 17) - 1] = '\0';
    REQUIRE(test_write_text(path, huge) == 0, "write %s", path);
    free(huge);
    ldmc_err_clear(&err);
    CHECK(run_in_process_set(config, "latest", sets, 1, &r, &err) != 0 &&
              strstr(err.message, "larger than"),
          "a 128 KiB state.json: %s", err.message);
    // the file as written resumes
    REQUIRE(test_write_text(path, good) == 0, "write %s", path);
    ldmc_err_clear(&err);
    CHECK(run_in_process_set(config, "latest", sets, 1, &r, &err) == 0 && r.steps == 8, "%s",
          err.message);
}

// A sample grid that cannot be written (samples/ is a file here; a full or read-only disk the
// same) is a warning: the run goes on and saves its checkpoints.
static void test_preview_failure_keeps_the_checkpoint(void) {
    make_fixture();
    char out[1300], samples[1400], log[1400];
    snprintf(out, sizeof out, "%s/no_previews", fixture);
    snprintf(samples, sizeof samples, "%s/samples", out);
    snprintf(log, sizeof log, "%s/train.log", out);
    ldmc_err err = {0};
    REQUIRE(ldmc_mkdirs(out, &err) == 0, "%s", err.message);
    REQUIRE(test_write_text(samples, "in the way\n") == 0, "write %s", samples);
    ldmc_train_result r;
    const char *sets[] = {"train.sample_every=3"};
    CHECK(run_in_process_set(tiny_config("no_previews", false, ""), NULL, sets, 1, &r, &err) == 0 &&
              r.steps == 6,
          "%s", err.message);
    char checkpoint[1500];
    snprintf(checkpoint, sizeof checkpoint, "%s/checkpoints/step-00000006/model.safetensors", out);
    CHECK(access(checkpoint, F_OK) == 0, "no checkpoint after failed previews");
    CHECK(test_count_in_file(log, "warning: step 3: no sample grid") == 1 &&
              test_count_in_file(log, "warning: step 6: no sample grid") == 1,
          "the failed previews are not warned about in %s", log);
}

// SIGINT or SIGTERM: the run saves after the current step and exits 130 or 143 (so that `set -e`
// scripts and schedulers see it), and resumes; a second signal stops a step at once, unsaved.
static void test_signals_stop_a_run(void) {
    make_fixture();
    // steps of 40 micro-batches (about a second each): signals sent 200 ms (and 300 ms) after a
    // step was logged land inside the next step
    const char *config = tiny_config("signalled", false, "");
    const char *long_steps[] = {
        "train", config, "--set", "optim.accumulation=40", "--set", "train.log_every=1", NULL};
    char metrics[1300], log[1300], path[1400];
    snprintf(metrics, sizeof metrics, "%s/signalled/metrics.jsonl", fixture);
    snprintf(log, sizeof log, "%s/signalled.log", fixture);
    child_signals one = {
        .metrics = metrics, .after_lines = 1, .delay_ms = 200, .sig = SIGTERM, .count = 1};
    int status = run_cli(log, long_steps, &one);
    CHECK(status == 128 + SIGTERM, "SIGTERM: exit status %d, want %d", status, 128 + SIGTERM);
    CHECK(test_count_in_file(log, "interrupted (SIGTERM) at step 2 of 6: checkpoint saved") == 1,
          "no 'interrupted' line in %s", log);
    snprintf(path, sizeof path, "%s/signalled/checkpoints/step-00000002", fixture);
    CHECK(access(path, F_OK) == 0, "no checkpoint at the interrupted step");
    // a second signal during the next step stops it at once: no checkpoint of that step
    const char *resume[] = {
        "train",    config,   "--set", "optim.accumulation=40", "--set", "train.log_every=1",
        "--resume", "latest", NULL};
    child_signals two = {.metrics = metrics,
                         .after_lines = 3,
                         .delay_ms = 200,
                         .sig = SIGINT,
                         .count = 2,
                         .gap_ms = 100};
    status = run_cli(log, resume, &two);
    CHECK(status == 128 + SIGINT, "two SIGINTs: status %d, want %d", status, 128 + SIGINT);
    snprintf(path, sizeof path, "%s/signalled/checkpoints/step-00000004", fixture);
    CHECK(access(path, F_OK) != 0, "the second SIGINT did not stop the step at once");
    CHECK(test_count_in_file(log, "interrupted (SIGINT)") == 0,
          "a second SIGINT saved a checkpoint");
    // and the run resumes to its end
    status = run_cli(log, resume, NULL);
    CHECK(status == 0, "resumed run: status %d", status);
}

// A resumed run names the settings and the data that changed since its checkpoint; buckets are
// printed width x height.
static void test_resume_says_what_changed(void) {
    make_fixture();
    char dir[1300], path[1400], log[1400];
    ldmc_err err = {0};
    // landscape pictures only, 40 wide and 24 high once bucketed
    uint8_t *rgb = calloc(64 * 36 * 3, 1);
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < 3; i++) {
            snprintf(dir, sizeof dir, "%s/wide/%c", fixture, 'a' + c);
            REQUIRE(ldmc_mkdirs(dir, &err) == 0, "%s", err.message);
            memset(rgb, 60 * i + 100 * c, 64 * 36 * 3);
            snprintf(path, sizeof path, "%s/%d.png", dir, i);
            REQUIRE(ldmc_png_write(path, rgb, 64, 36, &err) == 0, "%s", err.message);
        }
    ldmc_train_result r;
    const char *config = tiny_config_on("changes", false, "wide", "");
    REQUIRE(run_in_process(config, NULL, &r, &err) == 0, "%s", err.message);
    snprintf(log, sizeof log, "%s/changes/train.log", fixture);
    CHECK(test_count_in_file(log, "buckets (width x height)") == 1 &&
              test_count_in_file(log, "   40 x 24 ") == 1 &&
              test_count_in_file(log, "   24 x 40 ") == 0,
          "the bucket of 64x36 pictures is not printed as 40 x 24 (width x height): %s", log);
    snprintf(path, sizeof path, "%s/wide/a/3.png", fixture); // one more picture
    REQUIRE(ldmc_png_write(path, rgb, 64, 36, &err) == 0, "%s", err.message);
    free(rgb);
    const char *sets[] = {"train.steps=8", "data.batch_size=4", "optim.lr=2.0e-3"};
    REQUIRE(run_in_process_set(config, "latest", sets, 3, &r, &err) == 0, "%s", err.message);
    CHECK(test_count_in_file(log, "data.batch_size: 3 -> 4") == 1 &&
              test_count_in_file(log, "optim.lr: 1.0e-3 -> 2.0e-3") == 1 &&
              test_count_in_file(log, "train.steps: 6 -> 8") == 1 &&
              test_count_in_file(
                  log, "the data changed since the checkpoint (6 samples then, 7 now)") == 1,
          "the resumed run does not say what changed: %s", log);
    CHECK(test_count_in_file(log, "warmup") == 0, "an unchanged setting is named as changed: %s",
          log);
}

// ---- the GPU trainer (built a second time as test_train_cuda, label cuda)
// ------------------------

// The diffusion weights of a run's checkpoint at `step` (weights, or EMA).
static float *checkpoint_weights(const char *run, int step, size_t *n) {
    static ldmc_unet u;
    ldmc_train_state st;
    ldmc_err err = {0};
    char dir[1400];
    snprintf(dir, sizeof dir, "%s/%s/checkpoints/step-%08d", fixture, run, step);
    LDMC_CHECK(load_tiny_unet(dir, &u, &st, &err) == 0, "%s", err.message);
    *n = u.params.total;
    float *w = malloc(*n * sizeof *w);
    memcpy(w, u.params.buffers[LDMC_ROLE_WEIGHTS], *n * sizeof *w);
    ldmc_unet_free(&u);
    return w;
}

// How far two runs' weights agree: the cosine of their changes from the common start.
static double update_cosine(const float *a, const float *b, const float *start, size_t n) {
    double dot = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        double da = (double)a[i] - start[i], db = (double)b[i] - start[i];
        dot += da * db, aa += da * da, bb += db * db;
    }
    return dot / sqrt(aa * bb + 1e-300);
}

// A run on the GPU writes the checkpoints a CPU run writes: the CPU resumes from them, and the
// GPU from the CPU's; the weights follow the CPU-only run's (bf16 activations: close, not equal).
static void test_gpu_and_cpu_resume_each_other(void) {
    make_fixture();
    ldmc_err err = {0};
    ldmc_train_result r;
    // the reference: 6 steps on the CPU
    REQUIRE(run_in_process(tiny_config("cpu6", false, ""), NULL, &r, &err) == 0, "%s", err.message);
    const char *gpu_first = tiny_config("gpu_then_cpu", false, "");
    const char *cpu_first = tiny_config("cpu_then_gpu", false, "");
    // GPU for steps 1-3 (killed after its step-3 checkpoint), then the CPU to step 6
    CHECK(run_child_set(gpu_first, "saved@3", false, "train.device=cuda") == SIGKILL,
          "the GPU run is killed after its step-3 checkpoint");
    CHECK(run_child_set(gpu_first, NULL, true, "train.device=cpu") == 0, "the CPU resumes it");
    // CPU for steps 1-3, then the GPU to step 6
    CHECK(run_child_set(cpu_first, "saved@3", false, "train.device=cpu") == SIGKILL,
          "the CPU run is killed after its step-3 checkpoint");
    CHECK(run_child_set(cpu_first, NULL, true, "train.device=cuda") == 0, "the GPU resumes it");
    size_t n;
    float *cpu3 = checkpoint_weights("cpu6", 3, &n), *cpu6 = checkpoint_weights("cpu6", 6, &n);
    float *g3 = checkpoint_weights("gpu_then_cpu", 3, &n),
          *g6 = checkpoint_weights("gpu_then_cpu", 6, &n);
    float *c3 = checkpoint_weights("cpu_then_gpu", 3, &n),
          *c6 = checkpoint_weights("cpu_then_gpu", 6, &n);
    for (size_t i = 0; i < n; i++)
        CHECK(c3[i] == cpu3[i], "the CPU's step 3 is the CPU's step 3 (value %zu)", i);
    // steps 4-6 move the weights alike on either device
    double cos_gpu_tail = update_cosine(c6, cpu6, cpu3, n);
    CHECK(cos_gpu_tail >= 0.9, "steps 4-6 on the GPU vs the CPU: update cosine %.4f", cos_gpu_tail);
    // and steps 1-3 on the GPU end near the CPU's step 3, then the CPU carries on alike
    double cos_tail = update_cosine(g6, cpu6, cpu3, n);
    CHECK(cos_tail >= 0.8, "from the GPU's step 3, the CPU's steps 4-6: cosine %.4f", cos_tail);
    double diff = 0, moved = 0;
    for (size_t i = 0; i < n; i++)
        diff += ((double)g3[i] - cpu3[i]) * ((double)g3[i] - cpu3[i]),
            moved += ((double)cpu6[i] - cpu3[i]) * ((double)cpu6[i] - cpu3[i]);
    CHECK(diff <= moved, "the GPU's step 3 is %.3g from the CPU's, 3 more steps move %.3g",
          sqrt(diff), sqrt(moved));
    free(cpu3), free(cpu6), free(g3), free(g6), free(c3), free(c6);
}

// The autoencoder task trains on the GPU too, its loss going down, and the CPU resumes it.
static void test_gpu_vae_task(void) {
    make_fixture();
    ldmc_err err = {0};
    ldmc_train_result r;
    const char *config = tiny_config("vae_gpu", true, "");
    CHECK(run_child_set(config, "saved@2", false, "train.device=cuda") == SIGKILL,
          "the VAE run on the GPU is killed after its step-2 checkpoint");
    REQUIRE(run_in_process(config, "latest", &r, &err) == 0, "%s", err.message);
    CHECK(r.steps == 4 && isfinite(r.last_loss), "resumed on the CPU to step %lld, loss %g",
          (long long)r.steps, r.last_loss);
}

// A GPU context reserves the workspace at its maximum before it measures the memory its arena
// takes, leaving the headroom free; staging within the reservation leaves it as it is, and a
// request beyond it grows it (said on stderr) rather than failing.
static void test_gpu_workspace_reserved_up_front(void) {
    ldmc_ctx ctx;
    size_t free_b = 0;
    REQUIRE(ldmc_ctx_init_gpu_free(&ctx, (size_t)64 << 20, &free_b) == 0,
            "a GPU context: %.1f GiB free", (double)free_b / (1 << 30));
    size_t reserved = ldmc_gpu_workspace_reserved(),
           max = ldmc_gpu_workspace_max(LDMC_GPU_LARGEST_DEFAULT);
    CHECK(reserved >= max && reserved < max + ((size_t)1 << 20),
          "%zu bytes reserved for a maximum of %zu", reserved, max);
    CHECK(ldmc_gpu_workspace_bytes() == reserved, "workspace %zu, reserved %zu",
          ldmc_gpu_workspace_bytes(), reserved);
    size_t used, total;
    ldmc_gpu_memory(&used, &total);
    size_t left = total - used, headroom = ldmc_gpu_headroom(total), slack = (size_t)64 << 20;
    CHECK(left + slack > headroom && left < headroom + slack,
          "%.3f GiB left free beside the arena, want the headroom %.3f GiB",
          (double)left / (1 << 30), (double)headroom / (1 << 30));
    // a bf16 read stages f32 values in the workspace: with 8 MiB reserved, 1 Mi values fit and
    // 4 Mi values grow it
    ldmc_gpu_workspace_reserve((size_t)8 << 20);
    int64_t small = (int64_t)1 << 20, large = (int64_t)4 << 20;
    float *host = malloc((size_t)large * sizeof *host);
    REQUIRE(host, "no memory for %lld floats", (long long)large);
    ldmc_tensor *t = ldmc_new(&ctx, LDMC_BF16, 1, &small);
    ldmc_gpu_zero(t->data, ldmc_nbytes(t));
    ldmc_read_f32(t, host);
    CHECK(ldmc_gpu_workspace_bytes() == ((size_t)8 << 20), "a read within it: workspace %zu",
          ldmc_gpu_workspace_bytes());
    ldmc_tensor *big = ldmc_new(&ctx, LDMC_BF16, 1, &large);
    ldmc_gpu_zero(big->data, ldmc_nbytes(big));
    host[large - 1] = 1.0f;
    ldmc_read_f32(big, host);
    CHECK(ldmc_gpu_workspace_bytes() == (size_t)large * 4 && host[large - 1] == 0.0f,
          "a read beyond the reservation: workspace %zu, want %zu", ldmc_gpu_workspace_bytes(),
          (size_t)large * 4);
    CHECK(ldmc_gpu_workspace_reserved() == ((size_t)8 << 20), "reserved %zu",
          ldmc_gpu_workspace_reserved());
    free(host);
    ldmc_ctx_free(&ctx);
}

// The program runs the CPU tests (test_train, label cpu) or, built with LDMC_TEST_CUDA, the GPU
// trainer's (test_train_cuda, label cuda; skipped without a device).
int main(int argc, char **argv) {
    static const test_entry gpu_tests[] = {
        TEST_ENTRY(test_gpu_and_cpu_resume_each_other),
        TEST_ENTRY(test_gpu_vae_task),
        TEST_ENTRY(test_gpu_workspace_reserved_up_front),
        TEST_ENTRY(test_gpu_fused_backward_is_the_same_update),
    };
#ifdef LDMC_TEST_CUDA
    if (!ldmc_gpu_available()) {
        printf("no CUDA device: skipped (%s)\n", ldmc_gpu_unavailable_reason());
        return 77;
    }
    return test_main(argc, argv, gpu_tests, (int)(sizeof gpu_tests / sizeof gpu_tests[0]));
#else
    (void)gpu_tests;
#endif
    static const test_entry tests[] = {
        TEST_ENTRY(test_adamw_matches_pytorch_formula),
        TEST_ENTRY(test_lr_clip_and_ema),
        TEST_ENTRY(test_tensorboard_records),
        TEST_ENTRY(test_loss_curve_png),
        TEST_ENTRY(test_recipe_configs),
        TEST_ENTRY(test_resume_after_kill_is_bit_identical),
        TEST_ENTRY(test_kill_during_checkpoint_write),
        TEST_ENTRY(test_nonfinite_steps),
        TEST_ENTRY(test_fused_backward_is_the_same_update),
        TEST_ENTRY(test_text_model_needs_a_vocabulary),
        TEST_ENTRY(test_text_sdxl_shaped_run),
        TEST_ENTRY(test_text_refiner_shaped_run),
        TEST_ENTRY(test_text_encoders_trained),
        TEST_ENTRY(test_metadata_and_aesthetic_scores),
        TEST_ENTRY(test_latent_cache),
        TEST_ENTRY(test_unusual_images_train_the_same_twice),
        TEST_ENTRY(test_decode_failures_are_named_once),
        TEST_ENTRY(test_state_json_is_checked),
        TEST_ENTRY(test_preview_failure_keeps_the_checkpoint),
        TEST_ENTRY(test_signals_stop_a_run),
        TEST_ENTRY(test_resume_says_what_changed),
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
