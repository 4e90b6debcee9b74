#!/usr/bin/python3
"""Reference values of FID and the Inception Score, made with numpy and scipy:
tests/ref/data/fid.safetensors and tests/ref/data/fid_stats.npz, read by tests/test_eval.c.

- Features (float32, used as float64 on both sides): "full.a" (300 x 64) and "full.b" (250 x 64),
  correlated Gaussians of different means and covariances; "singular.a" (40 x 64) and
  "singular.b" (30 x 64), fewer rows than features, so both covariances are singular.
- "<case>.fid" (+ "<case>.fid.lo", the float64 value's remainder after float32): pytorch-fid's
  calculate_frechet_distance (scipy.linalg.sqrtm of sigma1 sigma2, its eps = 1e-6 retry when not finite, the imaginary part dropped) on numpy's mean and
  np.cov(rowvar=False) of the features; "<case>.mu_a", "<case>.sigma_a" those statistics.
- fid_stats.npz: full.a's mu and sigma written as pytorch-fid writes them (np.savez_compressed).
- "logits" (53 x 20): the Inception Score as torch-fidelity computes it (float64 softmax and
  log_softmax, 10 splits at i N // 10, mean and population std) after its shuffle
  (np.random.RandomState(2020).permutation: "is.shuffled") and without ("is.sequential"), each
  (mean, std) with its ".lo" remainder;
  "permutation": RandomState(2020).permutation(53).

Run: /usr/bin/python3 tests/ref/make_fid_refs.py (numpy, scipy, torch for the writer)
"""
import os
import sys

import numpy as np
import scipy.linalg
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from safetensors_writer import save_file  # noqa: E402


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance, as fid-is.md describes it."""
    diff = mu1 - mu2
    covmean, _ = scipy.linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError("Imaginary component {}".format(np.max(np.abs(covmean.imag))))
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def features(rng, n, d, shift):
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)) @ mix + shift).astype(np.float32)


def inception_score(logits, splits, shuffle):
    """torch-fidelity's isc_featuresdict_to_metric in float64."""
    x = torch.from_numpy(logits).double()
    if shuffle:
        x = x[np.random.RandomState(2020).permutation(x.shape[0])]
    p = x.softmax(dim=1)
    log_p = x.log_softmax(dim=1)
    n = x.shape[0]
    scores = []
    for i in range(splits):
        p_chunk = p[i * n // splits:(i + 1) * n // splits]
        log_p_chunk = log_p[i * n // splits:(i + 1) * n // splits]
        q = p_chunk.mean(dim=0, keepdim=True)
        kl = (p_chunk * (log_p_chunk - q.log())).sum(dim=1).mean().exp().item()
        scores.append(kl)
    return float(np.mean(scores)), float(np.std(scores))


def main():
    rng = np.random.RandomState(5)
    tensors = {}
    cases = {"full": (300, 250), "singular": (40, 30)}
    for name, (na, nb) in cases.items():
        a = features(rng, na, 64, 0.0)
        b = features(rng, nb, 64, 0.3)
        mu_a, sigma_a = a.astype(np.float64).mean(0), np.cov(a.astype(np.float64), rowvar=False)
        mu_b, sigma_b = b.astype(np.float64).mean(0), np.cov(b.astype(np.float64), rowvar=False)
        fid = frechet_distance(mu_a, sigma_a, mu_b, sigma_b)
        tensors[f"{name}.a"] = torch.from_numpy(a)
        tensors[f"{name}.b"] = torch.from_numpy(b)
        tensors[f"{name}.fid"] = torch.tensor([fid], dtype=torch.float64).float()
        tensors[f"{name}.fid.lo"] = torch.tensor([fid - float(np.float32(fid))]).float()
        tensors[f"{name}.mu_a"] = torch.from_numpy(mu_a).float()
        tensors[f"{name}.sigma_a"] = torch.from_numpy(sigma_a).float()
        print(f"{name}: FID {fid!r}")
        if name == "full":
            np.savez_compressed(os.path.join(HERE, "data", "fid_stats.npz"), mu=mu_a, sigma=sigma_a)
    logits = (rng.normal(size=(53, 20)) * 3).astype(np.float32)
    tensors["logits"] = torch.from_numpy(logits)
    for key, shuffle in (("is.shuffled", True), ("is.sequential", False)):
        mean, std = inception_score(logits.astype(np.float64), 10, shuffle)
        tensors[key] = torch.tensor([mean, std], dtype=torch.float64).float()
        tensors[key + ".lo"] = torch.tensor([mean - float(np.float32(mean)), std - float(np.float32(std))]).float()
        print(f"{key}: {mean!r} +- {std!r}")
    tensors["permutation"] = torch.from_numpy(np.random.RandomState(2020).permutation(53).astype(np.int32))
    path = os.path.join(HERE, "data", "fid.safetensors")
    save_file(tensors, path, {"numpy": np.__version__, "scipy": scipy.__version__,
                              "generator": "tests/ref/make_fid_refs.py"})
    print(f"{path}: {os.path.getsize(path) / 1e3:.1f} kB")


if __name__ == "__main__":
    main()
