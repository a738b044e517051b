"""The clip batch every method's training loss takes, checked in one place."""
from __future__ import annotations

from torch import Tensor


def unpack_clip_batch(owner: str, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
    """batch {"frames": (B, T, 3, H, W), "masks": (B, T, O, H, W), "num_objects": (B,)} ->
    (frames, masks, num_objects); KeyError / ValueError naming `owner` (e.g. "RGMP.training_loss")."""
    for key in ("frames", "masks", "num_objects"):
        if key not in batch:
            raise KeyError(f"{owner}: batch has no {key!r} (keys: {sorted(batch)})")
    frames, masks, num_objects = batch["frames"], batch["masks"], batch["num_objects"]
    if frames.dim() != 5 or frames.shape[2] != 3:
        raise ValueError(f"{owner}: frames must be (B, T, 3, H, W), got {tuple(frames.shape)}")
    b, t, _, h, w = frames.shape
    if masks.dim() != 5 or masks.shape[:2] != (b, t) or masks.shape[-2:] != (h, w):
        raise ValueError(f"{owner}: masks must be (B={b}, T={t}, O, {h}, {w}), got {tuple(masks.shape)}")
    if num_objects.shape != (b,):
        raise ValueError(f"{owner}: num_objects must be ({b},), got {tuple(num_objects.shape)}")
    return frames, masks, num_objects
