// Every op in src/ops/ops.h, forward and backward, against PyTorch: the cases, their outputs and
// the gradients of every input and parameter are in tests/ref/data/ops.safetensors, made by
// tests/ref/make_op_refs.py. Inputs and upstream gradients are drawn from the Philox stream on
// both sides, so the file holds only references. One test per case; `test_ops conv2d` runs
// the conv2d cases.
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "harness.h"
#include "io/safetensors.h"
#include "ops/ops.h"

// ---- tolerance overrides: factor on the default 4 x FLT_EPSILON x sqrt(K), with the reason ----
static const struct {
    const char *op;
    double factor;
    const char *why;
} overrides[] = {
    {"silu", 8, "sigmoid through expf and a division: a few ulp"},
    {"gelu", 8, "erff/tanhf/expf chains: a few ulp"},
    {"quick_gelu", 8, "expf: a few ulp"},
    {"geglu", 8, "erff/expf chains: a few ulp"},
    {"timestep_embedding", 100,
     "the reference computes in float32 as sgm does: t f reaches 1e3 "
     "rad, and one ulp of f (glibc expf vs PyTorch's vectorized exp) "
     "moves cos and sin by up to |t| ulp(f) ~ 1e-4"},
};

static double op_factor(const char *op) {
    for (size_t i = 0; i < sizeof overrides / sizeof overrides[0]; i++)
        if (strcmp(overrides[i].op, op) == 0) return overrides[i].factor;
    return 4;
}

typedef struct op_case {
    const cJSON *json;
    const char *name, *op;
    const cJSON *params;
    int n_in, n_out;
    ldmc_tensor *in[8], *out[8];
} op_case;

static const ldmc_safetensors *ref;
static cJSON *cases;

static double param(const op_case *c, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->params, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    LDMC_CHECK(cJSON_IsNumber(v), "case %s: parameter '%s' missing", c->name, key);
    return v->valuedouble;
}

static int int_param(const op_case *c, const char *key) { return (int)param(c, key); }

static int64_t dim(const ldmc_tensor *t, int i) { return t->shape[i < 0 ? t->ndim + i : i]; }

// The longest reduction each op performs (its forward and backward), for the tolerance rule.
static double reduction_length(const op_case *c) {
    const char *op = c->op;
    ldmc_tensor *x = c->in[0], *y = c->out[0];
    double n = (double)ldmc_numel(x);
    if (!strcmp(op, "linear")) return fmax(fmax(dim(x, -1), dim(y, -1)), n / dim(x, -1));
    if (!strcmp(op, "matmul")) return fmax(fmax(dim(x, 1), dim(x, 2)), dim(c->in[1], 2));
    if (!strcmp(op, "conv2d"))
        return fmax((double)dim(c->in[1], 1) * dim(c->in[1], 2) * fmax(dim(x, 3), dim(y, 3)),
                    (double)ldmc_numel(y) / dim(y, 3));
    if (!strcmp(op, "group_norm")) return n / dim(x, 0) / int_param(c, "groups") + n / dim(x, -1);
    if (!strcmp(op, "layer_norm")) return fmax(dim(x, -1), n / dim(x, -1));
    if (!strcmp(op, "softmax")) return dim(x, -1);
    if (!strcmp(op, "attention") || !strcmp(op, "causal_attention"))
        return fmax(fmax(dim(x, 1), dim(c->in[1], 1)), dim(x, 2));
    if (!strcmp(op, "add_broadcast")) return n / dim(x, -1);
    if (!strcmp(op, "sum_rows")) return n / dim(x, 0);
    if (!strcmp(op, "avg_pool2d") || !strcmp(op, "max_pool2d"))
        return (double)int_param(c, "kernel") * int_param(c, "kernel");
    if (!strcmp(op, "upsample_nearest2x")) return 4;
    if (!strcmp(op, "timestep_embedding")) return int_param(c, "dim");
    if (!strcmp(op, "mse_loss") || !strcmp(op, "l1_loss") || !strcmp(op, "mse_loss_weighted"))
        return n;
    return 1;
}

static void run_op(ldmc_ctx *ctx, op_case *c) {
    const char *op = c->op;
    ldmc_tensor **in = c->in;
    ldmc_tensor *opt1 = c->n_in > 1 ? in[1] : NULL, *opt2 = c->n_in > 2 ? in[2] : NULL;
    c->n_out = 1;
    if (!strcmp(op, "linear")) {
        c->out[0] = ldmc_linear(ctx, in[0], in[1], opt2);
    } else if (!strcmp(op, "matmul")) {
        c->out[0] = ldmc_matmul(ctx, in[0], in[1], param(c, "trans_a"), param(c, "trans_b"));
    } else if (!strcmp(op, "conv2d")) {
        const cJSON *pad = cJSON_GetObjectItemCaseSensitive(c->params, "pad");
        int p[4];
        for (int i = 0; i < 4; i++)
            p[i] = cJSON_GetArrayItem(pad, i)->valueint;
        c->out[0] = ldmc_conv2d_padded(ctx, in[0], in[1], opt2, int_param(c, "stride"), p);
    } else if (!strcmp(op, "group_norm")) {
        c->out[0] =
            ldmc_group_norm(ctx, in[0], opt1, opt2, int_param(c, "groups"), param(c, "eps"));
    } else if (!strcmp(op, "layer_norm")) {
        c->out[0] = ldmc_layer_norm(ctx, in[0], opt1, opt2, param(c, "eps"));
    } else if (!strcmp(op, "silu")) {
        c->out[0] = ldmc_silu(ctx, in[0]);
    } else if (!strcmp(op, "gelu")) {
        c->out[0] = ldmc_gelu(ctx, in[0], param(c, "tanh"));
    } else if (!strcmp(op, "quick_gelu")) {
        c->out[0] = ldmc_quick_gelu(ctx, in[0]);
    } else if (!strcmp(op, "geglu")) {
        c->out[0] = ldmc_geglu(ctx, in[0]);
    } else if (!strcmp(op, "softmax")) {
        c->out[0] = ldmc_softmax(ctx, in[0]);
    } else if (!strcmp(op, "attention")) {
        c->out[0] = ldmc_attention(ctx, in[0], in[1], in[2], int_param(c, "heads"));
    } else if (!strcmp(op, "causal_attention")) {
        c->out[0] = ldmc_causal_attention(ctx, in[0], in[1], in[2], int_param(c, "heads"));
    } else if (!strcmp(op, "concat_rows")) {
        c->out[0] = ldmc_concat_rows(ctx, in, c->n_in);
    } else if (!strcmp(op, "add")) {
        c->out[0] = ldmc_add(ctx, in[0], in[1]);
    } else if (!strcmp(op, "mul")) {
        c->out[0] = ldmc_mul(ctx, in[0], in[1]);
    } else if (!strcmp(op, "scale")) {
        c->out[0] = ldmc_scale(ctx, in[0], param(c, "s"));
    } else if (!strcmp(op, "sub")) {
        c->out[0] = ldmc_sub(ctx, in[0], in[1]);
    } else if (!strcmp(op, "affine")) {
        c->out[0] = ldmc_affine(ctx, in[0], param(c, "a"), param(c, "b"));
    } else if (!strcmp(op, "exp")) {
        c->out[0] = ldmc_exp(ctx, in[0]);
    } else if (!strcmp(op, "clamp")) {
        c->out[0] = ldmc_clamp(ctx, in[0], param(c, "lo"), param(c, "hi"));
    } else if (!strcmp(op, "sum_rows")) {
        c->out[0] = ldmc_sum_rows(ctx, in[0]);
    } else if (!strcmp(op, "embedding")) {
        c->out[0] = ldmc_embedding(ctx, in[0], in[1]);
    } else if (!strcmp(op, "add_broadcast")) {
        c->out[0] = ldmc_add_broadcast(ctx, in[0], in[1]);
    } else if (!strcmp(op, "concat")) {
        c->out[0] = ldmc_concat(ctx, in, c->n_in);
    } else if (!strcmp(op, "split")) {
        const cJSON *sizes = cJSON_GetObjectItemCaseSensitive(c->params, "sizes");
        int s[8];
        c->n_out = cJSON_GetArraySize(sizes);
        for (int i = 0; i < c->n_out; i++)
            s[i] = cJSON_GetArrayItem(sizes, i)->valueint;
        ldmc_split(ctx, in[0], s, c->n_out, c->out);
    } else if (!strcmp(op, "upsample_nearest2x")) {
        c->out[0] = ldmc_upsample_nearest2x(ctx, in[0]);
    } else if (!strcmp(op, "avg_pool2d")) {
        c->out[0] = ldmc_avg_pool2d(ctx, in[0], int_param(c, "kernel"), int_param(c, "stride"),
                                    int_param(c, "padding"), param(c, "count_include_pad"));
    } else if (!strcmp(op, "max_pool2d")) {
        c->out[0] = ldmc_max_pool2d(ctx, in[0], int_param(c, "kernel"), int_param(c, "stride"),
                                    int_param(c, "padding"));
    } else if (!strcmp(op, "timestep_embedding")) {
        c->out[0] =
            ldmc_timestep_embedding(ctx, in[0], int_param(c, "dim"), param(c, "max_period"));
    } else if (!strcmp(op, "mse_loss")) {
        c->out[0] = ldmc_mse_loss(ctx, in[0], in[1]);
    } else if (!strcmp(op, "l1_loss")) {
        c->out[0] = ldmc_l1_loss(ctx, in[0], in[1]);
    } else if (!strcmp(op, "mse_loss_weighted") || !strcmp(op, "scale_rows")) {
        const cJSON *list =
            cJSON_GetObjectItemCaseSensitive(c->params, strcmp(op, "scale_rows") ? "weights" : "s");
        float w[16];
        int n = cJSON_GetArraySize(list);
        LDMC_CHECK(n <= 16, "case %s: too many weights", c->name);
        for (int i = 0; i < n; i++)
            w[i] = (float)cJSON_GetArrayItem(list, i)->valuedouble;
        c->out[0] = strcmp(op, "scale_rows") ? ldmc_mse_loss_weighted(ctx, in[0], in[1], w)
                                             : ldmc_scale_rows(ctx, in[0], w);
    } else if (!strcmp(op, "dropout")) {
        ctx->rng_seed = (uint64_t)param(c, "seed");
        ctx->rng_step = (uint64_t)param(c, "step");
        c->out[0] = ldmc_dropout(ctx, in[0], param(c, "p"));
    } else {
        LDMC_FATAL("case %s: no runner for op '%s'", c->name, op);
    }
}

// Compares a computed tensor with its reference "<key>" (sampled at "<key>.idx" when present).
static void compare(const op_case *c, const char *key, const float *got, int64_t numel,
                    double rtol) {
    ldmc_err err = {0};
    char idx_key[256];
    snprintf(idx_key, sizeof idx_key, "%s.idx", key);
    const ldmc_st_tensor *want_t = ldmc_safetensors_find(ref, key);
    const ldmc_st_tensor *idx_t = ldmc_safetensors_find(ref, idx_key);
    REQUIRE(want_t, "%s: reference tensor %s is missing", c->name, key);
    int64_t n = ldmc_st_numel(want_t);
    float *want = malloc((size_t)n * sizeof *want);
    int32_t *idx = idx_t ? malloc((size_t)n * sizeof *idx) : NULL;
    bool ok = ldmc_safetensors_read(ref, want_t, want, LDMC_F32, &err) == 0 &&
              (!idx_t || ldmc_safetensors_read(ref, idx_t, idx, LDMC_I32, &err) == 0);
    CHECK(ok, "%s", err.message);
    CHECK(idx_t || n == numel, "%s: %lld values, reference has %lld", key, (long long)numel,
          (long long)n);
    for (int64_t i = 0; ok && idx && i < n; i++)
        ok = idx[i] >= 0 && idx[i] < numel;
    if (ok && (idx_t || n == numel)) CHECK_CLOSE(key, got, want, idx, n, rtol);
    free(want);
    free(idx);
}

// Runs the case in a fresh context. Every input's gradient is fresh when the op's backward runs,
// so the ops that write their gradients (ldmc_op_reads.writes) write NaN bytes over
// (test_ctx_init): an element left unwritten fails. With `fresh` NULL, the outputs and gradients
// are checked against the references and the gradients returned in `grads`. Otherwise every input
// that needs a gradient has a second reader, recorded after the op (0.5 x, whose backward runs
// first), so that the op adds into a gradient that holds 0.5 x its upstream already: the result
// must be that plus the first run's gradient (`fresh`), within the same tolerance.
static void run_case_once(const cJSON *json, float **fresh, float **grads) {
    op_case c = {.json = json};
    c.name = cJSON_GetObjectItemCaseSensitive(json, "name")->valuestring;
    c.op = cJSON_GetObjectItemCaseSensitive(json, "op")->valuestring;
    c.params = cJSON_GetObjectItemCaseSensitive(json, "params");
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    const cJSON *inputs = cJSON_GetObjectItemCaseSensitive(json, "inputs"), *spec;
    cJSON_ArrayForEach(spec, inputs) {
        const cJSON *shape = cJSON_GetObjectItemCaseSensitive(spec, "shape"), *d;
        int64_t dims[LDMC_MAX_DIMS];
        int ndim = 0;
        cJSON_ArrayForEach(d, shape) dims[ndim++] = (int64_t)d->valuedouble;
        const cJSON *labels = cJSON_GetObjectItem(spec, "labels");
        ldmc_tensor *t = ldmc_new(&ctx, labels ? LDMC_I64 : LDMC_F32, ndim, dims);
        t->name = cJSON_GetObjectItem(spec, "name")->valuestring;
        c.in[c.n_in++] = t;
        if (labels) { // as make_op_refs.py: Philox bits modulo the label count
            ldmc_rng rng = ldmc_rng_make((uint64_t)cJSON_GetObjectItem(spec, "seed")->valuedouble,
                                         0, 0, LDMC_RNG_TEST);
            for (int64_t i = 0; i < ldmc_numel(t); i++)
                ((int64_t *)t->data)[i] =
                    ldmc_rng_bits(&rng, (uint64_t)i) % (uint64_t)labels->valuedouble;
            continue;
        }
        test_fill_quantized(t->data, ldmc_numel(t),
                            (uint64_t)cJSON_GetObjectItem(spec, "seed")->valuedouble,
                            cJSON_GetObjectItem(spec, "scale")->valuedouble,
                            cJSON_GetObjectItem(spec, "shift")->valuedouble,
                            cJSON_IsTrue(cJSON_GetObjectItem(spec, "quantize")));
        if (cJSON_IsTrue(cJSON_GetObjectItem(spec, "grad"))) ldmc_requires_grad(t);
    }
    run_op(&ctx, &c);
    double rtol = tolerance_f32(op_factor(c.op), reduction_length(&c));
    const cJSON *outputs = cJSON_GetObjectItemCaseSensitive(json, "outputs");
    REQUIRE(cJSON_GetArraySize(outputs) == c.n_out, "%s: %d outputs, reference has %d", c.name,
            c.n_out, cJSON_GetArraySize(outputs));
    ldmc_tensor *outs[16];
    float *seeds[16];
    int n_outs = c.n_out;
    char key[256];
    for (int o = 0; o < c.n_out; o++) {
        const cJSON *out_spec = cJSON_GetArrayItem(outputs, o);
        int64_t n = ldmc_numel(c.out[o]);
        snprintf(key, sizeof key, "%s.out%d", c.name, o);
        if (!fresh) compare(&c, key, c.out[o]->data, n, rtol);
        outs[o] = c.out[o];
        seeds[o] = malloc((size_t)(n ? n : 1) * sizeof(float));
        test_fill(seeds[o], n, (uint64_t)cJSON_GetObjectItem(out_spec, "seed")->valuedouble, 1, 0);
    }
    int second[8] = {0}; // input i's second reader: outs[second[i]], when fresh
    for (int i = 0; fresh && i < c.n_in; i++) {
        if (!c.in[i]->requires_grad) continue;
        int64_t n = ldmc_numel(c.in[i]);
        second[i] = n_outs;
        outs[n_outs] = ldmc_scale(&ctx, c.in[i], 0.5);
        seeds[n_outs] = malloc((size_t)(n ? n : 1) * sizeof(float));
        test_fill(seeds[n_outs++], n, 500 + (uint64_t)i, 1, 0);
    }
    ldmc_backward_many(&ctx, outs, (const float **)seeds, n_outs);
    for (int i = 0; i < c.n_in; i++) {
        if (!c.in[i]->requires_grad) continue;
        int64_t n = ldmc_numel(c.in[i]);
        const float *g = ldmc_grad_if_any(c.in[i]);
        CHECK(g, "%s: no gradient reached input %s", c.name, c.in[i]->name);
        if (!g) continue;
        if (!fresh) {
            snprintf(key, sizeof key, "%s.grad.%s", c.name, c.in[i]->name);
            compare(&c, key, g, n, rtol);
            grads[i] = malloc((size_t)(n ? n : 1) * sizeof(float));
            memcpy(grads[i], g, (size_t)n * sizeof(float));
            continue;
        }
        float *want = malloc((size_t)(n ? n : 1) * sizeof(float));
        for (int64_t j = 0; j < n; j++)
            want[j] = fresh[i][j] + 0.5f * seeds[second[i]][j];
        snprintf(key, sizeof key, "%s: gradient of %s added to one that holds a sum", c.name,
                 c.in[i]->name);
        CHECK_CLOSE(key, g, want, NULL, n, rtol);
        free(want);
    }
    for (int o = 0; o < n_outs; o++)
        free(seeds[o]);
    ldmc_ctx_free(&ctx);
}

static void run_case(const cJSON *json) {
    float *grads[8] = {0};
    run_case_once(json, NULL, grads);
    if (test_failures == 0) run_case_once(json, grads, NULL);
    for (int i = 0; i < 8; i++)
        free(grads[i]);
}

// Every differentiated op of ops.h must have at least one reference case. (The diffusion ops,
// which are not differentiated, are checked against their formulas in tests/test_diffusion.c and
// tests/test_pipeline.c.)
static void test_every_op_has_a_reference(void) {
    static const char *ops[] = {"linear",
                                "matmul",
                                "conv2d",
                                "group_norm",
                                "layer_norm",
                                "silu",
                                "gelu",
                                "quick_gelu",
                                "geglu",
                                "softmax",
                                "attention",
                                "add",
                                "mul",
                                "scale",
                                "add_broadcast",
                                "dropout",
                                "concat",
                                "split",
                                "upsample_nearest2x",
                                "avg_pool2d",
                                "max_pool2d",
                                "timestep_embedding",
                                "mse_loss",
                                "l1_loss",
                                "sub",
                                "affine",
                                "exp",
                                "clamp",
                                "sum_rows",
                                "embedding",
                                "mse_loss_weighted",
                                "scale_rows",
                                "causal_attention",
                                "concat_rows"};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        bool found = false;
        const cJSON *c;
        cJSON_ArrayForEach(c, cases) found |=
            !strcmp(cJSON_GetObjectItem(c, "op")->valuestring, ops[i]);
        CHECK(found, "op %s has no reference case in ops.safetensors", ops[i]);
    }
}

// A NaN or infinity entering softmax or attention comes out as NaN (the trainer's non-finite
// check relies on it), without undefined behaviour in the vectorized exp.
static void test_nonfinite_inputs_propagate(void) {
    ldmc_ctx ctx;
    test_ctx_init(&ctx);
    ctx.recording = false;
    ldmc_tensor *x = ldmc_new(&ctx, LDMC_F32, 2, (int64_t[]){2, 8});
    ldmc_tensor *q = ldmc_new(&ctx, LDMC_F32, 3, (int64_t[]){1, 4, 8});
    float *xd = x->data, *qd = q->data;
    for (int i = 0; i < 16; i++)
        xd[i] = 0.1f * (float)i;
    for (int i = 0; i < 32; i++)
        qd[i] = 0.05f * (float)i;
    xd[3] = NAN;
    xd[12] = INFINITY;
    qd[5] = NAN;
    float *sm = ldmc_softmax(&ctx, x)->data, *at = ldmc_attention(&ctx, q, q, q, 2)->data;
    CHECK(isnan(sm[0]) && isnan(sm[7]) && !isfinite(sm[8]), "softmax of a row with NaN/inf");
    bool any_nan = false;
    for (int i = 0; i < 32; i++)
        any_nan |= isnan(at[i]);
    CHECK(any_nan, "attention with a NaN input has NaN outputs");
    ldmc_ctx_free(&ctx);
}

static void test_case(void) { run_case(test_arg); }

int main(int argc, char **argv) {
    char path[4096];
    snprintf(path, sizeof path, "%s/ops.safetensors", test_data_dir());
    static ldmc_safetensors file;
    ldmc_err err = {0};
    if (ldmc_safetensors_open(&file, path, &err) != 0) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    ref = &file;
    const char *json = ldmc_safetensors_meta(ref, "cases");
    cases = json ? cJSON_Parse(json) : NULL;
    if (!cJSON_IsArray(cases)) {
        fprintf(stderr, "%s: no case list in the metadata\n", path);
        return 1;
    }
    test_entry *tests = calloc((size_t)cJSON_GetArraySize(cases) + 2, sizeof *tests);
    int n = 0;
    tests[n++] = (test_entry)TEST_ENTRY(test_every_op_has_a_reference);
    tests[n++] = (test_entry)TEST_ENTRY(test_nonfinite_inputs_propagate);
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        tests[n++] = (test_entry){cJSON_GetObjectItem(c, "name")->valuestring, test_case, c};
    }
    int rc = test_main(argc, argv, tests, n);
    free(tests);
    cJSON_Delete(cases);
    ldmc_safetensors_close(&file);
    return rc;
}
