"""The OUT lock: one run at a time, a one-line refusal (exit 2), stale locks taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fgid_builder.lock import LOCK_NAME, LockHeld, acquire, locked, release

REPO = Path(__file__).resolve().parents[2]
HOLD = (
    "import sys, time\n"
    "from fgid_builder.lock import locked\n"
    "with locked(sys.argv[1], 'test holder'):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_acquire_release_and_no_second_holder(tmp_path):
    out = tmp_path / "out"
    with locked(out) as path:
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(LockHeld, match=f"in use by another run: pid {os.getpid()}"):
            acquire(out)
    assert not (out / LOCK_NAME).exists()
    assert sorted(p.name for p in out.iterdir()) == []  # no temporary file left either


def test_a_stale_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = {"host": socket.gethostname(), "pid": _dead_pid(), "since": 0, "command": "killed"}
    (out / LOCK_NAME).write_text(json.dumps(stale))
    path = acquire(out)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    release(path)
    # a live pid whose start time differs: the pid was reused by a newer process
    reused = dict(stale, pid=os.getpid(), start_time=1)
    (out / LOCK_NAME).write_text(json.dumps(reused))
    release(acquire(out))


def test_another_hosts_lock_is_never_judged_stale(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": _dead_pid()}))
    with pytest.raises(LockHeld, match="on elsewhere"):
        acquire(out)
    (out / LOCK_NAME).write_text("")  # unreadable (half-written by hand): refused, not taken
    with pytest.raises(LockHeld, match="unreadable"):
        acquire(out)


@pytest.mark.integration
def test_a_second_fgid_build_on_a_held_out_exits_2_then_takes_a_stale_lock(tmp_path):
    """Two real processes: one holds OUT, `fgid build` into the same OUT is refused with one
    line and exit 2, touching nothing; once the holder is killed (-9, its lock left behind)
    the next build takes the stale lock over and finishes."""
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "empty.jpg").write_bytes(b"")  # a reject: the build needs no Ray
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        cmd = [sys.executable, "-m", "pipelines.cli", "build", str(inp), str(out), "--no-progress"]
        second = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
        assert second.returncode == 2, second.stderr
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith("fgid build: ") and f"pid {holder.pid}" in last
        assert "Traceback" not in second.stderr
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing else written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_NAME).exists()  # left by the killed holder
    third = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert third.returncode == 0, third.stderr
    assert not (out / LOCK_NAME).exists() and (out / "index.parquet").is_file()


def test_fgid_stage_holds_its_output_too(tmp_path):
    """`fgid stage` locks its output (beside a Parquet file, inside a dataset folder)."""
    from click.testing import CliRunner

    from pipelines.stages import stage_command

    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "empty.jpg").write_bytes(b"")
    out = tmp_path / "ingest.parquet"
    with locked(out, "another stage", is_file=True) as path:
        assert path == tmp_path / f".ingest.parquet{LOCK_NAME}"
        res = CliRunner().invoke(stage_command, ["ingest", str(inp), str(out), "--no-progress"])
    assert res.exit_code == 2 and "in use by another run" in res.output, res.output
    assert not out.exists()
    res = CliRunner().invoke(stage_command, ["ingest", str(inp), str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert out.is_file() and not path.exists()


@pytest.mark.slow
@pytest.mark.integration
def test_two_real_builds_into_one_out(tmp_path):
    """The issue's case: two `fgid build` runs with different inputs into one OUT. The second
    is refused (exit 2, one line) while the first runs; the first finishes alone, its index
    and shards agree."""
    import time

    from fgid_builder.index import read_index
    from fgid_builder.shards import iter_shard, shard_paths
    from tests.pipelines.inputs import _jpeg, _photos

    astro = _photos()["astronaut.png"]
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, sizes in ((a, range(300, 348, 8)), (b, range(400, 440, 8))):
        folder.mkdir()
        for s in sizes:
            (folder / f"p{s}.jpg").write_bytes(_jpeg(astro.resize((s, s))))
    out = tmp_path / "out"
    base = [sys.executable, "-m", "pipelines.cli", "build"]
    opts = ["--no-progress", "--no-report", "--workers", "1", "--shard-size", "2"]
    first = subprocess.Popen([*base, str(a), str(out), *opts], env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (out / LOCK_NAME).exists() and first.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        second = subprocess.run([*base, str(b), str(out), *opts], capture_output=True, text=True,
                                env=_env(), timeout=300)  # fmt: skip
        assert first.poll() is None, "the first run ended before the second one started"
        assert second.returncode == 2, second.stderr
        assert "in use by another run" in second.stderr.strip().splitlines()[-1]
        assert first.wait(timeout=600) == 0
    finally:
        if first.poll() is None:
            first.kill()
    rows = read_index(out / "index.parquet").to_pylist()
    assert {r["source_uri"] for r in rows} == {p.name for p in a.iterdir()}
    keys = sorted(m["__key__"] for t in shard_paths(out / "shards") for m in iter_shard(t))
    assert keys == sorted(r["key"] for r in rows if r["status"] == "ok")


@pytest.fixture
def s3_out(monkeypatch):
    """`s3://locks/out` on moto's standalone S3 server (a real HTTP server on a free port)."""
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "FSSPEC_S3_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(k, v)
    import fsspec

    fsspec.config.conf["s3"] = {"client_kwargs": {"endpoint_url": endpoint}}
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("locks")
    try:
        yield "s3://locks/out", fs
    finally:
        fsspec.config.conf.pop("s3", None)
        server.stop()


def test_an_object_store_out_is_locked_with_a_conditional_put(s3_out):
    url, fs = s3_out
    with locked(url) as lock:
        assert lock == f"s3://locks/out/{LOCK_NAME}"
        assert json.loads(fs.cat_file(lock))["pid"] == os.getpid()
        with pytest.raises(LockHeld, match=f"in use by another run: pid {os.getpid()}"):
            acquire(url)
    assert not fs.exists(f"locks/out/{LOCK_NAME}")
    # a stale lock object (this host, the process gone) is taken over
    stale = {"host": socket.gethostname(), "pid": _dead_pid(), "since": 0}
    fs.pipe_file(f"locks/out/{LOCK_NAME}", json.dumps(stale).encode())
    lock = acquire(url)
    assert json.loads(fs.cat_file(lock))["pid"] == os.getpid()
    release(lock)
    fs.pipe_file(f"locks/out/{LOCK_NAME}", json.dumps(dict(stale, host="elsewhere")).encode())
    with pytest.raises(LockHeld, match="on elsewhere"):
        acquire(url)


def test_a_lock_of_an_exited_but_unreaped_process_is_stale(tmp_path) -> None:
    """A run killed with kill -9 whose parent is gone too stays a zombie until something reaps
    it: its pid still answers kill(pid, 0), yet it holds nothing (the issue's kill -9 rerun)."""
    import time

    from fgid_builder import lock as lock_mod

    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while lock_mod._state(pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lock_mod._state(pid) == "Z"
        os.kill(pid, 0)  # the pid still exists
        holder = {"host": socket.gethostname(), "pid": pid, "start_time": None}
        assert lock_mod._is_stale(holder)
        out = tmp_path / "out"
        out.mkdir()
        (out / lock_mod.LOCK_NAME).write_text(json.dumps(holder))
        path = lock_mod.acquire(out, "test")
        assert json.loads(path.read_text())["pid"] == os.getpid()
        lock_mod.release(path)
    finally:
        os.waitpid(pid, 0)
