// Weights files: key layouts, loading and saving (see weights.h). The diffusers names of each
// kind of model are its descriptor's (src/nn/diffusers.c). Tested by tests/test_weights.c.
#include "io/weights.h"

#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The file tensors of a parameter: n names (rows split evenly), transposed or not.
typedef struct key_parts {
    int n;
    char names[3][256];
    bool transpose, flatten_1x1;
} key_parts;

static int map_parts(const ldmc_key_map *map, const char *official, key_parts *k) {
    const ldmc_model_desc *d = map->model->desc;
    size_t plen = strlen(d->prefix);
    *k = (key_parts){.n = 1};
    if (map->layout == LDMC_LAYOUT_DIFFUSERS && d->diffusers_split &&
        strncmp(official, d->prefix, plen) == 0) {
        int n = d->diffusers_split(map->model->config, official + plen, k->names, &k->transpose);
        if (n > 0) {
            k->n = n;
            return 0;
        }
    }
    return ldmc_map_key(map, official, k->names[0], sizeof k->names[0], &k->flatten_1x1);
}

static bool matches_any(const char *const *globs, const char *text) {
    for (int i = 0; globs && globs[i]; i++)
        if (fnmatch(globs[i], text, 0) == 0) return true;
    return false;
}

// A parameter a layout may lack (the descriptor's optional_keys, after the prefix).
static bool optional_param(const ldmc_key_map *map, const char *official) {
    const ldmc_model_desc *d = map->model->desc;
    size_t plen = strlen(d->prefix);
    return strncmp(official, d->prefix, plen) == 0 &&
           matches_any(d->optional_keys, official + plen);
}

int ldmc_map_key(const ldmc_key_map *map, const char *official, char *out, size_t size,
                 bool *flatten_1x1) {
    const ldmc_model_desc *d = map->model->desc;
    size_t plen = strlen(d->prefix);
    bool in_prefix = strncmp(official, d->prefix, plen) == 0, flatten = false;
    int rc = -1;
    if (map->layout == LDMC_LAYOUT_OFFICIAL) { // the key as it is, or unprefixed (bare)
        int n = snprintf(out, size, "%s", official + (map->bare && in_prefix ? plen : 0));
        rc = n >= 0 && (size_t)n < size ? 0 : -1;
    } else if (in_prefix) { // a key outside the prefix (a class embedding) has no diffusers name
        rc = d->diffusers_key(map->model->config, official + plen, out, size, &flatten);
    }
    if (flatten_1x1) *flatten_1x1 = flatten;
    return rc;
}

int ldmc_file_shape(const ldmc_param *param, const ldmc_key_map *map, int64_t *shape) {
    bool flatten = false;
    char key[512];
    if (map->layout != LDMC_LAYOUT_OFFICIAL &&
        ldmc_map_key(map, param->name, key, sizeof key, &flatten) != 0)
        flatten = false;
    if (!(param->flags & LDMC_PARAM_CONV)) {
        memcpy(shape, param->shape, (size_t)param->ndim * sizeof *shape);
        return param->ndim;
    }
    // ldmc (O, kH, kW, C) -> file (O, C, kH, kW), or (O, C) for a flattened 1x1
    shape[0] = param->shape[0];
    shape[1] = param->shape[3];
    if (flatten) return 2;
    shape[2] = param->shape[1];
    shape[3] = param->shape[2];
    return 4;
}

// ---- loading
// --------------------------------------------------------------------------------------

// Up to LIST_SHOWN names per kind of problem are named; the rest are counted.
enum { LIST_SHOWN = 4 };

typedef struct problem_list {
    const char *what;
    int count;
    char text[640];
    int len;
} problem_list;

static void note(problem_list *l, const char *fmt, ...) LDMC_PRINTF(2, 3);
static void note(problem_list *l, const char *fmt, ...) {
    if (l->count++ >= LIST_SHOWN || l->len >= (int)sizeof l->text - 1) return;
    va_list args;
    va_start(args, fmt);
    if (l->count > 1) l->len += snprintf(l->text + l->len, sizeof l->text - (size_t)l->len, "; ");
    if (l->len < (int)sizeof l->text)
        l->len += vsnprintf(l->text + l->len, sizeof l->text - (size_t)l->len, fmt, args);
    va_end(args);
}

static int describe(char *buf, int size, const problem_list *l) {
    if (!l->count) return 0;
    return snprintf(buf, (size_t)size, " %d %s: %s%s.", l->count, l->what, l->text,
                    l->count > LIST_SHOWN ? "; ..." : "");
}

static const char *shape_text(int ndim, const int64_t *shape, char *buf, size_t size) {
    ldmc_tensor t = ldmc_tensor_wrap(LDMC_F32, NULL, ndim, shape);
    return ldmc_shape_str(&t, buf, size);
}

static bool may_be_new(const ldmc_load_options *opt, const char *name) {
    for (int i = 0; opt && i < opt->n_may_be_new; i++)
        if (fnmatch(opt->may_be_new[i], name, 0) == 0) return true;
    return false;
}

static bool is_float(ldmc_dtype d) { return d == LDMC_F32 || d == LDMC_F16 || d == LDMC_BF16; }

// Reads one tensor into the weights, turning a file convolution (O, C, kH, kW) into (O, kH, kW, C).
static int read_param(const ldmc_safetensors *st, const ldmc_st_tensor *t, const ldmc_param *param,
                      float *dst, ldmc_err *err) {
    if (!(param->flags & LDMC_PARAM_CONV) || t->ndim == 2 ||
        (param->shape[1] == 1 && param->shape[2] == 1)) // 1x1: the two layouts coincide
        return ldmc_safetensors_read(st, t, dst, LDMC_F32, err);
    float *tmp = malloc((size_t)param->numel * sizeof *tmp);
    if (!tmp) return LDMC_ERR(err, "%s: out of memory reading '%s'", st->path, t->name);
    int rc = ldmc_safetensors_read(st, t, tmp, LDMC_F32, err);
    if (rc == 0)
        ldmc_conv_from_official(dst, tmp, param->shape[0], param->shape[1], param->shape[2],
                                param->shape[3]);
    free(tmp);
    return rc;
}

int ldmc_load_weights(const ldmc_safetensors *st, const ldmc_key_map *map, const char *domain,
                      const ldmc_load_options *opt, ldmc_err *err) {
    ldmc_params *p = map->model->params;
    ldmc_param_role role = opt ? opt->role : LDMC_ROLE_WEIGHTS;
    float *weights = p->buffers[role];
    if (!weights)
        return LDMC_ERR(err, "%s: the model's %s buffer is not allocated", st->path,
                        ldmc_param_role_name(role));
    problem_list missing = {.what = "missing"}, unexpected = {.what = "unexpected"},
                 wrong = {.what = "with the wrong shape or dtype"},
                 unmapped = {.what = "without an equivalent in this layout"};
    const ldmc_st_tensor **found = calloc((size_t)(p->count ? p->count : 1) * 3, sizeof *found);
    key_parts *parts = calloc((size_t)(p->count ? p->count : 1), sizeof *parts);
    bool *used = calloc((size_t)(st->count ? st->count : 1), sizeof *used);
    if (!found || !used || !parts) {
        free(found);
        free(used);
        free(parts);
        return LDMC_ERR(err, "%s: out of memory", st->path);
    }
    int n_new = 0;
    char a[96], b[96];
    for (int i = 0; i < p->count; i++) {
        const ldmc_param *param = &p->items[i];
        key_parts *k = &parts[i];
        if (map_parts(map, param->name, k) != 0) {
            if (optional_param(map, param->name))
                n_new++;
            else
                note(&unmapped, "%s", param->name);
            continue;
        }
        int64_t shape[LDMC_MAX_DIMS];
        int ndim = ldmc_file_shape(param, map, shape);
        if (k->n > 1) shape[0] /= k->n;
        if (k->transpose && ndim == 2) {
            int64_t rows = shape[0];
            shape[0] = shape[1], shape[1] = rows;
        }
        // a parameter may be new (or optional) only when none of its tensors is in the file
        int absent = 0;
        for (int j = 0; j < k->n; j++)
            absent += ldmc_safetensors_find(st, k->names[j]) == NULL;
        bool keep_value =
            absent == k->n && (may_be_new(opt, param->name) || optional_param(map, param->name));
        n_new += keep_value;
        for (int j = 0; j < k->n && !keep_value; j++) {
            const ldmc_st_tensor *t = ldmc_safetensors_find(st, k->names[j]);
            if (!t) {
                note(&missing, "%s", k->names[j]);
                continue;
            }
            used[t - st->tensors] = true;
            bool same = ndim == t->ndim && is_float(t->dtype);
            for (int d = 0; same && d < ndim; d++)
                same = shape[d] == t->shape[d];
            if (!same)
                note(&wrong, "%s is %s %s, the model needs F32/F16/BF16 %s", k->names[j],
                     ldmc_dtype_name(t->dtype), shape_text(t->ndim, t->shape, a, sizeof a),
                     shape_text(ndim, shape, b, sizeof b));
            else
                found[3 * i + j] = t;
        }
    }
    size_t domain_len = strlen(domain);
    const ldmc_model_desc *desc = map->model->desc;
    for (int i = 0; i < st->count; i++)
        if (!used[i] && strncmp(st->tensors[i].name, domain, domain_len) == 0 &&
            !matches_any(desc->ignored_keys, st->tensors[i].name))
            note(&unexpected, "%s", st->tensors[i].name);
    int rc = 0;
    if (missing.count || unexpected.count || wrong.count || unmapped.count) {
        char text[1800];
        int len = snprintf(text, sizeof text, "%s does not match the model:", st->path);
        const problem_list *lists[] = {&missing, &unexpected, &wrong, &unmapped};
        for (int k = 0; k < 4 && len < (int)sizeof text; k++)
            len += describe(text + len, (int)sizeof text - len, lists[k]);
        if (missing.count && len < (int)sizeof text)
            snprintf(text + len, sizeof text - (size_t)len,
                     " Parameters meant to start fresh must be declared new.");
        rc = LDMC_ERR(err, "%s", text);
    }
    for (int i = 0; rc == 0 && i < p->count; i++) {
        const ldmc_param *param = &p->items[i];
        float *dst = weights + param->offset;
        // a sharded role (ZeRO-1) holds this rank's parameters only (every one is checked above)
        if (ldmc_params_role_sharded(p, role) && !ldmc_params_owns(p, i)) continue;
        bool complete = true; // (a problem above stops the load before here otherwise)
        for (int j = 0; j < parts[i].n; j++)
            complete &= found[3 * i + j] != NULL;
        if (!complete) continue;
        if (parts[i].n == 1 && !parts[i].transpose) {
            rc = read_param(st, found[3 * i], param, dst, err);
            continue;
        }
        int64_t rows = param->shape[0] / parts[i].n, cols = param->numel / param->shape[0];
        float *tmp = malloc((size_t)(rows * cols > 0 ? rows * cols : 1) * sizeof *tmp);
        if (!tmp) rc = LDMC_ERR(err, "%s: out of memory", st->path);
        for (int j = 0; rc == 0 && j < parts[i].n; j++) {
            rc = ldmc_safetensors_read(st, found[3 * i + j], tmp, LDMC_F32, err);
            if (rc == 0 && parts[i].transpose) // the file's (cols, rows) back to (rows, cols)
                for (int64_t r = 0; r < rows; r++)
                    for (int64_t c = 0; c < cols; c++)
                        dst[r * cols + c] = tmp[c * rows + r];
            else if (rc == 0)
                memcpy(dst + j * rows * cols, tmp, (size_t)(rows * cols) * sizeof *tmp);
        }
        free(tmp);
    }
    if (opt && opt->n_new) *opt->n_new = n_new;
    free(found);
    free(used);
    free(parts);
    return rc;
}

// ---- saving
// ---------------------------------------------------------------------------------------

void ldmc_conv_to_official(float *dst, const float *src, int64_t O, int64_t kh, int64_t kw,
                           int64_t C) {
    for (int64_t o = 0; o < O; o++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < kh * kw; i++)
                dst[(o * C + c) * kh * kw + i] = src[(o * kh * kw + i) * C + c];
}

void ldmc_conv_from_official(float *dst, const float *src, int64_t O, int64_t kh, int64_t kw,
                             int64_t C) {
    for (int64_t o = 0; o < O; o++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < kh * kw; i++)
                dst[(o * kh * kw + i) * C + c] = src[(o * C + c) * kh * kw + i];
}

// The entry's `data` is the parameter (O, kH, kW, C), `shape` the file's (O, C, kH, kW).
static void produce_conv(const ldmc_st_entry *e, void *dst) {
    ldmc_conv_to_official(dst, e->data, e->shape[0], e->shape[2], e->shape[3], e->shape[1]);
}

// The entry's `data` is a (rows, cols) parameter, `shape` the file's (cols, rows).
static void produce_transpose(const ldmc_st_entry *e, void *dst) {
    const float *src = e->data;
    float *out = dst;
    int64_t cols = e->shape[0], rows = e->shape[1];
    for (int64_t c = 0; c < cols; c++)
        for (int64_t r = 0; r < rows; r++)
            out[c * rows + r] = src[r * cols + c];
}

int ldmc_save_weights(const char *path, const ldmc_save_part *parts, int n_parts, ldmc_dtype dtype,
                      const ldmc_safetensors *passthrough, ldmc_err *err) {
    if (!is_float(dtype))
        return LDMC_ERR(err, "%s: weights are saved as F32, F16 or BF16, not %s", path,
                        ldmc_dtype_name(dtype));
    int total = passthrough ? passthrough->count : 0;
    for (int k = 0; k < n_parts; k++)
        total += 3 * parts[k].map.model->params->count; // up to 3 tensors per parameter
    ldmc_st_entry *entries = calloc((size_t)(total ? total : 1), sizeof *entries);
    char *names = calloc((size_t)(total ? total : 1), 512);
    if (!entries || !names) {
        free(entries);
        free(names);
        return LDMC_ERR(err, "%s: out of memory", path);
    }
    int n = 0, rc = 0;
    for (int k = 0; k < n_parts && rc == 0; k++) {
        const ldmc_params *p = parts[k].map.model->params;
        const float *buffer = parts[k].data ? parts[k].data : p->buffers[parts[k].role];
        if (!buffer) {
            rc = LDMC_ERR(err, "%s: the %s buffer to save does not exist", path,
                          ldmc_param_role_name(parts[k].role));
            break;
        }
        for (int i = 0; i < p->count && rc == 0; i++) {
            const ldmc_param *param = &p->items[i];
            key_parts kp;
            if (map_parts(&parts[k].map, param->name, &kp) != 0) {
                if (optional_param(&parts[k].map, param->name)) continue; // not in this layout
                rc = LDMC_ERR(err, "%s: '%s' has no equivalent in the diffusers layout", path,
                              param->name);
                break;
            }
            int64_t rows = param->ndim ? param->shape[0] / kp.n : 1;
            for (int j = 0; j < kp.n; j++) {
                ldmc_st_entry *e = &entries[n];
                char *name = names + (size_t)n * 512;
                snprintf(name, 512, "%s", kp.names[j]);
                *e = (ldmc_st_entry){.name = name,
                                     .dtype = dtype,
                                     .src_dtype = LDMC_F32,
                                     .data =
                                         buffer + param->offset +
                                         (size_t)j * rows *
                                             (param->numel / (param->ndim ? param->shape[0] : 1))};
                e->ndim = ldmc_file_shape(param, &parts[k].map, e->shape);
                if (kp.n > 1) e->shape[0] = rows;
                bool spatial = (param->flags & LDMC_PARAM_CONV) && !kp.flatten_1x1 &&
                               !(param->shape[1] == 1 && param->shape[2] == 1);
                if (spatial) e->produce = produce_conv;
                if (kp.transpose && e->ndim == 2) {
                    int64_t r = e->shape[0];
                    e->shape[0] = e->shape[1], e->shape[1] = r;
                    e->produce = produce_transpose;
                }
                n++;
            }
        }
    }
    for (int i = 0; rc == 0 && passthrough && i < passthrough->count; i++) {
        const ldmc_st_tensor *t = &passthrough->tensors[i];
        bool written = false;
        for (int j = 0; j < n && !written; j++)
            written = strcmp(entries[j].name, t->name) == 0;
        if (written) continue;
        ldmc_st_entry *e = &entries[n++];
        *e = (ldmc_st_entry){.name = t->name,
                             .dtype = t->dtype,
                             .src_dtype = t->dtype,
                             .ndim = t->ndim,
                             .data = t->data};
        memcpy(e->shape, t->shape, sizeof e->shape);
    }
    ldmc_st_meta meta[] = {{"format", "pt"}, {"written_by", "ldmc"}};
    if (rc == 0) rc = ldmc_safetensors_write(path, entries, n, meta, 2, err);
    free(entries);
    free(names);
    return rc;
}
