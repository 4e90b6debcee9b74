#!/usr/bin/python3
"""PyTorch checkpoint files for tests/test_torch_file.c (src/io/torch_file.c reads them).

Writes tests/ref/data/torch/:
- state.pth: a small state dict in torch.save's zip format (a Conv2d and a BatchNorm2d's
  state_dict, with its _metadata, plus f32, f16, bf16, f64, int64, int32, int16, int8, uint8 and
  bool tensors, a 0-d tensor, an empty tensor, an nn.Parameter, a transpose, a slice with a
  storage offset and stride 2, and two tensors sharing one storage);
- state_legacy.pth: the same in the legacy format (_use_new_zipfile_serialization=False);
- state_deflated.pth: state.pth with every member deflated;
- state_protocol4.pth: the same saved with pickle protocol 4 (FRAME, MEMOIZE, STACK_GLOBAL);
- model.ckpt: a Lightning-style {'state_dict': ..., 'global_step': 7, 'epoch': 1,
  'optimizer_states': [...], 'hyper_parameters': {...}, 'callbacks': {ModelCheckpoint: {...}},
  'hparams': AttributeDict(...), 'loose': tensor} (only state_dict is read; the two Lightning
  classes are stand-ins pickled under Lightning's names);
- forbidden.pth, forbidden_legacy.pth: a dict whose 'evil' entry pickles as a call of
  posix.system (what os.system pickles as); PyTorch's plain torch.load would run it, ldmc must
  refuse the file without running anything;
- big_endian.pth: state.pth whose byteorder member says "big";
- no_data_pkl.pth: a zip archive holding only archive/version;
- tiny_vae.ckpt: {'state_dict': configs/tiny_vae.yaml's autoencoder under its official keys
  (first_stage_model.*, shapes from keys_tiny_vae.json), 'global_step': 1}, deflated; value k of
  key K (official layout, row-major) is ((k + FNV-1a-64(K)) mod 251 - 125) / 128, which
  compresses well and which the C test computes itself;
- expected.safetensors: for each tensor T of state.pth "state/T" and of model.ckpt's state_dict
  "ckpt/T", holding T contiguous as ldmc reads it (f64 as f32, int8/uint8/int16/bool as int32);
  bf16 bytes are stored as F16 (tests/ref/safetensors_writer.py has no BF16) and compared as
  bytes. Metadata: "order_state", "order_ckpt" (the names in file order), "dtypes" (name -> the
  dtype ldmc must report) and "shapes" (name -> shape; the writer stores a 0-d tensor as (1,)).

Run with Debian's PyTorch: /usr/bin/python3 tests/ref/make_torch_files.py
"""
import collections
import json
import os
import shutil
import sys
import types
import zipfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from safetensors_writer import save_file  # noqa: E402

OUT = os.path.join(HERE, "data", "torch")

# The dtype ldmc reports for each torch dtype (src/io/torch_file.h).
LDMC_DTYPE = {torch.float32: "F32", torch.float64: "F32", torch.float16: "F16",
              torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I32",
              torch.int8: "I32", torch.uint8: "I32", torch.bool: "I32"}


def fnv1a64(text):
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def small_state_dict():
    g = torch.Generator().manual_seed(1234)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        net[1].running_mean.copy_(torch.randn(4, generator=g))
        net[1].num_batches_tracked.fill_(12345678901)
    sd = net.state_dict()  # an OrderedDict with _metadata: pickled with BUILD
    sd["half"] = torch.randn(5, 7, generator=g).half()
    sd["bf16"] = torch.randn(3, 4, generator=g).bfloat16()
    sd["double"] = torch.tensor([1 / 3, -2e-40, 1e300, 0.1, -0.0, 2.5], dtype=torch.float64)
    sd["long"] = torch.tensor([2**40 + 3, -7, 0, 2**63 - 1, -2**63], dtype=torch.int64)
    sd["int32"] = torch.tensor([2**31 - 1, -2**31, 5], dtype=torch.int32)
    sd["int16"] = torch.tensor([-32768, 32767, 1], dtype=torch.int16)
    sd["int8"] = torch.tensor([-128, 127, -1], dtype=torch.int8)
    sd["uint8"] = torch.tensor([0, 255, 128], dtype=torch.uint8)
    sd["mask"] = torch.tensor([True, False, True, True])
    sd["scalar"] = torch.tensor(3.25)
    sd["empty"] = torch.zeros(0, 3)
    sd["param"] = torch.nn.Parameter(torch.randn(2, 3, generator=g))
    base = torch.randn(3, 5, generator=g)
    sd["transposed"] = base.t()  # (5, 3), strides (1, 5)
    big = torch.randn(4, 6, generator=g)
    sd["sliced"] = big[1:, ::2]  # (3, 3), offset 6, strides (6, 2)
    shared = torch.randn(10, generator=g)
    sd["shared_a"] = shared[:4]
    sd["shared_b"] = shared[4:].view(2, 3)  # same storage, offset 4
    assert not sd["transposed"].is_contiguous() and sd["sliced"].storage_offset() == 6
    assert sd["shared_a"].storage().data_ptr() == sd["shared_b"].storage().data_ptr()
    return sd


def as_stored(t):
    """T contiguous as ldmc reads it, as a numpy array safetensors_writer can store."""
    t = t.detach().contiguous()
    if t.dtype == torch.float64:
        return t.float().numpy()
    if t.dtype in (torch.int16, torch.int8, torch.uint8, torch.bool):
        return t.int().numpy()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.float16)
    return t.numpy()


def deflate_copy(src, dst):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))


def rewrite_zip(src, dst, replace=None, drop=()):
    """A copy of a zip archive with some members replaced or dropped (stored, like PyTorch's)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        names = zin.namelist()
        prefix = names[0].split("/")[0]
        for name in names:
            if name.split("/", 1)[1] in drop:
                continue
            data = zin.read(name)
            if replace and name.split("/", 1)[1] in replace:
                data = replace.pop(name.split("/", 1)[1])
            zout.writestr(name, data)
        for rest, data in (replace or {}).items():
            zout.writestr(prefix + "/" + rest, data)


def lightning_classes():
    """Stand-ins for pytorch_lightning's ModelCheckpoint and AttributeDict (not installed here),
    registered under Lightning's module names so that pickle names them as Lightning does: SD v1
    .ckpt files key their callback states by the ModelCheckpoint class."""
    classes = {}
    for module, name, base in (("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint",
                                object),
                               ("pytorch_lightning.utilities.parsing", "AttributeDict", dict)):
        parts = module.split(".")
        for i in range(1, len(parts) + 1):  # pickle imports the parents too
            sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        mod = sys.modules[module]
        cls = type(name, (base,), {"__module__": module})
        setattr(mod, name, cls)
        classes[name] = cls
    return classes


class Evil:
    """Pickles as a call of os.system (GLOBAL 'posix system'): torch.load without weights_only
    would run the command; ldmc must refuse the file."""

    def __reduce__(self):
        return (os.system, ("echo ldmc must never run this",))


def tiny_vae_state_dict():
    with open(os.path.join(HERE, "data", "keys_tiny_vae.json")) as f:
        keys = json.load(f)
    sd = collections.OrderedDict()
    for key, shape in keys:
        n = int(np.prod(shape))
        k = (np.arange(n, dtype=np.int64) + fnv1a64(key) % 251) % 251
        sd[key] = torch.from_numpy(((k - 125) / 128).astype(np.float32).reshape(shape))
    # what else an SD checkpoint's state_dict holds next to the autoencoder
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(1, dtype=torch.int32)
    return sd


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    path = lambda name: os.path.join(OUT, name)  # noqa: E731

    sd = small_state_dict()
    torch.save(sd, path("state.pth"))
    torch.save(sd, path("state_legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save(sd, path("state_protocol4.pth"), pickle_protocol=4)
    deflate_copy(path("state.pth"), path("state_deflated.pth"))

    lightning = lightning_classes()
    ckpt_sd = collections.OrderedDict()
    ckpt_sd["model.diffusion_model.out.weight"] = torch.randn(2, 3, generator=torch.Generator().manual_seed(5))
    ckpt_sd["model.diffusion_model.out.bias"] = torch.arange(2, dtype=torch.float16)
    ckpt_sd["first_stage_model.scale"] = torch.tensor([0.18215])
    ckpt = {
        "epoch": 1,
        "global_step": 7,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": ckpt_sd,
        "optimizer_states": [{"state": {0: {"step": 7, "exp_avg": torch.ones(2, 3)}},
                              "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999),
                                                "weight_decay": 0.0, "amsgrad": False,
                                                "params": [0, 1]}]}],
        "lr_schedulers": [],
        "hyper_parameters": {"dtype": torch.float16, "tags": {"a", "b"}, "note": None,
                             "big": 2**70, "flag": True},
        "callbacks": {lightning["ModelCheckpoint"]: {"best_model_score": torch.tensor(0.5),
                                                     "best_model_path": "last.ckpt"}},
        "hparams": lightning["AttributeDict"](lr=1e-4, size=[64, 64]),
        "loose": torch.zeros(3),
    }
    torch.save(ckpt, path("model.ckpt"))

    forbidden = {"weight": torch.ones(2), "evil": Evil()}
    torch.save(forbidden, path("forbidden.pth"))
    torch.save(forbidden, path("forbidden_legacy.pth"), _use_new_zipfile_serialization=False)

    rewrite_zip(path("state.pth"), path("big_endian.pth"), replace={"byteorder": b"big"})
    rewrite_zip(path("state.pth"), path("no_data_pkl.pth"), drop=("data.pkl",) + tuple(
        "data/%d" % i for i in range(64)))

    vae_file = path("tiny_vae.ckpt")
    torch.save({"state_dict": tiny_vae_state_dict(), "global_step": 1}, vae_file + ".tmp")
    deflate_copy(vae_file + ".tmp", vae_file)
    os.remove(vae_file + ".tmp")

    # every file but the broken ones loads in PyTorch as it was saved
    for name in ("state.pth", "state_legacy.pth", "state_protocol4.pth", "state_deflated.pth"):
        back = torch.load(path(name))
        assert list(back) == list(sd), name
        assert all(torch.equal(back[k], sd[k]) for k in sd), name
    back = torch.load(vae_file)["state_dict"]
    assert all(torch.equal(back[k], v) for k, v in tiny_vae_state_dict().items())

    expected, dtypes, shapes = {}, {}, {}
    for group, tensors in (("state", sd), ("ckpt", ckpt_sd)):
        for name, t in tensors.items():
            expected[group + "/" + name] = as_stored(t)
            dtypes[group + "/" + name] = LDMC_DTYPE[t.dtype]
            shapes[group + "/" + name] = list(t.shape)
    save_file(expected, path("expected.safetensors"),
              {"order_state": json.dumps(list(sd)), "order_ckpt": json.dumps(list(ckpt_sd)),
               "dtypes": json.dumps(dtypes), "shapes": json.dumps(shapes), "torch": torch.__version__,
               "generator": "tests/ref/make_torch_files.py"})
    total = 0
    for name in sorted(os.listdir(OUT)):
        total += os.path.getsize(path(name))
        print(f"{path(name)}: {os.path.getsize(path(name))} bytes")
    print(f"total {total / 1e3:.1f} kB")


if __name__ == "__main__":
    main()
