"""The memory floor of a CPU kernel: the bytes it must move over the bandwidth this process gets.

`triad_gb_per_s()` runs a STREAM-triad-like loop, a = b + s * c over three float32 arrays far
larger than any cache, with torch's CPU threads (the threads the benchmark uses), and reports
the best of several passes in GB/s, counting 3 x 4 bytes per element (two reads, one write: the
STREAM convention, which leaves out the write-allocate read). The best pass, not the median: the
floor is what the memory system can deliver, and a loaded machine only ever lowers the figure.

`compulsory_bytes()` is the traffic a kernel cannot avoid (see its docstring); a kernel's
percent of floor is 100 * (bytes / bandwidth) / its median time: 100 % means it ran at the
triad rate, over 100 % means its data stayed in cache between calls.
"""
from __future__ import annotations

import time
from typing import Iterable

import torch

TRIAD_ELEMENTS = 1 << 24   # 64 MB per array, 192 MB in all: well past the last-level cache
TRIAD_PASSES = 10


def triad_gb_per_s(elements: int = TRIAD_ELEMENTS, passes: int = TRIAD_PASSES) -> float:
    """Best-of-`passes` rate of a[:] = b + 3 * c (float32, torch's current CPU threads), in GB/s."""
    b = torch.rand(elements)
    c = torch.rand(elements)
    a = torch.empty(elements)
    torch.add(b, c, alpha=3.0, out=a)  # first touch of `a`: page faults stay out of the timing
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        torch.add(b, c, alpha=3.0, out=a)
        best = min(best, time.perf_counter() - start)
    return 3 * 4 * elements / best / 1e9


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def compulsory_bytes(direction: str, inputs: Iterable[torch.Tensor], output_numel: int,
                     differentiated: Iterable[torch.Tensor], dtype: torch.dtype) -> int:
    """Bytes a kernel must move, from its tensors' sizes:

        forward           = |inputs| + |outputs|                  (read each input, write each output once)
        backward          = |inputs| + |outputs| + |differentiated| (read the saved inputs and the
                            upstream gradient, the size of the outputs; write one gradient per
                            differentiated input)
        forward+backward  = forward + backward

    |x| = numel x element size; `output_numel`: the forward outputs' element count, in `dtype`.
    """
    inputs, differentiated = list(inputs), list(differentiated)
    forward = tensor_bytes(inputs) + output_numel * torch.empty((), dtype=dtype).element_size()
    backward = forward + tensor_bytes(differentiated)
    return {"forward": forward, "backward": backward, "forward+backward": forward + backward}[direction]


def percent_of_floor(floor_bytes: int, median_ms: float, gb_per_s: float) -> float:
    """100 * (time the floor allows) / (time measured)."""
    if not floor_bytes or not gb_per_s or not median_ms or median_ms != median_ms:
        return float("nan")
    return 100 * (floor_bytes / (gb_per_s * 1e9) * 1e3) / median_ms
