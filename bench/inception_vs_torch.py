#!/usr/bin/python3
"""Times FID feature extraction on the CPU in ldmc and in PyTorch, in one run on one machine.

Runs `ldmc bench inception --batch B --json` (random weights; B images of 512x512 resized to 299 as
pytorch-fid does, the FID Inception's forward to pool3 and the logits), then the same in PyTorch
with the same thread count: torchvision's Inception3 with pytorch-fid's blocks
(tests/ref/make_inception_refs.py, its random weights), float32, eval mode, under
torch.inference_mode(), F.interpolate to 299 and 2x - 1 first, both memory layouts (NCHW and
channels_last; the faster is the baseline). Medians of the same number of batches after a
warm-up; the ratio is images/s of ldmc over PyTorch's (above 1: ldmc is faster).

Usage: bench/inception_vs_torch.py [--ldmc build/ldmc] [--batch B] [--reps N] [--threads N]
"""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))
from ldmc_json import ldmc_json  # noqa: E402


def torch_images_per_s(batch, reps, threads, channels_last):
    import torch
    import torch.nn.functional as F
    import make_inception_refs as ref
    torch.set_num_threads(threads)
    net = ref.fid_inception_v3().eval()
    ref.init(net)
    net = net.float()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net.to(memory_format=fmt)
    images = torch.randint(0, 256, (batch, 3, 512, 512), dtype=torch.uint8)

    def run():
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = images.float() / 255
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            x = (2 * x - 1).contiguous(memory_format=fmt)
            net(x)
        return time.perf_counter() - t0

    run()
    return batch / statistics.median(run() for _ in range(reps))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ldmc", default=os.path.join(ROOT, "build", "ldmc"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    spec = ldmc_json(args.ldmc, ["bench", "inception", "--batch", str(args.batch), "--reps",
                                 str(args.reps), "--json"], args.threads)
    import torch
    nchw = torch_images_per_s(args.batch, args.reps, args.threads, False)
    nhwc = torch_images_per_s(args.batch, args.reps, args.threads, True)
    best = max(nchw, nhwc)
    print(f"FID Inception, batch {args.batch} of 512x512 -> 299, {args.threads} threads, "
          f"median of {args.reps} batches")
    print(f"  ldmc                    {spec['images_per_s']:8.2f} images/s")
    print(f"  PyTorch {torch.__version__:<8} NCHW     {nchw:8.2f} images/s")
    print(f"  PyTorch {torch.__version__:<8} NHWC     {nhwc:8.2f} images/s")
    print(f"  ldmc / best PyTorch     {spec['images_per_s'] / best:8.2f}  (above 1: ldmc is faster)")


if __name__ == "__main__":
    main()
