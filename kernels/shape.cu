// Column copies (concatenation and split), nearest 2x upsampling, average and max pooling, and
// the sinusoidal timestep embedding, on channels-last bf16 tensors with f32 gradients. CPU twins:
// src/ops/cpu/elementwise.inc (copy_columns, upsample_nearest2x), pool.inc, misc.inc
// (timestep_embedding). Every backward is a gather (one thread per gradient element, terms added
// in the CPU's order), so results are deterministic and match the CPU's f32 sums. Tested by
// tests/test_cuda.c against the CPU kernels.
#include "kernels/common.cuh"
#include "kernels/ldmc_cuda.h"

// ---- columns --------------------------------------------------------------------------------

__global__ static void copy_columns_kernel(uint16_t *dst, int dst_C, int dst_off,
                                           const uint16_t *src, int src_C, int src_off, int64_t MC,
                                           int C) {
    GRID_STRIDE(i, MC) {
        int64_t m = i / C, c = i - m * C;
        dst[m * dst_C + dst_off + c] = src[m * src_C + src_off + c];
    }
}

__global__ static void add_columns_kernel(float *dst, float beta, int dst_C, int dst_off,
                                          const float *src, int src_C, int src_off, int64_t MC,
                                          int C) {
    GRID_STRIDE(i, MC) {
        int64_t m = i / C, c = i - m * C;
        float *d = dst + m * dst_C + dst_off + c;
        *d = grad_add(beta, d, src[m * src_C + src_off + c]);
    }
}

// ---- nearest 2x upsampling ------------------------------------------------------------------

// One thread per output element of y (N, 2H, 2W, C): the bits of x at (oh / 2, ow / 2).
__global__ static void upsample2x_forward_kernel(uint16_t *y, const uint16_t *x, int H, int W,
                                                 int C, int64_t total) {
    GRID_STRIDE(i, total) {
        int64_t r = i / C;
        int c = (int)(i - r * C);
        int ow = (int)(r % (2 * W));
        r /= 2 * W;
        int oh = (int)(r % (2 * H));
        int64_t n = r / (2 * H);
        y[i] = x[((n * H + oh / 2) * W + ow / 2) * C + c];
    }
}

// One thread per element of dx (N, H, W, C): its four output gradients, added one at a time in
// the CPU's order ((0,0), (0,1), (1,0), (1,1)), so the f32 result is the CPU's.
__global__ static void upsample2x_backward_kernel(float *dx, float beta, const float *dy, int H,
                                                  int W, int C, int64_t total) {
    GRID_STRIDE(i, total) {
        int64_t r = i / C;
        int c = (int)(i - r * C);
        int w = (int)(r % W);
        r /= W;
        int h = (int)(r % H);
        int64_t n = r / H;
        int64_t row = (int64_t)2 * W * C; // one output row
        int64_t at = ((n * 2 * H + 2 * h) * 2 * W + 2 * w) * C + c;
        float acc = beta != 0.0f ? dx[i] : 0.0f; // a fresh dx is written
        acc += dy[at];
        acc += dy[at + C];
        acc += dy[at + row];
        acc += dy[at + row + C];
        dx[i] = acc;
    }
}

// ---- pooling --------------------------------------------------------------------------------

// The window of output (oh, ow) clipped to the image, rows [h0, h1) and columns [w0, w1), and
// the divisor (CPU pool_window): kh kw with count_include_pad, else the in-image count.
__device__ static int pool_window(const ldmc_conv_geom &g, int oh, int ow, bool count_include_pad,
                                  int *h0, int *h1, int *w0, int *w1) {
    int hs = oh * g.stride - g.pad_top, ws = ow * g.stride - g.pad_left;
    int he = hs + g.kh, we = ws + g.kw;
    *h0 = hs > 0 ? hs : 0;
    *w0 = ws > 0 ? ws : 0;
    *h1 = he < g.H ? he : g.H;
    *w1 = we < g.W ? we : g.W;
    return count_include_pad ? g.kh * g.kw : (*h1 - *h0) * (*w1 - *w0);
}

// The outputs whose window covers input row h (or column): o in [lo, hi], where
// o stride - pad <= h < o stride - pad + k, clipped to [0, out).
__device__ static void pool_covering(int h, int pad, int k, int stride, int out, int *lo,
                                     int *hi) {
    int first = h + pad - k + 1; // o stride >= first
    *lo = first <= 0 ? 0 : (first + stride - 1) / stride;
    int last = (h + pad) / stride; // h + pad >= 0: pads are never negative
    *hi = last < out - 1 ? last : out - 1;
}

// The argmax of a window of channel c in image n, as (h, w) packed as h W + w, or -1 for an
// empty window. CPU pool_argmax: the first largest value in row-major order wins; the first NaN
// wins and stays.
__device__ static int pool_argmax(const uint16_t *x, const ldmc_conv_geom &g, int64_t n, int c,
                                  int h0, int h1, int w0, int w1) {
    int best = -1;
    float best_v = 0.0f;
    for (int h = h0; h < h1; h++)
        for (int w = w0; w < w1; w++) {
            if (best >= 0 && isnan(best_v)) return best;
            float v = bf16_load(x, ((n * g.H + h) * g.W + w) * g.C + c);
            if (best < 0 || v > best_v || isnan(v)) {
                best = h * g.W + w;
                best_v = v;
            }
        }
    return best;
}

// Splits an output index of (N, Ho, Wo, C) (or an input index of (N, H, W, C)).
__device__ static void split_nhwc(int64_t i, int Hd, int Wd, int C, int64_t *n, int *h, int *w,
                                  int *c) {
    int64_t r = i / C;
    *c = (int)(i - r * C);
    *w = (int)(r % Wd);
    r /= Wd;
    *h = (int)(r % Hd);
    *n = r / Hd;
}

// One thread per output: the window's sum in double in row-major order, / count, as the CPU.
__global__ static void avg_pool_forward_kernel(uint16_t *y, const uint16_t *x, ldmc_conv_geom g,
                                               bool count_include_pad, int64_t total) {
    GRID_STRIDE(i, total) {
        int64_t n;
        int oh, ow, c, h0, h1, w0, w1;
        split_nhwc(i, g.Ho, g.Wo, g.C, &n, &oh, &ow, &c);
        int count = pool_window(g, oh, ow, count_include_pad, &h0, &h1, &w0, &w1);
        double sum = 0;
        for (int h = h0; h < h1; h++)
            for (int w = w0; w < w1; w++)
                sum += bf16_load(x, ((n * g.H + h) * g.W + w) * g.C + c);
        y[i] = bf16_from((float)(count > 0 ? sum / count : 0.0));
    }
}

// One thread per input element: the shares dy / count of every output window covering it, in
// the CPU's (oh, ow) order. A covering window is never empty, so its count is positive.
__global__ static void avg_pool_backward_kernel(float *dx, const float *dy, ldmc_conv_geom g,
                                                bool count_include_pad, int64_t total) {
    GRID_STRIDE(i, total) {
        int64_t n;
        int h, w, c, oh0, oh1, ow0, ow1;
        split_nhwc(i, g.H, g.W, g.C, &n, &h, &w, &c);
        pool_covering(h, g.pad_top, g.kh, g.stride, g.Ho, &oh0, &oh1);
        pool_covering(w, g.pad_left, g.kw, g.stride, g.Wo, &ow0, &ow1);
        float acc = dx[i];
        for (int oh = oh0; oh <= oh1; oh++)
            for (int ow = ow0; ow <= ow1; ow++) {
                int h0, h1, w0, w1;
                int count = pool_window(g, oh, ow, count_include_pad, &h0, &h1, &w0, &w1);
                acc += dy[((n * g.Ho + oh) * g.Wo + ow) * g.C + c] / (float)count;
            }
        dx[i] = acc;
    }
}

// One thread per output: the window's maximum by the CPU's rule; -inf for an empty window.
__global__ static void max_pool_forward_kernel(uint16_t *y, const uint16_t *x, ldmc_conv_geom g,
                                               int64_t total) {
    GRID_STRIDE(i, total) {
        int64_t n;
        int oh, ow, c, h0, h1, w0, w1;
        split_nhwc(i, g.Ho, g.Wo, g.C, &n, &oh, &ow, &c);
        pool_window(g, oh, ow, false, &h0, &h1, &w0, &w1);
        int best = pool_argmax(x, g, n, c, h0, h1, w0, w1);
        y[i] = best >= 0 ? x[(n * g.H * g.W + best) * g.C + c] : bf16_from(-INFINITY);
    }
}

// One thread per input element: every covering window's argmax is recomputed from the saved x;
// the windows whose argmax is this element pass their dy, added in the CPU's (oh, ow) order.
__global__ static void max_pool_backward_kernel(float *dx, const float *dy, const uint16_t *x,
                                                ldmc_conv_geom g, int64_t total) {
    GRID_STRIDE(i, total) {
        int64_t n;
        int h, w, c, oh0, oh1, ow0, ow1;
        split_nhwc(i, g.H, g.W, g.C, &n, &h, &w, &c);
        pool_covering(h, g.pad_top, g.kh, g.stride, g.Ho, &oh0, &oh1);
        pool_covering(w, g.pad_left, g.kw, g.stride, g.Wo, &ow0, &ow1);
        const int self = h * g.W + w;
        float acc = dx[i];
        for (int oh = oh0; oh <= oh1; oh++)
            for (int ow = ow0; ow <= ow1; ow++) {
                int h0, h1, w0, w1;
                pool_window(g, oh, ow, false, &h0, &h1, &w0, &w1);
                if (pool_argmax(x, g, n, c, h0, h1, w0, w1) == self)
                    acc += dy[((n * g.Ho + oh) * g.Wo + ow) * g.C + c];
            }
        dx[i] = acc;
    }
}

// ---- timestep embedding ---------------------------------------------------------------------

// f_i = expf(c i / half) with c = (float)-log(max_period) computed on the host in double: the
// CPU's float expression (its <tgmath.h> makes exp, cos, sin the float functions).
__device__ static float timestep_freq(float c, int i, int half) {
    return expf(c * (float)i / (float)half);
}

// One thread per element of y (B, dim): [cos(t f) | sin(t f)], and a zero last column when dim
// is odd.
__global__ static void timestep_forward_kernel(uint16_t *y, const float *t, int dim, float c,
                                               int64_t total) {
    const int half = dim / 2;
    GRID_STRIDE(k, total) {
        int64_t b = k / dim;
        int j = (int)(k - b * dim);
        float v = 0.0f;
        if (j < 2 * half) {
            int i = j < half ? j : j - half;
            float arg = t[b] * timestep_freq(c, i, half);
            v = j < half ? cosf(arg) : sinf(arg);
        }
        y[k] = bf16_from(v);
    }
}

// One warp per sample b: dt[b] += Σ_i f_i (-dy_i sin(t f_i) + dy_{half+i} cos(t f_i)), summed in
// double as the CPU does (lane partials, then a fixed shuffle tree: the same result every run).
__global__ static void timestep_backward_kernel(float *dt, const float *dy, const float *t,
                                                int dim, float c) {
    const int half = dim / 2;
    const int64_t b = blockIdx.x;
    const float *g = dy + b * dim;
    double sum = 0;
    for (int i = threadIdx.x; i < half; i += 32) {
        float f = timestep_freq(c, i, half), arg = t[b] * f;
        sum += (double)f * (-(double)g[i] * (double)sinf(arg) + (double)g[half + i] * cosf(arg));
    }
    for (int o = 16; o > 0; o >>= 1)
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (threadIdx.x == 0) dt[b] += (float)sum;
}

// ---- launchers ------------------------------------------------------------------------------

extern "C" void ldmc_cuda_copy_columns(uint16_t *dst, int dst_C, int dst_off, const uint16_t *src,
                                       int src_C, int src_off, int64_t M, int C) {
    int64_t MC = M * C;
    LAUNCH_1D(copy_columns_kernel, MC, dst, dst_C, dst_off, src, src_C, src_off, MC, C);
}

extern "C" void ldmc_cuda_add_columns(float *dst, float beta, int dst_C, int dst_off,
                                      const float *src, int src_C, int src_off, int64_t M, int C) {
    if (!dst) return;
    int64_t MC = M * C;
    LAUNCH_1D(add_columns_kernel, MC, dst, beta, dst_C, dst_off, src, src_C, src_off, MC, C);
}

extern "C" void ldmc_cuda_upsample_nearest2x_forward(uint16_t *y, const uint16_t *x, int N, int H,
                                                     int W, int C) {
    int64_t total = (int64_t)N * 4 * H * W * C;
    LAUNCH_1D(upsample2x_forward_kernel, total, y, x, H, W, C, total);
}

extern "C" void ldmc_cuda_upsample_nearest2x_backward(float *dx, float beta, const float *dy, int N,
                                                      int H, int W, int C) {
    if (!dx) return;
    int64_t total = (int64_t)N * H * W * C;
    LAUNCH_1D(upsample2x_backward_kernel, total, dx, beta, dy, H, W, C, total);
}

extern "C" void ldmc_cuda_avg_pool2d_forward(uint16_t *y, const uint16_t *x,
                                             const ldmc_conv_geom *g, bool count_include_pad) {
    int64_t total = (int64_t)g->N * g->Ho * g->Wo * g->C;
    LAUNCH_1D(avg_pool_forward_kernel, total, y, x, *g, count_include_pad, total);
}

extern "C" void ldmc_cuda_avg_pool2d_backward(float *dx, const float *dy, const ldmc_conv_geom *g,
                                              bool count_include_pad) {
    if (!dx) return;
    int64_t total = (int64_t)g->N * g->H * g->W * g->C;
    LAUNCH_1D(avg_pool_backward_kernel, total, dx, dy, *g, count_include_pad, total);
}

extern "C" void ldmc_cuda_max_pool2d_forward(uint16_t *y, const uint16_t *x,
                                             const ldmc_conv_geom *g) {
    int64_t total = (int64_t)g->N * g->Ho * g->Wo * g->C;
    LAUNCH_1D(max_pool_forward_kernel, total, y, x, *g, total);
}

extern "C" void ldmc_cuda_max_pool2d_backward(float *dx, const float *dy, const uint16_t *x,
                                              const ldmc_conv_geom *g) {
    if (!dx) return;
    int64_t total = (int64_t)g->N * g->H * g->W * g->C;
    LAUNCH_1D(max_pool_backward_kernel, total, dx, dy, x, *g, total);
}

extern "C" void ldmc_cuda_timestep_embedding_forward(uint16_t *y, const float *t, int B, int dim,
                                                     float max_period) {
    float c = (float)-log((double)max_period);
    int64_t total = (int64_t)B * dim;
    LAUNCH_1D(timestep_forward_kernel, total, y, t, dim, c, total);
}

extern "C" void ldmc_cuda_timestep_embedding_backward(float *dt, const float *dy, const float *t,
                                                      int B, int dim, float max_period) {
    if (!dt || B <= 0 || dim / 2 <= 0) return;
    float c = (float)-log((double)max_period);
    timestep_backward_kernel<<<B, 32, 0, ldmc_stream()>>>(dt, dy, t, dim, c);
    CUDA_CHECK_LAUNCH("timestep_backward_kernel");
}
