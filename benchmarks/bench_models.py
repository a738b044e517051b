"""Whole-model benchmark: each method over a synthetic 854 x 480 video, fused ops vs eager ops.

For every method (RGMP single scale, CRVOS, TTVOS, PCVOS at clip lengths 5, 15, 25) and 1 and
5 objects, the same model (random weights: speed does not depend on them) segments the same
video through the inference engine twice in one process: once on the fused vos_kernels ops
(variant "fused") and once inside `vos_kernels.use_backend("reference")` (variant
"reference", the baseline). The table gives ms per video, frames per second (every frame,
the annotated first one included), the speed-up of the fused kernels, the peak extra memory,
and whether the fused run's probabilities match the reference run's (to 1e-3).

On CUDA the engine runs bfloat16 autocast (aggregation stays float32 in the kernels); on CPU,
float32. Methods that are not installed in this checkout are skipped with a notice.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

import vos_kernels
from benchmarks.harness import BenchCase

HEIGHT, WIDTH = 480, 854
CLIP_LENGTHS = (5, 15, 25)


def _configs(quick: bool) -> list[tuple[str, str, dict]]:
    """(label, registry name, config) of every model configuration benchmarked."""
    configs = [("rgmp (1 scale)", "rgmp", {"scales": (1.0,)}), ("crvos", "crvos", {}), ("ttvos", "ttvos", {})]
    for length in (CLIP_LENGTHS[:1] if quick else CLIP_LENGTHS):
        configs.append((f"pcvos (L={length})", "pcvos", {"clip_length": length}))
    return configs


def _video(objects: int, frames: int):
    from vos_models.data.synthetic import SyntheticClipGenerator

    clip = SyntheticClipGenerator(HEIGHT, WIDTH, frames, min_objects=objects, max_objects=objects, seed=7).clip(0)
    rgb = (clip.frames.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    names = [f"{i:05d}" for i in range(frames)]
    return list(zip(names, rgb)), {names[0]: clip.labels[0].numpy().astype(np.uint8)}


def _runner(method, device: str, backend: str | None):
    from vos_models.engine.inference import InferenceEngine

    precision = "bfloat16" if device == "cuda" else "float32"
    engine = InferenceEngine(method, device=device, precision=precision, keep_probabilities=True)

    def run(frames, masks):
        with torch.inference_mode(), (vos_kernels.use_backend(backend) if backend else _null()):
            probs = [r.probabilities for r in engine.segment(frames, masks)]
        return torch.stack(probs)

    return run


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _probabilities_close(out, ref) -> bool:
    return out.shape == ref.shape and bool((out.float() - ref.float()).abs().max() <= 1e-3)


def cases(device: str, quick: bool) -> list[BenchCase]:
    from vos_models.registry import build_method

    out = []
    for label, name, config in _configs(quick):
        try:
            method = build_method(name, **config)
        except Exception as exc:  # a method missing from this checkout is reported, not fatal
            print(f"bench_models: skipping {label}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        frames = 1 + config.get("clip_length", 3 if device == "cpu" else 20)
        for objects in ((1,) if quick else (1, 5)):
            def setup(objects=objects, frames=frames):
                video, masks = _video(objects, frames)
                return {"frames": video, "masks": masks}
            out.append(BenchCase(
                op=label, shape=f"{WIDTH}x{HEIGHT} O={objects} T={frames}", direction="inference",
                dtype=torch.bfloat16 if device == "cuda" else torch.float32, device=device, setup=setup,
                variants={"reference": _runner(method, device, "reference"), "fused": _runner(method, device, None)},
                baseline="reference", compare=_probabilities_close, warmup=1, min_runs=2, max_runs=5,
                items_per_call=frames))
    return out
