"""The public CRVOS padding rule: reflect-pad to a multiple of 16, odd pixel on the left/top."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def required_padding(height: int, width: int, multiple: int) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` that make ``height``, ``width`` multiples of ``multiple``.

    The left and top sides get the odd pixel, as ``get_required_padding`` in CV-IP/CRVOS.
    """
    pad_h = (multiple - height % multiple) % multiple
    pad_w = (multiple - width % multiple) % multiple
    return (pad_w + 1) // 2, pad_w // 2, (pad_h + 1) // 2, pad_h // 2


def reflect_pad(x: Tensor, padding: tuple[int, int, int, int]) -> Tensor:
    """Reflect-pad the last two dims of ``(N, C, H, W)``; a no-op for zero padding."""
    if not any(padding):
        return x
    if padding[0] >= x.shape[-1] or padding[2] >= x.shape[-2]:
        raise ValueError(f"reflect_pad: input {tuple(x.shape[-2:])} is too small to reflect-pad by "
                         f"{padding} (left, right, top, bottom)")
    return F.pad(x, padding, mode="reflect")


def unpad(x: Tensor, padding: tuple[int, int, int, int]) -> Tensor:
    """Crop the padding of ``reflect_pad`` from the last two dims."""
    left, right, top, bottom = padding
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]
