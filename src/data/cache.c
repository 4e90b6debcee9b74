// The HDF5 latent cache (see cache.h). Tested by tests/test_train.c.
#include "data/cache.h"

#include <hdf5.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

// ---- reading
// --------------------------------------------------------------------------------------

static int read_attr(hid_t obj, const char *name, hid_t type, void *out) {
    if (H5Aexists(obj, name) <= 0) return -1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) return -1;
    herr_t rc = H5Aread(a, type, out);
    H5Aclose(a);
    return rc < 0 ? -1 : 0;
}

static int64_t rows_of(hid_t group, const char *name, int rank, hsize_t *dims) {
    if (H5Lexists(group, name, H5P_DEFAULT) <= 0) return -1;
    hid_t d = H5Dopen2(group, name, H5P_DEFAULT);
    if (d < 0) return -1;
    hid_t space = H5Dget_space(d);
    int got = H5Sget_simple_extent_ndims(space);
    if (got == rank) H5Sget_simple_extent_dims(space, dims, NULL);
    H5Sclose(space);
    H5Dclose(d);
    return got == rank ? (int64_t)dims[0] : -1;
}

static const char *const entry_datasets[8] = {"mean",     "std",   "c_size",  "c_crop",
                                              "c_target", "class", "context", "pooled"};

// IEEE half precision as a file type (HDF5 1.10 has no predefined one): h5py reads it as float16;
// HDF5 converts from and to f32 on the way.
static hid_t f16_type(void) {
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(t, 15, 10, 5, 0, 10);
    H5Tset_precision(t, 16);
    H5Tset_ebias(t, 15);
    H5Tset_size(t, 2);
    return t;
}

// A whole small dataset of n floats at `path` (the empty caption's embeddings) into a new buffer.
static float *read_floats(hid_t f, const char *path, int64_t n) {
    if (H5Lexists(f, "text_empty", H5P_DEFAULT) <= 0 || H5Lexists(f, path, H5P_DEFAULT) <= 0)
        return NULL;
    hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
    if (d < 0) return NULL;
    hid_t space = H5Dget_space(d);
    hssize_t got = H5Sget_simple_extent_npoints(space);
    H5Sclose(space);
    float *v = got == n ? malloc((size_t)n * sizeof *v) : NULL;
    if (v && H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) < 0) {
        free(v);
        v = NULL;
    }
    H5Dclose(d);
    return v;
}

int ldmc_cache_open(ldmc_cache *c, const char *path, ldmc_err *err) {
    *c = (ldmc_cache){.hdf5_file = -1};
    snprintf(c->path, sizeof c->path, "%s", path);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); // errors become messages here, not HDF5's stack dumps
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return LDMC_ERR(err, "%s: not a readable HDF5 file", path);
    c->hdf5_file = f;
    char format[64] = "";
    hid_t str = H5Tcopy(H5T_C_S1);
    H5Tset_size(str, sizeof format);
    int ok = read_attr(f, "format", str, format) == 0 &&
             !strncmp(format, "ldmc latent cache 1", 19) &&
             read_attr(f, "scale_factor", H5T_NATIVE_DOUBLE, &c->scale_factor) == 0 &&
             read_attr(f, "latent_channels", H5T_NATIVE_INT, &c->channels) == 0;
    H5Tclose(str);
    if (!ok) {
        ldmc_cache_close(c);
        return LDMC_ERR(err,
                        "%s: not an ldmc latent cache (format, scale_factor, latent_channels "
                        "attributes expected)",
                        path);
    }
    if (read_attr(f, "text_tokens", H5T_NATIVE_INT, &c->text_tokens) == 0 && c->text_tokens) {
        if (read_attr(f, "text_context_dim", H5T_NATIVE_INT, &c->text_context_dim) ||
            read_attr(f, "text_pooled_dim", H5T_NATIVE_INT, &c->text_pooled_dim) ||
            c->text_tokens < 1 || c->text_context_dim < 1 || c->text_pooled_dim < 0 ||
            !(c->empty_context = read_floats(f, "text_empty/context",
                                             (int64_t)c->text_tokens * c->text_context_dim)) ||
            (c->text_pooled_dim &&
             !(c->empty_pooled = read_floats(f, "text_empty/pooled", c->text_pooled_dim)))) {
            ldmc_cache_close(c);
            return LDMC_ERR(err,
                            "%s: text embeddings without text_context_dim, text_pooled_dim or "
                            "the empty caption's /text_empty/context and /text_empty/pooled",
                            path);
        }
    } else {
        c->text_tokens = 0;
    }
    hid_t buckets = H5Gopen2(f, "buckets", H5P_DEFAULT);
    hsize_t n_links = 0;
    H5G_info_t info;
    if (buckets < 0 || H5Gget_info(buckets, &info) < 0 || (n_links = info.nlinks) == 0 ||
        n_links > LDMC_MAX_BUCKETS) {
        if (buckets >= 0) H5Gclose(buckets);
        ldmc_cache_close(c);
        return LDMC_ERR(err, "%s: no /buckets groups", path);
    }
    int rc = 0;
    for (hsize_t i = 0; i < n_links && rc == 0; i++) {
        char name[64];
        H5Lget_name_by_idx(buckets, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name,
                           H5P_DEFAULT);
        ldmc_cache_group *g = &c->groups[c->n_groups];
        hid_t grp = H5Gopen2(buckets, name, H5P_DEFAULT);
        hsize_t dims[4], d2[2], d1[1];
        int64_t n = rows_of(grp, "mean", 4, dims);
        bool good = grp >= 0 && sscanf(name, "%dx%d", &g->height, &g->width) == 2 && n >= 0 &&
                    rows_of(grp, "std", 4, dims) == n && rows_of(grp, "c_size", 2, d2) == n &&
                    rows_of(grp, "c_crop", 2, d2) == n && rows_of(grp, "c_target", 2, d2) == n &&
                    rows_of(grp, "class", 1, d1) == n && (int)dims[3] == c->channels;
        for (int k = 0; good && k < 6; k++)
            good = (g->datasets[k] = H5Dopen2(grp, entry_datasets[k], H5P_DEFAULT)) >= 0;
        g->datasets[6] = g->datasets[7] = -1;
        g->datasets[8] =
            rows_of(grp, "aesthetic", 1, d1) == n ? H5Dopen2(grp, "aesthetic", H5P_DEFAULT) : -1;
        hsize_t d3[3];
        if (good && c->text_tokens)
            good = rows_of(grp, "context", 3, d3) == n && (int)d3[1] == c->text_tokens &&
                   (int)d3[2] == c->text_context_dim &&
                   (g->datasets[6] = H5Dopen2(grp, "context", H5P_DEFAULT)) >= 0 &&
                   (!c->text_pooled_dim ||
                    (rows_of(grp, "pooled", 2, d2) == n && (int)d2[1] == c->text_pooled_dim &&
                     (g->datasets[7] = H5Dopen2(grp, "pooled", H5P_DEFAULT)) >= 0));
        if (grp >= 0) H5Gclose(grp);
        c->n_groups++; // (closed with the cache, whatever it holds)
        if (!good) {
            rc = LDMC_ERR(err,
                          "%s: group /buckets/%s lacks mean, std, c_size, c_crop, c_target or "
                          "class%s of matching sizes",
                          path, name, c->text_tokens ? ", context or pooled" : "");
            break;
        }
        g->h = (int)dims[1];
        g->w = (int)dims[2];
        g->count = n;
        g->first = c->count;
        c->count += n;
    }
    H5Gclose(buckets);
    if (rc != 0) ldmc_cache_close(c);
    return rc;
}

void ldmc_cache_close(ldmc_cache *c) {
    for (int g = 0; g < c->n_groups; g++)
        for (int k = 0; k < 9; k++)
            if (c->groups[g].datasets[k] > 0) H5Dclose((hid_t)c->groups[g].datasets[k]);
    c->n_groups = 0;
    free(c->empty_context);
    free(c->empty_pooled);
    c->empty_context = c->empty_pooled = NULL;
    if (c->hdf5_file >= 0) H5Fclose((hid_t)c->hdf5_file);
    c->hdf5_file = -1;
}

int ldmc_cache_group_of(const ldmc_cache *c, int64_t index) {
    for (int g = 0; g < c->n_groups; g++)
        if (index >= c->groups[g].first && index < c->groups[g].first + c->groups[g].count)
            return g;
    return -1;
}

void ldmc_cache_buckets(const ldmc_cache *c, ldmc_buckets *out) {
    out->count = c->n_groups;
    for (int g = 0; g < c->n_groups; g++) {
        out->height[g] = c->groups[g].height;
        out->width[g] = c->groups[g].width;
    }
}

// Reads (or writes) row `row` of a dataset with `rank` dimensions.
static int transfer_row(hid_t d, hid_t type, int rank, int64_t row, void *data, bool write) {
    hid_t space = H5Dget_space(d);
    hsize_t dims[4], start[4] = {(hsize_t)row, 0, 0, 0}, count[4];
    if (H5Sget_simple_extent_ndims(space) != rank) {
        H5Sclose(space);
        return -1;
    }
    H5Sget_simple_extent_dims(space, dims, NULL);
    for (int i = 0; i < rank; i++)
        count[i] = i ? dims[i] : 1;
    H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL);
    hid_t mem = H5Screate_simple(rank, count, NULL);
    herr_t rc = write ? H5Dwrite(d, type, mem, space, H5P_DEFAULT, data)
                      : H5Dread(d, type, mem, space, H5P_DEFAULT, data);
    H5Sclose(mem);
    H5Sclose(space);
    return rc < 0 ? -1 : 0;
}

int ldmc_cache_read(const ldmc_cache *c, int64_t index, ldmc_cache_entry *e, ldmc_err *err) {
    int g = ldmc_cache_group_of(c, index);
    if (g < 0) return LDMC_ERR(err, "%s: entry %lld does not exist", c->path, (long long)index);
    const int64_t *d = c->groups[g].datasets;
    int64_t row = index - c->groups[g].first;
    e->aesthetic = 6.0f;
    if (transfer_row(d[0], H5T_NATIVE_FLOAT, 4, row, e->mean, false) == 0 &&
        transfer_row(d[1], H5T_NATIVE_FLOAT, 4, row, e->std, false) == 0 &&
        transfer_row(d[2], H5T_NATIVE_INT32, 2, row, e->c_size, false) == 0 &&
        transfer_row(d[3], H5T_NATIVE_INT32, 2, row, e->c_crop, false) == 0 &&
        transfer_row(d[4], H5T_NATIVE_INT32, 2, row, e->c_target, false) == 0 &&
        transfer_row(d[5], H5T_NATIVE_INT64, 1, row, &e->class_id, false) == 0 &&
        (!e->context || d[6] < 0 ||
         transfer_row(d[6], H5T_NATIVE_FLOAT, 3, row, e->context, false) == 0) &&
        (d[8] < 0 || transfer_row(d[8], H5T_NATIVE_FLOAT, 1, row, &e->aesthetic, false) == 0) &&
        (!e->pooled || d[7] < 0 ||
         transfer_row(d[7], H5T_NATIVE_FLOAT, 2, row, e->pooled, false) == 0))
        return 0;
    return LDMC_ERR(err, "%s: cannot read entry %lld of /buckets/%dx%d", c->path, (long long)index,
                    c->groups[g].height, c->groups[g].width);
}

// ---- writing
// --------------------------------------------------------------------------------------

struct ldmc_cache_writer {
    hid_t file, group;
    hid_t mean, std, c_size, c_crop, c_target, class_id, sample, caption, context, pooled,
        aesthetic;
    int64_t row, count;
    int h, w, channels;
    ldmc_cache_text text;
    char path[1024];
};

static hid_t make_dataset(hid_t group, const char *name, hid_t type, int rank,
                          const hsize_t *dims) {
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t d = H5Dcreate2(group, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Sclose(space);
    return d;
}

static int write_attr(hid_t obj, const char *name, hid_t type, const void *value) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = a >= 0 ? H5Awrite(a, type, value) : -1;
    if (a >= 0) H5Aclose(a);
    H5Sclose(space);
    return rc < 0 ? -1 : 0;
}

// The empty caption's embeddings under /text_empty.
static int write_empty(hid_t file, const ldmc_cache_text *t) {
    hid_t g = H5Gcreate2(file, "text_empty", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
          f16 = f16_type();
    hsize_t cdims[2] = {(hsize_t)t->tokens, (hsize_t)t->context_dim},
            pdims[1] = {(hsize_t)t->pooled_dim};
    hid_t c = g >= 0 ? make_dataset(g, "context", f16, 2, cdims) : -1;
    int rc = c >= 0 && H5Dwrite(c, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                                t->empty_context) >= 0
                 ? 0
                 : -1;
    if (c >= 0) H5Dclose(c);
    if (rc == 0 && t->pooled_dim) {
        hid_t p = make_dataset(g, "pooled", f16, 1, pdims);
        rc = p >= 0 && H5Dwrite(p, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                                t->empty_pooled) >= 0
                 ? 0
                 : -1;
        if (p >= 0) H5Dclose(p);
    }
    H5Tclose(f16);
    if (g >= 0) H5Gclose(g);
    return rc;
}

int ldmc_cache_create(ldmc_cache_writer **out, const char *path, double scale_factor, int channels,
                      const ldmc_cache_text *text, ldmc_err *err) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    ldmc_cache_writer *w = calloc(1, sizeof *w);
    if (!w) return LDMC_ERR(err, "out of memory");
    snprintf(w->path, sizeof w->path, "%s", path);
    w->channels = channels;
    w->group = -1;
    if (text && text->tokens) w->text = *text;
    w->file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (w->file < 0) {
        free(w);
        return LDMC_ERR(err, "%s: cannot create the HDF5 file", path);
    }
    hid_t str = H5Tcopy(H5T_C_S1);
    const char format[64] = "ldmc latent cache 1";
    H5Tset_size(str, sizeof format);
    int rc = write_attr(w->file, "format", str, format) |
             write_attr(w->file, "scale_factor", H5T_NATIVE_DOUBLE, &scale_factor) |
             write_attr(w->file, "latent_channels", H5T_NATIVE_INT, &channels) |
             write_attr(w->file, "text_tokens", H5T_NATIVE_INT, &w->text.tokens) |
             write_attr(w->file, "text_context_dim", H5T_NATIVE_INT, &w->text.context_dim) |
             write_attr(w->file, "text_pooled_dim", H5T_NATIVE_INT, &w->text.pooled_dim);
    if (w->text.tokens) rc |= write_empty(w->file, &w->text);
    H5Tclose(str);
    hid_t buckets = H5Gcreate2(w->file, "buckets", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (buckets >= 0) H5Gclose(buckets);
    if (rc != 0 || buckets < 0) {
        H5Fclose(w->file);
        free(w);
        return LDMC_ERR(err, "%s: cannot write the cache header", path);
    }
    *out = w;
    return 0;
}

static void close_group(ldmc_cache_writer *w) {
    hid_t *ds[] = {&w->mean,   &w->std,     &w->c_size,  &w->c_crop, &w->c_target, &w->class_id,
                   &w->sample, &w->caption, &w->context, &w->pooled, &w->aesthetic};
    for (size_t i = 0; i < sizeof ds / sizeof ds[0]; i++)
        if (*ds[i] > 0) H5Dclose(*ds[i]), *ds[i] = -1;
    if (w->group >= 0) H5Gclose(w->group);
    w->group = -1;
}

int ldmc_cache_begin_group(ldmc_cache_writer *w, int height, int width, int h, int lw,
                           int64_t count, ldmc_err *err) {
    close_group(w);
    char name[96];
    snprintf(name, sizeof name, "buckets/%dx%d", height, width);
    w->group = H5Gcreate2(w->file, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t lat[4] = {(hsize_t)count, (hsize_t)h, (hsize_t)lw, (hsize_t)w->channels},
            pair[2] = {(hsize_t)count, 2}, one[1] = {(hsize_t)count};
    hid_t str = H5Tcopy(H5T_C_S1);
    H5Tset_size(str, H5T_VARIABLE);
    w->mean = make_dataset(w->group, "mean", H5T_NATIVE_FLOAT, 4, lat);
    w->std = make_dataset(w->group, "std", H5T_NATIVE_FLOAT, 4, lat);
    w->c_size = make_dataset(w->group, "c_size", H5T_NATIVE_INT32, 2, pair);
    w->c_crop = make_dataset(w->group, "c_crop", H5T_NATIVE_INT32, 2, pair);
    w->c_target = make_dataset(w->group, "c_target", H5T_NATIVE_INT32, 2, pair);
    w->class_id = make_dataset(w->group, "class", H5T_NATIVE_INT64, 1, one);
    w->sample = make_dataset(w->group, "sample", H5T_NATIVE_INT32, 1, one);
    w->caption = make_dataset(w->group, "caption", str, 1, one);
    w->aesthetic = make_dataset(w->group, "aesthetic", H5T_NATIVE_FLOAT, 1, one);
    H5Tclose(str);
    w->context = w->pooled = -1;
    bool text_ok = true;
    if (w->text.tokens) {
        hid_t f16 = f16_type();
        hsize_t cdims[3] = {(hsize_t)count, (hsize_t)w->text.tokens, (hsize_t)w->text.context_dim},
                pdims[2] = {(hsize_t)count, (hsize_t)w->text.pooled_dim};
        w->context = make_dataset(w->group, "context", f16, 3, cdims);
        if (w->text.pooled_dim) w->pooled = make_dataset(w->group, "pooled", f16, 2, pdims);
        H5Tclose(f16);
        text_ok = w->context >= 0 && (!w->text.pooled_dim || w->pooled >= 0);
    }
    w->row = 0;
    w->count = count;
    w->h = h;
    w->w = lw;
    if (w->group < 0 || w->mean < 0 || w->std < 0 || w->c_size < 0 || w->c_crop < 0 ||
        w->c_target < 0 || w->class_id < 0 || w->sample < 0 || w->caption < 0 || w->aesthetic < 0 ||
        !text_ok)
        return LDMC_ERR(err, "%s: cannot create /%s", w->path, name);
    return 0;
}

static int write_row(hid_t d, hid_t type, int rank, int64_t row, const void *data) {
    return transfer_row(d, type, rank, row, (void *)data, true);
}

int ldmc_cache_append(ldmc_cache_writer *w, const float *mean, const float *std,
                      const int32_t c_size[2], const int32_t c_crop[2], const int32_t c_target[2],
                      int64_t class_id, float aesthetic, int32_t sample, const char *caption,
                      const float *context, const float *pooled, ldmc_err *err) {
    if (w->row >= w->count)
        return LDMC_ERR(err, "%s: more entries than the group was sized for", w->path);
    if (w->text.tokens && (!context || (w->text.pooled_dim && !pooled)))
        return LDMC_ERR(err, "%s: an entry without its text embeddings", w->path);
    hid_t str = H5Tcopy(H5T_C_S1);
    H5Tset_size(str, H5T_VARIABLE);
    const char *text = caption ? caption : "";
    int rc = write_row(w->mean, H5T_NATIVE_FLOAT, 4, w->row, mean) |
             write_row(w->std, H5T_NATIVE_FLOAT, 4, w->row, std) |
             write_row(w->c_size, H5T_NATIVE_INT32, 2, w->row, c_size) |
             write_row(w->c_crop, H5T_NATIVE_INT32, 2, w->row, c_crop) |
             write_row(w->c_target, H5T_NATIVE_INT32, 2, w->row, c_target) |
             write_row(w->class_id, H5T_NATIVE_INT64, 1, w->row, &class_id) |
             write_row(w->sample, H5T_NATIVE_INT32, 1, w->row, &sample) |
             write_row(w->caption, str, 1, w->row, &text) |
             write_row(w->aesthetic, H5T_NATIVE_FLOAT, 1, w->row, &aesthetic);
    if (w->text.tokens) rc |= write_row(w->context, H5T_NATIVE_FLOAT, 3, w->row, context);
    if (w->text.pooled_dim) rc |= write_row(w->pooled, H5T_NATIVE_FLOAT, 2, w->row, pooled);
    H5Tclose(str);
    w->row++;
    return rc ? LDMC_ERR(err, "%s: write failed", w->path) : 0;
}

int ldmc_cache_finish(ldmc_cache_writer *w, ldmc_err *err) {
    close_group(w);
    herr_t rc = H5Fclose(w->file);
    char path[1024];
    snprintf(path, sizeof path, "%s", w->path);
    free(w);
    return rc < 0 ? LDMC_ERR(err, "%s: cannot finish the file", path) : 0;
}
