"""The CLIP feature cache: the encoder's own outputs, computed once per distinct input, never
read back for other encoder weights, and a training run that reads it matches one that does not."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from tests.training.test_train import tiny_config
from training.base_models import load_base_models
from training.config import load_config
from training.feature_cache import ClipFeatureCache
from training.model import CLIP_LAYER
from training.train import run_training


@pytest.fixture(scope="module")
def encoder(tiny_config_path: Path) -> torch.nn.Module:
    return load_base_models(load_config(tiny_config_path).model).image_encoder


def direct(encoder: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder(pixels, output_hidden_states=True).hidden_states[CLIP_LAYER]


def test_features_are_computed_once_then_read(encoder: torch.nn.Module, tmp_path: Path) -> None:
    size = encoder.config.image_size
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(3, 3, size, size, generator=g)
    pixels = torch.cat([pixels, torch.zeros(2, 3, size, size)])  # two zeroed slots: one entry
    cache = ClipFeatureCache(tmp_path, encoder, layer=CLIP_LAYER)
    first = cache(pixels)
    assert (cache.hits, cache.misses) == (0, 5)
    assert len(list(cache.root.glob("*/*.safetensors"))) == 4
    expected = direct(encoder, pixels)
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-6)
    again = ClipFeatureCache(tmp_path, encoder, layer=CLIP_LAYER)  # another process, same weights
    assert again.root == cache.root
    second = again(pixels[[4, 1, 0]])
    assert (again.hits, again.misses) == (3, 0)
    assert torch.equal(second, first[[4, 1, 0]])  # the stored bytes, not a recomputation
    # One changed pixel is another entry.
    other = pixels[:1].clone()
    other[0, 0, 0, 0] += 1.0
    again(other)
    assert again.misses == 1


def test_other_weights_never_read_stale_entries(
    encoder: torch.nn.Module, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    size = encoder.config.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    cache = ClipFeatureCache(tmp_path, encoder, layer=CLIP_LAYER)
    cache(pixels)
    param = next(encoder.parameters())
    saved = param.detach().clone()
    try:
        with torch.no_grad():
            param.view(-1)[0] += 0.5  # a fine-tuned encoder: one weight differs
        changed = ClipFeatureCache(tmp_path, encoder, layer=CLIP_LAYER)
        assert changed.root != cache.root
        got = changed(pixels)
        assert (changed.hits, changed.misses) == (0, 2)
        torch.testing.assert_close(got, direct(encoder, pixels), rtol=1e-5, atol=1e-6)
    finally:
        with torch.no_grad():
            param.copy_(saved)
    assert ClipFeatureCache(tmp_path, encoder, layer=CLIP_LAYER).root == cache.root
    # Another hidden layer is another folder too.
    assert ClipFeatureCache(tmp_path, encoder, layer=-1).root != cache.root
    # A damaged entry is recomputed and rewritten, with a warning naming it.
    path = cache.entry(pixels[0])
    path.write_bytes(b"not a safetensors file")
    fresh = ClipFeatureCache(tmp_path, encoder, layer=CLIP_LAYER)
    with caplog.at_level(logging.WARNING, logger="training.feature_cache"):
        got = fresh(pixels)
    assert str(path) in caplog.text and (fresh.hits, fresh.misses) == (1, 1)
    torch.testing.assert_close(got, direct(encoder, pixels), rtol=1e-5, atol=1e-6)
    reread = ClipFeatureCache(tmp_path, encoder, layer=CLIP_LAYER)
    assert torch.equal(reread(pixels[:1]), got[:1]) and reread.hits == 1  # rewritten


def test_training_with_the_cache_matches_training_without(
    tiny_config_path: Path, fgid_shards: list[Path], tmp_path: Path
) -> None:
    # One epoch over the shards' samples (batch 2) and one step of the next, which reads
    # every feature.
    keys = json.loads((fgid_shards[0].parent / "keys.json").read_text())
    steps = (len(keys) + 1) // 2 + 1
    plain = run_training(
        tiny_config(tiny_config_path, fgid_shards, tmp_path / "a", train__max_steps=steps)
    )
    cached_cfg = tiny_config(
        tiny_config_path,
        fgid_shards,
        tmp_path / "b",
        train__max_steps=steps,
        train__clip_feature_cache=str(tmp_path / "features"),
    )
    cached = run_training(cached_cfg)
    assert all(r["clip_cache_hits"] == r["clip_cache_misses"] == 0 for r in plain)
    for a, b in zip(plain, cached, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
    assert cached[0]["clip_cache_misses"] > 0
    assert sum(r["clip_cache_hits"] for r in cached) > 0
    assert cached[-1]["clip_cache_misses"] == 0  # second epoch: every input seen before
    # A second run over the same data computes nothing.
    cached_cfg.train.output_dir = str(tmp_path / "c")
    cached_cfg.train.max_steps = 2
    again = run_training(cached_cfg)
    assert sum(r["clip_cache_misses"] for r in again) == 0
    for a, b in zip(cached[:2], again, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
