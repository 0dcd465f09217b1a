"""facexlib BiSeNet parsing and RetinaFace detection from random state dicts saved as .pth."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from fgid_builder.detect.insightface_scrfd import clip_boxes
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


def _check_retinaface_faces(img: np.ndarray, faces: list, threshold: float) -> None:
    """What the backend makes of any network output: boxes clipped to the photo, scores over
    the threshold in NMS order, 5 finite float32 points, no dense landmarks."""
    h, w = img.shape[:2]
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True)
    for f in faces:
        x0, y0, x1, y1 = f.bbox
        assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h
        assert threshold < f.score <= 1.0
        assert f.landmarks5.shape == (5, 2) and f.landmarks5.dtype == np.float32
        assert np.isfinite(f.landmarks5).all()
        assert f.landmarks is None


def test_retinaface_mobilenet_detects(models_dir: Path, photos: list[np.ndarray]) -> None:
    """facexlib's mobilenet0.25 RetinaFace with its own random initialisation (seed 0).

    Untrained, its two-class softmax scores every anchor just under 0.5 (0.45-0.50 on these
    photos), so at facexlib's conf_threshold of 0.8 no photo has a face; at the backend's
    `conf_threshold=0.3` every anchor passes and NMS leaves many anchor-sized boxes, which
    must come out as well-formed detections in photo coordinates (batched, max_side=320)."""
    kw = {"network": "mobile0.25", "models_dir": str(models_dir), "max_side": 320}
    assert RetinaFaceDetector(**kw).detect(photos[:2]) == [[], []]
    det = RetinaFaceDetector(**kw, conf_threshold=0.3)
    results = det.detect(photos[:2])
    assert len(results) == 2
    for img, faces in zip(photos[:2], results, strict=True):
        assert len(faces) > 10 and all(f.score < 0.5 for f in faces)
        _check_retinaface_faces(img, faces, 0.3)
    info = det.model_info()
    assert info.name == "facexlib-retinaface/mobile0.25" and len(info.weights_sha256) == 64
    assert "detection_mobilenet0.25_Final.pth" in info.version


def _facexlib_reference(path: Path, network: str, bgr: np.ndarray, **kw) -> np.ndarray:
    """facexlib's own RetinaFace.detect_faces on the same .pth, loaded as its
    init_detection_model does (the `module.` prefix stripped, strict keys)."""
    torch = pytest.importorskip("torch")
    from facexlib.detection.retinaface import RetinaFace

    state = torch.load(path, map_location="cpu", weights_only=True)
    net = RetinaFace(network_name=network, half=False, device="cpu")
    net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    with torch.no_grad():
        return net.eval().detect_faces(bgr, use_origin_size=True, **kw)


def _rows(faces: list) -> np.ndarray:
    """(N, 15) box, score, 10 point coordinates, rows in lexicographic order."""
    a = np.array([[*f.bbox, f.score, *f.landmarks5.ravel()] for f in faces], np.float64)
    return a[np.lexsort(a.T[::-1])]


def _check_equals_facexlib(detector: RetinaFaceDetector, path: Path, img: np.ndarray) -> None:
    """The backend's decoding (priors, variances, scaling, threshold) against facexlib's
    detect_faces on the same random network and photo, at the original size. NMS is off on
    both sides (nms_threshold=1.0): untrained, uniform image regions give many anchors the same
    score, and which of equal-score boxes NMS keeps depends on the input order, which the two
    implementations do not share (both run torchvision's NMS)."""
    import cv2

    h, w = img.shape[:2]
    assert h % 32 == 0 and w % 32 == 0, "a photo the backend does not pad"
    ours = detector.detect([img])[0]
    ref = _facexlib_reference(path, detector.network, cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                              conf_threshold=detector.conf_threshold,
                              nms_threshold=detector.nms_threshold)  # fmt: skip
    ref = ref[np.isfinite(ref).all(1)].astype(np.float64)  # the backend drops nan/inf boxes
    assert len(ours) == len(ref) > 0
    ref[:, :4] = clip_boxes(ref[:, :4], w, h)  # the backend records boxes clipped to the photo
    ref = ref[np.lexsort(ref.T[::-1])]
    np.testing.assert_allclose(_rows(ours), ref, rtol=0, atol=1e-3)


def test_retinaface_matches_facexlib_reference(models_dir: Path, photos: list[np.ndarray]) -> None:
    img = next(p for p in photos if p.shape[0] % 32 == 0 and p.shape[1] % 32 == 0)
    det = RetinaFaceDetector(network="mobile0.25", models_dir=str(models_dir), max_side=0,
                             conf_threshold=0.3, nms_threshold=1.0)  # fmt: skip
    path = models_dir / "facexlib/weights/detection_mobilenet0.25_Final.pth"
    _check_equals_facexlib(det, path, img)


@pytest.mark.slow
def test_retinaface_resnet50_detects(tmp_path: Path, photos: list[np.ndarray]) -> None:
    """resnet50 with its own random initialisation (torchvision's ResNet-50 inside facexlib's
    RetinaFace, seed 0). Untrained, its activations saturate: many anchors score over 0.8
    as shipped, unlike mobilenet0.25, and some size offsets are so large that exp() overflows
    and facexlib's decoding gives nan corners (a few per photo), which the backend drops.
    Whatever else fires must decode as facexlib decodes it."""
    path = tm.retinaface_pth(tmp_path, "resnet50")
    det = RetinaFaceDetector(network="resnet50", models_dir=str(tmp_path), max_side=320)
    for img, faces in zip(photos[:2], det.detect(photos[:2]), strict=True):
        assert faces
        _check_retinaface_faces(img, faces, 0.8)
    img = next(p for p in photos if p.shape[0] % 32 == 0 and p.shape[1] % 32 == 0)
    full = RetinaFaceDetector(network="resnet50", models_dir=str(tmp_path), max_side=0,
                              nms_threshold=1.0)  # fmt: skip
    _check_equals_facexlib(full, path, img)


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
