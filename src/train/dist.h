// Data parallelism (docs/multigpu.md): one process per GPU (or per CPU node), started by `mpirun`
// or `srun --mpi=pmix`. The process group comes from MPI: rank, world, and the local rank among the
// processes of this host, which picks the GPU. MPI carries the host collectives (scalars,
// checkpoint gathers, and every collective of a CPU run, so data parallelism is tested in CI with
// `mpirun -np 2`); NCCL, bootstrapped over MPI, carries the GPU's gradient reduction and weight
// gathers (kernels/nccl.cu). A process started without a launcher is a group of one and never
// touches MPI.
//
// The gradient reduction (ldmc_grad_sync) is bucketed and overlapped with backward: the flat
// gradient buffers are cut into buckets in the reverse of the table order (the order backward
// finishes them); a hook on the tape marks a bucket ready once backward has passed the first use
// of each of its parameters, and ready buckets are reduced in bucket order (the same on every
// rank) while backward goes on. Without ZeRO each bucket is all-reduced; with ZeRO-1 each rank owns
// a contiguous, parameter-aligned range of every table (its Adam m and v, EMA and fp32 master hold
// only that range), buckets are reduce-scattered to their owners, each rank updates its range,
// and the working weights are all-gathered.
//
// Failure: a rank that exits ends the job (mpirun and srun -K1 kill the others); a rank that
// hangs is caught by every other rank's watchdog (no step for dist.timeout seconds), which exits
// with status 3 and so ends the job. Tested by tests/test_dist.c (mpirun -np 2) and, on GPUs,
// tests/test_dist.c's NCCL part (ctest -L cuda).
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/params.h"
#include "core/tape.h"

typedef struct ldmc_dist {
    int rank, world;             // 0 and 1 for a process started alone
    int local_rank, local_world; // among this host's processes of the job
    const char *launcher;        // "mpirun", "srun", "mpi" (another PMI launcher) or "none"
    char host[64];
    bool mpi;  // MPI is initialized (by ldmc_dist_init)
    bool nccl; // the NCCL communicator exists (ldmc_dist_gpu)
} ldmc_dist;

// The process group, initialized on the first call: MPI_Init when a launcher started the process
// (Open MPI's OMPI_COMM_WORLD_SIZE, PMIx's PMIX_RANK, PMI's PMI_RANK), else a group of one. An srun
// task without PMI, or a launch in a build without MPI, is an error (-1, the message in err).
int ldmc_dist_init(ldmc_err *err);
const ldmc_dist *ldmc_dist_get(void); // after ldmc_dist_init (a group of one before)
// MPI_Finalize (after every rank's last collective); no-op without MPI.
void ldmc_dist_finalize(void);
// Ranks other than 0 print nothing to stdout (their errors still reach stderr), unless
// LDMC_LOG_ALL_RANKS=1.
void ldmc_dist_quiet_ranks(void);
// A GPU rank's device: local_rank % the visible devices (before anything uses the GPU; no-op on
// one rank or without CUDA).
void ldmc_dist_use_local_gpu(void);
// NCCL's communicator over the group, on device `local_rank % devices` (a GPU build with NCCL;
// -1 with the reason otherwise). Idempotent.
int ldmc_dist_gpu(ldmc_err *err);

// Host collectives, in the same order on every rank (no-ops on a group of one).
void ldmc_dist_sum_f64(double *v, int n);  // element-wise sum, the result on every rank
void ldmc_dist_sum_i64(int64_t *v, int n); //
bool ldmc_dist_any(bool flag);             // true on every rank when any rank passes true
// -1 on every rank when any rank's rc is not 0 (a rank that did not fail gets a message saying
// another did, about `what`), else 0.
int ldmc_dist_agree(int rc, const char *what, ldmc_err *err);
void ldmc_dist_bcast(void *buf, size_t bytes); // rank 0's bytes to every rank
void ldmc_dist_barrier(void);
// Gathers rank r's `per_rank` values into all[r * per_rank ..] on rank 0 (all: world x per_rank).
void ldmc_dist_gather_i64(const int64_t *mine, int per_rank, int64_t *all);

// ---- ZeRO-1 ranges ------------------------------------------------------------------------------
// The ranges of a table's layout that each rank owns: parameter-aligned, contiguous, balanced by
// element count (a rank may own nothing when ranks outnumber parameters). begin has world + 1
// entries: rank r owns [begin[r], begin[r + 1]).
void ldmc_zero_ranges(const ldmc_params *p, int world, size_t *begin);
// With `zero` on several ranks: the table's optimizer state sharded at this rank's range, before
// it is allocated (ldmc_params_set_shard); otherwise nothing.
void ldmc_dist_shard(ldmc_params *p, bool zero);
// Every rank's range of `buf` (a table's full layout, f32 on the host) to every rank, in place.
void ldmc_dist_allgather_ranges(float *buf, const size_t *begin);
// Every rank's range of a role buffer to rank 0's `full` (the table's layout; NULL elsewhere): a
// sharded EMA for the checkpoint or the final weights.
void ldmc_dist_gather_ranges(float *full, const float *mine, const size_t *begin);

// ---- the gradient reduction -------------------------------------------------------------------
typedef struct ldmc_grad_sync ldmc_grad_sync;

typedef struct ldmc_grad_sync_options {
    double bucket_mb; // bucket size in MiB of f32 gradients (dist.bucket_mb)
    bool zero;        // ZeRO-1: reduce-scatter to the ranges' owners
} ldmc_grad_sync_options;

// Over the trained tables (their gradients in place on the host, or on the GPU when the tables are
// there: NCCL, or MPI in the emulated GPU build). With opt->zero the tables must be sharded with
// ldmc_params_set_shard at ldmc_zero_ranges' ranges.
ldmc_grad_sync *ldmc_grad_sync_new(ldmc_params *const *tables, int n_tables,
                                   const ldmc_grad_sync_options *opt);
void ldmc_grad_sync_free(ldmc_grad_sync *s);
// The hook to install on the context for the backward of a step's last micro-batch
// (ctx->backward_hook): it starts each bucket's reduction as soon as backward has finished it.
const ldmc_backward_hook *ldmc_grad_sync_hook(ldmc_grad_sync *s);
// Starts the reduction of whatever the hook has not started (all of it on a rank that ran no
// backward) and waits for it: afterwards every rank holds the sum of every rank's gradients
// (with ZeRO: of its own range).
void ldmc_grad_sync_finish(ldmc_grad_sync *s);
// Σ g² of the reduced gradients of every table, in table order, the same on every rank.
double ldmc_grad_sync_sum_squares(ldmc_grad_sync *s);
// With ZeRO, after each rank updated its range: the working weights gathered on every rank.
void ldmc_grad_sync_gather_weights(ldmc_grad_sync *s);
// The fraction of the buckets so far whose reduction started while backward still had nodes to
// run (the rest started at its end or after it): how much of the communication could overlap
// the compute.
double ldmc_grad_sync_overlap(const ldmc_grad_sync *s);
// Buckets and their sizes, for the log.
int ldmc_grad_sync_buckets(const ldmc_grad_sync *s, double *largest_mb);

// ---- failures
// ------------------------------------------------------------------------------------ A thread
// that exits the process with status 3 when no ldmc_dist_heartbeat came for `seconds` (while
// armed): a hung rank's peers wait in a collective; their watchdogs end the job.
void ldmc_dist_watchdog_start(double seconds);
void ldmc_dist_heartbeat(void);
// Disarms (false) the watchdog for phases whose length it cannot judge (previews, checkpoints),
// and re-arms it with a fresh heartbeat (true).
void ldmc_dist_watchdog_arm(bool on);
void ldmc_dist_watchdog_stop(void);
// A test hook: LDMC_DIST_TEST_FAULT=<die|hang>:<rank>@<step> makes that rank SIGKILL or SIGSTOP
// itself when it starts that step.
void ldmc_dist_test_fault(int64_t step);
