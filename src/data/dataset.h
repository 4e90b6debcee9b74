// Training images on disk: a folder of JPEG and PNG files, with
//   - a caption beside each image (photo.jpg + photo.txt), or
//   - class folders (root/<class name>/*.png, classes numbered in name order), or
//   - root/metadata.jsonl: one {"file", "caption", "class", "original_size": [h, w],
//     "aesthetic_score"} per line, which lists the samples itself (original_size for files that
//     were resized beforehand; aesthetic_score for the refiner's vector, 6 when absent).
// Every file's header is read at scan time; files that cannot be read, are not images, or are
// corrupt are skipped, counted and named (the first ones), never silently dropped.
// Tested by tests/test_data.c.
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/error.h"

typedef enum ldmc_labels {
    LDMC_LABELS_NONE,
    LDMC_LABELS_FOLDERS,
    LDMC_LABELS_METADATA
} ldmc_labels;

typedef struct ldmc_sample {
    char *path;
    int height, width;                   // as stored
    int original_height, original_width; // c_size: the stored size unless metadata says otherwise
    int class_id;                        // -1 when unlabeled
    char *caption;                       // NULL when none
    float aesthetic;                     // the refiner's aesthetic score (metadata; else 6)
    bool has_aesthetic;                  // given by the metadata
    int bucket;                          // set by the batch plan
} ldmc_sample;

#define LDMC_SKIP_NAMED 16

typedef struct ldmc_dataset {
    char *root;
    ldmc_sample *items;
    int count;
    int n_classes;
    char **class_names;
    int skipped; // files passed over, with the first reasons below
    char *skip_reasons[LDMC_SKIP_NAMED];
} ldmc_dataset;

int ldmc_dataset_scan(const char *root, ldmc_labels labels, ldmc_dataset *out, ldmc_err *err);
void ldmc_dataset_free(ldmc_dataset *d);
// Leaves out the samples whose original height or width is below `min_side` (the paper's
// CIN-512-only); returns how many. Not errors: the caller reports the count.
int ldmc_dataset_keep_min_size(ldmc_dataset *d, int min_side);
// Prints "data: N images in ROOT, C classes, K files skipped" and names the skipped files (the
// first LDMC_SKIP_NAMED, with the reason).
void ldmc_dataset_report(const ldmc_dataset *d, FILE *out);
// A 64-bit fingerprint of the samples (FNV-1a over each one's path below the root, stored size,
// original size, class and caption, in order): equal for the same data wherever the folder is.
uint64_t ldmc_dataset_fingerprint(const ldmc_dataset *d);
