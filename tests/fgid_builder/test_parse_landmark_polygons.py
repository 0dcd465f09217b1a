"""The landmark parser: face-parsing.PyTorch ids with the subject's left, a person/background cut."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fgid_builder.detect.dlib_hog import DlibHogDetector
from fgid_builder.faces import faces_from_detections
from fgid_builder.io import decode_image
from fgid_builder.parse.landmark_polygons import (
    LandmarkPolygonParser,
    landmark_label_map,
    person_label_map,
)
from fgid_builder.schema import LABEL_IDS, region_stats, sha256_bytes
from tests.official_consistentid import official_foreground

FRONTAL = ("astronaut.png", "grace_hopper.jpg")
FRONTAL_MAX_YAW = 10.0  # degrees: photos counted as frontal for the left/right checks


def _samples(data: bytes, uri: str, det: DlibHogDetector, *, mirror: bool = False):
    d = decode_image(data)
    if mirror:
        d = dataclasses.replace(d, rgb=np.ascontiguousarray(d.rgb[:, ::-1]))
    samples, _ = faces_from_detections(
        d, det.detect([d.rgb])[0], source={"uri": uri, "sha256": sha256_bytes(data)}
    )
    return samples


@pytest.fixture(scope="module")
def frontal_samples(shipped_photos):
    det = DlibHogDetector()
    out = [_samples(p.read_bytes(), p.name, det)[0] for p in shipped_photos if p.name in FRONTAL]
    assert len(out) == len(FRONTAL)
    return out


def frontal_and_mirrored(paths) -> list[tuple[str, object]]:
    """(name, sample) for the frontal photos among `paths` (|yaw| < 10) and their mirror
    images, the largest face of each."""
    det = DlibHogDetector()
    out = []
    for p in paths:
        data = p.read_bytes()
        faces = _samples(data, p.name, det)
        if not faces or abs(faces[0].face["yaw"]) >= FRONTAL_MAX_YAW:
            continue  # its mirror image is not frontal either
        out.append((p.name, faces[0]))
        mirrored = _samples(data, p.name, det, mirror=True)
        if mirrored and abs(mirrored[0].face["yaw"]) < FRONTAL_MAX_YAW:
            out.append(("mirrored " + p.name, mirrored[0]))
    return out


def _cx(mask: np.ndarray, label: int) -> float:
    return float(np.nonzero(mask == label)[1].mean())


def _check_subjects_left(named_samples) -> None:
    parser = LandmarkPolygonParser()
    names = [n for n, _ in named_samples]
    assert any(n.startswith("mirrored ") for n in names), names
    assert any(not n.startswith("mirrored ") for n in names), names
    masks = parser.parse([s for _, s in named_samples])
    for name, mask in zip(names, masks, strict=True):
        assert _cx(mask, LABEL_IDS["l_eye"]) > _cx(mask, LABEL_IDS["r_eye"]), name
        assert _cx(mask, LABEL_IDS["l_brow"]) > _cx(mask, LABEL_IDS["r_brow"]), name


def test_subjects_left_is_the_images_right(shipped_photos):
    """face-parsing.PyTorch's l_* is the subject's left: on a frontal photo (and on its mirror
    image, where the subject's left is again on the image's right) label 4's centroid lies right
    of label 5's, label 2's right of label 3's."""
    _check_subjects_left(frontal_and_mirrored([p for p in shipped_photos if p.name in FRONTAL]))


@pytest.mark.slow
def test_subjects_left_on_the_deepface_photos(shared_faces):
    """The same on every frontal deepface photo and its mirror image."""
    named = frontal_and_mirrored(sorted(shared_faces.glob("img*.jpg")))
    assert len(named) >= 20, len(named)
    _check_subjects_left(named)


def test_label_map_on_frontal_faces(frontal_samples):
    parser = LandmarkPolygonParser()
    for mask in parser.parse(frontal_samples):
        assert mask.shape == (512, 512) and mask.dtype == np.uint8
        ids = set(np.unique(mask).tolist())
        assert ids <= set(range(19))
        for name in ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "u_lip", "l_lip"):
            assert LABEL_IDS[name] in ids, name
        assert not ids & {6, 7, 8, 9, 15, 18}  # ears, glasses, jewellery, hats: never written
        assert LABEL_IDS["hair"] in ids and 0 in ids  # both photos show hair and background
        stats = region_stats(mask)
        assert stats["ears"] == {"present": False, "area": 0.0, "bbox": [0, 0, 0, 0]}
        assert all(stats[r]["present"] for r in ("face", "eyes", "nose", "mouth"))
        assert 0.15 < stats["face"]["area"] < 0.6


def test_person_is_separated_from_the_background(frontal_samples):
    """The official foreground (label 0's outer contour filled, inverted) is empty for a face
    island on background, as the polygons alone give; with the cut it holds the whole face and
    leaves background out."""
    for s in frontal_samples:
        p = s.portrait_landmarks
        island = landmark_label_map(p)
        assert not official_foreground(island).any()
        mask = person_label_map(s.portrait, p)
        fg = official_foreground(mask)
        face = np.isin(mask, [1, 2, 3, 4, 5, 10, 11, 12, 13])
        assert fg[face].mean() > 0.99
        assert 0.3 < fg.mean() < 0.97
        # hair is above the eyes' level somewhere, neck/cloth only below the chin
        hair_y = np.nonzero(mask == LABEL_IDS["hair"])[0]
        assert hair_y.size and hair_y.min() < p[36:48, 1].min()
        below = np.nonzero(np.isin(mask, [LABEL_IDS["neck"], LABEL_IDS["cloth"]]))[0]
        assert below.size == 0 or below.min() > p[30, 1]


def test_a_flat_image_keeps_the_face_polygons(frontal_samples):
    """Nothing to separate (one flat colour): the cut measures nothing, nothing is invented."""
    s = frontal_samples[0]
    flat = np.full_like(s.portrait, 128)
    mask = person_label_map(flat, s.portrait_landmarks)
    assert not np.isin(mask, [14, 16, 17]).any()


def test_five_point_samples_get_landmarks_from_the_predictor(frontal_samples):
    s = frontal_samples[0]
    five_only = dataclasses.replace(s, portrait_landmarks=None)
    parser = LandmarkPolygonParser()
    a, b = parser.parse([s, five_only])
    agree = np.mean((a > 0) == (b > 0))
    assert agree > 0.95


def test_model_info_is_honest():
    info = LandmarkPolygonParser().model_info()
    assert info.name == "landmark-polygons" and info.weights_sha256 == ""


def test_the_cut_is_deterministic(frontal_samples):
    """Same face, same mask, whatever OpenCV's RNG state (GrabCut draws its k-means++ seeds
    from it; the shards must be byte-identical across workers and runs)."""
    import cv2

    for s in frontal_samples:
        masks = []
        for seed in (1, 987654, 31337):
            cv2.setRNGSeed(seed)
            cv2.randu(np.zeros((40, 40), np.uint8), 0, 255)  # move OpenCV's RNG on
            masks.append(person_label_map(s.portrait, s.portrait_landmarks))
        for m in masks[1:]:
            np.testing.assert_array_equal(m, masks[0])
