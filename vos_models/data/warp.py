"""Affine warps shared by the synthetic clips and the static-image-to-clip augmentation.

Coordinates are normalised to [-1, 1] (``align_corners=False``), as ``F.affine_grid``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def random_affine(generator: torch.Generator, *, max_rotation: float = 20.0, scale: tuple[float, float] = (0.9, 1.1),
                  max_shear: float = 10.0, max_translation: float = 0.1) -> Tensor:
    """A random (2, 3) affine matrix in normalised coordinates.

    rotation in degrees, uniform in [-max_rotation, max_rotation]; isotropic scale in the range;
    shear (x) in degrees; translation as a fraction of the half-size, per axis.
    """
    u = torch.rand(5, generator=generator)
    angle = math.radians((2 * u[0].item() - 1) * max_rotation)
    s = scale[0] + (scale[1] - scale[0]) * u[1].item()
    shear = math.tan(math.radians((2 * u[2].item() - 1) * max_shear))
    tx, ty = ((2 * u[3:5] - 1) * max_translation).tolist()
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    linear = rotation @ torch.tensor([[1.0, shear], [0.0, 1.0]]) * s
    return torch.cat([linear, torch.tensor([[tx], [ty]])], dim=1)


def warp(images: Tensor, matrices: Tensor, *, mode: str = "bilinear", padding_mode: str = "reflection") -> Tensor:
    """Warp (N, C, H, W) images by (N, 2, 3) matrices mapping output to input coordinates."""
    grid = F.affine_grid(matrices.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def warp_labels(labels: Tensor, matrices: Tensor) -> Tensor:
    """Warp (N, H, W) integer ids by (N, 2, 3) matrices with nearest sampling; outside -> 0."""
    warped = warp(labels.unsqueeze(1).float(), matrices, mode="nearest", padding_mode="zeros")
    return warped.squeeze(1).round().to(labels.dtype)


def colour_jitter(frames: Tensor, generator: torch.Generator, strength: float = 0.1) -> Tensor:
    """Per-frame brightness, contrast and saturation jitter of (T, 3, H, W) RGB in [0, 1]."""
    t = frames.shape[0]
    u = (2 * torch.rand(t, 3, generator=generator) - 1) * strength
    return apply_colour_factors(frames, 1 + u[:, 0], 1 + u[:, 1], 1 + u[:, 2])


def apply_colour_factors(images: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor) -> Tensor:
    """(N, 3, H, W) RGB in [0, 1] with per-image factors (N,): x *= brightness, then contrast
    about each image's mean, then saturation about each pixel's grey level; clamped to [0, 1]."""
    shape = (images.shape[0], 1, 1, 1)
    out = images * brightness.view(shape)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast.view(shape) + mean
    grey = out.mean(dim=1, keepdim=True)
    out = (out - grey) * saturation.view(shape) + grey
    return out.clamp(0, 1)
