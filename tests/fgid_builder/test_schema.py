"""One JSON schema for every sample: the published JSON Schema, its `datasets.Features`, and
Hugging Face `datasets` loading shards whose samples differ in what their backends found."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fgid_builder.encode import decode_sample, encode_sample
from fgid_builder.process import ImageProcessor
from fgid_builder.schema import (
    LABEL_IDS,
    SCHEMA_VERSION,
    ModelInfo,
    region_stats,
    sample_json_schema,
)
from fgid_builder.shards import write_shard
from tests.sample_checks import check_sample_json

jsonschema = pytest.importorskip("jsonschema")


@pytest.fixture(scope="module")
def members(shipped_photos) -> list[dict[str, bytes]]:
    """Samples of two shipped photos through the embedded stack (no ears: regions.ears absent)."""
    proc = ImageProcessor.default()
    out = []
    for p in shipped_photos:
        if p.name in ("astronaut.png", "grace_hopper.jpg"):
            out += proc.process(p.read_bytes(), p.name).members
    assert len(out) == 2
    return out


def _with_ears(m: dict[str, bytes]) -> dict[str, bytes]:
    """The same sample as a parser that finds ears gives it: ear labels beside the jaw (7 on the
    image's right: the subject's left), regions recomputed, a parser with a weights hash."""
    s = decode_sample(m)
    mask = s.mask.copy()
    p = s.portrait_landmarks
    for label, jaw in ((LABEL_IDS["l_ear"], p[13:17]), (LABEL_IDS["r_ear"], p[0:4])):
        out = 1 if label == LABEL_IDS["l_ear"] else -1
        poly = np.vstack([jaw, jaw[::-1] + [out * 25, 0]])
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], label)
    info = ModelInfo(name="facexlib-bisenet", version="test", weights_sha256="ab" * 32)
    s = dataclasses.replace(
        s, mask=mask, regions=region_stats(mask), models={**s.models, "parse": info.to_json()}
    )
    return encode_sample(s)


def test_the_schema_is_valid_and_versioned():
    schema = sample_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION == 2
    from fgid_builder.features import sample_features

    features = sample_features()
    assert set(features["json"]) == set(schema["properties"])


def test_samples_follow_the_schema(members):
    for m in members + [_with_ears(m) for m in members]:
        meta = json.loads(m["json"])
        check_sample_json(meta)
        ears = meta["regions"]["ears"]
        assert isinstance(ears["bbox"], list) and len(ears["bbox"]) == 4
        for info in meta["models"].values():
            assert isinstance(info["weights_sha256"], str) and isinstance(info["prompt"], str)
    bad = json.loads(members[0]["json"])
    bad["regions"]["ears"]["bbox"] = None
    with pytest.raises(AssertionError, match="regions.ears.bbox"):
        check_sample_json(bad)


@pytest.mark.parametrize("explicit_features", [False, True])
def test_datasets_loads_shards_with_and_without_ears(
    members, tmp_path: Path, monkeypatch, explicit_features: bool
):
    """`datasets.load_dataset("webdataset", data_files=...)` on two builds' shards together: the
    first without ears boxes and with a weightless parser, the second with both (the mix that
    failed with "Couldn't cast array of type list<item: int64> to null")."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    from fgid_builder.features import sample_features

    a, b = tmp_path / "a" / "000000.tar", tmp_path / "b" / "000000.tar"
    a.parent.mkdir()
    b.parent.mkdir()
    write_shard(a, members)
    write_shard(b, [_with_ears(m) for m in members])
    kwargs = {"features": sample_features()} if explicit_features else {}
    ds = datasets.load_dataset(
        "webdataset",
        data_files={"train": [str(a), str(b)]},
        split="train",
        cache_dir=str(tmp_path / "hf"),
        **kwargs,
    )
    assert len(ds) == 4
    ears = [row["json"]["regions"]["ears"] for row in ds]
    assert [e["present"] for e in ears] == [False, False, True, True]
    assert ears[0]["bbox"] == [0, 0, 0, 0] and all(v > 0 for v in ears[2]["bbox"][2:])
    shas = [row["json"]["models"]["parse"]["weights_sha256"] for row in ds]
    assert shas == ["", "", "ab" * 32, "ab" * 32]
    row = ds[0]
    assert row["jpg"].size == (512, 512) and row["mask.png"].size == (512, 512)
    assert len(row["id.npy"]) == json.loads(members[0]["json"])["embedding"]["dim"]
