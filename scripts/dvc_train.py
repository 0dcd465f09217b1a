"""The DVC `train` stage: `fgid train` made bit-reproducible, keeping only what is deterministic.

Training runs in a scratch folder with the CPU numerics pinned (one thread, MKL's compatible code
path, ATen's portable kernels, no oneDNN), so the adapter bytes depend on the shards, the config
and the library versions, not on the machine's core count or vector unit. Then only the final
adapter and the loss curve (without the wall-clock columns) are kept; TensorBoard event files,
throughput figures and intermediate checkpoints are timing-dependent and left out.

    python scripts/dvc_train.py --config training/configs/tiny.yaml \
        --shards 'data/dataset/shards/*.tar' --max-steps 20 --out data/train \
        --metrics metrics/train.json --plot plots/train_loss.json
"""

from __future__ import annotations

import os

# Must be set before torch (and its BLAS/OpenMP) is imported.
_PINNED_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_CBWR": "COMPATIBLE",
    "ATEN_CPU_CAPABILITY": "default",
    "CUDA_VISIBLE_DEVICES": "",
    "PYTHONHASHSEED": "0",
}
for _k, _v in _PINNED_ENV.items():
    os.environ[_k] = _v

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

# This checkout's code first (not an installed copy), so DVC runs what its deps hash.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Per-step figures that depend on wall-clock time, not on the data and the weights.
TIMING_KEYS = ("samples_per_s",)


def pin_torch() -> None:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.enabled = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Reproducible `fgid train` for DVC.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--out", required=True, type=Path, help="folder for the adapter")
    parser.add_argument("--metrics", required=True, type=Path, help="final-loss JSON")
    parser.add_argument("--plot", required=True, type=Path, help="loss-per-step JSON")
    args = parser.parse_args(argv)

    pin_torch()
    from training.train import config_with_overrides, run_training

    with tempfile.TemporaryDirectory(prefix="fgid-train-") as scratch:
        run_dir = Path(scratch) / "run"
        config = config_with_overrides(
            args.config, shards=args.shards, output_dir=str(run_dir), max_steps=args.max_steps
        )
        history = run_training(config)
        if args.out.exists():
            shutil.rmtree(args.out)
        args.out.mkdir(parents=True)
        shutil.copytree(run_dir / "adapter", args.out / "adapter")
        shutil.copyfile(args.config, args.out / "config.yaml")

    curve = [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    args.plot.write_text(json.dumps(curve, indent=1, sort_keys=True) + "\n")
    first = curve[: max(1, len(curve) // 5)]
    last = curve[-max(1, len(curve) // 5) :]
    summary = {
        "steps": len(curve),
        "loss_first": sum(r["loss"] for r in first) / len(first),
        "loss_last": sum(r["loss"] for r in last) / len(last),
        "final": {k: curve[-1][k] for k in ("loss", "predict_loss", "facial_loss", "lr")},
    }
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
