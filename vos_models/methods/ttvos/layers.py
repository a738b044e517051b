"""Parameter-free pieces of TTVOS: coordinate channels, mask pooling, aggregation.

Everything here follows the public TTVOS implementation (HYOJINPARK/TTVOS, files
``models/layers.py`` and ``models/VOS_model.py``) operation for operation, because the parity
fixture compares against it at 1e-5.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import vos_kernels

#: Side length the input is padded to a multiple of (the backbone's output stride); reflect
#: padding with the odd pixel left / top (public ``get_required_padding``), see ``methods.padding``.
PAD_MULTIPLE = 16
#: Clamp of the soft aggregation (public ``softmax_aggregate``).
AGGREGATION_EPS = 1e-7


def coordinate_channels(height: int, width: int, *, device=None, dtype=torch.float32) -> Tensor:
    """The three coordinate channels of the attention clue, shape (3, height, width).

    Channel 0: cy = row / (height - 1) * 2 - 1 (varies down the rows);
    channel 1: cx = col / (width - 1) * 2 - 1;
    channel 2: r = sqrt(cy^2 + cx^2).
    Computed in float32 from integer indices, as the public ``AddCoords(with_r=True)``.
    A side of length 1 would divide 0 by 0 (NaN, as in the public code); the stride-8 map of a
    frame padded to a multiple of 16 has sides of at least 2, so it cannot happen here.
    """
    rows = torch.arange(height, dtype=torch.int32, device=device).float()
    cols = torch.arange(width, dtype=torch.int32, device=device).float()
    cy = (rows / (height - 1) * 2 - 1).reshape(height, 1).expand(height, width)
    cx = (cols / (width - 1) * 2 - 1).reshape(1, width).expand(height, width)
    r = torch.sqrt(cy.pow(2) + cx.pow(2))
    return torch.stack([cy, cx, r]).to(dtype)


def add_coordinates(features: Tensor) -> Tensor:
    """(B, C, h, w) -> (B, C + 3, h, w): the features followed by cy, cx, r."""
    b, _, h, w = features.shape
    coords = coordinate_channels(h, w, device=features.device, dtype=features.dtype)
    return torch.cat([features, coords.unsqueeze(0).expand(b, 3, h, w)], dim=1)


def pool_mask(mask_pair: Tensor, times: int = 3) -> Tensor:
    """Bring a (B, 2, H, W) (background, foreground) pair to stride 2**times.

    ``times`` applications of avg_pool2d(kernel 3, stride 2, padding 1) with PyTorch's
    defaults (count_include_pad=True: border windows divide by 9), as the public code does;
    240 x 432 -> 120 x 216 -> 60 x 108 -> 30 x 54 for times = 3.
    """
    for _ in range(times):
        mask_pair = F.avg_pool2d(mask_pair, kernel_size=3, stride=2, padding=1)
    return mask_pair


def aggregate_objects(object_prob: Tensor, eps: float = AGGREGATION_EPS) -> Tensor:
    """Merge per-object (background, foreground) softmaxes into one distribution.

    object_prob: (O, 2, H, W), each object's own softmax (channel 0 background).
    Returns (1, O + 1, H, W), channel 0 background, channel k object k.

    This is the public TTVOS ``softmax_aggregate``, run by the fused op
    ``vos_kernels.min_background_aggregate`` (its eager reference inside
    ``vos_kernels.use_backend("reference")``), and NOT ``vos_kernels.soft_aggregate`` (RGMP Eq. 1).
    The two differ in the background: RGMP takes bg = prod_k (1 - p_k), the public code takes
    b = min_k bg_k, the smallest of the objects' own background probabilities; and the public
    object odds use the softmax's own background channel, c(fg_k) / c(bg_k), rather than
    c(p_k) / c(1 - p_k) (the two differ by the rounding of 1 - fg_k, up to 1.7e-5 on the
    parity fixture). With c(x) = clamp(x, eps, 1 - eps):

        o_bg = c(b) / c(1 - b),   o_k = c(fg_k) / c(bg_k),   P = o / (o_bg + sum_k o_k).

    The sum runs over the odds in the order (bg, 1, ..., O), as the public code.
    """
    if object_prob.dim() != 4 or object_prob.shape[1] != 2:
        raise ValueError(f"aggregate_objects: object_prob must be (O, 2, H, W), got {tuple(object_prob.shape)}")
    return vos_kernels.min_background_aggregate(object_prob.unsqueeze(0), eps=eps)
