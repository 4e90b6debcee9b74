// The optimizer's policy over the parameter table: AdamW (no weight decay where the table says
// so, nothing for frozen parameters), the learning rate schedule (linear warmup, then constant or
// cosine), global-norm gradient clipping, and the EMA of the weights with warmup. The arithmetic
// on the flat buffers, on either device, is src/ops/param_ops.h's.
// Tested by tests/test_train.c against PyTorch's formulas.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "core/params.h"
#include "ops/param_ops.h"

typedef struct ldmc_adamw {
    double lr;           // the peak learning rate
    double beta1, beta2; // 0.9, 0.999
    double eps;          // 1e-8
    double weight_decay; // 0.01
} ldmc_adamw;

typedef enum ldmc_lr_shape { LDMC_LR_CONSTANT, LDMC_LR_COSINE } ldmc_lr_shape;

typedef struct ldmc_lr_schedule {
    double lr, min_lr;
    int64_t warmup_steps, total_steps;
    ldmc_lr_shape shape;
} ldmc_lr_schedule;

// The learning rate of optimizer step `step` (0-based): linear from lr/warmup up to lr over the
// warmup, then constant, or a cosine from lr down to min_lr at total_steps.
double ldmc_lr_at(const ldmc_lr_schedule *s, int64_t step);

// The global L2 norm of the trainable gradients (in double, summed in a fixed order).
double ldmc_grad_norm(const ldmc_params *p);

// The arithmetic's coefficients of AdamW update `step` (from 1: bias correction) at `lr` for a
// parameter with these flags (LDMC_PARAM_NO_DECAY: no weight decay).
ldmc_adamw_coeffs ldmc_adamw_coeffs_at(const ldmc_adamw *opt, double lr, int64_t step,
                                       unsigned flags);
// One AdamW update of every trainable parameter; `step` counts from 1 (bias correction). Needs
// the WEIGHTS, GRAD, ADAM_M and ADAM_V buffers.
void ldmc_adamw_step(ldmc_params *p, const ldmc_adamw *opt, double lr, int64_t step);

// The EMA decay after `updates` updates: min(decay, (1 + updates) / (10 + updates)), as LDM's
// LitEma warms it up.
double ldmc_ema_decay(double decay, int64_t updates);

// The update after a step's gradients (of global norm `norm`): clipping to `grad_clip` when it is
// set (> 0) and exceeded, AdamW at `lr` as update `updates` (from 1), then the EMA when
// `ema_decay` > 0 (frozen parameters are copied into it too).
void ldmc_optim_update(ldmc_params *p, const ldmc_adamw *opt, double grad_clip, double ema_decay,
                       double norm, double lr, int64_t updates);
