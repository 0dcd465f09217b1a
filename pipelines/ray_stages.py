"""The Ray Data stages of `fgid build`: thin wrappers over fgid_builder; workers write the shards.

The unit of work is a shard: the Ray dataset has one row per shard of the plan (its images as
JSON), so the plan alone decides which image goes in which shard. Each actor pool processes a
whole shard per call, `batch_size` images (or faces) at a time through its stages; the pool
holding the last stage (`encode`) encodes every sample once into its WebDataset members, applies
the opt-out lists, and writes and commits the shard itself
(`fgid_builder.dataset.Dataset.write_shard` on OUT's URL: tar, index part, commit record last).
What comes back to the driver is the commit record (the stats JSON: counts and keys, a few
dozen bytes per sample), never sample bytes.

Stages, in order: `detect` (read or download + decode + detect + gates + align: one image in,
one row per face or one reject row out), `parse`, `embed`, `caption`, `encode`. A failure on one
image or face turns that row into a reject (status + reason + detail); it never fails the Ray
block. Only a `ModelFileError` (the run cannot work at all) propagates.

Stages run as actor pools (`map_batches` with a callable class): the backend configuration is
shipped, the model is loaded once per actor. With `fuse` (the default on CPU) consecutive CPU
stages share one pool, so a face is not serialised between stages; a stage given GPUs
(`gpus={"embed": 1}`), its own batch size or CPUs per actor, or any stage with `--no-fuse`, gets
its own pool and its own concurrency; between pools a shard's in-flight faces travel as one
binary value (Ray's object store, in memory only). Per-stage settings come from
`fgid_builder.stage_resources.StageResources` (`--stage-config` YAML and per-stage flags); each
backend is constructed with `models_dir` plus that stage's `options`.
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from fgid_builder.faces import DEFAULT_MAX_FACES, DEFAULT_MIN_FACE
from fgid_builder.fetch import Fetcher, FetchPolicy
from fgid_builder.schema import ImageRejected, ModelFileError, Reason

STAGE_NAMES: tuple[str, ...] = ("detect", "parse", "embed", "caption", "encode")

INPUT_SCHEMA = pa.schema(
    [
        ("order", pa.int64()),
        ("shard", pa.string()),
        ("source_uri", pa.string()),
        ("path", pa.string()),
        ("path_bytes", pa.binary()),  # raw bytes of a path that is not UTF-8, else null
        ("source_sha256", pa.string()),
        ("source_bytes", pa.int64()),
        ("extra", pa.string()),  # a manifest row's pass-through columns (JSON), or null
    ]
)
# One row per shard between pools: its images (JSON plan rows), and once a pool has run, the
# in-flight rows of its faces (`state`, transport only, never written to disk).
SHARD_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("images", pa.int64()),  # planned images in the shard
        ("inputs", pa.string()),  # JSON list of the shard's image rows (INPUT_SCHEMA)
        ("state", pa.large_binary()),
        ("worker_seconds", pa.float64()),  # stage work so far, summed over pools
    ]
)
# What the last pool returns to the driver: the commit record, nothing else.
RESULT_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("record", pa.string()),  # the shard's stats JSON as committed
        ("worker_seconds", pa.float64()),
    ]
)


@dataclass(frozen=True)
class StageSettings:
    """What every stage needs to know; small and picklable (Ray ships it to the actors)."""

    backends: dict[str, str]  # stage -> "module:Class", resolved in the driver (plug-ins too)
    models_dir: str | None = None
    min_face: int = DEFAULT_MIN_FACE
    max_faces: int = DEFAULT_MAX_FACES
    # stage -> backend constructor kwargs (`--captioner-option model=...`, YAML `options:`)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetch: FetchPolicy = field(default_factory=FetchPolicy)  # how inputs are read/downloaded
    out: str | None = None  # the dataset (local path or URL) the encoding pool commits into
    exclusions: Any = None  # fgid_builder.optout.Exclusions applied before a commit, or None


def backend_targets(backends: dict[str, str]) -> dict[str, str]:
    """stage -> backend name  =>  stage -> "module:Class", so actors need no registration."""
    from fgid_builder import registry

    out = {}
    for stage, name in backends.items():
        cls = registry.backend_class(stage, name)
        out[stage] = f"{cls.__module__}:{cls.__qualname__}"
    return out


def stage_settings(
    cfg: Any,
    *,
    stages: Sequence[str] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    **extra: Any,
) -> StageSettings:
    """What the stages get from a `fgid_builder.settings.BackendSettings` (the config of
    `fgid build` and of `fgid stage` alike): the backends of `stages` (default: all), the
    models folder, the face gates, the backends' options."""
    backends = cfg.backends()
    chosen = {s: backends[s] for s in (stages or backends)}
    return StageSettings(
        backends=backend_targets(chosen),
        models_dir=cfg.models_dir,
        min_face=cfg.min_face,
        max_faces=cfg.max_faces,
        options={s: o for s, o in (options or {}).items() if o},
        **extra,
    )


def create_backend(settings: StageSettings, stage: str) -> Any:
    """Instantiate and load one stage's backend inside the actor."""
    import importlib

    module, _, cls_name = settings.backends[stage].partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    backend = cls(models_dir=settings.models_dir, **settings.options.get(stage, {}))
    backend.load()
    return backend


# --------------------------------------------------------------------------- rows


def _reject(row: dict[str, Any], reason: Reason | str, detail: str, **figures: Any) -> dict:
    from fgid_builder.index import reject_row

    row = dict(row)
    row["status"] = "rejected"
    row["sample"] = None
    row["index_row"] = json.dumps(
        reject_row(
            source_uri=row["source_uri"],
            reason=reason,
            detail=detail,
            source_sha256=row["source_sha256"],
            source_bytes=row["source_bytes"],
            shard=row["shard"],
            extra=row.get("extra"),
            **figures,
        ),
        sort_keys=True,
    )
    return row


def _error_detail(stage: str, e: BaseException) -> str:
    return f"{stage}: {type(e).__name__}: {e}"


def pack_inputs(rows: Sequence[dict[str, Any]]) -> str:
    """A shard's image rows (INPUT_SCHEMA) as JSON; raw path bytes as hex."""
    return json.dumps(
        [dict(r, path_bytes=None if r.get("path_bytes") is None else r["path_bytes"].hex())
         for r in rows]
    )  # fmt: skip


def unpack_inputs(data: str) -> list[dict[str, Any]]:
    rows = json.loads(data)
    for r in rows:
        if r.get("path_bytes") is not None:
            r["path_bytes"] = bytes.fromhex(r["path_bytes"])
    return rows


def pack_state(rows: Sequence[dict[str, Any]]) -> bytes:
    """A shard's in-flight rows as one value between actor pools (in memory only: Ray's object
    store carries it from one worker to the next; nothing of it is written to disk)."""
    return pickle.dumps(list(rows), protocol=5)


def unpack_state(data: bytes) -> list[dict[str, Any]]:
    return pickle.loads(data) if data else []


def write_shard_rows(
    dataset: Any, shard: str, rows: Sequence[dict[str, Any]], images: int, exclusions: Any = None
) -> dict[str, Any]:
    """Commit a shard from its final rows (`encode` output, opted-out faces turned into
    rejects first); returns the commit record."""
    if exclusions is not None:
        from pipelines.optout_hooks import opt_out_rows

        rows = opt_out_rows(list(rows), exclusions)
    samples = [r["members"] for r in rows if r["status"] == "ok"]
    index_rows = [json.loads(r["index_row"]) for r in rows]
    return dataset.write_shard(shard, samples, index_rows, images=images)


# --------------------------------------------------------------------------- stages


class DetectStage:
    """Read, decode (EXIF-upright RGB), detect, gate and align: image rows -> face rows."""

    name = "detect"

    def __init__(self, settings: StageSettings):
        from fgid_builder.faces import FaceGates

        self.settings = settings
        self.gates = FaceGates(min_face=settings.min_face, max_faces=settings.max_faces)
        self.backend = create_backend(settings, "detect")
        self.model = self.backend.model_info().to_json()
        self.fetcher = Fetcher(settings.fetch)

    def _decode(self, row: dict[str, Any]):
        """The row's `data` (input bytes carried in the row, as `fgid stage` does) when present,
        else the file or URL at `path` (downloaded again: the plan keeps only its hash);
        checked against the planned hash either way."""
        from fgid_builder.io import decode_image
        from fgid_builder.schema import sha256_bytes
        from pipelines.plan import row_path

        data = row.get("data")
        if data is None:
            data = self.fetcher.read(row_path(row))
            if sha256_bytes(data) != row["source_sha256"]:
                raise ImageRejected(
                    Reason.CHANGED_SINCE_PLAN,
                    f"{len(data)} bytes, sha256 {sha256_bytes(data)[:16]}; planned "
                    f"{row['source_bytes']} bytes, sha256 {row['source_sha256'][:16]}",
                )
        elif sha256_bytes(data) != row["source_sha256"]:
            raise ImageRejected(Reason.ERROR, "the input bytes do not match their hash")
        return decode_image(data)

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        decoded: dict[int, Any] = {}
        out_by_image: dict[int, list[dict[str, Any]]] = {}
        for i, row in enumerate(rows):
            try:
                decoded[i] = self._decode(row)
            except ImageRejected as e:
                out_by_image[i] = [_reject(row, e.reason, e.detail)]
            except MemoryError as e:
                out_by_image[i] = [_reject(row, Reason.TOO_LARGE, _error_detail("decode", e))]
            except Exception as e:  # noqa: BLE001 - a bad image is a value, the reason kept
                out_by_image[i] = [_reject(row, Reason.ERROR, _error_detail("decode", e))]
        detections = self._detect(decoded)
        for i, dets in detections.items():
            row, img = rows[i], decoded[i]
            if isinstance(dets, BaseException):
                out_by_image[i] = [
                    _reject(row, Reason.ERROR, _error_detail("detect", dets),
                            width=img.width, height=img.height)
                ]  # fmt: skip
                continue
            out_by_image[i] = self._faces(row, img, dets)
        decoded.clear()
        result: list[dict[str, Any]] = []
        for i in range(len(rows)):
            image_rows = out_by_image[i]
            for j, r in enumerate(image_rows):
                r["row_index"] = j
                r["image_rows"] = len(image_rows)
                result.append(r)
        return result

    def _detect(self, decoded: dict[int, Any]) -> dict[int, Any]:
        if not decoded:
            return {}
        idx = sorted(decoded)
        try:
            found = self.backend.detect([decoded[i].rgb for i in idx])
            return dict(zip(idx, found, strict=True))
        except ModelFileError:
            raise
        except Exception:  # noqa: BLE001 - retry one by one to find the image at fault
            out: dict[int, Any] = {}
            for i in idx:
                try:
                    out[i] = self.backend.detect([decoded[i].rgb])[0]
                except ModelFileError:
                    raise
                except Exception as e:  # noqa: BLE001
                    out[i] = e
            return out

    def _faces(self, row: dict[str, Any], img: Any, dets: list) -> list[dict[str, Any]]:
        from fgid_builder.faces import faces_from_detections

        size = {"width": img.width, "height": img.height}
        try:
            samples, rejects = faces_from_detections(
                img,
                dets,
                source={
                    "uri": row["source_uri"],
                    "sha256": row["source_sha256"],
                    "extra": json.loads(row["extra"]) if row.get("extra") else {},
                },
                gates=self.gates,
            )
        except ImageRejected as e:
            return [_reject(row, e.reason, e.detail, **size)]
        except Exception as e:  # noqa: BLE001
            return [_reject(row, Reason.ERROR, _error_detail("align", e), **size)]
        out: list[tuple[int, dict[str, Any]]] = []
        for face_index, reason, detail in rejects:
            r = _reject(row, reason, detail, face_index=face_index, **size)
            out.append((-1 if face_index is None else face_index, r))
        for s in samples:
            s.models["detect"] = self.model
            r = dict(row, status="ok", sample=s)
            out.append((int(s.face["index"]), r))
        return [r for _, r in sorted(out, key=lambda t: t[0])]


class _FaceStage:
    """parse / embed / caption: one batch call over the `ok` faces (fgid_builder.process's
    stage functions, so the output equals the in-process `ImageProcessor`'s); if the batch
    fails, face by face, so only the face at fault becomes a reject."""

    name = ""

    def __init__(self, settings: StageSettings):
        self.settings = settings
        self.backend = create_backend(settings, self.name)

    def fill(self, samples: list) -> None:  # pragma: no cover - per stage
        raise NotImplementedError

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        live = [i for i, r in enumerate(rows) if r["status"] == "ok"]
        if not live:
            return rows
        try:
            self.fill([rows[i]["sample"] for i in live])
            return rows
        except ModelFileError:
            raise
        except Exception:  # noqa: BLE001 - isolate the face at fault
            pass
        out = list(rows)
        for i in live:
            try:
                self.fill([rows[i]["sample"]])
            except ModelFileError:
                raise
            except Exception as e:  # noqa: BLE001 - a failing face is a value, reason kept
                reason = e.reason if isinstance(e, ImageRejected) else Reason.ERROR
                out[i] = _face_reject(rows[i], reason, _error_detail(self.name, e))
        return out


def _face_reject(row: dict[str, Any], reason: Reason, detail: str) -> dict[str, Any]:
    s = row["sample"]
    face = s.face
    return _reject(
        row,
        reason,
        detail,
        face_index=int(face["index"]),
        width=s.source.get("width"),
        height=s.source.get("height"),
        det_score=face.get("det_score"),
        bbox=face.get("bbox"),
    )


class ParseStage(_FaceStage):
    name = "parse"

    def fill(self, samples: list) -> None:
        from fgid_builder.process import parse_samples

        parse_samples(self.backend, samples)


class EmbedStage(_FaceStage):
    name = "embed"

    def fill(self, samples: list) -> None:
        from fgid_builder.process import embed_samples

        embed_samples(self.backend, samples)


class CaptionStage(_FaceStage):
    name = "caption"

    def fill(self, samples: list) -> None:
        from fgid_builder.process import caption_samples

        caption_samples(self.backend, samples)


class EncodeStage:
    """The sample's WebDataset members (encoded once, written into the shard by the same
    worker) and its index row."""

    name = "encode"

    def __init__(self, settings: StageSettings):
        self.settings = settings

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from fgid_builder.encode import encode_sample
        from fgid_builder.index import sample_row

        out = []
        for row in rows:
            if row["status"] != "ok":
                out.append(row)
                continue
            try:
                members = encode_sample(row["sample"])
                meta = json.loads(members["json"])
                index = sample_row(meta, shard=row["shard"])
                index["source_bytes"] = row["source_bytes"]
            except Exception as e:  # noqa: BLE001
                out.append(_face_reject(row, Reason.ERROR, _error_detail("encode", e)))
                continue
            out.append(
                dict(row, sample=None, members=members, index_row=json.dumps(index, sort_keys=True))
            )
        return out


STAGE_CLASSES: dict[str, type] = {
    "detect": DetectStage,
    "parse": ParseStage,
    "embed": EmbedStage,
    "caption": CaptionStage,
    "encode": EncodeStage,
}


class StagePool:
    """The callable class of one actor pool: runs its stages over each shard, `batch_size`
    rows at a time; the pool holding `encode` writes and commits the shard."""

    def __init__(self, settings: StageSettings, stages: Sequence[str], batch_size: int):
        self.settings = settings
        self.stages = [STAGE_CLASSES[name](settings) for name in stages]
        self.first_is_detect = stages[0] == "detect"
        self.writes = stages[-1] == "encode"
        self.batch_size = max(1, int(batch_size))
        self.dataset = None
        if self.writes:
            from fgid_builder.dataset import Dataset

            if settings.out is None:
                raise ValueError("the pool that encodes needs the dataset URL to write into")
            self.dataset = Dataset(settings.out)

    def run(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The stages over `rows`, `batch_size` at a time (the outputs in input order)."""
        done: list[dict[str, Any]] = []
        for i in range(0, len(rows), self.batch_size):
            chunk = rows[i : i + self.batch_size]
            for stage in self.stages:
                chunk = stage.process(chunk)
            done.extend(chunk)
        return done

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for shard_row in batch.to_pylist():
            start = time.perf_counter()
            if self.first_is_detect:
                rows = unpack_inputs(shard_row["inputs"])
            else:
                rows = unpack_state(shard_row["state"])
            rows = self.run(rows)
            if self.writes:
                record = write_shard_rows(self.dataset, shard_row["shard"], rows,
                                          shard_row["images"], self.settings.exclusions)  # fmt: skip
                seconds = (shard_row["worker_seconds"] or 0.0) + time.perf_counter() - start
                out.append({
                    "shard": shard_row["shard"],
                    "record": json.dumps(record, sort_keys=True),
                    "worker_seconds": seconds,
                })  # fmt: skip
            else:
                seconds = (shard_row["worker_seconds"] or 0.0) + time.perf_counter() - start
                out.append(dict(shard_row, inputs="", state=pack_state(rows),
                                worker_seconds=seconds))  # fmt: skip
        schema = RESULT_SCHEMA if self.writes else SHARD_SCHEMA
        return pa.Table.from_pylist(out, schema=schema)


# --------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class PoolSpec:
    stages: tuple[str, ...]
    concurrency: int
    num_cpus: float
    num_gpus: float
    batch_size: int | None = None  # None: the run's default (`--batch-size`)


def plan_pools(
    *,
    workers: int,
    fuse: bool,
    concurrency: dict[str, int] | None = None,
    gpus: dict[str, float] | None = None,
    batch_sizes: dict[str, int] | None = None,
    cpus: dict[str, float] | None = None,
) -> list[PoolSpec]:
    """Group the stages into actor pools and size them so their CPU asks fit in `workers`.

    A stage with GPUs, its own batch size or its own CPUs per actor runs alone in its pool;
    with `fuse` the other consecutive stages share one pool."""
    concurrency = concurrency or {}
    gpus = gpus or {}
    batch_sizes = batch_sizes or {}
    cpus = cpus or {}
    on_gpu = {name: gpus.get(name, 0.0) > 0 for name in STAGE_NAMES}
    alone = {n: on_gpu[n] or n in batch_sizes or n in cpus for n in STAGE_NAMES}
    groups: list[list[str]] = []
    for name in STAGE_NAMES:
        if not fuse or alone[name] or not groups or alone[groups[-1][0]]:
            groups.append([name])
        else:
            groups[-1].append(name)
    sizes = []
    for g in groups:
        default = workers if (fuse or g[0] == "detect") else 1
        sizes.append(max(concurrency.get(n, default) for n in g))
    cpu_pools = [
        s for g, s in zip(groups, sizes, strict=True) if not on_gpu[g[0]] and g[0] not in cpus
    ]
    total = sum(cpu_pools) or 1
    per_actor = min(1.0, workers / total)

    def num_cpus(stage: str) -> float:
        if stage in cpus:
            return float(cpus[stage])
        return 0.0 if on_gpu[stage] else per_actor

    return [
        PoolSpec(
            stages=tuple(g),
            concurrency=s,
            num_cpus=num_cpus(g[0]),
            num_gpus=float(gpus.get(g[0], 0.0)),
            batch_size=batch_sizes.get(g[0]) if len(g) == 1 else None,
        )
        for g, s in zip(groups, sizes, strict=True)
    ]


MAX_INPUT_BLOCKS = 8192  # blocks of the input dataset (driver time grows with the count)


def hash_on_ray(fetch: FetchPolicy, *, workers: int, paths_per_task: int = 512, threads: int = 4):
    """A `pipelines.plan.make_plan` hasher that hashes (and downloads) on the Ray cluster: each
    batch of paths is cut into tasks of `paths_per_task`, at most 2 x `workers` in flight; the
    results come back in order (the plan does not depend on where or when a path was hashed),
    a small record batch per task (sha256, size, reason, detail), never the bytes."""
    import collections

    import ray

    import pipelines.plan as plan

    task = ray.remote(num_cpus=1, max_retries=3)(plan.hash_paths)

    def run(batches):
        pending: collections.deque = collections.deque()
        for paths in batches:
            parts = [paths[i : i + paths_per_task] for i in range(0, len(paths), paths_per_task)]
            refs = [task.remote(p, fetch, threads) for p in parts]
            pending.append(refs)
            while sum(len(r) for r in pending) > 2 * max(1, workers) and len(pending) > 1:
                yield _concat_hashes(ray.get(pending.popleft()))
        while pending:
            yield _concat_hashes(ray.get(pending.popleft()))

    return run


def _concat_hashes(batches: list[pa.RecordBatch]) -> pa.Table:
    from pipelines.plan import HASH_COLUMNS

    return pa.Table.from_batches(batches, schema=HASH_COLUMNS)


def build_dataset(images: list[dict[str, Any]], cfg: Any, *, workers: int, out: str):
    """The Ray dataset of commit records for `images` (plan rows), one row per shard, lazily
    executed; its last pool writes and commits each shard into the dataset at `out`."""
    import ray
    from ray.data import ActorPoolStrategy

    res = cfg.resources
    settings = stage_settings(
        cfg,
        options=cfg.backend_options(),
        fetch=cfg.fetch_policy(),
        out=out,
        exclusions=cfg.exclusions,
    )
    by_shard: dict[str, list[dict[str, Any]]] = {}
    for r in images:
        by_shard.setdefault(r["shard"], []).append({k: r.get(k) for k in INPUT_SCHEMA.names})
    items = [
        {"shard": shard, "images": len(rows), "inputs": pack_inputs(rows), "state": b"",
         "worker_seconds": 0.0}
        for shard, rows in sorted(by_shard.items())
    ]  # fmt: skip
    # One block per shard, at most MAX_INPUT_BLOCKS (each costs the driver ~1 ms in
    # `from_items`); every pool takes one shard per call whatever the blocks.
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), MAX_INPUT_BLOCKS)))
    pools = plan_pools(
        workers=workers,
        fuse=cfg.fuse,
        concurrency=res.concurrency_map(),
        gpus=res.gpus_map(),
        batch_sizes={s: r.batch_size for s, r in res.stages.items() if r.batch_size},
        cpus={s: r.num_cpus for s, r in res.stages.items() if r.num_cpus is not None},
    )
    for pool in pools:
        kwargs: dict[str, Any] = {}
        if pool.num_gpus:
            kwargs["num_gpus"] = pool.num_gpus
        ds = ds.map_batches(
            StagePool,
            fn_constructor_kwargs={
                "settings": settings,
                "stages": pool.stages,
                "batch_size": pool.batch_size or cfg.batch_size,
            },
            batch_size=1,
            batch_format="pyarrow",
            zero_copy_batch=True,
            # one shard queued per actor: a whole shard is a long task, and an actor holding
            # a second one while another actor idles would stretch the end of the run
            compute=ActorPoolStrategy(size=pool.concurrency, max_tasks_in_flight_per_actor=1),
            num_cpus=pool.num_cpus,
            **kwargs,
        )
    return ds
