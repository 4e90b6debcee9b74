// The device side of ldmc's runtime (see ldmc_cuda.h): device queries and the versions of the
// driver and the libraries, the compute stream, the cuBLAS and cuDNN handles, checked memory
// helpers and the shared workspace (reserved up front at its maximum).
#include <string.h>

#include "kernels/common.cuh"
#include "kernels/cublas.cuh"
#include "kernels/ldmc_cuda.h"
#ifdef LDMC_HAVE_CUDNN
#include <cudnn.h>
#endif
#ifdef LDMC_HAVE_NCCL
#include <nccl.h>
#endif

static cudaStream_t compute_stream;
static cublasHandle_t cublas;
static void *workspace;
static size_t workspace_size, workspace_reserved;

// cudaGetDeviceCount's answer, asked once: its error says why there is no device (no driver, a
// driver older than the runtime, no device visible to this process).
static int device_count = -1;
static cudaError_t device_count_error;

extern "C" int ldmc_cuda_device_count(void) {
    if (device_count < 0) {
        int n = 0;
        device_count_error = cudaGetDeviceCount(&n);
        if (device_count_error != cudaSuccess) {
            cudaGetLastError(); // clear the sticky error
            n = 0;
        }
        device_count = n;
    }
    return device_count;
}

// "13.0" from 13000; "none" for 0
static const char *cuda_version_text(int v, char *buf, size_t size) {
    if (v <= 0) return "none";
    snprintf(buf, size, "%d.%d", v / 1000, v % 1000 / 10);
    return buf;
}

extern "C" const char *ldmc_cuda_unavailable_reason(void) {
    static char reason[512];
    if (ldmc_cuda_device_count() > 0) return nullptr;
    int runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver); // 0: no driver (libcuda.so.1) could be loaded
    char r[16], d[16];
    const char *hint = driver == 0 ? " (no NVIDIA driver loaded)"
                       : driver < runtime / 1000 * 1000
                           ? " (the driver is older than this build's CUDA: update the driver)"
                           : "";
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    snprintf(reason, sizeof reason, "cudaGetDeviceCount: %s (%s); driver %s%s, runtime %s%s%s",
             device_count_error == cudaSuccess ? "no device"
                                               : cudaGetErrorString(device_count_error),
             cudaGetErrorName(device_count_error), cuda_version_text(driver, d, sizeof d), hint,
             cuda_version_text(runtime, r, sizeof r), visible ? "; CUDA_VISIBLE_DEVICES=" : "",
             visible ? visible : "");
    return reason;
}

extern "C" void ldmc_cuda_set_device(int device) { CUDA_CHECK(cudaSetDevice(device)); }

// "9.19.0" from cuDNN's and NCCL's major * 10000 + minor * 100 + patch (both since cuDNN 9.0 and
// NCCL 2.9; cuBLAS reports its parts)
static const char *library_version_text(int v, char *buf, size_t size) {
    snprintf(buf, size, "%d.%d.%d", v / 10000, v / 100 % 100, v % 100);
    return buf;
}

extern "C" void ldmc_cuda_print_info(FILE *out) {
    int runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    int n = ldmc_cuda_device_count();
    char r[16], d[16], a[16], b[16];
    fprintf(out, "CUDA:        runtime %s (linked statically), driver %s, %d device%s\n",
            cuda_version_text(runtime, r, sizeof r), cuda_version_text(driver, d, sizeof d), n,
            n == 1 ? "" : "s");
    if (n == 0) fprintf(out, "  no device: %s\n", ldmc_cuda_unavailable_reason());
    for (int i = 0; i < n; i++) {
        cudaDeviceProp prop;
        cudaError_t e = cudaGetDeviceProperties(&prop, i);
        if (e != cudaSuccess) {
            fprintf(out, "  device %d:  %s\n", i, cudaGetErrorString(e));
            cudaGetLastError();
            continue;
        }
        fprintf(out, "  device %d:  %s, sm_%d%d, %.1f GiB\n", i, prop.name, prop.major, prop.minor,
                (double)prop.totalGlobalMem / (1 << 30));
    }
    int major = 0, minor = 0, patch = 0; // the library's own, asked without a handle or device
    cublasGetProperty(MAJOR_VERSION, &major);
    cublasGetProperty(MINOR_VERSION, &minor);
    cublasGetProperty(PATCH_LEVEL, &patch);
    fprintf(out, "cuBLAS:      %d.%d.%d (built with %d.%d.%d)\n", major, minor, patch,
            CUBLAS_VER_MAJOR, CUBLAS_VER_MINOR, CUBLAS_VER_PATCH);
#ifdef LDMC_HAVE_CUDNN
    fprintf(out, "cuDNN:       %s (built with %s)\n",
            library_version_text((int)cudnnGetVersion(), a, sizeof a),
            library_version_text(CUDNN_VERSION, b, sizeof b));
#else
    fprintf(out, "cuDNN:       not in this build (LDMC_CUDNN=OFF or not found)\n");
#endif
#ifdef LDMC_HAVE_NCCL
    int nccl = 0;
    ncclGetVersion(&nccl);
    fprintf(out, "NCCL:        %s (built with %s)\n", library_version_text(nccl, a, sizeof a),
            library_version_text(NCCL_VERSION_CODE, b, sizeof b));
#else
    fprintf(out, "NCCL:        not in this build (LDMC_NCCL=OFF or not found)\n");
#endif
    (void)a, (void)b;
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

// One handle for the process, on the compute stream; NULL when cuDNN cannot start (conv.cu then
// takes its implicit GEMM) or the build has none.
extern "C" void *ldmc_cuda_cudnn(void) {
#ifdef LDMC_HAVE_CUDNN
    static cudnnHandle_t handle;
    static bool tried;
    if (!tried) {
        tried = true;
        if (cudnnCreate(&handle) != CUDNN_STATUS_SUCCESS) {
            handle = nullptr;
        } else if (cudnnSetStream(handle, ldmc_stream()) != CUDNN_STATUS_SUCCESS) {
            cudnnDestroy(handle);
            handle = nullptr;
        }
    }
    return handle;
#else
    return nullptr;
#endif
}

extern "C" void *ldmc_cuda_malloc(size_t bytes) {
    void *p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        size_t free_b = 0, total = 0;
        cudaGetLastError();
        cudaMemGetInfo(&free_b, &total);
        LDMC_FATAL("CUDA: cannot allocate %.2f GiB of device memory (%.2f of %.2f GiB free): %s",
                   (double)bytes / (1 << 30), (double)free_b / (1 << 30), (double)total / (1 << 30),
                   cudaGetErrorString(e));
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
        CUDA_CHECK(
            cudaMemcpyAsync((char *)dst + done, staging, n, cudaMemcpyHostToDevice, ldmc_stream()));
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
    if (bytes)
        CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ldmc_stream()));
}

extern "C" void ldmc_cuda_zero(void *p, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, ldmc_stream()));
}

extern "C" void ldmc_cuda_synchronize(void) { CUDA_CHECK(cudaDeviceSynchronize()); }

static size_t round_mib(size_t bytes) {
    return (bytes + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1);
}

// Grows by replacement: cudaFree waits for the kernels that may still read the old buffer. Past
// a reservation, each growth is said on stderr (see ldmc_cuda.h).
extern "C" void *ldmc_cuda_workspace(size_t bytes) {
    if (bytes <= workspace_size) return workspace;
    size_t grown = round_mib(bytes), old = workspace_size;
    if (workspace_reserved)
        fprintf(stderr,
                "ldmc: the GPU workspace grows from %.0f to %.0f MiB during the run: a request "
                "beyond the %.0f MiB reserved up front (ldmc_cuda_workspace_max: a tensor larger "
                "than the reservation assumed); the memory comes from the headroom\n",
                (double)old / (1 << 20), (double)grown / (1 << 20),
                (double)workspace_reserved / (1 << 20));
    ldmc_cuda_free(workspace);
    workspace = nullptr;
    workspace_size = 0;
    cudaError_t e = cudaMalloc(&workspace, grown);
    if (e != cudaSuccess) {
        size_t free_b = 0, total = 0;
        cudaGetLastError();
        cudaMemGetInfo(&free_b, &total);
        LDMC_FATAL("CUDA: the workspace cannot grow from %.2f to %.2f GiB (%.2f of %.2f GiB "
                   "free; %.2f GiB reserved up front): %s",
                   (double)old / (1 << 30), (double)grown / (1 << 30), (double)free_b / (1 << 30),
                   (double)total / (1 << 30), (double)workspace_reserved / (1 << 30),
                   cudaGetErrorString(e));
    }
    workspace_size = grown;
    return workspace;
}

extern "C" void ldmc_cuda_workspace_reserve(size_t bytes) {
    bytes = round_mib(bytes);
    if (bytes != workspace_size) {
        ldmc_cuda_free(workspace);
        workspace = nullptr;
        workspace_size = 0;
        workspace = ldmc_cuda_malloc(bytes);
        workspace_size = bytes;
    }
    workspace_reserved = bytes;
}

extern "C" size_t ldmc_cuda_workspace_bytes(void) { return workspace_size; }
extern "C" size_t ldmc_cuda_workspace_reserved(void) { return workspace_reserved; }

extern "C" void ldmc_cuda_memory(size_t *used, size_t *total) {
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    if (used) *used = total_b - free_b;
    if (total) *total = total_b;
}
