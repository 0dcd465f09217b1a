"""Training throughput on the tiny config (CPU): dataloader samples/s per worker, train samples/s.

    python benchmarks/train_throughput.py --shards 'DIR/*.tar' [--config training/configs/tiny.yaml]
        [--steps 30] [--workers 0 1 2]

Without --shards it builds shards from the face photos shipped inside installed packages with
the builder's in-process chain (dlib + landmark parser + dlib embedding + attribute captions).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def build_demo_shards(folder: Path) -> str:
    from fgid_builder.demo import demo_photos
    from fgid_builder.process import ImageProcessor
    from fgid_builder.shards import shard_stats, write_shard, write_stats

    processor = ImageProcessor.default()
    members = []
    for photo in demo_photos():
        members.extend(processor.process(photo.read_bytes(), photo.name).members)
    members.sort(key=lambda m: m["__key__"])
    for n in range(4):
        tar = write_shard(folder / f"{n:06d}.tar", members[n::4])
        stats = shard_stats(n, tar=tar, images=len(members[n::4]), reject_reasons=[])
        write_stats(folder / f"{n:06d}.json", stats)
    return str(folder / "*.tar")


def dataloader_rate(config, base, urls: list[str], workers: int, batches: int) -> float:
    from training.data import SampleTransform, make_dataloader

    transform = SampleTransform(
        tokenizer=base.tokenizer,
        resolution=config.model.resolution,
        latent_size=config.model.resolution // base.vae_scale_factor,
        clip_size=base.clip_image_size,
    )
    loader = make_dataloader(
        urls,
        transform,
        batch_size=config.data.batch_size,
        num_workers=workers,
        shuffle_buffer=config.data.shuffle_buffer,
    )
    it = iter(loader)
    next(it)  # start-up (worker spawn) excluded
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(it)["key"])
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="training/configs/tiny.yaml")
    parser.add_argument("--shards")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    from training.base_models import load_base_models
    from training.data import expand_shards
    from training.train import Trainer, config_with_overrides

    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or build_demo_shards(Path(tmp))
        config = config_with_overrides(
            args.config, shards=shards, output_dir=str(Path(tmp) / "run"), max_steps=args.steps
        )
        config.train.report_to = None
        config.train.checkpointing_steps = args.steps + 1
        urls = expand_shards(shards)
        base = load_base_models(config.model)
        for w in args.workers:
            rate = dataloader_rate(config, base, urls, w, batches=20)
            print(
                f"dataloader workers={w}: {rate:.1f} samples/s ({rate / max(w, 1):.1f} per worker)",
                flush=True,
            )
        trainer = Trainer(config)
        trainer.setup()
        rows = trainer.train()
        warm = rows[5:] or rows
        total_s = sum(config.data.batch_size / r["samples_per_s"] for r in warm)
        print(
            f"train ({config.model.resolution}px, batch {config.data.batch_size}, "
            f"{trainer.num_trainable} trainable params): "
            f"{len(warm) * config.data.batch_size / total_s:.1f} samples/s over {len(warm)} steps"
        )


if __name__ == "__main__":
    main()
