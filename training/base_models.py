"""The frozen models ConsistentID is trained on: SD1.5 from a local folder, or tiny random ones.

Weights are only read from local paths (never fetched). The tiny models are built from configs
with a fixed seed, so every process (and later the generator) rebuilds the same random weights.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fgid_builder.schema import REGION_NAMES, ModelFileError
from training.config import ModelConfig, TinyModelConfig


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


def load_pretrained_models(model: ModelConfig) -> BaseModels:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

    root = Path(model.pretrained_model or "")
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        _require(root / sub, f"Stable Diffusion '{sub}' folder")
    _require(Path(model.image_encoder or ""), "CLIP image encoder folder")
    kw: dict[str, Any] = {"local_files_only": True}
    return BaseModels(
        unet=UNet2DConditionModel.from_pretrained(root, subfolder="unet", **kw),
        vae=AutoencoderKL.from_pretrained(root, subfolder="vae", **kw),
        text_encoder=CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **kw),
        tokenizer=CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", **kw),
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(model.image_encoder, **kw),
        noise_scheduler=DDPMScheduler.from_pretrained(root, subfolder="scheduler", **kw),
    )


def load_base_models(model: ModelConfig) -> BaseModels:
    """Frozen base models with the facial marker added to the tokenizer."""
    base = (
        build_tiny_models(model.tiny, model.resolution)
        if model.tiny is not None
        else load_pretrained_models(model)
    )
    base.tokenizer.add_tokens([model.facial_token], special_tokens=True)
    for module in (base.unet, base.vae, base.text_encoder, base.image_encoder):
        module.requires_grad_(False)
        module.eval()
    return base
