"""The landmark-polygon parser: CelebAMask-HQ ids, the parts 68 points can outline, no ears."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fgid_builder.detect.dlib_hog import DlibHogDetector
from fgid_builder.faces import faces_from_detections
from fgid_builder.io import decode_image
from fgid_builder.parse.landmark_polygons import LandmarkPolygonParser
from fgid_builder.schema import LABEL_IDS, region_stats, sha256_bytes

FRONTAL = ("astronaut.png", "grace_hopper.jpg")


@pytest.fixture(scope="module")
def frontal_samples(shipped_photos):
    det = DlibHogDetector()
    out = []
    for path in shipped_photos:
        if path.name not in FRONTAL:
            continue
        data = path.read_bytes()
        d = decode_image(data)
        samples, _ = faces_from_detections(
            d, det.detect([d.rgb])[0], source={"uri": path.name, "sha256": sha256_bytes(data)}
        )
        out.append(samples[0])
    assert len(out) == len(FRONTAL)
    return out


def test_label_map_on_frontal_faces(frontal_samples):
    parser = LandmarkPolygonParser()
    for mask in parser.parse(frontal_samples):
        assert mask.shape == (512, 512) and mask.dtype == np.uint8
        ids = set(np.unique(mask).tolist())
        assert ids <= set(range(19))
        for name in ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "u_lip", "l_lip"):
            assert LABEL_IDS[name] in ids, name
        assert not ids & {6, 7, 8, 9, 14, 15, 16, 17, 18}  # never drawn: not seen by 68 points
        # CelebAMask-HQ l_* is the part on the image's left
        lx = np.nonzero(mask == LABEL_IDS["l_eye"])[1].mean()
        rx = np.nonzero(mask == LABEL_IDS["r_eye"])[1].mean()
        assert lx < rx
        assert np.nonzero(mask == LABEL_IDS["l_brow"])[1].mean() < rx
        stats = region_stats(mask)
        assert stats["ears"]["present"] is False
        assert all(stats[r]["present"] for r in ("face", "eyes", "nose", "mouth"))
        assert 0.15 < stats["face"]["area"] < 0.6


def test_five_point_samples_get_landmarks_from_the_predictor(frontal_samples):
    s = frontal_samples[0]
    five_only = dataclasses.replace(s, portrait_landmarks=None)
    parser = LandmarkPolygonParser()
    a, b = parser.parse([s, five_only])
    agree = np.mean((a > 0) == (b > 0))
    assert agree > 0.95


def test_model_info_is_honest():
    info = LandmarkPolygonParser().model_info()
    assert info.name == "landmark-polygons" and info.weights_sha256 is None
