"""Identity-disjoint train/val/test splits: every identity lies in exactly one split.

Identities are put in a seeded order (sha256 of `seed:identity`, so the order does not depend on
how identities are numbered or listed) and laid end to end by sample count; an identity goes to
the split whose share of the samples holds the identity's middle sample. Fractions are thus met
by samples, to within one identity, and the result is a pure function of (identities, fractions,
seed).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = "splits.parquet"
SPLIT_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("identity", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)
DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    if not fractions:
        raise ValueError("no splits given")
    if any(f < 0 for f in fractions.values()):
        raise ValueError("split fractions must be >= 0")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions sum to {total:g}, not 1")
    return dict(fractions)


def split_identities(
    identity_of_key: Mapping[str, str], fractions: Mapping[str, float], seed: int = 0
) -> dict[str, str]:
    """key -> split name."""
    fractions = check_fractions(fractions)
    counts = Counter(identity_of_key.values())
    order = sorted(counts, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    total = sum(counts.values())
    names = list(fractions)
    bounds, acc = [], 0.0
    for name in names:
        acc += fractions[name] * total
        bounds.append(acc)
    split_of: dict[str, str] = {}
    seen = 0
    for ident in order:
        middle = seen + counts[ident] / 2
        seen += counts[ident]
        pick = next((n for n, b in zip(names, bounds, strict=True) if middle < b), names[-1])
        split_of[ident] = pick
    return {k: split_of[i] for k, i in identity_of_key.items()}


def splits_table(keys: Sequence[str], identities: Sequence[str], split_of: Mapping[str, str]):
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    return pa.Table.from_pydict(
        {
            "key": [keys[i] for i in order],
            "identity": [identities[i] for i in order],
            "split": [split_of[keys[i]] for i in order],
        },
        schema=SPLIT_SCHEMA,
    )


def write_splits(out: str | os.PathLike, table: pa.Table) -> None:
    import io

    from fgid_builder.dataset import Store

    sink = io.BytesIO()  # fixed writer options, no metadata: the same rows give the same bytes
    pq.write_table(
        table.replace_schema_metadata(None),
        sink,
        compression="zstd",
        compression_level=3,
        data_page_version="1.0",
        version="2.6",
    )
    Store(out).write_bytes(SPLITS, sink.getvalue())


def read_splits(path: str | os.PathLike) -> pa.Table:
    """`splits.parquet` given its dataset folder or the file itself (local paths or URLs)."""
    from fgid_builder.dataset import url_to_fs

    fs, p = url_to_fs(path)
    if fs.isdir(p):
        p = f"{p.rstrip('/')}/{SPLITS}"
    with fs.open(p, "rb") as f:
        return pq.read_table(f, schema=SPLIT_SCHEMA)


def keys_in_split(path: str | os.PathLike, split: str) -> set[str]:
    """The keys of one split, from `OUT/splits.parquet` (or that file's path)."""
    table = read_splits(path)
    names = set(table.column("split").to_pylist())
    if split not in names:
        raise ValueError(f"no split {split!r} in {path} (splits: {', '.join(sorted(names))})")
    return {
        k
        for k, s in zip(
            table.column("key").to_pylist(), table.column("split").to_pylist(), strict=True
        )
        if s == split
    }
