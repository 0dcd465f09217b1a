"""`fgid export OUT DEST`: an fgid dataset in the official ConsistentID folder + JSON layout.

Thin over `fgid_builder.export.export_samples`; it only finds the committed shards of OUT.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click


def iter_dataset(out: str | Path) -> Iterator[dict[str, Any]]:
    """Every sample of every committed shard of OUT (a folder or any filesystem URL), in
    shard name order."""
    from fgid_builder.dataset import SETTINGS, Dataset

    dataset = Dataset(out)
    if not dataset.shard_names() and not dataset.is_file(SETTINGS):
        raise click.UsageError(f"{out} is not an fgid dataset: no shards and no {SETTINGS}")
    for _, members in dataset.iter_samples():
        yield members


@click.command("export", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--source-root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder the samples' source uris are relative to (the build's INPUT folder); "
    "needed to export the original photos (origin_IMG).",
)
@click.option(
    "--originals/--no-originals",
    default=True,
    show_default=True,
    help="Also write the upright source photos to origin_IMG/ (when they can be found).",
)
def export_command(out: str, dest: Path, source_root: Path | None, originals: bool) -> None:
    """Write dataset OUT to DEST in the layout the official ConsistentID train.py reads.

    Afterwards pass the printed flags to the official train.py.
    """
    from fgid_builder.export import export_samples, official_train_args

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = export_samples(iter_dataset(out), dest, source_root=source_root, originals=originals)
    if summary.samples == 0:
        raise click.ClickException(f"no committed shards with samples in {out}/shards")
    click.echo(json.dumps(summary.to_json(), sort_keys=True))
    click.echo(" ".join(official_train_args(dest)))
