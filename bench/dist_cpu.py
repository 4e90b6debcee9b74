#!/usr/bin/env python3
"""Data parallelism on the CPU, measured: `ldmc train` of the demo model (configs/demo_model.yaml:
a small class-conditional UNet with SDXL's conditioning, a random VAE) on drawn shapes, one
process against `mpirun -np 2` at the same batch a rank, each process one thread (LDMC_THREADS=1).
One 64x64 bucket of 128 images: every batch is whole (a bucket's partial last batch would leave
the ranks unequal parts, and the step waits for the larger).
Efficiency a rank = (2-rank images/s) / (2 x 1-process images/s), both from the progress line of
the last `--window` steps (the first steps warm up); and against two independent processes run at
once (the same cores and memory busy, no communication): what data parallelism itself costs. Also
with small buckets and with one bucket (dist.bucket_mb huge: reduced after backward).
Each case runs --repeat times, interleaved; the median is reported (a shared VM is noisy).
Usage: bench/dist_cpu.py [--ldmc build/ldmc] [--batch 8] [--steps 16] [--window 8] [--repeat 3]
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
    ap.add_argument("--repeat", type=int, default=3, help="runs of each case: the median")
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
data: {{source: images, path: data, labels: folders, buckets: {{pixels: 4096, multiple: 64, max_ratio: 1}}, batch_size: {a.batch}, workers: 1, prefetch: 4}}
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
    def alone():  # two independent processes at once, each pinned to a core as mpirun binds
        procs = [subprocess.Popen(["taskset", "-c", str(k), a.ldmc, "train", f"{work}/train.yaml",
                                   "--set", f"train.out={work}/alone{k}"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for k in range(2)]
        ips = [images_per_second(p.communicate()[0]) for p in procs]
        subprocess.run(["rm", "-rf", f"{work}/alone0", f"{work}/alone1"])
        return sum(ips)

    def case(launcher, out, extra):
        log = run(launcher + [a.ldmc, "train", f"{work}/train.yaml", "--set",
                              f"train.out={work}/{out}"] + extra, env)
        subprocess.run(["rm", "-rf", f"{work}/{out}"])
        buckets = re.search(r"gradients in (\d+) buckets", log)
        return images_per_second(log), buckets.group(1) if buckets else "-"

    samples = {name: [] for name, *_ in cases}
    busy_runs, buckets_of = [], {}
    for _ in range(a.repeat):
        busy_runs.append(alone() / 2)
        for name, launcher, out, extra in cases:
            ips, buckets_of[name] = case(launcher, out, extra)
            samples[name].append(ips)
    median = lambda v: sorted(v)[len(v) // 2]
    results = [(name, median(samples[name]), buckets_of[name]) for name, *_ in cases]
    alone_ips = median(busy_runs)
    base, busy = results[0][1], alone_ips
    cpu = open("/proc/cpuinfo").read()
    model_name = re.search(r"model name\s*:\s*(.*)", cpu).group(1)
    print(f"{model_name}, {os.cpu_count()} cores; demo model, batch {a.batch} a rank, one thread a "
          f"rank, the last {a.window} of {a.steps} steps, median of {a.repeat} runs")
    print("| run | buckets | images/s | a rank | against 1 process | against 2 processes at once |")
    print("|---|---|---|---|---|---|")
    print(f"| 1 process | - | {base:.2f} | {base:.2f} | 100.0% | |")
    print(f"| 2 independent processes at once | - | {2 * busy:.2f} | {busy:.2f} | "
          f"{100 * busy / base:.1f}% | 100.0% |")
    for name, ips, buckets in results[1:]:
        print(f"| {name} | {buckets} | {ips:.2f} | {ips / 2:.2f} | {100 * ips / 2 / base:.1f}% | "
              f"{100 * ips / 2 / busy:.1f}% |")


if __name__ == "__main__":
    main()
