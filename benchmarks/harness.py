"""The benchmark harness shared by every suite (benchmarks/bench_<op>.py).

A suite module defines `cases(device: str, quick: bool) -> list[BenchCase]`. For each case the
runner builds the inputs once (`setup`), runs every variant (warm-up, then repeated timed
calls; the median is reported with the 20th/80th percentiles), measures each variant's peak
extra memory over the memory in use before it ran, and checks each variant's output against
the baseline's (the `pass` column).

Timing: CPU with time.perf_counter; CUDA with CUDA events after synchronising.
Peak extra memory: CUDA from torch.cuda.max_memory_allocated; CPU from the process's peak
resident set (VmHWM, reset through /proc/self/clear_refs) minus the resident set before the
run. For the CPU figure to see memory that glibc would otherwise recycle unseen, the memory run
switches glibc's malloc to map every buffer over 128 KB freshly (mallopt); the timed runs use
the static equivalent of glibc's warmed-up default (mmap threshold 32 MB, trim threshold
64 MB), so timings are not penalised by page faults.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import statistics
import ctypes
import ctypes.util
import time
from typing import Any, Callable, Sequence

import torch


@dataclasses.dataclass
class BenchCase:
    """One op at one shape and direction, with the variants to compare.

    setup: () -> dict of inputs (built once per case, not timed).
    variants: name -> fn(**inputs) -> output (timed).
    baseline: the variant speed-ups and the pass column are measured against.
    compare: (output, baseline_output) -> bool; default: allclose with dtype tolerances.
    """
    op: str
    shape: str
    direction: str
    dtype: torch.dtype
    device: str
    setup: Callable[[], dict]
    variants: dict[str, Callable[..., Any]]
    baseline: str = "eager"
    compare: Callable[[Any, Any], bool] | None = None
    notes: str = ""
    warmup: int = 2                 # untimed calls first (compilation, caches)
    min_runs: int = 5               # timed calls: at least this many ...
    max_runs: int = 50              # ... at most this many, within the time budget
    items_per_call: int = 0         # e.g. frames per call: the table then shows items per second
    memory_from_first_call: bool = False  # measure peak memory on the (untimed) first call instead of
                                          # an extra call: for cases whose every call costs seconds
    floor_bytes: Callable[..., int] | None = None  # (**inputs) -> bytes the kernel must move
                                                      # (benchmarks/bandwidth.py): the % of floor column


@dataclasses.dataclass
class Result:
    case: BenchCase
    variant: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    peak_extra_mb: float
    passed: bool | None
    speedup: float = float("nan")
    error: str = ""
    floor_pct: float = float("nan")  # % of the memory floor (CPU runs given a bandwidth)


class VariantUnavailable(Exception):
    """Raised by a variant whose backend cannot run here: run_case reports the row as skipped,
    with this reason, and times nothing under its name."""


def unavailable(reason: str) -> Callable[..., Any]:
    """A variant that is reported as skipped with `reason` (see VariantUnavailable)."""
    def run(*_args, **_inputs):
        raise VariantUnavailable(reason)

    return run


# ---------------------------------------------------------------- variants for gradients


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _grad_outputs(outputs: tuple) -> tuple:
    # A fixed, seeded upstream gradient so that every variant differentiates the same function.
    g = torch.Generator(device="cpu").manual_seed(0)
    return tuple(torch.randn(o.shape, generator=g, dtype=torch.float32).to(o.device, o.dtype) for o in outputs)


def backward_only(fn: Callable[..., Any], wrt: Sequence[str]) -> Callable[..., Any]:
    """A variant that times only the backward of `fn`: the forward graph is built once per
    input set (untimed) and each call runs autograd.grad(..., retain_graph=True)."""
    cache: dict[int, tuple] = {}

    def run(**inputs):
        key = id(inputs[wrt[0]])
        if key not in cache:
            cache.clear()
            outputs = _as_tuple(fn(**inputs))
            cache[key] = (outputs, _grad_outputs(outputs))
        outputs, grads = cache[key]
        return torch.autograd.grad(outputs, [inputs[n] for n in wrt], grads, retain_graph=True)

    return run


def forward_backward(fn: Callable[..., Any], wrt: Sequence[str]) -> Callable[..., Any]:
    """A variant that times forward and backward together; returns the gradients."""
    def run(**inputs):
        outputs = _as_tuple(fn(**inputs))
        return torch.autograd.grad(outputs, [inputs[n] for n in wrt], _grad_outputs(outputs))

    return run


# ---------------------------------------------------------------- measuring


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _mallopt = _libc.mallopt
except (OSError, AttributeError):  # not glibc: the CPU memory column is then not measured
    _mallopt = None


def malloc_mode(mode: str) -> bool:
    """'timing': glibc's warmed-up default, fixed; 'memory': every buffer over 128 KB is a fresh
    mapping (so peak RSS sees it). Returns False where malloc cannot be tuned."""
    if _mallopt is None:
        return False
    mmap, trim = (32 << 20, 64 << 20) if mode == "timing" else (128 << 10, 128 << 10)
    ok = bool(_mallopt(_M_MMAP_THRESHOLD, mmap)) and bool(_mallopt(_M_TRIM_THRESHOLD, trim))
    if mode == "memory":
        _libc.malloc_trim(0)  # hand freed heap pages back, so reusing them shows in the RSS
    return ok


def peak_extra_mb(fn: Callable[[], Any], device: str) -> float:
    """Peak memory above the memory in use before `fn` ran (MB); NaN if not measurable."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        del out
        return (peak - before) / 2**20
    if not malloc_mode("memory"):
        return float("nan")
    try:
        gc.collect()
        if not _reset_cpu_peak():
            return float("nan")
        before = _rss_kb("VmRSS")
        out = fn()
        peak = _rss_kb("VmHWM")
        del out
    finally:
        malloc_mode("timing")
    return max(0, peak - before) / 1024


def time_ms(fn: Callable[[], Any], device: str, *, warmup: int = 2, min_runs: int = 5, max_runs: int = 50,
            budget_s: float = 2.0) -> list[float]:
    """Per-call times (ms) after `warmup` calls: at least min_runs, at most max_runs, within ~budget_s."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start_all < budget_s):
        if device.startswith("cuda"):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def default_compare(out: Any, ref: Any, tolerance: float | None = None) -> bool:
    """Every tensor of `out` close to `ref`: tolerances for the lower of the two dtypes (or
    `tolerance`), the absolute term relative to max |ref|."""
    outs, refs = _as_tuple(out), _as_tuple(ref)
    if len(outs) != len(refs):
        return False
    for o, r in zip(outs, refs):
        if o is None or r is None:
            if (o is None) != (r is None):
                return False
            continue
        low = o.dtype if o.element_size() <= r.element_size() else r.dtype
        tol = tolerance or {torch.float16: 2e-2, torch.bfloat16: 5e-2}.get(low, 1e-4)
        # The absolute term scales with the reference's magnitude (gradients can be large).
        scale = max(1.0, float(r.detach().float().abs().max())) if r.numel() else 1.0
        if o.shape != r.shape or not torch.allclose(o.float(), r.float(), rtol=tol, atol=tol * scale):
            return False
    return True


def interleaved_ms(runs: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1
                   ) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time callables in interleaved rounds, each round calling every one once (a noisy
    neighbour slows all alike): the wall milliseconds of the ``rounds`` timed calls of each
    (after ``warmup`` untimed rounds), and each one's output of its last call. CPU callables:
    nothing to synchronise."""
    times: dict[str, list[float]] = {key: [] for key in runs}
    last: dict[str, Any] = {}
    for round_ in range(warmup + rounds):
        for key, run in runs.items():
            start = time.perf_counter()
            last[key] = run()
            if round_ >= warmup:
                times[key].append((time.perf_counter() - start) * 1e3)
    return times, last


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def run_case(case: BenchCase, *, budget_s: float = 2.0, gb_per_s: float | None = None) -> list[Result]:
    """Measure every variant of one case; the baseline runs first. `gb_per_s`: the bandwidth
    measured in this process (benchmarks/bandwidth.py): each row then gets its % of floor."""
    from benchmarks.bandwidth import percent_of_floor

    inputs = case.setup()
    floor = case.floor_bytes(**inputs) if case.floor_bytes and gb_per_s else 0
    order = [case.baseline] + [v for v in case.variants if v != case.baseline]
    compare = case.compare or default_compare
    results: list[Result] = []
    reference_output = None
    for name in order:
        fn = case.variants[name]
        call = lambda: fn(**inputs)  # noqa: E731
        try:
            memory = float("nan")
            if case.memory_from_first_call:
                first: dict = {}
                memory = peak_extra_mb(lambda: first.setdefault("out", call()), case.device)
                output = first.pop("out")
            else:
                output = call()
            _sync(case.device)
            passed = None
            if name == case.baseline:
                reference_output = output
            elif reference_output is not None:
                passed = bool(compare(output, reference_output))
            del output
            times = time_ms(call, case.device, warmup=case.warmup, min_runs=case.min_runs,
                            max_runs=case.max_runs, budget_s=budget_s)
            if not case.memory_from_first_call:
                memory = peak_extra_mb(call, case.device)
            results.append(Result(case, name, statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8),
                                  memory, passed))
        except VariantUnavailable as exc:  # never timed: no other backend stands in under its name
            results.append(Result(case, name, float("nan"), float("nan"), float("nan"), float("nan"), None,
                                  error=f"skipped: {exc}"))
        except Exception as exc:  # a failing variant is reported, not fatal for the suite
            results.append(Result(case, name, float("nan"), float("nan"), float("nan"), float("nan"), False,
                                  error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"))
    base = next((r.median_ms for r in results if r.variant == case.baseline), float("nan"))
    for r in results:
        r.speedup = base / r.median_ms if r.median_ms and not math.isnan(r.median_ms) else float("nan")
        r.floor_pct = percent_of_floor(floor, r.median_ms, gb_per_s or 0.0)
    del reference_output, inputs
    gc.collect()
    return results


def fused_variants(device: str, op: str, make: Callable[[str], Callable]) -> dict[str, Callable]:
    """The fused variants of kernel benchmark `op` on `device`: on CPU "fused" (the cpu
    backend), on CUDA "fused-cuda" and "fused-triton"; only backends the op implements
    (vos_kernels.ops.<op>.IMPLEMENTED). One whose backend is unavailable here is reported as a
    skipped row naming the reason (and a warning), never timed under its name on another
    backend (without the C++ extension, "auto" would run the eager reference).
    make(backend) -> the callable."""
    import importlib

    import vos_kernels

    implemented = importlib.import_module(f"vos_kernels.ops.{op}").IMPLEMENTED
    out = {}
    for backend in ("cuda", "triton") if device == "cuda" else ("cpu",):
        if backend not in implemented:
            continue
        ok, why = vos_kernels.available_backends()[backend]
        name = "fused" if device == "cpu" else f"fused-{backend}"
        out[name] = make(backend) if ok else skipped_variant(f"{op} benchmark", name, backend, why)
    return out


def skipped_variant(suite: str, name: str, backend: str, why: str) -> Callable[..., Any]:
    """Warn that variant `name` of `suite` is skipped (backend unavailable, `why`); the variant
    that stands in its place reports a skipped row."""
    import warnings

    reason = f"backend {backend!r} is unavailable ({why})"
    warnings.warn(f"{suite}: variant {name!r} skipped: {reason}", RuntimeWarning, stacklevel=3)
    return unavailable(reason)


def default_backend_variant(suite: str, device: str) -> tuple[bool, Callable[..., Any] | None]:
    """Whether vos_kernels' default ("auto") backend runs fused kernels on `device`; if it would
    fall back to the eager reference, (False, a skipped variant naming why) for the "fused" row."""
    import vos_kernels

    backends = vos_kernels.available_backends()
    candidates = ("cuda", "triton") if device.startswith("cuda") else ("cpu",)
    if any(backends[b][0] for b in candidates if b in backends):
        return True, None
    first = candidates[0]
    return False, skipped_variant(suite, "fused", first, backends.get(first, (False, "not a backend"))[1])

