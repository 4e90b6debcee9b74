// The parameter table: every parameter by its official state-dict name, shape and flags, and one
// flat buffer per role (working weights, fp32 master, gradients, Adam m and v, EMA), all with the
// same layout, so zero-grad, clipping, AdamW, EMA, all-reduce and checkpointing are loops over
// one pointer. Each tensor starts on a 64-byte boundary. Tested by tests/test_core.c.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tensor.h"

enum {
    LDMC_PARAM_NO_DECAY = 1u << 0, // norms, biases, embeddings: AdamW skips weight decay
    LDMC_PARAM_FROZEN = 1u << 1,   // no gradient, not updated
};

typedef enum ldmc_param_role {
    LDMC_ROLE_WEIGHTS, // what the forward reads (f32 on the CPU)
    LDMC_ROLE_MASTER,  // fp32 master copy (GPU training with bf16 weights)
    LDMC_ROLE_GRAD,
    LDMC_ROLE_ADAM_M,
    LDMC_ROLE_ADAM_V,
    LDMC_ROLE_EMA,
    LDMC_ROLE_COUNT
} ldmc_param_role;

typedef struct ldmc_param {
    char *name;
    int ndim;
    int64_t shape[LDMC_MAX_DIMS];
    size_t offset; // in elements, into every role's buffer
    int64_t numel;
    unsigned flags;
    ldmc_tensor tensor; // view: data in the weights, gradient in the gradient buffer
} ldmc_param;

typedef struct ldmc_params {
    ldmc_param *items;
    int count, cap;
    size_t total;                    // elements per role buffer, padding included
    float *buffers[LDMC_ROLE_COUNT]; // NULL until allocated
} ldmc_params;

const char *ldmc_param_role_name(ldmc_param_role role);
// Adds a parameter; returns its index. Fatal on a duplicate name or after buffers exist.
int ldmc_params_add(ldmc_params *p, const char *name, int ndim, const int64_t *shape,
                    unsigned flags);
int ldmc_params_find(const ldmc_params *p, const char *name);
// Sets (or clears) a flag on every parameter whose name matches the glob pattern; returns how
// many matched.
int ldmc_params_flag_matching(ldmc_params *p, const char *pattern, unsigned flag, bool on);
// Allocates a role's buffer, zeroed (idempotent), and re-binds the tensor views.
void ldmc_params_alloc(ldmc_params *p, ldmc_param_role role);
// Zeroes the gradient buffer.
void ldmc_params_zero_grad(ldmc_params *p);
ldmc_tensor *ldmc_params_tensor(ldmc_params *p, int index);
// Count of parameter elements (padding excluded); frozen ones excluded when trainable_only.
int64_t ldmc_params_count(const ldmc_params *p, bool trainable_only);
void ldmc_params_free(ldmc_params *p);
