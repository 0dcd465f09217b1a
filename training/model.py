"""ConsistentID: the multimodal facial prompt generator and the ID-preservation network.

- ID-preservation network (IP-Adapter FaceID-Plus style): identity embedding -> MLP -> N tokens ->
  perceiver resampler that also reads CLIP image features. The tokens go after the text tokens
  into a decoupled image cross-attention branch at every cross-attention layer.
- LoRA on every UNet attention projection (q, k, v, out).
- Facial prompt generator: each region crop -> CLIP features -> small perceiver -> one token,
  fused with the text embedding of the region word at the marked position.
- Facial localization: in the chosen cross-attention layers the probabilities of the facial
  tokens are computed explicitly (softmax over the text keys), while the attention output itself
  still goes through fused SDPA.

Only the adapter (ID network, facial encoder, attention processors) is trainable and saved.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.config import ModelConfig

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# The CLIP image features both resamplers read: the penultimate hidden state (IP-Adapter Plus).
CLIP_LAYER = -2


class PerceiverAttention(nn.Module):
    def __init__(self, *, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = dim_head * heads
        self.norm_x = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm_x(x), self.norm_latents(latents)
        b = x.shape[0]
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.view(b, -1, self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, -1, self.heads * self.dim_head))


class Resampler(nn.Module):
    """Perceiver resampler: query tokens read a sequence of image features."""

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        dim_head: int,
        heads: int,
        embedding_dim: int,
        ff_mult: int = 4,
    ):
        super().__init__()
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.layers = nn.ModuleList()
        for _ in range(depth):
            ff = nn.Sequential(
                nn.LayerNorm(dim),
                nn.Linear(dim, dim * ff_mult, bias=False),
                nn.GELU(),
                nn.Linear(dim * ff_mult, dim, bias=False),
            )
            self.layers.append(
                nn.ModuleList([PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads), ff])
            )
        self.proj_out = nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, latents: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(features)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class IDPreservationNetwork(nn.Module):
    """Identity embedding -> N identity tokens refined by CLIP features of the whole image."""

    def __init__(
        self,
        *,
        id_dim: int,
        clip_dim: int,
        cross_dim: int,
        num_tokens: int,
        depth: int,
        heads: int,
        dim_head: int,
    ):
        super().__init__()
        self.num_tokens, self.cross_dim = num_tokens, cross_dim
        self.proj = nn.Sequential(
            nn.Linear(id_dim, id_dim * 2), nn.GELU(), nn.Linear(id_dim * 2, cross_dim * num_tokens)
        )
        self.norm = nn.LayerNorm(cross_dim)
        self.perceiver = Resampler(
            dim=cross_dim, depth=depth, dim_head=dim_head, heads=heads, embedding_dim=clip_dim
        )

    def forward(self, id_embed: torch.Tensor, clip_features: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.proj(id_embed).view(-1, self.num_tokens, self.cross_dim))
        return x + self.perceiver(x, clip_features)  # shortcut, as in FaceID-Plus


class FacialEncoder(nn.Module):
    """Region crop features -> one token per region, fused into the region word's embedding."""

    def __init__(self, *, clip_dim: int, text_dim: int, depth: int, heads: int, dim_head: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, text_dim) * text_dim**-0.5)
        self.resampler = Resampler(
            dim=text_dim, depth=depth, dim_head=dim_head, heads=heads, embedding_dim=clip_dim
        )
        self.fuse = nn.Sequential(
            nn.Linear(2 * text_dim, text_dim), nn.GELU(), nn.Linear(text_dim, text_dim)
        )
        self.norm = nn.LayerNorm(text_dim)

    def forward(
        self,
        region_features: torch.Tensor,  # (B, R, S, clip_dim)
        text_embeds: torch.Tensor,  # (B, L, D)
        positions: torch.Tensor,  # (B, R) long
        valid: torch.Tensor,  # (B, R) bool
    ) -> torch.Tensor:
        b, r = positions.shape
        d = text_embeds.shape[-1]
        feats = region_features.flatten(0, 1)
        tokens = self.resampler(self.query.expand(feats.shape[0], -1, -1), feats).view(b, r, d)
        index = positions.unsqueeze(-1).expand(-1, -1, d)
        words = torch.gather(text_embeds, 1, index)
        fused = self.norm(words + self.fuse(torch.cat([words, tokens.to(words.dtype)], dim=-1)))
        # Invalid regions still pass through the graph (multiplied by 0) so DDP sees every
        # trainable parameter used in every step.
        delta = (fused - words) * valid.unsqueeze(-1).to(words.dtype)
        return text_embeds.scatter_add(1, index, delta)


class LoRALinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        nn.init.normal_(self.down.weight, std=1.0 / rank)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x.to(self.down.weight.dtype))).to(x.dtype)


class AttentionStore:
    """Shared between the processors and the model for one forward pass."""

    def __init__(self) -> None:
        self.positions: torch.Tensor | None = None  # (B, R) facial token positions
        self.maps: dict[str, torch.Tensor] = {}  # layer -> (B, HW, R) head-mean probabilities

    def reset(self, positions: torch.Tensor | None) -> None:
        self.positions = positions
        self.maps = {}


class ConsistentIDAttnProcessor(nn.Module):
    """LoRA attention; in cross-attention also the decoupled identity branch and facial maps."""

    def __init__(
        self,
        *,
        name: str,
        hidden_size: int,
        cross_dim: int | None,
        rank: int,
        num_id_tokens: int,
        store: AttentionStore,
        record: bool = False,
    ):
        super().__init__()
        self.name = name
        self.is_cross = cross_dim is not None
        self.num_id_tokens = num_id_tokens
        self.store = store
        self.record = record
        self.ip_scale = 1.0
        kv_in = cross_dim if cross_dim is not None else hidden_size
        self.lora_q = LoRALinear(hidden_size, hidden_size, rank)
        self.lora_k = LoRALinear(kv_in, hidden_size, rank)
        self.lora_v = LoRALinear(kv_in, hidden_size, rank)
        self.lora_out = LoRALinear(hidden_size, hidden_size, rank)
        if self.is_cross:
            self.to_k_ip = nn.Linear(kv_in, hidden_size, bias=False)
            self.to_v_ip = nn.Linear(kv_in, hidden_size, bias=False)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        b = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        ip_states = None
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        else:
            if self.is_cross and self.num_id_tokens:
                split = encoder_hidden_states.shape[1] - self.num_id_tokens
                encoder_hidden_states, ip_states = (
                    encoder_hidden_states[:, :split],
                    encoder_hidden_states[:, split:],
                )
            if attn.norm_cross:
                encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(
                attention_mask, encoder_hidden_states.shape[1], b
            ).view(b, attn.heads, -1, encoder_hidden_states.shape[1])

        query = attn.to_q(hidden_states) + self.lora_q(hidden_states)
        key = attn.to_k(encoder_hidden_states) + self.lora_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states) + self.lora_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, attn.heads, head_dim).transpose(1, 2)

        query, key, value = heads(query), heads(key), heads(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)

        if self.record and self.is_cross and self.store.positions is not None:
            self.store.maps[self.name] = facial_attention_probs(
                query, key, self.store.positions, attn.scale
            )

        if ip_states is not None:
            ip_key = heads(self.to_k_ip(ip_states.to(self.to_k_ip.weight.dtype)).to(query.dtype))
            ip_value = heads(self.to_v_ip(ip_states.to(self.to_v_ip.weight.dtype)).to(query.dtype))
            out = out + self.ip_scale * F.scaled_dot_product_attention(query, ip_key, ip_value)

        out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out) + self.lora_out(out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def facial_attention_probs(
    query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor, scale: float
) -> torch.Tensor:
    """Cross-attention probabilities of the facial tokens only: (B, HW, R), mean over heads.

    softmax_j(q.k_j)[p] = exp(q.k_p - logsumexp_j q.k_j); the normaliser needs every text key,
    the numerator only the facial ones. Computed in fp32 beside the fused attention call.
    """
    q, k = query.float(), key.float()
    logits = torch.einsum("bhnd,bhld->bhnl", q, k) * scale
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    idx = positions[:, None, None, :].expand(-1, logits.shape[1], logits.shape[2], -1)
    facial = torch.gather(logits, -1, idx)
    return torch.exp(facial - lse).mean(dim=1)


def cross_attention_layers(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """UNet attention modules in forward order: down blocks, mid block, up blocks."""
    from diffusers.models.attention_processor import Attention

    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    found = [(n, m) for n, m in unet.named_modules() if isinstance(m, Attention)]

    def sort_key(item: tuple[str, nn.Module]) -> tuple[Any, ...]:
        parts = item[0].split(".")
        return (order.get(parts[0], 3), *[int(p) if p.isdigit() else p for p in parts[1:]])

    return sorted(found, key=sort_key)


def localization_layer_names(unet: nn.Module, count: int) -> list[str]:
    """The `count` middle cross-attention layers (SD1.5: down 2.1, mid, up 1.0-1.2)."""
    cross = [n for n, m in cross_attention_layers(unet) if m.is_cross_attention]
    count = min(count, len(cross))
    start = (len(cross) - count) // 2
    return cross[start : start + count]


class ConsistentIDModel(nn.Module):
    """Frozen SD components plus the trainable adapter; one forward = one denoising prediction."""

    def __init__(
        self,
        *,
        unet: nn.Module,
        text_encoder: nn.Module,
        image_encoder: nn.Module,
        config: ModelConfig,
        id_dim: int,
    ):
        super().__init__()
        self.unet, self.text_encoder, self.image_encoder = unet, text_encoder, image_encoder
        self.config = config
        self.id_dim = id_dim
        # A training.feature_cache.ClipFeatureCache over image_encoder, or None (computed).
        self.clip_cache: Any = None
        cross_dim = unet.config.cross_attention_dim
        text_dim = text_encoder.config.hidden_size
        clip_dim = image_encoder.config.hidden_size
        self.id_net = IDPreservationNetwork(
            id_dim=id_dim,
            clip_dim=clip_dim,
            cross_dim=cross_dim,
            num_tokens=config.num_id_tokens,
            depth=config.id_resampler_depth,
            heads=config.id_resampler_heads,
            dim_head=config.id_resampler_dim_head,
        )
        self.facial_encoder = FacialEncoder(
            clip_dim=clip_dim,
            text_dim=text_dim,
            depth=config.facial_resampler_depth,
            heads=config.facial_resampler_heads,
            dim_head=config.facial_resampler_dim_head,
        )
        self.store = AttentionStore()
        self.localization_layers = localization_layer_names(unet, config.localization_layers)
        processors: dict[str, ConsistentIDAttnProcessor] = {}
        for name, attn in cross_attention_layers(unet):
            proc = ConsistentIDAttnProcessor(
                name=name,
                hidden_size=attn.to_q.out_features,
                cross_dim=attn.to_k.in_features if attn.is_cross_attention else None,
                rank=config.lora_rank,
                num_id_tokens=config.num_id_tokens,
                store=self.store,
                record=name in self.localization_layers,
            )
            if proc.is_cross:  # IP-Adapter: the identity branch starts as a copy of k/v
                with torch.no_grad():
                    proc.to_k_ip.weight.copy_(attn.to_k.weight)
                    proc.to_v_ip.weight.copy_(attn.to_v.weight)
            processors[name] = proc
        self.processors = nn.ModuleDict({n.replace(".", "__"): p for n, p in processors.items()})
        for name, attn in cross_attention_layers(unet):
            attn.set_processor(processors[name])

    # --- the adapter -------------------------------------------------------------------------
    def adapter_modules(self) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {
            "id_net": self.id_net,
            "facial_encoder": self.facial_encoder,
            "processors": self.processors,
        }
        if self.config.train_unet:
            modules["unet"] = self.unet
        return modules

    @staticmethod
    def _own(prefix: str, key: str) -> bool:
        # The attention processors are registered inside the UNet too; they belong to
        # `processors.` only, so the UNet's part holds just its base weights.
        return prefix != "unet" or ".processor." not in key

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.{k}": v.detach().float().cpu().contiguous()
            for prefix, module in self.adapter_modules().items()
            for k, v in module.state_dict().items()
            if self._own(prefix, k)
        }

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for prefix, module in self.adapter_modules().items():
            sub = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
            if prefix == "unet":
                own = {k for k in module.state_dict() if self._own(prefix, k)}
                if set(sub) != own:
                    missing, extra = sorted(own - set(sub))[:3], sorted(set(sub) - own)[:3]
                    raise KeyError(f"adapter's UNet weights: missing {missing}, unexpected {extra}")
                module.load_state_dict(sub, strict=False)
            else:
                module.load_state_dict(sub, strict=True)
        if not self.config.train_unet and any(k.startswith("unet.") for k in state):
            raise KeyError("the adapter carries trained UNet weights: set model.train_unet: true")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [
            p
            for prefix, m in self.adapter_modules().items()
            for k, p in m.named_parameters()
            if self._own(prefix, k)
        ]

    def save_adapter(self, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
        from dataclasses import asdict

        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.adapter_state_dict(), str(folder / ADAPTER_WEIGHTS))
        meta = {"id_dim": self.id_dim, "model": asdict(self.config), **(extra or {})}
        (folder / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return folder / ADAPTER_WEIGHTS

    def load_adapter(self, folder: str | Path) -> None:
        from safetensors.torch import load_file

        self.load_adapter_state_dict(load_file(str(Path(folder) / ADAPTER_WEIGHTS)))

    # --- forward -----------------------------------------------------------------------------
    def encode_prompt(
        self,
        input_ids: torch.Tensor,
        region_pixels: torch.Tensor,
        positions: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        with torch.no_grad():
            text = self.text_encoder(input_ids)[0]
        b, r = region_pixels.shape[:2]
        feats = self.clip_features(region_pixels.flatten(0, 1))
        feats = feats.view(b, r, *feats.shape[1:])
        return self.facial_encoder(feats, text, positions, valid)

    def identity_tokens(self, id_embed: torch.Tensor, clip_image: torch.Tensor) -> torch.Tensor:
        return self.id_net(id_embed, self.clip_features(clip_image))

    def clip_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The frozen CLIP image encoder's penultimate hidden state (B, S, D), from the feature
        cache when one is set (`train.clip_feature_cache`)."""
        pixels = pixels.to(next(self.image_encoder.parameters()).dtype)
        if self.clip_cache is not None:
            return self.clip_cache(pixels)
        with torch.no_grad():
            return self.image_encoder(pixels, output_hidden_states=True).hidden_states[CLIP_LAYER]

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        input_ids: torch.Tensor,
        region_pixels: torch.Tensor,
        facial_positions: torch.Tensor,
        facial_valid: torch.Tensor,
        id_embed: torch.Tensor,
        clip_image: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        prompt = self.encode_prompt(input_ids, region_pixels, facial_positions, facial_valid)
        id_tokens = self.identity_tokens(id_embed, clip_image)
        context = torch.cat([prompt, id_tokens.to(prompt.dtype)], dim=1)
        self.store.reset(facial_positions)
        pred = self.unet(noisy_latents, timesteps, encoder_hidden_states=context).sample
        maps = dict(self.store.maps)
        # The positions stay until the next forward: with gradient checkpointing the backward
        # pass re-runs the attention processors, which must record (compute) the same maps.
        self.store.maps = {}
        return pred, maps


def build_model(base: Any, config: ModelConfig, id_dim: int) -> ConsistentIDModel:
    model = ConsistentIDModel(
        unet=base.unet,
        text_encoder=base.text_encoder,
        image_encoder=base.image_encoder,
        config=config,
        id_dim=id_dim,
    )
    if config.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
    if config.train_unet:
        base.unet.requires_grad_(True)
    return model


def latent_side(num_pixels: int) -> int:
    side = math.isqrt(num_pixels)
    if side * side != num_pixels:
        raise ValueError(f"attention map of {num_pixels} pixels is not square")
    return side
