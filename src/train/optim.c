// AdamW, learning rate, clipping, EMA (see optim.h). Tested by tests/test_train.c.
#include "train/optim.h"

#include <math.h>
#include <stdlib.h>

#include "core/error.h"
#ifdef LDMC_HAVE_CUDA
#include "kernels/ldmc_cuda.h"
#endif

double ldmc_lr_at(const ldmc_lr_schedule *s, int64_t step) {
    if (s->warmup_steps > 0 && step < s->warmup_steps)
        return s->lr * (double)(step + 1) / (double)s->warmup_steps;
    if (s->shape == LDMC_LR_CONSTANT || s->total_steps <= s->warmup_steps) return s->lr;
    double progress = (double)(step - s->warmup_steps) / (double)(s->total_steps - s->warmup_steps);
    if (progress > 1) progress = 1;
    return s->min_lr + 0.5 * (s->lr - s->min_lr) * (1 + cos(M_PI * progress));
}

static bool trainable(const ldmc_param *item) { return !(item->flags & LDMC_PARAM_FROZEN); }

double ldmc_grad_norm(const ldmc_params *p) {
#ifdef LDMC_HAVE_CUDA
    // frozen parameters and the padding between tensors never receive a gradient: the whole
    // buffer's sum is the trainable one
    if (p->on_device) return sqrt(ldmc_cuda_sum_squares(p->device[LDMC_ROLE_GRAD], p->total));
#endif
    const float *g = p->buffers[LDMC_ROLE_GRAD];
    LDMC_CHECK(g, "gradient norm without a gradient buffer");
    double *partial = calloc((size_t)(p->count ? p->count : 1), sizeof *partial);
    LDMC_CHECK(partial, "out of memory");
#pragma omp parallel for schedule(dynamic, 4)
    for (int i = 0; i < p->count; i++) {
        if (!trainable(&p->items[i])) continue;
        const float *gi = g + p->items[i].offset;
        double s = 0;
        for (int64_t k = 0; k < p->items[i].numel; k++)
            s += (double)gi[k] * gi[k];
        partial[i] = s;
    }
    double total = 0;
    for (int i = 0; i < p->count; i++)
        total += partial[i]; // in table order: deterministic
    free(partial);
    return sqrt(total);
}

void ldmc_grad_scale(ldmc_params *p, double factor) {
#ifdef LDMC_HAVE_CUDA
    if (p->on_device) {
        ldmc_cuda_scale_f32(p->device[LDMC_ROLE_GRAD], (float)factor, (int64_t)p->total);
        return;
    }
#endif
    float *g = p->buffers[LDMC_ROLE_GRAD];
    float f = (float)factor;
#pragma omp parallel for schedule(static)
    for (size_t k = 0; k < p->total; k++)
        g[k] *= f;
}

void ldmc_adamw_step(ldmc_params *p, const ldmc_adamw *opt, double lr, int64_t step) {
    float *w = p->buffers[LDMC_ROLE_WEIGHTS], *g = p->buffers[LDMC_ROLE_GRAD];
    float *m = p->buffers[LDMC_ROLE_ADAM_M], *v = p->buffers[LDMC_ROLE_ADAM_V];
    bool ready = p->on_device ? p->device[LDMC_ROLE_GRAD] && p->device[LDMC_ROLE_ADAM_M] &&
                                    p->device[LDMC_ROLE_ADAM_V]
                              : w && g && m && v;
    LDMC_CHECK(ready && step >= 1, "AdamW needs weights, gradients, m and v%s (step %lld)",
               p->on_device ? " on the GPU" : "", (long long)step);
    const double c1 = 1 - pow(opt->beta1, (double)step), c2 = 1 - pow(opt->beta2, (double)step);
    const float b1 = (float)opt->beta1, b2 = (float)opt->beta2;
    for (int i = 0; i < p->count; i++) {
        const ldmc_param *item = &p->items[i];
        if (!trainable(item)) continue;
        // PyTorch's AdamW: decoupled decay first, w -= lr wd w, then the Adam step.
        const float decay =
            (item->flags & LDMC_PARAM_NO_DECAY) ? 1.0f : (float)(1 - lr * opt->weight_decay);
        const float step_size = (float)(lr / c1), denom_scale = (float)(1 / sqrt(c2)),
                    eps = (float)opt->eps;
#ifdef LDMC_HAVE_CUDA
        if (p->on_device) { // the f32 master steps; the bf16 working copy follows
            const size_t o = item->offset;
            ldmc_cuda_adamw((float *)p->device[LDMC_ROLE_MASTER] + o,
                            (uint16_t *)p->device[LDMC_ROLE_WEIGHTS] + o,
                            (float *)p->device[LDMC_ROLE_GRAD] + o,
                            (float *)p->device[LDMC_ROLE_ADAM_M] + o,
                            (float *)p->device[LDMC_ROLE_ADAM_V] + o, item->numel, decay,
                            step_size, denom_scale, b1, b2, eps);
            continue;
        }
#endif
        float *wi = w + item->offset, *gi = g + item->offset, *mi = m + item->offset,
              *vi = v + item->offset;
#pragma omp parallel for schedule(static) if (item->numel > 65536)
        for (int64_t k = 0; k < item->numel; k++) {
            float grad = gi[k];
            mi[k] = b1 * mi[k] + (1 - b1) * grad;
            vi[k] = b2 * vi[k] + (1 - b2) * grad * grad;
            wi[k] = wi[k] * decay - step_size * mi[k] / (sqrtf(vi[k]) * denom_scale + eps);
        }
    }
}

double ldmc_ema_decay(double decay, int64_t updates) {
    double warm = (1.0 + (double)updates) / (10.0 + (double)updates);
    return warm < decay ? warm : decay;
}

void ldmc_ema_swap(ldmc_params *p) {
#ifdef LDMC_HAVE_CUDA
    if (p->on_device) {
        if (!p->device[LDMC_ROLE_EMA]) return;
        ldmc_cuda_swap_f32(p->device[LDMC_ROLE_MASTER], p->device[LDMC_ROLE_EMA],
                           (int64_t)p->total);
        ldmc_cuda_f32_to_bf16(p->device[LDMC_ROLE_WEIGHTS], p->device[LDMC_ROLE_MASTER],
                              (int64_t)p->total);
        return;
    }
#endif
    float *w = p->buffers[LDMC_ROLE_WEIGHTS], *e = p->buffers[LDMC_ROLE_EMA];
    if (!e) return;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < p->total; i++) {
        float t = w[i];
        w[i] = e[i];
        e[i] = t;
    }
}

void ldmc_ema_update(ldmc_params *p, double decay) {
#ifdef LDMC_HAVE_CUDA
    if (p->on_device) {
        LDMC_CHECK(p->device[LDMC_ROLE_EMA], "EMA update without an EMA buffer on the GPU");
        ldmc_cuda_ema(p->device[LDMC_ROLE_EMA], p->device[LDMC_ROLE_MASTER], (int64_t)p->total,
                      decay);
        return;
    }
#endif
    float *w = p->buffers[LDMC_ROLE_WEIGHTS], *e = p->buffers[LDMC_ROLE_EMA];
    LDMC_CHECK(w && e, "EMA update needs the weights and the EMA buffer");
    const float d = (float)decay, one_minus = (float)(1 - decay);
#pragma omp parallel for schedule(static)
    for (size_t k = 0; k < p->total; k++)
        e[k] = d * e[k] + one_minus * w[k];
}
