// An RGB canvas for the pictures a run writes: sample grids (images side by side with labels)
// and the loss curve. Text is drawn with stb_easy_font (Debian's libstb-dev), scaled up.
// Tested by tests/test_train.c.
#pragma once
#include <stdint.h>

#include "core/error.h"

typedef struct ldmc_canvas {
    int width, height;
    uint8_t *rgb; // (height, width, 3)
} ldmc_canvas;

typedef struct ldmc_color {
    uint8_t r, g, b;
} ldmc_color;

int ldmc_canvas_init(ldmc_canvas *c, int width, int height, ldmc_color background);
void ldmc_canvas_free(ldmc_canvas *c);
// A filled rectangle, clipped to the canvas.
void ldmc_canvas_rect(ldmc_canvas *c, int x, int y, int w, int h, ldmc_color color);
// A line `thickness` pixels wide.
void ldmc_canvas_line(ldmc_canvas *c, double x0, double y0, double x1, double y1, int thickness,
                      ldmc_color color);
// Text with its top-left at (x, y); each font pixel becomes scale x scale. Returns its width.
int ldmc_canvas_text(ldmc_canvas *c, int x, int y, int scale, const char *text, ldmc_color color);
int ldmc_canvas_text_width(const char *text, int scale);
// Copies an (h, w, 3) image with values in [-1, 1] (a model's output) to (x, y), clamped.
void ldmc_canvas_image(ldmc_canvas *c, int x, int y, const float *img, int h, int w);
int ldmc_canvas_write_png(const ldmc_canvas *c, const char *path, ldmc_err *err);

// The loss curve of a run: each step's loss (light) and its moving average (dark), with axes,
// ticks and a title, as a PNG. steps ascending.
int ldmc_loss_curve_png(const char *path, const int64_t *steps, const double *loss, int n,
                        const char *title, ldmc_err *err);
