"""Run a VOS method over a video, streaming: one frame in, one label map out.

Object ids: masks given by the user carry arbitrary ids (DAVIS: 1, 2, ...; any 1..254; 255 is
void and never an object). The engine numbers objects 1..O in order of first appearance (the
method's ids, see :mod:`.interface`) and maps the predicted labels back to the user's ids.

Masks on later frames: a mask may be given on any frame; the objects in it that the engine has
not seen yet start there (objects appearing mid-video), and the tracked objects in it are
corrected (the mask replaces the prediction on that frame and in the method's memory). Ground
truth given as input must go through :func:`.objects.first_appearances` (the semi-supervised
protocol: each object's mask once), as ``vos-segment --davis`` and training validation do.
Frames before the first mask are all background and the method does not see them.

Memory stays bounded: frames are decoded, segmented and handed back one at a time (a
clip-wise method holds one clip, the prefetch queue at most ``prefetch`` frames); what the
method keeps is capped by its own configuration.

Fast paths (each an option, all off by default; ``docs/results/fps.md`` has what each is worth):
``precision`` (bfloat16 / float16 autocast: convolutions in low precision, the methods keep
their aggregation and recurrent state in float32), ``channels_last`` (NHWC weights and frames,
what oneDNN and cuDNN prefer), ``threads`` (torch's CPU threads while segmenting),
``compile`` (``torch.compile``, with a mode), ``cuda_graphs`` (the method's fixed-shape
submodules replayed as CUDA graphs), ``prefetch`` (decoding, conversion and the CUDA upload in
a background thread, overlapped with the model), ``fold_norms`` (frozen batch norms folded
into the convolutions before them, on a copy of the method: :mod:`.folding`).
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError, VOSInputError
from .aot_tracking import PackagedTracking
from .cuda_graphs import enable_cuda_graphs
from .folding import fold_batch_norms
from .interface import VOSMethod
from .objects import ObjectIds, channel_labels
from .prefetch import prefetched
from .session import VideoSession
from .tracking import CompiledTracking, TrackingRunner
from .winograd import with_winograd_convolutions

PRECISIONS = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class FrameResult:
    """One segmented frame: ``labels`` (H, W) uint8 with the user's ids; ``probabilities``
    (O + 1, H, W) float32 on the CPU when the engine was asked to keep them."""

    index: int
    name: str
    labels: np.ndarray
    probabilities: Tensor | None = None


@dataclass
class _Upload:
    """A frame on its way to the device: the tensor and, for a side-stream CUDA upload, the
    event the compute stream waits for before using it (None: ready)."""

    tensor: Tensor
    ready: "torch.cuda.Event | None" = None


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
        compile: compile the method for inference with ``torch.compile``. True or a mode of
            ``COMPILE_MODES`` ("reduce-overhead" = Inductor's CUDA graphs, GPU only). A method
            with a tracking step (``track``: TTVOS, CRVOS, single-scale RGMP) has that step compiled whole, one
            graph per frame without masks, weights frozen into it on CPU
            (:mod:`.tracking`; ``self.tracking``); the others go through their
            ``compile_for_inference(mode=...)`` (by default every child module in place).
        clip_length: frames per clip for clip-wise methods (default: the method's
            ``clip_length``).
        keep_probabilities: also return the probabilities (costs a device-to-host copy).
        channels_last: weights and frames in NHWC memory format (results equal up to float
            rounding).
        threads: torch CPU threads while ``segment`` runs (restored afterwards); None keeps
            torch's setting.
        cuda_graphs: replay the method's fixed-shape submodules (``cuda_graph_modules``) as
            CUDA graphs (GPU only; not together with ``compile``, which has its own,
            ``compile="reduce-overhead"``).
        prefetch: decode and convert (on CUDA: also upload) up to this many frames ahead in a
            background thread; 0 = in line.
        fold_norms: fold every frozen batch norm into the convolution that feeds it
            (:func:`.folding.fold_batch_norms`: observed and verified on a small synthetic
            video). The engine then runs a folded copy (``self.method``; the method given is
            untouched) and ``self.fold_report`` says how many norms were folded.
        aot_dir: with ``compile`` on the CPU, for a method with a tracking step: compile that
            step ahead of time into a package in this folder (AOTInductor,
            :mod:`.aot_tracking`) on its first use, and load it in later processes instead of
            compiling again; one package per weights, frame size and object count.
        winograd: with ``compile`` on the CPU, for a method with a tracking step: 3x3
            convolutions with many channels run as Winograd F(2x2, 3x3) in the compiled step
            (:mod:`.winograd`: 2.25x fewer multiply-adds; eager frames keep the direct
            convolution). ``self.winograd_layers`` names the converted convolutions.
    """

    def __init__(self, method: VOSMethod, *, device: str | torch.device = "cpu", precision: str = "float32",
                 compile: bool | str = False, clip_length: int | None = None, keep_probabilities: bool = False,
                 channels_last: bool = False, threads: int | None = None, cuda_graphs: bool = False,
                 prefetch: int = 0, fold_norms: bool = False, aot_dir: str | Path | None = None,
                 winograd: bool = False):
        if not isinstance(method, VOSMethod):
            raise TypeError(f"InferenceEngine: method must be a VOSMethod, got {type(method).__name__}")
        if precision not in PRECISIONS:
            raise VOSInputError(f"InferenceEngine: precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise VOSInputError(f"InferenceEngine: device {device!r} requested but CUDA is not available")
        if precision == "float16" and self.device.type != "cuda":
            raise VOSInputError("InferenceEngine: float16 autocast needs a GPU; use bfloat16 or float32 on CPU")
        compile_mode = _compile_mode(compile)
        if compile_mode in ("reduce-overhead", "max-autotune") and self.device.type != "cuda":
            raise VOSInputError(f"InferenceEngine: compile={compile!r} uses CUDA graphs and needs a GPU; on "
                             f"{self.device.type} use compile=True or 'max-autotune-no-cudagraphs'")
        if cuda_graphs and self.device.type != "cuda":
            raise VOSInputError(f"InferenceEngine: cuda_graphs=True needs a CUDA device, got device {str(self.device)!r}")
        if cuda_graphs and compile_mode is not None:
            raise VOSInputError("InferenceEngine: give cuda_graphs=True or compile, not both (compile has its own "
                             "CUDA graphs: compile='reduce-overhead')")
        if aot_dir is not None:
            _check_compiled_cpu_step("aot_dir", "keeps the compiled tracking step on disk", compile_mode, self.device,
                                     method)
        if winograd:
            _check_compiled_cpu_step("winograd=True", "computes convolutions inside the compiled tracking step",
                                     compile_mode, self.device, method)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise VOSInputError(f"InferenceEngine: threads must be None or an int >= 1, got {threads!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise VOSInputError(f"InferenceEngine: prefetch must be an int >= 0 (frames decoded ahead), got {prefetch!r}")
        self.precision = precision
        self.channels_last = bool(channels_last)
        self.threads = threads
        self.prefetch = prefetch
        self.cuda_graphs = bool(cuda_graphs)
        self.compile_mode = compile_mode
        self.method = method.to(self.device).eval()
        self.fold_report = None
        if fold_norms:
            # Before channels_last and compile: the fold observes and checks the eager method.
            self.method, self.fold_report = fold_batch_norms(self.method)
            if self.fold_report.folded == 0:
                warnings.warn(f"InferenceEngine: fold_norms=True but {method.name} has no convolution -> frozen "
                              f"batch norm pair ({self.fold_report.norms} norms); running it unfolded", stacklevel=2)
        #: names of the convolutions computed by Winograd F(2x2, 3x3) in the compiled step
        self.winograd_layers: list[str] = []
        if winograd:
            self.method, self.winograd_layers = with_winograd_convolutions(self.method)
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.clip_length = int(clip_length or method.clip_length)
        if self.clip_length < 1:
            raise VOSInputError(f"InferenceEngine: clip_length must be >= 1, got {self.clip_length}")
        self.keep_probabilities = keep_probabilities
        self.last_stats = RunStats()
        self._upload_stream = None
        #: the whole tracking step compiled (methods with ``track``), else None
        self.tracking: TrackingRunner | None = None
        if compile_mode is not None:
            if aot_dir is not None:
                self.tracking = PackagedTracking(self.method, aot_dir,
                                                 torch.bfloat16 if precision == "bfloat16" else None)
            elif self.method.has_tracking_step:
                self.tracking = CompiledTracking(self.method, compile_mode, freeze=self.device.type == "cpu")
            else:
                self.method.compile_for_inference(mode=compile_mode)
        if self.cuda_graphs:
            enable_cuda_graphs(self.method)

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """What ``segment`` runs the method under: inference mode, the precision's autocast and
        the engine's thread count (for callers that drive ``method.step`` themselves, e.g. the
        model benchmark)."""
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode(), self._autocast():
                yield
        finally:
            torch.set_num_threads(previous)

    def new_session(self, num_objects_hint: int | None = None) -> VideoSession:
        """A :class:`VideoSession` for one video, running the engine's compiled tracking step
        (if any) on frames without masks; drive it under :meth:`context`."""
        return VideoSession(self.method, num_objects_hint, tracking=self.tracking)

    def prepare_frame(self, frame: np.ndarray) -> Tensor:
        """(H, W, 3) uint8 RGB -> the (1, 3, H, W) float tensor ``segment`` would pass the method."""
        return self._ready(self._upload(frame))

    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _upload(self, frame: np.ndarray) -> "_Upload":
        """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1] on the device (NHWC strides with
        ``channels_last``: the HWC array already is that layout, so no transposition), with the
        event that marks its upload.

        On CUDA the uint8 frame is uploaded (4x fewer bytes than float) from pinned memory
        without blocking; called from the prefetch thread, on a side stream whose work the
        consumer waits for (:meth:`_ready`)."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise DataError(f"frames must be (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}")
        if self.device.type == "cpu":
            if self.channels_last:
                hwc = frame.astype(np.float32)
                hwc *= np.float32(1 / 255)
                return _Upload(torch.from_numpy(hwc).permute(2, 0, 1).unsqueeze(0))
            # numpy's cast of the HWC->CHW view is several times faster than torch's on CPU
            chw = frame.transpose(2, 0, 1).astype(np.float32)
            chw *= np.float32(1 / 255)
            return _Upload(torch.from_numpy(chw).unsqueeze(0))
        host = torch.from_numpy(np.ascontiguousarray(frame)).pin_memory()
        with torch.cuda.stream(self._upload_stream) if self._upload_stream is not None else contextlib.nullcontext():
            tensor = host.to(self.device, non_blocking=True).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
            if not self.channels_last:
                tensor = tensor.contiguous()
            ready = torch.cuda.Event() if self._upload_stream is not None else None
            if ready is not None:
                ready.record(self._upload_stream)
        return _Upload(tensor, ready)  # the consumer waits on the event before using the frame

    def _ready(self, upload: "_Upload") -> Tensor:
        """The uploaded frame, once the compute stream waits for its side-stream upload."""
        if upload.ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(upload.ready)
            upload.tensor.record_stream(current)  # the allocator must not reuse it before compute is done
        return upload.tensor

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
        results = self._segment(frames, get_mask)
        if progress:  # counts frames processed (not decoded ahead), with fps and ETA
            results = _with_progress(results, total, progress if isinstance(progress, str) else "segment")
        if self.threads is None:
            yield from results
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield from results
        finally:
            torch.set_num_threads(previous)

    def _prepared(self, frames: Iterable[tuple[str, np.ndarray]], get_mask) -> Iterator[tuple]:
        """(name, frame, given mask, upload or exception) per frame, ``prefetch`` frames ahead."""
        def prepare(item):
            name, frame = item
            try:
                upload = self._upload(frame)
            except DataError as exc:  # raised when the frame is reached, after the checks in order
                upload = exc
            return name, frame, get_mask(name), upload

        if self.prefetch == 0:
            return map(prepare, frames)
        if self.device.type == "cuda" and self._upload_stream is None:
            self._upload_stream = torch.cuda.Stream(self.device)
        return prefetched(frames, self.prefetch, prepare)

    def _segment(self, frames, get_mask) -> Iterator[FrameResult]:
        tracker = ObjectIds()
        stats = RunStats()
        self.last_stats = stats
        session = None
        size = None
        pending: list[tuple[int, str, Tensor, Tensor | None, list[int]]] = []
        iterator = frames
        start = time.perf_counter()
        with torch.inference_mode():
            for index, (name, frame, given, upload) in enumerate(self._prepared(iterator, get_mask)):
                if isinstance(upload, DataError):
                    raise upload
                if size is None:
                    size = frame.shape[:2]
                elif frame.shape[:2] != size:
                    raise DataError(f"frame {name} is {frame.shape[1]}x{frame.shape[0]}, the first frame {size[1]}x{size[0]}")
                new_masks, new_ids = None, []
                if given is not None:
                    if given.shape != size:
                        raise DataError(f"mask for frame {name} is {given.shape[1]}x{given.shape[0]} (WxH) but "
                                        f"the frames are {size[1]}x{size[0]}")
                    new_masks, new_ids = tracker.given_objects(given, self.device)
                if session is None and not new_ids:
                    # No object yet: all background, the method does not see the frame.
                    stats.frames += 1
                    yield FrameResult(index, name, np.zeros(size, np.uint8),
                                      torch.ones(1, *size) if self.keep_probabilities else None)
                    continue
                if session is None:
                    session = self.new_session()
                tensor = self._ready(upload)
                if not self.method.clip_wise:
                    prob = self._timed(stats, lambda: session.step(tensor, new_masks, new_ids))
                    yield self._result(index, name, prob[0], tracker, stats)
                    continue
                pending.append((index, name, tensor, new_masks, new_ids))
                if len(pending) == self.clip_length:
                    yield from self._run_clip(session, pending, tracker, stats)
                    pending = []
            if pending:
                yield from self._run_clip(session, pending, tracker, stats)
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

    def _run_clip(self, session: VideoSession, pending, tracker, stats) -> Iterator[FrameResult]:
        frames = torch.stack([p[2][0] for p in pending]).unsqueeze(0)
        if self.channels_last:  # (1, L, 3, H, W) with NHWC strides per frame
            frames = frames.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        probs = self._timed(stats, lambda: session.step_clip(frames, [p[3] for p in pending], [p[4] for p in pending]))
        for (index, name, *_), prob in zip(pending, probs):
            yield self._result(index, name, prob, tracker, stats)

    def _result(self, index: int, name: str, prob: Tensor, tracker: ObjectIds, stats: RunStats) -> FrameResult:
        # (the session checked the shape: (O + 1, H, W), O = tracker.count)
        internal = channel_labels(prob)
        stats.frames += 1
        kept = prob.float().cpu() if self.keep_probabilities else None
        return FrameResult(index, name, tracker.to_user_labels(internal), kept)


def _check_compiled_cpu_step(option: str, purpose: str, compile_mode: str | None, device: torch.device,
                             method: VOSMethod) -> None:
    """An option of the compiled CPU tracking step (aot_dir, winograd) needs compile, the CPU and a
    method with a tracking step: VOSInputError naming the option and what is missing."""
    if compile_mode is None:
        raise VOSInputError(f"InferenceEngine: {option} {purpose} and needs compile=True (or the --fastest preset)")
    if device.type != "cpu":
        raise VOSInputError(f"InferenceEngine: {option} is for the CPU path, got device {str(device)!r}")
    if not method.has_tracking_step:
        raise VOSInputError(f"InferenceEngine: {option} needs a method with a tracking step (TTVOS, CRVOS, RGMP); "
                            f"{method.name} has none")


def _compile_mode(compile: bool | str) -> str | None:
    if compile is False or compile is None:
        return None
    if compile is True:
        return "default"
    if compile not in COMPILE_MODES:
        raise VOSInputError(f"InferenceEngine: compile must be a bool or one of {COMPILE_MODES}, got {compile!r}")
    return compile


def _with_progress(results: Iterator[FrameResult], total: int | None, label: str) -> Iterator[FrameResult]:
    """A tqdm bar advanced once per result the engine yields (a frame processed), with frames
    per second and the time left."""
    from tqdm import tqdm

    with tqdm(total=total, desc=label, unit="frame", leave=False) as bar:
        for result in results:
            bar.update(1)
            yield result

