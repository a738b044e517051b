#!/usr/bin/env python
"""Compile every Triton kernel of vos_kernels/triton ahead of time, without a GPU, at every
specialization its launcher chooses, and report registers, spills, shared memory and occupancy.

    python scripts/gpu_ready/triton_aot.py --arch 80 90 --out build/gpu-ready/triton.json [--jobs N] [--quick]

How: the launchers of vos_kernels.triton run on uninitialised CPU tensors of each shape of
scripts/gpu_ready/triton_shapes.py (benchmark shapes, the four models at 480p), in float32,
bfloat16 and float16, inside `configs.compile_for(<sm_XX target>)`, with `JITFunction.run`
replaced by a recorder. The recorder binds each launch with Triton's own binder (the same
signature, constexprs and divisibility attributes as a GPU launch), and, from the candidate
list the launcher drew its configuration from (`configs.choose`), binds every candidate. Each
distinct specialization is compiled with `triton.compile(ASTSource(...), target=GPUTarget("cuda",
arch, 32))` in worker processes; registers, stack and shared memory come from the cubin
(`cuobjdump --dump-resource-usage`), spill stores/loads from `ptxas -v` on the same PTX, the
dynamic shared memory from the kernel's metadata. Results are cached by specialization key in
build/gpu-ready/triton-aot-cache.json (the key includes the kernel's source hash and triton's
version), so a rerun compiles only what changed.

Exit status 1 on any compile failure, any forward kernel that spills, shared memory over the
device's per-block limit, or a backward kernel that spills more than 256 bytes or without a
reason in configs.BACKWARD_SPILL_REASONS. float32 kernels are captured under both of torch's
float32 matmul precisions ("highest": IEEE dots, "high": TF32).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Per-SM and per-block limits of the reference GPUs (A100 for sm_80, H100/H200 for sm_90).
LIMITS = {
    80: {"regs": 65536, "shared_sm": 164 * 1024, "shared_block": 163 * 1024, "threads": 2048, "blocks": 32},
    90: {"regs": 65536, "shared_sm": 228 * 1024, "shared_block": 227 * 1024, "threads": 2048, "blocks": 32},
}
BACKWARD_SPILL_LIMIT = 256
CACHE_VERSION = 1


# --- capture ------------------------------------------------------------------------------------
def _bind(jit_fn, backend, args, kwargs):
    """(signature, constexprs, attrs, options) of one launch, as JITFunction.run computes them."""
    from triton.runtime.jit import create_function_from_signature
    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", jit_fn.debug) or False
    binder = create_function_from_signature(jit_fn.signature, jit_fn.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = jit_fn._pack_args(backend, kwargs, bound_args, specialization, options)
    names = [p.name for p in jit_fn.params]
    named = {names[path[0]]: value for path, value in constexprs.items() if len(path) == 1}
    return {"signature": signature, "constexprs": constexprs, "attrs": attrs, "named_constexprs": named,
            "options": {"num_warps": options.num_warps, "num_stages": options.num_stages}}


def capture(arches, dtypes, quick):
    """Run every launcher under a recorder -> {job key: job}; a job is one kernel specialization."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction

    import triton_shapes
    from vos_kernels.triton import configs

    jobs = {}
    choices: list = []
    state = {}

    def record(jit_fn, args, kwargs, config_kwargs):
        bound = _bind(jit_fn, state["backend"], args, {**kwargs, **config_kwargs})
        job = {
            "name": jit_fn.fn.__name__, "module": jit_fn.fn.__module__, "arch": state["arch"],
            "dtype": state["dtype"], "precision": state["precision"], **bound,
        }
        key = _job_key(jit_fn, job)
        entry = jobs.setdefault(key, {**job, "key": key, "launches": [], "chosen": False})
        entry["launches"].append(state["label"])
        return entry

    def recording_run(self, *args, grid, warmup, **kwargs):
        name = self.fn.__name__
        candidates = next((c for n, c in reversed(choices) if n == name), None)
        entry = record(self, args, kwargs, {})
        entry["chosen"] = True
        if candidates and not quick:   # the rest of the launcher's candidate list
            chosen_keys = set(candidates[0].launch_kwargs())
            base = {k: v for k, v in kwargs.items() if k not in chosen_keys}
            for candidate in candidates[1:]:
                record(self, args, base, candidate.launch_kwargs())
        return None

    original = JITFunction.run
    JITFunction.run = recording_run
    try:
        with configs.record_choices(choices):
            for arch in arches:
                state["arch"] = arch
                state["backend"] = make_backend(GPUTarget("cuda", arch, 32))
                for launch in triton_shapes.all_launches(quick):
                    for dtype_name, dtype in dtypes.items():
                        precisions = ("highest", "high") if dtype == torch.float32 else ("highest",)
                        for precision in precisions:
                            state.update(dtype=dtype_name, label=launch.label,
                                         precision="ieee" if dtype != torch.float32 or precision == "highest" else "tf32")
                            previous = torch.get_float32_matmul_precision()
                            torch.set_float32_matmul_precision(precision)
                            try:
                                with configs.compile_for(configs.REFERENCE_TARGETS[arch]):
                                    triton_shapes.run_launchers(launch, dtype)
                            finally:
                                torch.set_float32_matmul_precision(previous)
                            choices.clear()
    finally:
        JITFunction.run = original
    del triton
    return jobs


def _job_key(jit_fn, job) -> str:
    import triton
    text = repr((CACHE_VERSION, triton.__version__, job["arch"], job["module"], job["name"], jit_fn.cache_key,
                 sorted(job["signature"].items()), sorted(job["constexprs"].items()), sorted(job["attrs"].items()),
                 sorted(job["options"].items())))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# --- compile and measure ------------------------------------------------------------------------
def _tool(name: str) -> str:
    import triton
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    for candidate in (bundled, Path("/usr/local/cuda/bin") / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found (neither in triton's backend nor in /usr/local/cuda/bin)")
    return found


def _ptxas(arch: int) -> str:
    """The ptxas that triton itself runs for `arch` (its choice differs between triton versions)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(arch).path
    except (ImportError, AttributeError, TypeError):
        return _tool("ptxas")


def _resources(cubin: bytes, ptx: str, arch: int) -> dict:
    """Registers, stack, local and static shared memory from the cubin; spill bytes from ptxas -v."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin_path, ptx_path = Path(tmp) / "k.cubin", Path(tmp) / "k.ptx"
        cubin_path.write_bytes(cubin)
        ptx_path.write_text(ptx)
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", str(cubin_path)],
                               capture_output=True, text=True, check=True).stdout
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        log = subprocess.run([_ptxas(arch), "-v", f"--gpu-name={gpu}", str(ptx_path), "-o",
                              str(Path(tmp) / "check.cubin")], capture_output=True, text=True, check=True).stderr
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {"regs": int(fields.get("REG", 0)), "stack_bytes": int(fields.get("STACK", 0)),
            "local_bytes": int(fields.get("LOCAL", 0)), "static_shared_bytes": int(fields.get("SHARED", 0)),
            "spill_bytes": int(spill.group(1)) if spill else 0, "spill_load_bytes": int(spill.group(2)) if spill else 0}


def compile_job(job: dict) -> dict:
    """Compile one specialization for its arch (in a worker process) -> resource figures or the error."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    started = time.perf_counter()
    try:
        fn = getattr(importlib.import_module(job["module"]), job["name"])
        src = ASTSource(fn, job["signature"], job["constexprs"], job["attrs"])
        kernel = triton.compile(src, target=GPUTarget("cuda", job["arch"], 32), options=dict(job["options"]))
        result = _resources(kernel.asm["cubin"], kernel.asm["ptx"], job["arch"])
        result["dynamic_shared_bytes"] = int(kernel.metadata.shared)
        result["error"] = None
    except Exception as exc:  # reported per kernel; the run fails at the end
        result = {"error": f"{type(exc).__name__}: {str(exc).strip()[-2000:]}"}
    result["compile_s"] = round(time.perf_counter() - started, 2)
    return result


def _compile_all(worker_jobs: dict, processes: int):
    """Yield (key, result) as the compiles finish, in `processes` worker processes."""
    if processes <= 1:
        for key, job in worker_jobs.items():
            yield key, compile_job(job)
        return
    import multiprocessing
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(compile_job, job): key for key, job in worker_jobs.items()}
        for future in concurrent.futures.as_completed(futures):
            yield futures[future], future.result()


def occupancy(arch: int, regs: int, shared: int, num_warps: int) -> float:
    """Resident warps / max warps per SM, from registers (allocated per warp in units of 256),
    shared memory (plus 1 KB reserved per block) and the thread and block limits."""
    lim = LIMITS[arch]
    regs_per_warp = -(-max(regs, 1) * 32 // 256) * 256
    blocks = min(lim["blocks"], lim["threads"] // (32 * num_warps),
                 (lim["regs"] // regs_per_warp) // num_warps)
    if shared:
        blocks = min(blocks, lim["shared_sm"] // (shared + 1024))
    return round(blocks * num_warps / (lim["threads"] // 32), 4)


def _direction(name: str) -> str:
    return "backward" if ("bwd" in name or "grad" in name) else "forward"


def _dtype_of(signature: dict) -> str:
    """The first float pointer argument's element type: the launch's input dtype."""
    for t in signature.values():
        if isinstance(t, str) and t.startswith("*") and t[1:] in ("fp32", "bf16", "fp16"):
            return t[1:]
    return "?"


def evaluate(jobs: dict, results: dict) -> tuple[list[dict], list[str]]:
    from vos_kernels.triton import configs
    rows, failures = [], []
    for key, job in jobs.items():
        r = results[key]
        shared = r.get("static_shared_bytes", 0) + r.get("dynamic_shared_bytes", 0)
        direction = _direction(job["name"])
        row = {
            "name": job["name"], "source": "triton", "arch": job["arch"], "dtype": job["dtype"],
            "precision": job["precision"], "num_warps": job["options"]["num_warps"],
            "num_stages": job["options"]["num_stages"], "constexprs": job["named_constexprs"],
            "direction": direction, "chosen": job["chosen"], "launches": sorted(set(job["launches"])),
            "regs": r.get("regs"), "spill_bytes": r.get("spill_bytes"), "stack_bytes": r.get("stack_bytes"),
            "shared_bytes": shared if r.get("error") is None else None,
            "occupancy": occupancy(job["arch"], r["regs"], shared, job["options"]["num_warps"])
            if r.get("error") is None else None,
            "spill_reason": None, "error": r.get("error"), "compile_s": r.get("compile_s"),
        }
        where = f"{job['name']} sm_{job['arch']} {job['dtype']}/{job['precision']} {row['constexprs']} " \
                f"warps={row['num_warps']} stages={row['num_stages']} ({row['launches'][0]})"
        if row["error"]:
            failures.append(f"compile failure: {where}: {row['error'].splitlines()[-1] if row['error'] else ''}")
        else:
            if shared > LIMITS[job["arch"]]["shared_block"]:
                failures.append(f"shared memory {shared} B over the sm_{job['arch']} limit: {where}")
            if row["spill_bytes"]:
                reason = configs.BACKWARD_SPILL_REASONS.get(job["name"])
                row["spill_reason"] = reason
                if direction == "forward":
                    failures.append(f"forward kernel spills {row['spill_bytes']} B: {where}")
                elif row["spill_bytes"] > BACKWARD_SPILL_LIMIT:
                    failures.append(f"backward kernel spills {row['spill_bytes']} B > {BACKWARD_SPILL_LIMIT}: {where}")
                elif not reason:
                    failures.append(f"backward kernel spills {row['spill_bytes']} B without a reason: {where}")
        rows.append(row)
    rows.sort(key=lambda r: (r["name"], r["arch"], r["dtype"], r["precision"], json.dumps(r["constexprs"])))
    return rows, failures


def summary_table(rows: list[dict]) -> str:
    """Markdown: per kernel, arch and dtype/precision, the worst case over its specializations."""
    groups = {}
    for r in rows:
        if r["error"]:
            continue
        groups.setdefault((r["name"], r["direction"], r["dtype"], r["precision"]), {}).setdefault(r["arch"], []).append(r)
    arches = sorted({r["arch"] for r in rows})
    head = "| kernel | dir | dtype | " + " | ".join(
        f"sm_{a} regs | sm_{a} spill B | sm_{a} shared KB | sm_{a} occ." for a in arches) + " | specs |"
    lines = [head, "|" + "---|" * (4 * len(arches) + 4)]
    for (name, direction, dtype, precision), per_arch in sorted(groups.items()):
        cells = []
        for a in arches:
            rs = per_arch.get(a, [])
            if not rs:
                cells += ["-"] * 4
                continue
            regs = sorted({r["regs"] for r in rs})
            cells += [f"{regs[0]}-{regs[-1]}" if len(regs) > 1 else str(regs[0]),
                      str(max(r["spill_bytes"] for r in rs)),
                      f"{max(r['shared_bytes'] for r in rs) / 1024:.1f}",
                      f"{min(r['occupancy'] for r in rs):.2f}"]
        count = sum(len(v) for v in per_arch.values())
        label = dtype if dtype != "fp32" else f"fp32/{precision}"
        lines.append(f"| `{name}` | {direction[:3]} | {label} | " + " | ".join(cells) + f" | {count} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(LIMITS))
    parser.add_argument("--out", type=Path, default=REPO / "build" / "gpu-ready" / "triton.json")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile processes")
    parser.add_argument("--quick", action="store_true", help="one benchmark and one model shape per op, the chosen configuration only")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--cache", type=Path, default=REPO / "build" / "gpu-ready" / "triton-aot-cache.json")
    parser.add_argument("--table", type=Path, help="also write the markdown summary table here")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)   # compile for real (before triton is imported; workers inherit it)

    try:
        import triton  # noqa: F401
        from triton.backends import backends
    except ImportError as exc:
        print(f"triton_aot: triton is not importable: {exc}", file=sys.stderr)
        return 2
    if "nvidia" not in backends:
        print("triton_aot: this triton has no NVIDIA backend", file=sys.stderr)
        return 2

    started = time.perf_counter()
    jobs = capture(args.arch, {k: DTYPES[k] for k in args.dtypes}, args.quick)
    captured_s = time.perf_counter() - started
    cache = {}
    if args.cache.exists():
        try:
            cache = json.loads(args.cache.read_text())
        except json.JSONDecodeError:
            cache = {}
    todo = [key for key in jobs if key not in cache]
    print(f"triton_aot: {len(jobs)} specializations ({len(todo)} to compile, {len(jobs) - len(todo)} cached), "
          f"captured in {captured_s:.1f} s", flush=True)
    results = {key: cache[key] for key in jobs if key in cache}
    if todo:
        worker_jobs = {key: {k: jobs[key][k] for k in ("name", "module", "arch", "signature", "constexprs", "attrs",
                                                       "options")} for key in todo}
        for done, (key, result) in enumerate(_compile_all(worker_jobs, args.jobs), 1):
            results[key] = result
            if result.get("error") is None:    # failures are retried on the next run
                cache[key] = result
            if done % 16 == 0 or done == len(todo):
                args.cache.parent.mkdir(parents=True, exist_ok=True)
                args.cache.write_text(json.dumps(cache))
                print(f"triton_aot: compiled {done}/{len(todo)} ({time.perf_counter() - started:.0f} s)", flush=True)
    rows, failures = evaluate(jobs, results)
    import triton as _triton
    report = {
        "triton": _triton.__version__, "torch": torch.__version__, "arches": args.arch, "quick": args.quick,
        "seconds": round(time.perf_counter() - started, 1), "failures": failures, "kernels": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    table = summary_table(rows)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table + "\n")
    print(table)
    print(f"triton_aot: {len(rows)} specializations, {len(failures)} failures, {report['seconds']} s -> {args.out}")
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
