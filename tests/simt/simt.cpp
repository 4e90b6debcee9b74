// The SIMT emulation behind test_cuda_simt: runs the CUDA kernels of kernels/*.cu on the CPU,
// thread by thread, with the semantics they rely on (see include/cuda_runtime.h):
//   - a launch runs its blocks one after another; the threads of a block are fibers (a stack
//     each, switched by a dozen instructions of x86-64 assembly below) that switch only at
//     barriers, so shared memory (`static` here) is the block's own;
//   - __syncthreads releases when every thread of the block that has not exited waits on it;
//   - a warp shuffle is two barriers over the warp's lanes around an exchange buffer;
//   - once a kernel's first block has run without reaching a barrier, its other blocks run their
//     threads as plain calls (fast), and a barrier there is an error;
//   - cublasGemmStridedBatchedEx computes the column-major product (bf16 or f32 operands, f32
//     accumulation through OpenBLAS, bf16 or f32 result), the one cuBLAS call the kernels make.
// Not covered: timing, memory coalescing, real concurrency between blocks (no kernel here relies
// on it: none uses atomics), and cuDNN (built without it, conv.cu takes its implicit GEMM).
#include <cblas.h>

#include <vector>

#include "cublas_v2.h"
#include "cuda_runtime.h"
extern "C" {
#include "core/dtype.h"
}
#include "core/error.h"

simt_index simt_thread_idx, simt_block_idx, simt_block_dim, simt_grid_dim;

namespace {

enum State { RUNNABLE, WAIT_BLOCK, WAIT_WARP, DONE };

struct Fiber {
    void *sp; // the saved stack pointer while switched out
    State state;
    simt_index tid;
    int linear;
};

const size_t STACK_BYTES = (size_t)128 << 10;
std::vector<Fiber> fibers;
std::vector<std::vector<char>> stacks;
void *scheduler_sp;
Fiber *current;
const std::function<void()> *kernel_body;
bool fiber_mode, barrier_seen;
uint64_t exchange[1024];

} // namespace

// Saves the callee-saved registers on the current stack, stores the stack pointer in *from, and
// resumes the stack `to` (x86-64 System V: rbx, rbp, r12-r15 are the callee-saved registers).
extern "C" void simt_switch(void **from, void *to);
asm(R"(
    .text
    .globl simt_switch
    .type simt_switch, @function
simt_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size simt_switch, .-simt_switch
)");

namespace {

[[noreturn]] void fiber_entry() {
    (*kernel_body)();
    current->state = DONE;
    simt_switch(&current->sp, scheduler_sp);
    __builtin_unreachable();
}

// A fresh stack whose first switch "returns" into fiber_entry with the stack aligned as after a
// call: [six zero registers][fiber_entry][pad] below a 16-byte-aligned top.
void *fresh_stack(char *base, size_t size) {
    uintptr_t top = ((uintptr_t)base + size) & ~(uintptr_t)15;
    void **sp = (void **)(top - 16);
    sp[0] = (void *)fiber_entry;
    sp -= 6;
    for (int i = 0; i < 6; i++)
        sp[i] = nullptr;
    return sp;
}

void switch_out(State state) {
    current->state = state;
    Fiber *me = current;
    simt_switch(&me->sp, scheduler_sp);
    current = me;
    simt_thread_idx = me->tid;
}

simt_index index_of(int linear, dim3 block) {
    return simt_index{(unsigned)linear % block.x, (unsigned)linear / block.x % block.y,
                      (unsigned)linear / (block.x * block.y)};
}

void run_block_fibers(dim3 block) {
    int n = (int)(block.x * block.y * block.z);
    if (n > 1024) LDMC_FATAL("simt: a block of %d threads (at most 1024)", n);
    if ((int)fibers.size() < n) {
        fibers.resize((size_t)n);
        while ((int)stacks.size() < n)
            stacks.emplace_back(STACK_BYTES);
    }
    for (int i = 0; i < n; i++) {
        Fiber &f = fibers[(size_t)i];
        f.sp = fresh_stack(stacks[(size_t)i].data(), STACK_BYTES);
        f.state = RUNNABLE;
        f.linear = i;
        f.tid = index_of(i, block);
    }
    for (;;) {
        for (int i = 0; i < n; i++) {
            Fiber &f = fibers[(size_t)i];
            if (f.state != RUNNABLE) continue;
            current = &f;
            simt_thread_idx = f.tid;
            simt_switch(&scheduler_sp, f.sp);
        }
        bool all_done = true, released = false;
        for (int w = 0; w < n; w += 32) { // warps whose live lanes all wait at a shuffle
            int end = w + 32 < n ? w + 32 : n, waiting = 0, live = 0;
            for (int i = w; i < end; i++) {
                live += fibers[(size_t)i].state != DONE;
                waiting += fibers[(size_t)i].state == WAIT_WARP;
            }
            if (live && waiting == live) {
                for (int i = w; i < end; i++)
                    if (fibers[(size_t)i].state == WAIT_WARP) fibers[(size_t)i].state = RUNNABLE;
                released = true;
            }
        }
        int live = 0, at_barrier = 0;
        for (int i = 0; i < n; i++) {
            live += fibers[(size_t)i].state != DONE;
            at_barrier += fibers[(size_t)i].state == WAIT_BLOCK;
        }
        all_done = live == 0;
        if (live && at_barrier == live) {
            for (int i = 0; i < n; i++)
                if (fibers[(size_t)i].state == WAIT_BLOCK) fibers[(size_t)i].state = RUNNABLE;
            released = true;
        }
        if (all_done) return;
        if (!released)
            LDMC_FATAL("simt: deadlock in block (%u, %u, %u): threads wait at different barriers",
                       simt_block_idx.x, simt_block_idx.y, simt_block_idx.z);
    }
}

} // namespace

void simt_syncthreads() {
    barrier_seen = true;
    if (!fiber_mode)
        LDMC_FATAL("simt: a kernel reached __syncthreads only after its first block");
    switch_out(WAIT_BLOCK);
}

uint64_t simt_shuffle_xor(uint64_t value, int lane_mask) {
    barrier_seen = true;
    if (!fiber_mode) LDMC_FATAL("simt: a kernel reached a warp shuffle only after its first block");
    int me = current->linear;
    exchange[me] = value;
    switch_out(WAIT_WARP);
    uint64_t got = exchange[(me & ~31) | ((me & 31) ^ lane_mask)];
    switch_out(WAIT_WARP); // nobody overwrites the buffer before every lane has read it
    return got;
}

void simt_launch(dim3 grid, dim3 block, const std::function<void()> &body) {
    simt_grid_dim = simt_index{grid.x, grid.y, grid.z};
    simt_block_dim = simt_index{block.x, block.y, block.z};
    kernel_body = &body;
    barrier_seen = false;
    bool first = true;
    int n = (int)(block.x * block.y * block.z);
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                simt_block_idx = simt_index{x, y, z};
                if (first || barrier_seen) {
                    fiber_mode = true;
                    run_block_fibers(block);
                    fiber_mode = false;
                    first = false;
                    continue;
                }
                for (int i = 0; i < n; i++) { // no barrier in this kernel: plain calls
                    simt_thread_idx = index_of(i, block);
                    body();
                }
            }
}

// ---- cuBLAS ---------------------------------------------------------------------------------------

const char *cublasGetStatusString(cublasStatus_t status) {
    return status == CUBLAS_STATUS_SUCCESS ? "success" : "invalid value";
}

static float load(const void *p, cudaDataType type, int64_t i) {
    return type == CUDA_R_32F ? ((const float *)p)[i] : ldmc_bf16_to_f32(((const uint16_t *)p)[i]);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t, cublasOperation_t transa,
                                          cublasOperation_t transb, int m, int n, int k,
                                          const void *alpha, const void *A, cudaDataType Atype,
                                          int lda, int64_t strideA, const void *B,
                                          cudaDataType Btype, int ldb, int64_t strideB,
                                          const void *beta, void *C, cudaDataType Ctype, int ldc,
                                          int64_t strideC, int batchCount,
                                          cublasComputeType_t, cublasGemmAlgo_t) {
    // cuBLAS's own argument checks
    if (m < 0 || n < 0 || k < 0 || batchCount < 0 || ldc < (m > 1 ? m : 1) ||
        lda < ((transa == CUBLAS_OP_N ? m : k) > 1 ? (transa == CUBLAS_OP_N ? m : k) : 1) ||
        ldb < ((transb == CUBLAS_OP_N ? k : n) > 1 ? (transb == CUBLAS_OP_N ? k : n) : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    const float a = *(const float *)alpha, b = *(const float *)beta;
    // op(A) (m, k) and op(B) (k, n) as dense column-major f32 (bf16 converts exactly), then
    // OpenBLAS's sgemm: f32 accumulation, as the tensor cores'
    std::vector<float> fa((size_t)m * k), fb((size_t)k * n), fc((size_t)m * n);
    for (int s = 0; s < batchCount; s++) {
        for (int p = 0; p < k; p++)
            for (int i = 0; i < m; i++)
                fa[(size_t)i + (size_t)p * m] = load(
                    A, Atype,
                    s * strideA + (transa == CUBLAS_OP_N ? i + (int64_t)p * lda : p + (int64_t)i * lda));
        for (int j = 0; j < n; j++)
            for (int p = 0; p < k; p++)
                fb[(size_t)p + (size_t)j * k] = load(
                    B, Btype,
                    s * strideB + (transb == CUBLAS_OP_N ? p + (int64_t)j * ldb : j + (int64_t)p * ldb));
        if (m && n)
            cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, fa.data(),
                        m > 1 ? m : 1, fb.data(), k > 1 ? k : 1, 0.0f, fc.data(), m > 1 ? m : 1);
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                int64_t ic = s * strideC + i + (int64_t)j * ldc;
                float v = a * fc[(size_t)i + (size_t)j * m] + (b != 0 ? b * load(C, Ctype, ic) : 0.0f);
                if (Ctype == CUDA_R_32F)
                    ((float *)C)[ic] = v;
                else
                    ((uint16_t *)C)[ic] = ldmc_f32_to_bf16(v);
            }
    }
    return CUBLAS_STATUS_SUCCESS;
}
