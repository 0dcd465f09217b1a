"""Fréchet Inception Distance from a local Inception-v3 weight file (nothing is downloaded).

Two weight formats are read, told apart by the classifier size in the state dict:

- pytorch-fid's `pt_inception-2015-12-05-*.pth` (the TensorFlow FID network ported to PyTorch:
  1008 classes, no aux head, patched pooling in the Mixed blocks). Inputs are scaled to [-1, 1],
  as pytorch-fid does, so the numbers are comparable with published FIDs.
- torchvision's `inception_v3` architecture (1000 classes, aux head optional), e.g.
  `inception_v3_google-*.pth` or a state dict saved as `.safetensors`. Inputs get the ImageNet
  mean/std. Its FIDs are self-consistent but not comparable with pytorch-fid's.

Features are the 2048-d pool3 activations of 299×299 bilinear-resized RGB inputs.
`.pth` files are opened with `torch.load(weights_only=True)`: tensors only, never pickle code.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn
from torchvision.models import inception as tv_inception

from fgid_builder.models import file_sha256, require_file
from fgid_builder.schema import ModelFileError, ModelInfo

FEATURE_DIM = 2048
INPUT_SIZE = 299
FID_WEIGHTS_HINT = (
    "pass --inception FILE: pytorch-fid's pt_inception-2015-12-05-6726825d.pth or a torchvision "
    "inception_v3 state dict (.pth/.safetensors)"
)


class _FIDInceptionA(tv_inception.InceptionA):
    """The TF network averages without the zero padding (count_include_pad=False)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([b1, b5, b3, pool], 1)


class _FIDInceptionC(tv_inception.InceptionC):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            bd = layer(bd)
        bd = self.branch7x7dbl_5(bd)
        pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([b1, b7, bd, pool], 1)


class _FIDInceptionE(tv_inception.InceptionE):
    """Mixed_7b averages without padding; Mixed_7c max-pools (a quirk of the TF graph)."""

    def __init__(self, in_channels: int, *, max_pool: bool) -> None:
        super().__init__(in_channels)
        self.max_pool = max_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


def build_inception(kind: str) -> tv_inception.Inception3:
    """An untrained Inception-v3 of the given layout: "pytorch_fid" or "torchvision"."""
    if kind == "torchvision":
        return tv_inception.Inception3(num_classes=1000, aux_logits=True, init_weights=False)
    if kind != "pytorch_fid":
        raise ValueError(f"unknown inception layout {kind!r}")
    net = tv_inception.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b = _FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = _FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = _FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = _FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = _FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = _FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = _FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = _FIDInceptionE(1280, max_pool=False)
    net.Mixed_7c = _FIDInceptionE(2048, max_pool=True)
    return net


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file or a pickle with code in it
        raise ModelFileError(
            f"Inception weights unreadable: {path} ({e.__class__.__name__}: {e})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelFileError(f"Inception weights are not a state dict: {path}")
    return state


class InceptionFeatures(nn.Module):
    """pool3 features of an Inception-v3; inputs are float RGB in [0, 1], any size."""

    def __init__(self, net: tv_inception.Inception3, *, layout: str) -> None:
        super().__init__()
        self.net = net.eval()
        self.layout = layout
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1 if self.layout == "pytorch_fid" else (x - self.mean) / self.std
        n = self.net
        x = n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x)), 3, stride=2)
        for block in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(n, f"Mixed_{block}")(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def load_inception(path: str | os.PathLike) -> tuple[InceptionFeatures, ModelInfo]:
    """Load a local Inception-v3 state dict (either layout) as a pool3 feature extractor."""
    p = require_file(path, what="Inception weights", hint=FID_WEIGHTS_HINT)
    state = _read_state_dict(p)
    fc = state.get("fc.weight")
    if fc is None or fc.shape[1] != FEATURE_DIM:
        raise ModelFileError(f"not an Inception-v3 state dict (no fc.weight [*, 2048]): {p}")
    layout = "pytorch_fid" if fc.shape[0] == 1008 else "torchvision"
    net = build_inception(layout)
    if layout == "torchvision" and not any(k.startswith("AuxLogits.") for k in state):
        net.AuxLogits = None
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ModelFileError(
            f"Inception weights do not match the {layout} layout: {p} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    info = ModelInfo(name=f"inception_v3/{layout}", version="pool3", weights_sha256=file_sha256(p))
    return InceptionFeatures(net, layout=layout), info


def _batches(images: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for img in images:
        batch.append(img)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def inception_features(
    model: InceptionFeatures, images: Iterable[np.ndarray], *, batch_size: int = 16
) -> np.ndarray:
    """(N, 2048) float64 features of RGB uint8 images (each resized to 299 on its own)."""
    rows = []
    for batch in _batches(images, batch_size):
        x = torch.stack(
            [
                F.interpolate(
                    torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1)[None].float()
                    / 255.0,
                    size=(INPUT_SIZE, INPUT_SIZE),
                    mode="bilinear",
                    align_corners=False,
                )[0]
                for im in batch
            ]
        )
        rows.append(model(x).double().numpy())
    if not rows:
        return np.zeros((0, FEATURE_DIM))
    return np.concatenate(rows)


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, as pytorch-fid) of (N, D) features; N >= 2."""
    if features.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {features.shape[0]}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||² + Tr(S1 + S2 - 2 sqrtm(S1 S2)), with scipy's sqrtm (as pytorch-fid).

    With fewer images than feature dimensions the covariances are singular; sqrtm then may return
    non-finite values, and a small diagonal offset is added (pytorch-fid does the same). Tiny
    imaginary parts from rounding are dropped; large ones are an error.
    """
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        scale = max(1.0, float(np.abs(np.diagonal(covmean).real).max()))
        if imag > 1e-3 * scale:
            raise ValueError(f"sqrtm(S1 S2) has an imaginary component {imag:.3g}")
        covmean = covmean.real
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def frechet_distance_lowrank(a: np.ndarray, b: np.ndarray) -> float:
    """The same distance from the features themselves, exact when the sets are small.

    With A, B the centred features, S1 = AᵀA/(n-1) and S2 = BᵀB/(m-1); the non-zero eigenvalues
    of S1 S2 are the squared singular values of A Bᵀ / sqrt((n-1)(m-1)), so
    Tr sqrtm(S1 S2) is that matrix's nuclear norm. An (n×m) SVD instead of a 2048² sqrtm: exact,
    and minutes faster when n, m are far below the feature dimension.
    """
    n, m = a.shape[0], b.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {n} and {m}")
    ac, bc = a - a.mean(axis=0), b - b.mean(axis=0)
    diff = a.mean(axis=0) - b.mean(axis=0)
    tr1 = float((ac * ac).sum()) / (n - 1)
    tr2 = float((bc * bc).sum()) / (m - 1)
    cross = np.linalg.svd(ac @ bc.T, compute_uv=False).sum() / np.sqrt((n - 1) * (m - 1))
    return max(float(diff @ diff + tr1 + tr2 - 2.0 * cross), 0.0)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID of two (N, D) feature sets: scipy sqrtm of the covariances (pytorch-fid's formula)
    when both sets have more images than dimensions, the exact low-rank form otherwise."""
    if min(a.shape[0], b.shape[0]) > a.shape[1]:
        return frechet_distance(*feature_stats(a), *feature_stats(b))
    return frechet_distance_lowrank(a, b)
