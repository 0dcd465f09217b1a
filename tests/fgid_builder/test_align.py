"""Alignment: the affine puts the five points where FFHQ's crop puts them, in any frame."""

from __future__ import annotations

import numpy as np

from fgid_builder.align import (
    align_face,
    alignment_affine,
    ffhq_quad,
    invert_affine,
    transform_points,
)

# A frontal face: eyes 60 px apart, mouth 60 px below the eyes.
LM5 = np.array([[100, 100], [160, 100], [130, 135], [106, 160], [154, 160]], dtype=np.float32)


def _rotate(points: np.ndarray, deg: float, centre=(130.0, 130.0), scale=1.0) -> np.ndarray:
    t = np.radians(deg)
    r = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) * scale
    return ((points - centre) @ r.T + centre + 300).astype(np.float32)


def test_expected_portrait_positions():
    affine = alignment_affine(LM5, 512)
    p = transform_points(LM5, affine)
    # crop side = 4 x eye distance (240 px) -> 512 px: eye distance becomes 128 px
    assert np.allclose(p[1, 0] - p[0, 0], 128.0, atol=1e-3)
    assert np.allclose(p[0, 1], p[1, 1], atol=1e-3)  # eye line horizontal
    # centred: the crop centre is the eye midpoint moved 10% towards the mouth
    assert np.allclose((p[0, 0] + p[1, 0]) / 2, 256.0, atol=1e-3)
    assert np.allclose(p[0, 1], 256.0 - 0.1 * 60 * 512 / 240, atol=1e-3)
    assert np.allclose((p[3] + p[4])[1] / 2, p[0, 1] + 60 * 512 / 240, atol=1e-3)


def test_rotation_and_scale_invariant():
    ref = transform_points(LM5, alignment_affine(LM5))
    for deg, scale in ((30, 1.0), (-75, 2.5), (180, 0.5)):
        moved = _rotate(LM5, deg, scale=scale)
        got = transform_points(moved, alignment_affine(moved))
        assert np.allclose(got, ref, atol=1e-2)


def test_inverse_and_quad():
    affine = alignment_affine(LM5)
    back = transform_points(transform_points(LM5, affine), invert_affine(affine))
    assert np.allclose(back, LM5, atol=1e-3)
    quad = ffhq_quad(LM5)
    corners = transform_points(quad, affine)
    assert np.allclose(corners, [[0, 0], [0, 512], [512, 512], [512, 0]], atol=1e-2)


def _dot_image(h: int, w: int, xy: tuple[int, int], r: int) -> np.ndarray:
    img = np.full((h, w, 3), 90, dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    img[(xx - xy[0]) ** 2 + (yy - xy[1]) ** 2 <= r * r] = 255
    return img


def test_pixels_follow_the_affine_with_and_without_shrink():
    for scale in (1.0, 6.0):  # 6x: the face is 3x bigger than the portrait -> area pre-shrink
        lm = (LM5 * scale).astype(np.float32)
        nose = tuple(int(v) for v in lm[2])
        img = _dot_image(int(300 * scale), int(300 * scale), nose, int(4 * scale))
        portrait, affine = align_face(img, lm)
        assert portrait.shape == (512, 512, 3) and portrait.dtype == np.uint8
        ys, xs = np.nonzero(portrait[:, :, 0] > 170)
        target = transform_points(lm[2:3], affine)[0]
        assert abs(xs.mean() - target[0]) < 1.0 and abs(ys.mean() - target[1]) < 1.0


def test_deterministic_and_edge_padding():
    img = _dot_image(200, 200, (130, 135), 5)
    a, _ = align_face(img, LM5)
    b, _ = align_face(img, LM5)
    assert np.array_equal(a, b)
    assert a.min() >= 90 - 1  # outside the photo: replicated edge, never black
