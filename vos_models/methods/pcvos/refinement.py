"""Intra-clip refinement (ICR, PCVOS Sec. 3.4): a 2-block windowed transformer over a clip.

The query/key of the attention come from the clip's local keys `k_intra` (width 256) and the
values are the memory readouts (width 512):

    v_attn  = V + proj(Attn(phi(K), phi(K)) psi(V))          phi = LayerNorm -> Linear (shared q/k)
    v_intra = v_attn + FFN(LayerNorm(v_attn))                 FFN = fc2(GELU(fc1(.))), ratio 4

Attention runs inside 3-D windows (2, 7, 7) of the (L, h, w) clip grid, with Video Swin's cyclic
shift (1, 3, 3) on odd blocks and its relative position bias table, through
`vos_kernels.clip_window_attention`. Parameter names follow the public `ICR` / `BasicLayer` /
`SwinTransformerBlock3D` / `WindowAttention3D` (`layers.0.blocks.{i}.attn.qk` ...).

Padding (`docs/ops.md`, section 4, `clip_window_attention`): the public model zero-pads the
*normalised* tokens at the end of each axis up to a multiple of the window, and those padded
tokens take part in attention (their q = k = qk.bias, their value = v.bias, they are never
masked as padding). We pad the same way before the call, so every window is full and the
kernel's partial-window semantics never apply. Like Video Swin's `get_window_size`, an axis
no longer than its window uses a window equal to its length and no shift.

The public model has no `relative_position_index` weight for us to use: the kernel indexes
the bias table by the (dt, dh, dw) offset exactly as that index does. One known divergence:
when h or w is smaller than 7 (inputs under 112 px), the public code slices the full-window
index with `[:N, :N]`, which pairs tokens with wrong offsets; we use the true offsets there.
(Shrinking along time only, L <= 2, is exact: the first N rows of the index are the d=0 slice.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import vos_kernels
from vos_models.errors import VOSInputError


def effective_window(size: tuple[int, int, int], window: tuple[int, int, int],
                     shift: tuple[int, int, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Video Swin's rule: an axis of length <= its window uses window = length and shift 0."""
    win, sh = list(window), list(shift)
    for axis, length in enumerate(size):
        if length <= window[axis]:
            win[axis], sh[axis] = length, 0
    return tuple(win), tuple(sh)


class _WindowAttention(nn.Module):
    """Windowed attention with a shared q/k projection (`shared_proj`) and a separate value path."""

    def __init__(self, key_dim: int, value_dim: int, num_heads: int, window: tuple[int, int, int]):
        super().__init__()
        if key_dim % num_heads or value_dim % num_heads:
            raise VOSInputError(f"ICR: key_dim {key_dim} and value_dim {value_dim} must be divisible "
                             f"by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window = tuple(window)
        self.scale = (key_dim // num_heads) ** -0.5
        table_rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_rows, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.qk = nn.Linear(key_dim, key_dim)
        self.v = nn.Linear(value_dim, value_dim)
        self.proj = nn.Linear(value_dim, value_dim)

    def forward(self, key: Tensor, value: Tensor, window, shift, crop) -> Tensor:
        """key (B, Lp, Hp, Wp, Ck), value (B*O, Lp, Hp, Wp, Cv), padded -> (B*O, L, H, W, Cv)."""
        qk = _per_object(self.qk(key), value.shape[0] // key.shape[0])
        value = self.v(value)
        # The op takes one width for q, k and v; here q/k are narrower (256) than v (512). Zero
        # channels appended to each head's q and k leave the scores unchanged (the scale is
        # passed explicitly), so one call serves both widths.
        heads, dq, dv = self.num_heads, qk.shape[-1] // self.num_heads, value.shape[-1] // self.num_heads
        width = max(dq, dv)
        qk, value = _widen_heads(qk, heads, width), _widen_heads(value, heads, width)
        out = vos_kernels.clip_window_attention(
            qk, qk, value, num_heads=heads, window=window, shift=shift,
            rel_pos_bias=self._bias_for(window), scale=self.scale)
        L, H, W = crop
        out = out[:, :L, :H, :W]
        if dv < width:
            out = out.unflatten(-1, (heads, width))[..., :dv].flatten(-2)
        # A cropped view cannot be flattened to 2-D: on it, linear runs a batched matmul with the
        # weight copied once per leading index (bfloat16 autocast on CPU: 750 copies of the
        # 512 x 512 weight per call at 480p, 5 objects). One copy of the tokens is far cheaper.
        return self.proj(out.contiguous())

    def _bias_for(self, window) -> Tensor:
        """The bias table for a (possibly shrunk) window: rows for offsets the window can hold."""
        if tuple(window) == self.window:
            return self.relative_position_bias_table
        wt, wh, ww = self.window
        table = self.relative_position_bias_table.view(2 * wt - 1, 2 * wh - 1, 2 * ww - 1, -1)
        st, sh, sw = window
        table = table[wt - st: wt + st - 1, wh - sh: wh + sh - 1, ww - sw: ww + sw - 1]
        return table.reshape(-1, table.shape[-1])



def _widen_heads(x: Tensor, heads: int, width: int) -> Tensor:
    """(..., heads * d) -> (..., heads * width), zero channels appended to every head."""
    d = x.shape[-1] // heads
    if d == width:
        return x
    return F.pad(x.unflatten(-1, (heads, d)), (0, width - d)).flatten(-2)


def _per_object(x: Tensor, objects: int) -> Tensor:
    """(B, ...) -> (B*O, ...): the key is shared by the O objects of a video (a view when B = 1)."""
    if objects == 1:
        return x
    if x.shape[0] == 1:
        return x.expand(objects, *x.shape[1:])
    return x.repeat_interleave(objects, 0)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RefinementBlock(nn.Module):
    """One ICR block (`SwinTransformerBlock3D` with a separate value stream)."""

    def __init__(self, key_dim: int, value_dim: int, num_heads: int, window, shift, mlp_ratio: float):
        super().__init__()
        self.window, self.shift = tuple(window), tuple(shift)
        self.norm1 = nn.LayerNorm(key_dim)
        self.norm1_v = nn.LayerNorm(value_dim)
        self.attn = _WindowAttention(key_dim, value_dim, num_heads, self.window)
        self.norm2 = nn.LayerNorm(value_dim)
        self.mlp = _Mlp(value_dim, int(value_dim * mlp_ratio))

    def forward(self, key: Tensor, value: Tensor) -> Tensor:
        """key (B, L, H, W, Ck), value (B*O, L, H, W, Cv) -> refined value, same shape."""
        size = tuple(value.shape[1:4])
        window, shift = effective_window(size, self.window, self.shift)
        pad = []  # F.pad order: last spatial axis first; pad only at the end of each axis
        for length, w in zip(reversed(size), reversed(window)):
            pad += [0, (w - length % w) % w]
        key_n = F.pad(self.norm1(key), [0, 0] + pad)
        value_n = F.pad(self.norm1_v(value), [0, 0] + pad)
        value = value + self.attn(key_n, value_n, window, shift, size)
        return value + self.mlp(self.norm2(value))


class _Stage(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class IntraClipRefinement(nn.Module):
    """The ICR module: `depth` blocks (shift on odd blocks), then a final LayerNorm.

    forward(key (B, L, h, w, key_dim), value (B, O, L, h, w, value_dim)) -> same shape as value:
    B videos (clips) of O objects each; the key is shared by the objects of a clip.
    """

    def __init__(self, key_dim: int = 256, value_dim: int = 512, depth: int = 2, num_heads: int = 1,
                 window=(2, 7, 7), mlp_ratio: float = 4.0):
        super().__init__()
        shift = tuple(w // 2 for w in window)
        blocks = [RefinementBlock(key_dim, value_dim, num_heads, window,
                                  (0, 0, 0) if i % 2 == 0 else shift, mlp_ratio) for i in range(depth)]
        self.layers = nn.ModuleList([_Stage(blocks)])
        self.norm = nn.LayerNorm(value_dim)

    def forward(self, key: Tensor, value: Tensor) -> Tensor:
        if key.dim() != 5 or value.dim() != 6 or value.shape[0] != key.shape[0] or key.shape[1:4] != value.shape[2:5]:
            raise ValueError(f"ICR: key must be (B, L, h, w, C) and value (B, O, L, h, w, Cv) on the same "
                             f"grid, got {tuple(key.shape)} and {tuple(value.shape)}")
        shape = value.shape
        value = value.flatten(0, 1)
        for block in self.layers[0].blocks:
            value = block(key, value)
        return self.norm(value).view(shape)
