"""Per-stage resources: YAML, CLI flags (which win), and what the pipeline reads."""

from __future__ import annotations

import pickle
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from fgid_builder.stage_resources import StageResource, StageResources
from pipelines.options import click_options, resources_from_click_kwargs


def test_yaml_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "stages.yaml"
    cfg.write_text(
        "detect: {batch_size: 16, num_gpus: 0.25, options: {pack: antelopev2}}\n"
        "caption: {batch_size: 8, concurrency: 4, num_gpus: 1, options: {model: llava}}\n"
    )
    r = StageResources.from_cli(
        stage_config=str(cfg),
        gpus={"embed": 0.5},
        batch_sizes={"caption": 2},
        options={"detect": {"det_size": 320}},
    )
    assert r["detect"].batch_size == 16 and r["detect"].num_gpus == 0.25
    assert r.backend_options("detect") == {"pack": "antelopev2", "det_size": 320}
    assert r["caption"].batch_size == 2 and r["caption"].concurrency == 4
    assert r.gpus_map() == {"detect": 0.25, "embed": 0.5, "caption": 1.0}
    assert r.concurrency_map() == {"caption": 4}
    assert r.batch_size("parse", default=4) == 4
    assert pickle.loads(pickle.dumps(r)) == r
    assert r.to_json()["caption"]["options"] == {"model": "llava"}


def test_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown stage"):
        StageResources.from_dict({"decode": {"batch_size": 2}})
    with pytest.raises(ValueError, match="unknown key"):
        StageResources.from_dict({"parse": {"gpus": 1}})
    with pytest.raises(ValueError):
        StageResource(num_gpus=1.5)
    with pytest.raises(ValueError):
        StageResource(batch_size=0)


def test_click_flags() -> None:
    seen = {}

    @click.command()
    @click_options
    def cmd(**kwargs):
        seen["r"] = resources_from_click_kwargs(kwargs)
        seen["rest"] = kwargs

    res = CliRunner().invoke(
        cmd,
        ["--detector-gpus", "0.5", "--captioner-batch-size", "4", "--captioner-concurrency", "2",
         "--captioner-option", "model=llava-1.5-7b-hf", "--parser-option", "half=true"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    r = seen["r"]
    assert r["detect"].num_gpus == 0.5 and r["caption"].batch_size == 4
    assert r["caption"].concurrency == 2 and r.backend_options("parse") == {"half": True}
    assert r.backend_options("caption") == {"model": "llava-1.5-7b-hf"}
    assert seen["rest"] == {}
