"""The Clue: CRVOS's specifier (paper §2.2).

The Clue of one object is its previous coarse mask at 1/16 of the (padded) input resolution,
two channels ``[not object, object]``, followed by three CoordConv channels:

    row[i, j] = i / (h - 1) * 2 - 1        (public name ``xx_channel``; constant along a row)
    col[i, j] = j / (w - 1) * 2 - 1        (public name ``yy_channel``)
    r[i, j]   = sqrt(row^2 + col^2)

so a Clue is ``(N, 5, h, w)``: ``[mask_bg, mask_fg, row, col, r]``.

The coarse mask is the average of each 16 x 16 cell (``avg_pool2d`` with kernel and stride 16)
of the full-resolution pair ``[1 - p, p]``, where ``p`` is the given mask on the frame that
brings an object, and the post-aggregation probability of that object afterwards.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..planar import pooled_pair

CLUE_STRIDE = 16
CLUE_CHANNELS = 5


def coarse_mask(prob: Tensor, stride: int = CLUE_STRIDE) -> Tensor:
    """``(N, H, W)`` foreground probabilities -> ``(N, 2, H/stride, W/stride)`` coarse mask.

    Channel 0 is the pooled ``1 - p``, channel 1 the pooled ``p`` (the public code pools the
    two-channel map; pooling ``1 - p`` itself keeps the float rounding of the public code).
    """
    if prob.dim() != 3:
        raise ValueError(f"coarse_mask: prob must be (N, H, W), got shape {tuple(prob.shape)}")
    return pooled_pair(prob, lambda p: _cell_means(p, stride))


def _cell_means(x: Tensor, stride: int) -> Tensor:
    """``avg_pool2d(x, stride)`` of an (N, 1, H, W) map whose sides are multiples of ``stride``,
    as a mean over reshaped cells: the same average (summed in another order: float32 rounding),
    which Inductor vectorises along rows (its avg_pool2d lowering of a 16 x 16 window does
    not)."""
    n, c, height, width = x.shape
    if height % stride or width % stride:
        return F.avg_pool2d(x, stride)
    return x.reshape(n, c, height // stride, stride, width // stride, stride).mean(dim=(3, 5))


def coordinate_channels(height: int, width: int, *, device=None, dtype=torch.float32) -> Tensor:
    """The three CoordConv channels ``(3, height, width)``: row, column, radius.

    The indices are integers cast to float before the division, as in the public ``AddCoords``
    (its ``int32`` ``matmul`` of ranges and ones), so the values are bit-identical to it.
    A side of length 1 divides by zero there (NaN); we refuse it instead.
    """
    if height < 2 or width < 2:
        raise ValueError(
            f"coordinate_channels: the Clue needs at least 2 x 2 cells (inputs of at least "
            f"{2 * CLUE_STRIDE} x {2 * CLUE_STRIDE} pixels), got {height} x {width}")
    rows = torch.arange(height, dtype=torch.int32).to(dtype).div(height - 1).mul(2).sub(1)
    cols = torch.arange(width, dtype=torch.int32).to(dtype).div(width - 1).mul(2).sub(1)
    row = rows[:, None].expand(height, width)
    col = cols[None, :].expand(height, width)
    radius = torch.sqrt(row.pow(2) + col.pow(2))
    return torch.stack([row, col, radius]).to(device)


def build_clue(mask: Tensor) -> Tensor:
    """``(N, 2, h, w)`` coarse masks -> ``(N, 5, h, w)`` Clues (mask channels first)."""
    if mask.dim() != 4 or mask.shape[1] != 2:
        raise ValueError(f"build_clue: mask must be (N, 2, h, w), got shape {tuple(mask.shape)}")
    n, _, h, w = mask.shape
    coords = coordinate_channels(h, w, device=mask.device, dtype=mask.dtype)
    return torch.cat([mask, coords.unsqueeze(0).expand(n, -1, -1, -1)], dim=1)
