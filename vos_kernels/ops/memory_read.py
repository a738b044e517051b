"""memory_read: L2-affinity memory read with top-k (ops.md §1).

Backends: reference for now (fused CPU/CUDA/Triton kernels: issue #3).
"""
from __future__ import annotations

import torch

from .._checks import check_positive_float, check_same_device, check_same_dtype, check_tensor
from .._dispatch import resolve_backend
from ..reference.memory_read import memory_read_reference

OP = "memory_read"
IMPLEMENTED = ("reference",)


def output_shape(query_shape, value_shape) -> tuple[int, int, int]:
    """(B, Ck, N), (B, Cv, M) -> (B, Cv, N)."""
    return (query_shape[0], value_shape[1], query_shape[2])


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


def memory_read(query_key: torch.Tensor, memory_key: torch.Tensor, memory_value: torch.Tensor, *,
                top_k: int | None = None, scale: float | None = None, backend: str | None = None) -> torch.Tensor:
    """Read a memory through the L2 affinity, keeping the top_k matches of every query.

    query_key (B, Ck, N), memory_key (B, Ck, M), memory_value (B, Cv, M) -> (B, Cv, N):
    s[b,i,j] = (2 <mk_i, qk_j> - |mk_i|^2) * scale (default 1/sqrt(Ck)); softmax over the
    top_k largest s of each query (over all M when top_k is None or >= M); out = mv @ w.
    Several objects share one affinity: stack their values along Cv.
    """
    validate(query_key, memory_key, memory_value, top_k, scale)
    resolve_backend(OP, backend, query_key.device, IMPLEMENTED)
    return memory_read_reference(query_key, memory_key, memory_value, top_k=top_k, scale=scale)
