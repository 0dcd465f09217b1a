"""The tiny base UNet pre-trained as a generic denoiser on non-face images, cached on disk."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from training.base_models import (
    PRETRAIN_IMAGES,
    ensure_tiny_base,
    load_base_models,
    pretrain_crops,
    tiny_base_folder,
)
from training.config import ModelConfig, TinyModelConfig, load_config

REPO = Path(__file__).resolve().parents[2]


def _small(cache: Path, **kw) -> TinyModelConfig:
    values = dict(
        pretrain_steps=4, pretrain_batch_size=2, pretrain_crops=4, pretrain_cache=str(cache)
    )
    values.update(kw)
    return TinyModelConfig(**values)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


def test_no_face_image_is_used_for_pretraining() -> None:
    assert not {"astronaut.png", "camera.png", "lfw_subset.npy"} & set(PRETRAIN_IMAGES)
    crops = pretrain_crops(3, 64, seed=0)
    assert crops.shape == (3, 3, 64, 64) and -1.0 <= crops.min() < crops.max() <= 1.0
    torch.testing.assert_close(crops, pretrain_crops(3, 64, seed=0), rtol=0, atol=0)


def test_pretrained_tiny_base_is_deterministic_cached_and_loaded_like_sd15(tmp_path: Path) -> None:
    a = ensure_tiny_base(_small(tmp_path / "a"), 64)
    b = ensure_tiny_base(_small(tmp_path / "b"), 64)
    assert a.name == b.name and a.name.startswith("tiny-base-")
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "image_encoder"):
        assert (a / sub).is_dir(), sub
    assert (a / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert _digest(a) == _digest(b), "two fresh pre-trainings give the same bytes"
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")], "no temp left"

    # A cache hit does not retrain: the folder's files stay untouched.
    stamp = (a / "fgid_tiny_base.json").stat().st_mtime_ns
    assert ensure_tiny_base(_small(tmp_path / "a"), 64) == a
    assert (a / "fgid_tiny_base.json").stat().st_mtime_ns == stamp

    # The key follows the recipe (but not where the cache lives).
    other, _ = tiny_base_folder(_small(tmp_path / "a", pretrain_steps=5), 64)
    assert other.name != a.name
    moved, _ = tiny_base_folder(_small(tmp_path / "elsewhere"), 64)
    assert moved.name == a.name

    # The trained UNet is what the trainer loads; the global RNG is not consumed by loading.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    base = load_base_models(ModelConfig(tiny=_small(tmp_path / "a"), resolution=64))
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)
    from safetensors.torch import load_file

    saved = load_file(str(a / "unet" / "diffusion_pytorch_model.safetensors"))
    for k, v in base.unet.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert not any(p.requires_grad for p in base.unet.parameters())
    assert "<|facial|>" in base.tokenizer.get_vocab()
    meta = json.loads((a / "fgid_tiny_base.json").read_text())
    assert meta["key"]["tiny"]["pretrain_steps"] == 4


def test_tiny_pretrained_yaml_pretrains_its_base() -> None:
    cfg = load_config(REPO / "training" / "configs" / "tiny_pretrained.yaml")
    assert cfg.model.tiny is not None and cfg.model.tiny.pretrain_steps > 0
    assert cfg.model.tiny.pretrain_cache is None  # the shared per-user cache
