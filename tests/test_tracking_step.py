"""The tracking step (``VOSMethod.track``) and the engine's whole-step compile of it
(:mod:`vos_models.engine.tracking`): which methods have one, that it is a pure function of its
tensors, that it compiles into one graph with the fused ops inside (no graph break), and that
the compiled engine gives the eager engine's results."""
import numpy as np
import pytest
import torch

from tests.test_engine_fast_paths import SMALL, probabilities, small_method, video
from vos_models import build_method
from vos_models.engine.inference import InferenceEngine
from vos_models.engine.tracking import CompiledTracking
from vos_models.errors import VOSInputError

torch.set_num_threads(1)
TRACKING = ["crvos", "ttvos", "rgmp"]  # RGMP: single-scale (its default)


def started(name, size=(48, 64)):
    """A method, its engine, and a session after the first (annotated) frame; the next frame."""
    frames, masks = video(size=size)
    method = small_method(name).eval()
    engine = InferenceEngine(method)
    labels = masks[frames[0][0]]
    given = torch.stack([torch.from_numpy(labels == k) for k in (1, 2)]).float()
    session = engine.new_session()
    with engine.context():  # frames made as the engine makes them (inference tensors)
        session.step(engine.prepare_frame(frames[0][1]), given, [1, 2])
        return method, session, engine.prepare_frame(frames[1][1])


def test_which_methods_have_a_tracking_step():
    for name in TRACKING:
        method = small_method(name)
        assert method.has_tracking_step and method.tracked_inputs and method.tracked_outputs
    multi_scale_rgmp = build_method("rgmp", **{**SMALL["rgmp"], "scales": (0.5, 1.0)})
    for method in (small_method("pcvos"), multi_scale_rgmp):
        assert not method.has_tracking_step
        with pytest.raises(VOSInputError, match="has no tracking step"):
            CompiledTracking(method)
    assert not build_method("tiny-prop", channels=4).has_tracking_step


@pytest.mark.parametrize("name", TRACKING)
def test_track_is_a_pure_function_of_its_tensors(name):
    method, session, frame = started(name)
    inputs = [getattr(session.state, f) for f in method.tracked_inputs]
    before = [t.clone() for t in inputs]
    with torch.inference_mode():
        first = method.track(frame, *inputs)
        second = method.track(frame, *inputs)
    for a, b in zip(inputs, before):
        assert torch.equal(a, b)  # inputs untouched
    assert len(first) == 1 + len(method.tracked_outputs)
    for a, b in zip(first, second):
        assert torch.equal(a, b)  # same inputs, same outputs: no hidden state
    # ... and it is exactly what step runs on a frame without masks
    with torch.inference_mode():
        prob = method.step(session.state, frame, None, [])
    assert torch.equal(prob, first[0])
    for f, value in zip(method.tracked_outputs, first[1:]):
        assert torch.equal(getattr(session.state, f), value)


@pytest.mark.parametrize("name", TRACKING)
def test_tracking_step_is_one_graph_with_the_fused_ops_inside(name):
    method, session, frame = started(name)
    inputs = [getattr(session.state, f) for f in method.tracked_inputs]
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(method.track)(frame, *inputs)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    targets = {str(node.target) for graph in explained.graphs for node in graph.graph.nodes
               if node.op == "call_function"}
    assert any("vos_kernels" in t for t in targets), sorted(targets)  # our custom ops, in the graph


@pytest.mark.slow
@pytest.mark.parametrize("name", TRACKING)
def test_compiled_engine_gives_the_eager_results(name):
    frames, masks = video(frames=6)
    # a correction of object 1 on frame 3: that frame runs the eager step, the others the graph
    corrected = masks[frames[0][0]].copy()
    masks = {frames[0][0]: corrected, frames[3][0]: np.where(corrected == 1, 1, 0).astype(np.uint8)}
    eager = probabilities(InferenceEngine(small_method(name), keep_probabilities=True), frames, masks)
    torch._dynamo.reset()
    engine = InferenceEngine(small_method(name), keep_probabilities=True, compile=True)
    assert engine.tracking is not None and engine.tracking.freeze  # CPU: frozen weights
    compiled = probabilities(engine, frames, masks)
    assert engine.tracking.calls == len(frames) - 2  # every frame but the two with masks
    assert engine.tracking.compile_seconds > 0
    # Inductor reorders float32 sums and folds constants: rounding differences, carried
    # through the recurrent state for four frames, stay far below 1e-3.
    assert (eager - compiled).abs().max() < 1e-3
    # frozen weights: the compiled step's convolutions run oneDNN's prepacked fused kernels
    if torch.backends.mkldnn.is_available():
        from torch.profiler import profile

        _, session, frame = started(name)
        with torch.inference_mode(), profile() as trace:
            engine.tracking(session.state, frame)
        convolutions = {event.key for event in trace.key_averages() if "conv" in event.key}
        assert "mkldnn::_convolution_pointwise" in convolutions and "aten::convolution" not in convolutions, \
            sorted(convolutions)
    # a second video of the same size reuses the graph (no recompilation)
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = probabilities(engine, frames, masks)
    assert torch.equal(again, compiled)


@pytest.mark.slow
def test_a_bfloat16_video_compiles_the_step_once():
    """Under bfloat16 autocast the step writes part of its state in bfloat16 (and a oneDNN
    convolution may leave it channels-last) where the eager first frame wrote it contiguous in
    float32: the state enters the compiled step in one form, so the second tracked frame does
    not compile it again (a recompile raises here)."""
    frames, masks = video(frames=5)
    torch._dynamo.reset()
    engine = InferenceEngine(small_method("ttvos"), precision="bfloat16", compile=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        list(engine.segment(frames, masks))
    assert engine.tracking.calls == len(frames) - 1


# ---------------------------------------------------------------- the fastest preset
def test_fastest_options_per_method_and_device(monkeypatch):
    from vos_models.engine import presets

    monkeypatch.setattr(presets, "cpu_has_fast_bfloat16", lambda: True)
    monkeypatch.setattr(presets, "cpu_has_amx", lambda: False)
    assert presets.fastest_options(small_method("ttvos"), "cpu") == {
        "precision": "bfloat16", "fold_norms": True, "compile": True, "winograd": True}
    monkeypatch.setattr(presets, "cpu_has_amx", lambda: True)  # Winograd unmeasured with AMX: off
    assert presets.fastest_options(small_method("ttvos"), "cpu")["winograd"] is False
    assert presets.fastest_options(small_method("pcvos"), "cpu") == {
        "precision": "bfloat16", "fold_norms": True, "channels_last": True}
    monkeypatch.setattr(presets, "cpu_has_fast_bfloat16", lambda: False)
    assert presets.fastest_options(small_method("crvos"), "cpu")["precision"] == "float32"
    assert presets.fastest_options(small_method("crvos"), "cuda") == {
        "precision": "bfloat16", "channels_last": True, "cuda_graphs": True}


def test_amx_probe_without_torchs_private_function(monkeypatch, tmp_path):
    from vos_models.engine import presets

    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(presets, "_CPUINFO", str(cpuinfo))
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n")
    assert presets.cpu_has_amx()
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert not presets.cpu_has_amx()
    monkeypatch.setattr(presets, "_CPUINFO", str(tmp_path / "missing"))
    assert not presets.cpu_has_amx()


def test_fastest_refuses_the_options_it_picks(tmp_path, capsys):
    from tests.test_bad_inputs_cli import run
    from vos_models.cli import segment as segment_cli
    from vos_models.tracker import Tracker

    with pytest.raises(TypeError, match="fastest=True picks the precision"):
        Tracker("tiny-prop", config={"channels": 4}, device="cpu", fastest=True, compile=True)
    with pytest.warns(UserWarning, match="random"):
        tracker = Tracker("tiny-prop", config={"channels": 4}, device="cpu", fastest=True, threads=1)
    assert tracker.engine.fold_report is not None and tracker.engine.channels_last
    status, lines = run("vos-segment", segment_cli.main,
                        ["--method", "tiny-prop", "--input", tmp_path, "--mask", tmp_path / "m.png",
                         "--output", tmp_path / "out", "--fastest", "--compile", "--fold-norms", "--winograd"], capsys)
    assert status != 0 and "--fastest picks the precision and fast paths itself; drop --compile, --fold-norms, --winograd" \
        in lines[-1]
    status, lines = run("vos-segment", segment_cli.main,
                        ["--method", "tiny-prop", "--input", tmp_path, "--mask", tmp_path / "m.png",
                         "--output", tmp_path / "out", "--aot-dir", tmp_path / "aot"], capsys)
    assert status != 0 and "--aot-dir keeps the compiled tracking step on disk: give --compile or --fastest" \
        in lines[-1]
    assert not (tmp_path / "aot").exists() and not (tmp_path / "out").exists()


_CACHE_WORKER = """
import sys, torch
sys.path.insert(0, {root!r})
from tests.test_tracking_step import started
from vos_models.engine.tracking import CompiledTracking
method, session, frame = started("crvos")
with torch.inference_mode():
    CompiledTracking(method)(session.state, frame)
"""


@pytest.mark.slow
def test_a_second_process_reuses_the_compiled_kernels(tmp_path):
    # Frozen graphs bypass Inductor's FX graph cache (counter fxgraph_cache_bypass), so a new
    # process traces and lowers the step again; what it reuses is the on-disk cache of compiled
    # C++ kernels: the second process builds no new shared object.
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    cache = tmp_path / "inductor"
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    built = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", _CACHE_WORKER.format(root=root)], env=env, cwd=root,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        built.append({p.relative_to(cache) for p in cache.rglob("*.so")})
    assert built[0], "the first process built no kernel"
    assert built[1] == built[0], sorted(map(str, built[1] - built[0]))
