"""Training fixtures: FGID shards made from real photos by the builder library, the tiny config.

`fgid_shards` runs the builder's in-process chain (`ImageProcessor.default()`: dlib detection +
68 landmarks, landmark-polygon parsing, dlib ResNet embedding, measured-attribute captions,
`encode_sample`) on the photos shipped inside installed packages and writes the members with the
builder's shard writer: the same bytes `fgid build` writes, without starting Ray. The test that
runs `fgid build` itself is the slow overfit test on ../shared/data/faces/deepface.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "training" / "configs" / "tiny.yaml"


def build_samples(photos: list[Path]) -> list[dict]:
    """Encoded sample members of every face the builder finds in the photos."""
    from fgid_builder.process import ImageProcessor

    processor = ImageProcessor.default()
    members: list[dict] = []
    for photo in photos:
        members.extend(processor.process(photo.read_bytes(), photo.name).members)
    return sorted(members, key=lambda m: m["__key__"])


def write_shards(members: list[dict], folder: Path, num_shards: int) -> list[Path]:
    """`NNNNNN.tar` + its commit record `NNNNNN.json` (size, SHA-256), as `fgid build` does."""
    from fgid_builder.shards import shard_stats, write_shard, write_stats

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(num_shards):
        path = folder / f"{n:06d}.tar"
        part = members[n::num_shards]
        tar = write_shard(path, part)
        write_stats(
            folder / f"{n:06d}.json",
            shard_stats(n, tar=tar, images=len(part), reject_reasons=[]),
        )
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def face_samples(shipped_photos: list[Path]) -> list[dict]:
    samples = build_samples(shipped_photos)
    if len(samples) < 8:
        pytest.skip(f"the builder found only {len(samples)} faces in the shipped photos; need 8")
    return samples


@pytest.fixture(scope="session")
def fgid_shards(face_samples: list[dict], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four shards of real faces (at least 8 samples)."""
    folder = tmp_path_factory.mktemp("shards")
    paths = write_shards(face_samples, folder, 4)
    (folder / "keys.json").write_text(json.dumps([m["__key__"] for m in face_samples]))
    return paths


@pytest.fixture(scope="session")
def tiny_config_path() -> Path:
    return TINY_CONFIG
