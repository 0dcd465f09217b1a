"""dlib ResNet on the aligned portrait: unit-norm 128-d, and it still tells people apart."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest

from fgid_builder.detect.dlib_hog import DlibHogDetector
from fgid_builder.embed.dlib_resnet import DlibResNetEmbedder
from fgid_builder.faces import FaceGates, faces_from_detections
from fgid_builder.io import decode_image
from fgid_builder.schema import sha256_bytes


def _samples(paths, detector):
    out = {}
    for path in paths:
        data = path.read_bytes()
        d = decode_image(data)
        samples, _ = faces_from_detections(
            d,
            detector.detect([d.rgb])[0],
            source={"uri": path.name, "sha256": sha256_bytes(data)},
            gates=FaceGates(),
        )
        out[path.name] = samples
    return out


def test_unit_norm_batched_and_five_point_fallback(shipped_photos):
    samples = [s for v in _samples(shipped_photos, DlibHogDetector()).values() for s in v]
    emb = DlibResNetEmbedder(batch_size=2)
    vecs = emb.embed(samples)
    assert vecs.shape == (len(samples), 128) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    one = emb.embed(samples[:1])[0]
    assert np.allclose(one, vecs[0], atol=1e-6)  # batching does not change a row
    five = emb.embed([dataclasses.replace(samples[0], portrait_landmarks=None)])[0]
    assert float(five @ vecs[0]) > 0.95
    info = emb.model_info()
    assert info.name == "dlib-resnet-v1-128" and len(info.weights_sha256) == 64


def test_every_shared_photo_gives_a_face_and_pairs_are_decided(shared_faces):
    """On the portrait (f0 of each photo): >= 99% of the 280 pairs at the best cosine threshold."""
    photos = sorted(p for p in shared_faces.iterdir() if p.suffix == ".jpg")
    by_name = _samples(photos, DlibHogDetector())
    empty = [n for n, s in by_name.items() if not s]
    assert not empty, f"no sample from {empty}"

    with open(shared_faces / "pairs.csv", newline="") as f:
        pairs = list(csv.DictReader(f))
    names = sorted({p["file_x"] for p in pairs} | {p["file_y"] for p in pairs})
    vecs = DlibResNetEmbedder().embed([by_name[n][0] for n in names])
    e = dict(zip(names, vecs, strict=True))
    sims = np.array([float(e[p["file_x"]] @ e[p["file_y"]]) for p in pairs])
    same = np.array([p["decision"] == "Yes" for p in pairs])
    accuracy = max(float(np.mean((sims >= t) == same)) for t in np.unique(sims))
    assert len(pairs) == 280
    assert accuracy >= 0.99, f"pair accuracy {accuracy:.3f}"


def test_config_validated():
    with pytest.raises(ValueError):
        DlibResNetEmbedder(batch_size=0)
