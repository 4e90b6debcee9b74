#!/usr/bin/python3
"""Times one training step of a training config's models in ldmc and in PyTorch, in one run on one
machine: the number that says whether the C trainer is faster than the Python one.

Runs `ldmc bench step CONFIG --json` (its models with random weights, a synthetic batch of the
config's batch size at the sample size, everything of a step but the data loader), then the same
step in PyTorch with the same thread count, built from the same configs by tests/ref/sgm_ref.py
(generative-models' UNetModel, AutoencoderKL and ClassEmbedder):
    VAE encode (no gradient) -> z = scale (mean + std eps) -> x_t, the target -> UNet forward with
    the class context (conditioning dropout) and the size/crop/target vector -> MSE -> backward ->
    global-norm clipping -> AdamW (no decay on 1-D parameters and embeddings) -> EMA.
Both layouts are timed for PyTorch (NCHW and channels_last) and the faster is the baseline.
Medians of the same number of steps after a warm-up.

Usage: bench/step_vs_torch.py [CONFIG] [--ldmc build/ldmc] [--threads N] [--reps N]
       (CONFIG defaults to configs/demo.yaml)
Both use the same OpenBLAS kernels (OPENBLAS_CORETYPE as `ldmc info` reports it).
"""
import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))


def resolve(config_path, value):
    return value if os.path.isabs(value) else os.path.join(os.path.dirname(config_path), value)


def alphas_cumprod():
    start, end = math.sqrt(0.00085), math.sqrt(0.012)
    out, prod = [], 1.0
    for i in range(1000):
        beta = (start + i * (end - start) / 999) ** 2
        prod *= 1 - beta
        out.append(prod)
    return out


def torch_step_ms(cfg_path, spec, threads, reps, channels_last):
    import torch
    import sgm_ref
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = sgm_ref.load_config(cfg_path)
    model_cfg = sgm_ref.load_config(resolve(cfg_path, cfg["model"]))
    vae_cfg = sgm_ref.load_config(resolve(cfg_path, cfg["vae"]))
    built = sgm_ref.unet_from_config(model_cfg)
    unet, embedder = built if isinstance(built, tuple) else (built, None)
    vae = sgm_ref.vae_from_config(vae_cfg)
    vae.requires_grad_(False)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    unet.to(memory_format=fmt)
    vae.to(memory_format=fmt)
    B, H, W = spec["batch"], spec["height"], spec["width"]
    scale = float(sgm_ref._section(vae_cfg, "vae").get("scale_factor", 0.13025))
    opt_cfg, diff = cfg.get("optim", {}), cfg.get("diffusion", {})
    params = list(unet.parameters()) + (list(embedder.parameters()) if embedder else [])
    no_decay = [p for p in params if p.dim() == 1] + (list(embedder.parameters()) if embedder else [])
    ids = {id(p) for p in no_decay}
    decay = [p for p in params if id(p) not in ids]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(opt_cfg.get("weight_decay", 0.01))},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=float(opt_cfg.get("lr", 1e-4)),
                            betas=(float(opt_cfg.get("beta1", 0.9)), float(opt_cfg.get("beta2", 0.999))),
                            eps=float(opt_cfg.get("eps", 1e-8)))
    ema = [p.detach().clone() for p in params]
    ema_decay = float(cfg.get("ema", {}).get("decay", 0))
    clip = float(opt_cfg.get("grad_clip", 0))
    ac = torch.tensor(alphas_cumprod(), dtype=torch.float32)
    x = (torch.rand(B, 3, H, W) * 2 - 1).contiguous(memory_format=fmt)
    labels = torch.arange(B)
    n_classes = int(sgm_ref._section(model_cfg, "unet").get("class_embed", {}).get("n_classes", 0) or 0)
    if n_classes:
        labels = labels % n_classes
    size = torch.tensor([[H, W]] * B, dtype=torch.float32)
    parts = {"original_size": size, "crop_coords": torch.zeros(B, 2), "target_size": size}
    vector = sgm_ref._section(model_cfg, "unet").get("vector")
    dropout = float(diff.get("cond_dropout", 0))
    offset = float(diff.get("offset_noise", 0))

    def step():
        t0 = time.perf_counter()
        with torch.no_grad():
            q = vae.encode(x)
            z = scale * q.sample(torch.randn_like(q.mean))
        t = torch.randint(0, 1000, (B,))
        a = ac[t].view(B, 1, 1, 1)
        eps = torch.randn_like(z) + offset * torch.randn(B, z.shape[1], 1, 1)
        xt = (a.sqrt() * z + (1 - a).sqrt() * eps).contiguous(memory_format=fmt)
        context = None
        if embedder is not None:
            keep = (torch.rand(B) >= dropout).float().view(B, 1, 1)
            context = embedder(labels) * keep
        y = sgm_ref.vector_from_parts(model_cfg, parts) if vector else None
        out = unet(xt, t.float(), context=context, y=y)
        loss = torch.nn.functional.mse_loss(out, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if ema_decay > 0:
            with torch.no_grad():
                torch._foreach_mul_(ema, ema_decay)
                torch._foreach_add_(ema, [p.detach() for p in params], alpha=1 - ema_decay)
        return 1e3 * (time.perf_counter() - t0)

    step()  # warm-up
    return statistics.median(step() for _ in range(reps))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default=os.path.join(ROOT, "configs", "demo.yaml"))
    ap.add_argument("--ldmc", default=os.path.join(ROOT, "build", "ldmc"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    # PyTorch's matrix products go through Debian's OpenBLAS too: give it the kernels ldmc uses.
    info = subprocess.run([args.ldmc, "info"], check=True, capture_output=True, text=True).stdout
    core = re.search(r"kernels for (\w+)", info)
    if core:
        os.environ["OPENBLAS_CORETYPE"] = core.group(1)
    env = dict(os.environ, LDMC_THREADS=str(args.threads))
    out = subprocess.run([args.ldmc, "bench", "step", args.config, "--json", "--reps", str(args.reps)],
                         env=env, check=True, capture_output=True, text=True).stdout
    spec = json.loads(out.strip().splitlines()[-1])
    import torch
    nchw = torch_step_ms(args.config, spec, args.threads, args.reps, False)
    nhwc = torch_step_ms(args.config, spec, args.threads, args.reps, True)
    best = min(nchw, nhwc)
    print(f"{os.path.relpath(args.config, ROOT)}: batch {spec['batch']} at {spec['height']}x{spec['width']}, "
          f"{args.threads} threads, OpenBLAS kernels {os.environ.get('OPENBLAS_CORETYPE', 'auto')}, "
          f"median of {args.reps} steps")
    print(f"  ldmc                    {spec['ms_step']:9.1f} ms/step")
    print(f"  PyTorch {torch.__version__:<8} NCHW     {nchw:9.1f} ms/step")
    print(f"  PyTorch {torch.__version__:<8} NHWC     {nhwc:9.1f} ms/step")
    print(f"  ldmc / best PyTorch     {spec['ms_step'] / best:9.2f}  (below 1: ldmc is faster)")


if __name__ == "__main__":
    main()
