// Training: AdamW, the learning rate schedule, clipping and EMA against their formulas; training
// configs; TensorBoard records; the latent cache; and whole runs of tiny models: a resumed run
// (after a kill -9) is bit-identical to an uninterrupted one, a kill during a checkpoint write
// leaves the previous checkpoint loadable, bad images are counted, non-finite steps handled.
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
#include "io/model_files.h"
#include "io/tensorboard.h"
#include "tensorboard.pb-c.h"
#include "train/cache_build.h"
#include "train/canvas.h"
#include "train/optim.h"
#include "train/state.h"
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
    ldmc_grad_scale(&p, 1.0 / sqrt(80.0));
    CHECK(fabs(ldmc_grad_norm(&p) - 1.0) < 1e-6, "clipped to 1");

    // EMA: LitEma's warmup min(decay, (1 + n)/(10 + n)), then e = d e + (1 - d) w, frozen included.
    CHECK(fabs(ldmc_ema_decay(0.9999, 1) - 2.0 / 11) < 1e-15, "decay after one update");
    CHECK(fabs(ldmc_ema_decay(0.9999, 100) - 101.0 / 110) < 1e-15, "decay after 100");
    CHECK(ldmc_ema_decay(0.9999, 1000000) == 0.9999, "the configured decay once warm");
    float *W = p.buffers[LDMC_ROLE_WEIGHTS], *E = p.buffers[LDMC_ROLE_EMA];
    for (size_t i = 0; i < p.total; i++)
        W[i] = 1.0f, E[i] = 3.0f;
    ldmc_ema_update(&p, 0.75);
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

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

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
    ldmc_model_config vc = test_model_config("tiny_vae.yaml");
    static ldmc_vae v;
    ldmc_vae_init(&v, &vc.vae);
    ldmc_params_alloc(&v.params, LDMC_ROLE_WEIGHTS);
    ldmc_params_init(&v.params, 5);
    snprintf(path, sizeof path, "%s/vae.safetensors", fixture);
    LDMC_CHECK(ldmc_save_models(path, LDMC_LAYOUT_OFFICIAL, NULL, &v, LDMC_F32, LDMC_ROLE_WEIGHTS,
                                NULL, &err) == 0,
               "%s", err.message);
    // the same weights with one infinity: every latent, and so every loss, is not finite
    float *w = v.params.buffers[LDMC_ROLE_WEIGHTS];
    w[v.params.items[0].offset] = INFINITY;
    snprintf(path, sizeof path, "%s/vae_inf.safetensors", fixture);
    LDMC_CHECK(ldmc_save_models(path, LDMC_LAYOUT_OFFICIAL, NULL, &v, LDMC_F32, LDMC_ROLE_WEIGHTS,
                                NULL, &err) == 0,
               "%s", err.message);
    ldmc_vae_free(&v);
}

// Writes <fixture>/<name>.yaml for a tiny run into <fixture>/<name>/; `extra` is appended.
static const char *tiny_config(const char *name, bool vae_task, const char *extra) {
    static char path[8][1200];
    static int next;
    char *p = path[next++ % 8];
    snprintf(p, 1200, "%s/%s.yaml", fixture, name);
    char text[4096];
    if (vae_task)
        snprintf(text, sizeof text,
                 "task: vae\nmodel: %s/tiny_vae.yaml\n"
                 "data: {source: images, path: data, labels: folders, buckets: {pixels: 1024, "
                 "multiple: 8, max_ratio: 2},"
                 " batch_size: 4, workers: 2, prefetch: 3, flip: 0.5}\n"
                 "optim: {lr: 1.0e-3, warmup: 2}\nema: {decay: 0.9}\n"
                 "train: {steps: 4, seed: 3, out: %s, checkpoint_every: 2, keep: 5, log_every: 1, "
                 "sample_every: 4}\n%s",
                 test_config_dir(), name, extra);
    else
        snprintf(
            text, sizeof text,
            "task: diffusion\nmodel: %s/tiny_unet_class.yaml\nvae: %s/tiny_vae.yaml\nvae_weights: "
            "vae.safetensors\n"
            "data: {source: images, path: data, labels: folders, buckets: {pixels: 1024, multiple: "
            "8, max_ratio: 2},"
            " batch_size: 3, workers: 2, prefetch: 3, flip: 0.5}\n"
            "diffusion: {prediction: v, offset_noise: 0.05, cond_dropout: 0.3, min_snr_gamma: 5}\n"
            "optim: {lr: 1.0e-3, warmup: 2, grad_clip: 1.0, accumulation: 2, schedule: "
            "cosine}\nema: {decay: 0.9}\n"
            "sample: {steps: 3, cfg: 2.0, per_class: 2, height: 16, width: 16}\n"
            "train: {steps: 6, seed: 3, out: %s, checkpoint_every: 3, keep: 5, log_every: 2, "
            "sample_every: 6}\n%s",
            test_config_dir(), test_config_dir(), name, extra);
    LDMC_CHECK(write_text(p, text) == 0, "cannot write %s", p);
    return p;
}

static int run_in_process(const char *config, const char *resume, ldmc_train_result *r,
                          ldmc_err *err) {
    ldmc_train_config c;
    if (ldmc_train_config_load(config, NULL, 0, &c, err) != 0) return -1;
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

static bool same_file(const char *a, const char *b) {
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

static void check_same_checkpoint(const char *run_a, const char *run_b, int step, bool ema) {
    static const char *const files[] = {"model.safetensors", "optimizer.safetensors", "state.json",
                                        "ema.safetensors"};
    for (int i = 0; i < (ema ? 4 : 3); i++) {
        char a[1400], b[1400];
        snprintf(a, sizeof a, "%s/%s/checkpoints/step-%08d/%s", fixture, run_a, step, files[i]);
        snprintf(b, sizeof b, "%s/%s/checkpoints/step-%08d/%s", fixture, run_b, step, files[i]);
        CHECK(same_file(a, b), "%s differs between %s and %s at step %d", files[i], run_a, run_b,
              step);
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
    CHECK(r.failed_samples >= 1 && r.skipped_files >= 1,
          "the cut JPEG is left out and counted (%lld, %d)", (long long)r.failed_samples,
          r.skipped_files);
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
    ldmc_state_model m = {
        .params = &u->params, .map = {.layout = LDMC_LAYOUT_OFFICIAL, .unet = &u->cfg}, .ema = true};
    return ldmc_state_load(dir, &m, st, err);
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
        REQUIRE(ldmc_state_latest(out, latest, sizeof latest, &err) == 0, "%s", err.message);
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

static void test_text_models_are_refused(void) {
    make_fixture();
    char path[1200];
    snprintf(path, sizeof path, "%s/text.yaml", fixture);
    char text[2048];
    snprintf(text, sizeof text,
             "model: %s/tiny_unet_text.yaml\nvae: %s/tiny_vae.yaml\nvae_weights: vae.safetensors\n"
             "data: {path: data}\ntrain: {steps: 1, out: text}\n",
             LDMC_CONFIG_DIR, LDMC_CONFIG_DIR);
    REQUIRE(write_text(path, text) == 0, "write");
    ldmc_err err = {0};
    ldmc_train_result r;
    CHECK(run_in_process(path, NULL, &r, &err) != 0 && strstr(err.message, "text encoders"), "%s",
          err.message);
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
    fflush(stdout);
    REQUIRE(ldmc_cache_build(&c, h5, true, &err) == 0, "%s", err.message);
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
    REQUIRE(ldmc_load_vae(&v, c.vae_weights, NULL, &err) == 0, "%s", err.message);
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

// ---- the GPU trainer (built a second time as test_train_cuda, label cuda) ------------------------

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
    REQUIRE(run_in_process(tiny_config("cpu6", false, ""), NULL, &r, &err) == 0, "%s",
            err.message);
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
    float *g3 = checkpoint_weights("gpu_then_cpu", 3, &n), *g6 = checkpoint_weights("gpu_then_cpu", 6, &n);
    float *c3 = checkpoint_weights("cpu_then_gpu", 3, &n), *c6 = checkpoint_weights("cpu_then_gpu", 6, &n);
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

// The program runs the CPU tests (test_train, label cpu) or, built with LDMC_TEST_CUDA, the GPU
// trainer's (test_train_cuda, label cuda; skipped without a device).
int main(int argc, char **argv) {
    static const test_entry gpu_tests[] = {
        TEST_ENTRY(test_gpu_and_cpu_resume_each_other),
        TEST_ENTRY(test_gpu_vae_task),
    };
#ifdef LDMC_TEST_CUDA
    if (!ldmc_cuda_usable()) {
        printf("no CUDA device: skipped\n");
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
        TEST_ENTRY(test_text_models_are_refused),
        TEST_ENTRY(test_latent_cache),
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
