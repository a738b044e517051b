"""One training step per method, fused ops against the eager reference ops.

What is timed: ``method.training_loss(batch)`` (the method's own unrolled clip loss), its
backward and one Adam step, from a fixed batch of synthetic clips (B clips of T frames, two
objects): what ``vos-train`` runs per step without the data loader. "reference" runs the same
model inside ``vos_kernels.use_backend("reference")`` (the baseline), "fused" with the default
backend (a skipped row where that would be the reference: no C++ extension, no GPU backend),
"compiled reference" the reference ops under ``torch.compile`` of the training loss (its first,
untimed call compiles). Each variant trains its own copy of one randomly initialised model, so both first
calls (the untimed call that measures peak memory, and the comparison) start from the same
weights and the same random draws (the RNG is seeded before every step); the pass column compares those first losses (within 1e-3 relative, 2e-2 under
low precision). Float32 (the trainer's default, ``--amp none``).

Sizes: 384 x 384, B = 2, T = 3 on CUDA (a typical crop size of the methods' training recipes);
128 x 128 on CPU (the steps cost seconds there); ``tiny``: 32 x 32, B = 1, one timed step.
"""
from __future__ import annotations

import copy
import sys

import torch

import vos_kernels
from benchmarks.harness import BenchCase, default_backend_variant, unavailable

METHODS = (("rgmp", {}), ("crvos", {}), ("ttvos", {}), ("pcvos", {}))
FRAMES, OBJECTS = 3, 2


def _size(device: str, tiny: bool) -> tuple[int, int, int]:
    """(height, width, clips per batch)."""
    if tiny:
        return 32, 32, 1
    return (384, 384, 2) if device == "cuda" else (128, 128, 2)


def _repeats(device: str, tiny: bool) -> dict:
    """Untimed and timed steps per variant (after the first, untimed, call that measures memory)."""
    if tiny:
        return dict(warmup=0, min_runs=1, max_runs=1)
    # CPU: a step takes 0.3-2.5 s; 5+ timed steps, since two gave medians 20% apart between runs
    return dict(warmup=1, min_runs=3, max_runs=10) if device == "cuda" else dict(warmup=1, min_runs=5, max_runs=7)


def _batch(height: int, width: int, clips: int, device: str) -> dict:
    from vos_models.data.synthetic import SyntheticClipGenerator

    generator = SyntheticClipGenerator(height, width, FRAMES, min_objects=OBJECTS, max_objects=OBJECTS, seed=3)
    samples = [generator.clip(i) for i in range(clips)]
    return {"frames": torch.stack([s.frames for s in samples]).to(device),
            "masks": torch.stack([s.masks(OBJECTS) for s in samples]).to(device),
            "num_objects": torch.tensor([s.num_objects for s in samples], device=device)}


class _Step:
    """A variant: one optimiser step of its own copy of the model; returns the loss (detached)."""

    def __init__(self, method, backend: str | None, compiled: bool = False):
        self.method = copy.deepcopy(method).train()
        self.optimizer = torch.optim.Adam([p for p in self.method.parameters() if p.requires_grad], lr=1e-5)
        self.backend = backend
        # torch.compile of the loss (forward and its backward; graph breaks allowed: the
        # methods' unrolled loops are Python); the optimiser step stays eager, as in vos-train
        self.loss = torch.compile(self.method.training_loss) if compiled else self.method.training_loss

    def __call__(self, batch):
        torch.manual_seed(0)  # training losses draw random numbers (RGMP's frame sampling): same draws for both
        self.optimizer.zero_grad(set_to_none=True)
        with vos_kernels.use_backend(self.backend) if self.backend else torch.enable_grad():
            loss, _ = self.loss(batch)
            loss.backward()
        self.optimizer.step()
        return loss.detach().float()


def _close(out, ref) -> bool:
    return bool(torch.isfinite(out)) and abs(float(out) - float(ref)) <= 1e-3 * max(1.0, abs(float(ref)))


def cases(device: str, quick: bool, tiny: bool = False, wanted: list[str] | None = None) -> list[BenchCase]:
    """`wanted`: run.py's --cases texts; only the methods of those cases are built."""
    from vos_models.registry import build_method

    height, width, clips = _size(device, tiny)
    out = []
    for name, config in METHODS:
        if wanted and not any(text.lower() in f"{name} training step" for text in wanted):
            continue
        try:
            torch.manual_seed(0)
            method = build_method(name, **config).to(device)
        except Exception as exc:  # a method missing from this checkout is reported, not fatal
            print(f"bench_train_step: skipping {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        fused, skipped = default_backend_variant("bench_train_step", device)
        # Inductor's CPU compile of a whole training step crashed (SIGSEGV, torch 2.13.0, TTVOS at
        # 128x128) and takes minutes on 2 cores: on CPU the row says so instead of being timed.
        compiled = _Step(method, "reference", compiled=True) if device.startswith("cuda") else unavailable(
            "torch.compile of a whole training step runs on CUDA only here (on CPU it crashed with SIGSEGV "
            "under torch 2.13.0 and compiles for minutes)")
        variants = {"reference": _Step(method, "reference"), "fused": _Step(method, None) if fused else skipped,
                    "compiled reference": compiled}
        del method
        out.append(BenchCase(
            op=f"{name} training step", shape=f"B={clips} T={FRAMES} O={OBJECTS} {height}x{width}",
            direction="forward+backward+adam", dtype=torch.float32, device=device,
            setup=lambda h=height, w=width, c=clips: {"batch": _batch(h, w, c, device)},
            variants={k: (lambda step: lambda batch: step(batch))(v) for k, v in variants.items()},
            baseline="reference", compare=_close, **_repeats(device, tiny), items_per_call=clips,
            memory_from_first_call=True))
    return out
