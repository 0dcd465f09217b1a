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


def test_streaming_merge_equals_the_in_memory_merge(tmp_path):
    """merge_sorted over many parts (several rounds of temp runs) gives the bytes of
    write_index over their concatenation, ties and nulls included; no temp file is left."""
    import random

    import pyarrow as pa

    from fgid_builder.index import merge_sorted, reject_row, rows_table, sample_row, write_index

    rng = random.Random(0)
    parts, all_rows = [], []
    for p in range(40):
        rows = []
        # up to 150 rows a part: several 1,024-row take chunks per output row group
        for i in range(rng.randint(0, 150)):
            uri = f"img/{rng.randint(0, 200):04d}-é.jpg"
            if rng.random() < 0.5:
                meta = {"key": f"{rng.getrandbits(64):016x}_f{i % 3}",
                        "source": {"uri": uri, "sha256": "ab" * 32, "extra": {"c": str(i)}},
                        "face": {"index": i % 3, "bbox": [0, 0, 9, 9]}}  # fmt: skip
                rows.append(sample_row(meta, shard=f"{p:06d}"))
            else:
                reason = rng.choice(["no_face", "duplicate", "http_404"])
                rows.append(reject_row(source_uri=uri, reason=reason, detail=str(p)))
        path = tmp_path / "parts" / f"{p:06d}.parquet"
        path.parent.mkdir(exist_ok=True)
        write_index(path, rows)
        parts.append(path)
        all_rows += rows
    loose = [reject_row(source_uri=f"img/{i:04d}-é.jpg", reason="unreadable") for i in range(9)]
    want = tmp_path / "want.parquet"
    write_index(want, pa.concat_tables([rows_table(all_rows), rows_table(loose)]))
    got = tmp_path / "out" / "index.parquet"
    got.parent.mkdir()
    n = merge_sorted([*parts, rows_table(loose)], got, fan_in=4)
    assert n == len(all_rows) + len(loose)
    assert got.read_bytes() == want.read_bytes()
    assert [p.name for p in got.parent.iterdir()] == ["index.parquet"]
    merge_sorted([], got)
    assert read_index(got).num_rows == 0
