#!/usr/bin/python3
"""Times the forward of SDXL's text encoders on the CPU in ldmc and in PyTorch, in one run on one
machine: what the conditioner costs per training step (the encoders are frozen: forward only).

Runs `ldmc bench text --config MODEL --json` (random weights; B prompts of 8 to 77 tokens, whose
ids it prints), then the same encoders in PyTorch with the same thread count and the same ids,
float32, under torch.inference_mode():
  - CLIP ViT-L as transformers' CLIPTextModel computes it (tests/ref/clip_ref.py: q, k, v
    projections, scores, causal mask, softmax; the hidden state SDXL takes, 11 of 12 blocks);
  - OpenCLIP bigG as open_clip computes it: nn.MultiheadAttention with the additive causal mask
    (PyTorch's fused attention path where it applies), all 32 blocks, ln_final and the projection
    at the end token.
Medians of the same number of runs after a warm-up; the ratio is PyTorch's time over ldmc's.

Usage: bench/text_vs_torch.py [--config configs/sdxl_base.yaml] [--ldmc build/ldmc] [--batch B]
                              [--reps N] [--threads N] [--markdown]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))


def open_clip_torch(spec):
    """open_clip's text tower with nn.MultiheadAttention (batch-first), float32."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    W, heads, L = spec["width"], spec["heads"], spec["layers"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(W)
            self.attn = nn.MultiheadAttention(W, heads, batch_first=True)
            self.ln_2 = nn.LayerNorm(W)
            self.c_fc = nn.Linear(W, spec["mlp_width"])
            self.c_proj = nn.Linear(spec["mlp_width"], W)

        def forward(self, x, mask):
            h = self.ln_1(x)
            x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
            act = F.gelu if not spec["quick_gelu"] else (lambda t: t * torch.sigmoid(1.702 * t))
            return x + self.c_proj(act(self.c_fc(self.ln_2(x))))

    class Text(nn.Module):
        def __init__(self):
            super().__init__()
            self.token_embedding = nn.Embedding(spec["vocab_size"], W)
            self.positional_embedding = nn.Parameter(torch.randn(spec["context_length"], W) * 0.01)
            self.blocks = nn.ModuleList([Block() for _ in range(L)])
            self.ln_final = nn.LayerNorm(W)
            P = spec["projection_dim"] or W
            self.text_projection = nn.Parameter(torch.randn(W, P) * W ** -0.5)
            T = spec["context_length"]
            self.register_buffer("mask", torch.full((T, T), float("-inf")).triu_(1))

        def forward(self, ids):
            x = self.token_embedding(ids) + self.positional_embedding
            context = None
            for i, block in enumerate(self.blocks):
                x = block(x, self.mask)
                if i + 1 == spec["hidden_layer"]:
                    context = x
            o = self.ln_final(x)
            pooled = o[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ self.text_projection
            return context, pooled

    return Text()


def torch_ms(spec, reps):
    import torch
    import clip_ref
    ids = torch.tensor(spec["ids"], dtype=torch.long).view(spec["batch"], spec["context_length"])
    if spec["layout"] == "hf":
        cfg = {k: spec[k] for k in ("vocab_size", "context_length", "width", "heads", "layers",
                                    "mlp_width", "hidden_layer")}
        cfg.update(layout="hf", activation="quick_gelu" if spec["quick_gelu"] else "gelu")
        model = clip_ref.encoder_from_config(cfg, dtype=torch.float32)
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.02)
        run = lambda: model(ids)  # noqa: E731
    else:
        model = open_clip_torch(spec)
        run = lambda: model(ids)  # noqa: E731
    model.eval()
    times = []
    with torch.inference_mode():
        for r in range(reps + 1):
            t0 = time.perf_counter()
            run()
            if r:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "sdxl_base.yaml"))
    ap.add_argument("--ldmc", default=os.path.join(ROOT, "build", "ldmc"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="0: ldmc's default (LDMC_THREADS or all cores)")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    env = dict(os.environ)
    if a.threads:
        env["LDMC_THREADS"] = str(a.threads)
    out = subprocess.run([a.ldmc, "bench", "text", "--config", a.config, "--batch", str(a.batch),
                          "--reps", str(a.reps), "--json"], env=env, check=True,
                         capture_output=True, text=True).stdout
    specs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    import torch
    rows = []
    for s in specs:
        torch.set_num_threads(s["threads"])
        t = torch_ms(s, a.reps)
        name = "CLIP ViT-L (hf)" if s["layout"] == "hf" else "OpenCLIP bigG (open_clip)"
        rows.append((name, s, t))
    if a.markdown:
        print("| encoder | prompts | threads | ldmc ms | PyTorch %s ms | PyTorch / ldmc |" % torch.__version__)
        print("|---|---|---|---|---|---|")
        for name, s, t in rows:
            print("| %s, %d of %d blocks%s | %d | %d | %.1f | %.1f | %.2f |" % (
                name, s["hidden_layer"] if not s["projection_dim"] else s["layers"], s["layers"],
                " + pooled" if s["projection_dim"] else "", s["batch"], s["threads"],
                s["ms_forward"], t, t / s["ms_forward"]))
    else:
        for name, s, t in rows:
            print("%-28s batch %d, %d threads: ldmc %.1f ms, PyTorch %.1f ms, ratio %.2f" % (
                name, s["batch"], s["threads"], s["ms_forward"], t, t / s["ms_forward"]))


if __name__ == "__main__":
    main()
