"""Eval fixtures: a small dataset in `fgid build`'s layout, made in-process with the library."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fgid_builder.index import reject_row, sample_row, write_index
from fgid_builder.io import read_input
from fgid_builder.process import ImageProcessor
from fgid_builder.schema import dumps_json
from fgid_builder.shards import shard_stats, write_shard, write_stats


def build_dataset(photos: list[Path], out: Path, *, shard_size: int = 3) -> Path:
    """OUT/shards/NNNNNN.tar + .json and OUT/index.parquet, as `fgid build` lays them out,
    without Ray: one ImageProcessor in this process (the same stage functions)."""
    proc = ImageProcessor.default()
    (out / "shards").mkdir(parents=True)
    index_rows = []
    for shard_id, start in enumerate(range(0, len(photos), shard_size)):
        shard = f"{shard_id:06d}"
        members, reasons = [], []
        for path in photos[start : start + shard_size]:
            data = read_input(path)
            res = proc.process(data, str(path))
            for s, m in zip(res.samples, res.members, strict=True):
                members.append(m)
                index_rows.append(sample_row(s.to_json(), shard=shard))
            for face_index, reason, detail in res.rejects:
                figures = {}
                index_rows.append(
                    reject_row(
                        source_uri=str(path),
                        reason=reason,
                        detail=detail,
                        source_sha256=res.sha256,
                        face_index=face_index,
                        shard=shard,
                        **figures,
                    )
                )
                reasons.append(reason.value)
        tar = write_shard(out / "shards" / f"{shard}.tar", members)
        write_stats(
            out / "shards" / f"{shard}.json",
            shard_stats(
                shard_id,
                tar=tar,
                images=len(photos[start : start + shard_size]),
                reject_reasons=reasons,
            ),
        )
    write_index(out / "index.parquet", index_rows)
    (out / "build.json").write_bytes(dumps_json({"fixture": True}))
    return out


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory, shipped_photos) -> Path:
    """The shipped photos + a duplicate-looking copy, a non-image and a face-less image."""
    src = tmp_path_factory.mktemp("inputs")
    photos = []
    for p in shipped_photos:
        q = src / p.name
        shutil.copy(p, q)
        photos.append(q)
    # a re-encoded copy of the first photo: a near-duplicate for the identity section
    from PIL import Image

    im = Image.open(photos[0]).convert("RGB")
    im.save(src / "copy_of_first.jpg", quality=80)
    photos.append(src / "copy_of_first.jpg")
    (src / "notes.jpg").write_bytes(b"this is not an image")
    photos.append(src / "notes.jpg")
    Image.new("RGB", (320, 240), (90, 140, 200)).save(src / "sky.png")
    photos.append(src / "sky.png")
    return build_dataset(photos, tmp_path_factory.mktemp("demo_out") / "out")
