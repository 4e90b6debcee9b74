// 2-D convolutions on NHWC bf16 tensors, f32 accumulation on tensor cores, two ways:
//   - cuDNN (its legacy C API) where both channel counts are multiples of 8. A plan per shape,
//     kept for the run, holds for each direction (forward, backward data, backward filter),
//     chosen at its first use: a convolution descriptor with the math type of the algorithm
//     picked from cuDNN's heuristics (the best deterministic one whose workspace, by cuDNN's size
//     query for that algorithm and math type, is at most MAX_ALGO_WORKSPACE) and that workspace.
//     A direction without such an algorithm takes the implicit GEMM for that shape; one whose
//     cuDNN call fails (at its first run or a later one) does from then on, with a warning on
//     stderr: never fatal. LDMC_CONV_LOG=1 prints every plan to stderr as it is made.
//     Asymmetric padding (the VAE's downsampling pads (0, 1, 0, 1)) is an explicit zero-padded
//     copy, since cuDNN pads symmetrically; backward data and filter produce bf16 (the legacy API
//     keeps one data type per call), added into the f32 gradients;
//   - otherwise (the 3- and 4-channel ends of the VAE and the UNet, cuDNN unable to start, a
//     build without it) an implicit GEMM of our own: rows of im2col in the workspace times the
//     weights through cuBLAS, in chunks of rows; backward multiplies back and gathers the columns
//     into dx in a fixed order, and accumulates dw in f32 straight from the GEMM. Its indices are
//     64-bit.
// A batch whose input (padded) or output has 2^31 elements or more, beyond cuDNN's int32
// indexing, runs as the fewest near-equal slices along N that fit, one call each.
// The bias gradient sums the f32 dy. CPU twin in src/ops/cpu/conv2d.inc. Tested by
// tests/test_cuda.c (test_cuda_simt runs the implicit GEMM's kernels on the CPU, in many chunks
// and slices too, through ldmc_cuda_set_chunk_bytes and ldmc_cuda_set_conv_slice_elements).
#include "kernels/common.cuh"
#include "kernels/cublas.cuh"
#include "kernels/ldmc_cuda.h"

// ---- the implicit GEMM --------------------------------------------------------------------------
// Output pixel m = (n, ho, wo) and column k = (i, j, c) (the weights' (kh, kw, C) order): the
// input value under tap (i, j) of the window, zero in the padding.

// cols (rows, K) for output pixels [m0, m0 + rows)
__global__ static void im2col_kernel(uint16_t *cols, const uint16_t *x, ldmc_conv_geom g,
                                     int64_t m0, int64_t total) {
    const int K = g.kh * g.kw * g.C;
    GRID_STRIDE(e, total) {
        int64_t m = m0 + e / K;
        int k = (int)(e % K), c = k % g.C, j = k / g.C % g.kw, i = k / g.C / g.kw;
        int wo = (int)(m % g.Wo), ho = (int)(m / g.Wo % g.Ho);
        int64_t n = m / ((int64_t)g.Wo * g.Ho);
        int h = ho * g.stride - g.pad_top + i, w = wo * g.stride - g.pad_left + j;
        cols[e] = h >= 0 && h < g.H && w >= 0 && w < g.W ? x[((n * g.H + h) * g.W + w) * g.C + c]
                                                         : (uint16_t)0;
    }
}

// dx += the columns' gradients of output pixels [m0, m0 + rows) that read each input value: one
// thread per input value, the taps (i, j) in order.
__global__ static void col2im_kernel(float *dx, const float *dcols, ldmc_conv_geom g, int64_t m0,
                                     int64_t rows, int64_t total) {
    const int K = g.kh * g.kw * g.C;
    GRID_STRIDE(e, total) {
        int c = (int)(e % g.C), w = (int)(e / g.C % g.W), h = (int)(e / g.C / g.W % g.H);
        int64_t n = e / ((int64_t)g.C * g.W * g.H);
        float acc = 0;
        for (int i = 0; i < g.kh; i++) {
            int hs = h + g.pad_top - i;
            if (hs < 0 || hs % g.stride) continue;
            int ho = hs / g.stride;
            if (ho >= g.Ho) continue;
            for (int j = 0; j < g.kw; j++) {
                int ws = w + g.pad_left - j;
                if (ws < 0 || ws % g.stride) continue;
                int wo = ws / g.stride;
                if (wo >= g.Wo) continue;
                int64_t r = (n * g.Ho + ho) * g.Wo + wo - m0;
                if (r >= 0 && r < rows) acc += dcols[r * K + (i * g.kw + j) * g.C + c];
            }
        }
        dx[e] += acc;
    }
}

// The bytes a chunk's temporaries may take (ldmc_cuda_set_chunk_bytes).
static size_t gemm_chunk_bytes = LDMC_CUDA_CHUNK_MAX;

void conv_set_chunk_bytes(size_t bytes) { gemm_chunk_bytes = bytes ? bytes : LDMC_CUDA_CHUNK_MAX; }

// Rows of output pixels per chunk: the columns (bf16) and, in backward, their f32 gradients and
// the rows of dy as bf16, within gemm_chunk_bytes.
static int64_t gemm_chunk_rows(const ldmc_conv_geom *g, bool backward) {
    const int64_t K = (int64_t)g->kh * g->kw * g->C, M = (int64_t)g->N * g->Ho * g->Wo;
    const int64_t row_bytes = backward ? K * (2 + 4) + (int64_t)g->O * 2 : K * 2;
    int64_t rows = (int64_t)(gemm_chunk_bytes / (size_t)row_bytes);
    if (rows < 1) rows = 1;
    return rows < M ? rows : M;
}

static void gemm_forward(uint16_t *y, const uint16_t *x, const uint16_t *w,
                         const ldmc_conv_geom *g) {
    const int64_t K = (int64_t)g->kh * g->kw * g->C, M = (int64_t)g->N * g->Ho * g->Wo;
    const int64_t chunk = gemm_chunk_rows(g, false);
    uint16_t *cols = (uint16_t *)ldmc_cuda_workspace((size_t)chunk * K * 2);
    for (int64_t m0 = 0; m0 < M; m0 += chunk) {
        int64_t rows = M - m0 < chunk ? M - m0 : chunk;
        LAUNCH_1D(im2col_kernel, rows * K, cols, x, *g, m0, rows * K);
        // y[m0 .. m0 + rows) (rows, O) = cols (rows, K) w^T (w: (O, K))
        gemm_rm(false, true, rows, g->O, K, cols, K, 0, w, K, 0, 0.0f, y + m0 * g->O, false, g->O,
                0, 1);
    }
}

static void gemm_backward(float *dx, float *dw, const float *dy, const uint16_t *x,
                          const uint16_t *w, const ldmc_conv_geom *g) {
    const int64_t K = (int64_t)g->kh * g->kw * g->C, M = (int64_t)g->N * g->Ho * g->Wo;
    const int64_t chunk = gemm_chunk_rows(g, true), n_in = (int64_t)g->N * g->H * g->W * g->C;
    // [the chunk's rows of dy as bf16 | its columns (bf16) | their gradients (f32)]
    size_t dy_bytes = align256((size_t)chunk * g->O * 2),
           cols_bytes = align256((size_t)chunk * K * 2);
    char *ws = (char *)ldmc_cuda_workspace(dy_bytes + cols_bytes + (size_t)chunk * K * 4);
    uint16_t *dy_rows = (uint16_t *)ws, *cols = (uint16_t *)(ws + dy_bytes);
    float *dcols = (float *)(ws + dy_bytes + cols_bytes);
    for (int64_t m0 = 0; m0 < M; m0 += chunk) {
        int64_t rows = M - m0 < chunk ? M - m0 : chunk;
        ldmc_cuda_f32_to_bf16(dy_rows, dy + m0 * g->O, rows * g->O);
        if (dw) { // dw (O, K) += dy^T (O, rows) cols (rows, K)
            LAUNCH_1D(im2col_kernel, rows * K, cols, x, *g, m0, rows * K);
            gemm_rm(true, false, g->O, K, rows, dy_rows, g->O, 0, cols, K, 0, 1.0f, dw, true, K, 0,
                    1);
        }
        if (dx) { // dcols (rows, K) = dy (rows, O) w (O, K), gathered into dx
            gemm_rm(false, false, rows, K, g->O, dy_rows, g->O, 0, w, K, 0, 0.0f, dcols, true, K, 0,
                    1);
            LAUNCH_1D(col2im_kernel, n_in, dx, dcols, *g, m0, rows, n_in);
        }
    }
}

// ---- batches cut along N ------------------------------------------------------------------------
// cuDNN's tensor descriptors index with int32: the input a call sees (the padded copy, with
// asymmetric padding) and its output hold at most slice_elements values (2^31 - 1; tests lower
// it through ldmc_cuda_set_conv_slice_elements). A larger batch runs as the fewest near-equal
// slices of N that fit, each its own call; the implicit GEMM, whose indices are 64-bit, takes the
// same slices.
static int64_t slice_elements = INT32_MAX;

extern "C" void ldmc_cuda_set_conv_slice_elements(int64_t max_elements) {
    slice_elements = max_elements > 0 && max_elements < INT32_MAX ? max_elements : INT32_MAX;
}

static bool asymmetric_padding(const ldmc_conv_geom *g) {
    return g->pad_top != g->pad_bottom || g->pad_left != g->pad_right;
}

// The most values one sample puts in a tensor of a cuDNN call.
static int64_t sample_elements(const ldmc_conv_geom *g) {
    const bool pad = asymmetric_padding(g);
    const int64_t in = (int64_t)(pad ? g->H + g->pad_top + g->pad_bottom : g->H) *
                       (pad ? g->W + g->pad_left + g->pad_right : g->W) * g->C,
                  out = (int64_t)g->Ho * g->Wo * g->O;
    return in > out ? in : out;
}

// The fewest slices of N whose tensors fit; 1 when even one sample does not (the plan then takes
// the implicit GEMM).
static int slice_count(const ldmc_conv_geom *g) {
    const int64_t per = sample_elements(g), fit = per > 0 ? slice_elements / per : g->N;
    if (fit < 1 || fit >= g->N) return 1;
    return (int)((g->N + fit - 1) / fit);
}

// Slice s of `count`: the first N % count slices hold one sample more. *first: its first sample.
static ldmc_conv_geom slice_geom(const ldmc_conv_geom *g, int count, int s, int64_t *first) {
    const int base = g->N / count, extra = g->N % count;
    ldmc_conv_geom slice = *g;
    slice.N = base + (s < extra);
    *first = (int64_t)s * base + (s < extra ? s : extra);
    return slice;
}

#ifdef LDMC_HAVE_CUDNN
#include <cudnn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

// ---- cuDNN plans --------------------------------------------------------------------------------

// The most workspace an algorithm may ask for: the activation arena holds the rest of the memory.
static const size_t MAX_ALGO_WORKSPACE = LDMC_CUDA_CUDNN_WORKSPACE_MAX;

enum conv_direction { FORWARD, BACKWARD_DATA, BACKWARD_FILTER, DIRECTIONS };
static const char *const DIRECTION_NAMES[DIRECTIONS] = {"forward", "backward data",
                                                        "backward filter"};

enum algo_state { UNCHOSEN, CUDNN, GEMM };

// One direction of a plan.
typedef struct conv_algo {
    algo_state state;
    bool logged;
    cudnnConvolutionDescriptor_t conv; // this direction's, set to the algorithm's math type
    int algo;                          // a cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t
    cudnnMathType_t math;
    size_t workspace; // cuDNN's size query for algo and math
    bool deterministic;
    char reason[128]; // why the implicit GEMM
    bool failed;      // a cuDNN call failed (not merely no algorithm): said even without the log
} conv_algo;

// Descriptors and algorithms of one geometry, kept for the run (a model has a few dozen).
typedef struct conv_plan {
    ldmc_conv_geom g;  // N: the slice's, for a batch cut along N
    int batch;         // the batch's N when g was first met as a slice of it, else 0
    bool explicit_pad; // asymmetric padding: convolve a padded copy with zero padding
    int Hp, Wp;        // the input's size as cuDNN sees it
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    conv_algo dir[DIRECTIONS];
} conv_plan;

// Every (geometry, batch) met: bucketed training meets a few dozen per bucket, so the list grows.
static conv_plan *plans;
static int n_plans, cap_plans;

static void set_reason(conv_algo *a, const char *fmt, ...) LDMC_PRINTF(2, 3);
static void set_reason(conv_algo *a, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->reason, sizeof a->reason, fmt, ap);
    va_end(ap);
}

// cuDNN's handle (runtime.cu's, on the compute stream); NULL when cuDNN cannot start: every plan
// then takes the implicit GEMM, said once on stderr.
static const char *const NO_HANDLE = "cuDNN cannot start: cudnnCreate or cudnnSetStream failed";
static cudnnHandle_t cudnn(void) {
    static bool said;
    cudnnHandle_t h = (cudnnHandle_t)ldmc_cuda_cudnn();
    if (!h && !said) {
        said = true;
        fprintf(stderr, "warning: %s: convolutions take the implicit GEMM\n", NO_HANDLE);
    }
    return h;
}

static bool conv_log_enabled(void) {
    static int on = -1;
    if (on < 0) {
        const char *s = getenv("LDMC_CONV_LOG");
        on = s && *s && strcmp(s, "0") != 0;
    }
    return on;
}

static const char *algo_name(int direction, int algo) {
    static const char *const fwd[] = {
        "IMPLICIT_GEMM", "IMPLICIT_PRECOMP_GEMM", "GEMM", "DIRECT", "FFT", "FFT_TILING",
        "WINOGRAD",      "WINOGRAD_NONFUSED"};
    static const char *const data[] = {"ALGO_0",     "ALGO_1",   "FFT",
                                       "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED"};
    static const char *const filter[] = {
        "ALGO_0", "ALGO_1", "FFT", "ALGO_3", "WINOGRAD", "WINOGRAD_NONFUSED", "FFT_TILING"};
    const char *const *names = direction == FORWARD         ? fwd
                               : direction == BACKWARD_DATA ? data
                                                            : filter;
    const int count = direction == FORWARD         ? (int)(sizeof fwd / sizeof *fwd)
                      : direction == BACKWARD_DATA ? (int)(sizeof data / sizeof *data)
                                                   : (int)(sizeof filter / sizeof *filter);
    return algo >= 0 && algo < count ? names[algo] : "unknown";
}

static const char *math_name(cudnnMathType_t m) {
    switch (m) {
    case CUDNN_DEFAULT_MATH: return "default";
    case CUDNN_TENSOR_OP_MATH: return "tensor op";
    case CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION: return "tensor op, conversion allowed";
    case CUDNN_FMA_MATH: return "FMA";
    }
    return "unknown";
}

// One line for direction d of a plan: the shape, then the algorithm or why the implicit GEMM.
static void log_direction(const conv_plan *p, int d, const char *prefix) {
    const ldmc_conv_geom *g = &p->g;
    const conv_algo *a = &p->dir[d];
    char slice[48] = "";
    if (p->batch) snprintf(slice, sizeof slice, " (a slice of N = %d)", p->batch);
    fprintf(stderr,
            "%sconv plan: N,H,W,C %d,%d,%d,%d%s -> %d, kernel %dx%d, stride %d, pads t,b,l,r "
            "%d,%d,%d,%d, %s: ",
            prefix, g->N, g->H, g->W, g->C, slice, g->O, g->kh, g->kw, g->stride, g->pad_top,
            g->pad_bottom, g->pad_left, g->pad_right, DIRECTION_NAMES[d]);
    if (a->state == CUDNN)
        fprintf(stderr, "cuDNN algorithm %d (%s), math %s, workspace %zu bytes, deterministic %s\n",
                a->algo, algo_name(d, a->algo), math_name(a->math), a->workspace,
                a->deterministic ? "yes" : "no");
    else
        fprintf(stderr, "implicit GEMM (%s)\n", a->reason);
}

// A cuDNN call while making a plan: its failure leaves the plan to the implicit GEMM, with the
// call's name and status in `why`.
#define CUDNN_TRY(fn, ...)                                                                         \
    do {                                                                                           \
        cudnnStatus_t s_ = fn(__VA_ARGS__);                                                        \
        if (s_ != CUDNN_STATUS_SUCCESS) {                                                          \
            snprintf(why, sizeof why, "%s failed: %s", #fn, cudnnGetErrorString(s_));              \
            *failed = true;                                                                        \
            return why;                                                                            \
        }                                                                                          \
    } while (0)

// The plan's descriptors; NULL, or why cuDNN cannot take the shape (*failed: a call failed).
static const char *make_descriptors(conv_plan *p, bool *failed) {
    static char why[128];
    const ldmc_conv_geom *g = &p->g;
    // tensor-core NHWC kernels want channel counts that are multiples of 8
    if (g->C % 8 || g->O % 8) {
        snprintf(why, sizeof why, "channels %d -> %d, not multiples of 8", g->C, g->O);
        return why;
    }
    if ((int64_t)g->N * sample_elements(g) > INT32_MAX) { // one sample is too large to slice
        snprintf(why, sizeof why, "one sample's tensor holds %lld values, past cuDNN's int32",
                 (long long)sample_elements(g));
        return why;
    }
    cudnnHandle_t h = cudnn();
    if (!h) return NO_HANDLE;
    const int ph = p->explicit_pad ? 0 : g->pad_top, pw = p->explicit_pad ? 0 : g->pad_left;
    CUDNN_TRY(cudnnCreateTensorDescriptor, &p->x);
    CUDNN_TRY(cudnnCreateTensorDescriptor, &p->y);
    CUDNN_TRY(cudnnCreateFilterDescriptor, &p->w);
    CUDNN_TRY(cudnnSetTensor4dDescriptor, p->x, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, g->N, g->C,
              p->Hp, p->Wp);
    CUDNN_TRY(cudnnSetTensor4dDescriptor, p->y, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, g->N, g->O,
              g->Ho, g->Wo);
    // ldmc's weights (O, kh, kw, C) are cuDNN's KRSC, the NHWC filter layout
    CUDNN_TRY(cudnnSetFilter4dDescriptor, p->w, CUDNN_DATA_BFLOAT16, CUDNN_TENSOR_NHWC, g->O, g->C,
              g->kh, g->kw);
    for (int d = 0; d < DIRECTIONS; d++) {
        CUDNN_TRY(cudnnCreateConvolutionDescriptor, &p->dir[d].conv);
        CUDNN_TRY(cudnnSetConvolution2dDescriptor, p->dir[d].conv, ph, pw, g->stride, g->stride, 1,
                  1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT);
        // the heuristics' search space; each choice then sets its own math type
        CUDNN_TRY(cudnnSetConvolutionMathType, p->dir[d].conv, CUDNN_TENSOR_OP_MATH);
    }
    return nullptr;
}

static bool same_geom(const ldmc_conv_geom *a, const ldmc_conv_geom *b) {
    return a->N == b->N && a->H == b->H && a->W == b->W && a->C == b->C && a->O == b->O &&
           a->kh == b->kh && a->kw == b->kw && a->stride == b->stride && a->pad_top == b->pad_top &&
           a->pad_bottom == b->pad_bottom && a->pad_left == b->pad_left &&
           a->pad_right == b->pad_right;
}

// The plan of geometry g (a slice of a batch of `batch` samples, or batch 0), made on first
// sight; its directions are chosen at their first use.
static conv_plan *plan_for(const ldmc_conv_geom *g, int batch) {
    for (int i = n_plans - 1; i >= 0; i--) // the newest first: a step meets its shapes in turn
        if (same_geom(&plans[i].g, g)) return &plans[i];
    if (n_plans == cap_plans) {
        cap_plans = cap_plans ? 2 * cap_plans : 64;
        plans = (conv_plan *)realloc(plans, (size_t)cap_plans * sizeof *plans);
        if (!plans) LDMC_FATAL("out of memory for %d convolution plans", cap_plans);
    }
    conv_plan *p = &plans[n_plans++];
    *p = conv_plan{};
    p->g = *g;
    p->batch = batch;
    p->explicit_pad = asymmetric_padding(g);
    p->Hp = p->explicit_pad ? g->H + g->pad_top + g->pad_bottom : g->H;
    p->Wp = p->explicit_pad ? g->W + g->pad_left + g->pad_right : g->W;
    bool failed = false;
    const char *reason = make_descriptors(p, &failed);
    for (int d = 0; reason && d < DIRECTIONS; d++) {
        p->dir[d].state = GEMM;
        p->dir[d].failed = failed;
        set_reason(&p->dir[d], "%s", reason);
    }
    return p;
}

// An algorithm of cuDNN's heuristics, whatever its direction.
typedef struct algo_candidate {
    int algo;
    cudnnStatus_t status;
    cudnnDeterminism_t determinism;
    cudnnMathType_t math;
    size_t memory;
} algo_candidate;

enum { MAX_CANDIDATES = 32 };

template <typename Perf> static void candidates_of(const Perf *perf, int n, algo_candidate *out) {
    for (int i = 0; i < n; i++)
        out[i] = algo_candidate{(int)perf[i].algo, perf[i].status, perf[i].determinism,
                                perf[i].mathType, perf[i].memory};
}

// cuDNN's heuristics for direction d, best first, into out[0 .. *n); *call names the query.
static cudnnStatus_t heuristics(cudnnHandle_t h, const conv_plan *p, int d, algo_candidate *out,
                                int *n, const char **call) {
    const cudnnConvolutionDescriptor_t c = p->dir[d].conv;
    cudnnStatus_t s;
    *n = 0;
    if (d == FORWARD) {
        cudnnConvolutionFwdAlgoPerf_t perf[MAX_CANDIDATES];
        *call = "cudnnGetConvolutionForwardAlgorithm_v7";
        s = cudnnGetConvolutionForwardAlgorithm_v7(h, p->x, p->w, c, p->y, MAX_CANDIDATES, n, perf);
        if (s == CUDNN_STATUS_SUCCESS) candidates_of(perf, *n, out);
    } else if (d == BACKWARD_DATA) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[MAX_CANDIDATES];
        *call = "cudnnGetConvolutionBackwardDataAlgorithm_v7";
        s = cudnnGetConvolutionBackwardDataAlgorithm_v7(h, p->w, p->y, c, p->x, MAX_CANDIDATES, n,
                                                        perf);
        if (s == CUDNN_STATUS_SUCCESS) candidates_of(perf, *n, out);
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[MAX_CANDIDATES];
        *call = "cudnnGetConvolutionBackwardFilterAlgorithm_v7";
        s = cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p->x, p->y, c, p->w, MAX_CANDIDATES, n,
                                                          perf);
        if (s == CUDNN_STATUS_SUCCESS) candidates_of(perf, *n, out);
    }
    if (*n > MAX_CANDIDATES) *n = MAX_CANDIDATES;
    return s;
}

// The workspace algorithm `algo` of direction d needs with the descriptor's math type.
static cudnnStatus_t workspace_of(cudnnHandle_t h, const conv_plan *p, int d, int algo,
                                  size_t *bytes) {
    const cudnnConvolutionDescriptor_t c = p->dir[d].conv;
    if (d == FORWARD)
        return cudnnGetConvolutionForwardWorkspaceSize(h, p->x, p->w, c, p->y,
                                                       (cudnnConvolutionFwdAlgo_t)algo, bytes);
    if (d == BACKWARD_DATA)
        return cudnnGetConvolutionBackwardDataWorkspaceSize(
            h, p->w, p->y, c, p->x, (cudnnConvolutionBwdDataAlgo_t)algo, bytes);
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(
        h, p->x, p->y, c, p->w, (cudnnConvolutionBwdFilterAlgo_t)algo, bytes);
}

// Direction d's algorithm: the first of cuDNN's heuristics (best first) that works, is
// deterministic (the same bits every run, as every other kernel here), and needs at most
// MAX_ALGO_WORKSPACE by the size query, asked once the descriptor has the candidate's math type.
// With none, the implicit GEMM.
static void choose(conv_plan *p, int d) {
    conv_algo *a = &p->dir[d];
    cudnnHandle_t h = cudnn();
    algo_candidate c[MAX_CANDIDATES];
    int n = 0, working = 0;
    const char *call = "";
    a->state = GEMM;
    cudnnStatus_t s = heuristics(h, p, d, c, &n, &call);
    if (s != CUDNN_STATUS_SUCCESS) {
        set_reason(a, "%s failed: %s", call, cudnnGetErrorString(s));
        a->failed = true;
        return;
    }
    for (int k = 0; k < n; k++) {
        if (c[k].status != CUDNN_STATUS_SUCCESS) continue;
        working++;
        size_t bytes = 0;
        if (c[k].determinism != CUDNN_DETERMINISTIC || c[k].memory > MAX_ALGO_WORKSPACE ||
            cudnnSetConvolutionMathType(a->conv, c[k].math) != CUDNN_STATUS_SUCCESS ||
            workspace_of(h, p, d, c[k].algo, &bytes) != CUDNN_STATUS_SUCCESS ||
            bytes > MAX_ALGO_WORKSPACE)
            continue;
        a->state = CUDNN;
        a->algo = c[k].algo;
        a->math = c[k].math;
        a->workspace = bytes;
        a->deterministic = c[k].determinism == CUDNN_DETERMINISTIC;
        return;
    }
    set_reason(a, "none of cuDNN's %d working algorithms is deterministic within %zu MiB", working,
               MAX_ALGO_WORKSPACE >> 20);
}

// Whether direction d of the plan runs on cuDNN: chosen, and logged, at its first use (a failed
// cuDNN call is said whether or not LDMC_CONV_LOG is set).
static bool use_cudnn(conv_plan *p, int d) {
    conv_algo *a = &p->dir[d];
    if (a->state == UNCHOSEN) choose(p, d);
    if (!a->logged) {
        a->logged = true;
        if (conv_log_enabled() || a->failed) log_direction(p, d, a->failed ? "warning: " : "");
    }
    return a->state == CUDNN;
}

// A failed cuDNN call: direction d of this shape takes the implicit GEMM from now on, said once
// on stderr whether or not LDMC_CONV_LOG is set.
static void fall_back(conv_plan *p, int d, const char *call, cudnnStatus_t s) {
    (void)cudaGetLastError(); // a launch error cuDNN left must not fail our next launch
    conv_algo *a = &p->dir[d];
    a->state = GEMM;
    a->failed = true;
    set_reason(a, "%s failed: %s; from now on", call, cudnnGetErrorString(s));
    log_direction(p, d, "warning: ");
}

// dst (= or +=, beta 0 or 1) src.
__global__ static void add_bf16_to_f32_kernel(float *dst, float beta, const uint16_t *src,
                                              int64_t n) {
    GRID_STRIDE(i, n) { dst[i] = grad_add(beta, dst + i, bf16_load(src, i)); }
}

// xp (N, Hp, Wp, C) = x placed at (pad_top, pad_left), zeros around it.
__global__ static void pad_kernel(uint16_t *xp, const uint16_t *x, int H, int W, int C, int Hp,
                                  int Wp, int top, int left, int64_t total) {
    GRID_STRIDE(i, total) {
        int c = (int)(i % C);
        int64_t r = i / C;
        int w = (int)(r % Wp) - left, h = (int)(r / Wp % Hp) - top;
        int64_t n = r / ((int64_t)Wp * Hp);
        xp[i] = h >= 0 && h < H && w >= 0 && w < W ? x[((n * H + h) * W + w) * C + c] : (uint16_t)0;
    }
}

// dx (N, H, W, C) (= or +=, beta 0 or 1) the window of dxp (N, Hp, Wp, C) at (top, left), as f32.
__global__ static void crop_add_kernel(float *dx, float beta, const uint16_t *dxp, int H, int W,
                                       int C, int Hp, int Wp, int top, int left, int64_t total) {
    GRID_STRIDE(i, total) {
        int c = (int)(i % C);
        int64_t r = i / C;
        int w = (int)(r % W), h = (int)(r / W % H);
        int64_t n = r / ((int64_t)W * H);
        dx[i] =
            grad_add(beta, dx + i, bf16_load(dxp, ((n * Hp + h + top) * Wp + w + left) * C + c));
    }
}

// y = conv(x, w) through cuDNN where the plan's forward runs there; false where it does not (or
// has just failed), for the implicit GEMM to do.
static bool cudnn_forward(conv_plan *p, uint16_t *y, const uint16_t *x, const uint16_t *w) {
    if (!use_cudnn(p, FORWARD)) return false;
    const ldmc_conv_geom *g = &p->g;
    const conv_algo *a = &p->dir[FORWARD];
    int64_t padded = (int64_t)g->N * p->Hp * p->Wp * g->C;
    size_t pad_bytes = p->explicit_pad ? align256((size_t)padded * 2) : 0;
    char *ws = (char *)ldmc_cuda_workspace(pad_bytes + a->workspace);
    const uint16_t *xin = x;
    if (p->explicit_pad) {
        LAUNCH_1D(pad_kernel, padded, (uint16_t *)ws, x, g->H, g->W, g->C, p->Hp, p->Wp, g->pad_top,
                  g->pad_left, padded);
        xin = (const uint16_t *)ws;
    }
    const float alpha = 1.0f, beta = 0.0f;
    cudnnStatus_t s = cudnnConvolutionForward(cudnn(), &alpha, p->x, xin, p->w, w, a->conv,
                                              (cudnnConvolutionFwdAlgo_t)a->algo, ws + pad_bytes,
                                              a->workspace, &beta, p->y, y);
    if (s == CUDNN_STATUS_SUCCESS) return true;
    fall_back(p, FORWARD, "cudnnConvolutionForward", s);
    return false;
}

// The gradients *dx and *dw (either may be NULL) through cuDNN in the directions the plan runs
// there: each one done is set to NULL, the rest left for the implicit GEMM. dx_beta 0: *dx is
// written, not added to.
static void cudnn_backward(conv_plan *p, float **dx, float dx_beta, float **dw, const float *dy,
                           const uint16_t *x, const uint16_t *w) {
    const bool data = *dx && use_cudnn(p, BACKWARD_DATA);
    const bool filter = *dw && use_cudnn(p, BACKWARD_FILTER);
    if (!data && !filter) return;
    const ldmc_conv_geom *g = &p->g;
    const conv_algo *ad = &p->dir[BACKWARD_DATA], *af = &p->dir[BACKWARD_FILTER];
    int64_t n_out = (int64_t)g->N * g->Ho * g->Wo * g->O,
            padded = (int64_t)g->N * p->Hp * p->Wp * g->C,
            n_w = (int64_t)g->O * g->kh * g->kw * g->C;
    size_t data_ws = data ? ad->workspace : 0, filter_ws = filter ? af->workspace : 0;
    // [dy as bf16 | dx as bf16 | the padded x, with asymmetric padding | dw as bf16 | cuDNN's]
    size_t dy_bytes = align256((size_t)n_out * 2),
           dx_bytes = data ? align256((size_t)padded * 2) : 0,
           xp_bytes = filter && p->explicit_pad ? align256((size_t)padded * 2) : 0,
           dw_bytes = filter ? align256((size_t)n_w * 2) : 0,
           algo_ws = data_ws > filter_ws ? data_ws : filter_ws;
    char *ws = (char *)ldmc_cuda_workspace(dy_bytes + dx_bytes + xp_bytes + dw_bytes + algo_ws);
    uint16_t *dyb = (uint16_t *)ws, *dxb = (uint16_t *)(ws + dy_bytes),
             *xp = (uint16_t *)(ws + dy_bytes + dx_bytes),
             *dwb = (uint16_t *)(ws + dy_bytes + dx_bytes + xp_bytes);
    void *algo_mem = ws + dy_bytes + dx_bytes + xp_bytes + dw_bytes;
    ldmc_cuda_f32_to_bf16(dyb, dy, n_out);
    const float alpha = 1.0f, beta = 0.0f;
    if (data) {
        cudnnStatus_t s = cudnnConvolutionBackwardData(
            cudnn(), &alpha, p->w, w, p->y, dyb, ad->conv, (cudnnConvolutionBwdDataAlgo_t)ad->algo,
            algo_mem, ad->workspace, &beta, p->x, dxb);
        if (s == CUDNN_STATUS_SUCCESS) {
            int64_t n_in = (int64_t)g->N * g->H * g->W * g->C;
            if (p->explicit_pad)
                LAUNCH_1D(crop_add_kernel, n_in, *dx, dx_beta, dxb, g->H, g->W, g->C, p->Hp, p->Wp,
                          g->pad_top, g->pad_left, n_in);
            else
                LAUNCH_1D(add_bf16_to_f32_kernel, n_in, *dx, dx_beta, dxb, n_in);
            *dx = nullptr;
        } else {
            fall_back(p, BACKWARD_DATA, "cudnnConvolutionBackwardData", s);
        }
    }
    if (filter) {
        const uint16_t *xin = x;
        if (p->explicit_pad) {
            LAUNCH_1D(pad_kernel, padded, xp, x, g->H, g->W, g->C, p->Hp, p->Wp, g->pad_top,
                      g->pad_left, padded);
            xin = xp;
        }
        cudnnStatus_t s = cudnnConvolutionBackwardFilter(
            cudnn(), &alpha, p->x, xin, p->y, dyb, af->conv,
            (cudnnConvolutionBwdFilterAlgo_t)af->algo, algo_mem, af->workspace, &beta, p->w, dwb);
        if (s == CUDNN_STATUS_SUCCESS) {
            LAUNCH_1D(add_bf16_to_f32_kernel, n_w, *dw, 1.0f, dwb, n_w);
            *dw = nullptr;
        } else {
            fall_back(p, BACKWARD_FILTER, "cudnnConvolutionBackwardFilter", s);
        }
    }
}

#endif

// ---- the launchers ------------------------------------------------------------------------------

// One slice of the batch (all of it when uncut); batch: the batch's N when g is a slice, else 0.
static void forward_slice(uint16_t *y, const uint16_t *x, const uint16_t *w,
                          const ldmc_conv_geom *g, int batch) {
#ifdef LDMC_HAVE_CUDNN
    if (cudnn_forward(plan_for(g, batch), y, x, w)) return;
#else
    (void)batch;
#endif
    gemm_forward(y, x, w, g);
}

static void backward_slice(float *dx, float dx_beta, float *dw, const float *dy, const uint16_t *x,
                           const uint16_t *w, const ldmc_conv_geom *g, int batch) {
#ifdef LDMC_HAVE_CUDNN
    cudnn_backward(plan_for(g, batch), &dx, dx_beta, &dw, dy, x, w);
#else
    (void)batch;
#endif
    // the implicit GEMM's taps add up across chunks of rows: a fresh gradient starts at zero
    if (dx && dx_beta == 0.0f) ldmc_cuda_zero(dx, (size_t)g->N * g->H * g->W * g->C * sizeof *dx);
    if (dx || dw) gemm_backward(dx, dw, dy, x, w, g);
}

extern "C" void ldmc_cuda_conv2d_forward(uint16_t *y, const uint16_t *x, const uint16_t *w,
                                         const uint16_t *b, const ldmc_conv_geom *g) {
    const int slices = slice_count(g);
    const int64_t x_sample = (int64_t)g->H * g->W * g->C, y_sample = (int64_t)g->Ho * g->Wo * g->O;
    for (int s = 0; s < slices; s++) {
        int64_t n0;
        ldmc_conv_geom slice = slice_geom(g, slices, s, &n0);
        forward_slice(y + n0 * y_sample, x + n0 * x_sample, w, &slice, slices > 1 ? g->N : 0);
    }
    if (b) ldmc_cuda_add_bias(y, b, (int64_t)g->N * g->Ho * g->Wo, g->O);
}

extern "C" void ldmc_cuda_conv2d_backward(float *dx, float dx_beta, float *dw, float *db,
                                          const float *dy, const uint16_t *x, const uint16_t *w,
                                          const ldmc_conv_geom *g) {
    if (db)
        ldmc_cuda_column_sums(db, 1.0f, dy, (int64_t)g->N * g->Ho * g->Wo, g->O); // workspace first
    if (!dx && !dw) return;
    const int slices = slice_count(g);
    const int64_t x_sample = (int64_t)g->H * g->W * g->C, y_sample = (int64_t)g->Ho * g->Wo * g->O;
    for (int s = 0; s < slices; s++) { // dw sums the slices in order
        int64_t n0;
        ldmc_conv_geom slice = slice_geom(g, slices, s, &n0);
        backward_slice(dx ? dx + n0 * x_sample : nullptr, dx_beta, dw, dy + n0 * y_sample,
                       x + n0 * x_sample, w, &slice, slices > 1 ? g->N : 0);
    }
}
