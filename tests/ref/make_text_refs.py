#!/usr/bin/python3
"""Reference outputs, losses and parameter gradients of the text encoders, made with PyTorch.

Writes tests/ref/data/text.safetensors (read by ldmc's text-encoder test) and
tests/ref/data/keys_text_encoders.json (the full-size SDXL key lists, no weights).

Models: tests/ref/clip_ref.py (HF CLIPTextModel / open_clip text tower, float64) built from the
`text_encoders:` entries of configs/*.yaml. Weights: make_model_refs.init_weights(module, prefix),
keyed by the full checkpoint key (the prefix below + the module's key); the 0-d logit_scale gets u/4.

Cases (metadata "cases": a JSON list of {name, kind: "text_encoder", inputs: [spec…], params}):
  text_l          tiny_unet_text.yaml encoder 0 (hf),        prefix conditioner.embedders.0.transformer.
  text_g          tiny_unet_text.yaml encoder 1 (open_clip), prefix conditioner.embedders.1.model.
  text_refiner_g  tiny_refiner_text.yaml encoder 0,          prefix conditioner.embedders.0.model.
  text_l_last     as text_l, hidden_layer overridden to `layers` (context = last block, no norm)
  text_g_last     as text_g, hidden_layer overridden to `layers`
params: config, encoder (index in text_encoders), layout, prefix, hidden_layer (the EFFECTIVE value:
the config's, or the override; "hidden_layer_override": true marks the override cases), layers,
width, projection_dim, sot = vocab-2, eot = vocab-1, pad (eot for hf, 0 for open_clip),
eos_pos (per row), ids (3 x 77), n_params (parameter tensors), loss.
Ids, 3 rows of 77: row 0 = [sot, 6 drawn ids, eot, pad…]; row 1 = [sot, 75 drawn ids, eot] (a
truncated prompt); row 2 = [sot, eot, pad…] (the empty prompt). Drawn ids: inputs "tokens0" (6) and
"tokens1" (75), whole numbers in [0, vocab-2). Inputs "R_context" (3, 77, W) and, with a pooled
output, "R_pooled" (3, P): draw() of make_model_refs.py (float32(u), u = signed_uniform(seed)).
loss = sum(context * R_context) + sum(pooled * R_pooled).
Stored (float32; store() of make_model_refs.py: tensors above 512 values are stored at 256 sorted
sampled flat positions, "<name>.idx" int32, row-major over the official shape):
  "<case>.ids"        (3, 77) float32, exact, not sampled
  "<case>.out"        context (3, 77, W), flattened
  "<case>.pooled"     (3 * P,) flattened (open_clip cases only)
  "<case>.loss"       (1,)
  "<case>.grad.<full key>"  every parameter, official layout (in_proj_weight [3W, W],
                      text_projection [W, P], logit_scale 0-d stored as (1,)); unused parameters
                      (hf: blocks after hidden_layer and final_layer_norm; open_clip: logit_scale)
                      are stored as zeros.
Checks made here: the pad id changes only the context rows after the EOS (rows <= EOS identical to
1e-12, every later row differs) and never the pooled output, for every case.

Run with Debian's PyTorch: /usr/bin/python3 tests/ref/make_text_refs.py
"""
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import clip_ref  # noqa: E402
import sgm_ref  # noqa: E402
from make_model_refs import draw, init_weights, run_and_save, spec, store  # noqa: E402

CONFIGS = os.path.join(HERE, "..", "..", "configs")
CTX = 77

CASES = []


def case(name, inputs, **params):
    CASES.append({"name": name, "kind": "text_encoder", "inputs": inputs, "params": params})


def text_case(name, config, encoder, prefix, seed, hidden_layer=None):
    cfg = sgm_ref.load_config(os.path.join(CONFIGS, config))["text_encoders"][encoder]
    W, P = int(cfg["width"]), int(cfg.get("projection_dim") or 0)
    vocab = int(cfg["vocab_size"])
    inputs = [spec("tokens0", (6,), seed, high=vocab - 2), spec("tokens1", (75,), seed + 1, high=vocab - 2),
              spec("R_context", (3, CTX, W), seed + 2)]
    if P:
        inputs.append(spec("R_pooled", (3, P), seed + 3))
    params = dict(config=config, encoder=encoder, layout=cfg["layout"], prefix=prefix,
                  hidden_layer=int(cfg["hidden_layer"]) if hidden_layer is None else hidden_layer,
                  layers=int(cfg["layers"]), width=W, projection_dim=P)
    if hidden_layer is not None:
        params["hidden_layer_override"] = True
    case(name, inputs, **params)


text_case("text_l", "tiny_unet_text.yaml", 0, "conditioner.embedders.0.transformer.", 301)
text_case("text_g", "tiny_unet_text.yaml", 1, "conditioner.embedders.1.model.", 311)
text_case("text_refiner_g", "tiny_refiner_text.yaml", 0, "conditioner.embedders.0.model.", 321)
text_case("text_l_last", "tiny_unet_text.yaml", 0, "conditioner.embedders.0.transformer.", 331, hidden_layer=3)
text_case("text_g_last", "tiny_unet_text.yaml", 1, "conditioner.embedders.1.model.", 341, hidden_layer=3)


def make_ids(t0, t1, sot, eot, pad):
    rows = [[sot] + t0 + [eot], [sot] + t1 + [eot], [sot, eot]]
    eos = [len(r) - 1 for r in rows]
    ids = [r + [pad] * (CTX - len(r)) for r in rows]
    assert all(len(r) == CTX for r in ids)
    return ids, eos


def check_pad_independence(enc, ids, eos, other_pad, hidden_layer, name):
    """Context rows <= EOS and the pooled output must not depend on the pad id; rows after must."""
    alt = ids.clone()
    for b, e in enumerate(eos):
        alt[b, e + 1:] = other_pad
    with torch.no_grad():
        c1, p1 = enc(ids, hidden_layer)
        c2, p2 = enc(alt, hidden_layer)
    for b, e in enumerate(eos):
        d = (c1[b, :e + 1] - c2[b, :e + 1]).abs().max().item()
        assert d <= 1e-12, f"{name}: row {b} positions <= EOS differ by {d}"
        if e + 1 < CTX:
            per_pos = (c1[b, e + 1:] - c2[b, e + 1:]).abs().amax(dim=-1)
            assert per_pos.min().item() > 1e-6, f"{name}: row {b} post-EOS rows do not depend on the pad"
    if p1 is not None:
        d = (p1 - p2).abs().max().item()
        assert d <= 1e-12, f"{name}: pooled depends on the pad ({d})"


def run_case(c, tensors, rng):
    dt = torch.float64
    p = c["params"]
    cfg = sgm_ref.load_config(os.path.join(CONFIGS, p["config"]))["text_encoders"][p["encoder"]]
    enc = clip_ref.encoder_from_config(cfg, dtype=dt)
    init_weights(enc, p["prefix"])
    x = {s["name"]: draw(s) for s in c["inputs"]}
    vocab = int(cfg["vocab_size"])
    sot, eot = vocab - 2, vocab - 1
    pad = eot if p["layout"] == "hf" else 0
    ids_list, eos = make_ids([int(v) for v in x["tokens0"]], [int(v) for v in x["tokens1"]], sot, eot, pad)
    p.update(sot=sot, eot=eot, pad=pad, eos_pos=eos, ids=ids_list)
    ids = torch.tensor(ids_list, dtype=torch.long)
    assert ids.argmax(-1).tolist() == eos

    check_pad_independence(enc, ids, eos, 0 if pad == eot else eot, p["hidden_layer"], c["name"])

    context, pooled = enc(ids, p["hidden_layer"])
    assert context.shape == (3, CTX, p["width"])
    loss = (context * torch.from_numpy(x["R_context"]).to(dt)).sum()
    if pooled is not None:
        assert pooled.shape == (3, p["projection_dim"])
        loss = loss + (pooled * torch.from_numpy(x["R_pooled"]).to(dt)).sum()
    loss.backward()

    name = c["name"]
    tensors[f"{name}.ids"] = torch.tensor(ids_list, dtype=torch.float32)
    store(tensors, f"{name}.out", context, rng)
    if pooled is not None:
        store(tensors, f"{name}.pooled", pooled, rng)
    tensors[f"{name}.loss"] = torch.tensor([loss.item()], dtype=torch.float64).float()
    count, zero = 0, []
    for pname, param in enc.named_parameters():
        g = param.grad if param.grad is not None else torch.zeros_like(param)
        if param.grad is None:
            zero.append(pname)
        store(tensors, f"{name}.grad.{p['prefix']}{pname}", g, rng)
        count += 1
    p["n_params"] = count
    p["loss"] = loss.item()
    print(f"{name}: loss {loss.item():.10g}, {count} parameter gradients ({len(zero)} zero: "
          f"{', '.join(zero) if len(zero) <= 3 else str(len(zero)) + ' tensors'})")


# ----------------------------------------------------------------------------------------------
# Full-size key lists
# ----------------------------------------------------------------------------------------------

def key_lists():
    out = {
        "description": "SDXL text encoders: [key, shape, diffusers_names] in state_dict order of "
                       "tests/ref/clip_ref.py, keys WITHOUT the checkpoint prefix. A checkpoint key is "
                       "prefix + key. diffusers_names: the key(s) in the diffusers folder's "
                       "model.safetensors (folder given by diffusers_folder); 3 names = the rows of "
                       "in_proj_* split in order q, k, v (W rows each); text_projection -> "
                       "text_projection.weight holds P transposed ([P, W], used as x @ W^T); [] = "
                       "dropped (logit_scale).",
        "generator": "tests/ref/make_text_refs.py",
        "encoders": {},
    }
    specs = [
        ("clip_l", clip_ref.CLIP_L, {"sdxl_base": "conditioner.embedders.0.transformer."}, "text_encoder/",
         123_060_480, 196),
        ("clip_g", clip_ref.CLIP_G, {"sdxl_base": "conditioner.embedders.1.model.",
                                     "sdxl_refiner": "conditioner.embedders.0.model."}, "text_encoder_2/",
         694_659_841, 390),  # 32 x 12 + 5 = 389 tensors + logit_scale
    ]
    for name, cfg, prefixes, folder, want_params, want_tensors in specs:
        enc = clip_ref.encoder_from_config(cfg, device="meta")
        keys = [[k, list(v.shape), clip_ref.diffusers_names(cfg["layout"], k)]
                for k, v in enc.state_dict().items()]
        n_params = sum(int(np.prod(s)) for _, s, _ in keys)
        assert n_params == want_params, (name, n_params)
        assert len(keys) == want_tensors, (name, len(keys))
        entry = {"layout": cfg["layout"], "config": cfg, "checkpoint_prefixes": prefixes,
                 "diffusers_folder": folder, "n_tensors": len(keys), "n_params": n_params}
        if cfg["layout"] == "hf":
            entry["optional_keys"] = [["text_model.embeddings.position_ids", [1, 77], "int64 buffer, may be "
                                       "present in checkpoints; ignore"]]
            entry["unused_by_sdxl"] = ["text_model.encoder.layers.11.*", "text_model.final_layer_norm.*"]
        else:
            entry["n_params_without_logit_scale"] = n_params - 1
            entry["n_diffusers_tensors"] = sum(len(d) for _, _, d in keys)
            entry["optional_keys"] = [["text_model.embeddings.position_ids", [1, 77],
                                       "diffusers side only; int64 buffer, may be present; ignore"]]
            entry["unused_by_sdxl"] = ["logit_scale"]
        entry["keys"] = keys
        out["encoders"][name] = entry
        print(f"{name}: {len(keys)} tensors, {n_params:,} parameters")
    return out


def write_keys(data, path):
    # One key per line, as the other keys_*.json.
    head = {k: v for k, v in data.items() if k != "encoders"}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"{json.dumps(k)}: {json.dumps(v)},")
    lines.append('"encoders": {')
    encs = list(data["encoders"].items())
    for i, (name, e) in enumerate(encs):
        lines.append(f"{json.dumps(name)}: {{")
        for k, v in e.items():
            if k != "keys":
                lines.append(f"  {json.dumps(k)}: {json.dumps(v)},")
        lines.append('  "keys": [')
        lines.append(",\n".join("    " + json.dumps(r, separators=(",", ":")) for r in e["keys"]))
        lines.append("  ]")
        lines.append("}" + ("," if i + 1 < len(encs) else ""))
    lines.append("}")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == json.loads(json.dumps(data))
    with open(path, "w") as f:
        f.write(text)


def main():
    t0 = time.time()
    run_and_save(CASES, run_case, "text.safetensors", "tests/ref/make_text_refs.py")
    kpath = os.path.join(HERE, "data", "keys_text_encoders.json")
    write_keys(key_lists(), kpath)
    print(f"{kpath}: {os.path.getsize(kpath) / 1e3:.1f} kB")
    print(f"ok ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
