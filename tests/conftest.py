"""Shared fixtures: real face photos from installed packages and ../shared when present."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fgid_builder.demo import demo_photos

REPO = Path(__file__).resolve().parents[1]
SHARED_FACES = REPO.parent / "shared" / "data" / "faces" / "deepface"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """FGID_SLOW_DEADLINE (Unix seconds, set by .ci/run): a slow test that would start after it
    is skipped with that reason, so CI's slow tests end inside CI's own time limit however slow the
    machine is; each test is also bounded by pytest-timeout (.ci/run's --timeout)."""
    deadline = os.environ.get("FGID_SLOW_DEADLINE")
    if deadline and item.get_closest_marker("slow") and time.time() > float(deadline):
        pytest.skip("CI's time for slow tests is spent (FGID_SLOW_DEADLINE); run it with -m slow")


@pytest.fixture(scope="session")
def shipped_photos() -> list[Path]:
    """Face photos shipped inside installed packages (always available)."""
    return demo_photos()


@pytest.fixture(scope="session")
def shared_faces() -> Path:
    """The 64 deepface photos + pairs.csv beside the repo; skipped when absent."""
    if not (SHARED_FACES / "pairs.csv").is_file():
        pytest.skip(f"{SHARED_FACES} not present (the shared face photos are not in this checkout)")
    return SHARED_FACES


@pytest.fixture(scope="session")
def deepface_dataset(shared_faces, tmp_path_factory) -> Path:
    """The shared deepface photos built once with `fgid build` (embedded defaults, 4 shards of
    16 photos); tests that change it work on a copy."""
    import os
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("deepface") / "dataset"
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_ADDRESS="")
    cmd = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "build",
        str(shared_faces),
        str(out),
        "--workers",
        "2",
        "--shard-size",
        "16",
        "--no-progress",
        "--no-report",
    ]
    for _ in range(3):  # exit 3 on an overloaded machine (Ray did not start): rerun resumes
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
        if res.returncode != 3:
            break
    assert res.returncode == 0, res.stderr[-3000:]
    return out
