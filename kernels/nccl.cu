// NCCL's collectives for data parallelism (see ldmc_nccl.h). Built only with NCCL; run by
// tests/test_dist.c on a multi-GPU machine (ctest -L cuda).
#include <cuda_runtime.h>
#include <nccl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>

#include "kernels/common.cuh"
#include "kernels/ldmc_cuda.h"
#include "kernels/ldmc_nccl.h"

static ncclComm_t comm;
static cudaStream_t comm_stream;
static cudaEvent_t compute_done, comm_done;

// A nonblocking communicator returns ncclInProgress while it works: wait for its state to settle.
static ncclResult_t settle(ncclResult_t r) {
    while (r == ncclInProgress) {
        sched_yield();
        if (ncclCommGetAsyncError(comm, &r) != ncclSuccess) break;
    }
    return r;
}

#define NCCL_CHECK(call)                                                                           \
    do {                                                                                           \
        ncclResult_t r_ = settle(call);                                                            \
        if (r_ != ncclSuccess)                                                                     \
            LDMC_FATAL("NCCL: %s failed: %s (%s)", #call, ncclGetErrorString(r_),                  \
                       ncclGetLastError(comm));                                                    \
    } while (0)

extern "C" void ldmc_nccl_unique_id(void *id) {
    ncclUniqueId u;
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess) LDMC_FATAL("NCCL: ncclGetUniqueId: %s", ncclGetErrorString(r));
    memcpy(id, &u, sizeof u);
}

extern "C" int ldmc_nccl_init(const void *id, int rank, int world, char *message, size_t size) {
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&comm, world, u, rank, &config);
    r = settle(r);
    if (r != ncclSuccess) {
        snprintf(message, size, "ncclCommInitRankConfig: %s (%s)", ncclGetErrorString(r),
                 ncclGetLastError(NULL));
        return -1;
    }
    CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&compute_done, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&comm_done, cudaEventDisableTiming));
    return 0;
}

extern "C" void ldmc_nccl_group(bool start) {
    if (start)
        NCCL_CHECK(ncclGroupStart());
    else
        NCCL_CHECK(ncclGroupEnd());
}

extern "C" void ldmc_nccl_after_compute(void) {
    CUDA_CHECK(cudaEventRecord(compute_done, (cudaStream_t)ldmc_cuda_stream()));
    CUDA_CHECK(cudaStreamWaitEvent(comm_stream, compute_done, 0));
}

extern "C" void ldmc_nccl_join(void) {
    CUDA_CHECK(cudaEventRecord(comm_done, comm_stream));
    CUDA_CHECK(cudaStreamWaitEvent((cudaStream_t)ldmc_cuda_stream(), comm_done, 0));
}

extern "C" void ldmc_nccl_allreduce_f32(float *buf, size_t count) {
    NCCL_CHECK(ncclAllReduce(buf, buf, count, ncclFloat32, ncclSum, comm, comm_stream));
}

extern "C" void ldmc_nccl_reduce_f32(float *buf, size_t count, int root) {
    NCCL_CHECK(ncclReduce(buf, buf, count, ncclFloat32, ncclSum, root, comm, comm_stream));
}

extern "C" void ldmc_nccl_bcast(void *buf, size_t bytes, int root) {
    NCCL_CHECK(ncclBroadcast(buf, buf, bytes, ncclUint8, root, comm, comm_stream));
}

extern "C" int ldmc_nccl_error(char *message, size_t size) {
    if (!comm) return 0;
    ncclResult_t state = ncclSuccess;
    if (ncclCommGetAsyncError(comm, &state) != ncclSuccess) return 0;
    if (state == ncclSuccess || state == ncclInProgress) return 0;
    snprintf(message, size, "%s (%s)", ncclGetErrorString(state), ncclGetLastError(comm));
    return -1;
}

extern "C" void ldmc_nccl_abort(void) {
    if (comm) ncclCommAbort(comm);
    comm = NULL;
}

extern "C" void ldmc_nccl_destroy(void) {
    if (!comm) return;
    CUDA_CHECK(cudaStreamSynchronize(comm_stream));
    NCCL_CHECK(ncclCommFinalize(comm));
    ncclCommDestroy(comm);
    comm = NULL;
}
