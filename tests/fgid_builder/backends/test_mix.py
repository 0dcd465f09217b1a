"""Production backends mixed with each other and with the embedded ones, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fgid_builder.schema import REGION_NAMES, is_valid_key


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


def test_insightface_bisenet_arcface_with_embedded_captioner(models_dir: Path, shipped_photos):
    from fgid_builder.caption.attributes import AttributeCaptioner
    from fgid_builder.detect.insightface_scrfd import InsightFaceDetector
    from fgid_builder.embed.arcface import ArcFaceEmbedder
    from fgid_builder.parse.bisenet import BiSeNetParser
    from fgid_builder.process import ImageProcessor

    proc = ImageProcessor(
        InsightFaceDetector(models_dir=str(models_dir)),
        BiSeNetParser(models_dir=str(models_dir)),
        ArcFaceEmbedder(models_dir=str(models_dir)),
        AttributeCaptioner(),
    )
    path = shipped_photos[0]
    result = proc.process(path.read_bytes(), path.name)
    assert result.members, result.rejects
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
    assert len(meta["face"]["landmarks"]) == 106


def test_retinaface_landmarks_parser_mllm(models_dir: Path, mllm_dir: Path, shipped_photos):
    from fgid_builder.caption.mllm import MLLMCaptioner
    from fgid_builder.detect.retinaface import RetinaFaceDetector
    from fgid_builder.embed.arcface import ArcFaceEmbedder
    from fgid_builder.parse.landmark_polygons import LandmarkPolygonParser
    from fgid_builder.process import ImageProcessor

    proc = ImageProcessor(
        RetinaFaceDetector(network="mobile0.25", models_dir=str(models_dir), max_side=320),
        LandmarkPolygonParser(),
        ArcFaceEmbedder(models_dir=str(models_dir)),
        MLLMCaptioner(model="tiny-llava", models_dir=str(mllm_dir), max_new_tokens=6),
    )
    path = shipped_photos[0]
    result = proc.process(path.read_bytes(), path.name)
    assert result.members or result.rejects  # random boxes may fail the gates; never raise
    for m in result.members:
        _check_members(m, {"detect": "facexlib-retinaface", "caption": "mllm/tiny-llava"})
        assert json.loads(m["json"])["models"]["caption"]["prompt"]["protocol"] == "fgid-2q"


@pytest.mark.integration
def test_fgid_build_with_production_backends(models_dir: Path, shipped_photos, tmp_path: Path):
    """`fgid build --detector insightface --parser bisenet --embedder arcface --models-dir`."""
    pytest.importorskip("ray")
    from click.testing import CliRunner

    from fgid_builder.encode import decode_sample
    from pipelines.build import build_command

    inp = tmp_path / "in"
    inp.mkdir()
    for p in shipped_photos[:2]:
        (inp / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    args = [
        str(inp), str(out), "--detector", "insightface", "--parser", "bisenet",
        "--embedder", "arcface", "--models-dir", str(models_dir), "--workers", "1",
        "--no-progress", "--no-report",
        # a production backend configured from the CLI: the options reach the Ray actors
        "--detector-option", "pack=antelopev2", "--detector-option", "det_thresh=0.5",
    ]  # fmt: skip
    res = CliRunner().invoke(build_command, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    import tarfile

    shards = sorted((out / "shards").glob("*.tar"))
    assert shards
    n = 0
    with tarfile.open(shards[0]) as tar:
        members: dict[str, dict[str, bytes]] = {}
        for ti in tar.getmembers():
            key, _, ext = ti.name.partition(".")
            members.setdefault(key, {"__key__": key})[ext] = tar.extractfile(ti).read()
    for m in members.values():
        s = decode_sample(m)
        assert s.models["parse"]["name"] == "facexlib-bisenet"
        assert s.models["detect"]["name"] == "insightface-scrfd/antelopev2"
        assert s.models["embed"]["weights_sha256"]
        n += 1
    assert n >= 1
    import json

    settings = json.loads((out / "build.json").read_text())
    assert settings["backend_options"]["detect"] == {"pack": "antelopev2", "det_thresh": 0.5}


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
