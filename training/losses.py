"""ConsistentID losses: foreground-masked noise MSE and the facial attention localization loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.model import latent_side


def noise_prediction_loss(
    pred: torch.Tensor, target: torch.Tensor, foreground: torch.Tensor | None = None
) -> torch.Tensor:
    """MSE of the noise (or v) prediction; with a foreground mask, background pixels count 0.

    ConsistentID applies the mask on a random half of the steps (the caller flips the coin).
    """
    pred, target = pred.float(), target.float()
    if foreground is not None:
        mask = foreground.to(pred.dtype)
        if mask.shape[-2:] != pred.shape[-2:]:
            mask = F.interpolate(mask, size=pred.shape[-2:], mode="area")
        pred, target = pred * mask, target * mask
    return F.mse_loss(pred, target)


def balanced_l1(probs: torch.Tensor, masks: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """FastComposer's balanced L1: mean attention outside the region minus mean inside.

    probs, masks: (B, R, HW). Returns (B, R).
    """
    background = 1.0 - masks
    bg = (probs * background).sum(-1) / (background.sum(-1) + eps)
    obj = (probs * masks).sum(-1) / (masks.sum(-1) + eps)
    return bg - obj


def facial_localization_loss(
    maps: dict[str, torch.Tensor], region_masks: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Mean over layers and valid regions of the balanced L1 on cross-attention probabilities.

    maps: layer -> (B, HW, R) probabilities of the facial tokens (from the cross-attention);
    region_masks: (B, R, h, w) at latent resolution; valid: (B, R) bool.
    """
    if not maps:
        raise ValueError("no cross-attention maps were recorded for the localization loss")
    weight = valid.float()
    losses = []
    for probs in maps.values():
        side = latent_side(probs.shape[1])
        masks = F.interpolate(region_masks.float(), size=(side, side), mode="area").flatten(2)
        per_region = balanced_l1(probs.transpose(1, 2).float(), masks)
        losses.append((per_region * weight).sum() / weight.sum().clamp(min=1.0))
    return torch.stack(losses).mean()
