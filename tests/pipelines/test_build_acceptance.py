"""`fgid build` as a user runs it, in separate processes (slow: each run starts Ray).

- `--workers 1`, `--workers 2` and `--address` (a `ray start --head` cluster): identical bytes;
- `kill -9` halfway, then the same command: identical to an uninterrupted run, nothing left over;
- on the shared deepface photos: a sample for every photo, and the identity embeddings read back
  from the shards decide >= 99% of the 280 labelled pairs at the best single cosine threshold.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fgid_builder.demo import demo_photos
from fgid_builder.index import read_index
from fgid_builder.schema import load_npy
from fgid_builder.shards import iter_shard, shard_paths
from tests.official_consistentid import official_foreground
from tests.pipelines.inputs import make_bad_inputs
from tests.sample_checks import check_sample_json

pytestmark = [pytest.mark.slow, pytest.mark.integration]

FGID = [sys.executable, "-m", "pipelines.cli", "build"]


def _outputs(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.relative_to(out).parts[0] != "logs"
    }


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_ADDRESS="")
    return subprocess.run(
        [*FGID, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Awkward inputs plus 16 face photos (the shipped ones re-encoded at several sizes)."""
    root = tmp_path_factory.mktemp("acc") / "in"
    make_bad_inputs(root)
    faces = [Image.open(p).convert("RGB") for p in demo_photos()[:2]]
    for i in range(16):
        im = faces[i % len(faces)]
        side = 300 + 20 * i
        im = im.resize((side, round(side * im.height / im.width)))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=88)
        (root / "faces" / f"face_{i:02d}.jpg").parent.mkdir(exist_ok=True)
        (root / "faces" / f"face_{i:02d}.jpg").write_bytes(buf.getvalue())
    return root


ARGS = ["--shard-size", "2", "--max-faces", "2", "--no-progress", "--batch-size", "2"]


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    res = _run([str(photos), str(out), "--workers", "2", *ARGS])
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_workers_1_gives_the_same_bytes(photos, reference, tmp_path):
    out = tmp_path / "out"
    res = _run([str(photos), str(out), "--workers", "1", *ARGS])
    assert res.returncode == 0, res.stderr[-3000:]
    assert _outputs(out) == _outputs(reference)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_address_of_a_ray_start_head_cluster_gives_the_same_bytes(photos, reference, tmp_path):
    import shutil
    import tempfile

    import psutil

    port = _free_port()
    # a short private temp dir: Ray's socket paths must stay short, and `ray start` must not
    # overwrite /tmp/ray/ray_current_cluster, which other `ray.init()` callers read
    temp_dir = tempfile.mkdtemp(prefix="fgidray", dir="/tmp")
    # Ray >= 2.5x clusters started by `ray start` use token authentication; a driver joining
    # one needs RAY_AUTH_MODE=token (the token is in ~/.ray/auth_token)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_ADDRESS="")
    head = subprocess.Popen(
        [
            "ray",
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            "--block",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    started: list[psutil.Process] = []
    try:
        deadline = time.time() + 180
        ready = False
        while time.time() < deadline and head.poll() is None and not ready:
            with socket.socket() as s:
                ready = s.connect_ex(("127.0.0.1", port)) == 0
            time.sleep(1)
        assert ready, "ray start --head did not come up"
        out = tmp_path / "out"
        res = subprocess.run(
            [*FGID, str(photos), str(out), "--address", f"127.0.0.1:{port}", "--workers", "2",
             *ARGS],  # fmt: skip
            capture_output=True, text=True, timeout=600, env=env, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
        assert _outputs(out) == _outputs(reference)
    finally:
        with contextlib.suppress(psutil.Error):
            started = psutil.Process(head.pid).children(recursive=True)
        os.killpg(head.pid, signal.SIGTERM)  # the head's own process group
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        _gone, alive = psutil.wait_procs(started, timeout=30)
        for p in alive:  # what the head started and left behind, by pid
            with contextlib.suppress(psutil.Error):
                p.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_kill_9_halfway_then_resume_is_identical(photos, reference, tmp_path):
    out = tmp_path / "out"
    args = [str(photos), str(out), "--workers", "2", *ARGS]
    total = len(list((reference / "shards").glob("*.json")))
    proc = subprocess.Popen(
        [*FGID, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ, RAY_ADDRESS=""),
    )
    deadline = time.time() + 600
    committed = 0
    while time.time() < deadline and proc.poll() is None:
        committed = len(list((out / "shards").glob("*.json"))) if (out / "shards").is_dir() else 0
        if committed >= total // 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait()
    assert 0 < committed < total
    assert not (out / "index.parquet").exists()

    res = _run(args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _outputs(out) == _outputs(reference)
    assert not [p for p in out.rglob(".*") if p.is_file()], "temporary files left"
    keys = [s["__key__"] for p in shard_paths(out / "shards") for s in iter_shard(p)]
    assert len(keys) == len(set(keys))
    summary = json.loads((out / "logs" / "summary.json").read_text())
    assert summary["shards_skipped"] >= committed


def _best_threshold_accuracy(scores: np.ndarray, same: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(scores):
        best = max(best, float(np.mean((scores >= t) == same)))
    return best


def test_deepface_every_photo_and_pair_accuracy(shared_faces, tmp_path):
    out = tmp_path / "out"
    res = _run([str(shared_faces), str(out), "--workers", "2", "--shard-size", "16",
                "--no-progress"])  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    index = read_index(out / "index.parquet").to_pylist()
    photos = sorted(p.name for p in shared_faces.iterdir() if p.suffix.lower() == ".jpg")
    ok = {r["source_uri"] for r in index if r["status"] == "ok"}
    assert [p for p in photos if p not in ok] == []

    f0 = {r["key"]: r["source_uri"] for r in index if r["status"] == "ok" and r["face_index"] == 0}
    emb: dict[str, np.ndarray] = {}
    foreground_ok = []  # the official ConsistentID foreground of every sample
    for shard in shard_paths(out / "shards"):
        for s in iter_shard(shard):
            meta = json.loads(s["json"])
            check_sample_json(meta)  # the published schema; captions describe only
            mask = np.asarray(Image.open(io.BytesIO(s["mask.png"])))
            fg = official_foreground(mask)
            face = np.isin(mask, [1, 2, 3, 4, 5, 10, 11, 12, 13])
            foreground_ok.append(bool(fg.any()) and float(fg[face].mean()) > 0.99)
            if s["__key__"] in f0:
                emb[f0[s["__key__"]]] = load_npy(s["id.npy"])
                assert set(meta["captions"]["regions"]) == {"face", "ears", "eyes", "nose",
                                                            "mouth"}  # fmt: skip
    share = float(np.mean(foreground_ok))
    print(f"official foreground non-empty and covering the face: {sum(foreground_ok)}/"
          f"{len(foreground_ok)} samples ({share:.1%})")  # fmt: skip
    assert share >= 0.95
    with open(shared_faces / "pairs.csv", newline="") as f:
        pairs = list(csv.DictReader(f))
    assert len(pairs) == 280
    scores = np.array([float(emb[p["file_x"]] @ emb[p["file_y"]]) for p in pairs])
    same = np.array([p["decision"] == "Yes" for p in pairs])
    acc = _best_threshold_accuracy(scores, same)
    print(f"pair accuracy at the best single cosine threshold: {acc:.4f}")
    assert acc >= 0.99
