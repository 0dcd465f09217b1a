"""The dataset layout on any filesystem URL, its shard writer with the commit protocol, the reader.

One owner of where things lie in a dataset and of how a shard is committed; `fgid build`,
`fgid stage`, `fgid erase`, export, the QA report, eval and the training stream all go through
here. A dataset is a folder given as a local path or any fsspec URL (`s3://bucket/prefix` on
any S3-compatible endpoint, `gs://...`, `memory://...`):

```
plan.parquet            the fixed plan (pipelines.plan owns its columns)
build.json              the settings and model versions the bytes depend on
shards/NNNNNN.tar       WebDataset shard (fgid_builder.shards encodes it)
shards/NNNNNN.json      its commit record: sizes and SHA-256 of the tar and the index part
index_parts/NNNNNN.parquet   the shard's index rows
index.parquet           every index row (the parts plus the planning rejects), sorted
logs/                   per-run files (machine-specific)
```

Why fsspec (and not pyarrow.fs): one API over local disks, S3 (s3fs: botocore's credential
chain and `AWS_ENDPOINT_URL`), GCS (gcsfs) and in-memory folders for tests; its filesystem
objects pickle, so Ray workers and DataLoader workers open the same URLs the driver was given,
and pyarrow reads Parquet through its file objects.

Commit protocol. A shard is committed when its record (`shards/NNNNNN.json`) exists and the tar
and the index part it names have the recorded sizes and SHA-256. The record is written last.
- local folders: each file goes to a temporary name in its folder, is fsynced, renamed over the
  final name, and the folder fsynced; a killed writer leaves only temporary files, which
  `clean_temp_files` removes;
- object stores (no rename): each object is one PUT of its final bytes (an object appears
  whole or not at all), the tar and the index part first, the record last; nothing temporary
  is written. A killed writer leaves at most a tar or part without a record: not committed, so
  redone, and overwritten with the same bytes.
Resume trusts a record only when the objects match it (`committed_stats`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa

from fgid_builder import shards as shard_codec

SHARDS = "shards"
PARTS = "index_parts"
LOGS = "logs"
REPORT = "report"
PLAN = "plan.parquet"
INDEX = "index.parquet"
SETTINGS = "build.json"

_SHARD_RE = re.compile(r"^[0-9]{6}$")
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


# --------------------------------------------------------------------------- URLs


def is_url(location: str | os.PathLike) -> bool:
    """True for `scheme://...` (local `file://` included), False for a plain path."""
    return bool(_URL_RE.match(os.fspath(location)))


def is_local(location: str | os.PathLike) -> bool:
    loc = os.fspath(location)
    return not is_url(loc) or loc.startswith("file://")


def _storage_options(protocol: str) -> dict[str, Any]:
    """S3: the endpoint from `AWS_ENDPOINT_URL(_S3)` as every AWS SDK reads it (older botocore
    versions inside aiobotocore ignore the variable); credentials stay botocore's chain.
    Object stores: no listings cache, since other processes (the Ray workers) write the objects
    this process lists (a cached listing would hide a shard committed meanwhile)."""
    if protocol in ("s3", "s3a"):
        options: dict[str, Any] = {"use_listings_cache": False}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        return options
    if protocol in ("gs", "gcs"):
        return {"use_listings_cache": False}
    return {}


def url_to_fs(location: str | os.PathLike) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a local path or URL."""
    import fsspec

    loc = os.fspath(location)
    if not is_url(loc):
        return fsspec.filesystem("file"), os.path.abspath(loc)
    protocol = loc.split("://", 1)[0].lower()
    try:
        fs, path = fsspec.core.url_to_fs(loc, **_storage_options(protocol))
    except ImportError as e:  # s3fs / gcsfs not installed
        extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}.get(protocol)
        hint = f" (pip install 'fgid[{extra}]')" if extra else ""
        raise ImportError(f"cannot open {loc}: {e}{hint}") from None
    return fs, path.rstrip("/") if path not in ("/", "") else path


def _is_local_fs(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def join_url(base: str, *parts: str) -> str:
    """`base` + "/" + parts, for URLs and local paths alike."""
    if not is_url(base):
        return os.path.join(base, *parts)
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def open_url(url: str | os.PathLike, mode: str = "rb") -> Any:
    """A file object for a local path or URL (never `pipe:` or other shell forms)."""
    loc = os.fspath(url)
    if loc.startswith("pipe:"):
        raise ValueError(f"refusing {loc!r}: only files and object-store URLs are read")
    fs, path = url_to_fs(loc)
    return fs.open(path, mode)


def read_url(url: str | os.PathLike, *, max_bytes: int | None = None) -> bytes:
    """The bytes at a local path or URL; more than `max_bytes` is a ValueError."""
    with open_url(url) as f:
        data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"{url}: larger than {max_bytes} bytes")
    return data


def glob_urls(pattern: str) -> list[str]:
    """Local paths or URLs matching a glob, as the same kind of string, sorted."""
    fs, path = url_to_fs(pattern)
    found = sorted(fs.glob(path))
    if not is_url(pattern):
        return found
    return sorted(fs.unstrip_protocol(p) for p in found)


PKG_SCHEME = "pkg://"  # a file inside an installed package: pkg://PACKAGE/relative/path


def package_dir(package: str) -> Any:
    """The folder of an installed package (a Path), or None."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(os.path.abspath(next(iter(spec.submodule_search_locations))))


def resolve_input(path: str, base: str | None) -> str:
    """A plan's `path` -> what this run opens: a local file, a URL, or a package file."""
    if path.startswith(PKG_SCHEME):
        package, _, rel = path[len(PKG_SCHEME) :].partition("/")
        root = package_dir(package)
        if root is None:
            return path  # read_input then reports it unreadable, with this uri
        return str(root / rel)
    if os.path.isabs(path) or base is None or is_url(path):
        return path
    return join_url(base, path)


# --------------------------------------------------------------------------- a folder


class Store:
    """A folder on a filesystem (local path or URL), with atomic writes into it."""

    def __init__(self, url: str | os.PathLike):
        self.url = os.fspath(url)
        self.fs, self.root = url_to_fs(self.url)
        self.local = _is_local_fs(self.fs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def __reduce__(self):  # ship the URL, not a filesystem instance with its sessions
        return (type(self), (self.url,))

    def path(self, *rel: str) -> str:
        """The path of `rel` inside the filesystem."""
        if not rel:
            return self.root
        if self.local:
            return os.path.join(self.root, *rel)
        return "/".join([self.root, *rel])

    def url_of(self, *rel: str) -> str:
        """What a reader opens (`s3://b/out/shards/000000.tar`, or a local path)."""
        return self.path(*rel) if self.local else self.fs.unstrip_protocol(self.path(*rel))

    def makedirs(self, *rel: str) -> None:
        if self.local:
            os.makedirs(self.path(*rel), exist_ok=True)
        # object stores have no folders

    def exists(self, *rel: str) -> bool:
        return bool(self.fs.exists(self.path(*rel)))

    def is_file(self, *rel: str) -> bool:
        return bool(self.fs.isfile(self.path(*rel)))

    def size(self, *rel: str) -> int | None:
        try:
            return int(self.fs.size(self.path(*rel)))
        except (FileNotFoundError, OSError):
            return None

    def read_bytes(self, *rel: str) -> bytes:
        return self.fs.cat_file(self.path(*rel))

    def open(self, *rel: str, mode: str = "rb") -> Any:
        return self.fs.open(self.path(*rel), mode)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole file atomically: local temp + fsync + rename; one PUT elsewhere."""
        if self.local:
            path = self.path(rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            shard_codec.atomic_write_bytes(path, data)
        else:
            self.fs.pipe_file(self.path(rel), bytes(data))

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def remove(self, rel: str) -> None:
        try:
            self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            pass

    def listdir(self, *rel: str) -> list[str]:
        """Names directly under `rel` (files only), sorted; [] when there is no such folder."""
        try:
            entries = self.fs.ls(self.path(*rel), detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(
            e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "file"
        )

    def clean_temp_files(self, *folders: str) -> list[str]:
        """Remove what a killed local writer left in `folders` (object stores have none)."""
        if not self.local:
            return []
        removed = []
        for folder in folders:
            removed += [str(p) for p in shard_codec.clean_temp_files(self.path(folder))]
        return removed


# --------------------------------------------------------------------------- the dataset


def shard_tar(shard: str) -> str:
    return f"{SHARDS}/{shard}.tar"


def shard_record(shard: str) -> str:
    return f"{SHARDS}/{shard}.json"


def shard_part(shard: str) -> str:
    return f"{PARTS}/{shard}.parquet"


class Dataset(Store):
    """An fgid dataset folder: its layout, the shard commit protocol, and the reader."""

    def prepare(self) -> int:
        """Create the folders (local) and remove temporary files a killed run left; returns
        how many were removed."""
        for sub in (SHARDS, PARTS, LOGS):
            self.makedirs(sub)
        return len(self.clean_temp_files("", SHARDS, PARTS))

    # ----------------------------------------------------------------- writing a shard

    def write_shard(
        self,
        shard: str,
        samples: Iterable[Mapping[str, Any]],
        index_rows: Sequence[Mapping[str, Any]],
        *,
        images: int,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write and commit one shard: tar, then its index part, then the commit record.

        `samples`: WebDataset members ({"__key__", ext: bytes}); `index_rows`: every index row
        of the shard (samples and rejects). Returns the commit record (stats JSON)."""
        from fgid_builder.index import rows_table, table_bytes

        data, keys = shard_codec.tar_bytes(samples)
        part = table_bytes(rows_table(index_rows))
        self.write_bytes(shard_tar(shard), data)
        self.write_bytes(shard_part(shard), part)
        stats = shard_codec.shard_stats(
            int(shard),
            tar={
                "name": f"{shard}.tar",
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "keys": keys,
            },
            images=images,
            reject_reasons=[r["reason"] for r in index_rows if r["status"] != "ok"],
            index_part={  # the same fields `fgid erase` records when it rewrites a shard
                "name": shard_part(shard),
                "rows": len(index_rows),
                "sha256": hashlib.sha256(part).hexdigest(),
            },
            extra=extra,
        )
        self.write_bytes(shard_record(shard), shard_codec.stats_bytes(stats))
        return stats

    # ----------------------------------------------------------------- commit records

    def read_record(self, shard: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.read_bytes(shard_record(shard)))
        except (FileNotFoundError, OSError, ValueError):
            return None

    def committed_stats(self, shard: str, *, verify_tar: bool = False) -> dict[str, Any] | None:
        """The shard's commit record when the objects match it, else None.

        Checks: the tar's size, the index part's size and SHA-256 (small; a record without an
        index part names only its tar), and with `verify_tar` the tar's SHA-256 too (reads
        the whole tar)."""
        stats = self.read_record(shard)
        if stats is None:
            return None
        try:
            tar, part = stats["tar"], stats.get("index_part")
            if self.size(SHARDS, tar["name"]) != int(tar["bytes"]):
                return None
            if part is not None:  # (shards written by hand, e.g. in tests, may have none)
                part_bytes = self.read_bytes(part["name"])
                if "bytes" in part and len(part_bytes) != int(part["bytes"]):
                    return None
                if hashlib.sha256(part_bytes).hexdigest() != part["sha256"]:
                    return None
            if verify_tar and self.sha256(SHARDS, tar["name"]) != tar["sha256"]:
                return None
        except (OSError, KeyError, TypeError, ValueError):
            return None
        return stats

    def is_committed(self, shard: str, *, verify_tar: bool = False) -> bool:
        return self.committed_stats(shard, verify_tar=verify_tar) is not None

    def sha256(self, *rel: str) -> str:
        h = hashlib.sha256()
        with self.open(*rel) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def shard_names(self) -> list[str]:
        """Shards with a commit record (checked or not), in name order."""
        return [
            n[: -len(".json")]
            for n in self.listdir(SHARDS)
            if n.endswith(".json") and _SHARD_RE.match(n[: -len(".json")])
        ]

    def committed_shards(self) -> list[str]:
        return [s for s in self.shard_names() if self.is_committed(s)]

    def shard_urls(self) -> list[str]:
        """What a reader opens for each committed shard, in name order."""
        return [self.url_of(shard_tar(s)) for s in self.committed_shards()]

    # ----------------------------------------------------------------- reading

    def iter_shard(self, shard: str) -> Iterator[dict[str, Any]]:
        """Samples of one shard as {"__key__": key, ext: bytes}, in file order."""
        with self.open(shard_tar(shard)) as f:
            yield from shard_codec.iter_tar(f, self.url_of(shard_tar(shard)))

    def iter_samples(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(shard, members) of every committed shard, in order."""
        for shard in self.committed_shards():
            for members in self.iter_shard(shard):
                yield shard, members

    def read_parquet(self, rel: str, *, schema: pa.Schema | None = None) -> pa.Table:
        import pyarrow.parquet as pq

        with self.open(rel) as f:
            return pq.read_table(f, schema=schema)

    def read_index(self, rel: str = INDEX) -> pa.Table:
        from fgid_builder.index import INDEX_SCHEMA

        if not self.is_file(rel):
            raise FileNotFoundError(
                f"no index at {self.url_of(rel)}: is {self.url} an fgid dataset?"
            )
        return self.read_parquet(rel, schema=INDEX_SCHEMA)

    def read_part(self, shard: str) -> pa.Table:
        return self.read_index(shard_part(shard))

    def merge_index(
        self, shards: Iterable[str], extra_rows: Iterable[Mapping[str, Any]] = ()
    ) -> pa.Table:
        """`index.parquet` from the shards' index parts plus `extra_rows` (planning rejects),
        streaming (`fgid_builder.index.merge_sorted`: memory bounded by its fan-in, not by the
        rows); returns its `status` and `reason` columns. On an object store the merge runs
        into a local temporary file, uploaded as one object."""
        import tempfile

        import pyarrow.parquet as pq

        from fgid_builder.index import merge_sorted, rows_table

        sources: list[Any] = [self._part_source(s) for s in sorted(shards)]
        sources.append(rows_table(extra_rows))
        if self.local:
            merge_sorted(sources, self.path(INDEX))
            return pq.read_table(self.path(INDEX), columns=["status", "reason"])
        with tempfile.TemporaryDirectory(prefix="fgid-index-") as tmp:
            local = os.path.join(tmp, INDEX)
            merge_sorted(sources, local)
            self.put_file(INDEX, local)
            return pq.read_table(local, columns=["status", "reason"])

    def _part_source(self, shard: str) -> Any:
        """A merge source for a shard's index part: the local path, or (object stores) a
        callable opening the object when the merge reaches it."""
        if self.local:
            from pathlib import Path

            return Path(self.path(shard_part(shard)))
        return lambda: self.open(shard_part(shard))

    def put_file(self, rel: str, local_path: str) -> None:
        """Upload a local file as `rel` (local OUT: an atomic copy). An object store's upload
        (one PUT, or a multipart upload completed at the end) makes the object appear whole."""
        if self.local:
            with open(local_path, "rb") as f:
                self.write_bytes(rel, f.read())
        else:
            self.fs.put_file(local_path, self.path(rel))


def iter_shard_url(url: str) -> Iterator[dict[str, Any]]:
    """Samples of the shard at a local path or URL, {"__key__", ext: bytes}, in file order."""
    with open_url(url) as f:
        yield from shard_codec.iter_tar(f, url)
