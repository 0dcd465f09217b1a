"""Every YAML in training/configs validates; typos and bad values are load-time errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.config import config_from_dict, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training" / "configs").glob("*.yaml"))


def test_configs_exist() -> None:
    assert {p.name for p in CONFIGS} >= {"tiny.yaml", "sd15.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.train.max_steps >= 1
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any("training.train" in line for line in header), "the header shows how to launch it"


def test_sd15_has_the_paper_settings() -> None:
    cfg = load_config(CONFIGS[[p.name for p in CONFIGS].index("sd15.yaml")])
    assert cfg.model.tiny is None and cfg.model.pretrained_model and cfg.model.image_encoder
    assert (cfg.model.resolution, cfg.model.lora_rank, cfg.model.num_id_tokens) == (512, 128, 4)
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (1e-4, 1e-2)
    assert cfg.train.mixed_precision == "bf16" and cfg.data.batch_size == 2
    assert cfg.loss.facial_weight == 0.01 and cfg.loss.foreground_mask_prob == 0.5
    assert cfg.model.localization_layers == 5
    assert "--num_processes 8" in CONFIGS[[p.name for p in CONFIGS].index("sd15.yaml")].read_text()


@pytest.mark.parametrize(
    "bad",
    [
        {"model": {"tiny": {}, "lora_rnk": 4}},
        {"model": {"tiny": {}}, "train": {"mixed_precision": "fp8"}},
        {"model": {"tiny": {}}, "optim": {"lr": "fast"}},
        {"model": {}},
        {"model": {"tiny": {}}, "data": {"caption_drop": 0.9, "image_drop": 0.2}},
    ],
)
def test_bad_configs_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        config_from_dict(bad)


def test_override_and_roundtrip(tmp_path: Path) -> None:
    src = CONFIGS[[p.name for p in CONFIGS].index("tiny.yaml")]
    cfg = load_config(src, {"train.max_steps": 7, "data.shards": "x/*.tar"})
    assert cfg.train.max_steps == 7 and cfg.data.shards == "x/*.tar"
    again = tmp_path / "c.yaml"
    again.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(again) == cfg
