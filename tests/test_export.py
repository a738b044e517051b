"""The tracking step exported (vos_models.export, vos-export) and run by ONNX Runtime and OpenVINO.

Each exported model runs a short video in a loop, its state outputs fed back as its inputs as
the sidecar says, and its probabilities are compared with our own ``session.step`` sequence
(eager PyTorch, the default fused ops) from the same first frame. One export per method and
format serves 1 and 3 objects (the object axis is dynamic; the graph is traced with 2).

Tolerance 1e-4 on probabilities: both sides are float32; one step differs by float rounding
only (other convolution and reduction orders: oneDNN vs MLAS / OpenVINO's kernels, the fused ops
vs their reference). Measured here: 0.7e-6 to 1.6e-6 over the three frames (1.2e-5 for one
step of CRVOS's ResNet-50); the state fed back lets rounding grow a little from frame to frame,
so 1e-4 leaves a margin of 60x while a wrong op, a baked-in object count, a batch norm in
training mode or a mis-fed state differs by 1e-2 or more (measured: 0.04 to 0.97).

Small frames (64 x 96) and CRVOS on its ResNet-18 variant keep the exports to seconds.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import require_shared
from vos_models.cli import export as export_cli
from vos_models.cli.common import run_main
from vos_models.engine.session import VideoSession
from vos_models.errors import VOSInputError
from vos_models.export import export_tracking_step, synthetic_video
from vos_models.registry import build_method

SIZE = (64, 96)
FRAMES = 4          # the annotated first frame, then three tracking steps
TOLERANCE = 1e-4
METHODS = {"ttvos": {}, "crvos": {"backbone": "resnet18"}, "rgmp": {"backbone": "resnet18", "decoder_channels": 64}}


def _onnxruntime():
    return pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")


def _openvino():
    return pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino)")


def _method(name: str):
    torch.manual_seed(0)
    return build_method(name, **METHODS[name]).eval()


@pytest.fixture(scope="module")
def methods():
    return {name: _method(name) for name in METHODS}


@pytest.fixture(scope="module")
def exported(methods, tmp_path_factory):
    """(method, format, objects) -> path of the exported model, exported once per module: one file
    for every object count where the method's step allows it, else one per count (RGMP)."""
    folder = tmp_path_factory.mktemp("exported")
    cache = {}

    def get(name: str, format: str, objects: int = 1):
        key = (name, format, None if methods[name].any_object_count else objects)
        if key not in cache:
            if format == "onnx":
                pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
            else:
                _openvino()
            stem = name if key[2] is None else f"{name}{objects}"
            path = folder / f"{stem}.{'onnx' if format == 'onnx' else 'xml'}"
            export_tracking_step(methods[name], path, format, height=SIZE[0], width=SIZE[1], objects=objects)
            assert not methods[name].training  # the export leaves the method's mode as it found it
            cache[key] = path
        return cache[key]

    return get


def runner(path, format: str):
    """feeds {input name: array} -> {output name: array}, on the CPU in float32."""
    if format == "onnx":
        ort = _onnxruntime()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return lambda feeds: dict(zip(names, session.run(None, feeds)))
    ov = _openvino()
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def run(feeds):
        results = compiled(feeds)
        return {port.get_any_name(): results[port] for port in compiled.outputs}
    return run


def reference(method, frames, masks):
    """Our own sequence: the first frame with masks, then ``session.step`` on the others. Returns
    the state after the first frame ({field: tensor}) and the later probabilities."""
    session = VideoSession(method)
    with torch.no_grad():
        session.step(frames[:1], masks, list(range(1, masks.shape[0] + 1)))
        start = {name: getattr(session.state, name).clone() for name in method.tracked_inputs}
        probs = [session.step(frames[i:i + 1]) for i in range(1, frames.shape[0])]
    return start, probs


def loop(run, sidecar: dict, start: dict, frames) -> list[np.ndarray]:
    """The exported step over frames[1:], each output that ``feeds`` an input fed back, the
    other inputs kept."""
    feeds = {name: tensor.numpy() for name, tensor in start.items()}
    probs = []
    for i in range(1, frames.shape[0]):
        out = run({"frame": frames[i:i + 1].numpy(), **feeds})
        probs.append(out["prob"])
        # outputs replace the inputs they feed; an input no output feeds (RGMP's refs) stays
        feeds.update({o["feeds"]: out[o["name"]] for o in sidecar["outputs"] if o.get("feeds")})
    return probs


def max_difference(ours, theirs) -> float:
    assert [tuple(p.shape) for p in ours] == [tuple(p.shape) for p in theirs]
    return max(float((p - torch.from_numpy(np.asarray(q))).abs().max()) for p, q in zip(ours, theirs))


@pytest.mark.parametrize("format", ["onnx", "openvino"])
@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("objects", [1, 3])
def test_exported_loop_matches_our_steps(methods, exported, name, format, objects):
    path = exported(name, format, objects)
    run = runner(path, format)
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    frames, masks = synthetic_video(*SIZE, objects, frames=FRAMES, seed=11)
    start, ours = reference(methods[name], frames, masks)
    theirs = loop(run, sidecar, start, frames)
    assert ours[0].shape == (1, objects + 1, *SIZE)
    assert max_difference(ours, theirs) <= TOLERANCE


def test_sidecar_describes_inputs_outputs_and_the_loop(exported):
    path = exported("ttvos", "onnx")
    sidecar = json.loads((path.parent / "ttvos.onnx.json").read_text())
    assert sidecar["method"] == "ttvos" and sidecar["model_format"] == "onnx"
    assert sidecar["frame_size"] == {"height": SIZE[0], "width": SIZE[1]}
    assert sidecar["objects"]["dynamic"] is True
    assert [i["name"] for i in sidecar["inputs"]] == ["frame", "history", "prev_s16", "template"]
    assert [o["name"] for o in sidecar["outputs"]] == ["prob", "history_out", "prev_s16_out", "template_out",
                                                      "weight_out"]
    feeds = {o["name"]: o.get("feeds") for o in sidecar["outputs"]}
    assert feeds == {"prob": None, "history_out": "history", "prev_s16_out": "prev_s16",
                     "template_out": "template", "weight_out": None}
    assert sidecar["inputs"][1]["shape"][0] == "objects" and sidecar["outputs"][0]["shape"][1] == "objects + 1"
    assert all(entry["meaning"] for entry in sidecar["inputs"] + sidecar["outputs"])
    assert all("feeds" in entry for entry in sidecar["outputs"])
    assert any("method.step" in line for line in sidecar["loop"])
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    graph = onnx.load(str(path), load_external_data=False).graph
    assert [i.name for i in graph.input] == [i["name"] for i in sidecar["inputs"]]
    assert [o.name for o in graph.output] == [o["name"] for o in sidecar["outputs"]]


def test_static_objects_take_exactly_that_count(methods, tmp_path):
    ort = _onnxruntime()
    path = tmp_path / "crvos2.onnx"
    export_tracking_step(methods["crvos"], path, height=SIZE[0], width=SIZE[1], objects=2, dynamic_objects=False)
    sidecar = json.loads((tmp_path / "crvos2.onnx.json").read_text())
    assert sidecar["objects"]["dynamic"] is False and sidecar["objects"]["count"] == 2
    assert sidecar["inputs"][1]["shape"][0] == 2
    frames, masks = synthetic_video(*SIZE, 2, frames=3, seed=5)
    start, ours = reference(methods["crvos"], frames, masks)
    assert max_difference(ours, loop(runner(path, "onnx"), sidecar, start, frames)) <= TOLERANCE
    frames, masks = synthetic_video(*SIZE, 3, frames=2, seed=5)
    start, _ = reference(methods["crvos"], frames, masks)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        ort.InferenceSession(str(path)).run(None, {"frame": frames[1:2].numpy(),
                                                   "clue_mask": start["clue_mask"].numpy()})


@pytest.mark.parametrize("name, config, why", [("pcvos", {}, "clip-wise"),
                                              ("rgmp", {"scales": (0.5, 1.0)}, "only single-scale RGMP")])
def test_methods_without_a_tracking_step_are_refused(name, config, why, tmp_path):
    method = build_method(name, **config)
    with pytest.raises(VOSInputError, match=rf"{name}.*cannot be exported.*{why}"):
        export_tracking_step(method, tmp_path / "m.onnx", height=SIZE[0], width=SIZE[1])
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_leaves_no_file(methods, tmp_path, monkeypatch):
    import vos_models.export as export

    def broken(method, inputs, path, *args):
        path.write_bytes(b"half an onnx file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_export_onnx", broken)
    with pytest.raises(VOSInputError, match="No space left"):
        export_tracking_step(methods["crvos"], tmp_path / "m.onnx", height=SIZE[0], width=SIZE[1])
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_input_errors(methods, tmp_path):
    with pytest.raises(VOSInputError, match="format"):
        export_tracking_step(methods["crvos"], tmp_path / "m.onnx", "tflite", height=64, width=96)
    with pytest.raises(VOSInputError, match="at least 32"):
        export_tracking_step(methods["crvos"], tmp_path / "m.onnx", height=16, width=96)
    with pytest.raises(VOSInputError, match=r"\.xml"):
        export_tracking_step(methods["crvos"], tmp_path / "m.onnx", "openvino", height=64, width=96)
    with pytest.raises(VOSInputError, match="does not exist"):
        export_tracking_step(methods["crvos"], tmp_path / "nowhere" / "m.onnx", height=64, width=96)


def _cli(argv, capsys) -> tuple[int, str, list[str]]:
    """Exit status, stdout and stderr lines of one vos-export call (argparse's exits included)."""
    try:
        status = run_main("vos-export", export_cli.main, [str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def test_cli_exports_and_refuses_to_overwrite(tmp_path, capsys):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    output = tmp_path / "crvos.onnx"
    args = ["--method", "crvos", "--set", "backbone=resnet18", "--size", "64x96", "--objects", "1", output]
    with pytest.warns(UserWarning, match="random"):
        status, out, _ = _cli(args, capsys)
    assert status == 0 and "crvos.onnx" in out
    assert output.stat().st_size > 0
    sidecar = json.loads((tmp_path / "crvos.onnx.json").read_text())
    assert sidecar["method"] == "crvos" and sidecar["build_config"] == {"backbone": "resnet18"}
    assert sidecar["weights"] == "random weights"
    before = output.stat().st_mtime_ns
    status, _, err = _cli(args, capsys)
    assert status == 1 and len(err) == 1 and "already exists" in err[0] and "--overwrite" in err[0]
    assert output.stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crvos.onnx", "crvos.onnx.json"]


@pytest.mark.parametrize("size", ["64", "64x", "axb", "16x96", "64x96x3"])
def test_cli_refuses_a_bad_size(tmp_path, capsys, size):
    status, _, err = _cli(["--method", "crvos", "--size", size, tmp_path / "m.onnx"], capsys)
    assert status == 2 and 1 <= len(err) <= 2 and "--size" in err[0] and "HEIGHTxWIDTH" in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, expected", [
    (["--method", "pcvos"], "cannot be exported: PCVOS is clip-wise"),
    (["--method", "ttvos", "--format", "openvino"], "writes an .xml"),
    (["--method", "ttvos", "--checkpoint", "missing.pt"], "missing.pt"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, expected):
    status, _, err = _cli([*argv, "--size", "64x96", tmp_path / "m.onnx"], capsys)
    assert status == 1 and len(err) == 1 and expected in err[0]
    assert list(tmp_path.iterdir()) == []


def test_real_frames_blackswan(tmp_path):
    """DAVIS blackswan, its first four frames (scaled to 120 x 216 to stay fast) and its first
    mask: TTVOS exported and looped in ONNX Runtime follows our own steps."""
    folder = require_shared("data", "davis-sample")
    cv2 = pytest.importorskip("cv2", reason="opencv is not installed")
    from vos_models.data.frames import open_frames
    from vos_models.data.palette import read_first_mask

    source = open_frames(folder / "JPEGImages" / "480p" / "blackswan")
    size = (120, 216)
    rgb = [cv2.resize(frame, size[::-1], interpolation=cv2.INTER_AREA) for _, (_, frame) in zip(range(FRAMES), source)]
    frames = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float() / 255
    labels = read_first_mask(folder / "Annotations" / "480p" / "blackswan" / "00000.png")
    labels = cv2.resize(labels, size[::-1], interpolation=cv2.INTER_NEAREST)
    masks = torch.from_numpy(labels == 1).float()[None]
    method = _method("ttvos")
    path = tmp_path / "ttvos.onnx"
    export_tracking_step(method, path, height=size[0], width=size[1])
    sidecar = json.loads((tmp_path / "ttvos.onnx.json").read_text())
    start, ours = reference(method, frames, masks)
    assert max_difference(ours, loop(runner(path, "onnx"), sidecar, start, frames)) <= TOLERANCE


def test_two_way_softmax_keeps_relative_accuracy_in_onnx_runtime(tmp_path):
    """CRVOS divides by the "not object" probability near 1e-7: exported, the two-way softmax
    must keep its relative accuracy there (ONNX Runtime's Sigmoid is off by up to 2x at 1e-7;
    with three saturated objects CRVOS's output moved by 0.095 before the export used Softmax)."""
    ort = _onnxruntime()
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    from vos_models.methods.planar import two_way_softmax

    class Softmax(torch.nn.Module):
        def forward(self, logits):
            return two_way_softmax(logits)

    difference = torch.tensor([10.0, 14.0, 15.0, 16.0, 16.5, 17.0, 18.0]).view(1, 1, 1, -1)
    logits = torch.cat([torch.zeros_like(difference), difference], dim=1)      # (1, 2, 1, 7)
    path = tmp_path / "softmax.onnx"
    torch.onnx.export(Softmax(), (logits,), str(path), dynamo=False, opset_version=17, input_names=["logits"])
    ours = two_way_softmax(logits)[:, 0].double()
    theirs = torch.from_numpy(ort.InferenceSession(str(path)).run(None, {"logits": logits.numpy()})[0])[:, 0]
    assert float((theirs.double() / ours - 1).abs().max()) < 1e-4


def test_the_docs_loop_example_runs_as_written(tmp_path):
    """docs/export.md's ONNX Runtime loop, run as written (in a scratch folder: it writes
    ttvos.onnx there)."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    _onnxruntime()
    repo = Path(__file__).resolve().parents[1]
    blocks = re.findall(r"```python\n(.*?)```", (repo / "docs" / "export.md").read_text(), re.S)
    loop = [b for b in blocks if "onnxruntime as ort" in b]
    assert len(loop) == 1
    code = loop[0] + "\nassert labels.shape == (64, 96) and sorted(feeds) == ['history', 'prev_s16', 'template']\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr[-3000:]


def test_benchmark_threads_and_tables():
    """benchmarks/bench_cpu_runtimes.py's thread list and tables (no model run)."""
    import os

    from benchmarks.bench_cpu_runtimes import RUNTIMES, _threads, tables

    threads, note = _threads("2,all")
    assert threads == list(dict.fromkeys([2, os.cpu_count()]))
    assert (note != "") == (os.cpu_count() == 2)
    rows = [{"method": "crvos", "objects": 1, "threads": 2, "runtime": key, "precision": "float32",
             "median_ms": 100.0 * (i + 1), "load_s": 0.1, "peak_rss_mb": None, "max_abs_diff": 0.0,
             "label_agreement_pct": 100.0, "note": ""} for i, key in enumerate(RUNTIMES)]
    text = tables(rows, [("pcvos", "clip-wise")])
    # the last column is speed: OpenVINO bf16 ms / ours best ms (600 / 300)
    assert "| crvos | 1 | 2 | 100.0 | 200.0 | 300.0 | 400.0 | 500.0 | 600.0 | 2.00 |" in text
    assert "| pcvos | - | - | not exported: clip-wise |" in text


@pytest.mark.parametrize("name", ["ttvos", "crvos", "rgmp", "pcvos"])
def test_benchmark_steps_every_method(name):
    """The CPU-runtime benchmark times our paths on all four methods (RGMP and PCVOS have no
    tracking step to export, but are measured): one steady-state step of each, from a copy of the
    state, gives (1, O + 1, H, W) probabilities and leaves the state as it was."""
    import torch

    from benchmarks.bench_cpu_runtimes import _start
    from benchmarks.cpu_runtime_child import ours_engine_options, ours_step
    from vos_models.engine.inference import InferenceEngine
    from vos_models.registry import build_method

    torch.manual_seed(0)
    method = build_method(name).eval()
    state, frame = _start(method, 64, 96, 2)
    engine = InferenceEngine(method, **ours_engine_options("ours_fp32", method))
    first, second = ours_step(engine, state, frame), ours_step(engine, state, frame)
    assert first.shape == (1, 3, 64, 96) and torch.isfinite(first).all()
    torch.testing.assert_close(first, second)  # the same state both times: the step worked on a copy


def test_rgmp_exports_a_fixed_object_count_only(methods, tmp_path):
    """RGMP's one-object step (the public Infer_SO: no union reference, no aggregation) is not its
    several-object step: asked for any object count, the export says so."""
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    with pytest.raises(VOSInputError, match="cannot be exported for any object count"):
        export_tracking_step(methods["rgmp"], tmp_path / "m.onnx", height=SIZE[0], width=SIZE[1],
                             dynamic_objects=True)
    result = export_tracking_step(methods["rgmp"], tmp_path / "m.onnx", height=SIZE[0], width=SIZE[1], objects=2)
    assert result.description["objects"]["dynamic"] is False and result.description["objects"]["count"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]  # no temporaries left
