"""The embedded parser: a label map from the 68 portrait landmarks plus a person/background cut.

The face parts are polygons drawn from the 68 points, in the ids of `schema.LABELS`: skin (1)
from the jaw line closed by a half-ellipse forehead, brows (2, 3), eyes (4, 5), nose (10), inner
mouth (11, only when the lips part), upper lip (12) and lower lip (13). The rest of the person is
separated from the background by OpenCV's GrabCut (graph cut over colour mixture models), seeded
by the landmarks: the inner face is certain person, a band along the top and the sides of the
portrait far from the head is certain background, the head and the body below the chin are
"probably person". The cut runs on a 64 px copy of the portrait (`CUT_SIZE`; its cost per face is
printed by `benchmarks/build_throughput.py`), upsampled smoothly. What it finds around the face
polygons is labelled by where it lies and its colour: above the chin, pixels unlike the cheek
skin are hair (17) and skin-coloured ones skin (1, forehead, temples, a bald head); below the
chin, skin-coloured pixels are neck (14), hair-coloured ones near the head hair (17), the rest
cloth (16). Only what the cut found is written: a portrait whose cut fails or finds nothing
beyond the face keeps the face polygons on background. Ears, glasses, hats and jewellery are
never written (6-9, 15, 18), so the `ears` region is always absent; use the BiSeNet backend for
the real 19-class parsing.

Left/right: the ids are face-parsing.PyTorch's 19 classes, whose `l_*` is the SUBJECT's left
(its `prepropess_data.py` turns CelebAMask-HQ's `*_l_eye.png` into 4, and its flip augmentation
swaps 2/3, 4/5, 7/8). On a frontal photo the subject's left eye is on the IMAGE's right. iBUG
points 17-21 (brow) and 36-41 (eye) lie on the image's left, the subject's right: they become
r_brow 3 and r_eye 5; points 22-26 and 42-47 become l_brow 2 and l_eye 4.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from fgid_builder.detect.dlib_hog import DlibLandmarker
from fgid_builder.embed.dlib_resnet import portrait_landmarks68
from fgid_builder.registry import Backend
from fgid_builder.schema import LABEL_IDS, PORTRAIT_SIZE, FaceSample, ModelInfo

VERSION = "2"

BROW_THICKNESS = 0.13  # brow height as a fraction of the eye distance, tapering at the ends
FOREHEAD_HEIGHT = 0.4  # forehead top above the brows, as a fraction of nose-bridge-to-chin
MOUTH_OPEN_MIN_AREA = 0.02  # inner-lip polygon area / mouth width^2 that counts as parted lips

# Person/background cut (see the module docstring).
CUT_SIZE = 64  # GrabCut runs on a CUT_SIZE^2 copy of the portrait (cost ~ pixels x iterations)
CUT_ITERATIONS = 3
MIN_CONTRAST = 6.0  # CIELAB distance between background and face seeds under which no cut
HEAD_WIDTH = 1.45  # head ellipse half-width over the jaw's half-width (hair beside the face)
HEAD_HEIGHT = 1.05  # head ellipse half-height over nose-bridge-to-chin, about the nose bridge
FAR_OUTSIDE = 1.3  # outside the head ellipse scaled by this (and above the shoulders): background
EDGE_BAND = 0.08  # width of the certain-background band along the top and sides, of the side
NECK_WIDTH = 0.3  # certain-person column below the chin: half-width over the half jaw width
SHOULDER_DROP = 0.35  # the side bands stop this far below the chin (face lengths): shoulders
SKIN_MAX_CHROMA_DIST = 11.0  # (a*, b*) distance to the cheek skin under which a pixel is skin-like
SKIN_L_RANGE = (-30.0, 20.0)  # L* offsets from the cheek skin a skin-like pixel may have (shadow)
FRINGE_MIN_DARKER = 20.0  # in the forehead arc, hair is this much darker than the cheeks in L*
FRINGE_MIN_CHROMA_DIST = 15.0  # ... or this far from their chromaticity (blond, grey)
HAIR_MAX_DELTA_E = 14.0  # below the chin, this close to the head hair's colour is hanging hair


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


def face_polygon(p: np.ndarray) -> np.ndarray:
    """The face outline: jaw points 0-16 closed by the forehead arc."""
    return np.vstack([p[0:17], forehead_arc(p)[1:-1]])


def landmark_label_map(points68: np.ndarray, size: int = PORTRAIT_SIZE) -> np.ndarray:
    """A (size, size) uint8 label map of the face parts from 68 points in portrait pixels."""
    p = np.asarray(points68, dtype=np.float64).reshape(68, 2)
    up, right, _, iod = face_frame(p)
    mask = np.zeros((size, size), dtype=np.uint8)
    _poly(mask, face_polygon(p), LABEL_IDS["skin"])
    _poly(mask, nose_polygon(p, right), LABEL_IDS["nose"])
    # subject's left = image right (iBUG 22-26, 42-47); see the module docstring
    _poly(mask, brow_polygon(p, range(17, 22), iod, up), LABEL_IDS["r_brow"])
    _poly(mask, brow_polygon(p, range(22, 27), iod, up), LABEL_IDS["l_brow"])
    _poly(mask, p[36:42], LABEL_IDS["r_eye"])
    _poly(mask, p[42:48], LABEL_IDS["l_eye"])
    upper = np.vstack([p[48:55], p[[64, 63, 62, 61, 60]]])
    lower = np.vstack([p[54:60], p[[48]], p[[60, 67, 66, 65, 64]]])
    _poly(mask, upper, LABEL_IDS["u_lip"])
    _poly(mask, lower, LABEL_IDS["l_lip"])
    inner = p[60:68]
    width = float(np.hypot(*(p[54] - p[48])))
    if _polygon_area(inner) > MOUTH_OPEN_MIN_AREA * width * width:
        _poly(mask, inner, LABEL_IDS["mouth"])
    return mask


def _lab(pixels: np.ndarray) -> np.ndarray:
    """(N, 3) float32 CIELAB (L* 0-100, a*, b* signed) of (N, 3) uint8 RGB pixels."""
    rgb = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1, 1, 3)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    lab[:, 0] *= 100.0 / 255.0
    lab[:, 1:] -= 128.0
    return lab


def _cut_seeds(p: np.ndarray, size: int) -> np.ndarray:
    """GrabCut's initial mask at `size` px from 68 points given in PORTRAIT_SIZE pixels."""
    up, right, length, _ = face_frame(p)
    k = size / float(PORTRAIT_SIZE)
    q = p * k
    length *= k
    half_jaw = float(np.hypot(*(q[16] - q[0]))) / 2
    seeds = np.full((size, size), cv2.GC_PR_BGD, np.uint8)
    band = max(1, int(round(EDGE_BAND * size)))
    seeds[:band] = cv2.GC_BGD
    ys = np.arange(size)[:, None] + 0.5
    xs = np.arange(size)[None, :] + 0.5
    # below-chin distance of each row/column point, along the face's own up axis
    below = -((xs - q[8][0]) * up[0] + (ys - q[8][1]) * up[1])
    sides = np.zeros((size, size), bool)
    sides[:, :band] = sides[:, -band:] = True
    seeds[sides & (below < SHOULDER_DROP * length)] = cv2.GC_BGD
    angle = float(np.degrees(np.arctan2(right[1], right[0])))
    axes = (HEAD_WIDTH * half_jaw, HEAD_HEIGHT * length)
    centre = tuple(int(round(v)) for v in q[27])
    # far outside the head and above the shoulders: certain background
    far = np.zeros((size, size), np.uint8)
    big = tuple(int(round(FAR_OUTSIDE * a)) for a in axes)
    cv2.ellipse(far, centre, big, angle, 0, 360, 1, thickness=-1)
    seeds[(far == 0) & (below < SHOULDER_DROP * length)] = cv2.GC_BGD
    axes_px = tuple(int(round(a)) for a in axes)
    cv2.ellipse(seeds, centre, axes_px, angle, 0, 360, cv2.GC_PR_FGD, thickness=-1)
    # below the chin, the neck and the chest: probably person down to the bottom edge
    neck = np.array(
        [
            q[4],
            q[12],
            q[12] - up * 2 * size + right * half_jaw,
            q[4] - up * 2 * size - right * half_jaw,
        ]
    )
    cv2.fillPoly(seeds, [np.round(neck).astype(np.int32).reshape(-1, 1, 2)], cv2.GC_PR_FGD)
    _poly(seeds, face_polygon(q), cv2.GC_FGD)
    # straight below the chin down to the bottom edge: the neck and the body, certain person
    column = NECK_WIDTH * half_jaw
    neck_core = np.array(
        [q[8] + right * column, q[8] - right * column,
         q[8] - up * 2 * size - right * column, q[8] + up * -2 * size + right * column]
    )  # fmt: skip
    _poly(seeds, neck_core, cv2.GC_FGD)
    return seeds


def person_mask(portrait: np.ndarray, points68: np.ndarray) -> np.ndarray | None:
    """(H, W) bool: the person (head, hair, neck, clothes) as GrabCut separates it from the
    background, seeded by the landmarks; None when the cut finds no background or no person."""
    p = np.asarray(points68, dtype=np.float64).reshape(68, 2)
    h, w = portrait.shape[:2]
    small = cv2.resize(portrait, (CUT_SIZE, CUT_SIZE), interpolation=cv2.INTER_AREA)
    seeds = _cut_seeds(p * (PORTRAIT_SIZE / float(w)), CUT_SIZE)
    bg_seed, fg_seed = seeds == cv2.GC_BGD, seeds == cv2.GC_FGD
    if bg_seed.sum() < 16 or fg_seed.sum() < 16:
        return None
    # a background no different from the face (a flat or washed-out picture): nothing to cut
    contrast = np.linalg.norm(
        np.median(_lab(small[bg_seed]), axis=0) - np.median(_lab(small[fg_seed]), axis=0)
    )
    if contrast < MIN_CONTRAST:
        return None
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    # GrabCut seeds its colour models with k-means++ drawn from OpenCV's RNG of this thread:
    # reseed it so a face gets the same mask whatever ran before it (byte-identical shards)
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(small, seeds, None, bgd, fgd, CUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # degenerate colour models (a flat image): no measured separation
        return None
    fg = ((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)).astype(np.float32)
    person = cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    if person.all() or not person.any():
        return None
    return person


def _skin_like(lab: np.ndarray, skin_ref: np.ndarray) -> np.ndarray:
    """(N,) bool: CIELAB pixels of the reference skin's chromaticity, lit brighter or darker."""
    chroma_d = np.hypot(lab[:, 1] - skin_ref[1], lab[:, 2] - skin_ref[2])
    dl = lab[:, 0] - skin_ref[0]
    return (chroma_d < SKIN_MAX_CHROMA_DIST) & (dl > SKIN_L_RANGE[0]) & (dl < SKIN_L_RANGE[1])


def person_label_map(portrait: np.ndarray, points68: np.ndarray) -> np.ndarray:
    """The face polygons plus hair (17), neck (14), cloth (16) and head skin (1) where the
    person/background cut puts the person (see the module docstring)."""
    p = np.asarray(points68, dtype=np.float64).reshape(68, 2)
    h, w = portrait.shape[:2]
    mask = landmark_label_map(p, size=h)
    person = person_mask(portrait, p)
    if person is None:
        return mask
    face = mask > 0
    person |= face
    # keep the part of the cut connected to the face
    n, comp = cv2.connectedComponents(person.astype(np.uint8), connectivity=8)
    if n > 2:
        ids = np.bincount(comp[face], minlength=n)
        person = comp == int(np.argmax(ids[1:]) + 1)
    rest = person & ~face
    if not rest.any():
        return mask
    up = face_frame(p)[0]
    ys, xs = np.nonzero(rest)
    below_chin = (xs - p[8][0]) * up[0] + (ys - p[8][1]) * up[1] < 0
    # reference skin: face skin below the nose tip's level (cheeks, jaw; no forehead fringe)
    sy, sx = np.nonzero(mask == LABEL_IDS["skin"])
    low = (sx - p[30][0]) * up[0] + (sy - p[30][1]) * up[1] < 0
    if low.sum() >= 50:
        sy, sx = sy[low], sx[low]
    step = max(1, len(sy) // 4000)  # a few thousand pixels give the median
    skin_ref = np.median(_lab(portrait[sy[::step], sx[::step]]), axis=0)
    px = _lab(portrait[ys, xs])
    skin_like = _skin_like(px, skin_ref)
    # the forehead arc is a guess: what lies in it above the brows and is not skin is hair
    fy, fx = np.nonzero(mask == LABEL_IDS["skin"])
    brow = p[17:27].mean(axis=0)
    top = (fx - brow[0]) * up[0] + (fy - brow[1]) * up[1] > 0
    fy, fx = fy[top], fx[top]
    if len(fy):
        fpx = _lab(portrait[fy, fx])
        chroma_d = np.hypot(fpx[:, 1] - skin_ref[1], fpx[:, 2] - skin_ref[2])
        fringe = (fpx[:, 0] < skin_ref[0] - FRINGE_MIN_DARKER) | (chroma_d > FRINGE_MIN_CHROMA_DIST)
        mask[fy[fringe], fx[fringe]] = LABEL_IDS["hair"]
    labels = np.empty(len(ys), np.uint8)
    head = ~below_chin
    labels[head & skin_like] = LABEL_IDS["skin"]
    labels[head & ~skin_like] = LABEL_IDS["hair"]
    hair_px = px[head & ~skin_like]
    body = below_chin
    labels[body & skin_like] = LABEL_IDS["neck"]
    labels[body & ~skin_like] = LABEL_IDS["cloth"]
    if len(hair_px) >= 50:
        hair_ref = np.median(hair_px[:: max(1, len(hair_px) // 4000)], axis=0)
        near_hair = np.linalg.norm(px - hair_ref, axis=1) < HAIR_MAX_DELTA_E
        labels[body & ~skin_like & near_hair] = LABEL_IDS["hair"]
    mask[ys, xs] = labels
    return mask


class LandmarkPolygonParser(Backend):
    """Face parts from landmarks + a GrabCut person/background cut (hair, neck, cloth); no ears."""

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
        return ModelInfo(name="landmark-polygons", version=VERSION)

    def parse(self, samples: list[FaceSample]) -> list[np.ndarray]:
        self.load()
        return [
            person_label_map(s.portrait, portrait_landmarks68(s, self._m_landmarker))
            for s in samples
        ]
