#!/usr/bin/env python3
"""Checks a checkpoint ldmc wrote against the official key list of its config, with a reader that
is not ldmc's: the header through json, every tensor's bytes through numpy.

  check_official_keys.py FILE.safetensors KEYS.json [--dtype F32|F16|BF16]
  check_official_keys.py --keys-from LISTING KEYS.json   (`ldmc info CONFIG --keys` output)

KEYS.json (tests/ref/data/keys_<config>.json, made from the PyTorch modules by
dump_model_keys.py) lists [key, shape] in state_dict order. The file must hold exactly those keys
with those shapes, in that order, each tensor's byte range must match its shape and dtype and
tile the data section, and every value must be finite. Exits 1 with the differences otherwise.
Needs only python3 and numpy.
"""
import json
import struct
import sys

import numpy as np

NUMPY = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I32": np.int32, "I64": np.int64}
SIZES = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I64": 8}


def fail(message):
    print(f"check_official_keys: {message}", file=sys.stderr)
    sys.exit(1)


def read_listing(path):
    entries = []
    with open(path) as f:
        for line in f:
            key, shape = line.strip().split(" ", 1)
            entries.append([key, json.loads(shape)])
    return entries


def read_file(path, want_dtype):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    header.pop("__metadata__", None)
    entries, end = [], 0
    for key, info in header.items():  # json keeps the file's order
        dtype, shape, (begin, stop) = info["dtype"], info["shape"], info["data_offsets"]
        if want_dtype and dtype != want_dtype:
            fail(f"{key} is {dtype}, expected {want_dtype}")
        if begin != end:
            fail(f"{key} starts at {begin}, the previous tensor ended at {end}")
        if stop - begin != int(np.prod(shape, dtype=np.int64)) * SIZES[dtype]:
            fail(f"{key}: {stop - begin} bytes for {dtype} {shape}")
        values = np.frombuffer(data[begin:stop], dtype=NUMPY[dtype])
        if dtype == "BF16":
            values = (values.astype(np.uint32) << 16).view(np.float32)
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            fail(f"{key} holds non-finite values")
        entries.append([key, shape])
        end = stop
    if end != len(data):
        fail(f"the tensors cover {end} of {len(data)} data bytes")
    return entries


def main():
    args = sys.argv[1:]
    want_dtype = None
    if "--dtype" in args:
        i = args.index("--dtype")
        want_dtype = args[i + 1]
        del args[i:i + 2]
    if len(args) == 3 and args[0] == "--keys-from":
        got, keys_path = read_listing(args[1]), args[2]
    elif len(args) == 2:
        got, keys_path = read_file(args[0], want_dtype), args[1]
    else:
        fail(__doc__)
    with open(keys_path) as f:
        want = json.load(f)
    if got == want:
        print(f"{len(got)} keys and shapes match {keys_path}")
        return
    got_map, want_map = dict((k, s) for k, s in got), dict((k, s) for k, s in want)
    missing = [k for k in want_map if k not in got_map]
    extra = [k for k in got_map if k not in want_map]
    shapes = [f"{k}: {got_map[k]} vs {want_map[k]}" for k in want_map if k in got_map and got_map[k] != want_map[k]]
    order = "" if missing or extra or shapes else "same keys and shapes, in another order"
    fail(f"mismatch with {keys_path}: missing {missing[:5]} ({len(missing)}), unexpected {extra[:5]} "
         f"({len(extra)}), shapes {shapes[:5]} ({len(shapes)}) {order}")


if __name__ == "__main__":
    main()
