"""Which weights train: the adapter only (SD1.5, frozen base) or the adapter and a random base."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from training.base_models import load_base_models
from training.config import load_config
from training.model import build_model


def _model(tiny_config_path: Path, train_unet: bool):
    cfg = load_config(tiny_config_path)
    model_cfg = replace(cfg.model, train_unet=train_unet)
    base = load_base_models(model_cfg)
    torch.manual_seed(0)
    return base, build_model(base, model_cfg, id_dim=16)


def test_frozen_base_trains_the_adapter_only(tiny_config_path: Path) -> None:
    base, model = _model(tiny_config_path, train_unet=False)
    trainable = {id(p) for p in model.trainable_parameters()}
    processor_params = {id(p) for p in model.processors.parameters()}
    base_params = [p for n, p in base.unet.named_parameters() if id(p) not in processor_params]
    assert base_params and not any(p.requires_grad for p in base_params)
    assert not trainable & {id(p) for p in base_params}
    assert processor_params <= trainable
    assert not any(k.startswith("unet.") for k in model.adapter_state_dict())


def test_trained_base_is_saved_once_and_restored(tiny_config_path: Path, tmp_path: Path) -> None:
    base, model = _model(tiny_config_path, train_unet=True)
    params = model.trainable_parameters()
    assert len({id(p) for p in params}) == len(params), "a parameter is listed twice"
    unet_weights = [n for n, _ in base.unet.named_parameters() if ".processor." not in n]
    assert unet_weights and all(
        p.requires_grad for n, p in base.unet.named_parameters() if ".processor." not in n
    )
    state = model.adapter_state_dict()
    unet_keys = [k for k in state if k.startswith("unet.")]
    assert len(unet_keys) >= len(unet_weights)
    assert not any(".processor." in k for k in unet_keys)  # processors live under processors.

    model.save_adapter(tmp_path / "a")
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    model.load_adapter(tmp_path / "a")
    after = model.adapter_state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)

    # The same file cannot silently load into a frozen-base model (its UNet would be ignored).
    _, frozen = _model(tiny_config_path, train_unet=False)
    with pytest.raises(KeyError, match="train_unet"):
        frozen.load_adapter(tmp_path / "a")


def test_shipped_configs_say_which_base_trains() -> None:
    configs = Path(__file__).resolve().parents[2] / "training" / "configs"
    assert load_config(configs / "tiny.yaml").model.train_unet  # random base
    assert not load_config(configs / "sd15.yaml").model.train_unet  # ConsistentID: frozen
    assert not load_config(configs / "tiny_pretrained.yaml").model.train_unet
