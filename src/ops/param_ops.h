// Ops over a parameter table's flat buffers (core/params.h), run where the table lives: on the
// host, or on the GPU once ldmc_params_to_device has moved it (the kernels of kernels/optim.cu,
// whose CPU twins are src/ops/cpu/optim.inc). They are the optimizer's arithmetic; its policy
// (learning rate, which parameters decay, when to clip, the EMA's warmup) is src/train/optim.c's.
// Tested by tests/test_train.c (against PyTorch's formulas) and tests/test_cuda.c (GPU vs CPU).
#pragma once
#include <stdint.h>

#include "core/params.h"

// Σ g² over the trainable parameters' gradients, in double and in a fixed order (the same sum on
// every run): per parameter in table order on the host; over the whole buffer on the GPU, where
// frozen parameters and the padding between tensors hold zeros.
double ldmc_params_grad_sum_squares(const ldmc_params *p);
// Σ g² of each trainable parameter this rank owns (ldmc_params_owns) into partial[i] (count
// entries), 0 for the others: ZeRO-1's norm, summed over ranks then in table order, is then the
// same as ldmc_params_grad_sum_squares. On the GPU the owned range's sum, in one kernel, goes into
// the slot of its first parameter.
void ldmc_params_grad_partials(const ldmc_params *p, double *partial);
// Every gradient times `factor` (clipping).
void ldmc_params_grad_scale(ldmc_params *p, double factor);

// One AdamW update of one parameter, PyTorch's order: decoupled decay, then the bias-corrected
// step: m = β1 m + (1-β1) g, v = β2 v + (1-β2) g², w = w decay - step_size m / (√v denom_scale +
// eps). On the GPU the f32 master steps and the bf16 working copy follows.
typedef struct ldmc_adamw_coeffs {
    float decay;       // 1 - lr weight_decay, or 1 without decay
    float step_size;   // lr / (1 - β1^t)
    float denom_scale; // 1 / √(1 - β2^t)
    float beta1, beta2, eps;
} ldmc_adamw_coeffs;
// The gradient is the parameter's tensor's (its place in the gradient buffer, or the one backward
// gave it: ldmc_params_update_in_backward). With `sum_sq` (a double in GPU memory for a table on
// the GPU, else on the host), Σ g² of the gradient is written there first and the update is
// skipped when it is not finite (the parameter, m and v stay as they were): an update during
// backward, before the whole step's gradient is known finite.
void ldmc_params_adamw(ldmc_params *p, int index, const ldmc_adamw_coeffs *c, double *sum_sq);

// ema = d ema + (1 - d) weights for every parameter (the f32 master on the GPU); for the shard's
// under ZeRO-1.
void ldmc_params_ema_update(ldmc_params *p, double decay);
// Exchanges the weights and the EMA weights (on the GPU: the master and the EMA, then the bf16
// working copy from the new master); the shard's only under ZeRO-1 (the caller gathers the
// working weights). No-op without an EMA buffer.
void ldmc_params_ema_swap(ldmc_params *p);
