"""`fgid report` and `fgid eval`: thin wiring of eval.report and eval.metrics."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from fgid_builder.registry import available
from fgid_builder.schema import ModelFileError


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.command("report")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--samples",
    "max_samples",
    default=48,
    show_default=True,
    help="Portraits on the contact sheet (the first by key).",
)
@click.option(
    "--reject-examples",
    default=6,
    show_default=True,
    help="Example inputs shown per reject reason.",
)
@click.option(
    "--max-identity",
    default=5000,
    show_default=True,
    help="Samples (first by key) used for clusters and near-duplicates.",
)
@click.option(
    "--cluster-threshold",
    type=float,
    default=None,
    help="Cosine above which two faces join a cluster (default: per embedder).",
)
@click.option(
    "--duplicate-threshold",
    type=float,
    default=None,
    help="Cosine above which two faces are near-duplicates (default: per embedder).",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def report_command(
    out: Path,
    max_samples: int,
    reject_examples: int,
    max_identity: int,
    cluster_threshold: float | None,
    duplicate_threshold: float | None,
    progress: bool,
) -> None:
    """Write the visual QA report of a built dataset to OUT/report/index.html."""
    from eval.report import ReportConfig, write_report

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = ReportConfig(
            max_samples=max_samples,
            reject_examples=reject_examples,
            max_identity=max_identity,
            cluster_threshold=cluster_threshold,
            duplicate_threshold=duplicate_threshold,
            progress=progress,
        )
        path = write_report(out, config=cfg)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    except OSError as e:  # a read-only or full disk: one line, exit 3 (as `fgid build`)
        _fail(f"the report failed: {type(e).__name__}: {e}", 3)
    click.echo(str(path))


@click.command("eval")
@click.option(
    "--refs",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder of {identity}.jpg|png reference photos.",
)
@click.option(
    "--gens",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder of {identity}/*.png|jpg generated images (+ optional prompts.jsonl).",
)
@click.option(
    "--out",
    default="metrics.json",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="metrics.json to write; the CSVs go beside it.",
)
@click.option(
    "--csv",
    "csv_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Per-identity CSV (default: OUT with .csv); per-image rows go to *_images.csv.",
)
@click.option(
    "--detector", default="dlib", show_default=True, type=click.Choice(available("detect"))
)
@click.option(
    "--embedder",
    default="dlib",
    show_default=True,
    type=click.Choice([*available("embed"), "none"]),
    help="Identity embedder for FaceSim ('none' skips it).",
)
@click.option(
    "--parser",
    default="landmarks",
    show_default=True,
    type=click.Choice([*available("parse"), "none"]),
    help="Face parser for the FGIS region crops ('none' skips FGIS).",
)
@click.option(
    "--clip",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Local CLIP folder (CLIPModel + CLIPProcessor) for CLIP-T / CLIP-I.",
)
@click.option(
    "--dino",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Local DINO/DINOv2 folder (AutoModel + AutoImageProcessor).",
)
@click.option(
    "--inception",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Inception-v3 weights for FID (pytorch-fid pt_inception .pth or torchvision).",
)
@click.option(
    "--models-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Backend weights; also searched for clip/, dino/, inception/*.pth.",
)
@click.option(
    "--fgis-model",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "dino", "clip"]),
    help="Feature model of the FGIS region crops (auto: DINO, else CLIP).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def eval_command(
    refs: str,
    gens: str,
    out: str,
    csv_path: str | None,
    detector: str,
    embedder: str,
    parser: str,
    clip: str | None,
    dino: str | None,
    inception: str | None,
    models_dir: str | None,
    fgis_model: str,
    device: str,
    batch_size: int,
    progress: bool,
) -> None:
    """Score generated images against reference photos (FaceSim, FGIS, CLIP-T/I, DINO, FID)."""
    from eval.metrics import EvalConfig, run_eval, summary_lines, write_metrics

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = EvalConfig(
            refs=refs,
            gens=gens,
            out=out,
            csv=csv_path,
            detector=detector,
            embedder=None if embedder == "none" else embedder,
            parser=None if parser == "none" else parser,
            clip=clip,
            dino=dino,
            inception=inception,
            models_dir=models_dir,
            fgis_model=fgis_model,
            device=device,
            batch_size=batch_size,
            progress=progress,
        )
        result = run_eval(cfg)
        paths = write_metrics(result, cfg.out, cfg.csv)
    except ModelFileError as e:
        _fail(str(e))
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    for line in summary_lines(result):
        click.echo(line)
    click.echo("wrote " + ", ".join(str(p) for p in paths))
