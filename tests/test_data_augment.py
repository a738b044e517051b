"""Clip-consistent affine augmentation (vos_models.data.augment): geometry, masks, seeding."""
import math

import pytest
import torch

from vos_models.data.augment import (AffineParams, AugmentedClipDataset, ClipAugmentation, affine_theta,
                                     apply_clip_affine, augment_clip)
from vos_models.data.datasets import SyntheticClipDataset

CRVOS_FINETUNE = ClipAugmentation(hflip=0.5, rotate_deg=30, shear_deg=30, scale=(0.75, 1.25))


def clip(t=3, h=40, w=56, objects=2, seed=0):
    """Random frames and disjoint {0, 1} masks of `objects` rectangles per frame."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(t, 3, h, w, generator=g)
    labels = torch.zeros(t, h, w, dtype=torch.long)
    for k in range(1, objects + 1):
        y, x = 4 + 14 * (k - 1), 6 + 20 * (k - 1)
        labels[:, y:y + 10, x:x + 14] = k
    masks = (labels[:, None] == torch.arange(1, objects + 1).view(1, -1, 1, 1)).float()
    return frames, masks


def test_shapes_dtypes_and_masks_stay_binary_and_disjoint():
    frames, masks = clip()
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        params = CRVOS_FINETUNE.sample(g)
        out_frames, out_masks = apply_clip_affine(frames, masks, params)
        assert out_frames.shape == frames.shape and out_frames.dtype == frames.dtype
        assert out_masks.shape == masks.shape and out_masks.dtype == masks.dtype
        assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
        assert float(out_masks.sum(1).max()) <= 1.0          # objects stay disjoint
        assert 0.0 <= float(out_frames.min()) and float(out_frames.max()) <= 1.0


def test_identity_parameters_give_identity():
    frames, masks = clip()
    out_frames, out_masks = apply_clip_affine(frames, masks, AffineParams())
    assert torch.equal(out_frames, frames) and torch.equal(out_masks, masks)
    g = torch.Generator().manual_seed(0)
    assert ClipAugmentation().is_identity and ClipAugmentation().sample(g).is_identity
    # the warp itself (not the shortcut) is the identity for an identity matrix
    theta = affine_theta(AffineParams(), 40, 56)
    assert torch.equal(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64))


def test_flip_and_rotations_match_exact_pixel_permutations():
    frames, masks = clip(h=40, w=40)
    flipped_frames, flipped_masks = apply_clip_affine(frames, masks, AffineParams(flip=True))
    assert torch.equal(flipped_masks, masks.flip(-1))
    torch.testing.assert_close(flipped_frames, frames.flip(-1), atol=1e-5, rtol=0)
    # +90 degrees: x right, y down, so the image turns clockwise
    turned_frames, turned_masks = apply_clip_affine(frames, masks, AffineParams(rotate_deg=90.0))
    assert torch.equal(turned_masks, torch.rot90(masks, -1, (-2, -1)))
    torch.testing.assert_close(turned_frames, torch.rot90(frames, -1, (-2, -1)), atol=1e-5, rtol=0)
    # 180 degrees on a non-square frame: both axes reversed
    frames, masks = clip(h=40, w=56)
    half_frames, half_masks = apply_clip_affine(frames, masks, AffineParams(rotate_deg=180.0))
    assert torch.equal(half_masks, masks.flip(-1, -2))
    torch.testing.assert_close(half_frames, frames.flip(-1, -2), atol=1e-5, rtol=0)


def test_angles_and_scale_are_true_on_non_square_frames():
    # a horizontal bar rotated by 90 degrees on a 40 x 80 frame keeps its pixel length
    masks = torch.zeros(1, 1, 40, 80)
    masks[0, 0, 19:21, 30:50] = 1                       # 2 x 20 bar through the centre
    frames = torch.zeros(1, 3, 40, 80)
    _, turned = apply_clip_affine(frames, masks, AffineParams(rotate_deg=90.0))
    rows = turned[0, 0].sum(1).nonzero().flatten()
    cols = turned[0, 0].sum(0).nonzero().flatten()
    assert len(rows) == 20 and len(cols) == 2
    # scale 2 doubles each side of a centred square: 4x the area
    masks = torch.zeros(1, 1, 40, 80)
    masks[0, 0, 15:25, 35:45] = 1
    _, scaled = apply_clip_affine(frames, masks, AffineParams(scale=2.0))
    assert int(scaled.sum()) == 400
    # x-shear by 45 degrees: a vertical bar leans by one pixel per row
    masks = torch.zeros(1, 1, 40, 80)
    masks[0, 0, 10:30, 40] = 1
    _, sheared = apply_clip_affine(frames, masks, AffineParams(shear_deg=45.0))
    xs = [int(sheared[0, 0, y].nonzero().flatten().float().mean()) for y in (12, 27)]
    assert abs((xs[1] - xs[0]) - round(15 * math.tan(math.radians(45)))) <= 1


def test_one_transform_for_every_frame_of_a_clip():
    frame, mask = clip(t=1)
    frames, masks = frame.expand(4, -1, -1, -1).clone(), mask.expand(4, -1, -1, -1).clone()
    g = torch.Generator().manual_seed(3)
    out_frames, out_masks, params = augment_clip(frames, masks, CRVOS_FINETUNE, g)
    assert not params.is_identity
    for t in range(1, 4):
        assert torch.equal(out_frames[t], out_frames[0]) and torch.equal(out_masks[t], out_masks[0])
    assert not torch.equal(out_masks[0], masks[0])


def test_frame_zero_objects_stay_visible_or_the_clip_is_left_alone():
    frames, masks = clip()
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        _, out, _ = augment_clip(frames, masks, CRVOS_FINETUNE, g)
        assert bool((out[0].flatten(1).sum(1) > 0).all())
    # a corner pixel object leaves the frame under any 180-degree-ish rotation with zoom-out
    corner = torch.zeros(1, 1, 20, 20)
    corner[0, 0, 0, 0] = 1
    always_away = ClipAugmentation(rotate_deg=180.0, scale=(0.5, 0.5))
    out_frames, out_masks, params = augment_clip(torch.rand(1, 3, 20, 20), corner, always_away,
                                                 torch.Generator().manual_seed(0), tries=2)
    assert params.is_identity and torch.equal(out_masks, corner)


def test_dataset_wrapper_is_seeded_by_seed_epoch_and_index():
    base = SyntheticClipDataset(4, num_frames=3, size=(32, 32), max_objects=2, seed=0)
    a = AugmentedClipDataset(base, CRVOS_FINETUNE, seed=0)
    b = AugmentedClipDataset(SyntheticClipDataset(4, num_frames=3, size=(32, 32), max_objects=2, seed=0),
                             CRVOS_FINETUNE, seed=0)
    for i in (2, 0, 3):  # any access order
        assert torch.equal(a[i]["frames"], b[i]["frames"]) and torch.equal(a[i]["masks"], b[i]["masks"])
    first = a[1]["masks"].clone()
    assert torch.equal(a[1]["masks"], first)
    a.set_epoch(1)
    assert base.epoch == 1 and not torch.equal(a[1]["masks"], first)
    item = a[0]
    assert item["frames"].shape == (3, 3, 32, 32) and item["masks"].shape == (3, 2, 32, 32)
    assert set(item["masks"].unique().tolist()) <= {0.0, 1.0} and len(a) == 4


def test_bad_ranges_are_refused():
    with pytest.raises(ValueError, match="hflip is a probability"):
        ClipAugmentation(hflip=1.5)
    with pytest.raises(ValueError, match="shear_deg"):
        ClipAugmentation(shear_deg=90)
    with pytest.raises(ValueError, match="scale must be"):
        ClipAugmentation(scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="must agree"):
        apply_clip_affine(torch.rand(2, 3, 8, 8), torch.zeros(3, 1, 8, 8), AffineParams(flip=True))
