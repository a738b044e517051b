"""memory_read (docs/ops.md §1): the declaration of the L2-affinity memory read with top-k.

Registered by vos_kernels._registry as
  vos_kernels::memory_read(qk, mk, mv, *, top_k=None, scale=None, backend="auto") -> out
      the public op: picks one of the two fused ops below, or runs the eager reference
  vos_kernels::memory_read_topk(qk, mk, mv, k, scale, backend) -> (out, indices, weights)
  vos_kernels::memory_read_dense(qk, mk, mv, scale, backend)   -> (out, lse)
      the fused ops (autograd, fakes; gradient ops memory_read_{topk,dense}_grad)
Backends: "cpu" (C++ kernels torch.ops.vos_kernels.memory_read_{topk,dense}_{forward,backward}),
"triton" (vos_kernels.triton.memory_read), "reference" (the eager reference, plain autograd).
The saved state for backward is O(N k) (kept indices and softmax weights) or O(N) (the
log-sum-exp of the dense softmax): the (M, N) affinity is never stored.
"""
from __future__ import annotations

import math

import torch

from .._checks import check_int, check_positive_float, check_same_device, check_same_dtype, check_tensor
from .._registry import Backward, FusedOp, Kernel, OpDefinition, define_op
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
    if ck == 0:
        raise ValueError(f"{OP}: query_key and memory_key must have Ck >= 1 key channels, got shape "
                         f"{tuple(query_key.shape)}")
    if top_k is not None:
        check_int(OP, "top_k", top_k, minimum=1)
    if scale is not None:
        check_positive_float(OP, "scale", scale)


def _grad_fakes(grad_out, query_key, memory_key, memory_value, *_):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format)
                 for t in (query_key, memory_key, memory_value))


def _topk_fake(query_key, memory_key, memory_value, k, scale):
    b, n = query_key.shape[0], query_key.shape[2]
    return (query_key.new_empty(output_shape(query_key.shape, memory_value.shape)),
            query_key.new_empty((b, n, k), dtype=torch.long),
            query_key.new_empty((b, n, k), dtype=stats_dtype(query_key.dtype)))


def _dense_fake(query_key, memory_key, memory_value, scale):
    b, n = query_key.shape[0], query_key.shape[2]
    return (query_key.new_empty(output_shape(query_key.shape, memory_value.shape)),
            query_key.new_empty((b, n), dtype=stats_dtype(query_key.dtype)))


def _kernel(name: str, fake) -> Kernel:
    """The C++ op torch.ops.vos_kernels.<name> and the Triton launcher <name>_triton share a signature."""
    return Kernel(name, f"memory_read.{name}_triton", fake=fake)


_INPUTS = "Tensor query_key, Tensor memory_key, Tensor memory_value"
_GRADS = "(Tensor, Tensor, Tensor)"

# Top-k: -> out (B, Cv, N), indices (B, N, k) int64, weights (B, N, k) float32/64: the kept memory
# entries of each query by decreasing affinity (ties: the lowest index first) and their softmax
# weights. Requires 1 <= k <= M.
TOPK = FusedOp(
    "memory_read_topk", f"{_INPUTS}, SymInt k, float scale", "(Tensor, Tensor, Tensor)",
    forward=_kernel("memory_read_topk_forward", _topk_fake),
    backward=Backward(_kernel("memory_read_topk_backward", _grad_fakes),
                      saved=lambda inputs, output: (*inputs[:3], *output[1:], inputs[4]), grads_for=(0, 1, 2)),
    backends=IMPLEMENTED[:-1],
    grad_arguments=f"Tensor grad_out, {_INPUTS}, Tensor indices, Tensor weights, float scale", grad_returns=_GRADS)

# Dense (softmax over all M): -> out (B, Cv, N), lse (B, N) float32/64.
DENSE = FusedOp(
    "memory_read_dense", f"{_INPUTS}, float scale", "(Tensor, Tensor)",
    forward=_kernel("memory_read_dense_forward", _dense_fake),
    backward=Backward(_kernel("memory_read_dense_backward", _grad_fakes),
                      saved=lambda inputs, output: (*inputs[:3], *output, inputs[3]), grads_for=(0, 1, 2)),
    backends=IMPLEMENTED[:-1],
    grad_arguments=f"Tensor grad_out, {_INPUTS}, Tensor out, Tensor lse, float scale", grad_returns=_GRADS)


def _validated(query_key, memory_key, memory_value, top_k, scale):
    validate(query_key, memory_key, memory_value, top_k, scale)
    return query_key, memory_key, memory_value, top_k, default_scale(query_key, scale)


def _reference(query_key, memory_key, memory_value, top_k, scale):
    return memory_read_reference(query_key, memory_key, memory_value, top_k=top_k, scale=scale)


def _fused(query_key, memory_key, memory_value, top_k, scale, backend):
    if top_k is None or top_k >= memory_key.shape[2]:
        return DENSE(query_key, memory_key, memory_value, scale, backend)[0]
    return TOPK(query_key, memory_key, memory_value, top_k, scale, backend)[0]


MEMORY_READ = define_op(OpDefinition(
    OP, f"({_INPUTS}, *, int? top_k=None, float? scale=None, str backend='auto') -> Tensor",
    validate=_validated, reference=_reference, fused=_fused, backends=IMPLEMENTED))


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
    return MEMORY_READ(query_key, memory_key, memory_value, top_k, scale, backend=backend)
