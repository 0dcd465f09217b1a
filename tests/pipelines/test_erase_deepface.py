"""Acceptance of `fgid erase` and opt-out lists on the shared deepface photos (slow: uses the
session's one `fgid build` of them, `deepface_dataset`, and copies it for every change)."""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from fgid_builder.erase import JOURNAL, EraseRequest, erase
from fgid_builder.index import read_index

pytestmark = [pytest.mark.slow, pytest.mark.integration]
FGID = [sys.executable, "-m", "pipelines.cli"]


def _files(out: Path, skip=("logs", "report")) -> dict[str, str]:
    """relative path -> sha256 of every file of a dataset folder (but logs/ and report/)."""
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.relative_to(out).parts[0] not in skip
    }


def _people(shared_faces: Path) -> dict[str, list[str]]:
    with open(shared_faces / "identities.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["identity"], []).append(r["file"])
    return {
        p: sorted(files, key=lambda f: int("".join(c for c in f if c.isdigit()) or 0))
        for p, files in sorted(out.items())
    }


def _reference(photo: Path, dest: Path) -> Path:
    """Another photo of the person than any in the dataset: the photo mirrored, at 3/4 size,
    re-encoded (other bytes, other pixels; the same face)."""
    img = ImageOps.mirror(ImageOps.exif_transpose(Image.open(photo)).convert("RGB"))
    img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.LANCZOS)
    img.save(dest, quality=88)
    return dest


def _ok_keys(out: Path) -> dict[str, str]:
    return {
        r["key"]: r["source_uri"]
        for r in read_index(out / "index.parquet").to_pylist()
        if r["status"] == "ok"
    }


def _shard_keys(out: Path) -> set[str]:
    from fgid_builder.shards import iter_shard, shard_paths

    return {s["__key__"] for p in shard_paths(out / "shards") for s in iter_shard(p)}


def test_erase_each_person_by_one_reference_photo(deepface_dataset, shared_faces, tmp_path):
    people = _people(shared_faces)
    assert len(people) == 13
    base_keys = _ok_keys(deepface_dataset)
    uri_to_key0 = {u: k for k, u in base_keys.items() if k.endswith("_f0")}
    base_files = _files(deepface_dataset)
    lines = []
    for person, files in people.items():
        out = tmp_path / person
        shutil.copytree(deepface_dataset, out)
        ref = _reference(shared_faces / files[0], tmp_path / f"{person}_ref.jpg")
        receipt = erase(out, EraseRequest(like=(str(ref),)))
        removed = {r["key"] for r in receipt["removed"]}
        mine = {uri_to_key0[f] for f in files}
        others = {uri_to_key0[f] for p, fs in people.items() if p != person for f in fs}
        unlabelled = sorted(base_keys[k] + ":" + k[-2:] for k in removed - mine)
        lines.append(
            f"{person}: {len(removed & mine)}/{len(mine)} of theirs removed, "
            f"{len(removed & others)} of the other people's, unlabelled {unlabelled}, "
            f"nearest cosine {receipt['request']['like'][0]['cosine']:.4f}"
        )
        assert mine <= removed, lines[-1]
        assert not removed & others, lines[-1]
        # the removed samples are gone, every other one is still there
        assert _shard_keys(out) == set(base_keys) - removed
        assert set(_ok_keys(out)) == set(base_keys) - removed
        # only the shards that held them changed; the receipt has their hashes
        rewritten = {s["shard"]: s for s in receipt["shards_rewritten"]}
        assert rewritten == {} or set(rewritten) == {r["shard"] for r in receipt["removed"]}
        after = _files(out)
        for name in receipt["shards_unchanged"]:
            for f in (f"shards/{name}.tar", f"shards/{name}.json", f"index_parts/{name}.parquet"):
                assert after[f] == base_files[f], f
        for name, s in rewritten.items():
            assert s["tar_sha256_before"] == base_files[f"shards/{name}.tar"]
            assert s["tar_sha256_after"] == after.get(f"shards/{name}.tar")
            assert s["tar_sha256_after"] != s["tar_sha256_before"]
        assert not (out / JOURNAL).exists()
        listed = (out / "optout.txt").read_text()
        for r in receipt["removed"]:
            assert r["source_sha256"] in listed or r["key"] in listed
        index = read_index(out / "index.parquet").to_pylist()
        assert {r["source_sha256"] for r in index if r["reason"] == "opted_out"} == {
            r["source_sha256"] for r in receipt["removed"]
        }
    print("\n" + "\n".join(lines))


def test_erased_dataset_loads_in_webdataset_and_trains(deepface_dataset, shared_faces, tmp_path):
    import webdataset as wds

    import training
    from training.train import config_with_overrides, run_training

    out = tmp_path / "dataset"
    shutil.copytree(deepface_dataset, out)
    files = _people(shared_faces)["person00"]
    receipt = erase(
        out, EraseRequest(like=(str(_reference(shared_faces / files[0], tmp_path / "ref.jpg")),))
    )
    removed = {r["key"] for r in receipt["removed"]}
    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    ds = wds.WebDataset(urls, shardshuffle=False).decode("rgb8")
    got = [s["__key__"] for s in ds]
    assert sorted(got) == sorted(set(_ok_keys(deepface_dataset)) - removed)
    sample = next(iter(wds.WebDataset(urls, shardshuffle=False).decode("rgb8")))
    assert sample["jpg"].shape == (512, 512, 3) and sample["id.npy"].shape == (128,)

    cfg = config_with_overrides(
        Path(training.__file__).parent / "configs" / "tiny.yaml",
        shards=" ".join(urls),
        output_dir=str(tmp_path / "run"),
        max_steps=2,
    )
    cfg.train.report_to = None
    rows = run_training(cfg)
    assert [r["step"] for r in rows] == [1, 2]


def _erase_killed_after(out: Path, request: EraseRequest, n: int) -> None:
    os.environ["FGID_ERASE_KILL_AFTER"] = str(n)
    erase(out, request)


def test_kill_9_at_every_write_then_rerun_gives_the_same_bytes(deepface_dataset, tmp_path):
    """The erase SIGKILLs itself after its N-th file write (FGID_ERASE_KILL_AFTER=N), for every
    N; the same command again must give the bytes of an uninterrupted erase."""
    base = tmp_path / "base"
    shutil.copytree(deepface_dataset, base)
    subprocess.run([*FGID, "identities", str(base)], check=True, capture_output=True)
    ident = json.loads((base / "identities.json").read_text())["largest"][0]["identity"]
    cmd = [*FGID, "erase", "OUT", "--identity", ident]

    def run(out: Path, **env: str) -> subprocess.CompletedProcess:
        args = [str(out) if a == "OUT" else a for a in cmd]
        return subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, **env))

    ref_out = tmp_path / "ref"
    shutil.copytree(base, ref_out)
    res = run(ref_out)
    assert res.returncode == 0, res.stderr
    reference = _files(ref_out)
    assert run(ref_out).returncode == 0  # the same command once more: nothing changes
    assert _files(ref_out) == reference
    # every crash point: the erase runs in a forked child (no interpreter start-up per try)
    # that SIGKILLs itself after its n-th write; then the same request again, to the end
    ctx = multiprocessing.get_context("fork")
    request = EraseRequest(identity=(ident,))
    n = 1
    while True:
        out = tmp_path / f"kill{n}"
        shutil.copytree(base, out)
        child = ctx.Process(target=_erase_killed_after, args=(out, request, n))
        child.start()
        child.join()
        if child.exitcode == 0:  # fewer than n writes: every crash point was tried
            break
        assert child.exitcode == -signal.SIGKILL
        assert (out / JOURNAL).exists() or n > 1
        erase(out, request)
        assert _files(out) == reference, f"killed after write {n}"
        shutil.rmtree(out)
        n += 1
    again = tmp_path / "cli"
    shutil.copytree(base, again)
    assert run(again, FGID_ERASE_KILL_AFTER="3").returncode == -signal.SIGKILL
    assert run(again).returncode == 0  # the command itself resumes too
    assert _files(again) == reference
    assert n > 8, f"only {n - 1} crash points"
    print(f"\n{n - 1} crash points, each resumed to the uninterrupted bytes")


def test_build_erase_build_again_keeps_the_person_out(deepface_dataset, shared_faces, tmp_path):
    out = tmp_path / "dataset"
    shutil.copytree(deepface_dataset, out)
    files = _people(shared_faces)["person06"]
    receipt = erase(
        out, EraseRequest(like=(str(_reference(shared_faces / files[0], tmp_path / "ref.jpg")),))
    )
    removed = {r["key"] for r in receipt["removed"]}
    erased = _files(out, skip=("logs", "report", "erasures"))
    build = [*FGID, "build", str(shared_faces)]
    opts = ["--workers", "2", "--shard-size", "16", "--no-progress", "--no-report"]
    env = dict(os.environ, RAY_ADDRESS="")

    def run(*args: str) -> subprocess.CompletedProcess:
        for _ in range(3):  # exit 3: Ray did not start on an overloaded machine; rerun resumes
            res = subprocess.run([*build, *args], capture_output=True, text=True, env=env)
            if res.returncode != 3:
                break
        return res

    # the same command into the same OUT: a resume, the person stays out, nothing changes
    res = run(str(out), *opts)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _files(out, skip=("logs", "report", "erasures")) == erased
    # a fresh build with the dataset's list: the erased dataset, bit for bit
    again = tmp_path / "again"
    res = run(str(again), *opts, "--exclude", str(out / "optout.txt"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert not removed & _shard_keys(again)
    assert _files(again) == erased
