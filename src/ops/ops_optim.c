// Ops over the parameter table's flat buffers (see param_ops.h). Kernels: src/ops/cpu/optim.inc
// and kernels/optim.cu. Tested by tests/test_train.c and tests/test_cuda.c.
#include <math.h>
#include <stdlib.h>

#include "ops/op_util.h"
#include "ops/param_ops.h"

static bool trainable(const ldmc_param *item) { return !(item->flags & LDMC_PARAM_FROZEN); }

double ldmc_params_grad_sum_squares(const ldmc_params *p) {
    if (p->on_device) {
        LDMC_CHECK(p->device[LDMC_ROLE_GRAD], "gradient norm without a gradient buffer on the GPU");
        return GPU_VALUE(ldmc_cuda_sum_squares(p->device[LDMC_ROLE_GRAD], p->total));
    }
    const float *g = p->buffers[LDMC_ROLE_GRAD];
    LDMC_CHECK(g, "gradient norm without a gradient buffer");
    double *partial = calloc((size_t)(p->count ? p->count : 1), sizeof *partial);
    LDMC_CHECK(partial, "out of memory");
#pragma omp parallel for schedule(dynamic, 4)
    for (int i = 0; i < p->count; i++)
        if (trainable(&p->items[i]))
            partial[i] = sum_squares_f32(g + p->items[i].offset, p->items[i].numel);
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

void ldmc_params_adamw(ldmc_params *p, int index, const ldmc_adamw_coeffs *c) {
    const ldmc_param *item = &p->items[index];
    const size_t o = item->offset;
    if (p->on_device) {
        LDMC_CHECK(p->device[LDMC_ROLE_GRAD] && p->device[LDMC_ROLE_ADAM_M] &&
                       p->device[LDMC_ROLE_ADAM_V],
                   "AdamW needs gradients, m and v on the GPU");
        GPU(ldmc_cuda_adamw(
            (float *)p->device[LDMC_ROLE_MASTER] + o, (uint16_t *)p->device[LDMC_ROLE_WEIGHTS] + o,
            (float *)p->device[LDMC_ROLE_GRAD] + o, (float *)p->device[LDMC_ROLE_ADAM_M] + o,
            (float *)p->device[LDMC_ROLE_ADAM_V] + o, item->numel, c->decay, c->step_size,
            c->denom_scale, c->beta1, c->beta2, c->eps));
        return;
    }
    float *w = p->buffers[LDMC_ROLE_WEIGHTS], *g = p->buffers[LDMC_ROLE_GRAD];
    float *m = p->buffers[LDMC_ROLE_ADAM_M], *v = p->buffers[LDMC_ROLE_ADAM_V];
    LDMC_CHECK(w && g && m && v, "AdamW needs weights, gradients, m and v");
    adamw_update_f32(w + o, g + o, m + o, v + o, item->numel, c->decay, c->step_size,
                     c->denom_scale, c->beta1, c->beta2, c->eps);
}

void ldmc_params_ema_update(ldmc_params *p, double decay) {
    if (p->on_device) {
        LDMC_CHECK(p->device[LDMC_ROLE_EMA], "EMA update without an EMA buffer on the GPU");
        GPU(ldmc_cuda_ema(p->device[LDMC_ROLE_EMA], p->device[LDMC_ROLE_MASTER], (int64_t)p->total,
                          decay));
        return;
    }
    float *w = p->buffers[LDMC_ROLE_WEIGHTS], *e = p->buffers[LDMC_ROLE_EMA];
    LDMC_CHECK(w && e, "EMA update needs the weights and the EMA buffer");
    ema_update_f32(e, w, (int64_t)p->total, decay);
}

void ldmc_params_ema_swap(ldmc_params *p) {
    if (p->on_device) {
        if (!p->device[LDMC_ROLE_EMA]) return;
        GPU(ldmc_cuda_swap_f32(p->device[LDMC_ROLE_MASTER], p->device[LDMC_ROLE_EMA],
                               (int64_t)p->total));
        GPU(ldmc_cuda_f32_to_bf16(p->device[LDMC_ROLE_WEIGHTS], p->device[LDMC_ROLE_MASTER],
                                  (int64_t)p->total));
        return;
    }
    if (!p->buffers[LDMC_ROLE_EMA]) return;
    swap_values_f32(p->buffers[LDMC_ROLE_WEIGHTS], p->buffers[LDMC_ROLE_EMA], (int64_t)p->total);
}
