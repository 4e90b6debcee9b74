// The device side of ldmc's runtime (see ldmc_cuda.h): device queries, the compute and copy
// streams, the cuBLAS handle, checked memory helpers and the shared workspace.
#include <string.h>

#include "kernels/common.cuh"
#include "kernels/cublas.cuh"
#include "kernels/ldmc_cuda.h"

static cudaStream_t compute_stream;
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

extern "C" void ldmc_cuda_set_device(int device) { CUDA_CHECK(cudaSetDevice(device)); }

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

// The stream is non-blocking: it never waits for the legacy default stream, so every copy to the
// host goes through ldmc_cuda_to_host, which waits for it first.
extern "C" void *ldmc_cuda_stream(void) {
    if (!compute_stream)
        CUDA_CHECK(cudaStreamCreateWithFlags(&compute_stream, cudaStreamNonBlocking));
    return compute_stream;
}


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

// Uploads go through a ring of page-locked slots: the host copies into the next slot (waiting
// only if that slot's copy, RING_SLOTS uploads ago, is still pending) and queues a DMA from it on
// the compute stream, in order with the kernels, without waiting for them. (A copy from pageable
// memory would wait for the stream to drain first.)
enum { RING_SLOTS = 8 };
static const size_t RING_SLOT_BYTES = (size_t)8 << 20;
static char *ring;
static cudaEvent_t ring_done[RING_SLOTS];
static int ring_next;

static void ring_init(void) {
    ldmc_cuda_stream();
    CUDA_CHECK(cudaMallocHost((void **)&ring, RING_SLOTS * RING_SLOT_BYTES));
    for (int i = 0; i < RING_SLOTS; i++)
        CUDA_CHECK(cudaEventCreateWithFlags(&ring_done[i], cudaEventDisableTiming));
}

extern "C" void ldmc_cuda_to_device(void *dst, const void *src, size_t bytes) {
    if (!ring) ring_init();
    for (size_t done = 0; done < bytes;) {
        size_t n = bytes - done < RING_SLOT_BYTES ? bytes - done : RING_SLOT_BYTES;
        int slot = ring_next;
        ring_next = (ring_next + 1) % RING_SLOTS;
        CUDA_CHECK(cudaEventSynchronize(ring_done[slot])); // its last copy has left the slot
        char *staging = ring + (size_t)slot * RING_SLOT_BYTES;
        memcpy(staging, (const char *)src + done, n);
        CUDA_CHECK(cudaMemcpyAsync((char *)dst + done, staging, n, cudaMemcpyHostToDevice,
                                   ldmc_stream()));
        CUDA_CHECK(cudaEventRecord(ring_done[slot], ldmc_stream()));
        done += n;
    }
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
