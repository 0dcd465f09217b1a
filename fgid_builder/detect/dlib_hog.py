"""The embedded detector: dlib's frontal HOG face detector + the 68-point shape predictor.

CPU only, offline, weights from the `face-recognition-models` package (or an explicit path).
Large photos are detected on a copy shrunk to `max_side` (HOG time grows with pixels) and the
landmarks are then fitted on the full-resolution photo inside the rescaled box.

Defaults (`upsample=0`, `max_side=1600`): HOG finds faces from ~80 px at the detection scale.
On the 64 shared deepface photos they find every face `upsample=1` finds except one 43 px
profile, in half the time (~0.25 s per photo on one core). Raise `upsample` for crowds of small
faces.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fgid_builder.models import face_recognition_models_dir, file_sha256, require_file
from fgid_builder.registry import Backend
from fgid_builder.schema import DetectedFace, ModelInfo

PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"


def landmarks5_from_68(points: np.ndarray) -> np.ndarray:
    """(5, 2) in LANDMARKS5_NAMES order from iBUG-68 points (image-left eye = points 36-41)."""
    p = np.asarray(points, dtype=np.float32).reshape(68, 2)
    return np.stack([p[36:42].mean(axis=0), p[42:48].mean(axis=0), p[30], p[48], p[54]]).astype(
        np.float32
    )


def _dlib():
    try:
        import dlib
    except ImportError as e:  # pragma: no cover - dlib-bin is a core dependency
        raise ImportError("the dlib backends need dlib: pip install dlib-bin") from e
    return dlib


def predictor_path(explicit: str | None = None) -> Path:
    if explicit:
        return require_file(explicit, what="dlib 68-point shape predictor")
    return require_file(
        face_recognition_models_dir() / PREDICTOR_68,
        what="dlib 68-point shape predictor",
        hint="pip install face-recognition-models, or pass predictor_path",
    )


@lru_cache(maxsize=4)
def _shape_predictor(path: str) -> Any:
    """One predictor (~100 MB) per file and process, shared by every backend that reads
    landmarks (detect, parse, embed, caption all run in one fused worker)."""
    return _dlib().shape_predictor(path)


class DlibLandmarker:
    """The 68-point shape predictor alone, for faces whose box is known (portrait fallback).

    Picklable: the predictor is loaded on first use and not shipped.
    """

    def __init__(self, *, predictor_path: str | None = None):
        self.predictor_path = predictor_path
        self._m_predictor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"predictor_path": self.predictor_path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.predictor_path = state["predictor_path"]
        self._m_predictor = None

    def _predictor(self):
        if self._m_predictor is None:
            self._m_predictor = _shape_predictor(str(predictor_path(self.predictor_path).resolve()))
        return self._m_predictor

    def predict(self, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """(68, 2) float32 points of the face inside `box` (x0, y0, x1, y1)."""
        dlib = _dlib()
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self._predictor()(np.ascontiguousarray(image), dlib.rectangle(x0, y0, x1, y1))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)


def portrait_box_from_landmarks5(landmarks5: np.ndarray) -> tuple[float, float, float, float]:
    """A dlib-like face box around five points (used to run the 68-point predictor on them).

    dlib's HOG box is about 2.3x the eye distance wide, centred between the eyes and the
    mouth (measured on the shared deepface photos).
    """
    lm = np.asarray(landmarks5, dtype=np.float64).reshape(5, 2)
    eye_mid = (lm[0] + lm[1]) / 2
    mouth_mid = (lm[3] + lm[4]) / 2
    d = max(float(np.hypot(*(lm[1] - lm[0]))), float(np.hypot(*(mouth_mid - eye_mid))), 1.0)
    c = (eye_mid + mouth_mid) / 2
    half = 1.15 * d
    return (c[0] - half, c[1] - half, c[0] + half, c[1] + half)


class DlibHogDetector(Backend):
    """dlib HOG faces + 68 landmarks. `score` is dlib's detection score (SVM margin, > 0)."""

    stage = "detect"
    name = "dlib"

    def __init__(
        self,
        *,
        upsample: int = 0,
        max_side: int = 1600,
        adjust_threshold: float = 0.0,
        predictor_path: str | None = None,
        models_dir: str | None = None,
    ):
        super().__init__()
        if upsample < 0 or upsample > 3:
            raise ValueError("upsample must be 0..3 (each step doubles the image)")
        if max_side < 64:
            raise ValueError("max_side must be >= 64")
        self.upsample = int(upsample)
        self.max_side = int(max_side)
        self.adjust_threshold = float(adjust_threshold)
        self.predictor_path = predictor_path
        self.models_dir = models_dir  # unused by the embedded weights; kept for a uniform CLI
        self._m_detector: Any = None
        self._m_landmarker: DlibLandmarker | None = None

    def _load(self) -> None:
        dlib = _dlib()
        self._m_detector = dlib.get_frontal_face_detector()
        self._m_landmarker = DlibLandmarker(predictor_path=self.predictor_path)
        self._m_landmarker._predictor()

    def model_info(self) -> ModelInfo:
        dlib = _dlib()
        return ModelInfo(
            name="dlib-hog+shape_predictor_68",
            version=f"dlib {dlib.__version__} (upsample={self.upsample}, "
            f"max_side={self.max_side}, adjust_threshold={self.adjust_threshold})",
            weights_sha256=file_sha256(predictor_path(self.predictor_path)),
        )

    def detect(self, images: list[np.ndarray]) -> list[list[DetectedFace]]:
        self.load()
        return [self._detect_one(img) for img in images]

    def _detect_one(self, image: np.ndarray) -> list[DetectedFace]:
        h, w = image.shape[:2]
        scale = min(1.0, self.max_side / float(max(h, w)))
        small = image
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            scale = size[0] / float(w)
        rects, scores, _ = self._m_detector.run(
            np.ascontiguousarray(small), self.upsample, self.adjust_threshold
        )
        faces: list[DetectedFace] = []
        for rect, score in zip(rects, scores, strict=True):
            box = (
                rect.left() / scale,
                rect.top() / scale,
                rect.right() / scale,
                rect.bottom() / scale,
            )
            assert self._m_landmarker is not None
            pts = self._m_landmarker.predict(image, box)
            x0, y0, x1, y1 = box
            clipped = (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1))
            faces.append(
                DetectedFace(
                    bbox=tuple(round(v, 2) for v in clipped),
                    score=round(float(score), 4),
                    landmarks5=landmarks5_from_68(pts),
                    landmarks=pts,
                )
            )
        return faces
