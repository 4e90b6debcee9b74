#!/usr/bin/python3
"""Lists the checkpoint keys and shapes of every model config, built on device="meta".

Builds the UNets (sdxl_base, sdxl_refiner, the CIN models, the tiny test UNets; plus the
ClassEmbedder of class-conditional ones) and the VAEs from configs/*.yaml with sgm_ref.py, prints
each parameter count, checks the known totals, and writes tests/ref/data/keys_<config>.json, read by
tests/ref/check_official_keys.py: a JSON list of [key, shape] in
state_dict order, with the official prefixes ("model.diffusion_model." for the UNet,
"first_stage_model." for the VAE, "conditioner.embedders.0." for a ClassEmbedder; the UNet's keys
come first, then the embedder's), then the text encoders of the config's text_encoders (clip_ref.py:
"conditioner.embedders.N.transformer." for the hf layout, "conditioner.embedders.N.model." for
open_clip), in the order ldmc's model files list them: UNet, text encoders.

Run with Debian's python3-torch: /usr/bin/python3 tests/ref/dump_model_keys.py
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import clip_ref  # noqa: E402
import sgm_ref  # noqa: E402

EXPECTED = {
    "sdxl_base": 2_567_463_684,
    "sdxl_refiner": 2_259_526_660,
    "sdxl_vae": 83_653_863,
}
UNET_CONFIGS = ["sdxl_base", "sdxl_refiner", "cin_size_cond", "cin_nocond", "tiny_unet_text", "tiny_unet_class"]
VAE_CONFIGS = ["sdxl_vae", "tiny_vae"]


def keys_of(module, prefix):
    return [[prefix + k, list(v.shape)] for k, v in module.state_dict().items()]


def write_keys(name, entries):
    os.makedirs(os.path.join(HERE, "data"), exist_ok=True)
    path = os.path.join(HERE, "data", f"keys_{name}.json")
    with open(path, "w") as f:
        f.write("[\n")
        f.write(",\n".join(json.dumps(e, separators=(",", ":")) for e in entries))
        f.write("\n]\n")
    return path


def main():
    for name in UNET_CONFIGS + VAE_CONFIGS:
        cfg = sgm_ref.load_config(sgm_ref.config_path(name))
        if name in VAE_CONFIGS:
            vae = sgm_ref.vae_from_config(cfg["vae"], device="meta")
            entries = keys_of(vae, "first_stage_model.")
            total = sgm_ref.count_params(vae)
            detail = ""
        else:
            built = sgm_ref.unet_from_config(cfg["unet"], device="meta")
            unet, cemb = built if isinstance(built, tuple) else (built, None)
            entries = keys_of(unet, "model.diffusion_model.")
            total = sgm_ref.count_params(unet)
            detail = ""
            if cemb is not None:
                entries += keys_of(cemb, "conditioner.embedders.0.")
                n_emb = sgm_ref.count_params(cemb)
                detail = f" (+ ClassEmbedder {n_emb:,} = {total + n_emb:,})"
            for i, tc in enumerate(cfg.get("text_encoders") or []):
                enc = clip_ref.encoder_from_config(tc, device="meta")
                kind = "transformer." if tc["layout"] == "hf" else "model."
                entries += keys_of(enc, f"conditioner.embedders.{i}.{kind}")
                detail += f" + text encoder {i} {sgm_ref.count_params(enc):,}"
        path = write_keys(name, entries)
        print(f"{name}: {total:,} parameters{detail}; {len(entries)} keys -> "
              f"{os.path.relpath(path)}")
        if name in EXPECTED:
            assert total == EXPECTED[name], f"{name}: {total} != {EXPECTED[name]}"
    print("ok")


if __name__ == "__main__":
    main()
