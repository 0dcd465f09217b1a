"""Train ConsistentID on FGID shards with accelerate.

    python -m training.train --config training/configs/tiny.yaml --shards 'shards/*.tar' \
        --output-dir runs/tiny --max-steps 100 [--resume latest]
    accelerate launch --num_processes 8 -m training.train --config training/configs/sd15.yaml ...

A checkpoint `checkpoint-{step}/` holds the adapter (safetensors), the optimizer, scheduler and
grad-scaler state, each rank's noise RNG and the data position, so a resumed run continues with
exactly the batches and noise an uninterrupted run would have used.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from training.config import Config, load_config
from training.state_io import has_state, load_state, save_state

log = logging.getLogger("training.train")

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"


def find_checkpoint(output_dir: Path, resume: str) -> Path | None:
    """`latest` -> the newest complete checkpoint in output_dir (None if there is none)."""
    if resume != "latest":
        path = Path(resume)
        if not (path / TRAINER_STATE).is_file():
            raise FileNotFoundError(f"{path} is not a checkpoint (no {TRAINER_STATE})")
        return path
    done = [
        p
        for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if (p / TRAINER_STATE).is_file() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return max(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]), default=None)


class Trainer:
    """setup() builds models, data and optimizer; train() runs; save_checkpoint() persists."""

    def __init__(self, config: Config, *, resume: str | None = None):
        self.config = config
        self.resume = resume
        self.output_dir = Path(config.train.output_dir)
        self.global_step = 0

    # --- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration
        from diffusers.optimization import get_scheduler

        from training.base_models import load_base_models
        from training.data import (
            SampleTransform,
            expand_shards,
            make_dataloader,
            peek_sample,
            sample_filter,
        )
        from training.model import build_model

        cfg = self.config
        run = cfg.train
        # On a CPU-only host, several processes (torchrun / `accelerate launch --multi_gpu`) are
        # gloo ranks; accelerate only forms them when told it is on CPU.
        self.accelerator = acc = Accelerator(
            cpu=not torch.cuda.is_available(),
            gradient_accumulation_steps=run.gradient_accumulation_steps,
            mixed_precision=run.mixed_precision,
            log_with=run.report_to,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")
            ),
        )
        logging.basicConfig(
            level=logging.INFO if acc.is_main_process else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        if run.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        torch.manual_seed(run.seed)  # identical adapter init on every rank
        self.urls = expand_shards(cfg.data.shards)
        first = peek_sample(self.urls, verify=cfg.data.verify)
        id_dim = cfg.model.id_dim or int(first.id_embed.shape[0])
        # The builder models of the data (embedder above all), so generation can use the same.
        self.data_models = first.meta.get("models") or {}

        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            run.mixed_precision, torch.float32
        )
        base = load_base_models(cfg.model, dtype=self.weight_dtype)
        for module in (base.unet, base.text_encoder, base.image_encoder):
            module.to(acc.device, dtype=self.weight_dtype)
        base.vae.to(acc.device, dtype=torch.float32)
        self.base = base
        model = build_model(base, cfg.model, id_dim).to(acc.device)
        for p in model.trainable_parameters():
            p.data = p.data.float()
        self.clip_cache = None
        if run.clip_feature_cache:
            from training.feature_cache import ClipFeatureCache
            from training.model import CLIP_LAYER

            self.clip_cache = ClipFeatureCache(
                run.clip_feature_cache, base.image_encoder, layer=CLIP_LAYER
            )
            model.clip_cache = self.clip_cache
            log.info("CLIP image features cached in %s", self.clip_cache.root)
        params = model.trainable_parameters()
        self.num_trainable = sum(p.numel() for p in params)
        optimizer = torch.optim.AdamW(
            params,
            lr=cfg.optim.lr,
            betas=cfg.optim.betas,
            eps=cfg.optim.eps,
            weight_decay=cfg.optim.weight_decay,
            fused=cfg.optim.fused,
        )
        # Stepped once per optimizer step by us (not through accelerate, which would step it
        # once per process).
        self.lr_scheduler = get_scheduler(
            cfg.optim.scheduler,
            optimizer=optimizer,
            num_warmup_steps=cfg.optim.warmup_steps,
            num_training_steps=run.max_steps,
        )
        self.noise_rng = torch.Generator().manual_seed(run.seed * 1000 + 17 + acc.process_index)

        checkpoint = None
        if self.resume:
            checkpoint = find_checkpoint(self.output_dir, self.resume)
            if checkpoint is None:
                log.info("no checkpoint in %s; starting from step 0", self.output_dir)
        if checkpoint is not None:
            self._load_checkpoint(checkpoint, model, optimizer)

        self.model, self.optimizer = acc.prepare(model, optimizer)
        if checkpoint is not None and acc.scaler is not None:
            if has_state(checkpoint, "scaler"):
                acc.scaler.load_state_dict(load_state(checkpoint, "scaler"))

        transform = SampleTransform(
            tokenizer=base.tokenizer,
            resolution=cfg.model.resolution,
            latent_size=cfg.model.resolution // base.vae_scale_factor,
            clip_size=base.clip_image_size,
            facial_token=cfg.model.facial_token,
            max_regions=cfg.model.max_regions,
            caption_drop=cfg.data.caption_drop,
            image_drop=cfg.data.image_drop,
            both_drop=cfg.data.both_drop,
            min_region_pixels=cfg.data.min_region_pixels,
            seed=cfg.data.seed,
        )
        self.dataloader = make_dataloader(
            self.urls,
            transform,
            batch_size=cfg.data.batch_size,
            num_workers=cfg.data.num_workers,
            rank=acc.process_index,
            world_size=acc.num_processes,
            seed=cfg.data.seed,
            shuffle_buffer=cfg.data.shuffle_buffer,
            strict=cfg.data.strict,
            start_batch=self.global_step * run.gradient_accumulation_steps,
            verify=cfg.data.verify,
            id_norm_tolerance=cfg.data.id_norm_tolerance,
            sample_filter=sample_filter(
                self.urls, split=cfg.data.split, splits=cfg.data.splits, exclude=cfg.data.exclude
            ),
        )
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.json").write_text(
                json.dumps(cfg.to_dict(), indent=2, sort_keys=True)
            )
            if run.report_to:
                acc.init_trackers("consistentid")
        log.info(
            "%d shard(s), id dim %d, %d trainable parameters, %d process(es), start step %d",
            len(self.urls),
            id_dim,
            self.num_trainable,
            acc.num_processes,
            self.global_step,
        )

    def _load_checkpoint(self, path: Path, model: Any, optimizer: torch.optim.Optimizer) -> None:
        from safetensors.torch import load_file

        state = json.loads((path / TRAINER_STATE).read_text())
        model.load_adapter(path)
        optimizer.load_state_dict(load_state(path, "optimizer"))
        self.lr_scheduler.load_state_dict(load_state(path, "scheduler"))
        rank = self.accelerator.process_index
        rng_file = path / f"rng_{rank}.safetensors"
        if rng_file.is_file():
            self.noise_rng.set_state(load_file(str(rng_file))["noise"])
        else:
            log.warning("%s missing (different number of processes?); noise RNG reseeded", rng_file)
        self.global_step = int(state["step"])
        log.info("resumed from %s at step %d", path, self.global_step)

    # --- one step ----------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        from training.losses import facial_localization_loss, noise_prediction_loss

        dev, dtype = self.accelerator.device, self.weight_dtype
        vae, scheduler, g = self.base.vae, self.base.noise_scheduler, self.noise_rng
        with torch.no_grad():
            pixels = batch["pixel_values"].to(dev, torch.float32)
            latents = vae.encode(pixels).latent_dist.sample(generator=g)
            latents = latents * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=g).to(dev)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=g
        ).to(dev)
        use_mask = bool(torch.rand((), generator=g) < self.config.loss.foreground_mask_prob)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        pred, maps = self.model(
            noisy.to(dtype),
            timesteps,
            batch["input_ids"].to(dev),
            batch["region_pixels"].to(dev, dtype),
            batch["facial_positions"].to(dev),
            batch["facial_valid"].to(dev),
            batch["id_embed"].to(dev, torch.float32),
            batch["clip_image"].to(dev, dtype),
        )
        fg = batch["foreground_mask"].to(dev) if use_mask else None
        predict_loss = noise_prediction_loss(pred, target, fg)
        facial_loss = facial_localization_loss(
            maps, batch["region_masks"].to(dev), batch["facial_valid"].to(dev)
        )
        loss = predict_loss + self.config.loss.facial_weight * facial_loss
        return {"loss": loss, "predict_loss": predict_loss, "facial_loss": facial_loss}

    # --- loop --------------------------------------------------------------------------------
    def train(self) -> list[dict[str, Any]]:
        from tqdm.auto import tqdm

        acc, run = self.accelerator, self.config.train
        self.model.train()
        batches: Iterator[dict[str, Any]] = iter(self.dataloader)
        progress = tqdm(
            total=run.max_steps,
            initial=self.global_step,
            desc="train",
            disable=not acc.is_local_main_process,
        )
        metrics_file = self.output_dir / "metrics.jsonl"
        if acc.is_main_process:
            self._truncate_metrics(metrics_file)
        history: list[dict[str, Any]] = []
        sums = {"loss": 0.0, "predict_loss": 0.0, "facial_loss": 0.0}
        samples, micro, t0 = 0, 0, time.perf_counter()
        stats: dict[str, int] = {}
        cache_seen = self._cache_counts()
        while self.global_step < run.max_steps:
            batch = next(batches)
            stats = batch.get("stats", stats)
            if run.record_rank_outputs:
                self._record_keys(batch["key"])
            with acc.accumulate(self.model):
                parts = self.compute_loss(batch)
                acc.backward(parts["loss"])
                if acc.sync_gradients and self.config.optim.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.model.parameters(), self.config.optim.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            for k in sums:
                sums[k] += float(parts[k].detach())
            samples += len(batch["key"])
            micro += 1
            if not acc.sync_gradients:
                continue
            self.lr_scheduler.step()
            self.global_step += 1
            progress.update(1)
            local = torch.tensor([sums[k] / micro for k in sums] + [samples], device=acc.device)
            total = acc.reduce(local, reduction="sum")
            elapsed = time.perf_counter() - t0
            row = {
                "step": self.global_step,
                **{k: float(total[i]) / acc.num_processes for i, k in enumerate(sums)},
                "lr": self.lr_scheduler.get_last_lr()[0],
                "samples_per_s": float(total[-1]) / max(elapsed, 1e-9),
                "epoch": int(batch.get("epoch", 0)),
                "corrupt_samples": int(stats.get("corrupt_samples", 0)),
                "corrupt_shards": int(stats.get("corrupt_shards", 0)),
                "unverified_shards": int(stats.get("unverified_shards", 0)),
            }
            counts = self._cache_counts()
            row["clip_cache_hits"] = counts[0] - cache_seen[0]  # this rank's, this step
            row["clip_cache_misses"] = counts[1] - cache_seen[1]
            cache_seen = counts
            history.append(row)
            if acc.is_main_process:
                with metrics_file.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                if run.report_to:
                    acc.log({k: v for k, v in row.items() if k != "step"}, step=self.global_step)
                if self.global_step % run.log_every == 0:
                    progress.set_postfix(
                        loss=f"{row['loss']:.4f}", sps=f"{row['samples_per_s']:.1f}"
                    )
            if not math.isfinite(row["loss"]):
                raise FloatingPointError(f"loss is {row['loss']} at step {self.global_step}")
            sums = dict.fromkeys(sums, 0.0)
            samples, micro, t0 = 0, 0, time.perf_counter()
            if self.global_step % run.checkpointing_steps == 0 or self.global_step == run.max_steps:
                self.save_checkpoint()
        progress.close()
        if self.clip_cache is not None:
            log.info(
                "CLIP feature cache: %d hit(s), %d miss(es) on this rank",
                self.clip_cache.hits,
                self.clip_cache.misses,
            )
        self._finish()
        return history

    def _cache_counts(self) -> tuple[int, int]:
        cache = self.clip_cache
        return (cache.hits, cache.misses) if cache is not None else (0, 0)

    def _truncate_metrics(self, path: Path) -> None:
        """Drop the rows of steps after the one this run starts from (a run that went on past
        its last checkpoint, or an earlier run in the same folder), so that after a resume
        metrics.jsonl holds exactly one row per step."""
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                step = int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line of a killed run
            if step <= self.global_step:
                kept.append(line)
        if len(kept) == len(lines):
            return
        log.info(
            "metrics.jsonl: %d row(s) past step %d dropped",
            len(lines) - len(kept),
            self.global_step,
        )
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)

    def _record_keys(self, keys: list[str]) -> None:
        folder = self.output_dir / "rank_outputs"
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"keys_rank{self.accelerator.process_index}.txt").open("a") as f:
            f.write("".join(k + "\n" for k in keys))

    def _finish(self) -> None:
        from safetensors.torch import save_file

        acc = self.accelerator
        acc.wait_for_everyone()
        model = acc.unwrap_model(self.model)
        if self.config.train.record_rank_outputs:
            folder = self.output_dir / "rank_outputs"
            folder.mkdir(parents=True, exist_ok=True)
            save_file(
                model.adapter_state_dict(),
                str(folder / f"adapter_rank{acc.process_index}.safetensors"),
            )
        if acc.is_main_process:
            model.save_adapter(self.output_dir / "adapter", extra=self._adapter_meta())
        acc.wait_for_everyone()
        acc.end_training()

    # --- checkpoints -------------------------------------------------------------------------
    def _adapter_meta(self) -> dict[str, Any]:
        return {"step": self.global_step, "data_models": self.data_models}

    def save_checkpoint(self) -> Path:
        from safetensors.torch import save_file

        acc, run = self.accelerator, self.config.train
        final = self.output_dir / f"{CHECKPOINT_PREFIX}{self.global_step}"
        tmp = self.output_dir / f".{final.name}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        save_file(
            {"noise": self.noise_rng.get_state()}, str(tmp / f"rng_{acc.process_index}.safetensors")
        )
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            model.save_adapter(tmp, extra=self._adapter_meta())
            save_state(self.optimizer.state_dict(), tmp, "optimizer")
            save_state(self.lr_scheduler.state_dict(), tmp, "scheduler")
            if acc.scaler is not None:
                save_state(acc.scaler.state_dict(), tmp, "scaler")
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {
                "step": self.global_step,
                "batches_per_rank": self.global_step * run.gradient_accumulation_steps,
                "num_processes": acc.num_processes,
                "id_dim": acc.unwrap_model(self.model).id_dim,
            }
            (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            self._prune_checkpoints()
            log.info("saved %s", final)
        acc.wait_for_everyone()
        return final

    def _prune_checkpoints(self) -> None:
        limit = self.config.train.checkpoints_total_limit
        if limit is None:
            return
        found = sorted(
            (
                p
                for p in self.output_dir.glob(f"{CHECKPOINT_PREFIX}*")
                if p.name[len(CHECKPOINT_PREFIX) :].isdigit()
            ),
            key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]),
        )
        for old in found[: max(0, len(found) - limit)]:
            shutil.rmtree(old, ignore_errors=True)
            log.info("removed %s (checkpoints_total_limit=%d)", old, limit)


def config_with_overrides(
    config: str | Path,
    *,
    shards: str | None = None,
    output_dir: str | None = None,
    max_steps: int | None = None,
    split: str | None = None,
    exclude: list[str] | None = None,
) -> Config:
    overrides: dict[str, Any] = {}
    if split:
        overrides["data.split"] = split
    if exclude:
        overrides["data.exclude"] = list(exclude)
    if shards:
        overrides["data.shards"] = shards
    if output_dir:
        overrides["train.output_dir"] = output_dir
    if max_steps is not None:
        overrides["train.max_steps"] = max_steps
    return load_config(config, overrides)


def run_training(config: Config, *, resume: str | None = None) -> list[dict[str, Any]]:
    trainer = Trainer(config, resume=resume)
    trainer.setup()
    return trainer.train()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", required=True, help="YAML config (training/configs/*.yaml)")
    parser.add_argument("--shards", help="shard glob or brace pattern; overrides data.shards")
    parser.add_argument("--output-dir", help="overrides train.output_dir")
    parser.add_argument("--max-steps", type=int, help="overrides train.max_steps")
    parser.add_argument("--resume", help="'latest' or a checkpoint folder")
    parser.add_argument("--split", help="train on one split of OUT/splits.parquet (fgid split)")
    parser.add_argument(
        "--exclude", action="append", default=[], help="opt-out list to skip (repeatable)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    import sys

    from training.data import expand_shards

    args = build_parser().parse_args(argv)
    try:
        config = config_with_overrides(
            args.config,
            shards=args.shards,
            output_dir=args.output_dir,
            max_steps=args.max_steps,
            split=args.split,
            exclude=args.exclude,
        )
        expand_shards(config.data.shards)  # a refused URL or no shard: a usage error, exit 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    run_training(config, resume=args.resume)


if __name__ == "__main__":
    main()
