#!/usr/bin/python3
"""Reference features of the FID Inception, made with PyTorch and torchvision:
tests/ref/data/inception.safetensors, read by tests/test_eval.c.

The network is torchvision's Inception3 (num_classes=1008, aux_logits=False) with pytorch-fid's
FIDInceptionA/C/E_1/E_2 blocks swapped in (fid_inception_v3 in pytorch_fid/inception.py, written
here from its description in ../shared/reference/fid-is.md: count_include_pad=False average pools
in Mixed_5b-5d, 6b-6e and 7b, a max pool in Mixed_7c's pool branch), in eval mode, run in float64.
Weights: every entry of the state dict by its key k is u = signed_uniform(seed = FNV-1a-64(k))
(philox.py), then: conv weights u sqrt(6 / fan_in); batch norm weight 1 + u/4, bias u/4,
running_mean u/4, running_var 1 + u/4; fc.weight u / sqrt(2048), fc.bias u/4 (all rounded to
float32 first, as ldmc holds them).
Inputs: two 8-bit RGB images, 56x40 and 48x64 (width x height), values floor((u + 1)/2 * 256)
of seeds 901 and 902, preprocessed as pytorch-fid does (ToTensor, F.interpolate bilinear to 299
with align_corners=False in float32, 2x - 1). Stored: "image0", "image1" (uint8 as float32,
HWC), "pool3" (2, 2048), "logits" (2, 1008; fc without its bias, the IS's), and 4096 sampled
values of image 1 preprocessed both ways ("pytorch.input", "tf.input", positions in ".idx", HWC
order): pytorch-fid's above and torch-fidelity's TF1 legacy bilinear on [0, 255] then
(x - 128)/128 (interpolate_bilinear_2d_like_tensorflow1x, re-written here from fid-is.md).

Run with Debian's PyTorch and torchvision: /usr/bin/python3 tests/ref/make_inception_refs.py
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import philox  # noqa: E402
from make_model_refs import fnv1a64  # noqa: E402
from safetensors_writer import save_file  # noqa: E402

from torchvision.models.inception import InceptionA, InceptionC, InceptionE  # noqa: E402

SIZES = [(56, 40), (48, 64)]  # width, height


class FIDInceptionA(InceptionA):
    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([b1, b5, b3, bp], 1)


class FIDInceptionC(InceptionC):
    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([b1, b7, bd, bp], 1)


class FIDInceptionE(InceptionE):
    def __init__(self, in_channels, max_pool):
        super().__init__(in_channels)
        self.max_pool = max_pool

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.max_pool:  # the TF graph's quirk in Mixed_7c
            pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([b1, b3, bd, self.branch_pool(pool)], 1)


def fid_inception_v3():
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008,
                                          init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE(1280, max_pool=False)
    net.Mixed_7c = FIDInceptionE(2048, max_pool=True)
    return net


def init(net):
    with torch.no_grad():
        for key, t in net.state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            u = philox.signed_uniform(fnv1a64(key), t.numel()).astype(np.float64).reshape(t.shape)
            if key.endswith("conv.weight"):
                v = u * np.sqrt(6.0 / (t.numel() // t.shape[0]))
            elif key == "fc.weight":
                v = u / np.sqrt(2048.0)
            elif key.endswith(".weight") or key.endswith("running_var"):
                v = 1 + u / 4
            else:
                v = u / 4
            t.copy_(torch.from_numpy(v.astype(np.float32).astype(np.float64)))


def image(seed, w, h):
    u = philox.signed_uniform(seed, h * w * 3).astype(np.float64)
    return np.floor((u + 1) / 2 * 256).clip(0, 255).astype(np.uint8).reshape(h, w, 3)


def tf1_resize(x, size):
    """torch-fidelity's interpolate_bilinear_2d_like_tensorflow1x (align_corners=False), NCHW
    float32: src = dst * in/out, lo = floor, hi = min(lo + 1, in - 1)."""
    _, _, h, w = x.shape
    sy, sx = np.float32(h) / np.float32(size), np.float32(w) / np.float32(size)
    ys = torch.arange(size, dtype=torch.float32) * torch.tensor(sy, dtype=torch.float32)
    xs = torch.arange(size, dtype=torch.float32) * torch.tensor(sx, dtype=torch.float32)
    y0 = ys.floor().long()
    x0 = xs.floor().long()
    y1 = torch.clamp(y0 + 1, max=h - 1)
    x1 = torch.clamp(x0 + 1, max=w - 1)
    dy = (ys - y0.float()).view(1, 1, size, 1)
    dx = (xs - x0.float()).view(1, 1, 1, size)
    a = x[:, :, y0][:, :, :, x0]
    b = x[:, :, y0][:, :, :, x1]
    c = x[:, :, y1][:, :, :, x0]
    d = x[:, :, y1][:, :, :, x1]
    top = a + (b - a) * dx
    bottom = c + (d - c) * dx
    return top + (bottom - top) * dy


def main():
    torch.manual_seed(0)
    net = fid_inception_v3().double().eval()
    init(net)
    tensors = {}
    inputs = []
    for i, (w, h) in enumerate(SIZES):
        img = image(901 + i, w, h)
        tensors[f"image{i}"] = torch.from_numpy(img.astype(np.float32)).contiguous()
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0  # ToTensor
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        inputs.append(2 * x - 1)
        if i == 1:
            rng = np.random.RandomState(7)
            idx = np.sort(rng.choice(299 * 299 * 3, 4096, replace=False)).astype(np.int32)
            tensors["pytorch.input.idx"] = torch.from_numpy(idx)
            tensors["pytorch.input"] = (2 * x - 1)[0].permute(1, 2, 0).reshape(-1)[idx].contiguous()
            t = tf1_resize(torch.from_numpy(img).permute(2, 0, 1)[None].float(), 299)
            t = (t - 128) / 128
            tensors["tf.input.idx"] = torch.from_numpy(idx)
            tensors["tf.input"] = t[0].permute(1, 2, 0).reshape(-1)[idx].contiguous()
    x = torch.cat(inputs).double()
    with torch.no_grad():
        feats = {}
        net.fc.register_forward_hook(lambda m, inp, out: feats.setdefault("pool3", inp[0]))
        net(x)
        pool3 = feats["pool3"]
        logits = pool3 @ net.fc.weight.t()
    tensors["pool3"] = pool3.float().contiguous()
    tensors["logits"] = logits.float().contiguous()
    print(f"pool3: max {pool3.abs().max().item():.4g}, mean {pool3.mean().item():.4g}; "
          f"logits: max {logits.abs().max().item():.4g}")
    path = os.path.join(HERE, "data", "inception.safetensors")
    save_file(tensors, path, {"torch": torch.__version__, "torchvision": torchvision.__version__,
                              "generator": "tests/ref/make_inception_refs.py"})
    print(f"{path}: {os.path.getsize(path) / 1e3:.1f} kB")


if __name__ == "__main__":
    main()
