"""Export a method's tracking step to ONNX or OpenVINO IR, with a JSON sidecar.

The tracking step (``VOSMethod.track``, see :mod:`vos_models.engine.interface`) is the step of
a frame that brings no mask: a pure function of the frame and a few state tensors. Exported,
it becomes a graph that another runtime (ONNX Runtime, OpenVINO) runs in a loop::

    inputs:  frame (1, 3, H, W) float32 RGB in [0, 1], then the state tensors
             (``method.tracked_inputs``: TTVOS history, prev_s16, template; CRVOS clue_mask)
    outputs: prob (1, O + 1, H, W), then the next state tensors, named ``<field>_out``
             (``method.tracked_outputs``), each fed back as the input of the same name on the
             next frame (TTVOS's ``weight_out`` feeds nothing: it is reported, not read)

The first frame (and any frame that brings masks: a new object, a correction) needs the full
method (``method.step``); it writes the state tensors the loop starts from. The sidecar
``<path>.json`` says all this in data: input and output names, shapes (``"objects"`` for the
object axis), which state field each one is, the method, its build config, the frame size.

What is fixed: the frame size (padding is computed from it when the graph is traced) and the
batch of one video. The object axis is dynamic (``dynamic_objects=True``, the default): one
export serves any object count. The graph is traced with at least two objects, because the
tracer records Python-level choices as they fell: CRVOS broadcasts a frame's features to its
objects only when there are several, so a graph traced with one object refuses three
(measured; TTVOS's would not). The tests run 1 and 3 objects through the same files. With
``dynamic_objects=False`` the graph takes exactly ``objects``; that is the default for a method
whose one-object step takes another path (``any_object_count = False``: RGMP).

The export runs the project's fused ops on their eager PyTorch reference
(``vos_kernels.use_backend("reference")``): standard ONNX ops, opset 17. The methods' two-way
softmax is written as a Softmax there, not as two Sigmoids: ONNX Runtime's Sigmoid is accurate
only in absolute terms near 1e-7, where CRVOS's aggregation divides (``methods/planar.py``).
Weights stay float32 (OpenVINO IR is saved without its default fp16 weight compression: the
runtime chooses the inference precision, e.g. ``INFERENCE_PRECISION_HINT: bf16``).

Writes are atomic: everything is written into a hidden temporary folder beside ``path`` and
renamed into place (model files first, the sidecar last), so a failure leaves no partial file.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

import vos_kernels

from .atomic import make_private_dir, remove_stale_temporaries
from .engine.interface import VOSMethod
from .errors import VOSInputError

FORMATS = ("onnx", "openvino")
OPSET = 17
SIDECAR_FORMAT = "vos_models.tracking_step"
SIDECAR_VERSION = 1
#: the object count a dynamic-object graph is traced with (see the module docstring)
TRACE_OBJECTS = 2
OBJECTS_AXIS = "objects"

#: what each state field holds, for the sidecar (shapes: O objects, h8 = Hp / 8, ... of the
#: padded frame)
FIELD_MEANINGS = {
    ("ttvos", "history"): "attention clue A per object (O, 6, Hp/8, Wp/8): the last three pooled "
                          "(background, object) probability pairs",
    ("ttvos", "prev_s16"): "the previous frame's stride-16 features per object (O, C16, Hp/16, Wp/16)",
    ("ttvos", "template"): "the adaptive long-term template per object (O, C8, C8)",
    ("ttvos", "weight"): "the adaptive template weights of this frame's update (O,); reported, not fed back",
    ("crvos", "clue_mask"): "each object's Clue: its coarse (background, object) mask (O, 2, Hp/16, Wp/16)",
    ("rgmp", "guidance"): "the last frame's aggregated probabilities at the padded size (1, O + 1, Hp, Wp): "
                          "the next frame's guidance",
    ("rgmp", "refs"): "the references the propagation reads (K, C5, Hp/32, Wp/32): the union's first when "
                      "O >= 2 (K = O + 1), else the object's (K = 1); fixed after the annotated frames",
}

#: why a method without a tracking step cannot be exported (by registry name)
NO_TRACKING_STEP = {
    "pcvos": "PCVOS is clip-wise and its memory bank grows with the video: there is no fixed-size state "
             "to feed back",
    "rgmp": "multi-scale RGMP resizes every frame per scale (OpenCV on the CPU, as the public code) and "
            "keeps references per scale: only single-scale RGMP (scales=(1.0,), the default) has a "
            "tracking step",
}


class TrackingStep(nn.Module):
    """``method.track`` as a module: ``forward(frame, *tracked_inputs) -> (prob,
    *tracked_outputs)``, frame (1, 3, H, W), prob (1, O + 1, H, W)."""

    def __init__(self, method: VOSMethod):
        super().__init__()
        self.method = method

    def forward(self, frame: Tensor, *inputs: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.method.track(frame, *inputs))


@dataclass
class ExportResult:
    """What :func:`export_tracking_step` wrote: the model files (``files[0]`` is ``path``) and
    the sidecar, plus the sidecar's content."""

    files: list[Path]
    sidecar: Path
    description: dict


def check_exportable(method: VOSMethod) -> None:
    """Raise VOSInputError when ``method`` has no tracking step to export, saying why."""
    if not method.has_tracking_step:
        why = NO_TRACKING_STEP.get(method.name, "it defines no tracking step (track, tracked_inputs)")
        raise VOSInputError(f"method {method.name!r} cannot be exported: {why}; only methods with a tracking "
                            f"step (ttvos, crvos, single-scale rgmp) can")


def output_names(method: VOSMethod) -> list[str]:
    """``prob`` then ``<field>_out`` for each tracked output."""
    return ["prob"] + [f"{name}_out" for name in method.tracked_outputs]


def model_files(path: str | Path, format: str) -> list[Path]:
    """The files an export to ``path`` writes, model first (OpenVINO: the .xml and its .bin)."""
    path = Path(path)
    if format == "openvino":
        return [path, path.with_suffix(".bin")]
    return [path]


def sidecar_path(path: str | Path) -> Path:
    """``<path>.json``: the sidecar describing an exported model."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def synthetic_video(height: int, width: int, objects: int, frames: int = 2, seed: int = 7
                    ) -> tuple[Tensor, Tensor]:
    """A small synthetic video: frames (T, 3, H, W) float in [0, 1] and the first frame's masks
    (objects, H, W) float {0, 1} (every object present)."""
    from .data.synthetic import SyntheticClipGenerator

    clip = SyntheticClipGenerator(height, width, frames, min_objects=objects, max_objects=objects,
                                  seed=seed).clip(0)
    return clip.frames.float().clamp(0, 1), clip.masks(objects)[0]


def example_inputs(method: VOSMethod, frame0: Tensor, masks: Tensor, frame1: Tensor) -> tuple[Tensor, ...]:
    """``(frame1, *tracked_inputs)`` from a real first step: ``method.step`` on ``frame0`` (1, 3,
    H, W) with ``masks`` (O, H, W) for objects 1..O, through a session, on the reference ops."""
    from .engine.session import VideoSession

    session = VideoSession(method)
    with torch.no_grad(), vos_kernels.use_backend("reference"):
        session.step(frame0, masks, list(range(1, masks.shape[0] + 1)))
    state = [getattr(session.state, name) for name in method.tracked_inputs]
    return (frame1, *[t.detach().clone().contiguous() for t in state])


def _check_arguments(method: VOSMethod, format: str, height: int, width: int, objects: int) -> None:
    if not isinstance(method, VOSMethod):
        raise TypeError(f"export_tracking_step: method must be a VOSMethod, got {type(method).__name__}")
    check_exportable(method)
    if format not in FORMATS:
        raise VOSInputError(f"export format must be one of {', '.join(FORMATS)}, got {format!r}")
    for label, value in (("height", height), ("width", width), ("objects", objects)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise VOSInputError(f"export: {label} must be an integer >= 1, got {value!r}")
    if min(height, width) < 32:
        raise VOSInputError(f"export: frames must be at least 32 x 32 pixels, got {height} x {width}")


def export_tracking_step(method: VOSMethod, path: str | Path, format: str = "onnx", *, height: int, width: int,
                         objects: int = 1, dynamic_objects: bool | None = None, overwrite: bool = True,
                         source: str | None = None) -> ExportResult:
    """Write ``method``'s tracking step to ``path`` (ONNX ``.onnx``; OpenVINO IR ``.xml`` plus
    its ``.bin``) and the sidecar ``<path>.json``.

    Args:
        method: a method with a tracking step (TTVOS, CRVOS, single-scale RGMP); its weights as they are (moved to
            the CPU, eval mode). Others raise VOSInputError saying why.
        format: "onnx" or "openvino".
        height, width: the frame size the graph takes (fixed).
        objects: the object count of the example the graph is traced with; with
            ``dynamic_objects`` any count runs (traced with at least two, see the module
            docstring), without it exactly this many. None (the default): any count where the
            method's step is the same for every count (``any_object_count``), else exactly
            ``objects`` (RGMP); True for such a method raises VOSInputError saying why.
        overwrite: False refuses (VOSInputError) when a file to be written exists.
        source: where the weights came from (a checkpoint path), recorded in the sidecar.

    Returns the files written and the sidecar's content.
    """
    _check_arguments(method, format, height, width, objects)
    if dynamic_objects is None:
        dynamic_objects = method.any_object_count
    elif dynamic_objects and not method.any_object_count:
        raise VOSInputError(f"method {method.name!r} cannot be exported for any object count: its one-object step "
                            f"takes another path than its several-object step; export a fixed count "
                            f"(dynamic_objects=False, vos-export --static-objects)")
    path = Path(path)
    files = model_files(path, format)
    sidecar = sidecar_path(path)
    if format == "openvino" and path.suffix != ".xml":
        raise VOSInputError(f"OpenVINO IR is an .xml file (with its .bin beside it), got {path}")
    if not overwrite:
        existing = [str(p) for p in (*files, sidecar) if p.exists()]
        if existing:
            raise VOSInputError(f"{', '.join(existing)} already exist(s) (use --overwrite to replace)")
    if not path.parent.is_dir():
        raise VOSInputError(f"output folder {path.parent} does not exist")
    if format == "openvino":
        _require("openvino", "OpenVINO IR export")

    was_training = method.training
    try:
        return _export(method.cpu().eval(), path, format, files, sidecar, height, width, objects, dynamic_objects,
                       source)
    finally:
        method.train(was_training)


def _export(method: VOSMethod, path: Path, format: str, files: list[Path], sidecar: Path, height: int, width: int,
            objects: int, dynamic_objects: bool, source: str | None) -> ExportResult:
    traced_objects = max(objects, TRACE_OBJECTS) if dynamic_objects else objects
    frames, masks = synthetic_video(height, width, traced_objects)
    inputs = example_inputs(method, frames[:1], masks, frames[1:2])
    input_names = ["frame", *method.tracked_inputs]
    outputs = output_names(method)
    with torch.no_grad(), vos_kernels.use_backend("reference"):
        expected = TrackingStep(method).eval()(*inputs)
    description = describe(method, format, files, height, width, inputs, expected, input_names, outputs,
                           traced_objects, dynamic_objects, source)

    remove_stale_temporaries(path.parent, f".{path.name}.export-")
    try:
        work = make_private_dir(path.parent, f".{path.name}.export-")
    except OSError as exc:
        raise VOSInputError(f"output folder {path.parent} is not writable: {exc.strerror or exc}") from exc
    try:
        onnx_file = work / (path.stem + ".onnx")
        _export_onnx(method, inputs, onnx_file, input_names, outputs, dynamic_objects)
        if format == "openvino":
            import openvino

            # compress_to_fp16=False: keep float32 weights (save_model halves them by default)
            openvino.save_model(openvino.convert_model(onnx_file), work / path.name, compress_to_fp16=False)
        else:
            onnx_file = onnx_file.rename(work / path.name)
        (work / sidecar.name).write_text(json.dumps(description, indent=2) + "\n")
        for target in (*files, sidecar):  # the sidecar last: once it is there, the model is complete
            os.replace(work / target.name, target)
    except OSError as exc:
        raise VOSInputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(files, sidecar, description)


def _require(module: str, what: str) -> None:
    try:
        __import__(module)
    except ImportError as exc:
        raise VOSInputError(f"{what} needs the {module!r} package (pip install {module}; the 'bench' extra "
                            f"has it)") from exc


def _export_onnx(method: VOSMethod, inputs: Sequence[Tensor], path: Path, input_names: list[str],
                 outputs: list[str], dynamic_objects: bool) -> None:
    """torch.onnx.export (the TorchScript exporter, opset 17) of the tracking step on the
    reference ops."""
    import vos_kernels

    _require("onnx", "ONNX export")
    dynamic_axes = None
    if dynamic_objects:
        # Every state tensor has the objects first; prob has them after the background channel.
        dynamic_axes = {name: {0: OBJECTS_AXIS} for name in input_names[1:] + outputs[1:]}
        dynamic_axes["prob"] = {1: "objects_plus_1"}
    # A fresh module is in training mode, and the exporter restores the mode it found after
    # tracing, recursively: an untouched wrapper would leave the method training (batch norms
    # then use and update batch statistics). The caller restores the method's own mode.
    with torch.no_grad(), vos_kernels.use_backend("reference"), warnings.catch_warnings():
        # The tracer warns of every Python-level check on a shape (the methods' input checks,
        # the padding arithmetic): shapes are fixed by design here except the object axis, and
        # the tests run other object counts through the graph. The TorchScript exporter
        # (dynamo=False) is deliberate: it is the one measured to export these methods.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(TrackingStep(method).eval(), tuple(inputs), str(path), dynamo=False, opset_version=OPSET,
                          input_names=input_names, output_names=outputs, dynamic_axes=dynamic_axes)


def _shape(tensor: Tensor, axis: int | None) -> list:
    shape: list = list(tensor.shape)
    if axis is not None:
        shape[axis] = OBJECTS_AXIS if axis == 0 else "objects + 1"
    return shape


def describe(method: VOSMethod, format: str, files: list[Path], height: int, width: int,
             inputs: Sequence[Tensor], outputs: Sequence[Tensor], input_names: list[str],
             output_names_: list[str], traced_objects: int, dynamic_objects: bool,
             source: str | None) -> dict:
    """The sidecar's content (see the module docstring)."""
    def meaning(field: str) -> str:
        return FIELD_MEANINGS.get((method.name, field), f"state field {field!r} of {method.name}")

    dyn = dynamic_objects
    entries_in = [{"name": "frame", "shape": [1, 3, height, width], "dtype": "float32",
                   "meaning": "the frame: RGB in [0, 1], NCHW, unnormalised and unpadded"}]
    for name, tensor in zip(input_names[1:], inputs[1:]):
        entries_in.append({"name": name, "shape": _shape(tensor, 0 if dyn else None), "dtype": "float32",
                           "state_field": name, "meaning": meaning(name),
                           "from": f"{name}_out of the previous frame, or state.{name} after method.step"})
    entries_out = [{"name": "prob", "shape": _shape(outputs[0], 1 if dyn else None), "dtype": "float32",
                    "meaning": "probabilities: channel 0 background, channel k object k, summing to 1 per pixel; "
                               "labels = argmax over channels", "feeds": None}]
    for name, field, tensor in zip(output_names_[1:], method.tracked_outputs, outputs[1:]):
        feeds = field if field in method.tracked_inputs else None
        entries_out.append({"name": name, "shape": _shape(tensor, 0 if dyn else None), "dtype": "float32",
                            "state_field": field, "meaning": meaning(field), "feeds": feeds})
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "model_format": format,
        "files": [p.name for p in files],
        "method": method.name,
        "build_config": _jsonable(method.build_config),
        "weights": source or "as given to export_tracking_step (not recorded)",
        "frame_size": {"height": height, "width": width},
        "objects": {"dynamic": dyn, "traced_with": traced_objects,
                    "count": None if dyn else traced_objects,
                    "note": ("the object axis ('objects') takes any count >= 1" if dyn
                             else f"the graph takes exactly {traced_objects} object(s)")},
        "inputs": entries_in,
        "outputs": entries_out,
        "loop": [
            "The first frame, and any frame that brings masks (a new object or a correction), runs the full "
            "method in PyTorch (method.step); the state it leaves gives the first inputs "
            "(state.<field> for each state input).",
            "Each later frame: run the model with the frame and the state inputs; prob is the result; each "
            "output '<field>_out' with a 'feeds' entry is the input of that name for the next frame.",
            "Frames must all have the exported size; objects keep their channel (object k = channel k).",
        ],
        "opset": OPSET,
        "exported_with": {"torch": torch.__version__, "backend": "reference ops",
                          "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
    }


def _jsonable(value):
    """Build configs hold ints, floats, strings, tuples: make them JSON (tuples as lists)."""
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)
