"""One run at a time per output: an exclusive lock file `OUT/.fgid.lock` (`fgid build`,
`fgid stage shard`), or `.NAME.fgid.lock` beside a file output (the other `fgid stage`s).

The lock is a small JSON file (host, pid, the process's start time, the command, when it was
taken) created atomically: written under a unique temporary name, then hard-linked to the lock
name, which fails when a lock is there (`link` never replaces, also on NFS, where O_EXCL used
to be unreliable), so it is never seen half-written. It is removed when the run ends, also on
an exception; a run killed with `kill -9` leaves it behind, and the next run takes it over
when it is stale: taken on this host by a process that is gone (no such pid, or a pid reused
by a process started later). A lock taken on another host is never judged stale here (that
host's processes cannot be seen): the message names it, and removing the file is the user's
call.

On an object store (an OUT URL such as `s3://bucket/out`) there are no hard links: the lock
is the object `OUT/.fgid.lock`, created with a conditional put (`If-None-Match: *`, fsspec's
exclusive mode "xb"), which AWS S3 and S3-compatible servers that implement it (MinIO, moto)
refuse when the object exists. Stale detection is the same (same host, process gone); taking a
stale lock over there is a delete then a new conditional put, so two runs taking over the same
stale lock at once cannot both win. A store whose fsspec driver has no exclusive mode raises
`LockUnsupported`: the caller decides (warn and run unlocked, or refuse).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_NAME = ".fgid.lock"
# How long a lock held by a live process of this host is watched before a run is refused: a
# run killed a moment ago is still being torn down by the kernel.
STALE_GRACE_S = 3.0


class LockHeld(Exception):
    """Another run holds the lock: one line naming it (the CLI exits with 2)."""


class LockUnsupported(Exception):
    """The object store's fsspec driver cannot create an object only if it is absent."""


def is_url(out: str | os.PathLike) -> bool:
    """An object-store (or other non-local fsspec) URL, not a local path or file:// URL."""
    text = os.fspath(out)
    return isinstance(text, str) and "://" in text and not text.startswith("file://")


def _start_time(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux /proc), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces or parentheses
    fields = stat[stat.rindex(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of the file
    except (IndexError, ValueError):
        return None


def _state(pid: int) -> str | None:
    """The state letter of process `pid` (Linux /proc: R, S, D, Z...), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0] if fields else None


def _alive(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    if _state(pid) in ("Z", "X"):
        return False  # exited, not yet reaped (a killed run whose parent is gone too)
    if start is not None:
        now = _start_time(pid)
        if now is not None and now != start:
            return False  # the pid was reused by a newer process
    return True


def _describe(holder: dict[str, Any]) -> str:
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if since else "?"
    return (
        f"pid {holder.get('pid')} on {holder.get('host')} since {when} "
        f"({holder.get('command') or 'fgid'})"
    )


def _read(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _is_stale(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    start = holder.get("start_time")
    return not _alive(pid, start if isinstance(start, int) else None)


def lock_path_for(out: str | os.PathLike, *, is_file: bool = False) -> Path:
    """The lock of output `out`: `OUT/.fgid.lock` for a folder, `.NAME.fgid.lock` beside a
    file output (`fgid stage`'s Parquet files)."""
    out = Path(out)
    return out.parent / f".{out.name}{LOCK_NAME}" if is_file else out / LOCK_NAME


def acquire(out: str | os.PathLike, command: str = "", *, is_file: bool = False) -> Path | str:
    """Take the lock on output `out` (a folder, created if needed, or with `is_file` a file
    whose folder is created) or raise `LockHeld`; returns the lock file's path (give it to
    `release`)."""
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start_time": _start_time(os.getpid()),
        "since": int(time.time()),
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500],
        "token": uuid.uuid4().hex,
    }
    if is_url(out):
        return _acquire_object(str(out), me, is_file)
    path = lock_path_for(out, is_file=is_file)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{path.name}.{me['token']}.tmp"
    tmp.write_text(json.dumps(me, sort_keys=True) + "\n")
    try:
        for _ in range(5):
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                pass
            holder = _settled_holder(path)
            if holder is None:
                continue  # released in between: try again
            if not _is_stale(holder):
                raise LockHeld(_held_message(out, path, holder))
            _take_over(path, holder)
        raise LockHeld(f"{out}: could not take the lock {path} (contended)")
    finally:
        tmp.unlink(missing_ok=True)


def _settled_holder(path: Path) -> dict[str, Any] | None:
    """The lock's holder, given a moment to go when it is a process of this host: a run just
    ended with kill -9 still holds its pid while the kernel tears it down (seen: a rerun right
    after `kill -9` of the build's process group found its watched child still there)."""
    deadline = time.monotonic() + STALE_GRACE_S
    while True:
        holder = _read(path)
        if (
            holder is None
            or holder.get("host") != socket.gethostname()
            or _is_stale(holder)
            or time.monotonic() >= deadline
        ):
            return holder
        time.sleep(0.1)


def _held_message(out: str | os.PathLike, path: Any, holder: dict[str, Any]) -> str:
    if holder:
        return (
            f"{out} is in use by another run: {_describe(holder)}; wait for it, or remove "
            f"{path} if that run is gone"
        )
    return f"{out} is locked ({path} unreadable); remove it if no run is using {out}"


def _acquire_object(out: str, me: dict[str, Any], is_file: bool) -> str:
    """The lock object of an object-store OUT (see the module docstring); returns its URL."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(out)
    root = root.rstrip("/")
    key = (
        f"{root.rsplit('/', 1)[0]}/.{root.rsplit('/', 1)[-1]}{LOCK_NAME}"
        if is_file
        else (f"{root}/{LOCK_NAME}")
    )
    url = fs.unstrip_protocol(key)
    data = (json.dumps(me, sort_keys=True) + "\n").encode()
    for _ in range(5):
        try:
            with fs.open(key, "xb") as f:
                f.write(data)
            return url
        except FileExistsError:
            pass
        except (ValueError, NotImplementedError, TypeError) as e:
            raise LockUnsupported(f"{out}: this store cannot create a lock object: {e}") from None
        try:
            holder = json.loads(fs.cat_file(key))
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            holder = {}
        if not isinstance(holder, dict) or not _is_stale(holder):
            raise LockHeld(_held_message(out, url, holder if isinstance(holder, dict) else {}))
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(key)
    raise LockHeld(f"{out}: could not take the lock {url} (contended)")


def _release_object(url: str) -> None:
    import fsspec

    fs, key = fsspec.core.url_to_fs(url)
    try:
        holder = json.loads(fs.cat_file(key))
    except (OSError, ValueError):
        return
    if (
        isinstance(holder, dict)
        and holder.get("pid") == os.getpid()
        and holder.get("host") == socket.gethostname()
    ):
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(key)


def _take_over(path: Path, stale: dict[str, Any]) -> None:
    """Remove a stale lock, but only the one judged stale: moved aside first (atomic), checked,
    and put back if another run replaced it in between."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _read(aside) == stale:
        aside.unlink(missing_ok=True)
        return
    with contextlib.suppress(FileExistsError):
        os.link(aside, path)  # a live lock taken in between: give it back
    aside.unlink(missing_ok=True)


def release(path: Path | str) -> None:
    """Remove the lock if it is still ours (never another run's)."""
    if isinstance(path, str) and is_url(path):
        _release_object(path)
        return
    path = Path(path)
    holder = _read(path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(
    out: str | os.PathLike, command: str = "", *, is_file: bool = False
) -> Iterator[Path | str]:
    """`with locked(OUT):` the whole run holds OUT; raises `LockHeld` when another run does."""
    path = acquire(out, command, is_file=is_file)
    try:
        yield path
    finally:
        release(path)
