"""The staged path (`fgid stage ...`, what DVC runs) against the fused `fgid build`.

One integration run on the package-shipped demo photos plus a byte-identical copy, an empty
file and a text file named `.jpg`: both paths must give the same shard, stats, index-part and
index bytes, with small shards so the staged shard cut is exercised too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipelines.cli import main

pytestmark = pytest.mark.integration

SHARD_SIZE = 2


def _stage(*args: str) -> None:
    result = CliRunner().invoke(main, ["stage", *args, "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, shipped_photos) -> Path:
    root = tmp_path_factory.mktemp("photos") / "in put"
    (root / "sub").mkdir(parents=True)
    for p in shipped_photos:
        shutil.copyfile(p, root / p.name)
    shutil.copyfile(shipped_photos[0], root / "sub" / "copy of first.png")  # a duplicate
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def staged(tmp_path_factory, photos: Path) -> Path:
    work = tmp_path_factory.mktemp("staged")
    _stage("ingest", str(photos), str(work / "ingest.parquet"), "--stats", str(work / "i.json"))
    prev = work / "ingest.parquet"
    for name in ("detect", "parse", "embed", "caption"):
        _stage(
            name, str(prev), str(work / f"{name}.parquet"), "--stats", str(work / f"{name}.json")
        )
        prev = work / f"{name}.parquet"
    _stage(
        "shard",
        str(prev),
        str(work / "ds"),
        "--shard-size",
        str(SHARD_SIZE),
        "--stats",
        str(work / "shard.json"),
    )
    return work


@pytest.fixture(scope="module")
def fused(tmp_path_factory, photos: Path) -> Path:
    out = tmp_path_factory.mktemp("fused") / "ds"
    result = CliRunner().invoke(
        main,
        [
            "build",
            str(photos),
            str(out),
            "--workers",
            "1",
            "--shard-size",
            str(SHARD_SIZE),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for sub in ("shards", "index_parts")
        for p in sorted((root / sub).iterdir())
    } | {"index.parquet": (root / "index.parquet").read_bytes()}


def test_staged_equals_fused_byte_for_byte(staged: Path, fused: Path) -> None:
    a, b = _files(staged / "ds"), _files(fused)
    assert sorted(a) == sorted(b)
    assert len([n for n in a if n.endswith(".tar")]) >= 2  # the shard cut was exercised
    for name in a:
        assert a[name] == b[name], f"{name} differs between the staged and fused paths"


def test_ingest_dedups_and_keeps_relative_uris(staged: Path, photos: Path) -> None:
    ingest = pq.read_table(staged / "ingest.parquet").to_pylist()
    uris = [r["source_uri"] for r in ingest]
    assert uris == sorted(uris) and not any(u.startswith("/") for u in uris)
    assert "sub/copy of first.png" in uris
    by_reason = {r["source_uri"]: r["reason"] for r in ingest if r["status"] != "planned"}
    assert by_reason == {"sub/copy of first.png": "duplicate", "empty.jpg": "empty_file"}
    for r in ingest:
        if r["status"] == "planned":
            assert r["data"] == (photos / r["source_uri"]).read_bytes()
    index = pq.read_table(staged / "ds" / "index.parquet").to_pylist()
    assert {r["source_uri"] for r in index} == set(uris)  # no input vanished
    assert not any(str(photos) in json.dumps(r) for r in index)  # no absolute path recorded


def test_stage_stats_are_metrics(staged: Path) -> None:
    detect = json.loads((staged / "detect.json").read_text())
    assert detect["faces_ok"] >= 4 and detect["images"] >= 4
    assert detect["rejects_by_reason"].get("duplicate") == 1
    shard = json.loads((staged / "shard.json").read_text())
    assert shard["shards"] >= 2 and shard["faces_ok"] == detect["faces_ok"]
    assert 0 < shard["ok_rate"] <= 1


def test_stage_output_is_deterministic(staged: Path, tmp_path: Path) -> None:
    # another batch size, same bytes: row groups do not follow the batching
    _stage(
        "parse",
        str(staged / "detect.parquet"),
        str(tmp_path / "parse.parquet"),
        "--batch-size",
        "1",
    )
    assert (tmp_path / "parse.parquet").read_bytes() == (staged / "parse.parquet").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_sample_columns_round_trip(staged: Path) -> None:
    from pipelines.stages import sample_columns, sample_from_columns

    row = next(
        r for r in pq.read_table(staged / "caption.parquet").to_pylist() if r["status"] == "ok"
    )
    sample = sample_from_columns(row)
    assert sample.portrait.shape == (512, 512, 3) and sample.portrait.dtype == np.uint8
    assert sample.mask.dtype == np.uint8 and sample.embedding.dtype == np.float32
    again = sample_columns(sample)
    for column, value in again.items():
        assert value == row[column], column


def test_wrong_input_is_a_usage_error(staged: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["stage", "parse", str(staged / "ingest.parquet"), str(tmp_path / "x.parquet")]
    )
    assert result.exit_code == 2 and "not the output of the previous stage" in result.output


def test_export_of_staged_dataset_reads_like_official_train(
    staged: Path, photos: Path, tmp_path: Path
) -> None:
    from fgid_builder.schema import LABELS
    from tests.fgid_builder.test_export import read_like_official_train

    dest = tmp_path / "export"
    result = CliRunner().invoke(
        main, ["export", str(staged / "ds"), str(dest), "--source-root", str(photos)]
    )
    assert result.exit_code == 0, result.output
    items = read_like_official_train(dest)
    shard = json.loads((staged / "shard.json").read_text())
    assert len(items) == shard["faces_ok"]
    for it in items:
        assert set(np.unique(it["mask"]).tolist()) <= set(LABELS)
        assert {"Face", "Left_Eye", "Right_Eye", "Nose", "Upper_Lip", "Lower_Lip"} <= it["parts"]
        assert tuple(it["id"].shape) == (1, 128)
        assert it["captions"][0] and "eyes" in it["captions"][1]
        assert (dest / "origin_IMG" / it["item"]["origin_IMG"]).is_file()


def test_backend_option_errors_are_usage_errors(staged: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "stage",
            "detect",
            str(staged / "ingest.parquet"),
            str(tmp_path / "d.parquet"),
            "--detector-option",
            "upsample=9",
        ],
    )
    assert result.exit_code == 2 and "upsample" in result.output


def test_shard_exclude_writes_what_an_erase_leaves(staged: Path, fused: Path, tmp_path) -> None:
    """`fgid stage shard --exclude LIST` (DVC's shard stage with the opt-out list) writes the
    bytes `fgid erase` leaves in the built dataset: the list is all DVC needs to rerun."""
    from fgid_builder.erase import EraseRequest, erase
    from fgid_builder.index import read_index

    erased = tmp_path / "erased"
    shutil.copytree(fused, erased)
    sha = next(
        r["source_sha256"]
        for r in read_index(fused / "index.parquet").to_pylist()
        if r["status"] == "ok"
    )
    receipt = erase(erased, EraseRequest(sha256=(sha,)))
    assert receipt["removed"]
    _stage(
        "shard",
        str(staged / "caption.parquet"),
        str(tmp_path / "ds"),
        "--shard-size",
        str(SHARD_SIZE),
        "--exclude",
        str(erased / "optout.txt"),
    )
    a, b = _files(tmp_path / "ds"), _files(erased)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], f"{name} differs between the stage and the erase"
