"""fgid_builder.manifest: Parquet / CSV / JSONL manifests, read in batches."""

from __future__ import annotations

import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fgid_builder.manifest import ManifestError, is_manifest, iter_manifest


def _rows(manifest: str, **kw) -> list:
    return [r for batch in iter_manifest(manifest, **kw) for r in batch]


def test_three_formats_same_rows(tmp_path):
    rows = [
        {"path": "a.jpg", "caption": "007", "license": "cc-by"},
        {"path": "sub/b.jpg", "caption": "two, with a comma", "license": ""},
        {"path": "/abs/c.jpg", "caption": "three", "license": "cc0"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "m.csv").write_text(
        'path,caption,license\na.jpg,007,cc-by\nsub/b.jpg,"two, with a comma",\n/abs/c.jpg,three,cc0\n'
    )
    got = {
        ext: _rows(str(tmp_path / f"m.{ext}"), batch_rows=2) for ext in ("parquet", "jsonl", "csv")
    }
    assert got["parquet"] == got["jsonl"] == got["csv"]
    first, second, third = got["csv"]
    assert first.uri == "a.jpg" and first.location == str(tmp_path / "a.jpg")
    assert second.location == str(tmp_path / "sub" / "b.jpg") and third.location == "/abs/c.jpg"
    # CSV cells stay text ("007"), every pass-through column in every row
    assert json.loads(first.extra) == {"caption": "007", "license": "cc-by"}
    assert json.loads(second.extra) == {"caption": "two, with a comma", "license": ""}
    assert [r.row for r in got["csv"]] == [0, 1, 2]


def test_url_column_typed_values_and_object_store_manifest():
    table = pa.table(
        {"url": ["https://x.org/1.jpg", "in/2.jpg", None], "n": [1, None, 3], "f": [0.5, 1.0, 2.0]}
    )
    with fsspec.open("memory://bucket/lists/m.parquet", "wb") as f:
        pq.write_table(table, f)
    rows = _rows("memory://bucket/lists/m.parquet")
    assert [r.location for r in rows] == [
        "https://x.org/1.jpg",
        "memory://bucket/lists/in/2.jpg",
        "",
    ]
    assert [json.loads(r.extra) for r in rows] == [
        {"f": "0.5", "n": "1"}, {"f": "1.0", "n": ""}, {"f": "2.0", "n": "3"}
    ]  # fmt: skip


def test_bad_manifests_are_one_line_errors(tmp_path):
    (tmp_path / "none.csv").write_text("name,caption\na,b\n")
    with pytest.raises(ManifestError, match="no 'url' or 'path' column"):
        _rows(str(tmp_path / "none.csv"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        _rows(str(tmp_path / "bad.parquet"))
    with pytest.raises(ManifestError, match="not found"):
        _rows(str(tmp_path / "missing.jsonl"))
    assert is_manifest("s3://b/x.PARQUET") and not is_manifest("list.txt")
