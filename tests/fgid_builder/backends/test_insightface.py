"""insightface SCRFD detector + ArcFace embedder on tiny ONNX packs in the real layouts."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from fgid_builder.detect.insightface_scrfd import InsightFaceDetector, clip_boxes, route_pack
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


# The tiny SCRFD has plain random weights (tiny_models.scrfd_onnx): untrained, it scores every
# anchor ~0.3-0.7, so at the default det_thresh of 0.5 thousands of anchors pass on a 640
# letterbox, each an anchor-sized box of a few pixels. The detection tests use two documented
# options instead: a 160 px letterbox (`det_size`), so one stride unit is ~3 photo pixels rather
# than ~1 and there are 1050 anchors, and `det_thresh` 0.55, which some tens of them pass.
DET = {"det_size": 160, "det_thresh": 0.55}


def _check_scrfd_faces(img: np.ndarray, faces: list, det_thresh: float, dense: bool) -> None:
    """What the backend makes of any network output: scores over the threshold in NMS order,
    boxes clipped to the photo (an untrained network's box may be inverted, x1 < x0, as
    insightface decodes it too), 5 (and 106) finite float32 points."""
    h, w = img.shape[:2]
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True)
    for f in faces:
        x0, y0, x1, y1 = f.bbox
        assert 0 <= min(x0, x1) and max(x0, x1) <= w and 0 <= min(y0, y1) and max(y0, y1) <= h
        assert det_thresh <= f.score <= 1.0
        assert f.landmarks5.shape == (5, 2) and f.landmarks5.dtype == np.float32
        assert np.isfinite(f.landmarks5).all()
        if dense:
            assert f.landmarks is not None and f.landmarks.shape == (106, 2)
            assert f.landmarks.dtype == np.float32 and np.isfinite(f.landmarks).all()
        else:
            assert f.landmarks is None


def test_detect_real_photos(models_dir: Path, photos: list[np.ndarray]) -> None:
    """The random SCRFD + 2d106 on the shipped photos: whatever they output comes back as
    well-formed detections with 106 points each."""
    det = InsightFaceDetector(models_dir=str(models_dir), **DET)
    results = det.detect(photos)
    assert len(results) == len(photos)
    for img, faces in zip(photos, results, strict=True):
        assert len(faces) > 10
        _check_scrfd_faces(img, faces, DET["det_thresh"], dense=True)
    info = det.model_info()
    assert info.name == "insightface-scrfd/buffalo_l" and len(info.weights_sha256) == 64
    assert info.version == "det_10g.onnx+2d106det.onnx; det_size=160"


def test_106_points_in_bounded_chunks_equal_one_batch(
    models_dir: Path, photos: list[np.ndarray]
) -> None:
    """Photos with many boxes (here the random SCRFD's >10) get their 106 points in chunks, so
    memory does not grow with the number of boxes; chunking does not change a single point."""
    one = InsightFaceDetector(models_dir=str(models_dir), **DET)
    one.LANDMARK_CHUNK = 10_000
    small = InsightFaceDetector(models_dir=str(models_dir), **DET)
    small.LANDMARK_CHUNK = 3
    a, b = one.detect(photos[:1])[0], small.detect(photos[:1])[0]
    assert len(a) == len(b) > 3
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_allclose(fa.landmarks, fb.landmarks, rtol=0, atol=1e-3)


def _raw_outputs(det_size: int) -> list[np.ndarray]:
    """Zero score/bbox/kps arrays for strides 8, 16, 32 (2 anchors), as det_10g returns them."""
    n = [(det_size // s) ** 2 * 2 for s in (8, 16, 32)]
    return [np.zeros((k, d), np.float32) for d in (1, 4, 10) for k in n]


def test_decode_maps_raw_outputs_to_photo_pixels(models_dir: Path) -> None:
    """The SCRFD decoding (`_letterbox` + `_decode`) on raw output arrays built here with a
    detection at a known anchor: this tests our decoding math (anchor centres, stride units,
    letterbox scale, threshold, NMS), not a model, which is why the arrays are made up."""
    det = InsightFaceDetector(models_dir=str(models_dir), det_size=640, det_thresh=0.5)
    det.load()
    img = np.zeros((480, 800, 3), np.uint8)  # landscape: letterboxed to 640 x 384, scale 0.8
    canvas, scale = det._letterbox(img)
    assert canvas.shape == (640, 640, 3) and scale == pytest.approx(0.8)

    outs = _raw_outputs(640)
    score16, bbox16, kps16 = outs[1], outs[4], outs[7]
    row, col = 12, 10  # stride-16 cell: anchor centre (160, 192) in the canvas
    i = (row * 40 + col) * 2 + 1  # its second anchor
    score16[i] = 0.9
    bbox16[i] = [3, 4, 5, 6]  # left, top, right, bottom distances in strides
    kps16[i] = [-1, -1, 1, -1, 0, 0, -1, 1, 1, 1]  # offsets in strides
    score16[i - 1] = 0.8  # the first anchor of the cell: the same box, suppressed by NMS
    bbox16[i - 1] = [3, 4, 5, 6]
    score16[i + 2] = 0.49  # the next cell: under det_thresh
    outs[2][0] = 0.7  # stride-32 cell (0, 0): a box of its own, kept
    outs[5][0] = [0.5, 0.5, 1, 1]

    boxes, kps = det._decode(outs, scale)
    assert boxes.shape == (2, 5) and kps.shape == (2, 5, 2)
    centre = np.array([160.0, 192.0])
    want = np.array([160 - 48, 192 - 64, 160 + 80, 192 + 96]) / 0.8
    np.testing.assert_allclose(boxes[0], [*want, 0.9], rtol=1e-6)
    offsets = np.array([[-1, -1], [1, -1], [0, 0], [-1, 1], [1, 1]]) * 16.0
    np.testing.assert_allclose(kps[0], (centre + offsets) / 0.8, rtol=1e-6)
    np.testing.assert_allclose(boxes[1], [-16 / 0.8, -16 / 0.8, 32 / 0.8, 32 / 0.8, 0.7])
    clipped = clip_boxes(boxes[:, :4], 800, 480)  # as detect() records them
    np.testing.assert_allclose(clipped[1], [0, 0, 40, 40])


def test_detect_matches_insightface_reference(models_dir: Path, photos: list[np.ndarray]) -> None:
    """Boxes, scores and 5 points equal to insightface's own SCRFD class (model_zoo) on the same
    random network, photos and options; the backend clips boxes to the photo, insightface not."""
    cv2 = pytest.importorskip("cv2")
    model_zoo = pytest.importorskip("insightface.model_zoo")
    ref = model_zoo.get_model(
        str(models_dir / BUFFALO / "det_10g.onnx"), providers=["CPUExecutionProvider"]
    )
    ref.prepare(-1, det_thresh=DET["det_thresh"])
    det = InsightFaceDetector(models_dir=str(models_dir), landmarks_106=False, **DET)
    size = (DET["det_size"], DET["det_size"])
    for img, ours in zip(photos, det.detect(photos), strict=True):
        boxes, kps = ref.detect(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), input_size=size)
        assert len(ours) == len(boxes) > 0
        h, w = img.shape[:2]
        got = np.array([f.bbox for f in ours])
        np.testing.assert_allclose(got, clip_boxes(boxes[:, :4], w, h), atol=1e-3)
        np.testing.assert_allclose([f.score for f in ours], boxes[:, 4], atol=1e-6)
        np.testing.assert_allclose(np.stack([f.landmarks5 for f in ours]), kps, atol=1e-3)
        _check_scrfd_faces(img, ours, DET["det_thresh"], dense=False)


def test_antelopev2_nested_and_batched_outputs(models_dir: Path, photos: list[np.ndarray]) -> None:
    """antelopev2's pack (nested folder, rank-3 outputs, run as one batch) holds the same random
    SCRFD as buffalo_l's (rank 2, one photo a call): the same detections."""
    a = InsightFaceDetector(pack="antelopev2", models_dir=str(models_dir), **DET).detect(photos)
    b = InsightFaceDetector(pack="buffalo_l", models_dir=str(models_dir), **DET).detect(photos)
    for fa, fb in zip(a, b, strict=True):
        assert len(fa) == len(fb) > 0
        np.testing.assert_allclose([f.bbox for f in fa], [f.bbox for f in fb], atol=1e-3)
        np.testing.assert_allclose(
            np.stack([f.landmarks for f in fa]), np.stack([f.landmarks for f in fb]), atol=1e-3
        )
    emb = ArcFaceEmbedder(pack="antelopev2", models_dir=str(models_dir))
    assert "glintr100.onnx" in emb.model_info().version


def test_detector_pickles_without_sessions(models_dir: Path, photos: list[np.ndarray]) -> None:
    det = InsightFaceDetector(models_dir=str(models_dir), **DET)
    first = det.detect(photos[:1])[0]
    clone = pickle.loads(pickle.dumps(det))
    assert not any(k.startswith("_m_") for k in vars(clone)) and clone._loaded is False
    again = clone.detect(photos[:1])[0]
    assert [f.bbox for f in again] == [f.bbox for f in first] and first


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
