"""`fgid erase` on an object-store dataset: moto's standalone S3 server started here on a free
port, reached by the real s3fs/botocore client through the standard AWS variables (nothing
mocked). The dataset is the tiny one of tiny_dataset.py, built locally and uploaded with fsspec:
an erase on S3 must give the bytes of the same erase on a local copy, also when it is killed
with SIGKILL after any of its writes and run again, and leave no temporary object behind."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from fgid_builder.erase import EraseRequest, erase
from fgid_builder.identities import AssignConfig, assign_identities, read_embeddings
from tests.fgid_builder.tiny_dataset import make_tiny_dataset
from tests.moto_s3 import moto_bucket

BUCKET = "fgid-erase"


@pytest.fixture(scope="module")
def s3():
    with moto_bucket(BUCKET) as fs:
        yield fs


def _local_files(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def _s3_files(fs, prefix: str) -> dict[str, str]:
    """relative key -> sha256 of every object under s3://BUCKET/prefix (all of them: a lock or
    temporary object left behind would show)."""
    root = f"{BUCKET}/{prefix}"
    keys = sorted(fs.find(root))
    data = fs.cat(keys) if keys else {}  # one batch of concurrent GETs
    return {k[len(root) + 1 :]: hashlib.sha256(data[k]).hexdigest() for k in keys}


def _upload(fs, local: Path, prefix: str) -> str:
    fs.pipe(  # one batch of concurrent PUTs
        {
            f"{BUCKET}/{prefix}/{p.relative_to(local).as_posix()}": p.read_bytes()
            for p in sorted(local.rglob("*"))
            if p.is_file()
        }
    )
    return f"s3://{BUCKET}/{prefix}"


def _identity(out: Path, person_of: dict[str, str], person: str) -> str:
    emb = read_embeddings(out)
    a = assign_identities(emb.keys, emb.vectors, AssignConfig(threshold=0.9))
    (ident,) = {i for k, i in zip(a.keys, a.identity, strict=True) if person_of[k] == person}
    return ident


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny dataset with identities and splits (written by the CLI), and per person the
    erase request and the bytes of that erase on a local copy: "a" rewrites two shards and
    leaves one, "b" rewrites two and removes the third (all its photos are b's)."""
    import shutil

    from pipelines.cli import main

    root = tmp_path_factory.mktemp("tiny")
    base, person_of = make_tiny_dataset(root)
    runner = CliRunner()
    for args in (["identities", str(base), "--threshold", "0.9"], ["split", str(base)]):
        res = runner.invoke(main, args)
        assert res.exit_code == 0, res.output
    erased = {}
    for person in "ab":
        ref = root / f"ref_{person}"
        shutil.copytree(base, ref)
        request = EraseRequest(identity=(_identity(base, person_of, person),))
        receipt = erase(ref, request)
        erased[person] = (request, receipt, _local_files(ref))
    assert erased["a"][1]["shards_unchanged"] == ["000002"]
    assert [s["removed_shard"] for s in erased["b"][1]["shards_rewritten"]] == [0, 0, 1]
    return base, erased


def test_erase_on_s3_gives_the_bytes_of_a_local_erase(s3, tiny):
    from pipelines.cli import main

    base, erased = tiny
    request, _, reference = erased["a"]
    url = _upload(s3, base, "cli")
    before = _s3_files(s3, "cli")
    (ident,) = request.identity
    res = CliRunner().invoke(main, ["erase", url, "--identity", ident])
    assert res.exit_code == 0, res.output
    assert f"receipt: {url}/erasures/" in res.output
    after = _s3_files(s3, "cli")
    assert after == reference  # the same objects (no lock, journal or temporary) and bytes
    changed = {k for k in before if after.get(k) != before[k]}
    assert {k for k in changed if k.startswith(("shards/", "index_parts/"))} == {
        f"{d}/00000{i}.{e}" for i in (0, 1) for d, e in (("shards", "tar"), ("shards", "json"),
                                                          ("index_parts", "parquet"))
    }  # fmt: skip
    # the same command again: nothing to do, nothing changes
    res = CliRunner().invoke(main, ["erase", url, "--identity", ident])
    assert res.exit_code == 0, res.output
    assert _s3_files(s3, "cli") == reference
    # a URL that is no dataset: a usage error, nothing written
    res = CliRunner().invoke(main, ["erase", f"s3://{BUCKET}/nothing", "--identity", ident])
    assert res.exit_code == 2 and "not an fgid dataset" in res.output
    assert not s3.find(f"{BUCKET}/nothing")


def _killed(url: str, request: EraseRequest, n: int) -> None:
    os.environ["FGID_ERASE_KILL_AFTER"] = str(n)
    erase(url, request)


# Crash points of the erase of "b" (18 writes in all; tests/fgid_builder/test_erase.py tries
# every one on a local folder, where the code path is the same but for the write itself):
# after shard 0's tar and index part, before its record (an uncommitted shard on the store);
# after shard 2's record was deleted, before its tar; after the receipt, before the journal
# is deleted. Three, not all 18: each costs ~5-15 s of S3 round trips on this machine.
CRASH_POINTS = (3, 8, 17)


@pytest.mark.parametrize("n", CRASH_POINTS)
def test_kill_9_during_an_s3_erase_then_again_gives_the_same_bytes(s3, tiny, n):
    """SIGKILL after the erase's n-th object PUT or DELETE, then the same request again: the
    bytes of the uninterrupted (local) erase, and no object but the dataset's."""
    base, erased = tiny
    request, _, reference = erased["b"]
    prefix = f"kill{n}"
    url = _upload(s3, base, prefix)
    child = multiprocessing.get_context("fork").Process(target=_killed, args=(url, request, n))
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
        pytest.fail(f"the erase killed after write {n} did not end in 120 s")
    assert child.exitcode == -signal.SIGKILL, "fewer writes than this crash point"
    left = _s3_files(s3, prefix)
    assert ".fgid.lock" in left and left != reference  # killed mid-erase, holding the lock
    # nothing temporary: only the dataset's objects (before or after), the journal, the lock
    extra = set(left) - set(reference) - set(_local_files(base))
    assert extra <= {".fgid.lock", "erase.pending.json"}
    erase(url, request)
    assert _s3_files(s3, prefix) == reference
    s3.rm(f"{BUCKET}/{prefix}", recursive=True)
