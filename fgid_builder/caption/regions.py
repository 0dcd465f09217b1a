"""Raw facial measurements from 68 portrait landmarks, the portrait pixels and the label map.

Every figure is a dimensionless ratio (lengths over the eye distance or the face length), an
angle or a colour statistic, so it does not depend on the portrait scale. The describer in
`attributes.py` turns them into words with thresholds taken from their distribution on real
photos (`scripts/calibrate_captioner.py` prints it).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from skimage.color import rgb2lab

from fgid_builder.parse.landmark_polygons import face_frame, forehead_arc
from fgid_builder.schema import LABEL_IDS

# The ratios the describer bins into terciles (low / middle / high).
TERCILE_MEASURES: tuple[str, ...] = (
    "face_length",  # nose bridge (27) to chin (8) / cheek width (1-15)
    "jaw_width",  # lower jaw width (5-11) / cheek width (1-15)
    "eye_size",  # mean eye width (36-39, 42-45) / cheek width
    "eye_openness",  # eye aspect ratio: lid opening / eye width
    "eye_spacing",  # inner-corner gap (39-42) / mean eye width
    "brow_thickness",  # dark-band height across the brow / eye distance
    "brow_arch",  # brow peak above the brow's end-to-end chord / brow length
    "nose_width",  # alar width (31-35) / eye distance
    "nose_length",  # nose bridge (27) to nose base (33) / nose bridge to chin (27-8)
    "lip_fullness",  # (upper + lower lip height) / mouth width
)


def _d(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.hypot(*(np.asarray(a, dtype=np.float64) - b)))


def _lab(pixels: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of (N, 3) uint8 sRGB pixels."""
    return rgb2lab(pixels.reshape(-1, 1, 3).astype(np.float64) / 255.0).reshape(-1, 3)


def ita_degrees(lab_median: np.ndarray) -> float:
    """Individual Typology Angle: atan((L* - 50) / b*) in degrees (Chardon et al. 1991)."""
    lum, _, b = (float(v) for v in lab_median)
    return math.degrees(math.atan2(lum - 50.0, b))


def _brow_thickness(grey: np.ndarray, p: np.ndarray, up: np.ndarray, iod: float) -> float | None:
    """Height of the dark band across each brow's middle points, over the eye distance.

    Along a line through each middle brow point (perpendicular to the eye line) the grey level
    is sampled from 0.3 eye-distance above to 0.25 below; pixels darker than halfway between the
    darkest sample and the skin level below the brow count as brow. None when the brow is not
    darker than the skin by a clear margin (light or absent brows).
    """
    h, w = grey.shape
    steps = np.linspace(0.3, -0.25, 56) * iod
    values = []
    for i in (18, 19, 20, 23, 24, 25):
        line = p[i] + np.outer(steps, up)
        xs = np.clip(np.round(line[:, 0]).astype(int), 0, w - 1)
        ys = np.clip(np.round(line[:, 1]).astype(int), 0, h - 1)
        prof = grey[ys, xs].astype(np.float64)
        skin = float(np.median(prof[-10:]))  # just above the upper lid
        dark = float(prof.min())
        if skin - dark < 18.0:
            continue
        thr = (skin + dark) / 2
        run = prof < thr
        # longest contiguous run of dark samples
        best = cur = 0
        for v in run:
            cur = cur + 1 if v else 0
            best = max(best, cur)
        values.append(best * (0.55 / (len(steps) - 1)))
    if len(values) < 3:
        return None
    return float(np.median(values))


def measure_face(
    portrait: np.ndarray, points68: np.ndarray, mask: np.ndarray | None = None
) -> dict[str, Any]:
    """The raw figures of one face (see TERCILE_MEASURES and the keys below)."""
    p = np.asarray(points68, dtype=np.float64).reshape(68, 2)
    up, _, length, iod = face_frame(p)
    iod = max(iod, 1e-6)
    cheek = max(_d(p[1], p[15]), 1e-6)
    eye_w = (_d(p[36], p[39]) + _d(p[42], p[45])) / 2
    lid = (_d(p[37], p[41]) + _d(p[38], p[40]) + _d(p[43], p[47]) + _d(p[44], p[46])) / 4
    mouth_w = max(_d(p[48], p[54]), 1e-6)

    def arch(idx: list[int]) -> float:
        a, b = p[idx[0]], p[idx[-1]]
        chord = b - a
        n = max(float(np.hypot(*chord)), 1e-6)
        normal = np.array([-chord[1], chord[0]]) / n
        if np.dot(normal, up) < 0:
            normal = -normal
        return max(float(np.dot(q - a, normal)) for q in p[idx]) / n

    grey = (portrait.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(np.float64)
    m: dict[str, Any] = {
        "face_length": length / cheek,
        "jaw_width": _d(p[5], p[11]) / cheek,
        "eye_size": eye_w / cheek,
        "eye_openness": lid / max(eye_w, 1e-6),
        "eye_spacing": _d(p[39], p[42]) / max(eye_w, 1e-6),
        "brow_thickness": _brow_thickness(grey, p, up, iod),
        "brow_arch": (arch(list(range(17, 22))) + arch(list(range(22, 27)))) / 2,
        "nose_width": _d(p[31], p[35]) / iod,
        "nose_length": _d(p[27], p[33]) / max(length, 1e-6),
        "lip_fullness": (_d(p[51], p[62]) + _d(p[66], p[57])) / mouth_w,
        "mouth_open": _d(p[62], p[66]) / mouth_w,
        # mouth corners above the middle of the lips (positive = raised), over mouth width
        "smile": float(np.dot((p[48] + p[54]) / 2 - (p[62] + p[66]) / 2, up)) / mouth_w,
        "mouth_width": mouth_w / iod,
    }
    m.update(_colours(portrait, p, mask, up, iod))
    return m


def _hair_pixels(
    portrait: np.ndarray, p: np.ndarray, mask: np.ndarray | None, up: np.ndarray, iod: float
) -> np.ndarray | None:
    """(N, 3) RGB hair pixels: the parser's hair label (17) above the brows where it found hair
    (all of it when little is above the brows); without a label map, a band above the forehead
    arc between the outer brow ends. None where fewer than 50 pixels are hair."""
    if mask is not None:
        ys, xs = np.nonzero(mask == LABEL_IDS["hair"])
        brow = p[17:27].mean(axis=0)
        above = (xs - brow[0]) * up[0] + (ys - brow[1]) * up[1] > 0
        if above.sum() >= 50:
            ys, xs = ys[above], xs[above]
        if len(ys) < 50:
            return None
        step = max(1, len(ys) // 4000)
        return portrait[ys[::step], xs[::step]]
    h, w = portrait.shape[:2]
    arc = forehead_arc(p)
    top = arc[len(arc) // 2]
    band = np.zeros((h, w), dtype=np.uint8)
    half = 0.6 * iod
    right = np.array([-up[1], up[0]])
    quad = np.array(
        [
            top - right * half + up * 0.08 * iod,
            top + right * half + up * 0.08 * iod,
            top + right * half + up * 0.4 * iod,
            top - right * half + up * 0.4 * iod,
        ]
    )
    cv2.fillPoly(band, [np.round(quad).astype(np.int32).reshape(-1, 1, 2)], 1)
    bsel = band.astype(bool)
    return portrait[bsel] if bsel.sum() >= 50 else None


def _colours(
    portrait: np.ndarray, p: np.ndarray, mask: np.ndarray | None, up: np.ndarray, iod: float
) -> dict[str, Any]:
    """Skin CIELAB + ITA from cheek skin; hair CIELAB from the hair the parser found."""
    h, w = portrait.shape[:2]
    cheeks = np.zeros((h, w), dtype=np.uint8)
    # below the eyes, above the mouth corners, outside the nose: two cheek polygons
    for poly in (p[[1, 2, 3, 48, 31, 40, 41, 36]], p[[15, 14, 13, 54, 35, 47, 46, 45]]):
        cv2.fillPoly(cheeks, [np.round(poly).astype(np.int32).reshape(-1, 1, 2)], 1)
    sel = cheeks.astype(bool)
    if mask is not None:
        sel &= mask == LABEL_IDS["skin"]
    out: dict[str, Any] = {"skin_lab": None, "ita": None, "hair_lab": None, "hair_delta_e": None}
    if sel.sum() < 50:
        return out
    lab = _lab(portrait[sel])
    lum = lab[:, 0]
    lo, hi = np.percentile(lum, [10, 90])  # drop shadows and specular highlights
    keep = (lum >= lo) & (lum <= hi)
    skin = np.median(lab[keep] if keep.sum() >= 20 else lab, axis=0)
    out["skin_lab"] = [round(float(v), 2) for v in skin]
    out["ita"] = ita_degrees(skin)

    hair = _hair_pixels(portrait, p, mask, up, iod)
    if hair is not None:
        hair_lab = np.median(_lab(hair), axis=0)
        out["hair_lab"] = [round(float(v), 2) for v in hair_lab]
        out["hair_delta_e"] = float(np.linalg.norm(hair_lab - skin))
    return out
