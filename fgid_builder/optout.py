"""Opt-out lists: who must never be in a dataset.

A list is a text file, one entry a line, `#` starts a comment:

    sha256 <64 hex>     every face of the photo with these bytes (a source hash)
    key <key>           one face of a photo (`{sha256[:16]}_f{index}`), the others stay
    photo <path>        every face that matches a face in this reference photo (relative paths:
                        relative to the list file)

`fgid build --exclude LIST` never writes a listed photo (its plan row is a reject with reason
`opted_out`) nor a listed face; `fgid erase` adds what it removed to the dataset's own list,
`OUT/optout.txt`, which every later build into OUT reads too, so a resume or a rebuild never
brings a person back. The dataset's own list holds hashes only, never a face or an embedding.
The training stream skips listed samples in shards made before the list.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPTOUT = "optout.txt"
# index row details of opted-out photos and faces; `fgid erase` writes the same, so an erased
# dataset and a rebuild with its list have the same bytes
SHA_LISTED = "source sha256 on the opt-out list"
KEY_LISTED = "key on the opt-out list"
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_HEADER = (
    "# fgid opt-out list: `sha256 HEX` (a photo), `key KEY` (one face), `photo PATH`.\n"
    "# Written by `fgid erase`; read by `fgid build` into this dataset and by training.\n"
)


@dataclass
class OptOutList:
    sha256: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)
    photos: list[str] = field(default_factory=list)  # absolute paths of reference photos

    def __bool__(self) -> bool:
        return bool(self.sha256 or self.keys or self.photos)

    def update(self, other: OptOutList) -> OptOutList:
        self.sha256 |= other.sha256
        self.keys |= other.keys
        self.photos += [p for p in other.photos if p not in self.photos]
        return self

    def excludes(self, key: str | None, source_sha256: str | None) -> bool:
        """Is this sample (or photo, key None) listed by hash? (Photos are matched by
        embedding where faces are embedded, not here.)"""
        return (source_sha256 is not None and source_sha256 in self.sha256) or (
            key is not None and key in self.keys
        )

    def excludes_meta(self, key: str, meta: Mapping[str, Any]) -> bool:
        return self.excludes(key, (meta.get("source") or {}).get("sha256"))


def parse_optout(
    text: str, *, base: str | os.PathLike | None = None, name: str = "list"
) -> OptOutList:
    from fgid_builder.schema import is_valid_key

    out = OptOutList()
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, value = line.partition(" ")
        value = value.strip()
        if kind == "sha256" and _SHA_RE.match(value.lower()):
            out.sha256.add(value.lower())
        elif kind == "key" and is_valid_key(value):
            out.keys.add(value)
        elif kind == "photo" and value:
            p = Path(value).expanduser()
            if not p.is_absolute() and base is not None:
                p = Path(base) / p
            out.photos.append(os.path.abspath(p))
        else:
            raise ValueError(
                f"{name}:{n}: expected `sha256 HEX`, `key KEY` or `photo PATH`, got {raw.strip()!r}"
            )
    return out


def read_optout(path: str | os.PathLike) -> OptOutList:
    path = Path(path)
    return parse_optout(
        path.read_text(encoding="utf-8"), base=path.resolve().parent, name=str(path)
    )


def read_lists(paths: Iterable[str | os.PathLike]) -> OptOutList:
    out = OptOutList()
    for p in paths:
        out.update(read_optout(p))
    return out


def dataset_optout(out: str | os.PathLike) -> OptOutList:
    """The dataset's own list (`OUT/optout.txt`, OUT a folder or URL), empty when there is none."""
    from fgid_builder.dataset import Store, is_local

    if is_local(out):
        path = Path(Store(out).path(OPTOUT))
        return read_optout(path) if path.is_file() else OptOutList()
    store = Store(out)
    if not store.is_file(OPTOUT):
        return OptOutList()
    return parse_optout(store.read_bytes(OPTOUT).decode("utf-8"), name=store.url_of(OPTOUT))


def optout_bytes(entries: OptOutList) -> bytes:
    """Canonical text: header, sorted `sha256` lines then sorted `key` lines (no photos: the
    dataset's own list holds hashes only)."""
    lines = [f"sha256 {s}" for s in sorted(entries.sha256)] + [
        f"key {k}" for k in sorted(entries.keys)
    ]
    return (_HEADER + "".join(line + "\n" for line in lines)).encode()


@dataclass
class Exclusions:
    """An opt-out list ready to apply to faces: hashes, and the reference photos' embeddings
    (made with the dataset's own detector and embedder) with the same-person threshold."""

    listed: OptOutList
    references: Any = None  # (m, d) float32 unit vectors, or None
    threshold: float | None = None

    def reason(
        self, key: str | None, source_sha256: str | None, embedding: Any = None
    ) -> str | None:
        """Why this face is opted out (the index row's detail), or None."""
        import numpy as np

        if source_sha256 is not None and source_sha256 in self.listed.sha256:
            return SHA_LISTED
        if key is not None and key in self.listed.keys:
            return KEY_LISTED
        if embedding is not None and self.references is not None and len(self.references):
            sims = self.references @ np.asarray(embedding, dtype=np.float32).reshape(-1)
            if float(sims.max()) >= float(self.threshold):
                return f"matches an opt-out reference photo (cosine {float(sims.max()):.4f})"
        return None
