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
it, so ``aggregation="public"`` (the default) reproduces it, through the fused op
``vos_kernels.min_background_aggregate`` (its eager reference inside
``vos_kernels.use_backend("reference")``). ``aggregation="soft_aggregate"`` routes the foreground
probabilities ``q_k1`` through ``vos_kernels.soft_aggregate`` instead, for users who want RGMP's rule.
"""
from __future__ import annotations

from torch import Tensor

import vos_kernels

AGGREGATIONS = ("public", "soft_aggregate")


def min_background_aggregate(q: Tensor, eps: float = 1e-7) -> Tensor:
    """Public CRVOS aggregation: ``vos_kernels.min_background_aggregate`` (formula above).

    Args:
        q: ``(B, O, 2, *spatial)`` per-object two-way softmax, ``O >= 1``.
    Returns:
        ``(B, O + 1, *spatial)`` probabilities, channel 0 background, channel k object k.
    """
    return vos_kernels.min_background_aggregate(q, eps=eps)


def aggregate_objects(q: Tensor, method: str = "public") -> Tensor:
    """``(B, O, 2, *sp)`` per-object softmax -> ``(B, O + 1, *sp)`` with the chosen rule."""
    if method == "public":
        return min_background_aggregate(q)
    if method == "soft_aggregate":
        return vos_kernels.soft_aggregate(q[:, :, 1])
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {method!r}")
