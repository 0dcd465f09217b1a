"""Manifests: a `.parquet`, `.csv` or `.jsonl` table of inputs, on a local disk or any fsspec URL.

One row per input: a `url` column (http(s)://, s3://, ... or a path) or a `path` column (a path
relative to the manifest's folder, or absolute, or a URL), and any number of pass-through
columns (caption, license, source id, ...). Those land in every sample's JSON as
`source.extra` and in the index's `extra` column: a string -> string map holding every
pass-through column of the manifest in every row (a missing value is ""; numbers as written by
`str`, nested values as canonical JSON), so the field has one type in every sample.

Manifests are read in record batches (`iter_manifest`), never whole, so a manifest of millions
of rows costs the reader one batch of memory; their order is the plan's input order (a
manifest is not re-sorted: its row order is already a pure function of the input).
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl")
LOCATION_COLUMNS = ("url", "path")
DEFAULT_BATCH_ROWS = 8192


class ManifestError(ValueError):
    """The manifest cannot be used at all (no `url`/`path` column, unreadable, bad format)."""


def is_manifest(uri: str) -> bool:
    return uri.lower().endswith(MANIFEST_SUFFIXES)


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row: `uri` as written, `location` where to read it, `extra` as JSON."""

    row: int
    uri: str
    location: str
    extra: str


def manifest_base(manifest: str) -> str:
    """The folder (or URL prefix) relative `path` entries are relative to."""
    from fgid_builder.fetch import is_url

    if is_url(manifest):
        return manifest.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(manifest))


def resolve_location(value: str, base: str) -> str:
    """A manifest cell -> where to read it: URLs and absolute paths as written, relative
    paths under `base` (the manifest's folder or URL prefix)."""
    from fgid_builder.fetch import is_url

    if is_url(value) or os.path.isabs(value):
        return value
    if is_url(base):
        scheme, _, rest = base.partition("://")
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, value))}"
    return os.path.normpath(os.path.join(base, value))


def extra_json(values: dict[str, str]) -> str:
    """Canonical JSON of a pass-through map (sorted keys; the plan and index store it so)."""
    return json.dumps(values, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, bool | int | float):
        return str(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _open(manifest: str) -> Any:
    import fsspec

    return fsspec.open(manifest, "rb").open()


def _batches(manifest: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    lower = manifest.lower()
    f = _open(manifest)
    try:
        if lower.endswith(".parquet"):
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows)
            return
        if lower.endswith(".csv"):
            # every column read as text: a caption "007" stays "007"
            reader = pcsv.open_csv(
                f,
                read_options=pcsv.ReadOptions(block_size=1 << 20),
                convert_options=pcsv.ConvertOptions(
                    strings_can_be_null=False, quoted_strings_can_be_null=False
                ),
            )
            names = reader.schema.names
            reader.close()
            f.close()
            f = _open(manifest)
            reader = pcsv.open_csv(
                f,
                read_options=pcsv.ReadOptions(block_size=1 << 20),
                convert_options=pcsv.ConvertOptions(
                    column_types=dict.fromkeys(names, pa.string()),
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        else:
            reader = pjson.open_json(f, read_options=pjson.ReadOptions(block_size=1 << 20))
        yield from reader
    finally:
        f.close()


def iter_manifest(
    manifest: str, *, batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[list[ManifestRow]]:
    """The manifest's rows in order, `batch_rows` at a time.

    Raises ManifestError (one line) for a manifest that cannot be read or has neither a `url`
    nor a `path` column; a row whose location is empty is yielded with `location` "" (the
    planner makes it a reject row)."""
    base = manifest_base(manifest)
    row = 0
    columns: list[str] | None = None
    try:
        for batch in _batches(manifest, batch_rows):
            names = batch.schema.names
            if columns is None:
                loc = [c for c in LOCATION_COLUMNS if c in names]
                if not loc:
                    raise ManifestError(
                        f"manifest {manifest} has no 'url' or 'path' column "
                        f"(columns: {', '.join(names) or 'none'})"
                    )
                location_column = loc[0]
                columns = sorted(str(c) for c in names if c != location_column)
            data = batch.to_pydict()
            locs = data[location_column]
            out = []
            for i, value in enumerate(locs):
                text = _cell(value).strip()
                extra = {c: _cell(data[c][i]) if c in data else "" for c in columns}
                out.append(
                    ManifestRow(
                        row=row,
                        uri=text,
                        location=resolve_location(text, base) if text else "",
                        extra=extra_json(extra),
                    )
                )
                row += 1
            yield out
    except ManifestError:
        raise
    except FileNotFoundError as e:
        raise ManifestError(f"manifest not found: {manifest}") from e
    except (OSError, pa.ArrowException, ValueError, UnicodeDecodeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ManifestError(f"cannot read manifest {manifest}: {first}") from e
