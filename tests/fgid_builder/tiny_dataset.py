"""A small dataset in the layout `fgid build` writes (plan, shards + stats, index parts, index,
build.json), made with the builder's own plan, shard, stats and index functions, without Ray
or models: photos are small files of distinct bytes, samples carry identity-structured random
embeddings (three people), so erase and opt-out logic is tested in the default suite."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from fgid_builder.index import rows_table, sample_row, table_bytes, write_index
from fgid_builder.schema import dumps_json, make_key, npy_bytes
from fgid_builder.shards import atomic_write_bytes, shard_stats, write_shard, write_stats

EMBEDDER = {"name": "dlib-resnet-v1-128", "version": "test", "weights_sha256": None}
# photo -> the people in it, face 0 first; "c" is in one photo only, beside "a"
PHOTOS = {
    "p0.jpg": ["a"],
    "p1.jpg": ["b"],
    "p2.jpg": ["a"],
    "p3.jpg": ["b"],
    "p4.jpg": ["a", "c"],
    "p5.jpg": ["b"],
    "p6.jpg": ["b"],
    "p7.jpg": ["b"],
    "p8.jpg": ["b"],
}


def make_tiny_dataset(root: Path, *, shard_size: int = 3) -> tuple[Path, dict[str, str]]:
    """(OUT, key -> person)."""
    from pipelines.plan import list_inputs, make_plan, planned_images, write_plan

    inputs, out = root / "photos", root / "out"
    inputs.mkdir(parents=True)
    for name in PHOTOS:
        (inputs / name).write_bytes(hashlib.sha256(name.encode()).digest() * 8)
    for sub in ("shards", "index_parts", "logs"):
        (out / sub).mkdir(parents=True)
    plan = make_plan(list_inputs(inputs), shard_size=shard_size, base=str(inputs))
    write_plan(out / "plan.parquet", plan)
    rng = np.random.default_rng(0)
    centre = {p: rng.normal(size=128) for p in "abc"}
    person_of: dict[str, str] = {}
    by_shard: dict[str, list] = {}
    for img in planned_images(plan):
        by_shard.setdefault(img["shard"], []).append(img)
    all_rows = []
    for shard, images in sorted(by_shard.items()):
        members, rows = [], []
        for img in images:
            for face, person in enumerate(PHOTOS[img["source_uri"]]):
                key = make_key(img["source_sha256"], face)
                person_of[key] = person
                v = centre[person] + rng.normal(scale=0.05, size=128)
                v = (v / np.linalg.norm(v)).astype(np.float32)
                meta = {
                    "key": key,
                    "source": {"uri": img["source_uri"], "sha256": img["source_sha256"]},
                    "face": {"index": face},
                    "models": {"embed": EMBEDDER},
                    "embedding": {"dim": 128},
                }
                members.append(
                    {
                        "__key__": key,
                        "json": dumps_json(meta),
                        "id.npy": npy_bytes(v),
                        "jpg": b"\xff\xd8" + key.encode(),
                    }
                )
                rows.append(sample_row(meta, shard=shard))
        tar = write_shard(out / "shards" / f"{shard}.tar", members)
        part = table_bytes(rows_table(rows))
        atomic_write_bytes(out / "index_parts" / f"{shard}.parquet", part)
        write_stats(
            out / "shards" / f"{shard}.json",
            shard_stats(
                int(shard),
                tar=tar,
                images=len(images),
                reject_reasons=[],
                index_part={
                    "name": f"index_parts/{shard}.parquet",
                    "rows": len(rows),
                    "sha256": hashlib.sha256(part).hexdigest(),
                },
            ),
        )
        all_rows += rows
    write_index(out / "index.parquet", all_rows)
    (out / "build.json").write_text(
        json.dumps({"backends": {"detect": "dlib", "embed": "dlib"}, "min_face": 64})
    )
    return out, person_of
