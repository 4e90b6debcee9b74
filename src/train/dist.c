// Data parallelism: the process group, host collectives, ZeRO-1 ranges, the bucketed gradient
// reduction and the watchdog (see dist.h). Tested by tests/test_dist.c.
#include "train/dist.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/device.h"
#include "ops/param_ops.h"

#ifdef LDMC_HAVE_MPI
#include <mpi.h>
#endif

static ldmc_dist group = {.rank = 0, .world = 1, .local_world = 1, .launcher = "none"};
static bool initialized;

static int env_int(const char *name, int fallback) {
    const char *v = getenv(name);
    return v && *v ? atoi(v) : fallback;
}

// Which launcher started this process, from what each leaves in the environment.
static const char *detect_launcher(void) {
    if (getenv("OMPI_COMM_WORLD_SIZE")) return "mpirun";
    if (getenv("PMIX_RANK")) return getenv("SLURM_PROCID") ? "srun" : "mpi";
    if (getenv("PMI_RANK") || getenv("PMI_SIZE")) return getenv("SLURM_PROCID") ? "srun" : "mpi";
    return NULL;
}

int ldmc_dist_init(ldmc_err *err) {
    if (initialized) return 0;
    gethostname(group.host, sizeof group.host - 1);
    const char *launcher = detect_launcher();
    if (!launcher) {
        if (env_int("SLURM_NTASKS", 1) > 1 && getenv("SLURM_PROCID") && getenv("SLURM_STEP_ID"))
            return LDMC_ERR(
                err,
                "srun started %d tasks without PMI (no PMIX_RANK or PMI_RANK): each "
                "would train alone. Launch with `srun --mpi=pmix` (launch/slurm.sbatch) "
                "or mpirun inside the allocation",
                env_int("SLURM_NTASKS", 1));
        initialized = true;
        return 0;
    }
#ifdef LDMC_HAVE_MPI
    int provided = 0;
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return LDMC_ERR(err, "MPI_Init failed (launched by %s)", launcher);
    // A failing collective aborts the job (every rank), as a dead peer does under mpirun.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
    MPI_Comm_rank(MPI_COMM_WORLD, &group.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &group.world);
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, group.rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &group.local_rank);
    MPI_Comm_size(node, &group.local_world);
    MPI_Comm_free(&node);
    group.mpi = true;
    group.launcher = launcher;
    initialized = true;
    return 0;
#else
    int world = env_int("OMPI_COMM_WORLD_SIZE", env_int("PMI_SIZE", env_int("SLURM_NTASKS", 1)));
    if (world <= 1) {
        initialized = true;
        return 0;
    }
    return LDMC_ERR(err,
                    "%s started %d processes, but this build of ldmc has no MPI (install "
                    "libopenmpi-dev and rebuild with LDMC_MPI=ON)",
                    launcher, world);
#endif
}

const ldmc_dist *ldmc_dist_get(void) { return &group; }

void ldmc_dist_finalize(void) {
    if (group.nccl) ldmc_gpu_comm_destroy();
    group.nccl = false;
#ifdef LDMC_HAVE_MPI
    if (group.mpi) MPI_Finalize();
#endif
    group.mpi = false;
}

void ldmc_dist_quiet_ranks(void) {
    const char *all = getenv("LDMC_LOG_ALL_RANKS");
    if (group.rank > 0 && !(all && *all == '1') && !freopen("/dev/null", "w", stdout))
        fprintf(stderr, "ldmc: rank %d: cannot silence stdout\n", group.rank);
}

void ldmc_dist_use_local_gpu(void) {
    int devices = ldmc_gpu_device_count();
    if (group.world > 1 && devices > 0) ldmc_gpu_set_device(group.local_rank % devices);
}

int ldmc_dist_gpu(ldmc_err *err) {
    if (group.nccl || group.world == 1) return 0;
    if (!ldmc_gpu_available())
        return LDMC_ERR(err, "rank %d: no CUDA device: %s", group.rank,
                        ldmc_gpu_unavailable_reason());
#ifdef LDMC_CUDA_EMULATED
    return 0; // the emulated GPU's memory is host memory: MPI reduces it (the tests' GPU path)
#endif
    if (!ldmc_gpu_has_comm())
        return LDMC_ERR(err, "data parallelism on GPUs needs NCCL: this build has none (install "
                             "NCCL where CMake finds it and rebuild with LDMC_NCCL=ON)");
#ifdef LDMC_HAVE_MPI
    ldmc_dist_use_local_gpu(); // the device first: NCCL binds the communicator to the current one
    unsigned char id[128] = {0};
    if (group.rank == 0) ldmc_gpu_comm_unique_id(id);
    MPI_Bcast(id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
    char message[256];
    if (ldmc_gpu_comm_init(id, group.rank, group.world, message, sizeof message) != 0)
        return LDMC_ERR(err, "rank %d (%s): NCCL: %s", group.rank, group.host, message);
    group.nccl = true;
    return 0;
#else
    return LDMC_ERR(err, "NCCL's bootstrap needs MPI");
#endif
}

// ---- host collectives
// -----------------------------------------------------------------------------

void ldmc_dist_sum_f64(double *v, int n) {
#ifdef LDMC_HAVE_MPI
    if (group.world > 1) MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
#else
    (void)v, (void)n;
#endif
}

void ldmc_dist_sum_i64(int64_t *v, int n) {
#ifdef LDMC_HAVE_MPI
    if (group.world > 1) MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
#else
    (void)v, (void)n;
#endif
}

bool ldmc_dist_any(bool flag) {
    int64_t v = flag;
    ldmc_dist_sum_i64(&v, 1);
    return v != 0;
}

int ldmc_dist_agree(int rc, const char *what, ldmc_err *err) {
    if (!ldmc_dist_any(rc != 0)) return 0;
    if (rc == 0) LDMC_ERR(err, "%s: another rank failed (its message is in the log)", what);
    return -1;
}

void ldmc_dist_bcast(void *buf, size_t bytes) {
#ifdef LDMC_HAVE_MPI
    LDMC_CHECK(bytes <= INT32_MAX, "broadcast of %zu bytes", bytes);
    if (group.world > 1) MPI_Bcast(buf, (int)bytes, MPI_BYTE, 0, MPI_COMM_WORLD);
#else
    (void)buf, (void)bytes;
#endif
}

void ldmc_dist_barrier(void) {
#ifdef LDMC_HAVE_MPI
    if (group.world > 1) MPI_Barrier(MPI_COMM_WORLD);
#endif
}

void ldmc_dist_gather_i64(const int64_t *mine, int per_rank, int64_t *all) {
    if (group.world == 1) {
        memcpy(all, mine, (size_t)per_rank * sizeof *all);
        return;
    }
#ifdef LDMC_HAVE_MPI
    MPI_Gather(mine, per_rank, MPI_INT64_T, all, per_rank, MPI_INT64_T, 0, MPI_COMM_WORLD);
#endif
}

// ---- ZeRO-1 ranges
// ---------------------------------------------------------------------------------

void ldmc_zero_ranges(const ldmc_params *p, int world, size_t *begin) {
    // rank r's range starts at the parameter boundary nearest to r/world of the layout
    begin[0] = 0;
    int i = 0; // the first parameter starting at or after the point
    for (int r = 1; r < world; r++) {
        size_t want = (size_t)((double)p->total * r / world);
        while (i < p->count && p->items[i].offset < want)
            i++;
        size_t after = i < p->count ? p->items[i].offset : p->total;
        size_t before = i > 0 ? p->items[i - 1].offset : 0;
        begin[r] = want - before < after - want ? before : after;
        if (begin[r] < begin[r - 1]) begin[r] = begin[r - 1];
    }
    begin[world] = p->total;
}

void ldmc_dist_shard(ldmc_params *p, bool zero) {
    if (!zero || group.world == 1) return;
    size_t *ranges = malloc(((size_t)group.world + 1) * sizeof *ranges);
    LDMC_CHECK(ranges, "out of memory");
    ldmc_zero_ranges(p, group.world, ranges);
    ldmc_params_set_shard(p, ranges[group.rank], ranges[group.rank + 1]);
    free(ranges);
}

#ifdef LDMC_HAVE_MPI
// MPI's v-collectives count and place in ints: the ranges go in units of 16 elements (every
// parameter starts on a 64-byte boundary and is padded to one, so every range is whole units),
// which reaches 2^35 elements (SDXL's 2.57e9 would overflow ints of elements from 7 ranks on).
enum { RANGE_UNIT = 16 };

static MPI_Datatype range_unit(MPI_Datatype element) {
    MPI_Datatype unit;
    MPI_Type_contiguous(RANGE_UNIT, element, &unit);
    MPI_Type_commit(&unit);
    return unit;
}

// counts and displacements of the ranges in units
static void range_counts(const size_t *begin, int *counts, int *displs) {
    for (int r = 0; r < group.world; r++) {
        LDMC_CHECK(begin[r] % RANGE_UNIT == 0 && begin[r + 1] % RANGE_UNIT == 0 &&
                       begin[r + 1] / RANGE_UNIT <= INT32_MAX,
                   "ZeRO range [%zu, %zu): not in whole units of %d elements below 2^31 units",
                   begin[r], begin[r + 1], (int)RANGE_UNIT);
        counts[r] = (int)((begin[r + 1] - begin[r]) / RANGE_UNIT);
        displs[r] = (int)(begin[r] / RANGE_UNIT);
    }
}

// The ranges of buf (elements of `element`) from every rank to every rank (root < 0) or to root.
static void gather_v(void *buf, const void *mine, const size_t *begin, MPI_Datatype element,
                     int root) {
    int *counts = malloc(2 * (size_t)group.world * sizeof *counts);
    LDMC_CHECK(counts, "out of memory");
    range_counts(begin, counts, counts + group.world);
    MPI_Datatype unit = range_unit(element);
    if (root < 0)
        MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts, counts + group.world, unit,
                       MPI_COMM_WORLD);
    else
        MPI_Gatherv(mine, counts[group.rank], unit, buf, counts, counts + group.world, unit, root,
                    MPI_COMM_WORLD);
    MPI_Type_free(&unit);
    free(counts);
}
#endif

void ldmc_dist_allgather_ranges(float *buf, const size_t *begin) {
#ifdef LDMC_HAVE_MPI
    if (group.world > 1) gather_v(buf, NULL, begin, MPI_FLOAT, -1);
#else
    (void)buf, (void)begin;
#endif
}

void ldmc_dist_gather_ranges(float *full, const float *mine, const size_t *begin) {
    size_t b = begin[group.rank], n = begin[group.rank + 1] - b;
    if (group.world == 1) {
        memcpy(full, mine + b, n * sizeof *full);
        return;
    }
#ifdef LDMC_HAVE_MPI
    gather_v(full, mine + b, begin, MPI_FLOAT, 0);
#endif
}

// bf16 bit patterns (the emulated GPU's working weights, in host memory) gathered like f32 ranges
static void allgather_bf16(uint16_t *buf, const size_t *begin) {
#ifdef LDMC_HAVE_MPI
    gather_v(buf, NULL, begin, MPI_UINT16_T, -1);
#else
    (void)buf, (void)begin;
#endif
}

// ---- the gradient reduction
// ------------------------------------------------------------------------

typedef struct bucket {
    int table;
    size_t begin, end; // elements of the table's layout
    int ready_at;      // backward has finished the bucket once it has passed this node
#ifdef LDMC_HAVE_MPI
    MPI_Request request;
#endif
} bucket;

typedef struct table_info {
    ldmc_params *p;
    int *first_use; // per parameter: the first node that reads it (n_nodes when none)
    size_t *ranges; // ZeRO: world + 1 range starts
} table_info;

struct ldmc_grad_sync {
    table_info *tables;
    int n_tables;
    bucket *buckets;
    int n_buckets, next;
    int done; // MPI: the buckets before this one are known complete
    bool zero, gpu, nccl;
    int node;                  // the node backward has just finished (n_nodes: none yet, -1: done)
    int64_t early, all_issued; // buckets started before backward's last node, and in all
    ldmc_backward_hook hook;
    int *counts; // MPI: reduce-scatter counts, world per bucket
};

static float *grad_of(const ldmc_params *p) {
    return p->on_device ? p->device[LDMC_ROLE_GRAD] : p->buffers[LDMC_ROLE_GRAD];
}

static void start_bucket(ldmc_grad_sync *s, int k) {
    bucket *b = &s->buckets[k];
    const table_info *t = &s->tables[b->table];
    float *g = grad_of(t->p) + b->begin;
    size_t n = b->end - b->begin;
    s->early += s->node > 0;
    s->all_issued++;
    if (s->nccl) {
        ldmc_gpu_comm_group(true);
        if (!s->zero) {
            ldmc_gpu_comm_allreduce_f32(g, n);
        } else { // each owner's part of the bucket reduced to it, in place
            for (int r = 0; r < group.world; r++) {
                size_t lo = t->ranges[r] > b->begin ? t->ranges[r] : b->begin;
                size_t hi = t->ranges[r + 1] < b->end ? t->ranges[r + 1] : b->end;
                if (lo < hi) ldmc_gpu_comm_reduce_f32(grad_of(t->p) + lo, hi - lo, r);
            }
        }
        ldmc_gpu_comm_group(false);
        return;
    }
#ifdef LDMC_HAVE_MPI
    LDMC_CHECK(n <= INT32_MAX, "a gradient bucket of %zu elements", n);
    if (!s->zero) {
        MPI_Iallreduce(MPI_IN_PLACE, g, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &b->request);
    } else {
        int *counts = s->counts + (size_t)k * group.world;
        MPI_Ireduce_scatter(MPI_IN_PLACE, g, counts, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                            &b->request);
    }
#else
    (void)g;
#endif
}

// Starts, in bucket order, every bucket whose parameters backward has finished by node `node`.
static void start_ready(ldmc_grad_sync *s, int node) {
    while (s->next < s->n_buckets && s->buckets[s->next].ready_at >= node)
        start_bucket(s, s->next++);
}

// MPI moves its nonblocking collectives only inside MPI calls: test what is in flight, in order,
// after every node of backward.
static void progress(ldmc_grad_sync *s) {
#ifdef LDMC_HAVE_MPI
    for (int flag = 1; flag && s->done < s->next; s->done += flag)
        MPI_Test(&s->buckets[s->done].request, &flag, MPI_STATUS_IGNORE);
#else
    (void)s;
#endif
}

static int param_at(const ldmc_params *p, const float *g) {
    const float *base = grad_of(p);
    if (!base || p->count == 0 || g < base || g >= base + p->total) return -1;
    size_t offset = (size_t)(g - base);
    int lo = 0, hi = p->count - 1;
    while (lo < hi) { // the last parameter starting at or before offset
        int mid = (lo + hi + 1) / 2;
        if (p->items[mid].offset <= offset)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

static void hook_begin(void *user, const ldmc_ctx *ctx) {
    ldmc_grad_sync *s = user;
    int recompute = ctx->n_nodes; // the first recompute region: it may read any parameter
    for (int t = 0; t < s->n_tables; t++)
        for (int i = 0; i < s->tables[t].p->count; i++)
            s->tables[t].first_use[i] = ctx->n_nodes;
    for (int i = ctx->n_nodes - 1; i >= 0; i--) {
        const ldmc_node *node = &ctx->nodes[i];
        if (ldmc_node_is_recompute(node)) recompute = i;
        for (int k = 0; k < node->n_in; k++) {
            const float *g = ldmc_grad_if_any(node->in[k]);
            if (!g) continue;
            for (int t = 0; t < s->n_tables; t++) {
                int j = param_at(s->tables[t].p, g);
                if (j >= 0) s->tables[t].first_use[j] = i;
            }
        }
    }
    for (int k = 0; k < s->n_buckets; k++) {
        bucket *b = &s->buckets[k];
        const table_info *t = &s->tables[b->table];
        b->ready_at = recompute;
        for (int i = 0; i < t->p->count; i++) {
            const ldmc_param *item = &t->p->items[i];
            if (item->offset >= b->begin && item->offset < b->end && t->first_use[i] < b->ready_at)
                b->ready_at = t->first_use[i];
        }
    }
    if (s->nccl) ldmc_gpu_comm_after_compute();
    s->node = ctx->n_nodes;
    start_ready(s, ctx->n_nodes);
}

static void hook_node_done(void *user, int node) {
    ldmc_grad_sync *s = user;
    s->node = node;
    if (s->next < s->n_buckets && s->buckets[s->next].ready_at >= node) {
        // the comm stream starts after the kernels queued so far (this node's weight gradients)
        if (s->nccl) ldmc_gpu_comm_after_compute();
        start_ready(s, node);
    }
    if (!s->nccl) progress(s);
}

ldmc_grad_sync *ldmc_grad_sync_new(ldmc_params *const *tables, int n_tables,
                                   const ldmc_grad_sync_options *opt) {
    ldmc_grad_sync *s = calloc(1, sizeof *s);
    LDMC_CHECK(s, "out of memory");
    s->zero = opt->zero && group.world > 1;
    s->n_tables = n_tables;
    s->tables = calloc((size_t)n_tables, sizeof *s->tables);
    LDMC_CHECK(s->tables, "out of memory");
    s->gpu = n_tables > 0 && tables[0]->on_device;
    s->nccl = s->gpu && group.nccl;
    LDMC_CHECK(!s->gpu || s->nccl || !ldmc_gpu_has_comm() || group.world == 1,
               "GPU gradients without the NCCL communicator (ldmc_dist_gpu)");
    size_t cap = (size_t)(opt->bucket_mb * (1 << 20) / sizeof(float));
    if (cap < 1024) cap = 1024;
    if (cap > INT32_MAX) cap = INT32_MAX;
    int max_buckets = 0;
    for (int t = 0; t < n_tables; t++) {
        ldmc_params *p = tables[t];
        s->tables[t].p = p;
        s->tables[t].first_use = calloc((size_t)(p->count ? p->count : 1), sizeof(int));
        s->tables[t].ranges = calloc((size_t)group.world + 1, sizeof(size_t));
        LDMC_CHECK(s->tables[t].first_use && s->tables[t].ranges, "out of memory");
        ldmc_zero_ranges(p, group.world, s->tables[t].ranges);
        max_buckets += p->count;
    }
    s->buckets = calloc((size_t)(max_buckets ? max_buckets : 1), sizeof *s->buckets);
    LDMC_CHECK(s->buckets, "out of memory");
    // buckets: runs of trainable parameters in reverse table order, cut at `cap` elements
    for (int t = 0; t < n_tables; t++) {
        const ldmc_params *p = tables[t];
        bucket *open = NULL;
        for (int i = p->count - 1; i >= 0; i--) {
            const ldmc_param *item = &p->items[i];
            size_t end = i + 1 < p->count ? p->items[i + 1].offset : p->total;
            if (item->flags & LDMC_PARAM_FROZEN) {
                open = NULL;
                continue;
            }
            if (open && open->begin == end && open->end - item->offset <= cap) {
                open->begin = item->offset;
                continue;
            }
            open = &s->buckets[s->n_buckets++];
            *open = (bucket){.table = t, .begin = item->offset, .end = end};
        }
    }
    if (s->zero) {
        s->counts = calloc((size_t)s->n_buckets * group.world + 1, sizeof *s->counts);
        LDMC_CHECK(s->counts, "out of memory");
        for (int k = 0; k < s->n_buckets; k++) {
            const bucket *b = &s->buckets[k];
            const size_t *ranges = s->tables[b->table].ranges;
            for (int r = 0; r < group.world; r++) {
                size_t lo = ranges[r] > b->begin ? ranges[r] : b->begin;
                size_t hi = ranges[r + 1] < b->end ? ranges[r + 1] : b->end;
                s->counts[(size_t)k * group.world + r] = lo < hi ? (int)(hi - lo) : 0;
            }
        }
    }
    s->hook = (ldmc_backward_hook){.begin = hook_begin, .node_done = hook_node_done, .user = s};
    s->node = -1;
    return s;
}

void ldmc_grad_sync_free(ldmc_grad_sync *s) {
    if (!s) return;
    for (int t = 0; t < s->n_tables; t++) {
        free(s->tables[t].first_use);
        free(s->tables[t].ranges);
    }
    free(s->tables);
    free(s->buckets);
    free(s->counts);
    free(s);
}

const ldmc_backward_hook *ldmc_grad_sync_hook(ldmc_grad_sync *s) {
    return group.world > 1 ? &s->hook : NULL;
}

void ldmc_grad_sync_finish(ldmc_grad_sync *s) {
    if (group.world == 1) return;
    s->node = -1;
    if (s->nccl) ldmc_gpu_comm_after_compute();
    while (s->next < s->n_buckets)
        start_bucket(s, s->next++);
    if (s->nccl) {
        ldmc_gpu_comm_join(); // the compute stream waits for the reductions, the host does not
    } else {
#ifdef LDMC_HAVE_MPI
        for (int k = 0; k < s->n_buckets; k++) {
            bucket *b = &s->buckets[k];
            MPI_Wait(&b->request, MPI_STATUS_IGNORE);
            if (!s->zero) continue;
            // MPI's in-place reduce-scatter leaves this rank's part at the bucket's start
            const size_t *ranges = s->tables[b->table].ranges;
            size_t lo = ranges[group.rank] > b->begin ? ranges[group.rank] : b->begin;
            size_t hi = ranges[group.rank + 1] < b->end ? ranges[group.rank + 1] : b->end;
            float *g = grad_of(s->tables[b->table].p);
            if (lo < hi && lo > b->begin) {
                if (s->gpu)
                    ldmc_gpu_move(g + lo, g + b->begin, (hi - lo) * sizeof *g);
                else
                    memmove(g + lo, g + b->begin, (hi - lo) * sizeof *g);
            }
        }
#endif
    }
    s->next = s->done = 0;
}

double ldmc_grad_sync_sum_squares(ldmc_grad_sync *s) {
    double total = 0;
    for (int t = 0; t < s->n_tables; t++) {
        ldmc_params *p = s->tables[t].p;
        if (!s->zero) {
            total += ldmc_params_grad_sum_squares(p); // the same gradients on every rank
            continue;
        }
        double *partial = calloc((size_t)(p->count ? p->count : 1), sizeof *partial);
        LDMC_CHECK(partial, "out of memory");
        ldmc_params_grad_partials(p, partial); // this rank's range
        ldmc_dist_sum_f64(partial, p->count);
        double sum = 0;
        for (int i = 0; i < p->count; i++)
            sum += partial[i]; // table order, as ldmc_params_grad_sum_squares sums
        total += sum;
        free(partial);
    }
    return total;
}

void ldmc_grad_sync_gather_weights(ldmc_grad_sync *s) {
    if (!s->zero) return;
    for (int t = 0; t < s->n_tables; t++) {
        ldmc_params *p = s->tables[t].p;
        const size_t *ranges = s->tables[t].ranges;
        if (s->nccl) {
            ldmc_gpu_comm_after_compute();
            ldmc_gpu_comm_group(true);
            for (int r = 0; r < group.world; r++)
                if (ranges[r + 1] > ranges[r])
                    ldmc_gpu_comm_bcast((uint16_t *)p->device[LDMC_ROLE_WEIGHTS] + ranges[r],
                                        (ranges[r + 1] - ranges[r]) * sizeof(uint16_t), r);
            ldmc_gpu_comm_group(false);
            ldmc_gpu_comm_join();
        } else if (p->on_device) {
            // the emulated GPU: bf16 bit patterns as pairs of shorts through MPI on the host
            allgather_bf16(p->device[LDMC_ROLE_WEIGHTS], ranges);
        } else {
            ldmc_dist_allgather_ranges(p->buffers[LDMC_ROLE_WEIGHTS], ranges);
        }
    }
}

double ldmc_grad_sync_overlap(const ldmc_grad_sync *s) {
    return s->all_issued ? (double)s->early / (double)s->all_issued : 0;
}

int ldmc_grad_sync_buckets(const ldmc_grad_sync *s, double *largest_mb) {
    size_t largest = 0;
    for (int k = 0; k < s->n_buckets; k++)
        if (s->buckets[k].end - s->buckets[k].begin > largest)
            largest = s->buckets[k].end - s->buckets[k].begin;
    *largest_mb = (double)largest * sizeof(float) / (1 << 20);
    return s->n_buckets;
}

// ---- failures
// ------------------------------------------------------------------------------------

static pthread_t watchdog_thread;
static pthread_mutex_t watchdog_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watchdog_wake = PTHREAD_COND_INITIALIZER;
static double watchdog_seconds, last_beat;
static bool watchdog_running, watchdog_armed;

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *watchdog_main(void *unused) {
    (void)unused;
    pthread_mutex_lock(&watchdog_lock);
    while (watchdog_running) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&watchdog_wake, &watchdog_lock, &until);
        char message[256] = "";
        bool comm_failed = group.nccl && ldmc_gpu_comm_error(message, sizeof message) != 0;
        double idle = now_seconds() - last_beat;
        if (watchdog_running && (comm_failed || (watchdog_armed && idle > watchdog_seconds))) {
            if (comm_failed)
                fprintf(stderr, "ldmc: rank %d (%s): NCCL failed: %s; ending the job\n", group.rank,
                        group.host, message);
            else
                fprintf(stderr,
                        "ldmc: rank %d (%s): no training step for %.0f s (dist.timeout %g): a rank "
                        "died or hangs; ending the job (the last checkpoint is intact)\n",
                        group.rank, group.host, idle, watchdog_seconds);
            fflush(stderr);
            if (group.nccl) ldmc_gpu_comm_abort();
            _exit(3); // the launcher then ends every other rank
        }
    }
    pthread_mutex_unlock(&watchdog_lock);
    return NULL;
}

void ldmc_dist_watchdog_start(double seconds) {
    if (group.world == 1 || watchdog_running || seconds <= 0) return;
    watchdog_seconds = seconds;
    last_beat = now_seconds();
    watchdog_running = watchdog_armed = true;
    if (pthread_create(&watchdog_thread, NULL, watchdog_main, NULL) != 0) watchdog_running = false;
}

void ldmc_dist_heartbeat(void) {
    pthread_mutex_lock(&watchdog_lock);
    last_beat = now_seconds();
    pthread_mutex_unlock(&watchdog_lock);
}

void ldmc_dist_watchdog_arm(bool on) {
    pthread_mutex_lock(&watchdog_lock);
    watchdog_armed = on;
    last_beat = now_seconds();
    pthread_mutex_unlock(&watchdog_lock);
}

void ldmc_dist_watchdog_stop(void) {
    if (!watchdog_running) return;
    pthread_mutex_lock(&watchdog_lock);
    watchdog_running = false;
    pthread_cond_signal(&watchdog_wake);
    pthread_mutex_unlock(&watchdog_lock);
    pthread_join(watchdog_thread, NULL);
}

void ldmc_dist_test_fault(int64_t step) {
    const char *want = getenv("LDMC_DIST_TEST_FAULT");
    if (!want) return;
    char kind[8] = "";
    int rank = -1;
    long long at = -1;
    if (sscanf(want, "%7[a-z]:%d@%lld", kind, &rank, &at) != 3 || rank != group.rank || at != step)
        return;
    fprintf(stderr, "ldmc: rank %d: LDMC_DIST_TEST_FAULT: %s at step %lld\n", rank, kind, at);
    fflush(stderr);
    raise(!strcmp(kind, "hang") ? SIGSTOP : SIGKILL);
}
