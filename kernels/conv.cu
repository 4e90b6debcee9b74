// 2-D convolutions on NHWC bf16 tensors, f32 accumulation on tensor cores, two ways:
//   - cuDNN (its C API) where both channel counts are multiples of 8 and cuDNN has an algorithm:
//     asymmetric padding (the VAE's downsampling pads (0, 1, 0, 1)) is an explicit zero-padded
//     copy, since cuDNN pads symmetrically; backward data and filter produce bf16 (the legacy API
//     keeps one data type per call), added into the f32 gradients;
//   - otherwise (the 3- and 4-channel ends of the VAE and the UNet, a build without cuDNN) an
//     implicit GEMM of our own: rows of im2col in the workspace times the weights through cuBLAS,
//     in chunks of rows; backward multiplies back and gathers the columns into dx in a fixed
//     order, and accumulates dw in f32 straight from the GEMM.
// The bias gradient sums the f32 dy. CPU twin in src/ops/cpu/conv2d.inc. Tested by
// tests/test_cuda.c (test_cuda_simt runs the implicit GEMM's kernels on the CPU).
#include "kernels/common.cuh"
#include "kernels/cublas.cuh"
#include "kernels/ldmc_cuda.h"

// ---- the implicit GEMM ----------------------------------------------------------------------------
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
        cols[e] = h >= 0 && h < g.H && w >= 0 && w < g.W
                      ? x[((n * g.H + h) * g.W + w) * g.C + c]
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

// Rows of output pixels per chunk: the columns (bf16) and, in backward, their f32 gradients
// within 512 MiB.
static int64_t gemm_chunk_rows(const ldmc_conv_geom *g, bool backward) {
    const int64_t K = (int64_t)g->kh * g->kw * g->C, M = (int64_t)g->N * g->Ho * g->Wo;
    int64_t rows = ((int64_t)512 << 20) / (K * (backward ? 6 : 2));
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
    // [dy as bf16 | the chunk's columns (bf16) | their gradients (f32)]
    size_t dy_bytes = align256((size_t)M * g->O * 2), cols_bytes = align256((size_t)chunk * K * 2);
    char *ws = (char *)ldmc_cuda_workspace(dy_bytes + cols_bytes + (size_t)chunk * K * 4);
    uint16_t *dyb = (uint16_t *)ws, *cols = (uint16_t *)(ws + dy_bytes);
    float *dcols = (float *)(ws + dy_bytes + cols_bytes);
    ldmc_cuda_f32_to_bf16(dyb, dy, M * g->O);
    for (int64_t m0 = 0; m0 < M; m0 += chunk) {
        int64_t rows = M - m0 < chunk ? M - m0 : chunk;
        const uint16_t *dy_rows = dyb + m0 * g->O;
        if (dw) { // dw (O, K) += dy^T (O, rows) cols (rows, K)
            LAUNCH_1D(im2col_kernel, rows * K, cols, x, *g, m0, rows * K);
            gemm_rm(true, false, g->O, K, rows, dy_rows, g->O, 0, cols, K, 0, 1.0f, dw, true, K,
                    0, 1);
        }
        if (dx) { // dcols (rows, K) = dy (rows, O) w (O, K), gathered into dx
            gemm_rm(false, false, rows, K, g->O, dy_rows, g->O, 0, w, K, 0, 0.0f, dcols, true, K,
                    0, 1);
            LAUNCH_1D(col2im_kernel, n_in, dx, dcols, *g, m0, rows, n_in);
        }
    }
}

#ifdef LDMC_HAVE_CUDNN
#include <cudnn.h>

#define CUDNN_CHECK(call)                                                                          \
    do {                                                                                           \
        cudnnStatus_t s_ = (call);                                                                 \
        if (s_ != CUDNN_STATUS_SUCCESS)                                                            \
            ldmc_fatal_at(__FILE__, __LINE__, "cuDNN: %s failed: %s", #call,                       \
                          cudnnGetErrorString(s_));                                                \
    } while (0)

static cudnnHandle_t cudnn(void) {
    static cudnnHandle_t h;
    if (!h) {
        CUDNN_CHECK(cudnnCreate(&h));
        CUDNN_CHECK(cudnnSetStream(h, ldmc_stream()));
    }
    return h;
}

// Descriptors and algorithms of one geometry, kept for the run (a model has a few dozen).
typedef struct conv_plan {
    ldmc_conv_geom g;
    bool usable;       // cuDNN has an algorithm for every direction; else the implicit GEMM
    bool explicit_pad; // asymmetric padding: convolve a padded copy with zero padding
    int Hp, Wp;        // the input's size as cuDNN sees it
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    cudnnConvolutionFwdAlgo_t fwd;
    cudnnConvolutionBwdDataAlgo_t bwd_data;
    cudnnConvolutionBwdFilterAlgo_t bwd_filter;
    size_t fwd_ws, bwd_data_ws, bwd_filter_ws;
} conv_plan;

// Every (geometry, batch) met: bucketed training meets a few dozen per bucket, so the list grows.
static conv_plan *plans;
static int n_plans, cap_plans;
// The most workspace an algorithm may ask for: the activation arena holds the rest of the memory.
static const size_t MAX_ALGO_WORKSPACE = (size_t)1 << 30;

static bool same_geom(const ldmc_conv_geom *a, const ldmc_conv_geom *b) {
    return a->N == b->N && a->H == b->H && a->W == b->W && a->C == b->C && a->O == b->O &&
           a->kh == b->kh && a->kw == b->kw && a->stride == b->stride &&
           a->pad_top == b->pad_top && a->pad_bottom == b->pad_bottom &&
           a->pad_left == b->pad_left && a->pad_right == b->pad_right;
}

// The best algorithm of cuDNN's heuristics that works, is deterministic (the same bits every
// run, as every other kernel here) and needs at most MAX_ALGO_WORKSPACE; failing that, the best
// that works; with none, the plan is not usable.
#define PICK_ALGO(get_fn, perf_t, out_algo, out_ws, ...)                                           \
    do {                                                                                           \
        perf_t perf[16];                                                                           \
        int returned = 0;                                                                          \
        CUDNN_CHECK(get_fn(cudnn(), __VA_ARGS__, 16, &returned, perf));                           \
        int k = 0, first = -1;                                                                     \
        for (; k < returned; k++) {                                                                \
            if (perf[k].status != CUDNN_STATUS_SUCCESS) continue;                                  \
            if (first < 0) first = k;                                                              \
            if (perf[k].determinism == CUDNN_DETERMINISTIC &&                                      \
                perf[k].memory <= MAX_ALGO_WORKSPACE)                                              \
                break;                                                                             \
        }                                                                                          \
        if (k == returned) k = first;                                                              \
        if (k < 0) {                                                                               \
            p->usable = false;                                                                     \
        } else {                                                                                   \
            out_algo = perf[k].algo;                                                               \
            out_ws = perf[k].memory;                                                               \
        }                                                                                          \
    } while (0)

static conv_plan *plan_for(const ldmc_conv_geom *g) {
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
    p->explicit_pad = g->pad_top != g->pad_bottom || g->pad_left != g->pad_right;
    // tensor-core NHWC kernels want channel counts that are multiples of 8
    p->usable = g->C % 8 == 0 && g->O % 8 == 0;
    if (!p->usable) return p;
    int ph = p->explicit_pad ? 0 : g->pad_top, pw = p->explicit_pad ? 0 : g->pad_left;
    p->Hp = p->explicit_pad ? g->H + g->pad_top + g->pad_bottom : g->H;
    p->Wp = p->explicit_pad ? g->W + g->pad_left + g->pad_right : g->W;
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->x));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->y));
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&p->w));
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&p->conv));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, g->N,
                                           g->C, p->Hp, p->Wp));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, g->N,
                                           g->O, g->Ho, g->Wo));
    // ldmc's weights (O, kh, kw, C) are cuDNN's KRSC, the NHWC filter layout
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(p->w, CUDNN_DATA_BFLOAT16, CUDNN_TENSOR_NHWC, g->O,
                                           g->C, g->kh, g->kw));
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(p->conv, ph, pw, g->stride, g->stride, 1, 1,
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv, CUDNN_TENSOR_OP_MATH));
    PICK_ALGO(cudnnGetConvolutionForwardAlgorithm_v7, cudnnConvolutionFwdAlgoPerf_t, p->fwd,
              p->fwd_ws, p->x, p->w, p->conv, p->y);
    PICK_ALGO(cudnnGetConvolutionBackwardDataAlgorithm_v7, cudnnConvolutionBwdDataAlgoPerf_t,
              p->bwd_data, p->bwd_data_ws, p->w, p->y, p->conv, p->x);
    PICK_ALGO(cudnnGetConvolutionBackwardFilterAlgorithm_v7, cudnnConvolutionBwdFilterAlgoPerf_t,
              p->bwd_filter, p->bwd_filter_ws, p->x, p->y, p->conv, p->w);
    return p;
}

__global__ static void add_bf16_to_f32_kernel(float *dst, const uint16_t *src, int64_t n) {
    GRID_STRIDE(i, n) { dst[i] += bf16_load(src, i); }
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

// dx (N, H, W, C) += the window of dxp (N, Hp, Wp, C) at (top, left), both as f32.
__global__ static void crop_add_kernel(float *dx, const uint16_t *dxp, int H, int W, int C, int Hp,
                                       int Wp, int top, int left, int64_t total) {
    GRID_STRIDE(i, total) {
        int c = (int)(i % C);
        int64_t r = i / C;
        int w = (int)(r % W), h = (int)(r / W % H);
        int64_t n = r / ((int64_t)W * H);
        dx[i] += bf16_load(dxp, ((n * Hp + h + top) * Wp + w + left) * C + c);
    }
}

static void cudnn_forward(conv_plan *p, uint16_t *y, const uint16_t *x, const uint16_t *w,
                          const ldmc_conv_geom *g) {
    int64_t padded = (int64_t)g->N * p->Hp * p->Wp * g->C;
    size_t pad_bytes = p->explicit_pad ? align256((size_t)padded * 2) : 0;
    char *ws = (char *)ldmc_cuda_workspace(pad_bytes + p->fwd_ws);
    const uint16_t *xin = x;
    if (p->explicit_pad) {
        LAUNCH_1D(pad_kernel, padded, (uint16_t *)ws, x, g->H, g->W, g->C, p->Hp, p->Wp,
                  g->pad_top, g->pad_left, padded);
        xin = (const uint16_t *)ws;
    }
    const float alpha = 1.0f, beta = 0.0f;
    CUDNN_CHECK(cudnnConvolutionForward(cudnn(), &alpha, p->x, xin, p->w, w, p->conv, p->fwd,
                                        ws + pad_bytes, p->fwd_ws, &beta, p->y, y));
}

static void cudnn_backward(conv_plan *p, float *dx, float *dw, const float *dy,
                           const uint16_t *x, const uint16_t *w, const ldmc_conv_geom *g) {
    int64_t rows = (int64_t)g->N * g->Ho * g->Wo;
    int64_t n_out = rows * g->O, padded = (int64_t)g->N * p->Hp * p->Wp * g->C,
            n_w = (int64_t)g->O * g->kh * g->kw * g->C;
    size_t dy_bytes = align256((size_t)n_out * 2), pad_bytes = align256((size_t)padded * 2),
           dw_bytes = align256((size_t)n_w * 2),
           algo_ws = p->bwd_data_ws > p->bwd_filter_ws ? p->bwd_data_ws : p->bwd_filter_ws;
    // [dy as bf16 | dx as bf16 | the padded x, with asymmetric padding | dw as bf16 | cuDNN's]
    size_t xp_bytes = p->explicit_pad ? pad_bytes : 0;
    char *ws = (char *)ldmc_cuda_workspace(dy_bytes + pad_bytes + xp_bytes + dw_bytes + algo_ws);
    uint16_t *dyb = (uint16_t *)ws, *dxb = (uint16_t *)(ws + dy_bytes),
             *xp = (uint16_t *)(ws + dy_bytes + pad_bytes),
             *dwb = (uint16_t *)(ws + dy_bytes + pad_bytes + xp_bytes);
    void *algo_mem = ws + dy_bytes + pad_bytes + xp_bytes + dw_bytes;
    ldmc_cuda_f32_to_bf16(dyb, dy, n_out);
    const float alpha = 1.0f, beta = 0.0f;
    if (dx) {
        CUDNN_CHECK(cudnnConvolutionBackwardData(cudnn(), &alpha, p->w, w, p->y, dyb, p->conv,
                                                 p->bwd_data, algo_mem, p->bwd_data_ws, &beta,
                                                 p->x, dxb));
        int64_t n_in = (int64_t)g->N * g->H * g->W * g->C;
        if (p->explicit_pad)
            LAUNCH_1D(crop_add_kernel, n_in, dx, dxb, g->H, g->W, g->C, p->Hp, p->Wp, g->pad_top,
                      g->pad_left, n_in);
        else
            LAUNCH_1D(add_bf16_to_f32_kernel, n_in, dx, dxb, n_in);
    }
    if (dw) {
        const uint16_t *xin = x;
        if (p->explicit_pad) {
            LAUNCH_1D(pad_kernel, padded, xp, x, g->H, g->W, g->C, p->Hp, p->Wp, g->pad_top,
                      g->pad_left, padded);
            xin = xp;
        }
        CUDNN_CHECK(cudnnConvolutionBackwardFilter(cudnn(), &alpha, p->x, xin, p->y, dyb, p->conv,
                                                   p->bwd_filter, algo_mem, p->bwd_filter_ws,
                                                   &beta, p->w, dwb));
        LAUNCH_1D(add_bf16_to_f32_kernel, n_w, dw, dwb, n_w);
    }
}

#endif

extern "C" void ldmc_cuda_conv2d_forward(uint16_t *y, const uint16_t *x, const uint16_t *w,
                                         const uint16_t *b, const ldmc_conv_geom *g) {
#ifdef LDMC_HAVE_CUDNN
    conv_plan *p = plan_for(g);
    if (p->usable)
        cudnn_forward(p, y, x, w, g);
    else
#endif
        gemm_forward(y, x, w, g);
    if (b) ldmc_cuda_add_bias(y, b, (int64_t)g->N * g->Ho * g->Wo, g->O);
}

extern "C" void ldmc_cuda_conv2d_backward(float *dx, float *dw, float *db, const float *dy,
                                          const uint16_t *x, const uint16_t *w,
                                          const ldmc_conv_geom *g) {
    if (db) ldmc_cuda_column_sums(db, dy, (int64_t)g->N * g->Ho * g->Wo, g->O); // workspace first
    if (!dx && !dw) return;
#ifdef LDMC_HAVE_CUDNN
    conv_plan *p = plan_for(g);
    if (p->usable) {
        cudnn_backward(p, dx, dw, dy, x, w, g);
        return;
    }
#endif
    gemm_backward(dx, dw, dy, x, w, g);
}
