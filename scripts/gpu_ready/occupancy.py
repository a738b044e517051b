"""Per-SM limits of the target GPUs and the theoretical occupancy of one kernel.

Occupancy = resident warps per SM / the SM's maximum, where the resident blocks per SM are the
fewest allowed by each limit (the CUDA occupancy calculator's model):

  by threads:   floor(max_warps / warps_per_block),  warps_per_block = ceil(threads / 32)
  by blocks:    max_blocks
  by registers: floor(floor(regs_per_sm / regs_per_warp) / warps_per_block),
                regs_per_warp = ceil(regs * 32 / reg_unit) * reg_unit
  by shared:    floor(shared_per_sm / smem_per_block),
                smem_per_block = ceil((static + dynamic + reserved) / shared_unit) * shared_unit
"""
from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class SmLimits:
    arch: str
    regs_per_sm: int
    max_regs_per_thread: int
    reg_unit: int              # registers are allocated per warp in units of this many
    max_threads: int
    max_blocks: int
    shared_per_sm: int         # bytes usable by blocks on one SM
    shared_per_block: int      # bytes one block may opt in to (static + dynamic)
    reserved_per_block: int    # bytes the driver reserves per resident block
    shared_unit: int           # allocation granularity of shared memory

    @property
    def max_warps(self) -> int:
        return self.max_threads // 32


# A100 (sm_80) and H100/H200 (sm_90), from the CUDA C programming guide's compute capability table.
LIMITS = {
    "sm_80": SmLimits("sm_80", 65536, 255, 256, 2048, 32, 164 * 1024, 163 * 1024, 1024, 128),
    "sm_90": SmLimits("sm_90", 65536, 255, 256, 2048, 32, 228 * 1024, 227 * 1024, 1024, 128),
}


def limits(arch: str) -> SmLimits:
    try:
        return LIMITS[arch]
    except KeyError:
        raise ValueError(f"no SM limits for arch {arch!r}; known: {sorted(LIMITS)}") from None


def blocks_per_sm(lim: SmLimits, threads: int, regs: int, shared_bytes: int) -> dict[str, int]:
    """Resident blocks per SM allowed by each limit (threads: per block; regs: per thread)."""
    if threads < 1:
        raise ValueError(f"threads per block must be >= 1, got {threads}")
    warps = math.ceil(threads / 32)
    by = {"threads": lim.max_warps // warps, "blocks": lim.max_blocks}
    if regs > 0:
        regs_per_warp = math.ceil(regs * 32 / lim.reg_unit) * lim.reg_unit
        by["registers"] = (lim.regs_per_sm // regs_per_warp) // warps
    if shared_bytes > 0:
        per_block = math.ceil((shared_bytes + lim.reserved_per_block) / lim.shared_unit) * lim.shared_unit
        by["shared"] = lim.shared_per_sm // per_block
    return by


def occupancy(lim: SmLimits, threads: int, regs: int, shared_bytes: int) -> tuple[float, str]:
    """(resident warps / max warps, the limiting resource) of one kernel on one SM."""
    by = blocks_per_sm(lim, threads, regs, shared_bytes)
    limiter = min(by, key=by.get)
    return min(1.0, by[limiter] * math.ceil(threads / 32) / lim.max_warps), limiter
