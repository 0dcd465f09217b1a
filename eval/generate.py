"""ConsistentID inference: a trained adapter + a reference photo + a prompt -> portraits.

The reference photo goes through the builder's own stages (decode -> detect -> align -> parse ->
embed), so at inference the identity embedding, the whole-image CLIP input and the facial region
crops are made exactly as the training shards were. The prompt is built by training's prompt
builder ("Caption: <prompt> Detail: ... eyes <|facial|> ..."). Denoising follows the paper:
the plain text embedding of that prompt for the first `start_merge_step` fraction of the steps,
then the facial-token-fused embedding; the identity tokens are used throughout; classifier-free
guidance against an empty prompt with a zero identity (the training drop). Output: one PNG per
image and `prompts.jsonl` (`{"file", "prompt"}`), the layout `fgid eval` reads.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

# The region sentences of the facial prompt, as ConsistentID's inference fills them in
# ("The person has one nose, two ears, two eyes, and a mouth").
REGION_SENTENCES = {
    "face": "a face",
    "ears": "two ears",
    "eyes": "two eyes",
    "nose": "one nose",
    "mouth": "a mouth",
}


@dataclass
class GenerateConfig:
    checkpoint: str  # a `checkpoint-{step}` folder, the run's output dir, or its `adapter/`
    config: str  # the training YAML the adapter was trained with
    ref: str  # reference photo
    prompt: str
    out: str
    num_images: int = 4
    seed: int = 0
    steps: int = 30
    guidance: float = 5.0
    height: int | None = None  # default: the config's resolution
    width: int | None = None
    start_merge_step: float = 0.5  # fraction of steps run on the plain text prompt
    negative_prompt: str = ""
    detector: str = "dlib"
    parser: str = "landmarks"
    embedder: str = "dlib"
    models_dir: str | None = None

    def validate(self) -> None:
        if self.num_images < 1 or self.steps < 1:
            raise ValueError("num_images and steps must be >= 1")
        if not 0.0 <= self.start_merge_step <= 1.0:
            raise ValueError("start_merge_step is a fraction of the steps, in [0, 1]")
        for side in (self.height, self.width):
            if side is not None and (side < 8 or side % 8):
                raise ValueError("height and width must be multiples of 8")


def adapter_folder(path: str | Path) -> Path:
    """The folder holding adapter.safetensors: given directly, or the run's final `adapter/`."""
    from training.model import ADAPTER_WEIGHTS

    path = Path(path)
    for folder in (path, path / "adapter"):
        if (folder / ADAPTER_WEIGHTS).is_file():
            return folder
    raise FileNotFoundError(
        f"no {ADAPTER_WEIGHTS} in {path} or {path / 'adapter'}; pass a checkpoint-{{step}} folder "
        "or a training output dir"
    )


@dataclass
class Reference:
    """What the adapter reads from the reference photo."""

    portrait: Image.Image  # aligned 512 portrait
    mask: np.ndarray
    embedding: np.ndarray
    regions: dict[str, Any]
    models: dict[str, Any]


def process_reference(
    photo: str | Path,
    *,
    detector: str = "dlib",
    parser: str = "landmarks",
    embedder: str = "dlib",
    models_dir: str | None = None,
) -> Reference:
    """decode -> detect -> align -> parse -> embed with the builder's backends; largest face."""
    from fgid_builder.faces import faces_from_detections
    from fgid_builder.io import decode_image
    from fgid_builder.process import embed_samples, parse_samples
    from fgid_builder.registry import create
    from fgid_builder.schema import sha256_bytes

    data = Path(photo).read_bytes()
    decoded = decode_image(data)
    det = create("detect", detector, models_dir=models_dir)
    detections = det.detect([decoded.rgb])[0]
    source = {"uri": str(photo), "sha256": sha256_bytes(data)}
    samples, rejects = faces_from_detections(decoded, detections, source=source)
    if not samples:
        reasons = ", ".join(f"{r[1]}: {r[2]}" for r in rejects) or "no face detected"
        raise ValueError(f"{photo}: no usable face ({reasons})")
    sample = max(samples, key=lambda s: float(s.face.get("area_ratio", 0.0)))
    sample.models["detect"] = det.model_info().to_json()
    parse_samples(create("parse", parser, models_dir=models_dir), [sample])
    embed_samples(create("embed", embedder, models_dir=models_dir), [sample])
    return Reference(
        portrait=Image.fromarray(sample.portrait),
        mask=sample.mask,
        embedding=np.asarray(sample.embedding, dtype=np.float32),
        regions=sample.regions,
        models=sample.models,
    )


class ConsistentIDGenerator:
    """Base models + adapter, loaded once; `generate()` per reference and prompt."""

    def __init__(self, checkpoint: str | Path, config_path: str | Path):
        from training.base_models import load_base_models
        from training.config import load_config
        from training.model import ADAPTER_CONFIG, build_model

        self.cfg = load_config(config_path)
        folder = adapter_folder(checkpoint)
        self.meta = json.loads((folder / ADAPTER_CONFIG).read_text())
        self.base = load_base_models(self.cfg.model)
        self.model = build_model(self.base, self.cfg.model, int(self.meta["id_dim"]))
        self.model.load_adapter(folder)
        self.model.eval()
        log.info("adapter from %s (step %s)", folder, self.meta.get("step"))

    def _inputs(self, ref: Reference, prompt: str) -> dict[str, Any]:
        """The training transform applied to the reference, with the user's prompt as caption."""
        from training.data import DecodedSample, SampleTransform

        base, m = self.base, self.cfg.model
        transform = SampleTransform(
            tokenizer=base.tokenizer,
            resolution=m.resolution,
            latent_size=m.resolution // base.vae_scale_factor,
            clip_size=base.clip_image_size,
            facial_token=m.facial_token,
            max_regions=m.max_regions,
            caption_drop=0.0,
            image_drop=0.0,
            both_drop=0.0,
        )
        meta = {
            "regions": ref.regions,
            "captions": {"global": prompt, "regions": dict(REGION_SENTENCES)},
        }
        sample = DecodedSample("reference", ref.portrait, ref.mask, ref.embedding, meta)
        return transform(sample)

    def _text_ids(self, text: str) -> torch.Tensor:
        tok = self.base.tokenizer
        return tok(
            text,
            padding="max_length",
            truncation=True,
            max_length=tok.model_max_length,
            return_tensors="pt",
        ).input_ids

    @torch.no_grad()
    def generate(
        self,
        ref: Reference,
        prompt: str,
        *,
        num_images: int = 1,
        seed: int = 0,
        steps: int = 30,
        guidance: float = 5.0,
        height: int | None = None,
        width: int | None = None,
        start_merge_step: float = 0.5,
        negative_prompt: str = "",
    ) -> tuple[list[Image.Image], str]:
        from diffusers import DDIMScheduler

        base, model = self.base, self.model
        if ref.embedding.shape[0] != model.id_dim:
            raise ValueError(
                f"the reference embedding has {ref.embedding.shape[0]} dims, the adapter was "
                f"trained on {model.id_dim}: use the embed backend of the training shards"
            )
        height = height or self.cfg.model.resolution
        width = width or self.cfg.model.resolution
        x = self._inputs(ref, prompt)
        n = num_images

        def rep(t: torch.Tensor) -> torch.Tensor:
            return t.unsqueeze(0).expand(n, *t.shape).contiguous()

        # Conditional: fused facial prompt (late steps), plain text (early steps), identity.
        fused = model.encode_prompt(
            rep(x["input_ids"]),
            rep(x["region_pixels"]),
            rep(x["facial_positions"]),
            rep(x["facial_valid"]),
        )
        plain = base.text_encoder(rep(x["input_ids"]))[0]
        id_tokens = model.identity_tokens(rep(x["id_embed"]), rep(x["clip_image"]))
        # Unconditional: the training's "both" drop (empty caption, zero identity and image).
        negative = base.text_encoder(self._text_ids(negative_prompt).expand(n, -1))[0]
        neg_id = model.identity_tokens(
            torch.zeros_like(rep(x["id_embed"])), torch.zeros_like(rep(x["clip_image"]))
        )
        uncond = torch.cat([negative, neg_id], dim=1)
        early = torch.cat([torch.cat([plain, id_tokens], dim=1), uncond])
        late = torch.cat([torch.cat([fused, id_tokens], dim=1), uncond])

        scheduler = DDIMScheduler.from_config(base.noise_scheduler.config)
        scheduler.set_timesteps(steps)
        factor = base.vae_scale_factor
        shape = (base.unet.config.in_channels, height // factor, width // factor)
        noise = [
            torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)
        ]
        latents = torch.stack(noise) * scheduler.init_noise_sigma
        merge_at = int(round(start_merge_step * steps))
        for i, t in enumerate(scheduler.timesteps):
            context = early if i < merge_at else late
            inp = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            noise = base.unet(inp, t, encoder_hidden_states=context).sample
            cond, unc = noise.chunk(2)
            latents = scheduler.step(unc + guidance * (cond - unc), t, latents).prev_sample
        images = base.vae.decode(latents / base.vae.config.scaling_factor).sample
        arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        pil = [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in arr]
        return pil, x["prompt"]


def run_generate(cfg: GenerateConfig) -> list[Path]:
    """Generate `num_images` PNGs into `out` and append their prompts to `prompts.jsonl`."""
    cfg.validate()
    generator = ConsistentIDGenerator(cfg.checkpoint, cfg.config)
    ref = process_reference(
        cfg.ref,
        detector=cfg.detector,
        parser=cfg.parser,
        embedder=cfg.embedder,
        models_dir=cfg.models_dir,
    )
    trained_on = (generator.meta.get("data_models") or {}).get("embed", {}).get("name")
    used = ref.models.get("embed", {}).get("name")
    if trained_on and used and trained_on != used:
        raise ValueError(
            f"the adapter was trained on {trained_on} embeddings, the reference used {used}: "
            "pick the matching --embedder"
        )
    images, full_prompt = generator.generate(
        ref,
        cfg.prompt,
        num_images=cfg.num_images,
        seed=cfg.seed,
        steps=cfg.steps,
        guidance=cfg.guidance,
        height=cfg.height,
        width=cfg.width,
        start_merge_step=cfg.start_merge_step,
        negative_prompt=cfg.negative_prompt,
    )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    index = out / "prompts.jsonl"
    rows = {}
    if index.is_file():  # earlier runs into the same folder keep their rows
        for line in index.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["file"]] = row
    paths = []
    for i, image in enumerate(images):
        path = out / f"seed{cfg.seed + i:06d}.png"
        image.save(path, format="PNG")
        paths.append(path)
        rows[path.name] = {"file": path.name, "prompt": cfg.prompt}
    index.write_text("".join(json.dumps(r) + "\n" for r in rows.values()), encoding="utf-8")
    log.info("wrote %d image(s) to %s (facial prompt: %s)", len(paths), out, full_prompt)
    return paths
