// Safetensors reader and writer (see safetensors.h). Tested by tests/test_safetensors.c.
#include "io/safetensors.h"

#include "io/torch_file.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static void free_contents(ldmc_safetensors *st) {
    for (int i = 0; i < st->count; i++)
        free(st->tensors[i].name);
    for (int i = 0; i < st->meta_count; i++) {
        free(st->meta[i].key);
        free(st->meta[i].value);
    }
    free(st->tensors);
    free(st->meta);
    if (st->map && st->owned)
        free(st->map);
    else if (st->map)
        munmap(st->map, st->map_size);
    free(st->path);
    *st = (ldmc_safetensors){0};
}

void ldmc_safetensors_close(ldmc_safetensors *st) { free_contents(st); }

int64_t ldmc_st_numel(const ldmc_st_tensor *t) { return ldmc_shape_numel(t->ndim, t->shape); }

// A JSON number that is a whole number in [0, 2^53]; -1 otherwise.
static int64_t json_whole(const cJSON *item) {
    if (!cJSON_IsNumber(item)) return -1;
    double v = item->valuedouble;
    if (!(v >= 0 && v <= 9007199254740992.0) || v != (double)(int64_t)v) return -1;
    return (int64_t)v;
}

static int parse_metadata(ldmc_safetensors *st, const cJSON *obj, ldmc_err *err) {
    if (!cJSON_IsObject(obj))
        return LDMC_ERR(err, "%s: __metadata__ must be a JSON object of strings", st->path);
    int n = cJSON_GetArraySize(obj);
    st->meta = calloc((size_t)(n ? n : 1), sizeof *st->meta);
    if (!st->meta) return LDMC_ERR(err, "%s: out of memory", st->path);
    for (const cJSON *kv = obj->child; kv; kv = kv->next) {
        if (!cJSON_IsString(kv))
            return LDMC_ERR(err, "%s: __metadata__ value of '%s' must be a string", st->path,
                            kv->string);
        ldmc_st_meta *m = &st->meta[st->meta_count++];
        m->key = strdup(kv->string);
        m->value = strdup(kv->valuestring);
        if (!m->key || !m->value) return LDMC_ERR(err, "%s: out of memory", st->path);
    }
    return 0;
}

static int parse_tensor(ldmc_safetensors *st, const cJSON *entry, ldmc_st_tensor *t,
                        ldmc_err *err) {
    const char *name = entry->string;
    if (!cJSON_IsObject(entry))
        return LDMC_ERR(err, "%s: tensor '%s': expected an object with dtype, shape, data_offsets",
                        st->path, name);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!cJSON_IsString(dtype))
        return LDMC_ERR(err, "%s: tensor '%s': missing \"dtype\" string", st->path, name);
    if (ldmc_dtype_parse(dtype->valuestring, &t->dtype) != 0)
        return LDMC_ERR(err,
                        "%s: tensor '%s': unsupported dtype \"%s\" (expected F32, F16, BF16, "
                        "I32 or I64)",
                        st->path, name, dtype->valuestring);
    if (!cJSON_IsArray(shape))
        return LDMC_ERR(err, "%s: tensor '%s': missing \"shape\" array", st->path, name);
    t->ndim = cJSON_GetArraySize(shape);
    if (t->ndim > LDMC_MAX_DIMS)
        return LDMC_ERR(err, "%s: tensor '%s': rank %d is above the supported %d", st->path, name,
                        t->ndim, LDMC_MAX_DIMS);
    int d = 0;
    uint64_t bytes = ldmc_dtype_size(t->dtype);
    for (const cJSON *dim = shape->child; dim; dim = dim->next, d++) {
        int64_t v = json_whole(dim);
        if (v < 0)
            return LDMC_ERR(err, "%s: tensor '%s': shape entry %d is not a non-negative integer",
                            st->path, name, d);
        t->shape[d] = v;
        if (v && bytes > UINT64_MAX / (uint64_t)v)
            return LDMC_ERR(err, "%s: tensor '%s': shape overflows", st->path, name);
        bytes *= (uint64_t)v;
    }
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2)
        return LDMC_ERR(err, "%s: tensor '%s': \"data_offsets\" must be [begin, end]", st->path,
                        name);
    int64_t begin = json_whole(offsets->child), end = json_whole(offsets->child->next);
    if (begin < 0 || end < 0 || begin > end)
        return LDMC_ERR(err,
                        "%s: tensor '%s': data_offsets must be whole numbers with begin <= end",
                        st->path, name);
    if ((uint64_t)end > st->data_size)
        return LDMC_ERR(err,
                        "%s: tensor '%s': data_offsets [%" PRId64 ", %" PRId64 ") go past the "
                        "end of the data section (%" PRIu64 " bytes; file truncated?)",
                        st->path, name, begin, end, st->data_size);
    if ((uint64_t)(end - begin) != bytes)
        return LDMC_ERR(err,
                        "%s: tensor '%s': shape and dtype %s need %" PRIu64 " bytes but "
                        "data_offsets span %" PRId64,
                        st->path, name, ldmc_dtype_name(t->dtype), bytes, end - begin);
    t->begin = (uint64_t)begin;
    t->end = (uint64_t)end;
    t->data = st->data + begin;
    t->name = strdup(name);
    if (!t->name) return LDMC_ERR(err, "%s: out of memory", st->path);
    return 0;
}

static int compare_begin(const void *a, const void *b) {
    const ldmc_st_tensor *x = a, *y = b;
    return x->begin < y->begin   ? -1
           : x->begin > y->begin ? 1
                                 : (x->end > y->end) - (x->end < y->end);
}

static int parse_header(ldmc_safetensors *st, const char *json, size_t len, ldmc_err *err) {
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long pos = at && at >= json && at <= json + len ? (long)(at - json) : -1;
        return LDMC_ERR(err, "%s: the header is not valid JSON (error near byte %ld of %zu)",
                        st->path, pos, len);
    }
    int rc = 0;
    if (!cJSON_IsObject(root)) {
        rc = LDMC_ERR(err, "%s: the header must be a JSON object", st->path);
        goto done;
    }
    int n = cJSON_GetArraySize(root);
    st->tensors = calloc((size_t)(n ? n : 1), sizeof *st->tensors);
    if (!st->tensors) {
        rc = LDMC_ERR(err, "%s: out of memory for %d tensors", st->path, n);
        goto done;
    }
    for (const cJSON *entry = root->child; entry && rc == 0; entry = entry->next) {
        if (!entry->string) {
            rc = LDMC_ERR(err, "%s: a header entry has no name", st->path);
        } else if (strcmp(entry->string, "__metadata__") == 0) {
            rc = st->meta ? LDMC_ERR(err, "%s: __metadata__ appears twice", st->path)
                          : parse_metadata(st, entry, err);
        } else if (ldmc_safetensors_find(st, entry->string)) {
            rc = LDMC_ERR(err, "%s: tensor '%s' appears twice in the header", st->path,
                          entry->string);
        } else {
            rc = parse_tensor(st, entry, &st->tensors[st->count], err);
            if (rc == 0) st->count++;
        }
    }
    if (rc == 0 && st->count > 1) {
        qsort(st->tensors, (size_t)st->count, sizeof *st->tensors, compare_begin);
        for (int i = 1; i < st->count && rc == 0; i++) {
            const ldmc_st_tensor *prev = &st->tensors[i - 1], *cur = &st->tensors[i];
            if (cur->begin < prev->end && cur->end > cur->begin && prev->end > prev->begin)
                rc = LDMC_ERR(err,
                              "%s: tensors '%s' [%" PRIu64 ", %" PRIu64 ") and '%s' [%" PRIu64
                              ", %" PRIu64 ") overlap",
                              st->path, prev->name, prev->begin, prev->end, cur->name, cur->begin,
                              cur->end);
        }
    }
done:
    cJSON_Delete(root);
    return rc;
}

int ldmc_safetensors_open(ldmc_safetensors *st, const char *path, ldmc_err *err) {
    *st = (ldmc_safetensors){0};
    st->path = strdup(path);
    if (!st->path) return LDMC_ERR(err, "%s: out of memory", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        LDMC_ERR(err, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        LDMC_ERR(err, "%s: not a regular file", path);
        goto fail;
    }
    unsigned char head[LDMC_TORCH_PROBE_BYTES];
    ssize_t head_len = pread(fd, head, sizeof head, 0);
    if (head_len > 0 && ldmc_torch_file_probe(head, (size_t)head_len)) {
        close(fd);
        free_contents(st);
        return ldmc_torch_open(st, path, err);
    }
    if (sb.st_size < 8) {
        close(fd);
        LDMC_ERR(err,
                 "%s: %lld bytes is too short for a safetensors file (the 8-byte header "
                 "length is missing)",
                 path, (long long)sb.st_size);
        goto fail;
    }
    st->map_size = (size_t)sb.st_size;
    st->map = mmap(NULL, st->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (st->map == MAP_FAILED) {
        st->map = NULL;
        LDMC_ERR(err, "%s: cannot map %zu bytes: %s", path, st->map_size, strerror(errno));
        goto fail;
    }
    const unsigned char *bytes = st->map;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--)
        header_len = (header_len << 8) | bytes[i];
    if (header_len > LDMC_SAFETENSORS_MAX_HEADER || header_len > st->map_size - 8) {
        LDMC_ERR(err,
                 "%s: header length %" PRIu64 " is impossible (file has %zu bytes after the "
                 "length; the format allows at most %" PRIu64 ")",
                 path, header_len, st->map_size - 8, LDMC_SAFETENSORS_MAX_HEADER);
        goto fail;
    }
    st->data = bytes + 8 + header_len;
    st->data_size = st->map_size - 8 - header_len;
    if (parse_header(st, (const char *)bytes + 8, (size_t)header_len, err) != 0) goto fail;
    return 0;
fail:
    free_contents(st);
    return -1;
}

const ldmc_st_tensor *ldmc_safetensors_find(const ldmc_safetensors *st, const char *name) {
    for (int i = 0; i < st->count; i++)
        if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
    return NULL;
}

const char *ldmc_safetensors_meta(const ldmc_safetensors *st, const char *key) {
    for (int i = 0; i < st->meta_count; i++)
        if (strcmp(st->meta[i].key, key) == 0) return st->meta[i].value;
    return NULL;
}

// The data section need not be aligned, so values go through an aligned bounce buffer.
int ldmc_safetensors_read(const ldmc_safetensors *st, const ldmc_st_tensor *t, void *dst,
                          ldmc_dtype dst_dtype, ldmc_err *err) {
    enum { CHUNK = 16384 };
    _Alignas(64) unsigned char bounce[CHUNK * 8];
    size_t src_size = ldmc_dtype_size(t->dtype), dst_size = ldmc_dtype_size(dst_dtype);
    int64_t n = ldmc_st_numel(t);
    for (int64_t i = 0; i < n; i += CHUNK) {
        size_t k = (size_t)(n - i < CHUNK ? n - i : CHUNK);
        memcpy(bounce, (const unsigned char *)t->data + (size_t)i * src_size, k * src_size);
        if (ldmc_convert((unsigned char *)dst + (size_t)i * dst_size, dst_dtype, bounce, t->dtype,
                         k) != 0)
            return LDMC_ERR(err, "%s: tensor '%s' is %s and cannot be read as %s", st->path,
                            t->name, ldmc_dtype_name(t->dtype), ldmc_dtype_name(dst_dtype));
    }
    return 0;
}

// ---- writing ----------------------------------------------------------------------------------

static cJSON *whole_number(uint64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRIu64, v);
    return cJSON_CreateRaw(buf); // exact for any 64-bit value, unlike a JSON double
}

static char *build_header(const ldmc_st_entry *entries, int count, const ldmc_st_meta *meta,
                          int meta_count) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    if (meta_count > 0) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        for (int i = 0; m && i < meta_count; i++)
            cJSON_AddStringToObject(m, meta[i].key, meta[i].value);
    }
    uint64_t offset = 0;
    for (int i = 0; i < count; i++) {
        const ldmc_st_entry *e = &entries[i];
        uint64_t bytes = (uint64_t)ldmc_shape_numel(e->ndim, e->shape) * ldmc_dtype_size(e->dtype);
        cJSON *obj = cJSON_AddObjectToObject(root, e->name);
        cJSON *shape = obj ? cJSON_AddArrayToObject(obj, "shape") : NULL;
        cJSON *offsets = obj ? cJSON_AddArrayToObject(obj, "data_offsets") : NULL;
        if (!shape || !offsets ||
            !cJSON_AddStringToObject(obj, "dtype", ldmc_dtype_name(e->dtype))) {
            cJSON_Delete(root);
            return NULL;
        }
        for (int d = 0; d < e->ndim; d++)
            cJSON_AddItemToArray(shape, whole_number((uint64_t)e->shape[d]));
        cJSON_AddItemToArray(offsets, whole_number(offset));
        cJSON_AddItemToArray(offsets, whole_number(offset + bytes));
        offset += bytes;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return json;
}

static int write_all(FILE *f, const void *p, size_t n) { return fwrite(p, 1, n, f) == n ? 0 : -1; }

// Converts through an aligned buffer: the source may sit unaligned in a mapped file.
static int write_tensor(FILE *f, const ldmc_st_entry *e) {
    int64_t n = ldmc_shape_numel(e->ndim, e->shape);
    size_t src_size = ldmc_dtype_size(e->src_dtype), dst_size = ldmc_dtype_size(e->dtype);
    const unsigned char *src = e->data;
    void *produced = NULL;
    if (e->produce) {
        produced = malloc((size_t)(n ? n : 1) * src_size);
        if (!produced) return -1;
        e->produce(e, produced);
        src = produced;
    }
    int rc = 0;
    if (e->dtype == e->src_dtype) {
        rc = write_all(f, src, (size_t)n * dst_size);
    } else {
        enum { CHUNK = 16384 };
        _Alignas(64) unsigned char in[CHUNK * 8], out[CHUNK * 8];
        for (int64_t i = 0; i < n && rc == 0; i += CHUNK) {
            size_t k = (size_t)(n - i < CHUNK ? n - i : CHUNK);
            memcpy(in, src + (size_t)i * src_size, k * src_size);
            rc = ldmc_convert(out, e->dtype, in, e->src_dtype, k) != 0 ? -1
                                                                     : write_all(f, out, k * dst_size);
        }
    }
    free(produced);
    return rc;
}

int ldmc_safetensors_write(const char *path, const ldmc_st_entry *entries, int count,
                           const ldmc_st_meta *meta, int meta_count, ldmc_err *err) {
    for (int i = 0; i < count; i++) {
        if (entries[i].ndim < 0 || entries[i].ndim > LDMC_MAX_DIMS || !entries[i].name)
            return LDMC_ERR(err, "%s: entry %d has no name or a bad rank", path, i);
        for (int j = 0; j < i; j++)
            if (strcmp(entries[i].name, entries[j].name) == 0)
                return LDMC_ERR(err, "%s: tensor '%s' given twice", path, entries[i].name);
    }
    char *json = build_header(entries, count, meta, meta_count);
    if (!json) return LDMC_ERR(err, "%s: out of memory building the header", path);
    size_t len = strlen(json), padded = (len + 7) & ~(size_t)7; // data starts 8-byte aligned
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp) {
        free(json);
        return LDMC_ERR(err, "%s: path too long", path);
    }
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        free(json);
        return LDMC_ERR(err, "%s: cannot create: %s", tmp, strerror(errno));
    }
    unsigned char len_bytes[8];
    for (int i = 0; i < 8; i++)
        len_bytes[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int rc = write_all(f, len_bytes, 8) | write_all(f, json, len);
    for (size_t i = len; i < padded && rc == 0; i++)
        rc = write_all(f, " ", 1);
    free(json);
    for (int i = 0; i < count && rc == 0; i++)
        rc = write_tensor(f, &entries[i]);
    if (rc == 0) rc = fflush(f) == 0 && fsync(fileno(f)) == 0 ? 0 : -1;
    int saved_errno = errno;
    if (fclose(f) != 0) rc = -1;
    if (rc == 0 && rename(tmp, path) != 0) rc = -1, saved_errno = errno;
    if (rc != 0) {
        unlink(tmp);
        return LDMC_ERR(err, "%s: write failed: %s", path, strerror(saved_errno));
    }
    return 0;
}
