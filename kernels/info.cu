// Device queries and checked memory helpers (see ldmc_cuda.h).
#include "kernels/common.cuh"
#include "kernels/ldmc_cuda.h"

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

extern "C" void *ldmc_cuda_malloc(size_t bytes) {
    void *p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
    return p;
}

extern "C" void ldmc_cuda_free(void *p) { CUDA_CHECK(cudaFree(p)); }

extern "C" void ldmc_cuda_to_device(void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

extern "C" void ldmc_cuda_to_host(void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

extern "C" void ldmc_cuda_zero(void *p, size_t bytes) { CUDA_CHECK(cudaMemset(p, 0, bytes)); }

extern "C" void ldmc_cuda_synchronize(void) { CUDA_CHECK(cudaDeviceSynchronize()); }
