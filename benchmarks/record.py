"""Recording benchmark results: the environment, the CSV log, the table and the chart."""
from __future__ import annotations

import csv
import datetime
import math
import os
import platform
import subprocess
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"   # tracked: written only with --record
# git-ignored (.gitignore: runs/): where a run writes by default, so that it changes no tracked file
SCRATCH_DIR = Path(__file__).resolve().parent / "runs"
COLUMNS = ["timestamp", "machine", "device_name", "threads", "commit", "torch", "op", "shape", "direction", "dtype",
           "device", "variant", "baseline", "passed", "median_ms", "p20_ms", "p80_ms", "speedup", "peak_extra_mb",
           "items_per_s", "floor_pct", "triad_gb_s", "error"]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict[str, str]:
    """Machine, device, threads, commit and torch version for every recorded row."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent).stdout.strip()
        commit += "+dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    device_name = torch.cuda.get_device_name() if device.startswith("cuda") else _cpu_name()
    return {"machine": f"{platform.node() or 'host'} ({os.cpu_count()} cpus, {_cpu_name()})",
            "device_name": device_name, "threads": str(torch.get_num_threads()), "commit": commit,
            "torch": torch.__version__}


def _fmt(x: float, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _rate(r) -> float:
    """Items (e.g. frames) per second of a result whose case declares items_per_call."""
    n = r.case.items_per_call
    return n * 1e3 / r.median_ms if n and r.median_ms and not math.isnan(r.median_ms) else float("nan")


def rows_of(results, env) -> list[dict]:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for r in results:
        c = r.case
        rows.append({"timestamp": now, **env, "op": c.op, "shape": c.shape, "direction": c.direction,
                     "dtype": str(c.dtype).replace("torch.", ""), "device": c.device, "variant": r.variant,
                     "baseline": c.baseline, "passed": "" if r.passed is None else str(r.passed),
                     "median_ms": _fmt(r.median_ms, 4), "p20_ms": _fmt(r.p20_ms, 4), "p80_ms": _fmt(r.p80_ms, 4),
                     "speedup": _fmt(r.speedup, 3), "peak_extra_mb": _fmt(r.peak_extra_mb, 1), "items_per_s": _fmt(_rate(r), 2),
                     "floor_pct": _fmt(r.floor_pct, 2), "error": r.error})
    return rows


def table(results) -> str:
    """A markdown table: op, shape, direction, dtype, variant, pass, median ms, speed-up, peak extra MB
    (then items per second and % of the memory floor where the rows have them)."""
    rates = any(r.case.items_per_call for r in results)
    floors = any(not math.isnan(r.floor_pct) for r in results)
    lines = ["| op | shape | direction | dtype | variant | pass | median ms | speed-up vs baseline | peak extra MB |"
             + (" per second |" if rates else "") + (" % of memory floor |" if floors else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if rates else "") + ("---|" if floors else "")]
    for r in results:
        c = r.case
        skipped = r.error.startswith("skipped:")
        mark = "baseline" if r.variant == c.baseline else "skipped" if skipped else ("yes" if r.passed else "NO")
        time = _fmt(r.median_ms, 3) if not r.error else r.error if skipped else f"error: {r.error}"
        lines.append(f"| {c.op} | {c.shape} | {c.direction} | {str(c.dtype).replace('torch.', '')} | {r.variant} | "
                     f"{mark} | {time} | {_fmt(r.speedup)}x | {_fmt(r.peak_extra_mb, 1)} |"
                     + (f" {_fmt(_rate(r), 2)} |" if rates else "") + (f" {_fmt(r.floor_pct, 0)} |" if floors else ""))
    return "\n".join(lines)


def append_csv(path: Path, rows: list[dict], columns: list[str] = COLUMNS) -> None:
    """Append `rows` under `columns` (the suites' COLUMNS by default); a log written before a
    column was added is first rewritten under the current header (its old rows keep their
    figures, the new columns empty)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != columns:
                old_rows = list(reader)
                with open(path, "w", newline="") as out:
                    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
                    writer.writeheader()
                    writer.writerows(old_rows)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def chart(path: Path, results, title: str) -> None:
    """Horizontal bars of each variant's speed-up over the baseline, one group per case (skipped,
    saying so, where matplotlib is not installed: the CSV holds every figure)."""
    try:
        import matplotlib
    except ImportError:
        print(f"benchmarks: chart {path.name} not drawn: matplotlib is not installed", flush=True)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values, colors = [], [], []
    palette = {}
    for r in results:
        if math.isnan(r.speedup):
            continue
        c = r.case
        labels.append(f"{c.shape} | {c.direction} | {r.variant} vs {c.baseline}")
        values.append(r.speedup)
        palette.setdefault(r.variant, f"C{len(palette)}")
        colors.append(palette[r.variant])
    if not values:
        return
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(values) + 1.5))
    bars = ax.barh(range(len(values)), values, color=colors)
    # each bar says its figure ("15.6x"), so nobody has to read it off the log axis
    ax.bar_label(bars, labels=[f"{v:.2f}x" if v < 10 else f"{v:.1f}x" for v in values], padding=3, fontsize=7)
    ax.set_yticks(range(len(values)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over the baseline (log scale, higher is faster)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
