"""The one interface every VOS method implements, and the mask helpers they all share.

Protocol (the engine's side is :mod:`vos_models.engine.inference`):

1. ``state = method.new_video(num_objects_hint)`` once per video.
2. For every frame t: ``prob = method.step(state, frame, new_masks, new_ids)`` with
   ``frame`` (1, 3, H, W) float RGB in [0, 1] (unnormalised, unpadded), ``new_masks`` (K, H, W)
   float {0, 1} for the K objects whose first mask arrives on this frame (or None), and
   ``new_ids`` their ids. The engine numbers objects 1..O in order of first appearance, so
   ``new_ids`` is always ``[O_before + 1, ..., O_before + K]``. ``prob`` is (1, O + 1, H, W):
   channel 0 background, channel i object i, summing to 1 per pixel. For the objects given on
   this frame the output equals the given masks (use :func:`merge_new_masks`).
3. Clip-wise methods (``clip_wise = True``, PCVOS) get ``step_clip`` instead, with L frames.

Memory must stay bounded on long videos: methods cap their memory banks (configurable).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class VideoState:
    """Per-video state: the bookkeeping every method needs, plus whatever a method attaches.

    Attributes:
        num_objects: objects known so far (ids 1..num_objects).
        frame_index: index of the next frame to process (number of frames seen so far).
        num_objects_hint: the caller's expected object count, or None.

    Methods add their own fields (memory banks, previous masks, templates) as attributes or
    by subclassing; :meth:`VOSMethod.new_video` builds it.
    """

    def __init__(self, num_objects_hint: int | None = None, **fields: Any):
        self.num_objects = 0
        self.frame_index = 0
        self.num_objects_hint = num_objects_hint
        for key, value in fields.items():
            setattr(self, key, value)

    def add_objects(self, new_masks: Tensor | None, new_ids: list[int]) -> None:
        """Check that ``new_ids`` continue the numbering (O+1, O+2, ...) and count them in."""
        k = 0 if new_masks is None else int(new_masks.shape[0])
        if k != len(new_ids):
            raise ValueError(f"step: new_masks has {k} masks but new_ids has {len(new_ids)} ids {new_ids}")
        expected = list(range(self.num_objects + 1, self.num_objects + 1 + k))
        if list(new_ids) != expected:
            raise ValueError(f"step: new_ids must continue the object numbering, expected {expected}, "
                             f"got {list(new_ids)}")
        self.num_objects += k

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={type(v).__name__}" for k, v in vars(self).items()
                           if k not in ("num_objects", "frame_index"))
        return f"VideoState(num_objects={self.num_objects}, frame_index={self.frame_index}, {fields})"


class VOSMethod(nn.Module):
    """One VOS method. Frames are float RGB in [0, 1], shape (1, 3, H, W) (unnormalised,
    unpadded: each method normalises and pads as its public code does, and crops back)."""

    name: str = "unnamed"
    clip_wise: bool = False   # True for PCVOS: the engine feeds clips through step_clip
    trainable: bool = True    # False for models without parameters to train (baselines)

    def new_video(self, num_objects_hint: int | None = None) -> VideoState:
        """Fresh per-video state. Override to attach memory banks etc. (bounded on long videos)."""
        return VideoState(num_objects_hint)

    def step(self, state: VideoState, frame: Tensor, new_masks: Tensor | None, new_ids: list[int]) -> Tensor:
        """frame (1, 3, H, W); new_masks (K, H, W) or None; -> probabilities (1, O + 1, H, W)."""
        raise NotImplementedError(f"{type(self).__name__} must implement step()")

    def step_clip(self, state: VideoState, frames: Tensor, new_masks: list[Tensor | None],
                  new_ids: list[list[int]]) -> Tensor:
        """frames (1, L, 3, H, W) -> (L, O + 1, H, W), O the object count after the clip.

        Default: one :meth:`step` per frame; frames before an object's first mask get a zero
        channel for it.
        """
        if frames.dim() != 5 or frames.shape[0] != 1:
            raise ValueError(f"step_clip: frames must be (1, L, 3, H, W), got {tuple(frames.shape)}")
        length = frames.shape[1]
        if len(new_masks) != length or len(new_ids) != length:
            raise ValueError(f"step_clip: need one new_masks/new_ids entry per frame ({length}), got "
                             f"{len(new_masks)} and {len(new_ids)}")
        outputs = [self.step(state, frames[:, i], new_masks[i], new_ids[i]) for i in range(length)]
        channels = outputs[-1].shape[1]
        return torch.cat([grow_objects(p, channels - 1) for p in outputs], dim=0)

    def training_loss(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        """batch: "frames" (B, T, 3, H, W) in [0, 1], "masks" (B, T, O, H, W) {0, 1} float,
        "num_objects" (B,) long. Returns (scalar loss, logs). Recurrent methods unroll (BPTT)."""
        raise NotImplementedError(f"{type(self).__name__} ({self.name}) has no training_loss: it cannot be trained")


def grow_objects(prob: Tensor, num_objects: int) -> Tensor:
    """(N, O' + 1, H, W) -> (N, num_objects + 1, H, W), appending zero channels for objects not
    yet seen (O' <= num_objects)."""
    have = prob.shape[1] - 1
    if have > num_objects:
        raise ValueError(f"grow_objects: probabilities hold {have} objects, more than {num_objects}")
    if have == num_objects:
        return prob
    pad = prob.new_zeros(prob.shape[0], num_objects - have, *prob.shape[2:])
    return torch.cat([prob, pad], dim=1)


def merge_new_masks(prob: Tensor | None, new_masks: Tensor | None, new_ids: list[int],
                    num_objects: int | None = None) -> Tensor:
    """Overwrite predicted probabilities with the masks given on this frame.

    prob: (1, O' + 1, H, W) predicted probabilities (or None on the first frame: all
    background); it may already hold channels for the new ids (a method that predicted them
    before reading their masks): those predictions are discarded. new_masks: (K, H, W) {0, 1},
    disjoint. Returns (1, O + 1, H, W), O = ``num_objects`` (default: max(O', max(new_ids))):

        p[new_id] = mask,   p[c] = q[c] / sum_{c' not new} q[c'] * (1 - union of new masks)

    for every other channel c (background included), q the prediction: the other channels are
    renormalised without the new ids, then scaled so that the channels sum to 1 and the given
    masks win where they overlap an older object's prediction. Where q gave all its mass to the
    new ids, the rest goes to the background.
    """
    if new_masks is None or len(new_ids) == 0:
        if prob is None:
            raise ValueError("merge_new_masks: nothing to merge (no probabilities and no masks)")
        return prob if num_objects is None else grow_objects(prob, num_objects)
    if new_masks.dim() != 3 or new_masks.shape[0] != len(new_ids):
        raise ValueError(f"merge_new_masks: new_masks must be (K={len(new_ids)}, H, W), got {tuple(new_masks.shape)}")
    height, width = new_masks.shape[-2:]
    if num_objects is None:
        num_objects = max(max(new_ids), 0 if prob is None else prob.shape[1] - 1)
    index = torch.as_tensor(list(new_ids), device=new_masks.device)
    if prob is None:
        prob = new_masks.new_zeros(1, num_objects + 1, height, width)
        prob[:, 0] = 1.0
    else:
        if prob.shape[-2:] != (height, width):
            raise ValueError(f"merge_new_masks: prob is {tuple(prob.shape[-2:])} but masks are {(height, width)}")
        prob = grow_objects(prob, num_objects).clone()
        prob[0, index.to(prob.device)] = 0
        total = prob.sum(dim=1, keepdim=True)
        background = torch.zeros_like(prob)
        background[:, 0] = 1
        prob = torch.where(total > 0, prob / total.clamp_min(torch.finfo(prob.dtype).tiny), background)
    masks = new_masks.to(prob.dtype)
    covered = masks.amax(dim=0).clamp(0, 1)
    out = prob * (1 - covered)
    out[0, index.to(prob.device)] = masks
    return out
