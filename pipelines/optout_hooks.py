"""`fgid build`'s opt-out hooks (fgid_builder.optout): load the lists, reject listed photos in
a new plan, turn listed faces into `opted_out` rows before their shard is committed. A small
module of its own, so the build imports only what these hooks need."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from fgid_builder.optout import Exclusions


def load_exclusions(
    lists: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    models_dir: str | None = None,
    embedder: str = "",
) -> Exclusions | None:
    """The lists given (`--exclude`) plus OUT's own; None when there is nothing to exclude.
    Reference photos are embedded now (OUT/build.json names the backends)."""
    import numpy as np

    from fgid_builder.optout import dataset_optout, read_lists

    listed = read_lists(lists).update(dataset_optout(out))
    if not listed:
        return None
    excl = Exclusions(listed)
    if listed.photos:
        from fgid_builder.identities import recorded_threshold
        from fgid_builder.reference import embed_reference

        vecs = []
        for photo in listed.photos:
            _, faces = embed_reference(photo, out, models_dir)
            vecs += faces[:1]
        excl.references = np.stack(vecs) if vecs else None
        excl.threshold = recorded_threshold(embedder)
        if excl.threshold is None:
            raise ValueError(
                f"opt-out photos need a same-person threshold; none is recorded for {embedder!r}"
            )
    return excl


def opt_out_plan(plan: Any, exclusions: Any) -> Any:
    """A new plan with listed photos (by source hash) as `opted_out` rejects. Shards are
    assigned before, so the other photos keep the shards an unfiltered build gives them."""
    import pyarrow as pa

    from fgid_builder.optout import SHA_LISTED
    from fgid_builder.schema import Reason
    from pipelines.plan import PLANNED, REJECTED

    rows = plan.to_pylist()
    for r in rows:
        if r["status"] == PLANNED and r["source_sha256"] in exclusions.listed.sha256:
            r.update(
                status=REJECTED,
                reason=Reason.OPTED_OUT.value,
                shard=None,
                detail=SHA_LISTED,
            )
    return pa.Table.from_pylist(rows, schema=plan.schema)


def opt_out_rows(rows: list[dict[str, Any]], exclusions: Any) -> list[dict[str, Any]]:
    """A shard's result rows (in the worker that commits it) with listed faces turned into
    `opted_out` rejects: by source hash, key, or a match to an opt-out reference photo."""
    import json

    from fgid_builder.index import reject_row
    from fgid_builder.schema import Reason, load_npy

    out = []
    for r in rows:
        if r["status"] != "ok":
            out.append(r)
            continue
        ix = json.loads(r["index_row"])
        emb = None
        if exclusions.references is not None:
            emb = load_npy(r["members"]["id.npy"])
        why = exclusions.reason(ix["key"], ix["source_sha256"], emb)
        if why is None:
            out.append(r)
            continue
        row = reject_row(
            source_uri=ix["source_uri"],
            reason=Reason.OPTED_OUT,
            detail=why,
            source_sha256=ix["source_sha256"],
            source_bytes=ix["source_bytes"],
            face_index=ix["face_index"],
            key=ix["key"],
            shard=ix["shard"],
        )
        out.append(
            dict(r, status="rejected", members=None, index_row=json.dumps(row, sort_keys=True))
        )
    return out
