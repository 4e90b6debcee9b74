// PyTorch checkpoint files (see torch_file.h): a restricted unpickler, the two container formats
// and the copy of every tensor view into one contiguous buffer. Tested by tests/test_torch_file.c.
#include "io/torch_file.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

// ---- torch dtypes and the globals a file may name ---------------------------------------------

typedef enum torch_dtype {
    T_FLOAT,
    T_DOUBLE,
    T_HALF,
    T_BFLOAT16,
    T_LONG,
    T_INT,
    T_SHORT,
    T_CHAR,
    T_BYTE,
    T_BOOL,
} torch_dtype;

// The storage class, its element size and the dtype ldmc gives the tensor (torch_file.h).
static const struct {
    const char *storage;
    size_t size;
    ldmc_dtype out;
} TORCH_DTYPES[] = {
    [T_FLOAT] = {"FloatStorage", 4, LDMC_F32}, [T_DOUBLE] = {"DoubleStorage", 8, LDMC_F32},
    [T_HALF] = {"HalfStorage", 2, LDMC_F16},   [T_BFLOAT16] = {"BFloat16Storage", 2, LDMC_BF16},
    [T_LONG] = {"LongStorage", 8, LDMC_I64},   [T_INT] = {"IntStorage", 4, LDMC_I32},
    [T_SHORT] = {"ShortStorage", 2, LDMC_I32}, [T_CHAR] = {"CharStorage", 1, LDMC_I32},
    [T_BYTE] = {"ByteStorage", 1, LDMC_I32},   [T_BOOL] = {"BoolStorage", 1, LDMC_I32},
};
#define TORCH_DTYPE_COUNT ((int)(sizeof TORCH_DTYPES / sizeof TORCH_DTYPES[0]))

typedef enum global_kind {
    G_ORDERED_DICT,
    G_REBUILD_TENSOR,    // torch._utils._rebuild_tensor(storage, offset, size, stride)
    G_REBUILD_TENSOR_V2, // the same + requires_grad, hooks (+ metadata since PyTorch 2)
    G_REBUILD_PARAMETER, // (tensor, requires_grad, hooks[, state])
    G_REBUILD_FROM_TYPE, // torch._tensor._rebuild_from_type_v2(func, type, args, state)
    G_SET,
    G_INERT, // a harmless name: calling it gives an opaque value, nothing is run
} global_kind;

// The only globals a file may name. Inert names are those real checkpoints hold next to their
// tensors (Lightning's callback states, hyper-parameters); they are never looked up or called.
// Any name in a pytorch_lightning module is inert (the last entry): Stable Diffusion's v1 .ckpt
// files key their callback states by Lightning's ModelCheckpoint class, and Lightning's
// hyper-parameters are an AttributeDict.
static const struct {
    const char *module, *name;
    global_kind kind;
} GLOBALS[] = {
    {"collections", "OrderedDict", G_ORDERED_DICT},
    {"torch._utils", "_rebuild_tensor", G_REBUILD_TENSOR},
    {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_TENSOR_V2},
    {"torch._utils", "_rebuild_parameter", G_REBUILD_PARAMETER},
    {"torch._utils", "_rebuild_parameter_with_state", G_REBUILD_PARAMETER},
    {"torch._tensor", "_rebuild_from_type_v2", G_REBUILD_FROM_TYPE},
    {"builtins", "set", G_SET},
    {"__builtin__", "set", G_SET}, // protocol 2 writes Python 2's name
    {"torch", "Tensor", G_INERT},
    {"torch._tensor", "Tensor", G_INERT},
    {"torch.nn.parameter", "Parameter", G_INERT},
    {"torch", "Size", G_INERT},
    {"torch", "device", G_INERT},
    {"torch", "float32", G_INERT},
    {"torch", "float16", G_INERT},
    {"torch", "bfloat16", G_INERT},
    {"torch", "float64", G_INERT},
    {"torch", "int64", G_INERT},
    {"torch", "int32", G_INERT},
    {"torch", "int16", G_INERT},
    {"torch", "int8", G_INERT},
    {"torch", "uint8", G_INERT},
    {"torch", "bool", G_INERT},
    {"numpy.core.multiarray", "scalar", G_INERT},
    {"numpy", "dtype", G_INERT},
    {"_codecs", "encode", G_INERT},
    {"pytorch_lightning", "*", G_INERT}, // any pytorch_lightning.* name (kept last)
};
#define GLOBAL_COUNT ((int)(sizeof GLOBALS / sizeof GLOBALS[0]))

// ---- values -----------------------------------------------------------------------------------

typedef enum value_kind {
    V_NONE,
    V_BOOL,
    V_INT,
    V_BIGINT, // a LONG1/LONG4 above 64 bits: its little-endian bytes
    V_FLOAT,
    V_STR, // also Python 2 str (BINSTRING)
    V_BYTES,
    V_TUPLE,
    V_LIST,
    V_DICT, // items: key, value, key, value, ... in insertion order
    V_SET,
    V_GLOBAL,
    V_STORAGE,
    V_TENSOR,
    V_OPAQUE, // what an inert global made
} value_kind;

static const char *const VALUE_KIND_NAMES[] = {
    "None", "bool", "int", "int",    "float",   "str",    "bytes",  "tuple",
    "list", "dict", "set", "global", "storage", "tensor", "object",
};

#define TORCH_MAX_DIMS 64 // what a tensor may have in the file (ldmc takes LDMC_MAX_DIMS)
// The most a file's tensors may take once copied out (1 TiB; more than any checkpoint, and a
// bound for views that repeat a few bytes, which ASan would otherwise abort on).
#define TORCH_MAX_BYTES ((uint64_t)1 << 40)

typedef struct value value;
struct value {
    value_kind kind;
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            const unsigned char *p; // inside the pickle, which outlives every value
            size_t n;
        } s;
        struct {
            value **items;
            size_t n, cap;
        } seq;
        int global; // index into GLOBALS
        struct {
            int root;          // index into the reader's storages
            torch_dtype dtype; // of this reference
            uint64_t offset;   // bytes into the root (legacy views of storages)
            uint64_t limit;    // bytes of the root this reference may use
        } storage;
        struct {
            int root;
            torch_dtype dtype;
            uint64_t byte_offset, limit; // the storage reference's
            int64_t offset;              // storage_offset, in elements
            int ndim;
            int64_t *size, *stride; // ndim each, one allocation
        } tensor;
    } u;
};

// One storage of the file, by its key.
typedef struct torch_root {
    const unsigned char *key;
    size_t key_len;
    torch_dtype dtype;
    bool sized;                // nbytes is known
    uint64_t nbytes;           // the data's length
    const unsigned char *data; // legacy: inside the mapping
    zip_int64_t zip_index;     // zip: the member
} torch_root;

typedef struct torch_reader {
    const char *path;
    ldmc_err *err;
    value **values; // every value made, freed at the end
    size_t value_count, value_cap;
    torch_root *roots;
    int root_count, root_cap;
    int *root_hash; // open addressing: root index + 1, 0 for empty
    size_t hash_cap;
    zip_t *zip;
    char *prefix; // the zip's top folder
    const unsigned char *map;
    size_t map_size;
} torch_reader;

static int out_of_memory(torch_reader *r) {
    return LDMC_ERR(r->err, "%s: out of memory reading a PyTorch file", r->path);
}

static value *new_value(torch_reader *r, value_kind kind) {
    if (r->value_count == r->value_cap) {
        size_t cap = r->value_cap ? 2 * r->value_cap : 256;
        value **grown = realloc(r->values, cap * sizeof *grown);
        if (!grown) return out_of_memory(r), NULL;
        r->values = grown;
        r->value_cap = cap;
    }
    value *v = calloc(1, sizeof *v);
    if (!v) return out_of_memory(r), NULL;
    v->kind = kind;
    r->values[r->value_count++] = v;
    return v;
}

static void free_value(value *v) {
    if (v->kind == V_TUPLE || v->kind == V_LIST || v->kind == V_DICT || v->kind == V_SET)
        free(v->u.seq.items);
    if (v->kind == V_TENSOR) free(v->u.tensor.size);
    free(v);
}

static int seq_push(torch_reader *r, value *seq, value *item) {
    if (seq->u.seq.n == seq->u.seq.cap) {
        size_t cap = seq->u.seq.cap ? 2 * seq->u.seq.cap : 4;
        value **grown = realloc(seq->u.seq.items, cap * sizeof *grown);
        if (!grown) return out_of_memory(r);
        seq->u.seq.items = grown;
        seq->u.seq.cap = cap;
    }
    seq->u.seq.items[seq->u.seq.n++] = item;
    return 0;
}

static bool is_str(const value *v, const char *text) {
    return v && v->kind == V_STR && v->u.s.n == strlen(text) && !memcmp(v->u.s.p, text, v->u.s.n);
}

// The value of the last entry of dict d under str key `key`, or NULL.
static const value *dict_get(const value *d, const char *key) {
    const value *found = NULL;
    for (size_t i = 0; i + 1 < d->u.seq.n; i += 2)
        if (is_str(d->u.seq.items[i], key)) found = d->u.seq.items[i + 1];
    return found;
}

// ---- storages by key --------------------------------------------------------------------------

static uint64_t hash_bytes(const unsigned char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

// The slot of `key` in the hash (holding 0 when the key is new).
static int *root_slot(torch_reader *r, const unsigned char *key, size_t n) {
    size_t mask = r->hash_cap - 1;
    for (size_t i = (size_t)hash_bytes(key, n) & mask;; i = (i + 1) & mask) {
        int *slot = &r->root_hash[i];
        if (*slot == 0) return slot;
        const torch_root *root = &r->roots[*slot - 1];
        if (root->key_len == n && !memcmp(root->key, key, n)) return slot;
    }
}

static int find_root(torch_reader *r, const unsigned char *key, size_t n) {
    return r->hash_cap ? *root_slot(r, key, n) - 1 : -1;
}

// The index of the storage named `key`, added when new (the hash stays at most half full).
static int add_root(torch_reader *r, const unsigned char *key, size_t n, torch_dtype dtype) {
    int found = find_root(r, key, n);
    if (found >= 0) return found;
    if ((size_t)(r->root_count + 1) * 2 > r->hash_cap) {
        size_t cap = r->hash_cap ? 2 * r->hash_cap : 64;
        int *hash = calloc(cap, sizeof *hash);
        if (!hash || r->root_count >= INT32_MAX / 4) return free(hash), out_of_memory(r), -1;
        free(r->root_hash);
        r->root_hash = hash;
        r->hash_cap = cap;
        for (int i = 0; i < r->root_count; i++)
            *root_slot(r, r->roots[i].key, r->roots[i].key_len) = i + 1;
    }
    if (r->root_count == r->root_cap) {
        int cap = r->root_cap ? 2 * r->root_cap : 64;
        torch_root *grown = realloc(r->roots, (size_t)cap * sizeof *grown);
        if (!grown) return out_of_memory(r), -1;
        r->roots = grown;
        r->root_cap = cap;
    }
    r->roots[r->root_count] =
        (torch_root){.key = key, .key_len = n, .dtype = dtype, .zip_index = -1};
    *root_slot(r, key, n) = r->root_count + 1;
    return r->root_count++;
}

// ---- the unpickler ----------------------------------------------------------------------------

typedef struct unpickler {
    torch_reader *r;
    const unsigned char *start, *p, *end;
    const char *what; // "state/data.pkl", "the object's pickle", ... (start: byte 0 of it)
    bool storages_allowed;
    value **stack;
    size_t sp, stack_cap;
    size_t *marks;
    size_t mark_count, mark_cap;
    value **memo;
    size_t memo_cap, memo_count; // memo_count: entries stored (MEMOIZE's next index)
    const unsigned char *op_at;  // the opcode being run
} unpickler;

static int fail(unpickler *u, const char *fmt, ...) LDMC_PRINTF(2, 3);
static int fail(unpickler *u, const char *fmt, ...) {
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return LDMC_ERR(u->r->err, "%s: %s (%s, byte %zu)", u->r->path, what, u->what,
                    (size_t)(u->op_at - u->start));
}

static int take(unpickler *u, size_t n, const unsigned char **out) {
    if (n > (size_t)(u->end - u->p))
        return fail(u, "the pickle ends inside an opcode's argument (file truncated?)");
    *out = u->p;
    u->p += n;
    return 0;
}

static uint64_t read_le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static int push(unpickler *u, value *v) {
    if (!v) return -1;
    if (u->sp == u->stack_cap) {
        size_t cap = u->stack_cap ? 2 * u->stack_cap : 64;
        value **grown = realloc(u->stack, cap * sizeof *grown);
        if (!grown) return out_of_memory(u->r);
        u->stack = grown;
        u->stack_cap = cap;
    }
    u->stack[u->sp++] = v;
    return 0;
}

// The top n values must lie above the last mark: nothing below it belongs to this opcode.
static int need(unpickler *u, size_t n) {
    size_t floor = u->mark_count ? u->marks[u->mark_count - 1] : 0;
    if (u->sp < floor || u->sp - floor < n)
        return fail(u, "opcode 0x%02x needs %zu values on the pickle stack", *u->op_at, n);
    return 0;
}

static value *pop(unpickler *u) { return u->stack[--u->sp]; }

// Pops the last mark; *from receives where the marked values start.
static int pop_mark(unpickler *u, size_t *from) {
    if (u->mark_count == 0) return fail(u, "opcode 0x%02x without a MARK", *u->op_at);
    *from = u->marks[--u->mark_count];
    if (*from > u->sp) return fail(u, "a MARK above the top of the pickle stack");
    return 0;
}

static int push_int(unpickler *u, int64_t i) {
    value *v = new_value(u->r, V_INT);
    if (v) v->u.i = i;
    return push(u, v);
}

static int push_bytes(unpickler *u, value_kind kind, size_t n) {
    const unsigned char *p = NULL;
    if (take(u, n, &p) != 0) return -1;
    value *v = new_value(u->r, kind);
    if (v) v->u.s.p = p, v->u.s.n = n;
    return push(u, v);
}

// A string or bytes opcode whose length is a little-endian count of `width` bytes.
static int push_counted(unpickler *u, value_kind kind, int width, bool is_signed) {
    const unsigned char *p = NULL;
    if (take(u, (size_t)width, &p) != 0) return -1;
    uint64_t n = read_le(p, width);
    if (is_signed && (n & 0x80000000u)) return fail(u, "a negative string length");
    if (n > (uint64_t)(u->end - u->p))
        return fail(u, "a string of %" PRIu64 " bytes runs past the end of the pickle", n);
    return push_bytes(u, kind, (size_t)n);
}

// LONG1 / LONG4: a little-endian two's complement integer of n bytes.
static int push_long(unpickler *u, int width) {
    const unsigned char *p = NULL;
    if (take(u, (size_t)width, &p) != 0) return -1;
    uint64_t n = read_le(p, width);
    if (width == 4 && (n & 0x80000000u)) return fail(u, "a negative LONG4 length");
    if (n > (uint64_t)(u->end - u->p)) return fail(u, "a long integer runs past the pickle");
    if (take(u, (size_t)n, &p) != 0) return -1;
    if (n > 8) {
        value *v = new_value(u->r, V_BIGINT);
        if (v) v->u.s.p = p, v->u.s.n = (size_t)n;
        return push(u, v);
    }
    uint64_t bits = n ? read_le(p, (int)n) : 0;
    if (n && n < 8 && (p[n - 1] & 0x80)) bits |= ~(uint64_t)0 << (8 * n); // sign-extend
    int64_t i;
    memcpy(&i, &bits, sizeof i);
    return push_int(u, i);
}

// Pops the values from the last mark into a new container of `kind`.
static int collect_marked(unpickler *u, value_kind kind) {
    size_t from = 0;
    if (pop_mark(u, &from) != 0) return -1;
    value *v = new_value(u->r, kind);
    if (!v) return -1;
    if (kind == V_DICT && (u->sp - from) % 2) return fail(u, "DICT with an odd number of values");
    for (size_t i = from; i < u->sp; i++)
        if (seq_push(u->r, v, u->stack[i]) != 0) return -1;
    u->sp = from;
    return push(u, v);
}

static int tuple_of(unpickler *u, size_t n) {
    if (need(u, n) != 0) return -1;
    value *v = new_value(u->r, V_TUPLE);
    if (!v) return -1;
    for (size_t i = u->sp - n; i < u->sp; i++)
        if (seq_push(u->r, v, u->stack[i]) != 0) return -1;
    u->sp -= n;
    return push(u, v);
}

// APPENDS, SETITEMS, ADDITEMS: the marked values go into the container below the mark. An
// opaque object (an inert global's instance) takes and drops them.
static int add_marked(unpickler *u, value_kind kind) {
    size_t from = 0;
    if (pop_mark(u, &from) != 0) return -1;
    if (from == 0) return fail(u, "opcode 0x%02x with no container below its MARK", *u->op_at);
    value *target = u->stack[from - 1];
    if (target->kind != kind && target->kind != V_OPAQUE)
        return fail(u, "opcode 0x%02x adds to a %s, expected a %s", *u->op_at,
                    VALUE_KIND_NAMES[target->kind], VALUE_KIND_NAMES[kind]);
    if (kind == V_DICT && (u->sp - from) % 2)
        return fail(u, "SETITEMS with an odd number of values");
    for (size_t i = from; i < u->sp && target->kind != V_OPAQUE; i++)
        if (seq_push(u->r, target, u->stack[i]) != 0) return -1;
    u->sp = from;
    return 0;
}

static int add_top(unpickler *u, value_kind kind, size_t n) {
    if (need(u, n + 1) != 0) return -1;
    value *target = u->stack[u->sp - n - 1];
    if (target->kind != kind && target->kind != V_OPAQUE)
        return fail(u, "opcode 0x%02x adds to a %s, expected a %s", *u->op_at,
                    VALUE_KIND_NAMES[target->kind], VALUE_KIND_NAMES[kind]);
    for (size_t i = u->sp - n; i < u->sp && target->kind != V_OPAQUE; i++)
        if (seq_push(u->r, target, u->stack[i]) != 0) return -1;
    u->sp -= n;
    return 0;
}

static int memo_put(unpickler *u, uint64_t index) {
    if (need(u, 1) != 0) return -1;
    // the pickler numbers memo entries from 0, at most one per opcode (2+ bytes each)
    if (index >= (uint64_t)(u->end - u->start))
        return fail(u, "memo index %" PRIu64 " is beyond what the pickle can hold", index);
    if (index >= u->memo_cap) {
        size_t cap = u->memo_cap ? u->memo_cap : 64;
        while (cap <= index)
            cap *= 2;
        value **grown = realloc(u->memo, cap * sizeof *grown);
        if (!grown) return out_of_memory(u->r);
        memset(grown + u->memo_cap, 0, (cap - u->memo_cap) * sizeof *grown);
        u->memo = grown;
        u->memo_cap = cap;
    }
    if (!u->memo[index]) u->memo_count++;
    u->memo[index] = u->stack[u->sp - 1];
    return 0;
}

static int memo_get(unpickler *u, uint64_t index) {
    if (index >= u->memo_cap || !u->memo[index])
        return fail(u, "memo index %" PRIu64 " was never stored", index);
    return push(u, u->memo[index]);
}

static int push_global(unpickler *u, const unsigned char *module, size_t module_len,
                       const unsigned char *name, size_t name_len) {
    for (int i = 0; i < GLOBAL_COUNT; i++)
        if (strlen(GLOBALS[i].module) == module_len && strlen(GLOBALS[i].name) == name_len &&
            !memcmp(GLOBALS[i].module, module, module_len) &&
            !memcmp(GLOBALS[i].name, name, name_len)) {
            value *v = new_value(u->r, V_GLOBAL);
            if (v) v->u.global = i;
            return push(u, v);
        }
    static const char lightning[] = "pytorch_lightning";
    size_t lightning_len = sizeof lightning - 1;
    if (module_len >= lightning_len && !memcmp(module, lightning, lightning_len) &&
        (module_len == lightning_len || module[lightning_len] == '.')) {
        value *v = new_value(u->r, V_GLOBAL);
        if (v) v->u.global = GLOBAL_COUNT - 1;
        return push(u, v);
    }
    if (module_len == 5 && !memcmp(module, "torch", 5))
        for (int t = 0; t < TORCH_DTYPE_COUNT; t++)
            if (strlen(TORCH_DTYPES[t].storage) == name_len &&
                !memcmp(TORCH_DTYPES[t].storage, name, name_len)) {
                value *v = new_value(u->r, V_GLOBAL); // a storage class: -1 - its dtype
                if (v) v->u.global = -1 - t;
                return push(u, v);
            }
    return fail(u, "refuses pickle global %.*s.%.*s: only tensors are read", (int)module_len,
                (const char *)module, (int)name_len, (const char *)name);
}

// GLOBAL: "module\nname\n".
static int op_global(unpickler *u) {
    const unsigned char *lines[2];
    size_t lens[2];
    for (int i = 0; i < 2; i++) {
        const unsigned char *nl = memchr(u->p, '\n', (size_t)(u->end - u->p));
        if (!nl || nl - u->p > 256) return fail(u, "GLOBAL without its two lines");
        lines[i] = u->p;
        lens[i] = (size_t)(nl - u->p);
        u->p = nl + 1;
    }
    return push_global(u, lines[0], lens[0], lines[1], lens[1]);
}

static int op_stack_global(unpickler *u) {
    if (need(u, 2) != 0) return -1;
    value *name = pop(u), *module = pop(u);
    if (module->kind != V_STR || name->kind != V_STR || module->u.s.n > 256 || name->u.s.n > 256)
        return fail(u, "STACK_GLOBAL needs two short strings");
    return push_global(u, module->u.s.p, module->u.s.n, name->u.s.p, name->u.s.n);
}

static bool is_storage_class(const value *v) { return v->kind == V_GLOBAL && v->u.global < 0; }

static const char *global_name(const value *v, char *buf, size_t size) {
    if (v->kind != V_GLOBAL) return VALUE_KIND_NAMES[v->kind];
    if (v->u.global < 0)
        snprintf(buf, size, "torch.%s", TORCH_DTYPES[-1 - v->u.global].storage);
    else
        snprintf(buf, size, "%s.%s", GLOBALS[v->u.global].module, GLOBALS[v->u.global].name);
    return buf;
}

// A non-negative int, or -1.
static int64_t whole(const value *v) { return v->kind == V_INT && v->u.i >= 0 ? v->u.i : -1; }

// BINPERSID: ('storage', storage class, key, location, numel[, view metadata]) names a storage.
// Legacy files may give (view key, element offset, element count) of a view of the storage.
static int op_persistent_id(unpickler *u) {
    if (need(u, 1) != 0) return -1;
    const value *pid = pop(u);
    if (!u->storages_allowed) return fail(u, "a persistent id outside the object's pickle");
    if (pid->kind != V_TUPLE || pid->u.seq.n < 5 || pid->u.seq.n > 6 ||
        !is_str(pid->u.seq.items[0], "storage"))
        return fail(u, "a persistent id that is not ('storage', type, key, location, numel)");
    value *const *f = pid->u.seq.items;
    if (!is_storage_class(f[1]) || f[2]->kind != V_STR || whole(f[4]) < 0)
        return fail(u, "a storage's persistent id has a bad type, key or size");
    if (memchr(f[2]->u.s.p, 0, f[2]->u.s.n) || f[2]->u.s.n > 256)
        return fail(u, "a storage key with a NUL byte or over 256 bytes");
    torch_dtype dtype = (torch_dtype)(-1 - f[1]->u.global);
    int root = add_root(u->r, f[2]->u.s.p, f[2]->u.s.n, dtype);
    if (root < 0) return -1;
    if (u->r->roots[root].dtype != dtype)
        return fail(u, "storage '%.*s' is used as both %s and %s", (int)f[2]->u.s.n,
                    (const char *)f[2]->u.s.p, TORCH_DTYPES[u->r->roots[root].dtype].storage,
                    TORCH_DTYPES[dtype].storage);
    value *v = new_value(u->r, V_STORAGE);
    if (!v) return -1;
    v->u.storage.root = root;
    v->u.storage.dtype = dtype;
    v->u.storage.offset = 0;
    v->u.storage.limit = UINT64_MAX;
    if (pid->u.seq.n == 6 && f[5]->kind != V_NONE) {
        const value *view = f[5];
        int64_t offset =
            view->kind == V_TUPLE && view->u.seq.n == 3 ? whole(view->u.seq.items[1]) : -1;
        int64_t count = offset >= 0 ? whole(view->u.seq.items[2]) : -1;
        size_t size = TORCH_DTYPES[dtype].size;
        if (count < 0 || (uint64_t)offset > UINT64_MAX / 16 / size ||
            (uint64_t)count > UINT64_MAX / 16 / size)
            return fail(u, "a storage view's metadata is not (key, offset, size)");
        v->u.storage.offset = (uint64_t)offset * size;
        v->u.storage.limit = (uint64_t)count * size;
    }
    return push(u, v);
}

// A tuple (or list) of at most TORCH_MAX_DIMS non-negative ints into out; its length or -1.
static int int_tuple(const value *v, int64_t *out) {
    if ((v->kind != V_TUPLE && v->kind != V_LIST) || v->u.seq.n > TORCH_MAX_DIMS) return -1;
    for (size_t i = 0; i < v->u.seq.n; i++)
        if ((out[i] = whole(v->u.seq.items[i])) < 0) return -1;
    return (int)v->u.seq.n;
}

static value *rebuild_tensor(unpickler *u, const value *args, size_t min_args, size_t max_args) {
    if (args->u.seq.n < min_args || args->u.seq.n > max_args) {
        fail(u, "_rebuild_tensor with %zu arguments", args->u.seq.n);
        return NULL;
    }
    value *const *a = args->u.seq.items;
    int64_t size[TORCH_MAX_DIMS], stride[TORCH_MAX_DIMS];
    int ndim = int_tuple(a[2], size);
    if (a[0]->kind != V_STORAGE || whole(a[1]) < 0 || ndim < 0 || int_tuple(a[3], stride) != ndim) {
        fail(u, "a tensor that is not (storage, offset >= 0, size, stride) with sizes and "
                "strides of one length, each >= 0");
        return NULL;
    }
    value *t = new_value(u->r, V_TENSOR);
    if (!t) return NULL;
    t->u.tensor.size = malloc(2 * (size_t)(ndim ? ndim : 1) * sizeof(int64_t));
    if (!t->u.tensor.size) return out_of_memory(u->r), NULL;
    t->u.tensor.stride = t->u.tensor.size + ndim;
    memcpy(t->u.tensor.size, size, (size_t)ndim * sizeof(int64_t));
    memcpy(t->u.tensor.stride, stride, (size_t)ndim * sizeof(int64_t));
    t->u.tensor.ndim = ndim;
    t->u.tensor.offset = a[1]->u.i;
    t->u.tensor.root = a[0]->u.storage.root;
    t->u.tensor.dtype = a[0]->u.storage.dtype;
    t->u.tensor.byte_offset = a[0]->u.storage.offset;
    t->u.tensor.limit = a[0]->u.storage.limit;
    return t;
}

// What calling allowed global `callable` with the tuple `args` gives; nothing outside this
// table is ever called.
static value *call(unpickler *u, const value *callable, const value *args, int depth) {
    char name[160];
    if (callable->kind != V_GLOBAL || callable->u.global < 0 || args->kind != V_TUPLE) {
        fail(u, "calls %s with a %s: only the allowed globals can be called",
             global_name(callable, name, sizeof name), VALUE_KIND_NAMES[args->kind]);
        return NULL;
    }
    size_t n = args->u.seq.n;
    value *const *a = args->u.seq.items;
    switch (GLOBALS[callable->u.global].kind) {
    case G_ORDERED_DICT:
        if (n == 0) return new_value(u->r, V_DICT);
        break;
    case G_REBUILD_TENSOR: return rebuild_tensor(u, args, 4, 4);
    case G_REBUILD_TENSOR_V2: return rebuild_tensor(u, args, 6, 7);
    case G_REBUILD_PARAMETER:
        if ((n == 3 || n == 4) && a[0]->kind == V_TENSOR) return a[0];
        break;
    case G_REBUILD_FROM_TYPE: // (func, type, args, state): a tensor subclass; we keep the tensor
        if (n == 4 && a[2]->kind == V_TUPLE && depth == 0) return call(u, a[0], a[2], depth + 1);
        break;
    case G_SET: {
        value *set = new_value(u->r, V_SET);
        if (!set || n == 0) return set;
        if (n == 1 && (a[0]->kind == V_LIST || a[0]->kind == V_TUPLE)) {
            for (size_t i = 0; i < a[0]->u.seq.n; i++)
                if (seq_push(u->r, set, a[0]->u.seq.items[i]) != 0) return NULL;
            return set;
        }
        break;
    }
    case G_INERT: return new_value(u->r, V_OPAQUE);
    }
    fail(u, "%s called with %zu unexpected arguments", global_name(callable, name, sizeof name), n);
    return NULL;
}

static int op_reduce(unpickler *u) {
    if (need(u, 2) != 0) return -1;
    value *args = pop(u), *callable = pop(u);
    return push(u, call(u, callable, args, 0));
}

// NEWOBJ: cls.__new__(cls, *args), for the containers and inert classes only.
static int op_newobj(unpickler *u) {
    if (need(u, 2) != 0) return -1;
    value *args = pop(u), *cls = pop(u);
    char name[160];
    if (cls->kind == V_GLOBAL && cls->u.global >= 0 && args->kind == V_TUPLE) {
        global_kind kind = GLOBALS[cls->u.global].kind;
        if (kind == G_ORDERED_DICT) return push(u, new_value(u->r, V_DICT));
        if (kind == G_SET) return push(u, new_value(u->r, V_SET));
        if (kind == G_INERT) return push(u, new_value(u->r, V_OPAQUE));
    }
    return fail(u, "NEWOBJ of %s: only containers are made", global_name(cls, name, sizeof name));
}

// BININT (4 bytes, signed), BININT1, BININT2 (unsigned).
static int op_binint(unpickler *u, int width) {
    const unsigned char *arg = NULL;
    if (take(u, (size_t)width, &arg) != 0) return -1;
    uint64_t v = read_le(arg, width);
    return push_int(u, width == 4 ? (int64_t)(int32_t)(uint32_t)v : (int64_t)v);
}

// BINFLOAT: a big-endian double.
static int op_binfloat(unpickler *u) {
    const unsigned char *arg = NULL;
    if (take(u, 8, &arg) != 0) return -1;
    uint64_t bits = 0;
    for (int i = 0; i < 8; i++)
        bits = (bits << 8) | arg[i];
    value *v = new_value(u->r, V_FLOAT);
    if (v) memcpy(&v->u.f, &bits, sizeof bits);
    return push(u, v);
}

// BINPUT / LONG_BINPUT (put) and BINGET / LONG_BINGET, with a 1- or 4-byte index.
static int op_memo(unpickler *u, int width, bool put) {
    const unsigned char *arg = NULL;
    if (take(u, (size_t)width, &arg) != 0) return -1;
    uint64_t index = read_le(arg, width);
    return put ? memo_put(u, index) : memo_get(u, index);
}

static int op_mark(unpickler *u) {
    if (u->mark_count == u->mark_cap) {
        size_t cap = u->mark_cap ? 2 * u->mark_cap : 16;
        size_t *grown = realloc(u->marks, cap * sizeof *grown);
        if (!grown) return out_of_memory(u->r);
        u->marks = grown;
        u->mark_cap = cap;
    }
    u->marks[u->mark_count++] = u->sp;
    return 0;
}

static int op_pop_mark(unpickler *u) {
    size_t from = 0;
    if (pop_mark(u, &from) != 0) return -1;
    u->sp = from;
    return 0;
}

static int op_proto(unpickler *u) {
    const unsigned char *arg = NULL;
    if (take(u, 1, &arg) != 0) return -1;
    if (arg[0] < 2 || arg[0] > 5) return fail(u, "pickle protocol %d (expected 2 to 5)", arg[0]);
    return 0;
}

// POP, DUP, BUILD (an object's state is not kept: nothing but tensors is used).
static int op_stack(unpickler *u, unsigned char op) {
    if (need(u, op == 'b' ? 2 : 1) != 0) return -1;
    if (op == '2') return push(u, u->stack[u->sp - 1]);
    u->sp--;
    return 0;
}

static int op_constant(unpickler *u, unsigned char op) {
    static const value_kind kinds[256] = {
        ['N'] = V_NONE, [0x88] = V_BOOL, [0x89] = V_BOOL, ['}'] = V_DICT,
        [']'] = V_LIST, [')'] = V_TUPLE, [0x8f] = V_SET};
    value *v = new_value(u->r, kinds[op]);
    if (v && kinds[op] == V_BOOL) v->u.b = op == 0x88;
    return push(u, v);
}

// Runs one opcode other than STOP.
static int run_opcode(unpickler *u, unsigned char op) {
    const unsigned char *arg = NULL;
    switch (op) {
    case 0x80: return op_proto(u);                        // PROTO
    case 0x95: return take(u, 8, &arg);                   // FRAME: a length hint only
    case '(': return op_mark(u);                          // MARK
    case '1': return op_pop_mark(u);                      // POP_MARK
    case '0':                                             // POP
    case '2':                                             // DUP
    case 'b': return op_stack(u, op);                     // BUILD
    case 'N':                                             // NONE
    case 0x88:                                            // NEWTRUE
    case 0x89:                                            // NEWFALSE
    case '}':                                             // EMPTY_DICT
    case ']':                                             // EMPTY_LIST
    case ')':                                             // EMPTY_TUPLE
    case 0x8f: return op_constant(u, op);                 // EMPTY_SET
    case 'J': return op_binint(u, 4);                     // BININT
    case 'K': return op_binint(u, 1);                     // BININT1
    case 'M': return op_binint(u, 2);                     // BININT2
    case 0x8a: return push_long(u, 1);                    // LONG1
    case 0x8b: return push_long(u, 4);                    // LONG4
    case 'G': return op_binfloat(u);                      // BINFLOAT
    case 'X': return push_counted(u, V_STR, 4, false);    // BINUNICODE
    case 0x8c: return push_counted(u, V_STR, 1, false);   // SHORT_BINUNICODE
    case 0x8d: return push_counted(u, V_STR, 8, false);   // BINUNICODE8
    case 'T': return push_counted(u, V_STR, 4, true);     // BINSTRING
    case 'U': return push_counted(u, V_STR, 1, false);    // SHORT_BINSTRING
    case 'C': return push_counted(u, V_BYTES, 1, false);  // SHORT_BINBYTES
    case 'B': return push_counted(u, V_BYTES, 4, false);  // BINBYTES
    case 0x8e: return push_counted(u, V_BYTES, 8, false); // BINBYTES8
    case 't': return collect_marked(u, V_TUPLE);          // TUPLE
    case 0x85: return tuple_of(u, 1);                     // TUPLE1
    case 0x86: return tuple_of(u, 2);                     // TUPLE2
    case 0x87: return tuple_of(u, 3);                     // TUPLE3
    case 'l': return collect_marked(u, V_LIST);           // LIST
    case 'd': return collect_marked(u, V_DICT);           // DICT
    case 0x91: return collect_marked(u, V_SET);           // FROZENSET
    case 'a': return add_top(u, V_LIST, 1);               // APPEND
    case 'e': return add_marked(u, V_LIST);               // APPENDS
    case 's': return add_top(u, V_DICT, 2);               // SETITEM
    case 'u': return add_marked(u, V_DICT);               // SETITEMS
    case 0x90: return add_marked(u, V_SET);               // ADDITEMS
    case 'q': return op_memo(u, 1, true);                 // BINPUT
    case 'r': return op_memo(u, 4, true);                 // LONG_BINPUT
    case 'h': return op_memo(u, 1, false);                // BINGET
    case 'j': return op_memo(u, 4, false);                // LONG_BINGET
    case 0x94: return memo_put(u, u->memo_count);         // MEMOIZE
    case 'c': return op_global(u);                        // GLOBAL
    case 0x93: return op_stack_global(u);                 // STACK_GLOBAL
    case 'R': return op_reduce(u);                        // REDUCE
    case 0x81: return op_newobj(u);                       // NEWOBJ
    case 'Q': return op_persistent_id(u);                 // BINPERSID
    default:
        // INST, OBJ, EXT*, PERSID and the text opcodes import or are never written by torch.save
        return fail(u, "pickle opcode 0x%02x is not one torch.save writes (only tensors are read)",
                    op);
    }
}

// One pickle from buf[*pos, len); *pos moves past its STOP. NULL on error.
static value *unpickle(unpickler *u, const unsigned char *buf, size_t len, size_t *pos) {
    u->start = buf;
    u->p = buf + *pos;
    u->end = buf + len;
    u->sp = u->mark_count = u->memo_count = 0;
    if (u->memo) memset(u->memo, 0, u->memo_cap * sizeof *u->memo); // memos are per pickle
    for (;;) {
        u->op_at = u->p;
        if (u->p >= u->end) {
            fail(u, "the pickle ends before its STOP opcode (file truncated?)");
            return NULL;
        }
        unsigned char op = *u->p++;
        if (op == '.') { // STOP
            if (need(u, 1) != 0) return NULL;
            *pos = (size_t)(u->p - buf);
            return pop(u);
        }
        if (run_opcode(u, op) != 0) return NULL;
    }
}

static void unpickler_free(unpickler *u) {
    free(u->stack);
    free(u->marks);
    free(u->memo);
}

// ---- choosing and copying the tensors ---------------------------------------------------------

typedef struct chosen {
    const value *name; // a V_STR
    const value *tensor;
    int64_t numel;
    uint64_t begin; // in the output buffer
} chosen;

// The state dict's tensors, in its order; *count may be 0.
static int choose_tensors(torch_reader *r, const value *top, chosen **out, int *count) {
    *out = NULL;
    *count = 0;
    if (top->kind != V_DICT)
        return LDMC_ERR(r->err, "%s: holds a %s, not a dict of tensors (a state_dict)", r->path,
                        VALUE_KIND_NAMES[top->kind]);
    const value *sd = dict_get(top, "state_dict");
    if (!sd || sd->kind != V_DICT) sd = top;
    size_t n = sd->u.seq.n / 2;
    if (n > INT32_MAX / 2) return LDMC_ERR(r->err, "%s: %zu entries in one dict", r->path, n);
    chosen *list = calloc(n ? n : 1, sizeof *list);
    if (!list) return out_of_memory(r);
    for (size_t i = 0; i < n; i++) {
        const value *key = sd->u.seq.items[2 * i], *v = sd->u.seq.items[2 * i + 1];
        if (key->kind != V_STR || v->kind != V_TENSOR) continue;
        if (memchr(key->u.s.p, 0, key->u.s.n)) {
            free(list);
            return LDMC_ERR(r->err, "%s: a tensor name with a NUL byte", r->path);
        }
        list[(*count)++] = (chosen){.name = key, .tensor = v};
    }
    *out = list;
    return 0;
}

static int compare_names(const void *a, const void *b) {
    const value *x = (*(const chosen *const *)a)->name, *y = (*(const chosen *const *)b)->name;
    int c = memcmp(x->u.s.p, y->u.s.p, x->u.s.n < y->u.s.n ? x->u.s.n : y->u.s.n);
    return c ? c : (x->u.s.n > y->u.s.n) - (x->u.s.n < y->u.s.n);
}

// A name given twice can only come from a crafted pickle; like safetensors, refuse it.
static int check_unique(torch_reader *r, chosen *list, int count) {
    if (count < 2) return 0;
    const chosen **sorted = malloc((size_t)count * sizeof *sorted);
    if (!sorted) return out_of_memory(r);
    for (int i = 0; i < count; i++)
        sorted[i] = &list[i];
    qsort(sorted, (size_t)count, sizeof *sorted, compare_names);
    int rc = 0;
    for (int i = 1; i < count && rc == 0; i++)
        if (compare_names(&sorted[i - 1], &sorted[i]) == 0)
            rc = LDMC_ERR(r->err, "%s: tensor '%.*s' appears twice", r->path,
                          (int)sorted[i]->name->u.s.n, (const char *)sorted[i]->name->u.s.p);
    free(sorted);
    return rc;
}

// Checks the view against its storage (every element it reaches lies inside) and the rank and
// size ldmc takes; sets c->numel.
static int check_view(torch_reader *r, chosen *c) {
    const value *t = c->tensor;
    const torch_root *root = &r->roots[t->u.tensor.root];
    const char *name = (const char *)c->name->u.s.p;
    int name_len = (int)c->name->u.s.n;
    if (t->u.tensor.ndim > LDMC_MAX_DIMS)
        return LDMC_ERR(r->err, "%s: tensor '%.*s' has %d dimensions (ldmc takes up to %d)",
                        r->path, name_len, name, t->u.tensor.ndim, LDMC_MAX_DIMS);
    int64_t numel = 1, last = t->u.tensor.offset; // last: the highest element index reached
    for (int d = 0; d < t->u.tensor.ndim; d++) {
        int64_t size = t->u.tensor.size[d], stride = t->u.tensor.stride[d], reach;
        if (size == 0) numel = 0;
        if (numel && size > INT64_MAX / numel)
            return LDMC_ERR(r->err, "%s: tensor '%.*s': its size overflows", r->path, name_len,
                            name);
        numel *= size;
        if (size > 1 && (__builtin_mul_overflow(size - 1, stride, &reach) ||
                         __builtin_add_overflow(last, reach, &last)))
            return LDMC_ERR(r->err, "%s: tensor '%.*s': its strides overflow", r->path, name_len,
                            name);
    }
    c->numel = numel;
    if (numel == 0) return 0; // reaches no element
    size_t elem = TORCH_DTYPES[t->u.tensor.dtype].size;
    uint64_t have =
        root->nbytes > t->u.tensor.byte_offset ? root->nbytes - t->u.tensor.byte_offset : 0;
    if (have > t->u.tensor.limit) have = t->u.tensor.limit;
    // last < 2^63 and elem <= 8: (last + 1) * elem cannot wrap
    uint64_t need_bytes = ((uint64_t)last + 1) * elem;
    if (need_bytes > have)
        return LDMC_ERR(r->err,
                        "%s: tensor '%.*s' reaches byte %" PRIu64 " of storage '%.*s', which "
                        "holds %" PRIu64 " (file truncated or damaged?)",
                        r->path, name_len, name, need_bytes, (int)root->key_len,
                        (const char *)root->key, have);
    return 0;
}

// n elements of `dtype`, `stride` bytes apart, to dst as the dtype ldmc gives them.
static void convert_run(unsigned char *dst, const unsigned char *src, int64_t n, int64_t stride,
                        torch_dtype dtype) {
    size_t in = TORCH_DTYPES[dtype].size, out = ldmc_dtype_size(TORCH_DTYPES[dtype].out);
    if (in == out && (size_t)stride == in) {
        memcpy(dst, src, (size_t)n * in);
        return;
    }
    for (int64_t i = 0; i < n; i++, src += stride, dst += out) {
        switch (dtype) {
        case T_DOUBLE: {
            double d;
            memcpy(&d, src, sizeof d);
            float f = (float)d;
            memcpy(dst, &f, sizeof f);
            break;
        }
        case T_SHORT: {
            int16_t s;
            memcpy(&s, src, sizeof s);
            int32_t v = s;
            memcpy(dst, &v, sizeof v);
            break;
        }
        case T_CHAR:
        case T_BYTE:
        case T_BOOL: {
            int32_t v = dtype == T_CHAR   ? (int32_t)(int8_t)src[0]
                        : dtype == T_BYTE ? (int32_t)src[0]
                                          : (int32_t)(src[0] != 0);
            memcpy(dst, &v, sizeof v);
            break;
        }
        default: memcpy(dst, src, in); break;
        }
    }
}

// The view, row-major, from the storage's bytes to dst.
static void copy_view(unsigned char *dst, const unsigned char *storage, const value *t,
                      int64_t numel) {
    int nd = t->u.tensor.ndim;
    const int64_t *size = t->u.tensor.size, *stride = t->u.tensor.stride;
    torch_dtype dtype = t->u.tensor.dtype;
    size_t elem = TORCH_DTYPES[dtype].size, out = ldmc_dtype_size(TORCH_DTYPES[dtype].out);
    int64_t inner = nd ? size[nd - 1] : 1, inner_stride = nd ? stride[nd - 1] : 1;
    int64_t index[LDMC_MAX_DIMS] = {0};
    const unsigned char *base = storage + t->u.tensor.byte_offset;
    for (int64_t done = 0; done < numel; done += inner) {
        int64_t at = t->u.tensor.offset;
        for (int d = 0; d < nd - 1; d++)
            at += index[d] * stride[d];
        convert_run(dst, base + (size_t)at * elem, inner, inner_stride * (int64_t)elem, dtype);
        dst += (size_t)inner * out;
        for (int d = nd - 2; d >= 0 && ++index[d] == size[d]; d--)
            index[d] = 0;
    }
}

// Fills st from the chosen tensors: names, shapes, offsets in one owned buffer (each tensor
// 16-byte aligned), and the data through `load` (one storage in memory at a time).
typedef int (*load_storage_fn)(torch_reader *r, torch_root *root, const unsigned char **bytes,
                               void **owned);

static int compare_roots(const void *a, const void *b) {
    const chosen *x = *(const chosen *const *)a, *y = *(const chosen *const *)b;
    return (x->tensor->u.tensor.root > y->tensor->u.tensor.root) -
           (x->tensor->u.tensor.root < y->tensor->u.tensor.root);
}

static int copy_tensors(torch_reader *r, chosen *list, int count, load_storage_fn load,
                        ldmc_safetensors *st) {
    uint64_t total = 0;
    for (int i = 0; i < count; i++) {
        const value *t = list[i].tensor;
        size_t out = ldmc_dtype_size(TORCH_DTYPES[t->u.tensor.dtype].out);
        // stride-0 (expanded) views make many elements of a few bytes: bound what is allocated
        if ((uint64_t)list[i].numel > TORCH_MAX_BYTES / out ||
            total + (uint64_t)list[i].numel * out > TORCH_MAX_BYTES)
            return LDMC_ERR(r->err, "%s: the tensors need more than %" PRIu64 " GiB", r->path,
                            TORCH_MAX_BYTES >> 30);
        list[i].begin = total;
        total = (total + (uint64_t)list[i].numel * out + 15) & ~(uint64_t)15;
    }
    st->map = malloc(total ? (size_t)total : 1);
    if (st->map) st->owned = true; // freed, not unmapped, by ldmc_safetensors_close
    st->tensors = calloc((size_t)(count ? count : 1), sizeof *st->tensors);
    const chosen **by_root = malloc((size_t)(count ? count : 1) * sizeof *by_root);
    if (!st->map || !st->tensors || !by_root) return free(by_root), out_of_memory(r);
    st->map_size = (size_t)total;
    st->data = st->map;
    st->data_size = total;
    for (int i = 0; i < count; i++) {
        const value *t = list[i].tensor;
        ldmc_st_tensor *o = &st->tensors[i];
        o->name = strndup((const char *)list[i].name->u.s.p, list[i].name->u.s.n);
        if (!o->name) return free(by_root), out_of_memory(r);
        st->count++;
        o->dtype = TORCH_DTYPES[t->u.tensor.dtype].out;
        o->ndim = t->u.tensor.ndim;
        memcpy(o->shape, t->u.tensor.size, (size_t)o->ndim * sizeof(int64_t));
        o->begin = list[i].begin;
        o->end = list[i].begin + (uint64_t)list[i].numel * ldmc_dtype_size(o->dtype);
        o->data = st->data + o->begin;
        by_root[i] = &list[i];
    }
    qsort(by_root, (size_t)count, sizeof *by_root, compare_roots);
    int rc = 0;
    for (int i = 0; i < count && rc == 0;) {
        torch_root *root = &r->roots[by_root[i]->tensor->u.tensor.root];
        const unsigned char *bytes = NULL;
        void *owned = NULL;
        int j = i;
        while (j < count && &r->roots[by_root[j]->tensor->u.tensor.root] == root)
            j++;
        bool any = false; // a storage only empty tensors use need not be read
        for (int k = i; k < j; k++)
            any |= by_root[k]->numel > 0;
        if (any) rc = load(r, root, &bytes, &owned);
        for (int k = i; k < j && rc == 0 && any; k++)
            copy_view((unsigned char *)st->map + by_root[k]->begin, bytes, by_root[k]->tensor,
                      by_root[k]->numel);
        free(owned);
        i = j;
    }
    free(by_root);
    return rc;
}

// From the object to st: which tensors, checked against their storages (whose sizes `size_of`
// finds), then copied.
typedef int (*size_storage_fn)(torch_reader *r, torch_root *root);

static int build(torch_reader *r, const value *top, size_storage_fn size_of, load_storage_fn load,
                 ldmc_safetensors *st) {
    chosen *list;
    int count;
    if (choose_tensors(r, top, &list, &count) != 0) return -1;
    int rc = check_unique(r, list, count);
    if (rc == 0 && count == 0)
        rc = LDMC_ERR(r->err,
                      "%s: no tensors in it (expected a state_dict, or a dict with one under "
                      "'state_dict')",
                      r->path);
    for (int i = 0; i < count && rc == 0; i++) {
        torch_root *root = &r->roots[list[i].tensor->u.tensor.root];
        if (!root->sized) rc = size_of(r, root);
        if (rc == 0) rc = check_view(r, &list[i]);
    }
    if (rc == 0) rc = copy_tensors(r, list, count, load, st);
    free(list);
    return rc;
}

// ---- the zip format ---------------------------------------------------------------------------

static int zip_fail(torch_reader *r, const char *what, zip_error_t *ze) {
    int rc = LDMC_ERR(r->err, "%s: %s: %s", r->path, what, zip_error_strerror(ze));
    return rc;
}

// A member's whole contents (size checked against the archive first).
static int read_member(torch_reader *r, zip_int64_t index, unsigned char **out, uint64_t *len) {
    zip_stat_t zs;
    const char *name = zip_get_name(r->zip, (zip_uint64_t)index, 0);
    if (zip_stat_index(r->zip, (zip_uint64_t)index, 0, &zs) != 0 || !name)
        return zip_fail(r, "cannot read the archive's directory", zip_get_error(r->zip));
    if (!(zs.valid & ZIP_STAT_SIZE) || !(zs.valid & ZIP_STAT_COMP_SIZE) ||
        !(zs.valid & ZIP_STAT_COMP_METHOD))
        return LDMC_ERR(r->err, "%s: %s: the archive does not give its size", r->path, name);
    // deflate expands at most 1032:1, so a larger claimed size is a damaged or hostile archive
    bool stored = zs.comp_method == ZIP_CM_STORE, deflated = zs.comp_method == ZIP_CM_DEFLATE;
    if ((!stored && !deflated) || (stored && zs.size != zs.comp_size) ||
        (deflated && zs.size / 1032 > zs.comp_size + 1) || zs.size > SIZE_MAX / 2)
        return LDMC_ERR(r->err,
                        "%s: %s: compression method %d, %" PRIu64 " bytes from %" PRIu64
                        " (expected stored or deflated, and a possible size)",
                        r->path, name, (int)zs.comp_method, (uint64_t)zs.size,
                        (uint64_t)zs.comp_size);
    unsigned char *buf = malloc(zs.size ? (size_t)zs.size : 1);
    if (!buf) return out_of_memory(r);
    zip_file_t *zf = zip_fopen_index(r->zip, (zip_uint64_t)index, 0);
    if (!zf) {
        free(buf);
        return zip_fail(r, name, zip_get_error(r->zip));
    }
    uint64_t got = 0;
    zip_int64_t k = 1;
    while (got < zs.size && (k = zip_fread(zf, buf + got, zs.size - got)) > 0)
        got += (uint64_t)k;
    unsigned char extra;
    // reading past the end is what makes libzip check the CRC
    if (k >= 0 && got == zs.size) k = zip_fread(zf, &extra, 1);
    if (k != 0 || got != zs.size) {
        int rc = k < 0 ? zip_fail(r, name, zip_file_get_error(zf))
                       : LDMC_ERR(r->err, "%s: %s: %" PRIu64 " bytes instead of %" PRIu64, r->path,
                                  name, got, (uint64_t)zs.size);
        zip_fclose(zf);
        free(buf);
        return rc;
    }
    zip_fclose(zf);
    *out = buf;
    *len = got;
    return 0;
}

// <prefix>/<folder><key>, or -1.
static zip_int64_t locate_member(torch_reader *r, const char *folder, const unsigned char *key,
                                 size_t key_len) {
    char name[800];
    snprintf(name, sizeof name, "%s/%s%.*s", r->prefix, folder, (int)key_len, (const char *)key);
    return zip_name_locate(r->zip, name, 0);
}

static int zip_size_storage(torch_reader *r, torch_root *root) {
    root->zip_index = locate_member(r, "data/", root->key, root->key_len);
    zip_stat_t zs;
    if (root->zip_index < 0 || zip_stat_index(r->zip, (zip_uint64_t)root->zip_index, 0, &zs) != 0 ||
        !(zs.valid & ZIP_STAT_SIZE))
        return LDMC_ERR(r->err, "%s: storage '%.*s' is missing: no %s/data/%.*s in the archive",
                        r->path, (int)root->key_len, (const char *)root->key, r->prefix,
                        (int)root->key_len, (const char *)root->key);
    root->nbytes = zs.size;
    root->sized = true;
    return 0;
}

static int zip_load_storage(torch_reader *r, torch_root *root, const unsigned char **bytes,
                            void **owned) {
    unsigned char *buf = NULL;
    uint64_t len = 0;
    if (read_member(r, root->zip_index, &buf, &len) != 0) return -1;
    if (len < root->nbytes) { // what check_view relied on
        free(buf);
        return LDMC_ERR(r->err, "%s: storage '%.*s' is shorter than the archive says", r->path,
                        (int)root->key_len, (const char *)root->key);
    }
    *bytes = buf;
    *owned = buf;
    return 0;
}

// The archive's top folder: the one holding data.pkl.
static int find_prefix(torch_reader *r, zip_int64_t *pickle_index) {
    zip_int64_t n = zip_get_num_entries(r->zip, 0);
    for (zip_int64_t i = 0; i < n; i++) {
        const char *name = zip_get_name(r->zip, (zip_uint64_t)i, 0);
        const char *slash = name ? strchr(name, '/') : NULL;
        if (!slash || slash == name || strcmp(slash, "/data.pkl") != 0) continue;
        r->prefix = strndup(name, (size_t)(slash - name));
        if (!r->prefix) return out_of_memory(r);
        *pickle_index = i;
        return 0;
    }
    return LDMC_ERR(r->err,
                    "%s: a zip archive without <folder>/data.pkl, so not a file torch.save wrote",
                    r->path);
}

static int check_byteorder(torch_reader *r) {
    zip_int64_t index = locate_member(r, "byteorder", (const unsigned char *)"", 0);
    if (index < 0) return 0; // before PyTorch 2.1: always little-endian
    unsigned char *text = NULL;
    uint64_t len = 0;
    if (read_member(r, index, &text, &len) != 0) return -1;
    bool little = len == 6 && !memcmp(text, "little", 6);
    int rc =
        little ? 0
               : LDMC_ERR(r->err, "%s: %s/byteorder says '%.*s': only little-endian files are read",
                          r->path, r->prefix, (int)(len < 16 ? len : 16), (const char *)text);
    free(text);
    return rc;
}

static int open_zip(torch_reader *r, ldmc_safetensors *st) {
    int code = 0;
    r->zip = zip_open(r->path, ZIP_RDONLY, &code);
    if (!r->zip) {
        zip_error_t ze;
        zip_error_init_with_code(&ze, code);
        int rc = zip_fail(r, "not a readable zip archive (file truncated?)", &ze);
        zip_error_fini(&ze);
        return rc;
    }
    zip_int64_t pickle_index = -1;
    if (find_prefix(r, &pickle_index) != 0 || check_byteorder(r) != 0) return -1;
    unsigned char *pickle = NULL;
    uint64_t len = 0;
    if (read_member(r, pickle_index, &pickle, &len) != 0) return -1;
    char what[300];
    snprintf(what, sizeof what, "%s/data.pkl", r->prefix);
    unpickler u = {.r = r, .what = what, .storages_allowed = true};
    size_t pos = 0;
    const value *top = unpickle(&u, pickle, (size_t)len, &pos);
    unpickler_free(&u);
    int rc = top ? build(r, top, zip_size_storage, zip_load_storage, st) : -1;
    free(pickle); // after build: names and keys point into it
    return rc;
}

// ---- the legacy format ------------------------------------------------------------------------

// The LONG1 magic number 0x1950a86a20f9469cfc6c, little-endian.
static const unsigned char LEGACY_MAGIC[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9,
                                               0x20, 0x6a, 0xa8, 0x50, 0x19};

static int legacy_size_storage(torch_reader *r, torch_root *root) {
    return LDMC_ERR(r->err, "%s: storage '%.*s' is used but not in the file's list of storages",
                    r->path, (int)root->key_len, (const char *)root->key);
}

static int legacy_load_storage(torch_reader *r, torch_root *root, const unsigned char **bytes,
                               void **owned) {
    *bytes = root->data;
    *owned = NULL;
    return 0;
}

// After the object: the pickled list of keys, then per key an 8-byte element count and data.
static int read_legacy_storages(torch_reader *r, unpickler *u, size_t pos) {
    u->what = "the pickle of storage keys";
    const value *keys = unpickle(u, r->map, r->map_size, &pos);
    if (!keys) return -1;
    if (keys->kind != V_LIST)
        return LDMC_ERR(r->err, "%s: the storage keys are a %s, expected a list", r->path,
                        VALUE_KIND_NAMES[keys->kind]);
    for (size_t i = 0; i < keys->u.seq.n; i++) {
        const value *key = keys->u.seq.items[i];
        int index = key->kind == V_STR ? find_root(r, key->u.s.p, key->u.s.n) : -1;
        if (index < 0)
            return LDMC_ERR(r->err, "%s: storage key %zu is not one the object uses", r->path, i);
        torch_root *root = &r->roots[index];
        if (root->sized)
            return LDMC_ERR(r->err, "%s: storage '%.*s' is listed twice", r->path,
                            (int)root->key_len, (const char *)root->key);
        uint64_t left = r->map_size - pos, numel;
        size_t elem = TORCH_DTYPES[root->dtype].size;
        if (left < 8 || (numel = read_le(r->map + pos, 8)) > (left - 8) / elem)
            return LDMC_ERR(r->err,
                            "%s: storage '%.*s' (number %zu of %zu) runs past the end of the "
                            "file at byte %zu (file truncated?)",
                            r->path, (int)root->key_len, (const char *)root->key, i + 1,
                            keys->u.seq.n, pos);
        root->data = r->map + pos + 8;
        root->nbytes = numel * elem;
        root->sized = true;
        pos += 8 + (size_t)root->nbytes;
    }
    return 0;
}

static int open_legacy(torch_reader *r, ldmc_safetensors *st) {
    int fd = open(r->path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        int rc = LDMC_ERR(r->err, "%s: cannot open: %s", r->path, strerror(errno));
        if (fd >= 0) close(fd);
        return rc;
    }
    r->map_size = (size_t)sb.st_size;
    void *map = r->map_size ? mmap(NULL, r->map_size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    close(fd);
    if (map == MAP_FAILED)
        return LDMC_ERR(r->err, "%s: cannot map %zu bytes: %s", r->path, r->map_size,
                        strerror(errno));
    r->map = map;
    static const char *const stages[] = {"the magic number pickle", "the protocol pickle",
                                         "the sys_info pickle", "the object's pickle"};
    unpickler u = {.r = r};
    size_t pos = 0;
    const value *v[4] = {NULL};
    int rc = 0;
    for (int i = 0; i < 4 && rc == 0; i++) {
        u.what = stages[i];
        u.storages_allowed = i == 3;
        v[i] = unpickle(&u, r->map, r->map_size, &pos);
        if (!v[i]) rc = -1;
    }
    if (rc == 0 && !(v[0]->kind == V_BIGINT && v[0]->u.s.n == sizeof LEGACY_MAGIC &&
                     !memcmp(v[0]->u.s.p, LEGACY_MAGIC, sizeof LEGACY_MAGIC)))
        rc = LDMC_ERR(r->err, "%s: not a PyTorch file (the legacy magic number is wrong)", r->path);
    if (rc == 0 && !(v[1]->kind == V_INT && v[1]->u.i == 1001))
        rc = LDMC_ERR(r->err, "%s: legacy protocol version is not 1001", r->path);
    const value *little = rc == 0 && v[2]->kind == V_DICT ? dict_get(v[2], "little_endian") : NULL;
    if (rc == 0 && !(little && little->kind == V_BOOL && little->u.b))
        rc = LDMC_ERR(r->err,
                      "%s: sys_info does not say little_endian: True (saved on a big-endian "
                      "machine?); only little-endian files are read",
                      r->path);
    if (rc == 0) rc = read_legacy_storages(r, &u, pos);
    unpickler_free(&u);
    if (rc == 0) rc = build(r, v[3], legacy_size_storage, legacy_load_storage, st);
    return rc;
}

// ---- entry points -----------------------------------------------------------------------------

static bool is_zip(const unsigned char *head, size_t n) {
    return n >= 4 && head[0] == 'P' && head[1] == 'K' &&
           ((head[2] == 3 && head[3] == 4) || (head[2] == 5 && head[3] == 6));
}

bool ldmc_torch_file_probe(const unsigned char *head, size_t n) {
    if (is_zip(head, n)) return true;
    // PROTO 2..5, an optional FRAME (protocol 4+), then LONG1 of the 10-byte magic number
    if (n < 2 || head[0] != 0x80 || head[1] < 2 || head[1] > 5) return false;
    size_t at = 2;
    if (n > at && head[at] == 0x95) at += 9;
    return n >= at + 12 && head[at] == 0x8a && head[at + 1] == 10 &&
           !memcmp(head + at + 2, LEGACY_MAGIC, sizeof LEGACY_MAGIC);
}

int ldmc_torch_open(ldmc_safetensors *st, const char *path, ldmc_err *err) {
    *st = (ldmc_safetensors){0};
    torch_reader r = {.path = path, .err = err};
    unsigned char head[LDMC_TORCH_PROBE_BYTES];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return LDMC_ERR(err, "%s: cannot open: %s", path, strerror(errno));
    ssize_t n = pread(fd, head, sizeof head, 0);
    close(fd);
    int rc;
    if (n < 0 || !ldmc_torch_file_probe(head, (size_t)n))
        rc = LDMC_ERR(err, "%s: not a PyTorch file (neither a zip archive nor a legacy pickle)",
                      path);
    else
        rc = is_zip(head, (size_t)n) ? open_zip(&r, st) : open_legacy(&r, st);
    if (rc == 0) {
        st->path = strdup(path);
        if (!st->path) rc = out_of_memory(&r);
    }
    for (size_t i = 0; i < r.value_count; i++)
        free_value(r.values[i]);
    free(r.values);
    free(r.roots);
    free(r.root_hash);
    free(r.prefix);
    if (r.zip) zip_discard(r.zip);
    if (r.map) munmap((void *)r.map, r.map_size);
    if (rc != 0) ldmc_safetensors_close(st);
    return rc;
}
