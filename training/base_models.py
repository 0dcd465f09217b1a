"""The frozen models ConsistentID is trained on: SD1.5 from a local folder, or tiny random ones.

Weights are only read from local paths (never fetched). The tiny models are built from configs
with a fixed seed, so every process (and later the generator) rebuilds the same random weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from fgid_builder.schema import REGION_NAMES, ModelFileError
from training.config import ModelConfig, TinyModelConfig

log = logging.getLogger(__name__)


@dataclass
class BaseModels:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    image_encoder: Any
    noise_scheduler: Any

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def clip_image_size(self) -> int:
        return int(self.image_encoder.config.image_size)


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable-character table (the BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


_TINY_WORDS = REGION_NAMES + ("caption:", "detail:", "the", "a", "and", "with", "has", "person")


def write_tiny_clip_tokenizer(folder: Path) -> Path:
    """A real CLIPTokenizer vocabulary: the 512 byte symbols plus merges for the region words.

    No tokenizer can be downloaded here, so the tiny config writes a genuine (small) CLIP BPE
    vocabulary; every facial region word is a single token, as it is in the SD1.5 tokenizer.
    """
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    vocab: list[str] = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    seen = set(vocab)
    for word in _TINY_WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            merge = f"{parts[0]} {parts[1]}"
            if merge not in merges:
                merges.append(merge)
            if merged not in seen:
                vocab.append(merged)
                seen.add(merged)
            parts = [merged] + parts[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def build_tiny_models(tiny: TinyModelConfig, resolution: int) -> BaseModels:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(
            write_tiny_clip_tokenizer(Path(tmp)), model_max_length=77
        )
    dim = tiny.cross_attention_dim
    torch.manual_seed(tiny.seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=resolution,
    )
    unet = UNet2DConditionModel(
        sample_size=resolution // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=dim,
            intermediate_size=2 * dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=tiny.clip_image_size,
            patch_size=8,
            projection_dim=dim,
        )
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    calibrate_tiny_vae(vae, resolution, tiny.seed)
    return BaseModels(unet, vae, text_encoder, tokenizer, image_encoder, scheduler)


def calibrate_tiny_vae(vae: Any, resolution: int, seed: int) -> None:
    """Give the random VAE the two properties of SD's trained one the diffusion loss relies on.

    1. A near-deterministic posterior. A random `quant_conv` outputs log-variances around 0, so
       `latent_dist.sample()` adds unit-variance noise to means of std ~0.2: the "clean" latent
       of a photo would be mostly fresh noise at every step (SD's VAE has std ~1e-3 of its mean
       scale). The log-variance channels are set to a constant exp(-20).
    2. `scaling_factor` = 1 / std of the latents, as SD's 0.18215 was measured. With SD's value
       the random latents had std 0.04 after scaling: even at t=100 the noisy latent's SNR was
       0.01, so the target was the noise alone and the data (and the adapter) did not matter.
       The std is measured on seeded smooth random images; the random encoder's output scale
       barely depends on the input (faces 0.213, smooth 0.211, uniform noise 0.213).
    """
    import torch.nn.functional as F

    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[channels:] = 0.0
        vae.quant_conv.bias[channels:] = -20.0
        g = torch.Generator().manual_seed(seed)
        images = torch.rand(16, 3, 8, 8, generator=g) * 2 - 1
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear")
        std = float(vae.encode(images).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / std)


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise ModelFileError(
            f"{what} not found at {path}; put the weights there or fix the path in the config"
        )


def load_pretrained_models(model: ModelConfig, dtype: torch.dtype = torch.float32) -> BaseModels:
    """The frozen models from local folders: UNet, text and image encoders in `dtype` (loaded
    straight into it: a bf16 run never holds an fp32 copy), the VAE in fp32."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

    root = Path(model.pretrained_model or "")
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        _require(root / sub, f"Stable Diffusion '{sub}' folder")
    _require(Path(model.image_encoder or ""), "CLIP image encoder folder")
    kw: dict[str, Any] = {"local_files_only": True}
    return BaseModels(
        unet=UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=dtype, **kw),
        vae=AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=torch.float32, **kw),
        text_encoder=CLIPTextModel.from_pretrained(
            root, subfolder="text_encoder", torch_dtype=dtype, **kw
        ),
        tokenizer=CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", **kw),
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(
            model.image_encoder, torch_dtype=dtype, **kw
        ),
        noise_scheduler=DDPMScheduler.from_pretrained(root, subfolder="scheduler", **kw),
    )


# --- the tiny base, pre-trained like SD1.5 was: a generic denoiser trained on other data --------

# Non-face images shipped inside scikit-image (astronaut and camera show people: left out).
PRETRAIN_IMAGES = (
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
    "motorcycle_left.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "moon.png",
    "coins.png",
)
# Bump when the pre-training code below changes: it is part of the cache key.
PRETRAIN_RECIPE = 1
# Environment that changes CPU float results bit-wise (DVC pins them): part of the cache key.
_NUMERICS_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")


def pretrain_image_paths() -> list[Path]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    paths = [folder / name for name in PRETRAIN_IMAGES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ModelFileError(f"pre-training images of the tiny base missing: {missing}")
    return paths


def tiny_base_key(tiny: TinyModelConfig, resolution: int) -> dict[str, Any]:
    """Everything the pre-trained tiny base's bytes depend on."""
    import diffusers
    import numpy
    import PIL
    import transformers

    recipe = {k: v for k, v in asdict(tiny).items() if k != "pretrain_cache"}
    return {
        "recipe_version": PRETRAIN_RECIPE,
        "tiny": recipe,
        "resolution": resolution,
        "images": {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in pretrain_image_paths()
        },
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "numpy": numpy.__version__,
            "pillow": PIL.__version__,
        },
        "numerics": {
            "threads": torch.get_num_threads(),
            "mkldnn": bool(torch.backends.mkldnn.enabled),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            **{k: os.environ.get(k) for k in _NUMERICS_ENV},
        },
    }


def tiny_base_folder(tiny: TinyModelConfig, resolution: int) -> tuple[Path, dict[str, Any]]:
    key = tiny_base_key(tiny, resolution)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = tiny.pretrain_cache or os.environ.get("FGID_CACHE") or Path.home() / ".cache" / "fgid"
    return Path(root).expanduser() / f"tiny-base-{digest}", key


def pretrain_crops(count: int, resolution: int, seed: int) -> torch.Tensor:
    """`count` seeded random-resized crops (25-100% of the short side), flipped half the time."""
    import numpy as np
    from PIL import Image

    images = []
    for path in pretrain_image_paths():
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
    rng = np.random.default_rng(seed)
    out = torch.empty(count, 3, resolution, resolution)
    for i in range(count):
        im = images[int(rng.integers(len(images)))]
        w, h = im.size
        side = int(min(w, h) * rng.uniform(0.25, 1.0))
        x, y = int(rng.integers(w - side + 1)), int(rng.integers(h - side + 1))
        crop = im.crop((x, y, x + side, y + side)).resize((resolution, resolution), Image.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        arr = np.asarray(crop, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
        out[i] = torch.from_numpy(arr.copy())
    return out


def pretrain_tiny_unet(base: BaseModels, tiny: TinyModelConfig, resolution: int) -> list[float]:
    """Train the tiny UNet as an unconditional epsilon-denoiser on the generic crops (seeded).

    Returns the per-step losses. Only the UNet changes; VAE and text encoder stay as built.
    """
    import torch.nn.functional as F
    from diffusers.optimization import get_cosine_schedule_with_warmup

    g = torch.Generator().manual_seed(tiny.seed + 1)
    unet, vae, scheduler = base.unet, base.vae, base.noise_scheduler
    with torch.no_grad():
        pixels = pretrain_crops(tiny.pretrain_crops, resolution, tiny.seed)
        latents = (
            torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(64)])
            * vae.config.scaling_factor
        )
        ids = base.tokenizer(
            "",
            padding="max_length",
            max_length=base.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids
        context = base.text_encoder(ids)[0]
    unet.requires_grad_(True)
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=tiny.pretrain_lr, weight_decay=1e-2)
    lr_schedule = get_cosine_schedule_with_warmup(
        optimizer,
        num_warmup_steps=min(100, tiny.pretrain_steps // 10),
        num_training_steps=tiny.pretrain_steps,
    )
    bsz = tiny.pretrain_batch_size
    losses = []
    for _ in range(tiny.pretrain_steps):
        idx = torch.randint(0, latents.shape[0], (bsz,), generator=g)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (bsz,), generator=g)
        pred = unet(scheduler.add_noise(x0, noise, t), t, context.expand(bsz, -1, -1)).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        losses.append(float(loss.detach()))
    unet.requires_grad_(False)
    unet.eval()
    return losses


def ensure_tiny_base(tiny: TinyModelConfig, resolution: int) -> Path:
    """The pre-trained tiny base folder (SD1.5 layout + image_encoder/), built once, cached."""
    folder, key = tiny_base_folder(tiny, resolution)
    if (folder / "fgid_tiny_base.json").is_file():
        return folder
    log.info("pre-training the tiny base UNet (%d steps) into %s", tiny.pretrain_steps, folder)
    t0 = time.perf_counter()
    base = build_tiny_models(tiny, resolution)
    losses = pretrain_tiny_unet(base, tiny, resolution)
    seconds = time.perf_counter() - t0
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "image_encoder"):
            module = getattr(base, "noise_scheduler" if name == "scheduler" else name)
            module.save_pretrained(tmp / name)
        n = max(1, len(losses) // 10)
        meta = {
            "key": key,
            "seconds": round(seconds, 1),
            "loss_first": sum(losses[:n]) / n,
            "loss_last": sum(losses[-n:]) / n,
        }
        (tmp / "fgid_tiny_base.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like a model hub's
        try:
            os.rename(tmp, folder)  # atomic; another process may have won the race
        except OSError:
            if not (folder / "fgid_tiny_base.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "tiny base pre-trained in %.1f s (loss %.3f -> %.3f)",
        seconds,
        meta["loss_first"],
        meta["loss_last"],
    )
    return folder


def load_base_models(model: ModelConfig, dtype: torch.dtype = torch.float32) -> BaseModels:
    """Frozen base models with the facial marker added to the tokenizer.

    Folders are loaded with the UNet and CLIP encoders in `dtype` (the VAE in fp32); the tiny
    models are built in fp32 (the caller casts them).

    The global torch RNG is left untouched (the adapter's initialisation that follows must not
    depend on whether the tiny base came from the cache or was just pre-trained).
    """
    with torch.random.fork_rng(devices=[]):
        if model.tiny is None:
            base = load_pretrained_models(model, dtype)
        elif model.tiny.pretrain_steps > 0:
            folder = ensure_tiny_base(model.tiny, model.resolution)
            base = load_pretrained_models(
                replace(
                    model,
                    tiny=None,
                    pretrained_model=str(folder),
                    image_encoder=str(folder / "image_encoder"),
                ),
                dtype,
            )
        else:
            base = build_tiny_models(model.tiny, model.resolution)
    base.tokenizer.add_tokens([model.facial_token], special_tokens=True)
    for module in (base.unet, base.vae, base.text_encoder, base.image_encoder):
        module.requires_grad_(False)
        module.eval()
    return base


# --- real-size random folders: the published SD1.5 / CLIP architectures, random weights --------

SD15_ARCH = Path(__file__).resolve().parent / "arch" / "sd15"
# Bump when the code below changes what a folder holds: it is part of the cache key.
SD15_RANDOM_RECIPE = 1
SD15_COMPONENTS = ("unet", "vae", "text_encoder", "scheduler", "image_encoder")


def sd15_arch_files() -> dict[str, Path]:
    files = {
        "unet": SD15_ARCH / "unet" / "config.json",
        "vae": SD15_ARCH / "vae" / "config.json",
        "text_encoder": SD15_ARCH / "text_encoder" / "config.json",
        "scheduler": SD15_ARCH / "scheduler" / "scheduler_config.json",
        "image_encoder": SD15_ARCH / "image_encoder" / "config.json",
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise ModelFileError(f"published architecture configs missing: {missing}")
    return files


def sd15_random_folder(
    cache: str | Path | None = None, *, dtype: str = "float16", seed: int = 0
) -> tuple[Path, dict[str, Any]]:
    """Where the random real-size folder of these settings lives, and its cache key."""
    import diffusers
    import transformers

    if dtype not in ("float16", "bfloat16", "float32"):
        raise ValueError(f"dtype must be float16, bfloat16 or float32, not {dtype!r}")
    key = {
        "recipe_version": SD15_RANDOM_RECIPE,
        "dtype": dtype,
        "seed": seed,
        "arch": {
            name: hashlib.sha256(p.read_bytes()).hexdigest()
            for name, p in sd15_arch_files().items()
        },
        "tokenizer_words": list(_TINY_WORDS),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = cache or os.environ.get("FGID_CACHE") or Path.home() / ".cache" / "fgid"
    return Path(root).expanduser() / f"sd15-random-{digest}", key


def sd15_module_makers() -> dict[str, Any]:
    """name -> a function building that real-size module (random init) from its published
    config: unet, vae, text_encoder (CLIP ViT-L/14 text), image_encoder (CLIP ViT-H/14 vision
    tower + projection)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    files = sd15_arch_files()
    return {
        "unet": lambda: UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(files["unet"].parent)
        ),
        "vae": lambda: AutoencoderKL.from_config(AutoencoderKL.load_config(files["vae"].parent)),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig.from_json_file(files["text_encoder"])),
        "image_encoder": lambda: CLIPVisionModelWithProjection(
            CLIPVisionConfig.from_json_file(files["image_encoder"])
        ),
    }


def build_sd15_arch_models(device: str = "meta") -> BaseModels:
    """The real-size architectures from the published configs, without weights on `meta`
    (shape checks, parameter counts in no time and no memory), with the SD1.5 scheduler and the
    builder's tokenizer (facial marker not yet added)."""
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    makers = sd15_module_makers()
    with torch.device(device):
        modules = {name: make() for name, make in makers.items()}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(
            write_tiny_clip_tokenizer(Path(tmp)), model_max_length=77
        )
    scheduler = DDPMScheduler.from_config(
        DDPMScheduler.load_config(sd15_arch_files()["scheduler"].parent)
    )
    return BaseModels(
        modules["unet"],
        modules["vae"],
        modules["text_encoder"],
        tokenizer,
        modules["image_encoder"],
        scheduler,
    )


def _build_in_dtype(dtype: torch.dtype, make: Any) -> Any:
    """`make()` with parameters created (and randomly initialised) directly in `dtype`, so
    the real-size modules never exist in fp32 (the UNet alone would be 3.4 GB)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return make()
    finally:
        torch.set_default_dtype(old)


def ensure_sd15_random(
    cache: str | Path | None = None, *, dtype: str = "float16", seed: int = 0
) -> Path:
    """Random-weight folders of the real SD1.5 + CLIP ViT-H/14 architectures, built once, cached.

    Layout (what `training/configs/sd15.yaml` reads, relative to the folder):
    `stable-diffusion-v1-5/{unet,vae,text_encoder,tokenizer,scheduler}/` in diffusers layout and
    `image_encoder/` (CLIPVisionModelWithProjection), safetensors in `dtype`. One module is built
    at a time, in `dtype`, then written and freed (peak ~ the UNet's bytes in `dtype`).
    """
    import gc

    from diffusers import PNDMScheduler
    from transformers import CLIPTokenizer

    folder, key = sd15_random_folder(cache, dtype=dtype, seed=seed)
    done = folder / "fgid_sd15_random.json"
    if done.is_file():
        return folder
    files = sd15_arch_files()
    torch_dtype = getattr(torch, dtype)
    log.info("building random SD1.5 + CLIP ViT-H/14 folders (%s) into %s", dtype, folder)
    t0 = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    sd = tmp / "stable-diffusion-v1-5"
    counts: dict[str, int] = {}
    try:
        with torch.random.fork_rng(devices=[]):
            makers = sd15_module_makers()
            dests = {
                "unet": sd / "unet",
                "vae": sd / "vae",
                "text_encoder": sd / "text_encoder",
                "image_encoder": tmp / "image_encoder",
            }
            builders = [(name, dests[name], makers[name]) for name in dests]
            for i, (name, dest, make) in enumerate(builders):
                torch.manual_seed(seed + i)
                module = _build_in_dtype(torch_dtype, make)
                counts[name] = sum(p.numel() for p in module.parameters())
                module.save_pretrained(dest, safe_serialization=True)
                del module
                gc.collect()
        PNDMScheduler.from_config(
            PNDMScheduler.load_config(files["scheduler"].parent)
        ).save_pretrained(sd / "scheduler")
        tok_src = write_tiny_clip_tokenizer(tmp / ".tokenizer-src")
        CLIPTokenizer.from_pretrained(tok_src, model_max_length=77).save_pretrained(
            sd / "tokenizer"
        )
        shutil.rmtree(tok_src)
        (sd / "model_index.json").write_text(
            json.dumps(
                {
                    "_class_name": "StableDiffusionPipeline",
                    "scheduler": ["diffusers", "PNDMScheduler"],
                    "text_encoder": ["transformers", "CLIPTextModel"],
                    "tokenizer": ["transformers", "CLIPTokenizer"],
                    "unet": ["diffusers", "UNet2DConditionModel"],
                    "vae": ["diffusers", "AutoencoderKL"],
                },
                indent=2,
            )
        )
        meta = {"key": key, "parameters": counts, "seconds": round(time.perf_counter() - t0, 1)}
        (tmp / done.name).write_text(json.dumps(meta, indent=2, sort_keys=True))
        tmp.chmod(0o755)
        try:
            os.rename(tmp, folder)  # atomic; another process may have won the race
        except OSError:
            if not done.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("random SD1.5 folders built in %.1f s: %s", time.perf_counter() - t0, counts)
    return folder


def main(argv: list[str] | None = None) -> None:
    """`python -m training.base_models sd15-random [--cache DIR] [--dtype float16] [--link DIR]`"""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m training.base_models",
        description="Build (once, cached) random-weight folders of the real SD1.5 architectures.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "sd15-random",
        help="random SD1.5 UNet/VAE/CLIP-L text + CLIP-H vision folders from the published "
        "configs in training/arch/sd15 (no download); prints the folder",
    )
    p.add_argument("--cache", help="cache root (default $FGID_CACHE or ~/.cache/fgid)")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--link",
        help="also make DIR/stable-diffusion-v1-5 and DIR/image_encoder symlinks to it "
        "(DIR=models: sd15.yaml's paths)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    folder = ensure_sd15_random(args.cache, dtype=args.dtype, seed=args.seed)
    if args.link:
        link_root = Path(args.link)
        link_root.mkdir(parents=True, exist_ok=True)
        for name in ("stable-diffusion-v1-5", "image_encoder"):
            link = link_root / name
            if link.is_symlink():
                link.unlink()
            elif link.exists():
                raise SystemExit(f"error: {link} exists and is not a symlink; not replaced")
            link.symlink_to(folder / name, target_is_directory=True)
    print(folder)


if __name__ == "__main__":
    main()
