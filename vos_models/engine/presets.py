"""The fastest inference options per device: what ``--fastest`` and ``Tracker(fastest=True)``
pick, from what was measured (README "Measured results", docs/cpu_performance.md, docs/gpu.md).

CPU: batch norms folded into the convolutions; bfloat16 autocast where oneDNN has a bfloat16
path on this CPU (AVX-512-BF16 or AMX; otherwise float32, since emulated bfloat16 is slower);
and, for a method with a tracking step (TTVOS, CRVOS, single-scale RGMP), that step compiled
whole with frozen weights (:mod:`.tracking`): 1.3-2x over eager bfloat16 at 480p on 2 cores, at
the price of a first-frame compile in every process (30-50 s for TTVOS and CRVOS at 480p, ~130 s
for RGMP; ``aot_dir`` keeps it on disk), with its wide 3x3 convolutions by Winograd
(:mod:`.winograd`; not on CPUs with AMX, where it is unmeasured). Methods without one run eager
in channels-last, which oneDNN prefers.

GPU: bfloat16, channels-last and the method's CUDA graphs (measured fastest on an H200 for
RGMP, CRVOS and TTVOS).
"""
from __future__ import annotations

from typing import Any

import torch

from .interface import VOSMethod

# the kernel's CPU description, read where torch has no AMX probe
_CPUINFO = "/proc/cpuinfo"


def cpu_has_fast_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 natively here (AVX-512-BF16 or AMX), not by emulation."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Sapphire Rapids and later Xeons): oneDNN's direct
    bfloat16 convolutions then run on the matrix units. torch's own probe where this torch has
    it (a private function), else the kernel's CPU flags (Linux)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        return bool(probe())
    try:
        with open(_CPUINFO) as f:
            return any(line.startswith("flags") and " amx_tile" in line for line in f)
    except OSError:
        return False


def fastest_options(method: VOSMethod, device: str | torch.device = "cpu") -> dict[str, Any]:
    """InferenceEngine keyword arguments (``precision`` included) of the fastest path for
    ``method`` on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return {"precision": "bfloat16", "channels_last": True, "cuda_graphs": True}
    options: dict[str, Any] = {"precision": "bfloat16" if cpu_has_fast_bfloat16() else "float32",
                               "fold_norms": True}
    if method.has_tracking_step:
        options["compile"] = True
        # Winograd measured 1.10-1.34x faster whole steps with AVX-512-BF16 (bfloat16);
        # with AMX the direct convolutions are several times faster while the transforms are
        # not, and it is unmeasured there: off until measured (benchmarks/bench_winograd.py).
        options["winograd"] = not cpu_has_amx()
    else:
        options["channels_last"] = True
    return options
