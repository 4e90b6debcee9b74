// TensorBoard event files (events.out.tfevents.*): scalars and PNG images, as TFRecord records of
// Event protocol buffers (protobuf-c, src/io/tensorboard.proto) with masked CRC-32C checksums
// (ISA-L). Tested by tests/test_train.c, which reads a file back and checks every record.
#pragma once
#include <stdint.h>
#include <stdio.h>

#include "core/error.h"

typedef struct ldmc_tensorboard {
    FILE *file;
    char path[1024];
} ldmc_tensorboard;

// Creates <dir>/events.out.tfevents.<seconds>.ldmc and writes the file-version event.
int ldmc_tensorboard_open(ldmc_tensorboard *tb, const char *dir, ldmc_err *err);
int ldmc_tensorboard_scalar(ldmc_tensorboard *tb, const char *tag, int64_t step, double value);
int ldmc_tensorboard_image(ldmc_tensorboard *tb, const char *tag, int64_t step, const uint8_t *rgb,
                           int width, int height);
void ldmc_tensorboard_close(ldmc_tensorboard *tb);

// The masked CRC-32C of TFRecord framing.
uint32_t ldmc_tfrecord_crc(const void *data, size_t size);
