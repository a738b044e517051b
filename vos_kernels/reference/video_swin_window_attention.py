"""Video-Swin-style eager 3-D window attention: explicit pad + cyclic shift + mask + partition.

This is how Video Swin (and PCVOS's public code) compute shifted window attention, with q, k,
v given instead of projected from x: pad every axis up to a multiple of its window with zero
tokens, roll by -shift, cut into windows, attend with the relative position bias plus Swin's
-100 mask between tokens that came from different regions of the roll, reverse the partition,
roll back and crop. Unlike `clip_window_attention`, padded zero tokens DO take part as keys;
the two agree (up to exp(-100) ~ 4e-44) whenever every axis is a multiple of its window.
Video Swin also shrinks the window to the input size on axes shorter than it; that is a model
decision, not done here.

Used by the tests (the equality above) and as the benchmark peers: `attention="eager"` is the
matmul-softmax-matmul of Video Swin, `attention="sdpa"` runs the same partitioned windows
through F.scaled_dot_product_attention (bias + mask as a float attn_mask).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ._precision import compute_dtype
from .clip_window_attention import relative_position_index


@functools.lru_cache(maxsize=16)
def _shift_mask(padded: tuple[int, int, int], window: tuple[int, int, int],
                shift: tuple[int, int, int]) -> torch.Tensor:
    """Swin's attention mask for the rolled, padded clip: (windows, n, n), 0 or -100."""
    label = torch.zeros(padded, dtype=torch.float64)
    count = 0
    slices = [(slice(-w), slice(-w, -s), slice(-s, None)) if s else (slice(None),) for w, s in zip(window, shift)]
    for st in slices[0]:
        for sh in slices[1]:
            for sw in slices[2]:
                label[st, sh, sw] = count
                count += 1
    windows = _partition(label[None, ..., None], window).squeeze(-1)                      # (windows, n)
    return (windows[:, None, :] != windows[:, :, None]).to(torch.float64) * -100.0


def _partition(x: torch.Tensor, window) -> torch.Tensor:
    """(B, D, H, W, C) with every axis a multiple of its window -> (B * windows, n, C)."""
    B, D, H, W, C = x.shape
    wt, wh, ww = window
    x = x.view(B, D // wt, wt, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(-1, wt * wh * ww, C)


def _reverse(windows: torch.Tensor, window, B: int, D: int, H: int, W: int) -> torch.Tensor:
    """(B * windows, n, C) -> (B, D, H, W, C)."""
    wt, wh, ww = window
    x = windows.view(B, D // wt, H // wh, W // ww, wt, wh, ww, -1).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(B, D, H, W, -1)


def video_swin_window_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int,
                                window=(2, 7, 7), shift=(0, 0, 0), rel_pos_bias: torch.Tensor | None = None,
                                scale: float | None = None, attention: str = "eager") -> torch.Tensor:
    """query, key, value (B, L, H, W, C) -> (B, L, H, W, C), Video Swin's way (see module doc)."""
    if attention not in ("eager", "sdpa"):
        raise ValueError(f"video_swin_window_attention: attention must be 'eager' or 'sdpa', got {attention!r}")
    dtype = compute_dtype(query.dtype)
    B, L, H, W, C = query.shape
    d = C // num_heads
    scale = d ** -0.5 if scale is None else scale
    window, shift = tuple(int(x) for x in window), tuple(int(x) for x in shift)
    pads = [(-size) % w for size, w in zip((L, H, W), window)]
    padded = (L + pads[0], H + pads[1], W + pads[2])
    n = window[0] * window[1] * window[2]

    def to_windows(x: torch.Tensor) -> torch.Tensor:                                  # -> (B, nW, heads, n, d)
        x = F.pad(x.to(dtype), (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        if any(shift):
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        return _partition(x, window).view(B, -1, n, num_heads, d).transpose(2, 3)

    q, k, v = to_windows(query), to_windows(key), to_windows(value)
    bias = torch.zeros((), dtype=dtype, device=query.device)
    if rel_pos_bias is not None:
        index = relative_position_index(window).to(query.device)
        bias = rel_pos_bias.to(dtype)[index.view(-1)].view(n, n, num_heads).permute(2, 0, 1)   # (heads, n, n)
    if any(shift):
        mask = _shift_mask(padded, window, shift).to(device=query.device, dtype=dtype)       # (nW, n, n)
        bias = bias + mask[:, None]                                                          # (nW, heads, n, n)
    if attention == "sdpa":  # 4-D (B * nW, heads, n, d): the layout CPU's fused SDPA kernels take
        flat = lambda x: x.reshape(-1, num_heads, n, x.shape[-1])                          # noqa: E731
        mask = flat(bias.expand(B, -1, num_heads, n, n)) if bias.dim() == 4 else (bias if bias.dim() else None)
        out = F.scaled_dot_product_attention(flat(q), flat(k), flat(v), attn_mask=mask, scale=scale)
        out = out.view(q.shape)
    else:
        attn = torch.softmax(q @ k.transpose(-1, -2) * scale + bias, dim=-1)
        out = attn @ v                                                                       # (B, nW, heads, n, d)
    out = _reverse(out.transpose(2, 3).reshape(-1, n, C), window, B, *padded)
    if any(shift):
        out = torch.roll(out, shifts=shift, dims=(1, 2, 3))
    return out[:, :L, :H, :W].contiguous().to(query.dtype)
