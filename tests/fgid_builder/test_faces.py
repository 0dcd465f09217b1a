"""Face ordering, gates and the filled face record (synthetic detections: no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from fgid_builder.faces import FaceGates, faces_from_detections, sort_faces
from fgid_builder.io import DecodedImage
from fgid_builder.schema import DetectedFace, Reason, is_valid_key

SHA = "ab" * 32


def _decoded(w: int = 640, h: int = 480) -> DecodedImage:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return DecodedImage(rgb=rgb, width=w, height=h, format="PNG", mode="RGB")


def _face(x0: float, y0: float, side: float, score: float = 1.0) -> DetectedFace:
    s = side / 2.3  # eye distance for a dlib-like box
    cx, cy = x0 + side / 2, y0 + side / 2
    lm5 = np.array(
        [
            [cx - s / 2, cy - s / 2],
            [cx + s / 2, cy - s / 2],
            [cx, cy],
            [cx - s * 0.45, cy + s / 2],
            [cx + s * 0.45, cy + s / 2],
        ],
        dtype=np.float32,
    )
    return DetectedFace(bbox=(x0, y0, x0 + side, y0 + side), score=score, landmarks5=lm5)


def _run(dets, gates=None):
    return faces_from_detections(
        _decoded(), dets, source={"uri": "a/b.jpg", "sha256": SHA}, gates=gates
    )


def test_no_face_is_one_image_reject():
    samples, rejects = _run([])
    assert samples == [] and rejects == [(None, Reason.NO_FACE, "the detector found no face")]


def test_largest_first_and_deterministic_ties():
    dets = [_face(10, 10, 100), _face(300, 50, 200), _face(200, 300, 100), _face(20, 300, 100)]
    order = [d.bbox for d in sort_faces(dets)]
    assert order[0] == dets[1].bbox
    assert order[1:] == [dets[0].bbox, dets[3].bbox, dets[2].bbox]  # equal area: top, then left
    assert [d.bbox for d in sort_faces(dets[::-1])] == order
    samples, _ = _run(dets)
    assert [s.face["index"] for s in samples] == [0, 1, 2, 3]
    assert samples[0].face["bbox"] == list(dets[1].bbox)


def test_gates_reject_per_face_with_reasons():
    dets = [_face(0, 0, 200), _face(300, 0, 150), _face(300, 250, 120), _face(10, 300, 40)]
    samples, rejects = _run(dets, FaceGates(min_face=64, max_faces=2))
    assert [s.key for s in samples] == [f"{SHA[:16]}_f0", f"{SHA[:16]}_f1"]
    assert [(i, r) for i, r, _ in rejects] == [
        (2, Reason.TOO_MANY_FACES),
        (3, Reason.TOO_MANY_FACES),
    ]
    samples, rejects = _run(dets, FaceGates(min_face=64, max_faces=0))
    assert len(samples) == 3 and [(i, r) for i, r, _ in rejects] == [(3, Reason.FACE_TOO_SMALL)]


def test_gates_validated():
    with pytest.raises(ValueError):
        FaceGates(min_face=0)
    with pytest.raises(ValueError):
        FaceGates(max_faces=-1)


def test_sample_record_is_filled():
    (s,), _ = _run([_face(200, 100, 200, score=1.5)])
    assert is_valid_key(s.key) and s.key.endswith("_f0")
    assert s.source == {"uri": "a/b.jpg", "sha256": SHA, "width": 640, "height": 480, "extra": {}}
    for k in ("index", "bbox", "landmarks5", "landmarks", "det_score", "size", "area_ratio",
              "yaw", "pitch", "roll", "blur"):  # fmt: skip
        assert k in s.face
    assert s.face["det_score"] == 1.5 and s.face["size"] == 200.0
    assert s.face["area_ratio"] == pytest.approx(200 * 200 / (640 * 480), rel=1e-4)
    assert abs(s.face["roll"]) < 1e-6
    assert s.portrait.shape == (512, 512, 3)
    assert np.asarray(s.crop_affine).shape == (2, 3)
    assert s.portrait_landmarks5.shape == (5, 2) and s.portrait_landmarks is None
    assert abs(s.portrait_landmarks5[0, 1] - s.portrait_landmarks5[1, 1]) < 1e-3


@pytest.mark.parametrize("bad", ["collapsed", "nan"])
def test_a_face_without_usable_landmarks_is_rejected_alone(bad: str):
    good, broken = _face(0, 0, 200), _face(300, 0, 150)
    lm5 = np.asarray(broken.landmarks5).copy()
    lm5[:] = lm5[2] if bad == "collapsed" else np.nan
    broken = DetectedFace(bbox=broken.bbox, score=1.0, landmarks5=lm5)
    samples, rejects = _run([good, broken])
    assert [s.face["index"] for s in samples] == [0]
    assert [(i, r) for i, r, _ in rejects] == [(1, Reason.BAD_LANDMARKS)]
    assert "degenerate landmarks" in rejects[0][2]
