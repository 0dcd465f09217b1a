"""insightface SCRFD detector + ArcFace embedder on tiny ONNX packs in the real layouts."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from fgid_builder.detect.insightface_scrfd import InsightFaceDetector, route_pack
from fgid_builder.embed.arcface import ArcFaceEmbedder
from fgid_builder.schema import ModelFileError
from tests.fgid_builder.backends import tiny_models as tm
from tests.fgid_builder.backends.conftest import one_line

BUFFALO = "insightface/models/buffalo_l"


def test_tiny_pack_is_routed_by_insightface_itself(models_dir: Path) -> None:
    model_zoo = pytest.importorskip("insightface.model_zoo")
    want = {
        "det_10g.onnx": "detection",
        "2d106det.onnx": "landmark_2d_106",
        "w600k_r50.onnx": "recognition",
        "genderage.onnx": "genderage",
    }
    for name, task in want.items():
        m = model_zoo.get_model(
            str(models_dir / BUFFALO / name), providers=["CPUExecutionProvider"]
        )
        assert m.taskname == task
    routed = route_pack(models_dir / BUFFALO, pack="buffalo_l")
    assert {t: Path(s.path).name for t, s in routed.items()} == {v: k for k, v in want.items()}


def test_detect_real_photos(models_dir: Path, photos: list[np.ndarray]) -> None:
    det = InsightFaceDetector(models_dir=str(models_dir))
    results = det.detect(photos)
    assert len(results) == len(photos)
    for img, faces in zip(photos, results, strict=True):
        assert len(faces) == 1
        f = faces[0]
        x0, y0, x1, y1 = f.bbox
        assert 0 <= x0 < x1 <= img.shape[1] and 0 <= y0 < y1 <= img.shape[0]
        assert 0.5 <= f.score <= 1.0
        assert f.landmarks5.shape == (5, 2) and f.landmarks5.dtype == np.float32
        assert f.landmarks is not None and f.landmarks.shape == (106, 2)
        assert np.isfinite(f.landmarks).all()
        # eyes above the mouth, left eye left of the right eye (the template's geometry)
        assert f.landmarks5[0, 0] < f.landmarks5[1, 0] and f.landmarks5[0, 1] < f.landmarks5[3, 1]
    info = det.model_info()
    assert info.name == "insightface-scrfd/buffalo_l" and len(info.weights_sha256) == 64


def test_detect_matches_insightface_reference(models_dir: Path, photos: list[np.ndarray]) -> None:
    cv2 = pytest.importorskip("cv2")
    model_zoo = pytest.importorskip("insightface.model_zoo")
    ref = model_zoo.get_model(
        str(models_dir / BUFFALO / "det_10g.onnx"), providers=["CPUExecutionProvider"]
    )
    ref.prepare(-1, det_thresh=0.5)
    boxes, kps = ref.detect(cv2.cvtColor(photos[0], cv2.COLOR_RGB2BGR), input_size=(640, 640))
    ours = InsightFaceDetector(models_dir=str(models_dir), landmarks_106=False).detect(photos[:1])[
        0
    ]
    assert len(ours) == len(boxes) == 1
    np.testing.assert_allclose(ours[0].bbox, boxes[0, :4], atol=1e-3)
    np.testing.assert_allclose(ours[0].landmarks5, kps[0], atol=1e-3)
    assert ours[0].landmarks is None


def test_antelopev2_nested_and_batched_outputs(models_dir: Path, photos: list[np.ndarray]) -> None:
    a = InsightFaceDetector(pack="antelopev2", models_dir=str(models_dir)).detect(photos)
    b = InsightFaceDetector(pack="buffalo_l", models_dir=str(models_dir)).detect(photos)
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_allclose(fa[0].bbox, fb[0].bbox, atol=1e-2)
    emb = ArcFaceEmbedder(pack="antelopev2", models_dir=str(models_dir))
    assert "glintr100.onnx" in emb.model_info().version


def test_detector_pickles_without_sessions(models_dir: Path, photos: list[np.ndarray]) -> None:
    det = InsightFaceDetector(models_dir=str(models_dir))
    det.detect(photos[:1])
    clone = pickle.loads(pickle.dumps(det))
    assert not any(k.startswith("_m_") for k in vars(clone)) and clone._loaded is False
    assert len(clone.detect(photos[:1])[0]) == 1


def test_arcface_embeddings(models_dir: Path, portrait_samples) -> None:
    cv2 = pytest.importorskip("cv2")
    model_zoo = pytest.importorskip("insightface.model_zoo")
    face_align = pytest.importorskip("insightface.utils.face_align")
    emb = ArcFaceEmbedder(models_dir=str(models_dir))
    vecs = emb.embed(portrait_samples)
    assert vecs.shape == (len(portrait_samples), 512) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # the same vector insightface computes from its own aligned crop of the portrait
    s = portrait_samples[0]
    ref = model_zoo.get_model(
        str(models_dir / BUFFALO / "w600k_r50.onnx"), providers=["CPUExecutionProvider"]
    )
    crop = face_align.norm_crop(cv2.cvtColor(s.portrait, cv2.COLOR_RGB2BGR), s.portrait_landmarks5)
    v = ref.get_feat(crop).ravel()
    assert float(vecs[0] @ (v / np.linalg.norm(v))) > 0.999
    assert emb.model_info().weights_sha256 == tm_sha(models_dir / BUFFALO / "w600k_r50.onnx")


def tm_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- error paths ---------------------------------------------------------------------------------


def test_missing_pack_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError) as e:
        InsightFaceDetector(models_dir=str(tmp_path)).model_info()
    msg = one_line(e.value)
    assert str(tmp_path / BUFFALO) in msg and "buffalo_l" in msg
    with pytest.raises(ModelFileError, match="no models directory"):
        ArcFaceEmbedder(models_dir=None).load()


def test_pack_without_detector_or_recognition(tmp_path: Path) -> None:
    root = tmp_path / BUFFALO
    tm.arcface_onnx(root / "w600k_r50.onnx")
    with pytest.raises(ModelFileError) as e:
        InsightFaceDetector(models_dir=str(tmp_path)).load()
    assert "detection" in one_line(e.value) and "det_10g.onnx" in str(e.value)
    (root / "w600k_r50.onnx").unlink()
    tm.scrfd_onnx(root / "det_10g.onnx")
    with pytest.raises(ModelFileError, match="w600k_r50.onnx"):
        ArcFaceEmbedder(models_dir=str(tmp_path)).load()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_onnx_names_the_file(models_dir: Path, tmp_path: Path, damage: str) -> None:
    shutil.copytree(models_dir / BUFFALO, tmp_path / BUFFALO)
    bad = tmp_path / BUFFALO / "det_10g.onnx"
    if damage == "truncate":
        tm.truncate(bad, 0.6)
    elif damage == "garbage":
        bad.write_bytes(b"PK\x03\x04 this is not a protobuf" * 10)
    else:
        bad.write_bytes(b"")
    with pytest.raises(ModelFileError) as e:
        InsightFaceDetector(models_dir=str(tmp_path)).load()
    assert str(bad) in one_line(e.value)


def test_explicit_arcface_file_must_be_recognition(models_dir: Path) -> None:
    with pytest.raises(ModelFileError, match="recognition signature"):
        ArcFaceEmbedder(model_file=str(models_dir / BUFFALO / "det_10g.onnx")).load()
    with pytest.raises(ModelFileError, match="not found"):
        ArcFaceEmbedder(model_file=str(models_dir / "nope.onnx")).load()
