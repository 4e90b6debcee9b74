// Canvas drawing, sample grids and the loss curve (see canvas.h).
#include "train/canvas.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/image_write.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wshadow"
#include <stb/stb_easy_font.h>
#pragma GCC diagnostic pop

int ldmc_canvas_init(ldmc_canvas *c, int width, int height, ldmc_color bg) {
    c->width = width;
    c->height = height;
    c->rgb = malloc((size_t)width * height * 3);
    if (!c->rgb) return -1;
    for (int64_t i = 0; i < (int64_t)width * height; i++) {
        c->rgb[3 * i] = bg.r;
        c->rgb[3 * i + 1] = bg.g;
        c->rgb[3 * i + 2] = bg.b;
    }
    return 0;
}

void ldmc_canvas_free(ldmc_canvas *c) {
    free(c->rgb);
    c->rgb = NULL;
}

void ldmc_canvas_rect(ldmc_canvas *c, int x, int y, int w, int h, ldmc_color color) {
    int x0 = x < 0 ? 0 : x, y0 = y < 0 ? 0 : y;
    int x1 = x + w > c->width ? c->width : x + w, y1 = y + h > c->height ? c->height : y + h;
    for (int j = y0; j < y1; j++)
        for (int i = x0; i < x1; i++) {
            uint8_t *p = c->rgb + 3 * ((size_t)j * c->width + i);
            p[0] = color.r, p[1] = color.g, p[2] = color.b;
        }
}

void ldmc_canvas_line(ldmc_canvas *c, double x0, double y0, double x1, double y1, int thickness,
                      ldmc_color color) {
    double dx = x1 - x0, dy = y1 - y0;
    int n = (int)ceil(fmax(fabs(dx), fabs(dy))) + 1;
    for (int k = 0; k <= n; k++) {
        double t = (double)k / n;
        int x = (int)lround(x0 + t * dx) - thickness / 2,
            y = (int)lround(y0 + t * dy) - thickness / 2;
        ldmc_canvas_rect(c, x, y, thickness, thickness, color);
    }
}

int ldmc_canvas_text_width(const char *text, int scale) {
    return stb_easy_font_width((char *)text) * scale;
}

int ldmc_canvas_text(ldmc_canvas *c, int x, int y, int scale, const char *text, ldmc_color color) {
    static char vertices[64 * 1024];
    int quads = stb_easy_font_print(0, 0, (char *)text, NULL, vertices, sizeof vertices);
    for (int q = 0; q < quads; q++) {
        const float *v0 = (const float *)(vertices + (size_t)q * 64);      // vertex 0: x, y
        const float *v2 = (const float *)(vertices + (size_t)q * 64 + 32); // vertex 2
        int qx = (int)lroundf(v0[0]), qy = (int)lroundf(v0[1]);
        int qw = (int)lroundf(v2[0]) - qx, qh = (int)lroundf(v2[1]) - qy;
        ldmc_canvas_rect(c, x + qx * scale, y + qy * scale, qw * scale, qh * scale, color);
    }
    return ldmc_canvas_text_width(text, scale);
}

void ldmc_canvas_image(ldmc_canvas *c, int x, int y, const float *img, int h, int w) {
    for (int j = 0; j < h; j++) {
        if (y + j < 0 || y + j >= c->height) continue;
        for (int i = 0; i < w; i++) {
            if (x + i < 0 || x + i >= c->width) continue;
            uint8_t *p = c->rgb + 3 * ((size_t)(y + j) * c->width + x + i);
            for (int k = 0; k < 3; k++) {
                double v = (img[((size_t)j * w + i) * 3 + k] + 1.0) * 127.5;
                p[k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : lround(v));
            }
        }
    }
}

int ldmc_canvas_write_png(const ldmc_canvas *c, const char *path, ldmc_err *err) {
    return ldmc_png_write(path, c->rgb, c->width, c->height, err);
}

// A "nice" tick step (1, 2 or 5 times a power of ten) for about `count` ticks over `range`.
static double tick_step(double range, int count) {
    double raw = range / count, mag = pow(10, floor(log10(raw)));
    double f = raw / mag;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

int ldmc_loss_curve_png(const char *path, const int64_t *steps, const double *loss, int n,
                        const char *title, ldmc_err *err) {
    if (n < 1) return LDMC_ERR(err, "%s: no losses to draw", path);
    const int W = 960, H = 540, left = 90, right = 30, top = 50, bottom = 60, S = 2;
    const ldmc_color white = {255, 255, 255}, black = {0, 0, 0}, grid = {225, 225, 225},
                     light = {160, 190, 230}, dark = {20, 70, 160};
    // y range: 0 .. the 99th percentile (a few spikes must not flatten the curve)
    double *sorted = malloc((size_t)n * sizeof *sorted), *avg = malloc((size_t)n * sizeof *avg);
    if (!sorted || !avg) {
        free(sorted);
        free(avg);
        return LDMC_ERR(err, "out of memory");
    }
    int m = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(loss[i])) sorted[m++] = loss[i];
    for (int i = 1; i < m; i++) // insertion sort is fine for a curve's few thousand points
        for (int j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
            double t = sorted[j];
            sorted[j] = sorted[j - 1];
            sorted[j - 1] = t;
        }
    double ymax = m ? sorted[(int)floor(0.99 * (m - 1))] * 1.1 : 1;
    if (!(ymax > 0)) ymax = 1;
    free(sorted);
    int half = n / 50, window = 2 * half + 1;
    double sum = 0;
    int used = 0;
    // centred moving average over the finite values of [i - half, i + half]
    for (int i = 0; i < half && i < n; i++)
        if (isfinite(loss[i])) sum += loss[i], used++;
    for (int i = 0; i < n; i++) {
        if (i + half < n && isfinite(loss[i + half])) sum += loss[i + half], used++;
        if (i - half - 1 >= 0 && isfinite(loss[i - half - 1])) sum -= loss[i - half - 1], used--;
        avg[i] = used ? sum / used : NAN;
    }
    ldmc_canvas c;
    if (ldmc_canvas_init(&c, W, H, white) != 0) {
        free(avg);
        return LDMC_ERR(err, "out of memory");
    }
    double x0 = (double)steps[0], x1 = (double)steps[n - 1];
    if (x1 <= x0) x1 = x0 + 1;
    const int pw = W - left - right, ph = H - top - bottom;
#define PX(s) (left + ((double)(s)-x0) / (x1 - x0) * pw)
#define PY(v) (top + ph - (fmin((v), ymax) / ymax) * ph)
    char label[64];
    double ystep = tick_step(ymax, 5);
    for (double v = 0; v <= ymax + 1e-12; v += ystep) {
        ldmc_canvas_line(&c, left, PY(v), left + pw, PY(v), 1, grid);
        snprintf(label, sizeof label, "%.3g", v);
        ldmc_canvas_text(&c, left - 10 - ldmc_canvas_text_width(label, S), (int)PY(v) - 6, S, label,
                         black);
    }
    double xstep = tick_step(x1 - x0, 6);
    for (double s = ceil(x0 / xstep) * xstep; s <= x1 + 1e-9; s += xstep) {
        ldmc_canvas_line(&c, PX(s), top, PX(s), top + ph, 1, grid);
        snprintf(label, sizeof label, "%.0f", s);
        ldmc_canvas_text(&c, (int)PX(s) - ldmc_canvas_text_width(label, S) / 2, top + ph + 10, S,
                         label, black);
    }
    for (int i = 1; i < n; i++)
        if (isfinite(loss[i - 1]) && isfinite(loss[i]))
            ldmc_canvas_line(&c, PX(steps[i - 1]), PY(loss[i - 1]), PX(steps[i]), PY(loss[i]), 1,
                             light);
    for (int i = 1; i < n; i++)
        if (isfinite(avg[i - 1]) && isfinite(avg[i]))
            ldmc_canvas_line(&c, PX(steps[i - 1]), PY(avg[i - 1]), PX(steps[i]), PY(avg[i]), 3,
                             dark);
#undef PX
#undef PY
    ldmc_canvas_line(&c, left, top, left, top + ph, 2, black);
    ldmc_canvas_line(&c, left, top + ph, left + pw, top + ph, 2, black);
    ldmc_canvas_text(&c, left, 15, S, title, black);
    snprintf(label, sizeof label, "step  (dark: mean of %d steps)", window);
    ldmc_canvas_text(&c, left + pw / 2 - ldmc_canvas_text_width(label, S) / 2, H - 25, S, label,
                     black);
    int rc = ldmc_canvas_write_png(&c, path, err);
    ldmc_canvas_free(&c);
    free(avg);
    return rc;
}
