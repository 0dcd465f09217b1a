"""Hostile inputs through whole builds: devices, FIFOs (listed, or swapped in after planning),
a sparse 1.5 GB file, a symlink to /, a file name that is not UTF-8, formats Pillow cannot
decode. Each is a reject row with its reason, never a hang, a crash or unbounded memory.
The two builds on Ray are marked slow (about a minute each on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fgid_builder.index import read_index
from fgid_builder.shards import iter_shard, shard_paths
from pipelines.build import INDEX, PARTS, SHARDS, BuildConfig, run_build
from pipelines.plan import read_plan
from tests.pipelines.inputs import _jpeg, _photos

REPO = Path(__file__).resolve().parents[2]
# Runs a command, prints the peak RSS (KiB) of the largest process it waited for.
PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:], timeout=600).returncode\n"
    "print('PEAK', rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def _peak_rss(args: list[str], tmp_path: Path) -> tuple[int, int]:
    """(exit code, peak RSS in MiB) of `python -m pipelines.cli ARGS` in a fresh process,
    under an address-space limit of 6 GiB so a regression fails here instead of eating the
    machine."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "pipelines.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        preexec_fn=limit,
        cwd=tmp_path,
    )
    line = [x for x in res.stdout.splitlines() if x.startswith("PEAK ")][-1]
    _, rc, kib = line.split()
    return int(rc), int(kib) // 1024


def test_dev_zero_and_a_sparse_giant_cost_no_memory_in_build_or_report(tmp_path):
    """A list file naming /dev/zero, a 1.5 GB sparse x.jpg and a FIFO: planning rejects them
    (not_a_file, too_large) without reading them, no Ray is started for them, and the report
    opens none of them: both processes stay far below the bytes named."""
    (tmp_path / "in").mkdir()
    with open(tmp_path / "in" / "x.jpg", "wb") as f:
        f.truncate(1536 << 20)
    os.mkfifo(tmp_path / "in" / "pipe.jpg")
    lst = tmp_path / "list.txt"
    lst.write_text("/dev/zero\nin/x.jpg\nin/pipe.jpg\n")
    out = tmp_path / "out"
    rc, build_mib = _peak_rss(["build", str(lst), str(out), "--no-progress"], tmp_path)
    assert rc == 0
    rows = {r["source_uri"]: r for r in read_index(out / INDEX).to_pylist()}
    assert {u: r["reason"] for u, r in rows.items()} == {
        "/dev/zero": "not_a_file",
        "in/x.jpg": "too_large",
        "in/pipe.jpg": "not_a_file",
    }
    summary = json.loads((out / "logs" / "summary.json").read_text())
    assert summary["workers"] == 0  # nothing to process: Ray never started
    assert summary["report"], summary["report_error"]
    rc, report_mib = _peak_rss(["report", str(out)], tmp_path)
    assert rc == 0
    print(f"peak RSS: build {build_mib} MiB, report {report_mib} MiB")
    assert build_mib < 1024 and report_mib < 1024


@pytest.fixture(scope="module")
def ray_local():
    import logging

    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    """uri -> expected reason (None: samples) of a folder of hostile entries."""
    root = tmp_path_factory.mktemp("hostile") / "in"
    root.mkdir()
    ph = _photos()
    astro, grace = ph["astronaut.png"], ph["grace_hopper.jpg"]
    with open(os.fsencode(root) + b"/caf\xe9.jpg", "wb") as f:  # Latin-1: not UTF-8
        f.write(_jpeg(astro))
    (root / "grace.jpg").write_bytes(_jpeg(grace))
    os.mkfifo(root / "pipe.jpg")
    os.symlink("/", root / "slash")
    os.symlink("/dev/zero", root / "zero.jpg")
    (root / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" * 40)
    expected = {
        "caf%E9.jpg": None,
        "grace.jpg": None,
        "pipe.jpg": "not_a_file",
        "slash": "outside_input",
        "zero.jpg": "outside_input",
        "photo.heic": "unsupported_format",
    }
    return root, expected


def _cfg(inp: Path, out: Path, **kw) -> BuildConfig:
    opts = {"workers": 2, "shard_size": 1, "progress": False, "report": False}
    opts.update(kw)
    return BuildConfig(input=str(inp), out=str(out), **opts)


@pytest.mark.slow
@pytest.mark.integration
def test_hostile_folder_builds_with_a_row_per_entry(ray_local, hostile, tmp_path):
    root, expected = hostile
    out = tmp_path / "out"
    summary = run_build(_cfg(root, out, report=True))
    assert summary.report and summary.report_error is None
    rows = read_index(out / INDEX).to_pylist()
    by_uri: dict[str, list[dict]] = {}
    for r in rows:
        by_uri.setdefault(r["source_uri"], []).append(r)
    assert set(by_uri) == set(expected)
    for uri, reason in expected.items():
        if reason is None:
            assert {r["status"] for r in by_uri[uri]} == {"ok"}, by_uri[uri]
        else:
            assert [r["reason"] for r in by_uri[uri]] == [reason], by_uri[uri]
    # the Latin-1 name: escaped uri in the index and the sample, raw bytes in the plan
    plan = {r["source_uri"]: r for r in read_plan(out / "plan.parquet").to_pylist()}
    assert plan["caf%E9.jpg"]["path_bytes"] == b"caf\xe9.jpg"
    uris = {
        json.loads(m["json"])["source"]["uri"]
        for tar in shard_paths(out / SHARDS)
        for m in iter_shard(tar)
    }
    assert uris == {"caf%E9.jpg", "grace.jpg"}


@pytest.mark.slow
@pytest.mark.integration
def test_a_file_swapped_for_a_fifo_after_planning_is_a_row_not_a_hang(ray_local, tmp_path):
    """Planned as a photo, then replaced by a FIFO before its shard was written (a resume):
    the worker opens it without blocking and records `not_a_file`."""
    ph = _photos()
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.jpg").write_bytes(_jpeg(ph["astronaut.png"]))
    (root / "b.jpg").write_bytes(_jpeg(ph["grace_hopper.jpg"]))
    out = tmp_path / "out"
    run_build(_cfg(root, out))
    # shard 000001 (b.jpg) "not yet written": its commit files gone, its input now a FIFO
    for p in (
        out / SHARDS / "000001.json",
        out / SHARDS / "000001.tar",
        out / PARTS / "000001.parquet",
    ):
        p.unlink()
    (root / "b.jpg").unlink()
    os.mkfifo(root / "b.jpg")
    again = run_build(_cfg(root, out))
    assert again.shards_written == 1 and again.shards_skipped == 1
    rows = {r["source_uri"]: r for r in read_index(out / INDEX).to_pylist()}
    assert rows["a.jpg"]["status"] == "ok"
    assert rows["b.jpg"]["reason"] == "not_a_file" and "FIFO" in rows["b.jpg"]["detail"]
