"""The planning pass: list inputs, hash them, drop duplicates, fix which image goes in which shard.

The plan is a pure function of the input bytes, the input uris and `shard_size`, written once to
`OUT/plan.parquet`; every later step (workers, resume) reads it, so the shard an image lands in
never depends on timing or on the number of workers. It holds no machine-specific path: its
`path` column is relative to the input's base (the INPUT folder, or a list file's folder), a
`pkg://PACKAGE/FILE` uri for package-shipped photos, and absolute only where a list file says
so; `resolve_path` turns it back into where this run reads the file.

Listing is bounded and stays inside INPUT: a symlink whose target lies outside INPUT is an
`outside_input` row unless `follow_external_symlinks`; a walk visits at most `max_entries`
folder entries (more is a `ListingError`) and `max_depth` folder levels (deeper folders are
`unreadable` rows). A FIFO, device or socket with an image suffix is a `not_a_file` row, never
opened. A file name is any byte sequence: a name that is not UTF-8 gets a uri with its bad
bytes (and any `%`) percent-escaped, and the plan keeps its raw bytes in `path_bytes`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import stat
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fgid_builder.index import reject_row
from fgid_builder.io import (
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_INPUT_BYTES,
    DEFAULT_READ_TIMEOUT,
    check_regular,
    iter_input,
    read_input,
)
from fgid_builder.schema import ImageRejected, Reason
from fgid_builder.shards import atomic_write_bytes, shard_name

log = logging.getLogger(__name__)

# Files under an input folder are taken when their suffix says image; anything else is skipped
# (counted and logged). A list file's entries are taken as given, whatever their suffix. Image
# suffixes that Pillow may not decode (AVIF, HEIC/HEIF, JPEG XL, JPEG 2000) are listed too:
# they become `unsupported_format` rows instead of vanishing.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"}
    | {".avif", ".heic", ".heif", ".jxl", ".jp2", ".j2k"}
)
DEFAULT_MAX_DEPTH = 64  # folder levels under INPUT
PKG_SCHEME = "pkg://"
PLANNED = "planned"
REJECTED = "rejected"

PLAN_SCHEMA = pa.schema(
    [
        pa.field("order", pa.int64(), nullable=False),  # position in the sorted input list
        pa.field("source_uri", pa.string(), nullable=False),
        # where to read it: relative to the input base, pkg://..., or absolute as listed
        pa.field("path", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # planned | rejected
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("source_sha256", pa.string()),
        pa.field("source_bytes", pa.int64()),
        pa.field("duplicate_of", pa.string()),  # key prefix of the copy that is kept
        pa.field("shard", pa.string()),  # "000042" for planned images
        # the raw bytes of `path` when it is not UTF-8 (then `path`/`source_uri` are escaped)
        pa.field("path_bytes", pa.binary()),
    ]
)


class ListingError(ValueError):
    """INPUT cannot be listed as asked (too many entries): one line for the CLI (exit 2)."""


def escape_name(name: str) -> str:
    """`name` as stored in a uri: unchanged when it is UTF-8; otherwise (a name read with
    `surrogateescape`) each byte that is not UTF-8 becomes `%XX` and each `%` becomes `%25`, so
    the uri is valid text and `unescape_name` gives the bytes back."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    out = []
    for ch in name:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for the byte code - 0xDC00
            out.append(f"%{code - 0xDC00:02X}")
        elif ch == "%":
            out.append("%25")
        else:
            out.append(ch)
    return "".join(out)


def raw_path(path: str) -> bytes | None:
    """The file system bytes of `path` when it is not UTF-8 text (for `path_bytes`), else None."""
    try:
        path.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return os.fsencode(path)


@dataclass(frozen=True)
class Listed:
    """One input as listed: where to read it (`path`), what the dataset calls it (`uri`: relative
    to the input folder, or as written in the list file, so a dataset does not depend on where
    its inputs were mounted), or a problem found while listing."""

    uri: str
    path: str
    reason: Reason | None = None
    detail: str = ""


def _abs(path: str | os.PathLike) -> str:
    return os.path.abspath(os.fspath(path))


def _inside(path: str, root_real: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def walk_folder(
    root: str | os.PathLike,
    *,
    follow_external_symlinks: bool = False,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> tuple[list[Listed], int]:
    """Image files under `root`, recursively, following symlinks inside `root` but never around
    a loop, and out of it only with `follow_external_symlinks`.

    Returns the listed entries (a symlink loop, a dangling link, a link out of `root`, a FIFO or
    device with an image suffix, a folder deeper than `max_depth` are entries with a reason, not
    a hang) and the number of files skipped for not having an image suffix. More than
    `max_entries` folder entries visited is a `ListingError`."""
    out: list[Listed] = []
    skipped = 0
    visited = 0
    root = os.fspath(root)
    root_real = os.path.realpath(root)

    def listed(path: str, reason: Reason | None = None, detail: str = "") -> Listed:
        uri = escape_name(Path(os.path.relpath(path, root)).as_posix())
        return Listed(uri, _abs(path), reason, detail)

    def visit(folder: str, ancestors: frozenset[tuple[int, int]], depth: int) -> None:
        nonlocal skipped, visited
        if depth > max_depth:
            out.append(listed(folder, Reason.UNREADABLE, f"deeper than {max_depth} folders"))
            return
        try:
            with os.scandir(folder) as it:
                entries = []
                for entry in it:
                    visited += 1
                    if visited > max_entries:
                        raise ListingError(
                            f"INPUT has more than {max_entries} entries (--max-entries)"
                        )
                    entries.append(entry)
        except OSError as e:
            out.append(listed(folder, Reason.UNREADABLE, f"cannot list folder: {e.strerror}"))
            return
        entries.sort(key=lambda e: os.fsencode(e.name))
        for entry in entries:
            path = entry.path
            try:
                st = os.stat(path)  # follows symlinks
            except OSError as e:
                if e.errno == errno.ELOOP:
                    detail = "symlink loop"
                elif entry.is_symlink():
                    detail = f"dangling symlink: {e.strerror}"
                else:
                    detail = f"cannot stat: {e.strerror}"
                out.append(listed(path, Reason.UNREADABLE, detail))
                continue
            is_image = Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
            if (
                entry.is_symlink()
                and not follow_external_symlinks
                and (stat.S_ISDIR(st.st_mode) or is_image)
                and not _inside(path, root_real)
            ):
                out.append(
                    listed(
                        path,
                        Reason.OUTSIDE_INPUT,
                        "symlink to outside INPUT, not followed (--follow-external-symlinks)",
                    )
                )
                continue
            if stat.S_ISDIR(st.st_mode):
                ident = (st.st_dev, st.st_ino)
                if ident in ancestors:
                    out.append(
                        listed(path, Reason.UNREADABLE, "symlink loop (folder links to itself)")
                    )
                    continue
                visit(path, ancestors | {ident}, depth + 1)
            elif not is_image:
                skipped += 1
            elif stat.S_ISREG(st.st_mode):
                out.append(listed(path))
            else:  # fifos, sockets, devices: never opened
                try:
                    check_regular(st, None)
                except ImageRejected as e:
                    out.append(listed(path, e.reason, e.detail))

    st = os.stat(root)
    visit(root, frozenset({(st.st_dev, st.st_ino)}), 0)
    return out, skipped


def read_list_file(
    path: str | os.PathLike, *, max_entries: int = DEFAULT_MAX_ENTRIES
) -> list[Listed]:
    """A text file of paths, one a line (blank lines and `#` comments skipped); relative paths
    are relative to the list file's folder. Lines are file system bytes (any encoding; a name
    that is not UTF-8 gets an escaped uri); a list file is read only when it is a regular file,
    and more than `max_entries` paths is a `ListingError`."""
    base = Path(path).resolve().parent
    out: list[Listed] = []
    try:
        data = read_input(path, max_bytes=None)
    except ImageRejected as e:
        raise ListingError(f"cannot read the list file {path}: {e.detail}") from None
    for raw in data.splitlines():
        line = os.fsdecode(raw.strip())
        if not line or line.startswith("#"):
            continue
        if len(out) >= max_entries:
            raise ListingError(f"the list file names more than {max_entries} paths (--max-entries)")
        p = Path(line).expanduser()
        out.append(Listed(escape_name(line), _abs(p if p.is_absolute() else base / p)))
    return out


def list_inputs(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    follow_external_symlinks: bool = False,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> list[Listed]:
    """A folder, a list file, or an explicit sequence of paths -> listed inputs, sorted by uri.

    The same uri listed twice is kept once (it is the same input, not a copy). A list file
    names its inputs explicitly: its entries are read wherever they are (no INPUT to leave)."""
    if isinstance(source, str | os.PathLike):
        src = Path(source)
        if src.is_dir():
            listed, skipped = walk_folder(
                src,
                follow_external_symlinks=follow_external_symlinks,
                max_entries=max_entries,
                max_depth=max_depth,
            )
            if skipped:
                log.info("skipped %d files without an image suffix under %s", skipped, src)
        elif src.exists():
            listed = read_list_file(src, max_entries=max_entries)
        else:
            raise FileNotFoundError(f"input not found: {src} (a folder or a text file of paths)")
    else:
        listed = [Listed(escape_name(_abs(p)), _abs(p)) for p in source]
    unique: dict[str, Listed] = {}
    for item in listed:
        unique.setdefault(item.uri, item)
    return [unique[u] for u in sorted(unique)]


def hash_file(
    path: str,
    *,
    max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES,
    timeout: float | None = DEFAULT_READ_TIMEOUT,
) -> tuple[str | None, int | None, Reason | None, str]:
    """(sha256, size, None, "") or (None, None, reason, detail) when the file cannot be read:
    not a regular file (never opened blocking), over `max_bytes`, slower than `timeout`."""
    h = hashlib.sha256()
    size = 0
    try:
        for chunk in iter_input(path, max_bytes=max_bytes, timeout=timeout):
            h.update(chunk)
            size += len(chunk)
    except ImageRejected as e:
        return None, None, e.reason, e.detail
    return h.hexdigest(), size, None, ""


def input_base(source: str | os.PathLike | None) -> str | None:
    """The folder `path`s in a plan are relative to: INPUT itself when a folder, the folder of
    a list file; None for an explicit sequence of paths (or package photos)."""
    if source is None or not isinstance(source, str | os.PathLike):
        return None
    src = Path(source)
    if src.is_dir():
        return _abs(src)
    return str(src.resolve().parent)


def package_uri(path: str | os.PathLike, package: str) -> str:
    """`pkg://PACKAGE/relative/path` of a file inside an installed package's folder."""
    root = _package_dir(package)
    if root is None:
        raise FileNotFoundError(f"package {package!r} is not installed")
    rel = Path(_abs(path)).relative_to(root)
    return f"{PKG_SCHEME}{package}/{rel.as_posix()}"


def _package_dir(package: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(_abs(next(iter(spec.submodule_search_locations))))


def plan_path(item: Listed, base: str | None) -> str:
    """What the plan records for where `item` is read (see the module docstring); may hold
    surrogate-escaped bytes (a name that is not UTF-8): `plan_path_columns` stores it."""
    if item.uri.startswith(PKG_SCHEME):
        return item.uri
    if base is not None:
        rel = os.path.relpath(item.path, base)
        if not rel.startswith(os.pardir + os.sep) and rel != os.pardir:
            return Path(rel).as_posix()
    return item.path


def plan_path_columns(path: str) -> dict[str, Any]:
    """`path` (and `path_bytes` when it is not UTF-8) as the plan stores them."""
    raw = raw_path(path)
    return {"path": escape_name(path) if raw is not None else path, "path_bytes": raw}


def row_path(row: dict[str, Any]) -> str:
    """A plan row's `path` as a str the OS opens (`path_bytes` decoded when present)."""
    raw = row.get("path_bytes")
    return os.fsdecode(raw) if raw is not None else row["path"]


def resolve_row(row: dict[str, Any], base: str | None) -> dict[str, Any]:
    """A plan row with `path` resolved for this machine (`resolve_path`); a path that is not
    UTF-8 keeps an escaped `path` for display and its raw resolved bytes in `path_bytes`."""
    resolved = resolve_path(row_path(row), base)
    return dict(row, **plan_path_columns(resolved))


def resolve_path(path: str, base: str | None) -> str:
    """A plan's `path` -> the file to open on this machine."""
    if path.startswith(PKG_SCHEME):
        package, _, rel = path[len(PKG_SCHEME) :].partition("/")
        root = _package_dir(package)
        if root is None:
            return path  # read_input then reports it unreadable, with this uri
        return str(root / rel)
    if os.path.isabs(path) or base is None:
        return path
    return os.path.join(base, path)


def make_plan(
    listed: Sequence[Listed],
    *,
    shard_size: int,
    threads: int = 4,
    base: str | None = None,
    max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES,
    timeout: float | None = DEFAULT_READ_TIMEOUT,
) -> pa.Table:
    """Hash every input (threads: hashing and reads release the GIL), keep the first path of each
    content, and cut the unique images into shards of `shard_size` in input order. `base`: the
    folder the `path` column is made relative to (`input_base(INPUT)`). Inputs over `max_bytes`
    or slower to read than `timeout` are rejects."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    to_hash = [i for i, item in enumerate(listed) if item.reason is None]

    def hash_one(path: str) -> tuple[str | None, int | None, Reason | None, str]:
        return hash_file(path, max_bytes=max_bytes, timeout=timeout)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        hashed = dict(
            zip(to_hash, pool.map(hash_one, [listed[i].path for i in to_hash]), strict=True)
        )
    rows: list[dict[str, Any]] = []
    first_by_sha: dict[str, str] = {}
    for order, item in enumerate(listed):
        row: dict[str, Any] = {
            "order": order,
            "source_uri": item.uri,
            **plan_path_columns(plan_path(item, base)),
            "status": REJECTED,
        }
        if item.reason is not None:
            row.update(reason=item.reason.value, detail=item.detail)
            rows.append(row)
            continue
        sha, size, reason, detail = hashed[order]
        row.update(source_sha256=sha, source_bytes=size)
        if reason is not None:
            row.update(reason=reason.value, detail=detail)
        elif size == 0:  # every empty file has the same hash; none is a copy of another
            row.update(reason=Reason.EMPTY_FILE.value, detail="0 bytes")
        elif sha in first_by_sha:
            row.update(
                reason=Reason.DUPLICATE.value,
                detail=f"same bytes as {first_by_sha[sha]}",
                duplicate_of=sha[:16],
            )
        else:
            first_by_sha[sha] = item.uri
            row.update(status=PLANNED)
        rows.append(row)
    shard_of = assign_shards((r["order"] for r in rows if r["status"] == PLANNED), shard_size)
    for r in rows:
        if r["status"] == PLANNED:
            r["shard"] = shard_of[r["order"]]
    return pa.Table.from_pylist(rows, schema=PLAN_SCHEMA)


def assign_shards(orders: Iterable[int], shard_size: int) -> dict[int, str]:
    """The shard rule, shared by the plan and `fgid stage shard`: the unique images, in input
    order, cut every `shard_size`. `orders`: the input positions of the images kept."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    return {o: shard_name(i // shard_size) for i, o in enumerate(sorted(set(orders)))}


def plan_bytes(plan: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(
        plan.replace_schema_metadata(None),
        sink,
        compression="zstd",
        compression_level=3,
        data_page_version="1.0",
        version="2.6",
    )
    return sink.getvalue()


def write_plan(path: str | os.PathLike, plan: pa.Table) -> None:
    atomic_write_bytes(path, plan_bytes(plan))


def read_plan(path: str | os.PathLike) -> pa.Table:
    table = pq.read_table(path)
    if "path_bytes" not in table.column_names:  # a plan written before names could be bytes
        table = table.append_column(
            PLAN_SCHEMA.field("path_bytes"), pa.nulls(table.num_rows, pa.binary())
        )
    return table.select(PLAN_SCHEMA.names).cast(PLAN_SCHEMA)


def planned_images(plan: pa.Table) -> list[dict[str, Any]]:
    """The rows of images to process, in input order."""
    return [r for r in plan.to_pylist() if r["status"] == PLANNED]


def shard_sizes(plan: pa.Table) -> dict[str, int]:
    """shard name -> number of planned images in it."""
    sizes: dict[str, int] = {}
    for r in planned_images(plan):
        sizes[r["shard"]] = sizes.get(r["shard"], 0) + 1
    return dict(sorted(sizes.items()))


def plan_reject_rows(plan: pa.Table) -> Iterable[dict[str, Any]]:
    """Index rows of the inputs rejected while planning (unreadable, duplicates)."""
    for r in plan.to_pylist():
        if r["status"] != REJECTED:
            continue
        yield reject_row(
            source_uri=r["source_uri"],
            reason=r["reason"],
            detail=r["detail"] or "",
            source_sha256=r["source_sha256"],
            source_bytes=r["source_bytes"],
            duplicate_of=r["duplicate_of"],
        )
