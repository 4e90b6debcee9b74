// The UNet, the VAE and their blocks against PyTorch (tests/ref/sgm_ref.py, generative-models'
// modules re-implemented): output, loss, the gradient of every parameter and of the inputs, for
// the tiny text- and class-conditional UNets and the tiny VAE of configs/, and for a ResBlock and
// a SpatialTransformer at SDXL's widths (640 and 1280 channels, 64-wide heads, context 2048).
// Reference data: tests/ref/data/models.safetensors (tests/ref/make_model_refs.py). The text
// encoders (CLIP-L and bigG layouts, tiny configs; the official keys at full size):
// tests/ref/data/text.safetensors (tests/ref/make_text_refs.py, tests/ref/clip_ref.py). Also:
// recomputation (gradient checkpointing) gives bit-identical gradients with less memory.
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "harness.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "nn/diffusers.h"
#include "nn/text_encoder.h"
#include "nn/unet.h"
#include "nn/vae.h"
#include "ops/ops.h"

// models.safetensors and text.safetensors (tests/ref/make_text_refs.py: the text encoders); the
// case being run reads `ref`, which find_case points at the file holding it.
static ldmc_safetensors model_ref, text_ref, *ref = &model_ref;
static cJSON *model_cases, *text_cases;

// ---- inputs and comparisons -----------------------------------------------------------------------

static const cJSON *input_spec(const cJSON *c, const char *name) {
    const cJSON *s;
    cJSON_ArrayForEach(s, cJSON_GetObjectItem(c, "inputs")) {
        if (!strcmp(cJSON_GetObjectItem(s, "name")->valuestring, name)) return s;
    }
    LDMC_FATAL("case has no input '%s'", name);
}

// As make_model_refs.py draw(): float32(u * scale + shift), or whole numbers in [0, high).
static ldmc_tensor *draw(ldmc_ctx *ctx, const cJSON *c, const char *name, ldmc_dtype dtype) {
    const cJSON *s = input_spec(c, name), *d;
    int64_t shape[LDMC_MAX_DIMS];
    int ndim = 0;
    cJSON_ArrayForEach(d, cJSON_GetObjectItem(s, "shape")) shape[ndim++] = (int64_t)d->valuedouble;
    ldmc_tensor *t = ldmc_new(ctx, dtype, ndim, shape);
    t->name = cJSON_GetObjectItem(s, "name")->valuestring;
    int64_t n = ldmc_numel(t);
    float *u = malloc((size_t)n * sizeof *u);
    const cJSON *high = cJSON_GetObjectItem(s, "high");
    test_fill(u, n, (uint64_t)cJSON_GetObjectItem(s, "seed")->valuedouble, 1, 0);
    for (int64_t i = 0; i < n; i++) {
        double v = high ? floor(((double)u[i] + 1) / 2 * high->valuedouble) : u[i];
        if (dtype == LDMC_I64)
            ((int64_t *)t->data)[i] = (int64_t)v;
        else
            ((float *)t->data)[i] = (float)v;
    }
    free(u);
    return t;
}

static void compare_scaled(const char *key, const float *got, int64_t numel, double rtol,
                           double min_scale) {
    char idx_key[512];
    snprintf(idx_key, sizeof idx_key, "%s.idx", key);
    const ldmc_st_tensor *want_t = ldmc_safetensors_find(ref, key), *idx_t = ldmc_safetensors_find(ref, idx_key);
    REQUIRE(want_t, "reference %s is missing", key);
    int64_t n = ldmc_st_numel(want_t);
    float *want = malloc((size_t)n * sizeof *want);
    int32_t *idx = idx_t ? malloc((size_t)n * sizeof *idx) : NULL;
    ldmc_err err = {0};
    bool ok = ldmc_safetensors_read(ref, want_t, want, LDMC_F32, &err) == 0 &&
              (!idx_t || ldmc_safetensors_read(ref, idx_t, idx, LDMC_I32, &err) == 0);
    CHECK(ok, "%s", err.message);
    CHECK(idx_t || n == numel, "%s: %lld values, the reference has %lld", key, (long long)numel, (long long)n);
    for (int64_t i = 0; ok && idx && i < n; i++) ok = idx[i] >= 0 && idx[i] < numel;
    if (ok && (idx_t || n == numel)) CHECK_CLOSE_SCALED(key, got, want, idx, n, rtol, min_scale);
    free(want);
    free(idx);
}

static void compare(const char *key, const float *got, int64_t numel, double rtol) {
    compare_scaled(key, got, numel, rtol, 0);
}

// The rms of the reference values whose names start with `prefix` ("<case>.grad."): the
// gradient scale of the whole model, the scale of the terms that cancel in a gradient that is
// exactly zero.
static double reference_rms(const char *prefix) {
    double ss = 0;
    int64_t count = 0;
    size_t len = strlen(prefix);
    for (int i = 0; i < ref->count; i++) {
        const ldmc_st_tensor *t = &ref->tensors[i];
        size_t name_len = strlen(t->name);
        if (strncmp(t->name, prefix, len) || (name_len > 4 && !strcmp(t->name + name_len - 4, ".idx")))
            continue;
        int64_t n = ldmc_st_numel(t);
        float *v = malloc((size_t)n * sizeof *v);
        ldmc_err err = {0};
        if (ldmc_safetensors_read(ref, t, v, LDMC_F32, &err) == 0)
            for (int64_t k = 0; k < n; k++) ss += (double)v[k] * v[k];
        count += n;
        free(v);
    }
    return count ? sqrt(ss / (double)count) : 0;
}

// Every parameter's gradient, in the official layout, against "<case>.grad.<key>".
static void compare_param_grads(const char *case_name, const ldmc_params *p, double rtol) {
    int compared = 0;
    char prefix[256];
    snprintf(prefix, sizeof prefix, "%s.grad.", case_name);
    double model_scale = reference_rms(prefix);
    for (int i = 0; i < p->count; i++) {
        const ldmc_param *param = &p->items[i];
        const float *g = p->buffers[LDMC_ROLE_GRAD] + param->offset;
        float *official = NULL;
        if (param->flags & LDMC_PARAM_CONV) {
            official = malloc((size_t)param->numel * sizeof *official);
            ldmc_conv_to_official(official, g, param->shape[0], param->shape[1], param->shape[2],
                                  param->shape[3]);
            g = official;
        }
        char key[512];
        snprintf(key, sizeof key, "%s.grad.%s", case_name, param->name);
        compare_scaled(key, g, param->numel, rtol, model_scale);
        free(official);
        compared++;
    }
    CHECK(compared == p->count && compared > 0, "%d of %d gradients compared", compared, p->count);
}

static void compare_common(const char *name, ldmc_tensor *out, ldmc_tensor *loss, double rtol) {
    char key[256];
    snprintf(key, sizeof key, "%s.out", name);
    compare(key, out->data, ldmc_numel(out), rtol);
    snprintf(key, sizeof key, "%s.loss", name);
    compare(key, loss->data, 1, rtol);
}

static void compare_input_grad(const char *name, ldmc_tensor *t, double rtol) {
    char key[256];
    snprintf(key, sizeof key, "%s.grad_in.%s", name, t->name);
    const float *g = ldmc_grad_if_any(t);
    CHECK(g, "%s: no gradient reached input %s", name, t->name);
    if (g) compare(key, g, ldmc_numel(t), rtol);
}

static const cJSON *find_case(const char *name) {
    const cJSON *c;
    cJSON_ArrayForEach(c, model_cases) {
        if (!strcmp(cJSON_GetObjectItem(c, "name")->valuestring, name)) return ref = &model_ref, c;
    }
    cJSON_ArrayForEach(c, text_cases) {
        if (!strcmp(cJSON_GetObjectItem(c, "name")->valuestring, name)) return ref = &text_ref, c;
    }
    LDMC_FATAL("no reference case '%s' in models.safetensors or text.safetensors", name);
}

static const char *param_str(const cJSON *c, const char *key) {
    return cJSON_GetObjectItem(cJSON_GetObjectItem(c, "params"), key)->valuestring;
}

static double param_num(const cJSON *c, const char *key) {
    return cJSON_GetObjectItem(cJSON_GetObjectItem(c, "params"), key)->valuedouble;
}

// ---- the tolerance --------------------------------------------------------------------------------
// harness.h's rule with K = the longest reduction in the network (a 3x3 convolution over its
// widest input, or a 4C-wide feed-forward), and factor 4 x the number of layers a value passes
// through on its longest path: each layer's float32 rounding adds to what it received.
static double model_rtol(double K, int depth) { return tolerance_f32(4.0 * depth, K); }

// ---- the cases --------------------------------------------------------------------------------------

// The parameters get weights and gradient buffers, the weights the test initialization.
static void ready_for_training(ldmc_params *p) {
    ldmc_params_alloc(p, LDMC_ROLE_WEIGHTS);
    ldmc_params_alloc(p, LDMC_ROLE_GRAD);
    test_init_weights(p);
}

// The case's UNet (its config file is the case's `config` parameter), ready for training.
static void case_unet(ldmc_unet *u, const cJSON *c) {
    ldmc_model_config cfg = test_model_config(param_str(c, "config"));
    ldmc_unet_init(u, &cfg.unet);
    ready_for_training(&u->params);
}

static void case_vae(ldmc_vae *v, const cJSON *c) {
    ldmc_model_config cfg = test_model_config(param_str(c, "config"));
    ldmc_vae_init(v, &cfg.vae);
    ready_for_training(&v->params);
}

// One UNet training step; returns the loss tensor.
static ldmc_tensor *unet_step(ldmc_ctx *ctx, ldmc_unet *u, const cJSON *c, ldmc_tensor **x_out,
                              ldmc_tensor **context_out, ldmc_tensor **out_out) {
    ldmc_tensor *x = draw(ctx, c, "x", LDMC_F32), *t = draw(ctx, c, "t", LDMC_F32);
    ldmc_requires_grad(x);
    ldmc_unet_cond cond = {0};
    ldmc_tensor *parts[LDMC_VECTOR_PART_COUNT] = {0};
    for (int i = 0; i < u->cfg.n_vector; i++)
        parts[u->cfg.vector[i]] = draw(ctx, c, ldmc_vector_part_name(u->cfg.vector[i]), LDMC_F32);
    if (u->cfg.n_vector) cond.vector = ldmc_unet_vector(ctx, &u->cfg, parts);
    if (u->cfg.n_classes) {
        cond.class_labels = draw(ctx, c, "class_labels", LDMC_I64);
    } else {
        cond.context = draw(ctx, c, "context", LDMC_F32);
        ldmc_requires_grad(cond.context);
    }
    ldmc_tensor *out = ldmc_unet_forward(ctx, u, x, t, &cond);
    ldmc_tensor *loss = ldmc_mse_loss(ctx, out, draw(ctx, c, "target", LDMC_F32));
    ldmc_backward(ctx, loss, NULL);
    *x_out = x;
    *context_out = cond.context;
    *out_out = out;
    return loss;
}

static void run_unet_case(const char *name, double K, int depth) {
    const cJSON *c = find_case(name);
    ldmc_unet u;
    case_unet(&u, c);
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ldmc_tensor *x, *context, *out;
    ldmc_tensor *loss = unet_step(&ctx, &u, c, &x, &context, &out);
    double rtol = model_rtol(K, depth);
    compare_common(name, out, loss, rtol);
    compare_input_grad(name, x, rtol);
    if (context) compare_input_grad(name, context, rtol);
    compare_param_grads(name, &u.params, rtol);
    ldmc_ctx_free(&ctx);
    ldmc_unet_free(&u);
}

// The tiny UNets: K = 9 x 128 (the widest 3x3 convolution, 64 + 64 channels); 13 sequential
// layers deep at most (time and label MLPs, 2 input blocks, middle, 3 output blocks, head).
static void test_unet_text(void) { run_unet_case("unet_text", 9 * 128, 13); }
static void test_unet_class(void) { run_unet_case("unet_class", 9 * 128, 13); }

static void test_vae(void) {
    const cJSON *c = find_case("vae");
    ldmc_vae v;
    case_vae(&v, c);
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ldmc_tensor *x = draw(&ctx, c, "x", LDMC_F32), *noise = draw(&ctx, c, "noise", LDMC_F32);
    ldmc_requires_grad(x);
    ldmc_vae_posterior q = ldmc_vae_encode(&ctx, &v, x);
    ldmc_tensor *out = ldmc_vae_decode(&ctx, &v, ldmc_vae_sample(&ctx, &q, noise));
    // loss = mse(out, x) + kl_weight * mean over the batch of KL; x enters the mse as a constant
    ldmc_tensor *target = ldmc_new_like(&ctx, x);
    memcpy(target->data, x->data, ldmc_nbytes(x));
    ldmc_tensor *kl = ldmc_vae_kl(&ctx, &q);
    int64_t B = kl->shape[0];
    ldmc_tensor *kl_sum = ldmc_sum_rows(&ctx, ldmc_reshape(&ctx, kl, 2, (int64_t[]){1, B}));
    ldmc_tensor *loss = ldmc_add(&ctx, ldmc_mse_loss(&ctx, out, target),
                                 ldmc_reshape(&ctx, ldmc_scale(&ctx, kl_sum, param_num(c, "kl_weight") / B), 0, NULL));
    ldmc_backward(&ctx, loss, NULL);
    // K = 9 x 64 (the widest 3x3 convolution); encoder and decoder are 12 layers deep each.
    double rtol = model_rtol(9 * 64, 24);
    compare_common("vae", out, loss, rtol);
    compare_input_grad("vae", x, rtol);
    compare_param_grads("vae", &v.params, rtol);
    ldmc_ctx_free(&ctx);
    ldmc_vae_free(&v);
}

static void run_resblock_case(const char *name) {
    const cJSON *c = find_case(name);
    ldmc_params p = {0};
    nn_resblock r;
    ldmc_unet_resblock_init(&r, &p, "", (int)param_num(c, "in_ch"), (int)param_num(c, "out_ch"),
                            (int)param_num(c, "emb_ch"));
    ready_for_training(&p);
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ldmc_tensor *x = draw(&ctx, c, "x", LDMC_F32), *emb = draw(&ctx, c, "emb", LDMC_F32);
    ldmc_requires_grad(x);
    ldmc_requires_grad(emb);
    ldmc_tensor *out = nn_resblock_forward(&ctx, &r, x, ldmc_silu(&ctx, emb));
    ldmc_tensor *R = draw(&ctx, c, "R", LDMC_F32);
    ldmc_tensor *loss = ldmc_sum_rows(&ctx, ldmc_reshape(&ctx, ldmc_mul(&ctx, out, R), 2, (int64_t[]){1, ldmc_numel(out)}));
    ldmc_backward(&ctx, loss, NULL);
    double rtol = model_rtol(9.0 * r.out_ch, 4);  // 2 convolutions, 2 norms
    compare_common(name, out, loss, rtol);
    compare_input_grad(name, x, rtol);
    compare_input_grad(name, emb, rtol);
    compare_param_grads(name, &p, rtol);
    ldmc_ctx_free(&ctx);
    ldmc_params_free(&p);
}

static void run_transformer_case(const char *name) {
    const cJSON *c = find_case(name);
    ldmc_params p = {0};
    ldmc_spatial_transformer st;
    int ch = (int)param_num(c, "channels");
    ldmc_spatial_transformer_init(&st, &p, "", ch, 64, (int)param_num(c, "depth"),
                                  (int)param_num(c, "context_dim"));
    ready_for_training(&p);
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ldmc_tensor *x = draw(&ctx, c, "x", LDMC_F32), *context = draw(&ctx, c, "context", LDMC_F32);
    ldmc_requires_grad(x);
    ldmc_requires_grad(context);
    ldmc_tensor *out = ldmc_spatial_transformer_forward(&ctx, &st, x, context);
    ldmc_tensor *R = draw(&ctx, c, "R", LDMC_F32);
    ldmc_tensor *loss = ldmc_sum_rows(&ctx, ldmc_reshape(&ctx, ldmc_mul(&ctx, out, R), 2, (int64_t[]){1, ldmc_numel(out)}));
    ldmc_backward(&ctx, loss, NULL);
    double rtol = model_rtol(4.0 * ch, 4 * st.depth + 2);  // per block: 3 sub-layers; proj in/out
    compare_common(name, out, loss, rtol);
    compare_input_grad(name, x, rtol);
    compare_input_grad(name, context, rtol);
    compare_param_grads(name, &p, rtol);
    ldmc_ctx_free(&ctx);
    ldmc_spatial_transformer_free(&st);
    ldmc_params_free(&p);
}

static void test_resblock_640_1280(void) { run_resblock_case("resblock_640_1280"); }
static void test_resblock_1280(void) { run_resblock_case("resblock_1280"); }
static void test_transformer_640(void) { run_transformer_case("transformer_640"); }
static void test_transformer_1280(void) { run_transformer_case("transformer_1280"); }

// Recomputing every ResBlock and SpatialTransformer (gradient checkpointing) changes memory, not
// the numbers.
static void test_unet_recompute_gives_identical_gradients(void) {
    const cJSON *c = find_case("unet_text");
    ldmc_unet u;
    case_unet(&u, c);
    size_t n = u.params.total;
    float *plain = malloc(n * sizeof *plain);
    size_t high[2];
    float losses[2];
    for (int run = 0; run < 2; run++) {
        u.recompute = run == 1;
        ldmc_params_zero_grad(&u.params);
        ldmc_ctx ctx;
        test_ctx_init(&ctx);
        ldmc_tensor *x, *context, *out;
        losses[run] = ((float *)unet_step(&ctx, &u, c, &x, &context, &out)->data)[0];
        high[run] = ctx.data.high_water;
        if (run == 0) memcpy(plain, u.params.buffers[LDMC_ROLE_GRAD], n * sizeof *plain);
        ldmc_ctx_free(&ctx);
    }
    CHECK(losses[0] == losses[1], "loss %g vs %g", losses[0], losses[1]);
    CHECK(memcmp(plain, u.params.buffers[LDMC_ROLE_GRAD], n * sizeof *plain) == 0,
          "gradients differ with recomputation");
    CHECK(high[1] < high[0], "recomputation used %zu bytes of activations, %zu without", high[1],
          high[0]);
    printf("    activation high-water: %zu bytes plain, %zu recomputed\n", high[0], high[1]);
    free(plain);
    ldmc_unet_free(&u);
}

static void test_vae_recompute_gives_identical_gradients(void) {
    const cJSON *c = find_case("vae");
    ldmc_vae v;
    case_vae(&v, c);
    size_t n = v.params.total, high[2];
    float *plain = malloc(n * sizeof *plain);
    for (int run = 0; run < 2; run++) {
        v.recompute = run == 1;
        ldmc_params_zero_grad(&v.params);
        ldmc_ctx ctx;
        test_ctx_init(&ctx);
        ctx.rng_seed = 3;  // the posterior sample draws its noise from the context's stream
        ldmc_tensor *x = draw(&ctx, c, "x", LDMC_F32);
        ldmc_vae_posterior q = ldmc_vae_encode(&ctx, &v, x);
        ldmc_tensor *losses[2] = {ldmc_l1_loss(&ctx, ldmc_vae_decode(&ctx, &v, ldmc_vae_sample(&ctx, &q, NULL)), x),
                                  ldmc_vae_kl(&ctx, &q)};
        ldmc_backward_many(&ctx, losses, NULL, 2);
        high[run] = ctx.data.high_water;
        if (run == 0) memcpy(plain, v.params.buffers[LDMC_ROLE_GRAD], n * sizeof *plain);
        ldmc_ctx_free(&ctx);
    }
    CHECK(memcmp(plain, v.params.buffers[LDMC_ROLE_GRAD], n * sizeof *plain) == 0,
          "VAE gradients differ with recomputation");
    CHECK(high[1] < high[0], "recomputation used %zu bytes, %zu without", high[1], high[0]);
    free(plain);
    ldmc_vae_free(&v);
}

// ---- the text encoders ----------------------------------------------------------------------------

// A text encoder of a case (its config's text_encoders entry, hidden_layer as the case says):
// context, pooled, and every gradient of loss = sum(context R_context) + sum(pooled R_pooled).
static void run_text_case(const char *name) {
    const cJSON *c = find_case(name);
    ldmc_model_config mc = test_model_config(param_str(c, "config"));
    int index = (int)param_num(c, "encoder");
    REQUIRE(index < mc.n_text, "%s: the config has %d text encoders", name, mc.n_text);
    ldmc_text_config cfg = mc.text[index];
    cfg.hidden_layer = (int)param_num(c, "hidden_layer");
    ldmc_text_encoder e;
    ldmc_text_encoder_init(&e, &cfg);
    CHECK(!strcmp(ldmc_text_prefix(&cfg), param_str(c, "prefix")), "%s: prefix %s, want %s", name,
          ldmc_text_prefix(&cfg), param_str(c, "prefix"));
    ready_for_training(&e.params);
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    const int T = cfg.context_length;
    int32_t ids[3 * 77];
    REQUIRE(T == 77, "%s: %d positions", name, T);
    const cJSON *row, *id;
    int k = 0;
    cJSON_ArrayForEach(row, cJSON_GetObjectItem(cJSON_GetObjectItem(c, "params"), "ids")) {
        cJSON_ArrayForEach(id, row) {
            if (k < 3 * 77) ids[k] = (int32_t)id->valuedouble;
            k++;
        }
    }
    REQUIRE(k == 3 * T, "%s: %d ids", name, k);
    ldmc_tensor *context, *pooled;
    ldmc_text_encoder_forward(&ctx, &e, 3, ids, &context, &pooled);
    CHECK((pooled != NULL) == (cfg.projection_dim > 0), "%s: a pooled output %s", name,
          pooled ? "without a projection" : "missing");
    ldmc_tensor *terms[2] = {ldmc_mul(&ctx, context, draw(&ctx, c, "R_context", LDMC_F32)), NULL};
    ldmc_tensor *loss = ldmc_sum_rows(
        &ctx, ldmc_reshape(&ctx, terms[0], 2, (int64_t[]){1, ldmc_numel(terms[0])}));
    if (pooled) {
        terms[1] = ldmc_mul(&ctx, pooled, draw(&ctx, c, "R_pooled", LDMC_F32));
        loss = ldmc_add(&ctx, loss,
                        ldmc_sum_rows(&ctx, ldmc_reshape(&ctx, terms[1], 2,
                                                         (int64_t[]){1, ldmc_numel(terms[1])})));
    }
    ldmc_backward(&ctx, loss, NULL);
    // the longest path: every block (attention, MLP) and the pooled projection
    double rtol = model_rtol(cfg.mlp_width, 2 * cfg.layers + 3);
    compare_common(name, context, loss, rtol);
    if (pooled) {
        char key[256];
        snprintf(key, sizeof key, "%s.pooled", name);
        compare(key, pooled->data, ldmc_numel(pooled), rtol);
    }
    compare_param_grads(name, &e.params, rtol);
    ldmc_ctx_free(&ctx);
    ldmc_text_encoder_free(&e);
}

static void test_text_clip_l(void) { run_text_case("text_l"); }
static void test_text_clip_l_last_layer(void) { run_text_case("text_l_last"); }
static void test_text_open_clip(void) { run_text_case("text_g"); }
static void test_text_open_clip_last_layer(void) { run_text_case("text_g_last"); }
static void test_text_refiner_open_clip(void) { run_text_case("text_refiner_g"); }

// The official keys and shapes of SDXL's two encoders at full size, and their parameter counts,
// against tests/ref/data/keys_text_encoders.json (built without weights).
static void test_text_official_keys(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s/keys_text_encoders.json", test_data_dir());
    FILE *f = fopen(path, "rb");
    REQUIRE(f, "%s: cannot open", path);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)size + 1);
    REQUIRE(text && fread(text, 1, (size_t)size, f) == (size_t)size, "%s: cannot read", path);
    fclose(f);
    text[size] = 0;
    cJSON *j = cJSON_Parse(text);
    free(text);
    REQUIRE(j, "%s: not JSON", path);
    static const struct {
        const char *name, *config;
        int index;
        int64_t params;
    } encoders[] = {{"clip_l", "sdxl_base.yaml", 0, 123060480},
                    {"clip_g", "sdxl_base.yaml", 1, 694659841},
                    {"clip_g", "sdxl_refiner.yaml", 0, 694659841}};
    for (size_t i = 0; i < sizeof encoders / sizeof *encoders; i++) {
        ldmc_model_config mc = test_model_config(encoders[i].config);
        REQUIRE(mc.n_text > encoders[i].index, "%s: no text encoder %d", encoders[i].config,
                encoders[i].index);
        ldmc_text_encoder e;
        ldmc_text_encoder_init(&e, &mc.text[encoders[i].index]);
        const cJSON *want = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "encoders"), encoders[i].name);
        const cJSON *keys = cJSON_GetObjectItem(want, "keys"), *k;
        const char *prefix = ldmc_text_prefix(&e.cfg);
        int n = 0;
        cJSON_ArrayForEach(k, keys) {
            char key[512];
            snprintf(key, sizeof key, "%s%s", prefix, cJSON_GetArrayItem(k, 0)->valuestring);
            int index = ldmc_params_find(&e.params, key);
            n++;
            CHECK(index >= 0, "%s: %s is not a parameter", encoders[i].config, key);
            if (index < 0) continue;
            const ldmc_param *param = &e.params.items[index];
            const cJSON *shape = cJSON_GetArrayItem(k, 1), *d;
            int ndim = 0;
            bool same = true;
            cJSON_ArrayForEach(d, shape) {
                same &= ndim < param->ndim && param->shape[ndim] == (int64_t)d->valuedouble;
                ndim++;
            }
            CHECK(same && ndim == param->ndim, "%s: %s has another shape", encoders[i].config, key);
            // its diffusers names (text_encoder/, text_encoder_2/): one, three (in_proj split
            // into q, k, v) or none (logit_scale)
            const cJSON *want_names = cJSON_GetArrayItem(k, 2), *w;
            char names[3][256], got[800] = "", expected[800] = "";
            bool transpose = false, flatten = false;
            const char *bare = cJSON_GetArrayItem(k, 0)->valuestring;
            int n_names = e.cfg.layout == LDMC_TEXT_OPEN_CLIP
                              ? ldmc_text_diffusers_split(&e.cfg, bare, names, &transpose)
                              : 0;
            if (!n_names)
                n_names = ldmc_text_diffusers_key(&e.cfg, bare, names[0], 256, &flatten) == 0;
            for (int q = 0; q < n_names; q++)
                snprintf(got + strlen(got), sizeof got - strlen(got), "%s ", names[q]);
            cJSON_ArrayForEach(w, want_names) {
                snprintf(expected + strlen(expected), sizeof expected - strlen(expected), "%s ",
                         w->valuestring);
            }
            CHECK(!strcmp(got, expected), "%s: diffusers names of %s: '%s', want '%s'",
                  encoders[i].config, bare, got, expected);
            CHECK(transpose == !strcmp(bare, "text_projection"), "%s: transposed", bare);
        }
        CHECK(n == e.params.count, "%s: %d parameters, the official encoder has %d",
              encoders[i].config, e.params.count, n);
        CHECK(ldmc_params_count(&e.params, false) == encoders[i].params,
              "%s text encoder %d: %lld parameters, want %lld", encoders[i].config,
              encoders[i].index, (long long)ldmc_params_count(&e.params, false),
              (long long)encoders[i].params);
        ldmc_text_encoder_free(&e);
    }
    cJSON_Delete(j);
}

// Opens a reference file and its case list.
static int open_ref(const char *name, ldmc_safetensors *st, cJSON **list) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", test_data_dir(), name);
    ldmc_err err = {0};
    if (ldmc_safetensors_open(st, path, &err) != 0) {
        fprintf(stderr, "%s\n", err.message);
        return -1;
    }
    const char *json = ldmc_safetensors_meta(st, "cases");
    *list = json ? cJSON_Parse(json) : NULL;
    if (!cJSON_IsArray(*list)) {
        fprintf(stderr, "%s: no case list in the metadata\n", path);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (open_ref("models.safetensors", &model_ref, &model_cases) ||
        open_ref("text.safetensors", &text_ref, &text_cases))
        return 1;
    static const test_entry tests[] = {
        TEST_ENTRY(test_unet_text),
        TEST_ENTRY(test_unet_class),
        TEST_ENTRY(test_vae),
        TEST_ENTRY(test_resblock_640_1280),
        TEST_ENTRY(test_resblock_1280),
        TEST_ENTRY(test_transformer_640),
        TEST_ENTRY(test_transformer_1280),
        TEST_ENTRY(test_unet_recompute_gives_identical_gradients),
        TEST_ENTRY(test_vae_recompute_gives_identical_gradients),
        TEST_ENTRY(test_text_clip_l),
        TEST_ENTRY(test_text_clip_l_last_layer),
        TEST_ENTRY(test_text_open_clip),
        TEST_ENTRY(test_text_open_clip_last_layer),
        TEST_ENTRY(test_text_refiner_open_clip),
        TEST_ENTRY(test_text_official_keys),
    };
    int rc = test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
    cJSON_Delete(model_cases);
    cJSON_Delete(text_cases);
    ldmc_safetensors_close(&model_ref);
    ldmc_safetensors_close(&text_ref);
    return rc;
}
