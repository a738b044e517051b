"""Portable default build versus a `-march=native` build, on the kernel benchmark cases.

    python -m benchmarks.compare_builds --build portable=DIR --build native=DIR2 [--rounds 7]
        [--threads 2] [--ops soft_aggregate memory_read ...] [--cases TEXT ...] [--budget 1.0] [--record]

Each DIR is a checkout of this repository with `vos_kernels._C` built in place (e.g. the
default build, and one made with VOS_KERNELS_CPU_FLAGS=-march=native in a second copy). Both
should hold the same commit: only the compiler flags may differ.

The builds run in two separate worker processes (this file, with PYTHONPATH and the working
directory set to the build's folder), kept alive for the whole run and asked in turn: each
round times every case on both builds back to back, the order alternating from case to case
and round to round, so that a noisy shared machine slows both alike. A worker times the fused
CPU kernel variant of a case of the kernel suites (benchmarks/bench_<op>.py, not the model
suite) with the harness's timer (warm-up, then the median of the timed calls): one figure per
build, case and round. The report gives, per case and build, the median over rounds, and the
ratio first build / second build as the median of the per-round ratios (1.00 = as fast;
> 1 the first build is slower) with their interquartile range. Only the ratios are meant to be
compared between machines.

Nothing is written unless --record is given: then the rows (machine, commit, torch version,
threads, rounds, per-build medians, ratio and its quartiles) are appended to benchmarks/results/compare_builds.csv.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNEL_SUITES = ("clip_window_attention", "memory_read", "min_background_aggregate", "soft_aggregate",
                 "template_update")
FUSED_PREFIX = "fused"  # the suites' name for the vos_kernels variants (CPU: "fused")
RESULTS_CSV = HERE / "results" / "compare_builds.csv"


# ------------------------------------------------------------------------------------------
# worker: runs inside one build's folder, kept alive for the whole comparison
def _case_key(case) -> str:
    return f"{case.op} | {case.shape} | {case.direction} | {str(case.dtype).replace('torch.', '')}"


def worker(ops: list[str], cases_filter: list[str] | None, threads: int, budget: float) -> None:
    """A line protocol on stdin/stdout: first prints what this process runs (extension folder,
    kernel copy, the case keys), then for every case key it reads, times the case's fused CPU
    variant and prints {"key": ..., "median_ms": ...} (inputs built at the first request)."""
    import importlib

    import torch

    from benchmarks.harness import malloc_mode, time_ms

    malloc_mode("timing")
    torch.set_num_threads(threads)
    import vos_kernels

    cases = {}
    for op in ops:
        for case in importlib.import_module(f"benchmarks.bench_{op}").cases("cpu", False):
            key = _case_key(case)
            if not cases_filter or any(text.lower() in key.lower() for text in cases_filter):
                fused = [name for name in case.variants if name.startswith(FUSED_PREFIX)]
                if len(fused) != 1:
                    raise SystemExit(f"compare_builds: case {key!r} has fused variants {fused}, expected one")
                cases[key] = (case, case.variants[fused[0]])
    print(json.dumps({"extension": str(Path(vos_kernels.__file__).parent), "cases": list(cases),
                      "cpu_isa": torch.ops.vos_kernels._cpu_isa(),
                      "portable_build": bool(torch.ops.vos_kernels._cpu_portable_build())}), flush=True)
    inputs: dict[str, dict] = {}
    for line in sys.stdin:
        key = line.strip()
        case, fn = cases[key]
        if key not in inputs:
            inputs[key] = case.setup()
        times = time_ms(lambda: fn(**inputs[key]), "cpu", warmup=case.warmup, min_runs=case.min_runs,
                        max_runs=case.max_runs, budget_s=budget)
        print(json.dumps({"key": key, "median_ms": statistics.median(times)}), flush=True)


# ------------------------------------------------------------------------------------------
# driver
class Worker:
    """One build's worker process (this file, with the build's folder first on PYTHONPATH)."""

    def __init__(self, name: str, folder: Path, args):
        self.name, self.folder = name, folder
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--threads", str(args.threads),
               "--budget", str(args.budget), "--ops", *args.ops]
        if args.cases:
            cmd += ["--cases", *args.cases]
        env = {**os.environ, "PYTHONPATH": str(folder), "OMP_NUM_THREADS": str(args.threads)}
        self.proc = subprocess.Popen(cmd, cwd=folder, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.info = self._read()
        if Path(self.info["extension"]).resolve() != (folder / "vos_kernels").resolve():
            raise SystemExit(f"compare_builds: the worker of {name} imported vos_kernels from {self.info['extension']}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"compare_builds: the worker of {self.name} ({self.folder}) died (see its stderr above)")
        return json.loads(line)

    def time(self, key: str) -> float:
        self.proc.stdin.write(key + "\n")
        self.proc.stdin.flush()
        return self._read()["median_ms"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _quantile(ordered: list[float], q: float) -> float:
    """Linear-interpolated quantile of a sorted list."""
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _parse_builds(specs: list[str]) -> list[tuple[str, Path]]:
    builds = []
    for spec in specs:
        name, sep, folder = spec.partition("=")
        path = Path(folder).expanduser().resolve()
        if not sep or not name or not path.is_dir():
            raise SystemExit(f"compare_builds: --build must be NAME=DIR with an existing DIR, got {spec!r}")
        if not list((path / "vos_kernels").glob("_C*.so")):
            raise SystemExit(f"compare_builds: {path}/vos_kernels has no built _C*.so (build it in place first)")
        builds.append((name, path))
    if len(builds) != 2:
        raise SystemExit("compare_builds: give exactly two --build NAME=DIR")
    return builds


def compare(args) -> int:
    builds = _parse_builds(args.build)
    names = [name for name, _ in builds]
    workers = [Worker(name, folder, args) for name, folder in builds]
    info = {w.name: w.info for w in workers}
    keys = workers[0].info["cases"]
    if not keys or keys != workers[1].info["cases"]:
        raise SystemExit(f"compare_builds: the builds offer different or no cases: {keys} vs "
                         f"{workers[1].info['cases']}")
    per_round: dict[str, dict[str, list[float]]] = {name: {key: [] for key in keys} for name in names}
    try:
        for r in range(args.rounds):
            for i, key in enumerate(keys):  # the two builds back to back on each case, order alternating
                for w in (workers if (r + i) % 2 == 0 else workers[::-1]):
                    per_round[w.name][key].append(w.time(key))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for w in workers:
            w.close()

    import torch

    from benchmarks import record

    env = record.environment("cpu")
    first, second = names
    print(f"# {first} vs {second}: {env['machine']}, torch {env['torch']}, commit {env['commit']}, "
          f"{args.threads} threads, {args.rounds} interleaved rounds")
    for name in names:
        print(f"#   {name}: kernels {info[name]['cpu_isa']}, portable build: {info[name]['portable_build']}")
    print(f"\n| op | shape | direction | dtype | {first} ms | {second} ms | {first} / {second} | ratio 25-75 % |\n"
          "|---|---|---|---|---:|---:|---:|---|")
    rows = []
    for key in per_round[first]:
        a, b = per_round[first][key], per_round[second].get(key)
        if not b:
            continue
        round_ratios = sorted(x / y for x, y in zip(a, b))
        ratio = statistics.median(round_ratios)
        low, high = _quantile(round_ratios, 0.25), _quantile(round_ratios, 0.75)
        op, shape, direction, dtype = (part.strip() for part in key.split("|"))
        print(f"| {op} | {shape} | {direction} | {dtype} | {statistics.median(a):.3f} | {statistics.median(b):.3f} "
              f"| {ratio:.3f} | {low:.3f}-{high:.3f} |")
        rows.append({"machine": env["machine"], "commit": env["commit"], "torch": torch.__version__,
                     "threads": args.threads, "rounds": args.rounds, "op": op, "shape": shape,
                     "direction": direction, "dtype": dtype, "build_a": f"{first} ({info[first]['cpu_isa']})",
                     "build_b": f"{second} ({info[second]['cpu_isa']})", "median_ms_a": f"{statistics.median(a):.4f}",
                     "median_ms_b": f"{statistics.median(b):.4f}", "ratio_a_over_b": f"{ratio:.4f}",
                     "ratio_q25": f"{low:.4f}", "ratio_q75": f"{high:.4f}"})
    ratios = [float(row["ratio_a_over_b"]) for row in rows]
    if ratios:
        print(f"\nratio {first} / {second}: median {statistics.median(ratios):.3f}, worst {max(ratios):.3f}, "
              f"best {min(ratios):.3f} over {len(ratios)} cases")
    if args.record and rows:
        RESULTS_CSV.parent.mkdir(parents=True, exist_ok=True)
        new = not RESULTS_CSV.exists()
        if not new:
            with RESULTS_CSV.open() as f:
                header = next(csv.reader(f), [])
            if header != list(rows[0]):
                raise SystemExit(f"compare_builds: {RESULTS_CSV} has columns {header}, this run writes {list(rows[0])}")
        with RESULTS_CSV.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)
        print(f"appended {len(rows)} rows to {RESULTS_CSV}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", action="append", default=[], metavar="NAME=DIR",
                        help="a build to time (give two; the ratio is first / second)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timed runs per case and round")
    parser.add_argument("--ops", nargs="+", choices=KERNEL_SUITES, default=list(KERNEL_SUITES))
    parser.add_argument("--cases", nargs="+", metavar="TEXT", default=None,
                        help="only the cases whose 'op | shape | direction | dtype' contains one of these texts")
    parser.add_argument("--record", action="store_true",
                        help=f"append the rows to {RESULTS_CSV.relative_to(HERE.parent)}")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.ops, args.cases, args.threads, args.budget)
        return 0
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
