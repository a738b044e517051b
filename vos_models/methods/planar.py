"""Two-channel maps at full resolution, computed one channel at a time.

A method's per-object (background, foreground) map is tiny in channels and large in pixels.
Under ``torch.compile`` on CPU, a two-channel tensor laid out channels-last (what the
convolutions before it produce) is vectorised by Inductor along its two channels, with the
pixel loop serial: 5-10x slower than planar maps. Computing each channel as its own (N, H, W)
map leaves no layout to choose, and the result is the same function:

    softmax([a, b])_1 = e^b / (e^a + e^b) = sigmoid(b - a),   softmax([a, b])_0 = sigmoid(a - b)

(equal up to float32 rounding, a few ulp), and pooling a pair ``[1 - p, p]`` is pooling each
channel alone (bit for bit: ``avg_pool2d`` treats channels independently).
"""
from __future__ import annotations

import torch
from torch import Tensor


def two_way_softmax(logits: Tensor) -> Tensor:
    """(N, 2, H, W) logits (background, foreground) -> (N, 2, H, W) float32 softmax over dim 1,
    as ``[sigmoid(l0 - l1), sigmoid(l1 - l0)]`` (the difference is taken in float32)."""
    if logits.dim() != 4 or logits.shape[1] != 2:
        raise ValueError(f"two_way_softmax: logits must be (N, 2, H, W), got {tuple(logits.shape)}")
    if torch.onnx.is_in_onnx_export():
        # Exported (vos_models.export): ONNX Runtime's Sigmoid is accurate to about 6e-8 in
        # absolute terms only (sigmoid(-16) = 1.1e-7 comes out as 6e-8), and CRVOS's
        # aggregation divides by the "not object" probability clamped at 1e-7, so with several
        # saturated objects its output moved by up to 0.1. ONNX Softmax (exp-based) keeps the
        # relative accuracy; it is the same function.
        return torch.softmax(logits.float(), dim=1)
    difference = logits[:, 1].float() - logits[:, 0].float()                # (N, H, W)
    return torch.stack([torch.sigmoid(-difference), torch.sigmoid(difference)], dim=1)


def pooled_pair(foreground: Tensor, pool) -> Tensor:
    """(N, H, W) foreground probability -> ``pool`` of the pair ``[1 - p, p]``, (N, 2, h, w),
    each channel pooled alone (``pool`` maps (N, 1, H, W) -> (N, 1, h, w))."""
    if foreground.dim() != 3:
        raise ValueError(f"pooled_pair: foreground must be (N, H, W), got {tuple(foreground.shape)}")
    p = foreground.unsqueeze(1)
    return torch.cat([pool(1 - p), pool(p)], dim=1)
