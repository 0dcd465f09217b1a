"""Tiny real-format models, built once per session into a temporary models directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.fgid_builder.backends import tiny_models as tm


@pytest.fixture(scope="session")
def photos(shipped_photos: list[Path]) -> list[np.ndarray]:
    """The shipped photos decoded upright to RGB (the 112 px aligned crop left out)."""
    out = []
    for p in shipped_photos:
        img = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
        if min(img.shape[:2]) >= 256:
            out.append(img)
    return out


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """insightface buffalo_l + antelopev2 (nested, as its zip unpacks; the same random SCRFD
    with rank-3 outputs), facexlib BiSeNet and RetinaFace mobilenet0.25, all plain random
    weights in the real formats."""
    root = tmp_path_factory.mktemp("models")
    tm.insightface_pack(root, "buffalo_l")
    tm.insightface_pack(root, "antelopev2", nested=True, batched_outputs=True)
    tm.bisenet_pth(root)
    tm.retinaface_pth(root, "mobile0.25")
    return root


@pytest.fixture(scope="session")
def mllm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mllm_models")
    tm.tiny_llava(root / "mllm" / "tiny-llava")
    tm.tiny_qwen2vl(root / "mllm" / "tiny-qwen2vl")
    tm.tiny_idefics3(root / "mllm" / "tiny-idefics3")
    return root


@pytest.fixture(scope="session")
def portrait_samples(photos: list[np.ndarray]):
    """FaceSamples (aligned 512 portrait + portrait landmarks) of the real faces in the photos,
    for the parse, embed and caption backends: the embedded dlib detector (trained weights from
    PyPI) + the FFHQ alignment. The tiny SCRFD and RetinaFace have random weights and find no
    face, only boxes; their tests check what the backends make of that output."""
    import io

    from fgid_builder.faces import FaceGates, faces_from_detections
    from fgid_builder.io import decode_image
    from fgid_builder.registry import DEFAULTS, create
    from fgid_builder.schema import sha256_bytes

    det = create("detect", DEFAULTS["detect"])
    samples = []
    for img in photos:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        data = buf.getvalue()
        decoded = decode_image(data)
        faces = det.detect([decoded.rgb])[0]
        got, _ = faces_from_detections(
            decoded, faces, source={"uri": "x.png", "sha256": sha256_bytes(data)}, gates=FaceGates()
        )
        samples.extend(got)
    assert len(samples) >= 2, "the shipped photos hold at least two faces dlib finds"
    return samples


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for a module's `fgid build` runs (the build joins it instead of starting
    its own, which saves ~6 s a run)."""
    ray = pytest.importorskip("ray")
    import logging

    ray.init(address="local", num_cpus=2, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False)  # fmt: skip
    yield ray
    ray.shutdown()


def check_built_dataset(out: Path, models: dict[str, str]) -> list[dict]:
    """The schema checks the embedded-default build tests make (tests/pipelines/test_build.py:
    test_shards_committed_and_consistent, test_plain_webdataset_gives_every_field), plus the
    per-sample decode of `test_mix._check_members`, on a finished `fgid build` OUT folder.

    Every sample's JSON is validated against the published JSON Schema and its captions checked
    (`tests.sample_checks.check_sample_json`).
    `models`: stage -> the prefix its recorded model name must have. Returns the index rows.
    """
    import json

    import webdataset as wds

    from fgid_builder.encode import decode_sample
    from fgid_builder.index import read_index
    from fgid_builder.schema import NUM_LABELS, REGION_NAMES, SCHEMA_VERSION, is_valid_key
    from fgid_builder.shards import iter_shard, shard_paths
    from tests.sample_checks import check_sample_json

    rows = read_index(out / "index.parquet").to_pylist()
    ok_keys = [r["key"] for r in rows if r["status"] == "ok"]
    assert ok_keys and len(ok_keys) == len(set(ok_keys)), rows
    assert all(r["reason"] for r in rows if r["status"] != "ok"), "a reject without a reason"
    tars = shard_paths(out / "shards")
    stats = sorted((out / "shards").glob("*.json"))
    assert tars and [p.stem for p in stats] == [p.stem for p in tars]
    shard_keys = []
    for p in stats:
        st = json.loads(p.read_text())
        shard_keys += st["keys"]
        assert (out / st["index_part"]["name"]).is_file()
    assert sorted(shard_keys) == sorted(ok_keys)
    assert not [p for p in out.rglob(".*") if p.is_file()], "temporary files left"

    n = 0
    for s in wds.WebDataset([str(p) for p in tars], shardshuffle=False).decode("rgb8"):
        n += 1
        assert s["jpg"].shape == (512, 512, 3)
        assert s["mask.png"].ndim in (2, 3)
        emb = s["id.npy"]
        assert emb.dtype == np.float32 and abs(float(np.linalg.norm(emb)) - 1) < 1e-3
        meta = s["json"]
        check_sample_json(meta)
        assert meta["key"] == s["__key__"] and meta["schema_version"] == SCHEMA_VERSION
        assert set(meta["captions"]["regions"]) == set(REGION_NAMES)
        assert meta["embedding"]["dim"] == emb.shape[0]
        assert set(meta["models"]) == {"detect", "parse", "embed", "caption"}
        for stage, prefix in models.items():
            assert meta["models"][stage]["name"].startswith(prefix), meta["models"][stage]
    assert n == len(ok_keys)

    for tar in tars:
        for members in iter_shard(tar):
            sample = decode_sample(members)
            assert is_valid_key(sample.key)
            assert sample.portrait.shape == (512, 512, 3) and sample.mask.shape == (512, 512)
            assert sample.mask.dtype == np.uint8 and int(sample.mask.max()) < NUM_LABELS
            for stage in ("detect", "parse", "embed", "caption"):
                sha = sample.models[stage]["weights_sha256"]
                assert sha == "" or len(sha) == 64, sample.models[stage]
    return rows
