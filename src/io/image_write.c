// Writing pictures (see image_write.h). Tested by tests/test_train.c (sample grids, loss curves,
// TensorBoard images) and tests/test_data.c (the demo data read back).
#include "io/image_write.h"

#include <errno.h>
#include <png.h>
#include <stdbool.h>
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

typedef struct png_write_state {
    FILE *f;
    png_structp png;
    png_infop info;
    char message[256];
} png_write_state;

static void png_error_handler(png_structp png, png_const_charp msg) {
    png_write_state *s = png_get_error_ptr(png);
    snprintf(s->message, sizeof s->message, "%s", msg);
    png_longjmp(png, 1);
}

static void png_warning_handler(png_structp png, png_const_charp msg) { (void)png, (void)msg; }

// libpng's full write API (the simplified one writes no text); -1 with s->message on failure.
static int write_png_with_text(png_write_state *s, const uint8_t *rgb, int width, int height,
                               const char *key, const char *text) {
    s->png =
        png_create_write_struct(PNG_LIBPNG_VER_STRING, s, png_error_handler, png_warning_handler);
    if (!s->png || !(s->info = png_create_info_struct(s->png))) {
        snprintf(s->message, sizeof s->message, "out of memory");
        return -1;
    }
    if (setjmp(png_jmpbuf(s->png))) return -1;
    png_init_io(s->png, s->f);
    png_set_IHDR(s->png, s->info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    bool ascii = true;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++)
        ascii &= *p < 0x80;
    png_text t;
    memset(&t, 0, sizeof t);
    t.compression = ascii ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
    t.key = (png_charp)key;
    t.text = (png_charp)text;
    t.text_length = strlen(text);
    png_set_text(s->png, s->info, &t, 1);
    png_write_info(s->png, s->info);
    for (int y = 0; y < height; y++)
        png_write_row(s->png, rgb + (size_t)y * width * 3);
    png_write_end(s->png, s->info);
    return 0;
}

int ldmc_png_write_text(const char *path, const uint8_t *rgb, int width, int height,
                        const char *key, const char *text, ldmc_err *err) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    png_write_state s = {.f = fopen(tmp, "wb")};
    if (!s.f) return LDMC_ERR(err, "%s: cannot write: %s", tmp, strerror(errno));
    int rc = write_png_with_text(&s, rgb, width, height, key, text);
    png_destroy_write_struct(&s.png, &s.info);
    if (fclose(s.f) != 0 && rc == 0) {
        rc = -1;
        snprintf(s.message, sizeof s.message, "%s", strerror(errno));
    }
    if (rc == 0 && rename(tmp, path) != 0) {
        rc = -1;
        snprintf(s.message, sizeof s.message, "%s", strerror(errno));
    }
    if (rc != 0) {
        remove(tmp);
        return LDMC_ERR(err, "%s: cannot write the PNG: %s", path, s.message);
    }
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
