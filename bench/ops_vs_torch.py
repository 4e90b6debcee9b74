#!/usr/bin/env python3
"""Times ldmc's CPU ops next to the same ops in PyTorch, in one run on one machine.

Runs `ldmc bench ops --json` (the cases and their parameters come from ldmc, so both sides time
exactly the same shapes), then times each case in PyTorch with the same thread count: forward,
and forward + backward from a random upstream gradient, median of the same number of runs after
a warm-up. Both use the same OpenBLAS kernels (OPENBLAS_CORETYPE as `ldmc info` reports it).
PyTorch gets its best layout: NCHW and channels_last are both timed for convolutions
and group norm, and the faster is the baseline. PyTorch 1.13 (Debian's python3-torch) has no
fused scaled_dot_product_attention on the CPU, so its attention is the standard
softmax(q k^T / sqrt(d)) v, which holds the full score matrix.

Usage: bench/ops_vs_torch.py [--ldmc build/ldmc] [--threads N] [--reps N] [--markdown]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time


def timed(fn, reps):
    fn()  # warm-up
    fwd, total = [], []
    for _ in range(reps):
        f, t = fn()
        fwd.append(f)
        total.append(t)
    return statistics.median(fwd), statistics.median(total)


def torch_case(torch, case, reps):
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return (torch.rand(*shape, generator=gen) * 2 - 1).requires_grad_()

    def run(forward, inputs):
        def once():
            for t in inputs:
                t.grad = None
            t0 = time.perf_counter()
            out = forward()
            t1 = time.perf_counter()
            grad = torch.rand(out.shape, generator=gen) * 2 - 1
            if out.is_contiguous(memory_format=torch.channels_last) and out.dim() == 4:
                grad = grad.contiguous(memory_format=torch.channels_last)
            t2 = time.perf_counter()
            out.backward(grad)
            t3 = time.perf_counter()
            return (t1 - t0) * 1e3, ((t1 - t0) + (t3 - t2)) * 1e3
        return timed(once, reps)

    op = case["op"]
    N, H, W, C = case["N"], case["H"], case["W"], case["C"]
    results = {}
    if op == "conv2d":
        for layout in ("nchw", "channels_last"):
            x, w, b = rand(N, C, H, W), rand(case["O"], C, case["kernel"], case["kernel"]), rand(case["O"])
            if layout == "channels_last":
                x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
                w = w.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
            results[layout] = run(lambda: F.conv2d(x, w, b, stride=case["stride"], padding=case["padding"]),
                                  [x, w, b])
    elif op == "attention":
        heads, L = case["heads"], H * W
        d = C // heads
        q, k, v = rand(N, heads, L, d), rand(N, heads, L, d), rand(N, heads, L, d)

        def attention():
            scores = torch.matmul(q, k.transpose(-1, -2)) * d ** -0.5
            return torch.matmul(scores.softmax(dim=-1), v)
        results["materialized"] = run(attention, [q, k, v])
    elif op == "group_norm":
        for layout in ("nchw", "channels_last"):
            x, g, b = rand(N, C, H, W), rand(C), rand(C)
            if layout == "channels_last":
                x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
            results[layout] = run(lambda: F.group_norm(x, case["groups"], g, b, 1e-5), [x, g, b])
    else:
        raise ValueError(f"unknown op {op}")
    best = min(results, key=lambda key: results[key][1])
    return best, results[best]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ldmc", default=os.path.join(here, "..", "build", "ldmc"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--filter", default=None)
    parser.add_argument("--markdown", action="store_true", help="print a table for docs/benchmarks.md")
    args = parser.parse_args()

    # PyTorch's matrix products go through Debian's OpenBLAS too: give it the kernels ldmc uses.
    info = subprocess.run([args.ldmc, "info"], check=True, capture_output=True, text=True).stdout
    core = re.search(r"kernels for (\w+)", info)
    if core:
        os.environ["OPENBLAS_CORETYPE"] = core.group(1)
    try:
        import torch
    except ImportError:
        sys.exit("ops_vs_torch.py: PyTorch is not installed for this interpreter "
                 "(Debian: apt-get install python3-torch, then run with /usr/bin/python3)")
    torch.set_num_threads(args.threads)

    cmd = [args.ldmc, "bench", "ops", "--json", "--reps", str(args.reps)]
    if args.filter:
        cmd += ["--filter", args.filter]
    env = dict(os.environ, LDMC_THREADS=str(args.threads))
    ldmc_out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    cases = [json.loads(line) for line in ldmc_out.splitlines() if line.startswith("{")]

    rows = []
    for case in cases:
        layout, (t_fwd, t_total) = torch_case(torch, case, args.reps)
        rows.append((case, layout, t_fwd, t_total))

    header = (f"ldmc vs PyTorch {torch.__version__} on the CPU, {args.threads} threads, OpenBLAS "
              f"kernels {os.environ.get('OPENBLAS_CORETYPE', 'auto')}, median of {args.reps} runs; "
              f"ratio = ldmc time / PyTorch time (< 1: ldmc faster)")
    if args.markdown:
        print(header + "\n")
        print("| case | ldmc fwd ms | PyTorch fwd ms | fwd ratio | ldmc fwd+bwd ms | PyTorch fwd+bwd ms "
              "| fwd+bwd ratio | PyTorch layout |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for case, layout, t_fwd, t_total in rows:
            print(f"| {case['name']} | {case['ms_forward']:.1f} | {t_fwd:.1f} | "
                  f"{case['ms_forward'] / t_fwd:.2f} | {case['ms_forward_backward']:.1f} | "
                  f"{t_total:.1f} | {case['ms_forward_backward'] / t_total:.2f} | {layout} |")
    else:
        print(header)
        print(f"{'case':32s} {'ldmc fwd':>9s} {'torch fwd':>9s} {'ratio':>6s} "
              f"{'ldmc f+b':>9s} {'torch f+b':>9s} {'ratio':>6s}  torch layout")
        for case, layout, t_fwd, t_total in rows:
            print(f"{case['name']:32s} {case['ms_forward']:9.1f} {t_fwd:9.1f} "
                  f"{case['ms_forward'] / t_fwd:6.2f} {case['ms_forward_backward']:9.1f} "
                  f"{t_total:9.1f} {case['ms_forward_backward'] / t_total:6.2f}  {layout}")


if __name__ == "__main__":
    main()
