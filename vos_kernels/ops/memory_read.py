"""memory_read: the L2-affinity memory read with top-k (ops.md §1): custom ops, autograd, fakes.

Custom ops (all differentiable ones have a backward custom op and register_autograd):
  vos_kernels::memory_read_topk(qk, mk, mv, k, scale, backend) -> (out, indices, weights)
  vos_kernels::memory_read_dense(qk, mk, mv, scale, backend)   -> (out, lse)
  vos_kernels::memory_read(qk, mk, mv, *, top_k=None, scale=None, backend="auto") -> out
      (CompositeImplicitAutograd: picks one of the two above, or runs the eager reference)
Backends: "cpu" (C++ kernels torch.ops.vos_kernels.memory_read_{topk,dense}_{forward,backward}),
"triton" (vos_kernels.triton.memory_read), "reference" (the eager reference, plain autograd).
The saved state for backward is O(N k) (kept indices and softmax weights) or O(N) (the
log-sum-exp of the dense softmax): the (M, N) affinity is never stored.
"""
from __future__ import annotations

import math

import torch

from .. import _library
from .._checks import check_positive_float, check_same_device, check_same_dtype, check_tensor
from .._dispatch import resolve_backend
from ..reference.memory_read import memory_read_reference

OP = "memory_read"
IMPLEMENTED = ("cpu", "triton", "reference")


def output_shape(query_shape, value_shape) -> tuple[int, int, int]:
    """(B, Ck, N), (B, Cv, M) -> (B, Cv, N)."""
    return (query_shape[0], value_shape[1], query_shape[2])


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the saved softmax weights / log-sum-exp: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_scale(query_key: torch.Tensor, scale: float | None) -> float:
    """The contract's default scale 1/sqrt(Ck)."""
    return 1.0 / math.sqrt(query_key.shape[1]) if scale is None else float(scale)


def validate(query_key, memory_key, memory_value, top_k, scale) -> None:
    check_tensor(OP, "query_key", query_key, dim=3)
    check_tensor(OP, "memory_key", memory_key, dim=3)
    check_tensor(OP, "memory_value", memory_value, dim=3)
    check_same_device(OP, query_key=query_key, memory_key=memory_key, memory_value=memory_value)
    check_same_dtype(OP, query_key=query_key, memory_key=memory_key, memory_value=memory_value)
    (b, ck, _), (bm, ckm, m), (bv, _, mv) = query_key.shape, memory_key.shape, memory_value.shape
    if bm != b or bv != b:
        raise ValueError(f"{OP}: batch sizes differ: query_key {b}, memory_key {bm}, memory_value {bv}")
    if ckm != ck:
        raise ValueError(f"{OP}: memory_key must have Ck = {ck} channels like query_key, got shape "
                         f"{tuple(memory_key.shape)}")
    if mv != m:
        raise ValueError(f"{OP}: memory_value must have M = {m} entries like memory_key, got shape "
                         f"{tuple(memory_value.shape)}")
    if m == 0:
        raise ValueError(f"{OP}: the memory is empty (memory_key has M = 0 entries)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"{OP}: top_k must be None or an int >= 1, got {top_k!r}")
    if scale is not None:
        check_positive_float(OP, "scale", scale)


def _concrete(backend: str, tensor: torch.Tensor) -> str:
    return resolve_backend(OP, None if backend == "auto" else backend, tensor.device, IMPLEMENTED)


def _fused(backend: str, tensor: torch.Tensor) -> str:
    name = _concrete(backend, tensor)
    if name == "reference":
        raise ValueError(f"{OP}: the fused ops memory_read_topk/memory_read_dense run the 'cpu' or 'triton' "
                         "backend; call vos_kernels.memory_read(..., backend='reference') for the eager reference")
    return name


def _run_kernel(kernel: str, backend: str, query_key: torch.Tensor, *args):
    """Run one fused kernel by name (memory_read_{topk,dense}_{forward,backward}): the Triton
    launcher `<kernel>_triton` of vos_kernels.triton.memory_read or the C++ op
    torch.ops.vos_kernels.<kernel>, whichever `backend` resolves to. `args` follow query_key's
    place in the kernel's signature (grad_out, when there is one, comes first in `args`)."""
    name = _fused(backend, query_key)
    if name == "triton":
        from ..triton import memory_read as triton_kernels
        launcher = getattr(triton_kernels, f"{kernel}_triton")
    else:
        launcher = getattr(torch.ops.vos_kernels, kernel)
    return launcher(*args)


# --- top-k ------------------------------------------------------------------------------------
@torch.library.custom_op("vos_kernels::memory_read_topk", mutates_args=())
def memory_read_topk_op(query_key: torch.Tensor, memory_key: torch.Tensor, memory_value: torch.Tensor, k: int,
                        scale: float, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k memory read: -> out (B, Cv, N), indices (B, N, k) int64, weights (B, N, k) float32/64.

    indices/weights are the kept memory entries of each query, by decreasing affinity (ties: the
    lowest index first), and their softmax weights. Requires 1 <= k <= M.
    """
    return _run_kernel("memory_read_topk_forward", backend, query_key, query_key, memory_key, memory_value, k, scale)


def _topk_fake(query_key, memory_key, memory_value, k, *_):
    b, n = query_key.shape[0], query_key.shape[2]
    return (query_key.new_empty(output_shape(query_key.shape, memory_value.shape)),
            query_key.new_empty((b, n, k), dtype=torch.long),
            query_key.new_empty((b, n, k), dtype=stats_dtype(query_key.dtype)))


memory_read_topk_op.register_fake(_topk_fake)


@torch.library.custom_op("vos_kernels::memory_read_topk_grad", mutates_args=())
def memory_read_topk_grad_op(grad_out: torch.Tensor, query_key: torch.Tensor, memory_key: torch.Tensor,
                             memory_value: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, scale: float,
                             backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of memory_read_topk's out with respect to query_key, memory_key, memory_value."""
    return _run_kernel("memory_read_topk_backward", backend, query_key, grad_out.to(query_key.dtype), query_key,
                       memory_key, memory_value, indices, weights, scale)


def _grad_fakes(query_key, memory_key, memory_value):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format)
                 for t in (query_key, memory_key, memory_value))


@memory_read_topk_grad_op.register_fake
def _(grad_out, query_key, memory_key, memory_value, indices, weights, scale, backend):
    return _grad_fakes(query_key, memory_key, memory_value)


def _topk_setup_context(ctx, inputs, output):
    query_key, memory_key, memory_value, _, scale, backend = inputs
    _, indices, weights = output
    ctx.mark_non_differentiable(indices, weights)
    ctx.save_for_backward(query_key, memory_key, memory_value, indices, weights)
    ctx.scale, ctx.backend = scale, backend


def _topk_backward(ctx, grad_out, _grad_indices, _grad_weights):
    query_key, memory_key, memory_value, indices, weights = ctx.saved_tensors
    grads = memory_read_topk_grad_op(grad_out, query_key, memory_key, memory_value, indices, weights, ctx.scale,
                                     ctx.backend)
    return (*grads, None, None, None)


torch.library.register_autograd("vos_kernels::memory_read_topk", _topk_backward, setup_context=_topk_setup_context)


# --- dense ------------------------------------------------------------------------------------
@torch.library.custom_op("vos_kernels::memory_read_dense", mutates_args=())
def memory_read_dense_op(query_key: torch.Tensor, memory_key: torch.Tensor, memory_value: torch.Tensor,
                         scale: float, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Dense memory read (softmax over all M): -> out (B, Cv, N), lse (B, N) float32/64."""
    return _run_kernel("memory_read_dense_forward", backend, query_key, query_key, memory_key, memory_value, scale)


def _dense_fake(query_key, memory_key, memory_value, *_):
    b, n = query_key.shape[0], query_key.shape[2]
    return (query_key.new_empty(output_shape(query_key.shape, memory_value.shape)),
            query_key.new_empty((b, n), dtype=stats_dtype(query_key.dtype)))


memory_read_dense_op.register_fake(_dense_fake)


@torch.library.custom_op("vos_kernels::memory_read_dense_grad", mutates_args=())
def memory_read_dense_grad_op(grad_out: torch.Tensor, query_key: torch.Tensor, memory_key: torch.Tensor,
                              memory_value: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, scale: float,
                              backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of memory_read_dense's out with respect to query_key, memory_key, memory_value."""
    return _run_kernel("memory_read_dense_backward", backend, query_key, grad_out.to(query_key.dtype), query_key,
                       memory_key, memory_value, out, lse, scale)


@memory_read_dense_grad_op.register_fake
def _(grad_out, query_key, memory_key, memory_value, out, lse, scale, backend):
    return _grad_fakes(query_key, memory_key, memory_value)


def _dense_setup_context(ctx, inputs, output):
    query_key, memory_key, memory_value, scale, backend = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(query_key, memory_key, memory_value, out, lse)
    ctx.scale, ctx.backend = scale, backend


def _dense_backward(ctx, grad_out, _grad_lse):
    query_key, memory_key, memory_value, out, lse = ctx.saved_tensors
    grads = memory_read_dense_grad_op(grad_out, query_key, memory_key, memory_value, out, lse, ctx.scale,
                                      ctx.backend)
    return (*grads, None, None)


torch.library.register_autograd("vos_kernels::memory_read_dense", _dense_backward, setup_context=_dense_setup_context)


# --- fake kernels of the C++ ops (they exist only when _C loaded) ------------------------------
if _library.EXTENSION_LOADED:
    torch.library.register_fake("vos_kernels::memory_read_topk_forward")(_topk_fake)

    @torch.library.register_fake("vos_kernels::memory_read_topk_backward")
    def _(grad_out, query_key, memory_key, memory_value, indices, weights, scale):
        return _grad_fakes(query_key, memory_key, memory_value)

    torch.library.register_fake("vos_kernels::memory_read_dense_forward")(_dense_fake)

    @torch.library.register_fake("vos_kernels::memory_read_dense_backward")
    def _(grad_out, query_key, memory_key, memory_value, out, lse, scale):
        return _grad_fakes(query_key, memory_key, memory_value)


# --- the public op ----------------------------------------------------------------------------
def _memory_read_impl(query_key, memory_key, memory_value, top_k, scale, name):
    scale = default_scale(query_key, scale)
    if name == "reference":
        return memory_read_reference(query_key, memory_key, memory_value, top_k=top_k, scale=scale)
    if top_k is None or top_k >= memory_key.shape[2]:
        return memory_read_dense_op(query_key, memory_key, memory_value, scale, name)[0]
    return memory_read_topk_op(query_key, memory_key, memory_value, top_k, scale, name)[0]


_lib = torch.library.Library("vos_kernels", "FRAGMENT")
_lib.define("memory_read(Tensor query_key, Tensor memory_key, Tensor memory_value, *, int? top_k=None, "
            "float? scale=None, str backend='auto') -> Tensor")


def _memory_read_composite(query_key, memory_key, memory_value, *, top_k=None, scale=None, backend="auto"):
    validate(query_key, memory_key, memory_value, top_k, scale)
    return _memory_read_impl(query_key, memory_key, memory_value, top_k, scale, _concrete(backend, query_key))


_lib.impl("memory_read", _memory_read_composite, "CompositeImplicitAutograd")


def memory_read(query_key: torch.Tensor, memory_key: torch.Tensor, memory_value: torch.Tensor, *,
                top_k: int | None = None, scale: float | None = None, backend: str | None = None) -> torch.Tensor:
    """Read a memory through the L2 affinity, keeping the top_k matches of every query.

    query_key (B, Ck, N), memory_key (B, Ck, M), memory_value (B, Cv, M) -> (B, Cv, N), contiguous,
    the dtype of the inputs (float16/bfloat16 are computed in float32):
        s[b, i, j] = (2 <mk[b, :, i], qk[b, :, j]> - |mk[b, :, i]|^2) * scale   (default 1/sqrt(Ck))
        w[b, :, j] = softmax over the top_k largest s[b, :, j] (all M when top_k is None or >= M)
        out[b, :, j] = sum_i w[b, i, j] mv[b, :, i]
    Several objects share one affinity: stack their values along Cv (Cv = objects x C).
    Ties in the top-k: the lowest memory index is kept. A query whose affinities contain NaN gets
    a NaN output column (as the reference). Differentiable in all three inputs; the top-k gradient
    flows through the kept entries only. Any strides; the affinity is never materialised.
    backend: "cpu", "triton", "reference" or "auto" (None: use_backend context, then
        $VOS_KERNELS_BACKEND, then auto).
    """
    validate(query_key, memory_key, memory_value, top_k, scale)
    name = resolve_backend(OP, backend, query_key.device, IMPLEMENTED)
    return _memory_read_impl(query_key, memory_key, memory_value, top_k, scale, name)
