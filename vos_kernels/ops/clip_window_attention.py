"""clip_window_attention: the custom op, its autograd formula, fake kernels and backend choice.

The op `torch.ops.vos_kernels.clip_window_attention(query, key, value, rel_pos_bias, num_heads,
window, shift, scale, backend)` runs the chosen backend:
  cpu, cuda  -> the C++ kernels torch.ops.vos_kernels.clip_window_attention_{forward,backward}
  triton     -> vos_kernels.triton.clip_window_attention
  reference  -> the eager reference (its backward is the reference's vector-Jacobian product)
Every backend reads each window's tokens in place from the (possibly strided) inputs: no pad,
roll or partition copies. The public function validates, resolves `scale` and the backend and,
for the reference backend, calls the eager reference directly (plain eager autograd).
"""
from __future__ import annotations

import torch

from .. import _library
from .._checks import check_positive_float, check_same_device, check_same_dtype, check_tensor
from .._dispatch import resolve_backend
from ..reference.clip_window_attention import clip_window_attention_reference

OP = "clip_window_attention"
IMPLEMENTED = ("cpu", "cuda", "triton", "reference")


def _triple(name: str, value, minimum: int) -> tuple[int, int, int]:
    try:
        t = tuple(int(v) for v in value)
    except TypeError:
        raise TypeError(f"{OP}: {name} must be a sequence of 3 ints, got {value!r}") from None
    if len(t) != 3 or any(v < minimum for v in t):
        raise ValueError(f"{OP}: {name} must be 3 ints >= {minimum}, got {value!r}")
    return t


def table_rows(window) -> int:
    """Rows T of Video Swin's relative position bias table for a window (wt, wh, ww)."""
    return (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)


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
        rows = table_rows(window)
        if tuple(rel_pos_bias.shape) != (rows, num_heads):
            raise ValueError(f"{OP}: rel_pos_bias must be (T, num_heads) = ({rows}, {num_heads}) for window "
                             f"{window}, got shape {tuple(rel_pos_bias.shape)}")
    if scale is not None:
        check_positive_float(OP, "scale", scale)
    return window, shift


def _empty_like_out(query: torch.Tensor) -> torch.Tensor:
    return torch.empty(query.shape, dtype=query.dtype, device=query.device)


def _forward(query, key, value, rel_pos_bias, num_heads, window, shift, scale, backend):
    if backend == "triton":
        from ..triton.clip_window_attention import clip_window_attention_forward_triton
        return clip_window_attention_forward_triton(query, key, value, rel_pos_bias, num_heads, window, shift, scale)
    if backend in ("cpu", "cuda"):
        return torch.ops.vos_kernels.clip_window_attention_forward(query, key, value, rel_pos_bias, num_heads,
                                                                   window, shift, scale)
    return clip_window_attention_reference(query, key, value, num_heads, window, shift, rel_pos_bias, scale)


def _backward(grad_out, query, key, value, rel_pos_bias, num_heads, window, shift, scale, backend):
    """(grad_query, grad_key, grad_value, grad_rel_pos_bias (T, heads) or shape (0,))."""
    if backend == "triton":
        from ..triton.clip_window_attention import clip_window_attention_backward_triton
        return clip_window_attention_backward_triton(grad_out, query, key, value, rel_pos_bias, num_heads, window,
                                                     shift, scale)
    if backend in ("cpu", "cuda"):
        return torch.ops.vos_kernels.clip_window_attention_backward(grad_out, query, key, value, rel_pos_bias,
                                                                    num_heads, window, shift, scale)
    inputs = (query, key, value) + ((rel_pos_bias,) if rel_pos_bias is not None else ())

    def reference(q, k, v, *bias):
        return clip_window_attention_reference(q, k, v, num_heads, window, shift, bias[0] if bias else None, scale)

    _, vjp = torch.func.vjp(reference, *inputs)
    grads = vjp(grad_out)
    grad_bias = grads[3] if rel_pos_bias is not None else query.new_empty((0,))
    return tuple(g.contiguous() for g in grads[:3]) + (grad_bias,)


def _concrete(backend: str, query: torch.Tensor) -> str:
    return resolve_backend(OP, None if backend == "auto" else backend, query.device, IMPLEMENTED)


@torch.library.custom_op("vos_kernels::clip_window_attention", mutates_args=())
def clip_window_attention_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             rel_pos_bias: torch.Tensor | None, num_heads: int, window: list[int], shift: list[int],
                             scale: float, backend: str = "auto") -> torch.Tensor:
    """3-D window attention: query, key, value (B, L, H, W, C) -> (B, L, H, W, C)."""
    validate(query, key, value, num_heads, window, shift, rel_pos_bias, scale)
    return _forward(query, key, value, rel_pos_bias, num_heads, list(window), list(shift), scale,
                    _concrete(backend, query))


@clip_window_attention_op.register_fake
def _(query, key, value, rel_pos_bias, num_heads, window, shift, scale, backend="auto"):
    # Tensor checks only: under torch.compile(dynamic=True) the ints may be symbolic; the real
    # kernel validates them all.
    if key.shape != query.shape or value.shape != query.shape:
        raise ValueError(f"{OP}: query, key and value must have one shape (B, L, H, W, C), got "
                         f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    return _empty_like_out(query)


@torch.library.custom_op("vos_kernels::clip_window_attention_grad", mutates_args=())
def clip_window_attention_grad_op(grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                                  value: torch.Tensor, rel_pos_bias: torch.Tensor | None, num_heads: int,
                                  window: list[int], shift: list[int], scale: float,
                                  backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of clip_window_attention for query, key, value and the bias table (shape (0,) if none)."""
    return _backward(grad_out.to(query.dtype), query, key, value, rel_pos_bias, num_heads, list(window),
                     list(shift), scale, _concrete(backend, query))


def _fake_grads(query, rel_pos_bias):
    grad_bias = (torch.empty_like(rel_pos_bias, memory_format=torch.contiguous_format) if rel_pos_bias is not None
                 else query.new_empty((0,)))
    return _empty_like_out(query), _empty_like_out(query), _empty_like_out(query), grad_bias


@clip_window_attention_grad_op.register_fake
def _(grad_out, query, key, value, rel_pos_bias, num_heads, window, shift, scale, backend):
    return _fake_grads(query, rel_pos_bias)


def _setup_context(ctx, inputs, output):
    query, key, value, rel_pos_bias, num_heads, window, shift, scale, backend = inputs
    ctx.save_for_backward(query, key, value, rel_pos_bias)
    ctx.args = (num_heads, window, shift, scale, backend)


def _backward_formula(ctx, grad_out):
    query, key, value, rel_pos_bias = ctx.saved_tensors
    gq, gk, gv, gb = clip_window_attention_grad_op(grad_out, query, key, value, rel_pos_bias, *ctx.args)
    return gq, gk, gv, (gb if rel_pos_bias is not None else None), None, None, None, None, None


torch.library.register_autograd("vos_kernels::clip_window_attention", _backward_formula,
                                setup_context=_setup_context)

if _library.EXTENSION_LOADED:  # fake kernels of the C++ ops (they exist only when _C loaded)
    @torch.library.register_fake("vos_kernels::clip_window_attention_forward")
    def _(query, key, value, rel_pos_bias, num_heads, window, shift, scale):
        return _empty_like_out(query)

    @torch.library.register_fake("vos_kernels::clip_window_attention_backward")
    def _(grad_out, query, key, value, rel_pos_bias, num_heads, window, shift, scale):
        return _fake_grads(query, rel_pos_bias)


def clip_window_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, num_heads: int,
                          window=(2, 7, 7), shift=(0, 0, 0), rel_pos_bias: torch.Tensor | None = None,
                          scale: float | None = None, backend: str | None = None) -> torch.Tensor:
    """Multi-head attention inside 3-D windows of a clip: (B, L, H, W, C) x 3 -> (B, L, H, W, C).

    Per head (C = num_heads * d) each token i attends to the tokens j of its own window:
        out_i = sum_j softmax_j(q_i . k_j * scale + rel_pos_bias[index(i, j), head]) v_j
    Along an axis of length S with window w and shift s, token p is in window (p + (w - s) % w) // w:
    border windows are partial (no padding tokens take part), which equals Swin's cyclic shift +
    mask whenever S is a multiple of w. rel_pos_bias: Video Swin's (T, num_heads) table,
    T = (2wt-1)(2wh-1)(2ww-1), indexed like its relative_position_index (public weights load as
    they are). scale: default d ** -0.5. Inputs may be strided views; the output is contiguous.
    backend: "cpu", "cuda", "triton", "reference" or "auto" (None: use_backend context, then
    $VOS_KERNELS_BACKEND, then auto). Differentiable in query, key, value and rel_pos_bias.
    """
    window, shift = validate(query, key, value, num_heads, window, shift, rel_pos_bias, scale)
    scale = float(query.shape[-1] // num_heads) ** -0.5 if scale is None else float(scale)
    name = resolve_backend(OP, backend, query.device, IMPLEMENTED)
    if name == "reference":
        return clip_window_attention_reference(query, key, value, num_heads, window, shift, rel_pos_bias, scale)
    return clip_window_attention_op(query, key, value, rel_pos_bias, num_heads, list(window), list(shift), scale,
                                    name)
