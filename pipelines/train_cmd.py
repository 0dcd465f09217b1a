"""`fgid train`: the same options as `python -m training.train` (one-to-one with the config)."""

from __future__ import annotations

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="YAML config (training/configs/*.yaml).",
)
@click.option("--shards", default=None, help="Shard glob or brace pattern; overrides data.shards.")
@click.option("--output-dir", default=None, help="Overrides train.output_dir.")
@click.option("--max-steps", type=int, default=None, help="Overrides train.max_steps.")
@click.option("--resume", default=None, help="'latest' or a checkpoint folder.")
@click.option(
    "--split",
    default=None,
    help="Train on one split (e.g. train) of OUT/splits.parquet, written by `fgid split OUT`.",
)
@click.option(
    "--exclude",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="Opt-out list whose samples are skipped (OUT/optout.txt is always read).",
)
def train_command(
    config_path: str,
    shards: str | None,
    output_dir: str | None,
    max_steps: int | None,
    resume: str | None,
    split: str | None,
    exclude: tuple[str, ...],
) -> None:
    """Train ConsistentID on fgid shards (accelerate; launch with `accelerate launch` for
    several GPUs or nodes)."""
    from training.data import expand_shards
    from training.train import config_with_overrides, run_training

    try:
        config = config_with_overrides(
            config_path,
            shards=shards,
            output_dir=output_dir,
            max_steps=max_steps,
            split=split,
            exclude=list(exclude),
        )
        expand_shards(config.data.shards)  # refused URLs (pipe:) and no match: exit 2
    except (ValueError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from None
    run_training(config, resume=resume)
