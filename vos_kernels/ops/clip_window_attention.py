"""clip_window_attention (docs/ops.md §4): the declaration of the op and its public function.

Registered by vos_kernels._registry as
  torch.ops.vos_kernels.clip_window_attention(query, key, value, rel_pos_bias, num_heads, window,
      shift, scale, backend='auto')                      the public op
  torch.ops.vos_kernels.clip_window_attention_fused(..., backend)   cpu/cuda/triton, autograd
  torch.ops.vos_kernels.clip_window_attention_fused_grad(grad_out, ..., backend)
      -> (grad_query, grad_key, grad_value, grad_rel_pos_bias (T, heads) or shape (0,))
Every backend reads each window's tokens in place from the (possibly strided) inputs: no pad,
roll or partition copies.
"""
from __future__ import annotations

import functools

import torch

from .._checks import check_int, check_positive_float, check_same_device, check_same_dtype, check_tensor
from .._registry import Backward, FusedOp, Kernel, OpDefinition, define_op
from ..reference.clip_window_attention import clip_window_attention_reference

OP = "clip_window_attention"


def _triple(name: str, value, minimum: int) -> tuple[int, int, int]:
    """Three ints >= minimum (floats are refused, not truncated)."""
    try:
        t = tuple(value)
    except TypeError:
        raise TypeError(f"{OP}: {name} must be a sequence of 3 ints, got {value!r}") from None
    if len(t) != 3:
        raise ValueError(f"{OP}: {name} must be 3 ints >= {minimum}, got {value!r}")
    return tuple(check_int(OP, f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(t))


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
    check_int(OP, "num_heads", num_heads, minimum=1)
    channels = query.shape[-1]
    if channels == 0:
        raise ValueError(f"{OP}: query, key and value must have C >= 1 channels, got shape {tuple(query.shape)}")
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


def _grads_fake(grad_out, query, key, value, rel_pos_bias, *_):
    """(grad_query, grad_key, grad_value, grad_rel_pos_bias (T, heads) or shape (0,))."""
    grad_bias = (torch.empty_like(rel_pos_bias, memory_format=torch.contiguous_format) if rel_pos_bias is not None
                 else query.new_empty((0,)))
    return _empty_like_out(query), _empty_like_out(query), _empty_like_out(query), grad_bias


_ARGUMENTS = ("Tensor query, Tensor key, Tensor value, Tensor? rel_pos_bias, SymInt num_heads, SymInt[] window, "
              "SymInt[] shift, float scale")

FUSED = FusedOp(
    "clip_window_attention_fused", _ARGUMENTS, "Tensor",
    forward=Kernel("clip_window_attention_forward", "clip_window_attention.clip_window_attention_forward_triton",
                   fake=lambda query, *_: _empty_like_out(query)),
    backward=Backward(
        Kernel("clip_window_attention_backward", "clip_window_attention.clip_window_attention_backward_triton",
               fake=_grads_fake),
        saved=lambda inputs, output: inputs, grads_for=(0, 1, 2, 3)),
    grad_arguments=f"Tensor grad_out, {_ARGUMENTS}", grad_returns="(Tensor, Tensor, Tensor, Tensor)")


def _validated(query, key, value, rel_pos_bias, num_heads, window, shift, scale):
    window, shift = validate(query, key, value, num_heads, window, shift, rel_pos_bias, scale)
    scale = float(query.shape[-1] // num_heads) ** -0.5 if scale is None else float(scale)
    return query, key, value, rel_pos_bias, num_heads, list(window), list(shift), scale


def _reference(query, key, value, rel_pos_bias, num_heads, window, shift, scale):
    return clip_window_attention_reference(query, key, value, num_heads, window, shift, rel_pos_bias, scale)


# The CUDA kernel's block count of threads and its dynamic shared memory, mirrored from
# csrc/cuda/clip_window_attention_kernel.cu (`shared_bytes`; `make gpu-ready` checks that the two agree).
CUDA_THREADS = 64


def cuda_shared_bytes(backward: bool, acc_bytes: int, tokens: int, head_dim: int, table_rows: int) -> int:
    """Bytes of shared memory one CUDA block needs: K, V (and Q, dO backward) of a window of
    `tokens` positions plus per-thread accumulators of length head_dim, in the accumulation type."""
    accumulators = (4 * tokens * head_dim + 2 * tokens + 2 * CUDA_THREADS * head_dim + table_rows if backward
                    else 2 * tokens * head_dim + 2 * CUDA_THREADS * head_dim)
    return acc_bytes * accumulators + 4 * tokens


# The smallest opt-in shared memory per block among the GPUs we build for (sm_80: A100's 163 KB;
# sm_90 allows 227 KB), for questions asked without a device (`_dispatch.would_serve`).
SMALLEST_TARGET_OPTIN_BYTES = 166912


def cuda_unsupported(*, window=None, head_dim=None, dtype=None, backward=False,
                     optin_bytes=SMALLEST_TARGET_OPTIN_BYTES, **_ignored) -> str | None:
    """Why the CUDA kernel cannot serve a window (wt, wh, ww) at this head dim (None when it can)."""
    if window is None or head_dim is None:
        return None
    tokens = window[0] * window[1] * window[2]
    need = cuda_shared_bytes(backward, 8 if dtype == torch.float64 else 4, tokens, head_dim, table_rows(window))
    if need <= optin_bytes:
        return None
    return (f"{OP}: the cuda backend needs {need} bytes of shared memory per block for a window of {tokens} tokens "
            f"at head dim {head_dim}; the GPU allows {optin_bytes}")


@functools.lru_cache(maxsize=None)
def _shared_memory_optin(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).shared_memory_per_block_optin


def _preference(query, key, value, rel_pos_bias, num_heads, window, shift, scale):
    """On CUDA, "auto" takes Triton first when the CUDA kernel's window does not fit in shared
    memory (e.g. PCVOS: 98 tokens at head dim 512 need ~650 KB forward, the H100/H200 allow
    227 KB); Triton tiles the head dim and serves any size. The backward pass runs on the
    forward's backend, so its (larger) need counts when a gradient will be taken."""
    if query.device.type != "cuda":
        return None
    backward = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (query, key, value, rel_pos_bias))
    index = query.device.index if query.device.index is not None else torch.cuda.current_device()
    if cuda_unsupported(window=window, head_dim=query.shape[-1] // num_heads, dtype=query.dtype, backward=backward,
                        optin_bytes=_shared_memory_optin(index)) is None:
        return None
    return {"cuda": ("triton", "cuda")}


CLIP_WINDOW_ATTENTION = define_op(OpDefinition(
    OP, f"({_ARGUMENTS}, str backend='auto') -> Tensor", validate=_validated, reference=_reference, fused=FUSED,
    preference=_preference))


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
    return CLIP_WINDOW_ATTENTION(query, key, value, rel_pos_bias, num_heads, window, shift, scale, backend=backend)


# The backends this op implements, from its declaration (read by _dispatch.would_serve and make gpu-ready).
IMPLEMENTED = CLIP_WINDOW_ATTENTION.backends
