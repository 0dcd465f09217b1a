"""Who is in a dataset: one identity id per sample, from its embedding, at any scale.

Assignment: an HNSW graph (hnswlib, cosine space) gives every sample its `k` nearest
neighbours; two samples are linked when their cosine is at least the embedder's same-person
threshold; the connected components of those links are then re-cut by average linkage at the
same threshold (single links alone chain two people through one look-alike pair: on the
deepface photos they merged two of the 13 people). Its id is `id_` + the smallest key in it,
so an id does not change when unrelated samples come or go.

Why hnswlib (over faiss-cpu): no training step and no data-dependent tuning (IVF needs k-means
and nprobe per collection), cosine space built in, and the graph is a pure function of the
vectors when it is built in one thread with a fixed seed, in key order. Deterministic output is
a project rule; queries (read only) use every thread. Memory is about (4 d + 8 M) bytes per
vector (`benchmarks/identity_scale.py` measures 100k and 1M).

The threshold per embedder is calibrated on labelled pairs (`calibrate_threshold`: the cosine
that decides most pairs right, the midpoint of the widest gap among the best) and recorded in
`CALIBRATED`, with what it was measured on; `tests/fgid_builder/test_identities.py` recomputes
it on the shared deepface pairs. An embedder without a recorded threshold needs one given.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

IDENTITIES = "identities.parquet"
IDENTITIES_JSON = "identities.json"
ID_PREFIX = "id_"

# embedder model name prefix -> (threshold, what it was calibrated on). Recomputed by
# tests/fgid_builder/test_identities.py::test_recorded_dlib_threshold_is_the_calibrated_one.
CALIBRATED: dict[str, dict[str, Any]] = {
    "dlib": {
        "threshold": 0.9248,
        "calibrated_on": "the 280 labelled pairs of ../shared/data/faces/deepface/pairs.csv "
        "(face 0 of each photo, fgid build with the embedded defaults)",
        "pair_accuracy": 1.0,
        "identity_pair_precision": 1.0,
        "identity_pair_recall": 1.0,
    },
}

IDENTITY_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("identity", pa.string(), nullable=False),
        pa.field("source_sha256", pa.string()),
        pa.field("size", pa.int64(), nullable=False),  # samples with this identity
        # what decided it: the nearest sample of the same identity and its cosine (null: alone)
        pa.field("linked_to", pa.string()),
        pa.field("cosine", pa.float64()),
        # the nearest sample of ANOTHER identity among the k neighbours, and its cosine
        pa.field("nearest_other", pa.string()),
        pa.field("nearest_other_cosine", pa.float64()),
    ]
)


@dataclass(frozen=True)
class AssignConfig:
    """How identities are assigned (`fgid identities --help`)."""

    threshold: float
    k: int = 16  # neighbours per sample
    ef: int = 64  # hnswlib query breadth (>= k)
    m: int = 16  # hnswlib graph degree
    ef_construction: int = 100
    threads: int = 0  # query threads; 0 = all CPUs (the build is always one thread)
    seed: int = 0
    # components of up to this many samples are re-cut by average linkage (0/1: never)
    refine_max: int = 5000

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold} is not a cosine in [-1, 1]")
        if self.k < 1 or self.m < 2 or self.ef_construction < 1 or self.ef < 1:
            raise ValueError("k >= 1, m >= 2, ef >= 1 and ef_construction >= 1")


@dataclass
class Assignment:
    keys: list[str]
    identity: list[str]
    size: list[int]
    linked_to: list[str | None]
    cosine: list[float | None]
    nearest_other: list[str | None]
    nearest_other_cosine: list[float | None]
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self, sources: Sequence[str | None] | None = None) -> pa.Table:
        n = len(self.keys)
        return pa.Table.from_pydict(
            {
                "key": self.keys,
                "identity": self.identity,
                "source_sha256": list(sources) if sources is not None else [None] * n,
                "size": self.size,
                "linked_to": self.linked_to,
                "cosine": self.cosine,
                "nearest_other": self.nearest_other,
                "nearest_other_cosine": self.nearest_other_cosine,
            },
            schema=IDENTITY_SCHEMA,
        )


def normalise(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"expected an (n, d) array of embeddings, got shape {v.shape}")
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


Progress = Callable[[str, int, int], None]  # (phase, done, total): "graph" then "queries"
CHUNK = 1 << 16  # vectors per add/query call: a progress step (the result does not depend on it)


def knn(
    vectors: np.ndarray,
    cfg: AssignConfig,
    *,
    progress: Progress | None = None,
    chunk: int = CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """(neighbour indices, cosines), each (n, k'), k' = min(k + 1, n), self included.

    Added and queried `chunk` vectors at a time, `progress` called after each: in one thread
    the graph gets the same points in the same order (hnswlib draws each point's level from
    one seeded generator, in insertion order), and each query is answered on its own, so the
    result is the same for every chunk size."""
    import hnswlib

    n, d = vectors.shape
    k = min(cfg.k + 1, n)
    index = hnswlib.Index(space="cosine", dim=d)
    index.init_index(
        max_elements=n, M=cfg.m, ef_construction=cfg.ef_construction, random_seed=cfg.seed
    )
    # one thread: the graph, hence every result, is a function of the vectors in this order
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        index.add_items(vectors[start:stop], np.arange(start, stop), num_threads=1)
        if progress is not None:
            progress("graph", stop, n)
    index.set_ef(max(cfg.ef, k))
    labels = np.empty((n, k), dtype=np.int64)
    cos = np.empty((n, k), dtype=np.float64)
    threads = cfg.threads or os.cpu_count() or 1
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        got, distances = index.knn_query(vectors[start:stop], k=k, num_threads=threads)
        labels[start:stop] = got
        cos[start:stop] = 1.0 - distances
        if progress is not None:
            progress("queries", stop, n)
    return labels, cos


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component label (the smallest member index) of each of n nodes."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    return first[labels]


def _refine(comp: np.ndarray, v: np.ndarray, cfg: AssignConfig) -> np.ndarray:
    """Re-cut each linked component by average linkage at the threshold: single links chain
    two people through one look-alike pair, an average over all pairs does not. Components
    over `refine_max` samples (their pair matrix would be too big) keep their single links."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    out = comp.copy()
    order = np.argsort(comp, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(comp[order]) != 0])
    for start, end in zip(starts, np.r_[starts[1:], len(order)], strict=True):
        members = order[start:end]  # ascending index = ascending key
        if len(members) < 3 or len(members) > cfg.refine_max:
            continue
        sub = v[members]
        if float((sub @ sub.T).min()) >= cfg.threshold:
            continue  # every pair is linked: average linkage keeps them together
        dist = np.clip(pdist(v[members].astype(np.float64), metric="cosine"), 0.0, 2.0)
        labels = fcluster(
            linkage(dist, method="average"), t=1.0 - cfg.threshold, criterion="distance"
        )
        first: dict[int, int] = {}
        for m, lab in zip(members.tolist(), labels.tolist(), strict=True):
            out[m] = first.setdefault(lab, m)
    return out


def assign_identities(
    keys: Sequence[str],
    vectors: np.ndarray,
    cfg: AssignConfig,
    *,
    progress: Progress | None = None,
) -> Assignment:
    """One identity per key (keys need not be sorted; the result is in sorted key order).
    `progress(phase, done, total)` follows the nearest-neighbour graph and queries (`knn`)."""
    import hnswlib

    order = sorted(range(len(keys)), key=lambda i: keys[i])
    keys = [keys[i] for i in order]
    n = len(keys)
    from importlib.metadata import PackageNotFoundError, version

    try:
        lib = f"hnswlib {version('hnswlib')}"
    except PackageNotFoundError:  # pragma: no cover - a source build without metadata
        lib = f"hnswlib {getattr(hnswlib, '__version__', 'unknown')}"
    settings = {**asdict(cfg), "library": lib}
    settings.pop("threads")
    if n == 0:
        return Assignment([], [], [], [], [], [], [], settings)
    v = normalise(np.asarray(vectors)[order])
    labels, cos = knn(v, cfg, progress=progress)
    rows = np.repeat(np.arange(n), labels.shape[1])
    cols = labels.reshape(-1)
    sims = cos.reshape(-1)
    linked = (cols != rows) & (sims >= cfg.threshold)
    comp = _components(n, rows[linked], cols[linked])
    if cfg.refine_max > 1:
        comp = _refine(comp, v, cfg)
    sizes = np.bincount(comp, minlength=n)
    ident = [f"{ID_PREFIX}{keys[c]}" for c in comp.tolist()]
    # what decided it: the nearest neighbour of the same identity, and of another one
    neigh_comp = comp[labels]
    is_self = labels == np.arange(n)[:, None]
    same = (neigh_comp == comp[:, None]) & ~is_self
    other = (neigh_comp != comp[:, None]) & ~is_self

    def nearest(mask: np.ndarray) -> tuple[list[str | None], list[float | None]]:
        masked = np.where(mask, cos, -np.inf)
        j = masked.argmax(axis=1)
        best = masked[np.arange(n), j]
        has = np.isfinite(best)
        names = [keys[int(labels[i, j[i]])] if has[i] else None for i in range(n)]
        sims = [round(float(best[i]), 6) if has[i] else None for i in range(n)]
        return names, sims

    linked_to, link_cos = nearest(same)
    other_key, other_cos = nearest(other)
    return Assignment(
        keys,
        ident,
        sizes[comp].tolist(),
        linked_to,
        link_cos,
        other_key,
        other_cos,
        settings,
    )


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    threshold: float
    pairs: int
    accuracy: float  # of "same person iff cosine >= threshold" over the pairs


def calibrate_threshold(scores: Sequence[float], same: Sequence[bool]) -> Calibration:
    """The cosine threshold that decides the most labelled pairs right. Among the best cut
    points it takes the midpoint of the widest gap between neighbouring scores."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    if s.size == 0 or y.all() or not y.any():
        raise ValueError("calibration needs labelled pairs of both kinds")
    u = np.unique(s)
    cuts = np.concatenate([[u[0] - 1e-3], (u[:-1] + u[1:]) / 2, [u[-1] + 1e-3]])
    gaps = np.concatenate([[1e-3], np.diff(u), [1e-3]])
    acc = np.array([np.mean((s >= t) == y) for t in cuts])
    best = np.flatnonzero(acc == acc.max())
    pick = best[np.argmax(gaps[best])]
    return Calibration(round(float(cuts[pick]), 4), int(s.size), float(acc[pick]))


def pair_precision_recall(
    pairs: Iterable[tuple[str, str, bool]], identity_of: dict[str, str]
) -> dict[str, float | int]:
    """Pairs (a, b, same person) against identity ids: same id = predicted same person."""
    tp = fp = fn = tn = 0
    for a, b, same in pairs:
        pred = identity_of[a] == identity_of[b]
        tp += pred and same
        fp += pred and not same
        fn += (not pred) and same
        tn += (not pred) and not same
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return {
        "pairs": tp + fp + fn + tn,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": precision,
        "recall": recall,
    }


def recorded_threshold(embedder: str) -> float | None:
    for prefix, rec in CALIBRATED.items():
        if embedder.startswith(prefix):
            return float(rec["threshold"])
    return None


# --------------------------------------------------------------------------- dataset files


@dataclass
class DatasetEmbeddings:
    keys: list[str]
    vectors: np.ndarray
    sources: list[str | None]  # source sha256 per key
    uris: list[str]
    embedder: str  # the embed model's name (most common over the samples)


def read_embeddings(out: str | os.PathLike) -> DatasetEmbeddings:
    """Every committed sample's `id.npy`, source and embed model from OUT's shards (a folder
    or URL), by key."""
    from collections import Counter

    from fgid_builder.dataset import Dataset
    from fgid_builder.schema import load_npy

    keys: list[str] = []
    vecs: list[np.ndarray] = []
    sources: list[str | None] = []
    uris: list[str] = []
    names: Counter[str] = Counter()
    for _, s in Dataset(out).iter_samples():
        meta = json.loads(s["json"])
        keys.append(s["__key__"])
        vecs.append(load_npy(s["id.npy"]).astype(np.float32).reshape(-1))
        src = meta.get("source") or {}
        sources.append(src.get("sha256"))
        uris.append(str(src.get("uri", "")))
        names[((meta.get("models") or {}).get("embed") or {}).get("name", "")] += 1
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    dim = vecs[0].shape[0] if vecs else 0
    return DatasetEmbeddings(
        [keys[i] for i in order],
        np.stack([vecs[i] for i in order]) if vecs else np.zeros((0, dim), np.float32),
        [sources[i] for i in order],
        [uris[i] for i in order],
        names.most_common(1)[0][0] if names else "",
    )


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(
        table.replace_schema_metadata(None),
        sink,
        compression="zstd",
        compression_level=3,
        data_page_version="1.0",
        version="2.6",
    )
    return sink.getvalue()


def write_identities(
    out: str | os.PathLike, assignment: Assignment, sources: Sequence[str | None], meta: dict
) -> dict[str, Any]:
    """`OUT/identities.parquet` + `OUT/identities.json` (settings, threshold and where it came
    from, counts), both atomic and byte-deterministic; OUT a folder or URL."""
    from fgid_builder.dataset import Store

    store = Store(out)
    table = assignment.table(sources)
    store.write_bytes(IDENTITIES, _parquet_bytes(table))
    summary = identity_summary(table)
    record = {**meta, "settings": assignment.settings, **summary}
    store.write_bytes(
        IDENTITIES_JSON, json.dumps(record, indent=1, sort_keys=True).encode() + b"\n"
    )
    return record


def identity_summary(table: pa.Table, largest: int = 10) -> dict[str, Any]:
    from collections import Counter

    counts = Counter(table.column("identity").to_pylist())
    sizes = Counter(counts.values())
    return {
        "samples": table.num_rows,
        "identities": len(counts),
        "singletons": sizes.get(1, 0),
        "images_per_identity": {str(k): sizes[k] for k in sorted(sizes)},
        "largest": [
            {"identity": i, "samples": c}
            for i, c in sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:largest]
        ],
    }


def read_identities(out: str | os.PathLike) -> pa.Table:
    """OUT/identities.parquet of a dataset folder or URL."""
    from fgid_builder.dataset import Dataset

    return Dataset(out).read_parquet(IDENTITIES, schema=IDENTITY_SCHEMA)
