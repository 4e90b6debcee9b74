#!/usr/bin/python3
"""Reference outputs and gradients for every op in src/ops/ops.h, made with PyTorch.

Writes tests/ref/data/ops.safetensors, read by tests/test_ops.c (CI needs no PyTorch):
- "__metadata__" {"cases": JSON}: each case's op, parameters, inputs (shape in ldmc's
  channels-last layout, Philox seed, scale, shift) and outputs (shape, seed of the upstream
  gradient). Inputs are not stored: both sides draw them from the Philox stream
  (tests/ref/philox.py here, src/core/rng.c there) as float32(signed_uniform * scale + shift),
  computed in double (and rounded to whole numbers for cases that want ties).
- "<case>.out<i>": each output; "<case>.grad.<input>": the gradient of sum(out_i * R_i) with
  respect to each input, R_i drawn from the stream too. Tensors above 4096 values are stored
  at 2048 sampled positions ("<name>.idx", int32 flat indices, and the values).

References are computed in float64 from the exact float32 inputs, so a comparison measures
ldmc's float32 error alone. The timestep embedding is the exception: the official code computes
it in float32 (sgm util.py timestep_embedding), and that is the behaviour to match.

Run with Debian's python3-torch: /usr/bin/python3 tests/ref/make_op_refs.py
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import philox  # noqa: E402

SAMPLE_ABOVE, SAMPLES = 4096, 2048
CASES = []


def case(name, op, inputs, quantize=False, labels=None, **params):
    """inputs: list of (name, shape) or (name, shape, scale, shift) or with a 5th item grad=False.
    quantize rounds the inputs to whole numbers (floor(v + 0.5)): ties, for max pooling."""
    specs = []
    for spec in inputs:
        name_i, shape = spec[0], list(spec[1])
        scale = spec[2] if len(spec) > 2 else 1.0
        shift = spec[3] if len(spec) > 3 else 0.0
        grad = spec[4] if len(spec) > 4 else True
        specs.append({"name": name_i, "shape": shape, "scale": scale, "shift": shift, "grad": grad,
                      "quantize": quantize})
    if labels:  # an I64 input of whole numbers bits % n: (name, shape, n)
        specs.append({"name": labels[0], "shape": list(labels[1]), "labels": labels[2], "grad": False})
    CASES.append({"name": name, "op": op, "params": params, "inputs": specs})


# ---- the cases: odd shapes, and SDXL's (320/640/1280 channels, 32 groups, 64-wide heads) ----
case("linear_odd", "linear", [("x", (2, 7, 33)), ("w", (17, 33)), ("b", (17,))])
case("linear_nobias", "linear", [("x", (3, 5, 9)), ("w", (4, 9))])
case("linear_sdxl_1280", "linear", [("x", (1, 16, 1280)), ("w", (1280, 1280), 0.03), ("b", (1280,))])
case("linear_sdxl_ctx_2048_640", "linear", [("x", (2, 77, 2048)), ("w", (640, 2048), 0.02)])
for ta in (False, True):
    for tb in (False, True):
        a_shape = (3, 7, 5) if ta else (3, 5, 7)
        b_shape = (3, 4, 7) if tb else (3, 7, 4)
        case(f"matmul_t{int(ta)}{int(tb)}", "matmul", [("a", a_shape), ("b", b_shape)],
             trans_a=ta, trans_b=tb)
case("conv2d_k3s1p1_odd", "conv2d", [("x", (2, 7, 9, 5)), ("w", (6, 3, 3, 5)), ("b", (6,))],
     stride=1, pad=[1, 1, 1, 1])
case("conv2d_k3s2p1_odd", "conv2d", [("x", (2, 9, 8, 5)), ("w", (6, 3, 3, 5)), ("b", (6,))],
     stride=2, pad=[1, 1, 1, 1])
case("conv2d_k3s2_vae_pad", "conv2d", [("x", (1, 8, 7, 4)), ("w", (4, 3, 3, 4)), ("b", (4,))],
     stride=2, pad=[0, 1, 0, 1])
case("conv2d_k1_odd", "conv2d", [("x", (2, 5, 3, 7)), ("w", (3, 1, 1, 7)), ("b", (3,))],
     stride=1, pad=[0, 0, 0, 0])
case("conv2d_k1s2_nobias", "conv2d", [("x", (1, 6, 5, 3)), ("w", (2, 1, 1, 3))],
     stride=2, pad=[0, 0, 0, 0])
case("conv2d_k3s1p0", "conv2d", [("x", (1, 6, 7, 2)), ("w", (3, 3, 3, 2))], stride=1, pad=[0, 0, 0, 0])
case("conv2d_sdxl_320", "conv2d", [("x", (1, 6, 6, 320)), ("w", (320, 3, 3, 320), 0.02), ("b", (320,))],
     stride=1, pad=[1, 1, 1, 1])
case("conv2d_sdxl_640", "conv2d", [("x", (1, 4, 4, 640)), ("w", (640, 3, 3, 640), 0.02), ("b", (640,))],
     stride=1, pad=[1, 1, 1, 1])
case("conv2d_sdxl_1280", "conv2d", [("x", (1, 4, 4, 1280)), ("w", (1280, 3, 3, 1280), 0.01),
                                    ("b", (1280,))], stride=1, pad=[1, 1, 1, 1])
case("conv2d_sdxl_skip_320_640", "conv2d", [("x", (1, 5, 5, 320)), ("w", (640, 1, 1, 320), 0.05),
                                            ("b", (640,))], stride=1, pad=[0, 0, 0, 0])
case("conv2d_sdxl_down_640", "conv2d", [("x", (1, 8, 8, 640)), ("w", (640, 3, 3, 640), 0.02),
                                        ("b", (640,))], stride=2, pad=[1, 1, 1, 1])
# Wide inputs make the kernel work in several chunks of output pixels (about 8 MiB of gathered
# rows each): chunk borders fall inside rows and between images.
case("conv2d_chunks_k3s1", "conv2d", [("x", (2, 24, 20, 320)), ("w", (8, 3, 3, 320), 0.05), ("b", (8,))],
     stride=1, pad=[1, 1, 1, 1])
case("conv2d_chunks_k3s2", "conv2d", [("x", (2, 40, 38, 320)), ("w", (5, 3, 3, 320), 0.05), ("b", (5,))],
     stride=2, pad=[1, 1, 1, 1])
case("group_norm_odd", "group_norm", [("x", (2, 5, 7, 12), 1.0, 0.5), ("gamma", (12,)), ("beta", (12,))],
     groups=4, eps=1e-5)
case("group_norm_noaffine", "group_norm", [("x", (2, 3, 4, 6), 2.0, -1.0)], groups=3, eps=1e-5)
case("group_norm_tokens", "group_norm", [("x", (2, 9, 64), 1.0, 0.25), ("gamma", (64,)), ("beta", (64,))],
     groups=32, eps=1e-6)
case("group_norm_sdxl_320", "group_norm", [("x", (1, 6, 6, 320), 1.0, 0.3), ("gamma", (320,)),
                                           ("beta", (320,))], groups=32, eps=1e-5)
case("group_norm_sdxl_1280", "group_norm", [("x", (2, 4, 4, 1280), 1.5, -0.2), ("gamma", (1280,)),
                                            ("beta", (1280,))], groups=32, eps=1e-6)
case("layer_norm_odd", "layer_norm", [("x", (2, 7, 33), 1.0, 0.5), ("gamma", (33,)), ("beta", (33,))],
     eps=1e-5)
case("layer_norm_noaffine", "layer_norm", [("x", (3, 10), 2.0)], eps=1e-5)
case("layer_norm_sdxl_1280", "layer_norm", [("x", (1, 16, 1280), 1.0, -0.3), ("gamma", (1280,)),
                                            ("beta", (1280,))], eps=1e-5)
case("silu_odd", "silu", [("x", (3, 17), 4.0)])
case("silu_sdxl", "silu", [("x", (1, 4, 4, 1280), 4.0)])
case("gelu_erf", "gelu", [("x", (3, 17), 4.0)], tanh=False)
case("gelu_tanh", "gelu", [("x", (3, 17), 4.0)], tanh=True)
case("geglu_odd", "geglu", [("x", (2, 5, 22), 3.0)])
case("geglu_sdxl_640", "geglu", [("x", (1, 16, 5120), 3.0)])
case("softmax_odd", "softmax", [("x", (4, 13), 5.0)])
case("softmax_77", "softmax", [("x", (2, 3, 77), 8.0)])
case("attention_odd_cross", "attention", [("q", (2, 5, 12)), ("k", (2, 7, 12)), ("v", (2, 7, 12))],
     heads=3)
case("attention_self_tiles", "attention", [("q", (1, 130, 16), 2.0), ("k", (1, 130, 16), 2.0),
                                           ("v", (1, 130, 16))], heads=2)
case("attention_sdxl_self_640", "attention", [("q", (1, 64, 640), 3.0), ("k", (1, 64, 640), 3.0),
                                              ("v", (1, 64, 640))], heads=10)
case("attention_sdxl_cross_1280", "attention", [("q", (2, 16, 1280), 3.0), ("k", (2, 77, 1280), 3.0),
                                                ("v", (2, 77, 1280))], heads=20)
case("add_odd", "add", [("a", (3, 5, 7)), ("b", (3, 5, 7))])
case("mul_odd", "mul", [("a", (3, 5, 7)), ("b", (3, 5, 7))])
case("scale_odd", "scale", [("x", (3, 5, 7))], s=0.37)
case("sub_odd", "sub", [("a", (3, 5, 7)), ("b", (3, 5, 7))])
case("affine_odd", "affine", [("x", (4, 9))], a=-1.75, b=0.5)
case("exp_odd", "exp", [("x", (5, 11), 4.0)])
case("clamp_logvar", "clamp", [("x", (3, 40), 40.0, -5.0)], lo=-30.0, hi=20.0)
case("sum_rows_odd", "sum_rows", [("x", (3, 4, 5, 6))])
case("embedding_classes", "embedding", [("table", (10, 7))], labels=("labels", (6,), 10))
case("add_broadcast_bc", "add_broadcast", [("x", (2, 3, 4, 6)), ("v", (2, 6))])
case("add_broadcast_b11c", "add_broadcast", [("x", (2, 3, 4, 6)), ("v", (2, 1, 1, 6))])
case("add_broadcast_c", "add_broadcast", [("x", (2, 5, 8)), ("v", (8,))])
case("add_broadcast_sdxl_emb", "add_broadcast", [("x", (2, 4, 4, 1280)), ("v", (2, 1280))])
case("concat_odd", "concat", [("a", (2, 3, 4, 5)), ("b", (2, 3, 4, 7)), ("c", (2, 3, 4, 1))])
case("concat_sdxl_skip", "concat", [("a", (1, 4, 4, 1280)), ("b", (1, 4, 4, 640))])
case("split_odd", "split", [("x", (2, 3, 10))], sizes=[3, 7])
case("split_geglu_halves", "split", [("x", (1, 6, 16))], sizes=[8, 8])
case("upsample_odd", "upsample_nearest2x", [("x", (2, 3, 5, 4))])
case("upsample_sdxl", "upsample_nearest2x", [("x", (1, 4, 4, 1280))])
case("avg_pool_k3s1p1_exclude_pad", "avg_pool2d", [("x", (2, 7, 6, 5))], kernel=3, stride=1, padding=1,
     count_include_pad=False)
case("avg_pool_k3s1p1_include_pad", "avg_pool2d", [("x", (2, 7, 6, 5))], kernel=3, stride=1, padding=1,
     count_include_pad=True)
case("avg_pool_k2s2", "avg_pool2d", [("x", (1, 8, 6, 3))], kernel=2, stride=2, padding=0,
     count_include_pad=True)
case("avg_pool_k3s2p1_exclude_pad", "avg_pool2d", [("x", (1, 9, 8, 3))], kernel=3, stride=2, padding=1,
     count_include_pad=False)
case("max_pool_k3s2", "max_pool2d", [("x", (2, 9, 8, 5))], kernel=3, stride=2, padding=0)
case("max_pool_k2s2", "max_pool2d", [("x", (1, 6, 8, 3))], kernel=2, stride=2, padding=0)
case("max_pool_k3s1p1", "max_pool2d", [("x", (1, 5, 7, 4))], kernel=3, stride=1, padding=1)
case("max_pool_k3s2p1", "max_pool2d", [("x", (1, 7, 7, 16))], kernel=3, stride=2, padding=1)
case("max_pool_ties", "max_pool2d", [("x", (2, 6, 7, 3), 1.5)], quantize=True, kernel=3, stride=1, padding=1)
case("timestep_embedding_320", "timestep_embedding", [("t", (5,), 500.0, 500.0)], dim=320,
     max_period=10000.0)
case("timestep_embedding_odd", "timestep_embedding", [("t", (3,), 20.0, 20.0)], dim=7, max_period=10000.0)
case("timestep_embedding_256_fourier", "timestep_embedding", [("t", (4,), 512.0, 512.0)], dim=256,
     max_period=10000.0)
case("mse_odd", "mse_loss", [("a", (3, 5, 7)), ("b", (3, 5, 7))])
case("l1_odd", "l1_loss", [("a", (3, 5, 7)), ("b", (3, 5, 7))])
case("mse_weighted_min_snr", "mse_loss_weighted", [("a", (3, 4, 5)), ("b", (3, 4, 5))], weights=[0.5, 1.0, 2.25])
case("scale_rows_mask", "scale_rows", [("x", (3, 2, 7))], s=[0.0, 1.0, -2.5])
case("dropout_p01", "dropout", [("x", (4, 9, 33))], p=0.1, seed=1234, step=7)

# (cases added later go last: each case samples its stored positions from a stream seeded by its
# index, so a case added in the middle would move every later case's samples)
# causal (CLIP's text encoders): 77 tokens of 64-wide heads; 130 cross the CPU's 64-query tiles
case("causal_attention_clip_77", "causal_attention", [("q", (2, 77, 128), 3.0),
                                                      ("k", (2, 77, 128), 3.0),
                                                      ("v", (2, 77, 128))], heads=2)
case("causal_attention_tiles", "causal_attention", [("q", (1, 130, 16), 2.0), ("k", (1, 130, 16), 2.0),
                                                    ("v", (1, 130, 16))], heads=2)
case("concat_rows_batches", "concat_rows", [("a", (2, 3, 4, 5)), ("b", (1, 3, 4, 5)), ("c", (3, 3, 4, 5))])
case("quick_gelu", "quick_gelu", [("x", (3, 17), 4.0)])


# ---- PyTorch implementations, on channels-last data --------------------------------------------
def to_nchw(x):
    return x.permute(0, 3, 1, 2)


def to_nhwc(x):
    return x.permute(0, 2, 3, 1)


def run_op(op, p, xs):
    if op == "linear":
        return [F.linear(xs[0], xs[1], xs[2] if len(xs) > 2 else None)]
    if op == "matmul":
        a = xs[0].transpose(1, 2) if p["trans_a"] else xs[0]
        b = xs[1].transpose(1, 2) if p["trans_b"] else xs[1]
        return [torch.matmul(a, b)]
    if op == "conv2d":
        top, bottom, left, right = p["pad"]
        x = F.pad(to_nchw(xs[0]), (left, right, top, bottom))
        w = xs[1].permute(0, 3, 1, 2)
        return [to_nhwc(F.conv2d(x, w, xs[2] if len(xs) > 2 else None, stride=p["stride"]))]
    if op == "group_norm":
        x = xs[0].movedim(-1, 1)
        y = F.group_norm(x, p["groups"], xs[1] if len(xs) > 1 else None, xs[2] if len(xs) > 2 else None,
                         p["eps"])
        return [y.movedim(1, -1)]
    if op == "layer_norm":
        C = xs[0].shape[-1]
        return [F.layer_norm(xs[0], (C,), xs[1] if len(xs) > 1 else None, xs[2] if len(xs) > 2 else None,
                             p["eps"])]
    if op == "silu":
        return [F.silu(xs[0])]
    if op == "gelu":
        return [F.gelu(xs[0], approximate="tanh" if p["tanh"] else "none")]
    if op == "quick_gelu":  # OpenAI CLIP's QuickGELU
        return [xs[0] * torch.sigmoid(1.702 * xs[0])]
    if op == "geglu":
        a, gate = xs[0].chunk(2, dim=-1)
        return [a * F.gelu(gate)]
    if op == "softmax":
        return [torch.softmax(xs[0], dim=-1)]
    if op in ("attention", "causal_attention"):
        q, k, v = xs
        B, Nq, C = q.shape
        Nk, H = k.shape[1], p["heads"]
        D = C // H
        qh = q.view(B, Nq, H, D).transpose(1, 2)
        kh = k.view(B, Nk, H, D).transpose(1, 2)
        vh = v.view(B, Nk, H, D).transpose(1, 2)
        scores = qh @ kh.transpose(-1, -2) * D ** -0.5
        if op == "causal_attention":  # as HF's CLIPTextTransformer masks: keys after the query
            mask = torch.triu(torch.ones(Nq, Nk, dtype=torch.bool), diagonal=1)
            scores = scores.masked_fill(mask, float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        return [(attn @ vh).transpose(1, 2).reshape(B, Nq, C)]
    if op == "concat_rows":
        return [torch.cat(xs, dim=0)]
    if op == "add":
        return [xs[0] + xs[1]]
    if op == "mul":
        return [xs[0] * xs[1]]
    if op == "scale":
        return [xs[0] * p["s"]]
    if op == "sub":
        return [xs[0] - xs[1]]
    if op == "affine":
        return [xs[0] * p["a"] + p["b"]]
    if op == "exp":
        return [torch.exp(xs[0])]
    if op == "clamp":
        return [torch.clamp(xs[0], p["lo"], p["hi"])]
    if op == "sum_rows":
        return [xs[0].reshape(xs[0].shape[0], -1).sum(dim=1)]
    if op == "embedding":
        return [F.embedding(xs[1], xs[0])]
    if op == "add_broadcast":
        x, v = xs
        if v.dim() > 1:
            v = v.reshape(v.shape[0], *([1] * (x.dim() - 2)), v.shape[-1])
        return [x + v]
    if op == "concat":
        return [torch.cat(xs, dim=-1)]
    if op == "split":
        return list(torch.split(xs[0], p["sizes"], dim=-1))
    if op == "upsample_nearest2x":
        return [to_nhwc(F.interpolate(to_nchw(xs[0]), scale_factor=2, mode="nearest"))]
    if op == "avg_pool2d":
        return [to_nhwc(F.avg_pool2d(to_nchw(xs[0]), p["kernel"], p["stride"], p["padding"],
                                     count_include_pad=p["count_include_pad"]))]
    if op == "max_pool2d":
        return [to_nhwc(F.max_pool2d(to_nchw(xs[0]), p["kernel"], p["stride"], p["padding"]))]
    if op == "timestep_embedding":  # sgm util.py, in float32 as there
        t, dim = xs[0], p["dim"]
        half = dim // 2
        freqs = torch.exp(-np.log(p["max_period"]) * torch.arange(0, half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return [emb]
    if op == "mse_loss":
        return [F.mse_loss(xs[0], xs[1])]
    if op == "l1_loss":
        return [F.l1_loss(xs[0], xs[1])]
    if op == "mse_loss_weighted":
        w = torch.tensor(p["weights"], dtype=xs[0].dtype).reshape(-1, *([1] * (xs[0].dim() - 1)))
        return [(w * (xs[0] - xs[1]) ** 2).mean()]
    if op == "scale_rows":
        s = torch.tensor(p["s"], dtype=xs[0].dtype).reshape(-1, *([1] * (xs[0].dim() - 1)))
        return [xs[0] * s]
    if op == "dropout":  # the mask is ldmc's Philox stream (rng.h): keep where uniform >= p
        n = xs[0].numel()
        u = philox.uniform(p["seed"], n, offset=0, step=p["step"], purpose=1)
        keep = torch.from_numpy((u >= p["p"]).astype(np.float64)).view(xs[0].shape).to(xs[0].dtype)
        return [xs[0] * keep / (1.0 - p["p"])]
    raise ValueError(op)


def store(tensors, name, value, rng):
    flat = value.detach().reshape(-1).to(torch.float32).numpy()
    if flat.size > SAMPLE_ABOVE:
        idx = np.sort(rng.choice(flat.size, SAMPLES, replace=False)).astype(np.int32)
        tensors[name + ".idx"] = torch.from_numpy(idx)
        flat = flat[idx]
    tensors[name] = torch.from_numpy(np.ascontiguousarray(flat))


def main():
    from safetensors_writer import save_file
    tensors = {}
    for ci, c in enumerate(CASES):
        float32_semantics = c["op"] == "timestep_embedding"
        dtype = torch.float32 if float32_semantics else torch.float64
        xs = []
        for ii, spec in enumerate(c["inputs"]):
            spec["seed"] = 1000 * (ci + 1) + ii
            n = int(np.prod(spec["shape"]))
            if "labels" in spec:  # as tests/test_ops.c: Philox bits modulo the label count
                bits = philox.stream_bits(spec["seed"], n).astype(np.int64) % spec["labels"]
                xs.append(torch.from_numpy(bits.reshape(spec["shape"])))
                continue
            u = philox.signed_uniform(spec["seed"], n).astype(np.float64)
            v = u * spec["scale"] + spec["shift"]
            data = (np.floor(v + 0.5) if spec["quantize"] else v).astype(np.float32)  # as tests/harness.c
            x = torch.from_numpy(data.reshape(spec["shape"])).to(dtype)
            xs.append(x.requires_grad_(spec["grad"]))
        outs = run_op(c["op"], c["params"], xs)
        c["outputs"] = []
        rng = np.random.RandomState(ci)
        loss = 0
        for oi, out in enumerate(outs):
            seed_r = 1000 * (ci + 1) + 100 + oi
            r = philox.signed_uniform(seed_r, max(out.numel(), 1))[: out.numel()]
            R = torch.from_numpy(r.reshape(out.shape)).to(dtype)
            loss = loss + (out * R).sum()
            c["outputs"].append({"shape": list(out.shape), "seed": seed_r})
            store(tensors, f"{c['name']}.out{oi}", out, rng)
        loss.backward()
        for spec, x in zip(c["inputs"], xs):
            if spec["grad"]:
                store(tensors, f"{c['name']}.grad.{spec['name']}", x.grad, rng)
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "ops.safetensors")
    save_file(tensors, path, {"cases": json.dumps(CASES), "torch": torch.__version__,
                              "generator": "tests/ref/make_op_refs.py"})
    print(f"{path}: {len(CASES)} cases, {len(tensors)} tensors, {os.path.getsize(path) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
