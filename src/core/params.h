// The parameter table: every parameter by its official state-dict name, shape and flags, and one
// flat buffer per role (working weights, fp32 master, gradients, Adam m and v, EMA), all with the
// same layout, so zero-grad, clipping, AdamW, EMA, all-reduce and saving are loops over one
// pointer. Each tensor starts on a 64-byte boundary. Tested by tests/test_core.c.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tensor.h"

enum {
    LDMC_PARAM_NO_DECAY = 1u << 0, // norms, biases, embeddings: AdamW skips weight decay
    LDMC_PARAM_FROZEN = 1u << 1,   // no gradient, not updated
    // A convolution weight: (O, kH, kW, C) in memory (channels-last), (O, C, kH, kW) in weights
    // files; the reader and writer convert.
    LDMC_PARAM_CONV = 1u << 8,
};

typedef enum ldmc_param_role {
    LDMC_ROLE_WEIGHTS, // what the forward reads (f32 on the CPU)
    LDMC_ROLE_MASTER,  // fp32 master copy (GPU training: its low halves, see below)
    LDMC_ROLE_GRAD,
    LDMC_ROLE_ADAM_M,
    LDMC_ROLE_ADAM_V,
    LDMC_ROLE_EMA,
    LDMC_ROLE_COUNT
} ldmc_param_role;

// How ldmc_params_init fills a parameter: PyTorch's defaults for the layer it belongs to, and
// the zero initialization generative-models gives some layers (zero_module).
typedef enum ldmc_param_init {
    LDMC_INIT_FAN_IN,  // uniform in ±1/sqrt(fan_in): nn.Linear and nn.Conv2d weights and biases
    LDMC_INIT_ZERO,    // zero_module layers; norm biases
    LDMC_INIT_ONE,     // norm gains
    LDMC_INIT_NORMAL,  // N(0, 1): nn.Embedding
} ldmc_param_init;

typedef struct ldmc_param {
    char *name;
    int ndim;
    int64_t shape[LDMC_MAX_DIMS];
    size_t offset; // in elements, into every role's buffer
    int64_t numel;
    unsigned flags;
    ldmc_param_init init;
    int64_t fan_in;     // for LDMC_INIT_FAN_IN: the layer's inputs per output
    ldmc_tensor tensor; // view: data in the weights, gradient in the gradient buffer
} ldmc_param;

typedef struct ldmc_params ldmc_params;
struct ldmc_params {
    ldmc_param *items;
    int count, cap;
    size_t total;                    // elements per role buffer, padding included
    float *buffers[LDMC_ROLE_COUNT]; // NULL until allocated
    bool reserved[LDMC_ROLE_COUNT];    // address space only (ldmc_params_reserve)
    // GPU copies (ldmc_params_to_device): WEIGHTS in bf16; MASTER the f32 master's low 16 bits,
    // its high halves being WEIGHTS (rounded, ldmc_f32_split: the master takes 2 bytes a
    // parameter, not 4, and the working copy costs nothing more); every other role in f32. While
    // on_device, the tensor views point there and the host buffers are the checkpoint side.
    void *device[LDMC_ROLE_COUNT];
    bool on_device;
    // ZeRO-1 (ldmc_params_set_shard): the optimizer state's range of the layout on this rank
    bool sharded;
    size_t shard_begin, shard_end;
    // Updated during backward (ldmc_params_update_in_backward): `update` is called for each
    // trainable parameter once backward has passed its every use, with its gradient in the
    // parameter's tensor (in the step's arena; gone after the call).
    bool update_in_backward;
    void (*update)(void *user, struct ldmc_params *p, int index);
    void *update_user;
};

const char *ldmc_param_role_name(ldmc_param_role role);
// ZeRO-1 (src/train/dist.h): the optimizer state's roles (MASTER, ADAM_M, ADAM_V, EMA) hold only
// the elements [begin, end) of the layout, this rank's range, on the host and on the GPU; their
// buffer pointers still index by layout offset, and only the range may be touched. Call before
// those roles are allocated; parameters must not straddle the range's ends.
void ldmc_params_set_shard(ldmc_params *p, size_t begin, size_t end);
// Whether the role's buffers hold only the shard, and the layout range they hold.
bool ldmc_params_role_sharded(const ldmc_params *p, ldmc_param_role role);
void ldmc_params_role_range(const ldmc_params *p, ldmc_param_role role, size_t *begin, size_t *end);
// Whether parameter i lies in the shard (every parameter of a table without one).
bool ldmc_params_owns(const ldmc_params *p, int i);
// Adds a parameter; returns its index. Fatal on a duplicate name or after buffers exist.
int ldmc_params_add(ldmc_params *p, const char *name, int ndim, const int64_t *shape,
                    unsigned flags);
int ldmc_params_find(const ldmc_params *p, const char *name);
// Sets (or clears) a flag on every parameter whose name matches the glob pattern; returns how
// many matched.
int ldmc_params_flag_matching(ldmc_params *p, const char *pattern, unsigned flag, bool on);
// Allocates a role's buffer, zeroed (idempotent), and re-binds the tensor views.
void ldmc_params_alloc(ldmc_params *p, ldmc_param_role role);
// Reserves a role's buffer as inaccessible address space: for dry runs (memory plans) of models
// too large to hold. Nothing may read or write it.
void ldmc_params_reserve(ldmc_params *p, ldmc_param_role role);
// Sets how a parameter is initialized (the default is LDMC_INIT_FAN_IN with fan_in = numel /
// shape[0]).
void ldmc_params_set_init(ldmc_params *p, int index, ldmc_param_init init, int64_t fan_in);
// Fills the weights buffer: each parameter from its own Philox stream, keyed by the seed and the
// hash of its name (so adding a parameter changes no other), purpose LDMC_RNG_INIT.
void ldmc_params_init(ldmc_params *p, uint64_t seed);
// The EMA buffer from the weights (its range under a shard), as a run starts.
void ldmc_params_ema_reset(ldmc_params *p);
// Zeroes the gradient buffer.
void ldmc_params_zero_grad(ldmc_params *p);
// The table is updated during backward (a trainer's optim.fused_backward): it has no gradient
// buffer (fatal if it has one); its trainable parameters still need gradients, which the tape
// gives each for the step and hands to `update` (see ldmc_params) after the parameter's last use
// in backward (core/tape.h). Saves the f32 gradients' 4 bytes a parameter.
void ldmc_params_update_in_backward(ldmc_params *p,
                                    void (*update)(void *user, ldmc_params *p, int index),
                                    void *user);
ldmc_tensor *ldmc_params_tensor(ldmc_params *p, int index);
// Moves training to the GPU: allocates the GPU buffers (bf16 working weights, the f32 master's low
// halves, gradients, and Adam m, v and EMA where the host has them), uploads the host's values
// (the host weights become the master) and points the tensor views at the GPU. Fatal without
// CUDA.
void ldmc_params_to_device(ldmc_params *p);
// A zeroed GPU buffer for a role the host does not keep (a benchmark's gradients and Adam state),
// after ldmc_params_to_device; the tensor views are re-bound. Idempotent.
void ldmc_params_device_alloc(ldmc_params *p, ldmc_param_role role);
// Copies the GPU's master weights (joined from their halves), m, v and EMA into the host buffers
// (for a checkpoint); with a shard, the master's range only (src/train/dist.h gathers the rest).
void ldmc_params_to_host(ldmc_params *p);
// Count of parameter elements (padding excluded); frozen ones excluded when trainable_only.
int64_t ldmc_params_count(const ldmc_params *p, bool trainable_only);
void ldmc_params_free(ldmc_params *p);
