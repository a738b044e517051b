"""The stages of the GPU check, their commands and time boxes, and the runner.

Each stage is one subprocess (an existing entry point: setup.py, pytest, benchmarks.run,
benchmarks.long_video, benchmarks.roofline) with its output in OUT/logs/<stage>.log, killed
with its process group when its time box runs out. A failed or timed-out stage is recorded and
the next one runs. The time boxes of a GPU run add up to `TOTAL_BUDGET_S` (9 minutes); each
stage is also cut to what is left of that budget, so the whole check ends in time. The
benchmarks record their CSV rows case by case, so a stage stopped by its box keeps what it measured.

Time boxes on one H200, from the first run there (2026-12-04, docs/results/gpu/2026-12-04_h200:
measured time, or how far the stage got in its old box):
  build 70 s: measured 39 s (12 C++ files with three ISA copies of the CPU kernels, 4 .cu files
      for sm_90, 16 cores);
  tests 120 s: ~270 of ~300 selected op tests finished in a 75 s box on 8 pytest-xdist workers
      (Triton's JIT compiles dominate);
  kernels 120 s: four of the five --quick kernel suites finished in an 80 s box (torch.compile'd
      peers compile once per case);
  models 45 s: measured 28 s (4 methods x 5 fast-path variants);
  models-compile 60 s: three of four methods compiled in a 55 s box (Inductor, cold cache);
  train 40 s: measured 29 s;
  long-video 35 s: measured 21 s (1000 PCVOS frames, bf16);
  roofline 10 s: measured 0.1 s.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
TOTAL_BUDGET_S = 530  # 9 minutes less 10 s for starting Python and writing the summary
OP_TESTS = ["tests/test_soft_aggregate.py", "tests/test_min_background_aggregate.py", "tests/test_memory_read.py",
            "tests/test_template_update.py", "tests/test_clip_window_attention.py", "tests/test_triton_chunked_heads.py"]
ENGINE_GPU_TESTS = ["tests/test_engine_fast_paths.py::test_cuda_graphs_and_compile_together_are_refused",
                    "tests/test_engine_fast_paths.py::test_cuda_graphs_and_prefetch_upload_match_eager_on_gpu"]
TEST_SELECTION = "cuda or triton or opcheck or compile"
KERNEL_SUITES = ["soft_aggregate", "min_background_aggregate", "memory_read", "template_update",
                 "clip_window_attention"]


@dataclasses.dataclass
class Stage:
    name: str
    what: str
    argv: Callable[[Path], list[str]] | None    # OUT -> command; None with `skip`
    timeout_s: float
    skip: str = ""                              # reason the stage does not run here


@dataclasses.dataclass
class Outcome:
    name: str
    status: str          # passed, failed, timeout, skipped
    seconds: float
    timeout_s: float
    detail: str          # exit status, or the reason for skipping
    log: str


def plan(dry_run: bool) -> list[Stage]:
    """The stages, GPU or dry run (CPU, toy sizes, few frames)."""
    py = sys.executable
    device = "cpu" if dry_run else "cuda"
    bench = [py, "-m", "benchmarks.run", "--device", device]
    tiny = ["--tiny"] if dry_run else []

    def tests(out: Path) -> list[str]:
        # Dry run: one op's file (the Triton interpreter makes all of them take minutes on 2 cores).
        files = OP_TESTS[:1] if dry_run else OP_TESTS + ENGINE_GPU_TESTS
        # On the GPU machine (16 cores), pytest-xdist spreads Triton's JIT compiles over 8 workers.
        workers = ["-n", "8"] if not dry_run and importlib.util.find_spec("xdist") is not None else []
        return [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "gpu_check.failure_log", "--failure-log",
                str(out / "tests" / "failures.txt"), *workers, *files, "-k", TEST_SELECTION,
                "--junitxml", str(out / "tests" / "junit.xml")]

    def kernels(out: Path) -> list[str]:
        # Dry run: the fused kernels against eager only (Inductor's CPU compiles of the peers
        # cost ~10 s each on 2 cores); on the GPU every peer (compiled, SDPA, stock).
        peers = ["--variants", "fused", "--budget", "0.02"] if dry_run else ["--budget", "0.3"]
        return [*bench, "--quick", *tiny, "--ops", *KERNEL_SUITES, *peers, "--results-dir", str(out / "kernels")]

    def models(out: Path) -> list[str]:
        cases = ["--cases", "ttvos fast paths", "--skip-variants", "1 thread"] if dry_run else \
            ["--cases", "fast paths", "--skip-variants", "compile", "--budget", "1"]
        return [*bench, "--ops", "models", *tiny, *cases, "--results-dir", str(out / "models")]

    def models_compile(out: Path) -> list[str]:
        return [*bench, "--ops", "models", "--cases", "fast paths", "--variants", "compile", "--budget", "1",
                "--results-dir", str(out / "models_compile")]

    def train(out: Path) -> list[str]:
        # torch.compile of a training step has its own cost (minutes cold): not in this stage's box
        cases = ["--cases", "ttvos"] if dry_run else ["--budget", "1"]
        return [*bench, "--ops", "train_step", *tiny, *cases, "--skip-variants", "compiled", "--results-dir",
                str(out / "train")]

    def long_video(out: Path) -> list[str]:
        size = (["--frames", "30", "--height", "64", "--width", "96", "--set", "max_memory_frames=2",
                 "--sample-every", "5"] if dry_run else
                ["--frames", "1000", "--precision", "bfloat16", "--sample-every", "20"])
        return [py, "-m", "benchmarks.long_video", "--method", "pcvos", "--device", device, *size, "--no-progress",
                "--output", str(out / "long_video")]

    def roofline(out: Path) -> list[str]:
        csvs = sorted(str(p) for p in (out / "kernels").glob("*.csv"))
        return [py, "-m", "benchmarks.roofline", "--compare", *csvs, "--output", str(out / "roofline_comparison.csv")]

    build = [py, "-m", "gpu_check.build", "--device", device]
    return [
        Stage("build", "build vos_kernels._C in place against this torch", lambda out: build, 600 if dry_run else 70),
        Stage("tests", f"pytest -k '{TEST_SELECTION}' on the op tests" + ("" if dry_run else " and the engine's GPU tests"),
              tests, 120 if dry_run else 120),
        Stage("kernels", "kernel benchmarks against eager, torch.compile, SDPA / stock peers", kernels,
              150 if dry_run else 120),
        Stage("models", "model FPS and peak memory, fp32 / bf16 / fp16 autocast, channels-last, CUDA graphs", models,
              150 if dry_run else 45),
        Stage("models-compile", "model FPS with torch.compile (bf16, channels-last)",
              None if dry_run else models_compile, 60,
              skip="torch.compile model variants are CUDA-only in bench_models (Inductor's CPU compile of a model "
                   "takes minutes on 2 cores)" if dry_run else ""),
        Stage("train", "one training step per method, fused vs reference ops", train, 150 if dry_run else 40),
        Stage("long-video", "1,000-frame PCVOS memory check" if not dry_run else "30-frame PCVOS memory check",
              long_video, 120 if dry_run else 35),
        Stage("roofline", "kernel times against the H200 roofline (benchmarks/roofline.py)", roofline, 60 if dry_run else 10),
    ]


def stage_env(extra_pythonpath: list[str]) -> dict:
    env = dict(os.environ)
    paths = [str(REPO), str(REPO / "scripts"), *extra_pythonpath]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(stage: Stage, out: Path, env: dict, seconds_left: float) -> Outcome:
    """Run one stage within min(its time box, seconds_left); never raises for the stage's failure."""
    log = out / "logs" / f"{stage.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if stage.skip:
        log.write_text(f"skipped: {stage.skip}\n")
        return Outcome(stage.name, "skipped", 0.0, stage.timeout_s, stage.skip, str(log.relative_to(out)))
    box = max(1.0, min(stage.timeout_s, seconds_left))
    argv = stage.argv(out)
    start = time.monotonic()
    with open(log, "w") as f:
        f.write(f"$ {' '.join(argv)}\n(time box {box:.0f} s)\n")
        f.flush()
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            rc = process.wait(timeout=box)
            status, detail = ("passed" if rc == 0 else "failed"), f"exit {rc}"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            status, detail = "timeout", f"killed after its time box of {box:.0f} s"
    return Outcome(stage.name, status, time.monotonic() - start, box, detail, str(log.relative_to(out)))
