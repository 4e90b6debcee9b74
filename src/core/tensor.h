// Tensors: a dtype, a device, a shape (outermost first), contiguous data. Image-like activations
// are channels-last, (N, H, W, C); token sequences are (N, L, C). A reshape is a view that shares
// data and gradient with its base; anything else that moves data is an op. Gradients are f32 (on
// the GPU, some activations' are bf16: tape.h) and are reached through ldmc_grad (tape.h), never
// through the field directly.
// Tested by tests/test_core.c.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"

#define LDMC_MAX_DIMS 6

typedef enum ldmc_device { LDMC_CPU, LDMC_CUDA } ldmc_device;

struct ldmc_params; // core/params.h

typedef struct ldmc_tensor {
    ldmc_dtype dtype;
    ldmc_device device;
    int ndim;
    int64_t shape[LDMC_MAX_DIMS];
    void *data;
    float *grad;              // same numel; NULL until needed (see ldmc_grad)
    bool grad_bf16;           // the gradient's values are bf16 (see tape.h: bf16 gradients)
    struct ldmc_tensor *base; // a view's base tensor (grad lives there), or NULL
    bool requires_grad;
    bool is_param;    // a view into the parameter table's flat buffers
    uint64_t id;      // creation order within a context (0 for parameters)
    const char *name; // parameter name, or the op that made it
    // The step's memory plan (core/memplan.h): the records of the data and of the gradient
    // (0: none, e.g. memory the caller owns); the recorded node that made the tensor (index + 1,
    // 0: none); whether backward makes it again (`dropped`: its op has `again`) and has done so.
    int32_t slot, grad_slot, producer;
    bool dropped, remade;
    int32_t readers; // recorded nodes that read the tensor (or a view of it); not for parameters
    // The gradient buffer is shared with other tensors (an add handed it to both its inputs;
    // tape.c: pass_through): the earliest producer (node + 1) among its holders. NULL: not shared.
    int32_t *grad_share;
    // A parameter's table (core/params.h; a table stays where it was made, as the models make
    // theirs in place) and index in it, set by ldmc_params_tensor: a table updated during
    // backward (ldmc_params_update_in_backward) has no gradient buffer, and the tape gives the
    // parameter one for the step (tape.h). param_state: 0 before backward needs its gradient, 1
    // while backward adds into it, 2 once updated (reset after backward).
    struct ldmc_params *param_table;
    int32_t param_index;
    uint8_t param_state;
} ldmc_tensor;

int64_t ldmc_shape_numel(int ndim, const int64_t *shape);
int64_t ldmc_numel(const ldmc_tensor *t);
size_t ldmc_nbytes(const ldmc_tensor *t);
bool ldmc_same_shape(const ldmc_tensor *a, const ldmc_tensor *b);
// The data as f32, after checking the dtype (fatal otherwise, naming the tensor).
float *ldmc_data_f32(const ldmc_tensor *t);
// Formats the shape as "(2, 64, 64, 320)" into buf; returns buf.
const char *ldmc_shape_str(const ldmc_tensor *t, char *buf, size_t size);
// A header over existing memory (not owned), for parameters and external buffers.
ldmc_tensor ldmc_tensor_wrap(ldmc_dtype dtype, void *data, int ndim, const int64_t *shape);
