"""`fgid generate` on a tiny-config adapter trained for two steps on builder-made shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "training" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny_run(shipped_photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny training run's output dir (checkpoint-2 + adapter/), from 4 real faces."""
    from fgid_builder.process import ImageProcessor
    from fgid_builder.shards import shard_stats, write_shard, write_stats
    from training.train import config_with_overrides, run_training

    processor = ImageProcessor.default()
    members: list[dict] = []
    for photo in shipped_photos:
        members.extend(processor.process(photo.read_bytes(), photo.name).members)
        if len(members) >= 4:
            break
    if not members:
        pytest.skip("the builder found no face in the shipped photos")
    root = tmp_path_factory.mktemp("gen")
    tar = write_shard(root / "000000.tar", sorted(members, key=lambda m: m["__key__"]))
    # The commit record the training stream verifies the tar against.
    write_stats(root / "000000.json", shard_stats(0, tar=tar, images=1, reject_reasons=[]))
    cfg = config_with_overrides(
        TINY_CONFIG, shards=str(root / "000000.tar"), output_dir=str(root / "run"), max_steps=2
    )
    cfg.train.report_to = None
    run_training(cfg)
    return root / "run"


def generate(run: Path, ref: Path, out: Path, *extra: str) -> list[Path]:
    from pipelines.cli import main

    args = [
        "generate",
        "--checkpoint",
        str(run / "checkpoint-2"),
        "--config",
        str(TINY_CONFIG),
        "--ref",
        str(ref),
        "--prompt",
        "a photo of a person in a garden",
        "--out",
        str(out),
        "--num-images",
        "2",
        "--steps",
        "4",
        "--height",
        "48",
        "--width",
        "64",
        *extra,
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return sorted(out.glob("*.png"))


def test_generate_count_size_determinism_and_seed(
    tiny_run: Path, shipped_photos: list[Path], tmp_path: Path
) -> None:
    ref = shipped_photos[0]
    first = generate(tiny_run, ref, tmp_path / "a", "--seed", "7")
    assert len(first) == 2
    for path in first:
        with Image.open(path) as im:
            assert im.size == (64, 48) and im.mode == "RGB"
    rows = [json.loads(x) for x in (tmp_path / "a" / "prompts.jsonl").read_text().splitlines()]
    assert sorted(r["file"] for r in rows) == [p.name for p in first]
    assert all(r["prompt"] == "a photo of a person in a garden" for r in rows)

    again = generate(tiny_run, ref, tmp_path / "b", "--seed", "7")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    other = generate(tiny_run, ref, tmp_path / "c", "--seed", "8")
    assert first[0].read_bytes() != other[0].read_bytes()
    assert first[0].read_bytes() != first[1].read_bytes(), "each image has its own noise"


def test_generate_reads_the_final_adapter_and_delays_the_facial_prompt(
    tiny_run: Path, shipped_photos: list[Path], tmp_path: Path
) -> None:
    """The run's output dir works as --checkpoint; the merge step changes the images."""
    from eval.generate import ConsistentIDGenerator, adapter_folder, process_reference

    assert adapter_folder(tiny_run) == tiny_run / "adapter"
    meta = json.loads((tiny_run / "adapter" / "adapter_config.json").read_text())
    assert meta["data_models"]["embed"]["name"], "training records the data's embedder"
    gen = ConsistentIDGenerator(tiny_run, TINY_CONFIG)
    ref = process_reference(shipped_photos[0])
    kw = {"num_images": 1, "steps": 4, "seed": 3}
    plain_only, prompt = gen.generate(ref, "a person", start_merge_step=1.0, **kw)
    facial_late, _ = gen.generate(ref, "a person", start_merge_step=0.5, **kw)
    assert "<|facial|>" in prompt and prompt.startswith("Caption: a person")
    assert plain_only[0].tobytes() != facial_late[0].tobytes()
