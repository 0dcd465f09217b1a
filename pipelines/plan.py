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
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fgid_builder.fetch import Fetcher, FetchPolicy, is_url
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
        # a manifest row's pass-through columns: canonical JSON of a string -> string map
        pa.field("extra", pa.string()),
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
    extra: str | None = None  # a manifest row's pass-through columns (canonical JSON)


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


def is_folder(source: str | os.PathLike) -> bool:
    """INPUT is a folder (local, or a prefix of an object store), not a list file."""
    from fgid_builder.dataset import is_local, url_to_fs

    if is_local(source):
        return os.path.isdir(os.fspath(source).removeprefix("file://"))
    fs, path = url_to_fs(source)
    try:
        return bool(fs.isdir(path))
    except OSError:
        return False


def walk_url(root: str, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> tuple[list[Listed], int]:
    """Image objects under a filesystem URL (`s3://bucket/photos/`), recursively; uris are the
    keys relative to `root`, as `walk_folder` makes them for a local folder (an object store has
    no symlinks or special files)."""
    from fgid_builder.dataset import url_to_fs

    fs, base = url_to_fs(root)
    out: list[Listed] = []
    skipped = 0
    for path in sorted(fs.find(base)):
        rel = path[len(base) :].lstrip("/")
        if Path(rel).suffix.lower() in IMAGE_SUFFIXES:
            if len(out) >= max_entries:
                raise ListingError(f"{root} holds more than {max_entries} images (--max-entries)")
            out.append(Listed(escape_name(rel), fs.unstrip_protocol(path)))
        else:
            skipped += 1
    return out, skipped


def _read_list_url(url: str, *, max_entries: int) -> list[Listed]:
    """A list file at a URL: relative lines are relative to the list's folder URL."""
    from fgid_builder.dataset import join_url

    try:
        data = Fetcher(FetchPolicy(max_bytes=1 << 30)).read(url)
    except ImageRejected as e:
        raise FileNotFoundError(f"input not found: {url} ({e.detail})") from None
    base = url.rstrip("/").rsplit("/", 1)[0]
    out: list[Listed] = []
    for raw in data.splitlines():
        line = raw.decode("utf-8", "surrogateescape").strip()
        if not line or line.startswith("#"):
            continue
        if len(out) >= max_entries:
            raise ListingError(f"the list file names more than {max_entries} paths (--max-entries)")
        out.append(Listed(escape_name(line), line if "://" in line else join_url(base, line)))
    return out


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


def read_manifest(manifest: str) -> Iterator[Listed]:
    """A manifest's rows (fgid_builder.manifest), in the manifest's order, read batch by batch;
    a row without a location is an UNREADABLE entry."""
    from fgid_builder.manifest import iter_manifest

    for batch in iter_manifest(manifest):
        for row in batch:
            extra = None if row.extra == "{}" else row.extra  # no pass-through columns
            if not row.location:
                uri = f"{manifest}#row={row.row}"
                yield Listed(uri, uri, Reason.UNREADABLE, "empty url/path", extra)
            else:
                yield Listed(row.uri, row.location, extra=extra)


def iter_inputs(
    source: str | os.PathLike | Sequence[str | os.PathLike], **listing: Any
) -> Iterator[Listed]:
    """`list_inputs`, streamed where the input allows it: a manifest is read batch by batch
    (a manifest's errors surface when its first batch is read). `listing`: list_inputs'
    options for folders and list files."""
    from fgid_builder.manifest import is_manifest

    if isinstance(source, str | os.PathLike) and is_manifest(os.fspath(source)):
        if not is_url(os.fspath(source)) and not os.path.isfile(source):
            raise FileNotFoundError(f"manifest not found: {source}")
        return read_manifest(os.fspath(source))
    return iter(list_inputs(source, **listing))


def list_inputs(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    follow_external_symlinks: bool = False,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> list[Listed]:
    """A folder, a list file, a manifest, or an explicit sequence of paths -> listed inputs,
    sorted by uri, except a manifest's: those keep the manifest's row order.

    The same uri listed twice is kept once (it is the same input, not a copy); a manifest's
    repeated rows are all kept (the hashing makes the later ones `duplicate` rows). A list file
    names its inputs explicitly: its entries are read wherever they are (no INPUT to leave)."""
    from fgid_builder.manifest import is_manifest

    if isinstance(source, str | os.PathLike) and is_manifest(os.fspath(source)):
        if not is_url(os.fspath(source)) and not os.path.isfile(source):
            raise FileNotFoundError(f"manifest not found: {source}")
        return list(read_manifest(os.fspath(source)))
    if isinstance(source, str) and is_url(source) and not source.startswith("file://"):
        # an object-store folder (`s3://bucket/photos/`) or list file
        if is_folder(source):
            listed, skipped = walk_url(source, max_entries=max_entries)
            if skipped:
                log.info("skipped %d objects without an image suffix under %s", skipped, source)
        else:
            listed = _read_list_url(source, max_entries=max_entries)
    elif isinstance(source, str | os.PathLike):
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


def hash_input(
    path: str, fetcher: Fetcher | None = None
) -> tuple[str | None, int | None, Reason | None, str]:
    """`hash_file` of a local path; the downloaded (or fsspec-read) bytes of a URL."""
    fetcher = fetcher or Fetcher()
    if not is_url(path):
        p = fetcher.policy
        return hash_file(path, max_bytes=p.max_bytes, timeout=p.read_timeout)
    try:
        data = fetcher.read(path)
    except ImageRejected as e:
        return None, None, e.reason, e.detail
    return hashlib.sha256(data).hexdigest(), len(data), None, ""


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
    if is_url(os.fspath(source)):
        from fgid_builder.manifest import is_manifest

        if is_manifest(os.fspath(source)):
            return None  # a manifest on an object store: its locations are resolved URLs
        root = os.fspath(source).rstrip("/")
        # an object-store folder: paths relative to it, as for a local folder
        return root if is_folder(source) else root.rsplit("/", 1)[0]
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
    if base is not None and is_url(base):  # an object-store folder: keys relative to it
        prefix = base.rstrip("/") + "/"
        return item.path[len(prefix) :] if item.path.startswith(prefix) else item.path
    if is_url(item.path):
        return item.path
    if base is not None:
        prefix = base.rstrip(os.sep) + os.sep
        if os.sep == "/" and item.path.startswith(prefix) and "/." not in item.path:
            return item.path[len(prefix) :]  # relpath's answer for a normalised path under base
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
    if is_url(path) or os.path.isabs(path) or base is None:
        return path
    if is_url(base):
        return base.rstrip("/") + "/" + path
    return os.path.join(base, path)


HASH_COLUMNS = pa.schema(
    [
        ("source_sha256", pa.string()),
        ("source_bytes", pa.int64()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)
LISTING_BATCH = 8192  # inputs per listing / hashing batch (one Ray task when on the cluster)


def hash_paths(
    paths: Sequence[str], fetch: FetchPolicy | None = None, threads: int = 4
) -> pa.RecordBatch:
    """sha256, size, reason, detail of each path (files hashed, URLs downloaded), as one
    record batch in `HASH_COLUMNS`: the unit of hashing work, in a worker or in the driver."""
    fetcher = Fetcher(fetch)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(pool.map(lambda p: hash_input(p, fetcher), paths))
    return pa.RecordBatch.from_arrays(
        [
            pa.array([r[0] for r in results], pa.string()),
            pa.array([r[1] for r in results], pa.int64()),
            pa.array([None if r[2] is None else r[2].value for r in results], pa.string()),
            pa.array([r[3] or None for r in results], pa.string()),
        ],
        schema=HASH_COLUMNS,
    )


# batches of paths -> their HASH_COLUMNS (record batches or tables), in the same order
HashRunner = Callable[[Iterable[list[str]]], Iterable[pa.RecordBatch | pa.Table]]


def hash_in_threads(fetch: FetchPolicy | None = None, threads: int = 4) -> HashRunner:
    """Hash batches of paths in this process, `threads` at a time."""

    def run(batches: Iterable[list[str]]) -> Iterator[pa.RecordBatch]:
        for paths in batches:
            yield hash_paths(paths, fetch, threads)

    return run


def _listing_batches(listed: Iterable[Listed], size: int) -> Iterator[list[Listed]]:
    batch: list[Listed] = []
    for item in listed:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def make_plan(
    listed: Iterable[Listed],
    *,
    shard_size: int,
    threads: int = 4,
    base: str | None = None,
    fetch: FetchPolicy | None = None,
    after: pa.Table | None = None,
    hasher: HashRunner | None = None,
    max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES,
    timeout: float | None = DEFAULT_READ_TIMEOUT,
) -> pa.Table:
    """Hash every input, keep the first path of each content, and cut the unique images into
    shards of `shard_size` in input order. `base`: the folder the `path` column is made
    relative to (`input_base(INPUT)`); `fetch`: how URLs are downloaded (their downloaded
    bytes are what the plan hashes); `hasher`: where batches of paths are hashed (default:
    `threads` threads here; `pipelines.ray_stages.hash_on_ray` on the cluster).

    The listing is consumed in batches and kept as Arrow columns only; duplicates and shards
    are vectorised passes over those columns, so the driver holds about the plan's own bytes
    per input (see benchmarks/plan_scale.py), never a Python object per input.

    `after` (`--append`): an existing plan that `listed` extends; its rows are kept as they are,
    the new inputs come after them in order and in new shards after its last one, and a new
    input with the bytes of a planned one is its `duplicate`. Inputs over `max_bytes` or
    slower to read than `timeout` are rejects (`fetch`, when given, says both for URLs too)."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    if fetch is None:
        fetch = FetchPolicy(
            max_bytes=max_bytes or DEFAULT_MAX_INPUT_BYTES,
            read_timeout=timeout or DEFAULT_READ_TIMEOUT,
        )
    hasher = hasher or hash_in_threads(fetch, threads)
    listing: list[pa.RecordBatch] = []

    def paths_to_hash() -> Iterator[list[str]]:
        for batch in _listing_batches(listed, LISTING_BATCH):
            listing.append(_listing_record_batch(batch, base))
            yield [item.path for item in batch if item.reason is None]

    hashed = list(hasher(paths_to_hash()))
    table = _plan_columns(listing, hashed, shard_size=shard_size, after=after)
    if after is not None:
        table = pa.concat_tables([after.cast(PLAN_SCHEMA), table]).combine_chunks()
    return table


_LISTING_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("path", pa.string()),
        ("path_bytes", pa.binary()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("extra", pa.string()),
    ]
)


def _listing_record_batch(batch: Sequence[Listed], base: str | None) -> pa.RecordBatch:
    paths = [plan_path_columns(plan_path(i, base)) for i in batch]
    return pa.RecordBatch.from_arrays(
        [
            pa.array([i.uri for i in batch], pa.string()),
            pa.array([p["path"] for p in paths], pa.string()),
            pa.array([p["path_bytes"] for p in paths], pa.binary()),
            pa.array([None if i.reason is None else i.reason.value for i in batch], pa.string()),
            pa.array([i.detail if i.reason is not None else None for i in batch], pa.string()),
            pa.array([i.extra for i in batch], pa.string()),
        ],
        schema=_LISTING_SCHEMA,
    )


def _plan_columns(
    listing: list[pa.RecordBatch],
    hashed: list[pa.RecordBatch],
    *,
    shard_size: int,
    after: pa.Table | None,
) -> pa.Table:
    """The plan rows of the listing (in order) from its hashes, vectorised."""
    import numpy as np

    lst = pa.Table.from_batches(listing, schema=_LISTING_SCHEMA).combine_chunks()
    n = lst.num_rows
    listed_ok = pc.is_null(lst.column("reason")).to_numpy(zero_copy_only=False)
    # scatter the hash results (rows listed without a problem) back to listing positions
    tables = [
        h if isinstance(h, pa.Table) else pa.Table.from_batches([h], schema=HASH_COLUMNS)
        for h in hashed
    ]
    hashes = pa.concat_tables([HASH_COLUMNS.empty_table(), *tables]).combine_chunks()
    if hashes.num_rows != int(listed_ok.sum()):
        raise RuntimeError("the hashing returned another number of rows than it was given")
    pos = np.full(n, -1, dtype=np.int64)
    pos[listed_ok] = np.arange(hashes.num_rows)
    take = pa.array(pos, mask=pos < 0)
    sha = hashes.column("source_sha256").take(take)
    size = hashes.column("source_bytes").take(take)
    reason = pc.coalesce(lst.column("reason"), hashes.column("reason").take(take))
    detail = pc.if_else(listed_ok, hashes.column("detail").take(take), lst.column("detail"))
    start_order, first_shard, known = 0, 0, None
    if after is not None and after.num_rows:
        start_order = int(pc.max(after.column("order")).as_py()) + 1
        shards = pc.drop_null(after.column("shard"))
        first_shard = int(pc.max(shards).as_py()) + 1 if len(shards) else 0
        kept = after.filter(pc.equal(after.column("status"), PLANNED))
        known = (kept.column("source_sha256"), kept.column("source_uri"))
    order = np.arange(start_order, start_order + n, dtype=np.int64)
    no_reason = pc.is_null(reason).to_numpy(zero_copy_only=False)
    size_np = pc.fill_null(size, -1).to_numpy(zero_copy_only=False)
    empty = no_reason & (size_np == 0)  # every empty file has the same hash; none is a copy
    candidate = no_reason & ~empty
    # the first input of each content is kept, the others are its duplicates
    enc = pc.dictionary_encode(pc.fill_null(sha, "")).combine_chunks()
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    first = np.full(len(enc.dictionary), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, codes[candidate], np.flatnonzero(candidate))
    first_uri = lst.column("source_uri").take(pa.array(np.where(candidate, first[codes], 0)))
    if known is not None:  # the bytes of an input the existing plan keeps
        where = pc.fill_null(pc.index_in(enc.dictionary, value_set=known[0]), -1)
        where = where.to_numpy(zero_copy_only=False).astype(np.int64)
        in_old = where[codes] >= 0
        old_uri = known[1].take(pa.array(np.where(in_old, where[codes], 0)))
        first_uri = pc.if_else(pa.array(in_old), old_uri, first_uri)
    else:
        in_old = np.zeros(n, dtype=bool)
    planned = candidate & ~in_old & (first[codes] == np.arange(n))
    dup = candidate & ~planned
    reason = pc.if_else(pa.array(empty), pa.scalar(Reason.EMPTY_FILE.value), reason)
    reason = pc.if_else(pa.array(dup), pa.scalar(Reason.DUPLICATE.value), reason)
    detail = pc.if_else(pa.array(empty), pa.scalar("0 bytes"), detail)
    detail = pc.if_else(
        pa.array(dup), pc.binary_join_element_wise("same bytes as ", first_uri, ""), detail
    )
    duplicate_of = pc.if_else(
        pa.array(dup), pc.utf8_slice_codeunits(sha, 0, 16), pa.nulls(n, pa.string())
    )
    rank = np.cumsum(planned) - 1
    shard_ids = pa.array(first_shard + rank // shard_size, mask=~planned)
    shard = pc.utf8_lpad(pc.cast(shard_ids, pa.string()), 6, "0")
    status = pc.if_else(pa.array(planned), pa.scalar(PLANNED), pa.scalar(REJECTED))
    table = pa.Table.from_pydict(
        {
            "order": pa.array(order),
            "source_uri": lst.column("source_uri"),
            "path": lst.column("path"),
            "path_bytes": lst.column("path_bytes"),
            "status": status,
            "reason": reason,
            "detail": detail,
            "source_sha256": sha,
            "source_bytes": size,
            "duplicate_of": duplicate_of,
            "shard": shard,
            "extra": lst.column("extra"),
        }
    )
    return table.select(PLAN_SCHEMA.names).cast(PLAN_SCHEMA)


@dataclass
class InputChanges:
    """How this run's inputs differ from OUT's plan (`compare_inputs`)."""

    added: list[Listed]
    removed: list[str]
    changed: list[str]  # same uri, other bytes (or other pass-through columns)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def summary(self) -> str:
        parts = [
            f"{len(self.added)} added",
            f"{len(self.removed)} removed",
            f"{len(self.changed)} changed bytes",
        ]
        examples = [
            f"{what} e.g. {items[0]}"
            for what, items in (
                ("added", [i.uri for i in self.added]),
                ("removed", self.removed),
                ("changed", self.changed),
            )
            if items
        ]
        return ", ".join(parts) + (f" ({'; '.join(examples)})" if examples else "")


def compare_inputs(
    plan: pa.Table,
    listed: Iterable[Listed],
    *,
    base: str | None,
    threads: int = 4,
    fetch: FetchPolicy | None = None,
) -> InputChanges:
    """This run's listing against the plan: inputs added, removed, and changed in place.

    Local files (and package photos) the plan hashed are hashed again (a same-size edit is a
    change too); URLs and objects are compared by uri only, since a resume must not depend on
    a server answering the same way twice (what is not committed yet is checked against the
    planned sha256 when it is read: `changed_since_plan`)."""
    from collections import Counter

    rows = plan.select(["source_uri", "path", "source_sha256", "extra"]).to_pylist()
    planned_count = Counter(r["source_uri"] for r in rows)
    by_uri: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_uri.setdefault(r["source_uri"], []).append(r)
    seen: Counter[str] = Counter()
    added: list[Listed] = []
    pairs: list[tuple[Listed, dict[str, Any]]] = []
    for item in listed:
        n = seen[item.uri]
        seen[item.uri] += 1
        if n >= planned_count[item.uri]:
            added.append(item)
        else:
            pairs.append((item, by_uri[item.uri][n]))
    removed = sorted(u for u, n in planned_count.items() if seen[u] < n)
    changed: set[str] = {item.uri for item, r in pairs if (item.extra or None) != r["extra"]}
    to_hash = [
        (item, r)
        for item, r in pairs
        if r["source_sha256"] and item.reason is None and not is_url(item.path)
    ]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        policy = fetch or FetchPolicy()
        hashes = pool.map(
            lambda p: hash_file(p[0].path, max_bytes=policy.max_bytes, timeout=policy.read_timeout)[
                0
            ],
            to_hash,
        )
        for (item, r), sha in zip(to_hash, hashes, strict=True):
            if sha != r["source_sha256"]:
                changed.add(item.uri)
    return InputChanges(added=added, removed=removed, changed=sorted(changed))


def assign_shards(orders: Iterable[int], shard_size: int, *, first: int = 0) -> dict[int, str]:
    """The shard rule, shared by the plan and `fgid stage shard`: the unique images, in input
    order, cut every `shard_size`, numbered from `first`. `orders`: the input positions of the
    images kept."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    return {o: shard_name(first + i // shard_size) for i, o in enumerate(sorted(set(orders)))}


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
            extra=r["extra"],
        )
