#!/usr/bin/python3
"""Reference outputs, losses and parameter gradients of whole models, made with PyTorch.

Writes tests/ref/data/models.safetensors, read by tests/test_models.c. The models are
tests/ref/sgm_ref.py (generative-models' UNetModel, SpatialTransformer, ResBlock and
AutoencoderKL) built from ldmc's configs/*.yaml. Nothing but references is stored:
- weights: every parameter, by its official key k, is signed_uniform(seed = FNV-1a-64(k)) in the
  official layout, scaled: 1/sqrt(fan_in) for matrices and convolutions (fan_in = numel/shape[0]),
  1 + u/4 for a 1-D `.weight` (norm gains), u/4 for a 1-D `.bias`;
- inputs: Philox as in make_op_refs.py (case metadata gives seeds, scales, whole-number ranges).
Stored: "<case>.out" (channels-last), "<case>.loss", "<case>.grad.<param key>" in the official
layout and "<case>.grad_in.<input>" (channels-last), each above 512 values at 256 sampled
positions ("<name>.idx"). The reference runs in float64 (the timestep and size embeddings in
float32, as sgm computes them).

Run with Debian's PyTorch: /usr/bin/python3 tests/ref/make_model_refs.py
"""
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import philox  # noqa: E402
import sgm_ref  # noqa: E402
from safetensors_writer import save_file  # noqa: E402

SAMPLE_ABOVE, SAMPLES = 512, 256
CONFIGS = os.path.join(HERE, "..", "..", "configs")


def fnv1a64(text):
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def init_weights(module, prefix):
    """The test initialization described above, in place."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            key = prefix + name
            u = torch.from_numpy(philox.signed_uniform(fnv1a64(key), p.numel()).astype(np.float64))
            u = u.reshape(p.shape)
            if p.dim() >= 2:
                p.copy_(u / np.sqrt(p.numel() // p.shape[0]))
            elif name.endswith(".weight"):
                p.copy_(1 + u / 4)
            else:
                p.copy_(u / 4)


def draw(spec):
    """An input as tests/test_models.c draws it: float32(u * scale + shift), or whole numbers
    floor(v) in [0, high) when `high` is given."""
    n = int(np.prod(spec["shape"]))
    u = philox.signed_uniform(spec["seed"], n).astype(np.float64)
    if "high" in spec:
        v = np.floor((u + 1) / 2 * spec["high"])
        return v.reshape(spec["shape"])
    return (u * spec.get("scale", 1.0) + spec.get("shift", 0.0)).astype(np.float32).astype(np.float64) \
        .reshape(spec["shape"])


def nchw(x):
    return x.permute(0, 3, 1, 2).contiguous()


def nhwc(x):
    return x.permute(0, 2, 3, 1).contiguous()


def store(tensors, name, value, rng):
    flat = value.detach().reshape(-1).to(torch.float64).numpy().astype(np.float32)
    if flat.size > SAMPLE_ABOVE:
        idx = np.sort(rng.choice(flat.size, SAMPLES, replace=False)).astype(np.int32)
        tensors[name + ".idx"] = torch.from_numpy(idx)
        flat = flat[idx]
    tensors[name] = torch.from_numpy(np.ascontiguousarray(flat))


CASES = []


def case(name, kind, inputs, **params):
    CASES.append({"name": name, "kind": kind, "inputs": inputs, "params": params})


def spec(name, shape, seed, **kw):
    return dict(name=name, shape=list(shape), seed=seed, **kw)


# Whole models, from configs/.
case("unet_text", "unet", [spec("x", (2, 8, 8, 4), 11), spec("t", (2,), 12, high=50),
                           spec("context", (2, 5, 48), 13), spec("pooled_text", (2, 24), 14),
                           spec("original_size", (2, 2), 15, high=64), spec("crop_coords", (2, 2), 16, high=64),
                           spec("target_size", (2, 2), 17, high=64), spec("target", (2, 8, 8, 4), 18)],
     config="tiny_unet_text.yaml")
case("unet_class", "unet", [spec("x", (3, 8, 8, 4), 21), spec("t", (3,), 22, high=50),
                            spec("class_labels", (3,), 23, high=10), spec("original_size", (3, 2), 24, high=64),
                            spec("target", (3, 8, 8, 4), 25)],
     config="tiny_unet_class.yaml")
case("vae", "vae", [spec("x", (2, 8, 8, 3), 31), spec("noise", (2, 4, 4, 4), 32)], config="tiny_vae.yaml",
     kl_weight=0.01)
# Blocks at SDXL's widths on small feature maps; loss = sum(out * R).
case("resblock_640_1280", "resblock", [spec("x", (1, 4, 4, 640), 41), spec("emb", (1, 1280), 42),
                                        spec("R", (1, 4, 4, 1280), 43)],
     in_ch=640, out_ch=1280, emb_ch=1280)
case("resblock_1280", "resblock", [spec("x", (1, 2, 2, 1280), 51), spec("emb", (1, 1280), 52),
                                   spec("R", (1, 2, 2, 1280), 53)],
     in_ch=1280, out_ch=1280, emb_ch=1280)
case("transformer_640", "transformer", [spec("x", (1, 4, 4, 640), 61), spec("context", (1, 7, 2048), 62),
                                        spec("R", (1, 4, 4, 640), 63)],
     channels=640, depth=2, context_dim=2048)
case("transformer_1280", "transformer", [spec("x", (1, 2, 2, 1280), 71), spec("context", (1, 7, 2048), 72),
                                         spec("R", (1, 2, 2, 1280), 73)],
     channels=1280, depth=1, context_dim=2048)


def run_case(c, tensors, rng):
    dt = torch.float64
    x = {s["name"]: torch.from_numpy(draw(s)) for s in c["inputs"]}
    p = c["params"]
    grads_in = []
    if c["kind"] == "unet":
        cfg = sgm_ref.load_config(os.path.join(CONFIGS, p["config"]))
        built = sgm_ref.unet_from_config(cfg, dtype=dt)
        unet, class_embedder = built if isinstance(built, tuple) else (built, None)
        init_weights(unet, "model.diffusion_model.")
        modules = [("model.diffusion_model.", unet)]
        if class_embedder is not None:
            init_weights(class_embedder, "conditioner.embedders.0.")
            modules.append(("conditioner.embedders.0.", class_embedder))
        xin = x["x"].to(dt).requires_grad_()
        grads_in.append(("x", xin, True))
        if class_embedder is not None:
            context = class_embedder(x["class_labels"].long())
        else:
            context = x["context"].to(dt).requires_grad_()
            grads_in.append(("context", context, False))
        parts = {k: x[k] for k in ("pooled_text", "original_size", "crop_coords", "target_size")
                 if k in x}
        y = sgm_ref.vector_from_parts(cfg, parts).to(dt) if (cfg["unet"].get("vector")) else None
        out = nhwc(unet(nchw(xin), x["t"].to(torch.float32), context=context, y=y))
        loss = ((out - x["target"].to(dt)) ** 2).mean()
    elif c["kind"] == "vae":
        cfg = sgm_ref.load_config(os.path.join(CONFIGS, p["config"]))
        vae = sgm_ref.vae_from_config(cfg, dtype=dt)
        init_weights(vae, "first_stage_model.")
        modules = [("first_stage_model.", vae)]
        xin = x["x"].to(dt).requires_grad_()
        grads_in.append(("x", xin, True))
        posterior = vae.encode(nchw(xin))
        z = posterior.sample(nchw(x["noise"].to(dt)))
        out = nhwc(vae.decode(z))
        kl = posterior.kl()
        loss = ((out - xin.detach()) ** 2).mean() + p["kl_weight"] * kl.mean()
    elif c["kind"] == "resblock":
        block = sgm_ref.ResBlock(p["in_ch"], p["emb_ch"], out_channels=p["out_ch"], dtype=dt)
        init_weights(block, "")
        modules = [("", block)]
        xin = x["x"].to(dt).requires_grad_()
        emb = x["emb"].to(dt).requires_grad_()
        grads_in += [("x", xin, True), ("emb", emb, False)]
        out = nhwc(block(nchw(xin), emb))
        loss = (out * x["R"].to(dt)).sum()
    else:
        ch = p["channels"]
        block = sgm_ref.SpatialTransformer(ch, ch // 64, 64, depth=p["depth"], context_dim=p["context_dim"],
                                           use_linear=True, dtype=dt)
        init_weights(block, "")
        modules = [("", block)]
        xin = x["x"].to(dt).requires_grad_()
        context = x["context"].to(dt).requires_grad_()
        grads_in += [("x", xin, True), ("context", context, False)]
        out = nhwc(block(nchw(xin), context=context))
        loss = (out * x["R"].to(dt)).sum()
    loss.backward()
    name = c["name"]
    store(tensors, f"{name}.out", out, rng)
    tensors[f"{name}.loss"] = torch.tensor([loss.item()], dtype=torch.float64).float()
    for input_name, t, _ in grads_in:
        store(tensors, f"{name}.grad_in.{input_name}", t.grad, rng)
    count = 0
    for prefix, module in modules:
        for pname, param in module.named_parameters():
            store(tensors, f"{name}.grad.{prefix}{pname}", param.grad, rng)
            count += 1
    c["n_params"] = count
    print(f"{name}: loss {loss.item():.6g}, {count} parameter gradients")


def run_and_save(cases, run, name, generator):
    """Runs every case (case i samples its stored positions with RandomState(100 + i)) and writes
    tests/ref/data/<name> with the case list in its metadata."""
    torch.manual_seed(0)
    tensors = {}
    for i, c in enumerate(cases):
        run(c, tensors, np.random.RandomState(100 + i))
    path = os.path.join(HERE, "data", name)
    save_file(tensors, path, {"cases": json.dumps(cases), "torch": torch.__version__,
                              "generator": generator})
    print(f"{path}: {len(cases)} cases, {len(tensors)} tensors, {os.path.getsize(path) / 1e6:.2f} MB")


def main():
    run_and_save(CASES, run_case, "models.safetensors", "tests/ref/make_model_refs.py")


if __name__ == "__main__":
    main()
