// Image decoding, resizing and writing (see image.h). Tested by tests/test_data.c.
#include "data/image.h"

#include <errno.h>
#include <png.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include <stb/stb_image_resize.h>

// Reads a whole file (images are small next to memory).
static int read_file(const char *path, uint8_t **data, size_t *size, ldmc_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return LDMC_ERR(err, "%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0 || ftell(f) < 0) {
        fclose(f);
        return LDMC_ERR(err, "%s: cannot read its size", path);
    }
    long n = ftell(f);
    rewind(f);
    *data = malloc((size_t)(n > 0 ? n : 1));
    if (!*data) {
        fclose(f);
        return LDMC_ERR(err, "%s: out of memory for %ld bytes", path, n);
    }
    size_t got = fread(*data, 1, (size_t)n, f);
    fclose(f);
    if (got != (size_t)n) {
        free(*data);
        return LDMC_ERR(err, "%s: short read", path);
    }
    *size = (size_t)n;
    return 0;
}

static int is_png(const uint8_t *d, size_t n) { return n >= 8 && png_sig_cmp(d, 0, 8) == 0; }
static int is_jpeg(const uint8_t *d, size_t n) {
    return n >= 3 && d[0] == 0xff && d[1] == 0xd8 && d[2] == 0xff;
}

static int jpeg_header(tjhandle tj, const char *path, const uint8_t *d, size_t n, int *w, int *h,
                       ldmc_err *err) {
    int subsamp = -1, colorspace = -1;
    *w = *h = 0; // a stream cut inside its header "succeeds" without setting them
    if (tjDecompressHeader3(tj, d, (unsigned long)n, w, h, &subsamp, &colorspace) != 0)
        return LDMC_ERR(err, "%s: not a readable JPEG: %s", path, tjGetErrorStr2(tj));
    if (*w == 0 || *h == 0) return LDMC_ERR(err, "%s: truncated JPEG: no frame header", path);
    if (*w < 0 || *h < 0 || (int64_t)*w * *h > ((int64_t)1 << 28))
        return LDMC_ERR(err, "%s: JPEG of %dx%d pixels is out of range", path, *w, *h);
    return 0;
}

static int png_decode(const char *path, const uint8_t *d, size_t n, bool header_only,
                      ldmc_image *out, ldmc_err *err) {
    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&image, d, n))
        return LDMC_ERR(err, "%s: not a readable PNG: %s", path, image.message);
    if (image.width == 0 || image.height == 0 ||
        (uint64_t)image.width * image.height > ((uint64_t)1 << 28)) {
        png_image_free(&image);
        return LDMC_ERR(err, "%s: PNG of %ux%u pixels is out of range", path, image.width,
                        image.height);
    }
    out->width = (int)image.width;
    out->height = (int)image.height;
    if (header_only) {
        png_image_free(&image);
        return 0;
    }
    image.format = PNG_FORMAT_RGB; // gray, palette, alpha and 16-bit all become 8-bit RGB
    out->pixels = malloc(PNG_IMAGE_SIZE(image));
    if (!out->pixels) {
        png_image_free(&image);
        return LDMC_ERR(err, "%s: out of memory", path);
    }
    if (!png_image_finish_read(&image, NULL, out->pixels, 0, NULL)) {
        free(out->pixels);
        out->pixels = NULL;
        return LDMC_ERR(err, "%s: corrupt or truncated PNG: %s", path, image.message);
    }
    return 0;
}

static int decode(const char *path, int min_w, int min_h, bool header_only, ldmc_image *out,
                  ldmc_err *err) {
    uint8_t *d = NULL;
    size_t n = 0;
    *out = (ldmc_image){0};
    if (read_file(path, &d, &n, err) != 0) return -1;
    int rc;
    if (is_png(d, n)) {
        rc = png_decode(path, d, n, header_only, out, err);
    } else if (is_jpeg(d, n)) {
        tjhandle tj = tjInitDecompress();
        int w, h;
        rc = tj ? jpeg_header(tj, path, d, n, &w, &h, err)
                : LDMC_ERR(err, "TurboJPEG failed to start");
        if (rc == 0 && header_only) {
            out->width = w, out->height = h;
        } else if (rc == 0) {
            // The smallest scaled size that still covers the minimum (DCT scaling: 1/8 .. 2).
            int count = 0, best_w = w, best_h = h;
            tjscalingfactor *factors = tjGetScalingFactors(&count);
            for (int i = 0; i < count && (min_w > 0 || min_h > 0); i++) {
                int sw = TJSCALED(w, factors[i]), sh = TJSCALED(h, factors[i]);
                if (sw >= min_w && sh >= min_h && sw <= w &&
                    (int64_t)sw * sh < (int64_t)best_w * best_h)
                    best_w = sw, best_h = sh;
            }
            out->pixels = malloc((size_t)best_w * best_h * 3);
            if (!out->pixels) {
                rc = LDMC_ERR(err, "%s: out of memory", path);
            } else if (tjDecompress2(tj, d, (unsigned long)n, out->pixels, best_w, 0, best_h,
                                     TJPF_RGB, TJFLAG_STOPONWARNING | TJFLAG_ACCURATEDCT) != 0) {
                rc = LDMC_ERR(err, "%s: corrupt or truncated JPEG: %s", path, tjGetErrorStr2(tj));
                free(out->pixels);
                out->pixels = NULL;
            } else {
                out->width = best_w, out->height = best_h;
            }
        }
        if (tj) tjDestroy(tj);
    } else {
        rc = LDMC_ERR(err, "%s: neither a JPEG nor a PNG (by its first bytes)", path);
    }
    free(d);
    return rc;
}

int ldmc_image_probe(const char *path, int *width, int *height, ldmc_err *err) {
    ldmc_image img;
    if (decode(path, 0, 0, true, &img, err) != 0) return -1;
    *width = img.width;
    *height = img.height;
    return 0;
}

int ldmc_image_load(const char *path, int min_width, int min_height, ldmc_image *out,
                    ldmc_err *err) {
    return decode(path, min_width, min_height, false, out, err);
}

void ldmc_image_free(ldmc_image *img) {
    free(img->pixels);
    *img = (ldmc_image){0};
}

int ldmc_image_resize(const ldmc_image *src, int width, int height, ldmc_image *out) {
    *out = (ldmc_image){.width = width, .height = height};
    out->pixels = malloc((size_t)width * height * 3);
    if (!out->pixels) return -1;
    if (!stbir_resize_uint8_srgb(src->pixels, src->width, src->height, 0, out->pixels, width,
                                 height, 0, 3, STBIR_ALPHA_CHANNEL_NONE, 0)) {
        ldmc_image_free(out);
        return -1;
    }
    return 0;
}

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
