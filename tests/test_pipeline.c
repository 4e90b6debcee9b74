// The pipeline layer (src/pipeline): the loss steps are pure functions of (weights, batch, key)
// and the image path equals the latent-cache path on the same posterior; the memory plans' dry
// run allocates what a real step does, to the byte; the conditioner's dropout and guided batches;
// text: captions through the tokenizer and encoders, dropped captions, the encoders' activations
// dropped; the sampler's hand-off (two runs over halves of the steps equal one run); guidance is
// uncond + s (cond - uncond) of separate passes; decoding in chunks equals decoding at once.
// On tiny models of configs/ with random weights, on the CPU (the GPU twins of the ops:
// tests/test_cuda.c).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "harness.h"
#include "io/safetensors.h"
#include "nn/model_config.h"
#include "nn/text_encoder.h"
#include "nn/unet.h"
#include "nn/vae.h"
#include "ops/ops.h"
#include "pipeline/latents.h"
#include "pipeline/loss.h"
#include "pipeline/plan.h"
#include "pipeline/sampler.h"
#include "text/tokenizer.h"

enum { B = 3, H = 16, W = 16 }; // the tiny VAE's f = 2: latents 8 x 8

typedef struct models {
    ldmc_unet unet;
    ldmc_vae vae;
    ldmc_schedule schedule;
    ldmc_noise_options noise;
    ldmc_conditioner conditioner;
    ldmc_diffusion_step step;
} models;

// The tiny UNet (gradients allocated) and the tiny VAE, random weights: every UNet weight drawn
// (its zero-initialized layers too, so that the output depends on the input and the class).
static void models_init(models *m, const char *unet_config) {
    ldmc_model_config unet = test_model_config(unet_config),
                      vae = test_model_config("tiny_vae.yaml");
    ldmc_unet_init(&m->unet, &unet.unet);
    ldmc_params_alloc(&m->unet.params, LDMC_ROLE_WEIGHTS);
    ldmc_params_alloc(&m->unet.params, LDMC_ROLE_GRAD);
    test_fill(m->unet.params.buffers[LDMC_ROLE_WEIGHTS], (int64_t)m->unet.params.total, 3, 0.2, 0);
    ldmc_vae_init(&m->vae, &vae.vae);
    ldmc_params_alloc(&m->vae.params, LDMC_ROLE_WEIGHTS);
    ldmc_params_init(&m->vae.params, 4);
    ldmc_schedule_sdxl(&m->schedule);
    m->noise = (ldmc_noise_options){
        .prediction = LDMC_PREDICT_V, .offset_noise = 0.05, .t_max = 1000, .min_snr_gamma = 5};
    m->conditioner = (ldmc_conditioner){.unet = &m->unet.cfg, .dropout = 0.3};
    m->step = (ldmc_diffusion_step){.unet = &m->unet,
                                    .vae = &m->vae,
                                    .latent_scale = m->vae.cfg.scale_factor,
                                    .schedule = &m->schedule,
                                    .noise = &m->noise,
                                    .conditioner = &m->conditioner};
}

static void models_free(models *m) {
    ldmc_unet_free(&m->unet);
    ldmc_vae_free(&m->vae);
}

// A batch of B random images with sizes, crops and classes.
typedef struct batch {
    float pixels[B * H * W * 3];
    int32_t size[2 * B], crop[2 * B];
    int64_t labels[B];
    ldmc_step_batch b;
} batch;

static void batch_init(batch *t) {
    test_fill(t->pixels, B * H * W * 3, 21, 1, 0);
    for (int i = 0; i < B; i++) {
        t->size[2 * i] = 100 + i, t->size[2 * i + 1] = 90 - i;
        t->crop[2 * i] = i, t->crop[2 * i + 1] = 2 * i;
        t->labels[i] = (i * 3) % 10;
    }
    t->b = (ldmc_step_batch){.n = B,
                             .pixels = t->pixels,
                             .height = H,
                             .width = W,
                             .cond = {.n = B,
                                      .class_ids = t->labels,
                                      .c_size = t->size,
                                      .c_crop = t->crop,
                                      .c_target = t->size}};
}

// The loss and a copy of the gradients of one micro-batch.
static double loss_and_grads(ldmc_ctx *ctx, models *m, const ldmc_step_batch *b,
                             const ldmc_step_key *key, float *grads) {
    ldmc_params_zero_grad(&m->unet.params);
    double loss = ldmc_diffusion_loss(ctx, &m->step, b, key, 2);
    memcpy(grads, m->unet.params.buffers[LDMC_ROLE_GRAD], m->unet.params.total * sizeof *grads);
    return loss;
}

static void test_loss_step_is_a_function_of_its_key(void) {
    static models m;
    static batch t;
    models_init(&m, "tiny_unet_class.yaml");
    batch_init(&t);
    size_t n = m.unet.params.total;
    float *g1 = malloc(n * sizeof *g1), *g2 = malloc(n * sizeof *g2);
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ldmc_step_key key = {7, 12, 0, 1, 0, 0};
    double l1 = loss_and_grads(&ctx, &m, &t.b, &key, g1);
    double l2 = loss_and_grads(&ctx, &m, &t.b, &key, g2);
    CHECK(isfinite(l1) && l1 == l2 && !memcmp(g1, g2, n * sizeof *g1),
          "the same key: loss %.9g then %.9g", l1, l2);
    double norm = 0;
    for (size_t i = 0; i < n; i++)
        norm += (double)g1[i] * g1[i];
    CHECK(norm > 0, "no gradient reached the UNet");
    ldmc_step_key other = key;
    other.micro = 2;
    CHECK(loss_and_grads(&ctx, &m, &t.b, &other, g2) != l1, "another micro-batch draws anew");
    other = key;
    other.step = 13;
    CHECK(loss_and_grads(&ctx, &m, &t.b, &other, g2) != l1, "another step draws anew");
    // The latent cache's path: the same posterior given as moments gives the same step.
    ldmc_ctx_reset(&ctx);
    ldmc_latent_moments q = ldmc_encode_images(&ctx, &m.vae, t.pixels, B, H, W);
    int64_t nq = ldmc_numel(q.mean);
    float *mean = malloc((size_t)nq * sizeof *mean), *std = malloc((size_t)nq * sizeof *std);
    ldmc_read_f32(q.mean, mean);
    ldmc_read_f32(q.std, std);
    ldmc_step_batch cached = t.b;
    cached.pixels = NULL, cached.mean = mean, cached.std = std;
    cached.lh = (int)q.mean->shape[1], cached.lw = (int)q.mean->shape[2];
    double l3 = loss_and_grads(&ctx, &m, &cached, &key, g2);
    CHECK(l3 == l1 && !memcmp(g1, g2, n * sizeof *g1),
          "images and their cached moments: loss %.9g vs %.9g", l1, l3);
    free(mean), free(std), free(g1), free(g2);
    ldmc_ctx_free(&ctx);
    models_free(&m);
}

// A step of the diffusion loss or of the VAE's, for ldmc_plan_step and the replays below.
typedef struct plan_case {
    const ldmc_diffusion_step *diffusion;
    const ldmc_vae_step *vae;
    const ldmc_step_batch *b;
    ldmc_step_key key;
    double loss;
} plan_case;

static void plan_case_run(ldmc_ctx *ctx, void *user) {
    plan_case *c = user;
    c->loss = c->diffusion ? ldmc_diffusion_loss(ctx, c->diffusion, c->b, &c->key, 1)
                           : ldmc_vae_loss(ctx, c->vae, c->b, &c->key, 1);
}

// The step run plainly, then replaying its plan with every record filled with NaN bytes when it
// dies (a read of freed memory, or a record freed too early, turns the loss or a gradient NaN or
// different): the same loss and gradients, bit for bit, in the plan's bytes. The plan needs less
// than the bump arena and no less than the most bytes live at once. The replay counts the FLOPs
// its dry run did (`flops`: products made again in backward included).
static void check_replay(plan_case *c, ldmc_params *params, const ldmc_step_plan *plan,
                         double flops, const char *what) {
    size_t n = params->total;
    float *g1 = malloc(n * sizeof *g1), *g2 = malloc(n * sizeof *g2);
    float *grads = params->buffers[LDMC_ROLE_GRAD];
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    for (int replay = 0; replay < 2; replay++) {
        ldmc_params_zero_grad(params);
        ctx.plan_poison = replay;
        ldmc_ctx_use_plan(&ctx, replay ? plan : NULL);
        ldmc_arena_reset_high_water(&ctx.data);
        plan_case_run(&ctx, c);
        if (!replay) {
            CHECK(ctx.data.high_water == plan->unplanned,
                  "%s: the dry run's bump arena %zu bytes, the real step's %zu", what,
                  plan->unplanned, ctx.data.high_water);
            memcpy(g1, grads, n * sizeof *g1);
        } else {
            memcpy(g2, grads, n * sizeof *g2);
            CHECK(ctx.flops == flops, "%s: the replay's %.0f FLOP, its dry run's %.0f", what,
                  ctx.flops, flops);
        }
        ldmc_ctx_use_plan(&ctx, NULL);
        if (!replay) CHECK(isfinite(c->loss), "%s: a finite loss", what);
        if (!replay) ctx.flops = 0;
    }
    double plain = c->loss;
    plan_case_run(&ctx, c); // (plain again: the loss of the replay was overwritten)
    CHECK(c->loss == plain, "%s: the same loss twice", what);
    CHECK(!memcmp(g1, g2, n * sizeof *g1), "%s: the replayed plan gives the plain step's gradients",
          what);
    CHECK(plan->peak < plan->unplanned && plan->peak >= plan->live_peak,
          "%s: planned %zu bytes, live at once %zu, unplanned %zu", what, plan->peak,
          plan->live_peak, plan->unplanned);
    ldmc_ctx_free(&ctx);
    free(g1), free(g2);
}

// The dry run of a training step allocates what the real step allocates, to the byte; its memory
// plan replayed by the real step gives the same numbers.
static void test_memory_plan_matches_a_real_step(void) {
    static models m;
    models_init(&m, "tiny_unet_text.yaml");
    m.conditioner.dropout = 0; // as planned (dropout adds a few masked embeddings)
    const ldmc_unet_config *c = &m.unet.cfg;
    // plain, gradient checkpointing, the transformers' projections made again in backward
    static const char *const modes[] = {"text UNet, plain", "text UNet, recomputed",
                                        "text UNet, projections recomputed"};
    size_t peaks[3];
    double flops[3];
    for (int mode = 0; mode < 3; mode++) {
        ldmc_unet plan_model;
        ldmc_unet_init(&plan_model, c);
        plan_model.recompute = m.unet.recompute = mode == 1;
        plan_model.recompute_projections = m.unet.recompute_projections = mode == 2;
        ldmc_step_plan kept = {0};
        ldmc_dry_run plan = ldmc_dry_run_unet_step(&plan_model, LDMC_CPU, B, 8, 8, &kept);
        ldmc_unet_free(&plan_model);
        CHECK(plan.activations == kept.peak && plan.unplanned == kept.unplanned,
              "the dry run reports its plan");
        static float mean[B * 8 * 8 * 4], std[B * 8 * 8 * 4], context[B * 77 * 48], pooled[B * 24];
        static int32_t sizes[2 * B];
        static int64_t labels[B];
        test_fill(mean, B * 8 * 8 * 4, 1, 1, 0);
        test_fill(context, B * 77 * 48, 2, 1, 0);
        test_fill(pooled, B * 24, 3, 1, 0);
        ldmc_step_batch b = {.n = B,
                             .mean = mean,
                             .std = std,
                             .lh = 8,
                             .lw = 8,
                             .cond = {.n = B,
                                      .class_ids = labels,
                                      .c_size = sizes,
                                      .c_crop = sizes,
                                      .c_target = sizes,
                                      .context = context,
                                      .context_tokens = 77,
                                      .pooled = pooled}};
        plan_case pc = {.diffusion = &m.step, .b = &b};
        ldmc_ctx ctx;
        test_ctx_init(&ctx);
        plan_case_run(&ctx, &pc);
        CHECK(isfinite(pc.loss), "the text model's step");
        // (a step without a plan keeps every output: nothing is made again)
        if (mode != 2)
            CHECK(plan.flops == ctx.flops, "dry run %.0f FLOP, real step %.0f", plan.flops,
                  ctx.flops);
        ldmc_ctx_free(&ctx);
        check_replay(&pc, &m.unet.params, &kept, plan.flops, modes[mode]);
        peaks[mode] = kept.peak, flops[mode] = plan.flops;
        ldmc_plan_free(&kept);
    }
    m.unet.recompute_projections = false;
    // Per transformer block: q, k, v of self-attention, q of cross-attention, the feed-forward's
    // first product (dim -> 2 x ff_hidden), each made once more: 2 x tokens x dim x (4 dim + 2 x
    // ff_hidden) FLOPs.
    double made_again = 0;
    for (int l = 0; l < c->levels; l++) {
        double dim = (double)c->model_channels * c->channel_mult[l], side = 8 >> l;
        // the blocks at level l: num_res_blocks transformers down, num_res_blocks + 1 up, and
        // the middle's at the last level
        double blocks = ldmc_unet_level_has_attention(c, l)
                            ? (double)c->transformer_depth[l] * (2 * c->num_res_blocks + 1)
                            : 0;
        if (l == c->levels - 1) blocks += c->transformer_depth_middle;
        made_again += 2 * (B * side * side) * dim * (4 * dim + 2 * 4 * dim) * blocks;
    }
    CHECK(fabs(flops[2] - flops[0] - made_again) <= 1e-9 * flops[0],
          "projections made again: %.0f FLOP more, expected %.0f", flops[2] - flops[0], made_again);
    CHECK(peaks[2] < peaks[0], "projections made again plan %zu bytes, kept %zu", peaks[2],
          peaks[0]);
    // the class UNet's step from images (the frozen VAE's encoding kept, its activations
    // dropped), with conditioning dropout, planned by ldmc_plan_step on the same arguments
    static models k;
    models_init(&k, "tiny_unet_class.yaml");
    static batch t;
    batch_init(&t);
    plan_case pc = {.diffusion = &k.step, .b = &t.b, .key = {7, 3, 0, 0, 0, 0}};
    ldmc_step_plan kept = {0};
    double class_flops = ldmc_plan_step(LDMC_CPU, plan_case_run, &pc, &kept);
    check_replay(&pc, &k.unet.params, &kept, class_flops, "class UNet from images");
    ldmc_plan_free(&kept);
    models_free(&k);
    // the autoencoder's step
    ldmc_vae plan_vae;
    ldmc_vae_init(&plan_vae, &m.vae.cfg);
    ldmc_dry_run plan = ldmc_dry_run_vae_step(&plan_vae, LDMC_CPU, B, H, W, &kept);
    ldmc_vae_free(&plan_vae);
    CHECK(plan.activations == kept.peak, "the VAE's dry run reports its plan");
    ldmc_params_alloc(&m.vae.params, LDMC_ROLE_GRAD);
    ldmc_vae_step vs = {.vae = &m.vae, .kl_weight = 1e-6};
    pc = (plan_case){.vae = &vs, .b = &t.b};
    check_replay(&pc, &m.vae.params, &kept, plan.flops, "VAE");
    ldmc_plan_free(&kept);
    models_free(&m);
}

static void test_conditioner_dropout_and_guided_batches(void) {
    ldmc_unet_config c = test_model_config("tiny_unet_class.yaml").unet;
    ldmc_conditioner cond = {.unet = &c, .dropout = 0.3};
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    enum { N = 4000 };
    ldmc_step_key key = {5, 9, 0, 0, 0, 0};
    const float *keep = ldmc_conditioner_dropout(&ctx, &cond, &key, N);
    REQUIRE(keep, "no dropout drawn");
    int dropped = 0;
    for (int i = 0; i < N; i++)
        dropped += keep[i] == 0;
    // binomial: mean 1200, standard deviation 29
    CHECK(dropped > 1080 && dropped < 1320, "%d of %d dropped at p = 0.3", dropped, N);
    const float *again = ldmc_conditioner_dropout(&ctx, &cond, &key, N);
    CHECK(!memcmp(keep, again, N * sizeof *keep), "the same key drops the same samples");
    key.micro = 1;
    CHECK(memcmp(keep, ldmc_conditioner_dropout(&ctx, &cond, &key, N), N * sizeof *keep),
          "another micro-batch drops others");
    cond.dropout = 0;
    CHECK(!ldmc_conditioner_dropout(&ctx, &cond, &key, N), "dropout 0 drops nothing");
    // guided batches: the samples twice, the second half dropped (and what was dropped stays so)
    int64_t labels[3] = {4, 5, 6};
    int32_t sizes[6] = {1, 2, 3, 4, 5, 6};
    float part_keep[3] = {1, 0, 1};
    ldmc_cond_batch b = {.n = 3,
                         .class_ids = labels,
                         .c_size = sizes,
                         .c_crop = sizes,
                         .c_target = sizes,
                         .keep = part_keep};
    ldmc_cond_batch g = ldmc_cond_batch_guided(&ctx, &cond, &b);
    REQUIRE(g.n == 6, "a guided batch of %d", g.n);
    for (int i = 0; i < 6; i++) {
        CHECK(g.class_ids[i] == labels[i % 3] && g.c_size[2 * i] == sizes[2 * (i % 3)] &&
                  g.c_target[2 * i + 1] == sizes[2 * (i % 3) + 1],
              "sample %d of the guided batch", i);
        CHECK(g.keep[i] == (i < 3 ? part_keep[i] : 0), "keep %d: %g", i, g.keep[i]);
        // the refiner's aesthetic score: 6 when not given, 2.5 in the unconditional half
        CHECK(g.aesthetic[i] == (i < 3 ? 6.0f : 2.5f), "aesthetic %d: %g", i, g.aesthetic[i]);
    }
    ldmc_ctx_free(&ctx);
}

// The conditioner with text encoders (the tiny SDXL-shaped ones, the tests' vocabulary): the
// context is the two encoders' side by side and the pooled text bigG-like's; a dropped caption is
// zeros (size conditioning kept) or, with uncond_empty, the encoding of ""; the encoders'
// activations are dropped, only the context and pooled text stay in the arena; a guided batch's
// second half is the unconditional branch.
static void test_conditioner_encodes_captions(void) {
    ldmc_model_config mc = test_model_config("tiny_unet_text.yaml");
    ldmc_text_encoder enc[2];
    char vocab[4096];
    snprintf(vocab, sizeof vocab, "%s/tiny_bpe", test_data_dir());
    ldmc_err err = {0};
    ldmc_tokenizer *tok = ldmc_tokenizer_load(vocab, &err);
    REQUIRE(tok, "%s", err.message);
    ldmc_conditioner cond = {.unet = &mc.unet, .n_text = 2, .tokenizer = tok};
    for (int e = 0; e < 2; e++) {
        ldmc_text_encoder_init(&enc[e], &mc.text[e]);
        ldmc_params_flag_matching(&enc[e].params, "*", LDMC_PARAM_FROZEN, true);
        ldmc_params_alloc(&enc[e].params, LDMC_ROLE_WEIGHTS);
        ldmc_params_init(&enc[e].params, 7 + (uint64_t)e);
        cond.text[e] = &enc[e];
    }
    const int T = 77, D = mc.unet.context_dim, P = mc.unet.pooled_dim, DL = mc.text[0].width;
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    const char *captions[3] = {"a bright circle &amp; its shadow", NULL, "one big cross"};
    int32_t sizes[6] = {32, 32, 24, 40, 40, 24};
    float keep[3] = {1, 0, 1};
    ldmc_cond_batch b = {
        .n = 3, .c_size = sizes, .c_crop = sizes, .c_target = sizes, .captions = captions};
    // each encoder alone, for the expected values
    float *ref_l = malloc((size_t)3 * T * DL * sizeof *ref_l);
    float *ref_g = malloc((size_t)3 * T * (D - DL) * sizeof *ref_g), ref_p[3 * 24];
    REQUIRE(P <= 24, "pooled %d", P);
    ldmc_tensor *x, *p;
    ldmc_text_encoder_forward(&ctx, &enc[0], 3,
                              ldmc_conditioner_tokens(&ctx, &cond, 0, captions, NULL, 3), &x, &p);
    ldmc_read_f32(x, ref_l);
    ldmc_text_encoder_forward(&ctx, &enc[1], 3,
                              ldmc_conditioner_tokens(&ctx, &cond, 1, captions, NULL, 3), &x, &p);
    ldmc_read_f32(x, ref_g);
    ldmc_read_f32(p, ref_p);
    // the tokens: CLIP-L's convention pads with the end token, bigG's with 0
    const int32_t *ids_l = ldmc_conditioner_tokens(&ctx, &cond, 0, captions, NULL, 3);
    const int32_t *ids_g = ldmc_conditioner_tokens(&ctx, &cond, 1, captions, NULL, 3);
    CHECK(ids_l[76] == 999 && ids_g[76] == 0 && ids_l[T] == 998 && ids_l[T + 1] == 999,
          "padding and the NULL caption's ids");
    ldmc_ctx_reset(&ctx);
    size_t before = ldmc_arena_mark(&ctx.data);
    ldmc_tensor *context, *pooled;
    ldmc_conditioner_encode(&ctx, &cond, 3, captions, NULL, &context, &pooled);
    size_t used = ldmc_arena_mark(&ctx.data) - before;
    size_t kept = (size_t)3 * T * D * sizeof(float) + (size_t)3 * P * sizeof(float);
    CHECK(used <= kept + 1024 && ctx.data.high_water > 4 * kept,
          "the arena holds %zu bytes after encoding (the context and pooled text are %zu; the "
          "forward peaked at %zu)",
          used, kept, ctx.data.high_water);
    float *got = malloc((size_t)3 * T * D * sizeof *got), got_p[3 * 24];
    ldmc_read_f32(context, got);
    ldmc_read_f32(pooled, got_p);
    bool same = true;
    for (int i = 0; i < 3 * T; i++)
        for (int d = 0; d < D; d++)
            same &= got[(size_t)i * D + d] ==
                    (d < DL ? ref_l[(size_t)i * DL + d] : ref_g[(size_t)i * (D - DL) + d - DL]);
    CHECK(same && !memcmp(got_p, ref_p, (size_t)3 * P * sizeof *got_p),
          "the context is CLIP-L's and bigG's side by side, the pooled text bigG's");
    // dropout: zeros, or "" encoded
    for (int mode = 0; mode < 2; mode++) {
        cond.uncond_empty = mode == 1;
        b.keep = keep;
        ldmc_ctx_reset(&ctx);
        ldmc_unet_cond uc = ldmc_condition(&ctx, &cond, &b);
        REQUIRE(uc.context && uc.vector, "a text model's conditioning");
        ldmc_read_f32(uc.context, got);
        float *row = got + (size_t)T * D; // sample 1, dropped (its caption is NULL, i.e. "")
        double sum = 0, first = 0;
        for (int k = 0; k < T * D; k++)
            sum += fabs(row[k]), first += fabs(got[k]);
        CHECK(mode ? sum > 0 : sum == 0, "%s: the dropped sample's context sums to %g",
              mode ? "uncond_empty" : "zeros", sum);
        CHECK(first > 0, "the kept sample's context is not zero");
    }
    free(got), free(ref_l), free(ref_g);
    ldmc_ctx_free(&ctx);
    for (int e = 0; e < 2; e++)
        ldmc_text_encoder_free(&enc[e]);
    ldmc_tokenizer_free(tok);
}

// The sampler: DDIM over [0, 6) equals [0, 3) then [3, 6) (a refiner hand-off runs the second
// part); guidance is uncond + s (cond - uncond) of separate passes.
static void test_sampler_hand_off_and_guidance(void) {
    static models m;
    models_init(&m, "tiny_unet_class.yaml");
    static batch t;
    batch_init(&t);
    ldmc_denoiser d = {
        .unet = &m.unet, .conditioner = &m.conditioner, .cond = &t.b.cond, .guidance_scale = 4.0};
    ldmc_sample_options o = {.sampler = ldmc_sampler_find("ddim"),
                             .schedule = &m.schedule,
                             .prediction = LDMC_PREDICT_EPS,
                             .steps = 6,
                             .first = 0,
                             .last = 6};
    REQUIRE(o.sampler && !ldmc_sampler_find("no such sampler"), "the sampler table");
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ldmc_err err = {0};
    int64_t shape[4] = {B, 8, 8, 4}, n = B * 8 * 8 * 4;
    ldmc_rng rng = ldmc_rng_make(1, 0, 0, LDMC_RNG_SAMPLE);
    ldmc_tensor *whole = ldmc_new(&ctx, LDMC_F32, 4, shape),
                *parts = ldmc_new(&ctx, LDMC_F32, 4, shape);
    ldmc_fill_normal(whole, &rng, 0);
    memcpy(parts->data, whole->data, ldmc_nbytes(whole));
    REQUIRE(ldmc_run_sampler(&ctx, &o, &d, whole, &err) == 0, "%s", err.message);
    o.last = 3;
    REQUIRE(ldmc_run_sampler(&ctx, &o, &d, parts, &err) == 0, "%s", err.message);
    CHECK(memcmp(whole->data, parts->data, ldmc_nbytes(whole)) != 0, "half the steps changed x");
    o.first = 3, o.last = 6;
    REQUIRE(ldmc_run_sampler(&ctx, &o, &d, parts, &err) == 0, "%s", err.message);
    CHECK(!memcmp(whole->data, parts->data, ldmc_nbytes(whole)), "a hand-off at step 3 differs");
    o.first = 4, o.last = 2;
    CHECK(ldmc_run_sampler(&ctx, &o, &d, parts, &err) != 0 && strstr(err.message, "steps [4, 2)"),
          "a backward range is refused: %s", err.message);
    // guidance against separate conditional and unconditional passes
    ldmc_ctx_reset(&ctx);
    ldmc_tensor *x = ldmc_new(&ctx, LDMC_F32, 4, shape);
    ldmc_fill_normal(x, &rng, 1000);
    float *guided = malloc(n * sizeof *guided), *c = malloc(n * sizeof *c),
          *u = malloc(n * sizeof *u), *want = malloc(n * sizeof *want);
    ldmc_read_f32(ldmc_denoise(&ctx, &d, x, 0, 500), guided);
    d.guidance_scale = 1;
    ldmc_read_f32(ldmc_denoise(&ctx, &d, x, 0, 500), c);
    ldmc_cond_batch dropped = t.b.cond;
    float zeros[B] = {0};
    dropped.keep = zeros;
    d.cond = &dropped;
    ldmc_read_f32(ldmc_denoise(&ctx, &d, x, 0, 500), u);
    for (int64_t i = 0; i < n; i++)
        want[i] = (float)(u[i] + 4.0 * (c[i] - u[i]));
    // One pass at batch 2B against two at B: OpenBLAS may sum in another order, so as in
    // test_models.c: K = 9 x 128 (the widest 3x3 convolution), factor 4 per layer for 13 layers,
    // and 9 times that for u + 4 (c - u), which weighs the two passes' errors 1 + 4 + 4.
    CHECK_CLOSE("guided output", guided, want, NULL, n, tolerance_f32(4.0 * 13 * 9, 9 * 128));
    CHECK(memcmp(c, u, n * sizeof *c) != 0, "dropping the class changed nothing");
    free(guided), free(c), free(u), free(want);
    ldmc_ctx_free(&ctx);
    models_free(&m);
}

// Every sampler against tests/ref/make_sampler_refs.py: the tiny class UNet with the test weights,
// two samples at guidance 3, 6 steps, the same noise streams; the reference writes each sampler
// in its source's own form (LDM's DDIM in VP coordinates, k-diffusion's loops) and runs the UNet
// in float64.
static void test_samplers_against_reference(void) {
    ldmc_model_config mc = test_model_config("tiny_unet_class.yaml");
    static ldmc_unet unet;
    ldmc_unet_init(&unet, &mc.unet);
    ldmc_params_alloc(&unet.params, LDMC_ROLE_WEIGHTS);
    test_init_weights(&unet.params);
    ldmc_safetensors ref;
    ldmc_err err = {0};
    char path[1024];
    snprintf(path, sizeof path, "%s/samplers.safetensors", test_data_dir());
    REQUIRE(ldmc_safetensors_open(&ref, path, &err) == 0, "%s", err.message);
    static ldmc_schedule schedule;
    ldmc_schedule_sdxl(&schedule);
    int64_t labels[2] = {3, 7};
    int32_t sizes[4] = {64, 64, 48, 80};
    ldmc_cond_batch cond = {.n = 2, .class_ids = labels, .c_size = sizes};
    ldmc_conditioner conditioner = {.unet = &unet.cfg};
    ldmc_denoiser d = {
        .unet = &unet, .conditioner = &conditioner, .cond = &cond, .guidance_scale = 3.0};
    ldmc_rng start[2], ancestral[2];
    for (int r = 0; r < 2; r++) {
        start[r] = ldmc_rng_make(100 + r, 0, 0, LDMC_RNG_SAMPLE);
        ancestral[r] = ldmc_rng_make(100 + r, 1, 0, LDMC_RNG_SAMPLE);
    }
    const struct {
        const char *name, *sampler;
        ldmc_prediction prediction;
        ldmc_discretization sigmas;
    } cases[] = {
        {"ddim", "ddim", LDMC_PREDICT_EPS, LDMC_SIGMAS_DEFAULT},
        {"euler", "euler", LDMC_PREDICT_EPS, LDMC_SIGMAS_DEFAULT},
        {"euler_v", "euler", LDMC_PREDICT_V, LDMC_SIGMAS_DEFAULT},
        {"euler_a", "euler_a", LDMC_PREDICT_EPS, LDMC_SIGMAS_DEFAULT},
        {"dpmpp_2m", "dpmpp_2m", LDMC_PREDICT_EPS, LDMC_SIGMAS_DEFAULT},
        {"dpmpp_2m_sgm", "dpmpp_2m", LDMC_PREDICT_EPS, LDMC_SIGMAS_SGM},
    };
    enum { N2 = 2 * 8 * 8 * 4 };
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        ldmc_sample_options o = {.sampler = ldmc_sampler_find(cases[c].sampler),
                                 .schedule = &schedule,
                                 .prediction = cases[c].prediction,
                                 .discretization = cases[c].sigmas,
                                 .steps = 6,
                                 .last = 6,
                                 .noise = ancestral};
        ldmc_ctx_reset(&ctx);
        ldmc_tensor *x = ldmc_zeros(&ctx, LDMC_F32, 4, (int64_t[]){2, 8, 8, 4});
        ldmc_sampler_start_noise(&ctx, &o, x, start);
        REQUIRE(ldmc_run_sampler(&ctx, &o, &d, x, &err) == 0, "%s", err.message);
        float got[N2], want[N2];
        char key[64];
        snprintf(key, sizeof key, "%s.out", cases[c].name);
        const ldmc_st_tensor *t = ldmc_safetensors_find(&ref, key);
        REQUIRE(t && ldmc_st_numel(t) == N2 &&
                    ldmc_safetensors_read(&ref, t, want, LDMC_F32, &err) == 0,
                "%s: %s", key, err.message);
        ldmc_read_f32(x, got);
        double worst = 0, scale = 0;
        for (int i = 0; i < N2; i++)
            worst = fmax(worst, fabs(got[i] - want[i])), scale = fmax(scale, fabs(want[i]));
        // float32 against float64 through 6 guided steps of 12 UNet passes: 1e-5 of the largest
        // value (measured: 1e-6 at most)
        CHECK(worst <= 1e-5 * scale, "%s: max |Δ| %.3g of max |x| %.3g", cases[c].name, worst,
              scale);
    }
    ldmc_safetensors_close(&ref);
    ldmc_ctx_free(&ctx);
    ldmc_unet_free(&unet);
}

// Decoding a few latents at a time gives the decoder's output on the whole batch.
static void test_decode_in_chunks(void) {
    static models m;
    models_init(&m, "tiny_unet_class.yaml");
    enum { N5 = 5 };
    int64_t shape[4] = {N5, 8, 8, 4}, n = N5 * H * W * 3;
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ldmc_tensor *z = ldmc_new(&ctx, LDMC_F32, 4, shape);
    ldmc_rng rng = ldmc_rng_make(2, 0, 0, LDMC_RNG_TEST);
    ldmc_fill_normal(z, &rng, 0);
    float *chunked = malloc(n * sizeof *chunked), *whole = malloc(n * sizeof *whole);
    size_t before = ctx.data.used;
    ldmc_decode_latents(&ctx, &m.vae, z, chunked);
    CHECK(ctx.data.used == before, "decoding kept %zu bytes", ctx.data.used - before);
    ctx.recording = false;
    ldmc_read_f32(
        ldmc_vae_decode(&ctx, &m.vae, ldmc_latent_unscale(&ctx, z, m.vae.cfg.scale_factor)), whole);
    // batches of 4 and 1 against one of 5: K = 9 x 64 (the widest 3x3 convolution), 4 per layer
    // of the decoder's 12 (as test_models.c compares the VAE)
    CHECK_CLOSE("chunked decoding", chunked, whole, NULL, n, tolerance_f32(4.0 * 12, 9 * 64));
    free(chunked), free(whole);
    ldmc_ctx_free(&ctx);
    models_free(&m);
}

int main(int argc, char **argv) {
    static const test_entry tests[] = {
        TEST_ENTRY(test_loss_step_is_a_function_of_its_key),
        TEST_ENTRY(test_memory_plan_matches_a_real_step),
        TEST_ENTRY(test_conditioner_dropout_and_guided_batches),
        TEST_ENTRY(test_conditioner_encodes_captions),
        TEST_ENTRY(test_sampler_hand_off_and_guidance),
        TEST_ENTRY(test_samplers_against_reference),
        TEST_ENTRY(test_decode_in_chunks),
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
