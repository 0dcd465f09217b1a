"""Identity assignment and identity-disjoint splits on synthetic embeddings (the deepface
acceptance runs are in tests/pipelines/test_identities_deepface.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fgid_builder.identities import (
    AssignConfig,
    assign_identities,
    calibrate_threshold,
    pair_precision_recall,
    write_identities,
)
from fgid_builder.splits import split_identities


def _clusters(n_ids: int, per: int, dim: int = 128, noise: float = 0.04, seed: int = 0):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=dim)
    u = rng.normal(size=(n_ids, dim))
    c = np.sqrt(0.8) * g / np.linalg.norm(g) + np.sqrt(0.2) * u / np.linalg.norm(u, axis=1)[:, None]
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    truth = np.repeat(np.arange(n_ids), per)
    x = c[truth] + rng.normal(scale=np.sqrt(noise / dim), size=(len(truth), dim))
    keys = [f"{i:016x}_f0" for i in rng.permutation(len(truth))]  # keys unrelated to identity
    return keys, x.astype(np.float32), truth


def _all_pairs(keys, truth):
    return [
        (keys[i], keys[j], truth[i] == truth[j])
        for i in range(len(keys))
        for j in range(i + 1, len(keys))
    ]


def test_assignment_recovers_synthetic_identities():
    keys, x, truth = _clusters(40, 5)
    a = assign_identities(keys, x, AssignConfig(threshold=0.92))
    ident = dict(zip(a.keys, a.identity, strict=True))
    pr = pair_precision_recall(_all_pairs(keys, truth), ident)
    assert pr["precision"] == 1.0 and pr["recall"] == 1.0, pr
    assert len(set(a.identity)) == 40
    # the id is the smallest key of the identity, and what decided it is recorded
    for i in set(ident.values()):
        assert i == "id_" + min(k for k, ii in ident.items() if ii == i)
    row = a.table().to_pylist()[0]
    assert row["linked_to"] in ident and row["cosine"] >= 0.92
    assert row["nearest_other_cosine"] < 0.92


def test_same_input_any_order_same_bytes(tmp_path):
    keys, x, _ = _clusters(30, 4)
    perm = np.random.default_rng(1).permutation(len(keys))
    a = assign_identities(keys, x, AssignConfig(threshold=0.92))
    b = assign_identities([keys[i] for i in perm], x[perm], AssignConfig(threshold=0.92))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_identities(tmp_path / "a", a, [None] * len(keys), {"threshold": 0.92})
    write_identities(tmp_path / "b", b, [None] * len(keys), {"threshold": 0.92})
    for name in ("identities.parquet", "identities.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_one_look_alike_pair_does_not_chain_two_people():
    rng = np.random.default_rng(3)
    dim = 64
    ca, cb = rng.normal(size=dim), rng.normal(size=dim)
    cb = ca + 0.55 * cb / np.linalg.norm(cb) * np.linalg.norm(ca)  # cos(ca, cb) ~0.87
    pts = []
    for c in (ca, cb):
        c = c / np.linalg.norm(c)
        pts += [c + rng.normal(scale=0.01, size=dim) for _ in range(6)]
    bridge = (pts[0] + pts[6]) / 2  # halfway between: >= threshold to one of each person
    pts[0] = bridge + rng.normal(scale=0.02, size=dim) * 0.1
    pts[6] = bridge + rng.normal(scale=0.02, size=dim) * 0.1
    x = np.array(pts, dtype=np.float32)
    keys = [f"{i:016x}_f0" for i in range(12)]
    single = assign_identities(keys, x, AssignConfig(threshold=0.95, refine_max=0))
    assert len(set(single.identity)) == 1  # single links chain the two people
    refined = dict(
        zip(
            single.keys,
            assign_identities(keys, x, AssignConfig(threshold=0.95)).identity,
            strict=True,
        )
    )
    a = {refined[k] for k in keys[1:6]}  # each person's five clear photos
    b = {refined[k] for k in keys[7:12]}
    assert len(a) == 1 and len(b) == 1 and a != b


def test_calibrated_threshold_separates_and_sits_in_the_gap():
    same = [0.97, 0.95, 0.96, 0.93]
    diff = [0.5, 0.8, 0.88, 0.2]
    cal = calibrate_threshold(same + diff, [True] * 4 + [False] * 4)
    assert cal.accuracy == 1.0 and cal.threshold == pytest.approx((0.88 + 0.93) / 2)
    with pytest.raises(ValueError):
        calibrate_threshold([0.9], [True])


def test_splits_are_identity_disjoint_sized_by_samples_and_seeded():
    rng = np.random.default_rng(0)
    identity_of = {}
    for p in range(200):
        for f in range(int(rng.integers(1, 8))):
            identity_of[f"{p:012x}{f:04x}_f0"] = f"id_{p}"
    fr = {"train": 0.8, "val": 0.1, "test": 0.1}
    split = split_identities(identity_of, fr, seed=0)
    assert split == split_identities(dict(reversed(list(identity_of.items()))), fr, seed=0)
    per_id = {}
    for k, s in split.items():
        per_id.setdefault(identity_of[k], set()).add(s)
    assert all(len(v) == 1 for v in per_id.values())
    n = len(split)
    for name, f in fr.items():
        got = sum(1 for s in split.values() if s == name)
        assert abs(got - f * n) <= 7, (name, got, f * n)  # within one identity's size
    assert split_identities(identity_of, fr, seed=1) != split
    with pytest.raises(ValueError):
        split_identities(identity_of, {"train": 0.9, "val": 0.2})


def test_knn_in_chunks_gives_the_neighbours_of_one_call_and_reports_progress():
    """The graph is built and queried a chunk at a time (a progress step each): in one thread
    the same points go in in the same order, so the result is that of a single call."""
    from fgid_builder.identities import knn, normalise

    v = normalise(np.random.default_rng(3).normal(size=(500, 32)))
    cfg = AssignConfig(threshold=0.5, threads=2)
    whole = knn(v, cfg, chunk=len(v))  # one add_items call, one knn_query call
    steps: list[tuple[str, int, int]] = []
    chunked = knn(v, cfg, chunk=64, progress=lambda *step: steps.append(step))
    assert np.array_equal(whole[0], chunked[0]) and np.array_equal(whole[1], chunked[1])
    done = [*range(64, 500, 64), 500]
    assert steps == [("graph", d, 500) for d in done] + [("queries", d, 500) for d in done]
    assert (whole[0][:, 0] == np.arange(500)).mean() > 0.99  # each vector finds itself first
