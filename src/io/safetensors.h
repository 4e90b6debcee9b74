// Safetensors files (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
// length N, N bytes of JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
// "__metadata__": {string: string}}, then the data section. Reading maps the file and checks
// every field before any tensor is used: header length, JSON, dtype (F32, F16, BF16, I32, I64),
// shape, offsets inside the data section, size = numel x dtype size, no two tensors overlapping,
// no duplicate names. Writing goes to "<path>.tmp", is fsynced and renamed, so a crash never
// leaves a half-written file under the real name. PyTorch files (.pth, .pt, .ckpt) open through
// the same call (io/torch_file.h), their tensors copied into an owned buffer.
// Tested by tests/test_safetensors.c (and tests/test_torch_file.c).
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"

// The spec's limit on the JSON header (100 MB).
#define LDMC_SAFETENSORS_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

typedef struct ldmc_st_tensor {
    char *name;
    ldmc_dtype dtype;
    int ndim;
    int64_t shape[LDMC_MAX_DIMS];
    uint64_t begin, end; // byte offsets into the data section
    const void *data;    // inside the mapping; not necessarily aligned
} ldmc_st_tensor;

typedef struct ldmc_st_meta {
    char *key, *value;
} ldmc_st_meta;

typedef struct ldmc_safetensors {
    char *path;
    void *map; // the mapped file, or (owned) a malloc'd buffer
    size_t map_size;
    bool owned; // map is a malloc'd buffer (a PyTorch file's tensors), freed instead of unmapped
    const unsigned char *data; // the data section
    uint64_t data_size;
    ldmc_st_tensor *tensors; // in file order of their offsets
    int count;
    ldmc_st_meta *meta;
    int meta_count;
} ldmc_safetensors;

// Opens and validates; on failure returns -1 with a message naming the file and the problem.
// A PyTorch file (ldmc_torch_file_probe) is read by ldmc_torch_open instead.
int ldmc_safetensors_open(ldmc_safetensors *st, const char *path, ldmc_err *err);
void ldmc_safetensors_close(ldmc_safetensors *st);
const ldmc_st_tensor *ldmc_safetensors_find(const ldmc_safetensors *st, const char *name);
const char *ldmc_safetensors_meta(const ldmc_safetensors *st, const char *key);
int64_t ldmc_st_numel(const ldmc_st_tensor *t);
// Copies a tensor into dst, converting its dtype to dst_dtype (float types convert among
// themselves; integer types only to themselves).
int ldmc_safetensors_read(const ldmc_safetensors *st, const ldmc_st_tensor *t, void *dst,
                          ldmc_dtype dst_dtype, ldmc_err *err);

// One tensor to write: `data` holds numel values of `src_dtype` (any alignment); the file gets
// `dtype`. Or, when `produce` is set, it fills a temporary buffer of numel src_dtype values
// just before the tensor is written (a layout change without a copy of the whole model).
typedef struct ldmc_st_entry {
    const char *name;
    ldmc_dtype dtype;
    ldmc_dtype src_dtype;
    int ndim;
    int64_t shape[LDMC_MAX_DIMS];
    const void *data;
    void (*produce)(const struct ldmc_st_entry *e, void *dst);
} ldmc_st_entry;

// Writes the tensors in the given order, with optional metadata (meta_count key/value pairs).
int ldmc_safetensors_write(const char *path, const ldmc_st_entry *entries, int count,
                           const ldmc_st_meta *meta, int meta_count, ldmc_err *err);
