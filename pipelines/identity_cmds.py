"""`fgid identities`, `fgid split`, `fgid erase`: thin wiring of fgid_builder.identities,
fgid_builder.splits and fgid_builder.erase. Exit codes: 0 ok, 2 usage or refused, 3 failure."""

from __future__ import annotations

import contextlib
import csv
import logging
import sys
from pathlib import Path
from typing import Any

import click

CTX = {"help_option_names": ["-h", "--help"]}


def _fail(command: str, message: str, code: int = 2) -> None:
    click.echo(f"fgid {command}: {message}", err=True)
    sys.exit(code)


def _dataset_arg(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """OUT: a dataset folder or any fsspec URL (`s3://bucket/out`) that holds an index."""
    from fgid_builder.dataset import INDEX, Store

    try:
        found = Store(value).is_file(INDEX)
    except (ImportError, OSError, ValueError) as e:
        raise click.BadParameter(f"cannot open {value}: {e}") from None
    if not found:
        raise click.BadParameter(f"{value} is not an fgid dataset (no {INDEX} in it)")
    return value


def read_pairs(path: str | Path) -> list[tuple[str, str, bool]]:
    """A labelled pairs CSV (`file_x,file_y,decision` with Yes/No, deepface's layout)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"file_x", "file_y", "decision"} <= set(rows[0]):
        raise ValueError(f"{path}: expected the columns file_x,file_y,decision")
    return [
        (r["file_x"], r["file_y"], r["decision"].strip().lower() in ("yes", "true", "1", "same"))
        for r in rows
    ]


def face0_by_uri(emb: Any) -> dict[str, int]:
    """source uri -> row of its first face (pairs name photos, a photo's face 0 is the person)."""
    out: dict[str, int] = {}
    for i, (key, uri) in enumerate(zip(emb.keys, emb.uris, strict=True)):
        if key.endswith("_f0"):
            out[uri] = i
    return out


def run_identities(
    out: str | Path,
    *,
    threshold: float | None = None,
    calibrate: str | None = None,
    k: int = 16,
    threads: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Assign identities to every sample of OUT and write identities.parquet/.json."""
    from fgid_builder.identities import (
        AssignConfig,
        assign_identities,
        calibrate_threshold,
        pair_precision_recall,
        read_embeddings,
        recorded_threshold,
        write_identities,
    )

    emb = read_embeddings(out)
    if not emb.keys:
        raise ValueError(f"{out} holds no committed samples")
    pairs = None
    meta: dict[str, Any] = {"embedder": emb.embedder}
    if calibrate:
        pairs = read_pairs(calibrate)
        row = face0_by_uri(emb)
        missing = sorted({p for a, b, _ in pairs for p in (a, b) if p not in row})
        if missing:
            raise ValueError(
                f"{len(missing)} photos of {calibrate} have no sample (e.g. {missing[0]})"
            )
        scores = [float(emb.vectors[row[a]] @ emb.vectors[row[b]]) for a, b, _ in pairs]
        cal = calibrate_threshold(scores, [s for _, _, s in pairs])
        meta["calibration"] = {
            "pairs_file": Path(calibrate).name,
            "pairs": cal.pairs,
            "pair_accuracy": cal.accuracy,
            "threshold": cal.threshold,
        }
    if threshold is not None:
        meta["threshold_from"] = "--threshold"
    elif calibrate:
        threshold = meta["calibration"]["threshold"]
        meta["threshold_from"] = f"calibrated on {Path(calibrate).name}"
    else:
        threshold = recorded_threshold(emb.embedder)
        if threshold is None:
            raise ValueError(
                f"no recorded same-person threshold for embedder {emb.embedder!r}: "
                "pass --threshold or --calibrate PAIRS.csv"
            )
        meta["threshold_from"] = "recorded (fgid_builder.identities.CALIBRATED)"
    meta["threshold"] = threshold
    with _knn_bars(len(emb.keys), progress) as bars:
        assignment = assign_identities(
            emb.keys,
            emb.vectors,
            AssignConfig(threshold=threshold, k=k, threads=threads),
            progress=bars,
        )
    if pairs is not None:
        row = face0_by_uri(emb)
        ident = dict(zip(assignment.keys, assignment.identity, strict=True))
        by_uri = {u: ident[emb.keys[i]] for u, i in row.items()}
        meta["pairs_at_threshold"] = pair_precision_recall(pairs, by_uri)
    return write_identities(out, assignment, emb.sources, meta)


@contextlib.contextmanager
def _knn_bars(n: int, enabled: bool):
    """A progress callback for assign_identities: one tqdm bar per phase (graph, queries)."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def update(phase: str, done: int, total: int) -> None:
        bar = bars.get(phase)
        if bar is None:
            bar = bars[phase] = tqdm(total=total, desc=phase, unit="face", disable=not enabled)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        for bar in bars.values():
            bar.close()


@click.command("identities", context_settings=CTX)
@click.argument("out", callback=_dataset_arg)
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="Same-person cosine (default: the embedder's recorded calibration).",
)
@click.option(
    "--calibrate",
    "calibrate",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Labelled pairs CSV (file_x,file_y,decision; names = source "
    "uris): calibrate the threshold on them, use it, and record precision/recall.",
)
@click.option(
    "--k", type=int, default=16, show_default=True, help="Nearest neighbours per sample (hnswlib)."
)
@click.option(
    "--threads",
    type=int,
    default=0,
    show_default=True,
    help="Query threads (0 = all CPUs); the graph is built in one thread.",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def identities_command(
    out: str, threshold: float | None, calibrate: str | None, k: int, threads: int, progress: bool
) -> None:
    """Give every sample of OUT (a folder or URL) an identity id: OUT/identities.parquet (key,
    identity, and what decided it) + OUT/identities.json (threshold and where it came from,
    counts). The shards do not change."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        rec = run_identities(
            out, threshold=threshold, calibrate=calibrate, k=k, threads=threads, progress=progress
        )
    except (FileNotFoundError, ValueError) as e:
        _fail("identities", str(e))
    line = (
        f"{rec['samples']} samples, {rec['identities']} identities "
        f"({rec['singletons']} with one sample) at cosine >= {rec['threshold']:g} "
        f"({rec['threshold_from']})"
    )
    click.echo(line)
    if "pairs_at_threshold" in rec:
        p = rec["pairs_at_threshold"]
        click.echo(
            f"labelled pairs: precision {p['precision']:.4f}, recall {p['recall']:.4f} "
            f"({p['pairs']} pairs)"
        )


def _parse_fractions(value: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in value.split(","):
        name, eq, frac = item.partition("=")
        if not eq or not name.strip():
            raise click.BadParameter(f"expected NAME=FRACTION[,...], got {value!r}")
        try:
            out[name.strip()] = float(frac)
        except ValueError:
            raise click.BadParameter(f"bad fraction in {item!r}") from None
    return out


@click.command("split", context_settings=CTX)
@click.argument("out", callback=_dataset_arg)
@click.option(
    "--fractions",
    default="train=0.8,val=0.1,test=0.1",
    show_default=True,
    help="Split names and their share of the samples.",
)
@click.option("--seed", type=int, default=0, show_default=True)
def split_command(out: str, fractions: str, seed: int) -> None:
    """Identity-disjoint splits of OUT (needs `fgid identities OUT` first):
    OUT/splits.parquet (key, identity, split)."""
    from fgid_builder.dataset import Store
    from fgid_builder.identities import IDENTITIES, read_identities
    from fgid_builder.splits import split_identities, splits_table, write_splits

    if not Store(out).is_file(IDENTITIES):
        _fail(
            "split", f"{Store(out).url_of(IDENTITIES)} not found: run `fgid identities {out}` first"
        )
    try:
        table = read_identities(out)
        keys = table.column("key").to_pylist()
        idents = table.column("identity").to_pylist()
        split_of = split_identities(
            dict(zip(keys, idents, strict=True)), _parse_fractions(fractions), seed
        )
    except ValueError as e:
        _fail("split", str(e))
    result = splits_table(keys, idents, split_of)
    write_splits(out, result)
    from collections import Counter

    samples = Counter(result.column("split").to_pylist())
    people = {
        s: len({i for i, t in zip(idents, (split_of[k] for k in keys), strict=True) if t == s})
        for s in samples
    }
    for name in _parse_fractions(fractions):
        click.echo(f"{name}: {samples.get(name, 0)} samples, {people.get(name, 0)} identities")


@click.command("erase", context_settings=CTX)
@click.argument("out", callback=_dataset_arg)
@click.option(
    "--like",
    "like",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="A reference photo: every sample of the person in it (its largest face). Repeatable.",
)
@click.option(
    "--sha256",
    "sha256",
    multiple=True,
    metavar="HEX",
    help="Every face of the source photo with this SHA-256. Repeatable.",
)
@click.option(
    "--identity",
    "identity",
    multiple=True,
    metavar="ID",
    help="Every sample with this id in OUT/identities.parquet. Repeatable.",
)
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="Same-person cosine for --like (default: identities.json, else recorded).",
)
@click.option(
    "--models-dir",
    default=None,
    envvar="FGID_MODELS_DIR",
    help="Weights of production backends (to embed --like photos).",
)
def erase_command(
    out: str,
    like: tuple[str, ...],
    sha256: tuple[str, ...],
    identity: tuple[str, ...],
    threshold: float | None,
    models_dir: str | None,
) -> None:
    """Remove people from OUT (a folder or any fsspec URL, e.g. s3://bucket/out): rewrites
    only the shards that hold them (the same commit protocol as the build; rerun the same
    command after a crash), updates the plan, index, identities and splits, adds them to
    OUT/optout.txt and writes the receipt OUT/erasures/ID.json. Exit 0 also when nothing
    matches (nothing is changed)."""
    from fgid_builder.erase import EraseError, EraseRequest, NothingToErase, erase, receipt_url
    from fgid_builder.schema import ModelFileError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        receipt = erase(
            out,
            EraseRequest(
                like=like,
                sha256=sha256,
                identity=identity,
                threshold=threshold,
                models_dir=models_dir,
            ),
        )
    except NothingToErase as e:
        click.echo(f"no sample matches: nothing erased ({_nearest(e.record)})")
        return
    except (EraseError, ModelFileError, ValueError) as e:
        _fail("erase", str(e))
    except OSError as e:
        _fail("erase", f"{type(e).__name__}: {e}", 3)
    rewritten = receipt["shards_rewritten"]
    click.echo(
        f"removed {len(receipt['removed'])} samples ({len(receipt['whole_photos'])} whole "
        f"photos) from {len(rewritten)} shards; {len(receipt['shards_unchanged'])} shards "
        f"unchanged; receipt: {receipt_url(out, receipt)}"
    )


def _nearest(record: dict | None) -> str:
    likes = (record or {}).get("like") or []
    parts = [
        f"photo {e['sha256'][:16]}: {e['faces']} faces"
        + (
            f", nearest cosine {e['cosine']:.4f} < {record.get('threshold')}"
            if e.get("cosine") is not None
            else ""
        )
        for e in likes
    ]
    return "; ".join(parts) or "no such photo in the dataset"
