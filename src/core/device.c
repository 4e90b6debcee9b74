// Devices and the GPU runtime (see device.h).
#include "core/device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/error.h"
#include "kernels/ldmc_cuda.h" // (its workspace bound, ldmc_cuda_workspace_max, in every build)
#ifdef LDMC_HAVE_NCCL
#include "kernels/ldmc_nccl.h"
#endif

bool ldmc_gpu_available(void) {
#ifdef LDMC_HAVE_CUDA
    return ldmc_cuda_device_count() > 0;
#else
    return false;
#endif
}

const char *ldmc_gpu_unavailable_reason(void) {
#ifdef LDMC_HAVE_CUDA
    return ldmc_cuda_unavailable_reason();
#else
    return "this build of ldmc has no CUDA (build where nvcc is found, LDMC_CUDA=ON)";
#endif
}

const char *ldmc_device_name(ldmc_device device) { return device == LDMC_CUDA ? "cuda" : "cpu"; }

int ldmc_device_parse(const char *name, ldmc_device *out) {
    if (!strcasecmp(name, "cpu"))
        *out = LDMC_CPU;
    else if (!strcasecmp(name, "cuda") || !strcasecmp(name, "gpu"))
        *out = LDMC_CUDA;
    else
        return -1;
    return 0;
}

// ---- the GPU runtime ---------------------------------------------------------------------------

#ifdef LDMC_HAVE_CUDA
#define GPU_CALL(call) call
#else
#define GPU_CALL(call) LDMC_FATAL("%s: this build of ldmc has no CUDA (LDMC_CUDA=OFF)", __func__)
#endif

const char *ldmc_gpu_name(void) {
#ifdef LDMC_HAVE_CUDA
    return ldmc_cuda_device_name();
#else
    return "none";
#endif
}

void ldmc_gpu_memory(size_t *used, size_t *total) { GPU_CALL(ldmc_cuda_memory(used, total)); }

size_t ldmc_gpu_workspace_bytes(void) {
#ifdef LDMC_HAVE_CUDA
    return ldmc_cuda_workspace_bytes();
#else
    return 0;
#endif
}

size_t ldmc_gpu_workspace_reserved(void) {
#ifdef LDMC_HAVE_CUDA
    return ldmc_cuda_workspace_reserved();
#else
    return 0;
#endif
}

void ldmc_gpu_workspace_reserve(size_t bytes) { GPU_CALL(ldmc_cuda_workspace_reserve(bytes)); }

size_t ldmc_gpu_workspace_max(int64_t largest) {
    return ldmc_cuda_workspace_max(largest ? largest : LDMC_GPU_LARGEST_DEFAULT);
}

void ldmc_gpu_print_info(FILE *out) {
#ifdef LDMC_HAVE_CUDA
    ldmc_cuda_print_info(out);
#else
    fprintf(out, "CUDA:        not in this build (LDMC_CUDA=OFF)\n");
#endif
}

void *ldmc_gpu_malloc(size_t bytes) {
#ifdef LDMC_HAVE_CUDA
    return ldmc_cuda_malloc(bytes);
#else
    (void)bytes;
    LDMC_FATAL("GPU memory: this build of ldmc has no CUDA (LDMC_CUDA=OFF)");
#endif
}

void ldmc_gpu_free(void *p) {
    if (p) GPU_CALL(ldmc_cuda_free(p));
}

void ldmc_gpu_upload(void *dst, const void *src, size_t bytes) {
    GPU_CALL(ldmc_cuda_to_device(dst, src, bytes));
}

void ldmc_gpu_download(void *dst, const void *src, size_t bytes) {
    GPU_CALL(ldmc_cuda_to_host(dst, src, bytes));
}

void ldmc_gpu_zero(void *p, size_t bytes) { GPU_CALL(ldmc_cuda_zero(p, bytes)); }

void ldmc_gpu_move(void *dst, const void *src, size_t bytes) {
    if (dst == src || bytes == 0) return;
#ifdef LDMC_HAVE_CUDA
    // cudaMemcpy does not allow overlap: a copy downward that overlaps goes through the workspace
    if ((const char *)dst + bytes <= (const char *)src ||
        (const char *)src + bytes <= (const char *)dst) {
        ldmc_cuda_copy(dst, src, bytes);
    } else {
        void *tmp = ldmc_cuda_workspace(bytes);
        ldmc_cuda_copy(tmp, src, bytes);
        ldmc_cuda_copy(dst, tmp, bytes);
    }
#else
    LDMC_FATAL("GPU copy: this build of ldmc has no CUDA (LDMC_CUDA=OFF)");
#endif
}

void ldmc_gpu_add_from_host(float *dst, const float *src, int64_t n, float *scratch) {
#ifdef LDMC_HAVE_CUDA
    if (src)
        ldmc_cuda_to_device(scratch, src, (size_t)n * sizeof(float));
    else
        ldmc_cuda_fill_f32(scratch, 1.0f, n);
    ldmc_cuda_accumulate(dst, 1.0f, scratch, 1.0f, n);
#else
    (void)dst, (void)src, (void)n, (void)scratch;
    LDMC_FATAL("GPU gradients: this build of ldmc has no CUDA (LDMC_CUDA=OFF)");
#endif
}

// ---- tensors on either device ------------------------------------------------------------------

#ifdef LDMC_HAVE_CUDA
// An f32 staging copy in GPU memory: the workspace (no op holds it between launches).
static float *staged_f32(const float *src, int64_t n) {
    float *tmp = ldmc_cuda_workspace((size_t)n * sizeof(float));
    ldmc_cuda_to_device(tmp, src, (size_t)n * sizeof(float));
    return tmp;
}
#endif

void ldmc_write_f32(ldmc_tensor *t, const float *src) {
    int64_t n = ldmc_numel(t);
    if (t->device == LDMC_CPU) {
        LDMC_CHECK(ldmc_convert(t->data, t->dtype, src, LDMC_F32, (size_t)n) == 0,
                   "writing f32 values into a %s tensor", ldmc_dtype_name(t->dtype));
        return;
    }
#ifdef LDMC_HAVE_CUDA
    if (t->dtype == LDMC_F32)
        ldmc_cuda_to_device(t->data, src, (size_t)n * sizeof(float));
    else if (t->dtype == LDMC_BF16)
        ldmc_cuda_f32_to_bf16(t->data, staged_f32(src, n), n);
    else
        LDMC_FATAL("writing f32 values into a %s tensor on the GPU", ldmc_dtype_name(t->dtype));
#else
    LDMC_FATAL("a GPU tensor in a build without CUDA");
#endif
}

void ldmc_read_f32(const ldmc_tensor *t, float *dst) {
    int64_t n = ldmc_numel(t);
    if (t->device == LDMC_CPU) {
        LDMC_CHECK(ldmc_convert(dst, LDMC_F32, t->data, t->dtype, (size_t)n) == 0,
                   "reading a %s tensor as f32", ldmc_dtype_name(t->dtype));
        return;
    }
#ifdef LDMC_HAVE_CUDA
    if (t->dtype == LDMC_F32) {
        ldmc_cuda_to_host(dst, t->data, (size_t)n * sizeof(float));
    } else if (t->dtype == LDMC_BF16) {
        float *tmp = ldmc_cuda_workspace((size_t)n * sizeof(float));
        ldmc_cuda_bf16_to_f32(tmp, t->data, n);
        ldmc_cuda_to_host(dst, tmp, (size_t)n * sizeof(float));
    } else {
        LDMC_FATAL("reading a %s tensor on the GPU as f32", ldmc_dtype_name(t->dtype));
    }
#else
    LDMC_FATAL("a GPU tensor in a build without CUDA");
#endif
}

double ldmc_read_scalar(const ldmc_tensor *t) {
    float v = 0;
    LDMC_CHECK(ldmc_numel(t) == 1, "reading a tensor of %lld values as a scalar",
               (long long)ldmc_numel(t));
    ldmc_read_f32(t, &v);
    return v;
}

ldmc_tensor *ldmc_input(ldmc_ctx *ctx, ldmc_dtype dtype, int ndim, const int64_t *shape,
                        const void *host, ldmc_dtype host_dtype) {
    if (ctx->device == LDMC_CPU && dtype == host_dtype)
        return ldmc_wrap(ctx, dtype, (void *)host, ndim, shape);
    ldmc_tensor *t = ldmc_new(ctx, dtype, ndim, shape);
    if (ctx->dry_run) return t;
    if (host_dtype == LDMC_F32) {
        ldmc_write_f32(t, host);
        return t;
    }
    LDMC_CHECK(host_dtype == dtype && dtype == LDMC_I64,
               "input of %s values stored as %s: only f32 converts", ldmc_dtype_name(host_dtype),
               ldmc_dtype_name(dtype));
#ifdef LDMC_HAVE_CUDA
    ldmc_cuda_to_device(t->data, host, ldmc_nbytes(t));
#endif
    return t;
}

size_t ldmc_gpu_headroom(size_t total) {
    size_t two = total / 50, one = (size_t)1 << 30;
    return two > one ? two : one;
}

int ldmc_ctx_init_gpu(ldmc_ctx *ctx, size_t meta_bytes, int64_t largest, size_t *free_bytes) {
#ifdef LDMC_HAVE_CUDA
    // what the libraries hold once started, then the workspace at its most: measured, not guessed
    ldmc_cuda_cublas();
    ldmc_cuda_cudnn();
    ldmc_cuda_workspace_reserve(ldmc_gpu_workspace_max(largest));
    size_t used, total;
    ldmc_cuda_memory(&used, &total);
    size_t free_b = total - used, headroom = ldmc_gpu_headroom(total);
    if (free_bytes) *free_bytes = free_b;
    if (free_b < headroom + ((size_t)1 << 30)) return -1;
    ldmc_ctx_init_device(ctx, LDMC_CUDA, free_b - headroom, meta_bytes);
    return 0;
#else
    (void)ctx, (void)meta_bytes, (void)largest, (void)free_bytes;
    LDMC_FATAL("a GPU context in a build without CUDA");
#endif
}

int ldmc_ctx_init_gpu_free(ldmc_ctx *ctx, size_t meta_bytes, size_t *free_bytes) {
    return ldmc_ctx_init_gpu(ctx, meta_bytes, 0, free_bytes);
}

void ldmc_device_synchronize(ldmc_device device) {
#ifdef LDMC_HAVE_CUDA
    if (device == LDMC_CUDA) ldmc_cuda_synchronize();
#else
    (void)device;
#endif
}

void ldmc_fill_normal(ldmc_tensor *t, const ldmc_rng *rng, uint64_t offset) {
    int64_t n = ldmc_numel(t);
    if (t->device == LDMC_CPU) {
        LDMC_CHECK(t->dtype == LDMC_F32, "normal noise into a %s tensor on the CPU",
                   ldmc_dtype_name(t->dtype));
        ldmc_rng_normal(rng, offset, (size_t)n, t->data);
        return;
    }
#ifdef LDMC_HAVE_CUDA
    if (t->dtype == LDMC_F32) {
        ldmc_cuda_rng_normal(rng, offset, (size_t)n, t->data);
    } else {
        LDMC_CHECK(t->dtype == LDMC_BF16, "normal noise into a %s tensor on the GPU",
                   ldmc_dtype_name(t->dtype));
        float *tmp = ldmc_cuda_workspace((size_t)n * sizeof(float));
        ldmc_cuda_rng_normal(rng, offset, (size_t)n, tmp);
        ldmc_cuda_f32_to_bf16(t->data, tmp, n);
    }
#else
    LDMC_FATAL("a GPU tensor in a build without CUDA");
#endif
}

// ---- GPU collectives
// ------------------------------------------------------------------------------
#ifdef LDMC_HAVE_NCCL
#define COMM_CALL(call) call
#else
#define COMM_CALL(call) LDMC_FATAL("%s: this build of ldmc has no NCCL", __func__)
#endif

bool ldmc_gpu_has_comm(void) {
#ifdef LDMC_HAVE_NCCL
    return true;
#else
    return false;
#endif
}

int ldmc_gpu_device_count(void) {
#ifdef LDMC_HAVE_CUDA
    return ldmc_cuda_device_count();
#else
    return 0;
#endif
}

void ldmc_gpu_set_device(int device) { GPU_CALL(ldmc_cuda_set_device(device)); }
void ldmc_gpu_comm_unique_id(void *id) { COMM_CALL(ldmc_nccl_unique_id(id)); }

int ldmc_gpu_comm_init(const void *id, int rank, int world, char *message, size_t size) {
#ifdef LDMC_HAVE_NCCL
    return ldmc_nccl_init(id, rank, world, message, size);
#else
    (void)id, (void)rank, (void)world;
    snprintf(message, size, "this build of ldmc has no NCCL");
    return -1;
#endif
}

void ldmc_gpu_comm_group(bool start) { COMM_CALL(ldmc_nccl_group(start)); }
void ldmc_gpu_comm_after_compute(void) { COMM_CALL(ldmc_nccl_after_compute()); }
void ldmc_gpu_comm_join(void) { COMM_CALL(ldmc_nccl_join()); }
void ldmc_gpu_comm_allreduce_f32(float *buf, size_t count) {
    COMM_CALL(ldmc_nccl_allreduce_f32(buf, count));
}
void ldmc_gpu_comm_reduce_f32(float *buf, size_t count, int root) {
    COMM_CALL(ldmc_nccl_reduce_f32(buf, count, root));
}
void ldmc_gpu_comm_bcast(void *buf, size_t bytes, int root) {
    COMM_CALL(ldmc_nccl_bcast(buf, bytes, root));
}

int ldmc_gpu_comm_error(char *message, size_t size) {
#ifdef LDMC_HAVE_NCCL
    return ldmc_nccl_error(message, size);
#else
    (void)message, (void)size;
    return 0;
#endif
}

void ldmc_gpu_comm_abort(void) {
#ifdef LDMC_HAVE_NCCL
    ldmc_nccl_abort();
#endif
}

void ldmc_gpu_comm_destroy(void) {
#ifdef LDMC_HAVE_NCCL
    ldmc_nccl_destroy();
#endif
}
