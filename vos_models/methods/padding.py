"""Padding to a multiple of the network stride, and cropping back: the one helper all methods use.

Every method pads its input so that each side is a multiple of its output stride, and crops
its output back to the input size. The public implementations differ only in three choices,
which are arguments here:

    method  stride  side that gets the odd pixel  always pads  fill
    RGMP    32      end (right / bottom)          yes          zeros     (public ``utils.py``)
    CRVOS   16      start (left / top)            no           reflect   (``get_required_padding``)
    TTVOS   16      start (left / top)            no           reflect   (``get_required_padding``)
    PCVOS   16      end (right / bottom)          no           zeros     (``pad_divide_by``)

A padding is ``(left, right, top, bottom)``, the order ``F.pad`` takes for the last two dims.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

Padding = tuple[int, int, int, int]
ODD_PIXEL_SIDES = ("start", "end")
PAD_MODES = ("constant", "reflect")


def _split(total: int, odd_pixel: str) -> tuple[int, int]:
    before = (total + 1) // 2 if odd_pixel == "start" else total // 2
    return before, total - before


def stride_padding(height: int, width: int, stride: int, *, odd_pixel: str = "start",
                   always_pad: bool = False) -> Padding:
    """``(left, right, top, bottom)`` that takes ``(height, width)`` to multiples of ``stride``.

    Per side of length n the extra is ``e = (stride - n % stride) % stride`` (0 for a multiple),
    or ``stride - n % stride`` with ``always_pad`` (RGMP's "next multiple strictly above n",
    so a multiple of 32 still gets 32). ``e`` is split in two; ``odd_pixel`` says which side
    gets the odd pixel: ``"start"`` (left / top: ``ceil(e / 2)`` before) or ``"end"``
    (``floor(e / 2)`` before).
    """
    if odd_pixel not in ODD_PIXEL_SIDES:
        raise ValueError(f"stride_padding: odd_pixel must be one of {ODD_PIXEL_SIDES}, got {odd_pixel!r}")
    if stride < 1:
        raise ValueError(f"stride_padding: stride must be >= 1, got {stride}")

    def extra(n: int) -> int:
        return stride - n % stride if always_pad else (stride - n % stride) % stride

    top, bottom = _split(extra(height), odd_pixel)
    left, right = _split(extra(width), odd_pixel)
    return left, right, top, bottom


def pad(x: Tensor, padding: Padding, mode: str = "constant") -> Tensor:
    """Pad the last two dims of ``(N, C, H, W)`` by ``(left, right, top, bottom)`` with zeros
    (``mode="constant"``) or by reflection; a no-op for zero padding."""
    if mode not in PAD_MODES:
        raise ValueError(f"pad: mode must be one of {PAD_MODES}, got {mode!r}")
    if not any(padding):
        return x
    if mode == "reflect" and (max(padding[:2]) >= x.shape[-1] or max(padding[2:]) >= x.shape[-2]):
        raise ValueError(f"pad: input {tuple(x.shape[-2:])} is too small to reflect-pad by {padding} "
                         "(left, right, top, bottom)")
    return F.pad(x, padding, mode=mode)


def crop(x: Tensor, padding: Padding) -> Tensor:
    """Undo :func:`pad` on the last two dims (a view)."""
    left, right, top, bottom = padding
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]
