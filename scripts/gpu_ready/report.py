"""build/gpu-ready/report.json, report.md and (on request) the table in docs/gpu.md."""
from __future__ import annotations

import json
from pathlib import Path

BEGIN, END = "<!-- gpu-ready:begin -->", "<!-- gpu-ready:end -->"
DOC_HEADING = "# GPU readiness\n"


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0%}"
    return str(value)


def cuda_table(kernels: list[dict]) -> str:
    """One row per CUDA kernel, dtype and arch."""
    lines = ["| kernel | arch | dtype | direction | regs | spill B | stack B | shared B (static + dynamic) | "
             "threads | occupancy |", "|---|---|---|---|---|---|---|---|---|---|"]
    for k in sorted(kernels, key=lambda r: (r["name"], str(r["arch"]))):
        shared = _cell(k.get("shared_bytes"))
        if k.get("dynamic_shared_bytes"):
            shared += f" ({k['static_shared_bytes']} + {k['dynamic_shared_bytes']})"
        lines.append(f"| {k['name']} | {k['arch']} | {_cell(k.get('dtype'))} | {_cell(k.get('direction'))} | "
                     f"{_cell(k.get('regs'))} | {_cell(k.get('spill_bytes'))} | {_cell(k.get('stack_bytes'))} | "
                     f"{shared} | {_cell(k.get('threads'))} | {_cell(k.get('occupancy'))} |")
    return "\n".join(lines)


def triton_table(kernels: list[dict]) -> str:
    """Per Triton kernel, arch and dtype, the worst case over its compiled specializations."""
    groups: dict[tuple, list[dict]] = {}
    for k in kernels:
        if k.get("regs") is not None:
            groups.setdefault((k["name"], str(k["arch"]), str(k.get("dtype"))), []).append(k)
    lines = ["| kernel | arch | dtype | direction | regs (max) | spill B (max) | shared B (max) | occupancy (min) | "
             "specializations |", "|---|---|---|---|---|---|---|---|---|"]
    for (name, arch, dtype), rows in sorted(groups.items()):
        lines.append(f"| {name} | {arch} | {dtype} | {_cell(rows[0].get('direction'))} | "
                     f"{max(r['regs'] for r in rows)} | {max(r.get('spill_bytes') or 0 for r in rows)} | "
                     f"{max(r.get('shared_bytes') or 0 for r in rows)} | "
                     f"{_cell(min(r['occupancy'] for r in rows if r.get('occupancy') is not None))} | {len(rows)} |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    env = report["environment"]
    parts = [f"Built with torch {env.get('torch')} (CUDA {env.get('cuda')}), triton {env.get('triton')}, "
             f"nvcc {env.get('nvcc')}, TORCH_CUDA_ARCH_LIST={env.get('arch_list')}; "
             f"build {report['timings'].get('build_s', 0):.0f} s.",
             "", "Occupancy: the estimate for the row's arch (registers, shared memory, threads per block from "
             "`__launch_bounds__`); dynamic shared memory at the case named in the notes. Spill: ptxas's spill "
             "stores per thread; stack: the stack frame (spills, call frames, local arrays).", "", "CUDA kernels:", "",
             cuda_table([k for k in report["kernels"] if k["source"] == "cuda"])]
    triton = [k for k in report["kernels"] if k["source"] == "triton"]
    if triton:
        parts += ["", "Triton kernels (scripts/gpu_ready/triton_aot.py):", "", triton_table(triton)]
    if report["notes"]:
        parts += ["", "Notes:", ""] + [f"- {n}" for n in report["notes"]]
    if report["failures"]:
        parts += ["", "Failures:", ""] + [f"- {f}" for f in report["failures"]]
    return "\n".join(parts) + "\n"


def write(report: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


def record(doc: Path, body: str) -> None:
    """Replace what lies between the gpu-ready markers of `doc` (created with a heading if absent)."""
    text = doc.read_text() if doc.exists() else f"{DOC_HEADING}\n{BEGIN}\n{END}\n"
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{doc} must hold exactly one {BEGIN} ... {END} pair")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    doc.write_text(f"{head}{BEGIN}\n{body.rstrip()}\n{END}{tail}")
