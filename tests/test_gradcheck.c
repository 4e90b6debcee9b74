// Every op's backward against central finite differences, in double precision: the CPU kernels
// are generic over the element type (src/ops/cpu/*.inc), and their *_f64 build is checked here.
// The loss is L = Σ out · R with a random R (never Σ out, which is constant after a
// normalization); ∂L/∂x_i from backward is compared with (L(x_i + h) - L(x_i - h)) / 2h at up to
// 40 sampled elements of every input, with the tolerance TOLERANCE_FD (harness.h).
// Shapes are odd on purpose (primes, tiles that do not divide, asymmetric padding).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "ops/cpu_kernels.h"

#define FD_STEP 1e-4
#define FD_SAMPLES 40
#define MAX_IN 4

typedef struct fd_case fd_case;
typedef void (*fd_forward)(const fd_case *c, double **in, double *out);
typedef void (*fd_backward)(const fd_case *c, double **in, const double *dout, double **din);

struct fd_case {
    const char *name;
    fd_forward forward;
    fd_backward backward;
    int n_in;
    int64_t in_numel[MAX_IN];
    double in_scale[MAX_IN];
    int64_t out_numel;
    bool distinct_inputs; // well-separated values (max pooling: no argmax flips under ±h)
    // op parameters
    ldmc_conv_geom g;
    int M, N, K, B, C, G, H, D, Nq, Nk, dim;
    bool flag_a, flag_b, has_bias, affine;
    double eps, value;
};

// ---- op adapters: in[] and out are the kernels' arguments --------------------------------------
static void linear_f(const fd_case *c, double **in, double *out) {
    linear_forward_f64(out, in[0], in[1], c->has_bias ? in[2] : NULL, c->M, c->K, c->N);
}
static void linear_b(const fd_case *c, double **in, const double *dy, double **d) {
    linear_backward_f64(d[0], 1, d[1], c->has_bias ? d[2] : NULL, dy, in[0], in[1], c->M, c->K,
                        c->N);
}
static void bmm_f(const fd_case *c, double **in, double *out) {
    bmm_forward_f64(out, in[0], in[1], c->B, c->M, c->N, c->K, c->flag_a, c->flag_b);
}
static void bmm_b(const fd_case *c, double **in, const double *dy, double **d) {
    bmm_backward_f64(d[0], d[1], 1, 1, dy, in[0], in[1], c->B, c->M, c->N, c->K, c->flag_a,
                     c->flag_b);
}
static void conv_f(const fd_case *c, double **in, double *out) {
    conv2d_forward_f64(out, in[0], in[1], c->has_bias ? in[2] : NULL, &c->g);
}
static void conv_b(const fd_case *c, double **in, const double *dy, double **d) {
    conv2d_backward_f64(d[0], 1, d[1], c->has_bias ? d[2] : NULL, dy, in[0], in[1], &c->g);
}
static void group_norm_f(const fd_case *c, double **in, double *out) {
    double mean[64], rstd[64];
    group_norm_forward_f64(out, mean, rstd, in[0], c->affine ? in[1] : NULL,
                           c->affine ? in[2] : NULL, c->B, c->M, c->C, c->G, c->eps);
}
static void group_norm_b(const fd_case *c, double **in, const double *dy, double **d) {
    double mean[64], rstd[64], *y = malloc((size_t)(c->B * c->M * c->C) * sizeof *y);
    group_norm_forward_f64(y, mean, rstd, in[0], c->affine ? in[1] : NULL, c->affine ? in[2] : NULL,
                           c->B, c->M, c->C, c->G, c->eps);
    group_norm_backward_f64(d[0], 1, c->affine ? d[1] : NULL, c->affine ? d[2] : NULL, dy, in[0],
                            mean, rstd, c->affine ? in[1] : NULL, c->B, c->M, c->C, c->G);
    free(y);
}
static void layer_norm_f(const fd_case *c, double **in, double *out) {
    double mean[64], rstd[64];
    layer_norm_forward_f64(out, mean, rstd, in[0], c->affine ? in[1] : NULL,
                           c->affine ? in[2] : NULL, c->M, c->C, c->eps);
}
static void layer_norm_b(const fd_case *c, double **in, const double *dy, double **d) {
    double mean[64], rstd[64], *y = malloc((size_t)(c->M * c->C) * sizeof *y);
    layer_norm_forward_f64(y, mean, rstd, in[0], c->affine ? in[1] : NULL, c->affine ? in[2] : NULL,
                           c->M, c->C, c->eps);
    layer_norm_backward_f64(d[0], 1, c->affine ? d[1] : NULL, c->affine ? d[2] : NULL, dy, in[0],
                            mean, rstd, c->affine ? in[1] : NULL, c->M, c->C);
    free(y);
}
static void silu_f(const fd_case *c, double **in, double *out) {
    silu_forward_f64(out, in[0], c->in_numel[0]);
}
static void silu_b(const fd_case *c, double **in, const double *dy, double **d) {
    silu_backward_f64(d[0], 1, dy, in[0], c->in_numel[0]);
}
static void gelu_f(const fd_case *c, double **in, double *out) {
    gelu_forward_f64(out, in[0], c->in_numel[0], c->flag_a);
}
static void gelu_b(const fd_case *c, double **in, const double *dy, double **d) {
    gelu_backward_f64(d[0], 1, dy, in[0], c->in_numel[0], c->flag_a);
}
static void quick_gelu_f(const fd_case *c, double **in, double *out) {
    gelu_forward_f64(out, in[0], c->in_numel[0], LDMC_GELU_QUICK);
}
static void quick_gelu_b(const fd_case *c, double **in, const double *dy, double **d) {
    gelu_backward_f64(d[0], 1, dy, in[0], c->in_numel[0], LDMC_GELU_QUICK);
}
static void geglu_f(const fd_case *c, double **in, double *out) {
    geglu_forward_f64(out, in[0], c->M, c->N);
}
static void geglu_b(const fd_case *c, double **in, const double *dy, double **d) {
    geglu_backward_f64(d[0], 1, dy, in[0], c->M, c->N);
}
static void softmax_f(const fd_case *c, double **in, double *out) {
    softmax_forward_f64(out, in[0], c->M, c->C);
}
static void softmax_b(const fd_case *c, double **in, const double *dy, double **d) {
    double *y = malloc((size_t)(c->M * c->C) * sizeof *y);
    softmax_forward_f64(y, in[0], c->M, c->C);
    softmax_backward_f64(d[0], 1, dy, y, c->M, c->C);
    free(y);
}
static void attention_f(const fd_case *c, double **in, double *out) {
    double *lse = malloc((size_t)(c->B * c->H * c->Nq) * sizeof *lse);
    attention_forward_f64(out, lse, in[0], in[1], in[2], c->B, c->Nq, c->Nk, c->H, c->D,
                          1 / sqrt(c->D), c->flag_a);
    free(lse);
}
static void attention_b(const fd_case *c, double **in, const double *dy, double **d) {
    double *lse = malloc((size_t)(c->B * c->H * c->Nq) * sizeof *lse);
    double *o = malloc((size_t)c->out_numel * sizeof *o);
    attention_forward_f64(o, lse, in[0], in[1], in[2], c->B, c->Nq, c->Nk, c->H, c->D,
                          1 / sqrt(c->D), c->flag_a);
    attention_backward_f64(d[0], d[1], d[2], 1, 1, 1, dy, in[0], in[1], in[2], o, lse, c->B, c->Nq,
                           c->Nk, c->H, c->D, 1 / sqrt(c->D), c->flag_a);
    free(lse);
    free(o);
}
static void add_f(const fd_case *c, double **in, double *out) {
    add_forward_f64(out, in[0], in[1], c->out_numel);
}
static void add_b(const fd_case *c, double **in, const double *dy, double **d) {
    accumulate_f64(d[0], 1, dy, 1.0, c->out_numel);
    accumulate_f64(d[1], 1, dy, 1.0, c->out_numel);
}
static void mul_f(const fd_case *c, double **in, double *out) {
    mul_forward_f64(out, in[0], in[1], c->out_numel);
}
static void mul_b(const fd_case *c, double **in, const double *dy, double **d) {
    mul_backward_f64(d[0], d[1], 1, 1, dy, in[0], in[1], c->out_numel);
}
static void scale_f(const fd_case *c, double **in, double *out) {
    affine_forward_f64(out, in[0], c->value, 0.25, c->out_numel);
}
static void scale_b(const fd_case *c, double **in, const double *dy, double **d) {
    accumulate_f64(d[0], 1, dy, c->value, c->out_numel);
}
static void bcast_f(const fd_case *c, double **in, double *out) {
    add_broadcast_forward_f64(out, in[0], in[1], c->B, c->M, c->C);
}
static void bcast_b(const fd_case *c, double **in, const double *dy, double **d) {
    add_broadcast_backward_f64(d[0], d[1], 1, 1, dy, c->B, c->M, c->C);
}
static void sub_f(const fd_case *c, double **in, double *out) { sub_forward_f64(out, in[0], in[1], c->out_numel); }
static void sub_b(const fd_case *c, double **in, const double *dy, double **d) {
    accumulate_f64(d[0], 1, dy, 1.0, c->out_numel);
    accumulate_f64(d[1], 1, dy, -1.0, c->out_numel);
}
static void exp_f(const fd_case *c, double **in, double *out) { exp_forward_f64(out, in[0], c->out_numel); }
static void exp_b(const fd_case *c, double **in, const double *dy, double **d) {
    double *y = malloc((size_t)c->out_numel * sizeof *y);
    exp_forward_f64(y, in[0], c->out_numel);
    mul_backward_f64(d[0], NULL, 1, 1, dy, NULL, y, c->out_numel);
    free(y);
}
static void clamp_f(const fd_case *c, double **in, double *out) {
    clamp_forward_f64(out, in[0], -0.5, 0.7, c->out_numel);
}
static void clamp_b(const fd_case *c, double **in, const double *dy, double **d) {
    clamp_backward_f64(d[0], 1, dy, in[0], -0.5, 0.7, c->out_numel);
}
static void sum_rows_f(const fd_case *c, double **in, double *out) {
    sum_rows_forward_f64(out, in[0], c->B, c->M);
}
static void sum_rows_b(const fd_case *c, double **in, const double *dy, double **d) {
    sum_rows_backward_f64(d[0], 1, dy, c->B, c->M);
}
static const int64_t embedding_labels[5] = {3, 0, 3, 6, 1};  // a repeated label accumulates
static void embedding_f(const fd_case *c, double **in, double *out) {
    embedding_forward_f64(out, in[0], embedding_labels, 5, c->C);
}
static void embedding_b(const fd_case *c, double **in, const double *dy, double **d) {
    embedding_backward_f64(d[0], dy, embedding_labels, 5, c->C);
}

static const float row_weights[3] = {0.5f, 1.0f, 2.25f};
static void mse_rows_f(const fd_case *c, double **in, double *out) {
    out[0] = mse_rows_forward_f64(in[0], in[1], row_weights, 3, c->in_numel[0] / 3);
}
static void mse_rows_b(const fd_case *c, double **in, const double *dy, double **d) {
    mse_rows_backward_f64(d[0], d[1], 1, 1, dy[0], in[0], in[1], row_weights, 3,
                          c->in_numel[0] / 3);
}
static void scale_rows_f(const fd_case *c, double **in, double *out) {
    scale_rows_forward_f64(out, in[0], row_weights, 3, c->out_numel / 3);
}
static void scale_rows_b(const fd_case *c, double **in, const double *dy, double **d) {
    scale_rows_backward_f64(d[0], 1, dy, row_weights, 3, c->out_numel / 3);
}

// concat of two pieces of K and N channels over M rows, and its inverse, split
static void concat_f(const fd_case *c, double **in, double *out) {
    copy_columns_f64(out, c->K + c->N, 0, in[0], c->K, 0, c->M, c->K, false);
    copy_columns_f64(out, c->K + c->N, c->K, in[1], c->N, 0, c->M, c->N, false);
}
static void concat_b(const fd_case *c, double **in, const double *dy, double **d) {
    copy_columns_f64(d[0], c->K, 0, dy, c->K + c->N, 0, c->M, c->K, true);
    copy_columns_f64(d[1], c->N, 0, dy, c->K + c->N, c->K, c->M, c->N, true);
}
static void upsample_f(const fd_case *c, double **in, double *out) {
    upsample_nearest2x_forward_f64(out, in[0], c->g.N, c->g.H, c->g.W, c->g.C);
}
static void upsample_b(const fd_case *c, double **in, const double *dy, double **d) {
    upsample_nearest2x_backward_f64(d[0], 1, dy, c->g.N, c->g.H, c->g.W, c->g.C);
}
static void avg_pool_f(const fd_case *c, double **in, double *out) {
    avg_pool2d_forward_f64(out, in[0], &c->g, c->flag_a);
}
static void avg_pool_b(const fd_case *c, double **in, const double *dy, double **d) {
    avg_pool2d_backward_f64(d[0], dy, &c->g, c->flag_a);
}
static void max_pool_f(const fd_case *c, double **in, double *out) {
    max_pool2d_forward_f64(out, in[0], &c->g);
}
static void max_pool_b(const fd_case *c, double **in, const double *dy, double **d) {
    max_pool2d_backward_f64(d[0], dy, in[0], &c->g);
}
static void timestep_f(const fd_case *c, double **in, double *out) {
    timestep_embedding_forward_f64(out, in[0], c->B, c->dim, 10000.0);
}
static void timestep_b(const fd_case *c, double **in, const double *dy, double **d) {
    timestep_embedding_backward_f64(d[0], dy, in[0], c->B, c->dim, 10000.0);
}
static void mse_f(const fd_case *c, double **in, double *out) {
    out[0] = mse_forward_f64(in[0], in[1], c->in_numel[0]);
}
static void mse_b(const fd_case *c, double **in, const double *dy, double **d) {
    mse_backward_f64(d[0], d[1], 1, 1, dy[0], in[0], in[1], c->in_numel[0]);
}
static void l1_f(const fd_case *c, double **in, double *out) {
    out[0] = l1_forward_f64(in[0], in[1], c->in_numel[0]);
}
static void l1_b(const fd_case *c, double **in, const double *dy, double **d) {
    l1_backward_f64(d[0], d[1], 1, 1, dy[0], in[0], in[1], c->in_numel[0]);
}
static const ldmc_rng dropout_rng = {{77, 0}, {3, 1}};
static void dropout_f(const fd_case *c, double **in, double *out) {
    dropout_forward_f64(out, in[0], c->in_numel[0], c->value, &dropout_rng, 8);
}
static void dropout_b(const fd_case *c, double **in, const double *dy, double **d) {
    dropout_backward_f64(d[0], 1, dy, c->in_numel[0], c->value, &dropout_rng, 8);
}

// ---- the check ----------------------------------------------------------------------------------

static double loss_of(const fd_case *c, double **in, double *out, const double *R) {
    c->forward(c, in, out);
    double L = 0;
    for (int64_t i = 0; i < c->out_numel; i++)
        L += out[i] * R[i];
    return L;
}

// Fills x with n distinct values spaced 0.05 apart, in an order shuffled by the seed.
static void fill_distinct(double *x, int64_t n, uint64_t seed) {
    for (int64_t i = 0; i < n; i++)
        x[i] = 0.05 * (double)(i - n / 2);
    ldmc_rng rng = ldmc_rng_make(seed, 0, 0, LDMC_RNG_TEST);
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(ldmc_rng_bits(&rng, (uint64_t)i) % (uint64_t)(i + 1));
        double t = x[i];
        x[i] = x[j];
        x[j] = t;
    }
}

static void run_fd(const fd_case *c) {
    double *in[MAX_IN], *din[MAX_IN];
    double *out = malloc((size_t)c->out_numel * sizeof *out);
    double *R = malloc((size_t)c->out_numel * sizeof *R);
    test_fill_f64(R, c->out_numel, 99, 1, 0);
    for (int i = 0; i < c->n_in; i++) {
        in[i] = malloc((size_t)c->in_numel[i] * sizeof(double));
        din[i] = calloc((size_t)c->in_numel[i], sizeof(double));
        if (c->distinct_inputs)
            fill_distinct(in[i], c->in_numel[i], 10 + (uint64_t)i);
        else
            test_fill_f64(in[i], c->in_numel[i], 10 + (uint64_t)i,
                          c->in_scale[i] ? c->in_scale[i] : 1, 0);
    }
    c->backward(c, in, R, din);
    for (int i = 0; i < c->n_in; i++) {
        int64_t n = c->in_numel[i], samples = n < FD_SAMPLES ? n : FD_SAMPLES;
        double analytic[FD_SAMPLES], numeric[FD_SAMPLES];
        for (int64_t s = 0; s < samples; s++) {
            int64_t e = samples == n ? s : (s * 7919 + 13) % n; // spread over the tensor
            double saved = in[i][e], h = FD_STEP;
            in[i][e] = saved + h;
            double plus = loss_of(c, in, out, R);
            in[i][e] = saved - h;
            double minus = loss_of(c, in, out, R);
            in[i][e] = saved;
            numeric[s] = (plus - minus) / (2 * h);
            analytic[s] = din[i][e];
        }
        char what[128];
        snprintf(what, sizeof what, "%s: d/d input %d", c->name, i);
        CHECK_CLOSE_F64(what, analytic, numeric, samples, TOLERANCE_FD);
    }
    for (int i = 0; i < c->n_in; i++) {
        free(in[i]);
        free(din[i]);
    }
    free(out);
    free(R);
}

static ldmc_conv_geom geom(int N, int H, int W, int C, int O, int k, int stride, int pt, int pb,
                           int pl, int pr) {
    ldmc_conv_geom g = {.N = N,
                        .H = H,
                        .W = W,
                        .C = C,
                        .O = O,
                        .kh = k,
                        .kw = k,
                        .stride = stride,
                        .pad_top = pt,
                        .pad_bottom = pb,
                        .pad_left = pl,
                        .pad_right = pr};
    LDMC_CHECK(ldmc_conv_geom_finish(&g) == 0, "bad test geometry");
    return g;
}

static fd_case conv_case(const char *name, ldmc_conv_geom g, bool bias) {
    fd_case c = {.name = name,
                 .forward = conv_f,
                 .backward = conv_b,
                 .g = g,
                 .has_bias = bias,
                 .n_in = bias ? 3 : 2};
    c.in_numel[0] = (int64_t)g.N * g.H * g.W * g.C;
    c.in_numel[1] = (int64_t)g.O * g.kh * g.kw * g.C;
    c.in_numel[2] = g.O;
    c.out_numel = (int64_t)g.N * g.Ho * g.Wo * g.O;
    return c;
}

static fd_case pool_case(const char *name, ldmc_conv_geom g, bool is_max, bool include_pad) {
    fd_case c = {.name = name,
                 .forward = is_max ? max_pool_f : avg_pool_f,
                 .backward = is_max ? max_pool_b : avg_pool_b,
                 .g = g,
                 .n_in = 1,
                 .flag_a = include_pad,
                 .distinct_inputs = is_max};
    c.in_numel[0] = (int64_t)g.N * g.H * g.W * g.C;
    c.out_numel = (int64_t)g.N * g.Ho * g.Wo * g.C;
    return c;
}

static fd_case *all_cases(int *count) {
    static fd_case cases[64];
    int n = 0;
    // linear: x (M, K), w (N, K), b (N)
    cases[n++] = (fd_case){.name = "linear",
                           .forward = linear_f,
                           .backward = linear_b,
                           .n_in = 3,
                           .in_numel = {5 * 7, 3 * 7, 3},
                           .out_numel = 5 * 3,
                           .M = 5,
                           .K = 7,
                           .N = 3,
                           .has_bias = true};
    cases[n++] = (fd_case){.name = "linear_nobias",
                           .forward = linear_f,
                           .backward = linear_b,
                           .n_in = 2,
                           .in_numel = {4 * 6, 5 * 6},
                           .out_numel = 4 * 5,
                           .M = 4,
                           .K = 6,
                           .N = 5};
    for (int t = 0; t < 4; t++) {
        static const char *names[] = {"matmul_nn", "matmul_nt", "matmul_tn", "matmul_tt"};
        cases[n++] = (fd_case){.name = names[t],
                               .forward = bmm_f,
                               .backward = bmm_b,
                               .n_in = 2,
                               .in_numel = {2 * 3 * 5, 2 * 5 * 4},
                               .out_numel = 2 * 3 * 4,
                               .B = 2,
                               .M = 3,
                               .K = 5,
                               .N = 4,
                               .flag_a = t & 2,
                               .flag_b = t & 1};
    }
    cases[n++] = conv_case("conv2d_k3s1p1", geom(2, 5, 6, 3, 4, 3, 1, 1, 1, 1, 1), true);
    cases[n++] = conv_case("conv2d_k3s2p1", geom(1, 7, 6, 3, 2, 3, 2, 1, 1, 1, 1), true);
    cases[n++] = conv_case("conv2d_k3s2_pad0101", geom(1, 6, 7, 2, 3, 3, 2, 0, 1, 0, 1), true);
    cases[n++] = conv_case("conv2d_k3s1p0", geom(1, 5, 5, 2, 2, 3, 1, 0, 0, 0, 0), false);
    cases[n++] = conv_case("conv2d_k1", geom(2, 3, 4, 5, 3, 1, 1, 0, 0, 0, 0), true);
    cases[n++] = conv_case("conv2d_k1s2", geom(1, 5, 5, 3, 2, 1, 2, 0, 0, 0, 0), false);
    // group norm (B, M pixels, C) with G groups; layer norm (M, C)
    cases[n++] = (fd_case){.name = "group_norm",
                           .forward = group_norm_f,
                           .backward = group_norm_b,
                           .n_in = 3,
                           .in_numel = {2 * 5 * 6, 6, 6},
                           .in_scale = {2, 1, 1},
                           .out_numel = 2 * 5 * 6,
                           .B = 2,
                           .M = 5,
                           .C = 6,
                           .G = 3,
                           .eps = 1e-5,
                           .affine = true};
    cases[n++] = (fd_case){.name = "group_norm_noaffine",
                           .forward = group_norm_f,
                           .backward = group_norm_b,
                           .n_in = 1,
                           .in_numel = {3 * 4 * 8},
                           .in_scale = {3},
                           .out_numel = 3 * 4 * 8,
                           .B = 3,
                           .M = 4,
                           .C = 8,
                           .G = 2,
                           .eps = 1e-6};
    cases[n++] = (fd_case){.name = "layer_norm",
                           .forward = layer_norm_f,
                           .backward = layer_norm_b,
                           .n_in = 3,
                           .in_numel = {4 * 7, 7, 7},
                           .in_scale = {2, 1, 1},
                           .out_numel = 4 * 7,
                           .M = 4,
                           .C = 7,
                           .eps = 1e-5,
                           .affine = true};
    cases[n++] = (fd_case){.name = "layer_norm_noaffine",
                           .forward = layer_norm_f,
                           .backward = layer_norm_b,
                           .n_in = 1,
                           .in_numel = {3 * 5},
                           .in_scale = {1},
                           .out_numel = 3 * 5,
                           .M = 3,
                           .C = 5,
                           .eps = 1e-5};
    cases[n++] = (fd_case){.name = "silu",
                           .forward = silu_f,
                           .backward = silu_b,
                           .n_in = 1,
                           .in_numel = {37},
                           .in_scale = {4},
                           .out_numel = 37};
    cases[n++] = (fd_case){.name = "gelu_erf",
                           .forward = gelu_f,
                           .backward = gelu_b,
                           .n_in = 1,
                           .in_numel = {37},
                           .in_scale = {4},
                           .out_numel = 37};
    cases[n++] = (fd_case){.name = "gelu_tanh",
                           .forward = gelu_f,
                           .backward = gelu_b,
                           .n_in = 1,
                           .in_numel = {37},
                           .in_scale = {4},
                           .out_numel = 37,
                           .flag_a = true};
    cases[n++] = (fd_case){.name = "quick_gelu",
                           .forward = quick_gelu_f,
                           .backward = quick_gelu_b,
                           .n_in = 1,
                           .in_numel = {37},
                           .in_scale = {4},
                           .out_numel = 37};
    cases[n++] = (fd_case){.name = "geglu",
                           .forward = geglu_f,
                           .backward = geglu_b,
                           .n_in = 1,
                           .in_numel = {3 * 10},
                           .in_scale = {3},
                           .out_numel = 3 * 5,
                           .M = 3,
                           .N = 5};
    cases[n++] = (fd_case){.name = "softmax",
                           .forward = softmax_f,
                           .backward = softmax_b,
                           .n_in = 1,
                           .in_numel = {3 * 11},
                           .in_scale = {4},
                           .out_numel = 3 * 11,
                           .M = 3,
                           .C = 11};
    // attention: q (B, Nq, H*D), k and v (B, Nk, H*D); 70 queries cross a 64-query tile boundary
    cases[n++] = (fd_case){.name = "attention_cross",
                           .forward = attention_f,
                           .backward = attention_b,
                           .n_in = 3,
                           .in_numel = {2 * 5 * 6, 2 * 7 * 6, 2 * 7 * 6},
                           .in_scale = {2, 2, 1},
                           .out_numel = 2 * 5 * 6,
                           .B = 2,
                           .Nq = 5,
                           .Nk = 7,
                           .H = 2,
                           .D = 3};
    cases[n++] = (fd_case){.name = "attention_tiles",
                           .forward = attention_f,
                           .backward = attention_b,
                           .n_in = 3,
                           .in_numel = {70 * 4, 70 * 4, 70 * 4},
                           .in_scale = {2, 2, 1},
                           .out_numel = 70 * 4,
                           .B = 1,
                           .Nq = 70,
                           .Nk = 70,
                           .H = 1,
                           .D = 4};
    // causal (flag_a): query i sees keys 0..i; 70 tokens cross the tile boundary
    cases[n++] = (fd_case){.name = "attention_causal",
                           .forward = attention_f,
                           .backward = attention_b,
                           .n_in = 3,
                           .in_numel = {2 * 70 * 4, 2 * 70 * 4, 2 * 70 * 4},
                           .in_scale = {2, 2, 1},
                           .out_numel = 2 * 70 * 4,
                           .B = 2,
                           .Nq = 70,
                           .Nk = 70,
                           .H = 2,
                           .D = 2,
                           .flag_a = true};
    // 576 output pixels of 2880-value receptive fields: two chunks of the kernel's gather
    cases[n++] = conv_case("conv2d_chunks", geom(1, 24, 24, 320, 2, 3, 1, 1, 1, 1, 1), true);
    cases[n++] = conv_case("conv2d_chunks_s2", geom(2, 33, 34, 320, 2, 3, 2, 1, 1, 1, 1), false);
    // SDXL's widths at tiny spatial sizes: 320 channels in 32 groups, 64-wide heads, 1280 features
    cases[n++] = conv_case("conv2d_sdxl_320", geom(1, 3, 3, 320, 320, 3, 1, 1, 1, 1, 1), true);
    cases[n++] = (fd_case){.name = "group_norm_sdxl_32g",
                           .forward = group_norm_f,
                           .backward = group_norm_b,
                           .n_in = 3,
                           .in_numel = {4 * 320, 320, 320},
                           .in_scale = {2, 1, 1},
                           .out_numel = 4 * 320,
                           .B = 1,
                           .M = 4,
                           .C = 320,
                           .G = 32,
                           .eps = 1e-5,
                           .affine = true};
    cases[n++] = (fd_case){.name = "layer_norm_sdxl_1280",
                           .forward = layer_norm_f,
                           .backward = layer_norm_b,
                           .n_in = 3,
                           .in_numel = {2 * 1280, 1280, 1280},
                           .in_scale = {2, 1, 1},
                           .out_numel = 2 * 1280,
                           .M = 2,
                           .C = 1280,
                           .eps = 1e-5,
                           .affine = true};
    cases[n++] = (fd_case){.name = "attention_sdxl_heads",
                           .forward = attention_f,
                           .backward = attention_b,
                           .n_in = 3,
                           .in_numel = {6 * 128, 5 * 128, 5 * 128},
                           .in_scale = {2, 2, 1},
                           .out_numel = 6 * 128,
                           .B = 1,
                           .Nq = 6,
                           .Nk = 5,
                           .H = 2,
                           .D = 64};
    cases[n++] = (fd_case){.name = "add",
                           .forward = add_f,
                           .backward = add_b,
                           .n_in = 2,
                           .in_numel = {23, 23},
                           .out_numel = 23};
    cases[n++] = (fd_case){.name = "mul",
                           .forward = mul_f,
                           .backward = mul_b,
                           .n_in = 2,
                           .in_numel = {23, 23},
                           .out_numel = 23};
    cases[n++] = (fd_case){.name = "scale",
                           .forward = scale_f,
                           .backward = scale_b,
                           .n_in = 1,
                           .in_numel = {23},
                           .out_numel = 23,
                           .value = -0.7};
    cases[n++] = (fd_case){.name = "sub", .forward = sub_f, .backward = sub_b, .n_in = 2, .in_numel = {19, 19}, .out_numel = 19};
    cases[n++] = (fd_case){.name = "exp", .forward = exp_f, .backward = exp_b, .n_in = 1, .in_numel = {19}, .in_scale = {3}, .out_numel = 19};
    cases[n++] = (fd_case){.name = "clamp", .forward = clamp_f, .backward = clamp_b, .n_in = 1, .in_numel = {29}, .out_numel = 29};
    cases[n++] = (fd_case){.name = "sum_rows", .forward = sum_rows_f, .backward = sum_rows_b, .n_in = 1, .in_numel = {3 * 7}, .out_numel = 3, .B = 3, .M = 7};
    cases[n++] = (fd_case){.name = "embedding", .forward = embedding_f, .backward = embedding_b, .n_in = 1, .in_numel = {7 * 4}, .out_numel = 5 * 4, .C = 4};
    cases[n++] = (fd_case){.name = "mse_loss_weighted", .forward = mse_rows_f, .backward = mse_rows_b, .n_in = 2, .in_numel = {3 * 5, 3 * 5}, .out_numel = 1};
    cases[n++] = (fd_case){.name = "scale_rows", .forward = scale_rows_f, .backward = scale_rows_b, .n_in = 1, .in_numel = {3 * 4}, .out_numel = 3 * 4};
    cases[n++] = (fd_case){.name = "add_broadcast",
                           .forward = bcast_f,
                           .backward = bcast_b,
                           .n_in = 2,
                           .in_numel = {2 * 6 * 5, 2 * 5},
                           .out_numel = 2 * 6 * 5,
                           .B = 2,
                           .M = 6,
                           .C = 5};
    cases[n++] = (fd_case){.name = "concat",
                           .forward = concat_f,
                           .backward = concat_b,
                           .n_in = 2,
                           .in_numel = {4 * 3, 4 * 5},
                           .out_numel = 4 * 8,
                           .M = 4,
                           .K = 3,
                           .N = 5};
    fd_case up = {.name = "upsample_nearest2x",
                  .forward = upsample_f,
                  .backward = upsample_b,
                  .n_in = 1,
                  .in_numel = {2 * 3 * 4 * 3},
                  .out_numel = 2 * 6 * 8 * 3};
    up.g = geom(2, 3, 4, 3, 3, 1, 1, 0, 0, 0, 0);
    cases[n++] = up;
    cases[n++] =
        pool_case("avg_pool_k3s1p1_exclude", geom(1, 5, 6, 3, 3, 3, 1, 1, 1, 1, 1), false, false);
    cases[n++] =
        pool_case("avg_pool_k3s2p1_include", geom(2, 7, 5, 2, 2, 3, 2, 1, 1, 1, 1), false, true);
    cases[n++] = pool_case("avg_pool_k2s2", geom(1, 6, 4, 3, 3, 2, 2, 0, 0, 0, 0), false, true);
    cases[n++] = pool_case("max_pool_k3s2", geom(1, 7, 7, 3, 3, 3, 2, 0, 0, 0, 0), true, false);
    cases[n++] = pool_case("max_pool_k3s1p1", geom(2, 4, 5, 2, 2, 3, 1, 1, 1, 1, 1), true, false);
    cases[n++] = (fd_case){.name = "timestep_embedding",
                           .forward = timestep_f,
                           .backward = timestep_b,
                           .n_in = 1,
                           .in_numel = {3},
                           .in_scale = {50},
                           .out_numel = 3 * 9,
                           .B = 3,
                           .dim = 9};
    cases[n++] = (fd_case){.name = "mse_loss",
                           .forward = mse_f,
                           .backward = mse_b,
                           .n_in = 2,
                           .in_numel = {17, 17},
                           .out_numel = 1};
    cases[n++] = (fd_case){.name = "l1_loss",
                           .forward = l1_f,
                           .backward = l1_b,
                           .n_in = 2,
                           .in_numel = {17, 17},
                           .out_numel = 1};
    cases[n++] = (fd_case){.name = "dropout",
                           .forward = dropout_f,
                           .backward = dropout_b,
                           .n_in = 1,
                           .in_numel = {41},
                           .out_numel = 41,
                           .value = 0.3};
    *count = n;
    return cases;
}

static void test_fd_case(void) { run_fd(test_arg); }

// The finite-difference check itself must fail on a wrong gradient: a backward that is off by
// 1% in one element.
static void wrong_scale_b(const fd_case *c, double **in, const double *dy, double **d) {
    accumulate_f64(d[0], 1, dy, c->value, c->out_numel);
    d[0][3] *= 1.01;
}
static void test_fd_detects_a_wrong_gradient(void) {
    fd_case c = {.name = "wrong",
                 .forward = scale_f,
                 .backward = wrong_scale_b,
                 .n_in = 1,
                 .in_numel = {23},
                 .out_numel = 23,
                 .value = 0.5};
    int before = test_failures;
    test_quiet = true;
    run_fd(&c);
    test_quiet = false;
    CHECK(test_failures == before + 1, "a 1%% gradient error went unnoticed");
    test_failures = before;
}

int main(int argc, char **argv) {
    int n;
    fd_case *cases = all_cases(&n);
    test_entry tests[80];
    int count = 0;
    tests[count++] = (test_entry)TEST_ENTRY(test_fd_detects_a_wrong_gradient);
    for (int i = 0; i < n; i++)
        tests[count++] = (test_entry){cases[i].name, test_fd_case, &cases[i]};
    return test_main(argc, argv, tests, count);
}
