// Layers with parameters (see nn.h).
#include "nn/nn.h"

#include <stdarg.h>
#include <stdio.h>

#include "core/error.h"
#include "ops/ops.h"

const char *nn_name(char *buf, int size, const char *prefix, const char *suffix_fmt, ...) {
    int n = snprintf(buf, (size_t)size, "%s%s", prefix, *prefix ? "." : "");
    va_list args;
    va_start(args, suffix_fmt);
    vsnprintf(buf + n, (size_t)(size - n), suffix_fmt, args);
    va_end(args);
    return buf;
}

void nn_linear_init(nn_linear *l, ldmc_params *p, const char *name, int in, int out, bool bias) {
    char buf[256];
    l->in = in;
    l->out = out;
    l->weight = ldmc_params_add(p, nn_name(buf, sizeof buf, name, "weight"), 2,
                                (int64_t[]){out, in}, 0);
    l->bias = bias ? ldmc_params_add(p, nn_name(buf, sizeof buf, name, "bias"), 1,
                                     (int64_t[]){out}, LDMC_PARAM_NO_DECAY)
                   : -1;
    if (bias) ldmc_params_set_init(p, l->bias, LDMC_INIT_FAN_IN, in);
}

void nn_conv_init(nn_conv *c, ldmc_params *p, const char *name, int in, int out, int kernel,
                  int stride, const int *pad) {
    char buf[256];
    *c = (nn_conv){.in = in, .out = out, .kernel = kernel, .stride = stride};
    for (int i = 0; i < 4; i++) c->pad[i] = pad ? pad[i] : kernel / 2;
    c->weight = ldmc_params_add(p, nn_name(buf, sizeof buf, name, "weight"), 4,
                                (int64_t[]){out, kernel, kernel, in}, LDMC_PARAM_CONV);
    c->bias = ldmc_params_add(p, nn_name(buf, sizeof buf, name, "bias"), 1, (int64_t[]){out},
                              LDMC_PARAM_NO_DECAY);
    ldmc_params_set_init(p, c->bias, LDMC_INIT_FAN_IN, (int64_t)in * kernel * kernel);
}

static void norm_init(nn_norm *n, ldmc_params *p, const char *name, int channels, int groups,
                      double eps) {
    char buf[256];
    *n = (nn_norm){.channels = channels, .groups = groups, .eps = eps};
    n->weight = ldmc_params_add(p, nn_name(buf, sizeof buf, name, "weight"), 1,
                                (int64_t[]){channels}, LDMC_PARAM_NO_DECAY);
    n->bias = ldmc_params_add(p, nn_name(buf, sizeof buf, name, "bias"), 1, (int64_t[]){channels},
                              LDMC_PARAM_NO_DECAY);
    ldmc_params_set_init(p, n->weight, LDMC_INIT_ONE, 1);
    ldmc_params_set_init(p, n->bias, LDMC_INIT_ZERO, 1);
}

// GroupNorm with 32 groups everywhere in SDXL's UNet and VAE.
void nn_group_norm_init(nn_norm *n, ldmc_params *p, const char *name, int channels, double eps) {
    LDMC_CHECK(channels % 32 == 0, "%s: %d channels cannot form 32 groups", name, channels);
    norm_init(n, p, name, channels, 32, eps);
}

void nn_layer_norm_init(nn_norm *n, ldmc_params *p, const char *name, int channels, double eps) {
    norm_init(n, p, name, channels, 0, eps);
}

void nn_zero_init(ldmc_params *p, int weight, int bias) {
    ldmc_params_set_init(p, weight, LDMC_INIT_ZERO, 1);
    if (bias >= 0) ldmc_params_set_init(p, bias, LDMC_INIT_ZERO, 1);
}

ldmc_tensor *nn_param(const ldmc_params *p, int index) {
    if (index < 0) return NULL;
    LDMC_CHECK(p->buffers[LDMC_ROLE_WEIGHTS], "parameter '%s' used before the weights exist",
               p->items[index].name);
    return &p->items[index].tensor;
}

ldmc_tensor *nn_linear_forward(ldmc_ctx *ctx, const ldmc_params *p, const nn_linear *l,
                               ldmc_tensor *x) {
    return ldmc_linear(ctx, x, nn_param(p, l->weight), nn_param(p, l->bias));
}

ldmc_tensor *nn_conv_forward(ldmc_ctx *ctx, const ldmc_params *p, const nn_conv *c,
                             ldmc_tensor *x) {
    return ldmc_conv2d_padded(ctx, x, nn_param(p, c->weight), nn_param(p, c->bias), c->stride,
                              c->pad);
}

ldmc_tensor *nn_norm_forward(ldmc_ctx *ctx, const ldmc_params *p, const nn_norm *n,
                             ldmc_tensor *x) {
    if (n->groups)
        return ldmc_group_norm(ctx, x, nn_param(p, n->weight), nn_param(p, n->bias), n->groups,
                               n->eps);
    return ldmc_layer_norm(ctx, x, nn_param(p, n->weight), nn_param(p, n->bias), n->eps);
}
