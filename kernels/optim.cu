// The optimizer over the flat parameter buffers on the GPU: gradient norm, AdamW with an fp32
// master (bf16 working weights and the low halves, core/params.h), EMA. CPU twins in
// src/train/optim.c (same formulas, same order of operations). Tested by tests/test_cuda.c.
#include "kernels/common.cuh"
#include "kernels/ldmc_cuda.h"

enum { SQ_BLOCKS = 1024, SQ_THREADS = 256 };

__global__ static void sum_squares_kernel(double *partial, const float *x, int64_t n) {
    __shared__ double shared[32];
    double s = 0;
    GRID_STRIDE(i, n) { s += (double)x[i] * x[i]; }
    s = block_sum(s, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// The block partials summed in a fixed order by one block, into *dst on the device.
__global__ static void sum_partials_kernel(double *dst, const double *partial, int n) {
    __shared__ double shared[32];
    double s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        s += partial[i];
    s = block_sum(s, shared);
    if (threadIdx.x == 0) *dst = s;
}

extern "C" void ldmc_cuda_sum_squares_to(double *dst, const float *x, size_t n) {
    int blocks = (int)((n + SQ_THREADS - 1) / SQ_THREADS);
    blocks = blocks < 1 ? 1 : blocks > SQ_BLOCKS ? SQ_BLOCKS : blocks;
    double *partial = (double *)ldmc_cuda_workspace(SQ_BLOCKS * sizeof(double));
    sum_squares_kernel<<<blocks, SQ_THREADS, 0, ldmc_stream()>>>(partial, x, (int64_t)n);
    CUDA_CHECK_LAUNCH("sum_squares");
    sum_partials_kernel<<<1, SQ_THREADS, 0, ldmc_stream()>>>(dst, partial, blocks);
    CUDA_CHECK_LAUNCH("sum_partials");
}

extern "C" double ldmc_cuda_sum_squares(const float *x, size_t n) {
    double *partial = (double *)ldmc_cuda_workspace(SQ_BLOCKS * sizeof(double));
    double host[SQ_BLOCKS];
    sum_squares_kernel<<<SQ_BLOCKS, SQ_THREADS, 0, ldmc_stream()>>>(partial, x, (int64_t)n);
    CUDA_CHECK_LAUNCH("sum_squares");
    ldmc_cuda_to_host(host, partial, sizeof host);
    double total = 0;
    for (int i = 0; i < SQ_BLOCKS; i++)
        total += host[i];
    return total;
}

// PyTorch's AdamW, as src/train/optim.c: decoupled decay, then the bias-corrected Adam step. The
// f32 master is the bf16 working weights and the low halves (master_join); the step writes both.
__global__ static void adamw_kernel(uint16_t *master_lo, uint16_t *weights, const float *grad,
                                    float *m, float *v, int64_t n, float decay, float step_size,
                                    float denom_scale, float b1, float b2, float eps,
                                    const double *guard) {
    if (guard && !isfinite(*guard)) return; // a gradient not finite: the parameter stays
    GRID_STRIDE(k, n) {
        // explicit roundings, no fused multiply-adds: the CPU's results bit for bit
        float g = grad[k];
        float mk = __fadd_rn(__fmul_rn(b1, m[k]), __fmul_rn(1 - b1, g));
        float vk = __fadd_rn(__fmul_rn(b2, v[k]), __fmul_rn(__fmul_rn(1 - b2, g), g));
        m[k] = mk;
        v[k] = vk;
        float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(vk), denom_scale), eps);
        float master = master_join(weights[k], master_lo[k]);
        float w = __fsub_rn(__fmul_rn(master, decay), __fdiv_rn(__fmul_rn(step_size, mk), denom));
        uint16_t lo;
        weights[k] = master_split(w, &lo);
        master_lo[k] = lo;
    }
}

extern "C" void ldmc_cuda_adamw(uint16_t *master_lo, uint16_t *weights, const float *grad, float *m,
                                float *v, int64_t n, float decay, float step_size,
                                float denom_scale, float beta1, float beta2, float eps,
                                const double *guard) {
    LAUNCH_1D(adamw_kernel, n, master_lo, weights, grad, m, v, n, decay, step_size, denom_scale,
              beta1, beta2, eps, guard);
}

__global__ static void ema_kernel(float *ema, const uint16_t *master_lo, const uint16_t *weights,
                                  int64_t n, float d, float one_minus) {
    GRID_STRIDE(k, n) {
        float master = master_join(weights[k], master_lo[k]);
        ema[k] = __fadd_rn(__fmul_rn(d, ema[k]), __fmul_rn(one_minus, master));
    }
}

extern "C" void ldmc_cuda_ema(float *ema, const uint16_t *master_lo, const uint16_t *weights,
                              int64_t n, double decay) {
    LAUNCH_1D(ema_kernel, n, ema, master_lo, weights, n, (float)decay, (float)(1.0 - decay));
}

__global__ static void master_swap_kernel(uint16_t *master_lo, uint16_t *weights, float *other,
                                          int64_t n) {
    GRID_STRIDE(k, n) {
        float t = master_join(weights[k], master_lo[k]);
        uint16_t lo;
        weights[k] = master_split(other[k], &lo);
        master_lo[k] = lo;
        other[k] = t;
    }
}

extern "C" void ldmc_cuda_master_swap(uint16_t *master_lo, uint16_t *weights, float *other,
                                      int64_t n) {
    LAUNCH_1D(master_swap_kernel, n, master_lo, weights, other, n);
}
