#!/usr/bin/env python3
"""Data parallelism on the CPU, measured: `ldmc train` of the demo model (configs/demo_model.yaml:
a small class-conditional UNet with SDXL's conditioning, a random VAE) on drawn shapes, one
process against `mpirun -np 2` at the same batch a rank, each process one thread (LDMC_THREADS=1).
Efficiency a rank = (2-rank images/s) / (2 x 1-process images/s), both from the progress line of
the last `--window` steps (the first steps warm up). Also with one gradient bucket
(dist.bucket_mb huge: the reduction waits for the end of backward) to see what the overlap buys.
Usage: bench/dist_cpu.py [--ldmc build/ldmc] [--batch 8] [--steps 16] [--window 8] [--markdown]
"""
import argparse
import os
import re
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, env=None):
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}")
    return r.stdout


def images_per_second(log):
    lines = re.findall(r"\| ([0-9.]+) img/s", log)
    if not lines:
        raise SystemExit("no progress line:\n" + log[-2000:])
    return float(lines[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ldmc", default=os.path.join(ROOT, "build", "ldmc"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ldmc_dist_cpu_")
    run([a.ldmc, "demo-data", f"{work}/data", "--per-class", "32"])
    model = os.path.join(ROOT, "configs", "demo_model.yaml")
    run([a.ldmc, "init", model, f"{work}/init.safetensors"])
    with open(f"{work}/train.yaml", "w") as f:
        f.write(f"""task: diffusion
model: {model}
vae: {model}
vae_weights: init.safetensors
data: {{source: images, path: data, labels: folders, buckets: {{pixels: 4096, multiple: 8, max_ratio: 2}}, batch_size: {a.batch}, workers: 1, prefetch: 4}}
optim: {{lr: 1.0e-4, grad_clip: 1.0}}
ema: {{decay: 0.999}}
train: {{steps: {a.steps}, seed: 1, out: OUT, log_every: {a.window}, sample_every: 100000, checkpoint_every: 100000, threads: 1}}
""")
    env = dict(os.environ, LDMC_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    mpirun = ["mpirun", "--oversubscribe", "--bind-to", "core", "-np", "2"]
    cases = [
        ("1 process", [], "one", []),
        ("2 ranks, 100 MiB buckets (default)", mpirun, "two", []),
        ("2 ranks, 1 MiB buckets", mpirun, "two_small", ["--set", "dist.bucket_mb=1"]),
        ("2 ranks, one bucket after backward", mpirun, "two_one", ["--set", "dist.bucket_mb=4096"]),
    ]
    results = []
    for name, launcher, out, extra in cases:
        log = run(launcher + [a.ldmc, "train", f"{work}/train.yaml", "--set", f"train.out={work}/{out}"]
                  + extra, env)
        buckets = re.search(r"gradients in (\d+) buckets", log)
        results.append((name, images_per_second(log), buckets.group(1) if buckets else "-"))
    base = results[0][1]
    cpu = open("/proc/cpuinfo").read()
    model_name = re.search(r"model name\s*:\s*(.*)", cpu).group(1)
    print(f"{model_name}, {os.cpu_count()} cores; demo model, batch {a.batch} a rank, one thread a "
          f"rank, the last {a.window} of {a.steps} steps")
    print("| run | buckets | images/s | images/s a rank | efficiency a rank |")
    print("|---|---|---|---|---|")
    for name, ips, buckets in results:
        ranks = 1 if name == "1 process" else 2
        print(f"| {name} | {buckets} | {ips:.2f} | {ips / ranks:.2f} | {100 * ips / ranks / base:.1f}% |")


if __name__ == "__main__":
    main()
