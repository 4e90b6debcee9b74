// The FID Inception-v3 (see inception.h). Tested by tests/test_eval.c.
#include "nn/inception.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/device.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "ops/ops.h"

// One BasicConv2d: its name (the keys' prefix), shape, stride and padding (top/bottom, left/
// right), and after loading its folded weight (O, kh, kw, C) and bias (O).
struct ldmc_inception_conv {
    char name[40];
    int C, O, kh, kw, stride, ph, pw;
    float *w, *b;
};

typedef struct builder {
    ldmc_inception_conv *convs;
    int n;
} builder;

static void conv(builder *bd, const char *block, const char *branch, int C, int O, int kh, int kw,
                 int stride, int ph, int pw) {
    ldmc_inception_conv *c = &bd->convs[bd->n++];
    memset(c, 0, sizeof *c);
    if (branch)
        snprintf(c->name, sizeof c->name, "%s.%s", block, branch);
    else
        snprintf(c->name, sizeof c->name, "%s", block);
    c->C = C, c->O = O, c->kh = kh, c->kw = kw, c->stride = stride, c->ph = ph, c->pw = pw;
}

// The blocks as torchvision names them (fid-is.md's layer table).
static void block_a(builder *bd, const char *m, int in, int pool_features) {
    conv(bd, m, "branch1x1", in, 64, 1, 1, 1, 0, 0);
    conv(bd, m, "branch5x5_1", in, 48, 1, 1, 1, 0, 0);
    conv(bd, m, "branch5x5_2", 48, 64, 5, 5, 1, 2, 2);
    conv(bd, m, "branch3x3dbl_1", in, 64, 1, 1, 1, 0, 0);
    conv(bd, m, "branch3x3dbl_2", 64, 96, 3, 3, 1, 1, 1);
    conv(bd, m, "branch3x3dbl_3", 96, 96, 3, 3, 1, 1, 1);
    conv(bd, m, "branch_pool", in, pool_features, 1, 1, 1, 0, 0);
}

static void block_b(builder *bd, const char *m, int in) {
    conv(bd, m, "branch3x3", in, 384, 3, 3, 2, 0, 0);
    conv(bd, m, "branch3x3dbl_1", in, 64, 1, 1, 1, 0, 0);
    conv(bd, m, "branch3x3dbl_2", 64, 96, 3, 3, 1, 1, 1);
    conv(bd, m, "branch3x3dbl_3", 96, 96, 3, 3, 2, 0, 0);
}

static void block_c(builder *bd, const char *m, int c7) {
    conv(bd, m, "branch1x1", 768, 192, 1, 1, 1, 0, 0);
    conv(bd, m, "branch7x7_1", 768, c7, 1, 1, 1, 0, 0);
    conv(bd, m, "branch7x7_2", c7, c7, 1, 7, 1, 0, 3);
    conv(bd, m, "branch7x7_3", c7, 192, 7, 1, 1, 3, 0);
    conv(bd, m, "branch7x7dbl_1", 768, c7, 1, 1, 1, 0, 0);
    conv(bd, m, "branch7x7dbl_2", c7, c7, 7, 1, 1, 3, 0);
    conv(bd, m, "branch7x7dbl_3", c7, c7, 1, 7, 1, 0, 3);
    conv(bd, m, "branch7x7dbl_4", c7, c7, 7, 1, 1, 3, 0);
    conv(bd, m, "branch7x7dbl_5", c7, 192, 1, 7, 1, 0, 3);
    conv(bd, m, "branch_pool", 768, 192, 1, 1, 1, 0, 0);
}

static void block_d(builder *bd, const char *m) {
    conv(bd, m, "branch3x3_1", 768, 192, 1, 1, 1, 0, 0);
    conv(bd, m, "branch3x3_2", 192, 320, 3, 3, 2, 0, 0);
    conv(bd, m, "branch7x7x3_1", 768, 192, 1, 1, 1, 0, 0);
    conv(bd, m, "branch7x7x3_2", 192, 192, 1, 7, 1, 0, 3);
    conv(bd, m, "branch7x7x3_3", 192, 192, 7, 1, 1, 3, 0);
    conv(bd, m, "branch7x7x3_4", 192, 192, 3, 3, 2, 0, 0);
}

static void block_e(builder *bd, const char *m, int in) {
    conv(bd, m, "branch1x1", in, 320, 1, 1, 1, 0, 0);
    conv(bd, m, "branch3x3_1", in, 384, 1, 1, 1, 0, 0);
    conv(bd, m, "branch3x3_2a", 384, 384, 1, 3, 1, 0, 1);
    conv(bd, m, "branch3x3_2b", 384, 384, 3, 1, 1, 1, 0);
    conv(bd, m, "branch3x3dbl_1", in, 448, 1, 1, 1, 0, 0);
    conv(bd, m, "branch3x3dbl_2", 448, 384, 3, 3, 1, 1, 1);
    conv(bd, m, "branch3x3dbl_3a", 384, 384, 1, 3, 1, 0, 1);
    conv(bd, m, "branch3x3dbl_3b", 384, 384, 3, 1, 1, 1, 0);
    conv(bd, m, "branch_pool", in, 192, 1, 1, 1, 0, 0);
}

enum { MAX_CONVS = 128 };

static void build(builder *bd) {
    conv(bd, "Conv2d_1a_3x3", NULL, 3, 32, 3, 3, 2, 0, 0);
    conv(bd, "Conv2d_2a_3x3", NULL, 32, 32, 3, 3, 1, 0, 0);
    conv(bd, "Conv2d_2b_3x3", NULL, 32, 64, 3, 3, 1, 1, 1);
    conv(bd, "Conv2d_3b_1x1", NULL, 64, 80, 1, 1, 1, 0, 0);
    conv(bd, "Conv2d_4a_3x3", NULL, 80, 192, 3, 3, 1, 0, 0);
    block_a(bd, "Mixed_5b", 192, 32);
    block_a(bd, "Mixed_5c", 256, 64);
    block_a(bd, "Mixed_5d", 288, 64);
    block_b(bd, "Mixed_6a", 288);
    block_c(bd, "Mixed_6b", 128);
    block_c(bd, "Mixed_6c", 160);
    block_c(bd, "Mixed_6d", 160);
    block_c(bd, "Mixed_6e", 192);
    block_d(bd, "Mixed_7a");
    block_e(bd, "Mixed_7b", 1280);
    block_e(bd, "Mixed_7c", 2048);
}

// ---- loading ------------------------------------------------------------------------------------

static const char *const bn_parts[4] = {"weight", "bias", "running_mean", "running_var"};

int ldmc_inception_tensors(const ldmc_inception_tensor **out) {
    static ldmc_inception_tensor list[MAX_CONVS * 5 + 2];
    static int n;
    if (!n) {
        static ldmc_inception_conv convs[MAX_CONVS];
        builder bd = {convs, 0};
        build(&bd);
        for (int i = 0; i < bd.n; i++) {
            const ldmc_inception_conv *c = &convs[i];
            ldmc_inception_tensor *t = &list[n++];
            snprintf(t->name, sizeof t->name, "%.39s.conv.weight", c->name);
            t->ndim = 4, t->shape[0] = c->O, t->shape[1] = c->C, t->shape[2] = c->kh,
            t->shape[3] = c->kw;
            for (int k = 0; k < 4; k++) {
                t = &list[n++];
                snprintf(t->name, sizeof t->name, "%.39s.bn.%s", c->name, bn_parts[k]);
                t->ndim = 1, t->shape[0] = c->O;
            }
        }
        list[n++] = (ldmc_inception_tensor){
            "fc.weight", 2, {LDMC_INCEPTION_CLASSES, LDMC_INCEPTION_FEATURES}};
        list[n++] = (ldmc_inception_tensor){"fc.bias", 1, {LDMC_INCEPTION_CLASSES}};
    }
    *out = list;
    return n;
}

// conv w (O, C, kh, kw) and its batch norm -> the folded (O, kh, kw, C) weight and bias.
static int load_conv(ldmc_inception_conv *c, ldmc_inception_source source, void *arg,
                     ldmc_err *err) {
    const int64_t wshape[4] = {c->O, c->C, c->kh, c->kw}, vshape[1] = {c->O};
    const size_t n = (size_t)c->O * c->C * c->kh * c->kw;
    float *w = malloc(n * sizeof *w), *bn = malloc(4 * (size_t)c->O * sizeof *bn);
    c->w = malloc(n * sizeof *c->w), c->b = malloc((size_t)c->O * sizeof *c->b);
    int rc = 0;
    if (!w || !bn || !c->w || !c->b) rc = LDMC_ERR(err, "out of memory");
    char key[64];
    snprintf(key, sizeof key, "%s.conv.weight", c->name);
    if (rc == 0) rc = source(arg, key, 4, wshape, w, err);
    for (int k = 0; k < 4 && rc == 0; k++) {
        snprintf(key, sizeof key, "%s.bn.%s", c->name, bn_parts[k]);
        rc = source(arg, key, 1, vshape, bn + (size_t)k * c->O, err);
    }
    if (rc == 0) {
        const float *gamma = bn, *beta = bn + c->O, *mean = bn + 2 * c->O, *var = bn + 3 * c->O;
        for (int o = 0; o < c->O; o++) {
            if (!(var[o] >= 0))
                rc = LDMC_ERR(err, "%s.bn.running_var[%d] = %g: a variance must be >= 0", c->name,
                              o, var[o]);
            double s = gamma[o] / sqrt((double)var[o] + 0.001);
            c->b[o] = (float)(beta[o] - mean[o] * s);
            for (int i = 0; i < c->kh; i++)
                for (int j = 0; j < c->kw; j++)
                    for (int ch = 0; ch < c->C; ch++)
                        c->w[(((size_t)o * c->kh + i) * c->kw + j) * c->C + ch] =
                            (float)(w[(((size_t)o * c->C + ch) * c->kh + i) * c->kw + j] * s);
        }
    }
    free(w), free(bn);
    return rc;
}

int ldmc_inception_load(ldmc_inception *m, ldmc_inception_source source, void *arg, ldmc_err *err) {
    memset(m, 0, sizeof *m);
    m->convs = calloc(MAX_CONVS, sizeof *m->convs);
    if (!m->convs) return LDMC_ERR(err, "out of memory");
    builder bd = {m->convs, 0};
    build(&bd);
    m->n_convs = bd.n;
    for (int i = 0; i < m->n_convs; i++)
        if (load_conv(&m->convs[i], source, arg, err) != 0) {
            ldmc_inception_free(m);
            return -1;
        }
    const int64_t fw[2] = {LDMC_INCEPTION_CLASSES, LDMC_INCEPTION_FEATURES},
                  fb[1] = {LDMC_INCEPTION_CLASSES};
    m->fc_weight = malloc((size_t)fw[0] * fw[1] * sizeof *m->fc_weight);
    m->fc_bias = malloc((size_t)fb[0] * sizeof *m->fc_bias);
    if (!m->fc_weight || !m->fc_bias || source(arg, "fc.weight", 2, fw, m->fc_weight, err) != 0 ||
        source(arg, "fc.bias", 1, fb, m->fc_bias, err) != 0) {
        if (!m->fc_weight || !m->fc_bias) LDMC_ERR(err, "out of memory");
        ldmc_inception_free(m);
        return -1;
    }
    return 0;
}

// A tensor of the file by name, its shape checked, as f32.
static int file_source(void *arg, const char *name, int ndim, const int64_t *shape, float *out,
                       ldmc_err *err) {
    const ldmc_safetensors *st = arg;
    const ldmc_st_tensor *t = ldmc_safetensors_find(st, name);
    if (!t)
        return LDMC_ERR(err,
                        "%s: no tensor '%s': not the FID Inception's weights (pytorch-fid's "
                        "pt_inception-2015-12-05-6726825d.pth)",
                        st->path, name);
    bool same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++)
        same = t->shape[d] == shape[d];
    if (!same) {
        char want[96] = "", got[96] = "";
        for (int d = 0; d < ndim; d++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? ", " : "",
                     (long long)shape[d]);
        for (int d = 0; d < t->ndim; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "",
                     (long long)t->shape[d]);
        return LDMC_ERR(err, "%s: '%s' is (%s), the FID Inception's is (%s)", st->path, name, got,
                        want);
    }
    return ldmc_safetensors_read(st, t, out, LDMC_F32, err);
}

static int random_source(void *arg, const char *name, int ndim, const int64_t *shape, float *out,
                         ldmc_err *err) {
    (void)err;
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    ldmc_rng rng =
        ldmc_rng_make(*(const uint64_t *)arg ^ ldmc_hash_name(name), 0, 0, LDMC_RNG_INIT);
    ldmc_rng_signed_uniform(&rng, 0, (size_t)n, out);
    size_t len = strlen(name);
    bool conv = len > 11 && !strcmp(name + len - 11, "conv.weight"),
         gain = (len > 11 && !strcmp(name + len - 11, "running_var")) ||
                (ndim == 1 && len > 9 && !strcmp(name + len - 9, "bn.weight"));
    for (int64_t i = 0; i < n; i++)
        out[i] = conv        ? out[i] * (float)sqrt(6.0 / (double)(n / shape[0]))
                 : ndim == 2 ? out[i] / 45.25f
                 : gain      ? 1 + out[i] / 4
                             : out[i] / 4;
    return 0;
}

int ldmc_inception_init_random(ldmc_inception *m, uint64_t seed, ldmc_err *err) {
    return ldmc_inception_load(m, random_source, &seed, err);
}

int ldmc_inception_load_file(ldmc_inception *m, const char *path, ldmc_err *err) {
    ldmc_safetensors st;
    if (ldmc_safetensors_open(&st, path, err) != 0) return -1;
    int rc = ldmc_inception_load(m, file_source, &st, err);
    ldmc_safetensors_close(&st);
    return rc;
}

void ldmc_inception_free(ldmc_inception *m) {
    for (int i = 0; m->convs && i < m->n_convs; i++)
        free(m->convs[i].w), free(m->convs[i].b);
    free(m->convs), free(m->fc_weight), free(m->fc_bias);
    memset(m, 0, sizeof *m);
}

// ---- the forward --------------------------------------------------------------------------------

typedef struct fwd {
    ldmc_ctx *ctx;
    const ldmc_inception *m;
} fwd;

static const ldmc_inception_conv *find(const fwd *f, const char *block, const char *branch) {
    char name[40];
    if (branch)
        snprintf(name, sizeof name, "%s.%s", block, branch);
    else
        snprintf(name, sizeof name, "%s", block);
    for (int i = 0; i < f->m->n_convs; i++)
        if (!strcmp(f->m->convs[i].name, name)) return &f->m->convs[i];
    LDMC_FATAL("FID Inception: no layer %s", name);
}

// BasicConv2d: the folded convolution, then ReLU.
static ldmc_tensor *basic(const fwd *f, const char *block, const char *branch, ldmc_tensor *x) {
    const ldmc_inception_conv *c = find(f, block, branch);
    ldmc_tensor *w = ldmc_wrap(f->ctx, LDMC_F32, c->w, 4, (int64_t[]){c->O, c->kh, c->kw, c->C});
    ldmc_tensor *b = ldmc_wrap(f->ctx, LDMC_F32, c->b, 1, (int64_t[]){c->O});
    const int pad[4] = {c->ph, c->ph, c->pw, c->pw};
    return ldmc_clamp(f->ctx, ldmc_conv2d_padded(f->ctx, x, w, b, c->stride, pad), 0, INFINITY);
}

static ldmc_tensor *cat(const fwd *f, ldmc_tensor *a, ldmc_tensor *b, ldmc_tensor *c,
                        ldmc_tensor *d) {
    ldmc_tensor *xs[4] = {a, b, c, d};
    return ldmc_concat(f->ctx, xs, d ? 4 : 3);
}

// The pool branches that the TF graph averages without counting the padding.
static ldmc_tensor *avg3(const fwd *f, ldmc_tensor *x) {
    return ldmc_avg_pool2d(f->ctx, x, 3, 1, 1, false);
}

static ldmc_tensor *mixed_a(const fwd *f, const char *m, ldmc_tensor *x) {
    ldmc_tensor *b1 = basic(f, m, "branch1x1", x);
    ldmc_tensor *b5 = basic(f, m, "branch5x5_2", basic(f, m, "branch5x5_1", x));
    ldmc_tensor *b3 = basic(f, m, "branch3x3dbl_3",
                            basic(f, m, "branch3x3dbl_2", basic(f, m, "branch3x3dbl_1", x)));
    return cat(f, b1, b5, b3, basic(f, m, "branch_pool", avg3(f, x)));
}

static ldmc_tensor *mixed_b(const fwd *f, const char *m, ldmc_tensor *x) {
    ldmc_tensor *b3 = basic(f, m, "branch3x3", x);
    ldmc_tensor *bd = basic(f, m, "branch3x3dbl_3",
                            basic(f, m, "branch3x3dbl_2", basic(f, m, "branch3x3dbl_1", x)));
    return cat(f, b3, bd, ldmc_max_pool2d(f->ctx, x, 3, 2, 0), NULL);
}

static ldmc_tensor *mixed_c(const fwd *f, const char *m, ldmc_tensor *x) {
    ldmc_tensor *b1 = basic(f, m, "branch1x1", x);
    ldmc_tensor *b7 =
        basic(f, m, "branch7x7_3", basic(f, m, "branch7x7_2", basic(f, m, "branch7x7_1", x)));
    ldmc_tensor *bd = basic(f, m, "branch7x7dbl_1", x);
    bd = basic(f, m, "branch7x7dbl_2", bd);
    bd = basic(f, m, "branch7x7dbl_3", bd);
    bd = basic(f, m, "branch7x7dbl_4", bd);
    bd = basic(f, m, "branch7x7dbl_5", bd);
    return cat(f, b1, b7, bd, basic(f, m, "branch_pool", avg3(f, x)));
}

static ldmc_tensor *mixed_d(const fwd *f, const char *m, ldmc_tensor *x) {
    ldmc_tensor *b3 = basic(f, m, "branch3x3_2", basic(f, m, "branch3x3_1", x));
    ldmc_tensor *b7 = basic(f, m, "branch7x7x3_1", x);
    b7 = basic(f, m, "branch7x7x3_2", b7);
    b7 = basic(f, m, "branch7x7x3_3", b7);
    b7 = basic(f, m, "branch7x7x3_4", b7);
    return cat(f, b3, b7, ldmc_max_pool2d(f->ctx, x, 3, 2, 0), NULL);
}

// Mixed_7b averages its pool branch (count_include_pad=False), Mixed_7c max-pools it.
static ldmc_tensor *mixed_e(const fwd *f, const char *m, ldmc_tensor *x, bool max_pool) {
    ldmc_tensor *b1 = basic(f, m, "branch1x1", x);
    ldmc_tensor *b3 = basic(f, m, "branch3x3_1", x);
    ldmc_tensor *pair[2] = {basic(f, m, "branch3x3_2a", b3), basic(f, m, "branch3x3_2b", b3)};
    b3 = ldmc_concat(f->ctx, pair, 2);
    ldmc_tensor *bd = basic(f, m, "branch3x3dbl_2", basic(f, m, "branch3x3dbl_1", x));
    ldmc_tensor *pair2[2] = {basic(f, m, "branch3x3dbl_3a", bd),
                             basic(f, m, "branch3x3dbl_3b", bd)};
    bd = ldmc_concat(f->ctx, pair2, 2);
    ldmc_tensor *pool = max_pool ? ldmc_max_pool2d(f->ctx, x, 3, 1, 1) : avg3(f, x);
    return cat(f, b1, b3, bd, basic(f, m, "branch_pool", pool));
}

void ldmc_inception_forward(ldmc_ctx *ctx, const ldmc_inception *m, const float *x, int n,
                            float *pool3, float *logits) {
    LDMC_CHECK(ctx->device == LDMC_CPU, "the FID Inception runs in f32 on the CPU");
    bool was_recording = ctx->recording;
    ctx->recording = false;
    ldmc_ctx_mark mark = ldmc_ctx_mark_here(ctx);
    fwd f = {ctx, m};
    const int S = LDMC_INCEPTION_SIZE;
    ldmc_tensor *h = ldmc_wrap(ctx, LDMC_F32, (void *)x, 4, (int64_t[]){n, S, S, 3});
    h = basic(&f, "Conv2d_1a_3x3", NULL, h);
    h = basic(&f, "Conv2d_2a_3x3", NULL, h);
    h = basic(&f, "Conv2d_2b_3x3", NULL, h);
    h = ldmc_max_pool2d(ctx, h, 3, 2, 0);
    h = basic(&f, "Conv2d_3b_1x1", NULL, h);
    h = basic(&f, "Conv2d_4a_3x3", NULL, h);
    h = ldmc_max_pool2d(ctx, h, 3, 2, 0);
    h = mixed_a(&f, "Mixed_5b", h);
    h = mixed_a(&f, "Mixed_5c", h);
    h = mixed_a(&f, "Mixed_5d", h);
    h = mixed_b(&f, "Mixed_6a", h);
    h = mixed_c(&f, "Mixed_6b", h);
    h = mixed_c(&f, "Mixed_6c", h);
    h = mixed_c(&f, "Mixed_6d", h);
    h = mixed_c(&f, "Mixed_6e", h);
    h = mixed_d(&f, "Mixed_7a", h);
    h = mixed_e(&f, "Mixed_7b", h, false);
    h = mixed_e(&f, "Mixed_7c", h, true);
    LDMC_CHECK(h->shape[1] == 8 && h->shape[2] == 8 && h->shape[3] == LDMC_INCEPTION_FEATURES,
               "FID Inception: the last map is %lldx%lldx%lld", (long long)h->shape[1],
               (long long)h->shape[2], (long long)h->shape[3]);
    h = ldmc_avg_pool2d(ctx, h, 8, 8, 0, true); // the global average: pool3
    ldmc_read_f32(h, pool3);
    if (logits) {
        ldmc_tensor *p =
            ldmc_wrap(ctx, LDMC_F32, pool3, 2, (int64_t[]){n, LDMC_INCEPTION_FEATURES});
        ldmc_tensor *w = ldmc_wrap(ctx, LDMC_F32, m->fc_weight, 2,
                                   (int64_t[]){LDMC_INCEPTION_CLASSES, LDMC_INCEPTION_FEATURES});
        ldmc_read_f32(ldmc_linear(ctx, p, w, NULL), logits); // no bias: the IS's logits
    }
    ldmc_ctx_rewind(ctx, mark);
    ctx->recording = was_recording;
}
