// The tape: gradient accumulation for tensors used more than once, views, parameters (frozen and
// trainable, accumulating across backward calls), recomputation, or gradient checkpointing
// (bit-identical gradients, lower activation memory, randomness replayed, misuse caught by name)
// and ops without a backward failing by name.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/params.h"
#include "harness.h"
#include "ops/ops.h"

static ldmc_tensor *input(ldmc_ctx *ctx, int ndim, const int64_t *shape, uint64_t seed) {
    ldmc_tensor *t = ldmc_new(ctx, LDMC_F32, ndim, shape);
    test_fill(t->data, ldmc_numel(t), seed, 1, 0);
    ldmc_requires_grad(t);
    return t;
}

// y = x * x + x: x reaches the output three times, so dy/dx = 2x + 1.
static void test_fan_out_accumulates(void) {
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ldmc_tensor *x = input(&ctx, 1, (int64_t[]){9}, 1);
    ldmc_tensor *y = ldmc_add(&ctx, ldmc_mul(&ctx, x, x), x);
    ldmc_backward(&ctx, y, NULL);
    const float *g = ldmc_grad_if_any(x), *xv = x->data;
    for (int i = 0; i < 9; i++)
        CHECK(g[i] == 2 * xv[i] + 1, "dy/dx[%d] = %g, want %g", i, g[i], 2 * xv[i] + 1);
    ldmc_ctx_free(&ctx);
}

// Ops that write a fresh gradient (ldmc_op_reads.writes) instead of adding into a zeroed one: x
// feeds a SiLU and two linear layers (h = silu(x) w1^T + x w2^T + x w3^T, each w (1, 3)), so
// backward reaches x first through one op that writes its gradient and then through two that must
// add: dh/dx_j = silu'(x_j) w1_j + w2_j + w3_j. The written buffer starts as NaN bytes
// (test_ctx_init), so an element left unwritten shows too.
static void test_first_writes_then_adds(void) {
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ldmc_tensor *x = input(&ctx, 2, (int64_t[]){4, 3}, 3);
    ldmc_tensor *w[3];
    for (int i = 0; i < 3; i++)
        w[i] = input(&ctx, 2, (int64_t[]){1, 3}, 10 + (uint64_t)i);
    ldmc_tensor *h = ldmc_linear(&ctx, ldmc_silu(&ctx, x), w[0], NULL);
    h = ldmc_add(&ctx, h, ldmc_linear(&ctx, x, w[1], NULL));
    h = ldmc_add(&ctx, h, ldmc_linear(&ctx, x, w[2], NULL));
    ldmc_backward(&ctx, h, NULL);
    const float *g = ldmc_grad_if_any(x), *xv = x->data;
    const float *w0 = w[0]->data, *w1 = w[1]->data, *w2 = w[2]->data;
    for (int i = 0; i < 12; i++) {
        int j = i % 3;
        double s = 1 / (1 + exp(-(double)xv[i])), ds = s * (1 + xv[i] * (1 - s));
        double want = ds * w0[j] + w1[j] + w2[j];
        CHECK(fabs(g[i] - want) <= 1e-5 * (1 + fabs(want)), "dh/dx[%d] = %g, want %g", i, g[i],
              want);
    }
    ldmc_ctx_free(&ctx);
}

// An add hands its gradient to both inputs (a residual stream and a branch) where they may share
// it (src/core/tape.c: pass_through): y = s*s + x with s = silu(x). The branch s*s is read by the
// add alone and its producer (mul) does not read x, so x takes dy's buffer too, no gradient of its
// own: fewer gradient bytes. Then out = y + exp(x) with exp(x) made before the branch and so
// differentiated after mul: y and exp(x) share the outer sum's buffer, and x must not join them
// (exp's backward would add into the buffer before mul reads it), as the gradient
// 2 s silu'(x) + 1 + exp(x) shows.
static void test_adds_share_their_gradient_where_they_may(void) {
    for (int with_exp = 0; with_exp < 2; with_exp++) {
        ldmc_ctx ctx;
        test_ctx_init(&ctx);
        ldmc_tensor *x = input(&ctx, 1, (int64_t[]){9}, 5);
        ldmc_tensor *s = ldmc_silu(&ctx, x), *e = with_exp ? ldmc_exp(&ctx, x) : NULL;
        ldmc_tensor *y = ldmc_add(&ctx, ldmc_mul(&ctx, s, s), x);
        if (with_exp) y = ldmc_add(&ctx, y, e);
        ldmc_backward(&ctx, y, NULL);
        const float *g = ldmc_grad_if_any(x), *xv = x->data;
        for (int i = 0; i < 9; i++) {
            double sg = 1 / (1 + exp(-(double)xv[i])), si = xv[i] * sg;
            double want = 2 * si * sg * (1 + xv[i] * (1 - sg)) + 1 + (with_exp ? exp(xv[i]) : 0);
            CHECK(fabs(g[i] - want) <= 1e-5 * (1 + fabs(want)), "%s: dy/dx[%d] = %g, want %g",
                  with_exp ? "with exp(x)" : "x and s*s share", i, g[i], want);
        }
        // 9 values a gradient: y's and s's (x shares y's); with exp: the outer sum's, s's and x's
        // own (the inner sum and exp(x) share the outer sum's)
        int64_t want_bytes = (with_exp ? 3 : 2) * 9 * (int64_t)sizeof(float);
        CHECK(ctx.grad_bytes == want_bytes, "%s: %lld bytes of gradients, want %lld",
              with_exp ? "with exp(x)" : "x and s*s share", (long long)ctx.grad_bytes,
              (long long)want_bytes);
        ldmc_ctx_free(&ctx);
    }
}

// A holder of a shared buffer whose producer runs late: out = silu(c) + (x + exp(x)). The outer
// add hands its buffer to silu(c) and to the inner sum; the inner add hands it on to exp(x), but
// not to x: exp's backward, which runs before silu's, adds into x's gradient, and silu(c) must
// still read 1 from the buffer (dc = silu'(c), dx = 1 + exp(x)).
static void test_a_shared_gradient_waits_for_its_last_reader(void) {
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ldmc_tensor *c = input(&ctx, 1, (int64_t[]){9}, 6), *x = input(&ctx, 1, (int64_t[]){9}, 7);
    ldmc_tensor *w = ldmc_silu(&ctx, c), *r = ldmc_exp(&ctx, x);
    ldmc_tensor *out = ldmc_add(&ctx, w, ldmc_add(&ctx, x, r));
    ldmc_backward(&ctx, out, NULL);
    const float *gc = ldmc_grad_if_any(c), *gx = ldmc_grad_if_any(x);
    const float *cv = c->data, *xv = x->data;
    for (int i = 0; i < 9; i++) {
        double sg = 1 / (1 + exp(-(double)cv[i])), dc = sg * (1 + cv[i] * (1 - sg));
        double dx = 1 + exp((double)xv[i]);
        CHECK(fabs(gc[i] - dc) <= 1e-5 * (1 + fabs(dc)), "dout/dc[%d] = %g, want %g", i, gc[i], dc);
        CHECK(fabs(gx[i] - dx) <= 1e-5 * (1 + fabs(dx)), "dout/dx[%d] = %g, want %g", i, gx[i], dx);
    }
    ldmc_ctx_free(&ctx);
}

// Concatenating a tensor with itself and splitting it again: both halves flow back to it.
static void test_views_and_concat_share_gradients(void) {
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ldmc_tensor *x = input(&ctx, 2, (int64_t[]){2, 3}, 2);
    ldmc_tensor *flat = ldmc_reshape(&ctx, x, 1, (int64_t[]){6});
    CHECK(flat->data == x->data && flat->requires_grad, "a reshape is a view");
    ldmc_tensor *both = ldmc_concat(&ctx, (ldmc_tensor *[]){x, x}, 2);
    ldmc_tensor *scaled = ldmc_scale(&ctx, flat, 3.0);
    ldmc_tensor *loss = ldmc_add(&ctx, ldmc_reshape(&ctx, both, 1, (int64_t[]){12}),
                                 ldmc_concat(&ctx, (ldmc_tensor *[]){scaled, scaled}, 2));
    ldmc_backward(&ctx, loss, NULL);
    const float *g = ldmc_grad_if_any(x);
    for (int i = 0; i < 6; i++)
        CHECK(g[i] == 8, "gradient %g, want 2 (concat) + 6 (scaled view)", g[i]);
    CHECK(ldmc_grad_if_any(flat) == g, "the view's gradient is its base's");
    ldmc_ctx_free(&ctx);
}

static void test_inference_records_nothing(void) {
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ctx.recording = false;
    ldmc_tensor *x = input(&ctx, 1, (int64_t[]){4}, 3);
    ldmc_tensor *y = ldmc_silu(&ctx, x);
    CHECK(ctx.n_nodes == 0 && !y->requires_grad, "no node, no gradient requirement");
    EXPECT_FATAL(ldmc_backward(&ctx, y, NULL), "does not depend on anything");
    ldmc_ctx_free(&ctx);
}

static void dummy_backward(ldmc_ctx *ctx, ldmc_node *node) { (void)ctx, (void)node; }

static void test_op_without_backward_fails_by_name(void) {
    static const ldmc_op_info no_backward = {"argmax_like_op", NULL, LDMC_READS_ALL, NULL};
    static const ldmc_op_info with_backward = {"fine_op", dummy_backward, LDMC_READS_ALL, NULL};
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ldmc_tensor *x = input(&ctx, 1, (int64_t[]){4}, 4), *y = ldmc_new_like(&ctx, x);
    x->name = "features";
    EXPECT_FATAL(ldmc_record(&ctx, &no_backward, &x, 1, &y, 1),
                 "op 'argmax_like_op' has no backward, but its input 'features' needs a gradient");
    // Without an input that needs a gradient the op is fine, and so is an op with a backward.
    ldmc_tensor *c = ldmc_new_like(&ctx, x);
    CHECK(ldmc_record(&ctx, &no_backward, &c, 1, &y, 1) == NULL && !y->requires_grad,
          "constant input");
    CHECK(ldmc_record(&ctx, &with_backward, &x, 1, &y, 1) != NULL && y->requires_grad, "recorded");
    ldmc_ctx_free(&ctx);
}

// Wrong shapes stop with a message naming the op, what it expected and what it got.
static void test_shape_errors_name_the_op(void) {
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ldmc_tensor *x = input(&ctx, 4, (int64_t[]){1, 8, 8, 3}, 1);
    ldmc_tensor *w = input(&ctx, 4, (int64_t[]){4, 3, 3, 5}, 2);
    x->name = "latents";
    EXPECT_FATAL(ldmc_conv2d(&ctx, x, w, NULL, 1, 1),
                 "conv2d: the input must be (N, H, W, C) with C = 5, the weight's last dimension "
                 "(got 'latents' with shape (1, 8, 8, 3))");
    EXPECT_FATAL(ldmc_conv2d(&ctx, x, input(&ctx, 4, (int64_t[]){4, 9, 9, 3}, 3), NULL, 1, 0),
                 "does not fit");
    EXPECT_FATAL(ldmc_linear(&ctx, x, input(&ctx, 2, (int64_t[]){4, 5}, 4), NULL),
                 "linear: the last dimension must be the weight's in = 5");
    EXPECT_FATAL(ldmc_group_norm(&ctx, x, NULL, NULL, 2, 1e-5), "divisible by 2 groups");
    ldmc_tensor *q = input(&ctx, 3, (int64_t[]){1, 4, 10}, 5);
    EXPECT_FATAL(ldmc_attention(&ctx, q, q, q, 3), "attention: C must be divisible by 3 heads");
    ldmc_tensor *pieces[2];
    EXPECT_FATAL(ldmc_split(&ctx, q, (const int[]){12, -2}, 2, pieces), "negative size -2");
    EXPECT_FATAL(ldmc_add(&ctx, x, q), "add: both operands must have the shape (1, 8, 8, 3)");
    EXPECT_FATAL(ldmc_dropout(&ctx, x, 1.0), "p = 1 must be in [0, 1)");
    ldmc_ctx_free(&ctx);
}

// ---- a small block with parameters, for the parameter and recomputation tests ------------------

typedef struct block {
    ldmc_params params;
    ldmc_tensor *conv1_w, *conv1_b, *norm_w, *norm_b, *conv2_w, *lin_w;
    double dropout;
} block;

static void block_init(block *b, bool with_grads) {
    *b = (block){0};
    ldmc_params_add(&b->params, "conv1.weight", 4, (int64_t[]){8, 3, 3, 4}, 0);
    ldmc_params_add(&b->params, "conv1.bias", 1, (int64_t[]){8}, LDMC_PARAM_NO_DECAY);
    ldmc_params_add(&b->params, "norm.weight", 1, (int64_t[]){8}, LDMC_PARAM_NO_DECAY);
    ldmc_params_add(&b->params, "norm.bias", 1, (int64_t[]){8}, LDMC_PARAM_NO_DECAY);
    ldmc_params_add(&b->params, "conv2.weight", 4, (int64_t[]){4, 3, 3, 8}, 0);
    ldmc_params_add(&b->params, "proj.weight", 2, (int64_t[]){4, 4}, 0);
    ldmc_params_alloc(&b->params, LDMC_ROLE_WEIGHTS);
    if (with_grads) ldmc_params_alloc(&b->params, LDMC_ROLE_GRAD);
    test_fill(b->params.buffers[LDMC_ROLE_WEIGHTS], (int64_t)b->params.total, 77, 0.3, 0);
    ldmc_tensor **slots[] = {&b->conv1_w, &b->conv1_b, &b->norm_w,
                             &b->norm_b,  &b->conv2_w, &b->lin_w};
    for (int i = 0; i < 6; i++)
        *slots[i] = ldmc_params_tensor(&b->params, i);
    b->dropout = 0.25;
}

// x (N, H, W, 4) -> conv 3x3 -> group norm -> SiLU -> dropout -> conv 3x3 -> linear, + x
static void block_region(ldmc_ctx *ctx, void *user, ldmc_tensor **in, int n_in, ldmc_tensor **out,
                         int n_out) {
    block *b = user;
    ldmc_tensor *x = in[0];
    ldmc_tensor *h = ldmc_conv2d(ctx, x, b->conv1_w, b->conv1_b, 1, 1);
    h = ldmc_silu(ctx, ldmc_group_norm(ctx, h, b->norm_w, b->norm_b, 4, 1e-5));
    h = ldmc_dropout(ctx, h, b->dropout);
    h = ldmc_linear(ctx, ldmc_conv2d(ctx, h, b->conv2_w, NULL, 1, 1), b->lin_w, NULL);
    out[0] = ldmc_add(ctx, h, x);
}

// A chain of four blocks (sharing their parameters), run three ways that must agree bit for bit:
// plainly; each block a recompute region; blocks 0-1 in an outer region with block 0 nested in
// it as a region of its own.
enum { CHAIN = 4 };
typedef enum { PLAIN, PER_BLOCK, NESTED } chain_mode;

static void pair_region(ldmc_ctx *ctx, void *user, ldmc_tensor **in, int n_in, ldmc_tensor **out,
                        int n_out) {
    ldmc_tensor *mid;
    ldmc_recompute(ctx, block_region, user, in, 1, &mid, 1);
    block_region(ctx, user, &mid, 1, out, 1);
}

static ldmc_tensor *run_chain(ldmc_ctx *ctx, block *b, chain_mode mode, ldmc_tensor *x) {
    int i = 0;
    if (mode == NESTED) {
        ldmc_recompute(ctx, pair_region, b, &x, 1, &x, 1);
        i = 2;
    }
    for (; i < CHAIN; i++) {
        if (mode == PER_BLOCK)
            ldmc_recompute(ctx, block_region, b, &x, 1, &x, 1);
        else
            block_region(ctx, b, &x, 1, &x, 1);
    }
    return x;
}

#define STEP_SHAPE ((int64_t[]){2, 12, 10, 4})
#define STEP_NUMEL (2 * 12 * 10 * 4)

// Runs a training step of the chain; returns the loss and copies the input gradient.
static float run_step(block *b, chain_mode mode, float *dx, size_t *high_water) {
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ctx.rng_seed = 11;
    ldmc_params_zero_grad(&b->params);
    ldmc_tensor *x = input(&ctx, 4, STEP_SHAPE, 5);
    ldmc_tensor *y = run_chain(&ctx, b, mode, x);
    ldmc_tensor *target = ldmc_zeros(&ctx, LDMC_F32, y->ndim, y->shape);
    ldmc_tensor *loss = ldmc_mse_loss(&ctx, y, target);
    ldmc_backward(&ctx, loss, NULL);
    memcpy(dx, ldmc_grad_if_any(x), ldmc_nbytes(x));
    float value = ((float *)loss->data)[0];
    *high_water = ctx.data.high_water;
    ldmc_ctx_free(&ctx);
    return value;
}

static void test_recompute_gives_identical_gradients(void) {
    block b;
    block_init(&b, true);
    size_t n = b.params.total, hw;
    float *g_plain = malloc(n * sizeof(float)), dx_plain[STEP_NUMEL], dx[STEP_NUMEL];
    float loss_plain = run_step(&b, PLAIN, dx_plain, &hw);
    memcpy(g_plain, b.params.buffers[LDMC_ROLE_GRAD], n * sizeof(float));
    bool nonzero = false;
    for (size_t i = 0; i < n; i++)
        nonzero |= g_plain[i] != 0;
    CHECK(nonzero, "the gradients are all zero: the test would prove nothing");
    for (chain_mode mode = PER_BLOCK; mode <= NESTED; mode++) {
        float loss = run_step(&b, mode, dx, &hw);
        CHECK(loss == loss_plain, "mode %d: loss %g vs %g", mode, loss, loss_plain);
        CHECK(memcmp(g_plain, b.params.buffers[LDMC_ROLE_GRAD], n * sizeof(float)) == 0,
              "mode %d: parameter gradients differ from the plain run", mode);
        CHECK(memcmp(dx_plain, dx, sizeof dx) == 0, "mode %d: input gradients differ", mode);
    }
    free(g_plain);
    ldmc_params_free(&b.params);
}

// Updates during backward (ldmc_params_update_in_backward): each trainable parameter's update is
// called once, after its last use, with the whole gradient the flat buffer gets, bit for bit; in
// the plain chain, with every block a recompute region, and with nested regions (the four blocks
// share the parameters: each is read in four places). A frozen parameter gets no update.
typedef struct captured_updates {
    float *grads;
    int calls[8];
} captured_updates;

static void capture_update(void *user, ldmc_params *p, int index) {
    captured_updates *c = user;
    const ldmc_param *item = &p->items[index];
    c->calls[index]++;
    memcpy(c->grads + item->offset, item->tensor.grad, (size_t)item->numel * sizeof(float));
}

static void test_updates_in_backward_see_whole_gradients(void) {
    block plain, fused;
    block_init(&plain, true);
    block_init(&fused, false);
    for (block *b = &plain; b; b = b == &plain ? &fused : NULL)
        ldmc_params_flag_matching(&b->params, "norm.bias", LDMC_PARAM_FROZEN, true);
    size_t n = plain.params.total;
    captured_updates cap = {.grads = calloc(n, sizeof(float))};
    ldmc_params_update_in_backward(&fused.params, capture_update, &cap);
    float dx_plain[STEP_NUMEL], dx[STEP_NUMEL];
    size_t hw;
    for (chain_mode mode = PLAIN; mode <= NESTED; mode++) {
        memset(cap.calls, 0, sizeof cap.calls);
        float loss_plain = run_step(&plain, mode, dx_plain, &hw);
        float loss = run_step(&fused, mode, dx, &hw);
        CHECK(loss == loss_plain, "mode %d: loss %g vs %g", mode, loss, loss_plain);
        CHECK(memcmp(cap.grads, plain.params.buffers[LDMC_ROLE_GRAD], n * sizeof(float)) == 0,
              "mode %d: the gradients the updates saw differ from the flat buffer's", mode);
        CHECK(memcmp(dx_plain, dx, sizeof dx) == 0, "mode %d: input gradients differ", mode);
        for (int i = 0; i < fused.params.count; i++)
            CHECK(cap.calls[i] == (i == 3 ? 0 : 1), "mode %d: %s updated %d times", mode,
                  fused.params.items[i].name, cap.calls[i]);
        for (int i = 0; i < fused.params.count; i++)
            CHECK(!fused.params.items[i].tensor.grad, "mode %d: %s keeps a gradient after the step",
                  mode, fused.params.items[i].name);
    }
    free(cap.grads);
    ldmc_params_free(&plain.params);
    ldmc_params_free(&fused.params);
}

// Without recompute regions every block's intermediates stay alive until backward; with them only
// the blocks' outputs do, plus one block re-run at a time during backward.
static void test_recompute_saves_activation_memory(void) {
    block b;
    block_init(&b, true);
    float dx[STEP_NUMEL];
    size_t hw_plain, hw_ckpt;
    run_step(&b, PLAIN, dx, &hw_plain);
    run_step(&b, PER_BLOCK, dx, &hw_ckpt);
    CHECK(hw_ckpt < hw_plain, "high-water mark %zu with recomputation, %zu without", hw_ckpt,
          hw_plain);
    printf("    activation high-water: %zu bytes plain, %zu with a recompute region per block\n",
           hw_plain, hw_ckpt);
    ldmc_params_free(&b.params);
}

static void test_parameter_gradients_accumulate_and_frozen_get_none(void) {
    block b;
    block_init(&b, true);
    ldmc_params_flag_matching(&b.params, "norm.*", LDMC_PARAM_FROZEN, true);
    b.conv1_w = ldmc_params_tensor(&b.params, 0);
    b.norm_w = ldmc_params_tensor(&b.params, 2);
    b.dropout = 0;
    float dx[STEP_NUMEL];
    size_t hw;
    run_step(&b, PLAIN, dx, &hw);
    const ldmc_param *norm = &b.params.items[2];
    float *grad = b.params.buffers[LDMC_ROLE_GRAD];
    size_t n = b.params.total;
    float *twice = malloc(n * sizeof *twice);
    for (size_t i = 0; i < n; i++)
        twice[i] = 2 * grad[i];
    // A second backward without zeroing (gradient accumulation over micro-batches) doubles them,
    // up to the rounding of adding the contributions one by one.
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    for (int step = 0; step < 2; step++) {
        ldmc_ctx_reset(&ctx);
        ldmc_tensor *y = run_chain(&ctx, &b, PLAIN, input(&ctx, 4, STEP_SHAPE, 5));
        ldmc_tensor *loss = ldmc_mse_loss(&ctx, y, ldmc_zeros(&ctx, LDMC_F32, y->ndim, y->shape));
        if (step == 0) ldmc_params_zero_grad(&b.params);
        ldmc_backward(&ctx, loss, NULL);
    }
    CHECK_CLOSE("accumulated gradients", grad, twice, NULL, (int64_t)n, tolerance_f32(4, 2));
    CHECK(grad[norm->offset] == 0 && !b.norm_w->requires_grad, "a frozen parameter got a gradient");
    free(twice);
    ldmc_ctx_free(&ctx);
    ldmc_params_free(&b.params);
}

static ldmc_tensor *captured;
static void leaky_region(ldmc_ctx *ctx, void *user, ldmc_tensor **in, int n_in, ldmc_tensor **out,
                         int n_out) {
    out[0] = ldmc_add(ctx, in[0], captured); // reads a tensor it was not given
}

static void test_recompute_misuse_is_caught(void) {
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ldmc_tensor *x = input(&ctx, 1, (int64_t[]){4}, 6);
    captured = input(&ctx, 1, (int64_t[]){4}, 7);
    captured->name = "skip_activation";
    ldmc_tensor *y;
    ldmc_recompute(&ctx, leaky_region, NULL, &x, 1, &y, 1);
    EXPECT_FATAL(ldmc_backward(&ctx, y, NULL),
                 "reads tensor 'skip_activation' that was not passed");
    ldmc_ctx_free(&ctx);
}

int main(int argc, char **argv) {
    static const test_entry tests[] = {
        TEST_ENTRY(test_fan_out_accumulates),
        TEST_ENTRY(test_first_writes_then_adds),
        TEST_ENTRY(test_adds_share_their_gradient_where_they_may),
        TEST_ENTRY(test_a_shared_gradient_waits_for_its_last_reader),
        TEST_ENTRY(test_views_and_concat_share_gradients),
        TEST_ENTRY(test_inference_records_nothing),
        TEST_ENTRY(test_op_without_backward_fails_by_name),
        TEST_ENTRY(test_shape_errors_name_the_op),
        TEST_ENTRY(test_recompute_gives_identical_gradients),
        TEST_ENTRY(test_updates_in_backward_see_whole_gradients),
        TEST_ENTRY(test_recompute_saves_activation_memory),
        TEST_ENTRY(test_parameter_gradients_accumulate_and_frozen_get_none),
        TEST_ENTRY(test_recompute_misuse_is_caught),
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
