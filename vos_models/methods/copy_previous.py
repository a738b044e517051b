"""The copy-the-previous-mask baseline (registered as ``copy-previous``).

Each frame's output is the previous frame's output, with the masks given on the current frame
merged in. It has no parameters and no training loss; it exists to exercise the engine, the
command lines and the metrics end to end, and as the floor any real method must beat (on
DAVIS it scores what "the object did not move" scores).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..engine.interface import VideoState, VOSMethod, merge_new_masks
from ..registry import register_method


@dataclass(eq=False)
class PreviousOutputState(VideoState):
    """Only the previous output is kept: memory is one (1, O + 1, H, W) map however long the video."""

    previous: Tensor | None = None


class CopyPrevious(VOSMethod):
    name = "copy-previous"
    state_type = PreviousOutputState
    trainable = False

    def step(self, state: PreviousOutputState, frame: Tensor, new_masks: Tensor | None,
             new_ids: list[int]) -> Tensor:
        if frame.dim() != 4 or frame.shape[:2] != (1, 3):
            raise ValueError(f"copy-previous.step: frame must be (1, 3, H, W), got {tuple(frame.shape)}")
        state.add_objects(new_masks, new_ids)
        if state.previous is None and new_masks is None:
            raise ValueError("copy-previous.step: the first frame of a video must bring at least one mask")
        prob = merge_new_masks(state.previous, new_masks, new_ids, state.num_objects)
        state.previous = prob
        return prob


register_method("copy-previous", CopyPrevious)
