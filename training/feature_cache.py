"""Frozen CLIP image features on disk: computed once per distinct input, read on later epochs.

The CLIP ViT-H/14 image encoder is frozen and its inputs (the whole-image crop and the facial
region crops, `training.data.SampleTransform`) are a pure function of the sample: no augmentation
touches them, and an image drop or an empty region slot feeds zeros (one entry for all). Its
forwards are 1 + max_regions per sample, 2.0 of the 5.7 TFLOP of a 512 px training step, so
recomputing them every epoch is most of what the adapter adds to a plain UNet step.

The cache is content-addressed, so it cannot serve a stale entry:
- the folder is the encoder's identity: a hash of its class, config, dtype, the hidden layer read
  and every weight's bytes (other weights, another checkpoint or dtype: another folder);
- an entry's name is the hash of the exact input tensor the encoder sees (dtype, shape, bytes),
  so a change of preprocessing, crop or resolution is a different entry.
Entries are safetensors (`features`: the encoder's hidden state, in its own dtype), written to a
temporary name and renamed (atomic: ranks that compute the same entry each rename a whole file).
An unreadable entry is logged, recomputed and rewritten. The cache only grows: an entry is
S x D x dtype bytes (CLIP-H: 257 x 1280, 658 KB in bf16), 1 + max_regions distinct inputs per
sample; delete the folder to reclaim it.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import torch
import xxhash

log = logging.getLogger(__name__)

ENCODER_META = "encoder.json"


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().contiguous().cpu().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def encoder_identity(encoder: torch.nn.Module, layer: int) -> str:
    """A hash of everything the features depend on: class, config, layer, weights (with their
    names, dtypes and shapes)."""
    h = xxhash.xxh3_128()
    config = getattr(encoder, "config", None)
    config_json = config.to_json_string() if hasattr(config, "to_json_string") else repr(config)
    h.update(json.dumps([type(encoder).__name__, layer, config_json]).encode())
    for name, t in sorted(encoder.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


class ClipFeatureCache:
    """`cache(pixels)` = the encoder's `hidden_states[layer]` for a batch of images, each image's
    features read from the cache when present, computed (in one batch) and stored when not."""

    def __init__(self, folder: str | Path, encoder: torch.nn.Module, *, layer: int = -2):
        self.encoder = encoder
        self.layer = layer
        self.identity = encoder_identity(encoder, layer)
        self.root = Path(folder) / self.identity
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self.compute_seconds = 0.0  # in the encoder's forwards (the time the cache saves)
        meta = self.root / ENCODER_META
        if not meta.is_file():
            dtype = next(encoder.parameters()).dtype
            info = {
                "identity": self.identity,
                "class": type(encoder).__name__,
                "dtype": str(dtype),
                "hidden_layer": layer,
            }
            self._atomic_write(meta, json.dumps(info, indent=2).encode())

    def _atomic_write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def entry(self, pixels: torch.Tensor) -> Path:
        """Where the features of one image (C, H, W, already in the encoder's dtype) live."""
        h = xxhash.xxh3_128()
        h.update(f"{pixels.dtype}:{tuple(pixels.shape)}".encode())
        h.update(_tensor_bytes(pixels))
        name = h.hexdigest()
        return self.root / name[:2] / f"{name}.safetensors"

    def _read(self, path: Path) -> torch.Tensor | None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            return None
        try:
            return load_file(str(path))["features"]
        except (SafetensorError, KeyError, OSError) as exc:
            log.warning("clip feature cache: %s unreadable (%s); recomputed", path, exc)
            return None

    def _write(self, path: Path, features: torch.Tensor) -> None:
        from safetensors.torch import save

        path.parent.mkdir(parents=True, exist_ok=True)
        self._atomic_write(path, save({"features": features.detach().contiguous().cpu()}))

    def compute(self, pixels: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.encoder(pixels, output_hidden_states=True).hidden_states[self.layer]
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        self.compute_seconds += time.perf_counter() - t0
        return out

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        paths = [self.entry(p) for p in pixels]
        found: list[torch.Tensor | None] = [self._read(p) for p in paths]
        missing = [i for i, f in enumerate(found) if f is None]
        # Identical inputs inside one batch (zeroed slots, a drop) are computed once.
        unique: dict[Path, int] = {}
        for i in missing:
            unique.setdefault(paths[i], i)
        if unique:
            order = list(unique.values())
            computed = self.compute(pixels[order])
            for j, i in enumerate(order):
                self._write(paths[i], computed[j])
                unique[paths[i]] = j
            for i in missing:
                found[i] = computed[unique[paths[i]]]
        self.hits += len(paths) - len(missing)
        self.misses += len(missing)
        device = pixels.device
        return torch.stack([f.to(device) for f in found])  # type: ignore[union-attr]

    def stats(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "compute_seconds": round(self.compute_seconds, 3),
            "folder": str(self.root),
        }
