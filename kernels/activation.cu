// SiLU, GELU (erf and tanh forms), GEGLU and softmax on bf16 storage with f32 math. CPU twins:
// src/ops/cpu/activation.inc (the same formulas and constants, term for term). Tested by
// tests/test_cuda.c against the CPU kernels.
#include "kernels/common.cuh"
#include "kernels/ldmc_cuda.h"

#define SQRT_HALF 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f
#define SQRT_2_OVER_PI 0.79788456080286535588f
#define GELU_TANH_C 0.044715f

// Accurate expf / erff / tanhf (no fast-math intrinsics): the CPU twin runs libm's float
// functions, and the outputs are compared within bf16 rounding.
__device__ static __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// kind: 0 exact (erf), 1 tanh approximation, 2 QuickGELU x sigmoid(1.702 x).
__device__ static __forceinline__ float gelu(float x, int kind) {
    if (kind == 2) return x * sigmoid(1.702f * x);
    if (kind == 1) {
        float inner = SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x);
        return 0.5f * x * (1.0f + tanhf(inner));
    }
    return 0.5f * x * (1.0f + erff(x * SQRT_HALF));
}

// d gelu / dx, the same expressions as the CPU's gelu_grad.
__device__ static __forceinline__ float gelu_grad(float x, int kind) {
    if (kind == 2) {
        float s = sigmoid(1.702f * x);
        return s + 1.702f * x * s * (1.0f - s);
    }
    if (kind == 1) {
        float inner = SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x);
        float t = tanhf(inner);
        float dinner = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_TANH_C * x * x);
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * dinner;
    }
    return 0.5f * (1.0f + erff(x * SQRT_HALF)) + x * INV_SQRT_2PI * expf(-0.5f * x * x);
}

__global__ static void silu_forward_kernel(uint16_t *y, const uint16_t *x, int64_t n) {
    GRID_STRIDE(i, n) {
        float v = bf16_load(x, i);
        y[i] = bf16_from(v * sigmoid(v));
    }
}

// d/dx x σ(x) = σ(x) (1 + x (1 - σ(x)))
__global__ static void silu_backward_kernel(float *dx, float beta, const float *dy,
                                            const uint16_t *x, int64_t n) {
    GRID_STRIDE(i, n) {
        float v = bf16_load(x, i), s = sigmoid(v);
        dx[i] = grad_add(beta, dx + i, dy[i] * s * (1.0f + v * (1.0f - s)));
    }
}

__global__ static void gelu_forward_kernel(uint16_t *y, const uint16_t *x, int64_t n,
                                           int kind) {
    GRID_STRIDE(i, n) { y[i] = bf16_from(gelu(bf16_load(x, i), kind)); }
}

__global__ static void gelu_backward_kernel(float *dx, float beta, const float *dy,
                                            const uint16_t *x, int64_t n, int kind) {
    GRID_STRIDE(i, n) { dx[i] = grad_add(beta, dx + i, dy[i] * gelu_grad(bf16_load(x, i), kind)); }
}

// One thread per output (m, f): y = x[m, f] * gelu_erf(x[m, F + f]).
__global__ static void geglu_forward_kernel(uint16_t *y, const uint16_t *x, int64_t MF, int F) {
    GRID_STRIDE(i, MF) {
        int64_t m = i / F, f = i - m * F;
        const uint16_t *row = x + m * 2 * F;
        y[i] = bf16_from(bf16_load(row, f) * gelu(bf16_load(row, F + f), 0));
    }
}

// Each thread owns one (value, gate) pair of dx, so no two threads touch the same element.
// dx f32 or bf16 (ldmc_cuda_grad).
__global__ static void geglu_backward_kernel(void *dx, bool bf16, float beta, const float *dy,
                                             const uint16_t *x, int64_t MF, int F) {
    GRID_STRIDE(i, MF) {
        int64_t m = i / F, f = i - m * F;
        const uint16_t *row = x + m * 2 * F;
        float a = bf16_load(row, f), gate = bf16_load(row, F + f), g = dy[i];
        grad_put(dx, bf16, beta, m * 2 * F + f, g * gelu(gate, 0));
        grad_put(dx, bf16, beta, m * 2 * F + F + f, g * a * gelu_grad(gate, 0));
    }
}

// One block per row (grid-stride over rows): the row maximum, Σ exp(x - max), then the
// normalized values. x is read again in each pass (L1/L2 hits) instead of being held, so any C
// works with the same kernel.
__global__ static void softmax_forward_kernel(uint16_t *y, const uint16_t *x, int64_t M, int C) {
    __shared__ float shared[32];
    for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
        const uint16_t *xr = x + m * C;
        uint16_t *yr = y + m * C;
        float mx = -INFINITY;
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            mx = fmaxf(mx, bf16_load(xr, c));
        mx = block_max(mx, shared);
        float sum = 0.0f;
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            sum += expf(bf16_load(xr, c) - mx);
        sum = block_sum(sum, shared);
        // A NaN anywhere makes sum NaN and so the whole row NaN, as on the CPU.
        float inv = 1.0f / sum;
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            yr[c] = bf16_from(expf(bf16_load(xr, c) - mx) * inv);
    }
}

// dx (+)= y (dy - Σ dy y), y the saved bf16 softmax.
__global__ static void softmax_backward_kernel(float *dx, float beta, const float *dy,
                                               const uint16_t *y, int64_t M, int C) {
    __shared__ float shared[32];
    for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
        const uint16_t *yr = y + m * C;
        const float *dyr = dy + m * C;
        float *dxr = dx + m * C;
        float dot = 0.0f;
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            dot += dyr[c] * bf16_load(yr, c);
        dot = block_sum(dot, shared);
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            dxr[c] = grad_add(beta, dxr + c, bf16_load(yr, c) * (dyr[c] - dot));
    }
}

// Threads per softmax row: C rounded up to whole warps, at most 512 (several blocks per SM).
static int softmax_threads(int C) {
    int t = (C + 31) / 32 * 32;
    return t < 32 ? 32 : (t > 512 ? 512 : t);
}

static unsigned softmax_blocks(int64_t M) { return (unsigned)(M < (1 << 20) ? M : (1 << 20)); }

extern "C" void ldmc_cuda_silu_forward(uint16_t *y, const uint16_t *x, int64_t n) {
    LAUNCH_1D(silu_forward_kernel, n, y, x, n);
}

extern "C" void ldmc_cuda_silu_backward(float *dx, float beta, const float *dy, const uint16_t *x,
                                        int64_t n) {
    if (!dx) return;
    LAUNCH_1D(silu_backward_kernel, n, dx, beta, dy, x, n);
}

extern "C" void ldmc_cuda_gelu_forward(uint16_t *y, const uint16_t *x, int64_t n,
                                       int kind) {
    LAUNCH_1D(gelu_forward_kernel, n, y, x, n, kind);
}

extern "C" void ldmc_cuda_gelu_backward(float *dx, float beta, const float *dy, const uint16_t *x,
                                        int64_t n, int kind) {
    if (!dx) return;
    LAUNCH_1D(gelu_backward_kernel, n, dx, beta, dy, x, n, kind);
}

extern "C" void ldmc_cuda_geglu_forward(uint16_t *y, const uint16_t *x, int64_t M, int F) {
    int64_t MF = M * F;
    LAUNCH_1D(geglu_forward_kernel, MF, y, x, MF, F);
}

extern "C" void ldmc_cuda_geglu_backward(ldmc_cuda_grad dx, const float *dy, const uint16_t *x,
                                         int64_t M, int F) {
    if (!dx.p) return;
    int64_t MF = M * F;
    LAUNCH_1D(geglu_backward_kernel, MF, dx.p, dx.bf16, dx.beta, dy, x, MF, F);
}

extern "C" void ldmc_cuda_softmax_forward(uint16_t *y, const uint16_t *x, int64_t M, int C) {
    if (M <= 0 || C <= 0) return;
    softmax_forward_kernel<<<softmax_blocks(M), softmax_threads(C), 0, ldmc_stream()>>>(y, x, M, C);
    CUDA_CHECK_LAUNCH("softmax_forward_kernel");
}

extern "C" void ldmc_cuda_softmax_backward(float *dx, float beta, const float *dy,
                                           const uint16_t *y, int64_t M, int C) {
    if (!dx || M <= 0 || C <= 0) return;
    softmax_backward_kernel<<<softmax_blocks(M), softmax_threads(C), 0, ldmc_stream()>>>(
        dx, beta, dy, y, M, C);
    CUDA_CHECK_LAUNCH("softmax_backward_kernel");
}
