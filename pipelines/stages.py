"""`fgid stage {ingest,detect,parse,embed,caption,shard} IN OUT`: one pipeline stage, Parquet in,
Parquet out, so DVC can cache, version and rerun each stage on its own.

The stages are the same objects `fgid build` runs on Ray (`pipelines.ray_stages`, over the
`fgid_builder` library), applied in process batch by batch; only the transport differs:

- ingest: the build's planning pass (`pipelines.plan`: sorted listing, hashing, dedup) plus the
  input bytes, one row per listed input (uris relative to an INPUT folder, never absolute);
- detect / parse / embed / caption: one row per face (or per rejected input/face, with its index
  row), the sample carried losslessly: portraits and masks as PNG, landmarks and embeddings as
  `.npy` bytes, everything else as JSON. No pickle;
- shard: encode, cut into shards of `--shard-size` images in input order, commit each shard
  with the build's own writer (tar, index part, stats JSON), merge `OUT/index.parquet`.

So with the same settings the staged path and `fgid build` write byte-identical shards and index.
Every Parquet file is written deterministically (fixed schema, row order, row groups and writer
options, no timestamps) and atomically (temporary name, fsync, rename).
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fgid_builder.schema import ImageRejected, ModelFileError, Reason
from fgid_builder.settings import BackendSettings
from pipelines.options import (
    backend_option,
    max_faces_option,
    min_face_option,
    models_dir_option,
    shard_size_option,
)

log = logging.getLogger("fgid.stage")

FACE_STAGES = ("detect", "parse", "embed", "caption")
STAGE_ORDER = ("ingest", *FACE_STAGES, "shard")
# The planning pass cuts shards here; the shard stage re-cuts with its own --shard-size, so a
# new shard size reruns only that stage.
_INGEST_SHARD_SIZE = 999_999

INGEST_SCHEMA = pa.schema(
    [
        pa.field("order", pa.int64(), nullable=False),  # position in the sorted input list
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # planned | rejected (plan's words)
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("source_sha256", pa.string()),
        pa.field("source_bytes", pa.int64()),
        pa.field("duplicate_of", pa.string()),
        pa.field("data", pa.binary()),  # the input's bytes (planned rows only)
    ]
)

FACE_SCHEMA = pa.schema(
    [
        pa.field("order", pa.int64(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("source_sha256", pa.string()),
        pa.field("source_bytes", pa.int64()),
        pa.field("planned", pa.bool_(), nullable=False),  # false: rejected while ingesting
        pa.field("row_index", pa.int64(), nullable=False),  # this row among its image's rows
        pa.field("image_rows", pa.int64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # ok | rejected
        pa.field("reason", pa.string()),
        pa.field("index_row", pa.string()),  # canonical JSON index row of a reject
        pa.field("key", pa.string()),
        pa.field("sample", pa.string()),  # JSON: every FaceSample field that is not an array
        pa.field("portrait", pa.binary()),  # PNG, 512x512 RGB
        pa.field("portrait_landmarks5", pa.binary()),  # .npy float32 (5, 2)
        pa.field("portrait_landmarks", pa.binary()),  # .npy float32 (68|106, 2)
        pa.field("mask", pa.binary()),  # PNG, 512x512 label map
        pa.field("embedding", pa.binary()),  # .npy float32 (D,)
    ]
)

# Fixed writer options: same rows + same pyarrow version => same bytes. Images are already
# compressed (PNG); zstd takes the rest.
_PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": False,
    "write_statistics": False,
    "data_page_version": "1.0",
    "version": "2.6",
}
_ROWS_PER_GROUP = 64  # rows per Parquet row group: bounds memory when a stage streams a file


# --------------------------------------------------------------------------- configuration


@dataclass
class StageConfig(BackendSettings):
    """Every `fgid stage` option, one field each (`fgid stage NAME --help` is the reference); the
    backends and face gates are `fgid_builder.settings.BackendSettings`, shared with
    `fgid build`."""

    stage: str
    input: str
    out: str
    batch_size: int | None = None  # None: the --stage-config batch_size of the stage, else 4
    shard_size: int = 1000
    threads: int = 2
    stats: str | None = None
    progress: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # this stage's backend options
    # shard: opt-out lists (fgid_builder.optout; `sha256`/`key` lines), as `fgid build --exclude`
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.stage not in STAGE_ORDER:
            raise click.UsageError(f"unknown stage {self.stage!r}; stages: {STAGE_ORDER}")
        if self.batch_size is None:
            self.batch_size = 4
        for name, value in (
            ("--batch-size", self.batch_size),
            ("--shard-size", self.shard_size),
            ("--threads", self.threads),
        ):
            if value < 1:
                raise click.UsageError(f"{name} must be >= 1")
        for error in self.settings_errors():
            raise click.UsageError(error)


# --------------------------------------------------------------------------- Parquet I/O


class _AtomicParquet:
    """A Parquet file written row group by row group to a temporary name, renamed at the end."""

    def __init__(self, path: str | os.PathLike, schema: pa.Schema):
        from fgid_builder.shards import temp_path_for

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.tmp = temp_path_for(self.path)
        self.writer = pq.ParquetWriter(self.tmp, schema, **_PARQUET_OPTIONS)
        self.rows = 0
        self._buffer: list[dict[str, Any]] = []

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Buffer rows; row groups are always `_ROWS_PER_GROUP` rows, whatever the batch size,
        so the file's bytes do not depend on how the stage was batched."""
        self._buffer.extend({c: r.get(c) for c in self.schema.names} for r in rows)
        self.rows += len(rows)
        while len(self._buffer) >= _ROWS_PER_GROUP:
            self._flush(self._buffer[:_ROWS_PER_GROUP])
            del self._buffer[:_ROWS_PER_GROUP]

    def _flush(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            table = pa.Table.from_pylist(rows, schema=self.schema)
            self.writer.write_table(table, row_group_size=_ROWS_PER_GROUP)

    def __enter__(self) -> _AtomicParquet:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        from fgid_builder.shards import fsync_dir

        if exc_type is None:
            self._flush(self._buffer)
        self.writer.close()
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            return
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)


def _read_batches(path: str | os.PathLike, schema: pa.Schema, rows: int) -> Iterator[list[dict]]:
    """Rows of a stage file in order, `rows` at a time, checked against the expected schema."""
    f = pq.ParquetFile(path)
    got = f.schema_arrow
    missing = [n for n in schema.names if n not in got.names]
    if missing:
        raise click.UsageError(
            f"{path} is not the output of the previous stage (missing columns {missing})"
        )
    for batch in f.iter_batches(batch_size=rows, columns=schema.names):
        yield batch.to_pylist()


def _num_rows(path: str | os.PathLike) -> int:
    return pq.ParquetFile(path).metadata.num_rows


# --------------------------------------------------------------------------- sample codec


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _unpng(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.array(im)


def _npy(arr: np.ndarray | None) -> bytes | None:
    from fgid_builder.schema import npy_bytes

    return None if arr is None else npy_bytes(np.ascontiguousarray(arr))


def _unnpy(data: bytes | None) -> np.ndarray | None:
    from fgid_builder.schema import load_npy

    return None if data is None else load_npy(data)


def _json(obj: Any) -> str:
    # Insertion order kept (not sorted): a sample reads back exactly as it was built.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def sample_columns(sample: Any) -> dict[str, Any]:
    """A FaceSample as FACE_SCHEMA columns: arrays lossless (PNG / .npy), the rest JSON."""
    captions = None if sample.captions is None else sample.captions.to_json()
    scalars = {
        "key": sample.key,
        "source": sample.source,
        "face": sample.face,
        "crop_affine": sample.crop_affine,
        "regions": sample.regions,
        "captions": captions,
        "models": sample.models,
    }
    return {
        "key": sample.key,
        "sample": _json(scalars),
        "portrait": _png(sample.portrait),
        "portrait_landmarks5": _npy(sample.portrait_landmarks5),
        "portrait_landmarks": _npy(sample.portrait_landmarks),
        "mask": None if sample.mask is None else _png(sample.mask),
        "embedding": _npy(sample.embedding),
    }


def sample_from_columns(row: dict[str, Any]) -> Any:
    """The FaceSample back from its columns, equal to the in-memory one of the fused path."""
    from fgid_builder.schema import Captions, FaceSample

    s = json.loads(row["sample"])
    return FaceSample(
        key=s["key"],
        source=s["source"],
        face=s["face"],
        crop_affine=s["crop_affine"],
        portrait=_unpng(row["portrait"]),
        portrait_landmarks5=_unnpy(row["portrait_landmarks5"]),
        portrait_landmarks=_unnpy(row["portrait_landmarks"]),
        mask=None if row["mask"] is None else _unpng(row["mask"]),
        embedding=_unnpy(row["embedding"]),
        regions=s["regions"],
        captions=None if s["captions"] is None else Captions.from_json(s["captions"]),
        models=s["models"],
    )


def _face_row_out(row: dict[str, Any]) -> dict[str, Any]:
    """A ray_stages row (sample object inside) -> a FACE_SCHEMA row."""
    out = {c: row.get(c) for c in FACE_SCHEMA.names if c not in ("reason", "index_row")}
    out["planned"] = bool(row.get("planned", True))
    if row["status"] == "ok":
        out.update(sample_columns(row["sample"]), reason=None, index_row=None)
    else:
        index_row = json.loads(row["index_row"])
        out.update(key=index_row.get("key"), reason=index_row["reason"], index_row=row["index_row"])
        for c in ("sample", "portrait", "portrait_landmarks5", "portrait_landmarks", "mask"):
            out[c] = None
        out["embedding"] = None
    return out


def _face_row_in(row: dict[str, Any]) -> dict[str, Any]:
    """A FACE_SCHEMA row -> the row shape `pipelines.ray_stages` stages take."""
    out = {
        "order": row["order"],
        "shard": None,  # assigned by the shard stage
        "source_uri": row["source_uri"],
        "path": row["source_uri"],
        "source_sha256": row["source_sha256"],
        "source_bytes": row["source_bytes"],
        "planned": row["planned"],
        "row_index": row["row_index"],
        "image_rows": row["image_rows"],
        "status": row["status"],
        "index_row": row["index_row"] or "",
        "sample": sample_from_columns(row) if row["status"] == "ok" else None,
    }
    return out


# --------------------------------------------------------------------------- stats


@dataclass
class StageStats:
    """Counts and rates of one stage run: the DVC metrics file of that stage."""

    stage: str
    inputs: int = 0  # rows read (ingest: inputs listed)
    images: int = 0  # images that reached the stage
    faces_in: int = 0
    faces_ok: int = 0
    rejects: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)  # whole dataset so far
    new_rejects: int = 0  # rejected by this stage
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        if self.stage == "ingest":  # no faces yet: the rate is of inputs kept
            return {
                "inputs": self.inputs,
                "images": self.images,
                "rejects": self.rejects,
                "new_rejects": self.new_rejects,
                "rejects_by_reason": dict(sorted(self.rejects_by_reason.items())),
                "ok_rate": round(self.images / self.inputs, 6) if self.inputs else None,
                **self.extra,
            }
        d: dict[str, Any] = {
            "inputs": self.inputs,
            "images": self.images,
            "faces_in": self.faces_in,
            "faces_ok": self.faces_ok,
            "rejects": self.rejects,
            "new_rejects": self.new_rejects,
            "rejects_by_reason": dict(sorted(self.rejects_by_reason.items())),
            "ok_rate": round(self.faces_ok / self.faces_in, 6) if self.faces_in else None,
            "faces_per_image": round(self.faces_ok / self.images, 6) if self.images else None,
        }
        d.update(self.extra)
        return d


def _write_stats(path: str | None, stats: StageStats) -> None:
    if not path:
        return
    from fgid_builder.shards import atomic_write_bytes

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(stats.to_json(), indent=1, sort_keys=True).encode() + b"\n"
    atomic_write_bytes(path, data)


def _progress(cfg: StageConfig, total: int, unit: str):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=cfg.stage,
        unit=unit,
        disable=not cfg.progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )


# --------------------------------------------------------------------------- ingest


def run_ingest(cfg: StageConfig) -> StageStats:
    """List INPUT (a folder, recursively, or a text file of paths), hash, dedup: one row per
    input with its bytes. Exactly the build's planning pass."""
    from fgid_builder.io import read_input
    from pipelines.plan import PLANNED, list_inputs, make_plan

    try:
        listed = list_inputs(cfg.input)
    except FileNotFoundError as e:
        raise click.UsageError(str(e)) from None
    plan = make_plan(listed, shard_size=_INGEST_SHARD_SIZE, threads=cfg.threads)
    stats = StageStats(stage="ingest")
    reasons: Counter[str] = Counter()
    paths = {item.uri: item.path for item in listed}
    with _AtomicParquet(cfg.out, INGEST_SCHEMA) as w, _progress(cfg, plan.num_rows, "img") as bar:
        for r in plan.to_pylist():
            row = {c: r.get(c) for c in INGEST_SCHEMA.names}
            if r["status"] == PLANNED:
                try:
                    row["data"] = read_input(paths[r["source_uri"]])
                except ImageRejected as e:  # vanished or unreadable since it was hashed
                    row.update(status="rejected", reason=e.reason.value, detail=e.detail)
                else:
                    stats.images += 1
            if row["status"] != PLANNED:
                reasons[row["reason"]] += 1
            w.write([row])
            bar.update(1)
    stats.inputs = plan.num_rows
    stats.rejects = stats.new_rejects = sum(reasons.values())
    stats.rejects_by_reason = dict(reasons)
    stats.extra["duplicates"] = reasons.get(Reason.DUPLICATE.value, 0)
    return stats


# --------------------------------------------------------------------------- face stages


def _settings(cfg: StageConfig, stage: str):
    from pipelines.ray_stages import stage_settings

    return stage_settings(cfg, stages=(stage,), options={stage: dict(cfg.options)})


def _ingest_reject_row(row: dict[str, Any]) -> dict[str, Any]:
    """An input rejected while ingesting, as the one row its image has from here on."""
    from pipelines.plan import PLAN_SCHEMA, plan_reject_rows

    plan_row = {c: row.get(c) for c in PLAN_SCHEMA.names}
    plan_row.update(path=row["source_uri"], status="rejected")
    (index_row,) = plan_reject_rows(pa.Table.from_pylist([plan_row], schema=PLAN_SCHEMA))
    return {
        "order": row["order"],
        "source_uri": row["source_uri"],
        "source_sha256": row["source_sha256"],
        "source_bytes": row["source_bytes"],
        "planned": False,
        "row_index": 0,
        "image_rows": 1,
        "status": "rejected",
        "index_row": json.dumps(index_row, sort_keys=True),
    }


def _run_detect_batch(stage: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ingest rows -> face rows, in input order (an input's rows stay together)."""
    out: list[dict[str, Any]] = []
    todo: list[dict[str, Any]] = []

    def flush() -> None:
        if todo:
            out.extend(stage.process(list(todo)))
            todo.clear()

    for r in rows:
        if r["status"] == "planned":
            todo.append(
                {
                    "order": r["order"],
                    "shard": None,
                    "source_uri": r["source_uri"],
                    "path": r["source_uri"],
                    "source_sha256": r["source_sha256"],
                    "source_bytes": r["source_bytes"],
                    "data": r["data"],
                    "planned": True,
                }
            )
        else:
            flush()
            out.append(_ingest_reject_row(r))
    flush()
    return out


def run_face_stage(cfg: StageConfig) -> StageStats:
    """detect (ingest file in) or parse / embed / caption (previous face file in)."""
    from pipelines.ray_stages import STAGE_CLASSES

    settings = _settings(cfg, cfg.stage)
    detect = cfg.stage == "detect"
    # detect: the build's DetectStage, which decodes the rows' `data` (the ingest file's bytes)
    try:
        stage = STAGE_CLASSES[cfg.stage](settings)
    except (TypeError, ValueError) as e:
        if not cfg.options:
            raise
        raise click.UsageError(f"{cfg.stage} backend options {cfg.options}: {e}") from None
    stats = StageStats(stage=cfg.stage)
    reasons: Counter[str] = Counter()
    images: set[int] = set()
    total = _num_rows(cfg.input)
    with _AtomicParquet(cfg.out, FACE_SCHEMA) as w, _progress(cfg, total, "row") as bar:
        for batch in _read_batches(cfg.input, INGEST_SCHEMA if detect else FACE_SCHEMA,
                                   cfg.batch_size):  # fmt: skip
            stats.inputs += len(batch)
            if detect:
                rows = [_face_row_out(r) for r in _run_detect_batch(stage, batch)]
                live = set()
            else:
                rows_in = [_face_row_in(r) for r in batch]
                live = {(r["order"], r["row_index"]) for r in rows_in if r["status"] == "ok"}
                stats.faces_in += len(live)
                rows = [_face_row_out(r) for r in stage.process(rows_in)]
            for r in rows:
                if r["planned"]:
                    images.add(r["order"])
                if r["status"] == "ok":
                    stats.faces_ok += 1
                    continue
                reasons[r["reason"]] += 1
                if detect:
                    face_level = json.loads(r["index_row"]).get("face_index") is not None
                    stats.faces_in += int(face_level)
                    stats.new_rejects += int(r["planned"])
                elif (r["order"], r["row_index"]) in live:
                    stats.new_rejects += 1
            w.write(rows)
            bar.update(len(batch))
    if detect:
        stats.faces_in += stats.faces_ok
    stats.images = len(images)
    stats.rejects = sum(reasons.values())
    stats.rejects_by_reason = dict(reasons)
    return stats


# --------------------------------------------------------------------------- shard


def _clear_dataset_out(out: Any) -> None:
    """A shard stage rewrites its OUT: stale shards of an earlier, larger run must not remain."""
    from fgid_builder.dataset import INDEX, PARTS, SHARDS

    for sub in (SHARDS, PARTS):
        for name in out.listdir(sub):
            out.remove(f"{sub}/{name}")
    out.remove(INDEX)
    out.prepare()


def _exclusions(cfg: StageConfig) -> Any:
    """The shard stage's opt-out lists (hash lines only: it has no detector to match photos)."""
    from fgid_builder.optout import Exclusions, read_lists

    if not cfg.exclude:
        return None
    listed = read_lists(cfg.exclude)
    if listed.photos:
        raise click.UsageError("fgid stage shard --exclude: `photo` lines need fgid build")
    return Exclusions(listed) if listed else None


def _opted_out_photo(row: dict[str, Any]) -> dict[str, Any]:
    from fgid_builder.index import reject_row
    from fgid_builder.optout import SHA_LISTED

    return reject_row(
        source_uri=row["source_uri"],
        reason=Reason.OPTED_OUT,
        detail=SHA_LISTED,
        source_sha256=row["source_sha256"],
        source_bytes=row["source_bytes"],
    )


def run_shard(cfg: StageConfig) -> StageStats:
    """Encode every sample, write the shards with the dataset's commit, merge the index."""
    from fgid_builder.dataset import Dataset
    from pipelines.plan import assign_shards
    from pipelines.ray_stages import EncodeStage, StageSettings, write_shard_rows

    out = Dataset(cfg.out)
    _clear_dataset_out(out)
    encode = EncodeStage(StageSettings(backends={}))
    # First pass over the light columns: which images are planned, so shards can be cut.
    planned = pq.read_table(cfg.input, columns=["order", "planned", "source_sha256"]).to_pylist()
    shard_of = assign_shards((r["order"] for r in planned if r["planned"]), cfg.shard_size)
    excl = _exclusions(cfg)
    # listed photos leave after the shards are cut, as in `fgid build --exclude`
    opted = (
        set()
        if excl is None
        else {
            r["order"] for r in planned if r["planned"] and r["source_sha256"] in excl.listed.sha256
        }
    )
    sizes = Counter(s for o, s in shard_of.items() if o not in opted)
    stats = StageStats(stage="shard", images=len(shard_of))
    loose_rows: list[dict[str, Any]] = []  # rejected while ingesting: in no shard
    opted_seen: set[int] = set()
    current: str | None = None
    pending: list[dict[str, Any]] = []
    shards_written = 0

    def commit() -> None:
        nonlocal shards_written
        if current is not None:
            record = write_shard_rows(out, current, pending, sizes[current], excl)
            stats.faces_ok += int(record["samples"])
            shards_written += 1

    total = _num_rows(cfg.input)
    with _progress(cfg, total, "row") as bar:
        for batch in _read_batches(cfg.input, FACE_SCHEMA, cfg.batch_size):
            stats.inputs += len(batch)
            rows = []
            for r in batch:
                row = _face_row_in(r)
                if not row["planned"]:
                    loose_rows.append(json.loads(row["index_row"]))
                    continue
                if row["order"] in opted:
                    if row["order"] not in opted_seen:  # one row for the photo, as its plan row
                        opted_seen.add(row["order"])
                        loose_rows.append(_opted_out_photo(row))
                    continue
                row["shard"] = shard_of[row["order"]]
                if row["status"] != "ok":
                    index_row = json.loads(row["index_row"])
                    index_row["shard"] = row["shard"]
                    row["index_row"] = json.dumps(index_row, sort_keys=True)
                else:
                    stats.faces_in += 1
                rows.append(row)
            for row in encode.process(rows):
                if row["shard"] != current:
                    commit()
                    current, pending = row["shard"], []
                pending.append(row)
            bar.update(len(batch))
    commit()
    if shards_written != len(sizes):
        raise RuntimeError(f"wrote {shards_written} shards of {len(sizes)}")
    table = out.merge_index(sorted(sizes), loose_rows)
    status = table.column("status").to_pylist()
    reasons = Counter(
        r for s, r in zip(status, table.column("reason").to_pylist(), strict=True) if s != "ok"
    )
    stats.rejects = sum(reasons.values())
    stats.rejects_by_reason = dict(reasons)
    stats.new_rejects = stats.faces_in - stats.faces_ok
    stats.extra.update(shards=len(sizes), index_rows=table.num_rows, shard_size=cfg.shard_size)
    return stats


RUNNERS = {
    "ingest": run_ingest,
    "detect": run_face_stage,
    "parse": run_face_stage,
    "embed": run_face_stage,
    "caption": run_face_stage,
    "shard": run_shard,
}


def run_stage(cfg: StageConfig) -> StageStats:
    """Run one stage and write its stats file (when asked), holding OUT's lock
    (fgid_builder.lock: another run on the same OUT is `LockHeld`, exit 2)."""
    from fgid_builder.lock import locked

    with locked(cfg.out, is_file=cfg.stage != "shard"):
        stats = RUNNERS[cfg.stage](cfg)
        _write_stats(cfg.stats, stats)
    return stats


# --------------------------------------------------------------------------- CLI

_CTX = {"help_option_names": ["-h", "--help"]}


def _opt_stats(f):
    return click.option(
        "--stats",
        default=None,
        metavar="JSON",
        help="Also write this stage's counts and rates here (the DVC metrics file).",
    )(f)


def _opt_progress(f):
    return click.option(
        "--progress/--no-progress", default=True, show_default=True, help="Progress bar."
    )(f)


def _opt_batch(f):
    return click.option(
        "--batch-size",
        type=int,
        default=None,
        help="Rows handed to the backend at once (memory grows with it); default: the "
        "stage's batch_size in --stage-config, else 4.",
    )(f)


def _opt_backend(stage: str):
    """`--stage-config FILE` and `--{detector,...}-option KEY=VALUE`, as in `fgid build`."""
    from fgid_builder.stage_resources import FLAG_NAMES

    flag = FLAG_NAMES[stage]

    def deco(f):
        f = click.option(
            f"--{flag}-option",
            "backend_option",
            multiple=True,
            metavar="KEY=VALUE",
            help=f"Option of the {stage} backend (value read as YAML), as in `fgid build`.",
        )(f)
        return click.option(
            "--stage-config",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="The YAML of `fgid build --stage-config`: this stage's options and batch_size.",
        )(f)

    return deco


def _backend_settings(stage: str, options: dict[str, Any]) -> None:
    """Pop `--stage-config` / `--X-option` from a command's kwargs into `options` and
    `batch_size` (flags win over the file)."""
    from fgid_builder.stage_resources import StageResources, parse_option_values

    path = options.pop("stage_config", None)
    values = options.pop("backend_option", ())
    try:
        res = StageResources.from_cli(
            stage_config=path, options={stage: parse_option_values(values) or None}
        )
    except ValueError as e:
        raise click.UsageError(f"stage settings: {e}") from None
    options["options"] = res.backend_options(stage)
    if options.get("batch_size") is None:
        options["batch_size"] = res[stage].batch_size


def _invoke(stage: str, input: str, out: str, **options: Any) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if stage in FACE_STAGES:
        _backend_settings(stage, options)
    cfg = StageConfig(stage=stage, input=input, out=out, **options)
    from fgid_builder.lock import LockHeld

    try:
        stats = run_stage(cfg)
    except (ModelFileError, LockHeld) as e:
        click.echo(f"fgid stage {stage}: {e}", err=True)
        sys.exit(2)
    except OSError as e:  # a read-only or full disk: one line, exit 3 (as `fgid build`)
        from pipelines.build import one_line

        click.echo(f"fgid stage {stage}: the run failed: {one_line(e)}", err=True)
        sys.exit(3)
    summary = stats.to_json()
    rejects = ", ".join(f"{k} {v}" for k, v in summary["rejects_by_reason"].items()) or "none"
    kept = f"{summary['faces_ok']} faces ok" if "faces_ok" in summary else f"{stats.images} images"
    click.echo(
        f"{stage}: {summary['inputs']} rows in, {kept}, {summary['rejects']} rejects ({rejects})"
    )


@click.group("stage", context_settings=_CTX)
def stage_command() -> None:
    """Run one pipeline stage, Parquet -> Parquet (the stages `dvc.yaml` chains).

    ingest INPUT ingest.parquet -> detect -> parse -> embed -> caption -> shard caption.parquet OUT.
    With the same settings, `shard` writes the same bytes as `fgid build`.
    """


@stage_command.command("ingest", context_settings=_CTX)
@click.argument("input", type=click.Path(exists=True))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--threads", type=int, default=2, show_default=True, help="Hashing threads.")
@_opt_stats
@_opt_progress
def ingest_command(input: str, out: str, **options: Any) -> None:
    """List INPUT (a folder, recursively, or a text file of paths), hash and dedup it, and write
    one row per input with its bytes to OUT (Parquet). Uris are relative to an INPUT folder."""
    _invoke("ingest", input, out, **options)


@stage_command.command("detect", context_settings=_CTX)
@click.argument("input", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@backend_option("detect")
@min_face_option
@max_faces_option
@models_dir_option
@_opt_backend("detect")
@_opt_batch
@_opt_stats
@_opt_progress
def detect_command(input: str, out: str, **options: Any) -> None:
    """Decode, detect, gate and align: the ingest file INPUT -> one row per face in OUT."""
    _invoke("detect", input, out, **options)


def _face_stage_command(stage: str, doc: str):
    @stage_command.command(stage, context_settings=_CTX, help=doc)
    @click.argument("input", type=click.Path(exists=True, dir_okay=False))
    @click.argument("out", type=click.Path(dir_okay=False))
    @backend_option(stage)
    @models_dir_option
    @_opt_backend(stage)
    @_opt_batch
    @_opt_stats
    @_opt_progress
    def command(input: str, out: str, **options: Any) -> None:
        _invoke(stage, input, out, **options)

    return command


parse_command = _face_stage_command("parse", "Face-parsing masks: the detect file INPUT -> OUT.")
embed_command = _face_stage_command("embed", "Identity embeddings: the parse file INPUT -> OUT.")
caption_command = _face_stage_command(
    "caption", "Global, facial and region captions: embed file -> OUT."
)


@stage_command.command("shard", context_settings=_CTX)
@click.argument("input", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@shard_size_option
@_opt_batch
@_opt_stats
@_opt_progress
@click.option(
    "--exclude",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="Opt-out list (`sha256 HEX` / `key KEY` lines): never write those photos or faces "
    "(reject reason opted_out), as `fgid build --exclude`.",
)
def shard_command(input: str, out: str, **options: Any) -> None:
    """Encode the caption file INPUT into OUT/shards/NNNNNN.tar + .json and OUT/index.parquet,
    byte-identical to `fgid build` with the same settings."""
    _invoke("shard", input, out, **options)
