"""The GPU check: `bash scripts/gpu_check.sh OUT_DIR [--dry-run]` (this module does the work).

Stages (scripts/gpu_check/stages.py): build, tests, kernels, models, models-compile, train,
long-video, roofline; then OUT_DIR/summary.md (report.py). Each stage has a time box and its own
log; a stage that fails does not stop the others. Exit status 0 when every stage passed (or was
skipped with its reason), 1 otherwise.

--dry-run: the same stages on the CPU with toy sizes and few frames, so that the script cannot
rot where there is no GPU (tests/test_gpu_check.py runs it). It writes only under OUT_DIR and
the ignored build outputs of the in-place build.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import platform
import sys
import time
from pathlib import Path

from gpu_check import report, stages

#: What the lent GPU machine has (issue 15) and what the project imports: (module, package, use).
PACKAGES = [("torch", "torch", "everything"), ("triton", "triton", "the Triton kernels"),
            ("numpy", "numpy", "vos_models"), ("ninja", "ninja", "the build"), ("pytest", "pytest", "the tests"),
            ("cv2", "opencv-python-headless", "video files (not used here)"),
            ("PIL", "Pillow", "image files in vos_models.data (not used here; a stand-in that raises on use is put "
                              "on PYTHONPATH)"),
            ("tqdm", "tqdm", "progress bars (switched off here)"),
            ("matplotlib", "matplotlib", "charts (skipped; the CSVs hold every figure)")]
REQUIRED = {"torch", "numpy", "ninja", "pytest"}
SHIMS = Path(__file__).resolve().parent / "shims"


def missing_packages() -> list[tuple[str, str, str]]:
    return [p for p in PACKAGES if importlib.util.find_spec(p[0]) is None]


def _describe_machine(dry_run: bool) -> list[str]:
    import torch

    from benchmarks import record

    env = record.environment("cpu" if dry_run else "cuda")
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    return [f"Machine: {env['machine']}; device {env['device_name']}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, triton {triton_version}; commit {env['commit']}; "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="folder for the CSVs, logs and summary.md")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: check the script itself")
    parser.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages (and the summary)")
    args = parser.parse_args(argv)

    missing = missing_packages()
    absent_required = [p for p in missing if p[0] in REQUIRED]
    print("gpu_check: missing on this machine: " + ("; ".join(f"{pkg} ({use})" for _, pkg, use in missing) or "nothing"),
          flush=True)
    if absent_required:
        print(f"gpu_check: cannot run without {', '.join(p[1] for p in absent_required)}", file=sys.stderr)
        return 2
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = stages.stage_env([str(SHIMS)] if any(p[0] == "PIL" for p in missing) else [])
    plan = stages.plan(args.dry_run)
    if args.only:
        unknown = set(args.only) - {s.name for s in plan}
        if unknown:
            parser.error(f"--only: unknown stage(s) {sorted(unknown)}; stages: {[s.name for s in plan]}")
        plan = [s for s in plan if s.name in args.only]
    budget = stages.TOTAL_BUDGET_S if not args.dry_run else sum(s.timeout_s for s in plan)
    start = time.monotonic()
    outcomes = []
    for stage in plan:
        left = budget - (time.monotonic() - start)
        print(f"gpu_check: {stage.name}: {stage.what} ...", flush=True)
        outcome = stages.run(stage, out, env, left)
        print(f"gpu_check: {stage.name}: {outcome.status} in {outcome.seconds:.1f} s ({outcome.detail}; {outcome.log})",
              flush=True)
        outcomes.append(outcome)
        with open(out / "stages.csv", "w", newline="") as f:  # rewritten after every stage: survives a kill
            writer = csv.DictWriter(f, fieldnames=[field.name for field in dataclasses.fields(stages.Outcome)])
            writer.writeheader()
            writer.writerows(dataclasses.asdict(o) for o in outcomes)
    header = _describe_machine(args.dry_run)
    header.append("Missing packages: " + ("; ".join(f"{pkg} ({use})" for _, pkg, use in missing) or "none") + ".")
    summary = report.write_summary(out, outcomes, header, args.dry_run)
    failed = [o.name for o in outcomes if o.status not in ("passed", "skipped")]
    print(f"gpu_check: {len(outcomes) - len(failed)}/{len(outcomes)} stages passed or skipped in "
          f"{time.monotonic() - start:.0f} s; {summary}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
