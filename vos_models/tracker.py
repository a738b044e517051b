"""Step-wise tracking: frames one at a time, masks on any frame, corrections and deletions.

    tracker = Tracker("crvos", public_checkpoint="crvos.pth", device="auto")
    labels = tracker.step(frame0, mask0)      # (H, W) uint8 ids; mask0 starts objects 1 and 2
    labels = tracker.step(frame1)             # propagated
    labels = tracker.step(frame2, fixed)      # ids of `fixed` already tracked are corrected
    tracker.delete([2])                       # object 2 is no longer tracked
    tracker.objects, tracker.probabilities    # [1], (2, H, W) of the last frame

Built on the same pieces as the InferenceEngine (and so as vos-segment): one
:class:`~vos_models.engine.session.VideoSession` per video, user ids mapped to the method's
ids by :class:`~vos_models.engine.objects.ObjectIds`, frames prepared and run under the engine's
device, precision and fast paths. A mask given for a tracked object is a correction (the method
contract): on that frame the output equals it, and the method's memory or template holds the
corrected mask from then on.

Deleting an object: the method keeps its slot (methods cannot drop an object), its channel is
hidden from the labels and probabilities, and the next frame gives it an empty mask as a
correction, so that the method's memory holds it nowhere from then on. An id used again later
starts a new object.

Clip-wise methods (PCVOS): ``step`` runs a clip of one frame, so the frame's labels come back at
once; the intra-clip refinement then sees one frame instead of the method's clip length
(``clip_length`` frames ahead would delay every answer by that many frames), and PCVOS writes
every frame to memory (the last frame of each clip) instead of every L-th. Whole videos at
the method's clip length go through the InferenceEngine / vos-segment. Measured
(``benchmarks/tracker_clip_cost.py``, docs/models.md): with light PCVOS weights trained on the
three fully annotated DAVIS sample sequences and scored on them (so only the difference means
something), the Tracker costs 0.001 J&F (0.838 against 0.839 clip-wise at L=5, 128-px frames;
+0.004 at 480p, where those weights are weak), within noise; but those weights' intra-clip
refinement is nearly inert, so the cost with the paper's weights is not measured.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .engine.inference import InferenceEngine
from .engine.interface import VOSMethod
from .engine.objects import ObjectIds, channel_labels
from .engine.session import VideoSession
from .registry import load_or_build_method

#: The InferenceEngine options a Tracker takes (prefetching has nothing to read ahead here).
FAST_PATH_OPTIONS = ("compile", "channels_last", "threads", "cuda_graphs", "fold_norms", "aot_dir", "winograd")


class Tracker:
    """Track objects in a video fed one frame at a time (see the module docstring).

    Args:
        method: a registered method name ("rgmp", "crvos", "ttvos", "pcvos", "copy-previous")
            or a built :class:`VOSMethod`.
        checkpoint: a checkpoint written by vos-train / ``save_checkpoint``.
        public_checkpoint: a checkpoint of the method's public implementation (converted).
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        precision: "float32", "bfloat16" or "float16" (autocast; float16 needs a GPU).
        config: method options for a method built by name (``build_method``'s keywords).
        fastest: the fastest measured options for the method and device
            (:func:`vos_models.engine.presets.fastest_options`: on CPU bfloat16 where native,
            folded norms and, for TTVOS/CRVOS/RGMP, the tracking step compiled whole, its wide 3x3
            convolutions by Winograd); not together with ``precision`` or the options it picks.
        **fast_path_options: ``compile``, ``channels_last``, ``threads``, ``cuda_graphs``,
            ``fold_norms``, ``aot_dir``, ``winograd`` (see :class:`~vos_models.engine.inference.InferenceEngine`).
    With neither checkpoint the weights are random, and a warning says so.
    """

    def __init__(self, method: str | VOSMethod = "pcvos", *, checkpoint: str | Path | None = None,
                 public_checkpoint: str | Path | None = None, device: str = "auto", precision: str = "float32",
                 config: dict[str, Any] | None = None, fastest: bool = False, **fast_path_options):
        unknown = sorted(set(fast_path_options) - set(FAST_PATH_OPTIONS))
        if unknown:
            raise TypeError(f"Tracker: unknown option(s) {unknown}; fast-path options are {list(FAST_PATH_OPTIONS)} "
                            "(method options go in config={...})")
        model = _build(method, checkpoint, public_checkpoint, config or {})
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        options = {"precision": precision, **fast_path_options}
        if fastest:
            picked = sorted(k for k in options if k not in ("threads", "aot_dir")
                            and (k != "precision" or precision != "float32"))
            if picked:
                raise TypeError(f"Tracker: fastest=True picks the precision and fast paths itself; drop {picked}")
            from .engine.presets import fastest_options

            options = {**fastest_options(model, device), **fast_path_options}
        self.engine = InferenceEngine(model, device=device, **options)
        self.reset()

    @property
    def method(self) -> VOSMethod:
        return self.engine.method

    def reset(self) -> None:
        """Forget the video: the next ``step`` starts a new one."""
        self._session: VideoSession | None = None
        self._ids = ObjectIds()
        self._hidden: set[int] = set()       # engine ids of deleted objects
        self._to_clear: list[int] = []       # deleted since the last frame: given empty masks next
        self._size: tuple[int, int] | None = None
        self._last: Tensor | None = None     # (O + 1, H, W) engine probabilities of the last frame
        self._frames = 0

    @property
    def objects(self) -> list[int]:
        """The user ids tracked now, in order of first appearance."""
        return self._ids.tracked

    @property
    def frame_index(self) -> int:
        """How many frames this video has had."""
        return self._frames

    def step(self, frame, mask=None) -> np.ndarray:
        """One frame -> its (H, W) uint8 labels (0 background, the user ids of the objects).

        frame: (H, W, 3) uint8 RGB array, or a (3, H, W) tensor (uint8, or float in [0, 1]).
        mask: None, an (H, W) integer label map (0 background, 255 void, other values object
            ids) or an (H, W) bool array (object 1). New ids start being tracked; ids already
            tracked are corrected; ids not in the mask keep being tracked.
        """
        rgb = _as_rgb(frame)
        if self._size is None:
            self._size = rgb.shape[:2]
        elif rgb.shape[:2] != self._size:
            raise ValueError(f"Tracker.step: frame is {rgb.shape[1]}x{rgb.shape[0]} (WxH) but this video's frames "
                             f"are {self._size[1]}x{self._size[0]}; call reset() for a new video")
        labels = None if mask is None else _as_labels(mask, self._size)
        if labels is None and not self._to_clear:
            masks, ids = None, []   # the common frame: nothing given (no need to scan an empty map)
        else:
            given = labels if labels is not None else np.zeros(self._size, np.uint8)
            masks, ids = self._ids.given_objects(given, self.engine.device, self._to_clear)
        if self._session is None and not ids:
            if labels is not None:
                raise ValueError("Tracker.step: the first mask has no object: every pixel is background (0) or "
                                 "void (255); objects are the ids 1..254 (or True in a bool mask)")
            self._frames += 1   # no object yet: all background, the method does not see the frame
            return np.zeros(self._size, np.uint8)
        if self._session is None:
            self._session = self.engine.new_session()
        tensor = self.engine.prepare_frame(rgb)
        with self.engine.context():
            prob = self._session.step(tensor, masks, ids)          # (1, O + 1, H, W)
        self._to_clear = []
        self._frames += 1
        self._last = prob[0].float()
        return self._labels()

    def delete(self, ids) -> None:
        """Stop tracking these user ids (KeyError for an id that is not tracked)."""
        engine_ids = self._ids.delete(ids)
        self._hidden.update(engine_ids)
        self._to_clear.extend(engine_ids)

    @property
    def probabilities(self) -> Tensor | None:
        """(1 + len(objects), H, W) float probabilities of the last frame: background, then the
        tracked objects in the order of ``objects`` (deleted ones removed, the rest
        renormalised); None before the first object."""
        if self._last is None:
            return None
        keep = [0] + [i for i in range(1, self._last.shape[0]) if i not in self._hidden]
        prob = self._last[keep]
        return prob / prob.sum(0, keepdim=True).clamp_min(torch.finfo(prob.dtype).tiny)

    def _labels(self) -> np.ndarray:
        prob = self._last
        if self._hidden:
            prob = prob.clone()
            prob[sorted(self._hidden)] = -1.0   # never the argmax
        return self._ids.to_user_labels(channel_labels(prob))


def _build(method, checkpoint, public_checkpoint, config: dict) -> VOSMethod:
    if isinstance(method, VOSMethod):
        if checkpoint is not None or public_checkpoint is not None or config:
            raise ValueError("Tracker: give a method name to load a checkpoint or set options, not a built method")
        return method
    if checkpoint is not None and public_checkpoint is not None:
        raise ValueError("Tracker: give checkpoint or public_checkpoint, not both")
    model, random = load_or_build_method(method, checkpoint, public_checkpoint, **config)
    if random:
        warnings.warn(f"Tracker: {method!r} has random weights (no checkpoint or public_checkpoint given); "
                      "its masks are meaningless", UserWarning, stacklevel=3)
    return model


def _as_rgb(frame) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an array of that shape or a (3, H, W) tensor."""
    if isinstance(frame, Tensor):
        if frame.dim() != 3 or frame.shape[0] != 3:
            raise ValueError(f"Tracker.step: a tensor frame must be (3, H, W), got {tuple(frame.shape)}")
        if frame.is_floating_point():
            frame = (frame.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        elif frame.dtype != torch.uint8:
            raise TypeError(f"Tracker.step: a tensor frame must be uint8 or float in [0, 1], got {frame.dtype}")
        return np.ascontiguousarray(frame.permute(1, 2, 0).cpu().numpy())
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"Tracker.step: frame must be an (H, W, 3) uint8 RGB array, got {frame.shape} {frame.dtype}")
    return frame


def _as_labels(mask, size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 ids from a label map (ints 0..255) or a bool mask (object 1)."""
    if isinstance(mask, Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.shape != tuple(size):
        raise ValueError(f"Tracker.step: mask is {mask.shape[1] if mask.ndim > 1 else '?'}x{mask.shape[0]} (WxH) "
                         f"but the frames are {size[1]}x{size[0]}")
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer):
        raise TypeError(f"Tracker.step: mask must hold integer ids or bools, got dtype {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"Tracker.step: mask ids must be in 0..255 (255 void), got {mask.min()}..{mask.max()}")
    return mask.astype(np.uint8)
