"""Remove people from a built dataset (GDPR Art. 17) without rebuilding it.

`find_targets` turns a request into sample keys with a reason each: `--like PHOTO` (the largest
face of each reference photo, detected and embedded with the dataset's own backends, matched to
the nearest sample at the same-person threshold: every sample of that sample's identity, plus
any sample at or above the threshold), `--sha256` (every face of those source photos),
`--identity` (every sample with that id in `identities.parquet`).

`apply_erase` then works like a build commit, resumable after `kill -9`:
1. the journal `OUT/erase.pending.json` (the request, the keys and why, the shards to rewrite
   with their hashes before) is written first, atomically; a rerun of the same command finds
   it and carries on from it (another request is refused until it is done);
2. each shard that holds a removed sample is rewritten: its tar without them, then its index
   part (the sample rows become `opted_out` rejects; a photo left with no sample leaves the
   part), then its stats JSON, the commit record, last; a shard left with no photo is removed,
   stats first. Every step is a pure function of the journal and the shard, so redoing it
   gives the same bytes. Shards that hold none of them are not touched;
3. the plan (photos left with no sample: `opted_out`), the index (merged again as the build
   merges it), identities/splits (the rows dropped), the dataset's opt-out list
   (`OUT/optout.txt`: `sha256` of whole photos, `key` of single faces) and the receipt
   `OUT/erasures/{erase_id}.json` (what was removed and why, each rewritten shard's tar
   SHA-256 before and after); then the journal is removed.

OUT is a local folder or any fsspec URL (`s3://bucket/out`): every read and write goes through
`fgid_builder.dataset.Dataset`, whose writes are atomic on both (local: temporary name, fsync,
rename; object stores: one PUT of the final bytes, so an erase leaves no temporary object). The
steps above need nothing more: a shard's tar and part are rewritten before its record, so a
killed erase leaves that shard uncommitted until the rerun redoes it, byte for byte.

Fault injection for tests: with `FGID_ERASE_KILL_AFTER=N` the process SIGKILLs itself after
its N-th file write or removal (a real `kill -9` at an exact point).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fgid_builder.dataset import (
    INDEX,
    PARTS,
    PLAN,
    SETTINGS,
    SHARDS,
    Dataset,
    shard_part,
    shard_record,
    shard_tar,
)
from fgid_builder.optout import KEY_LISTED, SHA_LISTED
from fgid_builder.schema import Reason

JOURNAL = "erase.pending.json"
RECEIPTS = "erasures"


class EraseError(Exception):
    """The erase cannot be done as asked (one line; exit code 2)."""


class NothingToErase(Exception):
    """No sample matches the request; nothing was changed. Carries the request record."""

    def __init__(self, record: dict | None):
        super().__init__("no sample matches: nothing erased")
        self.record = record


@dataclass(frozen=True)
class EraseRequest:
    like: tuple[str, ...] = ()  # reference photo paths
    sha256: tuple[str, ...] = ()
    identity: tuple[str, ...] = ()
    threshold: float | None = None  # same-person cosine for --like (default: recorded)
    models_dir: str | None = None

    def __post_init__(self) -> None:
        if not (self.like or self.sha256 or self.identity):
            raise EraseError("nothing to erase: give --like PHOTO, --sha256 HEX or --identity ID")


# --------------------------------------------------------------------------- writes


class _Writer:
    """Every change of an erase goes through here: atomic (Dataset.write_bytes), counted (fault
    injection), and skipped when the file already holds those bytes (a resumed erase)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self.count = 0
        kill = os.environ.get("FGID_ERASE_KILL_AFTER")
        self.kill_after = int(kill) if kill else None

    def _tick(self) -> None:
        self.count += 1
        if self.kill_after is not None and self.count >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def write(self, rel: str, data: bytes) -> None:
        if self.ds.size(rel) == len(data) and self.ds.read_bytes(rel) == data:
            return  # already there (a resumed erase): no write, nothing changes
        self.ds.write_bytes(rel, data)
        self._tick()

    def remove(self, rel: str) -> None:
        if self.ds.exists(rel):
            self.ds.remove(rel)
            self._tick()


def _canon(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False).encode() + b"\n"


# --------------------------------------------------------------------------- targets


def _identities(ds: Dataset, emb: Any, threshold: float) -> dict[str, str]:
    """key -> identity: OUT/identities.parquet when it covers every sample, else assigned now."""
    from fgid_builder.identities import IDENTITIES, AssignConfig, assign_identities, read_identities

    if ds.is_file(IDENTITIES):
        t = read_identities(ds.url)
        ident = dict(
            zip(t.column("key").to_pylist(), t.column("identity").to_pylist(), strict=True)
        )
        if all(k in ident for k in emb.keys):
            return ident
    a = assign_identities(emb.keys, emb.vectors, AssignConfig(threshold=threshold))
    return dict(zip(a.keys, a.identity, strict=True))


def _threshold(ds: Dataset, request: EraseRequest, embedder: str) -> float:
    from fgid_builder.identities import IDENTITIES_JSON, recorded_threshold

    if request.threshold is not None:
        return float(request.threshold)
    if ds.is_file(IDENTITIES_JSON):
        t = json.loads(ds.read_bytes(IDENTITIES_JSON)).get("threshold")
        if t is not None:
            return float(t)
    t = recorded_threshold(embedder)
    if t is None:
        raise EraseError(f"no recorded same-person threshold for {embedder!r}: pass --threshold")
    return t


def find_targets(out: str | os.PathLike, request: EraseRequest) -> tuple[dict[str, str], dict]:
    """(key -> why it is removed, the request as the receipt records it: hashes, no paths)."""
    from fgid_builder.identities import read_embeddings
    from fgid_builder.reference import ReferenceError, embed_reference

    ds = Dataset(out)
    index = [r for r in ds.read_index().to_pylist() if r["status"] == "ok"]
    record: dict[str, Any] = {
        "like": [],
        "sha256": sorted(s.lower() for s in request.sha256),
        "identity": sorted(request.identity),
    }
    why: dict[str, list[str]] = defaultdict(list)
    for sha in record["sha256"]:
        keys = [r["key"] for r in index if r["source_sha256"] == sha]
        for k in keys:
            why[k].append(f"sha256 {sha}")
    if request.like or request.identity:
        emb = read_embeddings(ds.url)
        threshold = _threshold(ds, request, emb.embedder)
        ident = _identities(ds, emb, threshold)
        members: dict[str, list[str]] = defaultdict(list)
        for k, i in ident.items():
            members[i].append(k)
        for i in record["identity"]:
            if i not in members:
                raise EraseError(f"no identity {i} in {ds.url} (see identities.parquet)")
            for k in members[i]:
                why[k].append(f"identity {i}")
        if request.like:
            record["threshold"] = threshold
        for photo in request.like:
            try:
                sha, faces = embed_reference(photo, ds.url, request.models_dir)
            except ReferenceError as e:
                raise EraseError(str(e)) from None
            entry: dict[str, Any] = {"sha256": sha, "faces": len(faces)}
            record["like"].append(entry)
            if not faces or not emb.keys:
                entry["matched"] = None
                continue
            sims = emb.vectors @ faces[0]
            best = int(np.argmax(sims))
            entry.update(nearest=emb.keys[best], cosine=round(float(sims[best]), 6))
            if sims[best] < threshold:
                entry["matched"] = None
                continue
            person = ident[emb.keys[best]]
            entry["matched"] = person
            for k in members[person]:
                why[k].append(f"like {sha[:16]}: identity {person}")
            for j in np.flatnonzero(sims >= threshold).tolist():
                why[emb.keys[j]].append(f"like {sha[:16]}: cosine {float(sims[j]):.4f}")
        record["like"].sort(key=lambda e: e["sha256"])
    return {k: "; ".join(sorted(set(v))) for k, v in sorted(why.items())}, record


def request_fingerprint(request: EraseRequest) -> dict[str, Any]:
    """What identifies a request whatever the dataset's state (a resume compares it): the
    reference photos by content, the hashes and ids, the threshold given."""
    from fgid_builder.schema import sha256_bytes

    like = []
    for photo in request.like:
        try:
            like.append(sha256_bytes(Path(photo).read_bytes()))
        except OSError as e:
            raise EraseError(f"cannot read reference photo {photo}: {e.strerror}") from None
    return {
        "like": sorted(like),
        "sha256": sorted(s.lower() for s in request.sha256),
        "identity": sorted(request.identity),
        "threshold": request.threshold,
    }


# --------------------------------------------------------------------------- apply


def _journal(
    ds: Dataset, removed: dict[str, str], record: dict, fingerprint: dict
) -> dict[str, Any]:
    rows = ds.read_index().to_pylist()
    ok_by_source: dict[str, set[str]] = defaultdict(set)
    by_key = {}
    for r in rows:
        if r["status"] == "ok":
            ok_by_source[r["source_sha256"]].add(r["key"])
            by_key[r["key"]] = r
    missing = sorted(set(removed) - set(by_key))
    if missing:
        raise EraseError(
            f"{len(missing)} keys to remove are not samples of {ds.url} (e.g. {missing[0]})"
        )
    whole = sorted(
        s for s in {by_key[k]["source_sha256"] for k in removed} if ok_by_source[s] <= set(removed)
    )
    shards: dict[str, Any] = {}
    for k in removed:
        name = by_key[k]["shard"]
        if name not in shards:
            st = _record(ds, name)
            shards[name] = {
                "tar_sha256_before": st["tar"]["sha256"],
                "samples_before": st["samples"],
                "images_before": st["images"],
            }
    journal = {
        "fingerprint": fingerprint,
        "request": record,
        "removed": [
            {
                "key": k,
                "reason": removed[k],
                "shard": by_key[k]["shard"],
                "source_sha256": by_key[k]["source_sha256"],
                "source_uri": by_key[k]["source_uri"],
                "face_index": by_key[k]["face_index"],
            }
            for k in sorted(removed)
        ],
        "whole_photos": whole,
        "shards": dict(sorted(shards.items())),
    }
    journal["erase_id"] = hashlib.sha256(_canon(journal)).hexdigest()[:16]
    return journal


def _opted_out_row(row: dict[str, Any], erase_id: str) -> dict[str, Any]:
    from fgid_builder.index import reject_row

    return reject_row(
        source_uri=row["source_uri"],
        reason=Reason.OPTED_OUT,
        detail=KEY_LISTED,
        source_sha256=row["source_sha256"],
        source_bytes=row["source_bytes"],
        face_index=row["face_index"],
        key=row["key"],
        shard=row["shard"],
    )


def _record(ds: Dataset, name: str) -> dict[str, Any]:
    """A shard's stats JSON, whether or not its objects match it now (a resumed erase)."""
    return json.loads(ds.read_bytes(shard_record(name)))


def _rewrite_shard(ds: Dataset, name: str, journal: dict, w: _Writer) -> dict[str, Any]:
    from fgid_builder.index import rows_table, table_bytes
    from fgid_builder.shards import stats_bytes, tar_bytes

    removed = {r["key"] for r in journal["removed"]}
    whole = set(journal["whole_photos"])
    info = journal["shards"][name]
    images = info["images_before"] - len(
        {
            r["source_sha256"]
            for r in journal["removed"]
            if r["shard"] == name and r["source_sha256"] in whole
        }
    )
    stats_path, tar_path, part_path = shard_record(name), shard_tar(name), shard_part(name)
    result = {
        "shard": name,
        "tar_sha256_before": info["tar_sha256_before"],
        "samples_before": info["samples_before"],
    }
    if images == 0:
        for p in (stats_path, tar_path, part_path):  # uncommit first
            w.remove(p)
        return {**result, "tar_sha256_after": None, "samples_after": 0, "removed_shard": True}
    kept = [s for s in ds.iter_shard(name) if s["__key__"] not in removed]
    data, keys = tar_bytes(kept)
    w.write(tar_path, data)
    rows = []
    for r in ds.read_part(name).to_pylist():
        if r["source_sha256"] in whole:
            continue
        rows.append(
            _opted_out_row(r, journal["erase_id"])
            if r["key"] in removed and r["status"] == "ok"
            else r
        )
    part = table_bytes(rows_table(rows))
    w.write(part_path, part)
    stats = _record(ds, name)
    rejects = Counter(r["reason"] for r in rows if r["status"] != "ok")
    tar_sha = hashlib.sha256(data).hexdigest()
    part_record = {"name": part_path, "rows": len(rows), "sha256": hashlib.sha256(part).hexdigest()}
    if "bytes" in (stats.get("index_part") or {}):  # the build's record has it: so does ours
        part_record["bytes"] = len(part)
    stats.update(
        images=images,
        samples=len(keys),
        keys=keys,
        rejects=int(sum(rejects.values())),
        rejects_by_reason=dict(sorted(rejects.items())),
        tar={"name": f"{name}.tar", "bytes": len(data), "sha256": tar_sha},
        index_part=part_record,
    )
    w.write(stats_path, stats_bytes(stats))
    return {
        **result,
        "tar_sha256_after": tar_sha,
        "samples_after": len(keys),
        "removed_shard": False,
    }


def _update_plan_and_index(ds: Dataset, journal: dict, w: _Writer) -> None:
    import io

    import pyarrow as pa

    from fgid_builder.index import rows_table, table_bytes
    from pipelines.plan import (
        PLANNED,
        REJECTED,
        plan_bytes,
        plan_reject_rows,
        read_plan,
        shard_sizes,
    )

    whole = set(journal["whole_photos"])
    plan = read_plan(io.BytesIO(ds.read_bytes(PLAN)))
    rows = plan.to_pylist()
    for r in rows:
        if r["status"] == PLANNED and r["source_sha256"] in whole:
            r.update(
                status=REJECTED,
                reason=Reason.OPTED_OUT.value,
                shard=None,
                detail=SHA_LISTED,
            )
    plan = pa.Table.from_pylist(rows, schema=plan.schema)
    w.write(PLAN, plan_bytes(plan))
    tables = [ds.read_part(s) for s in shard_sizes(plan)]
    tables.append(rows_table(plan_reject_rows(plan)))
    w.write(
        INDEX,
        table_bytes(rows_table([]) if not tables else _sorted(pa.concat_tables(tables))),
    )


def _sorted(table):
    from fgid_builder.index import sort_table

    return sort_table(table)


def _update_identity_files(ds: Dataset, removed: set[str], w: _Writer) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    from fgid_builder.identities import (
        IDENTITIES,
        IDENTITIES_JSON,
        _parquet_bytes,
        identity_summary,
        read_identities,
    )
    from fgid_builder.splits import SPLITS, read_splits

    if ds.is_file(IDENTITIES):
        t = read_identities(ds.url)
        rows = [r for r in t.to_pylist() if r["key"] not in removed]
        sizes = Counter(r["identity"] for r in rows)
        for r in rows:
            r["size"] = sizes[r["identity"]]
            if r["linked_to"] in removed:
                r["linked_to"] = r["cosine"] = None
            if r["nearest_other"] in removed:
                r["nearest_other"] = r["nearest_other_cosine"] = None
        t = pa.Table.from_pylist(rows, schema=t.schema)
        w.write(IDENTITIES, _parquet_bytes(t))
        if ds.is_file(IDENTITIES_JSON):
            rec = json.loads(ds.read_bytes(IDENTITIES_JSON))
            rec.update(identity_summary(t))
            w.write(IDENTITIES_JSON, _canon(rec))
    if ds.is_file(SPLITS):
        s = read_splits(ds.url)
        keep = pc.invert(pc.is_in(s.column("key"), pa.array(sorted(removed), pa.string())))
        w.write(SPLITS, _parquet_bytes(s.filter(keep)))


def pending(out: str | os.PathLike) -> dict | None:
    """The journal of an unfinished erase in OUT (a folder or URL), or None."""
    ds = Dataset(out)
    return json.loads(ds.read_bytes(JOURNAL)) if ds.is_file(JOURNAL) else None


def erase(out: str | os.PathLike, request: EraseRequest) -> dict:
    """Find the targets and erase them; or, when OUT holds the journal of this same request
    (a killed erase), finish that one. Returns the receipt. OUT: a local folder or any fsspec
    URL. Holds OUT's lock (the build's, fgid_builder.lock) throughout: no build or other erase
    runs on OUT meanwhile."""
    from fgid_builder.lock import LockHeld, locked

    ds = Dataset(out)
    if not ds.is_file(INDEX):
        raise EraseError(f"no index at {ds.url_of(INDEX)}: is {ds.url} an fgid dataset?")
    if not ds.is_file(PLAN):  # refused before anything is written
        raise EraseError(
            f"no {PLAN} in {ds.url}: fgid erase works on what `fgid build` writes; for the "
            "DVC pipeline's dataset add the person to its opt-out list and run `dvc repro`"
        )
    if request.like and not ds.is_file(SETTINGS):
        raise EraseError(
            f"no {SETTINGS} in {ds.url}: --like needs the backends that built it; "
            "use --sha256 or --identity"
        )
    try:
        with locked(out, "fgid erase"):
            return _erase(ds, request)
    except LockHeld as e:
        raise EraseError(str(e)) from None


def _erase(ds: Dataset, request: EraseRequest) -> dict:
    fingerprint = request_fingerprint(request)
    journal = pending(ds.url)
    if journal is not None:
        if journal["fingerprint"] != fingerprint:
            raise EraseError(
                f"{ds.url_of(JOURNAL)}: another erase is unfinished; rerun that "
                f"command first (erase {journal['erase_id']})"
            )
        return apply_erase(ds.url, None, None, fingerprint)
    try:
        removed, record = find_targets(ds.url, request)
    except EraseError:
        done = _receipt_of(ds, fingerprint)
        if done is None:
            raise
        return done  # the same command again after it finished: nothing left to do
    if not removed:
        done = _receipt_of(ds, fingerprint)
        if done is not None:
            return done
    return apply_erase(ds.url, removed, record, fingerprint)


def _receipt_of(ds: Dataset, fingerprint: dict) -> dict | None:
    """The receipt of a finished erase of this same request, if any."""
    for name in ds.listdir(RECEIPTS):
        if not name.endswith(".json"):
            continue
        try:
            receipt = json.loads(ds.read_bytes(RECEIPTS, name))
        except (OSError, ValueError):
            continue
        if receipt.get("fingerprint") == fingerprint:
            return receipt
    return None


def receipt_url(out: str | os.PathLike, receipt: dict) -> str:
    """Where the receipt of this erase lies (a local path or URL)."""
    return Dataset(out).url_of(RECEIPTS, f"{receipt['erase_id']}.json")


def apply_erase(
    out: str | os.PathLike, removed: dict[str, str] | None, record: dict | None, fingerprint: dict
) -> dict:
    """Erase (or finish erasing, `removed` None) and return the receipt."""
    from fgid_builder.optout import OPTOUT, dataset_optout, optout_bytes

    ds = Dataset(out)
    w = _Writer(ds)
    ds.clean_temp_files("", SHARDS, PARTS, RECEIPTS)  # what a killed local erase left
    if ds.is_file(JOURNAL):
        journal = json.loads(ds.read_bytes(JOURNAL))
        if journal["fingerprint"] != fingerprint:
            raise EraseError(
                f"{ds.url_of(JOURNAL)}: another erase is unfinished (erase {journal['erase_id']})"
            )
    else:
        if not removed:
            raise NothingToErase(record)
        journal = _journal(ds, removed, record, fingerprint)
        w.write(JOURNAL, _canon(journal))
    shards = [_rewrite_shard(ds, name, journal, w) for name in journal["shards"]]
    _update_plan_and_index(ds, journal, w)
    removed_keys = {r["key"] for r in journal["removed"]}
    _update_identity_files(ds, removed_keys, w)
    listed = dataset_optout(ds.url)
    whole = set(journal["whole_photos"])
    listed.sha256 |= whole
    listed.keys |= {r["key"] for r in journal["removed"] if r["source_sha256"] not in whole}
    listed.photos = []
    w.write(OPTOUT, optout_bytes(listed))
    receipt = {
        "erase_id": journal["erase_id"],
        "request": journal["request"],
        "fingerprint": journal["fingerprint"],
        "removed": journal["removed"],
        "whole_photos": journal["whole_photos"],
        "shards_rewritten": shards,
        "shards_unchanged": [s for s in ds.shard_names() if s not in journal["shards"]],
        "after": {n: ds.sha256(n) for n in (INDEX, PLAN, OPTOUT)},
    }
    w.write(f"{RECEIPTS}/{journal['erase_id']}.json", _canon(receipt))
    w.remove(JOURNAL)
    return receipt
