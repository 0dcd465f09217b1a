"""The training stream reads one split and skips opted-out samples, also in shards made before
the opt-out list (a copy taken before `fgid erase`)."""

from __future__ import annotations

import shutil

import pytest

from fgid_builder.erase import EraseRequest, erase
from fgid_builder.index import read_index
from fgid_builder.splits import split_identities, splits_table, write_splits
from tests.fgid_builder.tiny_dataset import make_tiny_dataset
from training.data import FGIDStream, sample_filter


def _stream_keys(urls, flt) -> set[str]:
    stream = FGIDStream(urls, None, batch_size=1, sample_filter=flt)
    return {raw["__key__"] for raw in stream._raw_epoch(0, 0, 1)}


def test_old_shards_skip_what_an_erase_listed(tmp_path):
    out, person_of = make_tiny_dataset(tmp_path / "a")
    before = tmp_path / "copy"
    shutil.copytree(out / "shards", before / "shards")  # shards made before the list
    sha = read_index(out / "index.parquet").to_pylist()[0]["source_sha256"]
    receipt = erase(out, EraseRequest(sha256=(sha,)))
    removed = {r["key"] for r in receipt["removed"]}
    urls = sorted(str(p) for p in (before / "shards").glob("*.tar"))
    assert sample_filter(urls, split=None, splits=None, exclude=[]) is None
    assert _stream_keys(urls, None) == set(person_of)
    flt = sample_filter(urls, split=None, splits=None, exclude=[str(out / "optout.txt")])
    assert _stream_keys(urls, flt) == set(person_of) - removed
    # the dataset's own list beside the shards is read without being named
    shutil.copy(out / "optout.txt", before / "optout.txt")
    flt = sample_filter(urls, split=None, splits=None, exclude=[])
    assert _stream_keys(urls, flt) == set(person_of) - removed


def test_one_split_only(tmp_path):
    out, person_of = make_tiny_dataset(tmp_path / "a")
    split = split_identities(person_of, {"train": 0.5, "test": 0.5}, seed=0)
    keys = sorted(person_of)
    write_splits(out, splits_table(keys, [person_of[k] for k in keys], split))
    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    flt = sample_filter(urls, split="test", splits=None, exclude=[])
    assert _stream_keys(urls, flt) == {k for k, s in split.items() if s == "test"}
    with pytest.raises(ValueError, match="no split 'val'"):
        sample_filter(urls, split="val", splits=None, exclude=[])
