"""The pass/fail rules of `make gpu-ready`, over the facts the other modules collect.

Each rule returns failures (one clear line each, the command exits non-zero) and notes (listed
in the report, not failing):
  - the import in the venv must succeed, from the CUDA build, with _compiled_with_cuda() true;
  - every vos_kernels:: op with a CPU kernel has a CUDA kernel (direct, or a composite that serves
    CUDA), unless its public op has no CUDA backend, in which case its Triton launcher must exist
    (memory_read); `auto` must pick the op's GPU backend for CUDA tensors;
  - no forward kernel spills; a backward kernel that spills is listed with its reason;
  - static + dynamic shared memory of a block within the arch's per-block limit;
  - no compiler warning in csrc/cuda (other csrc warnings are listed).
The Triton kernels' rules are applied by triton_aot.py itself (its failures are passed on).
"""
from __future__ import annotations

from . import occupancy

# Why a backward kernel is allowed to spill: kernel name without its dtype -> reason, from its SASS
# (cuobjdump -sass: where the STL/LDL stand). Measured with torch 2.11 / nvcc 13.0.
_DIVISION_CALL = ("registers live across the call of an IEEE division's slow path (a CALL in the SASS, "
                  "taken only for special operands) are saved to the stack: a few bytes, next to the call, "
                  "not in the per-element work")
BACKWARD_SPILL_REASONS: dict[str, str] = {
    "min_background_aggregate_backward": _DIVISION_CALL,
    "soft_aggregate_backward": _DIVISION_CALL,
    "template_update_backward_scores": (
        "float64 on sm_80: around the calls of the 64-bit row / Nt and of the float64 1 / (1 + w), one 64-bit "
        "value is stored to the stack once per thread and reloaded once; taking the batch index from a 2-D "
        "grid instead spilled more (24 B)"),
    "clip_window_attention_backward": (
        "sm_80: ptxas keeps loop-invariant sizes (table rows, window extents) on the stack, stored once in "
        "the prologue and reloaded only around the table-gradient loops at the start and end, not in the "
        "per-pair loops; 32-bit in-window counters made it worse (52-60 B on sm_80 and sm_90), so they "
        "stay 64-bit"),
}


def import_failures(facts: dict, expected_root: str) -> list[str]:
    if "import_error" in facts:
        return [f"import: vos_kernels failed to import in the venv: {facts['import_error']}"]
    failures = []
    if not str(facts.get("vos_kernels_file", "")).startswith(expected_root):
        failures.append(f"import: vos_kernels came from {facts.get('vos_kernels_file')}, not the CUDA build in "
                        f"{expected_root}")
    if not facts.get("compiled_with_cuda"):
        failures.append("import: vos_kernels._C reports _compiled_with_cuda() == False (built without CUDA kernels)")
    return failures


def registration_failures(facts: dict) -> tuple[list[str], list[str]]:
    """(failures, notes) of the dispatcher check and the CUDA-tensor routes."""
    failures, notes = [], []
    publics = facts.get("public_ops", {})
    for op in facts.get("ops", []):
        if not op["cpu"] or op["cuda"]:
            continue
        if op["composite"]:
            notes.append(f"{op['name']}: CUDA served by its CompositeExplicitAutograd kernel")
            continue
        public = op.get("public_op")
        backends = publics.get(public, {}).get("implemented", [])
        if public is None or "cuda" in backends:
            failures.append(f"registration: {op['name']} has a CPU kernel but no CUDA kernel "
                            f"(missing TORCH_LIBRARY_IMPL(vos_kernels, CUDA, ...))")
        elif "triton" in backends and op.get("triton_launcher"):
            notes.append(f"{op['name']}: no CUDA kernel by design; {public}'s GPU backend is Triton "
                         f"(vos_kernels.triton.{public}.{op['name'].split('::')[1]}_triton)")
        else:
            why = op.get("triton_error") or "no Triton launcher either"
            failures.append(f"registration: {op['name']} has a CPU kernel, no CUDA kernel and {why}")
    for row in facts.get("dynamic_shared", []):
        if row.get("python_bytes") != row["bytes"]:
            failures.append(f"shared memory: {row['kernel']} (acc {row['acc_bytes']} B) needs {row['bytes']} B by the "
                            f"CUDA launch code but {row.get('python_bytes')} B by "
                            "vos_kernels.ops.clip_window_attention.cuda_shared_bytes, which routes 'auto'")
    for public, info in publics.items():
        expected = "cuda" if "cuda" in info["implemented"] else "triton"
        route = facts.get("routes", {}).get(public)
        if route != expected:
            failures.append(f"route: {public} on CUDA tensors resolves to {route!r}, expected {expected!r}")
    return failures, notes


def dynamic_shared_bytes(facts: dict) -> dict[tuple[str, int], int]:
    """(kernel, accumulator bytes) -> dynamic shared bytes per block at the probe's case."""
    return {(row["kernel"], row["acc_bytes"]): row["bytes"] for row in facts.get("dynamic_shared", [])}


def accumulator_bytes(dtype: str | None) -> int:
    return 8 if dtype == "float64" else 4


def kernel_rows(kernels: list[dict], facts: dict, ptxas: dict[str, dict]) -> tuple[list[dict], list[str], list[str]]:
    """Report rows of the CUDA kernels with occupancy, and (failures, notes).

    spill_bytes: ptxas's spill stores (from the build log, `ptxas`: "mangled@arch" -> figures);
    stack_bytes: cuobjdump's stack frame, which also holds call frames (e.g. of a double division's
    slow path) and local arrays, so it is reported but not judged."""
    dynamic = dynamic_shared_bytes(facts)
    rows, failures, notes = [], [], []
    for k in kernels:
        lim = occupancy.LIMITS.get(k["arch"])
        dyn = dynamic.get((k["kernel"], accumulator_bytes(k["dtype"])), 0)
        where = f"{k['name']} ({k['arch']})"
        figures = ptxas.get(f"{k['mangled']}@{k['arch']}")
        if figures is None:
            failures.append(f"spill: no ptxas figures for {where} in the build log (built without --resource-usage?)")
        spill = figures["spill_stores"] if figures else None
        row = {"name": k["name"], "source": "cuda", "arch": k["arch"], "regs": k["regs"], "spill_bytes": spill,
               "stack_bytes": k["stack"], "shared_bytes": k["shared"] + dyn, "static_shared_bytes": k["shared"],
               "dynamic_shared_bytes": dyn, "threads": k["threads"], "dtype": k["dtype"], "direction": k["direction"],
               "occupancy": None}
        if k["threads"] is None:
            failures.append(f"launch bounds: {where} declares no __launch_bounds__, so its threads per block "
                            "(and occupancy) are unknown")
        elif lim is not None:
            row["occupancy"], row["occupancy_limiter"] = occupancy.occupancy(lim, k["threads"], k["regs"],
                                                                             row["shared_bytes"])
        if spill and k["direction"] == "forward":
            failures.append(f"spill: forward kernel {where} spills {spill} B per thread (stack frame {k['stack']} B)")
        elif spill:
            reason = BACKWARD_SPILL_REASONS.get(k["name"].split("<")[0], "no reason recorded yet")
            row["spill_reason"] = reason
            notes.append(f"spill: backward kernel {where} spills {spill} B per thread: {reason}")
        if lim is not None and row["shared_bytes"] > lim.shared_per_block:
            failures.append(f"shared memory: {where} needs {row['shared_bytes']} B per block "
                            f"({k['shared']} static + {dyn} dynamic), over {lim.arch}'s {lim.shared_per_block} B")
        rows.append(row)
    return rows, failures, notes


def warning_failures(warnings: list[dict]) -> tuple[list[str], list[str]]:
    failures, notes = [], []
    for w in warnings:
        line = f"compiler warning: {w['file']}:{w['line']}: {w['message']} (x{w['count']})"
        (failures if w["file"].startswith("csrc/cuda/") else notes).append(line)
    return failures, notes
