"""soft_aggregate (docs/ops.md §2): the declaration of the op and its public function.

Registered (vos_kernels.ops._aggregation) as torch.ops.vos_kernels.soft_aggregate (the public op),
soft_aggregate_fused and soft_aggregate_fused_grad. The fused kernels (C++
soft_aggregate_{forward,backward}, Triton soft_aggregate.*_triton) take the spatial dims
flattened to S: (B, O, S) -> (B, O + 1, S).
"""
from __future__ import annotations

import torch

from .._checks import check_clamp_eps, check_tensor
from ._aggregation import define_aggregation, flat_spatial
from ..reference.soft_aggregate import soft_aggregate_reference

OP = "soft_aggregate"


def output_shape(prob_shape) -> tuple[int, ...]:
    """(B, O, *spatial) -> (B, O + 1, *spatial): the one shape rule of this op."""
    return (prob_shape[0], prob_shape[1] + 1, *prob_shape[2:])


def validate(prob: object, eps: object) -> tuple[torch.Tensor, float]:
    check_tensor(OP, "prob", prob, min_dim=2)
    if prob.shape[1] == 0:
        raise ValueError(f"{OP}: prob must have at least one object (dim 1 of (B, O, *spatial)), "
                         f"got shape {tuple(prob.shape)}")
    return prob, check_clamp_eps(OP, eps, prob.dtype)


SOFT_AGGREGATE = define_aggregation(OP, "prob", flat_spatial, output_shape, validate, soft_aggregate_reference)


def soft_aggregate(prob: torch.Tensor, *, eps: float = 1e-7, backend: str | None = None) -> torch.Tensor:
    """Soft aggregation of O object probabilities into O + 1 (background first) (RGMP Eq. 1).

    prob: (B, O, *spatial), each object's foreground probability in [0, 1]; any float dtype,
        any strides. Returns a contiguous (B, O + 1, *spatial) tensor of the same dtype:
        bg = prod_o (1 - p_o); q = clamp([bg, p], eps, 1 - eps); out = softmax(log(q / (1 - q))),
        computed as r / sum(r) with r = q / (1 - q), in float32 (float64 for float64 input).
    backend: "cpu", "cuda", "triton", "reference" or "auto" (None: use_backend context, then
        $VOS_KERNELS_BACKEND, then auto). Differentiable with respect to prob.
    """
    return SOFT_AGGREGATE(prob, eps, backend=backend)


# The backends this op implements, from its declaration (read by _dispatch.would_serve and make gpu-ready).
IMPLEMENTED = SOFT_AGGREGATE.backends
