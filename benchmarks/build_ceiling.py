"""The ceiling of `fgid build`'s transport and commit path, with the stage work taken out.

    python benchmarks/build_ceiling.py [--dataset OUT] [--samples 2000] [--shard-size 100]
                                       [--workers 2] [--rounds 2]

The samples of a built dataset (OUT; built from the `--demo` photos when not given) are
replayed: each actor hands out pre-computed results (the encoded members and index row of a
real sample, under a fresh key) instead of running models, so what is measured is what the
pipeline costs around the stages. Two paths run side by side in one Ray session, alternately:

- old: the path of commit dd58755 (main before the workers committed shards; reconstructed here
  from git): Ray Data rows of one image each, the last pool packs every sample into a
  one-sample tar that travels to the driver (`ds.iter_batches`), the driver unpacks it,
  assembles shards and writes tar + index part + stats itself;
- new: this checkout's path (`pipelines.ray_stages.StagePool`): one row per shard, the worker
  writes and commits the shard (`fgid_builder.dataset.Dataset.write_shard`), the driver gets
  the commit record only.

Prints per path: samples/s (wall, first row in to last commit; and steady, from the first
shard committed to the last, actor start-up excluded), the driver's CPU seconds and
the bytes it receives (Arrow batches from Ray) and writes per 1,000 samples, and bytes received
per sample. Targets: new >= 5x old samples/s; <= 2 KB received by the driver per sample.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402

from fgid_builder.dataset import Dataset  # noqa: E402

# --------------------------------------------------------------------------- replayed results


def load_replay(dataset: str) -> list[dict[str, Any]]:
    """(members, index row) of every sample of a built dataset: what the stages produced."""
    ds = Dataset(dataset)
    index = {r["key"]: r for r in ds.read_index().to_pylist() if r["status"] == "ok"}
    out = []
    for _, members in ds.iter_samples():
        out.append({"members": members, "index_row": index[members["__key__"]]})
    if not out:
        raise SystemExit(f"{dataset} holds no samples to replay")
    return out


def replay_key(order: int) -> str:
    return hashlib.sha256(f"replay-{order}".encode()).hexdigest()[:16] + "_f0"


def replayed_row(replay: list[dict[str, Any]], row: dict[str, Any]) -> tuple[dict, dict]:
    """The members and index row image `order` gets: a real sample's bytes, its own key."""
    src = replay[row["order"] % len(replay)]
    key = replay_key(row["order"])
    members = dict(src["members"], __key__=key)
    index_row = dict(src["index_row"], key=key, shard=row["shard"],
                     source_uri=f"replay/{row['order']:08d}.jpg")  # fmt: skip
    return members, index_row


def image_rows(n: int, shard_size: int) -> list[dict[str, Any]]:
    from fgid_builder.shards import shard_name

    return [
        {"order": i, "shard": shard_name(i // shard_size), "source_uri": f"replay/{i:08d}.jpg",
         "path": f"replay/{i:08d}.jpg", "path_bytes": None,
         "source_sha256": hashlib.sha256(str(i).encode()).hexdigest(), "source_bytes": 1}
        for i in range(n)
    ]  # fmt: skip


# --------------------------------------------------------------------------- old path (dd58755)

OLD_ROW_SCHEMA = pa.schema(
    [
        ("order", pa.int64()),
        ("shard", pa.string()),
        ("source_uri", pa.string()),
        ("path", pa.string()),
        ("path_bytes", pa.binary()),
        ("source_sha256", pa.string()),
        ("source_bytes", pa.int64()),
        ("extra", pa.string()),
        ("row_index", pa.int64()),
        ("image_rows", pa.int64()),
        ("status", pa.string()),
        ("index_row", pa.string()),
        ("state", pa.binary()),
        ("sample_tar", pa.binary()),
        ("worker_seconds", pa.float64()),
    ]
)


class OldReplayPool:
    """dd58755's fused StagePool with the stages replaced by replayed results: one image row
    in, its sample out as a one-sample tar + index row JSON (its old EncodeStage output)."""

    def __init__(self, dataset: str):
        self.replay = load_replay(dataset)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from fgid_builder.shards import tar_bytes

        start = time.perf_counter()
        out = []
        for row in batch.to_pylist():
            members, index_row = replayed_row(self.replay, row)
            data, _ = tar_bytes([members])
            out.append(
                {k: row.get(k) for k in OLD_ROW_SCHEMA.names}
                | {"row_index": 0, "image_rows": 1, "status": "ok", "state": b"",
                   "sample_tar": data, "index_row": json.dumps(index_row, sort_keys=True)}
            )  # fmt: skip
        share = (time.perf_counter() - start) / max(1, len(out))
        for r in out:
            r["worker_seconds"] = share
        return pa.Table.from_pylist(out, schema=OLD_ROW_SCHEMA)


@dataclass
class _ImageRows:
    expected: int = -1
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.expected >= 0 and len(self.rows) >= self.expected


class OldShardAssembler:
    """dd58755's `pipelines.build.ShardAssembler`."""

    def __init__(self, shard_images: dict[str, int]):
        self.expected_images = dict(shard_images)
        self._images: dict[str, dict[int, _ImageRows]] = {}
        self._done: dict[str, int] = {}

    def add(self, row: dict[str, Any]) -> str | None:
        shard = row["shard"]
        images = self._images.setdefault(shard, {})
        img = images.setdefault(int(row["order"]), _ImageRows())
        img.expected = int(row["image_rows"])
        img.rows.append(row)
        if img.done:
            self._done[shard] = self._done.get(shard, 0) + 1
            if self._done[shard] == self.expected_images[shard]:
                return shard
        return None

    def pop(self, shard: str) -> list[dict[str, Any]]:
        images = self._images.pop(shard)
        self._done.pop(shard)
        return [r for order in sorted(images) for r in images[order].rows]


def old_commit_shard(out: Path, shard: str, rows: list[dict[str, Any]], images: int) -> int:
    """dd58755's `pipelines.build.commit_shard` (driver side): untar each one-sample tar, write
    the shard tar, the index part and the stats JSON; returns the bytes written."""
    from fgid_builder.index import rows_table, table_bytes
    from fgid_builder.shards import (
        atomic_write_bytes,
        iter_tar_bytes,
        shard_stats,
        stats_bytes,
        write_shard,
    )

    samples = [next(iter(iter_tar_bytes(r["sample_tar"]))) for r in rows if r["status"] == "ok"]
    index_rows = [json.loads(r["index_row"]) for r in rows]
    tar = write_shard(out / "shards" / f"{shard}.tar", samples)
    part = table_bytes(rows_table(index_rows))
    atomic_write_bytes(out / "index_parts" / f"{shard}.parquet", part)
    stats = shard_stats(
        int(shard),
        tar=tar,
        images=images,
        reject_reasons=[],
        index_part={"name": f"index_parts/{shard}.parquet", "rows": len(index_rows),
                    "sha256": hashlib.sha256(part).hexdigest()},
    )  # fmt: skip
    data = stats_bytes(stats)
    atomic_write_bytes(out / "shards" / f"{shard}.json", data)
    return tar["bytes"] + len(part) + len(data)


def run_old(dataset: str, images: list[dict], out: Path, workers: int, batch: int) -> dict:
    import ray.data
    from ray.data import ActorPoolStrategy

    for sub in ("shards", "index_parts"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    for r in images:
        sizes[r["shard"]] = sizes.get(r["shard"], 0) + 1
    items = [{k: r.get(k) for k in OLD_ROW_SCHEMA.names[:8]} for r in images]
    t0, c0 = time.perf_counter(), time.process_time()
    ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // batch)))
    ds = ds.map_batches(
        OldReplayPool,
        fn_constructor_kwargs={"dataset": dataset},
        batch_size=batch,
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=2),
        num_cpus=1,
    )
    asm = OldShardAssembler(sizes)
    received = written = samples = 0
    marks: list[tuple[float, int]] = []  # (when a shard was committed, samples by then)
    for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        received += b.nbytes
        for row in b.to_pylist():
            shard = asm.add(row)
            if shard is not None:
                rows = asm.pop(shard)
                written += old_commit_shard(out, shard, rows, sizes[shard])
                samples += len(rows)
                marks.append((time.perf_counter(), samples))
    return _figures(samples, t0, c0, received, written, marks)


# --------------------------------------------------------------------------- new path


def _new_pool_class():
    """This checkout's StagePool with its stages replaced by the replayed results; its
    `__call__` (unpack the shard, run, write + commit in the worker, return the record) is
    the pipeline's own."""
    from pipelines.ray_stages import StagePool, StageSettings

    class NewReplayPool(StagePool):
        def __init__(self, dataset: str, out: str):
            self.settings = StageSettings(backends={}, out=out)
            self.stages = []
            self.first_is_detect = True
            self.writes = True
            self.batch_size = 4
            self.dataset = Dataset(out)
            self.replay = load_replay(dataset)

        def run(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            done = []
            for row in rows:
                members, index_row = replayed_row(self.replay, row)
                done.append(dict(row, status="ok", members=members,
                                 index_row=json.dumps(index_row, sort_keys=True)))  # fmt: skip
            return done

    return NewReplayPool


def run_new(dataset: str, images: list[dict], out: Path, workers: int) -> dict:
    import ray.data
    from ray.data import ActorPoolStrategy

    from pipelines.ray_stages import pack_inputs

    Dataset(out).prepare()
    by_shard: dict[str, list[dict]] = {}
    for r in images:
        by_shard.setdefault(r["shard"], []).append(r)
    t0, c0 = time.perf_counter(), time.process_time()
    items = [
        {"shard": s, "images": len(rows), "inputs": pack_inputs(rows), "state": b"",
         "worker_seconds": 0.0}
        for s, rows in sorted(by_shard.items())
    ]  # fmt: skip
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        _new_pool_class(),
        fn_constructor_kwargs={"dataset": dataset, "out": str(out)},
        batch_size=1,
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
        num_cpus=1,
    )
    received = samples = 0
    marks: list[tuple[float, int]] = []  # (when a commit record arrived, samples by then)
    for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        received += b.nbytes
        for row in b.to_pylist():
            samples += int(json.loads(row["record"])["samples"])
            marks.append((time.perf_counter(), samples))
    return _figures(samples, t0, c0, received, 0, marks)


def _figures(samples: int, t0: float, c0: float, received: int, written: int, marks: list) -> dict:
    """`samples_per_s`: first row in to last commit (actor start-up included); `steady_...`:
    the samples committed after the first shard over the time from it to the last one (the
    rate once the actors run, start-up excluded)."""
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    k = 1000 / max(1, samples)
    steady = 0.0
    if len(marks) > 1 and marks[-1][0] > marks[0][0]:
        steady = (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0])
    return {
        "samples": samples,
        "seconds": wall,
        "samples_per_s": samples / wall,
        "steady_samples_per_s": steady,
        "driver_cpu_s_per_1k": cpu * k,
        "driver_received_mb_per_1k": received * k / 1e6,
        "driver_written_mb_per_1k": written * k / 1e6,
        "received_bytes_per_sample": received / max(1, samples),
    }


def _same_bytes(a: Path, b: Path) -> bool:
    """Both paths wrote the same shards (tar bytes) for the same replayed samples."""
    ta = sorted(p.name for p in (a / "shards").glob("*.tar"))
    tb = sorted(p.name for p in (b / "shards").glob("*.tar"))
    return ta == tb and all(
        (a / "shards" / n).read_bytes() == (b / "shards" / n).read_bytes() for n in ta
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dataset", default=None, help="a built dataset to replay (default: --demo)")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4, help="old path: images per Ray block")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import ray

    tmp = Path(tempfile.mkdtemp(prefix="fgid-ceiling-"))
    try:
        dataset = args.dataset
        if dataset is None:
            import subprocess

            dataset = str(tmp / "demo")
            env = dict(os.environ, PYTHONPATH=str(REPO), RAY_ADDRESS="")
            subprocess.run([sys.executable, "-m", "pipelines.cli", "build", "--demo", dataset,
                            "--no-report", "--no-progress", "--workers", str(args.workers)],
                           check=True, env=env, capture_output=True)  # fmt: skip
        replay = load_replay(dataset)
        mean = sum(sum(len(v) for k, v in r["members"].items() if k != "__key__")
                   for r in replay) / len(replay)  # fmt: skip
        print(f"replaying {len(replay)} samples of {dataset} (mean {mean / 1e3:.1f} KB of "
              f"members), {args.samples} samples in shards of {args.shard_size}, "
              f"{args.workers} workers")  # fmt: skip
        ray.init(address="local", num_cpus=args.workers, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})  # fmt: skip
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        images = image_rows(args.samples, args.shard_size)
        warm = image_rows(2 * args.shard_size, args.shard_size)
        run_old(dataset, warm, tmp / "warm_old", args.workers, args.batch_size)
        run_new(dataset, warm, tmp / "warm_new", args.workers)
        results: dict[str, list[dict]] = {"old": [], "new": []}
        for i in range(args.rounds):
            for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
                out = tmp / f"{name}{i}"
                if name == "old":
                    results[name].append(
                        run_old(dataset, images, out, args.workers, args.batch_size)
                    )
                else:
                    results[name].append(run_new(dataset, images, out, args.workers))
        same = _same_bytes(tmp / "old0", tmp / "new0")
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    best = {k: max(v, key=lambda r: r["samples_per_s"]) for k, v in results.items()}
    cols = [
        ("samples/s", "samples_per_s", "{:.0f}"),
        ("steady samples/s", "steady_samples_per_s", "{:.0f}"),
        ("driver CPU s / 1k", "driver_cpu_s_per_1k", "{:.3f}"),
        ("driver recv MB / 1k", "driver_received_mb_per_1k", "{:.2f}"),
        ("driver write MB / 1k", "driver_written_mb_per_1k", "{:.1f}"),
        ("recv B / sample", "received_bytes_per_sample", "{:.0f}"),
    ]
    print(f"\nbest of {args.rounds} rounds each, old and new alternating:")
    print(f"{'path':<6}" + "".join(f"{c[0]:>22}" for c in cols))
    for name in ("old", "new"):
        print(f"{name:<6}" + "".join(f"{c[2].format(best[name][c[1]]):>22}" for c in cols))
    ratio = best["new"]["samples_per_s"] / best["old"]["samples_per_s"]
    steady = best["new"]["steady_samples_per_s"] / max(1e-9, best["old"]["steady_samples_per_s"])
    print(f"\nnew / old samples/s: {ratio:.1f}x, steady {steady:.1f}x (target >= 5x); new path receives "
          f"{best['new']['received_bytes_per_sample']:.0f} B per sample (target <= 2048); "
          f"same shard bytes from both paths: {same}")  # fmt: skip
    print(json.dumps({"old": results["old"], "new": results["new"], "ratio": ratio,
                      "steady_ratio": steady}))  # fmt: skip


if __name__ == "__main__":
    main()
