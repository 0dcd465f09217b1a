"""The embedded parser: a label map drawn from the 68 portrait landmarks (no network).

It writes the CelebAMask-HQ ids of `schema.LABELS` for what 68 points can outline: skin (1) from
the jaw line closed by a half-ellipse forehead, brows (2, 3), eyes (4, 5), nose (10), inner
mouth (11, only when the lips part), upper lip (12) and lower lip (13). It cannot see ears,
hair, neck, clothes, glasses or hats, so 6-9 and 14-18 are never written: the `ears` region of
such a mask is always absent, and the polygons are approximations (a forehead ellipse, brows of
a fixed relative thickness). Use the BiSeNet backend for the real 19-class parsing.

Left/right: CelebAMask-HQ names sides from the viewer, `l_*` is the part on the image's left
(the person's right). BiSeNet wrappers that rename the ids by anatomy call 2/4/7 the person's
*right* brow/eye/ear (e.g. the `bisenet.py` shipped with StyleGAN editing code:
"2: 'r_eyebrow' | 4: 'r_eye' | 7: 'r_ear'"), which is the same thing seen from the other side.
So iBUG points 17-21 (brow) and 36-41 (eye) on the image's left become 2 and 4.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from fgid_builder.detect.dlib_hog import DlibLandmarker
from fgid_builder.embed.dlib_resnet import portrait_landmarks68
from fgid_builder.registry import Backend
from fgid_builder.schema import LABEL_IDS, PORTRAIT_SIZE, FaceSample, ModelInfo

VERSION = "1"

BROW_THICKNESS = 0.13  # brow height as a fraction of the eye distance, tapering at the ends
FOREHEAD_HEIGHT = 0.4  # forehead top above the brows, as a fraction of nose-bridge-to-chin
MOUTH_OPEN_MIN_AREA = 0.02  # inner-lip polygon area / mouth width^2 that counts as parted lips


def _poly(mask: np.ndarray, pts: np.ndarray, label: int) -> None:
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32).reshape(-1, 1, 2)], int(label))


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def face_frame(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(up, right, face length, eye distance): the face's own axes from 68 points."""
    up = p[27] - p[8]
    length = float(np.hypot(*up))
    up = up / max(length, 1e-6)
    right = np.array([-up[1], up[0]])  # image-right when the face is upright
    iod = float(np.hypot(*(p[42:48].mean(0) - p[36:42].mean(0))))
    return up, right, length, iod


def forehead_arc(p: np.ndarray, n: int = 24) -> np.ndarray:
    """Half-ellipse from jaw point 16 over the brows to jaw point 0."""
    up, right, length, _ = face_frame(p)
    a_end, b_end = p[0], p[16]
    centre = (a_end + b_end) / 2
    half_w = float(np.hypot(*(b_end - a_end))) / 2
    brow_top = max(float(np.dot(q - centre, up)) for q in p[17:27])
    height = brow_top + FOREHEAD_HEIGHT * length
    t = np.linspace(0.0, np.pi, n)
    return centre + np.outer(np.cos(t) * half_w, right) + np.outer(np.sin(t) * height, up)


def brow_polygon(p: np.ndarray, idx: range, iod: float, up: np.ndarray) -> np.ndarray:
    top = p[list(idx)]
    taper = np.array([0.55, 0.9, 1.0, 0.9, 0.7])
    bottom = top - np.outer(taper * BROW_THICKNESS * iod, up)
    return np.vstack([top, bottom[::-1]])


def nose_polygon(p: np.ndarray, right: np.ndarray) -> np.ndarray:
    alar = float(np.hypot(*(p[35] - p[31])))
    l31 = p[31] - right * 0.12 * alar
    r35 = p[35] + right * 0.12 * alar
    top_w = 0.18 * alar
    mid_w = 0.28 * alar
    left = [p[27] - right * top_w, p[29] - right * mid_w, l31]
    right_side = [r35, p[29] + right * mid_w, p[27] + right * top_w]
    return np.array(left + [p[32], p[33], p[34]] + right_side)


def landmark_label_map(points68: np.ndarray, size: int = PORTRAIT_SIZE) -> np.ndarray:
    """A (size, size) uint8 label map from 68 points in portrait pixels."""
    p = np.asarray(points68, dtype=np.float64).reshape(68, 2)
    up, right, _, iod = face_frame(p)
    mask = np.zeros((size, size), dtype=np.uint8)
    _poly(mask, np.vstack([p[0:17], forehead_arc(p)[1:-1]]), LABEL_IDS["skin"])
    _poly(mask, nose_polygon(p, right), LABEL_IDS["nose"])
    _poly(mask, brow_polygon(p, range(17, 22), iod, up), LABEL_IDS["l_brow"])
    _poly(mask, brow_polygon(p, range(22, 27), iod, up), LABEL_IDS["r_brow"])
    _poly(mask, p[36:42], LABEL_IDS["l_eye"])
    _poly(mask, p[42:48], LABEL_IDS["r_eye"])
    upper = np.vstack([p[48:55], p[[64, 63, 62, 61, 60]]])
    lower = np.vstack([p[54:60], p[[48]], p[[60, 67, 66, 65, 64]]])
    _poly(mask, upper, LABEL_IDS["u_lip"])
    _poly(mask, lower, LABEL_IDS["l_lip"])
    inner = p[60:68]
    width = float(np.hypot(*(p[54] - p[48])))
    if _polygon_area(inner) > MOUTH_OPEN_MIN_AREA * width * width:
        _poly(mask, inner, LABEL_IDS["mouth"])
    return mask


class LandmarkPolygonParser(Backend):
    """Face parsing from landmarks: skin, brows, eyes, nose, lips, inner mouth; never ears/hair."""

    stage = "parse"
    name = "landmarks"

    def __init__(self, *, predictor_path: str | None = None, models_dir: str | None = None):
        super().__init__()
        self.predictor_path = predictor_path
        self.models_dir = models_dir
        self._m_landmarker: Any = None

    def _load(self) -> None:
        # Only used for samples that arrive with five points and no 68.
        self._m_landmarker = DlibLandmarker(predictor_path=self.predictor_path)

    def model_info(self) -> ModelInfo:
        return ModelInfo(name="landmark-polygons", version=VERSION, weights_sha256=None)

    def parse(self, samples: list[FaceSample]) -> list[np.ndarray]:
        self.load()
        return [landmark_label_map(portrait_landmarks68(s, self._m_landmarker)) for s in samples]
