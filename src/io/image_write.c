// Writing pictures (see image_write.h). Tested by tests/test_train.c (sample grids, loss curves,
// TensorBoard images) and tests/test_data.c (the demo data read back).
#include "io/image_write.h"

#include <errno.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

// libpng's simplified-API description of an 8-bit RGB picture.
static png_image rgb_png(int width, int height) {
    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    image.width = (png_uint_32)width;
    image.height = (png_uint_32)height;
    image.format = PNG_FORMAT_RGB;
    return image;
}

int ldmc_png_encode(const uint8_t *rgb, int width, int height, uint8_t **out, size_t *size) {
    png_image image = rgb_png(width, height);
    png_alloc_size_t n = 0;
    if (!png_image_write_to_memory(&image, NULL, &n, 0, rgb, 0, NULL)) return -1;
    *out = malloc(n);
    if (!*out) return -1;
    if (!png_image_write_to_memory(&image, *out, &n, 0, rgb, 0, NULL)) {
        free(*out);
        return -1;
    }
    *size = n;
    return 0;
}

int ldmc_png_write(const char *path, const uint8_t *rgb, int width, int height, ldmc_err *err) {
    png_image image = rgb_png(width, height);
    if (!png_image_write_to_file(&image, path, 0, rgb, 0, NULL))
        return LDMC_ERR(err, "%s: cannot write the PNG: %s", path, image.message);
    return 0;
}

int ldmc_jpeg_write(const char *path, const uint8_t *rgb, int width, int height, int quality,
                    ldmc_err *err) {
    tjhandle tj = tjInitCompress();
    if (!tj) return LDMC_ERR(err, "TurboJPEG failed to start");
    unsigned char *jpeg = NULL;
    unsigned long size = 0;
    int rc = 0;
    if (tjCompress2(tj, rgb, width, 0, height, TJPF_RGB, &jpeg, &size, TJSAMP_420, quality, 0) !=
        0) {
        rc = LDMC_ERR(err, "%s: JPEG compression failed: %s", path, tjGetErrorStr2(tj));
    } else {
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(jpeg, 1, size, f) != size)
            rc = LDMC_ERR(err, "%s: cannot write: %s", path, strerror(errno));
        if (f && fclose(f) != 0 && rc == 0) rc = LDMC_ERR(err, "%s: cannot write", path);
    }
    tjFree(jpeg);
    tjDestroy(tj);
    return rc;
}
