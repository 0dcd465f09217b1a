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

This module locks folders on a file system (local disk, NFS). An object store has no hard
links: an OUT there needs a lock object written with a conditional put (`If-None-Match: *`),
which is not implemented here.
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


class LockHeld(Exception):
    """Another run holds the lock: one line naming it (the CLI exits with 2)."""


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


def _alive(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
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


def acquire(out: str | os.PathLike, command: str = "", *, is_file: bool = False) -> Path:
    """Take the lock on output `out` (a folder, created if needed, or with `is_file` a file
    whose folder is created) or raise `LockHeld`; returns the lock file's path (give it to
    `release`)."""
    path = lock_path_for(out, is_file=is_file)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start_time": _start_time(os.getpid()),
        "since": int(time.time()),
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500],
        "token": uuid.uuid4().hex,
    }
    tmp = folder / f"{path.name}.{me['token']}.tmp"
    tmp.write_text(json.dumps(me, sort_keys=True) + "\n")
    try:
        for _ in range(5):
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                pass
            holder = _read(path)
            if holder is None:
                continue  # released in between: try again
            if not _is_stale(holder):
                target = Path(out)
                raise LockHeld(
                    f"{target} is in use by another run: {_describe(holder)}; wait for it, or "
                    f"remove {path} if that run is gone"
                    if holder
                    else f"{target} is locked ({path} unreadable); remove it if no run is using"
                    f" {target}"
                )
            _take_over(path, holder)
        raise LockHeld(f"{out}: could not take the lock {path} (contended)")
    finally:
        tmp.unlink(missing_ok=True)


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


def release(path: Path) -> None:
    """Remove the lock if it is still ours (never another run's)."""
    holder = _read(path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(out: str | os.PathLike, command: str = "", *, is_file: bool = False) -> Iterator[Path]:
    """`with locked(OUT):` the whole run holds OUT; raises `LockHeld` when another run does."""
    path = acquire(out, command, is_file=is_file)
    try:
        yield path
    finally:
        release(path)
