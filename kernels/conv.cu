// 2-D convolutions on NHWC bf16 tensors through cuDNN (its C API): f32 accumulation on tensor
// cores. Asymmetric padding (the VAE's downsampling pads (0, 1, 0, 1)) is an explicit zero-padded
// copy, since cuDNN pads symmetrically. Backward data and filter produce bf16 (cuDNN's legacy API
// keeps one data type per call), added into the f32 gradients; the bias gradient sums the f32 dy.
// CPU twin in src/ops/cpu/conv2d.inc. Tested by tests/test_cuda.c.
#include "kernels/common.cuh"
#include "kernels/ldmc_cuda.h"

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
// that works. Its math type goes on the descriptor.
#define PICK_ALGO(kind, get_fn, perf_t, out_algo, out_ws, ...)                                     \
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
        if (k < 0)                                                                                 \
            LDMC_FATAL("cuDNN: no " kind " algorithm for a %dx%d convolution of (%d, %d, %d, %d) " \
                       "to %d channels, stride %d",                                                \
                       g->kh, g->kw, g->N, g->H, g->W, g->C, g->O, g->stride);                     \
        out_algo = perf[k].algo;                                                                   \
        out_ws = perf[k].memory;                                                                   \
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
    PICK_ALGO("forward", cudnnGetConvolutionForwardAlgorithm_v7, cudnnConvolutionFwdAlgoPerf_t,
              p->fwd, p->fwd_ws, p->x, p->w, p->conv, p->y);
    PICK_ALGO("backward-data", cudnnGetConvolutionBackwardDataAlgorithm_v7,
              cudnnConvolutionBwdDataAlgoPerf_t, p->bwd_data, p->bwd_data_ws, p->w, p->y, p->conv,
              p->x);
    PICK_ALGO("backward-filter", cudnnGetConvolutionBackwardFilterAlgorithm_v7,
              cudnnConvolutionBwdFilterAlgoPerf_t, p->bwd_filter, p->bwd_filter_ws, p->x, p->y,
              p->conv, p->w);
    return p;
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

__global__ static void add_bf16_to_f32_kernel(float *dst, const uint16_t *src, int64_t n) {
    GRID_STRIDE(i, n) { dst[i] += bf16_load(src, i); }
}

__global__ static void conv_bias_kernel(uint16_t *y, const uint16_t *b, int C, int64_t total) {
    GRID_STRIDE(i, total) { y[i] = bf16_from(bf16_load(y, i) + bf16_load(b, i % C)); }
}

static size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

extern "C" void ldmc_cuda_conv2d_forward(uint16_t *y, const uint16_t *x, const uint16_t *w,
                                         const uint16_t *b, const ldmc_conv_geom *g) {
    conv_plan *p = plan_for(g);
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
    int64_t out = (int64_t)g->N * g->Ho * g->Wo * g->O;
    if (b) LAUNCH_1D(conv_bias_kernel, out, y, b, g->O, out);
}

extern "C" void ldmc_cuda_conv2d_backward(float *dx, float *dw, float *db, const float *dy,
                                          const uint16_t *x, const uint16_t *w,
                                          const ldmc_conv_geom *g) {
    int64_t rows = (int64_t)g->N * g->Ho * g->Wo;
    if (db) ldmc_cuda_column_sums(db, dy, rows, g->O); // before the workspace is carved up
    if (!dx && !dw) return;
    conv_plan *p = plan_for(g);
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

#else // built without cuDNN

extern "C" void ldmc_cuda_conv2d_forward(uint16_t *, const uint16_t *, const uint16_t *,
                                         const uint16_t *, const ldmc_conv_geom *) {
    LDMC_FATAL("conv2d on the GPU needs cuDNN: this build has LDMC_CUDNN off (install cuDNN and "
               "reconfigure)");
}

extern "C" void ldmc_cuda_conv2d_backward(float *, float *, float *, const float *,
                                          const uint16_t *, const uint16_t *,
                                          const ldmc_conv_geom *) {
    LDMC_FATAL("conv2d on the GPU needs cuDNN: this build has LDMC_CUDNN off (install cuDNN and "
               "reconfigure)");
}

#endif
