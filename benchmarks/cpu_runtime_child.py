"""One CPU runtime alone in a fresh process: its peak resident memory (bench_cpu_runtimes).

``python -m benchmarks.cpu_runtime_child RUNTIME --inputs inputs.npz --threads T ...`` loads
one runtime, runs ``--steps`` tracking steps and prints one JSON line: ``peak_rss_mb`` (the
process's peak resident set, ``VmHWM`` of /proc/self/status), ``ru_maxrss_mb``
(``getrusage(RUSAGE_SELF).ru_maxrss``, for reference: Linux carries it over ``execve`` from
the forked parent's image, so a child of a large process reports at least the parent's
resident set there; VmHWM belongs to the new image alone), ``imported_mb`` (the
resident set once the runtime's libraries are imported, before the model is loaded),
``load_s`` and ``step_ms`` (the last step).

The ONNX Runtime and OpenVINO children import numpy and their runtime only, never torch (the
point is what a deployment without PyTorch holds): their inputs come from ``--inputs``, an
.npz the parent wrote (the frame and the state after a first step). The children of our
PyTorch paths build the method (random weights: memory does not depend on them), run the
annotated first frame and then the steps, as an application would.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

ONNX_RUNTIMES = ("ort_fp32", "ov_fp32", "ov_bf16")
OURS = ("ours_fp32", "ours_fast", "ours_best")


def _peak_rss_mb() -> float:
    """VmHWM: the peak resident set of this process image (see the module docstring)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _onnx_runtime(runtime: str, model: str, threads: int):
    """(load seconds, step(feeds) -> outputs) of ONNX Runtime or OpenVINO on the CPU."""
    start = time.perf_counter()
    if runtime == "ort_fp32":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # No spin-waiting after a run: in the interleaved rounds a spinning pool would take the
        # cores from the runtime timed next (2 cores here).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return time.perf_counter() - start, lambda feeds: session.run(None, feeds)
    import openvino as ov

    precision = "bf16" if runtime == "ov_bf16" else "f32"
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                      "INFERENCE_NUM_THREADS": threads,
                                                      "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return time.perf_counter() - start, lambda feeds: request.infer(feeds)


def ours_engine_options(runtime: str, method) -> dict:
    """InferenceEngine keyword arguments of our three paths: plain float32; bfloat16 (where the CPU
    has it) with folded norms, eager; and "best", the documented fastest path (`vos-segment
    --fastest`, engine.presets.fastest_options: the tracking step compiled whole where the method
    has one, channels-last otherwise)."""
    from vos_models.engine.presets import cpu_has_fast_bfloat16, fastest_options

    if runtime == "ours_fast":
        return {"precision": "bfloat16" if cpu_has_fast_bfloat16() else "float32", "fold_norms": True}
    if runtime == "ours_fp32":
        return {}
    if runtime == "ours_best":
        return fastest_options(method, "cpu")
    raise ValueError(f"runtime must be one of {OURS}, got {runtime!r}")


def ours_step(engine, state, frame):
    """One steady-state step of our path from a copy of ``state``: prob (1, O + 1, H, W). The
    compiled tracking step where the engine has one; else ``method.step``; a clip-wise method
    (PCVOS) steps a one-frame clip, as the Tracker does."""
    import copy

    with engine.context():
        copied = copy.deepcopy(state)
        if engine.tracking is not None:
            return engine.tracking(copied, frame)
        if engine.method.clip_wise:
            return engine.method.step_clip(copied, frame.unsqueeze(1), [None], [[]])[-1:]
        return engine.method.step(copied, frame, None, [])


def _ours(runtime: str, method_name: str, config: dict, height: int, width: int, objects: int, threads: int):
    """(load seconds, step() -> prob) of one of our PyTorch paths, from a first annotated frame."""
    import torch

    from vos_models.engine.inference import InferenceEngine
    from vos_models.export import synthetic_video
    from vos_models.registry import build_method

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    method = build_method(method_name, **config).eval()
    options = ours_engine_options(runtime, method)
    start = time.perf_counter()
    engine = InferenceEngine(method, **options)
    frames, masks = synthetic_video(height, width, objects)
    session = engine.new_session()
    with engine.context():
        session.step(frames[:1], masks, list(range(1, objects + 1)))
    state, frame = session.state, frames[1:2]

    def step():
        return ours_step(engine, state, frame)

    if engine.tracking is not None:
        step()  # compiles: part of loading this runtime
    return time.perf_counter() - start, step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runtime", choices=ONNX_RUNTIMES + OURS)
    parser.add_argument("--model", help="the exported ONNX file (ONNX Runtime, OpenVINO)")
    parser.add_argument("--inputs", help=".npz of the model's inputs (ONNX Runtime, OpenVINO)")
    parser.add_argument("--method", help="registry name (our paths)")
    parser.add_argument("--config", default="{}", help="the method's build config as JSON (our paths)")
    parser.add_argument("--size", default="480x854", help="HxW (our paths)")
    parser.add_argument("--objects", type=int, default=1, help="objects (our paths)")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    if args.runtime in ONNX_RUNTIMES:
        import numpy as np

        if args.runtime == "ort_fp32":
            import onnxruntime  # noqa: F401  (imported before the baseline figure)
        else:
            import openvino  # noqa: F401
        imported = _rss_mb()
        with np.load(args.inputs) as data:
            feeds = {name: data[name] for name in data.files}
        load_s, run = _onnx_runtime(args.runtime, args.model, args.threads)
        step = lambda: run(feeds)  # noqa: E731
    else:
        import torch  # noqa: F401
        import vos_models.engine.inference  # noqa: F401

        imported = _rss_mb()
        height, width = (int(v) for v in args.size.split("x"))
        load_s, step = _ours(args.runtime, args.method, json.loads(args.config), height, width, args.objects,
                             args.threads)
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        step_ms = (time.perf_counter() - start) * 1e3
    ru_maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"runtime": args.runtime, "peak_rss_mb": round(_peak_rss_mb(), 1),
                      "ru_maxrss_mb": round(ru_maxrss_mb, 1), "imported_mb": round(imported, 1),
                      "load_s": round(load_s, 3), "step_ms": round(step_ms, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
