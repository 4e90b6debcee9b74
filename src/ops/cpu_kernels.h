// The CPU reference kernels: naive, readable loops (GEMMs through OpenBLAS, loops through
// OpenMP) over raw pointers, written once in src/ops/cpu/*.inc, generic over the element type,
// and compiled twice: *_f32 (what ops.h runs) and *_f64 (what the finite-difference tests run).
// Shapes are outermost first; images are channels-last. Gradient rule: every backward adds (+=)
// into its outputs; a NULL gradient pointer means "not needed" and is skipped.
// Tested by tests/test_ops.c (against PyTorch) and tests/test_gradcheck.c (finite differences).
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rng.h"

// The GELU variants of gelu_forward/backward (and the CUDA twins): exact (erf), the tanh
// approximation, and CLIP's QuickGELU x sigmoid(1.702 x).
enum { LDMC_GELU_ERF = 0, LDMC_GELU_TANH = 1, LDMC_GELU_QUICK = 2 };

// The coefficients of one sampler step (ops.h, ldmc_sampler_update): the denoised D = p x + q out,
// then x = a x + b D + c D_prev + s noise.
typedef struct ldmc_sampler_coeffs {
    double p, q, a, b, c, s;
} ldmc_sampler_coeffs;

// A 2-D convolution or pooling window over (N, H, W, C) -> (N, Ho, Wo, O).
typedef struct ldmc_conv_geom {
    int N, H, W, C; // input
    int O;          // output channels (convolution only)
    int kh, kw;     // window
    int stride;
    int pad_top, pad_bottom, pad_left, pad_right;
    int Ho, Wo; // output, from ldmc_conv_geom_finish
} ldmc_conv_geom;

// Fills Ho and Wo: floor((H + pads - k) / stride) + 1. Returns -1 when the window does not fit.
int ldmc_conv_geom_finish(ldmc_conv_geom *g);

// A gradient's new value from the backward's part v: a fresh (unzeroed) buffer is written
// (beta 0), one that holds a sum already is added to (beta 1). Never 0 * g: g may be NaN bytes.
#define GRAD_ADD(beta, g, v) ((beta) != 0 ? (g) + (v) : (v))

#define REAL float
#define FN(name) name##_f32
#include "ops/cpu/decl.inc"
#undef REAL
#undef FN

#define REAL double
#define FN(name) name##_f64
#include "ops/cpu/decl.inc"
#undef REAL
#undef FN
