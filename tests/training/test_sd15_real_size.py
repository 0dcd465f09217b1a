"""sd15.yaml at the real size: random-weight folders of the published SD1.5 + CLIP ViT-H/14
architectures (built once, cached like the tiny base), shards the builder makes from the deepface
photos, 2 optimisation steps at 64 px on CPU, a checkpoint of only the trainable weights and
their optimizer state, `--resume latest` (reading the CLIP features the first run cached), and
one image from `fgid generate`.

CPU time goes to the CLIP ViT-H/14 forwards (0.33 TFLOP each: 2 per sample with 1 facial
region), the three loads of 1.7 B fp32 parameters and the build on an empty cache; the UNet at
64 px (an 8 x 8 latent, every block and attention layer still run) is the small part."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image
from safetensors import safe_open

from tests.conftest import SHARED_FACES
from tests.training.conftest import build_samples, write_shards
from training.state_io import load_state

REPO = Path(__file__).resolve().parents[2]
SD15 = REPO / "training" / "configs" / "sd15.yaml"
RESOLUTION = 64
# The children use the machine's cores (CI exports OMP_NUM_THREADS=1 for the test processes).
CHILD_THREADS = str(min(4, os.cpu_count() or 1))
# The frozen modules in fp32 (6.8 GB) + the adapter's weights, gradients and AdamW moments.
MAX_RSS_GB = 12

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def sd15_folder() -> Path:
    from training.base_models import ensure_sd15_random

    return ensure_sd15_random()  # $FGID_CACHE or ~/.cache/fgid; CI's first run builds it


@pytest.fixture(scope="module")
def photos(shipped_photos: list[Path]) -> list[Path]:
    if SHARED_FACES.is_dir():
        return sorted(SHARED_FACES.glob("*.jpg"))[:4]
    # ../shared absent (a fresh clone): the face photos shipped in installed packages
    return shipped_photos


@pytest.fixture(scope="module")
def shards(photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> str:
    samples = build_samples(photos)
    if len(samples) < 2:
        pytest.skip(f"the builder found {len(samples)} face(s) in {photos[0].parent}; need 2")
    folder = tmp_path_factory.mktemp("sd15-shards")
    # 2 samples: steps 1-2 are epoch 0, the resumed step 3 starts epoch 1 (cached features)
    write_shards(samples[:2], folder, 2)
    return str(folder / "*.tar")


def run(args: list[str], timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": CHILD_THREADS}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    print(f"{' '.join(args[:3])}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def tensor_numel(path: Path) -> dict[str, int]:
    out = {}
    with safe_open(str(path), "pt") as f:
        for k in f.keys():
            shape = f.get_slice(k).get_shape()
            n = 1
            for s in shape:
                n *= s
            out[k] = n
    return out


def test_sd15_trains_checkpoints_resumes_and_generates(
    sd15_folder: Path, shards: str, photos: list[Path], tmp_path: Path
) -> None:
    values = yaml.safe_load(SD15.read_text())
    values["model"].update(
        pretrained_model=str(sd15_folder / "stable-diffusion-v1-5"),
        image_encoder=str(sd15_folder / "image_encoder"),
        resolution=RESOLUTION,
        gradient_checkpointing=True,
        # The CPU time of a step is mostly CLIP ViT-H/14 (1 + max_regions forwards per sample,
        # 0.33 TFLOP each); the region count changes no parameter. 1 region keeps CI's time.
        max_regions=1,
    )
    values["data"].update(batch_size=1, num_workers=0, shuffle_buffer=4)
    # CPU: no bf16 matmul units here (the GPU recipe keeps bf16); fp32 weights and compute.
    values["train"].update(
        mixed_precision="no",
        checkpointing_steps=2,
        report_to=None,
        log_every=1,
        clip_feature_cache=str(tmp_path / "clip-features"),
    )
    config = tmp_path / "sd15-cpu.yaml"
    config.write_text(yaml.safe_dump(values))
    out = tmp_path / "run"
    common = ["-m", "training.train", "--config", str(config), "--shards", shards]
    first = run([*common, "--output-dir", str(out), "--max-steps", "2"])
    rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    assert rss_gb < MAX_RSS_GB, f"training peaked at {rss_gb:.1f} GB RSS"

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    # 1 + max_regions CLIP inputs per sample, two different samples: all computed
    assert [r["clip_cache_hits"] for r in rows] == [0, 0]
    assert all(r["clip_cache_misses"] == 2 for r in rows)
    assert all(r["loss"] == r["loss"] and r["loss"] < 1e3 for r in rows)  # finite
    logged = re.search(r"(\d+) trainable parameters", first.stderr)
    assert logged, first.stderr[-2000:]
    trainable = int(logged.group(1))

    # The checkpoint: the adapter (trainable weights only) and its AdamW state, nothing frozen.
    ckpt = out / "checkpoint-2"
    names = {p.name for p in ckpt.iterdir()}
    assert names == {
        "adapter.safetensors",
        "adapter_config.json",
        "optimizer.safetensors",
        "optimizer.json",
        "scheduler.safetensors",
        "scheduler.json",
        "rng_0.safetensors",
        "trainer_state.json",
    }
    adapter = tensor_numel(ckpt / "adapter.safetensors")
    assert {k.split(".", 1)[0] for k in adapter} == {"id_net", "facial_encoder", "processors"}
    assert sum(adapter.values()) == trainable
    moments = tensor_numel(ckpt / "optimizer.safetensors")
    assert sum(n for k, n in moments.items() if k.endswith(".exp_avg")) == trainable
    assert sum(n for k, n in moments.items() if k.endswith(".exp_avg_sq")) == trainable
    assert sum(n for k, n in moments.items() if not k.endswith((".exp_avg", ".exp_avg_sq"))) < 1000
    size = sum(p.stat().st_size for p in ckpt.iterdir())
    # fp32 weights + two fp32 moments = 12 bytes per trainable parameter, plus headers/JSON
    assert 12 * trainable <= size <= 12 * trainable * 1.01 + 2_000_000, (size, trainable)
    # the frozen UNet (859.5M) would be 3.4 GB more; ConsistentID's adapter is a small fraction
    assert trainable < 200_000_000

    # --resume latest continues from checkpoint-2: one metrics row per step, AdamW step 3.
    run([*common, "--output-dir", str(out), "--max-steps", "3", "--resume", "latest"])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # epoch 1: the region crop (and the whole image unless it is dropped) written by the first
    # process, read back from the cache by this one
    assert rows[2]["clip_cache_hits"] >= 1, rows[2]
    assert rows[2]["clip_cache_hits"] + rows[2]["clip_cache_misses"] == 2
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["step"] == 3
    opt = load_state(out / "checkpoint-3", "optimizer")
    assert {float(v["step"]) for v in opt["state"].values()} == {3.0}  # AdamW went on

    gen = tmp_path / "gen"
    run(
        [
            "-m",
            "pipelines.cli",
            "generate",
            "--checkpoint",
            str(out / "checkpoint-3"),
            "--config",
            str(config),
            "--ref",
            str(photos[0]),
            "--prompt",
            "a photo of a person",
            "--out",
            str(gen),
            "--num-images",
            "1",
            "--steps",
            "2",
        ]
    )
    (png,) = sorted(gen.glob("*.png"))
    with Image.open(png) as im:
        assert im.size == (RESOLUTION, RESOLUTION) and im.mode == "RGB"
    assert len((gen / "prompts.jsonl").read_text().splitlines()) == 1
    rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    assert rss_gb < MAX_RSS_GB, f"a child peaked at {rss_gb:.1f} GB RSS"
