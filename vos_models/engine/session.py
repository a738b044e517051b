"""The engine's side of the method contract: one video through a method.

A :class:`VideoSession` owns a video's state and its frame index. It feeds a frame-wise method
frame by frame (``method.step``) and a clip-wise one clip by clip (``method.step_clip``),
checks what comes back, and moves the frame index on after each call; methods only read it.
:class:`~vos_models.engine.inference.InferenceEngine`, the conformance checks and the
benchmarks all drive methods through it, and a step-wise tracker (frames one at a time, masks
on any frame) sits naturally on top of it::

    session = VideoSession(method)
    prob = session.step(frame0, masks, [1, 2])       # (1, 3, H, W): objects 1 and 2 start here
    prob = session.step(frame1)                      # later frames: no masks
    probs = session.step_clip(frames, [None] * L, [[]] * L)   # (1, L, 3, H, W) -> (L, O + 1, H, W)

Objects are numbered 1..O in order of first appearance (see :mod:`.interface`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .interface import VideoState, VOSMethod, grow_objects
from .tracking import TrackingRunner


class VideoSession:
    """One video through ``method`` (see the module docstring). With ``tracking`` (a
    :class:`~vos_models.engine.tracking.TrackingRunner` of the same method: compiled in process
    or loaded from a package), frames that bring no mask run the compiled tracking step instead
    of ``method.step``.

    Attributes:
        method: the :class:`VOSMethod`.
        state: the method's per-video state (``method.new_video()``).
    """

    def __init__(self, method: VOSMethod, num_objects_hint: int | None = None,
                 tracking: TrackingRunner | None = None):
        if not isinstance(method, VOSMethod):
            raise TypeError(f"VideoSession: method must be a VOSMethod, got {type(method).__name__}")
        kind = type(method)
        if kind.step_clip is VOSMethod.step_clip if method.clip_wise else kind.step is VOSMethod.step:
            needed = "step_clip (clip_wise=True)" if method.clip_wise else "step (clip_wise=False)"
            raise TypeError(f"{kind.__name__} must implement {needed} to keep the method contract")
        self.method = method
        #: the compiled tracking step (:mod:`.tracking`) run on frames without masks, or None
        self.tracking = tracking
        self._size: tuple[int, int] | None = None
        self.state: VideoState = method.new_video(num_objects_hint)
        if not isinstance(self.state, method.state_type):
            raise TypeError(f"{method.name}.new_video returned a {type(self.state).__name__}, not its state_type "
                            f"{method.state_type.__name__}")

    @property
    def frame_index(self) -> int:
        """Index of the next frame (the number of frames processed so far)."""
        return self.state.frame_index

    @property
    def num_objects(self) -> int:
        return self.state.num_objects

    def step(self, frame: Tensor, new_masks: Tensor | None = None, new_ids: Sequence[int] = ()) -> Tensor:
        """One frame (1, 3, H, W) -> probabilities (1, O + 1, H, W) (a clip of one frame for a
        clip-wise method)."""
        if frame.dim() != 4 or frame.shape[:2] != (1, 3):
            raise ValueError(f"{self.method.name}: frame must be (1, 3, H, W), got {tuple(frame.shape)}")
        if self.method.clip_wise:
            return self.step_clip(frame.unsqueeze(1), [new_masks], [list(new_ids)])
        if self.tracking is not None and self.tracking.applies(self.state, new_masks, new_ids):
            if tuple(frame.shape[-2:]) != self._size:
                raise ValueError(f"{self.method.name}: frame size {tuple(frame.shape[-2:])} differs from the "
                                 f"video's first frame {self._size}")
            prob = self.tracking(self.state, frame)
        else:
            prob = self.method.step(self.state, frame, new_masks, list(new_ids))
            self._size = tuple(frame.shape[-2:]) if self._size is None else self._size
        self._check(prob, 1, frame)
        self._advance(1)
        return prob

    def step_clip(self, frames: Tensor, new_masks: Sequence[Tensor | None],
                  new_ids: Sequence[Sequence[int]]) -> Tensor:
        """A clip (1, L, 3, H, W) with one ``new_masks`` / ``new_ids`` entry per frame ->
        (L, O + 1, H, W), O the object count after the clip (earlier frames get a zero channel
        for objects that start later in the clip). A frame-wise method gets one ``step`` per
        frame."""
        if frames.dim() != 5 or frames.shape[0] != 1 or frames.shape[2] != 3:
            raise ValueError(f"{self.method.name}: frames must be (1, L, 3, H, W), got {tuple(frames.shape)}")
        length = frames.shape[1]
        if len(new_masks) != length or len(new_ids) != length:
            raise ValueError(f"{self.method.name}: need one new_masks/new_ids entry per frame ({length}), got "
                             f"{len(new_masks)} and {len(new_ids)}")
        if not self.method.clip_wise:
            outputs = [self.step(frames[:, i], new_masks[i], new_ids[i]) for i in range(length)]
            return torch.cat([grow_objects(p, self.state.num_objects) for p in outputs], dim=0)
        probs = self.method.step_clip(self.state, frames, list(new_masks), [list(ids) for ids in new_ids])
        self._check(probs, length, frames[0, :1])
        self._advance(length)
        return probs

    def _check(self, prob: Tensor, frames: int, frame: Tensor) -> None:
        """The output shape the contract promises: (frames, O + 1, H, W)."""
        expected = (frames, self.state.num_objects + 1, *frame.shape[-2:])
        if tuple(prob.shape) != expected:
            raise RuntimeError(f"{self.method.name} returned probabilities of shape {tuple(prob.shape)}; "
                               f"expected {expected} (background + {self.state.num_objects} objects)")

    def _advance(self, frames: int) -> None:
        # The one place the frame index moves: methods read it, the engine moves it on.
        self.state._frame_index += frames
