// The demo dataset, drawn on the spot (nothing downloaded): pictures of four classes (circle,
// square, triangle, cross), each in its own colour family with jitter, at a random position,
// size and rotation on a random background, in varied sizes and aspect ratios, written as PNG
// and JPEG into class folders. Deterministic given the seed. Tested by tests/test_data.c.
#pragma once
#include <stdint.h>

#include "core/error.h"

#define LDMC_SHAPE_CLASSES 4

const char *ldmc_shape_class_name(int class_id);
// Draws picture `index` of a class into rgb (height, width, 3); anti-aliased (4x4 samples).
void ldmc_shape_draw(int class_id, int index, uint64_t seed, int width, int height, uint8_t *rgb);
// The size of picture `index` of a class: sides in [48, 192], aspect ratio in [1/2, 2].
void ldmc_shape_size(int class_id, int index, uint64_t seed, int *width, int *height);
// Writes per_class pictures of each class under out/<class>/ (every third one a JPEG).
int ldmc_shapes_write(const char *out, int per_class, uint64_t seed, ldmc_err *err);
