"""soft_aggregate: the custom op, its autograd formula, fake kernel and backend choice.

The op `torch.ops.vos_kernels.soft_aggregate(prob, eps, backend)` runs the chosen backend:
  cpu, cuda  -> the C++ kernels torch.ops.vos_kernels.soft_aggregate_{forward,backward}
  triton     -> vos_kernels.triton.soft_aggregate
  reference  -> the eager reference (its backward is the reference's vector-Jacobian product)
The public function `soft_aggregate` validates the input, resolves the backend and, for the
reference backend, calls the eager reference directly so that it is plain eager autograd.
"""
from __future__ import annotations

import math

import torch

from .. import _library
from .._checks import check_clamp_eps, check_tensor
from .._dispatch import resolve_backend
from ..reference.soft_aggregate import soft_aggregate_reference

OP = "soft_aggregate"
IMPLEMENTED = ("cpu", "cuda", "triton", "reference")


def output_shape(prob_shape) -> tuple[int, ...]:
    """(B, O, *spatial) -> (B, O + 1, *spatial): the one shape rule of this op."""
    return (prob_shape[0], prob_shape[1] + 1, *prob_shape[2:])


def validate(prob: object, eps: object) -> None:
    check_tensor(OP, "prob", prob, min_dim=2)
    if prob.shape[1] == 0:
        raise ValueError(f"{OP}: prob must have at least one object (dim 1 of (B, O, *spatial)), "
                         f"got shape {tuple(prob.shape)}")
    check_clamp_eps(OP, eps)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, C, S) (a view when possible)."""
    return t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


def _forward(prob: torch.Tensor, eps: float, backend: str) -> torch.Tensor:
    flat = _flat(prob)
    if backend == "triton":
        from ..triton.soft_aggregate import soft_aggregate_forward_triton
        out = soft_aggregate_forward_triton(flat, eps)
    elif backend in ("cpu", "cuda"):
        out = torch.ops.vos_kernels.soft_aggregate_forward(flat, eps)
    else:
        out = soft_aggregate_reference(flat, eps)
    return out.view(output_shape(prob.shape))


def _backward(grad_out: torch.Tensor, prob: torch.Tensor, eps: float, backend: str) -> torch.Tensor:
    flat, grad_flat = _flat(prob), _flat(grad_out)
    if backend == "triton":
        from ..triton.soft_aggregate import soft_aggregate_backward_triton
        grad = soft_aggregate_backward_triton(grad_flat, flat, eps)
    elif backend in ("cpu", "cuda"):
        grad = torch.ops.vos_kernels.soft_aggregate_backward(grad_flat, flat, eps)
    else:
        _, vjp = torch.func.vjp(lambda p: soft_aggregate_reference(p, eps), flat)
        (grad,) = vjp(grad_flat)
    return grad.view(prob.shape)


def _concrete(backend: str, prob: torch.Tensor) -> str:
    return resolve_backend(OP, None if backend == "auto" else backend, prob.device, IMPLEMENTED)


@torch.library.custom_op("vos_kernels::soft_aggregate", mutates_args=())
def soft_aggregate_op(prob: torch.Tensor, eps: float = 1e-7, backend: str = "auto") -> torch.Tensor:
    """Soft aggregation of objects: prob (B, O, *spatial) -> (B, O + 1, *spatial)."""
    validate(prob, eps)
    return _forward(prob, eps, _concrete(backend, prob))


@soft_aggregate_op.register_fake
def _(prob, eps=1e-7, backend="auto"):
    validate(prob, eps)
    return prob.new_empty(output_shape(prob.shape))


@torch.library.custom_op("vos_kernels::soft_aggregate_grad", mutates_args=())
def soft_aggregate_grad_op(grad_out: torch.Tensor, prob: torch.Tensor, eps: float, backend: str) -> torch.Tensor:
    """Gradient of soft_aggregate with respect to prob: (B, O + 1, *sp), (B, O, *sp) -> (B, O, *sp)."""
    return _backward(grad_out.to(prob.dtype), prob, eps, _concrete(backend, prob))


@soft_aggregate_grad_op.register_fake
def _(grad_out, prob, eps, backend):
    return torch.empty_like(prob, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    prob, eps, backend = inputs
    ctx.save_for_backward(prob)
    ctx.eps, ctx.backend = eps, backend


def _backward_formula(ctx, grad_out):
    (prob,) = ctx.saved_tensors
    return soft_aggregate_grad_op(grad_out, prob, ctx.eps, ctx.backend), None, None


torch.library.register_autograd("vos_kernels::soft_aggregate", _backward_formula, setup_context=_setup_context)

if _library.EXTENSION_LOADED:  # fake kernels of the C++ ops (they exist only when _C loaded)
    @torch.library.register_fake("vos_kernels::soft_aggregate_forward")
    def _(prob, eps):
        return prob.new_empty(output_shape(prob.shape))

    @torch.library.register_fake("vos_kernels::soft_aggregate_backward")
    def _(grad_out, prob, eps):
        return torch.empty_like(prob, memory_format=torch.contiguous_format)


def soft_aggregate(prob: torch.Tensor, *, eps: float = 1e-7, backend: str | None = None) -> torch.Tensor:
    """Soft aggregation of O object probabilities into O + 1 (background first) (RGMP Eq. 1).

    prob: (B, O, *spatial), each object's foreground probability in [0, 1]; any float dtype,
        any strides. Returns a contiguous (B, O + 1, *spatial) tensor of the same dtype:
        bg = prod_o (1 - p_o); q = clamp([bg, p], eps, 1 - eps); out = softmax(log(q / (1 - q))),
        computed as r / sum(r) with r = q / (1 - q), in float32 (float64 for float64 input).
    backend: "cpu", "cuda", "triton", "reference" or "auto" (None: use_backend context, then
        $VOS_KERNELS_BACKEND, then auto). Differentiable with respect to prob.
    """
    validate(prob, eps)
    name = resolve_backend(OP, backend, prob.device, IMPLEMENTED)
    if name == "reference":
        return soft_aggregate_reference(prob, eps)
    return soft_aggregate_op(prob, eps, name)
