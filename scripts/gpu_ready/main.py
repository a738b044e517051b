"""`make gpu-ready`: is the CUDA build of vos_kernels ready for a GPU? Checked without one.

    python scripts/gpu_ready/main.py [--record] [--arch-list "8.0;9.0+PTX"] [--jobs 2]

1. finds or creates the venv with a CUDA build of torch whose CUDA major matches nvcc
   ($VOS_GPU_VENV, default ~/.cache/vos-kernels/gpu-venv-<torch>; $VOS_GPU_TORCH, default 2.11.0);
2. builds vos_kernels with its CUDA kernels there, into build/gpu-ready/ (flags: build_flags.py);
3. imports it (no GPU), checks _compiled_with_cuda(), that every op with a CPU kernel has a CUDA
   kernel (or, for memory_read, its Triton launcher) and that `auto` routes CUDA tensors there;
4. reads every CUDA kernel's registers, spills, shared memory and launch bounds with cuobjdump,
   and estimates occupancy; compiles the Triton kernels ahead of time (triton_aot.py);
5. writes build/gpu-ready/report.json and report.md, and with --record the table in docs/gpu.md.
Exits 1 with one line per reason on a compile error, a failed import, a missing CUDA
registration, a forward spill, shared memory over the limit or a warning in csrc/cuda.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import build_flags  # noqa: E402
from gpu_ready import build, report, resources, rules, toolchain, venv  # noqa: E402

TRITON_AOT = ROOT / "scripts" / "gpu_ready" / "triton_aot.py"


def log(message: str) -> None:
    print(f"[gpu-ready] {message}", flush=True)


def sm_numbers(arch_list: str) -> list[str]:
    """"8.0;9.0+PTX" -> ["80", "90"]."""
    return [entry.split("+")[0].replace(".", "") for entry in arch_list.replace(" ", ";").split(";") if entry]


def run_probe(python: str, lib: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{lib}{os.pathsep}{ROOT / 'scripts'}", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([python, "-m", "gpu_ready.probe"], cwd=lib, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"import_error": f"the probe exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_triton_aot(python: str, lib: Path, arches: list[str], out: Path, jobs: int) -> tuple[list[dict], list[str]]:
    """Rows and failures of triton_aot.py (which applies the same spill and shared-memory rules)."""
    if not TRITON_AOT.exists():
        return [], [f"triton: {TRITON_AOT.relative_to(ROOT)} does not exist yet, so the Triton kernels were not "
                    "compiled ahead of time (that step is delivered separately)"]
    target = out / "triton.json"
    target.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=f"{lib}{os.pathsep}{ROOT / 'scripts'}", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([python, str(TRITON_AOT), "--arch", *arches, "--out", str(target), "--jobs", str(jobs)],
                          cwd=ROOT, env=env)
    if not target.exists():
        return [], [f"triton: {TRITON_AOT.name} exited {proc.returncode} without writing {target}"]
    data = json.loads(target.read_text())
    rows = data["kernels"] if isinstance(data, dict) else data
    for row in rows:
        row["source"] = "triton"
        row["arch"] = f"sm_{str(row['arch']).removeprefix('sm_')}"
    failures = [f"triton: {f}" for f in (data.get("failures", []) if isinstance(data, dict) else [])]
    if proc.returncode != 0 and not failures:
        failures.append(f"triton: {TRITON_AOT.name} exited {proc.returncode}")
    return rows, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", action="store_true", help="rewrite the table in docs/gpu.md")
    parser.add_argument("--arch-list", default=build_flags.GPU_READY_ARCH_LIST,
                        help=f"TORCH_CUDA_ARCH_LIST of the build (default {build_flags.GPU_READY_ARCH_LIST})")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "gpu-ready")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    failures: list[str] = []
    notes: list[str] = []

    nvcc = toolchain.find_nvcc()
    if nvcc is None:
        print("gpu-ready: FAIL nvcc not found (install the CUDA toolkit or set CUDA_HOME)")
        return 1
    try:
        home = toolchain.cuda_home(nvcc)
        nvcc_release = toolchain.tool_release(nvcc)
        python, versions, timings["venv_s"] = venv.ensure(venv.torch_version(), nvcc_release[0], log)
    except (toolchain.ToolchainError, subprocess.CalledProcessError) as exc:
        print(f"gpu-ready: FAIL {exc}")
        return 1
    environment = {**versions, "nvcc": ".".join(map(str, nvcc_release)), "cuda_home": home, "python": python,
                   "arch_list": args.arch_list, "jobs": args.jobs}

    result = build.build(ROOT, args.out, python, home, args.arch_list, args.jobs, log)
    timings["build_s"] = result.seconds
    log(f"build: {'ok' if result.ok else 'FAILED'} in {result.seconds:.0f} s")
    kernels: list[dict] = []
    if not result.ok:
        failures.append(f"compile: the CUDA build failed, see {result.log}:\n{build.last_lines(result.log)}")
    else:
        environment["library_mb"] = round(result.library.stat().st_size / 2**20, 2)
        warn_fail, warn_notes = rules.warning_failures(result.warnings)
        failures += warn_fail
        notes += warn_notes
        t0 = time.perf_counter()
        facts = run_probe(python, args.out / "lib")
        timings["probe_s"] = time.perf_counter() - t0
        import_fail = rules.import_failures(facts, str(args.out / "lib"))
        failures += import_fail
        if not import_fail:
            reg_fail, reg_notes = rules.registration_failures(facts)
            failures += reg_fail
            notes += reg_notes
            notes += [f"dynamic shared memory of {d['kernel']} (accumulator {d['acc_bytes']} B) at {d['case']}: "
                      f"{d['bytes']} B" for d in facts.get("dynamic_shared", [])]
        t0 = time.perf_counter()
        try:
            cuobjdump = toolchain.find_cuobjdump(home, python)
            cuda_rows, kernel_fail, kernel_notes = rules.kernel_rows(
                resources.kernels_of(str(result.library), cuobjdump), facts, result.ptxas)
            kernels += cuda_rows
            failures += kernel_fail
            notes += kernel_notes
            environment["cuobjdump"] = cuobjdump
            if not cuda_rows:
                failures.append(f"resources: cuobjdump found no CUDA kernel in {result.library}")
        except (toolchain.ToolchainError, RuntimeError) as exc:
            failures.append(f"resources: {exc}")
        timings["cuobjdump_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        triton_rows, triton_fail = run_triton_aot(python, args.out / "lib", sm_numbers(args.arch_list), args.out,
                                                  args.jobs)
        timings["triton_s"] = time.perf_counter() - t0
        kernels += triton_rows
        failures += triton_fail
    timings["total_s"] = time.perf_counter() - started

    data = {"kernels": kernels, "failures": failures, "notes": notes, "environment": environment,
            "build_warnings": result.warnings, "timings": {k: round(v, 1) for k, v in timings.items()}}
    json_path, md_path = report.write(data, args.out)
    if args.record:
        report.record(ROOT / "docs" / "gpu.md", report.markdown(data))
        log("recorded the table in docs/gpu.md")
    log(f"report: {json_path} and {md_path}; {len(kernels)} kernel rows; {timings['total_s']:.0f} s in all")
    for note in notes:
        log(f"note: {note}")
    for failure in failures:
        print(f"gpu-ready: FAIL {failure}")
    print(f"gpu-ready: {'FAILED' if failures else 'OK'} ({len(failures)} problem(s))")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
