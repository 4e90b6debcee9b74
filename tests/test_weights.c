// Weights files: the official single file (UNet, VAE and conditioner tensors together) and the
// diffusers folder, in every float dtype; lossless round trips; diffusers names against the
// renames diffusers' own converter applies; every kind of mismatch named, and partial loads.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "io/model_files.h"
#include "nn/models.h"

#define path_of test_tmp_path

static void new_unet(ldmc_unet *u, uint64_t seed) {
    ldmc_model_config cfg = test_model_config("tiny_unet_text.yaml");
    ldmc_unet_init(u, &cfg.unet);
    ldmc_params_alloc(&u->params, LDMC_ROLE_WEIGHTS);
    if (seed) ldmc_params_init(&u->params, seed);
    // ldmc_params_init zeroes some layers: give every weight a value of its own
    for (int i = 0; seed && i < u->params.count; i++) {
        float *w = u->params.buffers[LDMC_ROLE_WEIGHTS] + u->params.items[i].offset;
        for (int64_t k = 0; k < u->params.items[i].numel; k++)
            w[k] += (float)((k % 1000) * 1e-4);
    }
}

static void new_vae(ldmc_vae *v, uint64_t seed) {
    ldmc_model_config cfg = test_model_config("tiny_vae.yaml");
    ldmc_vae_init(v, &cfg.vae);
    ldmc_params_alloc(&v->params, LDMC_ROLE_WEIGHTS);
    if (seed) ldmc_params_init(&v->params, seed);
}

// Bit-identical parameters (the padding between them is not part of any file).
static bool same_weights(const ldmc_params *a, const ldmc_params *b) {
    if (a->count != b->count) return false;
    for (int i = 0; i < a->count; i++) {
        size_t off = a->items[i].offset;
        if (memcmp(a->buffers[LDMC_ROLE_WEIGHTS] + off, b->buffers[LDMC_ROLE_WEIGHTS] + off,
                   (size_t)a->items[i].numel * sizeof(float)) != 0)
            return false;
    }
    return true;
}

// A source "official" file that also holds text-encoder tensors, like sd_xl_base_1.0.
static const char *write_source_with_conditioner(ldmc_unet *u, ldmc_vae *v) {
    static float clip[77 * 8];
    for (int i = 0; i < 77 * 8; i++)
        clip[i] = (float)i * 0.5f;
    uint16_t half[16];
    for (int i = 0; i < 16; i++)
        half[i] = ldmc_f32_to_f16((float)i);
    ldmc_st_entry extra[] = {
        {"conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
         LDMC_F32,
         LDMC_F32,
         2,
         {77, 8},
         clip,
         NULL},
        {"conditioner.embedders.1.model.text_projection",
         LDMC_F16,
         LDMC_F16,
         2,
         {4, 4},
         half,
         NULL},
    };
    ldmc_err err = {0};
    const char *extra_path = path_of("extra.safetensors");
    LDMC_CHECK(ldmc_safetensors_write(extra_path, extra, 2, NULL, 0, &err) == 0, "%s", err.message);
    ldmc_safetensors extra_file;
    LDMC_CHECK(ldmc_safetensors_open(&extra_file, extra_path, &err) == 0, "%s", err.message);
    const char *path = path_of("source.safetensors");
    LDMC_CHECK(test_save_models(path, LDMC_LAYOUT_OFFICIAL, u, v, LDMC_F32, &extra_file, &err) == 0,
               "%s", err.message);
    ldmc_safetensors_close(&extra_file);
    return path;
}

static void test_official_single_file_round_trip(void) {
    ldmc_unet u, u2;
    ldmc_vae v, v2;
    new_unet(&u, 5);
    new_vae(&v, 6);
    const char *source = write_source_with_conditioner(&u, &v);
    new_unet(&u2, 0);
    new_vae(&v2, 0);
    ldmc_err err = {0};
    CHECK(test_load_unet(&u2, source, NULL, &err) == 0, "%s", err.message);
    CHECK(test_load_vae(&v2, source, NULL, &err) == 0, "%s", err.message);
    CHECK(same_weights(&u.params, &u2.params), "UNet weights changed through the file");
    CHECK(same_weights(&v.params, &v2.params), "VAE weights changed through the file");
    // Saving again with the source as passthrough: identical bytes, conditioner included.
    ldmc_safetensors src;
    REQUIRE(ldmc_safetensors_open(&src, source, &err) == 0, "%s", err.message);
    const char *again = path_of("again.safetensors");
    CHECK(test_save_models(again, LDMC_LAYOUT_OFFICIAL, &u2, &v2, LDMC_F32, &src, &err) == 0, "%s",
          err.message);
    ldmc_safetensors out;
    REQUIRE(ldmc_safetensors_open(&out, again, &err) == 0, "%s", err.message);
    CHECK(out.count == src.count && out.data_size == src.data_size &&
              memcmp(out.data, src.data, src.data_size) == 0,
          "the re-saved file differs (%d vs %d tensors)", out.count, src.count);
    const ldmc_st_tensor *proj =
        ldmc_safetensors_find(&out, "conditioner.embedders.1.model.text_projection");
    CHECK(proj && proj->dtype == LDMC_F16, "conditioner tensors keep their dtype");
    ldmc_safetensors_close(&out);
    ldmc_safetensors_close(&src);
    ldmc_unet_free(&u), ldmc_unet_free(&u2), ldmc_vae_free(&v), ldmc_vae_free(&v2);
}

static void test_half_precision_files(void) {
    ldmc_unet u, u2;
    new_unet(&u, 7);
    ldmc_dtype dtypes[2] = {LDMC_F16, LDMC_BF16};
    for (int k = 0; k < 2; k++) {
        const char *path = path_of(k ? "bf16.safetensors" : "f16.safetensors");
        ldmc_err err = {0};
        REQUIRE(test_save_models(path, LDMC_LAYOUT_OFFICIAL, &u, NULL, dtypes[k], NULL, &err) == 0,
                "%s", err.message);
        new_unet(&u2, 0);
        REQUIRE(test_load_unet(&u2, path, NULL, &err) == 0, "%s", err.message);
        // Loaded values are the f32 weights rounded to the file's dtype; conv weights included.
        size_t bad = 0;
        for (int p = 0; p < u.params.count; p++) {
            const float *a = u.params.buffers[LDMC_ROLE_WEIGHTS] + u.params.items[p].offset;
            const float *b = u2.params.buffers[LDMC_ROLE_WEIGHTS] + u.params.items[p].offset;
            for (int64_t i = 0; i < u.params.items[p].numel; i++) {
                float want = k ? ldmc_bf16_to_f32(ldmc_f32_to_bf16(a[i]))
                               : ldmc_f16_to_f32(ldmc_f32_to_f16(a[i]));
                bad += memcmp(&want, &b[i], 4) != 0;
            }
        }
        CHECK(bad == 0, "%s: %zu values differ from the rounded weights",
              ldmc_dtype_name(dtypes[k]), bad);
        ldmc_unet_free(&u2);
    }
    ldmc_unet_free(&u);
}

static void test_diffusers_round_trip(void) {
    ldmc_unet u, u2;
    ldmc_vae v, v2;
    new_unet(&u, 8);
    new_vae(&v, 9);
    ldmc_err err = {0};
    const char *folder = path_of("diffusers");
    REQUIRE(test_save_models(folder, LDMC_LAYOUT_DIFFUSERS, &u, &v, LDMC_F32, NULL, &err) == 0,
            "%s", err.message);
    char file[600];
    snprintf(file, sizeof file, "%s/unet/config.json", folder);
    CHECK(access(file, F_OK) == 0, "no unet/config.json");
    snprintf(file, sizeof file, "%s/vae/diffusion_pytorch_model.safetensors", folder);
    ldmc_safetensors st;
    REQUIRE(ldmc_safetensors_open(&st, file, &err) == 0, "%s", err.message);
    const ldmc_st_tensor *q =
        ldmc_safetensors_find(&st, "encoder.mid_block.attentions.0.to_q.weight");
    CHECK(q && q->ndim == 2 && q->shape[0] == 64 && q->shape[1] == 64,
          "the VAE's attention 1x1 convs are linear weights in diffusers");
    ldmc_safetensors_close(&st);
    new_unet(&u2, 0);
    new_vae(&v2, 0);
    CHECK(test_load_unet(&u2, folder, NULL, &err) == 0, "%s", err.message);
    CHECK(test_load_vae(&v2, folder, NULL, &err) == 0, "%s", err.message);
    CHECK(same_weights(&u.params, &u2.params), "UNet weights changed through diffusers");
    CHECK(same_weights(&v.params, &v2.params), "VAE weights changed through diffusers");
    ldmc_unet_free(&u), ldmc_unet_free(&u2), ldmc_vae_free(&v), ldmc_vae_free(&v2);
}

// `from` rewritten with every key that starts with `prefix` stripped of it.
static void write_without_prefix(const char *from, const char *to, const char *prefix) {
    ldmc_err err = {0};
    ldmc_safetensors st;
    LDMC_CHECK(ldmc_safetensors_open(&st, from, &err) == 0, "%s", err.message);
    ldmc_st_entry *e = calloc((size_t)st.count, sizeof *e);
    for (int i = 0; i < st.count; i++) {
        const ldmc_st_tensor *t = &st.tensors[i];
        size_t n = strlen(prefix);
        e[i] = (ldmc_st_entry){.name = strncmp(t->name, prefix, n) ? t->name : t->name + n,
                               .dtype = t->dtype,
                               .src_dtype = t->dtype,
                               .ndim = t->ndim,
                               .data = t->data};
        memcpy(e[i].shape, t->shape, sizeof t->shape);
    }
    LDMC_CHECK(ldmc_safetensors_write(to, e, st.count, NULL, 0, &err) == 0, "%s", err.message);
    free(e);
    ldmc_safetensors_close(&st);
}

// Stand-alone model files as they are downloaded: a VAE (or UNet) with its official keys but
// without the whole file's prefix (sdxl_vae.safetensors: encoder.*, decoder.*), or a diffusers
// file on its own. Each loads; a file holding neither names what it expected.
static void test_stand_alone_files(void) {
    ldmc_unet u, u2;
    ldmc_vae v, v2;
    new_unet(&u, 11);
    new_vae(&v, 12);
    ldmc_err err = {0};
    const char *unet_only = path_of("unet_only.safetensors");
    REQUIRE(test_save_models(unet_only, LDMC_LAYOUT_OFFICIAL, &u, NULL, LDMC_F32, NULL, &err) == 0,
            "%s", err.message);
    const char *bare_vae = path_of("bare_vae.safetensors"),
               *bare_unet = path_of("bare_unet.safetensors");
    const char *vae_only = path_of("vae_only.safetensors");
    REQUIRE(test_save_models(vae_only, LDMC_LAYOUT_OFFICIAL, NULL, &v, LDMC_F32, NULL, &err) == 0,
            "%s", err.message);
    write_without_prefix(vae_only, bare_vae, LDMC_VAE_PREFIX);
    write_without_prefix(unet_only, bare_unet, LDMC_UNET_PREFIX);
    new_vae(&v2, 0);
    CHECK(test_load_vae(&v2, bare_vae, NULL, &err) == 0, "%s", err.message);
    CHECK(same_weights(&v.params, &v2.params), "VAE weights changed through a bare file");
    new_unet(&u2, 0);
    CHECK(test_load_unet(&u2, bare_unet, NULL, &err) == 0, "%s", err.message);
    CHECK(same_weights(&u.params, &u2.params), "UNet weights changed through a bare file");
    ldmc_vae_free(&v2);
    // a diffusers VAE file on its own (vae/diffusion_pytorch_model.safetensors, downloaded alone)
    const char *folder = path_of("alone_diffusers");
    REQUIRE(test_save_models(folder, LDMC_LAYOUT_DIFFUSERS, NULL, &v, LDMC_F32, NULL, &err) == 0,
            "%s", err.message);
    char file[700];
    snprintf(file, sizeof file, "%s/vae/diffusion_pytorch_model.safetensors", folder);
    new_vae(&v2, 0);
    CHECK(test_load_vae(&v2, file, NULL, &err) == 0, "%s", err.message);
    CHECK(same_weights(&v.params, &v2.params), "VAE weights changed through a diffusers file");
    ldmc_vae_free(&v2);
    // a file with no VAE at all: the message says what a VAE file holds
    new_vae(&v2, 0);
    CHECK(test_load_vae(&v2, unet_only, NULL, &err) != 0 && strstr(err.message, unet_only) &&
              strstr(err.message, "no VAE weights") &&
              strstr(err.message, "first_stage_model.encoder.conv_in.weight"),
          "%s", err.message);
    ldmc_unet_free(&u), ldmc_unet_free(&u2), ldmc_vae_free(&v), ldmc_vae_free(&v2);
}

// Renames that diffusers' convert_ldm_unet_checkpoint / convert_ldm_vae_checkpoint apply to the
// SDXL weights files (../shared/reference/sdxl-facts.md §9).
static void test_diffusers_names_of_sdxl(void) {
    ldmc_model_config base = test_model_config("sdxl_base.yaml"),
                      vae = test_model_config("sdxl_vae.yaml");
    static const char *const unet_pairs[][2] = {
        {"time_embed.0.weight", "time_embedding.linear_1.weight"},
        {"label_emb.0.2.bias", "add_embedding.linear_2.bias"},
        {"input_blocks.0.0.weight", "conv_in.weight"},
        {"input_blocks.2.0.in_layers.0.weight", "down_blocks.0.resnets.1.norm1.weight"},
        {"input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight"},
        {"input_blocks.4.0.skip_connection.weight", "down_blocks.1.resnets.0.conv_shortcut.weight"},
        {"input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
         "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"},
        {"input_blocks.8.1.proj_out.bias", "down_blocks.2.attentions.1.proj_out.bias"},
        {"middle_block.0.emb_layers.1.weight", "mid_block.resnets.0.time_emb_proj.weight"},
        {"middle_block.1.transformer_blocks.9.ff.net.2.weight",
         "mid_block.attentions.0.transformer_blocks.9.ff.net.2.weight"},
        {"middle_block.2.out_layers.3.weight", "mid_block.resnets.1.conv2.weight"},
        {"output_blocks.2.2.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"},
        {"output_blocks.3.1.norm.weight", "up_blocks.1.attentions.0.norm.weight"},
        {"output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias"},
        {"output_blocks.8.0.out_layers.0.bias", "up_blocks.2.resnets.2.norm2.bias"},
        {"out.0.weight", "conv_norm_out.weight"},
        {"out.2.bias", "conv_out.bias"},
    };
    static const char *const vae_pairs[][2] = {
        {"encoder.down.0.block.1.conv2.weight", "encoder.down_blocks.0.resnets.1.conv2.weight"},
        {"encoder.down.1.block.0.nin_shortcut.weight",
         "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"},
        {"encoder.down.2.downsample.conv.weight",
         "encoder.down_blocks.2.downsamplers.0.conv.weight"},
        {"encoder.mid.attn_1.q.weight", "encoder.mid_block.attentions.0.to_q.weight"},
        {"encoder.mid.attn_1.norm.bias", "encoder.mid_block.attentions.0.group_norm.bias"},
        {"decoder.mid.attn_1.proj_out.weight", "decoder.mid_block.attentions.0.to_out.0.weight"},
        {"decoder.mid.block_2.norm1.weight", "decoder.mid_block.resnets.1.norm1.weight"},
        {"decoder.up.3.block.0.conv1.weight", "decoder.up_blocks.0.resnets.0.conv1.weight"},
        {"decoder.up.1.upsample.conv.weight", "decoder.up_blocks.2.upsamplers.0.conv.weight"},
        {"decoder.norm_out.weight", "decoder.conv_norm_out.weight"},
        {"quant_conv.weight", "quant_conv.weight"},
    };
    ldmc_model um = {.desc = &ldmc_unet_desc, .config = &base.unet},
               vm = {.desc = &ldmc_vae_desc, .config = &vae.vae};
    ldmc_key_map umap = {.layout = LDMC_LAYOUT_DIFFUSERS, .model = &um},
                 vmap = {.layout = LDMC_LAYOUT_DIFFUSERS, .model = &vm};
    char key[512], out[512];
    for (size_t i = 0; i < sizeof unet_pairs / sizeof unet_pairs[0]; i++) {
        snprintf(key, sizeof key, LDMC_UNET_PREFIX "%s", unet_pairs[i][0]);
        CHECK(ldmc_map_key(&umap, key, out, sizeof out, NULL) == 0 &&
                  !strcmp(out, unet_pairs[i][1]),
              "%s -> %s, want %s", unet_pairs[i][0], out, unet_pairs[i][1]);
    }
    for (size_t i = 0; i < sizeof vae_pairs / sizeof vae_pairs[0]; i++) {
        snprintf(key, sizeof key, LDMC_VAE_PREFIX "%s", vae_pairs[i][0]);
        CHECK(ldmc_map_key(&vmap, key, out, sizeof out, NULL) == 0 && !strcmp(out, vae_pairs[i][1]),
              "%s -> %s, want %s", vae_pairs[i][0], out, vae_pairs[i][1]);
    }
    // Every SDXL key maps, and no two to the same name.
    ldmc_unet u;
    ldmc_unet_init(&u, &base.unet);
    int n = u.params.count, duplicates = 0, unmapped = 0;
    char(*names)[128] = calloc((size_t)n, sizeof *names);
    for (int i = 0; i < n; i++)
        unmapped += ldmc_map_key(&umap, u.params.items[i].name, names[i], 128, NULL) != 0;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            duplicates += !strcmp(names[i], names[j]);
    CHECK(unmapped == 0 && duplicates == 0, "%d unmapped, %d duplicate diffusers names", unmapped,
          duplicates);
    free(names);
    ldmc_unet_free(&u);
    // The diffusers config of SDXL base.
    ldmc_err err = {0};
    char *json = ldmc_unet_desc.diffusers_config(&base.unet, &err);
    REQUIRE(json, "%s", err.message);
    CHECK(strstr(json, "\"addition_embed_type\":\t\"text_time\"") &&
              strstr(json, "\"projection_class_embeddings_input_dim\":\t2816") &&
              strstr(json, "\"transformer_layers_per_block\":\t[1, 2, 10]") &&
              strstr(json, "\"attention_head_dim\":\t[5, 10, 20]"),
          "unexpected SDXL diffusers config:\n%s", json);
    free(json);
}

// ---- mismatches
// -----------------------------------------------------------------------------------

// Writes the UNet's weights with one change applied to the list of entries.
typedef enum { DROP_LABEL_EMB, ADD_EXTRA, WRONG_SHAPE, WRONG_DTYPE } damage;

static const char *write_damaged(ldmc_unet *u, damage what) {
    ldmc_err err = {0};
    const char *clean = path_of("clean.safetensors");
    LDMC_CHECK(test_save_models(clean, LDMC_LAYOUT_OFFICIAL, u, NULL, LDMC_F32, NULL, &err) == 0,
               "%s", err.message);
    ldmc_safetensors st;
    LDMC_CHECK(ldmc_safetensors_open(&st, clean, &err) == 0, "%s", err.message);
    ldmc_st_entry *e = calloc((size_t)st.count + 1, sizeof *e);
    int n = 0;
    static int32_t ints[4];
    for (int i = 0; i < st.count; i++) {
        const ldmc_st_tensor *t = &st.tensors[i];
        if (what == DROP_LABEL_EMB && strstr(t->name, ".label_emb.")) continue;
        e[n] = (ldmc_st_entry){t->name, t->dtype, t->dtype, t->ndim, {0}, t->data, NULL};
        memcpy(e[n].shape, t->shape, sizeof e[n].shape);
        if (what == WRONG_SHAPE && strstr(t->name, "input_blocks.1.0.in_layers.2.weight")) {
            e[n].shape[1] = t->shape[2], e[n].shape[2] = t->shape[1] * t->shape[3],
            e[n].shape[3] = 1;
        }
        if (what == WRONG_DTYPE && !strcmp(t->name, LDMC_UNET_PREFIX "out.2.bias"))
            e[n] = (ldmc_st_entry){t->name, LDMC_I32, LDMC_I32, 1, {4}, ints, NULL};
        n++;
    }
    if (what == ADD_EXTRA)
        e[n++] = (ldmc_st_entry){LDMC_UNET_PREFIX "input_blocks.9.0.in_layers.0.weight",
                                 LDMC_I32,
                                 LDMC_I32,
                                 1,
                                 {4},
                                 ints,
                                 NULL};
    const char *path = path_of("damaged.safetensors");
    LDMC_CHECK(ldmc_safetensors_write(path, e, n, NULL, 0, &err) == 0, "%s", err.message);
    ldmc_safetensors_close(&st);
    free(e);
    return path;
}

static void expect_load_error(ldmc_unet *target, const char *path, const ldmc_load_options *opt,
                              const char *const *texts, int n_texts) {
    ldmc_err err = {0};
    float before = target->params.buffers[LDMC_ROLE_WEIGHTS][0];
    target->params.buffers[LDMC_ROLE_WEIGHTS][0] = 12345.0f;
    CHECK(test_load_unet(target, path, opt, &err) == -1, "a damaged file loaded");
    for (int i = 0; i < n_texts; i++)
        CHECK(strstr(err.message, texts[i]), "message lacks '%s':\n%s", texts[i], err.message);
    CHECK(target->params.buffers[LDMC_ROLE_WEIGHTS][0] == 12345.0f,
          "weights were changed by a refused load");
    target->params.buffers[LDMC_ROLE_WEIGHTS][0] = before;
}

static void test_mismatches_are_named(void) {
    ldmc_unet u, target;
    new_unet(&u, 10);
    new_unet(&target, 0);
    expect_load_error(&target, write_damaged(&u, DROP_LABEL_EMB), NULL,
                      (const char *[]){"does not match the model", "4 missing",
                                       "model.diffusion_model.label_emb.0.0.weight",
                                       "must be declared new"},
                      4);
    expect_load_error(&target, write_damaged(&u, ADD_EXTRA), NULL,
                      (const char *[]){"1 unexpected", "input_blocks.9.0.in_layers.0.weight"}, 2);
    expect_load_error(&target, write_damaged(&u, WRONG_SHAPE), NULL,
                      (const char *[]){"1 with the wrong shape",
                                       "input_blocks.1.0.in_layers.2.weight is F32 (32, 3, 96, 1), "
                                       "the model needs F32/F16/BF16 (32, 32, 3, 3)"},
                      2);
    expect_load_error(&target, write_damaged(&u, WRONG_DTYPE), NULL,
                      (const char *[]){"out.2.bias is I32 (4)"}, 1);
    // A model of another shape: every difference counted, the first few named.
    ldmc_model_config other = test_model_config("tiny_unet_class.yaml");
    ldmc_unet cls;
    ldmc_unet_init(&cls, &other.unet);
    ldmc_params_alloc(&cls.params, LDMC_ROLE_WEIGHTS);
    ldmc_err err = {0};
    CHECK(test_load_unet(&cls, path_of("clean.safetensors"), NULL, &err) == -1 &&
              strstr(err.message, "79 missing") && strstr(err.message, "80 unexpected") &&
              strstr(err.message, "9 with the wrong shape") && strstr(err.message, "; ..."),
          "%s", err.message);
    ldmc_unet_free(&cls);
    ldmc_unet_free(&u);
    ldmc_unet_free(&target);
}

// Fine-tuning with a new embedder: the declared-new tensors keep their values, the rest loads.
static void test_partial_load_with_new_parameters(void) {
    ldmc_unet u, target;
    new_unet(&u, 11);
    new_unet(&target, 12);
    const char *path = write_damaged(&u, DROP_LABEL_EMB);
    int label = ldmc_params_find(&target.params, LDMC_UNET_PREFIX "label_emb.0.0.weight");
    float kept = target.params.buffers[LDMC_ROLE_WEIGHTS][target.params.items[label].offset];
    int n_new = -1;
    const char *patterns[] = {"*.label_emb.*"};
    ldmc_load_options opt = {.may_be_new = patterns, .n_may_be_new = 1, .n_new = &n_new};
    ldmc_err err = {0};
    CHECK(test_load_unet(&target, path, &opt, &err) == 0, "%s", err.message);
    CHECK(n_new == 4, "%d new parameters, want 4", n_new);
    CHECK(target.params.buffers[LDMC_ROLE_WEIGHTS][target.params.items[label].offset] == kept,
          "a new parameter was overwritten");
    int conv = ldmc_params_find(&target.params, LDMC_UNET_PREFIX "input_blocks.0.0.weight");
    size_t off = target.params.items[conv].offset;
    CHECK(memcmp(target.params.buffers[LDMC_ROLE_WEIGHTS] + off,
                 u.params.buffers[LDMC_ROLE_WEIGHTS] + off,
                 (size_t)target.params.items[conv].numel * 4) == 0,
          "the rest did not load");
    ldmc_unet_free(&u);
    ldmc_unet_free(&target);
}

static void test_bad_files_and_folders(void) {
    ldmc_unet u;
    new_unet(&u, 0);
    ldmc_err err = {0};
    CHECK(test_load_unet(&u, path_of("nothing.safetensors"), NULL, &err) == -1 &&
              strstr(err.message, "cannot open"),
          "%s", err.message);
    ldmc_err_clear(&err);
    const char *folder = path_of("empty_folder");
    mkdir(folder, 0777);
    CHECK(test_load_unet(&u, folder, NULL, &err) == -1 &&
              strstr(err.message, "unet/diffusion_pytorch_model.safetensors"),
          "%s", err.message);
    ldmc_err_clear(&err);
    FILE *f = fopen(path_of("junk.safetensors"), "wb");
    fputs("not a weights file at all", f);
    fclose(f);
    CHECK(test_load_unet(&u, path_of("junk.safetensors"), NULL, &err) == -1 &&
              strstr(err.message, "junk.safetensors"),
          "%s", err.message);
    // Class-conditional UNets have no diffusers layout: refused with the reason.
    ldmc_model_config other = test_model_config("tiny_unet_class.yaml");
    ldmc_unet cls;
    ldmc_unet_init(&cls, &other.unet);
    ldmc_params_alloc(&cls.params, LDMC_ROLE_WEIGHTS);
    ldmc_err_clear(&err);
    CHECK(test_save_models(path_of("cls_diffusers"), LDMC_LAYOUT_DIFFUSERS, &cls, NULL, LDMC_F32,
                           NULL, &err) == -1 &&
              strstr(err.message, "class-conditional"),
          "%s", err.message);
    ldmc_unet_free(&cls);
    ldmc_unet_free(&u);
}

int main(int argc, char **argv) {
    static const test_entry tests[] = {
        TEST_ENTRY(test_official_single_file_round_trip),
        TEST_ENTRY(test_half_precision_files),
        TEST_ENTRY(test_diffusers_round_trip),
        TEST_ENTRY(test_stand_alone_files),
        TEST_ENTRY(test_diffusers_names_of_sdxl),
        TEST_ENTRY(test_mismatches_are_named),
        TEST_ENTRY(test_partial_load_with_new_parameters),
        TEST_ENTRY(test_bad_files_and_folders),
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
