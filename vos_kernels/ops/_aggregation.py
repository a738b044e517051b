"""The layout shared by the two clamp-eps aggregation ops (soft_aggregate, min_background_aggregate).

Both map per-object planes to O + 1 planes, background first, with one float `eps`, and both have
C++ kernels `<op>_{forward,backward}` and Triton launchers `<op>.<op>_{forward,backward}_triton`
that take the spatial dims flattened to S. This module declares, for such an op:
  vos_kernels::<op>(x, eps=1e-7, backend='auto')           the public op
  vos_kernels::<op>_fused(x, eps, backend)                 cpu/cuda/triton, autograd, fake
  vos_kernels::<op>_fused_grad(grad_out, x, eps, backend)  its gradient
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .._registry import Backward, FusedOp, Kernel, OpDefinition, define_op


def flat_spatial(t: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, C, S) (a view when possible)."""
    return t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


def define_aggregation(op: str, argument: str, flat_input: Callable, output_shape: Callable, validate: Callable,
                       reference: Callable) -> OpDefinition:
    """Declare an aggregation op; `flat_input` flattens its input for the kernels, `output_shape`
    maps the input's shape to the output's (it serves the flat and the full shapes alike)."""
    def forward(launch, x, eps):
        return launch(flat_input(x), eps).view(output_shape(x.shape))

    def backward(launch, grad_out, x, eps):
        return launch(flat_spatial(grad_out), flat_input(x), eps).reshape(x.shape)

    fused = FusedOp(
        f"{op}_fused", f"Tensor {argument}, float eps", "Tensor",
        forward=Kernel(f"{op}_forward", f"{op}.{op}_forward_triton",
                       fake=lambda x, eps: x.new_empty(output_shape(x.shape)), adapt=forward),
        backward=Backward(Kernel(f"{op}_backward", f"{op}.{op}_backward_triton", adapt=backward,
                                 fake=lambda grad_out, x, eps: torch.empty_like(x, memory_format=torch.contiguous_format)),
                          saved=lambda inputs, output: inputs, grads_for=(0,)),
        grad_arguments=f"Tensor grad_out, Tensor {argument}, float eps", grad_returns="Tensor")
    return define_op(OpDefinition(op, f"(Tensor {argument}, float eps=1e-07, str backend='auto') -> Tensor",
                                  validate=validate, reference=reference, fused=fused))
