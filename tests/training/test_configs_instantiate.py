"""Every YAML in training/configs builds its model on the architectures of its family, and one
training forward + backward (adapter, LoRA, identity branch, localization maps, both losses)
runs without a shape error: tiny configs on the tiny models, SD1.5 configs on the real-size
architectures from the published configs in training/arch/sd15, on the meta device (shapes
only: no weights, no memory, no time)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from training.base_models import BaseModels, build_sd15_arch_models, build_tiny_models
from training.config import load_config
from training.losses import facial_localization_loss, noise_prediction_loss
from training.model import build_model, localization_layer_names

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training" / "configs").glob("*.yaml"))
# SD1.5's published parameter counts (diffusers/transformers count every parameter).
SD15_PARAMS = {
    "unet": 859_520_964,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "image_encoder": 632_076_800,
}


def family_models(cfg) -> tuple[BaseModels, str]:
    if cfg.model.tiny is not None:
        # the tiny family: built in memory (the pre-trained variant has the same architecture)
        return build_tiny_models(
            replace(cfg.model.tiny, pretrain_steps=0), cfg.model.resolution
        ), "cpu"
    return build_sd15_arch_models("meta"), "meta"


def test_real_size_architectures_have_the_published_sizes() -> None:
    base = build_sd15_arch_models("meta")
    counts = {
        name: sum(p.numel() for p in getattr(base, name).parameters()) for name in SD15_PARAMS
    }
    assert counts == SD15_PARAMS
    assert base.vae_scale_factor == 8 and base.clip_image_size == 224
    assert base.unet.config.cross_attention_dim == base.text_encoder.config.hidden_size == 768
    # the 5 middle cross-attention layers of SD1.5's 16: down 2.1, mid, up 1.0, 1.1, 1.2
    assert localization_layer_names(base.unet, 5) == [
        "down_blocks.2.attentions.1.transformer_blocks.0.attn2",
        "mid_block.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn2",
    ]


@pytest.mark.parametrize("checkpointing", [False, True], ids=["", "grad-checkpointing"])
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_builds_and_steps_on_its_architecture(path: Path, checkpointing: bool) -> None:
    cfg = load_config(path)
    cfg.model.gradient_checkpointing = checkpointing
    base, device = family_models(cfg)
    base.tokenizer.add_tokens([cfg.model.facial_token], special_tokens=True)
    id_dim = cfg.model.id_dim or 512  # insightface's ArcFace (128 with the dlib embedder)
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(base, cfg.model, id_dim)
    model.train()  # as the trainer does (gradient checkpointing is active in training mode)
    b, r, res = 1, cfg.model.max_regions, cfg.model.resolution
    lat, clip = res // base.vae_scale_factor, base.clip_image_size
    with torch.device(device):
        pred, maps = model(
            torch.randn(b, base.unet.config.in_channels, lat, lat),
            torch.tensor([500] * b),
            torch.zeros(b, base.tokenizer.model_max_length, dtype=torch.long),
            torch.randn(b, r, 3, clip, clip),
            torch.tensor([[3, 5, 7, 9, 11][:r]] * b),
            torch.ones(b, r, dtype=torch.bool),
            torch.randn(b, id_dim),
            torch.randn(b, 3, clip, clip),
        )
        assert pred.shape == (b, base.unet.config.out_channels, lat, lat)
        assert len(maps) == cfg.model.localization_layers
        loss = noise_prediction_loss(pred, torch.randn_like(pred)) + cfg.loss.facial_weight * (
            facial_localization_loss(maps, torch.rand(b, r, lat, lat), torch.ones(b, r).bool())
        )
    assert loss.shape == ()
    loss.backward()
    trainable = model.trainable_parameters()
    assert trainable and all(p.grad is not None and p.grad.shape == p.shape for p in trainable)
