"""The localization loss reads the facial tokens' CROSS-attention and trains the adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.base_models import load_base_models
from training.config import load_config
from training.data import FGIDStream, SampleTransform
from training.losses import balanced_l1, facial_localization_loss, noise_prediction_loss
from training.model import build_model, facial_attention_probs


@pytest.fixture(scope="module")
def tiny(tiny_config_path: Path, fgid_shards: list[Path]):
    cfg = load_config(tiny_config_path)
    base = load_base_models(cfg.model)
    torch.manual_seed(0)
    model = build_model(base, cfg.model, id_dim=128)
    transform = SampleTransform(
        tokenizer=base.tokenizer,
        resolution=64,
        latent_size=8,
        clip_size=32,
        caption_drop=0.0,
        image_drop=0.0,
        both_drop=0.0,
    )
    stream = FGIDStream([str(p) for p in fgid_shards], transform, batch_size=2, shuffle_buffer=0)
    batch = next(iter(stream))
    assert batch["facial_valid"].sum() >= 4
    return base, model, batch


def forward(model, base, batch):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([500, 700])
    return model(
        latents,
        t,
        batch["input_ids"],
        batch["region_pixels"],
        batch["facial_positions"],
        batch["facial_valid"],
        batch["id_embed"],
        batch["clip_image"],
    )


def test_maps_come_from_the_middle_cross_attention_layers(tiny) -> None:
    base, model, batch = tiny
    pred, maps = forward(model, base, batch)
    assert pred.shape == (2, 4, 8, 8)
    assert list(maps) == model.localization_layers and len(maps) == 5
    assert all(name.endswith("attn2") for name in maps)  # cross-attention, never self-attention
    for probs in maps.values():
        assert probs.shape[0] == 2 and probs.shape[2] == 5
        assert (probs >= 0).all() and (probs <= 1).all()


def test_explicit_probs_equal_the_softmax_over_text_keys() -> None:
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 3, 16, 8, generator=g), torch.randn(2, 3, 77, 8, generator=g)
    pos = torch.tensor([[3, 9, 0, 0, 0], [5, 6, 7, 0, 0]])
    ref = torch.softmax(q @ k.transpose(-1, -2) * 8**-0.5, dim=-1)
    ref = torch.stack([ref[b, :, :, pos[b]] for b in range(2)]).mean(1)
    assert torch.allclose(facial_attention_probs(q, k, pos, 8**-0.5), ref, atol=1e-6)


def test_loss_changes_with_the_region_mask_and_reaches_encoder_and_lora(tiny) -> None:
    base, model, batch = tiny
    model.zero_grad(set_to_none=True)
    _, maps = forward(model, base, batch)
    masks, valid = batch["region_masks"], batch["facial_valid"]
    loss = facial_localization_loss(maps, masks, valid)
    moved = masks.clone()
    moved[valid] = torch.roll(1.0 - masks[valid], shifts=3, dims=-1)
    loss_moved = facial_localization_loss({k: v.detach() for k, v in maps.items()}, moved, valid)
    assert torch.isfinite(loss) and abs(loss.item() - loss_moved.item()) > 1e-7
    loss.backward()

    def grad_norm(module: torch.nn.Module) -> float:
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)

    assert grad_norm(model.facial_encoder.resampler) > 0
    assert grad_norm(model.facial_encoder.fuse) > 0
    lora_grads = {
        n: float(p.grad.abs().sum())
        for n, p in model.processors.named_parameters()
        if "lora_" in n and p.grad is not None
    }
    assert any(v > 0 for n, v in lora_grads.items() if "attn2" in n and "lora_k" in n)
    assert any(v > 0 for n, v in lora_grads.items() if "lora_q" in n)
    model.zero_grad(set_to_none=True)


def test_balanced_l1_prefers_attention_inside_the_mask() -> None:
    mask = torch.zeros(1, 1, 16)
    mask[..., :4] = 1
    inside = mask / 4
    outside = (1 - mask) / 12
    assert balanced_l1(inside, mask) < 0 < balanced_l1(outside, mask)


def test_noise_loss_foreground_mask() -> None:
    pred, target = torch.zeros(1, 4, 8, 8), torch.ones(1, 4, 8, 8)
    fg = torch.zeros(1, 1, 8, 8)
    fg[..., :4, :] = 1
    assert noise_prediction_loss(pred, target) == 1
    assert noise_prediction_loss(pred, target, fg) == 0.5


def test_adapter_roundtrip(tiny, tmp_path: Path) -> None:
    base, model, batch = tiny
    model.save_adapter(tmp_path)
    before = model.adapter_state_dict()
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(1.0)
    model.load_adapter(tmp_path)
    after = model.adapter_state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
