"""What `fgid build` shows on the terminal: fgid's progress bars and summary, never Ray's own
messages (the token-authentication banner, `core_worker.cc` warnings, Ray's log lines), which go
to OUT/logs/ray.log unless --verbose. Run as a real command in a subprocess (the terminal is
file descriptors 1 and 2, which Ray's C++ code writes to directly)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fgid_builder.demo import demo_photos

REPO = Path(__file__).resolve().parents[2]

# Ray's output as it reaches a terminal: its Python log format, its C++ log prefix
# ([time E pid tid] file.cc:line), worker output streamed to the driver ("(Actor pid=N)"), and
# the messages named in the issue.
RAY_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d [\d:,.]+\s+(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+\.py:\d+ -- "
    r"|^\[\d{4}-\d\d-\d\d [\d:,.]+ [DIWEF] \d+ \d+\] "
    r"|^\(\S+ pid=\d+"
    r"|core_worker\.cc|Token authentication|max_restarts",
    re.M,
)


def _ray_lines(text: str) -> list[str]:
    # tqdm redraws with \r; a Ray line can follow a bar on the same physical line
    lines = re.split(r"[\r\n]|\x1b\[A", text)
    return [ln for ln in lines if RAY_LINE.search(ln.strip())]


def _build(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    photos = tmp_path / "photos"
    photos.mkdir()
    src = next(p for p in demo_photos() if p.name == "grace_hopper.jpg")
    shutil.copyfile(src, photos / src.name)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("RAY_AUTH_MODE", None)  # Ray's default: it prints its token-authentication banner
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "pipelines.cli", "build", str(photos), str(out), "--workers", "1"]
    res = subprocess.run(
        [*cmd, "--no-report", *extra], capture_output=True, text=True, env=env, timeout=900
    )
    assert res.returncode == 0, f"rc={res.returncode}\n{res.stdout}\n{res.stderr[-3000:]}"
    return res, out


@pytest.mark.integration
def test_terminal_shows_fgid_output_and_ray_messages_go_to_the_log(tmp_path):
    res, out = _build(tmp_path)
    assert not _ray_lines(res.stdout + "\n" + res.stderr), _ray_lines(res.stdout + res.stderr)
    assert "images:" in res.stderr and "shards:" in res.stderr  # fgid's progress bars
    assert "faces written 1 this run" in res.stdout
    assert f"logs: {out / 'logs'}" in res.stdout
    ray_log = (out / "logs" / "ray.log").read_text()
    assert _ray_lines(ray_log), ray_log[-2000:]
    assert "Token authentication is enabled" in ray_log


@pytest.mark.slow
@pytest.mark.integration
def test_verbose_shows_ray_messages_on_the_terminal(tmp_path):
    """The same build with --verbose: Ray's messages reach the terminal (so the patterns above
    do match what Ray prints)."""
    res, out = _build(tmp_path, "--verbose")
    assert any("Token authentication" in ln for ln in _ray_lines(res.stderr)), res.stderr[-3000:]
    assert "faces written 1 this run" in res.stdout
