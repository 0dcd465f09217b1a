"""End to end on the tiny config: CLI, checkpoints, exact resume, two processes, overfitting."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from training.config import load_config
from training.train import config_with_overrides, find_checkpoint, run_training

REPO = Path(__file__).resolve().parents[2]


def tiny_config(tiny_config_path: Path, shards: list[Path], out: Path, **train):
    cfg = config_with_overrides(
        tiny_config_path, shards=" ".join(map(str, shards)), output_dir=str(out)
    )
    cfg.train.report_to = None
    for key, value in train.items():
        section, _, name = key.partition("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def test_fgid_train_cli_writes_metrics_checkpoints_and_adapter(
    tiny_config_path: Path, fgid_shards: list[Path], tmp_path: Path
) -> None:
    from pipelines.cli import main

    out = tmp_path / "run"
    config = tmp_path / "tiny.yaml"
    values = yaml.safe_load(tiny_config_path.read_text())
    values["train"].update(checkpointing_steps=2, checkpoints_total_limit=2)
    config.write_text(yaml.safe_dump(values))
    args = [
        "train",
        "--config",
        str(config),
        "--shards",
        str(fgid_shards[0].parent / "*.tar"),
        "--output-dir",
        str(out),
        "--max-steps",
        "5",
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert {"loss", "predict_loss", "facial_loss", "lr", "samples_per_s"} <= set(rows[0])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]
    assert find_checkpoint(out, "latest").name == "checkpoint-5"
    weights = load_file(str(out / "adapter" / "adapter.safetensors"))
    assert any(k.startswith("facial_encoder.") for k in weights)
    assert any(k.startswith("id_net.") for k in weights)
    assert any(".lora_" in k for k in weights) and any("to_k_ip" in k for k in weights)
    assert list((out / "logs").rglob("events.out.tfevents.*")), "TensorBoard log written"
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["id_dim"] == 128


def test_resume_continues_exactly(
    tiny_config_path: Path, fgid_shards: list[Path], tmp_path: Path
) -> None:
    straight = tiny_config(
        tiny_config_path,
        fgid_shards,
        tmp_path / "a",
        train__max_steps=6,
        train__checkpointing_steps=3,
        data__caption_drop=0.3,
    )
    full = run_training(straight)
    cut = tiny_config(
        tiny_config_path,
        fgid_shards,
        tmp_path / "b",
        train__max_steps=3,
        train__checkpointing_steps=3,
        data__caption_drop=0.3,
    )
    run_training(cut)
    cut.train.max_steps = 6
    resumed = run_training(cut, resume="latest")
    assert [r["step"] for r in resumed] == [4, 5, 6]
    for a, b in zip(full[3:], resumed, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
    wa = load_file(str(tmp_path / "a" / "adapter" / "adapter.safetensors"))
    wb = load_file(str(tmp_path / "b" / "adapter" / "adapter.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    from training.state_io import load_state

    ckpt = tmp_path / "b" / "checkpoint-6"
    opt = load_state(ckpt, "optimizer")
    assert opt["state"][0]["step"] == 6  # AdamW moments carried over from checkpoint-3
    # Nothing in a checkpoint is a pickle: safetensors and JSON only.
    assert {p.suffix for p in ckpt.iterdir()} <= {".safetensors", ".json"}


@pytest.mark.integration
def test_two_processes_read_different_samples_and_stay_in_sync(
    tiny_config_path: Path, fgid_shards: list[Path], tmp_path: Path
) -> None:
    values = yaml.safe_load(tiny_config_path.read_text())
    values["data"]["shards"] = str(fgid_shards[0].parent / "*.tar")
    values["data"]["batch_size"] = 1
    values["train"].update(
        output_dir=str(tmp_path / "ddp"),
        max_steps=4,
        report_to=None,
        record_rank_outputs=True,
        checkpointing_steps=100,
    )
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(values))
    load_config(config)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # accelerate 1.x: `--cpu` always starts ONE process (its CPU multi-process path is mpirun);
    # `--multi_gpu` starts torchrun ranks, which the trainer turns into gloo ranks without CUDA.
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "training.train",
        "--config",
        str(config),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outputs = tmp_path / "ddp" / "rank_outputs"
    keys = [(outputs / f"keys_rank{r}.txt").read_text().split() for r in range(2)]
    assert len(keys[0]) == len(keys[1]) == 4
    assert not set(keys[0]) & set(keys[1]), "each rank reads its own shards"
    w0 = load_file(str(outputs / "adapter_rank0.safetensors"))
    w1 = load_file(str(outputs / "adapter_rank1.safetensors"))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    ups = [k for k in w0 if k.endswith("lora_q.up.weight")]
    assert any(w0[k].abs().sum() > 0 for k in ups), "the (zero-initialised) LoRA has trained"


def test_resume_after_steps_past_the_checkpoint_logs_each_step_once(
    tiny_config_path: Path, fgid_shards: list[Path], tmp_path: Path
) -> None:
    """A run that went on past its last checkpoint (killed at step 5, checkpoint-3 on disk):
    `--resume latest` redoes steps 4-5, and metrics.jsonl holds one row per step."""
    import shutil

    out = tmp_path / "run"
    cfg = tiny_config(
        tiny_config_path, fgid_shards, out, train__max_steps=5, train__checkpointing_steps=3
    )
    run_training(cfg)
    shutil.rmtree(out / "checkpoint-5")  # as if killed before the step-5 checkpoint
    cfg.train.max_steps = 6
    run_training(cfg, resume="latest")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_hostile_identity_embedding_is_skipped_not_a_nan_loss(
    tiny_config_path: Path, face_samples: list[dict], tmp_path: Path
) -> None:
    """An `id.npy` of 1e30 in a committed shard: skipped and counted, the loss stays finite."""
    import io
    import math

    import numpy as np

    from tests.training.conftest import write_shards

    buf = io.BytesIO()
    np.save(buf, np.full(128, 1e30, dtype=np.float32), allow_pickle=False)
    samples = [dict(m) for m in face_samples[:6]]
    samples[0]["id.npy"] = buf.getvalue()
    shards = write_shards(samples, tmp_path / "shards", 2)  # records match: built that way
    cfg = tiny_config(
        tiny_config_path, shards, tmp_path / "run", train__max_steps=4, data__batch_size=2
    )
    rows = run_training(cfg)  # 8 samples read: the bad one is met in the first epoch
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["corrupt_samples"] == 1 and rows[-1]["unverified_shards"] == 0


def test_train_refuses_a_pipe_url(
    tiny_config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from training.train import main

    marker = tmp_path / "ran"
    args = ["--config", str(tiny_config_path), "--shards", f"pipe:touch {marker}"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--output-dir", str(tmp_path / "run")])
    assert exc.value.code == 2 and "refused shard URL" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "run").exists()


# Overfitting is measured on the tiny config itself: its random base UNet trains with the adapter
# (a frozen random UNet is no denoiser; the config's header has the frozen-base measurements).
TINY = REPO / "training" / "configs" / "tiny.yaml"


def _overfit(shards: list[Path], out: Path) -> tuple[float, float]:
    cfg = tiny_config(
        TINY,
        shards,
        out,
        train__max_steps=300,
        train__checkpointing_steps=1000,
        data__batch_size=4,
    )
    losses = [r["loss"] for r in run_training(cfg)]
    return statistics.mean(losses[:20]), statistics.mean(losses[-20:])


@pytest.mark.slow
def test_tiny_overfits_eight_shipped_faces(face_samples: list[dict], tmp_path: Path) -> None:
    from tests.training.conftest import write_shards

    shards = write_shards(face_samples[:8], tmp_path / "shards", 2)
    first, last = _overfit(shards, tmp_path / "run")
    assert last < first / 2, (first, last)


@pytest.mark.slow
@pytest.mark.integration
def test_tiny_overfits_eight_deepface_samples_built_by_fgid_build(
    shared_faces: Path, tmp_path: Path
) -> None:
    """Acceptance 1: `fgid build` on ../shared/data/faces/deepface, then 300 tiny steps."""
    import tarfile

    photos = sorted(p for p in shared_faces.glob("*.jpg"))[:12]
    (tmp_path / "in").mkdir()
    for p in photos:  # copies: a symlink leading out of INPUT is an `outside_input` reject
        shutil.copyfile(p, tmp_path / "in" / p.name)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "build",
            str(tmp_path / "in"),
            str(tmp_path / "ds"),
            "--workers",
            "1",
            "--shard-size",
            "3",
            "--max-faces",
            "1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    shards = sorted((tmp_path / "ds" / "shards").glob("*.tar"))
    # Exactly 8 samples: the members of the first 8 keys, copied byte for byte into one tar.
    chosen = [tmp_path / "eight.tar"]
    keys: list[str] = []
    with tarfile.open(chosen[0], "w") as dst:
        for shard in shards:
            with tarfile.open(shard) as src:
                for info in src.getmembers():
                    key = info.name.rsplit("/", 1)[-1].split(".", 1)[0]
                    if key not in keys:
                        if len(keys) == 8:
                            continue
                        keys.append(key)
                    dst.addfile(info, src.extractfile(info))
    assert len(keys) == 8, keys
    # its commit record, as fgid build writes one (the stream trusts only committed shards)
    import hashlib

    from fgid_builder.shards import shard_stats, write_stats

    data = chosen[0].read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    tar = {"name": chosen[0].name, "bytes": len(data), "sha256": digest, "keys": sorted(keys)}
    write_stats(
        tmp_path / "eight.json", shard_stats(0, tar=tar, images=len(keys), reject_reasons=[])
    )
    first, last = _overfit(chosen, tmp_path / "run")
    assert last < first / 2, (first, last)
