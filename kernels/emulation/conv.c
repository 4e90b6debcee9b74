// The CPU emulation of the convolution launchers (see runtime.c): the CPU kernel on bf16
// operands, dy rounded to bf16 and the gradients returned in bf16 as cuDNN's are. (The SIMT
// emulation, tests/simt, runs conv.cu's own implicit GEMM instead.)
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/emulation/emulation.h"
#include "kernels/ldmc_cuda.h"
#include "ops/cpu_kernels.h"

void ldmc_cuda_conv2d_forward(uint16_t *y, const uint16_t *x, const uint16_t *w, const uint16_t *b,
                              const ldmc_conv_geom *g) {
    int64_t nx = (int64_t)g->N * g->H * g->W * g->C, nw = (int64_t)g->O * g->kh * g->kw * g->C,
            ny = (int64_t)g->N * g->Ho * g->Wo * g->O;
    float *fx = f32_of(x, nx), *fw = f32_of(w, nw), *fb = f32_of(b, g->O), *fy = zeros(ny);
    conv2d_forward_f32(fy, fx, fw, fb, g);
    store(y, fy, ny);
    free(fx), free(fw), free(fb), free(fy);
}

void ldmc_cuda_conv2d_backward(float *dx, float dx_beta, float *dw, float *db, const float *dy,
                               const uint16_t *x, const uint16_t *w, const ldmc_conv_geom *g) {
    int64_t nx = (int64_t)g->N * g->H * g->W * g->C, nw = (int64_t)g->O * g->kh * g->kw * g->C,
            ny = (int64_t)g->N * g->Ho * g->Wo * g->O;
    if (db) ldmc_cuda_column_sums(db, 1.0f, dy, ny / g->O, g->O);
    float *fx = f32_of(x, nx), *fw = f32_of(w, nw), *ry = rounded(dy, ny);
    float *gx = dx ? zeros(nx) : NULL, *gw = dw ? zeros(nw) : NULL;
    conv2d_backward_f32(gx, 1, gw, NULL, ry, fx, fw, g);
    if (dx && dx_beta == 0) memset(dx, 0, (size_t)nx * sizeof *dx); // a fresh gradient
    if (dx) add_rounded(dx, gx, nx); // cuDNN returns bf16 gradients
    if (dw) add_rounded(dw, gw, nw);
    free(fx), free(fw), free(ry), free(gx), free(gw);
}

// The whole batch in one piece: there are no slices to bound.
void ldmc_cuda_set_conv_slice_elements(int64_t max_elements) { (void)max_elements; }
