// Bump allocator for activations (see arena.h). Tested by tests/test_core.c.
#include "core/arena.h"

#include <string.h>
#include <sys/mman.h>

#include "core/device.h"
#include "core/error.h"

void ldmc_arena_init(ldmc_arena *arena, const char *name, size_t capacity) {
    capacity = (capacity + 4095) & ~(size_t)4095;
    void *p = mmap(NULL, capacity, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    LDMC_CHECK(p != MAP_FAILED, "cannot reserve %zu MiB of address space for the %s arena",
               capacity >> 20, name);
    *arena = (ldmc_arena){.base = p, .capacity = capacity, .name = name};
}

void ldmc_arena_init_virtual(ldmc_arena *arena, const char *name, size_t capacity) {
    capacity = (capacity + 4095) & ~(size_t)4095;
    void *p = mmap(NULL, capacity, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    LDMC_CHECK(p != MAP_FAILED, "cannot reserve %zu GiB of address space for the %s arena",
               capacity >> 30, name);
    *arena = (ldmc_arena){.base = p, .capacity = capacity, .name = name, .virtual_only = true};
}

void ldmc_arena_init_device(ldmc_arena *arena, const char *name, size_t capacity) {
    capacity = (capacity + 4095) & ~(size_t)4095;
    *arena = (ldmc_arena){
        .base = ldmc_gpu_malloc(capacity), .capacity = capacity, .name = name, .device = true};
}

void ldmc_arena_free(ldmc_arena *arena) {
    if (arena->device) {
        ldmc_gpu_free(arena->base);
        *arena = (ldmc_arena){0};
        return;
    }
    if (arena->base) munmap(arena->base, arena->capacity);
    *arena = (ldmc_arena){0};
}

void *ldmc_arena_alloc(ldmc_arena *arena, size_t bytes) {
    size_t start = (arena->used + LDMC_ARENA_ALIGN - 1) & ~(size_t)(LDMC_ARENA_ALIGN - 1);
    LDMC_CHECK(start <= arena->capacity && bytes <= arena->capacity - start,
               "%s arena exhausted: %zu bytes requested with %zu of %zu MiB in use "
               "(raise the arena size)",
               arena->name, bytes, arena->used >> 20, arena->capacity >> 20);
    arena->used = start + bytes;
    if (arena->used > arena->high_water) arena->high_water = arena->used;
    return arena->base + start;
}

void *ldmc_arena_calloc(ldmc_arena *arena, size_t bytes) {
    void *p = ldmc_arena_alloc(arena, bytes);
    if (arena->virtual_only) return p;
    if (arena->device) {
        ldmc_gpu_zero(p, bytes);
        return p;
    }
    memset(p, 0, bytes);
    return p;
}

size_t ldmc_arena_mark(const ldmc_arena *arena) { return arena->used; }

void ldmc_arena_release(ldmc_arena *arena, size_t mark) {
    LDMC_CHECK(mark <= arena->used, "%s arena: release to %zu above the top %zu", arena->name, mark,
               arena->used);
    arena->used = mark;
}

void ldmc_arena_reset(ldmc_arena *arena) { arena->used = 0; }

void ldmc_arena_reset_high_water(ldmc_arena *arena) { arena->high_water = arena->used; }

int ldmc_arena_above(const ldmc_arena *arena, const void *p, size_t mark) {
    const char *c = p;
    return c >= arena->base + mark && c < arena->base + arena->capacity;
}
