"""Production backends mixed with each other and with the embedded ones, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fgid_builder.schema import REGION_NAMES, is_valid_key
from tests.fgid_builder.backends import tiny_models as tm
from tests.fgid_builder.backends.conftest import check_built_dataset


def _check_members(members: dict, stages: dict[str, str]) -> None:
    from fgid_builder.encode import decode_sample

    s = decode_sample(members)
    assert is_valid_key(s.key)
    assert s.portrait.shape == (512, 512, 3) and s.mask.shape == (512, 512)
    assert s.mask.dtype == np.uint8 and int(s.mask.max()) < 19
    assert s.embedding.dtype == np.float32
    assert abs(float(np.linalg.norm(s.embedding)) - 1.0) < 1e-4
    assert set(s.captions.regions) == set(REGION_NAMES)
    for stage, name in stages.items():
        assert s.models[stage]["name"].startswith(name), (stage, s.models[stage])
        assert len(s.models[stage]["weights_sha256"] or "x" * 64) == 64


# The random SCRFD's options (as test_insightface.DET, which says why) and the gates that go
# with them: its boxes are a few tens of photo pixels (with seed 0 the largest box is 38 px on
# the astronaut and Grace Hopper, 60 px on t1), under the default min_face of 64, and
# --max-faces 1 keeps one sample per photo (BiSeNet and ArcFace run once per photo).
SCRFD_OPTIONS = {"det_size": 160, "det_thresh": 0.55}
MIN_FACE, MAX_FACES = 16, 1


def test_insightface_bisenet_arcface_with_embedded_captioner(models_dir: Path, shipped_photos):
    """insightface detection (the random SCRFD + 2d106) + BiSeNet + ArcFace + the embedded
    attribute captioner in one ImageProcessor: the largest box the detector reports becomes a
    sample carrying each backend's record and the 106 points, every other box a reject row."""
    from fgid_builder.caption.attributes import AttributeCaptioner
    from fgid_builder.detect.insightface_scrfd import InsightFaceDetector
    from fgid_builder.embed.arcface import ArcFaceEmbedder
    from fgid_builder.faces import FaceGates
    from fgid_builder.io import decode_image
    from fgid_builder.parse.bisenet import BiSeNetParser
    from fgid_builder.process import ImageProcessor
    from fgid_builder.schema import Reason

    detector = InsightFaceDetector(models_dir=str(models_dir), **SCRFD_OPTIONS)
    proc = ImageProcessor(
        detector,
        BiSeNetParser(models_dir=str(models_dir)),
        ArcFaceEmbedder(models_dir=str(models_dir)),
        AttributeCaptioner(),
        FaceGates(min_face=MIN_FACE, max_faces=MAX_FACES),
    )
    path = shipped_photos[0]
    detections = detector.detect([decode_image(path.read_bytes()).rgb])[0]
    result = proc.process(path.read_bytes(), path.name)
    assert len(result.members) == 1, result.rejects
    assert len(result.rejects) == len(detections) - 1
    assert {reason for _, reason, _ in result.rejects} == {Reason.TOO_MANY_FACES}
    for m in result.members:
        _check_members(
            m,
            {
                "detect": "insightface-scrfd",
                "parse": "facexlib-bisenet",
                "embed": "insightface-arcface",
            },
        )
    meta = json.loads(result.members[0]["json"])
    assert meta["face"]["index"] == 0 and len(meta["face"]["landmarks"]) == 106
    assert meta["face"]["size"] >= MIN_FACE


@pytest.fixture(scope="module")
def random_retinaface_dir(models_dir: Path, mllm_dir: Path, tmp_path_factory) -> Path:
    """A models dir whose RetinaFace is facexlib's real mobilenet0.25 network with torch's
    default random initialisation (nothing biased), beside the tiny ArcFace pack and LLaVA."""
    root = tmp_path_factory.mktemp("random_retinaface")
    tm.retinaface_pth(root, "mobile0.25", seed=0)
    (root / "insightface").symlink_to(models_dir / "insightface", target_is_directory=True)
    (root / "mllm").symlink_to(mllm_dir / "mllm", target_is_directory=True)
    return root


@pytest.mark.integration
def test_fgid_build_retinaface_random_weights(
    random_retinaface_dir: Path, shipped_photos, ray_local, tmp_path: Path
) -> None:
    """`fgid build --detector retinaface --parser landmarks --embedder arcface --captioner mllm`
    on the shipped photos, RetinaFace with plain random weights: its output, whatever it is,
    becomes samples that pass the embedded default's schema checks.

    Why the two options. Untrained, RetinaFace's two-class softmax gives every anchor a face
    score near 0.5 (0.45-0.50 on these photos with seed 0), under facexlib's conf_threshold of
    0.8, so as shipped every photo is one `no_face` row (asserted first, no Ray needed). No
    threshold can tell faces from background with random weights, so the test sets the
    backend's documented `conf_threshold=0.3`: every anchor is then a detection, NMS leaves
    hundreds of anchor-sized boxes, and `--max-faces 1` keeps the largest box (clipped to the
    photo), recording each of the others as a `too_many_faces` row. The kept face's 5 points
    are the anchor centre plus random offsets: not a face, but the detector's real output,
    aligned, parsed, embedded and captioned like any other.
    """
    from click.testing import CliRunner

    from fgid_builder.detect.retinaface import RetinaFaceDetector
    from fgid_builder.io import decode_image
    from pipelines.build import build_command

    photos = [decode_image(p.read_bytes()).rgb for p in shipped_photos]
    as_shipped = RetinaFaceDetector(network="mobile0.25", models_dir=str(random_retinaface_dir),
                                    max_side=320)  # fmt: skip
    assert as_shipped.detect(photos) == [[] for _ in photos]  # every photo: no_face
    low = RetinaFaceDetector(network="mobile0.25", models_dir=str(random_retinaface_dir),
                             max_side=320, conf_threshold=0.3)  # fmt: skip
    for img, faces in zip(photos, low.detect(photos), strict=True):
        assert len(faces) > 10 and all(0.3 < f.score < 0.7 for f in faces)
        for f in faces:  # clipped to the photo
            x0, y0, x1, y1 = f.bbox
            assert 0 <= x0 <= x1 <= img.shape[1] and 0 <= y0 <= y1 <= img.shape[0]

    out = tmp_path / "out"
    args = [
        "--demo", str(out), "--detector", "retinaface", "--parser", "landmarks",
        "--embedder", "arcface", "--captioner", "mllm",
        "--models-dir", str(random_retinaface_dir), "--workers", "1", "--no-progress",
        "--no-report", "--max-faces", "1",
        "--detector-option", "network=mobile0.25", "--detector-option", "max_side=320",
        "--detector-option", "conf_threshold=0.3",
        "--captioner-option", "model=tiny-llava", "--captioner-option", "max_new_tokens=6",
    ]  # fmt: skip
    res = CliRunner().invoke(build_command, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = check_built_dataset(
        out,
        {"detect": "facexlib-retinaface/mobile0.25", "parse": "landmark", "embed": "insightface-arcface",
         "caption": "mllm/tiny-llava"},
    )  # fmt: skip
    ok = [r for r in rows if r["status"] == "ok"]
    assert sorted(r["source_uri"] for r in ok) == sorted({r["source_uri"] for r in rows})
    assert {r["face_index"] for r in ok} == {0}  # the largest box of each photo
    others = [r for r in rows if r["status"] != "ok"]
    assert others and {r["reason"] for r in others} == {"too_many_faces"}


@pytest.mark.integration
def test_fgid_build_with_production_backends(
    models_dir: Path, shipped_photos, ray_local, tmp_path: Path
):
    """`fgid build --detector insightface --parser bisenet --embedder arcface --models-dir`, the
    detector configured from the CLI (antelopev2 pack, the random SCRFD's options): the options
    reach the Ray actors and are recorded, the largest box of each photo becomes a sample that
    passes the default build's schema checks, the other boxes `too_many_faces` rows."""
    pytest.importorskip("ray")
    from click.testing import CliRunner

    from pipelines.build import build_command

    inp = tmp_path / "in"
    inp.mkdir()
    for p in shipped_photos[:2]:
        (inp / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    args = [
        str(inp), str(out), "--detector", "insightface", "--parser", "bisenet",
        "--embedder", "arcface", "--models-dir", str(models_dir), "--workers", "1",
        "--no-progress", "--no-report", "--min-face", str(MIN_FACE), "--max-faces", str(MAX_FACES),
        "--detector-option", "pack=antelopev2",
        "--detector-option", f"det_size={SCRFD_OPTIONS['det_size']}",
        "--detector-option", f"det_thresh={SCRFD_OPTIONS['det_thresh']}",
    ]  # fmt: skip
    res = CliRunner().invoke(build_command, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = check_built_dataset(
        out,
        {"detect": "insightface-scrfd/antelopev2", "parse": "facexlib-bisenet",
         "embed": "insightface-arcface", "caption": "attribute-describer"},
    )  # fmt: skip
    ok = [r for r in rows if r["status"] == "ok"]
    assert sorted(r["source_uri"] for r in ok) == sorted(p.name for p in shipped_photos[:2])
    assert {r["face_index"] for r in ok} == {0}
    assert {r["reason"] for r in rows if r["status"] != "ok"} == {"too_many_faces"}
    settings = json.loads((out / "build.json").read_text())
    assert settings["backend_options"]["detect"] == {"pack": "antelopev2", **SCRFD_OPTIONS}


@pytest.mark.integration
@pytest.mark.slow  # ~40 s: the pipeline starts Ray before it checks the weight files
def test_fgid_build_missing_weights_exits_2(tmp_path: Path, shipped_photos) -> None:
    pytest.importorskip("ray")
    from click.testing import CliRunner

    from pipelines.build import build_command

    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.jpg").write_bytes(shipped_photos[0].read_bytes())
    out = tmp_path / "out"
    res = CliRunner().invoke(
        build_command,
        [
            str(inp),
            str(out),
            "--parser",
            "bisenet",
            "--models-dir",
            str(tmp_path / "none"),
            "--no-progress",
        ],
    )
    assert res.exit_code == 2, res.output
    assert "parsing_bisenet.pth" in res.output
    assert not (out / "shards").exists() or not any((out / "shards").glob("*.tar"))
