"""FFHQ-style alignment of a face to the 512x512 portrait, keeping the affine in metadata.

The crop is the one FFHQ (and so FGID's FFHQ/CelebA-HQ-derived 512 crops) uses: an oriented
square centred a little below the eyes, 4x the eye distance wide (or 3.6x the eye-to-mouth
distance when that is larger), so the portrait holds the whole head with hair, ears and neck.
Source pixels outside the photo are filled by replicating its edge (no black bars that a
parser would read as background or hair, and no mirrored second face as reflection can give).

Coordinates are pixel centres at integer positions, in both frames; the returned 2x3 affine maps
source (x, y) to portrait (x, y) and is what `crop.affine` records.
"""

from __future__ import annotations

import cv2
import numpy as np

from fgid_builder.schema import PORTRAIT_SIZE


class DegenerateLandmarks(ValueError):
    """Five points that define no alignment (not finite, or eyes and mouth coincide)."""


def ffhq_quad(landmarks5: np.ndarray) -> np.ndarray:
    """The oriented crop square in source pixels: (4, 2) corners TL, BL, BR, TR."""
    lm = np.asarray(landmarks5, dtype=np.float64).reshape(5, 2)
    if not np.isfinite(lm).all():
        raise DegenerateLandmarks("degenerate landmarks: not finite")
    eye_left, eye_right = lm[0], lm[1]
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[3] + lm[4]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    x = eye_to_eye - np.flipud(eye_to_mouth) * np.array([-1.0, 1.0])
    norm = float(np.hypot(*x))
    if norm < 1e-6:
        raise DegenerateLandmarks("degenerate landmarks: eyes and mouth coincide")
    x /= norm
    x *= max(float(np.hypot(*eye_to_eye)) * 2.0, float(np.hypot(*eye_to_mouth)) * 1.8)
    y = np.flipud(x) * np.array([-1.0, 1.0])
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def alignment_affine(landmarks5: np.ndarray, size: int = PORTRAIT_SIZE) -> np.ndarray:
    """The (2, 3) float64 similarity mapping source pixels to portrait pixels."""
    quad = ffhq_quad(landmarks5)
    src = quad[:3].astype(np.float32)
    dst = np.array([[0, 0], [0, size], [size, size]], dtype=np.float32)
    return cv2.getAffineTransform(src, dst).astype(np.float64)


def transform_points(points: np.ndarray, affine: np.ndarray | list) -> np.ndarray:
    """Apply a (2, 3) affine to (N, 2) points; returns float32 (N, 2)."""
    m = np.asarray(affine, dtype=np.float64).reshape(2, 3)
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (p @ m[:, :2].T + m[:, 2]).astype(np.float32)


def invert_affine(affine: np.ndarray | list) -> np.ndarray:
    """The (2, 3) inverse of a (2, 3) affine (portrait -> source)."""
    return cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64).reshape(2, 3))


def align_face(
    image: np.ndarray, landmarks5: np.ndarray, size: int = PORTRAIT_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Warp the face to a `size` x `size` RGB portrait; returns (portrait, affine source->portrait).

    When the portrait is more than 2x smaller than the face in the photo, the region is first
    shrunk by an integer factor with area averaging (as FFHQ's script does) so the final bilinear
    warp does not alias; the returned affine already includes that step.
    """
    affine = alignment_affine(landmarks5, size)
    h, w = image.shape[:2]
    scale = float(np.hypot(affine[0, 0], affine[0, 1]))  # portrait px per source px
    shrink = int(np.floor(1.0 / scale)) if scale > 0 else 1

    src = image
    pre = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # source -> working image
    if shrink >= 2:
        quad = ffhq_quad(landmarks5)
        margin = 2 * shrink + 2
        x0 = int(max(0, np.floor(quad[:, 0].min()) - margin))
        y0 = int(max(0, np.floor(quad[:, 1].min()) - margin))
        x1 = int(min(w, np.ceil(quad[:, 0].max()) + margin))
        y1 = int(min(h, np.ceil(quad[:, 1].max()) + margin))
        if x1 - x0 >= 2 * shrink and y1 - y0 >= 2 * shrink:
            crop = image[y0:y1, x0:x1]
            cw, ch = x1 - x0, y1 - y0
            nw, nh = max(1, round(cw / shrink)), max(1, round(ch / shrink))
            src = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA)
            sx, sy = nw / cw, nh / ch
            # area resize maps pixel centre u to (u + 0.5) * s - 0.5
            pre = np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5]])
    # working image -> portrait = affine o pre^-1
    pre_inv = invert_affine(pre)
    work_affine = _compose(affine, pre_inv)
    portrait = cv2.warpAffine(
        np.ascontiguousarray(src),
        work_affine,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return portrait, affine


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """outer o inner for (2, 3) affines."""
    a = np.vstack([np.asarray(outer, dtype=np.float64), [0.0, 0.0, 1.0]])
    b = np.vstack([np.asarray(inner, dtype=np.float64), [0.0, 0.0, 1.0]])
    return (a @ b)[:2]
