#!/usr/bin/env python3
"""The data-parallel scaling model of docs/benchmarks.md ("Data-parallel scaling").

Per-GPU efficiency of ldmc's SDXL step on N GPUs = t_step / (t_step + exposed communication +
compute slowed by the collectives running beside it), where, as ldmc schedules them
(docs/multigpu.md):
  - f32 gradients are reduced in buckets while the last micro-batch's backward runs (2/3 of a
    step's FLOPs); what does not fit in that window, and the last bucket, are exposed;
  - with ZeRO-1 the buckets are reduce-scattered (half an all-reduce's bytes) and the bf16
    working weights all-gathered after the update, exposed (the next forward waits for them);
  - NCCL's kernels take SMs from the compute while they overlap it: `contention` of the
    overlapped communication time is added to the step.
Collective times from nccl-tests' bus bandwidth definitions: all-reduce S 2(n-1)/n / busbw,
reduce-scatter and all-gather S (n-1)/n / busbw. Bandwidths: ../shared/reference/multigpu.md §7.
Usage: bench/scaling_model.py [--step-s 0.333] [--contention 0.1] [--bucket-mib 100]
"""
import argparse

PARAMS = 2_567_463_684  # SDXL base UNet (../shared/reference/sdxl-facts.md)

# (setting, GPUs, ring bus bandwidth GB/s)
FABRICS = [
    ("1 node x 8, NVLink/NVSwitch (ring)", 8, 370),
    ("1 node x 8, NVLink SHARP (NVLS)", 8, 480),
    ("2 nodes x 8, 8 NDR NICs a node", 16, 370),
    ("8 nodes x 8, 8 NDR NICs a node", 64, 370),
    ("8 nodes x 8, 8 HDR200 NICs a node", 64, 192),
    ("8 nodes x 8, one NDR NIC a node", 64, 47),
]


def efficiency(step, n, busbw, zero, contention, bucket_bytes, accumulation=1):
    grads = 4 * PARAMS  # f32 gradients
    busbw *= 1e9
    window = step * 2 / 3  # the last micro-batch's backward
    total = step * accumulation
    if zero:
        reduce = grads * (n - 1) / n / busbw
        last = bucket_bytes * (n - 1) / n / busbw
        gather = 2 * PARAMS * (n - 1) / n / busbw  # bf16 weights, after the update
    else:
        reduce = grads * 2 * (n - 1) / n / busbw
        last = bucket_bytes * 2 * (n - 1) / n / busbw
        gather = 0.0
    overlapped = min(reduce, window)
    exposed = max(reduce - window, 0.0) + last + gather
    return total / (total + exposed + contention * overlapped), reduce, exposed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--step-s", type=float, nargs="*", default=[0.333, 0.419],
                    help="single-GPU step times (s) at batch 8: ldmc's goal 24 img/s, "
                         "torch.compile's 19.1 img/s on an H200")
    ap.add_argument("--contention", type=float, default=0.1)
    ap.add_argument("--bucket-mib", type=float, default=100)
    args = ap.parse_args()
    bucket = args.bucket_mib * 2**20
    print(f"SDXL base, {PARAMS / 1e9:.3f} B parameters, f32 gradients {4 * PARAMS / 1e9:.2f} GB; "
          f"contention {args.contention}, buckets {args.bucket_mib:g} MiB")
    print("| fabric | GPUs | busbw GB/s | all-reduce ms | "
          + " | ".join(f"per GPU, step {s * 1e3:.0f} ms (replicated / ZeRO-1)" for s in args.step_s)
          + " | 4 micro-batches, replicated |")
    print("|---|---|---|---|" + "---|" * len(args.step_s) + "---|")
    for name, n, bw in FABRICS:
        cells = []
        for s in args.step_s:
            e, reduce, _ = efficiency(s, n, bw, False, args.contention, bucket)
            z, _, _ = efficiency(s, n, bw, True, args.contention, bucket)
            cells.append(f"{100 * e:.1f}% / {100 * z:.1f}%")
        a, _, _ = efficiency(args.step_s[0], n, bw, False, args.contention, bucket, 4)
        print(f"| {name} | {n} | {bw} | {reduce * 1e3:.1f} | " + " | ".join(cells)
              + f" | {100 * a:.1f}% |")


if __name__ == "__main__":
    main()
