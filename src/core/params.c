// The parameter table (see params.h). Tested by tests/test_core.c.
#include "core/params.h"

#include <fnmatch.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"

static const char *role_names[LDMC_ROLE_COUNT] = {"weights", "master", "grad",
                                                  "adam_m",  "adam_v", "ema"};

const char *ldmc_param_role_name(ldmc_param_role role) {
    return (unsigned)role < LDMC_ROLE_COUNT ? role_names[role] : "?";
}

static bool any_buffer(const ldmc_params *p) {
    for (int r = 0; r < LDMC_ROLE_COUNT; r++)
        if (p->buffers[r]) return true;
    return false;
}

int ldmc_params_find(const ldmc_params *p, const char *name) {
    for (int i = 0; i < p->count; i++)
        if (strcmp(p->items[i].name, name) == 0) return i;
    return -1;
}

int ldmc_params_add(ldmc_params *p, const char *name, int ndim, const int64_t *shape,
                    unsigned flags) {
    LDMC_CHECK(!any_buffer(p), "parameter '%s' added after the buffers were allocated", name);
    LDMC_CHECK(ldmc_params_find(p, name) < 0, "parameter '%s' added twice", name);
    LDMC_CHECK(ndim >= 0 && ndim <= LDMC_MAX_DIMS, "parameter '%s' has rank %d", name, ndim);
    if (p->count == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 64;
        p->items = realloc(p->items, (size_t)p->cap * sizeof *p->items);
        LDMC_CHECK(p->items, "out of memory for %d parameters", p->cap);
    }
    ldmc_param *item = &p->items[p->count];
    *item = (ldmc_param){.ndim = ndim, .flags = flags, .offset = p->total};
    item->name = strdup(name);
    LDMC_CHECK(item->name, "out of memory");
    if (ndim > 0) memcpy(item->shape, shape, (size_t)ndim * sizeof *shape); // (0-d: shape NULL)
    item->numel = ldmc_shape_numel(ndim, shape);
    item->init = LDMC_INIT_FAN_IN;
    item->fan_in = ndim > 0 && shape[0] > 0 ? item->numel / shape[0] : 1;
    p->total += ((size_t)item->numel + 15) & ~(size_t)15; // 64-byte aligned starts
    return p->count++;
}

int ldmc_params_flag_matching(ldmc_params *p, const char *pattern, unsigned flag, bool on) {
    int matched = 0;
    for (int i = 0; i < p->count; i++) {
        if (fnmatch(pattern, p->items[i].name, 0) != 0) continue;
        p->items[i].flags = on ? (p->items[i].flags | flag) : (p->items[i].flags & ~flag);
        matched++;
    }
    if (matched && p->buffers[LDMC_ROLE_WEIGHTS])
        for (int i = 0; i < p->count; i++)
            ldmc_params_tensor(p, i);
    return matched;
}

static bool state_role(ldmc_param_role role) {
    return role == LDMC_ROLE_MASTER || role == LDMC_ROLE_ADAM_M || role == LDMC_ROLE_ADAM_V ||
           role == LDMC_ROLE_EMA;
}

void ldmc_params_set_shard(ldmc_params *p, size_t begin, size_t end) {
    for (int r = 0; r < LDMC_ROLE_COUNT; r++)
        LDMC_CHECK(!state_role(r) || (!p->buffers[r] && !p->device[r]),
                   "a shard set after the %s buffer exists", role_names[r]);
    LDMC_CHECK(begin <= end && end <= p->total, "shard [%zu, %zu) of %zu elements", begin, end,
               p->total);
    p->sharded = true, p->shard_begin = begin, p->shard_end = end;
}

bool ldmc_params_role_sharded(const ldmc_params *p, ldmc_param_role role) {
    return p->sharded && state_role(role);
}

void ldmc_params_role_range(const ldmc_params *p, ldmc_param_role role, size_t *begin,
                            size_t *end) {
    bool s = ldmc_params_role_sharded(p, role);
    *begin = s ? p->shard_begin : 0;
    *end = s ? p->shard_end : p->total;
}

bool ldmc_params_owns(const ldmc_params *p, int i) {
    return !p->sharded ||
           (p->items[i].offset >= p->shard_begin && p->items[i].offset < p->shard_end);
}

// A role's buffer holds [begin, end) of the layout: its pointer is the memory's start moved back
// by begin elements (computed on integers: only the range is ever touched).
static void *shifted(void *memory, size_t begin, size_t elem) {
    return memory ? (void *)((uintptr_t)memory - begin * elem) : NULL;
}

// The memory itself from a role's pointer.
static void *unshifted(void *buffer, size_t begin, size_t elem) {
    return buffer ? (void *)((uintptr_t)buffer + begin * elem) : NULL;
}

static size_t role_count(const ldmc_params *p, ldmc_param_role role) {
    size_t b, e;
    ldmc_params_role_range(p, role, &b, &e);
    return e - b ? e - b : 1;
}

void ldmc_params_alloc(ldmc_params *p, ldmc_param_role role) {
    LDMC_CHECK((unsigned)role < LDMC_ROLE_COUNT, "bad parameter role %d", (int)role);
    if (p->buffers[role]) return;
    size_t b, e;
    ldmc_params_role_range(p, role, &b, &e);
    size_t bytes = role_count(p, role) * sizeof(float);
    void *m = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    LDMC_CHECK(m, "out of memory: %zu MiB for the %s buffer", bytes >> 20, role_names[role]);
    memset(m, 0, bytes);
    p->buffers[role] = shifted(m, b, sizeof(float));
    for (int i = 0; i < p->count; i++)
        ldmc_params_tensor(p, i);
}

static size_t reserved_bytes(const ldmc_params *p, ldmc_param_role role) {
    return (role_count(p, role) * sizeof(float) + 4095) & ~(size_t)4095;
}

void ldmc_params_reserve(ldmc_params *p, ldmc_param_role role) {
    LDMC_CHECK((unsigned)role < LDMC_ROLE_COUNT, "bad parameter role %d", (int)role);
    if (p->buffers[role]) return;
    size_t b, e;
    ldmc_params_role_range(p, role, &b, &e);
    void *m = mmap(NULL, reserved_bytes(p, role), PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    LDMC_CHECK(m != MAP_FAILED, "cannot reserve %zu MiB of address space for the %s buffer",
               reserved_bytes(p, role) >> 20, role_names[role]);
    p->buffers[role] = shifted(m, b, sizeof(float));
    p->reserved[role] = true;
    for (int i = 0; i < p->count; i++)
        ldmc_params_tensor(p, i);
}

void ldmc_params_set_init(ldmc_params *p, int index, ldmc_param_init init, int64_t fan_in) {
    LDMC_CHECK(index >= 0 && index < p->count, "parameter index %d of %d", index, p->count);
    p->items[index].init = init;
    p->items[index].fan_in = fan_in > 0 ? fan_in : 1;
}

void ldmc_params_init(ldmc_params *p, uint64_t seed) {
    float *weights = p->buffers[LDMC_ROLE_WEIGHTS];
    LDMC_CHECK(weights && !p->reserved[LDMC_ROLE_WEIGHTS], "initializing unallocated weights");
    // each parameter from its own stream: any order, any thread gives the same weights
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < p->count; i++) {
        const ldmc_param *item = &p->items[i];
        float *w = weights + item->offset;
        size_t n = (size_t)item->numel;
        ldmc_rng rng = ldmc_rng_make(seed ^ ldmc_hash_name(item->name), 0, 0, LDMC_RNG_INIT);
        switch (item->init) {
        case LDMC_INIT_ZERO: memset(w, 0, n * sizeof *w); break;
        case LDMC_INIT_ONE:
            for (size_t k = 0; k < n; k++)
                w[k] = 1;
            break;
        case LDMC_INIT_NORMAL: ldmc_rng_normal(&rng, 0, n, w); break;
        case LDMC_INIT_FAN_IN: {
            float bound = (float)(1.0 / sqrt((double)item->fan_in));
            ldmc_rng_signed_uniform(&rng, 0, n, w);
            for (size_t k = 0; k < n; k++)
                w[k] *= bound;
            break;
        }
        }
    }
}

void ldmc_params_ema_reset(ldmc_params *p) {
    size_t b, e;
    ldmc_params_role_range(p, LDMC_ROLE_EMA, &b, &e);
    LDMC_CHECK(p->buffers[LDMC_ROLE_EMA] && p->buffers[LDMC_ROLE_WEIGHTS],
               "EMA reset without buffers");
    memcpy(p->buffers[LDMC_ROLE_EMA] + b, p->buffers[LDMC_ROLE_WEIGHTS] + b,
           (e - b) * sizeof(float));
}

void ldmc_params_zero_grad(ldmc_params *p) {
    if (p->on_device) {
        if (p->device[LDMC_ROLE_GRAD])
            ldmc_gpu_zero(p->device[LDMC_ROLE_GRAD], p->total * sizeof(float));
        return;
    }
    if (p->buffers[LDMC_ROLE_GRAD] && !p->reserved[LDMC_ROLE_GRAD])
        memset(p->buffers[LDMC_ROLE_GRAD], 0, p->total * sizeof(float));
}

void ldmc_params_update_in_backward(ldmc_params *p,
                                    void (*update)(void *user, ldmc_params *p, int index),
                                    void *user) {
    LDMC_CHECK(!p->buffers[LDMC_ROLE_GRAD] && !p->device[LDMC_ROLE_GRAD],
               "parameters updated in backward have no gradient buffer");
    p->update_in_backward = true, p->update = update, p->update_user = user;
    if (p->buffers[LDMC_ROLE_WEIGHTS] || p->on_device)
        for (int i = 0; i < p->count; i++)
            ldmc_params_tensor(p, i);
}

ldmc_tensor *ldmc_params_tensor(ldmc_params *p, int index) {
    LDMC_CHECK(index >= 0 && index < p->count, "parameter index %d of %d", index, p->count);
    ldmc_param *item = &p->items[index];
    // on the GPU: bf16 working weights and f32 gradients there; else the host's f32 buffers
    float *grad = p->on_device ? p->device[LDMC_ROLE_GRAD] : p->buffers[LDMC_ROLE_GRAD];
    bool trainable = !(item->flags & LDMC_PARAM_FROZEN) && (grad || p->update_in_backward);
    if (p->on_device) {
        uint16_t *w16 = p->device[LDMC_ROLE_WEIGHTS];
        item->tensor = ldmc_tensor_wrap(LDMC_BF16, w16 + item->offset, item->ndim, item->shape);
        item->tensor.device = LDMC_CUDA;
    } else {
        float *weights = p->buffers[LDMC_ROLE_WEIGHTS];
        item->tensor = ldmc_tensor_wrap(LDMC_F32, weights ? weights + item->offset : NULL,
                                        item->ndim, item->shape);
    }
    item->tensor.grad = trainable && grad ? grad + item->offset : NULL;
    item->tensor.requires_grad = trainable;
    item->tensor.is_param = true;
    item->tensor.param_table = p;
    item->tensor.param_index = index;
    item->tensor.name = item->name;
    return &item->tensor;
}

int64_t ldmc_params_count(const ldmc_params *p, bool trainable_only) {
    int64_t n = 0;
    for (int i = 0; i < p->count; i++)
        if (!trainable_only || !(p->items[i].flags & LDMC_PARAM_FROZEN)) n += p->items[i].numel;
    return n;
}

// A GPU buffer's element size: the working weights and the master's low halves are 16-bit.
static size_t device_elem(ldmc_param_role role) {
    return role == LDMC_ROLE_WEIGHTS || role == LDMC_ROLE_MASTER ? 2 : 4;
}

// A zeroed GPU buffer of a role (the shard's range of a state role).
static void device_alloc(ldmc_params *p, ldmc_param_role role) {
    size_t b, e;
    ldmc_params_role_range(p, role, &b, &e);
    size_t bytes = role_count(p, role) * device_elem(role);
    void *m = ldmc_gpu_malloc(bytes);
    ldmc_gpu_zero(m, bytes);
    p->device[role] = shifted(m, b, device_elem(role));
}

// The host's f32 weights to the GPU's two halves, a chunk at a time: the bf16 working weights
// (all of them) and the master's low halves (its range).
enum { SPLIT_CHUNK = 1 << 22 };

static void upload_master(ldmc_params *p) {
    size_t b, e;
    ldmc_params_role_range(p, LDMC_ROLE_MASTER, &b, &e);
    uint16_t *hi = malloc(SPLIT_CHUNK * sizeof *hi), *lo = malloc(SPLIT_CHUNK * sizeof *lo);
    LDMC_CHECK(hi && lo, "out of memory");
    const float *host = p->buffers[LDMC_ROLE_WEIGHTS];
    for (size_t at = 0; at < p->total; at += SPLIT_CHUNK) {
        const size_t k = p->total - at < SPLIT_CHUNK ? p->total - at : SPLIT_CHUNK;
        ldmc_f32_split_n(hi, lo, host + at, k);
        ldmc_gpu_upload((uint16_t *)p->device[LDMC_ROLE_WEIGHTS] + at, hi, k * sizeof *hi);
        const size_t from = at > b ? at : b, to = at + k < e ? at + k : e;
        if (from < to)
            ldmc_gpu_upload((uint16_t *)p->device[LDMC_ROLE_MASTER] + from, lo + (from - at),
                            (to - from) * sizeof *lo);
    }
    free(hi);
    free(lo);
}

// The master's range, joined from the GPU's two halves, into the host's f32 weights.
static void download_master(ldmc_params *p) {
    size_t b, e;
    ldmc_params_role_range(p, LDMC_ROLE_MASTER, &b, &e);
    uint16_t *hi = malloc(SPLIT_CHUNK * sizeof *hi), *lo = malloc(SPLIT_CHUNK * sizeof *lo);
    LDMC_CHECK(hi && lo, "out of memory");
    float *host = p->buffers[LDMC_ROLE_WEIGHTS];
    for (size_t at = b; at < e; at += SPLIT_CHUNK) {
        const size_t k = e - at < SPLIT_CHUNK ? e - at : SPLIT_CHUNK;
        ldmc_gpu_download(hi, (const uint16_t *)p->device[LDMC_ROLE_WEIGHTS] + at, k * sizeof *hi);
        ldmc_gpu_download(lo, (const uint16_t *)p->device[LDMC_ROLE_MASTER] + at, k * sizeof *lo);
        ldmc_f32_join_n(host + at, hi, lo, k);
    }
    free(hi);
    free(lo);
}

void ldmc_params_to_device(ldmc_params *p) {
    LDMC_CHECK(ldmc_gpu_available(),
               "parameters on the GPU: no CUDA in this build, or no device visible");
    LDMC_CHECK(!p->on_device, "parameters already on the GPU");
    LDMC_CHECK(p->buffers[LDMC_ROLE_WEIGHTS] && !p->reserved[LDMC_ROLE_WEIGHTS],
               "parameters moved to the GPU before their weights exist");
    device_alloc(p, LDMC_ROLE_WEIGHTS);
    for (int r = LDMC_ROLE_MASTER; r < LDMC_ROLE_COUNT; r++)
        if (r == LDMC_ROLE_MASTER || (p->buffers[r] && !p->reserved[r]))
            device_alloc(p, (ldmc_param_role)r);
    // the host weights become the master: their bf16 rounding is the working copy
    upload_master(p);
    for (int r = LDMC_ROLE_ADAM_M; r < LDMC_ROLE_COUNT; r++) {
        if (!p->device[r]) continue;
        size_t b, e;
        ldmc_params_role_range(p, r, &b, &e);
        ldmc_gpu_upload((float *)p->device[r] + b, p->buffers[r] + b, (e - b) * sizeof(float));
    }
    if (p->device[LDMC_ROLE_GRAD])
        ldmc_gpu_zero(p->device[LDMC_ROLE_GRAD], p->total * sizeof(float));
    p->on_device = true;
    for (int i = 0; i < p->count; i++)
        ldmc_params_tensor(p, i);
}

void ldmc_params_device_alloc(ldmc_params *p, ldmc_param_role role) {
    LDMC_CHECK(p->on_device && role != LDMC_ROLE_WEIGHTS && role != LDMC_ROLE_MASTER,
               "a GPU %s buffer for parameters not on the GPU", role_names[role]);
    if (p->device[role]) return;
    device_alloc(p, role);
    for (int i = 0; i < p->count; i++)
        ldmc_params_tensor(p, i);
}

void ldmc_params_to_host(ldmc_params *p) {
    if (!p->on_device) return;
    download_master(p);
    for (int r = LDMC_ROLE_ADAM_M; r < LDMC_ROLE_COUNT; r++) {
        if (!p->device[r]) continue;
        size_t b, e;
        ldmc_params_role_range(p, r, &b, &e);
        ldmc_gpu_download(p->buffers[r] + b, (float *)p->device[r] + b, (e - b) * sizeof(float));
    }
}

void ldmc_params_free(ldmc_params *p) {
    for (int r = 0; r < LDMC_ROLE_COUNT; r++) {
        size_t b, e;
        ldmc_params_role_range(p, r, &b, &e);
        ldmc_gpu_free(unshifted(p->device[r], b, device_elem((ldmc_param_role)r)));
        void *m = unshifted(p->buffers[r], b, sizeof(float));
        if (p->reserved[r])
            munmap(m, reserved_bytes(p, r));
        else
            free(m);
    }
    for (int i = 0; i < p->count; i++)
        free(p->items[i].name);
    free(p->items);
    *p = (ldmc_params){0};
}
