// The demo dataset's pictures (see shapes.h).
#include "data/shapes.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/rng.h"
#include "io/files.h"
#include "io/image_write.h"

static const char *const names[LDMC_SHAPE_CLASSES] = {"circle", "square", "triangle", "cross"};
static const double hues[LDMC_SHAPE_CLASSES] = {0, 220, 120, 45};

const char *ldmc_shape_class_name(int class_id) {
    return class_id >= 0 && class_id < LDMC_SHAPE_CLASSES ? names[class_id] : "?";
}

// 16 uniforms per picture: u[0..1] size, u[2..15] drawing.
static void draws(int class_id, int index, uint64_t seed, float u[16]) {
    ldmc_rng rng = ldmc_rng_make(seed, (uint32_t)class_id, 0, LDMC_RNG_DATA);
    ldmc_rng_uniform(&rng, (uint64_t)index * 16, 16, u);
}

void ldmc_shape_size(int class_id, int index, uint64_t seed, int *width, int *height) {
    float u[16];
    draws(class_id, index, seed, u);
    double ratio = exp((u[0] * 2 - 1) * log(2.0)),
           area = 48.0 * 48 + u[1] * (160.0 * 160 - 48.0 * 48);
    double w = sqrt(area * ratio), h = sqrt(area / ratio);
    *width = (int)fmin(192, fmax(48, lround(w)));
    *height = (int)fmin(192, fmax(48, lround(h)));
}

static void hsv(double h, double s, double v, double rgb[3]) {
    h = fmod(h + 360, 360) / 60;
    int i = (int)h;
    double f = h - i, p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
    double table[6][3] = {{v, t, p}, {q, v, p}, {p, v, t}, {p, q, v}, {t, p, v}, {v, p, q}};
    for (int k = 0; k < 3; k++)
        rgb[k] = table[i % 6][k];
}

static bool inside(int class_id, double x, double y) { // unit shape around the origin
    switch (class_id) {
    case 0: return x * x + y * y <= 1;
    case 1: return fabs(x) <= 0.8 && fabs(y) <= 0.8;
    case 2: { // equilateral, pointing up: three half-planes
        double s3 = sqrt(3.0);
        return y <= 0.5 && s3 * x - y <= 1 && -s3 * x - y <= 1;
    }
    default: return (fabs(x) <= 1 && fabs(y) <= 0.3) || (fabs(x) <= 0.3 && fabs(y) <= 1);
    }
}

void ldmc_shape_draw(int class_id, int index, uint64_t seed, int width, int height, uint8_t *rgb) {
    float u[16];
    draws(class_id, index, seed, u);
    double fg[3], bg0[3], bg1[3];
    hsv(hues[class_id] + (u[2] - 0.5) * 30, 0.65 + 0.3 * u[3], 0.75 + 0.25 * u[4], fg);
    double bh = u[5] * 360, bs = 0.1 + 0.25 * u[6], bv = 0.25 + 0.7 * u[7];
    hsv(bh, bs, bv, bg0);
    hsv(bh + 20, bs, fmin(1, bv + 0.15 * (u[8] - 0.5)), bg1);
    double side = fmin(width, height), r = side * (0.25 + 0.15 * u[9]);
    double cx = r + u[10] * (width - 2 * r), cy = r + u[11] * (height - 2 * r);
    double angle = (u[12] - 0.5) * (class_id == 0 ? 0 : 0.6), ca = cos(angle), sa = sin(angle);
    for (int j = 0; j < height; j++)
        for (int i = 0; i < width; i++) {
            int hits = 0;
            for (int sj = 0; sj < 4; sj++)
                for (int si = 0; si < 4; si++) {
                    double x = (i + (si + 0.5) / 4 - cx) / r, y = (j + (sj + 0.5) / 4 - cy) / r;
                    hits += inside(class_id, ca * x + sa * y, -sa * x + ca * y);
                }
            double a = hits / 16.0, g = (double)j / (height > 1 ? height - 1 : 1);
            for (int k = 0; k < 3; k++) {
                double back = bg0[k] * (1 - g) + bg1[k] * g;
                rgb[((size_t)j * width + i) * 3 + k] =
                    (uint8_t)lround(255 * (a * fg[k] + (1 - a) * back));
            }
        }
}

int ldmc_shapes_write(const char *out, int per_class, uint64_t seed, ldmc_err *err) {
    char path[4200];
    for (int c = 0; c < LDMC_SHAPE_CLASSES; c++) {
        snprintf(path, sizeof path, "%s/%s", out, names[c]);
        if (ldmc_mkdirs(path, err) != 0) return -1;
        for (int i = 0; i < per_class; i++) {
            int w, h;
            ldmc_shape_size(c, i, seed, &w, &h);
            uint8_t *rgb = malloc((size_t)w * h * 3);
            if (!rgb) return LDMC_ERR(err, "out of memory");
            ldmc_shape_draw(c, i, seed, w, h, rgb);
            bool jpeg = i % 3 == 2;
            snprintf(path, sizeof path, "%s/%s/%04d.%s", out, names[c], i, jpeg ? "jpg" : "png");
            int rc = jpeg ? ldmc_jpeg_write(path, rgb, w, h, 92, err)
                          : ldmc_png_write(path, rgb, w, h, err);
            free(rgb);
            if (rc != 0) return -1;
        }
    }
    return 0;
}
