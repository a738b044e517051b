"""The method contract: what every VOS method implements and what it may provide, and the mask
helpers they all share.

A method is a :class:`VOSMethod`. The engine's side of the contract is
:class:`vos_models.engine.session.VideoSession` (one video, frame by frame or clip by clip),
which :class:`~vos_models.engine.inference.InferenceEngine`, the conformance checks and the
benchmarks drive; ``docs/models.md`` ("The method contract") walks through it with a runnable
example.

A method **must** implement

* ``step(state, frame, new_masks, new_ids) -> prob`` (a frame-wise method, ``clip_wise =
  False``): ``frame`` (1, 3, H, W) float RGB in [0, 1] (unnormalised, unpadded), ``new_masks``
  (K, H, W) float {0, 1} for the K objects whose first mask arrives on this frame (or None),
  ``new_ids`` their ids. The engine numbers objects 1..O in order of first appearance: ids
  <= O_before are **corrections** of tracked objects (the given mask replaces the prediction
  on this frame and is what the method remembers from then on, as for a new object), the
  others are new objects ``[O_before + 1, ...]`` after the corrections (``state.add_objects``
  checks it, counts the new ones in and returns them). ``prob`` is (1, O + 1, H, W): channel
  0 background, channel i object i, summing to 1 per pixel; for the objects given on this
  frame it equals the given masks (use :func:`merge_new_masks`).
* or ``step_clip(state, frames, new_masks, new_ids) -> probs`` (a clip-wise method,
  ``clip_wise = True``, PCVOS): ``frames`` (1, L, 3, H, W), one ``new_masks`` / ``new_ids``
  entry per frame; ``probs`` (L, O + 1, H, W), O the object count after the clip, frames before
  an object's first mask with a zero channel for it.

``step`` / ``step_clip`` read the state and the frame and update the method's own fields of the
state; they never advance ``state.frame_index`` (a read-only property): the engine owns it and
moves it on after each call. During a call it is the index of the (first) frame passed.

A method **may** provide, each with a declared default:

====================================  ==============================================================
``state_type``                        the :class:`VideoState` dataclass subclass holding the method's
                                      per-video fields (default: :class:`VideoState`, no fields)
``clip_wise = False``                 True: the engine feeds clips through ``step_clip``
``clip_length = 5``                   frames per clip the engine feeds a clip-wise method
``trainable = True``                  False for models without a training loss (baselines)
``cuda_graph_modules = ()``           fixed-shape submodules (or submodule methods) by attribute
                                      path, replayed as CUDA graphs on request
``compile_for_inference(mode)``       default: ``torch.compile`` every child module with parameters
                                      in place (state-dict names unchanged)
``track(frame, *inputs)``             the step of a frame that brings no mask, as a pure function
``tracked_inputs = ()``               of tensors (below); default: none (``tracked_inputs`` empty)
``tracked_outputs = ()``
``any_object_count = True``           one traced tracking step serves every object count (each state
                                      tensor has the objects first, one code path for any count);
                                      False where one object takes another path (RGMP)
``training_loss(batch)``              default: raises (the method cannot be trained)
====================================  ==============================================================

``name`` and ``build_config`` are set by :func:`vos_models.registry.build_method`.

**The tracking step.** Most frames bring no mask: the step is then a function of the frame and a
few state tensors alone. A frame-wise method that provides ``track`` names those tensors:
``tracked_inputs`` the state fields it reads, ``tracked_outputs`` the fields it writes, and

    track(frame, *[state.<f> for f in tracked_inputs]) -> (prob, *[new state.<f> for f in tracked_outputs])

with ``frame`` (1, 3, H, W) and ``prob`` (1, O + 1, H, W) as for ``step``, for a frame without
new masks once an object is known and the video's size is set (the first frame's). ``step``
must run ``track`` on such frames, so the two agree exactly. No Python state, no data-dependent
branch: the engine compiles it whole (``torch.compile(fullgraph=True)``, frozen weights on CPU,
:mod:`.tracking`) and :mod:`vos_models.export` writes it to ONNX / OpenVINO with the state as
explicit inputs and outputs.

Memory must stay bounded on long videos: methods cap what their state keeps (configurable).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import VOSInputError


@dataclass(eq=False)
class VideoState:
    """Per-video state: the bookkeeping every method needs; a method's own fields are declared
    by a dataclass subclass (its ``state_type``)::

        @dataclass(eq=False)
        class CopyPreviousState(VideoState):
            previous: Tensor | None = None   # (1, O + 1, H, W) last output

    Attributes:
        num_objects_hint: the caller's expected object count, or None.
        num_objects: objects known so far (ids 1..num_objects), counted in by
            :meth:`add_objects`.
        frame_index: index of the frame being processed (of a clip's first frame in
            ``step_clip``); equal to the number of frames seen before it. Read-only for methods:
            the engine (:class:`~vos_models.engine.session.VideoSession`) advances it.
    """

    num_objects_hint: int | None = None
    num_objects: int = field(default=0, init=False)
    _frame_index: int = field(default=0, init=False, repr=False)

    @property
    def frame_index(self) -> int:
        return self._frame_index

    def add_objects(self, new_masks: Tensor | None, new_ids: list[int]) -> list[int]:
        """Check the ids of the masks given on a frame and count the new objects in; returns
        them. An id <= O is a correction of a tracked object (its mask replaces the prediction
        on this frame and is what the method remembers); the ids > O are new objects and must
        continue the numbering (O+1, O+2, ...), after the corrections. No id twice."""
        k = 0 if new_masks is None else int(new_masks.shape[0])
        ids = list(new_ids)
        if k != len(ids):
            raise ValueError(f"step: new_masks has {k} masks but new_ids has {len(ids)} ids {ids}")
        if len(set(ids)) != len(ids) or any(not isinstance(i, int) or i < 1 for i in ids):
            raise ValueError(f"step: new_ids must be distinct ints >= 1, got {ids}")
        fresh = [i for i in ids if i > self.num_objects]
        expected = list(range(self.num_objects + 1, self.num_objects + 1 + len(fresh)))
        if fresh != expected or ids[len(ids) - len(fresh):] != fresh:
            raise ValueError(f"step: new objects must continue the object numbering after the corrections, "
                             f"expected {expected} last, got {ids}")
        self.num_objects += len(fresh)
        return fresh


class VOSMethod(nn.Module):
    """One VOS method (see the module docstring for the contract). Frames are float RGB in
    [0, 1], shape (1, 3, H, W), unnormalised and unpadded: each method normalises and pads as
    its public code does, and crops back."""

    name: str = "unnamed"
    state_type: ClassVar[type[VideoState]] = VideoState
    clip_wise: bool = False
    clip_length: int = 5
    trainable: bool = True
    cuda_graph_modules: tuple[str, ...] = ()
    tracked_inputs: ClassVar[tuple[str, ...]] = ()
    tracked_outputs: ClassVar[tuple[str, ...]] = ()
    any_object_count: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        #: the config :func:`~vos_models.registry.build_method` built the method with (what
        #: checkpoints store); empty for a method constructed directly
        self.build_config: dict[str, Any] = {}

    def new_video(self, num_objects_hint: int | None = None) -> VideoState:
        """Fresh per-video state: a ``state_type`` with its declared defaults."""
        return self.state_type(num_objects_hint=num_objects_hint)

    def step(self, state: VideoState, frame: Tensor, new_masks: Tensor | None, new_ids: list[int]) -> Tensor:
        """frame (1, 3, H, W); new_masks (K, H, W) or None; -> probabilities (1, O + 1, H, W)."""
        raise NotImplementedError(f"{type(self).__name__} is frame-wise (clip_wise=False) and must implement step()")

    def step_clip(self, state: VideoState, frames: Tensor, new_masks: list[Tensor | None],
                  new_ids: list[list[int]]) -> Tensor:
        """frames (1, L, 3, H, W) -> (L, O + 1, H, W), O the object count after the clip."""
        raise NotImplementedError(f"{type(self).__name__} is clip-wise (clip_wise=True) and must implement "
                                  "step_clip()")

    @property
    def has_tracking_step(self) -> bool:
        """True when the method provides ``track`` (a frame-wise method; see the module docstring)."""
        return not self.clip_wise and bool(self.tracked_inputs) and type(self).track is not VOSMethod.track

    def track(self, frame: Tensor, *inputs: Tensor) -> tuple[Tensor, ...]:
        """frame (1, 3, H, W) and the ``tracked_inputs`` state tensors -> (prob (1, O + 1, H, W),
        *the ``tracked_outputs`` state tensors): a frame without new masks."""
        raise NotImplementedError(f"{type(self).__name__} ({self.name}) has no tracking step (track)")

    def compile_for_inference(self, mode: str = "default") -> None:
        """``torch.compile`` the method for inference, in place (``mode`` one of torch's compile
        modes). Default: every child module that has parameters (``nn.Module.compile``), so
        state-dict names stay unchanged. Override to compile other parts."""
        compiled = 0
        for child in self.children():
            if any(True for _ in child.parameters()):
                child.compile(mode=None if mode == "default" else mode)
                compiled += 1
        if compiled == 0:
            raise VOSInputError(f"compile: method {self.name!r} has no submodule with parameters to compile")

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
