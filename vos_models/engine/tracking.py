"""The tracking step compiled whole: one graph per frame that brings no mask.

A method with a tracking step (``VOSMethod.track``, see :mod:`.interface`) computes such a frame
as a pure function of the frame and a few state tensors. :class:`CompiledTracking` compiles that
function whole with ``torch.compile(fullgraph=True, dynamic=False)``: the backbone, the decoder,
the aggregation and the state update in one Inductor graph, the project's fused ops inside it
(custom ops with fake kernels: no graph break; ``fullgraph=True`` would raise on one).

On CPU the weights are **frozen** (Inductor ``freezing``): parameters become constants of the
graph, so batch norms fold into convolutions, convolution weights are prepacked for oneDNN once,
and under bfloat16 autocast each weight is cast to bfloat16 once at compile time instead of on
every frame. Frozen weights are a snapshot: change the method's weights and build a new engine.

Shapes are static: a new frame size or object count compiles once more. Frozen graphs bypass
Inductor's FX graph cache; a later process traces and lowers again but reuses the on-disk cache
of compiled C++ kernels (none is rebuilt). The compiling calls' time is kept in
``compile_seconds`` (vos-segment prints it in its summary line).
"""
from __future__ import annotations

import time

import torch
from torch import Tensor

from ..errors import VOSInputError
from .interface import VideoState, VOSMethod


def tracked_input_tensors(method: VOSMethod, state: VideoState) -> list[Tensor]:
    """The ``tracked_inputs`` of ``state`` in one canonical form: contiguous, floating ones in
    float32. A step under bfloat16 autocast writes some of its state in bfloat16, and a oneDNN
    convolution may leave it channels-last, while the eager first frame wrote it contiguous in
    float32: without one form, the second tracked frame of every video would compile the step
    again (a new dtype or stride is a new graph), and an AOTInductor package, compiled for the
    strides of its example inputs and not checking them, would read such a tensor wrongly."""
    tensors = [getattr(state, name) for name in method.tracked_inputs]
    return [(t.float() if t.is_floating_point() else t).contiguous() for t in tensors]


class TrackingRunner:
    """What every runner of a method's tracking step shares (:class:`CompiledTracking`,
    :class:`~.aot_tracking.PackagedTracking`): which frames it runs, the state tensors in and out,
    and the seconds its compiling (or loading) calls took. A subclass provides
    ``_step(frame, inputs) -> (prob, *outputs)`` and reports those seconds with
    :meth:`_count_compile`."""

    def __init__(self, method: VOSMethod):
        if not method.has_tracking_step:
            raise VOSInputError(f"{type(self).__name__}: method {method.name!r} has no tracking step (track)")
        self.method = method
        #: seconds spent in calls that compiled (or loaded) the step (the first one, and one per
        #: new frame size or object count), running included; None before the first
        self.compile_seconds: float | None = None
        self._unreported = 0.0
        self.calls = 0

    def take_compile_seconds(self) -> float:
        """Compile seconds since the last call of this method (for per-video reports)."""
        seconds, self._unreported = self._unreported, 0.0
        return seconds

    def applies(self, state: VideoState, new_masks: Tensor | None, new_ids) -> bool:
        """Whether this frame is a tracking step: it brings no mask, and the state holds what
        ``method.track`` reads."""
        return (new_masks is None and not new_ids and state.num_objects > 0
                and all(getattr(state, name) is not None for name in self.method.tracked_inputs))

    def _count_compile(self, seconds: float) -> None:
        self.compile_seconds = seconds if self.compile_seconds is None else self.compile_seconds + seconds
        self._unreported += seconds

    def _step(self, frame: Tensor, inputs: list[Tensor]) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def __call__(self, state: VideoState, frame: Tensor) -> Tensor:
        """Run the step: reads the ``tracked_inputs`` of ``state`` (:func:`tracked_input_tensors`),
        writes its ``tracked_outputs``; returns the probabilities (1, O + 1, H, W)."""
        prob, *outputs = self._step(frame, tracked_input_tensors(self.method, state))
        for name, value in zip(self.method.tracked_outputs, outputs):
            setattr(state, name, value)
        self.calls += 1
        return prob


class CompiledTracking(TrackingRunner):
    """``method.track`` compiled whole; call it with a video's state and a frame.

    Args:
        method: a frame-wise :class:`VOSMethod` with a tracking step (``has_tracking_step``).
        mode: a ``torch.compile`` mode ("default", "max-autotune-no-cudagraphs", ...).
        freeze: freeze the weights into the graph (Inductor ``freezing``; CPU inference).
    """

    def __init__(self, method: VOSMethod, mode: str = "default", freeze: bool = True):
        super().__init__(method)
        self.mode = mode
        self.freeze = bool(freeze)
        options = {}
        if mode in ("max-autotune", "max-autotune-no-cudagraphs"):
            options["max_autotune"] = True
        if mode in ("reduce-overhead", "max-autotune"):
            options["triton.cudagraphs"] = True
        self._compiled = torch.compile(method.track, fullgraph=True, dynamic=False, options=options or None)
        import torch._inductor.config as inductor_config  # (both loaded by torch.compile already)
        from torch._dynamo.utils import counters

        self._inductor_config, self._counters = inductor_config, counters

    def _step(self, frame: Tensor, inputs: list[Tensor]) -> tuple[Tensor, ...]:
        compiles = self._counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        # Inductor reads ``freezing`` from its global config when it compiles (the first call
        # and any recompile), not from torch.compile's options: patch it around the call.
        with self._inductor_config.patch(freezing=self.freeze):
            outputs = self._compiled(frame, *inputs)
        if self._counters["stats"]["unique_graphs"] != compiles:  # this call compiled
            self._count_compile(time.perf_counter() - start)
        return outputs
