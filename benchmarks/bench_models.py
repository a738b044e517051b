"""Whole-model benchmark: each method at 854 x 480, fused vs eager-reference ops, and fast paths.

What is timed: one propagated frame (frame-wise methods) or one clip of L frames (PCVOS) at the
steady state of a video, i.e. the method's ``step`` / ``step_clip`` from the state left by the
annotated first frame (a deep copy per call, so every call starts from the same state; copying
the small state costs well under 1% of a call). PCVOS's memory bank is brought to
``PCVOS_MEMORY_FRAMES`` entries first (its size in the middle of a YouTube-VOS video; the
cost of the reference memory read grows with it, see ``_fill_memory``). Frames per second = frames per call / median
time; the papers' FPS figures count model time per propagated frame the same way. Peak memory
is the extra memory of one call above what was in use before it (the model and the state):
CUDA ``max_memory_allocated``, CPU peak resident set (see harness.py), measured on the first,
untimed call of each variant.

Cases (all random weights: speed does not depend on them; synthetic frames):

* ``<method>`` at 1 and 5 objects, variant "fused" (the vos_kernels default backend) vs
  "reference" (the same model inside ``vos_kernels.use_backend("reference")``, the baseline),
  in the same process: RGMP (one scale), CRVOS, TTVOS, PCVOS (L=5).
* ``pcvos (L=5) channels_last+bfloat16`` (CPU, 5 objects): fused vs reference on the engine's
  CPU fast path, both variants channels-last with bfloat16 autocast.
* ``pcvos (L=15)``, ``pcvos (L=25)``: one object (a clip of 25 frames with five objects would
  cost several minutes per call on 2 cores), fused vs reference as above.
* ``<method> fast paths`` (one object; CRVOS and TTVOS on CPU, all four methods on CUDA and with
  ``tiny``, PCVOS with clips of L=5): the engine's options against the plain path: on CPU
  channels-last, bfloat16 autocast, both, and one thread instead of all; on CUDA float32 vs
  bfloat16 and float16 autocast, bfloat16 + channels-last, + CUDA graphs, and bfloat16 +
  channels-last + ``torch.compile`` (the first, untimed call compiles).

Precision: bfloat16 autocast on CUDA (the methods keep the aggregation in float32), float32 on
CPU. ``--quick``: one object, no L=15/25 and no fast-path cases (a smoke run). ``tiny`` (dry
runs of scripts/gpu_check.sh): every case at ``TINY`` (64 x 96) instead of 854 x 480.

Cost: two calls per variant (the first, untimed, also measures memory; the second is timed),
plus the annotated frame of each case. Design estimate for a quiet 2-core CPU: 12-18 minutes
for the full suite (RGMP with 5 objects, PCVOS with 5 objects, whose reference memory read over
15 memory frames alone takes tens of seconds, and PCVOS at L=25 dominate); ``--quick`` a few.
If a slower machine overshoots, ``PCVOS_MEMORY_FRAMES`` is the knob (the fused/reference ratio
of PCVOS falls with it).
"""
from __future__ import annotations

import copy
import sys

import numpy as np
import torch

import vos_kernels
from benchmarks.harness import BenchCase, default_backend_variant

HEIGHT, WIDTH = 480, 854
TINY = (64, 96)
OBJECTS = (1, 5)
LONG_CLIPS = (15, 25)
FRAME_WISE = (("rgmp", "rgmp", {"scales": (1.0,)}), ("crvos", "crvos", {}), ("ttvos", "ttvos", {}))
FAST_PATH_METHODS = ("crvos", "ttvos")
#: on CUDA (and in tiny runs) the fast paths of every method, as (label, registry name, config, clip length)
ALL_METHODS = (("rgmp", "rgmp", {"scales": (1.0,)}, 1), ("crvos", "crvos", {}, 1), ("ttvos", "ttvos", {}, 1),
               ("pcvos (L=5)", "pcvos", {"clip_length": 5}, 5))
#: PCVOS memory frames at the timed clip: the middle of a 150-frame video at L = 5 (YouTube-VOS
#: videos, on which the paper reports its FPS, have ~150 frames at the full frame rate)
PCVOS_MEMORY_FRAMES = 15


def _video(objects: int, frames: int, size: tuple[int, int] = (HEIGHT, WIDTH)) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 frames and the first frame's (H, W) labels 0..objects."""
    from vos_models.data.synthetic import SyntheticClipGenerator

    clip = SyntheticClipGenerator(*size, frames, min_objects=objects, max_objects=objects, seed=7).clip(0)
    rgb = (clip.frames.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return rgb, clip.labels[0].numpy().astype(np.uint8)


def _engine(method, device: str, **options):
    from vos_models.engine.inference import InferenceEngine

    options.setdefault("precision", "bfloat16" if device == "cuda" else "float32")
    return InferenceEngine(method, device=device, **options)


def _start(engine, rgb: np.ndarray, labels: np.ndarray, length: int) -> dict:
    """State after the annotated first frame, and the timed input (one frame or a clip of L)."""
    method = engine.method
    objects = int(labels.max())
    masks = torch.stack([torch.from_numpy(labels == k) for k in range(1, objects + 1)]).float().to(engine.device)
    ids = list(range(1, objects + 1))
    frames = [engine.prepare_frame(f) for f in rgb[: 1 + length]]
    session = engine.new_session()  # the engine's side of the contract: it moves the frame index on
    state = session.state
    with engine.context():
        session.step(frames[0], masks, ids)
        _fill_memory(state, PCVOS_MEMORY_FRAMES)
    if method.clip_wise:
        timed = torch.stack([f[0] for f in frames[1:]]).unsqueeze(0)
    else:
        timed = frames[1]
    return {"state": state, "frames": timed}


def _fill_memory(state, frames: int) -> None:
    """Bring a PCVOS memory bank to ``frames`` entries: the annotated frame's key and values
    written again (unpinned) until the bank has the size it has mid-video. What a memory read
    costs depends on the bank's size, not on its content."""
    memory = getattr(state, "memory", None)
    if memory is None:
        return
    p = memory.positions
    key, value = memory.keys[:, :, :p].clone(), memory.values[:, :, :p].clone()
    while len(memory.frames) < frames:
        memory.write(memory.frames[0], key, value)


def _step(engine, backend: str | None):
    """A variant: one propagated frame / clip from a copy of the start state."""
    method = engine.method

    def run(state, frames):
        with engine.context(), (vos_kernels.use_backend(backend) if backend else _null()):
            state = copy.deepcopy(state)
            if engine.channels_last and frames.dim() == 4:
                frames = frames.contiguous(memory_format=torch.channels_last)
            if method.clip_wise:
                n = frames.shape[1]
                return method.step_clip(state, frames, [None] * n, [[]] * n).float()
            if engine.tracking is not None:  # compiled whole (methods with a tracking step)
                return engine.tracking(state, frames).float()
            return method.step(state, frames, None, []).float()

    return run


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _close(tolerance: float):
    def compare(out, ref) -> bool:
        return out.shape == ref.shape and bool((out.float() - ref.float()).abs().max() <= tolerance)
    return compare


def _case(label: str, engine, device: str, objects: int, length: int, variants: dict, baseline: str,
          tolerance: float, notes: str = "", dtype: torch.dtype | None = None,
          size: tuple[int, int] = (HEIGHT, WIDTH)) -> BenchCase:
    def setup():
        rgb, labels = _video(objects, 1 + length, size)
        return _start(engine, rgb, labels, length)

    # On a GPU a call takes milliseconds: time more of them after warming up (CUDA graphs
    # capture and torch.compile compiles in the first, untimed call).
    repeats = dict(warmup=1, min_runs=5, max_runs=20) if device == "cuda" else dict(warmup=0, min_runs=1, max_runs=3)
    return BenchCase(op=label, shape=f"{size[1]}x{size[0]} O={objects}" + (f" L={length}" if length > 1 else ""),
                     direction="inference",
                     dtype=dtype or (torch.bfloat16 if device == "cuda" else torch.float32),
                     device=device, setup=setup, variants=variants, baseline=baseline, compare=_close(tolerance),
                     notes=notes, **repeats, items_per_call=length,
                     memory_from_first_call=True)


def _build(name: str, config: dict, label: str, wanted: list[str] | None = None):
    """The method, or None: when it cannot be built, or when no text of `wanted` (run.py's
    --cases) is in the case name `label` (so that a filtered run builds only what it runs)."""
    from vos_models.registry import build_method

    if wanted and not any(text.lower() in label.lower() for text in wanted):
        return None

    try:
        torch.manual_seed(0)
        return build_method(name, **config)
    except Exception as exc:  # a method missing from this checkout is reported, not fatal
        print(f"bench_models: skipping {label}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def _fused_step(engine, device: str):
    """The "fused" variant: the default backend; a skipped row where that backend would be the
    eager reference (vos_kernels._C not built, no GPU backend), never the reference under its name."""
    fused, skipped = default_backend_variant("bench_models", device)
    return _step(engine, None) if fused else skipped


def _fused_vs_reference(device: str, quick: bool, size: tuple[int, int], wanted=None) -> list[BenchCase]:
    tolerance = 1e-2 if device == "cuda" else 1e-3
    configs = [(label, name, config, 1) for label, name, config in FRAME_WISE]
    configs.append(("pcvos (L=5)", "pcvos", {"clip_length": 5}, 5))
    out = []
    for label, name, config, length in configs:
        method = _build(name, config, label, wanted)
        if method is None:
            continue
        engine = _engine(method, device)
        variants = {"reference": _step(engine, "reference"), "fused": _fused_step(engine, device)}
        for objects in ((1,) if quick else OBJECTS):
            out.append(_case(label, engine, device, objects, length, variants, "reference", tolerance, size=size))
    if quick:
        return out
    if device == "cpu":
        # The same comparison on the engine's CPU fast path (channels-last + bfloat16 autocast,
        # 1.9x on the convolutions of this class of CPU): what a CPU user runs.
        label = "pcvos (L=5) channels_last+bfloat16"
        method = _build("pcvos", {"clip_length": 5}, label, wanted)
        if method is not None:
            engine = _engine(method, device, channels_last=True, precision="bfloat16")
            variants = {"reference": _step(engine, "reference"), "fused": _fused_step(engine, device)}
            out.append(_case(label, engine, device, 5, 5, variants, "reference", 2e-2,
                             notes="bfloat16 autocast: outputs within 2e-2 of the reference ops",
                             dtype=torch.bfloat16, size=size))
    for length in LONG_CLIPS:
        label = f"pcvos (L={length})"
        method = _build("pcvos", {"clip_length": length}, label, wanted)
        if method is None:
            continue
        engine = _engine(method, device)
        variants = {"reference": _step(engine, "reference"), "fused": _fused_step(engine, device)}
        out.append(_case(label, engine, device, 1, length, variants, "reference", tolerance, size=size))
    return out


def _fast_path_variants(device: str) -> dict[str, dict]:
    if device == "cuda":
        return {"float32": {"precision": "float32"}, "bfloat16": {"precision": "bfloat16"},
                "float16": {"precision": "float16"},
                "bfloat16+channels_last": {"precision": "bfloat16", "channels_last": True},
                "bfloat16+channels_last+cuda_graphs": {"precision": "bfloat16", "channels_last": True,
                                                       "cuda_graphs": True},
                "bfloat16+channels_last+compile": {"precision": "bfloat16", "channels_last": True,
                                                   "compile": True}}
    return {"plain": {}, "channels_last": {"channels_last": True}, "bfloat16": {"precision": "bfloat16"},
            "channels_last+bfloat16": {"channels_last": True, "precision": "bfloat16"},
            "1 thread": {"threads": 1}}


def _fast_paths(device: str, size: tuple[int, int], every_method: bool, wanted=None) -> list[BenchCase]:
    out = []
    methods = ALL_METHODS if every_method else [(name, name, {}, 1) for name in FAST_PATH_METHODS]
    for label, name, config, length in methods:
        base = _build(name, config, f"{label} fast paths", wanted)
        if base is None:
            continue
        engines = {}
        for variant, options in _fast_path_variants(device).items():
            method = copy.deepcopy(base)  # channels-last converts the weights in place
            engines[variant] = _engine(method, device, **options)
        baseline = next(iter(engines))
        variants = {variant: _step(engine, None) for variant, engine in engines.items()}
        # Every variant starts from the state the baseline's engine produced (same inputs).
        out.append(_case(f"{label} fast paths", engines[baseline], device, 1, length, variants, baseline,
                         tolerance=0.1, notes="outputs within 0.1 of the baseline (bfloat16)", size=size))
    return out


def cases(device: str, quick: bool, tiny: bool = False, wanted: list[str] | None = None) -> list[BenchCase]:
    """`wanted`: run.py's --cases texts; only the methods of those cases are built."""
    size = TINY if tiny else (HEIGHT, WIDTH)
    out = _fused_vs_reference(device, quick, size, wanted)
    if not quick:
        out += _fast_paths(device, size, every_method=device == "cuda" or tiny, wanted=wanted)
    return out
