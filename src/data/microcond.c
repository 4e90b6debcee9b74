// Algorithm 1 (see microcond.h). Tested by tests/test_data.c.
#include "data/microcond.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void ldmc_crop_plan(int image_h, int image_w, int original_h, int original_w, int target_h,
                    int target_w, double u_top, double u_left, bool flip, ldmc_crop *out) {
    double scale = fmax((double)target_h / image_h, (double)target_w / image_w);
    int rh = (int)lround(image_h * scale), rw = (int)lround(image_w * scale);
    if (rh < target_h) rh = target_h; // rounding never leaves the target uncovered
    if (rw < target_w) rw = target_w;
    *out = (ldmc_crop){.resized_height = rh,
                       .resized_width = rw,
                       .flip = flip,
                       .c_size = {original_h, original_w},
                       .c_target = {target_h, target_w}};
    out->top = (int)floor(u_top * (rh - target_h + 1));
    out->left = (int)floor(u_left * (rw - target_w + 1));
    out->c_crop[0] = out->top;
    out->c_crop[1] = flip ? rw - out->left - target_w : out->left;
}

int ldmc_crop_apply(const ldmc_image *img, const ldmc_crop *plan, ldmc_image *out) {
    ldmc_image resized;
    if (ldmc_image_resize(img, plan->resized_width, plan->resized_height, &resized) != 0) return -1;
    int th = plan->c_target[0], tw = plan->c_target[1];
    *out = (ldmc_image){.width = tw, .height = th, .pixels = malloc((size_t)tw * th * 3)};
    if (!out->pixels) {
        ldmc_image_free(&resized);
        return -1;
    }
    for (int y = 0; y < th; y++) {
        const uint8_t *row =
            resized.pixels + ((size_t)(plan->top + y) * resized.width + plan->left) * 3;
        uint8_t *dst = out->pixels + (size_t)y * tw * 3;
        if (!plan->flip) {
            memcpy(dst, row, (size_t)tw * 3);
            continue;
        }
        for (int x = 0; x < tw; x++)
            memcpy(dst + (size_t)x * 3, row + (size_t)(tw - 1 - x) * 3, 3);
    }
    ldmc_image_free(&resized);
    return 0;
}
