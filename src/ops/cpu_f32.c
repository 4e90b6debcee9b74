// The CPU kernels in f32: what ops.h runs. The code is in src/ops/cpu/*.inc.
#include "ops/cpu_kernels.h"

int ldmc_conv_geom_finish(ldmc_conv_geom *g) {
    int hp = g->H + g->pad_top + g->pad_bottom, wp = g->W + g->pad_left + g->pad_right;
    if (g->stride < 1 || g->kh < 1 || g->kw < 1 || hp < g->kh || wp < g->kw) return -1;
    if (g->pad_top < 0 || g->pad_bottom < 0 || g->pad_left < 0 || g->pad_right < 0) return -1;
    g->Ho = (hp - g->kh) / g->stride + 1;
    g->Wo = (wp - g->kw) / g->stride + 1;
    return 0;
}

#define REAL float
#define REAL_IS_DOUBLE 0
#define FN(name) name##_f32
#include "ops/cpu/all.inc"
