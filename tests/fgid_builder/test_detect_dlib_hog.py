"""The embedded dlib detector on real photos shipped inside installed packages."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from fgid_builder.detect.dlib_hog import DlibHogDetector, landmarks5_from_68
from fgid_builder.io import decode_image
from fgid_builder.registry import create


@pytest.fixture(scope="module")
def detector() -> DlibHogDetector:
    return create("detect", "dlib")


def test_faces_and_landmarks_on_shipped_photos(detector, shipped_photos):
    for path in shipped_photos:
        d = decode_image(path.read_bytes())
        faces = detector.detect([d.rgb])[0]
        assert faces, f"no face in {path.name}"
        for f in faces:
            x0, y0, x1, y1 = f.bbox
            assert 0 <= x0 < x1 <= d.width and 0 <= y0 < y1 <= d.height
            assert f.score > 0
            assert f.landmarks.shape == (68, 2) and f.landmarks.dtype == np.float32
            assert f.landmarks5.shape == (5, 2)
            assert np.allclose(f.landmarks5, landmarks5_from_68(f.landmarks))
        main = max(faces, key=lambda f: f.size)
        lm = main.landmarks5
        assert lm[0, 0] < lm[2, 0] < lm[1, 0]  # image-left eye, nose, image-right eye
        assert lm[3, 0] < lm[4, 0] and lm[2, 1] < lm[3, 1]


def test_exif_rotated_photo_gives_upright_box(detector, shipped_photos):
    path = next(p for p in shipped_photos if p.name == "astronaut.png")
    upright = Image.open(path).convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a sideways camera stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    d = decode_image(buf.getvalue())
    assert (d.width, d.height) == upright.size
    got = max(detector.detect([d.rgb])[0], key=lambda f: f.size)
    ref = max(detector.detect([np.asarray(upright)])[0], key=lambda f: f.size)
    assert np.allclose(got.bbox, ref.bbox, atol=12)
    assert got.landmarks5[0, 1] < got.landmarks5[3, 1]  # eyes above the mouth: upright


def test_model_info_and_pickle(detector):
    info = detector.model_info()
    assert info.name.startswith("dlib") and "dlib" in info.version
    assert info.weights_sha256 and len(info.weights_sha256) == 64
    detector.load()
    clone = pickle.loads(pickle.dumps(detector))
    assert clone._loaded is False and not hasattr(clone, "_m_detector")
    blank = np.full((200, 200, 3), 128, dtype=np.uint8)
    assert clone.detect([blank]) == [[]]


def test_config_validated():
    with pytest.raises(ValueError):
        DlibHogDetector(upsample=-1)
    with pytest.raises(ValueError):
        DlibHogDetector(max_side=10)
