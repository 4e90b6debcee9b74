// The optimizer's policy (see optim.h); the arithmetic is src/ops/param_ops.h's.
// Tested by tests/test_train.c.
#include "train/optim.h"

#include <math.h>

#include "core/error.h"
#include "ops/param_ops.h"

double ldmc_lr_at(const ldmc_lr_schedule *s, int64_t step) {
    if (s->warmup_steps > 0 && step < s->warmup_steps)
        return s->lr * (double)(step + 1) / (double)s->warmup_steps;
    if (s->shape == LDMC_LR_CONSTANT || s->total_steps <= s->warmup_steps) return s->lr;
    double progress = (double)(step - s->warmup_steps) / (double)(s->total_steps - s->warmup_steps);
    if (progress > 1) progress = 1;
    return s->min_lr + 0.5 * (s->lr - s->min_lr) * (1 + cos(M_PI * progress));
}

double ldmc_grad_norm(const ldmc_params *p) { return sqrt(ldmc_params_grad_sum_squares(p)); }

ldmc_adamw_coeffs ldmc_adamw_coeffs_at(const ldmc_adamw *opt, double lr, int64_t step,
                                       unsigned flags) {
    LDMC_CHECK(step >= 1, "AdamW step %lld: steps count from 1", (long long)step);
    const double c1 = 1 - pow(opt->beta1, (double)step), c2 = 1 - pow(opt->beta2, (double)step);
    // PyTorch's AdamW: decoupled decay first, w -= lr wd w, then the Adam step.
    return (ldmc_adamw_coeffs){
        .decay = (flags & LDMC_PARAM_NO_DECAY) ? 1.0f : (float)(1 - lr * opt->weight_decay),
        .step_size = (float)(lr / c1),
        .denom_scale = (float)(1 / sqrt(c2)),
        .beta1 = (float)opt->beta1,
        .beta2 = (float)opt->beta2,
        .eps = (float)opt->eps};
}

void ldmc_adamw_step(ldmc_params *p, const ldmc_adamw *opt, double lr, int64_t step) {
    for (int i = 0; i < p->count; i++) {
        const ldmc_param *item = &p->items[i];
        if ((item->flags & LDMC_PARAM_FROZEN) || !ldmc_params_owns(p, i)) continue;
        ldmc_adamw_coeffs c = ldmc_adamw_coeffs_at(opt, lr, step, item->flags);
        ldmc_params_adamw(p, i, &c, NULL);
    }
}

double ldmc_ema_decay(double decay, int64_t updates) {
    double warm = (1.0 + (double)updates) / (10.0 + (double)updates);
    return warm < decay ? warm : decay;
}

void ldmc_optim_update(ldmc_params *p, const ldmc_adamw *opt, double grad_clip, double ema_decay,
                       double norm, double lr, int64_t updates) {
    if (grad_clip > 0 && norm > grad_clip) ldmc_params_grad_scale(p, grad_clip / norm);
    ldmc_adamw_step(p, opt, lr, updates);
    if (ema_decay > 0) ldmc_params_ema_update(p, ldmc_ema_decay(ema_decay, updates));
}
