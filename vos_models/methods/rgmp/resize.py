"""Padding and multi-scale resizing exactly as the public RGMP test code does them.

Facts taken from seoungwugoh/RGMP (``utils.py``), checked against the parity fixture:

* Padding: each side length n becomes ``n + 32 - n % 32`` (always adds, even 32 to a multiple
  of 32); the extra is split ``floor(total / 2)`` before and the rest after, zero-filled (frames
  in [0, 1] space, before normalisation): :func:`padding_for`, through the shared
  ``vos_models.methods.padding``.
* Scale s != 1: the working size is ``m = int(n * s)`` rounded up the same way,
  ``m + 32 - m % 32``; frames and masks are resized to it, and the network's object probability
  is resized back, with OpenCV ``INTER_LINEAR`` on float32 (half-pixel-centred bilinear, no
  antialiasing). ``F.interpolate(mode="bilinear", align_corners=False)`` computes the same map
  within ~1e-5 (the fixture's README measured 1.4e-6 on the final output), so the ``"torch"``
  resizer is offered for GPU tensors, where an OpenCV round trip through host memory would cost
  more than the network.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..padding import Padding, stride_padding

RESIZERS = ("opencv", "torch")


def round_up_past_32(n: int) -> int:
    """The public rule: the next multiple of 32 strictly above n (n=256 -> 288)."""
    return n + 32 - n % 32


def padding_for(height: int, width: int) -> Padding:
    """(left, right, top, bottom) zero padding that takes (H, W) to the public working size
    (:func:`round_up_past_32` per side, the odd pixel after)."""
    return stride_padding(height, width, 32, odd_pixel="end", always_pad=True)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Working size of one scale: (H, W) itself for scale 1.0, else each side
    ``int(n * scale)`` rounded up past a multiple of 32 (256 x 448 at 0.5 -> 160 x 256)."""
    if scale == 1.0:
        return height, width
    return round_up_past_32(int(height * scale)), round_up_past_32(int(width * scale))


def default_resizer(device: torch.device) -> str:
    """OpenCV (the public code's resizer) for CPU tensors, torch elsewhere."""
    return "opencv" if device.type == "cpu" else "torch"


def resize_bilinear(x: Tensor, size: tuple[int, int], resizer: str) -> Tensor:
    """Bilinearly resize x (B,C,H,W) to ``size`` = (h, w), half-pixel centres, no antialiasing.

    ``resizer="opencv"`` calls ``cv2.resize(INTER_LINEAR)`` on float32 host copies (channels
    last, as the public code does); ``"torch"`` uses ``F.interpolate``. Not differentiable with
    OpenCV: inference only.
    """
    if resizer not in RESIZERS:
        raise ValueError(f"resize_bilinear: resizer must be one of {RESIZERS}, got {resizer!r}")
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if resizer == "torch":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("RGMP's 'opencv' resizer needs opencv-python-headless "
                          "(pip install opencv-python-headless), or pass resizer='torch'") from err
    # One call per sample with that sample's channels last, the grouping the public code uses
    # (a frame as one 3-channel image, a mask as one single-channel image): OpenCV's
    # vectorised paths differ with the channel count by a few 1e-6, so planes are not stacked.
    host = x.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).contiguous().numpy()
    out = torch.empty(x.shape[0], size[0], size[1], x.shape[1], dtype=torch.float32)
    for b in range(x.shape[0]):
        image = host[b] if x.shape[1] > 1 else host[b, :, :, 0]
        resized = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        out[b] = torch.from_numpy(resized).reshape(size[0], size[1], x.shape[1])
    return out.permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype)
