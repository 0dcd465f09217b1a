"""The one configuration of backends and face gates that `fgid build` and `fgid stage` share.

Both commands' config dataclasses extend `BackendSettings`, so a backend or gate option has one
name, one default and one check, and the Ray stages are configured from it the same way
whichever command runs them.
"""

from __future__ import annotations

from dataclasses import dataclass

from fgid_builder.faces import DEFAULT_MAX_FACES, DEFAULT_MIN_FACE
from fgid_builder.registry import DEFAULTS, available


@dataclass(kw_only=True)
class BackendSettings:
    """Which backend runs each stage, where their weights are, and the face gates."""

    detector: str = DEFAULTS["detect"]
    parser: str = DEFAULTS["parse"]
    embedder: str = DEFAULTS["embed"]
    captioner: str = DEFAULTS["caption"]
    models_dir: str | None = None
    min_face: int = DEFAULT_MIN_FACE
    max_faces: int = DEFAULT_MAX_FACES

    def backends(self) -> dict[str, str]:
        """stage -> backend name."""
        return {
            "detect": self.detector,
            "parse": self.parser,
            "embed": self.embedder,
            "caption": self.captioner,
        }

    def settings_errors(self) -> list[str]:
        """One line per invalid backend or gate setting (empty when all are valid)."""
        errors = []
        if self.min_face < 1:
            errors.append("--min-face must be >= 1")
        if self.max_faces < 0:
            errors.append("--max-faces must be >= 0 (0 = no limit)")
        for stage, name in self.backends().items():
            if name not in available(stage):
                errors.append(
                    f"unknown {stage} backend {name!r}; choose one of: {', '.join(available(stage))}"
                )
        return errors
