"""Atomic, deterministic WebDataset shards, their per-shard stats JSON (the commit marker), a reader.

A shard is a plain POSIX tar of `{key}.{ext}` members. Everything that could vary between runs
is fixed: members sorted by key then extension, mtime 0, uid/gid 0, empty owner names, mode
0644, USTAR headers. So the same samples always give the same bytes, whatever the number of
workers or the order in which the samples arrived.

Writes go to a temporary name in the same folder, are fsynced, renamed over the final name, and
the folder is fsynced: a reader never sees half a shard, and a killed run leaves only temporary
files, which `clean_temp_files` removes. The stats JSON is written last; a shard is committed
when its stats JSON exists (see `is_committed`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from fgid_builder.schema import SCHEMA_VERSION, is_valid_key

TMP_MARK = ".tmp-"  # temporary files are `.{final name}.tmp-{random}` in the final folder
_EXT_RE = re.compile(r"^[a-z0-9]+(\.[a-z0-9]+)*$")
_SHARD_RE = re.compile(r"^[0-9]{6}$")

Members = Mapping[str, Any]  # {"__key__": str, ext: bytes, ...}


def shard_name(shard_id: int) -> str:
    """`000042`: the zero-padded name shared by a shard's tar, stats and index part."""
    if shard_id < 0 or shard_id > 999_999:
        raise ValueError(f"shard id out of range: {shard_id}")
    return f"{shard_id:06d}"


def check_member_name(key: str, ext: str) -> str:
    """`{key}.{ext}` after checking both: keys follow schema.make_key, extensions are lowercase
    dotted words. Anything else (a path, a dot in the key, unicode) is refused, never escaped."""
    if not is_valid_key(key):
        raise ValueError(f"invalid sample key {key!r} (expected {{sha256[:16]}}_f{{index}})")
    if not _EXT_RE.match(ext):
        raise ValueError(f"invalid member extension {ext!r} for key {key}")
    return f"{key}.{ext}"


# --------------------------------------------------------------------------- atomic files


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path_for(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(f".{p.name}{TMP_MARK}{uuid.uuid4().hex[:12]}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder, fsync, rename, fsync dir."""
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def is_temp_file(name: str) -> bool:
    return name.startswith(".") and TMP_MARK in name


def clean_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove what a killed writer left behind in `folder`; returns the removed paths."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and is_temp_file(entry.name):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


# --------------------------------------------------------------------------- tar writing


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _as_bytes(value: Any, name: str) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"member {name} must be bytes or str, got {type(value).__name__}")


def tar_bytes(samples: Iterable[Members]) -> tuple[bytes, list[str]]:
    """The shard tar as bytes and its sorted keys. Refuses duplicate keys and bad names."""
    by_key: dict[str, Members] = {}
    for sample in samples:
        key = sample.get("__key__")
        if not isinstance(key, str):
            raise ValueError("every sample needs a string __key__")
        if key in by_key:
            raise ValueError(f"duplicate sample key {key} in one shard")
        by_key[key] = sample
    keys = sorted(by_key)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key in keys:
            sample = by_key[key]
            for ext in sorted(k for k in sample if not k.startswith("__")):
                name = check_member_name(key, ext)
                data = _as_bytes(sample[ext], name)
                tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
    return buf.getvalue(), keys


def write_shard(path: str | os.PathLike, samples_members: Iterable[Members]) -> dict[str, Any]:
    """Write one shard atomically; returns {name, bytes, sha256, keys} for its stats JSON."""
    path = Path(path)
    data, keys = tar_bytes(samples_members)
    atomic_write_bytes(path, data)
    return {
        "name": path.name,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "keys": keys,
    }


# --------------------------------------------------------------------------- stats / commit


def shard_stats(
    shard_id: int,
    *,
    tar: Mapping[str, Any],
    images: int,
    reject_reasons: Iterable[str],
    index_part: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The per-shard stats record. No wall times: it must be byte-identical across runs."""
    rejects = Counter(reject_reasons)
    stats: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "shard": shard_name(shard_id),
        "images": int(images),
        "samples": len(tar["keys"]),
        "rejects": int(sum(rejects.values())),
        "rejects_by_reason": dict(sorted(rejects.items())),
        "tar": {"name": tar["name"], "bytes": int(tar["bytes"]), "sha256": tar["sha256"]},
        "keys": list(tar["keys"]),
    }
    if index_part is not None:
        stats["index_part"] = dict(index_part)
    if extra:
        stats.update(extra)
    return stats


def stats_bytes(stats: Mapping[str, Any]) -> bytes:
    return json.dumps(stats, sort_keys=True, ensure_ascii=False, indent=1).encode() + b"\n"


def write_stats(path: str | os.PathLike, stats: Mapping[str, Any]) -> None:
    """Write the stats JSON atomically. Written last, it is the shard's commit marker."""
    atomic_write_bytes(path, stats_bytes(stats))


def read_stats(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def is_committed(shard_dir: str | os.PathLike, shard_id: int, *, verify: bool = False) -> bool:
    """A shard is committed when its stats JSON exists and names a tar that exists with that
    size (and, with `verify`, that SHA-256)."""
    shard_dir = Path(shard_dir)
    stats_path = shard_dir / f"{shard_name(shard_id)}.json"
    if not stats_path.is_file():
        return False
    try:
        stats = read_stats(stats_path)
        tar_path = shard_dir / stats["tar"]["name"]
        if not tar_path.is_file() or tar_path.stat().st_size != stats["tar"]["bytes"]:
            return False
        if verify and file_sha256(tar_path) != stats["tar"]["sha256"]:
            return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- reading


def iter_shard(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Samples of one shard as {"__key__": key, ext: bytes}, in file order (sorted by key)."""
    with open(path, "rb") as f:
        yield from iter_tar(f, str(path))


def iter_tar_bytes(data: bytes) -> Iterator[dict[str, Any]]:
    """Like `iter_shard`, for a shard held in memory."""
    yield from iter_tar(io.BytesIO(data), "<bytes>")


def iter_tar(fileobj: Any, path: str) -> Iterator[dict[str, Any]]:
    """Samples of a shard tar read from a file object (`path` names it in errors)."""
    current: dict[str, Any] | None = None
    with tarfile.open(fileobj=fileobj, mode="r:") as tar:
        for info in tar:
            if not info.isreg():
                continue
            key, dot, ext = info.name.partition(".")
            if not dot or not is_valid_key(key):
                raise ValueError(f"{path}: unexpected member {info.name!r}")
            f = tar.extractfile(info)
            data = f.read() if f is not None else b""
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key}
            current[ext] = data
    if current is not None:
        yield current


def shard_paths(shard_dir: str | os.PathLike) -> list[Path]:
    """The committed tars of a dataset folder (`OUT/shards`), in name order."""
    shard_dir = Path(shard_dir)
    out = []
    for p in sorted(shard_dir.glob("*.tar")):
        if _SHARD_RE.match(p.stem) and is_committed(shard_dir, int(p.stem)):
            out.append(p)
    return out
