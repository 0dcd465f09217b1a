"""The Parquet index: one row per sample and one row per rejected input or face.

Rows are plain dicts with the columns of `INDEX_SCHEMA`; `sample_row` builds one from a sample's
JSON member, `reject_row` from a reason. Files are written byte-deterministically: a fixed
schema, rows sorted by (source_uri, face_index, key, reason), fixed writer options, no
timestamps, and atomically (temporary name, fsync, rename).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fgid_builder.manifest import extra_json
from fgid_builder.schema import Reason, dumps_json
from fgid_builder.shards import atomic_write_bytes

STATUS_OK = "ok"
STATUS_REJECTED = "rejected"

INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),  # null for input-level rejects
        pa.field("status", pa.string(), nullable=False),  # ok | rejected
        pa.field("reason", pa.string()),  # schema.Reason value; null when ok
        pa.field("detail", pa.string()),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("source_sha256", pa.string()),  # null when the input could not be read
        pa.field("source_bytes", pa.int64()),
        pa.field("duplicate_of", pa.string()),  # key prefix (sha256[:16]) of the kept copy
        pa.field("face_index", pa.int32()),  # null for input-level rejects
        pa.field("shard", pa.string()),  # "000042"; null when no shard holds the input
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("det_score", pa.float64()),
        pa.field("face_size", pa.float64()),
        pa.field("area_ratio", pa.float64()),
        pa.field("yaw", pa.float64()),
        pa.field("pitch", pa.float64()),
        pa.field("roll", pa.float64()),
        pa.field("blur", pa.float64()),
        pa.field("bbox", pa.list_(pa.float64())),
        pa.field("regions_present", pa.list_(pa.string())),
        pa.field("emb_dim", pa.int32()),
        pa.field("caption_global_chars", pa.int32()),
        pa.field("caption_facial_chars", pa.int32()),
        pa.field("models", pa.string()),  # canonical JSON {stage: {name, version, weights_sha256}}
        # a manifest row's pass-through columns: canonical JSON {column: value}; null otherwise
        pa.field("extra", pa.string()),
    ]
)
COLUMNS: tuple[str, ...] = tuple(INDEX_SCHEMA.names)
SORT_KEYS = [
    ("source_uri", "ascending"),
    ("face_index", "ascending"),
    ("key", "ascending"),
    ("reason", "ascending"),
]
# Fixed writer options: same rows + same pyarrow version => same bytes.
_WRITE_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "data_page_version": "1.0",
    "version": "2.6",
    "row_group_size": 1 << 14,  # also what the streaming merge holds of its output at once
}


def _empty_row() -> dict[str, Any]:
    return dict.fromkeys(COLUMNS)


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def sample_row(meta: Mapping[str, Any], *, shard: str | None) -> dict[str, Any]:
    """The index row of a written sample, from its JSON member (DESIGN.md, "The sample")."""
    source = meta.get("source") or {}
    face = meta.get("face") or {}
    captions = meta.get("captions") or {}
    regions = meta.get("regions") or {}
    bbox = face.get("bbox")
    face_size = face.get("size")
    if face_size is None and bbox is not None:
        face_size = min(bbox[2] - bbox[0], bbox[3] - bbox[1])
    extra = source.get("extra") or None
    models = {
        stage: {k: info.get(k) for k in ("name", "version", "weights_sha256")}
        for stage, info in (meta.get("models") or {}).items()
    }
    row = _empty_row()
    row.update(
        key=meta["key"],
        status=STATUS_OK,
        source_uri=str(source.get("uri", "")),
        source_sha256=source.get("sha256"),
        source_bytes=source.get("bytes"),
        face_index=face.get("index"),
        shard=shard,
        width=source.get("width"),
        height=source.get("height"),
        det_score=_num(face.get("det_score")),
        face_size=_num(face_size),
        area_ratio=_num(face.get("area_ratio")),
        yaw=_num(face.get("yaw")),
        pitch=_num(face.get("pitch")),
        roll=_num(face.get("roll")),
        blur=_num(face.get("blur")),
        bbox=None if bbox is None else [float(v) for v in bbox],
        regions_present=sorted(n for n, r in regions.items() if r and r.get("present")),
        emb_dim=(meta.get("embedding") or {}).get("dim"),
        caption_global_chars=None if not captions else len(captions.get("global") or ""),
        caption_facial_chars=None if not captions else len(captions.get("facial") or ""),
        models=dumps_json(models).decode() if models else None,
        extra=None if extra is None else extra_json(extra),
    )
    return row


def reject_row(
    *,
    source_uri: str,
    reason: Reason | str,
    detail: str = "",
    source_sha256: str | None = None,
    source_bytes: int | None = None,
    face_index: int | None = None,
    key: str | None = None,
    shard: str | None = None,
    duplicate_of: str | None = None,
    **figures: Any,
) -> dict[str, Any]:
    """The index row of a rejected input (face_index None) or of one rejected face.

    `figures` may carry any other column (width, height, det_score, bbox, ...)."""
    unknown = set(figures) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown index columns: {sorted(unknown)}")
    row = _empty_row()
    row.update(figures)
    row.update(
        key=key,
        status=STATUS_REJECTED,
        reason=reason.value if isinstance(reason, Reason) else str(reason),
        detail=detail or None,
        source_uri=str(source_uri),
        source_sha256=source_sha256,
        source_bytes=source_bytes,
        face_index=face_index,
        shard=shard,
        duplicate_of=duplicate_of,
    )
    if "bbox" in figures and figures["bbox"] is not None:
        row["bbox"] = [float(v) for v in figures["bbox"]]
    return row


def rows_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows -> a table in the index schema, sorted (the one order every file uses)."""
    rows = list(rows)
    for r in rows:
        extra = set(r) - set(COLUMNS)
        if extra:
            raise ValueError(f"unknown index columns: {sorted(extra)}")
    table = pa.Table.from_pylist(
        [{c: r.get(c) for c in COLUMNS} for r in rows], schema=INDEX_SCHEMA
    )
    return sort_table(table)


def sort_table(table: pa.Table) -> pa.Table:
    table = table.select(list(COLUMNS)).cast(INDEX_SCHEMA)
    if table.num_rows == 0:
        return table
    try:  # pyarrow >= 25: null placement per key
        order = pc.sort_indices(table, sort_keys=[(c, o, "at_start") for c, o in SORT_KEYS])
    except (TypeError, ValueError, pa.ArrowInvalid):  # older pyarrow: one global placement
        order = pc.sort_indices(table, sort_keys=SORT_KEYS, null_placement="at_start")
    return table.take(order).combine_chunks()


def table_bytes(table: pa.Table) -> bytes:
    """Parquet bytes with the fixed writer options (no timestamps, no pandas metadata)."""
    table = table.replace_schema_metadata(None)
    sink = io.BytesIO()
    pq.write_table(table, sink, **_WRITE_OPTIONS)
    return sink.getvalue()


def write_index(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]] | pa.Table) -> int:
    """Write an index (or an index part) atomically and deterministically; returns the row count."""
    table = sort_table(rows) if isinstance(rows, pa.Table) else rows_table(rows)
    atomic_write_bytes(path, table_bytes(table))
    return table.num_rows


def read_index(path: str | os.PathLike) -> pa.Table:
    return pq.read_table(path, schema=INDEX_SCHEMA)


def merge_index(parts: Iterable[str | os.PathLike], path: str | os.PathLike) -> int:
    """Merge index parts (e.g. one per shard) into one sorted index file; returns its row count.

    Streaming (`merge_sorted`): memory is bounded by the fan-in, not by the number of rows."""
    return merge_sorted(sorted(Path(p) for p in parts), path)


# --------------------------------------------------------------------------- streaming merge

MERGE_FAN_IN = 64  # sources open at once; more parts are merged in rounds through temp runs
_RUN_ROWS = 1024  # row group of the temporary runs (what one open run holds in memory)
_READ_ROWS = 1024


def _row_keys(batch: pa.RecordBatch) -> list[tuple]:
    """Python sort keys equal to `sort_table`'s order: each key ascending, nulls first (str
    comparison is code-point order, which is UTF-8 byte order, as Arrow compares)."""
    cols = [batch.column(c).to_pylist() for c, _ in SORT_KEYS]
    return [
        tuple(x for v in values for x in (v is not None, "" if v is None else v))
        for values in zip(*cols, strict=True)
    ]


def _batches_of(source: Any) -> Iterator[pa.RecordBatch]:
    """A source's batches: a table, a Parquet path, or a callable returning a file object
    (opened only when the merge reaches it, closed after)."""
    if isinstance(source, pa.Table):
        yield from sort_table(source).to_batches(max_chunksize=_READ_ROWS)
        return
    opened = source() if callable(source) else None
    f = pq.ParquetFile(opened if opened is not None else source)
    try:
        for batch in f.iter_batches(batch_size=_READ_ROWS, columns=list(COLUMNS)):
            yield batch.cast(INDEX_SCHEMA) if batch.schema != INDEX_SCHEMA else batch
    finally:
        f.close()
        if opened is not None:
            opened.close()


def _merged_batches(
    sources: Sequence[str | os.PathLike | pa.Table], rows: int
) -> Iterator[pa.Table]:
    """The rows of sorted `sources` in sorted order (ties: earlier source first, as a stable
    sort of their concatenation), `rows` at a time."""
    import heapq

    def stream(i: int):
        for batch in _batches_of(sources[i]):
            for j, key in enumerate(_row_keys(batch)):
                yield key, i, batch, j

    # The output is gathered _TAKE_ROWS at a time (a multiple of Parquet's 1,024-row write
    # batches, so the chunked output writes the same pages as a contiguous one): a source batch is
    # referenced only until the chunk holding its rows is taken, so memory stays near one output
    # row group, not a row group plus every source batch it came from.
    pending: list[tuple[pa.RecordBatch, int]] = []
    chunks: list[pa.Table] = []

    def take() -> None:
        batches: dict[int, tuple[int, pa.RecordBatch]] = {}
        for batch, _ in pending:
            if id(batch) not in batches:
                batches[id(batch)] = (len(batches), batch)
        offsets, start = {}, 0
        ordered = sorted(batches.values(), key=lambda t: t[0])
        for n, batch in ordered:
            offsets[n] = start
            start += batch.num_rows
        table = pa.Table.from_batches([b for _, b in ordered], schema=INDEX_SCHEMA)
        index = [offsets[batches[id(b)][0]] + j for b, j in pending]
        pending.clear()
        chunks.append(table.take(index))

    def flush() -> pa.Table:
        if pending:
            take()
        table = pa.concat_tables(chunks)
        chunks.clear()
        return table

    streams = [stream(i) for i in range(len(sources))]
    held = 0
    for _, _, batch, j in heapq.merge(*streams, key=lambda t: (t[0], t[1])):
        pending.append((batch, j))
        held += 1
        if len(pending) == _TAKE_ROWS:
            take()
        if held == rows:
            held = 0
            yield flush()
    if held:
        yield flush()


_TAKE_ROWS = 1024


def merge_sorted(
    sources: Sequence[str | os.PathLike | pa.Table],
    path: str | os.PathLike,
    *,
    fan_in: int = MERGE_FAN_IN,
) -> int:
    """Merge sorted index files (and tables) into one index at `path`, byte-identical to
    `write_index` of their concatenation, with memory bounded by `fan_in` sources of one
    record batch each and one output row group: more sources than `fan_in` are merged in
    rounds through temporary runs beside `path` (named as temp files, so a killed run's are
    removed by `clean_temp_files`). Written atomically; returns the row count."""
    from fgid_builder.shards import fsync_dir, temp_path_for

    if fan_in < 2:
        raise ValueError("fan_in must be >= 2")
    path = Path(path)
    temps: list[Path] = []
    try:
        level = list(sources)
        while len(level) > fan_in:
            runs: list[Path] = []
            for i in range(0, len(level), fan_in):
                run = temp_path_for(path)
                temps.append(run)
                _write_stream(run, _merged_batches(level[i : i + fan_in], _RUN_ROWS), _RUN_ROWS)
                runs.append(run)
            for done in (s for s in level if isinstance(s, Path) and s in temps):
                done.unlink(missing_ok=True)
            level = runs
        tmp = temp_path_for(path)
        temps.append(tmp)
        rows = _write_stream(tmp, _merged_batches(level, _ROW_GROUP), _ROW_GROUP)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        return rows
    finally:
        for t in temps:
            t.unlink(missing_ok=True)


_ROW_GROUP = _WRITE_OPTIONS["row_group_size"]


def _write_stream(path: Path, tables: Iterator[pa.Table], row_group: int) -> int:
    """Tables (each at most `row_group` rows) -> one Parquet file with the index's fixed
    options, one row group per table; fsynced."""
    opts = {k: v for k, v in _WRITE_OPTIONS.items() if k != "row_group_size"}
    rows = 0
    schema = INDEX_SCHEMA.remove_metadata()
    with open(path, "wb") as f:
        with pq.ParquetWriter(f, schema, **opts) as writer:
            wrote = False
            for table in tables:
                writer.write_table(table.replace_schema_metadata(None), row_group_size=row_group)
                rows += table.num_rows
                wrote = True
            if not wrote:
                writer.write_table(schema.empty_table())
        f.flush()
        os.fsync(f.fileno())
    return rows
