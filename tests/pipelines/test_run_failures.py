"""Failures of the run itself, on real file systems: a read-only OUT, a full OUT, a disk that
fills up while the QA report is written. Each ends with one line on stderr naming the cause
and the documented exit code (3 for a failed run), never a traceback.

The file systems are small tmpfs mounts made by the test (root only; skipped elsewhere)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def _fgid(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipelines.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs folder of that size, unmounted at the end."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or 'not root'})")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path, leave: int = 0) -> None:
    """Fill the file system of `folder` until `leave` bytes are free (0: full)."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(folder / "filler", "wb") as f:
        try:
            f.write(b"\0" * max(0, free - leave))
            f.flush()
            os.fsync(f.fileno())
        except OSError:
            pass


def _rejects_only_input(root: Path) -> Path:
    """An INPUT whose files are all rejects (the build needs no Ray)."""
    inp = root / "in"
    inp.mkdir()
    for i in range(3):
        (inp / f"text{i}.jpg").write_bytes(b"not a photo %d\n" % i * 50)
    return inp


def _one_line_failure(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 3, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("fgid build: the run failed: "), res.stderr
    for needle in needles:
        assert needle in last, last
    return last


@pytest.mark.integration
def test_read_only_out_is_a_one_line_failure_exit_3(tmpfs, tmp_path):
    fs = tmpfs("1m")
    (fs / "out").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    res = _fgid("build", str(_rejects_only_input(tmp_path)), str(fs / "out"), "--no-progress")
    _one_line_failure(res, "EROFS", "Read-only file system")


@pytest.mark.integration
def test_full_out_is_a_one_line_failure_exit_3(tmpfs, tmp_path):
    fs = tmpfs("256k")
    _fill(fs)
    res = _fgid("build", str(_rejects_only_input(tmp_path)), str(fs / "out"), "--no-progress")
    _one_line_failure(res, "ENOSPC", "No space left on device")


@pytest.mark.integration
def test_a_disk_full_during_the_report_keeps_the_dataset_and_the_summary(tmpfs, tmp_path):
    """The dataset is committed, then the disk fills while the report is written: the error
    handler itself survives (no traceback file needed), the half report is removed, the
    summary is written; the dataset is complete, so exit 0 (1 under --strict, tested in
    test_build.py)."""
    fs = tmpfs("4m")
    inp = _rejects_only_input(tmp_path)
    out = fs / "out"
    first = _fgid("build", str(inp), str(out), "--no-progress", "--no-report")
    assert first.returncode == 0, first.stderr
    index = (out / "index.parquet").stat().st_size
    _fill(fs, leave=index + 8192)  # room for the index to be rewritten, not for the plots
    res = _fgid("build", str(inp), str(out), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert "the QA report failed: OSError [ENOSPC] No space left on device" in res.stderr
    summary = json.loads((out / "logs" / "summary.json").read_text())
    assert "ENOSPC" in summary["report_error"] and summary["report"] is None
    assert not (out / "report").exists()
    assert (out / "index.parquet").stat().st_size == index


def _photo_folder(root: Path, n: int) -> Path:
    from tests.pipelines.inputs import _jpeg, _photos

    astro = _photos()["astronaut.png"]
    inp = root / "photos"
    inp.mkdir()
    for i in range(n):
        (inp / f"p{i:02d}.jpg").write_bytes(_jpeg(astro.resize((300 + 8 * i, 300 + 8 * i))))
    return inp


@pytest.mark.slow
@pytest.mark.integration
def test_out_filling_up_while_shards_are_written_is_exit_3(tmpfs, tmp_path):
    """Room for the plan, not for the shards: the commit fails with ENOSPC on Ray's watch."""
    fs = tmpfs("160k")
    inp = _photo_folder(tmp_path, 6)
    res = _fgid("build", str(inp), str(fs / "out"), "--no-progress", "--workers", "1",
                "--shard-size", "2", "--no-report")  # fmt: skip
    _one_line_failure(res, "ENOSPC")


@pytest.mark.slow
@pytest.mark.integration
def test_a_killed_raylet_is_a_one_line_failure_exit_3_and_the_rerun_resumes(tmp_path):
    """kill -9 of the raylet once the first shard is committed: Ray ends the driver from C++
    (no Python exception); the watching `fgid build` process says so in one line, exit 3;
    the same command then takes the stale lock over and finishes the dataset."""
    import contextlib
    import time

    import psutil

    inp = _photo_folder(tmp_path, 12)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipelines.cli", "build", str(inp), str(out), "--no-progress",
           "--workers", "1", "--shard-size", "2", "--no-report"]  # fmt: skip
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stderr_file:  # a file, not a pipe: Ray's chatter never blocks it
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr_file, env=_env(),
                                start_new_session=True)  # fmt: skip
        killed = False
        deadline = time.monotonic() + 480
        try:
            while proc.poll() is None and time.monotonic() < deadline and not killed:
                if (out / "shards" / "000000.json").exists():
                    for p in psutil.Process(proc.pid).children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            if p.name() == "raylet":
                                p.kill()
                                killed = True
                time.sleep(0.2)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
    stderr = err.read_text()
    assert killed, "the run ended before its raylet could be killed"
    res = subprocess.CompletedProcess(cmd, proc.returncode, "", stderr)
    _one_line_failure(res, "Ray raylet died")
    again = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert again.returncode == 0, again.stderr
    assert "shards 6 (" in again.stdout and not (out / ".fgid.lock").exists()
