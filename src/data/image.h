// Images: JPEG through libjpeg-turbo's TurboJPEG API (with its DCT scaling when the picture is much
// larger than needed), PNG through libpng; antialiased resizing through stb_image_resize
// (Debian's libstb). Pixels are 8-bit RGB, row-major (H, W, 3), as
// the picture is displayed: the EXIF orientation (JPEG APP1, PNG eXIf) is applied; CMYK and YCCK
// JPEGs become RGB (Adobe files' inverted inks included); PNG alpha is composited onto white; every
// file is taken as sRGB (no gamma or ICC conversion, as PIL does), 16-bit samples rounded to 8.
// A file that cannot be read, is truncated or corrupt gets an error naming it, never a crash.
// Tested by tests/test_data.c.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct ldmc_image {
    int width, height;
    uint8_t *pixels; // (height, width, 3)
} ldmc_image;

// The displayed size from the file's header alone (JPEG or PNG, by content; EXIF orientations
// 5..8 swap the stored width and height).
int ldmc_image_probe(const char *path, int *width, int *height, ldmc_err *err);
// Decodes to displayed RGB. For a JPEG at least min_width x min_height (displayed), the largest
// DCT scale-down that keeps both sides at or above those minimums is used (0, 0: full size).
int ldmc_image_load(const char *path, int min_width, int min_height, ldmc_image *out,
                    ldmc_err *err);
void ldmc_image_free(ldmc_image *img);
// Antialiased resampling (Mitchell filter in linear light, as stb_image_resize's sRGB path does).
int ldmc_image_resize(const ldmc_image *src, int width, int height, ldmc_image *out);
