"""clip_window_attention: 3-D (shifted) window attention over a clip (ops.md §4).

Backends: reference for now (fused CPU/CUDA/Triton kernels: issue #4).
"""
from __future__ import annotations

import torch

from .._checks import check_positive_float, check_same_device, check_same_dtype, check_tensor
from .._dispatch import resolve_backend
from ..reference.clip_window_attention import clip_window_attention_reference

OP = "clip_window_attention"
IMPLEMENTED = ("reference",)


def _triple(name: str, value, minimum: int) -> tuple[int, int, int]:
    try:
        t = tuple(int(v) for v in value)
    except TypeError:
        raise TypeError(f"{OP}: {name} must be a sequence of 3 ints, got {value!r}") from None
    if len(t) != 3 or any(v < minimum for v in t):
        raise ValueError(f"{OP}: {name} must be 3 ints >= {minimum}, got {value!r}")
    return t


def validate(query, key, value, num_heads, window, shift, rel_pos_bias, scale):
    """Checks the inputs; returns (window, shift) as int triples."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        check_tensor(OP, name, t, dim=5)
    check_same_device(OP, query=query, key=key, value=value, rel_pos_bias=rel_pos_bias)
    check_same_dtype(OP, query=query, key=key, value=value)
    if key.shape != query.shape or value.shape != query.shape:
        raise ValueError(f"{OP}: query, key and value must have one shape (B, L, H, W, C), got "
                         f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"{OP}: num_heads must be an int >= 1, got {num_heads!r}")
    channels = query.shape[-1]
    if channels % num_heads:
        raise ValueError(f"{OP}: channels C = {channels} must be divisible by num_heads = {num_heads}")
    window = _triple("window", window, 1)
    shift = _triple("shift", shift, 0)
    if any(s >= w for s, w in zip(shift, window)):
        raise ValueError(f"{OP}: every shift must be smaller than its window, got shift {shift}, window {window}")
    if rel_pos_bias is not None:
        check_tensor(OP, "rel_pos_bias", rel_pos_bias, dim=2)
        rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        if tuple(rel_pos_bias.shape) != (rows, num_heads):
            raise ValueError(f"{OP}: rel_pos_bias must be (T, num_heads) = ({rows}, {num_heads}) for window "
                             f"{window}, got shape {tuple(rel_pos_bias.shape)}")
    if scale is not None:
        check_positive_float(OP, "scale", scale)
    return window, shift


def clip_window_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, num_heads: int,
                          window=(2, 7, 7), shift=(0, 0, 0), rel_pos_bias: torch.Tensor | None = None,
                          scale: float | None = None, backend: str | None = None) -> torch.Tensor:
    """Multi-head attention inside 3-D windows of a clip: (B, L, H, W, C) x 3 -> (B, L, H, W, C).

    Token p of an axis of length S belongs to window (p + (w - s) % w) // w (partial windows at
    the borders, no padding tokens); rel_pos_bias is Video Swin's (T, num_heads) table.
    """
    window, shift = validate(query, key, value, num_heads, window, shift, rel_pos_bias, scale)
    resolve_backend(OP, backend, query.device, IMPLEMENTED)
    return clip_window_attention_reference(query, key, value, num_heads, window, shift, rel_pos_bias, scale)
