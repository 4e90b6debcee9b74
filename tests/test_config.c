// Configs: every bundled model config parses to the documented values, and every kind of
// mistake in a YAML config gets one message naming the file, the line and the key; paths in
// configs are resolved against the config's folder.
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "io/config.h"
#include "io/files.h"
#include "nn/model_config.h"

static void test_bundled_configs_parse(void) {
    static const char *const files[] = {"sdxl_base", "sdxl_refiner", "sdxl_vae", "cin_size_cond",
                                        "cin_nocond", "tiny_unet_text", "tiny_unet_class", "tiny_vae"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s.yaml", LDMC_CONFIG_DIR, files[i]);
        ldmc_model_config cfg;
        ldmc_err err = {0};
        CHECK(ldmc_model_config_load(path, &cfg, &err) == 0, "%s", err.message);
    }
    char path[512];
    snprintf(path, sizeof path, "%s/sdxl_base.yaml", LDMC_CONFIG_DIR);
    ldmc_model_config cfg;
    ldmc_err err = {0};
    REQUIRE(ldmc_model_config_load(path, &cfg, &err) == 0, "%s", err.message);
    const ldmc_unet_config *u = &cfg.unet;
    CHECK(cfg.has_unet && !cfg.has_vae && u->model_channels == 320 && u->levels == 3 &&
              u->channel_mult[2] == 4 && u->transformer_depth[1] == 2 && u->transformer_depth[2] == 10 &&
              u->transformer_depth_middle == 10 && u->context_dim == 2048 && u->adm_in_channels == 2816 &&
              u->n_vector == 4 && u->vector[0] == LDMC_VECTOR_POOLED_TEXT &&
              u->vector[3] == LDMC_VECTOR_TARGET_SIZE && !ldmc_unet_level_has_attention(u, 0) &&
              ldmc_unet_level_has_attention(u, 1) && ldmc_unet_level_has_attention(u, 2),
          "sdxl_base parsed wrong");
    snprintf(path, sizeof path, "%s/sdxl_refiner.yaml", LDMC_CONFIG_DIR);
    REQUIRE(ldmc_model_config_load(path, &cfg, &err) == 0, "%s", err.message);
    CHECK(cfg.unet.transformer_depth[3] == 4 && cfg.unet.transformer_depth_middle == 4 &&
              cfg.unet.adm_in_channels == 2560 && !ldmc_unet_level_has_attention(&cfg.unet, 3),
          "a scalar transformer_depth applies to every level and the middle");
}

static void expect_error(const char *yaml, const char *const *texts, int n) {
    ldmc_err err = {0};
    ldmc_cfg *root = ldmc_cfg_parse(yaml, "test.yaml", &err);
    int rc = -1;
    if (root) {
        ldmc_model_config cfg = {0};
        const ldmc_cfg *unet = ldmc_cfg_get(root, "unet"), *vae = ldmc_cfg_get(root, "vae");
        static const char *const sections[] = {"unet", "vae", NULL};
        rc = ldmc_cfg_check_keys(root, sections, &err);
        if (rc == 0 && unet) rc = ldmc_unet_config_parse(unet, &cfg.unet, &err);
        if (rc == 0 && vae) rc = ldmc_vae_config_parse(vae, &cfg.vae, &err);
        ldmc_cfg_free(root);
    }
    CHECK(rc == -1 && err.failed, "accepted:\n%s", yaml);
    for (int i = 0; i < n; i++)
        CHECK(strstr(err.message, texts[i]), "message lacks '%s': %s", texts[i], err.message);
}

#define UNET_BASE                                                                                  \
    "unet:\n  in_channels: 4\n  out_channels: 4\n  model_channels: 64\n  channel_mult: [1, 2]\n"   \
    "  num_res_blocks: 1\n  attention_resolutions: [2]\n  transformer_depth: 1\n"                  \
    "  num_head_channels: 32\n  context_dim: 16\n"

static void test_mistakes_are_named(void) {
    expect_error("unet: [1, 2\n", (const char *[]){"test.yaml:", "invalid YAML"}, 2);
    expect_error("- a\n- b\n", (const char *[]){"test.yaml:1: the top level must be a map"}, 1);
    expect_error("", (const char *[]){"test.yaml: the file is empty"}, 1);
    expect_error("model: {}\n", (const char *[]){"test.yaml:1: model: unknown key (expected one of: unet, vae)"}, 1);
    expect_error(UNET_BASE "  chanel_mult: [1]\n",
                 (const char *[]){"test.yaml:11: unet.chanel_mult: unknown key", "channel_mult"}, 2);
    expect_error("unet:\n  in_channels: 4\n", (const char *[]){"unet.out_channels: missing (required)"}, 1);
    expect_error(UNET_BASE "  num_res_blocks: 2\n", (const char *[]){"key 'num_res_blocks' appears twice"}, 1);
    expect_error("unet:\n  in_channels: four\n", (const char *[]){"test.yaml:2: unet.in_channels: expected a whole number, got 'four'"}, 1);
    expect_error("unet:\n  in_channels: [4]\n", (const char *[]){"unet.in_channels: expected a whole number, got a list"}, 1);
    expect_error("unet:\n  in_channels: 0\n", (const char *[]){"unet.in_channels: 0 is outside [1, 65536]"}, 1);
    expect_error("unet:\n  in_channels: 4\n  out_channels: 4\n  model_channels: 64\n  channel_mult: [1, x]\n",
                 (const char *[]){"test.yaml:5: unet.channel_mult[1]: expected a whole number, got 'x'"}, 1);
    expect_error(UNET_BASE "  vector: [original_size, cropcoords]\n",
                 (const char *[]){"unet.vector[1]: unknown part"}, 1);
    expect_error(UNET_BASE "  vector: [original_size]\n  adm_in_channels: 500\n",
                 (const char *[]){"unet.adm_in_channels: 500, but the vector parts add up to 512"}, 1);
    expect_error(UNET_BASE "  vector: [pooled_text]\n", (const char *[]){"pooled_text needs pooled_dim"}, 1);
    expect_error(UNET_BASE "  class_embed: {n_classes: 10, dim: 8}\n",
                 (const char *[]){"unet.class_embed: the class embedding is the cross-attention context: dim 8 must equal context_dim 16"}, 1);
    expect_error(
        "unet:\n  in_channels: 4\n  out_channels: 4\n  model_channels: 48\n  channel_mult: [1]\n"
        "  num_res_blocks: 1\n  attention_resolutions: [1]\n  transformer_depth: 1\n"
        "  num_head_channels: 16\n",
        (const char *[]){"level 0 has 48 channels: GroupNorm's 32 groups need a multiple of 32"},
        1);
    // heads must divide the widths with transformers (level 0 here), and only those
    expect_error(
        "unet:\n  in_channels: 4\n  out_channels: 4\n  model_channels: 96\n  channel_mult: [1, 2]\n"
        "  num_res_blocks: 1\n  attention_resolutions: [1]\n  transformer_depth: 1\n"
        "  num_head_channels: 64\n",
        (const char *[]){"test.yaml:9: unet.num_head_channels: 96 channels (level 0) do not split "
                         "into heads of 64"},
        1);
    ldmc_cfg *ok =
        ldmc_cfg_parse("unet:\n  in_channels: 4\n  out_channels: 4\n  model_channels: 96\n"
                       "  channel_mult: [1, 2]\n  num_res_blocks: 1\n  attention_resolutions: [2]\n"
                       "  transformer_depth: 1\n  num_head_channels: 64\n",
                       "test.yaml", &(ldmc_err){0});
    ldmc_unet_config unet;
    ldmc_err ok_err = {0};
    CHECK(ok && ldmc_unet_config_parse(ldmc_cfg_get(ok, "unet"), &unet, &ok_err) == 0,
          "a level without attention (96 channels) need not split into 64-wide heads: %s",
          ok_err.message);
    ldmc_cfg_free(ok);
    expect_error("unet:\n  in_channels: 4\n  out_channels: 4\n  model_channels: 64\n  channel_mult: [1, 2]\n"
                 "  num_res_blocks: 1\n  attention_resolutions: [2]\n  transformer_depth: [1, 2, 3]\n"
                 "  num_head_channels: 32\n",
                 (const char *[]){"unet.transformer_depth: 3 entries for 2 levels"}, 1);
    expect_error("vae:\n  in_channels: 3\n  out_channels: 3\n  ch: 32\n  ch_mult: [1]\n  num_res_blocks: 1\n"
                 "  z_channels: 4\n  embed_dim: 4\n  double_z: maybe\n",
                 (const char *[]){"vae.double_z: expected true or false"}, 1);
    expect_error("vae:\n  in_channels: 3\n  out_channels: 3\n  ch: 32\n  ch_mult: [1]\n  num_res_blocks: 1\n"
                 "  z_channels: 4\n  embed_dim: 4\n  scale_factor: nan\n",
                 (const char *[]){"vae.scale_factor: expected a finite number"}, 1);
    ldmc_err err = {0};
    CHECK(!ldmc_cfg_load("/nonexistent/config.yaml", &err) && strstr(err.message, "cannot open"), "%s", err.message);
}

typedef struct diff_log {
    char text[1024];
    int len;
} diff_log;

static void log_change(const char *path, const char *was, const char *now, void *ctx) {
    diff_log *l = ctx;
    l->len += snprintf(l->text + l->len, sizeof l->text - (size_t)l->len, "%s: %s -> %s\n", path,
                       was ? was : "-", now ? now : "-");
}

// The differences a resumed run reports: changed scalars (numbers compared as numbers), list
// items, and keys only one side has.
static void test_config_diff(void) {
    ldmc_err err = {0};
    ldmc_cfg *was = ldmc_cfg_parse("optim: {lr: 5.0e-4, warmup: 100}\ndata: {batch_size: 16, "
                                   "path: a}\nlist: [1, 2]\ngone: 3\n",
                                   "was", &err);
    ldmc_cfg *now = ldmc_cfg_parse("data: {path: a, batch_size: 8}\noptim: {warmup: 100, lr: "
                                   "0.0005}\nlist: [1, 3, 4]\nnew: {x: y}\n",
                                   "now", &err);
    REQUIRE(was && now, "%s", err.message);
    diff_log l = {0};
    int n = ldmc_cfg_diff(was, now, log_change, &l);
    const char *want = "data.batch_size: 16 -> 8\nlist[1]: 2 -> 3\ngone: 3 -> -\nlist[2]: - -> 4\n"
                       "new.x: - -> y\n";
    CHECK(n == 5 && !strcmp(l.text, want), "%d changes:\n%swant:\n%s", n, l.text, want);
    l = (diff_log){0};
    CHECK(ldmc_cfg_diff(was, was, log_change, &l) == 0, "a tree differs from itself: %s", l.text);
    ldmc_cfg_free(was);
    ldmc_cfg_free(now);
}

// Paths in configs are relative to the config's folder: "." and ".." resolved (a symbolic link
// followed as the system would), shown relative to the working directory when under it.
static void test_paths_are_resolved(void) {
    char root[PATH_MAX], path[PATH_MAX + 64], want[PATH_MAX + 64], out[PATH_MAX + 64],
        cwd[PATH_MAX];
    REQUIRE(realpath(test_tmpdir(), root), "the temporary folder");
    snprintf(path, sizeof path, "%s/configs", root);
    ldmc_err err = {0};
    snprintf(want, sizeof want, "%s/a/b", root);
    REQUIRE(ldmc_mkdirs(path, &err) == 0 && ldmc_mkdirs(want, &err) == 0, "%s", err.message);
    CHECK(ldmc_path_resolve(path, "../runs/./demo/", out, sizeof out) == 0 &&
              !strcmp(out, (snprintf(want, sizeof want, "%s/runs/demo", root), want)),
          "configs/../runs/./demo/ -> %s, want %s", out, want);
    CHECK(ldmc_path_resolve(path, "/x/../y//z", out, sizeof out) == 0 && !strcmp(out, "/y/z"),
          "an absolute path -> %s", out);
    snprintf(path, sizeof path, "%s/link", root);
    snprintf(want, sizeof want, "%s/a/b", root);
    REQUIRE(symlink(want, path) == 0, "a symbolic link");
    CHECK(ldmc_path_resolve(root, "link/../x", out, sizeof out) == 0 &&
              !strcmp(out, (snprintf(want, sizeof want, "%s/a/x", root), want)),
          "link/../x -> %s, want %s (the link's real parent)", out, want);
    CHECK(ldmc_path_resolve(root, "not/made/../yet", out, sizeof out) == 0 &&
              !strcmp(out, (snprintf(want, sizeof want, "%s/not/yet", root), want)),
          "a folder not made yet -> %s", out);
    snprintf(path, sizeof path, "%s/not/made/", root);
    CHECK(ldmc_path_resolve(path, "../y", out, sizeof out) == 0 &&
              !strcmp(out, (snprintf(want, sizeof want, "%s/not/y", root), want)),
          "from a folder not made yet -> %s, want %s", out, want);
    CHECK(ldmc_path_resolve("/", "a/../b", out, sizeof out) == 0 && !strcmp(out, "/b"),
          "from the root -> %s", out);
    // under the working directory: relative
    REQUIRE(getcwd(cwd, sizeof cwd) && chdir(root) == 0, "into the temporary folder");
    snprintf(path, sizeof path, "%s/configs", root);
    CHECK(ldmc_path_resolve(path, "../runs/demo", out, sizeof out) == 0 &&
              !strcmp(out, "runs/demo"),
          "configs/../runs/demo seen from its parent -> %s", out);
    CHECK(ldmc_path_resolve(path, "..", out, sizeof out) == 0 && !strcmp(out, "."),
          "the working directory itself -> %s", out);
    REQUIRE(chdir(cwd) == 0, "back");
}

int main(int argc, char **argv) {
    static const test_entry tests[] = {
        TEST_ENTRY(test_bundled_configs_parse), TEST_ENTRY(test_mistakes_are_named),
        TEST_ENTRY(test_config_diff), TEST_ENTRY(test_paths_are_resolved)};
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
