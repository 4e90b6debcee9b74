#!/usr/bin/python3
"""The PyTorch baseline for ldmc on a GPU: one SDXL base UNet training step, timed in PyTorch.

Builds the UNet of a model config (configs/sdxl_base.yaml by default) with random weights through
tests/ref/sgm_ref.py (generative-models' UNetModel), fp32 master weights on the device, attention
through torch.nn.functional.scaled_dot_product_attention (flash / cuDNN on the GPU, as sgm and
diffusers run it; sgm_ref's own attention is the plain softmax(q k^T / sqrt(d)) v, which PyTorch
without SDPA, such as Debian's 1.13, keeps). Then it times, on synthetic data:
    train step: latents (B, 4, res/8, res/8), timesteps, text context (B, 77, context_dim) and
        vector y (B, adm_in_channels), all random -> UNet forward under bf16 autocast -> MSE in
        fp32 against a random target -> backward -> clip_grad_norm_(1.0) -> AdamW (fused where
        available, lr 1e-5, weight decay 0.01) -> zero_grad(set_to_none=True); no EMA.
    CFG forward: one UNet forward at batch 2 under no_grad + bf16 autocast (a sampling step with
        classifier-free guidance).
Medians of --steps runs after --warmup runs, each closed by a device synchronize. FLOPs come from
torch.utils.flop_counter.FlopCounterMode over one forward+backward (PyTorch >= 2.1); older
PyTorch falls back to DESIGN.md's anchor, 20.6 TFLOP per image at 1024² scaled by (res/1024)²
(approximate: attention grows faster), for the SDXL base UNet only.
DESIGN.md's anchors (one H200, PyTorch 2.11): 15.3 img/s eager, 19.1 img/s torch.compile, 99/77 GiB
at batch 8; on an 80 GB H100 eager batch 8 may not fit: use --batch 4 or --compile.

Usage: bench/sdxl_train_torch.py [--config MODEL_YAML] [--batch 8] [--res 1024] [--steps 10]
           [--warmup 3] [--compile] [--channels-last] [--profile] [--json] [--device cuda|cpu]
CPU smoke test (Debian's PyTorch 1.13; the CPU runs in fp32, without autocast):
    /usr/bin/python3 bench/sdxl_train_torch.py --device cpu --config configs/tiny_unet_text.yaml \\
        --batch 1 --res 64 --steps 1 --warmup 0 --profile
--json prints one JSON object on stdout (the summary then goes to stderr).
sgm_ref has no gradient checkpointing, so neither has this benchmark.
"""
import argparse
import inspect
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

# Fewer out-of-memory failures from fragmentation at the large batch sizes (set before CUDA starts).
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))
import sgm_ref  # noqa: E402

SDXL_TFLOP_PER_IMAGE_1024 = 20.6  # DESIGN.md: PyTorch's counter, one forward+backward at 1024²


def patch_sgm_ref():
    """Runs sgm_ref's UNet as sgm does on a GPU: the timestep frequencies made on the timesteps'
    device (sgm_ref makes them on the CPU and copies them), and CrossAttention through SDPA where
    this PyTorch has it. Returns the attention's name."""
    def timestep_embedding(t, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period)
                          * torch.arange(0, half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb

    sgm_ref.timestep_embedding = timestep_embedding
    if not hasattr(F, "scaled_dot_product_attention"):
        return "softmax(q k^T / sqrt(d)) v (no SDPA in this PyTorch)"

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        b, h, d = x.shape[0], self.heads, self.dim_head
        q, k, v = (t.view(b, -1, h, d).transpose(1, 2) for t in (q, k, v))  # b h n d
        out = F.scaled_dot_product_attention(q, k, v)  # default scale d^-0.5 = self.scale
        return self.to_out(out.transpose(1, 2).reshape(b, -1, h * d))

    sgm_ref.CrossAttention.forward = forward
    return "scaled_dot_product_attention"


def unet_section(path):
    """The `unet:` section of a model config, or of the model config a training recipe names."""
    cfg = sgm_ref.load_config(path)
    if "unet" not in cfg and "model" in cfg:
        model = cfg["model"]
        path = model if os.path.isabs(model) else os.path.join(os.path.dirname(path), model)
        cfg = sgm_ref.load_config(path)
    return sgm_ref._section(cfg, "unet")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, device, warmup, steps):
    """Median wall time of fn in ms over `steps` calls after `warmup` calls, synchronized."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def count_flops(fn):
    """FLOPs of fn by PyTorch's counter, or None where this PyTorch has none (< 2.1)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def top_kernels(fn, device, n_steps, step_ms, top=5):
    """The `top` CUDA kernels by total time over n_steps calls of fn (on the CPU: the top ops by
    self CPU time), as [{name, total_ms, pct_of_step}]."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(n_steps):
            fn()
        sync(device)
    totals = {}
    if cuda:
        # Kernels from the trace's categories: key_averages() mixes GPU user annotations (the
        # optimizer's, torch.compile's regions) in with the kernels they contain.
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "trace.json")
            prof.export_chrome_trace(path)
            with open(path) as f:
                events = json.load(f)
        for ev in events["traceEvents"] if isinstance(events, dict) else events:
            if str(ev.get("cat", "")).lower() == "kernel" and ev.get("ph") == "X":
                totals[ev["name"]] = totals.get(ev["name"], 0.0) + float(ev.get("dur", 0)) / 1e3
    else:
        for ev in prof.key_averages():
            totals[ev.key] = ev.self_cpu_time_total / 1e3
    best = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [{"name": name, "total_ms": round(ms, 3),
             "pct_of_step": round(100 * ms / (n_steps * step_ms), 2)} for name, ms in best]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "sdxl_base.yaml"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--res", type=int, default=1024, help="image side in pixels (latent res/8)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--profile", action="store_true", help="top 5 CUDA kernels over 2 steps")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    out = sys.stderr if args.json else sys.stdout
    if args.res % 8:
        ap.error("--res must be a multiple of 8")
    if args.compile and not hasattr(torch, "compile"):
        ap.error(f"--compile needs PyTorch 2.0 or later (this is {torch.__version__})")

    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # best convolution algorithms for the fixed shapes
    attention = patch_sgm_ref()
    cfg = unet_section(args.config)
    built = sgm_ref.unet_from_config(cfg, device=device)  # fp32 master weights
    unet = built[0] if isinstance(built, tuple) else built  # a class embedder is not timed
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    unet.to(memory_format=fmt).train()
    params = [p for p in unet.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    model = torch.compile(unet, dynamic=False) if args.compile else unet

    # AdamW: fused kernels on the GPU where this PyTorch has them (2.0+), else its default path.
    fused = device.type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, **({"fused": True} if fused else {}))

    def inputs(batch):
        """Synthetic latents, float timesteps, text context and vector y for `batch` images."""
        lat = args.res // 8
        x = torch.randn(batch, cfg["in_channels"], lat, lat, device=device).contiguous(memory_format=fmt)
        t = torch.randint(0, 1000, (batch,), device=device).float()
        ctx = torch.randn(batch, 77, cfg["context_dim"], device=device) if cfg.get("context_dim") else None
        y = torch.randn(batch, sgm_ref.vector_width(cfg), device=device) if cfg.get("vector") else None
        return x, t, ctx, y

    B = args.batch
    x, t, ctx, y = inputs(B)
    target = torch.randn(B, cfg["out_channels"], args.res // 8, args.res // 8, device=device)
    # bf16 autocast on the GPU; the CPU smoke test runs in fp32 (Debian's 1.13 CPU autocast leaves
    # group_norm in bf16 against fp32 weights and fails).
    use_bf16 = device.type == "cuda"
    precision = "bf16 autocast" if use_bf16 else "fp32"
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)  # noqa: E731

    def forward_backward(net):
        with autocast():
            pred = net(x, t, context=ctx, y=y)
        loss = F.mse_loss(pred.float(), target)
        loss.backward()

    def train_step():
        forward_backward(model)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    # FLOPs of one forward+backward, counted on the eager module (before the timed steps).
    flops = count_flops(lambda: forward_backward(unet))
    opt.zero_grad(set_to_none=True)
    if flops is not None:
        flops_source = "torch.utils.flop_counter.FlopCounterMode"
    elif cfg == unet_section(os.path.join(ROOT, "configs", "sdxl_base.yaml")):
        flops = SDXL_TFLOP_PER_IMAGE_1024 * 1e12 * B * (args.res / 1024) ** 2
        flops_source = "DESIGN.md anchor, 20.6 TFLOP/image at 1024² x (res/1024)² (approximate)"
    else:
        flops_source = "none (no FlopCounterMode in this PyTorch, and not the SDXL base UNet)"

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_ms = median_ms(train_step, device, args.warmup, args.steps)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None

    # One classifier-free-guidance sampling forward: batch 2 (conditional + unconditional).
    cx, ct, cctx, cy = inputs(2)

    def guided_forward():
        with torch.no_grad(), autocast():
            model(cx, ct, context=cctx, y=cy)

    guided_ms = median_ms(guided_forward, device, args.warmup, args.steps)
    kernels = top_kernels(train_step, device, 2, step_ms) if args.profile else None

    img_s = B / (step_ms / 1e3)
    tflops = flops / (step_ms / 1e3) / 1e12 if flops is not None else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    result = {
        "device": name, "torch": torch.__version__, "config": os.path.relpath(args.config, ROOT),
        "params": n_params, "batch": B, "res": args.res, "compile": args.compile,
        "channels_last": args.channels_last, "precision": precision, "attention": attention,
        "optimizer": "AdamW fused" if fused else "AdamW", "steps": args.steps, "warmup": args.warmup,
        "step_ms": round(step_ms, 3), "img_per_s": round(img_s, 3),
        "tflop_per_image": round(flops / B / 1e12, 4) if flops is not None else None,
        "flops_source": flops_source, "tflops": round(tflops, 2) if tflops is not None else None,
        "peak_mem_gib": round(peak_gib, 2) if peak_gib is not None else None,
        "guided_forward_ms": round(guided_ms, 3), "top_kernels": kernels,
    }

    print(f"{result['config']}: {n_params:,} parameters, batch {B} at {args.res}² "
          f"(latent {args.res // 8}²), {'torch.compile' if args.compile else 'eager'}, "
          f"{'channels_last' if args.channels_last else 'NCHW'}, {precision}, {result['optimizer']}",
          file=out)
    print(f"  {name}, PyTorch {torch.__version__}, attention {attention}", file=out)
    print(f"  train step      {step_ms:10.1f} ms (median of {args.steps} after {args.warmup} warm-up)"
          f"  {img_s:8.2f} img/s", file=out)
    if tflops is not None:
        print(f"  FLOPs           {flops / B / 1e12:10.3f} TFLOP/image fwd+bwd  {tflops:8.1f} TFLOP/s"
              f"  ({flops_source})", file=out)
    else:
        print(f"  FLOPs           {flops_source}", file=out)
    if peak_gib is not None:
        print(f"  peak memory     {peak_gib:10.2f} GiB (torch.cuda.max_memory_allocated)", file=out)
    print(f"  guided forward  {guided_ms:10.1f} ms (batch 2, no_grad, {precision})", file=out)
    if kernels is not None:
        what = "CUDA kernels" if device.type == "cuda" else "CPU ops (self time)"
        print(f"  top {len(kernels)} {what} over 2 steps:", file=out)
        for k in kernels:
            print(f"    {k['total_ms']:10.2f} ms {k['pct_of_step']:6.1f}%  {k['name'][:100]}", file=out)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
