// PyTorch checkpoint files (.pth, .pt, Lightning and Stable Diffusion .ckpt), read-only, as an
// ldmc_safetensors: torch.save's zip format (PyTorch >= 1.6: <folder>/data.pkl and the raw
// little-endian storages <folder>/data/<key>, stored or deflated, read with libzip) and the
// legacy format (PyTorch < 1.6: the magic number, protocol 1001 and sys_info pickles, the object,
// the list of storage keys, then each storage as an 8-byte element count and its bytes).
//
// The pickle is read by a restricted unpickler that never imports or calls anything: it knows
// the opcodes torch.save writes, and a global is accepted only from a fixed table (OrderedDict,
// torch's tensor and parameter rebuilders, the typed storages, set, and a few inert names real
// checkpoints hold next to their tensors: torch dtypes, torch.device, torch.Size, numpy scalars,
// and any pytorch_lightning.* name, which SD v1 .ckpt files hold in their callback states).
// Inert names become opaque values that are never run; any other global (os.system, a pickled
// nn.Module's class) refuses the file, naming the global.
//
// Which tensors: the top-level dict's "state_dict" entry when it is a dict (Lightning and
// Stable Diffusion .ckpt files), else the top-level dict (a state_dict saved as it is). Only its
// entries that are tensors count, under their keys as they are (SD keys are already full names);
// anything else (global_step, optimizer states, nested dicts) is skipped. Every tensor is copied
// contiguous (any view: strides, storage offsets, storages shared between tensors) into one
// owned buffer, in the file's order. Dtypes: float32, float16, bfloat16, int64 and int32 as they
// are; float64 becomes F32 (rounded to nearest; ldmc has no F64); int16, int8, uint8 and bool
// become I32. Complex, quantized and sparse tensors are refused by their globals.
// Every size, index and count is checked against the data: a bad file gets a message naming it.
// Tested by tests/test_torch_file.c (files made by tests/ref/make_torch_files.py).
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"
#include "io/safetensors.h"

// How many leading bytes ldmc_torch_file_probe looks at (fewer are fine for a short file).
#define LDMC_TORCH_PROBE_BYTES 32

// Whether the file starts as a PyTorch file does (a zip archive, or the legacy format's pickle).
bool ldmc_torch_file_probe(const unsigned char *head, size_t n);
// Opens a PyTorch file as an ldmc_safetensors (io/safetensors.h): every tensor copied,
// contiguous, into one owned buffer; names in the file's order. -1 with a message naming the
// file and the problem.
int ldmc_torch_open(ldmc_safetensors *st, const char *path, ldmc_err *err);
