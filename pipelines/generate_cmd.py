"""`fgid generate`: options map one-to-one onto eval.generate.GenerateConfig."""

from __future__ import annotations

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="A checkpoint-{step} folder or a training output dir (its adapter/).",
)
@click.option(
    "--config",
    "config",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The training YAML the adapter was trained with.",
)
@click.option(
    "--ref", required=True, type=click.Path(exists=True, dir_okay=False), help="Reference photo."
)
@click.option("--prompt", required=True, help="Text prompt (the facial details are added).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--num-images", type=int, default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Image i uses seed + i.")
@click.option("--steps", type=int, default=30, show_default=True, help="DDIM steps.")
@click.option("--guidance", type=float, default=5.0, show_default=True, help="CFG scale.")
@click.option("--height", type=int, default=None, help="Default: the config's resolution.")
@click.option("--width", type=int, default=None, help="Default: the config's resolution.")
@click.option(
    "--start-merge-step",
    type=float,
    default=0.5,
    show_default=True,
    help="Fraction of the steps run on the plain text prompt before the facial prompt.",
)
@click.option("--negative-prompt", default="", help="Unconditional prompt for guidance.")
@click.option("--detector", default="dlib", show_default=True, help="Builder detect backend.")
@click.option("--parser", default="landmarks", show_default=True, help="Builder parse backend.")
@click.option("--embedder", default="dlib", show_default=True, help="Builder embed backend.")
@click.option(
    "--models-dir",
    default=None,
    envvar="FGID_MODELS_DIR",
    help="Folder of the builder backends' weights (env FGID_MODELS_DIR).",
)
def generate_command(**options: object) -> None:
    """Generate portraits of the reference photo's identity with a trained ConsistentID adapter;
    writes PNGs and prompts.jsonl (the layout `fgid eval` reads)."""
    import logging

    from eval.generate import GenerateConfig, run_generate

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = GenerateConfig(**options)  # type: ignore[arg-type]
    try:
        cfg.validate()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    paths = run_generate(cfg)
    click.echo(f"{len(paths)} image(s) in {cfg.out}")
