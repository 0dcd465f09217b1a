"""Shard writer: deterministic bytes, atomic commit, sanitised names, plain-webdataset readable."""

from __future__ import annotations

import hashlib
import tarfile

import numpy as np
import pytest

from fgid_builder.schema import dumps_json, make_key, npy_bytes
from fgid_builder.shards import (
    clean_temp_files,
    is_committed,
    iter_shard,
    read_stats,
    shard_paths,
    shard_stats,
    tar_bytes,
    temp_path_for,
    write_shard,
    write_stats,
)


def _sample(i: int, face: int = 0) -> dict:
    sha = hashlib.sha256(f"photo{i}".encode()).hexdigest()
    key = make_key(sha, face)
    return {
        "__key__": key,
        "jpg": b"\xff\xd8fake" + bytes([i]),
        "mask.png": b"\x89PNGfake",
        "id.npy": npy_bytes(np.full(4, 0.5, np.float32)),
        "json": dumps_json({"key": key, "i": i}),
    }


def test_same_samples_any_order_same_bytes(tmp_path):
    samples = [_sample(i, f) for i in range(5) for f in range(2)]
    a = write_shard(tmp_path / "000000.tar", samples)
    b = write_shard(tmp_path / "000001.tar", list(reversed(samples)))
    assert (tmp_path / "000000.tar").read_bytes() == (tmp_path / "000001.tar").read_bytes()
    assert a["sha256"] == b["sha256"] and a["keys"] == sorted(s["__key__"] for s in samples)


def test_tar_headers_are_fixed(tmp_path):
    write_shard(tmp_path / "000000.tar", [_sample(1)])
    with tarfile.open(tmp_path / "000000.tar") as tar:
        infos = tar.getmembers()
    assert [i.name.split(".", 1)[1] for i in infos] == ["id.npy", "jpg", "json", "mask.png"]
    for info in infos:
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (
            0, 0, 0, "", "", 0o644,
        )  # fmt: skip


@pytest.mark.parametrize(
    "key", ["../etc/passwd", "a b", "photo.jpg_f0", "0123456789abcdef_f0/x", "ÿ" * 16 + "_f0"]
)
def test_bad_keys_are_refused(key):
    with pytest.raises(ValueError):
        tar_bytes([{"__key__": key, "jpg": b"x"}])


def test_bad_extension_and_duplicates_refused():
    s = _sample(1)
    with pytest.raises(ValueError):
        tar_bytes([{"__key__": s["__key__"], "../jpg": b"x"}])
    with pytest.raises(ValueError):
        tar_bytes([s, _sample(1)])


def test_round_trip_and_commit_marker(tmp_path):
    samples = [_sample(i) for i in range(3)]
    info = write_shard(tmp_path / "000007.tar", samples)
    assert not is_committed(tmp_path, 7)  # tar alone is not a commit
    assert shard_paths(tmp_path) == []
    stats = shard_stats(7, tar=info, images=4, reject_reasons=["no_face"])
    write_stats(tmp_path / "000007.json", stats)
    assert is_committed(tmp_path, 7, verify=True)
    assert read_stats(tmp_path / "000007.json")["rejects_by_reason"] == {"no_face": 1}
    back = list(iter_shard(tmp_path / "000007.tar"))
    assert [b["__key__"] for b in back] == sorted(s["__key__"] for s in samples)
    assert back[0]["mask.png"] == b"\x89PNGfake"
    assert shard_paths(tmp_path) == [tmp_path / "000007.tar"]
    # a tar that no longer matches its stats is not committed
    (tmp_path / "000007.tar").write_bytes(b"truncated")
    assert not is_committed(tmp_path, 7)


def test_temp_files_are_cleaned(tmp_path):
    tmp = temp_path_for(tmp_path / "000000.tar")
    tmp.write_bytes(b"half")
    (tmp_path / "keep.txt").write_text("x")
    assert clean_temp_files(tmp_path) == [tmp]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_plain_webdataset_reads_every_field(tmp_path):
    wds = pytest.importorskip("webdataset")
    samples = [_sample(i) for i in range(3)]
    write_shard(tmp_path / "000000.tar", samples)
    got = list(wds.WebDataset(str(tmp_path / "000000.tar"), shardshuffle=False).decode())
    assert len(got) == 3
    for s in got:
        assert {"jpg", "mask.png", "id.npy", "json"} <= set(s)
        assert s["json"]["key"] == s["__key__"]
        assert s["id.npy"].dtype == np.float32
