"""Shared fixtures: real face photos from installed packages and ../shared when present."""

from __future__ import annotations

from pathlib import Path

import pytest

from fgid_builder.demo import demo_photos

REPO = Path(__file__).resolve().parents[1]
SHARED_FACES = REPO.parent / "shared" / "data" / "faces" / "deepface"


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
