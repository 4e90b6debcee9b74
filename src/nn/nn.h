// Layers with parameters, registered in a parameter table under their official state-dict names:
// linear, convolution, group and layer norm. A layer holds the indices of its parameters in the
// table, so a model can be built, counted and named without allocating a byte of weights
// (`ldmc info`), and bound to the table's buffers once they exist.
// Convolution weights are held as (O, kH, kW, C) and flagged LDMC_PARAM_CONV so that the
// weights-file reader and writer convert them from and to the official (O, C, kH, kW).
// Tested through the models (tests/test_models.c).
#pragma once
#include <stdbool.h>

#include "core/error.h"
#include "core/params.h"
#include "core/tape.h"

typedef struct nn_linear {
    int weight, bias;  // parameter indices; bias -1 when absent
    int in, out;
} nn_linear;

typedef struct nn_conv {
    int weight, bias;
    int in, out, kernel, stride;
    int pad[4];  // top, bottom, left, right
} nn_conv;

typedef struct nn_norm {
    int weight, bias;
    int channels, groups;  // groups 0: layer norm over the last dimension
    double eps;
} nn_norm;

// "prefix.suffix" into buf (suffix may contain printf formats).
const char *nn_name(char *buf, int size, const char *prefix, const char *suffix_fmt, ...)
    LDMC_PRINTF(4, 5);

void nn_linear_init(nn_linear *l, ldmc_params *p, const char *name, int in, int out, bool bias);
// Square kernel; symmetric padding kernel / 2 unless pad is given.
void nn_conv_init(nn_conv *c, ldmc_params *p, const char *name, int in, int out, int kernel,
                  int stride, const int *pad);
void nn_group_norm_init(nn_norm *n, ldmc_params *p, const char *name, int channels, double eps);
void nn_layer_norm_init(nn_norm *n, ldmc_params *p, const char *name, int channels, double eps);

// Marks a layer zero-initialized (generative-models' zero_module): ResBlock out_layers.3,
// SpatialTransformer proj_out, the UNet's output convolution.
void nn_zero_init(ldmc_params *p, int weight, int bias);

// The parameter's bound tensor (NULL for index -1). The table's buffers must exist.
ldmc_tensor *nn_param(const ldmc_params *p, int index);

ldmc_tensor *nn_linear_forward(ldmc_ctx *ctx, const ldmc_params *p, const nn_linear *l,
                               ldmc_tensor *x);
ldmc_tensor *nn_conv_forward(ldmc_ctx *ctx, const ldmc_params *p, const nn_conv *c,
                             ldmc_tensor *x);
ldmc_tensor *nn_norm_forward(ldmc_ctx *ctx, const ldmc_params *p, const nn_norm *n,
                             ldmc_tensor *x);
