// Helpers shared by the op wrappers in src/ops/ops_*.c: input checks with messages that name the
// op and the shapes, and short names for the f32 data and gradient of a tensor.
#pragma once
#include <stdio.h>

#include "core/error.h"
#include "core/tape.h"
#include "ops/cpu_kernels.h"
#include "ops/ops.h"

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})
#define NDIM(...) ((int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
#define NEW(ctx, ...) ldmc_new((ctx), LDMC_F32, NDIM(__VA_ARGS__), SHAPE(__VA_ARGS__))
#define TENSORS(...) ((ldmc_tensor *[]){__VA_ARGS__})
#define COUNT_TENSORS(...) ((int)(sizeof(TENSORS(__VA_ARGS__)) / sizeof(ldmc_tensor *)))
// Records the node for op with the given inputs and one output.
#define RECORD(ctx, op, out, ...)                                                                  \
    ldmc_record((ctx), (op), TENSORS(__VA_ARGS__), COUNT_TENSORS(__VA_ARGS__), TENSORS(out), 1)

static inline const float *DATA(const ldmc_tensor *t) { return t ? ldmc_data_f32(t) : NULL; }
static inline float *OUT(const ldmc_tensor *t) { return ldmc_data_f32(t); }
// The upstream gradient of an output that backward reached.
static inline const float *DOUT(const ldmc_tensor *t) { return ldmc_grad_if_any(t); }

// Guards every forward kernel: a dry run (ctx->dry_run, for memory plans) allocates every tensor
// as a real run would but computes nothing.
#define COMPUTE(ctx) if (!(ctx)->dry_run)

// Fatal error naming the op and the offending tensor's shape.
#define OP_CHECK(cond, op_name, t, ...)                                                            \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            char shape_[96], msg_[256];                                                            \
            snprintf(msg_, sizeof msg_, __VA_ARGS__);                                              \
            LDMC_FATAL("%s: %s (got '%s' with shape %s)", (op_name), msg_,                         \
                       (t)->name ? (t)->name : "?", ldmc_shape_str((t), shape_, sizeof shape_));   \
        }                                                                                          \
    } while (0)

static inline int64_t last_dim(const ldmc_tensor *t) { return t->ndim ? t->shape[t->ndim - 1] : 1; }
