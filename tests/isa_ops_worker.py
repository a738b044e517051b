"""Worker of tests/test_portable_build.py: every op on the cpu backend against the reference.

Run in a fresh process (`python tests/isa_ops_worker.py`), so that VOS_KERNELS_CPU_ISA picks
the kernel copy (or under qemu-x86_64, so that the emulated CPU does). Prints one JSON line:
the active copy and, per op and dtype, the worst |cpu - reference| of the output and of every
input gradient as a fraction of kernel_utils.tolerance(dtype) (atol = rtol = tolerance), the
reference computed in float64.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import vos_kernels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_utils import tolerance  # noqa: E402


def _op_cases(dtype):
    """(name, fn(backend, *inputs) -> tensor, inputs) for every op, small odd shapes."""
    g = torch.Generator().manual_seed(7)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64).to(dtype)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    q = torch.softmax(randn(2, 3, 2, 7, 13) * 3, dim=2)
    heads, window, shift = 2, (2, 4, 4), (1, 2, 2)
    table_rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
    query_key = randn(2, 37, 8).transpose(1, 2)  # strided (B, Ck, N)
    return [
        ("soft_aggregate", lambda b, p: vos_kernels.soft_aggregate(p, backend=b), (rand(2, 3, 7, 13),)),
        ("min_background_aggregate", lambda b, x: vos_kernels.min_background_aggregate(x, backend=b), (q,)),
        ("memory_read dense", lambda b, *t: vos_kernels.memory_read(*t, backend=b),
         (query_key, randn(2, 8, 53), randn(2, 5, 53))),
        ("memory_read top-7", lambda b, *t: vos_kernels.memory_read(*t, top_k=7, backend=b),
         (query_key, randn(2, 8, 53), randn(2, 5, 53))),
        ("template_update", lambda b, *t: vos_kernels.template_update(*t, backend=b),
         (randn(3, 6, 29), randn(3, 5, 29), rand(3, 6, 5), rand(3))),
        ("clip_window_attention",
         lambda b, *t: vos_kernels.clip_window_attention(*t[:3], rel_pos_bias=t[3], num_heads=heads, window=window,
                                                         shift=shift, backend=b),
         (randn(1, 3, 9, 11, 8), randn(1, 3, 9, 11, 8), randn(1, 3, 9, 11, 8), randn(table_rows, heads))),
        # 2x7x7 = 98 tokens per window, not a multiple of the GEMMs' 8-row blocks: the buffers
        # must hold the rounded-up rows in every copy (the 4-double vectors of the non-AVX-512
        # copies once gave 100 rows for 104 and corrupted the heap)
        ("clip_window_attention 2x7x7",
         lambda b, *t: vos_kernels.clip_window_attention(*t, num_heads=2, window=(2, 7, 7), shift=(0, 0, 0),
                                                         backend=b),
         (randn(1, 2, 7, 14, 8), randn(1, 2, 7, 14, 8), randn(1, 2, 7, 14, 8))),
    ]


def run_ops() -> dict:
    worst: dict[str, float] = {}
    for dtype in (torch.float32, torch.float64):
        tol = tolerance(dtype)
        for name, fn, inputs in _op_cases(dtype):
            results = []
            # The reference runs in float64 (the float32 eager reference is itself far off where
            # the aggregation ops clamp ratios up to 1e7); the kernel in the case's dtype.
            for backend, compute in (("cpu", dtype), ("reference", torch.float64)):
                leaves = [t.detach().to(compute).requires_grad_() for t in inputs]
                out = fn(backend, *leaves)
                weight = torch.linspace(-1, 1, out.numel(), dtype=compute).reshape(out.shape)
                grads = torch.autograd.grad((out * weight).sum(), leaves)
                results.append([out.detach(), *grads])
            ratio = 0.0
            for got, want in zip(*results):
                allowed = tol + tol * want.abs()
                ratio = max(ratio, float(((got.double() - want).abs() / allowed).max()))
            worst[f"{name} {str(dtype).replace('torch.', '')}"] = ratio
    return {"isa": torch.ops.vos_kernels._cpu_isa(), "worst_error_over_tolerance": worst}


if __name__ == "__main__":
    print(json.dumps(run_ops()))
