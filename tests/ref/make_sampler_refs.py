#!/usr/bin/python3
"""Reference latents of the samplers, made with PyTorch: tests/ref/data/samplers.safetensors, read
by tests/test_pipeline.c.

The model is configs/tiny_unet_class.yaml (tests/ref/sgm_ref.py, the test weights of
make_model_refs.py), two samples (classes 3 and 7, original sizes 64x64 and 48x80) on 8x8 latents,
classifier-free guidance 3 (the unconditional branch: the class token zeroed, the size kept, as
ldmc's conditioner drops it). The samplers are written here from their sources, independently of
ldmc's single Euler-style update:
- ddim: LDM's p_sample_ddim (ldm/models/diffusion/ddim.py) in VP coordinates on t = 831, 665, ...,
  1 (uniform + 1) with alphas_prev ending at alpha-bar_0, from x_T = the noise;
- euler, euler_a, dpmpp_2m: k-diffusion's sample_euler, sample_euler_ancestral (eta 1) and
  sample_dpmpp_2m (k_diffusion/sampling.py) on a CompVisDenoiser-style wrapper (c_in =
  1/sqrt(sigma^2 + 1), D = x - sigma eps, or for v: x/(sigma^2 + 1) - v sigma/sqrt(sigma^2 + 1)),
  t = sigma's log-interpolated timestep (DiscreteSchedule.sigma_to_t); sigmas from
  generative-models' LegacyDDPMDiscretization (euler, euler_a) and get_sigmas_karras (dpmpp_2m),
  from x = noise * sqrt(1 + sigma_0^2).
Noise: row r's starting noise is normal(seed 100 + r, purpose SAMPLE = 8) from 0, its ancestral
noise at step i normal(seed 100 + r, step 1, purpose 8) from i * 256 (rng.h's Box-Muller on
Philox; see philox.py). Each case stores "<case>.out" (2, 8, 8, 4) channels-last, float32.
The UNet runs in float64.

Run with Debian's PyTorch: /usr/bin/python3 tests/ref/make_sampler_refs.py
"""
import json
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import philox  # noqa: E402
import sgm_ref  # noqa: E402
from make_model_refs import init_weights, nchw, nhwc  # noqa: E402
from safetensors_writer import save_file  # noqa: E402

SAMPLE = 8
N, H, W, C = 2, 8, 8, 4
CLASSES = [3, 7]
SIZES = [[64, 64], [48, 80]]
GUIDANCE = 3.0
STEPS = 6
CASES = [
    {"name": "ddim", "sampler": "ddim", "prediction": "eps"},
    {"name": "euler", "sampler": "euler", "prediction": "eps"},
    {"name": "euler_v", "sampler": "euler", "prediction": "v"},
    {"name": "euler_a", "sampler": "euler_a", "prediction": "eps"},
    {"name": "dpmpp_2m", "sampler": "dpmpp_2m", "prediction": "eps"},
    {"name": "dpmpp_2m_sgm", "sampler": "dpmpp_2m", "prediction": "eps", "sigmas": "sgm"},
]

dt = torch.float64
betas = (np.sqrt(0.00085) + np.arange(1000) * (np.sqrt(0.012) - np.sqrt(0.00085)) / 999) ** 2
alphas_cumprod = np.cumprod(1 - betas)
table_sigmas = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
log_sigmas = np.log(table_sigmas)


def sigma_to_t(sigma):
    """k-diffusion's DiscreteSchedule.sigma_to_t (quantize=False)."""
    ls = math.log(sigma)
    low = int(np.nonzero(log_sigmas <= ls)[0].max()) if (log_sigmas <= ls).any() else 0
    low = min(low, 998)
    w = (log_sigmas[low] - ls) / (log_sigmas[low] - log_sigmas[low + 1])
    w = min(max(w, 0.0), 1.0)
    return (1 - w) * low + w * (low + 1)


def sgm_sigmas(n):
    """LegacyDDPMDiscretization.get_sigmas(n), flipped, with 0 appended."""
    t = np.linspace(999, 0, n, endpoint=False).astype(int)
    return [float(table_sigmas[k]) for k in t] + [0.0], [float(k) for k in t]


def karras_sigmas(n, rho=7.0):
    lo, hi = table_sigmas[0] ** (1 / rho), table_sigmas[999] ** (1 / rho)
    ramp = np.linspace(0, 1, n)
    s = [float((hi + r * (lo - hi)) ** rho) for r in ramp]
    return s + [0.0], [sigma_to_t(v) for v in s]


class Model:
    def __init__(self):
        cfg = sgm_ref.load_config(os.path.join(HERE, "..", "..", "configs", "tiny_unet_class.yaml"))
        self.unet, embedder = sgm_ref.unet_from_config(cfg, dtype=dt)
        init_weights(self.unet, "model.diffusion_model.")
        init_weights(embedder, "conditioner.embedders.0.")
        with torch.no_grad():
            self.context = embedder(torch.tensor(CLASSES)).to(dt)
            self.y = sgm_ref.vector_from_parts(cfg, {"original_size": torch.tensor(SIZES, dtype=torch.float64)}).to(dt)
        self.calls = 0

    def __call__(self, x_in, t):
        """The guided output (eps or v) on the UNet's input x_in (NHWC), timestep t."""
        self.calls += 1
        with torch.no_grad():
            ts = torch.full((N,), t, dtype=torch.float32)
            c = self.unet(nchw(x_in), ts, context=self.context, y=self.y)
            u = self.unet(nchw(x_in), ts, context=torch.zeros_like(self.context), y=self.y)
            return nhwc(u + GUIDANCE * (c - u))


def noise(offset_rows, step=0):
    per_row = H * W * C
    rows = [philox.normal(100 + r, per_row, offset=offset_rows, step=step, purpose=SAMPLE) for r in range(N)]
    return torch.from_numpy(np.stack(rows).reshape(N, H, W, C).astype(np.float64))


def denoised(model, x, sigma, t, prediction):
    out = model(x / math.sqrt(sigma * sigma + 1), t)
    if prediction == "v":
        return x / (sigma ** 2 + 1) - out * sigma / math.sqrt(sigma ** 2 + 1)
    return x - sigma * out


def ddim(model):
    """LDM: x_T ~ N(0, I) in VP, t = 981 ... 1, alphas_prev = [a_0, a_1, a_21, ...]."""
    # range(0, 1000, 1000 // n) + 1 as LDM, but n of them: LDM's range gives more when n does not
    # divide 1000 (7 for 6); diffusers' "leading" with steps_offset 1 takes n, as ldmc does
    ts = [k * (1000 // STEPS) + 1 for k in range(STEPS)][::-1]
    x = noise(0)
    for i, t in enumerate(ts):
        a = alphas_cumprod[t]
        a_prev = alphas_cumprod[ts[i + 1]] if i + 1 < len(ts) else alphas_cumprod[0]
        e = model(x, float(t))
        x0 = (x - math.sqrt(1 - a) * e) / math.sqrt(a)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * e
    return x


def k_sample(model, kind, sigmas, ts, prediction):
    x = noise(0) * math.sqrt(1 + sigmas[0] ** 2)
    old = None
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        d_ = denoised(model, x, s, ts[i], prediction)
        if kind == "euler":
            x = x + (x - d_) / s * (sn - s)
        elif kind == "euler_a":
            up = min(sn, math.sqrt(sn ** 2 * (s ** 2 - sn ** 2) / s ** 2))
            down = math.sqrt(sn ** 2 - up ** 2)
            x = x + (x - d_) / s * (down - s)
            if sn > 0:
                x = x + noise(i * H * W * C, step=1) * up
        else:  # dpmpp_2m
            t_, tn = -math.log(s), (-math.log(sn) if sn > 0 else math.inf)
            h = tn - t_
            if old is None or sn == 0:
                x = (sn / s) * x - math.expm1(-h) * d_
            else:
                r = (t_ - (-math.log(sigmas[i - 1]))) / h
                dd = (1 + 1 / (2 * r)) * d_ - (1 / (2 * r)) * old
                x = (sn / s) * x - math.expm1(-h) * dd
            old = d_
    return x


def main():
    torch.manual_seed(0)
    model = Model()
    tensors = {}
    for c in CASES:
        if c["sampler"] == "ddim":
            out = ddim(model)
        else:
            kind = c.get("sigmas", "karras" if c["sampler"] == "dpmpp_2m" else "sgm")
            sigmas, ts = sgm_sigmas(STEPS) if kind == "sgm" else karras_sigmas(STEPS)
            out = k_sample(model, c["sampler"], sigmas, ts, c["prediction"])
        tensors[c["name"] + ".out"] = out.reshape(-1).float().contiguous()
        print(f"{c['name']}: |x| max {out.abs().max().item():.4f}, mean {out.mean().item():.5f}")
    path = os.path.join(HERE, "data", "samplers.safetensors")
    meta = {"cases": json.dumps(CASES), "steps": str(STEPS), "guidance": str(GUIDANCE),
            "classes": json.dumps(CLASSES), "sizes": json.dumps(SIZES), "torch": torch.__version__,
            "generator": "tests/ref/make_sampler_refs.py"}
    save_file(tensors, path, meta)
    print(f"{path}: {len(tensors)} tensors, {os.path.getsize(path) / 1e3:.1f} kB")


if __name__ == "__main__":
    main()
