// Devices: whether a GPU can be used, the GPU runtime the core needs (memory for parameter
// buffers and arenas, copies, the tape's gradient seeds), inputs written from host memory into a
// context on either device, values read back as f32, and Philox noise drawn where a tensor lives
// (the same values on both). device.c and src/ops are the only places that call the CUDA
// kernels' C interface (in kernels/); every other layer goes through them, so the CPU and GPU
// paths share their code (tests/check_layers.sh enforces it).
// Tested by tests/test_cuda.c (GPU) and test_core.c.
#pragma once
#include <stdbool.h>
#include <stdio.h>

#include "core/rng.h"
#include "core/tape.h"

// True when this build has CUDA and a device is present.
bool ldmc_gpu_available(void);
// NULL when ldmc_gpu_available(); else why not, for the user: a build without CUDA, or the CUDA
// runtime's error with the driver's and runtime's versions (an insufficient driver shows here).
const char *ldmc_gpu_unavailable_reason(void);
// "cpu" or "cuda"; ldmc_device_parse returns -1 for anything else.
const char *ldmc_device_name(ldmc_device device);
int ldmc_device_parse(const char *name, ldmc_device *out);

// ---- the GPU runtime (fatal, naming the call, in a build without CUDA) ------------------------
const char *ldmc_gpu_name(void);
// Bytes of GPU memory in use by this process, and the device's total.
void ldmc_gpu_memory(size_t *used, size_t *total);
// The shared GPU workspace: its size now, and what was reserved up front (0: nothing yet).
size_t ldmc_gpu_workspace_bytes(void);
size_t ldmc_gpu_workspace_reserved(void);
// Reserves it at exactly `bytes` now (a request beyond still grows it, said on stderr).
void ldmc_gpu_workspace_reserve(size_t bytes);
// The most workspace a step whose largest tensor holds `largest` values (0:
// LDMC_GPU_LARGEST_DEFAULT) can ask for (the kernels' own bounds, docs/gpu.md): what a GPU run
// reserves up front, and what a GPU dry run plans, in any build.
size_t ldmc_gpu_workspace_max(int64_t largest);
// The CUDA, driver and library versions and the devices (or why there is none), for `ldmc info`.
void ldmc_gpu_print_info(FILE *out);
void *ldmc_gpu_malloc(size_t bytes);
void ldmc_gpu_free(void *p); // NULL is fine
// Host -> GPU, queued (the source may be reused at once); GPU -> host, after the GPU is done.
void ldmc_gpu_upload(void *dst, const void *src, size_t bytes);
void ldmc_gpu_download(void *dst, const void *src, size_t bytes);
void ldmc_gpu_zero(void *p, size_t bytes);
// memmove within GPU memory (overlapping ranges go through the workspace).
void ldmc_gpu_move(void *dst, const void *src, size_t bytes);
// dst (n f32 values on the GPU) += src (n host values), or += 1 when src is NULL; `scratch` is n
// f32 values of GPU memory the call may use.
void ldmc_gpu_add_from_host(float *dst, const float *src, int64_t n, float *scratch);

// ---- tensors on either device ----------------------------------------------------------------
// A new tensor in ctx filled from host values of `host_dtype` (F32 or I64), stored as `dtype`
// (F32, BF16 or I64) on the context's device. On the CPU with matching dtypes, the host memory is
// wrapped, not copied (it must outlive the step: ldmc_host_scratch is such memory).
ldmc_tensor *ldmc_input(ldmc_ctx *ctx, ldmc_dtype dtype, int ndim, const int64_t *shape,
                        const void *host, ldmc_dtype host_dtype);
// Writes n = numel(t) host f32 values into t (F32 or BF16, on either device).
void ldmc_write_f32(ldmc_tensor *t, const float *src);
// Reads t's values (F32 or BF16, on either device) into dst as f32.
void ldmc_read_f32(const ldmc_tensor *t, float *dst);
// A scalar's value (loss), as a double.
double ldmc_read_scalar(const ldmc_tensor *t);
// A GPU context whose activation arena takes the memory free after the libraries' handles (cuBLAS,
// cuDNN) exist and the shared workspace (bf16 copies of gradients, attention score tiles, cuDNN's
// workspaces) is reserved at its maximum for tensors of up to `largest` values
// (ldmc_gpu_workspace_max; 0: LDMC_GPU_LARGEST_DEFAULT), but a headroom for what the libraries
// allocate later (cuBLAS's own workspace, kernels loaded on first use, NCCL's buffers): 1 GiB or
// 2% of the card, the more; a step within that bound never grows the workspace. Returns -1, with
// the free memory in *free_bytes, when that leaves less than 1 GiB.
int ldmc_ctx_init_gpu(ldmc_ctx *ctx, size_t meta_bytes, int64_t largest, size_t *free_bytes);
// The same for the default largest tensor.
int ldmc_ctx_init_gpu_free(ldmc_ctx *ctx, size_t meta_bytes, size_t *free_bytes);
// 2^28 values: the largest tensor of an SDXL base training step at 1024², batch 8, is its GEGLU
// projection at 64² (8 x 4096 x 5120 = 1.7e8 values): a 3 GiB reservation.
#define LDMC_GPU_LARGEST_DEFAULT ((int64_t)1 << 28)
// The headroom ldmc_ctx_init_gpu leaves free on a card of `total` bytes.
size_t ldmc_gpu_headroom(size_t total);

// ---- GPU collectives (NCCL, kernels/ldmc_nccl.h; src/train/dist.c is their user) ---------------
// Whether this build has NCCL; without it every call below is fatal.
bool ldmc_gpu_has_comm(void);
int ldmc_gpu_device_count(void);        // 0 without CUDA
void ldmc_gpu_set_device(int device);   // (the process's device: before anything else uses one)
void ldmc_gpu_comm_unique_id(void *id); // 128 bytes
int ldmc_gpu_comm_init(const void *id, int rank, int world, char *message, size_t size);
void ldmc_gpu_comm_group(bool start);
void ldmc_gpu_comm_after_compute(void);
void ldmc_gpu_comm_join(void);
void ldmc_gpu_comm_allreduce_f32(float *buf, size_t count);
void ldmc_gpu_comm_reduce_f32(float *buf, size_t count, int root);
void ldmc_gpu_comm_bcast(void *buf, size_t bytes, int root);
int ldmc_gpu_comm_error(char *message, size_t size);
void ldmc_gpu_comm_abort(void);
void ldmc_gpu_comm_destroy(void);

// Waits until the GPU has finished everything queued (no-op on the CPU or without CUDA).
void ldmc_device_synchronize(ldmc_device device);
// Fills t (F32 or BF16, on either device) with values offset.. of the normal stream.
void ldmc_fill_normal(ldmc_tensor *t, const ldmc_rng *rng, uint64_t offset);
