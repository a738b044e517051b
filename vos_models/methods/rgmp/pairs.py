"""Simulated training pairs from still images (RGMP paper section 3.2, pre-training stage).

From a batch of images with one object mask each, build (reference frame, reference mask,
target frame, target mask, guidance mask) quintuples on the tensors' device:

* Strategy 1: reference and target are the same image under two different random
  transformations (rotation, scaling, translation, colour perturbation): a static scene seen
  with another camera angle, zoom and illumination.
* Strategy 2: the object is cut out (image * mask), transformed twice and blended onto a
  background image (another image of the batch, itself randomly transformed); the background
  image's own object is pasted over the target half of the time, which simulates occlusion.
* Both: the guidance mask is the target mask under a further small random affine transform,
  simulating an imperfect previous-frame mask; every transformed view keeps at least half of
  the object visible (the paper's "crop that contains at least 50% of the target object").

The two strategies are drawn with equal probability per sample. Randomness comes from
``torch``'s global generator (or ``generator``), so a seeded training run is reproducible.
All transforms are one ``affine_grid`` + ``grid_sample`` at the output size, so the "crop" is
the translation/scale part of the transform.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vos_models.data.warp import apply_colour_factors


@dataclass
class AffineRange:
    """Ranges of a random similarity transform (uniform in each range)."""
    rotation_deg: float = 20.0          # +- degrees
    scale: tuple[float, float] = (0.8, 1.25)
    translate: float = 0.15             # +- fraction of the half-size (normalised coords)


PAIR_VIEW = AffineRange()
GUIDANCE_DEFORM = AffineRange(rotation_deg=8.0, scale=(0.93, 1.07), translate=0.04)


@dataclass
class TrainingPair:
    """One simulated sample per batch entry. Frames (B,3,H,W) in [0,1], masks (B,1,H,W) {0,1}
    except ``guidance`` (B,1,H,W) in [0,1] (bilinearly warped)."""
    ref_frame: Tensor
    ref_mask: Tensor
    frame: Tensor
    mask: Tensor
    guidance: Tensor
    strategy: Tensor  # (B,) long, 1 or 2


def _uniform(n: int, low: float, high: float, like: Tensor, generator) -> Tensor:
    return torch.rand(n, device=like.device, dtype=like.dtype, generator=generator) * (high - low) + low


def random_affine(n: int, rng: AffineRange, like: Tensor, generator=None) -> Tensor:
    """(n, 2, 3) affine matrices in normalised coordinates (output -> input sampling grid)."""
    angle = _uniform(n, -rng.rotation_deg, rng.rotation_deg, like, generator) * (math.pi / 180)
    scale = torch.exp(_uniform(n, math.log(rng.scale[0]), math.log(rng.scale[1]), like, generator))
    shift = _uniform(2 * n, -rng.translate, rng.translate, like, generator).view(n, 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                        torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def warp(x: Tensor, theta: Tensor, mode: str = "bilinear") -> Tensor:
    """Sample x (B,C,H,W) through affine theta (B,2,3); outside the image is zero."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _view_keeping_object(mask: Tensor, rng: AffineRange, generator, tries: int = 5) -> Tensor:
    """Random affine per sample under which >= 50% of the object's area stays in view.

    Candidates are drawn ``tries`` times; a sample none of whose candidates qualifies (or that
    has no object) gets the identity."""
    n = mask.shape[0]
    area = mask.flatten(1).sum(1)
    theta = torch.eye(2, 3, device=mask.device, dtype=mask.dtype).expand(n, 2, 3).clone()
    done = area <= 0
    for _ in range(tries):
        candidate = random_affine(n, rng, mask, generator)
        # |det| of the output->input map is 1/scale^2: the object's area in the output
        # is its source area over |det| when nothing is cut off.
        det = (candidate[:, 0, 0] * candidate[:, 1, 1] - candidate[:, 0, 1] * candidate[:, 1, 0]).abs()
        kept = warp(mask, candidate).flatten(1).sum(1) * det / area.clamp_min(1e-6)
        accept = (~done) & (kept >= 0.5)
        theta[accept] = candidate[accept]
        done = done | accept
        if bool(done.all()):
            break
    return theta


def perturb_colour(image: Tensor, generator=None, strength: float = 0.2) -> Tensor:
    """Random brightness, contrast and saturation per sample; stays in [0, 1]."""
    n = image.shape[0]
    brightness = _uniform(n, 1 - strength, 1 + strength, image, generator)
    contrast = _uniform(n, 1 - strength, 1 + strength, image, generator)
    saturation = _uniform(n, 1 - strength, 1 + strength, image, generator)
    return apply_colour_factors(image, brightness, contrast, saturation)


def make_pairs(images: Tensor, masks: Tensor, generator=None) -> TrainingPair:
    """images (B,3,H,W) in [0,1], masks (B,1,H,W) {0,1} (one object each) -> TrainingPair.

    Strategy 2 takes its background (and occluder) from the batch entry after each sample
    (cyclically); a batch of one has no other image, so it uses strategy 1 only."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"make_pairs: images must be (B, 3, H, W), got {tuple(images.shape)}")
    if masks.shape != (images.shape[0], 1, *images.shape[-2:]):
        raise ValueError(f"make_pairs: masks must be {(images.shape[0], 1, *images.shape[-2:])}, "
                         f"got {tuple(masks.shape)}")
    n = images.shape[0]
    masks = masks.to(images.dtype)
    strategy = 1 + (torch.rand(n, device=images.device, generator=generator) < 0.5).long()
    if n == 1:
        strategy.fill_(1)
    second = (strategy == 2).view(n, 1, 1, 1).to(images.dtype)

    # Background for strategy 2: another image, its object as potential occluder.
    theta_bg = random_affine(n, PAIR_VIEW, images, generator)
    background = warp(images.roll(1, 0), theta_bg)
    occluder = (warp(masks.roll(1, 0), theta_bg) > 0.5).to(images.dtype)

    def view(occlude: bool) -> tuple[Tensor, Tensor]:
        theta = _view_keeping_object(masks, PAIR_VIEW, generator)
        image = warp(images, theta)
        mask = (warp(masks, theta) > 0.5).to(images.dtype)
        pasted = image * mask + background * (1 - mask)
        if occlude:
            # Half of the strategy-2 targets: the background's own object lies in front.
            coin = torch.rand(n, 1, 1, 1, device=images.device, generator=generator) < 0.5
            cover = occluder * coin * second
            pasted = background * cover + pasted * (1 - cover)
            mask = mask * (1 - cover)
        image = second * pasted + (1 - second) * image
        return perturb_colour(image, generator), mask

    ref_frame, ref_mask = view(occlude=False)
    frame, mask = view(occlude=True)
    guidance = warp(mask, random_affine(n, GUIDANCE_DEFORM, images, generator))
    return TrainingPair(ref_frame, ref_mask, frame, mask, guidance.clamp(0, 1), strategy)
