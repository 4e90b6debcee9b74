// Group norm and layer norm with saved statistics, bf16 data and f32 gradients. CPU twin:
// src/ops/cpu/norm.inc (the same formulas: biased variance, rstd = 1 / sqrt(var + eps), group
// statistics in double from per-channel shifted sums, backward's mean terms). Every reduction
// runs in a fixed order, without atomics: the same bits on every run. Tested by
// tests/test_cuda.c against the CPU kernels.
#include "kernels/common.cuh"
#include "kernels/ldmc_cuda.h"

enum { NORM_THREADS = 256, AFFINE_ROWS = 8 };

// ---- group norm -------------------------------------------------------------------------------
//
// Per-channel sums over the pixels, as the CPU's channel_sums: the pixels of each image are cut
// into slices of `rows` pixels, one block a slice. Within a block, `cw` threads (a multiple of
// 32, at most NORM_THREADS) cover the channels, coalesced along the channels-last rows, and
// rp = NORM_THREADS / cw thread rows stride over the slice's pixels; the rp partial sums are
// added in thread-row order. Slices only depend on the shape, so the sums do too.
struct slice_geom {
    int cw, rp;
    int64_t rows, slices;
};

static slice_geom slice_geom_of(int N, int64_t P, int C) {
    slice_geom s;
    s.cw = C >= NORM_THREADS ? NORM_THREADS : (C + 31) / 32 * 32;
    s.rp = NORM_THREADS / s.cw;
    // about 2048 blocks over the batch, at least 8 pixels per thread row
    int64_t rows = ((int64_t)N * P + 2047) / 2048, least = 8 * (int64_t)s.rp;
    s.rows = rows > least ? rows : least;
    s.slices = (P + s.rows - 1) / s.rows;
    return s;
}

// part (N, slices, 2, C) in double. Forward: Σ (x - k) and Σ (x - k)² with k the image's first
// pixel (a value near the mean, so a large mean does not cancel the variance). Backward: Σ dy
// and Σ dy (x - μ). Grid (slices, N).
template <bool BACKWARD>
__global__ static void channel_sums_kernel(double *part, const uint16_t *x, const float *dy,
                                           const float *mean, int64_t P, int C, int G, int cw,
                                           int rp, int64_t rows) {
    __shared__ double sh[2][NORM_THREADS];
    const int n = blockIdx.y, tid = threadIdx.x, c0 = tid % cw, r0 = tid / cw, Cg = C / G;
    const int64_t s = blockIdx.x, p0 = s * rows, p1 = p0 + rows < P ? p0 + rows : P;
    const int64_t base = (int64_t)n * P * C;
    double *out = part + ((int64_t)n * gridDim.x + s) * 2 * C;
    for (int cb = 0; cb < C; cb += cw) { // the same trip count in every thread: syncs are safe
        const int c = cb + c0;
        double a1 = 0, a2 = 0;
        if (c < C && r0 < rp) {
            if (BACKWARD) {
                const double mu = mean[n * G + c / Cg];
                for (int64_t p = p0 + r0; p < p1; p += rp) {
                    const int64_t i = base + p * C + c;
                    const double g = dy[i];
                    a1 += g;
                    a2 += g * ((double)bf16_load(x, i) - mu);
                }
            } else {
                const double k = bf16_load(x, base + c);
                for (int64_t p = p0 + r0; p < p1; p += rp) {
                    const double v = (double)bf16_load(x, base + p * C + c) - k;
                    a1 += v;
                    a2 += v * v;
                }
            }
        }
        sh[0][tid] = a1;
        sh[1][tid] = a2;
        __syncthreads();
        if (r0 == 0 && c < C) {
            for (int r = 1; r < rp; r++) {
                a1 += sh[0][r * cw + c0];
                a2 += sh[1][r * cw + c0];
            }
            out[c] = a1;
            out[C + c] = a2;
        }
        __syncthreads();
    }
}

// One block per (n, g), grid (G, N): the group's mean and rstd from the shifted sums, with
// Σ (x - μ)² = Σ_c [S2 + 2 (k - μ) S1 + P (k - μ)²], then y = x a + b per channel:
// ab (N, C, 2) = (rstd γ, β - mean rstd γ), rounded from double as the CPU does.
__global__ static void group_stats_kernel(float *mean, float *rstd, float *ab, const double *part,
                                          const uint16_t *x, const uint16_t *gamma,
                                          const uint16_t *beta, int64_t P, int C, int G,
                                          int64_t slices, float eps) {
    __shared__ double sh[32];
    const int n = blockIdx.y, g = blockIdx.x, Cg = C / G;
    const double count = (double)P * Cg;
    const uint16_t *k = x + (int64_t)n * P * C + (int64_t)g * Cg; // the shifts: the first pixel
    const double *pn = part + (int64_t)n * slices * 2 * C + (int64_t)g * Cg;
    const int64_t items = slices * Cg;
    double t = 0;
    for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
        const int64_t s = i / Cg;
        const int c = (int)(i - s * Cg);
        t += pn[s * 2 * C + c];
        if (s == 0) t += (double)P * bf16_load(k, c);
    }
    const double mu = block_sum(t, sh) / count;
    double q = 0;
    for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
        const int64_t s = i / Cg;
        const int c = (int)(i - s * Cg);
        const double d = (double)bf16_load(k, c) - mu;
        q += pn[s * 2 * C + C + c] + 2 * d * pn[s * 2 * C + c];
        if (s == 0) q += (double)P * d * d;
    }
    const double ss = block_sum(q, sh) / count;
    const float m = (float)mu, r = (float)(1.0 / sqrt((ss > 0 ? ss : 0) + (double)eps));
    if (threadIdx.x == 0) {
        mean[n * G + g] = m;
        rstd[n * G + g] = r;
    }
    for (int c = g * Cg + threadIdx.x; c < (g + 1) * Cg; c += blockDim.x) {
        const double gm = gamma ? (double)bf16_load(gamma, c) : 1.0;
        const double bt = beta ? (double)bf16_load(beta, c) : 0.0;
        float *o = ab + ((int64_t)n * C + c) * 2;
        o[0] = (float)((double)r * gm);
        o[1] = (float)(bt - (double)m * (double)r * gm);
    }
}

// y = x a + b with the per-channel (a, b) of the image. Grid (blocks, N).
__global__ static void group_apply_kernel(uint16_t *y, const uint16_t *x, const float *ab,
                                          int64_t PC, int C) {
    const int64_t base = (int64_t)blockIdx.y * PC;
    const float *abn = ab + (int64_t)blockIdx.y * C * 2;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    const int step = (int)(stride % C); // the channel follows j without a division per value
    int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    for (int c = (int)(j % C); j < PC; j += stride, c = c + step < C ? c + step : c + step - C) {
        y[base + j] = bf16_from(fmaf(bf16_load(x, base + j), abn[2 * c], abn[2 * c + 1]));
    }
}

// One block per (n, g), grid (G, N): with u = dy γ, the group means of u and u x̂ from the
// per-channel sums, then dx = dy k1 + x k2 + k3 per channel: coef (N, C, 3).
__global__ static void group_coef_kernel(float *coef, const double *part, const float *mean,
                                         const float *rstd, const uint16_t *gamma, int64_t P,
                                         int C, int G, int64_t slices) {
    __shared__ double sh[32];
    const int n = blockIdx.y, g = blockIdx.x, Cg = C / G;
    const double count = (double)P * Cg;
    const double mu = mean[n * G + g], r = rstd[n * G + g];
    const double *pn = part + (int64_t)n * slices * 2 * C + (int64_t)g * Cg;
    const int64_t items = slices * Cg;
    double t1 = 0, t2 = 0;
    for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
        const int64_t s = i / Cg;
        const int c = (int)(i - s * Cg);
        const double gm = gamma ? (double)bf16_load(gamma, g * Cg + c) : 1.0;
        t1 += gm * pn[s * 2 * C + c];
        t2 += gm * pn[s * 2 * C + C + c];
    }
    const double mean_u = block_sum(t1, sh) / count;
    const double mean_ux = block_sum(t2, sh) * r / count;
    for (int c = g * Cg + threadIdx.x; c < (g + 1) * Cg; c += blockDim.x) {
        const double gm = gamma ? (double)bf16_load(gamma, c) : 1.0;
        float *o = coef + ((int64_t)n * C + c) * 3;
        o[0] = (float)(r * gm);
        o[1] = (float)(-r * r * mean_ux);
        o[2] = (float)(-r * mean_u + r * r * mean_ux * mu);
    }
}

__global__ static void group_dx_kernel(float *dx, float beta, const float *dy, const uint16_t *x,
                                       const float *coef, int64_t PC, int C) {
    const int64_t base = (int64_t)blockIdx.y * PC;
    const float *cn = coef + (int64_t)blockIdx.y * C * 3;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    const int step = (int)(stride % C);
    int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    for (int c = (int)(j % C); j < PC; j += stride, c = c + step < C ? c + step : c + step - C) {
        const int64_t i = base + j;
        dx[i] = grad_add(beta, dx + i,
                         dy[i] * cn[3 * c] + bf16_load(x, i) * cn[3 * c + 1] + cn[3 * c + 2]);
    }
}

// dγ += Σ_i part[i, 1, c] r_i and dβ += Σ_i part[i, 0, c] over the `items` rows of part
// (items, 2, C) in double; r_i = rstd[(i / slices) G + c / Cg] (group norm: the rows are
// (n, slice)) or 1 (rstd NULL: layer norm, where part already holds Σ dy x̂). Block
// (32, AFFINE_ROWS) per 32 channels: the thread rows stride over the items, then add up in order.
__global__ static void affine_grad_kernel(float *dgamma, float *dbeta, const double *part,
                                          int64_t items, const float *rstd, int64_t slices,
                                          int C, int G) {
    __shared__ double sh[2][AFFINE_ROWS][32];
    const int tx = threadIdx.x, ty = threadIdx.y, c = blockIdx.x * 32 + tx;
    double sg = 0, sb = 0;
    if (c < C) {
        const int g = c / (C / G);
        for (int64_t i = ty; i < items; i += AFFINE_ROWS) {
            const double *p = part + i * 2 * C;
            sb += p[c];
            sg += p[C + c] * (rstd ? (double)rstd[(i / slices) * G + g] : 1.0);
        }
    }
    sh[0][ty][tx] = sg;
    sh[1][ty][tx] = sb;
    __syncthreads();
    if (ty == 0 && c < C) {
        for (int r = 1; r < AFFINE_ROWS; r++) {
            sg += sh[0][r][tx];
            sb += sh[1][r][tx];
        }
        if (dgamma) dgamma[c] += (float)sg;
        if (dbeta) dbeta[c] += (float)sb;
    }
}

static void launch_affine_grad(float *dgamma, float *dbeta, const double *part, int64_t items,
                               const float *rstd, int64_t slices, int C, int G) {
    affine_grad_kernel<<<(C + 31) / 32, dim3(32, AFFINE_ROWS), 0, ldmc_stream()>>>(
        dgamma, dbeta, part, items, rstd, slices, C, G);
    CUDA_CHECK_LAUNCH("affine_grad_kernel");
}

// Blocks for a per-image elementwise pass over PC values: grid (x, N).
static dim3 image_grid(int64_t PC, int N) {
    unsigned bx = ldmc_blocks(PC, NORM_THREADS), cap = (unsigned)(65535u * 32u / N);
    return dim3(bx < cap ? bx : (cap > 0 ? cap : 1), (unsigned)N);
}

// Workspace: part (N, slices, 2, C) doubles, then N C 2 floats (a, b).
extern "C" void ldmc_cuda_group_norm_forward(uint16_t *y, float *mean, float *rstd,
                                             const uint16_t *x, const uint16_t *gamma,
                                             const uint16_t *beta, int N, int64_t P, int C, int G,
                                             float eps) {
    if (N <= 0 || P <= 0 || C <= 0 || G <= 0) return;
    LDMC_CHECK(C % G == 0, "group_norm: C = %d is not divisible by G = %d", C, G);
    const slice_geom sg = slice_geom_of(N, P, C);
    const size_t part_n = (size_t)N * sg.slices * 2 * C;
    double *part = (double *)ldmc_cuda_workspace(part_n * sizeof(double) +
                                                 (size_t)N * C * 2 * sizeof(float));
    float *ab = (float *)(part + part_n);
    channel_sums_kernel<false><<<dim3((unsigned)sg.slices, (unsigned)N), NORM_THREADS, 0,
                                 ldmc_stream()>>>(part, x, nullptr, nullptr, P, C, G, sg.cw,
                                                  sg.rp, sg.rows);
    CUDA_CHECK_LAUNCH("channel_sums_kernel");
    group_stats_kernel<<<dim3((unsigned)G, (unsigned)N), NORM_THREADS, 0, ldmc_stream()>>>(
        mean, rstd, ab, part, x, gamma, beta, P, C, G, sg.slices, eps);
    CUDA_CHECK_LAUNCH("group_stats_kernel");
    group_apply_kernel<<<image_grid(P * C, N), NORM_THREADS, 0, ldmc_stream()>>>(y, x, ab, P * C,
                                                                                  C);
    CUDA_CHECK_LAUNCH("group_apply_kernel");
}

// Workspace: part (N, slices, 2, C) doubles, then N C 3 floats (k1, k2, k3).
extern "C" void ldmc_cuda_group_norm_backward(float *dx, float dx_beta, float *dgamma, float *dbeta,
                                              const float *dy, const uint16_t *x, const float *mean,
                                              const float *rstd, const uint16_t *gamma, int N,
                                              int64_t P, int C, int G) {
    if (N <= 0 || C <= 0 || G <= 0 || P <= 0 || (!dx && !dgamma && !dbeta)) return;
    LDMC_CHECK(C % G == 0, "group_norm: C = %d is not divisible by G = %d", C, G);
    const slice_geom sg = slice_geom_of(N, P, C);
    const size_t part_n = (size_t)N * sg.slices * 2 * C;
    double *part = (double *)ldmc_cuda_workspace(part_n * sizeof(double) +
                                                 (size_t)N * C * 3 * sizeof(float));
    float *coef = (float *)(part + part_n);
    channel_sums_kernel<true><<<dim3((unsigned)sg.slices, (unsigned)N), NORM_THREADS, 0,
                                ldmc_stream()>>>(part, x, dy, mean, P, C, G, sg.cw, sg.rp,
                                                 sg.rows);
    CUDA_CHECK_LAUNCH("channel_sums_kernel");
    if (dgamma || dbeta)
        launch_affine_grad(dgamma, dbeta, part, (int64_t)N * sg.slices, rstd, sg.slices, C, G);
    if (!dx) return;
    group_coef_kernel<<<dim3((unsigned)G, (unsigned)N), NORM_THREADS, 0, ldmc_stream()>>>(
        coef, part, mean, rstd, gamma, P, C, G, sg.slices);
    CUDA_CHECK_LAUNCH("group_coef_kernel");
    group_dx_kernel<<<image_grid(P * C, N), NORM_THREADS, 0, ldmc_stream()>>>(dx, dx_beta, dy, x,
                                                                              coef, P * C, C);
    CUDA_CHECK_LAUNCH("group_dx_kernel");
}

// ---- layer norm: one warp per row (LAUNCH_1D over 32 threads a row) ----------------------------

__global__ static void layer_norm_forward_kernel(uint16_t *y, float *mean, float *rstd,
                                                 const uint16_t *x, const uint16_t *gamma,
                                                 const uint16_t *beta, int64_t M, int C,
                                                 float eps) {
    const int lane = threadIdx.x & 31;
    const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t m = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5; m < M; m += warps) {
        const uint16_t *row = x + m * C;
        double s = 0, q = 0;
        for (int c = lane; c < C; c += 32)
            s += bf16_load(row, c);
        const double mu = warp_sum(s) / C;
        for (int c = lane; c < C; c += 32) {
            const double d = (double)bf16_load(row, c) - mu;
            q += d * d;
        }
        const double r = 1.0 / sqrt(warp_sum(q) / C + (double)eps);
        if (lane == 0) {
            mean[m] = (float)mu;
            rstd[m] = (float)r;
        }
        const float muf = (float)mu, rf = (float)r;
        uint16_t *out = y + m * C;
        for (int c = lane; c < C; c += 32) {
            const float v = (bf16_load(row, c) - muf) * rf;
            out[c] = bf16_from(v * (gamma ? bf16_load(gamma, c) : 1.0f) +
                               (beta ? bf16_load(beta, c) : 0.0f));
        }
    }
}

// dx (= or +=, beta 0 or 1) r (u - mean(u) - x̂ mean(u x̂)) with u = dy γ, per row.
__global__ static void layer_norm_dx_kernel(float *dx, float beta, const float *dy,
                                            const uint16_t *x, const float *mean, const float *rstd,
                                            const uint16_t *gamma, int64_t M, int C) {
    const int lane = threadIdx.x & 31;
    const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t m = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5; m < M; m += warps) {
        const uint16_t *row = x + m * C;
        const float *drow = dy + m * C;
        const float mu = mean[m], r = rstd[m];
        double su = 0, sux = 0;
        for (int c = lane; c < C; c += 32) {
            const float xhat = (bf16_load(row, c) - mu) * r;
            const float u = drow[c] * (gamma ? bf16_load(gamma, c) : 1.0f);
            su += u;
            sux += (double)u * xhat;
        }
        const float mean_u = (float)(warp_sum(su) / C), mean_ux = (float)(warp_sum(sux) / C);
        float *out = dx + m * C;
        for (int c = lane; c < C; c += 32) {
            const float xhat = (bf16_load(row, c) - mu) * r;
            const float u = drow[c] * (gamma ? bf16_load(gamma, c) : 1.0f);
            out[c] = grad_add(beta, out + c, r * (u - mean_u - xhat * mean_ux));
        }
    }
}

// part (slices, 2, C) in double: Σ dy and Σ dy x̂ over each slice of `rows` rows. Block
// (32, AFFINE_ROWS), grid (C / 32, slices): the thread rows stride over the slice's rows.
__global__ static void layer_norm_affine_part_kernel(double *part, const float *dy,
                                                     const uint16_t *x, const float *mean,
                                                     const float *rstd, int64_t M, int C,
                                                     int64_t rows) {
    __shared__ double sh[2][AFFINE_ROWS][32];
    const int tx = threadIdx.x, ty = threadIdx.y, c = blockIdx.x * 32 + tx;
    const int64_t s = blockIdx.y, m0 = s * rows, m1 = m0 + rows < M ? m0 + rows : M;
    double sb = 0, sg = 0;
    if (c < C) {
        for (int64_t m = m0 + ty; m < m1; m += AFFINE_ROWS) {
            const double g = dy[m * C + c];
            sb += g;
            sg += g * (double)((bf16_load(x, m * C + c) - mean[m]) * rstd[m]);
        }
    }
    sh[0][ty][tx] = sb;
    sh[1][ty][tx] = sg;
    __syncthreads();
    if (ty == 0 && c < C) {
        for (int r = 1; r < AFFINE_ROWS; r++) {
            sb += sh[0][r][tx];
            sg += sh[1][r][tx];
        }
        part[s * 2 * C + c] = sb;
        part[s * 2 * C + C + c] = sg;
    }
}

extern "C" void ldmc_cuda_layer_norm_forward(uint16_t *y, float *mean, float *rstd,
                                             const uint16_t *x, const uint16_t *gamma,
                                             const uint16_t *beta, int64_t M, int C, float eps) {
    if (C <= 0) return;
    LAUNCH_1D(layer_norm_forward_kernel, M * 32, y, mean, rstd, x, gamma, beta, M, C, eps);
}

// Workspace (dγ or dβ wanted): part (slices, 2, C) doubles, slices <= 1024 of >= 64 rows.
extern "C" void ldmc_cuda_layer_norm_backward(float *dx, float dx_beta, float *dgamma, float *dbeta,
                                              const float *dy, const uint16_t *x, const float *mean,
                                              const float *rstd, const uint16_t *gamma, int64_t M,
                                              int C) {
    if (M <= 0 || C <= 0) return;
    if (dx) LAUNCH_1D(layer_norm_dx_kernel, M * 32, dx, dx_beta, dy, x, mean, rstd, gamma, M, C);
    if (!dgamma && !dbeta) return;
    int64_t rows = (M + 1023) / 1024;
    if (rows < 64) rows = 64;
    const int64_t slices = (M + rows - 1) / rows;
    double *part = (double *)ldmc_cuda_workspace((size_t)slices * 2 * C * sizeof(double));
    layer_norm_affine_part_kernel<<<dim3((unsigned)((C + 31) / 32), (unsigned)slices),
                                    dim3(32, AFFINE_ROWS), 0, ldmc_stream()>>>(
        part, dy, x, mean, rstd, M, C, rows);
    CUDA_CHECK_LAUNCH("layer_norm_affine_part_kernel");
    launch_affine_grad(dgamma, dbeta, part, slices, nullptr, slices, C, 1);
}
