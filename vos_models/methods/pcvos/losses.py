"""PCVOS training losses: bootstrapped cross-entropy (image level) + dice (clip level).

- Bootstrapped CE (STCN, `BootstrappedCE`): per frame, the mean of the hardest p-fraction of
  pixel cross-entropies; p = 1 until `start_warm` iterations, then falls linearly to `top_p`
  at `end_warm` (STCN: 20k, 70k, 0.15).
- Clip dice (PCVOS Eq. 5): L_clip = sum_k [1 - Dice(m~_k, m_k)], Dice = 2|a b| / (|a| + |b|),
  over the whole clip volume (L x H x W) of object k; padded objects are skipped.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bootstrap_fraction(iteration: int, start_warm: int, end_warm: int, top_p: float) -> float:
    """Fraction of pixels kept by the bootstrapped CE at `iteration` (1.0 during warm-up)."""
    if iteration < start_warm:
        return 1.0
    if iteration >= end_warm or end_warm <= start_warm:
        return top_p
    return top_p + (1 - top_p) * (end_warm - iteration) / (end_warm - start_warm)


def bootstrapped_cross_entropy(log_prob: Tensor, target: Tensor, fraction: float) -> Tensor:
    """log_prob (N, C, H, W) log-probabilities, target (N, H, W) long -> mean over frames of the
    mean of the top `fraction` pixel losses of each frame (STCN averages per frame too)."""
    raw = F.nll_loss(log_prob, target, reduction="none").flatten(1)  # (N, HW)
    if fraction >= 1.0:
        return raw.mean()
    k = max(1, int(raw.shape[1] * fraction))
    return raw.topk(k, dim=1, sorted=False).values.mean()


def clip_dice_loss(prob: Tensor, target: Tensor, valid: Tensor, eps: float = 1.0) -> Tensor:
    """prob, target (B, O, L, H, W); valid (B, O) bool -> mean over the batch of
    sum over valid objects of (1 - dice). `eps` smooths empty masks (dice of two empties = 1)."""
    inter = (prob * target).flatten(2).sum(-1)
    total = prob.flatten(2).sum(-1) + target.flatten(2).sum(-1)
    dice = (2 * inter + eps) / (total + eps)
    return ((1 - dice) * valid).sum(1).mean()
