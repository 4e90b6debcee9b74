// The device side of ldmc's runtime (see ldmc_cuda.h): device queries, the compute and copy
// streams, the cuBLAS handle, checked memory helpers and the shared workspace.
#include <cublas_v2.h>

#include "kernels/common.cuh"
#include "kernels/ldmc_cuda.h"

static cudaStream_t compute_stream, copy_stream;
static cudaEvent_t copies_done;
static cublasHandle_t cublas;
static void *workspace;
static size_t workspace_size;

extern "C" int ldmc_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // clear the sticky "no device" error
        return 0;
    }
    return n;
}

extern "C" void ldmc_cuda_print_info(FILE *out) {
    int runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    int n = ldmc_cuda_device_count();
    fprintf(out, "CUDA:        runtime %d.%d, driver %d.%d, %d device%s\n", runtime / 1000,
            runtime % 1000 / 10, driver / 1000, driver % 1000 / 10, n, n == 1 ? "" : "s");
    for (int i = 0; i < n; i++) {
        cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
        fprintf(out, "  device %d:  %s, sm_%d%d, %.1f GiB\n", i, prop.name, prop.major, prop.minor,
                (double)prop.totalGlobalMem / (1 << 30));
    }
}

extern "C" const char *ldmc_cuda_device_name(void) {
    static char name[256];
    int dev = 0;
    cudaDeviceProp prop;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess)
        return "no CUDA device";
    snprintf(name, sizeof name, "%s", prop.name);
    return name;
}

// Both streams are non-blocking: they never wait for the legacy default stream, so every copy
// to the host goes through ldmc_cuda_to_host, which waits for the compute stream first.
extern "C" void *ldmc_cuda_stream(void) {
    if (!compute_stream) {
        CUDA_CHECK(cudaStreamCreateWithFlags(&compute_stream, cudaStreamNonBlocking));
        CUDA_CHECK(cudaStreamCreateWithFlags(&copy_stream, cudaStreamNonBlocking));
        CUDA_CHECK(cudaEventCreateWithFlags(&copies_done, cudaEventDisableTiming));
    }
    return compute_stream;
}

#define CUBLAS_CHECK(call)                                                                         \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                           \
            ldmc_fatal_at(__FILE__, __LINE__, "cuBLAS: %s failed: %s", #call,                      \
                          cublasGetStatusString(s_));                                              \
    } while (0)

extern "C" void *ldmc_cuda_cublas(void) {
    if (!cublas) {
        CUBLAS_CHECK(cublasCreate(&cublas));
        CUBLAS_CHECK(cublasSetStream(cublas, ldmc_stream()));
        // bf16 GEMMs on tensor cores with f32 accumulation; the f32 ones stay exact f32
        CUBLAS_CHECK(cublasSetMathMode(cublas, CUBLAS_DEFAULT_MATH));
    }
    return cublas;
}

extern "C" void *ldmc_cuda_malloc(size_t bytes) {
    void *p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        size_t free_b = 0, total = 0;
        cudaGetLastError();
        cudaMemGetInfo(&free_b, &total);
        LDMC_FATAL("CUDA: cannot allocate %.2f GiB of device memory (%.2f of %.2f GiB free): %s",
                   (double)bytes / (1 << 30), (double)free_b / (1 << 30),
                   (double)total / (1 << 30), cudaGetErrorString(e));
    }
    return p;
}

extern "C" void ldmc_cuda_free(void *p) {
    if (p) CUDA_CHECK(cudaFree(p));
}

extern "C" void *ldmc_cuda_host_alloc(size_t bytes) {
    void *p = nullptr;
    CUDA_CHECK(cudaMallocHost(&p, bytes ? bytes : 1));
    return p;
}

extern "C" void ldmc_cuda_host_free(void *p) {
    if (p) CUDA_CHECK(cudaFreeHost(p));
}

extern "C" void ldmc_cuda_to_device(void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    // pageable source: cudaMemcpyAsync stages it before returning, so src may be reused
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ldmc_stream()));
    CUDA_CHECK(cudaStreamSynchronize(ldmc_stream()));
}

extern "C" void ldmc_cuda_to_host(void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, ldmc_stream()));
    CUDA_CHECK(cudaStreamSynchronize(ldmc_stream()));
}

extern "C" void ldmc_cuda_copy(void *dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ldmc_stream()));
}

extern "C" void ldmc_cuda_zero(void *p, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, ldmc_stream()));
}

extern "C" void ldmc_cuda_copy_async(void *dst, const void *src_pinned, size_t bytes) {
    ldmc_cuda_stream();
    if (bytes)
        CUDA_CHECK(cudaMemcpyAsync(dst, src_pinned, bytes, cudaMemcpyHostToDevice, copy_stream));
    CUDA_CHECK(cudaEventRecord(copies_done, copy_stream));
}

extern "C" void ldmc_cuda_wait_copies(void) {
    ldmc_cuda_stream();
    CUDA_CHECK(cudaStreamWaitEvent(compute_stream, copies_done, 0));
}

extern "C" void ldmc_cuda_synchronize(void) { CUDA_CHECK(cudaDeviceSynchronize()); }

// Grows by replacement: cudaFree waits for the kernels that may still read the old buffer.
extern "C" void *ldmc_cuda_workspace(size_t bytes) {
    if (bytes > workspace_size) {
        ldmc_cuda_free(workspace);
        workspace_size = (bytes + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1);
        workspace = ldmc_cuda_malloc(workspace_size);
    }
    return workspace;
}

extern "C" size_t ldmc_cuda_workspace_bytes(void) { return workspace_size; }

extern "C" void ldmc_cuda_memory(size_t *used, size_t *total) {
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    if (used) *used = total_b - free_b;
    if (total) *total = total_b;
}
