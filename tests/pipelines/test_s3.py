"""`fgid build` with INPUT and OUT on a real S3-compatible server (moto's standalone server,
started by the test on a free port; the client is the real s3fs/botocore stack, nothing mocked).

- `fgid build s3://fgid/photos/ s3://fgid/out/` writes the same plan, build.json, shards, commit
  records and index bytes as a local build of the same photos, and the training stream reads
  `s3://fgid/out/shards/*.tar` directly;
- a 2-node Ray cluster on this machine (two nodes of `ray.cluster_utils.Cluster`, free ports, a
  private temp dir), inputs and outputs only on the server: the same bytes again;
- a worker process killed with SIGKILL, then the driver (and all its Ray processes) killed with
  SIGKILL, during an S3 build; the same command again: identical bytes, no leftover objects, no
  key in two shards.

Slow (each build starts Ray in its own process); CI runs them with `-m slow`.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from fgid_builder.demo import demo_photos

pytestmark = [pytest.mark.slow, pytest.mark.integration]

FGID = [sys.executable, "-m", "pipelines.cli", "build"]
ARGS = ["--shard-size", "1", "--max-faces", "2", "--no-progress", "--batch-size", "2"]
BUCKET = "fgid"  # S3 bucket names have 3-63 characters (moto enforces it: no "b")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env():
    """moto's S3 server on a free port; the standard AWS variables point every client at it
    (this process, the `fgid build` subprocesses and the Ray workers they start)."""
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem(client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]}).mkdir(BUCKET)
        yield env
    server.stop()


def _fs():
    import s3fs

    return s3fs.S3FileSystem(
        client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}, skip_instance_cache=True
    )


@pytest.fixture(scope="module")
def photos(tmp_path_factory, s3_env) -> Path:
    """6 face photos at several (small: the test's time) sizes plus a few rejects, locally and
    under s3://fgid/photos/."""
    root = tmp_path_factory.mktemp("s3photos") / "photos"
    faces = [Image.open(p).convert("RGB") for p in demo_photos()[:2]]
    for i in range(6):
        im = faces[i % len(faces)]
        side = 256 + 16 * i
        im = im.resize((side, round(side * im.height / im.width)))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=88)
        (root / "faces").mkdir(parents=True, exist_ok=True)
        (root / "faces" / f"face_{i:02d}.jpg").write_bytes(buf.getvalue())
    (root / "bad").mkdir()
    (root / "bad" / "not_an_image.jpg").write_bytes(b"hello, not a jpeg\n" * 20)
    (root / "bad" / "empty.png").write_bytes(b"")
    (root / "bad" / "copy.jpg").write_bytes((root / "faces" / "face_00.jpg").read_bytes())
    (root / "notes.txt").write_text("skipped: no image suffix\n")
    fs = _fs()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            fs.pipe_file(f"{BUCKET}/photos/{p.relative_to(root).as_posix()}", p.read_bytes())
    return root


def _run(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_ADDRESS="")
    return subprocess.run(
        [*FGID, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _local_outputs(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.relative_to(out).parts[0] not in ("logs", "report")
    }


def _s3_objects(prefix: str) -> list[str]:
    """Every object key under s3://fgid/PREFIX/, relative to it."""
    base = f"{BUCKET}/{prefix}/"
    return sorted(k[len(base) :] for k in _fs().find(base))


def _s3_outputs(prefix: str) -> dict[str, bytes]:
    fs = _fs()
    return {
        k: fs.cat_file(f"{BUCKET}/{prefix}/{k}")
        for k in _s3_objects(prefix)
        if k.split("/", 1)[0] not in ("logs", "report")
    }


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("s3ref") / "out"
    res = _run([str(photos), str(out), "--workers", "2", "--no-report", *ARGS])
    assert res.returncode == 0, res.stderr[-3000:]
    return _local_outputs(out)


def test_s3_build_equals_the_local_build_and_trains_from_s3(photos, reference):
    res = _run([f"s3://{BUCKET}/photos/", f"s3://{BUCKET}/out/", "--workers", "2", *ARGS])
    assert res.returncode == 0, res.stderr[-3000:]
    got = _s3_outputs("out")
    assert sorted(got) == sorted(reference)
    assert {"plan.parquet", "build.json", "index.parquet"} <= set(got)
    assert [k for k in got if got[k] != reference[k]] == []
    # the QA report renders a local OUT only (never a local folder named "s3:")
    assert not [k for k in _s3_objects("out") if k.startswith("report/")]
    assert not Path("s3:").exists()

    from training.data import expand_shards, iter_shard

    urls = expand_shards(f"s3://{BUCKET}/out/shards/*.tar")
    assert urls and all(u.startswith(f"s3://{BUCKET}/out/shards/") for u in urls)
    keys = [raw["__key__"] for url in urls for raw in iter_shard(url)]  # verified vs records
    ok = _ok_keys(reference["index.parquet"])
    assert sorted(keys) == ok and len(ok) >= 4  # (2 small photos: no face found)
    _iterate_training_stream(urls, len(ok))


def _ok_keys(index_bytes: bytes) -> list[str]:
    import pyarrow.parquet as pq

    rows = pq.read_table(io.BytesIO(index_bytes)).to_pylist()
    return sorted(r["key"] for r in rows if r["status"] == "ok")


def _iterate_training_stream(urls: list[str], samples: int) -> None:
    """Every sample through training.data's stream (verify, decode, transform), from S3."""
    import training.data as td

    stream = td.FGIDStream(
        urls, lambda sample, epoch: {"key": sample.key}, batch_size=2, max_epochs=1
    )
    keys = [k for batch in stream for k in batch["key"]]
    assert len(keys) == len(set(keys)) and samples - 1 <= len(keys) <= samples
    assert stream.stats["unverified_shards"] == 0 and stream.stats["corrupt_samples"] == 0


@pytest.fixture
def ray_two_nodes(s3_env, tmp_path_factory):
    """Two Ray nodes on this machine (1 CPU each), head on a free port, private temp dir."""
    import tempfile

    from ray.cluster_utils import Cluster

    temp_dir = tempfile.mkdtemp(prefix="fgidc", dir="/tmp")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "gcs_server_port": _free_port(),
            "temp_dir": temp_dir,
            "include_dashboard": False,
        },
        shutdown_at_exit=True,
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


def test_two_node_cluster_on_s3_gives_the_same_bytes(photos, reference, ray_two_nodes):
    res = _run([f"s3://{BUCKET}/photos/", f"s3://{BUCKET}/out2/", "--address", ray_two_nodes,
                "--workers", "2", "--no-report", *ARGS], timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    got = _s3_outputs("out2")
    assert sorted(got) == sorted(reference)
    assert [k for k in got if got[k] != reference[k]] == []


def _committed(prefix: str) -> int:
    return sum(1 for k in _s3_objects(prefix) if k.startswith("shards/") and k.endswith(".json"))


def test_kill_9_of_a_worker_and_of_the_driver_then_resume(photos, reference):
    import psutil

    out = f"s3://{BUCKET}/out3/"
    args = [f"s3://{BUCKET}/photos/", out, "--workers", "2", "--no-report", *ARGS]
    total = sum(1 for k in reference if k.startswith("shards/") and k.endswith(".json"))
    proc = subprocess.Popen(
        [*FGID, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ, RAY_ADDRESS=""),
    )
    try:
        killed_worker = False
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            done = _committed("out3")
            if not killed_worker:
                workers = [
                    p
                    for p in psutil.Process(proc.pid).children(recursive=True)
                    if "StagePool" in " ".join(_cmdline(p))
                ]
                if workers and done >= 1:
                    workers[0].send_signal(signal.SIGKILL)  # an actor in the middle of a shard
                    killed_worker = True
            elif done >= total // 2:
                break
            time.sleep(0.2)
        assert killed_worker, "no stage worker to kill"
        assert proc.poll() is None, "the run finished before the driver could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        proc.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert 0 < _committed("out3") < total
    assert "index.parquet" not in _s3_objects("out3")

    res = _run(args)
    assert res.returncode == 0, res.stderr[-3000:]
    got = _s3_outputs("out3")
    assert sorted(got) == sorted(reference), "leftover or missing objects"
    assert [k for k in got if got[k] != reference[k]] == []
    assert [k for k in _s3_objects("out3") if ".tmp-" in k] == []
    from fgid_builder.dataset import Dataset

    keys = [m["__key__"] for _, m in Dataset(out).iter_samples()]
    assert keys and len(keys) == len(set(keys))


def _cmdline(p) -> list[str]:
    try:
        return p.cmdline()
    except Exception:  # noqa: BLE001 - a process that exited meanwhile
        return []
