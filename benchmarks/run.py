"""Run the benchmark suites: `python -m benchmarks.run [--ops NAME ...] [--cases TEXT ...] [--device cpu|cuda] [--quick]`.

Every module benchmarks/bench_<name>.py is a suite (see benchmarks/harness.py). Prints one
markdown table per suite, appends the rows (machine, commit, torch version, figures) to
benchmarks/runs/<name>.csv (git-ignored; benchmarks/results/ with --record, or --results-dir), and draws <name>.png from this run (where
matplotlib is installed). On CPU it first measures a STREAM-triad bandwidth with the run's
threads (benchmarks/bandwidth.py); rows whose case states the bytes it must move get their
% of that memory floor (CSV column floor_pct, table column "% of memory floor"). `--tiny` runs every suite's cases at toy sizes (scripts/gpu_check.sh
--dry-run); `--variants` keeps only some variants of each case (the baseline always runs).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _suites() -> list[str]:
    # A bench_*.py without cases() is a standalone benchmark with its own command line
    # (bench_cpu_runtimes: several runtimes and subprocesses), not a harness suite.
    return sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py") if "\ndef cases(" in p.read_text())


def _keep_variants(case, keep: list[str] | None, skip: list[str] | None):
    """The case with its baseline and the variants whose name contains a text of `keep` (all
    when None) and none of `skip`."""
    def has(name: str, texts: list[str]) -> bool:
        return any(text.lower() in name.lower() for text in texts)

    case.variants = {name: fn for name, fn in case.variants.items()
                     if name == case.baseline or ((keep is None or has(name, keep)) and not (skip and has(name, skip)))}
    return case


def main(argv: list[str] | None = None) -> int:
    suites = _suites()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="+", choices=suites, default=suites, help="suites to run (default: all)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="device (default: cuda when available, else cpu)")
    parser.add_argument("--quick", action="store_true", help="a small subset of shapes (smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timed runs per variant")
    parser.add_argument("--record", action="store_true",
                        help="append the rows to the tracked benchmarks/results/ (default: benchmarks/runs/, ignored)")
    parser.add_argument("--no-record", action="store_true", help="print only; write no CSV or chart")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, for dry runs of the scripts")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="folder of the CSVs and charts (default: benchmarks/runs, or benchmarks/results "
                             "with --record)")
    parser.add_argument("--variants", nargs="+", metavar="TEXT", default=None,
                        help="run only the variants whose name contains one of these texts (and each baseline)")
    parser.add_argument("--skip-variants", nargs="+", metavar="TEXT", default=None,
                        help="leave out the variants whose name contains one of these texts (never the baseline)")
    parser.add_argument("--cases", nargs="+", metavar="TEXT", default=None,
                        help="run only the cases whose name contains one of these texts (case-insensitive), "
                             "e.g. --ops models --cases crvos 'pcvos (L=5)'")
    args = parser.parse_args(argv)

    import torch

    from benchmarks import record
    from benchmarks.harness import malloc_mode, run_case

    malloc_mode("timing")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("benchmarks: --device cuda asked for, but no CUDA device is available", file=sys.stderr)
        return 2
    env = record.environment(device)
    gb_per_s = None
    if device == "cpu":  # the memory floor of the CPU rows, measured with the threads they run on
        from benchmarks.bandwidth import triad_gb_per_s

        gb_per_s = triad_gb_per_s()
        env["triad_gb_s"] = f"{gb_per_s:.1f}"
    print(f"# vos_kernels benchmarks on {env['device_name']} ({device}, {env['threads']} threads), "
          f"torch {env['torch']}, commit {env['commit']}"
          + (f", STREAM-triad {gb_per_s:.1f} GB/s" if gb_per_s else ""))
    failed = False
    for name in args.ops:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        # A suite whose cases are costly to build (whole models) takes the --cases texts itself.
        selection = {"wanted": args.cases} if "wanted" in inspect.signature(module.cases).parameters else {}
        cases = module.cases(device, args.quick, tiny=args.tiny, **selection)
        if args.variants or args.skip_variants:
            cases = [_keep_variants(case, args.variants, args.skip_variants) for case in cases]
        if args.cases:
            wanted = [text.lower() for text in args.cases]
            cases = [case for case in cases if any(text in case.op.lower() for text in wanted)]
            if not cases:
                print(f"benchmarks: suite {name}: no case name contains any of {args.cases}", file=sys.stderr)
                return 2
        started = time.perf_counter()
        results = []
        results_dir = args.results_dir or (record.RESULTS_DIR if args.record else record.SCRATCH_DIR)
        for case in cases:
            print(f"  {case.op} {case.shape} {case.direction} ...", file=sys.stderr, flush=True)
            rows = run_case(case, budget_s=args.budget, gb_per_s=gb_per_s)
            results.extend(rows)
            if not args.no_record:  # case by case: a run stopped by a time box keeps what it measured
                record.append_csv(results_dir / f"{name}.csv", record.rows_of(rows, env))
        print(f"\n## {name} ({time.perf_counter() - started:.0f} s)\n")
        print(record.table(results))
        failed |= any(r.passed is False for r in results)
        if not args.no_record:
            record.chart(results_dir / f"{name}.png", results,
                         f"{name}: speed-up over eager, {env['device_name']}, {device}, {env['threads']} threads, "
                         f"torch {env['torch']}, {env['commit']}")
    if failed:
        print("\nSome variants did not match their baseline (pass column = NO): see above.", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
