// The C interface of NCCL's collectives as data parallelism uses them (kernels/nccl.cu, built
// when CMake finds NCCL: LDMC_HAVE_NCCL). One communicator per process, bound to the current
// device; the collectives run on their own stream, ordered after the compute stream's work by
// events (no host waits). Only src/core/device.c calls these (tests/check_layers.sh).
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void ldmc_nccl_unique_id(void *id); // 128 bytes (NCCL_UNIQUE_ID_BYTES)
// 0, or -1 with NCCL's message: the communicator of `world` ranks (nonblocking, so that a
// failure elsewhere can abort it: NCCL's fault-tolerance rule).
int ldmc_nccl_init(const void *id, int rank, int world, char *message, size_t size);
void ldmc_nccl_group(bool start);
// The comm stream waits for what the compute stream has queued so far; the compute stream for
// what the comm stream has.
void ldmc_nccl_after_compute(void);
void ldmc_nccl_join(void);
void ldmc_nccl_allreduce_f32(float *buf, size_t count);
void ldmc_nccl_reduce_f32(float *buf, size_t count, int root);
void ldmc_nccl_bcast(void *buf, size_t bytes, int root);
// 0, or -1 with the asynchronous error of the communicator (a peer that failed).
int ldmc_nccl_error(char *message, size_t size);
void ldmc_nccl_abort(void);
void ldmc_nccl_destroy(void);

#ifdef __cplusplus
}
#endif
