"""Training configuration: one YAML per experiment, mapped one-to-one onto these dataclasses.

Unknown keys and wrong types are errors at load time, so a typo in a config never silently
falls back to a default halfway through a multi-GPU run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MIXED_PRECISION = ("no", "fp16", "bf16")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")


@dataclass
class TinyModelConfig:
    """Random tiny UNet/VAE/CLIP text+vision models built from configs (CPU tests, benchmarks)."""

    seed: int = 0
    cross_attention_dim: int = 32
    clip_image_size: int = 32
    # Like SD1.5, the frozen base UNet is first trained as a generic denoiser on OTHER data (the
    # non-face photos/textures shipped with scikit-image, unconditional prompt), seeded; 0 = keep
    # the random UNet. The result is cached (diffusers/transformers folders, safetensors) under
    # `pretrain_cache` (null = $FGID_CACHE or ~/.cache/fgid) in `tiny-base-<hash of config,
    # recipe, library versions and CPU numerics>/`, and loaded like SD1.5 from a local folder.
    pretrain_steps: int = 0
    pretrain_batch_size: int = 32
    pretrain_lr: float = 1.0e-3
    pretrain_crops: int = 512
    pretrain_cache: str | None = None


@dataclass
class ModelConfig:
    # SD1.5 in diffusers layout (unet/ vae/ text_encoder/ tokenizer/ scheduler/); null with tiny.
    pretrained_model: str | None = None
    # CLIP vision model folder (transformers layout), e.g. IP-Adapter's CLIP-ViT-H-14.
    image_encoder: str | None = None
    tiny: TinyModelConfig | None = None
    resolution: int = 512
    num_id_tokens: int = 4
    lora_rank: int = 128
    # Identity embedding size; null = read from the first sample of the shards.
    id_dim: int | None = None
    id_resampler_depth: int = 4
    id_resampler_heads: int = 12
    id_resampler_dim_head: int = 64
    facial_resampler_depth: int = 2
    facial_resampler_heads: int = 8
    facial_resampler_dim_head: int = 64
    max_regions: int = 5
    localization_layers: int = 5
    facial_token: str = "<|facial|>"
    gradient_checkpointing: bool = False
    # Train the base UNet's own weights along with the adapter (saved in the adapter file under
    # `unet.`). Off for SD1.5 as ConsistentID (the base stays frozen so the adapter plugs into
    # other SD1.5 checkpoints); on for the tiny config, whose base is random, hence no denoiser.
    train_unet: bool = False

    def validate(self) -> None:
        if self.tiny is None and (self.pretrained_model is None or self.image_encoder is None):
            raise ValueError("model: set pretrained_model and image_encoder, or tiny")
        if self.resolution % 8 or self.resolution < 32:
            raise ValueError("model.resolution must be a multiple of 8 and >= 32")
        if not 1 <= self.max_regions <= 5:
            raise ValueError("model.max_regions must be in 1..5 (face, ears, eyes, nose, mouth)")
        for name in ("num_id_tokens", "lora_rank", "localization_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1")


@dataclass
class DataConfig:
    # A glob, a brace pattern (`shards-{000000..000009}.tar`) or a list of either.
    shards: str | list[str] = ""
    batch_size: int = 2
    num_workers: int = 2
    shuffle_buffer: int = 256
    seed: int = 0
    # IP-Adapter/ConsistentID drop rates: text only, image only, both (10% overall with a text drop).
    caption_drop: float = 0.05
    image_drop: float = 0.05
    both_drop: float = 0.05
    strict: bool = False
    min_region_pixels: int = 16
    # Read a shard only when its bytes match the commit record beside it (`NNNNNN.json`, the
    # tar's size and SHA-256, as `fgid build` writes it); others are skipped and counted. false:
    # read tars that have no record (hand-made shards), still never from a `pipe:` URL.
    verify: bool = True
    # Skip samples whose identity embedding's L2 norm is further than this from 1.
    id_norm_tolerance: float = 1.0e-2
    # one split of `fgid split` (OUT/splits.parquet beside the shards' folder, or `splits`)
    split: str | None = None
    splits: str | None = None
    # opt-out lists (fgid_builder.optout); the dataset's own OUT/optout.txt is always read
    exclude: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.batch_size < 1 or self.num_workers < 0 or self.shuffle_buffer < 0:
            raise ValueError("data: batch_size >= 1, num_workers >= 0, shuffle_buffer >= 0")
        drops = (self.caption_drop, self.image_drop, self.both_drop)
        if any(p < 0 for p in drops) or sum(drops) > 1:
            raise ValueError("data: drop probabilities must be >= 0 and sum to <= 1")
        if not self.id_norm_tolerance > 0:
            raise ValueError("data.id_norm_tolerance must be > 0")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    scheduler: str = "constant"
    warmup_steps: int = 0
    # torch's fused AdamW kernel (CPU and CUDA): one pass over each tensor instead of ~8
    # (measured 3.5x faster on CPU; the default for-loop AdamW step took 18% of a real-size
    # adapter step at 64 px).
    fused: bool = True

    def validate(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"optim.scheduler must be one of {SCHEDULERS}")
        if self.lr <= 0:
            raise ValueError("optim.lr must be > 0")


@dataclass
class LossConfig:
    facial_weight: float = 0.01
    foreground_mask_prob: float = 0.5

    def validate(self) -> None:
        if not 0 <= self.foreground_mask_prob <= 1:
            raise ValueError("loss.foreground_mask_prob must be in [0, 1]")


@dataclass
class RunConfig:
    output_dir: str = "runs/consistentid"
    max_steps: int = 1000
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    log_every: int = 10
    seed: int = 0
    allow_tf32: bool = True
    report_to: str | None = "tensorboard"
    # Folder of the frozen CLIP image features (training.feature_cache): each distinct input is
    # encoded once and read back on later epochs and runs; keyed by the encoder's weights hash
    # and the input's bytes, so other weights never read stale entries. null = encode per step.
    clip_feature_cache: str | None = None
    # Debug/tests: each rank writes the sample keys it read and its final adapter weights.
    record_rank_outputs: bool = False

    def validate(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"train.mixed_precision must be one of {MIXED_PRECISION}")
        if (
            self.max_steps < 1
            or self.gradient_accumulation_steps < 1
            or self.checkpointing_steps < 1
        ):
            raise ValueError(
                "train: max_steps, gradient_accumulation_steps, checkpointing_steps >= 1"
            )
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError("train.checkpoints_total_limit must be >= 1 or null")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> Config:
        for section in (self.model, self.data, self.optim, self.loss, self.train):
            section.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check `value` against a dataclass field type, building nested dataclasses from dicts."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ValueError(f"{where}: null is not allowed")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError(f"{where}: {value!r} matches none of {tp} ({'; '.join(errors)})")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported type {tp}")


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> Config:
    return _build(Config, values or {}, "config").validate()


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML config; `overrides` maps dotted keys (`train.max_steps`) to values."""
    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        values.setdefault(section, {})[key] = value
    return config_from_dict(values)
