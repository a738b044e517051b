"""3-D (shifted) window attention over a clip, exactly per the contract (docs/ops.md §4).

Along an axis of length S with window w and shift s, token p belongs to window
(p + (w - s) % w) // w. That is the same as padding (w - s) % w virtual tokens in front and
enough behind to reach a multiple of w, cutting into windows of w, and masking the virtual
tokens out as keys: what this reference does (no cyclic roll is needed).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ._precision import compute_dtype


def _position_index(window: tuple[int, int, int]) -> torch.Tensor:
    """Video Swin's relative_position_index for a window (wt, wh, ww): (N, N) int64, N = wt*wh*ww.

    Entry [i, j] indexes the bias table row of query token i and key token j, from their offset
    (dt, dh, dw) = coords_i - coords_j shifted to be non-negative.
    """
    wt, wh, ww = window
    coords = torch.stack(torch.meshgrid(torch.arange(wt), torch.arange(wh), torch.arange(ww), indexing="ij"))
    flat = coords.flatten(1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0)
    rel = rel + torch.tensor([wt - 1, wh - 1, ww - 1])
    return rel[..., 0] * (2 * wh - 1) * (2 * ww - 1) + rel[..., 1] * (2 * ww - 1) + rel[..., 2]


relative_position_index = functools.lru_cache(maxsize=16)(_position_index)


def _pads(size: int, window: int, shift: int) -> tuple[int, int, int]:
    """(front, back, number of windows) for one axis."""
    front = (window - shift) % window
    count = -(-(front + size) // window)
    return front, count * window - front - size, count


def clip_window_attention_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int,
                                    window=(2, 7, 7), shift=(0, 0, 0), rel_pos_bias: torch.Tensor | None = None,
                                    scale: float | None = None) -> torch.Tensor:
    """query, key, value (B, L, H, W, C) -> (B, L, H, W, C).

    Per head (C = num_heads * d, default scale d^-0.5) and window:
    out_i = sum_j softmax_j(q_i . k_j * scale + table[index(i, j), head]) v_j over the tokens j of
    token i's window (partial windows at the borders have fewer tokens).
    """
    dtype = compute_dtype(query.dtype)
    q, k, v = (t.to(dtype) for t in (query, key, value))
    B, L, H, W, C = q.shape
    d = C // num_heads
    scale = d ** -0.5 if scale is None else scale
    window = tuple(int(x) for x in window)
    (ft, bt, nt), (fh, bh, nh), (fw, bw, nw) = (_pads(s, w, sh) for s, w, sh in zip((L, H, W), window, shift))
    wt, wh, ww = window
    n = wt * wh * ww

    def partition(x: torch.Tensor) -> torch.Tensor:  # (B, L, H, W, C) -> (B*windows, heads, n, d)
        x = F.pad(x, (0, 0, fw, bw, fh, bh, ft, bt))
        x = x.view(B, nt, wt, nh, wh, nw, ww, num_heads, d)
        return x.permute(0, 1, 3, 5, 7, 2, 4, 6, 8).reshape(B * nt * nh * nw, num_heads, n, d)

    valid = torch.ones(1, L, H, W, 1, dtype=torch.bool, device=q.device)
    valid = F.pad(valid, (0, 0, fw, bw, fh, bh, ft, bt)).view(1, nt, wt, nh, wh, nw, ww)
    key_valid = valid.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, 1, 1, n)                  # (windows, 1, 1, n)

    scores = torch.matmul(partition(q), partition(k).transpose(-1, -2)) * scale           # (B*win, heads, n, n)
    if rel_pos_bias is not None:
        # Built on every call, not taken from the cache: a cached real tensor cannot enter the
        # fake-tensor tracing of torch.ops.vos_kernels.clip_window_attention(..., backend="reference")
        # under torch.compile (a few small ops next to the attention itself).
        index = _position_index(window).to(q.device)
        bias = rel_pos_bias.to(dtype)[index.view(-1)].view(n, n, num_heads).permute(2, 0, 1)
        scores = scores + bias
    scores = scores.view(B, nt * nh * nw, num_heads, n, n).masked_fill(~key_valid.view(1, -1, 1, 1, n), float("-inf"))
    attn = torch.softmax(scores, dim=-1).view(B * nt * nh * nw, num_heads, n, n)
    out = torch.matmul(attn, partition(v))                                                 # (B*win, heads, n, d)
    out = out.view(B, nt, nh, nw, num_heads, wt, wh, ww, d).permute(0, 1, 5, 2, 6, 3, 7, 4, 8)
    out = out.reshape(B, nt * wt, nh * wh, nw * ww, C)[:, ft:ft + L, fh:fh + H, fw:fw + W]
    return out.contiguous().to(query.dtype)
