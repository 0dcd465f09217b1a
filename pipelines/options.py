"""Click options shared by `fgid build` and `fgid stage`, declared once so their names,
defaults and help stay the same in both."""

from __future__ import annotations

from typing import Any

import click

from fgid_builder.faces import DEFAULT_MAX_FACES, DEFAULT_MIN_FACE
from fgid_builder.registry import DEFAULTS, available
from fgid_builder.stage_resources import FLAG_NAMES, STAGES, StageResources, parse_option_values

_BACKEND_WHAT = {
    "detect": "Detection",
    "parse": "Face-parsing",
    "embed": "Identity-embedding",
    "caption": "Caption",
}


def backend_option(stage: str):
    """`--detector` / `--parser` / `--embedder` / `--captioner`: the backend by name."""
    return click.option(
        f"--{FLAG_NAMES[stage]}",
        default=DEFAULTS[stage],
        show_default=True,
        help=f"{_BACKEND_WHAT[stage]} backend: {', '.join(available(stage))}.",
    )


models_dir_option = click.option(
    "--models-dir",
    default=None,
    help="Folder of model weights (default: $FGID_MODELS_DIR). Nothing is downloaded.",
)
min_face_option = click.option(
    "--min-face",
    type=int,
    default=DEFAULT_MIN_FACE,
    show_default=True,
    help="Reject faces whose detector box is shorter than this many pixels.",
)
max_faces_option = click.option(
    "--max-faces",
    type=int,
    default=DEFAULT_MAX_FACES,
    show_default=True,
    help="Keep the N largest faces of a photo (the rest: too_many_faces); 0 = all.",
)
shard_size_option = click.option(
    "--shard-size",
    type=int,
    default=1000,
    show_default=True,
    help="Unique input images per shard (a shard holds all faces of its images).",
)


def click_options(func: Any) -> Any:
    """Add `--stage-config FILE`, `--{detector,parser,embedder,captioner}-{gpus,batch-size,
    concurrency}` and `--{...}-option KEY=VALUE` to a click command; read them back with
    `resources_from_click_kwargs(kwargs)` (which pops them)."""
    for stage in reversed(STAGES[:4]):
        flag = FLAG_NAMES[stage]
        func = click.option(
            f"--{flag}-option",
            f"{flag}_option",
            multiple=True,
            metavar="KEY=VALUE",
            help=f"Option of the {stage} backend (YAML value), e.g. device=cuda.",
        )(func)
        func = click.option(
            f"--{flag}-concurrency", type=click.IntRange(min=1), default=None,
            help=f"Actors in the {stage} pool.",
        )(func)  # fmt: skip
        func = click.option(
            f"--{flag}-batch-size", type=click.IntRange(min=1), default=None,
            help=f"Batch size of the {stage} stage.",
        )(func)  # fmt: skip
        func = click.option(
            f"--{flag}-gpus", type=click.FloatRange(min=0), default=None,
            help=f"GPUs per {stage} actor (fractions share a GPU); >0 makes it a GPU pool.",
        )(func)  # fmt: skip
    return click.option(
        "--stage-config",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="YAML of per-stage batch_size / concurrency / num_gpus / num_cpus / options.",
    )(func)


def resources_from_click_kwargs(kwargs: dict[str, Any]) -> StageResources:
    """Pop the options added by `click_options` from a command's kwargs; build the config."""
    gpus, batch, conc, opts = {}, {}, {}, {}
    for stage in STAGES[:4]:
        flag = FLAG_NAMES[stage]
        gpus[stage] = kwargs.pop(f"{flag}_gpus", None)
        batch[stage] = kwargs.pop(f"{flag}_batch_size", None)
        conc[stage] = kwargs.pop(f"{flag}_concurrency", None)
        values = kwargs.pop(f"{flag}_option", ()) or ()
        opts[stage] = parse_option_values(values) or None
    return StageResources.from_cli(
        stage_config=kwargs.pop("stage_config", None),
        gpus=gpus,
        batch_sizes=batch,
        concurrency=conc,
        options=opts,
    )
