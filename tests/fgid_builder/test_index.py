"""Parquet index: fixed schema, sorted, byte-deterministic, rows for samples and rejects."""

from __future__ import annotations

import pyarrow.parquet as pq

from fgid_builder.index import (
    COLUMNS,
    merge_index,
    read_index,
    reject_row,
    sample_row,
    write_index,
)
from fgid_builder.schema import Reason

META = {
    "key": "0123456789abcdef_f0",
    "source": {"uri": "/photos/a b.jpg", "sha256": "0123456789abcdef" * 4, "width": 640,
               "height": 480},
    "face": {"index": 0, "bbox": [10, 20, 110, 140], "det_score": 0.9, "area_ratio": 0.04,
             "yaw": 1.0, "pitch": -2.0, "roll": 0.5, "blur": 123.0},
    "regions": {"eyes": {"present": True}, "ears": {"present": False}},
    "captions": {"global": "A person.", "facial": "Eyes.", "regions": {}},
    "embedding": {"dim": 128},
    "models": {"detect": {"name": "dlib", "version": "19", "weights_sha256": "ab"}},
}  # fmt: skip


def _rows():
    return [
        sample_row(META, shard="000000"),
        reject_row(source_uri="/photos/z.jpg", reason=Reason.EMPTY_FILE, source_bytes=0),
        reject_row(
            source_uri="/photos/a b.jpg",
            reason=Reason.FACE_TOO_SMALL,
            source_sha256="0123456789abcdef" * 4,
            face_index=1,
            det_score=0.4,
            bbox=(1, 2, 3, 4),
        ),
        reject_row(
            source_uri="/photos/\nü.jpg", reason="duplicate", duplicate_of="0123456789abcdef"
        ),
    ]


def test_sample_row_figures():
    row = sample_row(META, shard="000000")
    assert set(row) == set(COLUMNS)
    assert row["status"] == "ok" and row["reason"] is None
    assert row["face_size"] == 100 and row["regions_present"] == ["eyes"]
    assert row["caption_global_chars"] == len("A person.") and row["emb_dim"] == 128


def test_write_is_sorted_and_deterministic(tmp_path):
    rows = _rows()
    write_index(tmp_path / "a.parquet", rows)
    write_index(tmp_path / "b.parquet", list(reversed(rows)))
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    t = read_index(tmp_path / "a.parquet")
    assert t.column("source_uri").to_pylist() == sorted(r["source_uri"] for r in rows)
    assert t.column("face_index").to_pylist()[:3] == [None, 0, 1]
    assert pq.read_metadata(tmp_path / "a.parquet").metadata.keys() == {b"ARROW:schema"}


def test_merge_parts(tmp_path):
    rows = _rows()
    write_index(tmp_path / "p1.parquet", rows[:2])
    write_index(tmp_path / "p2.parquet", rows[2:])
    write_index(tmp_path / "whole.parquet", rows)
    assert (
        merge_index([tmp_path / "p2.parquet", tmp_path / "p1.parquet"], tmp_path / "m.parquet") == 4
    )
    assert (tmp_path / "m.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()


def test_empty_index(tmp_path):
    assert write_index(tmp_path / "e.parquet", []) == 0
    assert read_index(tmp_path / "e.parquet").schema.names == list(COLUMNS)
