"""min_background_aggregate (docs/ops.md §5): the declaration of the op and its public function.

Registered (vos_kernels.ops._aggregation) as torch.ops.vos_kernels.min_background_aggregate (the
public op), min_background_aggregate_fused and min_background_aggregate_fused_grad. The fused
kernels take the spatial dims flattened to S: q (B, O, 2, S) -> (B, O + 1, S).
"""
from __future__ import annotations

import math

import torch

from .._checks import check_clamp_eps, check_tensor
from ._aggregation import define_aggregation
from ..reference.min_background_aggregate import min_background_aggregate_reference

OP = "min_background_aggregate"


def output_shape(q_shape) -> tuple[int, ...]:
    """(B, O, 2, *spatial) -> (B, O + 1, *spatial): the one shape rule of this op."""
    return (q_shape[0], q_shape[1] + 1, *q_shape[3:])


def validate(q: object, eps: object) -> tuple[torch.Tensor, float]:
    check_tensor(OP, "q", q, min_dim=3)
    if q.shape[2] != 2:
        raise ValueError(f"{OP}: q must be (B, O, 2, *spatial) with dim 2 the per-object two-way softmax "
                         f"(not object, object), so dim 2 must have size 2; got shape {tuple(q.shape)}")
    if q.shape[1] == 0:
        raise ValueError(f"{OP}: q must have at least one object (dim 1 of (B, O, 2, *spatial)), "
                         f"got shape {tuple(q.shape)}")
    return q, check_clamp_eps(OP, eps, q.dtype)


def _flat(q: torch.Tensor) -> torch.Tensor:
    """(B, O, 2, *spatial) -> (B, O, 2, S) (a view when possible)."""
    return q.reshape(q.shape[0], q.shape[1], 2, math.prod(q.shape[3:]))


MIN_BACKGROUND_AGGREGATE = define_aggregation(OP, "q", _flat, output_shape, validate,
                                              min_background_aggregate_reference)


def min_background_aggregate(q: torch.Tensor, *, eps: float = 1e-7, backend: str | None = None) -> torch.Tensor:
    """Min-background aggregation of per-object two-way softmaxes (the public agame-vos
    ``softmax_aggregate`` rule, used by CRVOS and TTVOS).

    q: (B, O, 2, *spatial), O >= 1: for each object k its own softmax, q[:, k, 0] "not object k"
        and q[:, k, 1] "object k"; any float dtype, any strides. Returns a contiguous
        (B, O + 1, *spatial) tensor of the same dtype, channel 0 the background. With
        c(x) = clamp(x, eps, 1 - eps):
            b = min_k q_k0;  odds_0 = c(b) / c(1 - b);  odds_k = c(q_k1) / c(q_k0);
            out_j = odds_j / sum_i odds_i
        computed in float32 (float64 for float64 input). Unlike `soft_aggregate` (RGMP Eq. 1,
        background prod_k (1 - p_k)), the background is the most confident object's "not me".
    backend: "cpu", "cuda", "triton", "reference" or "auto" (None: use_backend context, then
        $VOS_KERNELS_BACKEND, then auto). Differentiable with respect to q: the min's gradient
        goes to the first minimal object (as torch.min's), and is zero where a clamp is active.
    """
    return MIN_BACKGROUND_AGGREGATE(q, eps, backend=backend)


# The backends this op implements, from its declaration (read by _dispatch.would_serve and make gpu-ready).
IMPLEMENTED = MIN_BACKGROUND_AGGREGATE.backends
