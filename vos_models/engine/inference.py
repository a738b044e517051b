"""Run a VOS method over a video, streaming: one frame in, one label map out.

Object ids: masks given by the user carry arbitrary ids (DAVIS: 1, 2, ...; any 1..254; 255 is
void and never an object). The engine numbers objects 1..O in order of first appearance (the
method's ids, see :mod:`.interface`) and maps the predicted labels back to the user's ids.

Masks on later frames: a mask may be given on any frame; the objects in it that the engine has
not seen yet start there (objects appearing mid-video). Objects already known are not reset by
later masks (the semi-supervised protocol gives each object's mask once). Frames before the
first mask are all background and the method does not see them.

Memory stays bounded: frames are decoded, segmented and handed back one at a time (a
clip-wise method holds one clip); what the method keeps is capped by its own configuration.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from ..data.errors import DataError
from ..data.palette import VOID_LABEL
from .interface import VOSMethod

PRECISIONS = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class FrameResult:
    """One segmented frame: ``labels`` (H, W) uint8 with the user's ids; ``probabilities``
    (O + 1, H, W) float32 on the CPU when the engine was asked to keep them."""

    index: int
    name: str
    labels: np.ndarray
    probabilities: Tensor | None = None


@dataclass
class RunStats:
    """Timing of one video: ``model_seconds`` counts only the method's steps (synchronised on
    GPU); ``total_seconds`` everything between the first frame read and the last result."""

    frames: int = 0
    model_seconds: float = 0.0
    total_seconds: float = 0.0
    objects: int = 0
    extras: dict = field(default_factory=dict)

    @property
    def model_fps(self) -> float:
        return self.frames / self.model_seconds if self.model_seconds > 0 else float("nan")

    @property
    def total_fps(self) -> float:
        return self.frames / self.total_seconds if self.total_seconds > 0 else float("nan")


MaskProvider = Mapping[str, np.ndarray] | Callable[[str], "np.ndarray | None"]


class InferenceEngine:
    """Drive a :class:`VOSMethod` over videos.

    Args:
        method: the model (put in eval mode and moved to ``device``).
        device: where the model runs ("cpu", "cuda", "cuda:1", ...).
        precision: "float32", or "float16" / "bfloat16" autocast (float16 needs a GPU).
        compile: compile the method for inference with ``torch.compile``: the method's own
            ``compile_for_inference()`` if it has one, else every child module in place
            (``nn.Module.compile``), so state-dict names are unchanged.
        clip_length: frames per clip for clip-wise methods (default: the method's
            ``clip_length`` attribute, else 5).
        keep_probabilities: also return the probabilities (costs a device-to-host copy).
    """

    def __init__(self, method: VOSMethod, *, device: str | torch.device = "cpu", precision: str = "float32",
                 compile: bool = False, clip_length: int | None = None, keep_probabilities: bool = False):
        if not isinstance(method, VOSMethod):
            raise TypeError(f"InferenceEngine: method must be a VOSMethod, got {type(method).__name__}")
        if precision not in PRECISIONS:
            raise ValueError(f"InferenceEngine: precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"InferenceEngine: device {device!r} requested but CUDA is not available")
        if precision == "float16" and self.device.type != "cuda":
            raise ValueError("InferenceEngine: float16 autocast needs a GPU; use bfloat16 or float32 on CPU")
        self.precision = precision
        self.method = method.to(self.device).eval()
        self.clip_length = int(clip_length or getattr(method, "clip_length", 5))
        if self.clip_length < 1:
            raise ValueError(f"InferenceEngine: clip_length must be >= 1, got {self.clip_length}")
        self.keep_probabilities = keep_probabilities
        self.last_stats = RunStats()
        if compile:
            self._compile()

    def _compile(self) -> None:
        hook = getattr(self.method, "compile_for_inference", None)
        if callable(hook):
            hook()
            return
        compiled = 0
        for child in self.method.children():
            if any(True for _ in child.parameters()):
                child.compile()
                compiled += 1
        if compiled == 0:
            raise ValueError(f"InferenceEngine: compile=True but {self.method.name!r} has no submodule with "
                             "parameters to compile")

    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _to_tensor(self, frame: np.ndarray) -> Tensor:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise DataError(f"frames must be (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}")
        if self.device.type == "cpu":
            # numpy's cast of the HWC->CHW view is several times faster than torch's on CPU
            chw = frame.transpose(2, 0, 1).astype(np.float32)
            chw *= np.float32(1 / 255)
            return torch.from_numpy(chw).unsqueeze(0)
        # upload uint8 (4x fewer bytes), convert on the device
        tensor = torch.from_numpy(np.ascontiguousarray(frame)).pin_memory().to(self.device, non_blocking=True)
        return tensor.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def segment(self, frames: Iterable[tuple[str, np.ndarray]], masks: MaskProvider, *,
                progress: bool | str = False, total: int | None = None) -> Iterator[FrameResult]:
        """Segment one video. ``frames``: (name, (H, W, 3) uint8 RGB) pairs in order (any
        :class:`~vos_models.data.frames.FrameSource`); ``masks``: {frame name: (H, W) ids} or a
        function name -> ids or None. Yields a :class:`FrameResult` per frame; statistics of
        the run are in ``self.last_stats`` once the generator is exhausted.
        """
        get_mask = masks.get if isinstance(masks, Mapping) else masks
        tracker = _ObjectTracker()
        stats = RunStats()
        self.last_stats = stats
        state = None
        size = None
        pending: list[tuple[int, str, Tensor, Tensor | None, list[int]]] = []
        iterator = frames
        if progress:
            from tqdm import tqdm
            iterator = tqdm(frames, total=total, desc=progress if isinstance(progress, str) else "segment",
                            unit="frame", leave=False)
        start = time.perf_counter()
        with torch.inference_mode():
            for index, (name, frame) in enumerate(iterator):
                if size is None:
                    size = frame.shape[:2]
                elif frame.shape[:2] != size:
                    raise DataError(f"frame {name} is {frame.shape[1]}x{frame.shape[0]}, the first frame {size[1]}x{size[0]}")
                given = get_mask(name)
                new_masks, new_ids = None, []
                if given is not None:
                    if given.shape != size:
                        raise DataError(f"mask for frame {name} is {given.shape[1]}x{given.shape[0]} (WxH) but "
                                        f"the frames are {size[1]}x{size[0]}")
                    new_masks, new_ids = tracker.new_objects(given, self.device)
                if state is None and not new_ids:
                    # No object yet: all background, the method does not see the frame.
                    stats.frames += 1
                    yield FrameResult(index, name, np.zeros(size, np.uint8),
                                      torch.ones(1, *size) if self.keep_probabilities else None)
                    continue
                if state is None:
                    state = self.method.new_video(num_objects_hint=None)
                tensor = self._to_tensor(frame)
                if not self.method.clip_wise:
                    prob = self._timed(stats, lambda: self.method.step(state, tensor, new_masks, new_ids))
                    yield self._result(index, name, prob[0], tracker, stats)
                    continue
                pending.append((index, name, tensor, new_masks, new_ids))
                if len(pending) == self.clip_length:
                    yield from self._run_clip(state, pending, tracker, stats)
                    pending = []
            if pending:
                yield from self._run_clip(state, pending, tracker, stats)
        stats.total_seconds = time.perf_counter() - start
        stats.objects = tracker.count

    def _timed(self, stats: RunStats, call: Callable[[], Tensor]) -> Tensor:
        self._sync()
        t0 = time.perf_counter()
        with self._autocast():
            out = call()
        self._sync()
        stats.model_seconds += time.perf_counter() - t0
        return out

    def _run_clip(self, state, pending, tracker, stats) -> Iterator[FrameResult]:
        frames = torch.stack([p[2][0] for p in pending]).unsqueeze(0)
        probs = self._timed(stats, lambda: self.method.step_clip(state, frames, [p[3] for p in pending],
                                                                 [p[4] for p in pending]))
        if probs.shape[0] != len(pending):
            raise RuntimeError(f"{self.method.name}.step_clip returned {probs.shape[0]} frames for a clip of {len(pending)}")
        for (index, name, *_), prob in zip(pending, probs):
            yield self._result(index, name, prob, tracker, stats)

    def _result(self, index: int, name: str, prob: Tensor, tracker: "_ObjectTracker", stats: RunStats) -> FrameResult:
        if prob.dim() != 3 or prob.shape[0] > tracker.count + 1:
            raise RuntimeError(f"{self.method.name} returned probabilities of shape {tuple(prob.shape)}; expected "
                               f"({tracker.count + 1}, H, W) (background + {tracker.count} objects)")
        if prob.device.type == "cpu":
            internal = _argmax_channels(prob.detach().float().numpy())
        else:
            internal = prob.float().argmax(dim=0).to("cpu", torch.uint8).numpy()
        stats.frames += 1
        kept = prob.float().cpu() if self.keep_probabilities else None
        return FrameResult(index, name, tracker.to_user_labels(internal), kept)


def _argmax_channels(prob: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W) uint8 index of the largest channel (the first on ties).

    A running maximum over channels: a few contiguous passes, much faster on CPU than an
    argmax reduction over the leading (strided) axis for the small C of VOS.
    """
    best = prob[0].copy()
    labels = np.zeros(prob.shape[1:], np.uint8)
    for channel in range(1, prob.shape[0]):
        better = prob[channel] > best
        labels[better] = channel
        np.maximum(best, prob[channel], out=best)
    return labels


class _ObjectTracker:
    """User ids <-> engine ids (1..O in order of first appearance)."""

    def __init__(self):
        self.user_ids: list[int] = []   # engine id i -> user id user_ids[i - 1]

    @property
    def count(self) -> int:
        return len(self.user_ids)

    def new_objects(self, labels: np.ndarray, device: torch.device) -> tuple[Tensor | None, list[int]]:
        present = [int(v) for v in np.unique(labels) if v != 0 and v != VOID_LABEL]
        new_user = [v for v in present if v not in self.user_ids]
        if not new_user:
            return None, []
        first = len(self.user_ids) + 1
        self.user_ids.extend(new_user)
        masks = torch.from_numpy(np.stack([labels == v for v in new_user])).to(device=device, dtype=torch.float32)
        return masks, list(range(first, first + len(new_user)))

    def to_user_labels(self, internal: np.ndarray) -> np.ndarray:
        lookup = np.zeros(256, np.uint8)
        lookup[1:self.count + 1] = self.user_ids
        return lookup[internal]
