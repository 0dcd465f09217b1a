"""From a photo's detections to FaceSamples: ordering, gates, alignment and quality figures.

Order: faces are sorted by box area, largest first, so `f0` is the main subject (the face
FGID's own builder embedded: "first detected face" meant the prominent one). Ties are broken by
the box's top, then left edge, so the order never depends on the detector's output order.

Gates (`FaceGates`), applied in that order:
- no detection at all -> one NO_FACE reject for the image;
- beyond the `max_faces` largest -> TOO_MANY_FACES, per face. A group photo still gives its
  most prominent faces instead of nothing: users of an identity dataset want the people in
  front, not a whole-photo reject. `max_faces=0` means no limit;
- shorter box side under `min_face` pixels -> FACE_TOO_SMALL, per face (such a face would be
  upscaled more than ~4x into the 512 portrait);
- five landmarks that define no alignment (not finite, or eyes and mouth at one point) ->
  BAD_LANDMARKS, for that face only: the photo's other faces still become samples.
A face keeps its rank index whether or not it passes, so keys are stable across gate settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fgid_builder.align import DegenerateLandmarks, align_face, transform_points
from fgid_builder.io import DecodedImage
from fgid_builder.quality import area_ratio, head_pose, laplacian_variance
from fgid_builder.schema import DetectedFace, FaceSample, Reason, make_key

DEFAULT_MIN_FACE = 64
DEFAULT_MAX_FACES = 8

Reject = tuple[int | None, Reason, str]


@dataclass(frozen=True)
class FaceGates:
    """Which detected faces become samples (see the module docstring)."""

    min_face: int = DEFAULT_MIN_FACE  # pixels, shorter side of the detector's box
    max_faces: int = DEFAULT_MAX_FACES  # keep the N largest faces; 0 = all

    def __post_init__(self) -> None:
        if self.min_face < 1:
            raise ValueError("min_face must be >= 1 pixel")
        if self.max_faces < 0:
            raise ValueError("max_faces must be >= 0 (0 = no limit)")


def sort_faces(detections: list[DetectedFace]) -> list[DetectedFace]:
    """Largest box first; ties by top edge, then left edge, then score."""

    def key(d: DetectedFace) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = d.bbox
        return (-(x1 - x0) * (y1 - y0), y0, x0, -d.score)

    return sorted(detections, key=key)


def _r(v: float, nd: int = 3) -> float:
    return round(float(v), nd)


def _points_json(points: np.ndarray | None) -> list[list[float]]:
    if points is None:  # [] not null: one type per field in every sample (sample.schema.json)
        return []
    return [[_r(x, 2), _r(y, 2)] for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2)]


def faces_from_detections(
    decoded: DecodedImage,
    detections: list[DetectedFace],
    *,
    source: dict[str, Any],
    gates: FaceGates | None = None,
) -> tuple[list[FaceSample], list[Reject]]:
    """Aligned, measured samples for the faces that pass `gates`, and a reject per other face.

    `source` needs `uri` and `sha256` (of the input bytes), may hold `extra` (pass-through
    columns); width and height are taken from the decoded (upright) image.
    """
    gates = gates or FaceGates()
    src = {
        "uri": source["uri"],
        "sha256": source["sha256"],
        "width": int(decoded.width),
        "height": int(decoded.height),
        # a manifest row's pass-through columns (string -> string; {} for other inputs)
        "extra": {str(k): str(v) for k, v in (source.get("extra") or {}).items()},
    }
    if not detections:
        return [], [(None, Reason.NO_FACE, "the detector found no face")]

    samples: list[FaceSample] = []
    rejects: list[Reject] = []
    for index, det in enumerate(sort_faces(detections)):
        if gates.max_faces and index >= gates.max_faces:
            rejects.append(
                (index, Reason.TOO_MANY_FACES, f"only the {gates.max_faces} largest faces are kept")
            )
            continue
        if det.size < gates.min_face:
            rejects.append(
                (index, Reason.FACE_TOO_SMALL, f"face {det.size:.0f}px < min_face {gates.min_face}")
            )
            continue
        try:
            samples.append(build_sample(decoded, det, index=index, source=src))
        except DegenerateLandmarks as e:  # this face only; the photo's other faces go on
            rejects.append((index, Reason.BAD_LANDMARKS, str(e)))
    return samples, rejects


def build_sample(
    decoded: DecodedImage, det: DetectedFace, *, index: int, source: dict[str, Any]
) -> FaceSample:
    """Align one face to the portrait and fill the face record."""
    lm5 = np.asarray(det.landmarks5, dtype=np.float32).reshape(5, 2)
    portrait, affine = align_face(decoded.rgb, lm5)
    p_lm5 = transform_points(lm5, affine)
    p_lm = None if det.landmarks is None else transform_points(det.landmarks, affine)
    yaw, pitch, roll = head_pose(lm5, decoded.width, decoded.height)
    face = {
        "index": index,
        "bbox": [_r(v, 2) for v in det.bbox],
        "landmarks5": _points_json(lm5),
        "landmarks": _points_json(det.landmarks),
        "det_score": _r(det.score, 4),
        "size": _r(det.size, 2),
        "area_ratio": _r(area_ratio(det.bbox, decoded.width, decoded.height), 6),
        "yaw": _r(yaw, 2),
        "pitch": _r(pitch, 2),
        "roll": _r(roll, 2),
        "blur": _r(laplacian_variance(portrait, p_lm5), 2),
    }
    return FaceSample(
        key=make_key(source["sha256"], index),
        source=dict(source),
        face=face,
        crop_affine=[[float(v) for v in row] for row in np.asarray(affine).tolist()],
        portrait=portrait,
        portrait_landmarks5=p_lm5,
        portrait_landmarks=p_lm,
    )
