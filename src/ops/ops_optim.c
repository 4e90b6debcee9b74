// Ops over the parameter table's flat buffers (see param_ops.h). Kernels: src/ops/cpu/optim.inc
// and kernels/optim.cu. Tested by tests/test_train.c and tests/test_cuda.c.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops/op_util.h"
#include "ops/param_ops.h"

static bool trainable(const ldmc_param *item) { return !(item->flags & LDMC_PARAM_FROZEN); }

void ldmc_params_grad_partials(const ldmc_params *p, double *partial) {
    memset(partial, 0, (size_t)p->count * sizeof *partial);
    if (p->on_device) {
        LDMC_CHECK(p->device[LDMC_ROLE_GRAD], "gradient norm without a gradient buffer on the GPU");
        size_t b = p->sharded ? p->shard_begin : 0, e = p->sharded ? p->shard_end : p->total;
        int first = 0;
        while (first < p->count && !ldmc_params_owns(p, first))
            first++;
        if (first < p->count)
            partial[first] = GPU_VALUE(
                ldmc_cuda_sum_squares((const float *)p->device[LDMC_ROLE_GRAD] + b, e - b));
        (void)b, (void)e; // (a build without CUDA never gets here)
        return;
    }
    const float *g = p->buffers[LDMC_ROLE_GRAD];
    LDMC_CHECK(g, "gradient norm without a gradient buffer");
#pragma omp parallel for schedule(dynamic, 4)
    for (int i = 0; i < p->count; i++)
        if (trainable(&p->items[i]) && ldmc_params_owns(p, i))
            partial[i] = sum_squares_f32(g + p->items[i].offset, p->items[i].numel);
}

double ldmc_params_grad_sum_squares(const ldmc_params *p) {
    if (p->on_device) {
        LDMC_CHECK(p->device[LDMC_ROLE_GRAD], "gradient norm without a gradient buffer on the GPU");
        return GPU_VALUE(ldmc_cuda_sum_squares(p->device[LDMC_ROLE_GRAD], p->total));
    }
    double *partial = calloc((size_t)(p->count ? p->count : 1), sizeof *partial);
    LDMC_CHECK(partial, "out of memory");
    ldmc_params_grad_partials(p, partial);
    double total = 0;
    for (int i = 0; i < p->count; i++)
        total += partial[i]; // in table order: deterministic
    free(partial);
    return total;
}

void ldmc_params_grad_scale(ldmc_params *p, double factor) {
    if (p->on_device)
        GPU(ldmc_cuda_scale_f32(p->device[LDMC_ROLE_GRAD], (float)factor, (int64_t)p->total));
    else
        scale_values_f32(p->buffers[LDMC_ROLE_GRAD], (float)factor, (int64_t)p->total);
}

void ldmc_params_adamw(ldmc_params *p, int index, const ldmc_adamw_coeffs *c, double *sum_sq) {
    const ldmc_param *item = &p->items[index];
    const size_t o = item->offset;
    const float *g = item->tensor.grad;
    LDMC_CHECK(g, "AdamW of '%s' without its gradient", item->name);
    if (p->on_device) {
        LDMC_CHECK(p->device[LDMC_ROLE_ADAM_M] && p->device[LDMC_ROLE_ADAM_V],
                   "AdamW needs m and v on the GPU");
        if (sum_sq) GPU(ldmc_cuda_sum_squares_to(sum_sq, g, (size_t)item->numel));
        GPU(ldmc_cuda_adamw((uint16_t *)p->device[LDMC_ROLE_MASTER] + o,
                            (uint16_t *)p->device[LDMC_ROLE_WEIGHTS] + o, g,
                            (float *)p->device[LDMC_ROLE_ADAM_M] + o,
                            (float *)p->device[LDMC_ROLE_ADAM_V] + o, item->numel, c->decay,
                            c->step_size, c->denom_scale, c->beta1, c->beta2, c->eps, sum_sq));
        return;
    }
    float *w = p->buffers[LDMC_ROLE_WEIGHTS];
    float *m = p->buffers[LDMC_ROLE_ADAM_M], *v = p->buffers[LDMC_ROLE_ADAM_V];
    LDMC_CHECK(w && m && v, "AdamW needs weights, m and v");
    if (sum_sq) {
        *sum_sq = sum_squares_f32(g, item->numel);
        if (!isfinite(*sum_sq)) return; // a gradient not finite: the parameter stays
    }
    adamw_update_f32(w + o, g, m + o, v + o, item->numel, c->decay, c->step_size, c->denom_scale,
                     c->beta1, c->beta2, c->eps);
}

// The elements the EMA covers: the shard's under ZeRO-1, else all.
static void ema_range(const ldmc_params *p, size_t *b, int64_t *n) {
    size_t e;
    ldmc_params_role_range(p, LDMC_ROLE_EMA, b, &e);
    *n = (int64_t)(e - *b);
}

void ldmc_params_ema_update(ldmc_params *p, double decay) {
    size_t b;
    int64_t n;
    ema_range(p, &b, &n);
    if (p->on_device) {
        LDMC_CHECK(p->device[LDMC_ROLE_EMA], "EMA update without an EMA buffer on the GPU");
        GPU(ldmc_cuda_ema((float *)p->device[LDMC_ROLE_EMA] + b,
                          (const uint16_t *)p->device[LDMC_ROLE_MASTER] + b,
                          (const uint16_t *)p->device[LDMC_ROLE_WEIGHTS] + b, n, decay));
        return;
    }
    float *w = p->buffers[LDMC_ROLE_WEIGHTS], *e = p->buffers[LDMC_ROLE_EMA];
    LDMC_CHECK(w && e, "EMA update needs the weights and the EMA buffer");
    ema_update_f32(e + b, w + b, n, decay);
}

void ldmc_params_ema_swap(ldmc_params *p) {
    size_t b;
    int64_t n;
    ema_range(p, &b, &n);
    if (p->on_device) {
        if (!p->device[LDMC_ROLE_EMA]) return;
        GPU(ldmc_cuda_master_swap((uint16_t *)p->device[LDMC_ROLE_MASTER] + b,
                                  (uint16_t *)p->device[LDMC_ROLE_WEIGHTS] + b,
                                  (float *)p->device[LDMC_ROLE_EMA] + b, n));
        return;
    }
    if (!p->buffers[LDMC_ROLE_EMA]) return;
    swap_values_f32(p->buffers[LDMC_ROLE_WEIGHTS] + b, p->buffers[LDMC_ROLE_EMA] + b, n);
}
