"""Per-stage resources and backend options: batch size, actor count, CPUs/GPUs per actor.

One `StageResources` per run, from CLI flags, a YAML file, or both (flags win). The pipeline
reads it to size its Ray actor pools (GPU stages as GPU actor pools, CPU stages on CPUs) and
to construct each backend with its options. YAML layout (every key optional):

    detect:  {batch_size: 16, concurrency: 2, num_gpus: 0.25, options: {pack: antelopev2}}
    parse:   {batch_size: 32, num_gpus: 0.25}
    embed:   {batch_size: 64, num_gpus: 0.25}
    caption: {batch_size: 8, concurrency: 4, num_gpus: 1, options: {model: llava-1.5-7b-hf}}

Backends default to `device="auto"`: CUDA when the actor was given a GPU, else CPU; so a GPU
count here is all it takes to move a stage to the GPU.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

STAGES: tuple[str, ...] = ("detect", "parse", "embed", "caption", "encode")
# CLI flag prefix per stage (`--detector-gpus`, `--captioner-batch-size`...).
FLAG_NAMES: dict[str, str] = {
    "detect": "detector",
    "parse": "parser",
    "embed": "embedder",
    "caption": "captioner",
    "encode": "encoder",
}


@dataclass(frozen=True)
class StageResource:
    """One stage: None means "the pipeline's default"."""

    batch_size: int | None = None
    concurrency: int | None = None  # actors in the stage's pool
    num_gpus: float = 0.0  # GPUs per actor (fractions share a GPU)
    num_cpus: float | None = None  # CPUs per actor
    options: dict[str, Any] = field(default_factory=dict)  # backend constructor kwargs

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.num_gpus < 0 or (self.num_cpus is not None and self.num_cpus < 0):
            raise ValueError("num_gpus and num_cpus must be >= 0")
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise ValueError("num_gpus above 1 must be a whole number")

    @property
    def on_gpu(self) -> bool:
        return self.num_gpus > 0


@dataclass(frozen=True)
class StageResources:
    """Resources of every stage; picklable and JSON-able (recorded with the build settings)."""

    stages: dict[str, StageResource] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise ValueError(
                f"unknown stage(s) {', '.join(sorted(unknown))}; stages are {', '.join(STAGES)}"
            )

    def __getitem__(self, stage: str) -> StageResource:
        if stage not in STAGES:
            raise KeyError(stage)
        return self.stages.get(stage, StageResource())

    # -- what the pipeline asks --------------------------------------------------------------
    def batch_size(self, stage: str, default: int) -> int:
        return self[stage].batch_size or default

    def concurrency_map(self) -> dict[str, int]:
        """stage -> actors, only for stages that set it (`--concurrency STAGE=N` form)."""
        return {s: r.concurrency for s, r in self.stages.items() if r.concurrency}

    def gpus_map(self) -> dict[str, float]:
        """stage -> GPUs per actor, only for GPU stages (`--gpus STAGE=F` form)."""
        return {s: r.num_gpus for s, r in self.stages.items() if r.num_gpus > 0}

    def backend_options(self, stage: str) -> dict[str, Any]:
        return dict(self[stage].options)

    def to_json(self) -> dict[str, Any]:
        return {s: asdict(r) for s, r in sorted(self.stages.items())}

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> StageResources:
        stages = {}
        for stage, values in (data or {}).items():
            values = dict(values or {})
            allowed = {"batch_size", "concurrency", "num_gpus", "num_cpus", "options"}
            extra = set(values) - allowed
            if extra:
                raise ValueError(
                    f"stage {stage!r}: unknown key(s) {', '.join(sorted(extra))}; "
                    f"allowed: {', '.join(sorted(allowed))}"
                )
            stages[stage] = StageResource(**values)
        return cls(stages=stages)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> StageResources:
        import yaml

        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping stage -> settings")
        return cls.from_dict(data.get("stages", data))

    def merged(self, other: StageResources) -> StageResources:
        """`other`'s explicitly set values win (CLI flags over a YAML file)."""
        out = dict(self.stages)
        for stage, r in other.stages.items():
            base = out.get(stage, StageResource())
            changes: dict[str, Any] = {}
            for k in ("batch_size", "concurrency", "num_cpus"):
                if getattr(r, k) is not None:
                    changes[k] = getattr(r, k)
            if r.num_gpus:
                changes["num_gpus"] = r.num_gpus
            if r.options:
                changes["options"] = {**base.options, **r.options}
            out[stage] = replace(base, **changes)
        return StageResources(stages=out)

    @classmethod
    def from_cli(
        cls,
        *,
        stage_config: str | None = None,
        gpus: dict[str, float] | None = None,
        batch_sizes: dict[str, int] | None = None,
        concurrency: dict[str, int] | None = None,
        options: dict[str, dict[str, Any]] | None = None,
    ) -> StageResources:
        """The YAML file (if any) overridden by flag values keyed by stage."""
        base = cls.from_yaml(stage_config) if stage_config else cls()
        flags: dict[str, dict[str, Any]] = {}
        for key, mapping in (
            ("num_gpus", gpus),
            ("batch_size", batch_sizes),
            ("concurrency", concurrency),
            ("options", options),
        ):
            for stage, value in (mapping or {}).items():
                if value is not None:
                    flags.setdefault(stage, {})[key] = value
        return base.merged(cls.from_dict(flags))


def parse_option_values(values: tuple[str, ...] | list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(raw) if raw else ""
    return out
