// TensorBoard event files (see tensorboard.h). Tested by tests/test_train.c.
#include "io/tensorboard.h"

#include <errno.h>
#include <isa-l/crc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "io/image_write.h"
#include "tensorboard.pb-c.h"

uint32_t ldmc_tfrecord_crc(const void *data, size_t size) {
    uint32_t crc = crc32_iscsi((unsigned char *)data, (int)size, 0xffffffffu) ^ 0xffffffffu;
    return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

static double wall_time(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec + tv.tv_usec * 1e-6;
}

// One TFRecord: length, its CRC, the bytes, their CRC.
static int write_record(ldmc_tensorboard *tb, const Ldmc__Tensorboard__Event *event) {
    size_t size = ldmc__tensorboard__event__get_packed_size(event);
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return -1;
    ldmc__tensorboard__event__pack(event, buf);
    uint64_t len = size;
    uint8_t header[12];
    for (int i = 0; i < 8; i++)
        header[i] = (uint8_t)(len >> (8 * i));
    uint32_t len_crc = ldmc_tfrecord_crc(header, 8), data_crc = ldmc_tfrecord_crc(buf, size);
    for (int i = 0; i < 4; i++)
        header[8 + i] = (uint8_t)(len_crc >> (8 * i));
    uint8_t footer[4];
    for (int i = 0; i < 4; i++)
        footer[i] = (uint8_t)(data_crc >> (8 * i));
    int rc = fwrite(header, 1, 12, tb->file) == 12 && fwrite(buf, 1, size, tb->file) == size &&
                     fwrite(footer, 1, 4, tb->file) == 4 && fflush(tb->file) == 0
                 ? 0
                 : -1;
    free(buf);
    return rc;
}

int ldmc_tensorboard_open(ldmc_tensorboard *tb, const char *dir, ldmc_err *err) {
    snprintf(tb->path, sizeof tb->path, "%s/events.out.tfevents.%ld.ldmc", dir, (long)wall_time());
    tb->file = fopen(tb->path, "wb");
    if (!tb->file) return LDMC_ERR(err, "%s: cannot create: %s", tb->path, strerror(errno));
    Ldmc__Tensorboard__Event event = LDMC__TENSORBOARD__EVENT__INIT;
    event.wall_time = wall_time();
    event.what_case = LDMC__TENSORBOARD__EVENT__WHAT_FILE_VERSION;
    event.file_version = "brain.Event:2";
    if (write_record(tb, &event) != 0) return LDMC_ERR(err, "%s: cannot write", tb->path);
    return 0;
}

static int write_value(ldmc_tensorboard *tb, int64_t step, Ldmc__Tensorboard__SummaryValue *value) {
    Ldmc__Tensorboard__Summary summary = LDMC__TENSORBOARD__SUMMARY__INIT;
    summary.n_value = 1;
    summary.value = &value;
    Ldmc__Tensorboard__Event event = LDMC__TENSORBOARD__EVENT__INIT;
    event.wall_time = wall_time();
    event.step = step;
    event.what_case = LDMC__TENSORBOARD__EVENT__WHAT_SUMMARY;
    event.summary = &summary;
    return write_record(tb, &event);
}

int ldmc_tensorboard_scalar(ldmc_tensorboard *tb, const char *tag, int64_t step, double value) {
    if (!tb->file) return -1;
    Ldmc__Tensorboard__SummaryValue v = LDMC__TENSORBOARD__SUMMARY_VALUE__INIT;
    v.tag = (char *)tag;
    v.value_case = LDMC__TENSORBOARD__SUMMARY_VALUE__VALUE_SIMPLE_VALUE;
    v.simple_value = (float)value;
    return write_value(tb, step, &v);
}

int ldmc_tensorboard_image(ldmc_tensorboard *tb, const char *tag, int64_t step, const uint8_t *rgb,
                           int width, int height) {
    if (!tb->file) return -1;
    uint8_t *png;
    size_t size;
    if (ldmc_png_encode(rgb, width, height, &png, &size) != 0) return -1;
    Ldmc__Tensorboard__Image image = LDMC__TENSORBOARD__IMAGE__INIT;
    image.height = height;
    image.width = width;
    image.colorspace = 3;
    image.encoded_image_string.data = png;
    image.encoded_image_string.len = size;
    Ldmc__Tensorboard__SummaryValue v = LDMC__TENSORBOARD__SUMMARY_VALUE__INIT;
    v.tag = (char *)tag;
    v.value_case = LDMC__TENSORBOARD__SUMMARY_VALUE__VALUE_IMAGE;
    v.image = &image;
    int rc = write_value(tb, step, &v);
    free(png);
    return rc;
}

void ldmc_tensorboard_close(ldmc_tensorboard *tb) {
    if (tb->file) fclose(tb->file);
    tb->file = NULL;
}
