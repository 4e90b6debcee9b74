// Image decoding and resizing (see image.h). Tested by tests/test_data.c.
#include "data/image.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include <stb/stb_image_resize.h>

#define MAX_PIXELS ((int64_t)1 << 28)

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

// ---- EXIF orientation ---------------------------------------------------------------------------

// The Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block; 1 (as stored) when absent
// or malformed. Every offset is checked against n.
static int exif_orientation(const uint8_t *t, size_t n) {
    if (n >= 6 && !memcmp(t, "Exif\0\0", 6)) t += 6, n -= 6; // PNG writers that keep the prefix
    if (n < 8) return 1;
    bool le = t[0] == 'I' && t[1] == 'I';
    if (!le && !(t[0] == 'M' && t[1] == 'M')) return 1;
#define U16(o) (le ? (uint32_t)t[o] | (uint32_t)t[(o) + 1] << 8 : (uint32_t)t[o] << 8 | t[(o) + 1])
#define U32(o) (le ? U16(o) | U16((o) + 2) << 16 : U16(o) << 16 | U16((o) + 2))
    if (U16(2) != 42) return 1;
    size_t ifd = U32(4);
    if (ifd > n - 2) return 1;
    size_t count = U16(ifd);
    for (size_t k = 0; k < count; k++) {
        size_t e = ifd + 2 + 12 * k;
        if (e + 12 > n) break;
        if (U16(e) != 0x0112) continue;
        uint32_t type = U16(e + 2), v = type == 3 ? U16(e + 8) : type == 4 ? U32(e + 8) : 0;
        return v >= 1 && v <= 8 ? (int)v : 1;
    }
#undef U32
#undef U16
    return 1;
}

// How display pixel (x, y) is found in the stored picture for each EXIF orientation (PIL's
// ImageOps.exif_transpose): (u, v) = swap ? (y, x) : (x, y), then sx = flip_x ? W - 1 - u : u and
// sy = flip_y ? H - 1 - v : v. 2 mirrored, 3 turned 180°, 4 mirrored top to bottom, 5 transposed,
// 6 to be turned 90° clockwise, 7 transversed, 8 to be turned 90° anticlockwise.
static const struct {
    bool swap, flip_x, flip_y;
} orientations[9] = {
    [0] = {0},       [1] = {0, 0, 0}, [2] = {0, 1, 0}, [3] = {0, 1, 1}, [4] = {0, 0, 1},
    [5] = {1, 0, 0}, [6] = {1, 0, 1}, [7] = {1, 1, 1}, [8] = {1, 1, 0}};

// Orientations 5..8 turn the picture a quarter: the displayed width is the stored height.
static bool orientation_swaps(int orientation) { return orientations[orientation].swap; }

// The displayed picture of a stored one.
static int apply_orientation(ldmc_image *img, int orientation) {
    if (orientation <= 1) return 0;
    const int W = img->width, H = img->height;
    const bool swap = orientations[orientation].swap, flip_x = orientations[orientation].flip_x,
               flip_y = orientations[orientation].flip_y;
    const int DW = swap ? H : W, DH = swap ? W : H;
    uint8_t *out = malloc((size_t)W * H * 3);
    if (!out) return -1;
    for (int y = 0; y < DH; y++)
        for (int x = 0; x < DW; x++) {
            int u = swap ? y : x, v = swap ? x : y;
            int sx = flip_x ? W - 1 - u : u, sy = flip_y ? H - 1 - v : v;
            memcpy(out + ((size_t)y * DW + x) * 3, img->pixels + ((size_t)sy * W + sx) * 3, 3);
        }
    free(img->pixels);
    img->pixels = out;
    img->width = DW, img->height = DH;
    return 0;
}

// ---- PNG ----------------------------------------------------------------------------------------
// libpng's full API rather than its simplified one, which composites alpha onto whatever the
// buffer held and treats 16-bit samples without a gAMA chunk as linear light. Here every file is
// read as sRGB (gAMA, cHRM, sRGB and iCCP are not applied, as PIL and the trainers built on it
// do not), 16-bit samples are scaled to 8 bits with rounding, and alpha (an alpha channel or a
// tRNS colour) is composited onto white in sRGB values.

typedef struct png_reader {
    const uint8_t *data;
    size_t size, pos;
    char message[256];
} png_reader;

static void png_read_memory(png_structp png, png_bytep out, size_t n) {
    png_reader *r = png_get_io_ptr(png);
    if (n > r->size - r->pos) png_error(png, "the file ends early");
    memcpy(out, r->data + r->pos, n);
    r->pos += n;
}

static void png_on_error(png_structp png, png_const_charp message) {
    png_reader *r = png_get_error_ptr(png);
    snprintf(r->message, sizeof r->message, "%s", message);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp message) {
    (void)png, (void)message; // ancillary-chunk complaints (sRGB profiles, text): not our concern
}

// (r, g, b, a) onto white, in place: 4 bytes a pixel in, 3 out.
static void composite_on_white(uint8_t *px, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *in = px + 4 * i;
        unsigned a = in[3];
        uint8_t rgb[3];
        for (int c = 0; c < 3; c++)
            rgb[c] = (uint8_t)((in[c] * a + 255u * (255u - a) + 127u) / 255u);
        memcpy(px + 3 * i, rgb, 3);
    }
}

static int png_decode(const char *path, const uint8_t *d, size_t n, bool header_only,
                      ldmc_image *out, int *orientation, ldmc_err *err) {
    png_reader reader = {.data = d, .size = n};
    png_structp png =
        png_create_read_struct(PNG_LIBPNG_VER_STRING, &reader, png_on_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return LDMC_ERR(err, "%s: out of memory", path);
    }
    uint8_t *volatile pixels = NULL;
    png_bytep *volatile rows = NULL;
    volatile bool in_header = true;
    if (setjmp(png_jmpbuf(png))) {
        free(pixels);
        free(rows);
        png_destroy_read_struct(&png, &info, NULL);
        return LDMC_ERR(err, "%s: %s PNG: %s", path,
                        in_header ? "not a readable" : "corrupt or truncated", reader.message);
    }
    png_set_read_fn(png, &reader, png_read_memory);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    if (w == 0 || h == 0 || (int64_t)w * h > MAX_PIXELS) {
        png_destroy_read_struct(&png, &info, NULL);
        return LDMC_ERR(err, "%s: PNG of %ux%u pixels is out of range", path, w, h);
    }
    png_uint_32 exif_size = 0;
    png_bytep exif = NULL;
    *orientation =
        png_get_eXIf_1(png, info, &exif_size, &exif) ? exif_orientation(exif, exif_size) : 1;
    out->width = (int)w, out->height = (int)h;
    if (header_only) {
        png_destroy_read_struct(&png, &info, NULL);
        return 0;
    }
    in_header = false;
    png_set_expand(png);      // palette to RGB, gray below 8 bits to 8, tRNS to an alpha channel
    png_set_scale_16(png);    // 16-bit samples to 8, rounded
    png_set_gray_to_rgb(png); // gray (and gray + alpha) to RGB
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    int channels = png_get_channels(png, info);
    size_t row_bytes = png_get_rowbytes(png, info);
    if ((channels != 3 && channels != 4) || row_bytes != (size_t)w * channels)
        png_error(png, "unexpected sample layout after conversion to 8-bit RGB");
    pixels = malloc((size_t)h * row_bytes);
    rows = malloc((size_t)h * sizeof *rows);
    if (!pixels || !rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++)
        rows[y] = pixels + (size_t)y * row_bytes;
    png_read_image(png, rows); // the picture is complete here; what follows IDAT is metadata
    if (channels == 4) composite_on_white(pixels, (int64_t)w * h);
    out->pixels = pixels;
    free(rows);
    png_destroy_read_struct(&png, &info, NULL);
    return 0;
}

// ---- JPEG ---------------------------------------------------------------------------------------

// What TurboJPEG's header call does not report: the EXIF orientation (APP1) and whether an Adobe
// APP14 segment is present (Photoshop's CMYK and YCCK files store their ink values inverted).
typedef struct jpeg_markers {
    int orientation;
    bool adobe;
} jpeg_markers;

// Walks the segments before the first scan; stops quietly at anything malformed (TurboJPEG
// judges the stream itself).
static jpeg_markers jpeg_scan_markers(const uint8_t *d, size_t n) {
    jpeg_markers m = {.orientation = 1};
    bool have_exif = false;
    size_t i = 2;
    while (i + 4 <= n && d[i] == 0xff) {
        while (i < n && d[i] == 0xff)
            i++; // fill bytes
        if (i + 3 > n) break;
        uint8_t marker = d[i++];
        if (marker == 0x01 || (marker >= 0xd0 && marker <= 0xd8)) continue; // no length
        if (marker == 0xd9 || marker == 0xda) break;                        // EOI, SOS
        size_t len = (size_t)d[i] << 8 | d[i + 1];
        if (len < 2 || len > n - i) break;
        const uint8_t *seg = d + i + 2;
        size_t seg_len = len - 2;
        if (marker == 0xe1 && !have_exif && seg_len >= 6 && !memcmp(seg, "Exif\0\0", 6)) {
            m.orientation = exif_orientation(seg + 6, seg_len - 6);
            have_exif = true;
        } else if (marker == 0xee && seg_len >= 5 && !memcmp(seg, "Adobe", 5)) {
            m.adobe = true;
        }
        i += len;
    }
    return m;
}

static int jpeg_header(tjhandle tj, const char *path, const uint8_t *d, size_t n, int *w, int *h,
                       int *colorspace, ldmc_err *err) {
    int subsamp = -1;
    *w = *h = 0; // a stream cut inside its header "succeeds" without setting them
    *colorspace = -1;
    if (tjDecompressHeader3(tj, d, (unsigned long)n, w, h, &subsamp, colorspace) != 0)
        return LDMC_ERR(err, "%s: not a readable JPEG: %s", path, tjGetErrorStr2(tj));
    if (*w == 0 || *h == 0) return LDMC_ERR(err, "%s: truncated JPEG: no frame header", path);
    if (*w < 0 || *h < 0 || (int64_t)*w * *h > MAX_PIXELS)
        return LDMC_ERR(err, "%s: JPEG of %dx%d pixels is out of range", path, *w, *h);
    return 0;
}

// CMYK (4 bytes a pixel, in place) to RGB as PIL converts: R = (255 - C)(255 - K) / 255, ...
// Inverted files (Adobe) store 255 - ink, so there R = C K / 255.
static void cmyk_to_rgb(uint8_t *px, int64_t n, bool inverted) {
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *in = px + 4 * i;
        unsigned k = inverted ? in[3] : 255u - in[3];
        uint8_t rgb[3];
        for (int c = 0; c < 3; c++)
            rgb[c] = (uint8_t)(((inverted ? in[c] : 255u - in[c]) * k + 127u) / 255u);
        memcpy(px + 3 * i, rgb, 3);
    }
}

// The smallest DCT-scaled size (1/8 .. 1) that still covers min_w x min_h (of the stored picture).
static void jpeg_scaled_size(int w, int h, int min_w, int min_h, int *best_w, int *best_h) {
    int count = 0;
    tjscalingfactor *factors = tjGetScalingFactors(&count);
    *best_w = w, *best_h = h;
    for (int i = 0; i < count && (min_w > 0 || min_h > 0); i++) {
        int sw = TJSCALED(w, factors[i]), sh = TJSCALED(h, factors[i]);
        if (sw >= min_w && sh >= min_h && sw <= w && (int64_t)sw * sh < (int64_t)*best_w * *best_h)
            *best_w = sw, *best_h = sh;
    }
}

static int jpeg_decode(const char *path, const uint8_t *d, size_t n, int min_w, int min_h,
                       bool header_only, ldmc_image *out, int *orientation, ldmc_err *err) {
    tjhandle tj = tjInitDecompress();
    if (!tj) return LDMC_ERR(err, "TurboJPEG failed to start");
    jpeg_markers m = jpeg_scan_markers(d, n);
    *orientation = m.orientation;
    int w, h, colorspace;
    int rc = jpeg_header(tj, path, d, n, &w, &h, &colorspace, err);
    bool cmyk = colorspace == TJCS_CMYK || colorspace == TJCS_YCCK;
    if (rc == 0 && header_only) {
        out->width = w, out->height = h;
    } else if (rc == 0) {
        if (orientation_swaps(m.orientation)) { // the minimum is of the displayed picture
            int t = min_w;
            min_w = min_h, min_h = t;
        }
        int sw, sh;
        jpeg_scaled_size(w, h, min_w, min_h, &sw, &sh);
        out->pixels = malloc((size_t)sw * sh * (cmyk ? 4 : 3));
        if (!out->pixels) {
            rc = LDMC_ERR(err, "%s: out of memory", path);
        } else if (tjDecompress2(tj, d, (unsigned long)n, out->pixels, sw, 0, sh,
                                 cmyk ? TJPF_CMYK : TJPF_RGB,
                                 TJFLAG_STOPONWARNING | TJFLAG_ACCURATEDCT) != 0) {
            rc = LDMC_ERR(err, "%s: corrupt or truncated JPEG: %s", path, tjGetErrorStr2(tj));
            free(out->pixels);
            out->pixels = NULL;
        } else {
            if (cmyk) cmyk_to_rgb(out->pixels, (int64_t)sw * sh, m.adobe);
            out->width = sw, out->height = sh;
        }
    }
    tjDestroy(tj);
    return rc;
}

static int decode(const char *path, int min_w, int min_h, bool header_only, ldmc_image *out,
                  ldmc_err *err) {
    uint8_t *d = NULL;
    size_t n = 0;
    *out = (ldmc_image){0};
    if (read_file(path, &d, &n, err) != 0) return -1;
    int rc, orientation = 1;
    if (is_png(d, n))
        rc = png_decode(path, d, n, header_only, out, &orientation, err);
    else if (is_jpeg(d, n))
        rc = jpeg_decode(path, d, n, min_w, min_h, header_only, out, &orientation, err);
    else
        rc = LDMC_ERR(err, "%s: neither a JPEG nor a PNG (by its first bytes)", path);
    free(d);
    if (rc == 0 && header_only && orientation_swaps(orientation)) {
        int t = out->width;
        out->width = out->height, out->height = t;
    } else if (rc == 0 && !header_only && apply_orientation(out, orientation) != 0) {
        ldmc_image_free(out);
        rc = LDMC_ERR(err, "%s: out of memory", path);
    }
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
