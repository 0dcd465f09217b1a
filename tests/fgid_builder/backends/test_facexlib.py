"""facexlib BiSeNet parsing and RetinaFace detection from random state dicts saved as .pth."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from fgid_builder.detect.retinaface import RetinaFaceDetector
from fgid_builder.parse.bisenet import BiSeNetParser
from fgid_builder.schema import NUM_LABELS, ModelFileError
from tests.fgid_builder.backends import tiny_models as tm
from tests.fgid_builder.backends.conftest import one_line

BISENET = "facexlib/weights/parsing_bisenet.pth"


def test_bisenet_parses_portraits_as_fgid_did(models_dir: Path, portrait_samples) -> None:
    """Labels as FGID_mask.py computes them: ToTensor + ImageNet Normalize, argmax of out[0]."""
    torch = pytest.importorskip("torch")
    parser = BiSeNetParser(models_dir=str(models_dir), num_threads=2)
    masks = parser.parse(portrait_samples[:2])
    assert len(masks) == 2
    for m in masks:
        assert m.shape == (512, 512) and m.dtype == np.uint8
        assert int(m.max()) < NUM_LABELS
    s = portrait_samples[0]
    x = torch.from_numpy(s.portrait.astype(np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        ref = parser._m_net(((x - mean) / std)[None])[0].squeeze(0).numpy().argmax(0)
    assert (masks[0] == ref).mean() > 0.999
    info = parser.model_info()
    assert info.name == "facexlib-bisenet" and len(info.weights_sha256) == 64
    clone = pickle.loads(pickle.dumps(parser))
    assert not hasattr(clone, "_m_net")


def test_retinaface_mobilenet_detects(models_dir: Path, photos: list[np.ndarray]) -> None:
    det = RetinaFaceDetector(network="mobile0.25", models_dir=str(models_dir), max_side=320)
    results = det.detect(photos[:2])
    assert len(results) == 2
    for faces in results:
        assert faces, "the biased tiny RetinaFace fires on every image"
        for f in faces:
            assert f.landmarks5.shape == (5, 2) and f.landmarks5.dtype == np.float32
            assert np.isfinite(f.landmarks5).all() and 0.8 < f.score <= 1.0
            assert f.landmarks is None
    assert "detection_mobilenet0.25_Final.pth" in det.model_info().version


@pytest.mark.slow
def test_retinaface_resnet50_detects(tmp_path: Path, photos: list[np.ndarray]) -> None:
    tm.retinaface_pth(tmp_path, "resnet50")
    det = RetinaFaceDetector(network="resnet50", models_dir=str(tmp_path), max_side=320)
    assert all(det.detect(photos[:1]))


# -- error paths ---------------------------------------------------------------------------------


def test_missing_weights_name_the_expected_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError) as e:
        BiSeNetParser(models_dir=str(tmp_path)).load()
    assert str(tmp_path / BISENET) in one_line(e.value)
    with pytest.raises(ModelFileError) as e:
        RetinaFaceDetector(network="resnet50", models_dir=str(tmp_path)).load()
    assert "facexlib/weights/detection_Resnet50_Final.pth" in one_line(e.value)


def test_truncated_pth(models_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "parsing_bisenet.pth"
    bad.write_bytes((models_dir / BISENET).read_bytes())
    tm.truncate(bad, 0.5)
    with pytest.raises(ModelFileError) as e:
        BiSeNetParser(weights=str(bad)).load()
    assert str(bad) in one_line(e.value) and "truncated" in str(e.value)


def test_wrong_network_weights(models_dir: Path) -> None:
    """RetinaFace weights given to BiSeNet (and the reverse): a key mismatch naming the file."""
    retina = models_dir / "facexlib/weights/detection_mobilenet0.25_Final.pth"
    with pytest.raises(ModelFileError, match="does not match the network") as e:
        BiSeNetParser(weights=str(retina)).load()
    assert str(retina) in one_line(e.value)
    with pytest.raises(ModelFileError, match="does not match"):
        RetinaFaceDetector(network="resnet50", weights=str(retina)).load()


def test_pickle_of_code_is_refused(tmp_path: Path) -> None:
    """weights_only loading: a .pth that pickles arbitrary objects is not executed."""
    import torch

    bad = tmp_path / "parsing_bisenet.pth"
    torch.save({"net": Path("/etc")}, bad)  # a non-tensor global: refused by weights_only
    with pytest.raises(ModelFileError) as e:
        BiSeNetParser(weights=str(bad)).load()
    assert str(bad) in one_line(e.value)
