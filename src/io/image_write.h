// Writing pictures, 8-bit RGB, row-major (H, W, 3): PNG through libpng (sample grids, loss
// curves, TensorBoard images) and JPEG through TurboJPEG (the demo data).
// Tested by tests/test_train.c and tests/test_data.c.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

int ldmc_png_write(const char *path, const uint8_t *rgb, int width, int height, ldmc_err *err);
// A PNG with a text chunk `key` (tEXt when the text is ASCII, else iTXt in UTF-8): the generation
// parameters of a sampled image ("parameters", as other tools write them). Written to a
// temporary file first, so that a failure leaves no partial file.
int ldmc_png_write_text(const char *path, const uint8_t *rgb, int width, int height,
                        const char *key, const char *text, ldmc_err *err);
// PNG bytes in memory (free with free()), for TensorBoard images.
int ldmc_png_encode(const uint8_t *rgb, int width, int height, uint8_t **out, size_t *size);
// Writes a JPEG (quality 1..100), for generated data.
int ldmc_jpeg_write(const char *path, const uint8_t *rgb, int width, int height, int quality,
                    ldmc_err *err);
