"""fgid_builder.dataset: the layout, the commit protocol and the reader, on a local folder and on
fsspec's in-memory filesystem (an object store without rename: every write is one PUT).

The same protocol against a real S3 server (moto's) is in tests/pipelines/test_s3.py.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest

from fgid_builder import dataset as dsm
from fgid_builder.dataset import Dataset
from fgid_builder.index import reject_row
from fgid_builder.shards import iter_tar_bytes, tar_bytes, temp_path_for


def _samples(n: int, prefix: str = "ab") -> list[dict]:
    return [
        {"__key__": f"{prefix}{i:014x}_f0", "jpg": bytes([i]) * (100 + i), "json": b"{}"}
        for i in range(n)
    ]


def _rows(samples: list[dict], shard: str) -> list[dict]:
    rows = [
        {"key": s["__key__"], "status": "ok", "source_uri": f"{s['__key__']}.jpg", "shard": shard}
        for s in samples
    ]
    rows.append(reject_row(source_uri="zz.jpg", reason="no_face", shard=shard))
    return rows


@pytest.fixture(params=["local", "memory"])
def location(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return f"memory://fgid-test-{uuid.uuid4().hex[:8]}/out"


def test_write_shard_commits_last_and_reads_back(location):
    ds = Dataset(location)
    ds.prepare()
    samples = _samples(3)
    record = ds.write_shard("000000", samples[::-1], _rows(samples, "000000"), images=4)
    tar = ds.read_bytes("shards", "000000.tar")
    assert tar == tar_bytes(samples)[0]  # sorted by key, whatever the order given
    assert record["tar"] == {
        "name": "000000.tar",
        "bytes": len(tar),
        "sha256": hashlib.sha256(tar).hexdigest(),
    }
    assert record["samples"] == 3 and record["images"] == 4 and record["rejects"] == 1
    assert json.loads(ds.read_bytes("shards", "000000.json")) == record
    assert ds.committed_shards() == ["000000"] and ds.is_committed("000000", verify_tar=True)
    assert [m["__key__"] for m in ds.iter_shard("000000")] == [s["__key__"] for s in samples]
    (url,) = ds.shard_urls()
    assert [m["jpg"] for m in dsm.iter_shard_url(url)] == [s["jpg"] for s in samples]
    assert ds.read_part("000000").num_rows == 4


def test_resume_trusts_only_records_that_match_the_objects(location):
    ds = Dataset(location)
    ds.prepare()
    samples = _samples(2)
    ds.write_shard("000000", samples, _rows(samples, "000000"), images=2)
    ds.write_shard("000001", samples[:1], _rows(samples[:1], "000001"), images=1)
    good = ds.read_bytes("shards", "000000.tar")
    # a tar overwritten by other bytes of another size: not committed
    ds.write_bytes("shards/000000.tar", good + b"\0" * 512)
    assert not ds.is_committed("000000")
    # same size, other bytes: only the full check sees it
    ds.write_bytes("shards/000000.tar", good[:-1] + b"x")
    assert ds.is_committed("000000") and not ds.is_committed("000000", verify_tar=True)
    # an index part that does not match its recorded hash
    part = ds.read_bytes("index_parts", "000001.parquet")
    ds.write_bytes("index_parts/000001.parquet", part[:-1] + bytes([part[-1] ^ 1]))
    assert not ds.is_committed("000001")
    # a tar without its record (killed before the record): not committed, not listed
    ds.write_bytes("shards/000002.tar", good)
    assert ds.committed_shards() == ["000000"] and "000002" not in ds.shard_names()
    # a record that is not JSON
    ds.write_bytes("shards/000000.json", b"{half")
    assert not ds.is_committed("000000")


def test_local_writes_are_atomic_and_temp_files_cleaned(tmp_path):
    ds = Dataset(tmp_path / "out")
    ds.prepare()
    temp_path_for(tmp_path / "out" / "shards" / "000000.tar").write_bytes(b"half")
    temp_path_for(tmp_path / "out" / "index_parts" / "000000.parquet").write_bytes(b"half")
    assert ds.prepare() == 2
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == []


def test_merge_index_adds_the_planning_rejects(location):
    ds = Dataset(location)
    ds.prepare()
    for shard in ("000001", "000000"):
        samples = _samples(2, prefix="a" + shard[-1])
        ds.write_shard(shard, samples, _rows(samples, shard)[:-1], images=2)
    extra = [reject_row(source_uri="dup.jpg", reason="duplicate")]
    table = ds.merge_index(["000001", "000000"], extra)
    assert table.num_rows == 5 and table.column_names == ["status", "reason"]
    assert ds.read_index().select(["status", "reason"]).equals(table)


def test_urls_and_refusals(tmp_path):
    assert dsm.is_url("s3://b/x") and not dsm.is_url("/tmp/x") and not dsm.is_url("x/y")
    assert dsm.is_local("file:///tmp/x") and not dsm.is_local("s3://b/x")
    assert dsm.join_url("s3://b/out/", "shards", "000000.tar") == "s3://b/out/shards/000000.tar"
    with pytest.raises(ValueError, match="refusing"):
        dsm.open_url("pipe:cat /etc/passwd")
    (tmp_path / "a.tar").write_bytes(b"x" * 10)
    assert dsm.read_url(tmp_path / "a.tar") == b"x" * 10
    with pytest.raises(ValueError, match="larger than"):
        dsm.read_url(tmp_path / "a.tar", max_bytes=5)
    assert dsm.glob_urls(str(tmp_path / "*.tar")) == [str(tmp_path / "a.tar")]


def test_a_dataset_pickles_as_its_url(tmp_path):
    import pickle

    ds = pickle.loads(pickle.dumps(Dataset(tmp_path / "out")))
    assert ds.url == str(tmp_path / "out") and ds.local


def test_iter_tar_bytes_matches_iter_shard(tmp_path):
    samples = _samples(2)
    data, _ = tar_bytes(samples)
    assert [m["__key__"] for m in iter_tar_bytes(data)] == [s["__key__"] for s in samples]
