"""soft_aggregate benchmark: O = 1, 5, 10 objects at 480 x 854, forward, backward, both.

Floor (CPU, 2 threads, float32, O = 5): the forward reads 5 planes and writes 6 of
480*854*4 B = 1.64 MB, 18 MB in all; at the measured ~36 GB/s copy rate that is 0.50 ms. The
backward reads grad_out (6 planes) and prob (5) and writes 5: 26 MB, 0.73 ms. Arithmetic is
small (about 2 divisions per element). Eager runs prod, cat, clamp, div, log and softmax as
separate passes (about 10 full passes and temporaries): ~5 ms measured.
Memory floor column (benchmarks/bandwidth.py, with P = H W elements a plane): forward reads prob
(O P) and writes the log-odds (O + 1) P: (2 O + 1) P elements; backward also reads the upstream
gradient ((O + 1) P) and writes grad prob (O P): (3 O + 1) P; forward+backward: the sum.
Prediction before writing the kernel: forward ~0.7 ms (7x eager, 2.4x the compiled reference at
~1.65 ms), backward ~1.2 ms. Outcome: see benchmarks/results/soft_aggregate.csv and the README.
"""
from __future__ import annotations

import torch

import vos_kernels
from benchmarks.bandwidth import compulsory_bytes
from benchmarks.harness import BenchCase, backward_only, default_compare, forward_backward, fused_variants
from vos_kernels.reference import soft_aggregate_reference

HEIGHT, WIDTH = 480, 854
TINY = (16, 24)  # --tiny (dry runs): the same cases at a size that runs in milliseconds on a CPU


def _gradients_close(out, ref) -> bool:
    # The float32 eager gradient is itself off by ~1e-5 of its largest value (clamped ratios
    # reach 1e7): compare gradients at 1e-3 of the largest magnitude.
    return default_compare(out, ref, tolerance=1e-3)


def _fused(backend: str):
    return lambda prob: vos_kernels.soft_aggregate(prob, backend=backend)


def _variants(device: str) -> dict:
    variants = {"eager": lambda prob: soft_aggregate_reference(prob),
                "compiled": torch.compile(soft_aggregate_reference, dynamic=False)}
    return {**variants, **fused_variants(device, "soft_aggregate", _fused)}


def cases(device: str, quick: bool, tiny: bool = False) -> list[BenchCase]:
    height, width = TINY if tiny else (HEIGHT, WIDTH)
    dtypes = [torch.float32] + ([torch.bfloat16] if device == "cuda" else [])
    out = []
    for dtype in dtypes:
        for objects in ((5,) if quick else (1, 5, 10)):
            def setup(objects=objects, dtype=dtype):
                g = torch.Generator().manual_seed(objects)
                prob = torch.rand(1, objects, height, width, generator=g).to(device, dtype)
                return {"prob": prob.requires_grad_()}
            shape = f"B=1 O={objects} {height}x{width}"
            forward = _variants(device)

            def floor(direction):
                return lambda prob: compulsory_bytes(direction, [prob], prob[:, :1].numel() * (prob.shape[1] + 1),
                                                     [prob], prob.dtype)
            out.append(BenchCase("soft_aggregate", shape, "forward", dtype, device, setup,
                                 {k: (lambda f: (lambda prob: f(prob.detach())))(f) for k, f in forward.items()},
                                 floor_bytes=floor("forward")))
            out.append(BenchCase("soft_aggregate", shape, "backward", dtype, device, setup,
                                 {k: backward_only(f, ["prob"]) for k, f in forward.items()}, compare=_gradients_close,
                                 floor_bytes=floor("backward")))
            if not quick:
                out.append(BenchCase("soft_aggregate", shape, "forward+backward", dtype, device, setup,
                                     {k: forward_backward(f, ["prob"]) for k, f in forward.items()},
                                     compare=_gradients_close, floor_bytes=floor("forward+backward")))
    return out
