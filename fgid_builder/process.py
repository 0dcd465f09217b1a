"""One image through every stage, in process: decode -> detect -> faces -> parse -> embed ->
caption -> encode.

This is the reference composition (the demo, tests, notebooks). The Ray pipeline calls the same
stage functions below on batches; each takes and returns FaceSample lists, fills one field and
records the backend's `model_info()` under `sample.models[stage]`.
Per-image problems are values: a rejected or failing input comes back as a reject tuple
`(face_index | None, Reason, detail)`, never as an exception (missing weights excepted: that is
a configuration error and is raised).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fgid_builder.encode import encode_sample
from fgid_builder.faces import FaceGates, Reject, faces_from_detections
from fgid_builder.io import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, decode_image
from fgid_builder.schema import (
    FaceSample,
    ImageRejected,
    ModelFileError,
    Reason,
    region_stats,
    sha256_bytes,
)

STAGE_ORDER = ("decode", "detect", "faces", "parse", "embed", "caption", "encode")


def parse_samples(parser: Any, samples: list[FaceSample]) -> list[FaceSample]:
    """Fill `mask` and `regions` (area/bbox per REGION_NAMES) from the parser."""
    if not samples:
        return samples
    masks = parser.parse(samples)
    info = parser.model_info().to_json()
    for s, mask in zip(samples, masks, strict=True):
        s.mask = np.asarray(mask, dtype=np.uint8)
        s.regions = region_stats(s.mask)
        s.models["parse"] = info
    return samples


def embed_samples(embedder: Any, samples: list[FaceSample]) -> list[FaceSample]:
    """Fill `embedding` (float32, unit norm)."""
    if not samples:
        return samples
    vectors = np.asarray(embedder.embed(samples), dtype=np.float32)
    info = embedder.model_info().to_json()
    for s, v in zip(samples, vectors, strict=True):
        s.embedding = v
        s.models["embed"] = info
    return samples


def caption_samples(captioner: Any, samples: list[FaceSample]) -> list[FaceSample]:
    """Fill `captions` (global, facial, per region). Run after parse: captioners read the mask."""
    if not samples:
        return samples
    captions = captioner.caption(samples)
    info = captioner.model_info().to_json()
    for s, c in zip(samples, captions, strict=True):
        s.captions = c
        s.models["caption"] = info
    return samples


def encode_samples(samples: list[FaceSample]) -> list[dict[str, Any]]:
    return [encode_sample(s) for s in samples]


@dataclass
class ImageResult:
    """What one input became: samples (with their encoded members) and rejects."""

    uri: str
    sha256: str
    samples: list[FaceSample] = field(default_factory=list)
    members: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


class ImageProcessor:
    """Sequential, single-process runner of the whole per-image chain."""

    def __init__(
        self,
        detector: Any,
        parser: Any,
        embedder: Any,
        captioner: Any,
        gates: FaceGates | None = None,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_side: int = DEFAULT_MIN_SIDE,
    ):
        self.detector = detector
        self.parser = parser
        self.embedder = embedder
        self.captioner = captioner
        self.gates = gates or FaceGates()
        self.max_pixels = max_pixels
        self.min_side = min_side

    @classmethod
    def default(cls, gates: FaceGates | None = None) -> ImageProcessor:
        """The embedded CPU stack (dlib + landmark polygons + dlib ResNet + attributes)."""
        from fgid_builder.registry import DEFAULTS, create

        return cls(
            create("detect", DEFAULTS["detect"]),
            create("parse", DEFAULTS["parse"]),
            create("embed", DEFAULTS["embed"]),
            create("caption", DEFAULTS["caption"]),
            gates,
        )

    def process(self, data: bytes, uri: str) -> ImageResult:
        result = ImageResult(uri=uri, sha256=sha256_bytes(data))
        t = result.timings
        stage = "decode"
        try:
            start = time.perf_counter()
            decoded = decode_image(data, max_pixels=self.max_pixels, min_side=self.min_side)
            t["decode"] = time.perf_counter() - start

            stage = "detect"
            start = time.perf_counter()
            detections = self.detector.detect([decoded.rgb])[0]
            t["detect"] = time.perf_counter() - start

            stage = "faces"
            start = time.perf_counter()
            source = {"uri": uri, "sha256": result.sha256}
            samples, rejects = faces_from_detections(
                decoded, detections, source=source, gates=self.gates
            )
            detect_info = self.detector.model_info().to_json()
            for s in samples:
                s.models["detect"] = detect_info
            result.rejects.extend(rejects)
            t["faces"] = time.perf_counter() - start

            for stage, fn, backend in (
                ("parse", parse_samples, self.parser),
                ("embed", embed_samples, self.embedder),
                ("caption", caption_samples, self.captioner),
            ):
                start = time.perf_counter()
                fn(backend, samples)
                t[stage] = time.perf_counter() - start

            stage = "encode"
            start = time.perf_counter()
            result.members = encode_samples(samples)
            t["encode"] = time.perf_counter() - start
            result.samples = samples
        except ImageRejected as e:
            result.rejects.append((None, e.reason, e.detail))
        except ModelFileError:
            raise
        except Exception as e:  # noqa: BLE001 - a failing image is a value; the cause is kept
            result.samples, result.members = [], []
            result.rejects.append((None, Reason.ERROR, f"{stage}: {type(e).__name__}: {e}"))
        return result
