"""Backends registered by name, imported lazily so an optional dependency is only needed when used.

A backend is a class with configuration in `__init__` (keyword-only, validated up front, cheap and
picklable) and its model loaded on first use inside the worker (`load()`), so Ray ships the
config, never the weights. Stage methods take and return batches:

- detect:  `detect(images: list[np.ndarray]) -> list[list[DetectedFace]]` (RGB uint8, upright)
- parse:   `parse(samples: list[FaceSample]) -> list[np.ndarray]` (512x512 uint8, LABELS ids)
- embed:   `embed(samples: list[FaceSample]) -> np.ndarray` ((N, D) float32, rows unit norm)
- caption: `caption(samples: list[FaceSample]) -> list[Captions]` (samples carry mask, regions)

Every backend also answers `model_info() -> ModelInfo` (name, version, weights SHA-256).
"""

from __future__ import annotations

import importlib
from typing import Any

from fgid_builder.schema import ModelInfo

STAGES = ("detect", "parse", "embed", "caption")

# stage -> name -> "module:Class". Production backends live beside the embedded defaults.
_REGISTRY: dict[str, dict[str, str]] = {
    "detect": {
        "dlib": "fgid_builder.detect.dlib_hog:DlibHogDetector",
        "insightface": "fgid_builder.detect.insightface_scrfd:InsightFaceDetector",
        "retinaface": "fgid_builder.detect.retinaface:RetinaFaceDetector",
    },
    "parse": {
        "landmarks": "fgid_builder.parse.landmark_polygons:LandmarkPolygonParser",
        "bisenet": "fgid_builder.parse.bisenet:BiSeNetParser",
    },
    "embed": {
        "dlib": "fgid_builder.embed.dlib_resnet:DlibResNetEmbedder",
        "arcface": "fgid_builder.embed.arcface:ArcFaceEmbedder",
    },
    "caption": {
        "attributes": "fgid_builder.caption.attributes:AttributeCaptioner",
        "mllm": "fgid_builder.caption.mllm:MLLMCaptioner",
        "vllm": "fgid_builder.caption.vllm_backend:VLLMCaptioner",
    },
}

DEFAULTS = {"detect": "dlib", "parse": "landmarks", "embed": "dlib", "caption": "attributes"}


def register(stage: str, name: str, target: str) -> None:
    """Register `module:Class` as backend `name` of `stage` (for plug-ins)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    _REGISTRY[stage][name] = target


def available(stage: str) -> list[str]:
    return sorted(_REGISTRY[stage])


def targets(stage: str) -> dict[str, str]:
    """name -> "module:Class" of every backend of `stage` (scripts/dvc_deps.py reads it)."""
    return dict(_REGISTRY[stage])


def backend_class(stage: str, name: str) -> type:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    try:
        target = _REGISTRY[stage][name]
    except KeyError:
        raise ValueError(
            f"unknown {stage} backend {name!r}; choose one of: {', '.join(available(stage))}"
        ) from None
    module_name, cls_name = target.split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def create(stage: str, name: str, **config: Any) -> Any:
    """Instantiate a backend; its model is not loaded until first use."""
    return backend_class(stage, name)(**config)


class Backend:
    """The one base class backends share: lazy loading and model provenance."""

    stage: str = ""
    name: str = ""

    def __init__(self) -> None:
        self._loaded = False

    def load(self) -> None:
        """Load weights; idempotent. Subclasses implement `_load`."""
        if not self._loaded:
            self._load()
            self._loaded = True

    def _load(self) -> None:  # pragma: no cover - trivial default
        pass

    def model_info(self) -> ModelInfo:
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        # Ship configuration only; a worker reloads the model on first use.
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_m_")}
        state["_loaded"] = False
        return state
