"""Aggregation of CRVOS's per-object predictions into one distribution over objects.

CRVOS predicts every object on its own: a two-way softmax ``q_k = [q_k0, q_k1]`` ("not object
k", "object k") per pixel. The public implementation (CV-IP/CRVOS, ``softmax_aggregate`` in
``models/CRVOS_model.py``, inherited from agame-vos) merges them with odds, but its background
is **not** RGMP's Eq. 1 background ``prod_k (1 - p_k)``:

    b      = min_k q_k0                         (the most confident object's "not me")
    odds_0 = c(b) / c(1 - b)                    c(x) = clamp(x, eps, 1 - eps), eps = 1e-7
    odds_k = c(q_k1) / c(q_k0)                  (note: q_k0 from the softmax, not 1 - q_k1)
    P_0    = odds_0 / sum_j odds_j,   P_k = odds_k / sum_j odds_j

``vos_kernels.soft_aggregate`` implements RGMP's formula (product background, odds from
``p / (1 - p)``), which gives different probabilities whenever there is more than one object
(and even for one object: ``P_0 = q0^2 / (q0^2 + q1^2)`` here). The public CRVOS weights were
trained and evaluated with the min-background rule, and the parity fixture was produced with
it, so ``aggregation="public"`` (the default) reproduces it here in eager PyTorch.
``aggregation="soft_aggregate"`` routes the foreground probabilities ``q_k1`` through
``vos_kernels.soft_aggregate`` instead, for users who want RGMP's rule and the fused kernel.
"""
from __future__ import annotations

import torch
from torch import Tensor

import vos_kernels

AGGREGATIONS = ("public", "soft_aggregate")


def min_background_aggregate(q: Tensor, eps: float = 1e-7) -> Tensor:
    """Public CRVOS aggregation.

    Args:
        q: ``(B, O, 2, *spatial)`` per-object two-way softmax, ``O >= 1``.
    Returns:
        ``(B, O + 1, *spatial)`` probabilities, channel 0 background, channel k object k.
    """
    if q.dim() < 3 or q.shape[2] != 2 or q.shape[1] < 1:
        raise ValueError(f"min_background_aggregate: q must be (B, O>=1, 2, ...), got {tuple(q.shape)}")
    not_object, is_object = q[:, :, 0], q[:, :, 1]
    background = not_object.min(dim=1, keepdim=True).values
    background_odds = background.clamp(eps, 1 - eps) / (1 - background).clamp(eps, 1 - eps)
    object_odds = is_object.clamp(eps, 1 - eps) / not_object.clamp(eps, 1 - eps)
    odds = torch.cat([background_odds, object_odds], dim=1)
    return odds / odds.sum(dim=1, keepdim=True)


def aggregate_objects(q: Tensor, method: str = "public") -> Tensor:
    """``(B, O, 2, *sp)`` per-object softmax -> ``(B, O + 1, *sp)`` with the chosen rule."""
    if method == "public":
        return min_background_aggregate(q)
    if method == "soft_aggregate":
        return vos_kernels.soft_aggregate(q[:, :, 1])
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {method!r}")
