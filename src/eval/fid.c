// FID and the Inception Score (see fid.h). Tested by tests/test_eval.c.
#include "eval/fid.h"

#include <cblas.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zip.h>

#include "data/image.h"

// ---- preprocessing ------------------------------------------------------------------------------

// PyTorch's upsample_bilinear2d (align_corners=False) in float, its order of operations:
// src = (dst + 0.5) in/out - 0.5 clamped at 0, neighbours i0 and i0 + (i0 < in - 1).
static void resize_torch(const float *src, int w, int h, float *dst, int S) {
    const float sh = (float)h / S, sw = (float)w / S;
    for (int y = 0; y < S; y++) {
        float fy = sh * (y + 0.5f) - 0.5f;
        fy = fy < 0 ? 0 : fy;
        int y0 = (int)fy, y1 = y0 + (y0 < h - 1);
        float ly1 = fy - y0, ly0 = 1.0f - ly1;
        for (int x = 0; x < S; x++) {
            float fx = sw * (x + 0.5f) - 0.5f;
            fx = fx < 0 ? 0 : fx;
            int x0 = (int)fx, x1 = x0 + (x0 < w - 1);
            float lx1 = fx - x0, lx0 = 1.0f - lx1;
            for (int c = 0; c < 3; c++) {
                const float a = src[((size_t)y0 * w + x0) * 3 + c],
                            b = src[((size_t)y0 * w + x1) * 3 + c],
                            d = src[((size_t)y1 * w + x0) * 3 + c],
                            e = src[((size_t)y1 * w + x1) * 3 + c];
                dst[((size_t)y * S + x) * 3 + c] =
                    ly0 * (lx0 * a + lx1 * b) + ly1 * (lx0 * d + lx1 * e);
            }
        }
    }
}

// TF1's legacy bilinear (torch-fidelity's interpolate_bilinear_2d_like_tensorflow1x): src =
// dst in/out (no half-pixel offset), in float on [0, 255].
static void resize_tf(const float *src, int w, int h, float *dst, int S) {
    const float sh = (float)h / S, sw = (float)w / S;
    for (int y = 0; y < S; y++) {
        float fy = (float)y * sh;
        int y0 = (int)floorf(fy), y1 = y0 + 1 < h ? y0 + 1 : h - 1;
        float dy = fy - (float)y0;
        for (int x = 0; x < S; x++) {
            float fx = (float)x * sw;
            int x0 = (int)floorf(fx), x1 = x0 + 1 < w ? x0 + 1 : w - 1;
            float dx = fx - (float)x0;
            for (int c = 0; c < 3; c++) {
                const float a = src[((size_t)y0 * w + x0) * 3 + c],
                            b = src[((size_t)y0 * w + x1) * 3 + c],
                            d = src[((size_t)y1 * w + x0) * 3 + c],
                            e = src[((size_t)y1 * w + x1) * 3 + c];
                float top = a + (b - a) * dx, bottom = d + (e - d) * dx;
                dst[((size_t)y * S + x) * 3 + c] = top + (bottom - top) * dy;
            }
        }
    }
}

void ldmc_fid_preprocess_image(const uint8_t *rgb, int w, int h, ldmc_fid_preprocess mode,
                               float *out) {
    const int S = LDMC_INCEPTION_SIZE;
    const size_t n = (size_t)w * h * 3;
    float *v = malloc(n * sizeof *v);
    LDMC_CHECK(v, "out of memory");
    for (size_t i = 0; i < n; i++)
        v[i] = mode == LDMC_FID_PYTORCH ? (float)rgb[i] / 255.0f : (float)rgb[i];
    if (mode == LDMC_FID_PYTORCH) {
        resize_torch(v, w, h, out, S);
        for (size_t i = 0; i < (size_t)S * S * 3; i++)
            out[i] = 2.0f * out[i] - 1.0f;
    } else {
        resize_tf(v, w, h, out, S);
        for (size_t i = 0; i < (size_t)S * S * 3; i++)
            out[i] = (out[i] - 128.0f) / 128.0f;
    }
    free(v);
}

// ---- features -----------------------------------------------------------------------------------

typedef struct progress_line {
    bool on, tty;
    int total;
} progress_line;

static void progress(const progress_line *p, int done) {
    if (!p->on) return;
    if (p->tty)
        printf("\rInception features: %d/%d images   ", done, p->total);
    else if (done == p->total)
        printf("Inception features: %d images\n", p->total);
    if (p->tty && done == p->total) printf("\n");
    fflush(stdout);
}

static int features_alloc(ldmc_fid_features *f, int n, ldmc_err *err) {
    f->n = n;
    f->pool3 = malloc((size_t)(n ? n : 1) * LDMC_INCEPTION_FEATURES * sizeof *f->pool3);
    f->logits = malloc((size_t)(n ? n : 1) * LDMC_INCEPTION_CLASSES * sizeof *f->logits);
    if (!f->pool3 || !f->logits) {
        ldmc_fid_features_free(f);
        return LDMC_ERR(err, "out of memory for the features of %d images", n);
    }
    return 0;
}

// Runs a batch of preprocessed inputs and stores rows [at, at + b).
static void run_batch(ldmc_ctx *ctx, const ldmc_inception *m, const float *x, int b, int at,
                      float *pool3, float *logits, ldmc_fid_features *out) {
    ldmc_inception_forward(ctx, m, x, b, pool3, logits);
    for (size_t i = 0; i < (size_t)b * LDMC_INCEPTION_FEATURES; i++)
        out->pool3[(size_t)at * LDMC_INCEPTION_FEATURES + i] = pool3[i];
    for (size_t i = 0; i < (size_t)b * LDMC_INCEPTION_CLASSES; i++)
        out->logits[(size_t)at * LDMC_INCEPTION_CLASSES + i] = logits[i];
}

typedef struct batch_buffers {
    float *x, *pool3, *logits;
} batch_buffers;

static int buffers_alloc(batch_buffers *b, int batch, ldmc_err *err) {
    const size_t S = LDMC_INCEPTION_SIZE;
    b->x = malloc((size_t)batch * S * S * 3 * sizeof *b->x);
    b->pool3 = malloc((size_t)batch * LDMC_INCEPTION_FEATURES * sizeof *b->pool3);
    b->logits = malloc((size_t)batch * LDMC_INCEPTION_CLASSES * sizeof *b->logits);
    if (b->x && b->pool3 && b->logits) return 0;
    free(b->x), free(b->pool3), free(b->logits);
    *b = (batch_buffers){0};
    return LDMC_ERR(err, "out of memory");
}

static void buffers_free(batch_buffers *b) { free(b->x), free(b->pool3), free(b->logits); }

int ldmc_fid_image_features(ldmc_ctx *ctx, const ldmc_inception *m, const uint8_t *images, int n,
                            int w, int h, const ldmc_fid_options *o, ldmc_fid_features *out,
                            ldmc_err *err) {
    *out = (ldmc_fid_features){0};
    const int batch = o->batch > 0 ? o->batch : 8;
    batch_buffers b;
    if (buffers_alloc(&b, batch, err) != 0) return -1;
    if (features_alloc(out, n, err) != 0) {
        buffers_free(&b);
        return -1;
    }
    const size_t in = (size_t)LDMC_INCEPTION_SIZE * LDMC_INCEPTION_SIZE * 3;
    progress_line p = {!o->quiet, isatty(fileno(stdout)), n};
    for (int at = 0; at < n; at += batch) {
        int k = n - at < batch ? n - at : batch;
        for (int j = 0; j < k; j++)
            ldmc_fid_preprocess_image(images + (size_t)(at + j) * w * h * 3, w, h, o->mode,
                                      b.x + j * in);
        run_batch(ctx, m, b.x, k, at, b.pool3, b.logits, out);
        progress(&p, at + k);
    }
    buffers_free(&b);
    return 0;
}

// pytorch-fid's IMAGE_EXTENSIONS that ldmc decodes (JPEG and PNG); the others are named.
static int image_kind(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot) return 0;
    char ext[8] = "";
    for (int i = 0; i < 7 && dot[1 + i]; i++)
        ext[i] = (char)tolower((unsigned char)dot[1 + i]);
    if (!strcmp(ext, "png") || !strcmp(ext, "jpg") || !strcmp(ext, "jpeg")) return 1;
    const char *other[] = {"bmp", "pgm", "ppm", "tif", "tiff", "webp"};
    for (int i = 0; i < 6; i++)
        if (!strcmp(ext, other[i])) return 2;
    return 0;
}

static int compare_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int ldmc_fid_folder_features(ldmc_ctx *ctx, const ldmc_inception *m, const char *dir,
                             const ldmc_fid_options *o, ldmc_fid_features *out, int *skipped,
                             ldmc_err *err) {
    *out = (ldmc_fid_features){0};
    *skipped = 0;
    DIR *d = opendir(dir);
    if (!d) return LDMC_ERR(err, "%s: cannot read the folder: %s", dir, strerror(errno));
    char **names = NULL;
    int n = 0, cap = 0, unsupported = 0;
    bool oom = false;
    struct dirent *e;
    while (!oom && (e = readdir(d))) {
        int kind = image_kind(e->d_name);
        if (kind == 2) {
            if (unsupported++ < 3)
                fprintf(stderr, "%s/%s: left out (ldmc reads PNG and JPEG)\n", dir, e->d_name);
            continue;
        }
        if (kind != 1) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            char **grown = realloc(names, (size_t)cap * sizeof *names);
            if (!grown) {
                oom = true;
                break;
            }
            names = grown;
        }
        if (!(names[n] = strdup(e->d_name))) oom = true;
        n += !oom;
    }
    closedir(d);
    if (oom) {
        for (int i = 0; i < n; i++)
            free(names[i]);
        free(names);
        return LDMC_ERR(err, "%s: out of memory listing the folder", dir);
    }
    *skipped += unsupported;
    if (n == 0) {
        free(names);
        return LDMC_ERR(err, "%s: no PNG or JPEG images", dir);
    }
    qsort(names, (size_t)n, sizeof *names, compare_names);
    const int batch = o->batch > 0 ? o->batch : 8;
    batch_buffers b = {0};
    int rc = buffers_alloc(&b, batch, err);
    if (rc == 0 && (rc = features_alloc(out, n, err)) != 0)
        buffers_free(&b), b = (batch_buffers){0};
    const size_t in = (size_t)LDMC_INCEPTION_SIZE * LDMC_INCEPTION_SIZE * 3;
    progress_line p = {!o->quiet, isatty(fileno(stdout)), n};
    int kept = 0, k = 0, bad = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        ldmc_image img;
        ldmc_err load_err = {0};
        if (ldmc_image_load(path, 0, 0, &img, &load_err) != 0) {
            if (bad++ < 5) fprintf(stderr, "left out: %s\n", load_err.message);
        } else {
            ldmc_fid_preprocess_image(img.pixels, img.width, img.height, o->mode, b.x + k * in);
            ldmc_image_free(&img);
            k++;
        }
        if (k == batch || (i == n - 1 && k)) {
            run_batch(ctx, m, b.x, k, kept, b.pool3, b.logits, out);
            kept += k, k = 0;
            progress(&p, kept + bad);
        }
    }
    if (bad > 5) fprintf(stderr, "... %d images left out in all\n", bad);
    *skipped += bad;
    out->n = kept;
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    buffers_free(&b);
    if (rc == 0 && kept == 0) rc = LDMC_ERR(err, "%s: none of the %d images could be read", dir, n);
    if (rc != 0) ldmc_fid_features_free(out);
    return rc;
}

void ldmc_fid_features_free(ldmc_fid_features *f) {
    free(f->pool3), free(f->logits);
    *f = (ldmc_fid_features){0};
}

// ---- statistics ---------------------------------------------------------------------------------

int ldmc_fid_stats_compute(const double *x, int n, int d, ldmc_fid_stats *out, ldmc_err *err) {
    *out = (ldmc_fid_stats){.d = d, .n = n};
    if (n < 2)
        return LDMC_ERR(err, "statistics of %d image%s: at least 2 are needed", n,
                        n == 1 ? "" : "s");
    out->mu = calloc((size_t)d, sizeof *out->mu);
    out->sigma = malloc((size_t)d * d * sizeof *out->sigma);
    double *c = malloc((size_t)n * d * sizeof *c);
    if (!out->mu || !out->sigma || !c) {
        free(c);
        ldmc_fid_stats_free(out);
        return LDMC_ERR(err, "out of memory");
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++)
            out->mu[j] += x[(size_t)i * d + j];
    for (int j = 0; j < d; j++)
        out->mu[j] /= n;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++)
            c[(size_t)i * d + j] = x[(size_t)i * d + j] - out->mu[j];
    // sigma = cᵀ c / (n - 1), numpy.cov's unbiased estimate
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, n, 1.0 / (n - 1), c, d, c, d, 0.0,
                out->sigma, d);
    free(c);
    return 0;
}

void ldmc_fid_stats_free(ldmc_fid_stats *s) {
    free(s->mu), free(s->sigma);
    *s = (ldmc_fid_stats){0};
}

// The .npy format (version 1.0/2.0): magic, version, header length, a Python dict literal with
// descr, fortran_order and shape, then the data.
static int npy_parse(const char *name, const unsigned char *b, size_t n, int *ndim,
                     int64_t shape[2], bool *f32, const unsigned char **data, ldmc_err *err) {
    if (n < 10 || memcmp(b, "\x93NUMPY", 6) != 0)
        return LDMC_ERR(err, "%s: not a .npy array", name);
    size_t hl = b[6] == 1 ? (size_t)b[8] | (size_t)b[9] << 8
                : n >= 12
                    ? (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24
                    : (size_t)-1;
    size_t start = b[6] == 1 ? 10 : 12;
    if (hl == (size_t)-1 || start + hl > n)
        return LDMC_ERR(err, "%s: a truncated .npy header", name);
    char header[1024];
    size_t len = hl < sizeof header - 1 ? hl : sizeof header - 1;
    memcpy(header, b + start, len);
    header[len] = '\0';
    const char *descr = strstr(header, "'descr'");
    if (!descr || !strstr(header, "'fortran_order': False"))
        return LDMC_ERR(err, "%s: expected a C-order array (header %s)", name, header);
    if (strstr(descr, "'<f8'"))
        *f32 = false;
    else if (strstr(descr, "'<f4'"))
        *f32 = true;
    else
        return LDMC_ERR(err, "%s: expected float64 or float32 values (header %s)", name, header);
    const char *s = strstr(header, "'shape'");
    s = s ? strchr(s, '(') : NULL;
    if (!s) return LDMC_ERR(err, "%s: no shape in the header %s", name, header);
    *ndim = 0;
    for (s++; *s && *s != ')';) {
        while (*s == ' ' || *s == ',')
            s++;
        if (*s == ')') break;
        char *end;
        long long v = strtoll(s, &end, 10);
        if (end == s || v < 0 || *ndim == 2) return LDMC_ERR(err, "%s: shape %s", name, header);
        shape[(*ndim)++] = v;
        s = end;
    }
    size_t count = 1;
    for (int i = 0; i < *ndim; i++)
        count *= (size_t)shape[i];
    if (start + hl + count * (*f32 ? 4 : 8) > n)
        return LDMC_ERR(err, "%s: %zu values do not fit in %zu bytes", name, count, n - start - hl);
    *data = b + start + hl;
    return 0;
}

static double *npy_values(const unsigned char *data, size_t count, bool f32) {
    double *v = malloc((count ? count : 1) * sizeof *v);
    if (!v) return NULL;
    for (size_t i = 0; i < count; i++) {
        if (f32) {
            float f;
            memcpy(&f, data + 4 * i, 4);
            v[i] = f;
        } else {
            memcpy(&v[i], data + 8 * i, 8);
        }
    }
    return v;
}

// The widest statistics read (pytorch-fid's layers give 64, 192, 768 or 2048 features).
enum { MAX_STATS_DIM = 8192 };

// A member of the archive, read whole.
static unsigned char *zip_member(zip_t *z, const char *path, const char *name, size_t *size,
                                 ldmc_err *err) {
    zip_stat_t st;
    if (zip_stat(z, name, 0, &st) != 0 || !(st.valid & ZIP_STAT_SIZE)) {
        LDMC_ERR(err, "%s: no %s (pytorch-fid's statistics hold mu and sigma)", path, name);
        return NULL;
    }
    if (st.size > (zip_uint64_t)MAX_STATS_DIM * MAX_STATS_DIM * 8 + 65536) { // sigma's bound
        LDMC_ERR(err, "%s: %s is too large", path, name);
        return NULL;
    }
    unsigned char *b = malloc(st.size ? st.size : 1);
    zip_file_t *f = zip_fopen(z, name, 0);
    zip_int64_t got = f && b ? zip_fread(f, b, st.size) : -1;
    if (f) zip_fclose(f);
    if (!b || got != (zip_int64_t)st.size) {
        free(b);
        LDMC_ERR(err, "%s: cannot read %s: %s", path, name, zip_strerror(z));
        return NULL;
    }
    *size = st.size;
    return b;
}

int ldmc_fid_stats_read(const char *path, ldmc_fid_stats *out, ldmc_err *err) {
    *out = (ldmc_fid_stats){0};
    int zerr = 0;
    zip_t *z = zip_open(path, ZIP_RDONLY, &zerr);
    if (!z) {
        zip_error_t e;
        zip_error_init_with_code(&e, zerr);
        LDMC_ERR(err, "%s: not a .npz (zip) file: %s", path, zip_error_strerror(&e));
        zip_error_fini(&e);
        return -1;
    }
    size_t n_mu, n_sigma;
    unsigned char *mu = zip_member(z, path, "mu.npy", &n_mu, err);
    unsigned char *sigma = mu ? zip_member(z, path, "sigma.npy", &n_sigma, err) : NULL;
    zip_discard(z);
    int rc = mu && sigma ? 0 : -1, nd_mu = 0, nd_sigma = 0;
    int64_t s_mu[2] = {0}, s_sigma[2] = {0};
    bool f_mu = false, f_sigma = false;
    const unsigned char *d_mu = NULL, *d_sigma = NULL;
    char what[4200];
    snprintf(what, sizeof what, "%s: mu", path);
    if (rc == 0) rc = npy_parse(what, mu, n_mu, &nd_mu, s_mu, &f_mu, &d_mu, err);
    snprintf(what, sizeof what, "%s: sigma", path);
    if (rc == 0) rc = npy_parse(what, sigma, n_sigma, &nd_sigma, s_sigma, &f_sigma, &d_sigma, err);
    if (rc == 0 && (nd_mu != 1 || nd_sigma != 2 || s_sigma[0] != s_mu[0] || s_sigma[1] != s_mu[0] ||
                    s_mu[0] < 1 || s_mu[0] > MAX_STATS_DIM))
        rc = LDMC_ERR(err, "%s: mu must be (d) and sigma (d, d); got %s(%lld) and (%lld, %lld)",
                      path, nd_mu == 1 ? "" : "not ", (long long)s_mu[0], (long long)s_sigma[0],
                      (long long)s_sigma[1]);
    if (rc == 0) {
        out->d = (int)s_mu[0];
        out->mu = npy_values(d_mu, (size_t)out->d, f_mu);
        out->sigma = npy_values(d_sigma, (size_t)out->d * out->d, f_sigma);
        if (!out->mu || !out->sigma) {
            ldmc_fid_stats_free(out);
            rc = LDMC_ERR(err, "out of memory");
        }
    }
    free(mu), free(sigma);
    return rc;
}

// A float64 C-order .npy of a 1-d or 2-d array, in memory.
static unsigned char *npy_encode(const double *v, int ndim, const int64_t *shape, size_t *size) {
    char header[128];
    int hl = ndim == 1
                 ? snprintf(header, sizeof header,
                            "{'descr': '<f8', 'fortran_order': False, 'shape': (%lld,), }",
                            (long long)shape[0])
                 : snprintf(header, sizeof header,
                            "{'descr': '<f8', 'fortran_order': False, 'shape': (%lld, %lld), }",
                            (long long)shape[0], (long long)shape[1]);
    int total = 10 + hl + 1, pad = (64 - total % 64) % 64; // numpy aligns the data to 64 bytes
    size_t count = ndim == 1 ? (size_t)shape[0] : (size_t)shape[0] * shape[1];
    size_t n = (size_t)(total + pad) + count * 8;
    unsigned char *b = malloc(n);
    if (!b) return NULL;
    memcpy(b, "\x93NUMPY\x01\x00", 8);
    int len = hl + pad + 1;
    b[8] = (unsigned char)(len & 0xff), b[9] = (unsigned char)(len >> 8);
    memcpy(b + 10, header, (size_t)hl);
    memset(b + 10 + hl, ' ', (size_t)pad);
    b[10 + hl + pad] = '\n';
    memcpy(b + total + pad, v, count * 8);
    *size = n;
    return b;
}

int ldmc_fid_stats_write(const char *path, const ldmc_fid_stats *s, ldmc_err *err) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    remove(tmp);
    int zerr = 0;
    zip_t *z = zip_open(tmp, ZIP_CREATE | ZIP_EXCL, &zerr);
    if (!z) return LDMC_ERR(err, "%s: cannot create", tmp);
    size_t n_mu = 0, n_sigma = 0;
    unsigned char *mu = npy_encode(s->mu, 1, (int64_t[]){s->d}, &n_mu);
    unsigned char *sigma = npy_encode(s->sigma, 2, (int64_t[]){s->d, s->d}, &n_sigma);
    zip_source_t *a = mu ? zip_source_buffer(z, mu, n_mu, 0) : NULL;
    zip_source_t *b = sigma ? zip_source_buffer(z, sigma, n_sigma, 0) : NULL;
    int rc = 0;
    if (!a || zip_file_add(z, "mu.npy", a, ZIP_FL_OVERWRITE) < 0) {
        if (a) zip_source_free(a);
        rc = -1;
    }
    if (!b || zip_file_add(z, "sigma.npy", b, ZIP_FL_OVERWRITE) < 0) {
        if (b) zip_source_free(b);
        rc = -1;
    }
    if (rc != 0) {
        LDMC_ERR(err, "%s: cannot add the arrays: %s", tmp, zip_strerror(z));
        zip_discard(z);
    } else if (zip_close(z) != 0) {
        rc = LDMC_ERR(err, "%s: cannot write: %s", tmp, zip_strerror(z));
        zip_discard(z);
    }
    free(mu), free(sigma);
    if (rc == 0 && rename(tmp, path) != 0)
        rc = LDMC_ERR(err, "%s: cannot write: %s", path, strerror(errno));
    if (rc != 0) remove(tmp);
    return rc;
}

// ---- the distance -------------------------------------------------------------------------------

// The eigenvalues (ascending) and, when vectors, the eigenvectors (columns, in a) of the
// symmetric d x d matrix a (row-major; overwritten).
static int symmetric_eigen(double *a, int d, bool vectors, double *w, ldmc_err *err) {
    lapack_int info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, vectors ? 'V' : 'N', 'U', d, a, d, w);
    if (info != 0)
        return LDMC_ERR(err, "LAPACK dsyevd failed (info %d) on a %dx%d covariance", (int)info, d,
                        d);
    return 0;
}

int ldmc_fid_distance(const ldmc_fid_stats *s1, const ldmc_fid_stats *s2, double *fid,
                      ldmc_err *err) {
    if (s1->d != s2->d)
        return LDMC_ERR(err, "statistics of %d and %d features: not the same network layer", s1->d,
                        s2->d);
    const int d = s1->d;
    const size_t dd = (size_t)d * d;
    double *v = malloc(dd * sizeof *v), *w = malloc((size_t)d * sizeof *w),
           *r = malloc(dd * sizeof *r), *t = malloc(dd * sizeof *t);
    int rc = v && w && r && t ? 0 : LDMC_ERR(err, "out of memory");
    if (rc == 0) {
        memcpy(v, s1->sigma, dd * sizeof *v);
        rc = symmetric_eigen(v, d, true, w, err);
    }
    if (rc == 0) {
        // r = V diag(√max(λ, 0)) Vᵀ = √Σ1
        for (int i = 0; i < d; i++)
            for (int k = 0; k < d; k++)
                t[(size_t)i * d + k] = v[(size_t)i * d + k] * sqrt(w[k] > 0 ? w[k] : 0);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d, d, d, 1, t, d, v, d, 0, r, d);
        // t = √Σ1 Σ2 √Σ1, symmetric positive semi-definite, similar to Σ1 Σ2
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, d, d, 1, r, d, s2->sigma, d, 0, v,
                    d);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, d, d, 1, v, d, r, d, 0, t, d);
        for (int i = 0; i < d; i++)
            for (int k = 0; k < i; k++) {
                double m = (t[(size_t)i * d + k] + t[(size_t)k * d + i]) / 2;
                t[(size_t)i * d + k] = t[(size_t)k * d + i] = m;
            }
        rc = symmetric_eigen(t, d, false, w, err);
    }
    if (rc == 0) {
        double tr_covmean = 0, tr1 = 0, tr2 = 0, diff = 0;
        for (int i = 0; i < d; i++) {
            tr_covmean += sqrt(w[i] > 0 ? w[i] : 0);
            tr1 += s1->sigma[(size_t)i * d + i], tr2 += s2->sigma[(size_t)i * d + i];
            double e = s1->mu[i] - s2->mu[i];
            diff += e * e;
        }
        *fid = diff + tr1 + tr2 - 2 * tr_covmean;
    }
    free(v), free(w), free(r), free(t);
    return rc;
}

// ---- the Inception Score ------------------------------------------------------------------------

// MT19937 with numpy's legacy seeding of an integer (init_genrand).
typedef struct mt19937 {
    uint32_t s[624];
    int i;
} mt19937;

static void mt_seed(mt19937 *m, uint32_t seed) {
    m->s[0] = seed;
    for (int i = 1; i < 624; i++)
        m->s[i] = 1812433253u * (m->s[i - 1] ^ (m->s[i - 1] >> 30)) + (uint32_t)i;
    m->i = 624;
}

static uint32_t mt_next(mt19937 *m) {
    if (m->i >= 624) {
        for (int k = 0; k < 624; k++) {
            uint32_t y = (m->s[k] & 0x80000000u) | (m->s[(k + 1) % 624] & 0x7fffffffu);
            m->s[k] = m->s[(k + 397) % 624] ^ (y >> 1) ^ ((y & 1) ? 0x9908b0dfu : 0);
        }
        m->i = 0;
    }
    uint32_t y = m->s[m->i++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

// numpy's random_interval: a value in [0, max] by masked rejection.
static uint32_t mt_interval(mt19937 *m, uint32_t max) {
    if (max == 0) return 0;
    uint32_t mask = max;
    mask |= mask >> 1, mask |= mask >> 2, mask |= mask >> 4, mask |= mask >> 8, mask |= mask >> 16;
    uint32_t v;
    while ((v = mt_next(m) & mask) > max)
        ;
    return v;
}

void ldmc_numpy_permutation(uint32_t seed, int n, int *perm) {
    mt19937 m;
    mt_seed(&m, seed);
    for (int i = 0; i < n; i++)
        perm[i] = i;
    for (int i = n - 1; i >= 1; i--) { // RandomState.shuffle's loop
        int j = (int)mt_interval(&m, (uint32_t)i), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
}

int ldmc_inception_score(const double *logits, int n, int k, int splits, bool shuffle, double *mean,
                         double *std, ldmc_err *err) {
    if (splits < 1 || n < splits)
        return LDMC_ERR(err, "Inception Score: %d images in %d splits", n, splits);
    int *order = malloc((size_t)n * sizeof *order);
    double *p = malloc((size_t)n * k * sizeof *p), *logp = malloc((size_t)n * k * sizeof *logp),
           *q = malloc((size_t)k * sizeof *q), *scores = malloc((size_t)splits * sizeof *scores);
    if (!order || !p || !logp || !q || !scores) {
        free(order), free(p), free(logp), free(q), free(scores);
        return LDMC_ERR(err, "out of memory");
    }
    if (shuffle)
        ldmc_numpy_permutation(2020, n, order);
    else
        for (int i = 0; i < n; i++)
            order[i] = i;
    for (int i = 0; i < n; i++) { // softmax and log_softmax in double
        const double *l = logits + (size_t)order[i] * k;
        double mx = l[0], sum = 0;
        for (int c = 1; c < k; c++)
            mx = l[c] > mx ? l[c] : mx;
        for (int c = 0; c < k; c++)
            sum += exp(l[c] - mx);
        double lse = mx + log(sum);
        for (int c = 0; c < k; c++) {
            logp[(size_t)i * k + c] = l[c] - lse;
            p[(size_t)i * k + c] = exp(l[c] - lse);
        }
    }
    double total = 0;
    for (int s = 0; s < splits; s++) {
        int a = (int)((int64_t)s * n / splits), b = (int)((int64_t)(s + 1) * n / splits);
        for (int c = 0; c < k; c++) {
            q[c] = 0;
            for (int i = a; i < b; i++)
                q[c] += p[(size_t)i * k + c];
            q[c] /= b - a;
        }
        double kl = 0;
        for (int i = a; i < b; i++) {
            double row = 0;
            for (int c = 0; c < k; c++)
                row += p[(size_t)i * k + c] * (logp[(size_t)i * k + c] - log(q[c]));
            kl += row;
        }
        scores[s] = exp(kl / (b - a));
        total += scores[s];
    }
    *mean = total / splits;
    double var = 0;
    for (int s = 0; s < splits; s++)
        var += (scores[s] - *mean) * (scores[s] - *mean);
    *std = sqrt(var / splits);
    free(order), free(p), free(logp), free(q), free(scores);
    return 0;
}
