"""FID: the math against scipy's sqrtm, self-distance ~0, growth with noise, weight loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from eval.fid import (
    feature_stats,
    fid_from_features,
    frechet_distance,
    frechet_distance_lowrank,
    inception_features,
    load_inception,
)
from fgid_builder.schema import ModelFileError
from tests.eval.tiny_models import make_random_inception


def test_lowrank_form_equals_scipy_sqrtm():
    rng = np.random.default_rng(0)
    for n, m, d in [(12, 20, 48), (60, 70, 24)]:
        a = rng.normal(size=(n, d))
        b = rng.normal(size=(m, d)) * 1.5 + 0.3
        ref = frechet_distance(*feature_stats(a), *feature_stats(b))
        assert frechet_distance_lowrank(a, b) == pytest.approx(ref, rel=1e-5)
        assert fid_from_features(a, b) == pytest.approx(ref, rel=1e-5)
        assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-9)


def test_needs_two_images_per_set():
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(np.zeros((1, 8)), np.zeros((3, 8)))


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    return make_random_inception(tmp_path_factory.mktemp("inc") / "pt_inception-random.pth")


def _images(shipped_photos) -> list[np.ndarray]:
    out = []
    for p in shipped_photos[:2]:
        im = np.asarray(Image.open(p).convert("RGB").resize((96, 96)))
        out += [im, im[:, ::-1]]
    return out


def test_fid_is_zero_on_itself_and_grows_with_noise(random_inception, shipped_photos):
    model, info = load_inception(random_inception)
    assert info.name == "inception_v3/pytorch_fid" and len(info.weights_sha256) == 64
    images = _images(shipped_photos)
    base = inception_features(model, images)
    assert base.shape == (len(images), 2048) and base.std() > 1e-3  # features are alive
    assert fid_from_features(base, base) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(0)
    values = []
    for sigma in (8, 32, 96):
        noisy = [
            np.clip(im + rng.normal(0, sigma, im.shape), 0, 255).astype(np.uint8) for im in images
        ]
        values.append(fid_from_features(base, inception_features(model, noisy)))
    assert 0 < values[0] < values[1] < values[2], values


@pytest.mark.slow  # a 100 MB state dict written, hashed and read: ~20 s here
def test_torchvision_layout_loads(tmp_path):
    path = make_random_inception(tmp_path / "inception_v3_tv.pth", layout="torchvision")
    model, info = load_inception(path)
    assert info.name == "inception_v3/torchvision"
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 80, 80)).shape == (1, 2048)


def test_bad_weight_files_name_the_file(tmp_path):
    with pytest.raises(ModelFileError, match="missing.pth"):
        load_inception(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match="junk.pth"):
        load_inception(junk)
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(10, 64)}, other)
    with pytest.raises(ModelFileError, match="not an Inception-v3"):
        load_inception(other)
