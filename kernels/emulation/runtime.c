// A CPU emulation of kernels/ldmc_cuda.h, for testing the GPU code path where there is no GPU:
// "device" memory is host memory, bf16 storage is kept exactly (uint16_t), and each launcher
// converts its bf16 operands to f32, runs the CPU twin from src/ops/cpu, and rounds its outputs
// to bf16 as the GPU kernel does (including the bf16 rounding of a gradient before the GPU's
// tensor-core GEMMs and cuDNN's bf16 gradients). It checks everything around the kernels: op
// dispatch by device and dtype, device arenas and parameter buffers, uploads and downloads, the
// GPU trainer, the GPU tests themselves. It checks nothing of the CUDA kernels: that needs a GPU
// (ctest -L cuda). Built only as the library behind the `*_emulated` tests (CMake option
// LDMC_CUDA_EMULATION), never into ldmc itself. This file: the runtime (memory, workspace).
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/error.h"
#include "kernels/ldmc_cuda.h"

// ---- runtime --------------------------------------------------------------------------------

enum { HEADER = 64 };
static const size_t EMULATED_MEMORY = (size_t)8 << 30; // what ldmc_cuda_memory reports in total
static size_t allocated;
static void *workspace;
static size_t workspace_size, workspace_reserved;

int ldmc_cuda_device_count(void) { return 1; }
const char *ldmc_cuda_unavailable_reason(void) { return NULL; }

void ldmc_cuda_set_device(int device) { (void)device; }

void ldmc_cuda_print_info(FILE *out) {
    fprintf(out, "CUDA:        emulated on the CPU (tests of the GPU code path only)\n");
}

const char *ldmc_cuda_device_name(void) { return "CPU emulation of the CUDA backend"; }
void *ldmc_cuda_stream(void) { return NULL; }
void *ldmc_cuda_cublas(void) { return NULL; }
void *ldmc_cuda_cudnn(void) { return NULL; }
void ldmc_cuda_synchronize(void) {}

// Address space reserved, committed on touch, as a GPU arena of "all free memory" needs.
void *ldmc_cuda_malloc(size_t bytes) {
    size_t total = bytes + HEADER;
    char *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    LDMC_CHECK(p != MAP_FAILED, "emulated cudaMalloc of %zu bytes failed", bytes);
    memcpy(p, &total, sizeof total);
    allocated += total;
    return p + HEADER;
}

void ldmc_cuda_free(void *p) {
    if (!p) return;
    char *base = (char *)p - HEADER;
    size_t total;
    memcpy(&total, base, sizeof total);
    allocated -= total;
    munmap(base, total);
}

void ldmc_cuda_to_device(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
void ldmc_cuda_to_host(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
void ldmc_cuda_copy(void *dst, const void *src, size_t bytes) { memmove(dst, src, bytes); }
void ldmc_cuda_zero(void *p, size_t bytes) { memset(p, 0, bytes); }

static size_t round_mib(size_t bytes) {
    return (bytes + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1);
}

// As runtime.cu's: grows by replacement, said on stderr past a reservation.
void *ldmc_cuda_workspace(size_t bytes) {
    if (bytes > workspace_size) {
        size_t grown = round_mib(bytes);
        if (workspace_reserved)
            fprintf(stderr,
                    "ldmc: the GPU workspace grows from %.0f to %.0f MiB during the run: a "
                    "request beyond the %.0f MiB reserved up front (emulated)\n",
                    (double)workspace_size / (1 << 20), (double)grown / (1 << 20),
                    (double)workspace_reserved / (1 << 20));
        ldmc_cuda_free(workspace);
        workspace_size = grown;
        workspace = ldmc_cuda_malloc(workspace_size);
    }
    return workspace;
}

void ldmc_cuda_workspace_reserve(size_t bytes) {
    bytes = round_mib(bytes);
    if (bytes != workspace_size) {
        ldmc_cuda_free(workspace);
        workspace = ldmc_cuda_malloc(bytes);
        workspace_size = bytes;
    }
    workspace_reserved = bytes;
}

size_t ldmc_cuda_workspace_bytes(void) { return workspace_size; }
size_t ldmc_cuda_workspace_reserved(void) { return workspace_reserved; }

// The reservations count as used (the arena's whole size, as on a GPU).
void ldmc_cuda_memory(size_t *used, size_t *total) {
    if (used) *used = allocated < EMULATED_MEMORY ? allocated : EMULATED_MEMORY;
    if (total) *total = EMULATED_MEMORY;
}
