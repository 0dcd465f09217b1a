"""fgid erase and opt-out lists on a small dataset in the build's layout (tiny_dataset.py);
the acceptance runs on real photos are in tests/pipelines/test_erase_deepface.py."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from fgid_builder.erase import JOURNAL, EraseError, EraseRequest, erase
from fgid_builder.identities import AssignConfig, assign_identities, read_embeddings
from fgid_builder.index import read_index
from fgid_builder.optout import dataset_optout, parse_optout, read_optout
from fgid_builder.shards import iter_shard, shard_paths
from tests.fgid_builder.tiny_dataset import make_tiny_dataset


def _files(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def _keys(out: Path) -> set[str]:
    return {s["__key__"] for p in shard_paths(out / "shards") for s in iter_shard(p)}


def _identity_of(out: Path, person_of: dict[str, str], person: str) -> str:
    emb = read_embeddings(out)
    a = assign_identities(emb.keys, emb.vectors, AssignConfig(threshold=0.9))
    ids = {i for k, i in zip(a.keys, a.identity, strict=True) if person_of[k] == person}
    assert len(ids) == 1
    return ids.pop()


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_dataset(tmp_path)


def test_erase_identity_rewrites_only_its_shards(tiny):
    out, person_of = tiny
    before = _files(out)
    a = _identity_of(out, person_of, "a")
    receipt = erase(out, EraseRequest(identity=(a,), threshold=0.9))
    removed = {r["key"] for r in receipt["removed"]}
    assert removed == {k for k, p in person_of.items() if p == "a"}
    assert _keys(out) == set(person_of) - removed
    after = _files(out)
    # p0, p2 (shard 0) and p4 face 0 (shard 1) held "a"; shard 2 did not
    assert [s["shard"] for s in receipt["shards_rewritten"]] == ["000000", "000001"]
    assert receipt["shards_unchanged"] == ["000002"]
    for f in ("shards/000002.tar", "shards/000002.json", "index_parts/000002.parquet"):
        assert after[f] == before[f]
    for s in receipt["shards_rewritten"]:
        assert s["tar_sha256_before"] == before[f"shards/{s['shard']}.tar"]
        assert s["tar_sha256_after"] == after[f"shards/{s['shard']}.tar"]
    # whole photos by hash, the face of a photo that keeps "c" by key
    listed = dataset_optout(out)
    p4_a = next(k for k in removed if k.endswith("_f0") and f"{k[:-3]}_f1" in person_of)
    assert listed.keys == {p4_a}
    assert len(listed.sha256) == 2
    index = read_index(out / "index.parquet").to_pylist()
    rows = {(r["source_uri"], r["face_index"]): r for r in index}
    assert rows[("p0.jpg", None)]["reason"] == "opted_out"  # the photo, by the plan
    assert rows[("p4.jpg", 0)]["reason"] == "opted_out" and rows[("p4.jpg", 1)]["status"] == "ok"
    assert not (out / JOURNAL).exists()
    assert (out / "erasures" / f"{receipt['erase_id']}.json").is_file()


def test_erase_by_sha256_and_the_same_command_again_changes_nothing(tiny):
    out, person_of = tiny
    sha = read_index(out / "index.parquet").to_pylist()[0]["source_sha256"]
    erase(out, EraseRequest(sha256=(sha,)))
    done = _files(out)
    erase(out, EraseRequest(sha256=(sha,)))
    assert _files(out) == done
    assert sha in read_optout(out / "optout.txt").sha256


def test_a_shard_left_without_photos_is_removed(tiny):
    out, person_of = tiny
    shas = {
        r["source_sha256"]
        for r in read_index(out / "index.parquet").to_pylist()
        if r["shard"] == "000002"
    }
    receipt = erase(out, EraseRequest(sha256=tuple(sorted(shas))))
    assert receipt["shards_rewritten"][0]["removed_shard"] is True
    assert not (out / "shards" / "000002.json").exists()
    assert not (out / "shards" / "000002.tar").exists()


def test_a_dataset_without_its_plan_is_refused_before_anything_is_written(tiny):
    """The DVC pipeline's dataset (`fgid stage shard`) has no plan.parquet or build.json: the
    erase is refused up front (exit 2 in the CLI), never half done."""
    out, person_of = tiny
    (out / "plan.parquet").unlink()
    before = _files(out)
    sha = read_index(out / "index.parquet").to_pylist()[0]["source_sha256"]
    with pytest.raises(EraseError, match="opt-out list"):
        erase(out, EraseRequest(sha256=(sha,)))
    assert _files(out) == before
    out2, _ = make_tiny_dataset(out.parent / "again")
    (out2 / "build.json").unlink()
    before = _files(out2)
    with pytest.raises(EraseError, match="--like needs"):
        erase(out2, EraseRequest(like=(str(out2 / "index.parquet"),)))
    assert _files(out2) == before


def _killed(out: Path, request: EraseRequest, n: int) -> None:
    os.environ["FGID_ERASE_KILL_AFTER"] = str(n)
    erase(out, request)


def test_kill_9_at_every_write_then_again_gives_the_same_bytes(tmp_path):
    ref, person_of = make_tiny_dataset(tmp_path / "ref")
    request = EraseRequest(identity=(_identity_of(ref, person_of, "b"),), threshold=0.9)
    erase(ref, request)
    reference = _files(ref)
    ctx = multiprocessing.get_context("fork")
    n = 1
    while True:
        out, _ = make_tiny_dataset(tmp_path / f"k{n}")
        child = ctx.Process(target=_killed, args=(out, request, n))
        child.start()
        child.join()
        if child.exitcode == 0:
            break
        assert child.exitcode == -signal.SIGKILL
        if n == 1:  # killed after the journal: another request must wait for this one
            with pytest.raises(EraseError, match="unfinished"):
                erase(out, EraseRequest(sha256=("0" * 64,)))
        erase(out, request)
        assert _files(out) == reference, f"killed after write {n}"
        n += 1
    assert n > 8


def test_optout_list_format():
    text = "# comment\nsha256 " + "A" * 64 + "  # a photo\nkey 0123456789abcdef_f1\nphoto ref.jpg\n"
    listed = parse_optout(text, base="/lists")
    assert listed.sha256 == {"a" * 64} and listed.keys == {"0123456789abcdef_f1"}
    assert listed.photos == ["/lists/ref.jpg"]
    with pytest.raises(ValueError, match="list:1"):
        parse_optout("sha256 xyz")
