// The per-step activation arena: a bump allocator over one reserved block of address space
// (pages are committed on first touch), reset at every step. Marks allow a region to be released
// (recomputation, or gradient checkpointing, re-runs a region and drops its intermediates). The
// high-water mark is the number a memory plan needs. Tested by tests/test_core.c.
#pragma once
#include <stdbool.h>
#include <stddef.h>

#define LDMC_ARENA_ALIGN 64

typedef struct ldmc_arena {
    char *base;
    size_t capacity;   // bytes reserved
    size_t used;       // bytes in use now
    size_t high_water; // most bytes ever in use since creation or ldmc_arena_reset_high_water
    const char *name;  // for messages ("activations")
    bool virtual_only; // address space only, never touched: for dry runs that measure memory
    bool device;       // GPU memory (one cudaMalloc of `capacity`): never touched by the host
} ldmc_arena;

// Reserves `capacity` bytes of address space (nothing is committed until touched).
void ldmc_arena_init(ldmc_arena *arena, const char *name, size_t capacity);
// Reserves inaccessible address space: allocations are counted (used, high-water mark) but the
// memory must never be touched; a dry run uses it to measure a step without the memory.
void ldmc_arena_init_virtual(ldmc_arena *arena, const char *name, size_t capacity);
// Allocates `capacity` bytes of GPU memory up front (a GPU cannot commit pages on touch; the
// trainer gives it the memory free after the weights, see ldmc_ctx_init_gpu_free). Fatal in a
// build without CUDA.
void ldmc_arena_init_device(ldmc_arena *arena, const char *name, size_t capacity);
void ldmc_arena_free(ldmc_arena *arena);
// Uninitialized memory, aligned to LDMC_ARENA_ALIGN. Fails (fatal) with the arena's name and
// sizes when the reservation is exhausted.
void *ldmc_arena_alloc(ldmc_arena *arena, size_t bytes);
// Zeroed memory (not touched in a virtual-only arena; zeroed on the GPU in a device arena).
void *ldmc_arena_calloc(ldmc_arena *arena, size_t bytes);
size_t ldmc_arena_mark(const ldmc_arena *arena);
// Releases everything allocated since `mark`.
void ldmc_arena_release(ldmc_arena *arena, size_t mark);
void ldmc_arena_reset(ldmc_arena *arena);
void ldmc_arena_reset_high_water(ldmc_arena *arena);
// True when p points into memory allocated at or above `mark`.
int ldmc_arena_above(const ldmc_arena *arena, const void *p, size_t mark);
