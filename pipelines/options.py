"""Click options shared by `fgid build` and `fgid stage`, declared once so their names,
defaults and help stay the same in both."""

from __future__ import annotations

import click

from fgid_builder.faces import DEFAULT_MAX_FACES, DEFAULT_MIN_FACE
from fgid_builder.registry import DEFAULTS, available
from fgid_builder.stage_resources import FLAG_NAMES

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
