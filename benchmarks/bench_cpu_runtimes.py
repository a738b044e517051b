"""Our PyTorch paths against ONNX Runtime and OpenVINO on the CPU: one tracking step at 480p.

``python -m benchmarks.bench_cpu_runtimes [--methods ttvos,crvos] [--objects 1,3]
[--threads 2,all] [--rounds N] [--record] [--quick] [--no-rss]``

For each method, at 854 x 480, random weights (speed does not depend on them), synthetic
frames, one steady-state step (the frame after the annotated first one, from a copy of the state
it left; PCVOS, which is clip-wise, a one-frame clip as the Tracker steps it) is timed on the
runtimes below. A method with a tracking step (TTVOS, CRVOS, single-scale RGMP) is exported once
per object count to ONNX (``vos_models.export``) for ONNX Runtime and OpenVINO; PCVOS (and
multi-scale RGMP) have none, so they get our three paths only and a row saying why they are not
exported:

====================  ==========================================================================
ours fp32             ``InferenceEngine(method)``: ``method.step`` eager, float32, fused ops
ours fast             + bfloat16 autocast and batch norms folded (``fold_norms``), eager
ours best             the documented fastest path (``vos-segment --fastest``,
                      ``engine.presets.fastest_options``): with a tracking step, that step
                      compiled whole, weights frozen (``engine.tracking``); for PCVOS
                      bfloat16 + folded norms + channels-last, eager
ORT fp32              ONNX Runtime, CPU provider, ``intra_op_num_threads`` = threads
OV fp32 / OV bf16     OpenVINO CPU, ``INFERENCE_PRECISION_HINT`` f32 / bf16,
                      ``INFERENCE_NUM_THREADS`` = threads, ``PERFORMANCE_HINT: LATENCY``
====================  ==========================================================================

(bfloat16 only where the CPU has it, ``engine.presets.cpu_has_fast_bfloat16()``; else the
bf16 rows run float32 / are skipped, and say so.) Every runtime gets the same inputs: the
frame and the state ours fp32 left after the first frame. Rounds are interleaved (each round
runs every runtime once, so a noisy neighbour slows all alike); the median of ``--rounds``
after ``--warmup`` rounds is reported, with the 20th and 80th percentiles in the CSV.

Agreement with ours fp32 on the same step: max |difference| of the probabilities (float32
runtimes: float rounding only, ~1e-5) and, for the bfloat16 ones, the % of pixels whose label
(argmax) agrees. Load time: ORT session creation, OpenVINO read + compile, ours-best's first
call (Inductor compile); the eager paths have none beyond building the engine (fold_norms
checks its fold on a probe video). Peak RSS: the peak resident set of a fresh child process
that loads and runs only that runtime (:mod:`benchmarks.cpu_runtime_child`; the ONNX children
never import torch), one object, all threads. It is the child's ``VmHWM``, not its
``ru_maxrss``: Linux carries ``ru_maxrss`` over ``execve`` from the forked parent (this
benchmark's process, gigabytes), so every child would report the parent's figure.

Threads: 2 and all (``os.cpu_count()``); on a 2-core machine these coincide and run once.

Output: two markdown tables (timings; load, memory and agreement), also written to
``cpu_runtimes.md``, and one CSV row per runtime appended to ``cpu_runtimes.csv``, in
``benchmarks/runs/`` (git-ignored) or ``benchmarks/results/`` with ``--record`` (record.py's
conventions: machine, commit, torch on every row).

Cost: 13 minutes of wall time at 480p with the defaults on the shared 2-core machine (4 Dec
2026: Inductor compiles 18-84 s per method and object count, CRVOS's ResNet-50 dominates the
steps, the RSS children build, compile and run once more). ``--quick``: 64 x 96, TTVOS and
CRVOS, one object, 3 rounds: a smoke run of about 4 minutes, mostly compiles (``--no-rss``
saves the children's).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks import record
from benchmarks.harness import interleaved_ms

SIZE = (480, 854)
QUICK_SIZE = (64, 96)
METHODS = ("ttvos", "crvos", "rgmp", "pcvos")
RUNTIMES = ("ours_fp32", "ours_fast", "ours_best", "ort_fp32", "ov_fp32", "ov_bf16")
LABELS = {"ours_fp32": "ours fp32", "ours_fast": "ours fast", "ours_best": "ours best", "ort_fp32": "ORT fp32",
          "ov_fp32": "OV fp32", "ov_bf16": "OV bf16"}
CSV_COLUMNS = ["timestamp", "machine", "device_name", "commit", "torch", "onnxruntime", "openvino", "method", "size",
               "objects", "threads", "runtime", "precision", "median_ms", "p20_ms", "p80_ms", "rounds", "load_s",
               "peak_rss_mb", "max_abs_diff", "label_agreement_pct", "note"]


@dataclass
class Runtime:
    """One runtime ready to time: ``step()`` -> probabilities (1, O + 1, H, W) as numpy."""

    key: str
    precision: str
    load_s: float
    step: object
    times_ms: list = field(default_factory=list)
    prob: np.ndarray | None = None
    note: str = ""


def _bf16() -> bool:
    from vos_models.engine.presets import cpu_has_fast_bfloat16

    return cpu_has_fast_bfloat16()


def _versions() -> dict[str, str]:
    out = {}
    for name in ("onnxruntime", "openvino"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    return out


def _start(method, height: int, width: int, objects: int):
    """The state after the annotated first frame (ours fp32, the fused ops) and the next frame."""
    from vos_models.engine.inference import InferenceEngine
    from vos_models.export import synthetic_video

    frames, masks = synthetic_video(height, width, objects)
    engine = InferenceEngine(method)
    session = engine.new_session()
    with engine.context():
        session.step(frames[:1], masks, list(range(1, objects + 1)))
    return session.state, frames[1:2]


def _ours(method, key: str, state, frame) -> Runtime:
    """One of our PyTorch paths, stepping from a copy of ``state``."""
    from vos_models.engine.inference import InferenceEngine

    from benchmarks.cpu_runtime_child import ours_engine_options, ours_step

    options = ours_engine_options(key, method)
    precision = options.get("precision", "float32")
    start = time.perf_counter()
    engine = InferenceEngine(copy.deepcopy(method), **options)  # fold_norms folds a copy; compile freezes

    def step():
        return ours_step(engine, state, frame).float().numpy()

    if engine.tracking is not None:
        step()  # the Inductor compile: load time of this runtime
    load_s = time.perf_counter() - start
    note = "" if key == "ours_fp32" or precision == "bfloat16" else "no bf16 on this CPU: float32"
    if key == "ours_best":
        made = (f"compile {engine.tracking.compile_seconds:.1f} s" if engine.tracking is not None
                else "no tracking step: eager, channels-last")
        note = made + (f"; {note}" if note else "")
    return Runtime(key, precision, load_s, step, note=note)


def _onnx(key: str, model: Path, feeds: dict, threads: int) -> Runtime:
    from benchmarks.cpu_runtime_child import _onnx_runtime

    load_s, run = _onnx_runtime(key, str(model), threads)
    if key == "ort_fp32":
        step = lambda: run(feeds)[0]  # noqa: E731  (outputs in order: prob first)
    else:
        step = lambda: np.asarray(run(feeds)["prob"])  # noqa: E731
    return Runtime(key, "bfloat16" if key == "ov_bf16" else "float32", load_s, step)


def _rss(key: str, model: Path, inputs: Path, method: str, config: dict, size, threads: int) -> float | None:
    """Peak RSS (MB) of a fresh process running only this runtime (one object)."""
    command = [sys.executable, "-m", "benchmarks.cpu_runtime_child", key, "--threads", str(threads)]
    if key.startswith("ours"):
        command += ["--method", method, "--config", json.dumps(config), "--size", f"{size[0]}x{size[1]}"]
    else:
        command += ["--model", str(model), "--inputs", str(inputs)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        print(f"bench_cpu_runtimes: RSS child {key} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _agreement(prob: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    diff = float(np.abs(prob.astype(np.float32) - reference).max())
    labels = float((prob.argmax(axis=1) == reference.argmax(axis=1)).mean() * 100)
    return diff, labels


def run_case(method, name: str, objects: int, threads_list: list[int], size, rounds: int, warmup: int,
             workdir: Path) -> list[dict]:
    """Every runtime on one method and object count; one row per (threads, runtime). A method
    without a tracking step (RGMP, PCVOS) cannot be exported: its rows are ours only."""
    from vos_models.export import export_tracking_step

    height, width = size
    model = workdir / f"{name}_{objects}.onnx"
    exported = method.has_tracking_step
    export_s = 0.0
    if exported:
        started = time.perf_counter()
        export_tracking_step(method, model, height=height, width=width, objects=objects)
        export_s = time.perf_counter() - started
    state, frame = _start(method, height, width, objects)
    if exported:
        feeds = {"frame": frame.numpy(), **{f: getattr(state, f).float().numpy() for f in method.tracked_inputs}}
        np.savez(workdir / f"{name}_{objects}_inputs.npz", **feeds)
    rows = []
    ours = {}
    for threads in threads_list:
        torch.set_num_threads(threads)
        if not ours:  # one engine per path (Inductor compiles once); torch's threads are set per round
            ours = {key: _ours(method, key, state, frame) for key in RUNTIMES if key.startswith("ours")}
        runtimes = [*ours.values()]
        for key in ("ort_fp32", "ov_fp32", "ov_bf16") if exported else ():
            if key == "ov_bf16" and not _bf16():
                continue
            runtimes.append(_onnx(key, model, feeds, threads))
        times, last = interleaved_ms({runtime.key: runtime.step for runtime in runtimes}, rounds, warmup)
        for runtime in runtimes:
            runtime.times_ms, runtime.prob = times[runtime.key], last[runtime.key]
        reference = next(r for r in runtimes if r.key == "ours_fp32").prob
        for runtime in runtimes:
            diff, labels = _agreement(runtime.prob, reference)
            rows.append({"method": name, "size": f"{width}x{height}", "objects": objects, "threads": threads,
                         "runtime": runtime.key, "precision": runtime.precision,
                         "median_ms": statistics.median(runtime.times_ms),
                         "p20_ms": _percentile(runtime.times_ms, 20), "p80_ms": _percentile(runtime.times_ms, 80),
                         "rounds": rounds, "load_s": runtime.load_s, "peak_rss_mb": None, "max_abs_diff": diff,
                         "label_agreement_pct": labels,
                         "note": runtime.note or (f"exported in {export_s:.1f} s" if runtime.key == "ort_fp32"
                                                  else "")})
        print(f"  {name} O={objects} threads={threads}: "
              + ", ".join(f"{LABELS[r.key]} {statistics.median(r.times_ms):.1f} ms" for r in runtimes),
              file=sys.stderr, flush=True)
    return rows


def _cell(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def tables(rows: list[dict], skipped: list[tuple[str, str]]) -> str:
    """Markdown: the timings per (method, objects, threads), then load time, peak RSS and agreement."""
    keys = sorted({(r["method"], r["objects"], r["threads"]) for r in rows},
                  key=lambda k: (METHODS.index(k[0]), k[1], k[2]))
    lines = ["| method | objects | threads | " + " | ".join(f"{LABELS[k]} ms" for k in RUNTIMES)
             + " | speed of ours best vs OV bf16 (OV ms / ours ms; >= 1: ours as fast or faster) |",
             "|---|---|---|" + "---|" * (len(RUNTIMES) + 1)]
    for method, objects, threads in keys:
        by = {r["runtime"]: r for r in rows if (r["method"], r["objects"], r["threads"]) == (method, objects, threads)}
        cells = [_cell(by[k]["median_ms"]) if k in by else "-" for k in RUNTIMES]
        ratio = (by["ov_bf16"]["median_ms"] / by["ours_best"]["median_ms"]
                 if "ours_best" in by and "ov_bf16" in by else None)
        lines.append(f"| {method} | {objects} | {threads} | " + " | ".join(cells) + f" | {_cell(ratio, 2)} |")
    for method, why in skipped:
        lines.append(f"| {method} | - | - | not exported: {why} |" + " |" * len(RUNTIMES))
    lines += ["", "| method | objects | threads | runtime | precision | load s | peak RSS MB | max abs diff vs ours fp32 "
              "| labels agree % | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method, objects, threads in keys:
        for r in rows:
            if (r["method"], r["objects"], r["threads"]) == (method, objects, threads):
                lines.append(f"| {method} | {objects} | {threads} | {LABELS[r['runtime']]} | {r['precision']} | "
                             f"{_cell(r['load_s'], 2)} | {_cell(r['peak_rss_mb'], 0)} | {r['max_abs_diff']:.1e} | "
                             f"{r['label_agreement_pct']:.3f} | {r['note']} |")
    return "\n".join(lines)


def write(rows: list[dict], skipped: list[tuple[str, str]], markdown: str, folder: Path, header: str) -> None:
    """Append the CSV rows (record.py's environment on each) and write the markdown."""
    env = record.environment("cpu")
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    common = {"timestamp": now, "machine": env["machine"], "device_name": env["device_name"],
              "commit": env["commit"], "torch": env["torch"], **_versions()}
    out = [{**common, **{k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items() if v is not None}}
           for r in rows]
    out += [{**common, "method": m, "note": f"not exported: {why}"} for m, why in skipped]
    path = folder / "cpu_runtimes.csv"
    record.append_csv(path, out, CSV_COLUMNS)
    from vos_models.atomic import write_text

    write_text(folder / "cpu_runtimes.md", f"{header}\n\n{markdown}\n")
    print(f"\nbench_cpu_runtimes: rows appended to {path}, tables in {folder / 'cpu_runtimes.md'}", file=sys.stderr)


def _threads(text: str) -> tuple[list[int], str]:
    """'2,all' -> the distinct thread counts, and a note when some coincide."""
    wanted = [os.cpu_count() or 1 if part.strip() == "all" else int(part) for part in text.split(",")]
    distinct = list(dict.fromkeys(wanted))
    note = ""
    if len(distinct) < len(wanted):
        note = (f"threads {text} coincide on this {os.cpu_count()}-core machine: run once with "
                f"{', '.join(map(str, distinct))}")
    return distinct, note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all four)")
    parser.add_argument("--objects", default="1,3", help="object counts, comma-separated")
    parser.add_argument("--threads", default="2,all", help="thread counts, comma-separated; 'all' = os.cpu_count()")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--quick", action="store_true", help="64 x 96, one object, 3 rounds: a smoke run")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child processes")
    parser.add_argument("--record", action="store_true",
                        help="write into the tracked benchmarks/results/ (default: benchmarks/runs/, git-ignored)")
    args = parser.parse_args(argv)
    from vos_models.export import NO_TRACKING_STEP
    from vos_models.registry import build_method

    size = QUICK_SIZE if args.quick else SIZE
    objects_list = [1] if args.quick else [int(v) for v in args.objects.split(",")]
    rounds = 3 if args.quick else args.rounds
    threads_list, threads_note = _threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    env = record.environment("cpu")
    versions = _versions()
    header = (f"# CPU runtimes, one tracking step at {size[1]}x{size[0]}: {env['device_name']} "
              f"({os.cpu_count()} cpus), torch {env['torch']}, onnxruntime {versions['onnxruntime']}, "
              f"openvino {versions['openvino']}, commit {env['commit']}, bf16 {'yes' if _bf16() else 'no'}, "
              f"{rounds} rounds (median) after {args.warmup} warm-up")
    print(header, file=sys.stderr)
    if threads_note:
        print(f"bench_cpu_runtimes: {threads_note}", file=sys.stderr)
    rows, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="bench_cpu_runtimes.") as tmp:
        workdir = Path(tmp)
        for name in methods:
            torch.manual_seed(0)
            method = build_method(name).eval()
            if not method.has_tracking_step:
                skipped.append((name, NO_TRACKING_STEP.get(name, "no tracking step")))
            for objects in objects_list:
                case_rows = run_case(method, name, objects, threads_list, size, rounds, args.warmup, workdir)
                if not args.no_rss and objects == objects_list[0]:
                    threads = max(threads_list)
                    for row in case_rows:
                        if row["threads"] == threads and (method.has_tracking_step or row["runtime"].startswith("ours")):
                            row["peak_rss_mb"] = _rss(row["runtime"], workdir / f"{name}_{objects}.onnx",
                                                      workdir / f"{name}_{objects}_inputs.npz", name,
                                                      dict(method.build_config), size, threads)
                rows += case_rows
    markdown = tables(rows, skipped)
    notes = [threads_note] if threads_note else []
    notes.append(f"Peak RSS: a fresh process running only that runtime, {objects_list[0]} object(s), "
                 f"{max(threads_list)} threads (its VmHWM; ORT/OV children without torch; ours include "
                 f"torch, building the method and the annotated first frame).")
    markdown += "\n\n" + "\n".join(f"- {n}" for n in notes)
    print(markdown)
    write(rows, skipped, markdown, record.RESULTS_DIR if args.record else record.SCRATCH_DIR, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
