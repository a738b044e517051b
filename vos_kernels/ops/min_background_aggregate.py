"""min_background_aggregate: the custom op, its autograd formula, fake kernel and backend choice.

The op `torch.ops.vos_kernels.min_background_aggregate(q, eps, backend)` runs the chosen backend:
  cpu, cuda  -> the C++ kernels torch.ops.vos_kernels.min_background_aggregate_{forward,backward}
  triton     -> vos_kernels.triton.min_background_aggregate
  reference  -> the eager reference (its backward is the reference's vector-Jacobian product)
The public function `min_background_aggregate` validates the input, resolves the backend and,
for the reference backend, calls the eager reference directly so that it is plain eager autograd.
"""
from __future__ import annotations

import math

import torch

from .. import _library
from .._checks import check_clamp_eps, check_tensor
from .._dispatch import resolve_backend
from ..reference.min_background_aggregate import min_background_aggregate_reference

OP = "min_background_aggregate"
IMPLEMENTED = ("cpu", "cuda", "triton", "reference")


def output_shape(q_shape) -> tuple[int, ...]:
    """(B, O, 2, *spatial) -> (B, O + 1, *spatial): the one shape rule of this op."""
    return (q_shape[0], q_shape[1] + 1, *q_shape[3:])


def validate(q: object, eps: object) -> None:
    check_tensor(OP, "q", q, min_dim=3)
    if q.shape[2] != 2:
        raise ValueError(f"{OP}: q must be (B, O, 2, *spatial) with dim 2 the per-object two-way softmax "
                         f"(not object, object), so dim 2 must have size 2; got shape {tuple(q.shape)}")
    if q.shape[1] == 0:
        raise ValueError(f"{OP}: q must have at least one object (dim 1 of (B, O, 2, *spatial)), "
                         f"got shape {tuple(q.shape)}")
    check_clamp_eps(OP, eps)


def _flat(q: torch.Tensor) -> torch.Tensor:
    """(B, O, 2, *spatial) -> (B, O, 2, S) (a view when possible)."""
    return q.reshape(q.shape[0], q.shape[1], 2, math.prod(q.shape[3:]))


def _flat_out(t: torch.Tensor) -> torch.Tensor:
    """(B, O + 1, *spatial) -> (B, O + 1, S)."""
    return t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


# An extension compiled before this op existed loads fine but lacks its kernels (checked once).
_CPP_OPS_PRESENT = _library.EXTENSION_LOADED and hasattr(torch.ops.vos_kernels, "min_background_aggregate_forward")


def _cpp_ops_present() -> None:
    if not _CPP_OPS_PRESENT:
        raise RuntimeError(f"{OP}: the loaded vos_kernels._C was built without this op's C++ kernels "
                           "(built before the op was added); rebuild it (python setup.py build_ext --inplace)")


def _forward(q: torch.Tensor, eps: float, backend: str) -> torch.Tensor:
    flat = _flat(q)
    if backend == "triton":
        from ..triton.min_background_aggregate import min_background_aggregate_forward_triton
        out = min_background_aggregate_forward_triton(flat, eps)
    elif backend in ("cpu", "cuda"):
        _cpp_ops_present()
        out = torch.ops.vos_kernels.min_background_aggregate_forward(flat, eps)
    else:
        out = min_background_aggregate_reference(flat, eps)
    return out.view(output_shape(q.shape))


def _backward(grad_out: torch.Tensor, q: torch.Tensor, eps: float, backend: str) -> torch.Tensor:
    flat, grad_flat = _flat(q), _flat_out(grad_out)
    if backend == "triton":
        from ..triton.min_background_aggregate import min_background_aggregate_backward_triton
        grad = min_background_aggregate_backward_triton(grad_flat, flat, eps)
    elif backend in ("cpu", "cuda"):
        _cpp_ops_present()
        grad = torch.ops.vos_kernels.min_background_aggregate_backward(grad_flat, flat, eps)
    else:
        _, vjp = torch.func.vjp(lambda x: min_background_aggregate_reference(x, eps), flat)
        (grad,) = vjp(grad_flat)
    return grad.reshape(q.shape)


def _concrete(backend: str, q: torch.Tensor) -> str:
    return resolve_backend(OP, None if backend == "auto" else backend, q.device, IMPLEMENTED)


@torch.library.custom_op("vos_kernels::min_background_aggregate", mutates_args=())
def min_background_aggregate_op(q: torch.Tensor, eps: float = 1e-7, backend: str = "auto") -> torch.Tensor:
    """Min-background aggregation: q (B, O, 2, *spatial) -> (B, O + 1, *spatial)."""
    validate(q, eps)
    return _forward(q, eps, _concrete(backend, q))


@min_background_aggregate_op.register_fake
def _(q, eps=1e-7, backend="auto"):
    validate(q, eps)
    return q.new_empty(output_shape(q.shape))


@torch.library.custom_op("vos_kernels::min_background_aggregate_grad", mutates_args=())
def min_background_aggregate_grad_op(grad_out: torch.Tensor, q: torch.Tensor, eps: float,
                                     backend: str) -> torch.Tensor:
    """Gradient with respect to q: (B, O + 1, *sp), (B, O, 2, *sp) -> (B, O, 2, *sp)."""
    return _backward(grad_out.to(q.dtype), q, eps, _concrete(backend, q))


@min_background_aggregate_grad_op.register_fake
def _(grad_out, q, eps, backend):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    q, eps, backend = inputs
    ctx.save_for_backward(q)
    ctx.eps, ctx.backend = eps, backend


def _backward_formula(ctx, grad_out):
    (q,) = ctx.saved_tensors
    return min_background_aggregate_grad_op(grad_out, q, ctx.eps, ctx.backend), None, None


torch.library.register_autograd("vos_kernels::min_background_aggregate", _backward_formula,
                                setup_context=_setup_context)

if _CPP_OPS_PRESENT:
    # fake kernels of the C++ ops (they exist only when a _C built with them is loaded)
    @torch.library.register_fake("vos_kernels::min_background_aggregate_forward")
    def _(q, eps):
        return q.new_empty(output_shape(q.shape))

    @torch.library.register_fake("vos_kernels::min_background_aggregate_backward")
    def _(grad_out, q, eps):
        return torch.empty_like(q, memory_format=torch.contiguous_format)


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
    validate(q, eps)
    name = resolve_backend(OP, backend, q.device, IMPLEMENTED)
    if name == "reference":
        return min_background_aggregate_reference(q, eps)
    return min_background_aggregate_op(q, eps, name)
