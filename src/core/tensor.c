// Tensor helpers (see tensor.h). Tested by tests/test_core.c.
#include "core/tensor.h"

#include <stdio.h>

#include "core/error.h"

int64_t ldmc_shape_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    return n;
}

int64_t ldmc_numel(const ldmc_tensor *t) { return ldmc_shape_numel(t->ndim, t->shape); }

size_t ldmc_nbytes(const ldmc_tensor *t) {
    return (size_t)ldmc_numel(t) * ldmc_dtype_size(t->dtype);
}

bool ldmc_same_shape(const ldmc_tensor *a, const ldmc_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

float *ldmc_data_f32(const ldmc_tensor *t) {
    LDMC_CHECK(t->dtype == LDMC_F32 && t->device == LDMC_CPU,
               "tensor '%s' is %s on %s; this CPU op needs f32 on the CPU", t->name ? t->name : "?",
               ldmc_dtype_name(t->dtype), t->device == LDMC_CPU ? "the CPU" : "the GPU");
    return t->data;
}

const char *ldmc_shape_str(const ldmc_tensor *t, char *buf, size_t size) {
    size_t n = (size_t)snprintf(buf, size, "(");
    for (int i = 0; i < t->ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (n < size) snprintf(buf + n, size - n, ")");
    return buf;
}

ldmc_tensor ldmc_tensor_wrap(ldmc_dtype dtype, void *data, int ndim, const int64_t *shape) {
    LDMC_CHECK(ndim >= 0 && ndim <= LDMC_MAX_DIMS, "tensor rank %d outside 0..%d", ndim,
               LDMC_MAX_DIMS);
    ldmc_tensor t = {.dtype = dtype, .device = LDMC_CPU, .ndim = ndim, .data = data};
    for (int i = 0; i < ndim; i++) {
        LDMC_CHECK(shape[i] >= 0, "negative dimension %lld", (long long)shape[i]);
        t.shape[i] = shape[i];
    }
    return t;
}
