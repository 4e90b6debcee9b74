// The data pipeline: image decoding (and what happens with bad files), Algorithm 1's size and
// crop conditioning, aspect buckets, the batch plan, the threaded loader and the demo data.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/rng.h"
#include "data/batch_plan.h"
#include "data/buckets.h"
#include "data/dataset.h"
#include "data/image.h"
#include "data/loader.h"
#include "data/microcond.h"
#include "data/shapes.h"
#include "harness.h"
#include "io/files.h"
#include "io/image_write.h"
#include "io/safetensors.h"

// A picture whose every pixel says where it is: R = x, G = y, B = a checker.
static uint8_t *position_image(int w, int h) {
    uint8_t *rgb = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = rgb + ((size_t)y * w + x) * 3;
            p[0] = (uint8_t)(x * 255 / (w > 1 ? w - 1 : 1));
            p[1] = (uint8_t)(y * 255 / (h > 1 ? h - 1 : 1));
            p[2] = (uint8_t)(((x / 4 + y / 4) % 2) * 200);
        }
    return rgb;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    LDMC_CHECK(f && fwrite(data, 1, n, f) == n && fclose(f) == 0, "cannot write %s", path);
}

static uint8_t *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    LDMC_CHECK(f, "cannot read %s", path);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *d = malloc(*n);
    LDMC_CHECK(fread(d, 1, *n, f) == *n, "short read of %s", path);
    fclose(f);
    return d;
}

static void test_png_round_trip_and_jpeg_dct_scaling(void) {
    ldmc_err err = {0};
    uint8_t *rgb = position_image(37, 23);
    const char *png = test_tmp_path("round.png");
    REQUIRE(ldmc_png_write(png, rgb, 37, 23, &err) == 0, "%s", err.message);
    ldmc_image img;
    REQUIRE(ldmc_image_load(png, 0, 0, &img, &err) == 0, "%s", err.message);
    CHECK(img.width == 37 && img.height == 23 && !memcmp(img.pixels, rgb, 37 * 23 * 3),
          "PNG round trip");
    int w = 0, h = 0;
    CHECK(ldmc_image_probe(png, &w, &h, &err) == 0 && w == 37 && h == 23, "PNG probe %dx%d", w, h);
    ldmc_image_free(&img);
    free(rgb);
    // A large JPEG asked for at least 100x75 decodes at a DCT scale (1/8..1) that still covers it.
    rgb = position_image(800, 600);
    const char *jpg = test_tmp_path("large.jpg");
    REQUIRE(ldmc_jpeg_write(jpg, rgb, 800, 600, 90, &err) == 0, "%s", err.message);
    CHECK(ldmc_image_probe(jpg, &w, &h, &err) == 0 && w == 800 && h == 600, "JPEG probe %dx%d", w,
          h);
    REQUIRE(ldmc_image_load(jpg, 100, 75, &img, &err) == 0, "%s", err.message);
    CHECK(img.width == 100 && img.height == 75, "1/8 scale: got %dx%d", img.width, img.height);
    ldmc_image_free(&img);
    REQUIRE(ldmc_image_load(jpg, 150, 100, &img, &err) == 0, "%s", err.message);
    CHECK(img.width == 200 && img.height == 150, "1/4 scale: got %dx%d", img.width, img.height);
    ldmc_image_free(&img);
    REQUIRE(ldmc_image_load(jpg, 0, 0, &img, &err) == 0, "%s", err.message);
    CHECK(img.width == 800 && img.height == 600, "full size: got %dx%d", img.width, img.height);
    ldmc_image_free(&img);
    // The same JPEG with an EXIF orientation of 6 (to be turned 90° clockwise) is displayed
    // 600 wide and 800 high: the minimum asked for is of the displayed picture.
    size_t n;
    uint8_t *plain = read_bytes(jpg, &n);
    static const uint8_t exif[] = {0xff, 0xe1, 0,  34, 'E', 'x', 'i', 'f', 0, 0, // APP1
                                   'I',  'I',  42, 0,  8,   0,   0,   0,         // TIFF
                                   1,    0,                                      // 1 entry
                                   0x12, 0x01, 3,  0,  1,   0,   0,   0,   6, 0,
                                   0,    0,            // Orientation
                                   0,    0,    0,  0}; // no IFD1
    uint8_t *rotated = malloc(n + sizeof exif);
    memcpy(rotated, plain, 2);
    memcpy(rotated + 2, exif, sizeof exif);
    memcpy(rotated + 2 + sizeof exif, plain + 2, n - 2);
    const char *turned = test_tmp_path("turned.jpg");
    write_bytes(turned, rotated, n + sizeof exif);
    CHECK(ldmc_image_probe(turned, &w, &h, &err) == 0 && w == 600 && h == 800,
          "EXIF 6 probe %dx%d, want 600x800", w, h);
    REQUIRE(ldmc_image_load(turned, 75, 100, &img, &err) == 0, "%s", err.message);
    CHECK(img.width == 75 && img.height == 100, "EXIF 6 at 1/8: got %dx%d", img.width, img.height);
    // the stored top-left corner (x = 0, y = 0: dark) is the displayed top-right one
    const uint8_t *top_right = img.pixels + (size_t)(img.width - 1) * 3;
    CHECK(top_right[0] < 40 && top_right[1] < 40, "EXIF 6: top right is (%d, %d, %d)", top_right[0],
          top_right[1], top_right[2]);
    ldmc_image_free(&img);
    free(plain);
    free(rotated);
    free(rgb);
}

// A folder with good pictures and bad files of every kind: the good ones are used, the bad ones
// counted and named, at scan time (bad headers) or at load time (bad data).
static const char *bad_folder(void) {
    static char root[1024];
    snprintf(root, sizeof root, "%s", test_tmp_path("bad"));
    ldmc_err err = {0};
    char path[1200];
    snprintf(path, sizeof path, "%s/good", root);
    LDMC_CHECK(ldmc_mkdirs(path, &err) == 0, "%s", err.message);
    uint8_t *rgb = position_image(64, 48);
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/good/%d.png", root, i);
        LDMC_CHECK(ldmc_png_write(path, rgb, 64, 48, &err) == 0, "%s", err.message);
    }
    snprintf(path, sizeof path, "%s/good/3.jpg", root);
    LDMC_CHECK(ldmc_jpeg_write(path, rgb, 64, 48, 90, &err) == 0, "%s", err.message);
    size_t n;
    uint8_t *jpeg = read_bytes(path, &n), *png;
    snprintf(path, sizeof path, "%s/good/truncated.jpg", root); // header intact, data cut
    write_bytes(path, jpeg, n * 2 / 3);
    snprintf(path, sizeof path, "%s/good/0.png", root);
    png = read_bytes(path, &n);
    snprintf(path, sizeof path, "%s/good/truncated.png", root);
    write_bytes(path, png, n * 2 / 3);
    png[n / 2] ^= 0x55, png[n / 2 + 1] ^= 0x55; // a flipped byte in the compressed data
    snprintf(path, sizeof path, "%s/good/corrupt.png", root);
    write_bytes(path, png, n);
    snprintf(path, sizeof path, "%s/good/header_only.jpg", root); // cut inside the header
    write_bytes(path, jpeg, 20);
    snprintf(path, sizeof path, "%s/good/text.png", root);
    write_bytes(path, "not a picture at all\n", 21);
    snprintf(path, sizeof path, "%s/good/empty.jpg", root);
    write_bytes(path, "", 0);
    free(jpeg);
    free(png);
    free(rgb);
    return root;
}

static void test_bad_images_are_skipped_and_counted(void) {
    ldmc_err err = {0};
    const char *root = bad_folder();
    ldmc_dataset d;
    REQUIRE(ldmc_dataset_scan(root, LDMC_LABELS_FOLDERS, &d, &err) == 0, "%s", err.message);
    // Scan time: the files whose header cannot be read.
    CHECK(d.skipped == 3, "skipped at scan: %d", d.skipped);
    bool named[3] = {false, false, false};
    for (int i = 0; i < d.skipped && i < LDMC_SKIP_NAMED; i++) {
        named[0] |= strstr(d.skip_reasons[i], "header_only.jpg") != NULL;
        named[1] |= strstr(d.skip_reasons[i], "text.png") != NULL;
        named[2] |= strstr(d.skip_reasons[i], "empty.jpg") != NULL;
    }
    CHECK(named[0] && named[1] && named[2], "each file skipped at scan is named");
    REQUIRE(d.count == 7, "7 files with readable headers, got %d", d.count);
    // Load time: truncated and corrupt data fail with a message naming the file, never a crash.
    int failed = 0;
    for (int i = 0; i < d.count; i++) {
        float *pixels = malloc(32 * 32 * 3 * sizeof(float));
        ldmc_crop plan;
        ldmc_err e = {0};
        int rc = ldmc_load_sample(&d, i, 0, 32, 32, 0.0, 1, pixels, &plan, &e);
        bool bad = strstr(d.items[i].path, "truncated") || strstr(d.items[i].path, "corrupt");
        CHECK((rc != 0) == bad, "%s: load %s", d.items[i].path, rc ? e.message : "succeeded");
        if (rc != 0)
            CHECK(strstr(e.message, d.items[i].path) != NULL, "the message names the file: %s",
                  e.message);
        failed += rc != 0;
        free(pixels);
    }
    CHECK(failed == 3, "3 files fail to decode, got %d", failed);
    // The loader leaves them out of their batches and counts them.
    ldmc_buckets buckets = {.count = 1, .height = {32}, .width = {32}};
    ldmc_loader_options opt = {.batch_size = 7, .threads = 2, .prefetch = 2, .seed = 1, .world = 1};
    ldmc_loader *l;
    REQUIRE(ldmc_loader_start(&l, &d, &buckets, &opt, 0, &err) == 0, "%s", err.message);
    const ldmc_batch *b = ldmc_loader_next(l);
    CHECK(b->n == 4 && b->failed == 3, "batch of %d with %d left out", b->n, b->failed);
    for (int i = 0; i < b->n; i++)
        CHECK(!strstr(d.items[b->samples[i]].path, "truncated") &&
                  !strstr(d.items[b->samples[i]].path, "corrupt"),
              "a bad file is in the batch");
    // Each failing file is named once, when the batch that lost it is handed out; the counts
    // are of the batches handed out only (the two prefetched ones do not count yet).
    CHECK(b->n_new_failures == 3, "%d new failures named, want 3", b->n_new_failures);
    for (int k = 0; k < b->n_new_failures; k++)
        CHECK(strstr(b->new_failures[k], "truncated") || strstr(b->new_failures[k], "corrupt"),
              "the message names the file: %s", b->new_failures[k]);
    CHECK(ldmc_loader_failed_files(l) == 3 && ldmc_loader_left_out(l) == 3,
          "after one batch: %lld files, %lld left out", (long long)ldmc_loader_failed_files(l),
          (long long)ldmc_loader_left_out(l));
    b = ldmc_loader_next(l); // the next epoch: the same files fail again, and are not named again
    CHECK(b->failed == 3 && b->n_new_failures == 0, "epoch 2: %d failed, %d named again", b->failed,
          b->n_new_failures);
    CHECK(ldmc_loader_failed_files(l) == 3 && ldmc_loader_left_out(l) == 6,
          "after two batches: %lld files, %lld left out", (long long)ldmc_loader_failed_files(l),
          (long long)ldmc_loader_left_out(l));
    ldmc_loader_stop(l);
    CHECK(d.skipped == 3, "the skip list holds the scan's skips only: %d", d.skipped);
    ldmc_dataset_free(&d);
}

// Folders without images: an empty data folder, an empty class folder and a class folder whose
// images are all unreadable are refused, each with a message naming the folder (UBSan: no qsort
// on NULL).
static void test_empty_folders_are_refused(void) {
    ldmc_err err = {0};
    char root[1100], path[1300];
    snprintf(root, sizeof root, "%s", test_tmp_path("empty"));
    REQUIRE(ldmc_mkdirs(root, &err) == 0, "%s", err.message);
    ldmc_dataset d;
    CHECK(ldmc_dataset_scan(root, LDMC_LABELS_NONE, &d, &err) != 0 && strstr(err.message, root) &&
              strstr(err.message, "no images"),
          "an empty folder: %s", err.message);
    ldmc_err_clear(&err);
    CHECK(ldmc_dataset_scan(root, LDMC_LABELS_FOLDERS, &d, &err) != 0 &&
              strstr(err.message, "class folders expected"),
          "no class folders: %s", err.message);
    ldmc_err_clear(&err);
    uint8_t *rgb = position_image(16, 16);
    snprintf(path, sizeof path, "%s/cats", root);
    REQUIRE(ldmc_mkdirs(path, &err) == 0, "%s", err.message);
    snprintf(path, sizeof path, "%s/cats/1.png", root);
    REQUIRE(ldmc_png_write(path, rgb, 16, 16, &err) == 0, "%s", err.message);
    free(rgb);
    snprintf(path, sizeof path, "%s/dogs", root); // a class without images
    REQUIRE(ldmc_mkdirs(path, &err) == 0, "%s", err.message);
    CHECK(ldmc_dataset_scan(root, LDMC_LABELS_FOLDERS, &d, &err) != 0 &&
              strstr(err.message, root) && strstr(err.message, "'dogs'"),
          "an empty class folder: %s", err.message);
    ldmc_err_clear(&err);
    snprintf(path, sizeof path, "%s/dogs/1.jpg", root); // ... and with an unreadable one
    write_bytes(path, "not a picture", 13);
    CHECK(ldmc_dataset_scan(root, LDMC_LABELS_FOLDERS, &d, &err) != 0 &&
              strstr(err.message, "'dogs'") &&
              strstr(err.message, "none of its 1 images is readable"),
          "a class folder of unreadable images: %s", err.message);
    ldmc_err_clear(&err);
    // recursive search in a tree of empty folders
    snprintf(path, sizeof path, "%s/dogs/deeper/still", root);
    REQUIRE(ldmc_mkdirs(path, &err) == 0, "%s", err.message);
    snprintf(path, sizeof path, "%s/dogs", root);
    CHECK(ldmc_dataset_scan(path, LDMC_LABELS_NONE, &d, &err) != 0 &&
              strstr(err.message, "no readable images"),
          "a tree with one unreadable file: %s", err.message);
}

// Unusual but valid files (tests/ref/make_image_refs.py: alpha, palettes with tRNS, 16-bit, gray,
// 1-bit, interlaced, a gAMA of 1.0, CMYK and YCCK, progressive, all eight EXIF orientations in
// JPEG and PNG, 1x1, 1:4 and 4:1, upper-case extensions) decode to the picture PIL shows: alpha
// on white, EXIF applied, CMYK converted, 16-bit as sRGB. The probe gives the displayed size.
// Tolerance: 1 of 255 (PIL rounds its alpha composite and CMYK conversion a little differently).
static void test_unusual_images_decode_as_pil_shows_them(void) {
    char dir[1100], path[1200];
    snprintf(dir, sizeof dir, "%s/images", test_data_dir());
    snprintf(path, sizeof path, "%s/images.safetensors", test_data_dir());
    ldmc_err err = {0};
    ldmc_safetensors st;
    REQUIRE(ldmc_safetensors_open(&st, path, &err) == 0, "%s", err.message);
    CHECK(st.count >= 27, "%d reference pictures", st.count);
    for (int i = 0; i < st.count; i++) {
        const ldmc_st_tensor *t = &st.tensors[i];
        snprintf(path, sizeof path, "%s/%s", dir, t->name);
        int H = (int)t->shape[0], W = (int)t->shape[1], w = 0, h = 0;
        int32_t *want = malloc((size_t)H * W * 3 * sizeof *want);
        REQUIRE(ldmc_safetensors_read(&st, t, want, LDMC_I32, &err) == 0, "%s", err.message);
        CHECK(ldmc_image_probe(path, &w, &h, &err) == 0 && w == W && h == H,
              "%s: probe %dx%d, displayed %dx%d %s", t->name, w, h, W, H, err.message);
        ldmc_err_clear(&err);
        ldmc_image img;
        if (ldmc_image_load(path, 0, 0, &img, &err) != 0) {
            CHECK(false, "%s: %s", t->name, err.message);
            ldmc_err_clear(&err);
            free(want);
            continue;
        }
        if (img.width != W || img.height != H) {
            CHECK(false, "%s: decoded %dx%d, displayed %dx%d", t->name, img.width, img.height, W,
                  H);
        } else {
            int worst = 0, at = 0;
            for (int k = 0; k < W * H * 3; k++) {
                int d = abs((int)img.pixels[k] - want[k]);
                if (d > worst) worst = d, at = k;
            }
            CHECK(worst <= 1, "%s: pixel (%d, %d) channel %d is %d, PIL shows %d", t->name,
                  at / 3 % W, at / 3 / W, at % 3, img.pixels[at], want[at]);
        }
        ldmc_image_free(&img);
        free(want);
    }
    ldmc_safetensors_close(&st);
}

// Algorithm 1 for fixed draws: c_size, the resize, the crop window and c_crop.
static void test_algorithm1_is_exact(void) {
    ldmc_crop p;
    // Portrait 300x200 (h x w) into 64x64: shorter side (w) -> 64, so 96x64; crop along the height.
    ldmc_crop_plan(300, 200, 300, 200, 64, 64, 0.5, 0.9, false, &p);
    CHECK(p.resized_height == 96 && p.resized_width == 64, "resized %dx%d", p.resized_height,
          p.resized_width);
    CHECK(p.top == 16 && p.left == 0, "top = floor(0.5 * 33) = 16, left 0: got %d, %d", p.top,
          p.left);
    CHECK(p.c_size[0] == 300 && p.c_size[1] == 200 && p.c_crop[0] == 16 && p.c_crop[1] == 0 &&
              p.c_target[0] == 64 && p.c_target[1] == 64,
          "conditioning");
    // Landscape 200x400 into 64x64 flipped: 64x128, left = floor(0.25 * 65) = 16; in the flipped
    // image the window starts at 128 - 16 - 64 = 48.
    ldmc_crop_plan(200, 400, 200, 400, 64, 64, 0.7, 0.25, true, &p);
    CHECK(p.resized_height == 64 && p.resized_width == 128 && p.top == 0 && p.left == 16,
          "landscape plan");
    CHECK(p.c_crop[0] == 0 && p.c_crop[1] == 48, "flipped c_crop (%d, %d)", p.c_crop[0],
          p.c_crop[1]);
    // A bucket target (wide) from a square: covered by the width, the height overhangs.
    ldmc_crop_plan(100, 100, 1000, 1000, 48, 80, 0.999, 0.0, false, &p);
    CHECK(p.resized_height == 80 && p.resized_width == 80 && p.top == 32 && p.left == 0,
          "bucket plan %dx%d at (%d, %d)", p.resized_height, p.resized_width, p.top, p.left);
    CHECK(p.c_size[0] == 1000 && p.c_size[1] == 1000,
          "c_size is the original size, not the decoded one");

    // The pixels: the resized image's window, mirrored when flipped.
    uint8_t *rgb = position_image(90, 50);
    ldmc_image img = {.width = 90, .height = 50, .pixels = rgb}, resized, out;
    for (int flip = 0; flip < 2; flip++) {
        ldmc_crop_plan(50, 90, 50, 90, 32, 32, 0.3, 0.6, flip, &p);
        REQUIRE(ldmc_image_resize(&img, p.resized_width, p.resized_height, &resized) == 0,
                "resize");
        REQUIRE(ldmc_crop_apply(&img, &p, &out) == 0, "crop");
        int bad = 0;
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++) {
                int sx = p.left + (flip ? 31 - x : x);
                bad +=
                    memcmp(out.pixels + ((size_t)y * 32 + x) * 3,
                           resized.pixels + ((size_t)(p.top + y) * resized.width + sx) * 3, 3) != 0;
            }
        CHECK(bad == 0, "flip %d: %d pixels differ from the window of the resized image", flip,
              bad);
        // c_crop is where the window is in the (flipped) resized image
        int c_left = flip ? p.resized_width - p.left - 32 : p.left;
        CHECK(p.c_crop[1] == c_left, "c_crop left %d, want %d", p.c_crop[1], c_left);
        ldmc_image_free(&resized);
        ldmc_image_free(&out);
    }
    free(rgb);
}

// The resize is antialiased: a fine checkerboard shrunk 8x averages to grey, not aliasing.
static void test_resize_is_antialiased(void) {
    ldmc_image img = {.width = 128, .height = 128, .pixels = malloc(128 * 128 * 3)}, out;
    for (int i = 0; i < 128 * 128; i++)
        memset(img.pixels + 3 * i, ((i % 128 + i / 128) % 2) ? 255 : 0, 3);
    REQUIRE(ldmc_image_resize(&img, 16, 16, &out) == 0, "resize");
    int lo = 255, hi = 0;
    for (int i = 0; i < 16 * 16 * 3; i++)
        lo = out.pixels[i] < lo ? out.pixels[i] : lo, hi = out.pixels[i] > hi ? out.pixels[i] : hi;
    // the mean of 0 and 255 in linear light is 188 in sRGB
    CHECK(lo >= 170 && hi <= 205, "8x shrink of a checkerboard: values in [%d, %d]", lo, hi);
    ldmc_image_free(&img);
    ldmc_image_free(&out);
}

// The crop offsets the loader draws are uniform over every allowed offset, both ends included.
static void test_crops_are_uniform(void) {
    enum { OVERHANG = 32, DRAWS = 33000 };
    int counts[OVERHANG + 1] = {0}, flips = 0;
    for (int i = 0; i < DRAWS; i++) {
        double u_top, u_left;
        bool flip;
        ldmc_crop_draws(7, i / 1000, i % 1000, 0.5, &u_top, &u_left, &flip);
        ldmc_crop p;
        ldmc_crop_plan(96, 64, 96, 64, 64, 64, u_top, u_left, flip, &p);
        REQUIRE(p.top >= 0 && p.top <= OVERHANG && p.left == 0, "offset %d outside [0, %d]", p.top,
                OVERHANG);
        counts[p.top]++;
        flips += flip;
    }
    double expected = (double)DRAWS / (OVERHANG + 1), chi2 = 0;
    for (int k = 0; k <= OVERHANG; k++)
        chi2 += (counts[k] - expected) * (counts[k] - expected) / expected;
    // 32 degrees of freedom: P(chi2 > 62) < 0.001
    CHECK(chi2 < 62, "crop offsets not uniform: chi2 = %.1f over %d offsets", chi2, OVERHANG + 1);
    CHECK(counts[0] > 0 && counts[OVERHANG] > 0, "both ends are reachable");
    CHECK(fabs(flips / (double)DRAWS - 0.5) < 0.01, "flip rate %.4f", flips / (double)DRAWS);
    // A sample's draws are fixed by (seed, epoch, sample) and change with the epoch.
    double a, b, c, d;
    bool fa, fb;
    ldmc_crop_draws(7, 3, 11, 0.5, &a, &b, &fa);
    ldmc_crop_draws(7, 3, 11, 0.5, &c, &d, &fb);
    CHECK(a == c && b == d && fa == fb, "the same draws for the same (seed, epoch, sample)");
    ldmc_crop_draws(7, 4, 11, 0.5, &c, &d, &fb);
    CHECK(a != c || b != d, "another epoch draws another crop");
}

static void test_buckets(void) {
    ldmc_err err = {0};
    ldmc_buckets sdxl;
    char path[1024];
    snprintf(path, sizeof path, "%s/../data/buckets/sdxl_1024.txt", LDMC_CONFIG_DIR);
    REQUIRE(ldmc_buckets_load(path, &sdxl, &err) == 0, "%s", err.message);
    CHECK(sdxl.count == 40, "the SDXL list has 40 buckets, got %d", sdxl.count);
    bool square = false;
    for (int i = 0; i < sdxl.count; i++) {
        CHECK(sdxl.height[i] % 64 == 0 && sdxl.width[i] % 64 == 0, "bucket %dx%d", sdxl.height[i],
              sdxl.width[i]);
        square |= sdxl.height[i] == 1024 && sdxl.width[i] == 1024;
    }
    CHECK(square, "1024x1024 is in the list");
    CHECK(sdxl.height[ldmc_bucket_assign(&sdxl, 1000, 1000)] == 1024,
          "a square image goes to 1024x1024");
    int b = ldmc_bucket_assign(&sdxl, 1080, 1920); // 16:9 -> 768x1344 (ratio 1.75)
    CHECK(sdxl.height[b] == 768 && sdxl.width[b] == 1344, "16:9 -> %dx%d", sdxl.height[b],
          sdxl.width[b]);
    // Generated lists for the 256^2 and 512^2 stages.
    for (int side = 256; side <= 512; side *= 2) {
        ldmc_buckets g;
        REQUIRE(ldmc_buckets_generate(side * side, 64, 4.0, &g, &err) == 0, "%s", err.message);
        CHECK(g.count >= 3, "%d buckets for %d^2", g.count, side);
        bool has_square = false;
        for (int i = 0; i < g.count; i++) {
            CHECK(g.height[i] % 64 == 0 && g.width[i] % 64 == 0 &&
                      g.height[i] * g.width[i] <= side * side,
                  "bucket %dx%d of %d^2", g.height[i], g.width[i], side);
            double r = (double)g.height[i] / g.width[i];
            CHECK(r <= 4.0 + 1e-9 && r >= 0.25 - 1e-9, "ratio %g", r);
            if (i) CHECK(r < (double)g.height[i - 1] / g.width[i - 1], "ordered from tall to wide");
            has_square |= g.height[i] == side && g.width[i] == side;
        }
        CHECK(has_square, "%d^2 has the square bucket", side);
    }
    // Assignment is the nearest log aspect ratio, against a brute force search.
    ldmc_rng rng = ldmc_rng_make(3, 0, 0, LDMC_RNG_TEST);
    float u[2000];
    ldmc_rng_uniform(&rng, 0, 2000, u);
    for (int i = 0; i < 1000; i++) {
        int h = 64 + (int)(u[2 * i] * 3000), w = 64 + (int)(u[2 * i + 1] * 3000);
        int got = ldmc_bucket_assign(&sdxl, h, w), best = 0;
        double best_d = 1e9;
        for (int k = 0; k < sdxl.count; k++) {
            double dist = fabs(log((double)h / w) - log((double)sdxl.height[k] / sdxl.width[k]));
            if (dist < best_d - 1e-12) best_d = dist, best = k;
        }
        CHECK(got == best, "%dx%d: bucket %d, nearest is %d", h, w, got, best);
    }
}

static void test_batches_hold_one_bucket_and_every_sample(void) {
    enum { N = 1000, BUCKETS = 7, BATCH = 16 };
    int bucket_of[N];
    ldmc_rng rng = ldmc_rng_make(5, 0, 0, LDMC_RNG_TEST);
    float u[N];
    ldmc_rng_uniform(&rng, 0, N, u);
    for (int i = 0; i < N; i++)
        bucket_of[i] = (int)(u[i] * u[i] * BUCKETS); // uneven fill
    ldmc_batch_plan s;
    ldmc_batch_plan_init(&s, N, bucket_of, BUCKETS, BATCH, 42, 0, 1);
    int expected_batches = 0;
    for (int b = 0; b < BUCKETS; b++)
        expected_batches += (s.fill[b] + BATCH - 1) / BATCH;
    CHECK(ldmc_batch_plan_steps_per_epoch(&s) == expected_batches, "steps per epoch");
    ldmc_epoch_plan p0, p0b, p1;
    ldmc_batch_plan_epoch(&s, 0, &p0);
    ldmc_batch_plan_epoch(&s, 0, &p0b);
    ldmc_batch_plan_epoch(&s, 1, &p1);
    REQUIRE(p0.n_batches == expected_batches, "%d batches, want %d", p0.n_batches,
            expected_batches);
    int seen[N] = {0}, partial[BUCKETS] = {0}, changes = 0;
    for (int k = 0; k < p0.n_batches; k++) {
        const ldmc_batch_ref *r = &p0.batches[k];
        CHECK(r->n >= 1 && r->n <= BATCH, "batch size %d", r->n);
        if (r->n < BATCH) partial[r->bucket]++;
        for (int j = 0; j < r->n; j++) {
            int i = p0.order[r->first + j];
            CHECK(bucket_of[i] == r->bucket, "sample %d of bucket %d in a batch of bucket %d", i,
                  bucket_of[i], r->bucket);
            seen[i]++;
        }
        if (k) changes += r->bucket != p0.batches[k - 1].bucket;
    }
    for (int i = 0; i < N; i++)
        CHECK(seen[i] == 1, "sample %d seen %d times in an epoch", i, seen[i]);
    for (int b = 0; b < BUCKETS; b++)
        CHECK(partial[b] <= 1, "bucket %d has %d partial batches", b, partial[b]);
    // The bucket changes at every step (possible here: the largest bucket has about 38%).
    CHECK(changes == p0.n_batches - 1, "the bucket changed at only %d of %d steps", changes,
          p0.n_batches - 1);
    bool same = p0.n_batches == p0b.n_batches && !memcmp(p0.order, p0b.order, N * sizeof(int)),
         differs = false;
    for (int k = 0; k < p0.n_batches; k++)
        same = same && p0.batches[k].bucket == p0b.batches[k].bucket &&
               p0.batches[k].first == p0b.batches[k].first;
    for (int i = 0; i < N; i++)
        differs |= p0.order[i] != p1.order[i];
    CHECK(same, "an epoch's plan is a function of (seed, epoch)");
    CHECK(differs, "the next epoch is shuffled differently");
    // A bucket with most of the batches: the fewest repeats possible (n_big - n_rest - 1).
    int skewed[100];
    for (int i = 0; i < 100; i++)
        skewed[i] = i < 80 ? 0 : 1 + i % 2; // 80, 10, 10 samples
    ldmc_batch_plan sk;
    ldmc_batch_plan_init(&sk, 100, skewed, 3, 5, 1, 0, 1); // 16 + 2 + 2 batches
    ldmc_epoch_plan ps;
    ldmc_batch_plan_epoch(&sk, 0, &ps);
    int repeats = 0;
    for (int k = 1; k < ps.n_batches; k++)
        repeats += ps.batches[k].bucket == ps.batches[k - 1].bucket;
    CHECK(ps.n_batches == 20 && repeats == 16 - 4 - 1, "%d repeats in %d batches, 11 at least",
          repeats, ps.n_batches);
    ldmc_epoch_plan_free(&ps);
    // Two ranks: global batches of 2 x BATCH, those of one rank with the doubled batch; at every
    // step both ranks are in the same bucket, on disjoint rows that cover the epoch.
    ldmc_batch_plan r0, r1, one;
    ldmc_batch_plan_init(&r0, N, bucket_of, BUCKETS, BATCH, 42, 0, 2);
    ldmc_batch_plan_init(&r1, N, bucket_of, BUCKETS, BATCH, 42, 1, 2);
    ldmc_batch_plan_init(&one, N, bucket_of, BUCKETS, 2 * BATCH, 42, 0, 1);
    ldmc_epoch_plan pr, po;
    ldmc_batch_plan_epoch(&r0, 0, &pr);
    ldmc_batch_plan_epoch(&one, 0, &po);
    bool same_plan = pr.n_batches == po.n_batches && !memcmp(pr.order, po.order, N * sizeof(int));
    for (int k = 0; same_plan && k < pr.n_batches; k++)
        same_plan =
            pr.batches[k].bucket == po.batches[k].bucket && pr.batches[k].n == po.batches[k].n;
    CHECK(same_plan, "2 ranks x %d: the global batches differ from 1 rank x %d's", BATCH,
          2 * BATCH);
    CHECK(ldmc_batch_plan_steps_per_epoch(&r0) == pr.n_batches, "steps per epoch: every global "
                                                                "batch once");
    int taken[N] = {0}, empty = 0;
    for (int k = 0; k < ldmc_batch_plan_steps_per_epoch(&r0); k++) {
        ldmc_batch_ref a = ldmc_batch_plan_batch(&r0, &pr, k),
                       b = ldmc_batch_plan_batch(&r1, &pr, k);
        CHECK(a.bucket == b.bucket && a.row == 0 && b.row == BATCH && a.total == pr.batches[k].n &&
                  b.total == a.total && a.n + b.n == a.total,
              "global batch %d: rank parts (bucket %d %d, rows %d %d, n %d %d of %d)", k, a.bucket,
              b.bucket, a.row, b.row, a.n, b.n, a.total);
        empty += b.n == 0;
        for (int j = 0; j < a.n; j++)
            taken[pr.order[a.first + j]]++;
        for (int j = 0; j < b.n; j++)
            taken[pr.order[b.first + j]]++;
    }
    int covered = 0, twice = 0;
    for (int i = 0; i < N; i++)
        covered += taken[i] >= 1, twice += taken[i] > 1;
    CHECK(covered == N && twice == 0, "2 ranks: %d covered, %d taken twice", covered, twice);
    CHECK(ldmc_batch_plan_rank_samples(&r0, 0) + ldmc_batch_plan_rank_samples(&r1, 1) == N,
          "the ranks' counts add up to the epoch");
    CHECK(empty > 0, "a bucket's last global batch leaves rank 1 empty here (the test's point)");
    // A resume at another global batch moves to the same point of the epoch.
    int64_t half = pr.n_batches / 2 + 3 * (int64_t)pr.n_batches; // epoch 3, halfway
    int64_t moved = ldmc_batch_plan_translate(&s, half, 2 * BATCH);
    CHECK(moved / p0.n_batches == 3 && llabs(moved % p0.n_batches - p0.n_batches / 2) <= 1,
          "position %lld (of %d per epoch) moved to %lld (of %d)", (long long)half, pr.n_batches,
          (long long)moved, p0.n_batches);
    ldmc_epoch_plan_free(&pr);
    ldmc_epoch_plan_free(&po);
    ldmc_epoch_plan_free(&p0);
    ldmc_epoch_plan_free(&p0b);
    ldmc_epoch_plan_free(&p1);
}

static bool same_batch(const ldmc_batch *a, const ldmc_batch *b) {
    return a->n == b->n && a->bucket == b->bucket && a->height == b->height &&
           a->width == b->width && !memcmp(a->samples, b->samples, (size_t)a->n * sizeof(int)) &&
           !memcmp(a->c_crop, b->c_crop, (size_t)a->n * 2 * sizeof(int32_t)) &&
           !memcmp(a->pixels, b->pixels, (size_t)a->n * a->height * a->width * 3 * sizeof(float));
}

// The loader's batches do not depend on its thread count, and a loader started mid-run at batch p
// gives what an uninterrupted one gives at p (resume).
static void test_loader_is_deterministic_and_resumable(void) {
    ldmc_err err = {0};
    const char *root = test_tmp_path("shapes");
    REQUIRE(ldmc_shapes_write(root, 12, 3, &err) == 0, "%s", err.message);
    ldmc_dataset d;
    REQUIRE(ldmc_dataset_scan(root, LDMC_LABELS_FOLDERS, &d, &err) == 0, "%s", err.message);
    CHECK(d.count == 48 && d.n_classes == 4 && d.skipped == 0, "%d images, %d classes", d.count,
          d.n_classes);
    for (int i = 0; i < d.count; i++) {
        const char *name = d.class_names[d.items[i].class_id]; // folders in name order
        CHECK(strstr(d.items[i].path, name) != NULL, "%s has class %s", d.items[i].path, name);
    }
    ldmc_buckets buckets;
    REQUIRE(ldmc_buckets_generate(32 * 32, 8, 2.0, &buckets, &err) == 0, "%s", err.message);
    ldmc_loader_options one = {
        .batch_size = 5, .threads = 1, .prefetch = 1, .flip = 0.5, .seed = 9, .world = 1};
    ldmc_loader_options many = one;
    many.threads = 3, many.prefetch = 4;
    ldmc_loader *a, *b, *c;
    REQUIRE(ldmc_loader_start(&a, &d, &buckets, &one, 0, &err) == 0, "%s", err.message);
    REQUIRE(ldmc_loader_start(&b, &d, &buckets, &many, 0, &err) == 0, "%s", err.message);
    REQUIRE(ldmc_loader_start(&c, &d, &buckets, &many, 17, &err) == 0, "%s", err.message);
    int steps = ldmc_batch_plan_steps_per_epoch(ldmc_loader_batch_plan(a));
    CHECK(steps < 17, "the test crosses an epoch boundary (%d batches per epoch)", steps);
    for (int k = 0; k < 25; k++) {
        const ldmc_batch *ba = ldmc_loader_next(a), *bb = ldmc_loader_next(b);
        CHECK(ba->position == k && same_batch(ba, bb), "batch %d differs between 1 and 3 threads",
              k);
        if (k >= 17) {
            const ldmc_batch *bc = ldmc_loader_next(c);
            CHECK(bc->position == k && same_batch(ba, bc), "batch %d differs after a restart at 17",
                  k);
        }
        for (int j = 0; j < ba->n; j++) {
            CHECK(ba->c_target[2 * j] == ba->height && ba->c_target[2 * j + 1] == ba->width,
                  "c_target");
            const ldmc_sample *s = &d.items[ba->samples[j]];
            CHECK(ba->c_size[2 * j] == s->height && ba->c_size[2 * j + 1] == s->width, "c_size");
            CHECK(ba->class_ids[j] == s->class_id, "class id");
        }
    }
    CHECK(ldmc_loader_wait_seconds(a) >= 0, "wait time");
    ldmc_loader_stop(a);
    ldmc_loader_stop(b);
    ldmc_loader_stop(c);
    ldmc_dataset_free(&d);
}

static void test_demo_pictures_are_deterministic(void) {
    int w, h, w2, h2;
    ldmc_shape_size(2, 5, 1, &w, &h);
    ldmc_shape_size(2, 5, 1, &w2, &h2);
    CHECK(w == w2 && h == h2 && w >= 48 && w <= 192 && h >= 48 && h <= 192, "size %dx%d", w, h);
    uint8_t *a = malloc((size_t)w * h * 3), *b = malloc((size_t)w * h * 3);
    ldmc_shape_draw(2, 5, 1, w, h, a);
    ldmc_shape_draw(2, 5, 1, w, h, b);
    CHECK(!memcmp(a, b, (size_t)w * h * 3), "the same picture for the same seed");
    free(a);
    free(b);
    // Sizes and aspect ratios vary.
    double min_r = 10, max_r = 0;
    for (int i = 0; i < 200; i++) {
        ldmc_shape_size(i % 4, i, 0, &w, &h);
        double r = (double)w / h;
        min_r = fmin(min_r, r), max_r = fmax(max_r, r);
    }
    CHECK(min_r < 0.7 && max_r > 1.4, "aspect ratios from %.2f to %.2f", min_r, max_r);
}

int main(int argc, char **argv) {
    static const test_entry tests[] = {
        TEST_ENTRY(test_png_round_trip_and_jpeg_dct_scaling),
        TEST_ENTRY(test_bad_images_are_skipped_and_counted),
        TEST_ENTRY(test_unusual_images_decode_as_pil_shows_them),
        TEST_ENTRY(test_empty_folders_are_refused),
        TEST_ENTRY(test_algorithm1_is_exact),
        TEST_ENTRY(test_resize_is_antialiased),
        TEST_ENTRY(test_crops_are_uniform),
        TEST_ENTRY(test_buckets),
        TEST_ENTRY(test_batches_hold_one_bucket_and_every_sample),
        TEST_ENTRY(test_loader_is_deterministic_and_resumable),
        TEST_ENTRY(test_demo_pictures_are_deterministic),
    };
    return test_main(argc, argv, tests, (int)(sizeof tests / sizeof tests[0]));
}
