#!/usr/bin/python3
"""Times a sampler step on the CPU in ldmc and in PyTorch, in one run on one machine.

Runs `ldmc bench sample --config MODEL --json` (random weights; B latents, classifier-free
guidance: the UNet over 2B, then the Euler update), then the same step in PyTorch with the same
thread count: tests/ref/sgm_ref.py's UNet from the same config (generative-models' UNetModel),
float32, under torch.inference_mode(), the class token or random text embeddings and the zeroed
unconditional branch concatenated, x / sqrt(sigma^2 + 1) in, CFG, k-diffusion's Euler update; both
memory layouts (the faster is the baseline). Medians of the same number of steps after a warm-up;
the ratio is ldmc's ms a step over PyTorch's (below 1: ldmc is faster).

Usage: bench/sample_vs_torch.py [--config configs/cin_size_cond.yaml] [--ldmc build/ldmc]
                                [--res H W] [--batch B] [--steps N] [--reps N] [--threads N]
"""
import argparse
import math
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))
from ldmc_json import ldmc_json  # noqa: E402


def torch_ms_per_step(cfg_path, spec, reps, threads, channels_last):
    import torch
    import sgm_ref
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = sgm_ref.load_config(cfg_path)
    built = sgm_ref.unet_from_config(cfg)
    unet, embedder = built if isinstance(built, tuple) else (built, None)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    unet.eval().to(memory_format=fmt)
    u = sgm_ref._section(cfg, "unet")
    B, H, W = spec["batch"], spec["height"], spec["width"]
    h, w = H // 8, W // 8
    guided = spec["unet_batch"] == 2 * B
    n = 2 * B if guided else B
    if embedder is not None:
        c = embedder(torch.arange(B) % int(u["class_embed"]["n_classes"])).detach()
    elif int(u.get("context_dim", 0) or 0):
        c = torch.randn(B, 77, int(u["context_dim"]))
    else:
        c = None
    context = torch.cat([c, torch.zeros_like(c)]) if (c is not None and guided) else c
    size = torch.tensor([[H, W]] * n, dtype=torch.float32)
    parts = {"original_size": size, "crop_coords": torch.zeros(n, 2), "target_size": size,
             "aesthetic_score": torch.full((n,), 6.0)}
    if u.get("pooled_dim"):
        parts["pooled_text"] = torch.randn(n, int(u["pooled_dim"]))
    y = sgm_ref.vector_from_parts(cfg, parts) if u.get("vector") else None
    x = torch.randn(B, int(u["in_channels"]), h, w) * 14.6
    s, sn, scale = 14.6, 13.4, spec["cfg"]

    def step():
        nonlocal x
        t0 = time.perf_counter()
        with torch.inference_mode():
            xin = (x / math.sqrt(s * s + 1)).contiguous(memory_format=fmt)
            xin = torch.cat([xin, xin]) if guided else xin
            out = unet(xin, torch.full((n,), 999.0), context=context, y=y)
            eps = out[B:] + scale * (out[:B] - out[B:]) if guided else out
            denoised = x - s * eps
            x = x + (x - denoised) / s * (sn - s)
        return 1e3 * (time.perf_counter() - t0)

    step()
    return statistics.median(step() for _ in range(reps * spec["steps"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "cin_size_cond.yaml"))
    ap.add_argument("--ldmc", default=os.path.join(ROOT, "build", "ldmc"))
    ap.add_argument("--res", type=int, nargs="+", default=[256])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    res = [str(r) for r in args.res]
    spec = ldmc_json(args.ldmc, ["bench", "sample", "--config", args.config, "--res", *res,
                                 "--batch", str(args.batch), "--steps", str(args.steps), "--reps",
                                 str(args.reps), "--json"], args.threads)
    import torch
    nchw = torch_ms_per_step(args.config, spec, args.reps, args.threads, False)
    nhwc = torch_ms_per_step(args.config, spec, args.reps, args.threads, True)
    best = min(nchw, nhwc)
    print(f"{os.path.relpath(args.config, ROOT)}: a sampler step at {spec['width']}x{spec['height']}, "
          f"batch {spec['batch']} (the UNet sees {spec['unet_batch']}), {args.threads} threads")
    print(f"  ldmc                    {spec['ms_per_step']:9.1f} ms/step")
    print(f"  PyTorch {torch.__version__:<8} NCHW     {nchw:9.1f} ms/step")
    print(f"  PyTorch {torch.__version__:<8} NHWC     {nhwc:9.1f} ms/step")
    print(f"  ldmc / best PyTorch     {spec['ms_per_step'] / best:9.2f}  (below 1: ldmc is faster)")


if __name__ == "__main__":
    main()
