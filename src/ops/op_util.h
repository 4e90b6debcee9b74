// Helpers shared by the op wrappers in src/ops/ops_*.c: input checks with messages that name the
// op and the shapes, and short names for the f32 data and gradient of a tensor.
#pragma once
#include <stdio.h>

#include "core/error.h"
#include "core/tape.h"
#include "ops/cpu_kernels.h"
#include "ops/ops.h"
#ifdef LDMC_HAVE_CUDA
#include "kernels/ldmc_cuda.h"
#endif

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})
#define NDIM(...) ((int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
// A fresh output in the context's activation dtype (f32 on the CPU, bf16 on the GPU).
#define NEW(ctx, ...) ldmc_new((ctx), (ctx)->act_dtype, NDIM(__VA_ARGS__), SHAPE(__VA_ARGS__))
#define TENSORS(...) ((ldmc_tensor *[]){__VA_ARGS__})
#define COUNT_TENSORS(...) ((int)(sizeof(TENSORS(__VA_ARGS__)) / sizeof(ldmc_tensor *)))
// Records the node for op with the given inputs and one output.
#define RECORD(ctx, op, out, ...)                                                                  \
    ldmc_record((ctx), (op), TENSORS(__VA_ARGS__), COUNT_TENSORS(__VA_ARGS__), TENSORS(out), 1)

// Fatal, naming the tensor, when it is not where an op's kernel expects it.
static inline void check_place(const ldmc_tensor *t, ldmc_device device, ldmc_dtype dtype) {
    if (t->device != device || t->dtype != dtype)
        LDMC_FATAL("tensor '%s' is %s on the %s where %s on the %s is expected (mixing devices "
                   "or dtypes in one op)",
                   t->name ? t->name : "?", ldmc_dtype_name(t->dtype),
                   t->device == LDMC_CUDA ? "GPU" : "CPU", ldmc_dtype_name(dtype),
                   device == LDMC_CUDA ? "GPU" : "CPU");
}

// CPU kernels: f32 data on the host (NULL stays NULL).
static inline const float *DATA(const ldmc_tensor *t) {
    if (!t) return NULL;
    check_place(t, LDMC_CPU, LDMC_F32);
    return t->data;
}
static inline float *OUT(const ldmc_tensor *t) { return (float *)DATA(t); }

// GPU kernels: bf16 activations and weights (BF), f32 values (DF), both in GPU memory.
static inline uint16_t *BF(const ldmc_tensor *t) {
    if (!t) return NULL;
    check_place(t, LDMC_CUDA, LDMC_BF16);
    return t->data;
}
static inline float *DF(const ldmc_tensor *t) {
    if (!t) return NULL;
    check_place(t, LDMC_CUDA, LDMC_F32);
    return t->data;
}

// The op runs on the GPU when its first input is there (the kernels check the others).
static inline bool ON_GPU(const ldmc_tensor *t) { return t->device == LDMC_CUDA; }

// Calls a GPU launcher (kernels/ldmc_cuda.h); in a build without CUDA no GPU tensor can exist,
// and reaching one is a bug reported by name.
#ifdef LDMC_HAVE_CUDA
#define GPU(call) call
#define GPU_VALUE(call) (call)
#else
#define GPU(call) LDMC_FATAL("%s: a GPU tensor in a build without CUDA", __func__)
#define GPU_VALUE(call) (LDMC_FATAL("%s: a GPU tensor in a build without CUDA", __func__), 0)
#endif
// The upstream gradient of an output that backward reached.
static inline const float *DOUT(const ldmc_tensor *t) { return ldmc_grad_if_any(t); }

#ifdef LDMC_HAVE_CUDA
// For GPU launchers that take bf16 gradients (core/tape.h): input k's gradient, to write, and an
// output's upstream gradient, f32 or bf16.
static inline ldmc_cuda_grad GRAD_ANY(ldmc_ctx *ctx, ldmc_tensor *t, int k) {
    void *g = ldmc_grad_any(ctx, t);
    return (ldmc_cuda_grad){g, g && ldmc_grad_is_bf16(t), ldmc_grad_beta(ctx, k)};
}
static inline ldmc_cuda_dy DOUT_ANY(const ldmc_tensor *t) {
    return (ldmc_cuda_dy){ldmc_grad_any_if_any(t), ldmc_grad_is_bf16(t)};
}
#endif

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

// dst += s src over n gradient values, on the device of tensor t.
static inline void accumulate_on(const ldmc_tensor *t, float *dst, float beta, const float *src,
                                 double s, int64_t n) {
    if (!dst) return;
    if (ON_GPU(t))
        GPU(ldmc_cuda_accumulate(dst, beta, src, (float)s, n));
    else
        accumulate_f32(dst, beta, src, s, n);
}

static inline int64_t last_dim(const ldmc_tensor *t) { return t->ndim ? t->shape[t->ndim - 1] : 1; }
