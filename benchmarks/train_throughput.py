"""Training throughput on CPU: the tiny config, or sd15.yaml at the real size.

    python benchmarks/train_throughput.py --shards 'DIR/*.tar' [--config training/configs/tiny.yaml]
        [--steps 30] [--workers 0 1 2]
    python benchmarks/train_throughput.py --real-size [--resolutions 64 128] [--threads 2]
        [--rounds 3] [--batch 1]

The tiny run prints dataloader samples/s per worker and train samples/s. `--real-size` builds (once,
cached) random-weight folders of SD1.5 + CLIP ViT-H/14 from the published configs and prints, per
resolution, side by side in one run on the same batch (interleaved, medians): the plain frozen
UNet's step vs the adapter's whole trainer step with its CLIP feature cache warm
(train.clip_feature_cache: the frozen CLIP ViT-H/14 features read, not recomputed), the same
while the cache fills (first epoch) and amortised over --epochs, the stream's samples/s vs what
the step consumes, and the activation bytes autograd saves (with and without gradient
checkpointing) for the README's memory plan.

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


# --- the real size (SD1.5 + CLIP ViT-H/14, random weights from the published configs) ---------


def _median(xs: list[float]) -> float:
    import statistics

    return statistics.median(xs)


def real_size_config(
    shards: str,
    out: str,
    resolution: int,
    batch: int,
    checkpointing: bool,
    yaml_path: str,
    clip_cache: str | None = None,
):
    import yaml

    from training.base_models import ensure_sd15_random
    from training.config import config_from_dict

    values = yaml.safe_load(Path(yaml_path).read_text())
    if not values["model"].get("tiny"):  # (a tiny YAML only checks this script's plumbing)
        folder = ensure_sd15_random()
        values["model"].update(
            pretrained_model=str(folder / "stable-diffusion-v1-5"),
            image_encoder=str(folder / "image_encoder"),
        )
    values["model"].update(resolution=resolution, gradient_checkpointing=checkpointing)
    values["data"].update(shards=shards, batch_size=batch, num_workers=0, shuffle_buffer=8)
    values["train"].update(
        output_dir=out,
        mixed_precision="no",
        report_to=None,
        max_steps=1000,
        checkpointing_steps=10**6,
        clip_feature_cache=clip_cache,
    )
    return config_from_dict(values)


def plain_step(trainer, batch) -> float:
    """The frozen SD1.5 UNet's step without the adapter: VAE encode, text encoder, UNet forward
    on the plain text context, MSE, backward to the context (the graph any adapter's step
    back-propagates through; the UNet's weights themselves get no gradient)."""
    import torch
    import torch.nn.functional as F

    base = trainer.base
    t0 = time.perf_counter()
    with torch.no_grad():
        latents = base.vae.encode(batch["pixel_values"]).latent_dist.sample()
        latents = latents * base.vae.config.scaling_factor
        context = base.text_encoder(batch["input_ids"])[0]
    context.requires_grad_(True)
    noise = torch.randn_like(latents)
    t = torch.randint(0, 1000, (latents.shape[0],))
    noisy = base.noise_scheduler.add_noise(latents, noise, t)
    processors = base.unet.attn_processors
    base.unet.set_attn_processor(PLAIN_PROCESSORS[0])
    try:
        pred = base.unet(noisy, t, encoder_hidden_states=context).sample
        F.mse_loss(pred, noise).backward()
    finally:
        base.unet.set_attn_processor(processors)
    return time.perf_counter() - t0


PLAIN_PROCESSORS: list = []


def adapter_step(trainer, batch) -> float:
    """One optimisation step of the trainer: the adapter's full step (ID tokens from the ID
    network + CLIP features, facial tokens, decoupled cross-attention, LoRA, localization loss),
    backward, AdamW."""
    t0 = time.perf_counter()
    parts = trainer.compute_loss(batch)
    trainer.accelerator.backward(parts["loss"])
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def activation_bytes(trainer, batch) -> int:
    """Bytes autograd saves for backward in one adapter step (unique storages, parameters
    excluded): the activation memory of training."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in trainer.model.parameters()}
    params |= {p.untyped_storage().data_ptr() for p in trainer.base.vae.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            s = t.untyped_storage()
            ptr = s.data_ptr()
            if ptr not in params:
                seen[ptr] = max(seen.get(ptr, 0), s.nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        parts = trainer.compute_loss(batch)
    parts["loss"].backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return sum(seen.values())


def resized_batch(batch: dict, res: int) -> dict:
    """The batch at another training resolution (images bilinear, masks by area); the CLIP
    inputs (224 px) do not depend on it. The models are resolution-independent."""
    import torch.nn.functional as F

    out = dict(batch)
    out["pixel_values"] = F.interpolate(batch["pixel_values"], size=(res, res), mode="bilinear")
    lat = res // 8
    out["region_masks"] = F.interpolate(batch["region_masks"], size=(lat, lat), mode="area")
    out["foreground_mask"] = F.interpolate(batch["foreground_mask"], size=(lat, lat), mode="area")
    return out


def real_size(args) -> None:

    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    from training.train import Trainer

    torch.set_num_threads(args.threads)
    PLAIN_PROCESSORS.append(AttnProcessor2_0())
    print(
        f"real size on CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s), fp32 "
        f"(no GPU lent; this CPU has no bf16 matmul units), batch {args.batch}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or build_demo_shards(Path(tmp))
        top = max(args.resolutions)
        cfg = real_size_config(
            shards,
            str(Path(tmp) / "run"),
            top,
            args.batch,
            False,
            args.real_size_config,
            clip_cache=str(Path(tmp) / "clip-features"),
        )
        trainer = Trainer(cfg)
        trainer.setup()
        trainer.model.train()
        print(f"trainable parameters: {trainer.num_trainable}", flush=True)
        it = iter(trainer.dataloader)
        full = next(it)
        # the stream: the trainer's own transform, in this process (worker 0)
        t0, n = time.perf_counter(), 0
        for _ in range(args.stream_batches):
            n += len(next(it)["key"])
        stream = n / (time.perf_counter() - t0)
        # The first adapter step computes the frozen CLIP ViT-H/14 features (whole image +
        # region crops; the cache times its encoder forwards) and writes the trainer's feature
        # cache (train.clip_feature_cache), which every later step reads. The CLIP inputs
        # (224 px) are the same at every training size, so all sizes read the cache.
        cache = trainer.clip_cache
        full_step = adapter_step(trainer, full)
        c = cache.compute_seconds
        assert cache.misses > 0 and cache.hits == 0, cache.stats()
        rows_for_fit: list[tuple[int, int, int]] = []
        for res in sorted(args.resolutions):
            batch = resized_batch(full, res)
            plain_step(trainer, batch)  # warm-up of both
            adapter_step(trainer, batch)
            plain, adapted = [], []
            for _ in range(args.rounds):  # interleaved, same batch
                plain.append(plain_step(trainer, batch))
                adapted.append(adapter_step(trainer, batch))
            act = {"plain": None, "checkpointing": None}
            for gc_on in (False, True) if args.activations_too else ():
                if gc_on:
                    trainer.base.unet.enable_gradient_checkpointing()
                act["checkpointing" if gc_on else "plain"] = activation_bytes(trainer, batch)
            trainer.base.unet.disable_gradient_checkpointing()
            report_row(args, trainer, res, plain, adapted, c, stream, act, full_step, top)
            if args.activations_too:
                rows_for_fit.append((res, act["plain"], act["checkpointing"]))
        misses = cache.misses
        adapter_step(trainer, full)
        assert cache.misses == misses, "a timed step recomputed CLIP features"
        print(f'{{"clip_feature_cache": {cache.hits} hits, {cache.misses} misses}}', flush=True)
        fit_activations(rows_for_fit)


def report_row(args, trainer, res, plain, adapted, c, stream, act, full_step, top) -> None:
    """One resolution's figures: a JSON line and a sentence."""
    import json

    import torch

    p, a = _median(plain), _median(adapted)
    first = a + c  # a step whose CLIP features are not cached yet (first epoch)
    e = args.epochs
    amortized = a + c / e  # the CLIP forwards once per sample over `epochs` epochs
    consumed = args.batch / a  # the stream has to keep up with the cached step
    row = {
        "resolution": res,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "max_regions": trainer.config.model.max_regions,
        "trainable_params": trainer.num_trainable,
        "plain_unet_step_s": round(p, 3),
        "adapter_step_s": round(a, 3),
        "adapter_overhead": round(a / p - 1, 3),
        "clip_vit_h_per_step_s": round(c, 3),
        "adapter_step_first_epoch_s": round(first, 3),
        "adapter_overhead_first_epoch": round(first / p - 1, 3),
        "epochs": e,
        "adapter_overhead_over_epochs": round(amortized / p - 1, 3),
        "stream_samples_per_s": round(stream, 2),
        "step_consumes_samples_per_s": round(consumed, 3),
        "stream_over_step": round(stream / consumed, 2),
        "activation_bytes": act["plain"],
        "activation_bytes_checkpointing": act["checkpointing"],
    }
    if res == top:
        row["adapter_step_measured_first_epoch_s"] = round(full_step, 3)
    print(json.dumps(row), flush=True)
    print(
        f"{res}px, {torch.get_num_threads()} thread(s): plain UNet step {p:.2f} s; adapter step "
        f"{a:.2f} s with the CLIP features from the cache ({100 * (a / p - 1):+.1f}%); "
        f"{first:.2f} s while the cache fills (the {1 + trainer.config.model.max_regions} CLIP "
        f"ViT-H/14 forwards per sample, {c:.2f} s, in the step: {100 * (first / p - 1):+.0f}%), "
        f"{100 * (amortized / p - 1):+.1f}% over {e} epochs; stream {stream:.2f} samples/s vs "
        f"{consumed:.3f} consumed = {stream / consumed:.1f}x"
        + (
            f"; activations {act['plain'] / 2**20:.0f} MiB ({act['checkpointing'] / 2**20:.0f} "
            "MiB with gradient checkpointing)"
            if act["plain"] is not None
            else ""
        ),
        flush=True,
    )


def optimizer_state_bytes(shapes: list[tuple[int, ...]], eight_bit: bool) -> int | None:
    """Bytes of the optimizer state after one step over fp32 parameters of these shapes
    (torch AdamW, or bitsandbytes' AdamW8bit when importable; None when it is not)."""
    import torch

    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    if eight_bit:
        try:
            import bitsandbytes as bnb
        except ImportError:
            return None
        opt = bnb.optim.AdamW8bit(params, lr=1e-4, weight_decay=1e-2)
    else:
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    total = 0
    for state in opt.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
    return total


def fit_activations(rows: list[tuple[int, int, int]]) -> None:
    """Least-squares bytes = a + b * pixels over the measured resolutions, extrapolated to
    512 px (fp32 as measured; bf16 autocast saves most activations in half the bytes)."""
    import json

    import numpy as np

    if len(rows) < 2:
        return
    px = np.array([r[0] ** 2 for r in rows], dtype=np.float64)
    out = {}
    for i, name in ((1, "plain"), (2, "checkpointing")):
        y = np.array([r[i] for r in rows], dtype=np.float64)
        b, a = np.polyfit(px, y, 1)
        worst = max(abs(a + b * x - v) / v for x, v in zip(px, y, strict=True))
        out[name] = {
            "intercept_bytes": int(a),
            "bytes_per_pixel": round(float(b), 2),
            "fit_max_rel_error": round(float(worst), 4),
            "at_512_fp32_bytes": int(a + b * 512**2),
            "at_512_bf16_bytes_est": int((a + b * 512**2) / 2),
        }
    print(json.dumps({"activation_fit_per_sample": out}), flush=True)
    gib = 2**30
    print(
        "activations per 512 px sample, extrapolated: "
        + ", ".join(
            f"{k} {v['at_512_fp32_bytes'] / gib:.2f} GiB fp32 (~{v['at_512_bf16_bytes_est'] / gib:.2f} bf16)"
            for k, v in out.items()
        ),
        flush=True,
    )


def memory_plan(args) -> None:
    """Parameter counts by module and dtype (exact, meta device), optimizer-state bytes
    measured on tensors of the adapter's shapes, and the 512 px bf16 plan per GPU size from
    the activation bytes given with --activations (the --real-size run's fit)."""
    import json

    import torch

    from training.base_models import build_sd15_arch_models
    from training.config import load_config
    from training.model import build_model

    cfg = load_config("training/configs/sd15.yaml")
    base = build_sd15_arch_models("meta")
    base.tokenizer.add_tokens([cfg.model.facial_token], special_tokens=True)
    frozen = {
        name: sum(p.numel() for p in getattr(base, name).parameters())
        for name in ("unet", "vae", "text_encoder", "image_encoder")
    }
    with torch.device("meta"):
        model = build_model(base, cfg.model, args.id_dim)
    trainable = model.trainable_parameters()
    parts = {
        "id_net": sum(p.numel() for p in model.id_net.parameters()),
        "facial_encoder": sum(p.numel() for p in model.facial_encoder.parameters()),
        "lora": sum(p.numel() for n, p in model.processors.named_parameters() if "lora_" in n),
        "ip_kv": sum(p.numel() for n, p in model.processors.named_parameters() if "_ip" in n),
    }
    n_train = sum(p.numel() for p in trainable)
    shapes = [tuple(p.shape) for p in trainable]
    adamw = optimizer_state_bytes(shapes, eight_bit=False)
    adamw8 = optimizer_state_bytes(shapes, eight_bit=True)
    # bf16 run (sd15.yaml): UNet + both CLIP towers bf16, VAE fp32 (the trainer keeps it so),
    # the adapter's master weights and gradients fp32.
    frozen_bytes = 2 * (frozen["unet"] + frozen["text_encoder"] + frozen["image_encoder"])
    frozen_bytes += 4 * frozen["vae"]
    row = {
        "id_dim": args.id_dim,
        "frozen_params": frozen,
        "trainable_params": n_train,
        "trainable_by_part": parts,
        "frozen_bytes_bf16": frozen_bytes,
        "trainable_weight_bytes_fp32": 4 * n_train,
        "gradient_bytes_fp32": 4 * n_train,
        "adamw_state_bytes": adamw,
        "adamw8bit_state_bytes": adamw8,
    }
    print(json.dumps(row), flush=True)
    gib = 2**30
    print(
        f"frozen {sum(frozen.values()) / 1e6:.1f}M params = {frozen_bytes / gib:.2f} GiB in bf16 "
        f"(VAE fp32); trainable {n_train / 1e6:.1f}M = weights {4 * n_train / gib:.2f} + grads "
        f"{4 * n_train / gib:.2f} + AdamW {adamw / gib:.2f} GiB"
        + (f" (AdamW8bit {adamw8 / gib:.2f} GiB)" if adamw8 is not None else " (no bitsandbytes)")
    )
    if args.activations:
        fixed = frozen_bytes + 8 * n_train
        for name, act in (
            ("no checkpointing", args.activations[0]),
            ("checkpointing", args.activations[1]),
        ):
            for batch in (1, 2, 4, 8):
                need = {
                    "AdamW": fixed + adamw + batch * act,
                    "AdamW8bit": fixed + (adamw8 or adamw) + batch * act,
                }
                print(
                    f"512px bf16 batch {batch}, {name}: "
                    + ", ".join(f"{k} {v / gib:.1f} GiB" for k, v in need.items())
                )


# --- FLOPs of the two steps at any size, counted on the meta device (no compute) ---------------


def step_flops(args) -> None:
    """FLOPs (torch's FlopCounterMode: matmuls, convolutions, attention) of the plain frozen
    UNet step and of the adapter's step, forward + backward, for sd15.yaml's real architectures
    on the meta device: the 512 px ratio that no CPU here can time."""
    import json

    import torch
    import torch.nn.functional as F
    from diffusers.models.attention_processor import AttnProcessor2_0
    from torch.utils.flop_counter import FlopCounterMode

    from training.base_models import build_sd15_arch_models
    from training.config import load_config
    from training.losses import facial_localization_loss, noise_prediction_loss
    from training.model import build_model

    cfg = load_config("training/configs/sd15.yaml")
    base = build_sd15_arch_models("meta")
    base.tokenizer.add_tokens([cfg.model.facial_token], special_tokens=True)
    with torch.device("meta"):
        model = build_model(base, cfg.model, args.id_dim)
    model.train()
    r, clip = cfg.model.max_regions, base.clip_image_size
    for res in args.flops_resolutions:
        b, lat = args.batch, res // 8
        with torch.device("meta"):
            pixels = torch.randn(b, 3, res, res)
            ids = torch.zeros(b, 77, dtype=torch.long)
            noise = torch.randn(b, 4, lat, lat)
            t = torch.tensor([500] * b)

            def plain(pixels=pixels, ids=ids, noise=noise, t=t) -> None:
                with torch.no_grad():
                    base.vae.encode(pixels)
                    context = base.text_encoder(ids)[0]
                context.requires_grad_(True)
                procs = base.unet.attn_processors
                base.unet.set_attn_processor(AttnProcessor2_0())
                try:
                    pred = base.unet(noise, t, encoder_hidden_states=context).sample
                    F.mse_loss(pred, noise).backward()
                finally:
                    base.unet.set_attn_processor(procs)

            def adapter(pixels=pixels, ids=ids, noise=noise, t=t, b=b, lat=lat) -> None:
                with torch.no_grad():
                    base.vae.encode(pixels)
                pred, maps = model(
                    noise,
                    t,
                    ids,
                    torch.randn(b, r, 3, clip, clip),
                    torch.tensor([[3, 5, 7, 9, 11][:r]] * b),
                    torch.ones(b, r, dtype=torch.bool),
                    torch.randn(b, args.id_dim),
                    torch.randn(b, 3, clip, clip),
                )
                masks = torch.rand(b, r, lat, lat)
                loss = noise_prediction_loss(pred, noise) + 0.01 * facial_localization_loss(
                    maps, masks, torch.ones(b, r, dtype=torch.bool)
                )
                loss.backward()

            def clip_only(b=b) -> None:
                with torch.no_grad():
                    base.image_encoder(torch.randn(b * (1 + r), 3, clip, clip))

            counts = {}
            for name, fn in (("plain", plain), ("adapter", adapter), ("clip", clip_only)):
                with FlopCounterMode(display=False) as fc:
                    fn()
                counts[name] = fc.get_total_flops()
        row = {
            "resolution": res,
            "batch": b,
            "plain_tflop": round(counts["plain"] / 1e12, 3),
            "adapter_tflop": round(counts["adapter"] / 1e12, 3),
            "clip_vit_h_tflop": round(counts["clip"] / 1e12, 3),
            "adapter_overhead_flops": round(counts["adapter"] / counts["plain"] - 1, 3),
            "adapter_overhead_flops_clip_cached": round(
                (counts["adapter"] - counts["clip"]) / counts["plain"] - 1, 3
            ),
        }
        print(json.dumps(row), flush=True)
        print(
            f"{res}px batch {b}: plain UNet step {row['plain_tflop']} TFLOP, adapter step "
            f"{row['adapter_tflop']} TFLOP ({100 * row['adapter_overhead_flops']:+.1f}%; of it "
            f"CLIP ViT-H/14 {row['clip_vit_h_tflop']} TFLOP; "
            f"{100 * row['adapter_overhead_flops_clip_cached']:+.1f}% with the CLIP features "
            "cached)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="training/configs/tiny.yaml")
    parser.add_argument("--shards")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--real-size",
        action="store_true",
        help="sd15.yaml on random-weight folders of the real architectures (CPU): plain frozen "
        "UNet step vs the adapter's step, stream vs step, activation bytes",
    )
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--real-size-config", default="training/configs/sd15.yaml")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stream-batches", type=int, default=8)
    parser.add_argument(
        "--no-activations",
        dest="activations_too",
        action="store_false",
        help="--real-size: skip the activation-bytes measurement (two more steps per size)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=15,
        help="epochs the CLIP feature cache is amortised over (sd15.yaml: ~15 over FGID)",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="sd15.yaml's parameter/gradient/optimizer bytes (meta device, bitsandbytes' AdamW8bit "
        "when importable) and the 512 px bf16 plan",
    )
    parser.add_argument("--id-dim", type=int, default=512, help="512: insightface ArcFace")
    parser.add_argument(
        "--activations",
        type=float,
        nargs=2,
        metavar=("PLAIN", "CHECKPOINTING"),
        help="bytes of activations per 512 px sample in bf16 (from the --real-size fit)",
    )
    parser.add_argument(
        "--flops",
        action="store_true",
        help="FLOPs of the plain UNet step vs the adapter's step (meta device, any size)",
    )
    parser.add_argument("--flops-resolutions", type=int, nargs="+", default=[128, 512])
    args = parser.parse_args()
    if args.flops:
        step_flops(args)
        return
    if args.memory:
        memory_plan(args)
        return
    if args.real_size:
        real_size(args)
        return

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
