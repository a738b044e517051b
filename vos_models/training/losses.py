"""Losses shared by the methods' ``training_loss``.

Shapes: ``masks`` (B, O, H, W) {0, 1} with objects past ``num_objects`` (B,) all zero (batch
padding); ``logits`` (B, O + 1, H, W) with channel 0 the background.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def object_validity(num_objects: Tensor, max_objects: int) -> Tensor:
    """(B,) counts -> (B, O + 1) bool: background and the first num_objects[b] objects are real."""
    ids = torch.arange(max_objects + 1, device=num_objects.device)
    return ids.unsqueeze(0) <= num_objects.reshape(-1, 1)


def masks_to_labels(masks: Tensor) -> Tensor:
    """(B, O, H, W) disjoint {0, 1} masks -> (B, H, W) long ids (0 background, i for object i)."""
    background = (1 - masks.sum(dim=1, keepdim=True)).clamp(min=0)
    return torch.cat([background, masks], dim=1).argmax(dim=1)


def mask_padded_objects(logits: Tensor, num_objects: Tensor) -> Tensor:
    """Set the logits of padding objects to a large negative value so they take no probability."""
    valid = object_validity(num_objects, logits.shape[1] - 1)
    return logits.masked_fill(~valid[:, :, None, None], torch.finfo(logits.dtype).min / 2)


def multi_object_cross_entropy(logits: Tensor, masks: Tensor, num_objects: Tensor, *,
                               top_p: float = 1.0) -> Tensor:
    """Cross-entropy over background + objects, padded objects excluded.

    top_p < 1 gives the bootstrapped cross-entropy (STCN / XMem style): only the top_p fraction
    of pixels with the largest loss per sample is averaged.
    """
    if logits.shape[1] != masks.shape[1] + 1:
        raise ValueError(f"multi_object_cross_entropy: logits have {logits.shape[1]} channels, expected "
                         f"O + 1 = {masks.shape[1] + 1}")
    if not 0 < top_p <= 1:
        raise ValueError(f"multi_object_cross_entropy: top_p must be in (0, 1], got {top_p}")
    target = masks_to_labels(masks)
    per_pixel = F.cross_entropy(mask_padded_objects(logits.float(), num_objects), target, reduction="none")
    if top_p >= 1:
        return per_pixel.mean()
    flat = per_pixel.flatten(1)
    k = max(1, int(flat.shape[1] * top_p))
    return flat.topk(k, dim=1).values.mean()


def label_iou(pred: Tensor, target: Tensor, *, pooled: bool = False) -> Tensor:
    """IoU of predicted and true label maps, the training logs' accuracy (no gradient).

    pred, target: (B, ...) integer ids, 0 background (a bool foreground map is ids 0 / 1).
    A pixel counts in the intersection where both agree on an object, in the union where
    either has one:

        I = #{pred == target > 0},  U = #{pred > 0 or target > 0},  IoU = I / U   (1 when U = 0)

    Returns the per-sample IoU (B,), or with ``pooled`` one IoU of the summed counts (a scalar).
    """
    pred, target = pred.long(), target.long()
    inter = ((pred == target) & (target > 0)).flatten(1).sum(1).float()
    union = ((pred > 0) | (target > 0)).flatten(1).sum(1).float()
    if pooled:
        inter, union = inter.sum(), union.sum()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def pick_one_object(masks: Tensor, num_objects: Tensor) -> Tensor:
    """masks (B,T,O,H,W), num_objects (B,) -> (B,T,H,W): one object per sample, uniformly among
    its ``num_objects`` (all zeros where a sample has none)."""
    b = masks.shape[0]
    count = num_objects.to(masks.device).clamp(min=0, max=masks.shape[2])
    choice = (torch.rand(b, device=masks.device) * count.clamp(min=1)).long()
    chosen = masks[torch.arange(b, device=masks.device), :, choice.clamp(max=masks.shape[2] - 1)]
    return chosen * (count > 0).view(b, 1, 1, 1).to(chosen.dtype)
