// SDXL's size and crop conditioning (Podell et al. 2023, Sec. 2.2, Algorithm 1), for a target of
// any aspect (a bucket): c_size is the image's original (height, width); the image is resized so
// that it covers the target with the smaller scale that does (for a square target: its shorter
// side matches), then cropped at a uniformly random offset along the axis that overhangs;
// c_crop is the (top, left) of the crop in the resized image. A horizontal flip is applied after
// the crop, and c_crop's left is then measured in the flipped image, so that the conditioning
// still says where the pixels came from (the bug diffusers#6234 fixed).
// Tested by tests/test_data.c.
#pragma once
#include <stdbool.h>

#include "data/image.h"

typedef struct ldmc_crop {
    int resized_height, resized_width; // the image after the covering resize
    int top, left;                     // where the target window starts in the resized image
    bool flip;
    int c_size[2];   // (height, width) of the original image
    int c_crop[2];   // (top, left) as conditioned: left is in the flipped image when flipped
    int c_target[2]; // (height, width) of the target
} ldmc_crop;

// u_top, u_left in [0, 1) choose the offsets: top = floor(u_top (overhang + 1)), the same for left.
// original_h/w are the c_size (they may differ from the decoded size when a dataset was
// pre-resized: then pass the decoded size as image_h/w).
void ldmc_crop_plan(int image_h, int image_w, int original_h, int original_w, int target_h,
                    int target_w, double u_top, double u_left, bool flip, ldmc_crop *out);
// Resizes, crops and flips `img` by the plan into `out` (target_h x target_w).
int ldmc_crop_apply(const ldmc_image *img, const ldmc_crop *plan, ldmc_image *out);
