// The FID Inception-v3 (pytorch-fid's FIDInceptionV3: torchvision's Inception3 with 1008 classes
// and the TF graph's pooling quirks: the pool branches of Mixed_5b-5d, 6b-6e and 7b average with
// count_include_pad=False, Mixed_7c's pool branch is a max pool), forward only, in f32 on ldmc's
// ops: every BasicConv2d's eval-mode batch norm (eps 0.001) folded into its convolution at load
// (w γ/√(var + eps), β - mean γ/√(var + eps)), then ReLU. Outputs the 2048-d pool3 features (FID)
// and the 1008 logits without the bias (the Inception Score's, as torch-fidelity and OpenAI).
// Weights: the keys of pytorch-fid's pt_inception-2015-12-05-6726825d.pth (torchvision names:
// Conv2d_1a_3x3.conv.weight, Mixed_5b.branch1x1.bn.running_var, ..., fc.weight).
// Its preprocessing (eval/fid.h) resizes to 299 x 299 first. ../shared/reference/fid-is.md.
// Tested by tests/test_eval.c against tests/ref/make_inception_refs.py (torchvision with
// pytorch-fid's blocks, random weights).
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/tape.h"

#define LDMC_INCEPTION_SIZE 299
#define LDMC_INCEPTION_FEATURES 2048
#define LDMC_INCEPTION_CLASSES 1008

typedef struct ldmc_inception_conv ldmc_inception_conv;

typedef struct ldmc_inception {
    ldmc_inception_conv *convs; // the BasicConv2d layers, folded (O, kh, kw, C) + bias (O)
    int n_convs;
    float *fc_weight, *fc_bias; // (1008, 2048), (1008)
} ldmc_inception;

// Fills `out` (numel values, PyTorch's layout) with the tensor `name` of `shape` (ndim dims), or
// returns -1 with a message in err.
typedef int (*ldmc_inception_source)(void *arg, const char *name, int ndim, const int64_t *shape,
                                     float *out, ldmc_err *err);

// Loads the weights by name from `source` and folds the batch norms. -1 with the message.
int ldmc_inception_load(ldmc_inception *m, ldmc_inception_source source, void *arg, ldmc_err *err);
// Random weights for benchmarks: convolutions U(-1, 1)·√(6/fan_in), batch norms near the identity.
int ldmc_inception_init_random(ldmc_inception *m, uint64_t seed, ldmc_err *err);
// From a file: pytorch-fid's .pth (io/torch_file.h), or a safetensors file with the same keys.
int ldmc_inception_load_file(ldmc_inception *m, const char *path, ldmc_err *err);
void ldmc_inception_free(ldmc_inception *m);
// The tensors the model reads, in order: their keys and PyTorch shapes. Returns how many.
typedef struct ldmc_inception_tensor {
    char name[64];
    int ndim;
    int64_t shape[4];
} ldmc_inception_tensor;
int ldmc_inception_tensors(const ldmc_inception_tensor **out);

// x: (N, 299, 299, 3) f32 in [-1, 1] on the CPU context -> pool3 (N, 2048) and, when logits is
// not NULL, the unbiased logits (N, 1008), both host f32. Unrecorded; what it allocates in ctx is
// released.
void ldmc_inception_forward(ldmc_ctx *ctx, const ldmc_inception *m, const float *x, int n,
                            float *pool3, float *logits);
