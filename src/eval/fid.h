// FID and Inception Score as pytorch-fid and torch-fidelity compute them
// (../shared/reference/fid-is.md): images (a folder, sorted by name) through a preprocessing and
// the FID Inception (nn/inception.h) to pool3 features and logits; statistics mu (mean) and
// sigma (unbiased covariance) in double, written and read as pytorch-fid's .npz (mu, sigma);
// the Fréchet distance with the matrix square root's trace from LAPACK's symmetric eigensolver,
// tr √(Σ1 Σ2) = Σ √λ(√Σ1 Σ2 √Σ1), which needs no imaginary-part clean-up and stays defined when
// the covariances are singular (fewer images than features); the Inception Score from the
// unbiased logits in double with torch-fidelity's split rule (10 splits at i N / 10, after its
// shuffle: numpy's RandomState(2020).permutation) or OpenAI's (no shuffle).
// Tested by tests/test_eval.c against tests/ref/make_inception_refs.py and make_fid_refs.py
// (scipy's sqrtm formula, numpy's permutation, torchvision's Inception).
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/tape.h"
#include "nn/inception.h"

// How an 8-bit image becomes the network's 299 x 299 input.
typedef enum ldmc_fid_preprocess {
    // pytorch-fid: v/255, PyTorch's bilinear (align_corners=False, no antialias), then 2x - 1
    LDMC_FID_PYTORCH,
    // torch-fidelity and the TF graph: TF1's legacy bilinear on [0, 255], then (x - 128)/128
    LDMC_FID_TF,
} ldmc_fid_preprocess;

// An 8-bit RGB image (h, w, 3) -> the network's input (299, 299, 3).
void ldmc_fid_preprocess_image(const uint8_t *rgb, int w, int h, ldmc_fid_preprocess mode,
                               float *out);

// Features of a set of images.
typedef struct ldmc_fid_features {
    int n;
    double *pool3;  // (n, 2048)
    double *logits; // (n, 1008), the IS's (no bias)
} ldmc_fid_features;

typedef struct ldmc_fid_options {
    ldmc_fid_preprocess mode;
    int batch;  // images per forward (8)
    bool quiet; // no progress line
} ldmc_fid_options;

// The images of a folder (.png, .jpg, .jpeg, .bmp, .webp... as pytorch-fid lists them, sorted by
// name): every one that loads; the ones that do not are named (the first few), counted in
// *skipped and left out. -1 when the folder cannot be read or holds no image.
int ldmc_fid_folder_features(ldmc_ctx *ctx, const ldmc_inception *m, const char *dir,
                             const ldmc_fid_options *o, ldmc_fid_features *out, int *skipped,
                             ldmc_err *err);
// The same for 8-bit images in memory (n of w x h).
int ldmc_fid_image_features(ldmc_ctx *ctx, const ldmc_inception *m, const uint8_t *images, int n,
                            int w, int h, const ldmc_fid_options *o, ldmc_fid_features *out,
                            ldmc_err *err);
void ldmc_fid_features_free(ldmc_fid_features *f);

// Mean and covariance of d-dimensional features.
typedef struct ldmc_fid_stats {
    int d;
    int64_t n; // images behind them (0 when read from a file that does not say)
    double *mu, *sigma;
} ldmc_fid_stats;

// mu and the unbiased covariance (divides by n - 1) of n rows of d values; n >= 2.
int ldmc_fid_stats_compute(const double *x, int n, int d, ldmc_fid_stats *out, ldmc_err *err);
void ldmc_fid_stats_free(ldmc_fid_stats *s);
// pytorch-fid's .npz: mu (d) and sigma (d, d), float64 (float32 is read too), stored or deflated.
int ldmc_fid_stats_read(const char *path, ldmc_fid_stats *out, ldmc_err *err);
int ldmc_fid_stats_write(const char *path, const ldmc_fid_stats *s, ldmc_err *err);

// The Fréchet distance ||mu1 - mu2||² + tr Σ1 + tr Σ2 - 2 tr √(Σ1 Σ2). -1 on a LAPACK failure.
int ldmc_fid_distance(const ldmc_fid_stats *a, const ldmc_fid_stats *b, double *fid, ldmc_err *err);

// numpy's RandomState(seed).permutation(n) (MT19937, legacy seeding and shuffle), into perm.
void ldmc_numpy_permutation(uint32_t seed, int n, int *perm);

// The Inception Score of n logit rows (k classes): per split exp(mean KL(p || mean p)), then the
// mean and the population std over splits. shuffle: torch-fidelity's (RandomState(2020)); off:
// OpenAI's sequential splits.
int ldmc_inception_score(const double *logits, int n, int k, int splits, bool shuffle, double *mean,
                         double *std, ldmc_err *err);
