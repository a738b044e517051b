"""Clip-consistent geometric augmentation: one random affine transform per clip.

CRVOS (paper §2.5) fine-tunes with "horizontal flip, rotation from -30° to 30°, shearing from
-30° to 30° and scaling from 0.75 to 1.25" (and pre-trains with the flip alone). The transform
is drawn once per clip and applied to every frame and mask of it, so the motion between frames
is the video's own; frames are resampled bilinearly, masks with nearest sampling (they stay
{0, 1} and disjoint); what comes from outside the image is black in the frames and background
in the masks.

The transform, in pixel coordinates centred on the image (x right, y down), maps an input
point ``p`` to the output point

    A p,    A = s * R(theta) @ Sh(phi) @ F,    R = [[cos, -sin], [sin, cos]],
    Sh = [[1, tan(phi)], [0, 1]] (x-shear),   F = diag(-1, 1) if flipped else I,

and ``F.grid_sample`` reads, for each output pixel, the input at ``A^-1 p``; in the
normalised coordinates of ``affine_grid`` (x / (W/2), y / (H/2)) that is
``D^-1 A^-1 D`` with ``D = diag(W/2, H/2)``, so angles are true angles on non-square frames.

Randomness comes from a ``torch.Generator`` only: :class:`AugmentedClipDataset` seeds one per
(seed, epoch, index), so a clip gets the same transform in whichever worker or process draws
it, and resumed runs see the data of an uninterrupted one.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import VOSInputError
from .synthetic import _clip_seed

# Keeps the augmentation's random stream apart from the wrapped dataset's own (same seed).
_STREAM_SALT = 0x5EED_A116


@dataclass(frozen=True)
class AffineParams:
    """One drawn transform: horizontal flip, rotation and x-shear in degrees, isotropic scale."""

    flip: bool = False
    rotate_deg: float = 0.0
    shear_deg: float = 0.0
    scale: float = 1.0

    @property
    def is_identity(self) -> bool:
        return not self.flip and self.rotate_deg == 0.0 and self.shear_deg == 0.0 and self.scale == 1.0


@dataclass(frozen=True)
class ClipAugmentation:
    """Ranges of the clip-consistent affine augmentation (the defaults change nothing).

    hflip: probability of a horizontal flip; rotate_deg / shear_deg: uniform in [-r, r];
    scale: uniform in [scale[0], scale[1]]. CRVOS fine-tuning: ``ClipAugmentation(hflip=0.5,
    rotate_deg=30, shear_deg=30, scale=(0.75, 1.25))``.
    """

    hflip: float = 0.0
    rotate_deg: float = 0.0
    shear_deg: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self):
        if not 0.0 <= self.hflip <= 1.0:
            raise VOSInputError(f"ClipAugmentation: hflip is a probability in [0, 1], got {self.hflip}")
        if not 0.0 <= self.rotate_deg <= 180.0:
            raise VOSInputError(f"ClipAugmentation: rotate_deg must be in [0, 180], got {self.rotate_deg}")
        if not 0.0 <= self.shear_deg < 90.0:
            raise VOSInputError(f"ClipAugmentation: shear_deg must be in [0, 90), got {self.shear_deg}")
        scale = tuple(float(s) for s in self.scale)
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1]:
            raise VOSInputError(f"ClipAugmentation: scale must be (min, max) with 0 < min <= max, got {self.scale}")
        object.__setattr__(self, "scale", scale)

    @property
    def is_identity(self) -> bool:
        return self.hflip == 0.0 and self.rotate_deg == 0.0 and self.shear_deg == 0.0 and self.scale == (1.0, 1.0)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["scale"] = list(self.scale)
        return out

    def sample(self, generator: torch.Generator) -> AffineParams:
        """Draw one transform (always four draws from ``generator``, whatever the ranges)."""
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        return AffineParams(
            flip=u[0] < self.hflip,
            rotate_deg=(2 * u[1] - 1) * self.rotate_deg,
            shear_deg=(2 * u[2] - 1) * self.shear_deg,
            scale=self.scale[0] + (self.scale[1] - self.scale[0]) * u[3],
        )


def affine_theta(params: AffineParams, height: int, width: int) -> Tensor:
    """The (2, 3) float64 ``affine_grid`` matrix (output -> input, normalised coordinates)."""
    angle, shear = math.radians(params.rotate_deg), math.tan(math.radians(params.shear_deg))
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                            dtype=torch.float64)
    forward = params.scale * rotation @ torch.tensor([[1.0, shear], [0.0, 1.0]], dtype=torch.float64)
    if params.flip:
        forward = forward @ torch.diag(torch.tensor([-1.0, 1.0], dtype=torch.float64))
    half = torch.diag(torch.tensor([width / 2, height / 2], dtype=torch.float64))
    linear = torch.linalg.inv(half) @ torch.linalg.inv(forward) @ half
    return torch.cat([linear, torch.zeros(2, 1, dtype=torch.float64)], dim=1)


def apply_clip_affine(frames: Tensor, masks: Tensor, params: AffineParams) -> tuple[Tensor, Tensor]:
    """Apply one transform to every frame and mask of a clip.

    frames (T, 3, H, W) float, masks (T, O, H, W) float {0, 1} (or any (T, C, H, W) label planes);
    returns tensors of the same shapes and dtypes: frames bilinear, masks nearest, zeros outside.
    """
    if frames.dim() != 4 or masks.dim() != 4 or frames.shape[0] != masks.shape[0] \
            or frames.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"apply_clip_affine: frames (T, C, H, W) and masks (T, O, H, W) must agree, got "
                         f"{tuple(frames.shape)} and {tuple(masks.shape)}")
    if not frames.is_floating_point():
        raise ValueError(f"apply_clip_affine: frames must be float, got {frames.dtype}")
    if params.is_identity:
        return frames, masks
    t, _, h, w = frames.shape
    theta = affine_theta(params, h, w).to(torch.float32).expand(t, 2, 3)
    grid = F.affine_grid(theta, [t, 1, h, w], align_corners=False)
    warped_frames = F.grid_sample(frames.float(), grid, mode="bilinear", padding_mode="zeros",
                                  align_corners=False).to(frames.dtype)
    if masks.shape[1] == 0:
        return warped_frames, masks
    warped_masks = F.grid_sample(masks.float(), grid, mode="nearest", padding_mode="zeros",
                                 align_corners=False).to(masks.dtype)
    return warped_frames, warped_masks


def augment_clip(frames: Tensor, masks: Tensor, augmentation: ClipAugmentation, generator: torch.Generator,
                 *, tries: int = 5) -> tuple[Tensor, Tensor, AffineParams]:
    """Draw a transform and apply it to the clip; up to ``tries`` draws, keeping the first that
    leaves every object of frame 0 visible there (a tracked object must start on screen). When
    none does, the clip is returned unchanged (with identity parameters)."""
    present = masks[0].flatten(1).sum(1) > 0                     # (O,) objects visible in frame 0
    for _ in range(max(1, tries)):
        params = augmentation.sample(generator)
        out_frames, out_masks = apply_clip_affine(frames, masks, params)
        if bool((out_masks[0].flatten(1).sum(1) > 0)[present].all()):
            return out_frames, out_masks, params
    return frames, masks, AffineParams()


class AugmentedClipDataset(Dataset):
    """Wrap a clip dataset (items ``frames (T,3,H,W)``, ``masks (T,O,H,W)``, ``num_objects``)
    and augment each item with one transform per clip, seeded by (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, augmentation: ClipAugmentation, *, seed: int = 0, tries: int = 5):
        self.dataset, self.augmentation = dataset, augmentation
        self.seed, self.epoch, self.tries = int(seed), 0, int(tries)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(_clip_seed((self.seed ^ _STREAM_SALT) * 1_000_003 + self.epoch, index))

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        item["frames"], item["masks"], _ = augment_clip(item["frames"], item["masks"], self.augmentation,
                                                        self.generator(index), tries=self.tries)
        return item
