"""Faces of a reference photo (an erase request, an opt-out list's `photo` line), detected and
embedded with a dataset's own backends (its `build.json`), so they compare with its samples."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

SETTINGS = "build.json"


class ReferenceError(ValueError):
    """The reference photo cannot be read or decoded (one line)."""


def embed_reference(
    path: str, out: str | os.PathLike, models_dir: str | None
) -> tuple[str, list[np.ndarray]]:
    """(sha256 of the photo, embeddings of its faces, largest first) with the backends of OUT
    (a dataset folder or URL)."""
    from fgid_builder import registry
    from fgid_builder.dataset import Store
    from fgid_builder.faces import FaceGates, faces_from_detections
    from fgid_builder.io import decode_image
    from fgid_builder.process import embed_samples
    from fgid_builder.schema import ImageRejected, sha256_bytes

    settings = json.loads(Store(out).read_bytes(SETTINGS))
    backends, options = settings["backends"], settings.get("backend_options") or {}
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ReferenceError(f"cannot read reference photo {path}: {e.strerror}") from None
    try:
        decoded = decode_image(data)
    except ImageRejected as e:
        raise ReferenceError(f"reference photo {path}: {e.reason.value} {e.detail}") from None
    detector = registry.create(
        "detect", backends["detect"], models_dir=models_dir, **options.get("detect", {})
    )
    embedder = registry.create(
        "embed", backends["embed"], models_dir=models_dir, **options.get("embed", {})
    )
    detections = detector.detect([decoded.rgb])[0]
    sha = sha256_bytes(data)
    gates = FaceGates(min_face=int(settings.get("min_face", 1)), max_faces=0)
    samples, _ = faces_from_detections(
        decoded, detections, source={"uri": "ref", "sha256": sha}, gates=gates
    )
    embed_samples(embedder, samples)
    return sha, [np.asarray(s.embedding, dtype=np.float32) for s in samples]
