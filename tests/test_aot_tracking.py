"""The tracking step compiled ahead of time into a package (:mod:`vos_models.engine.aot_tracking`,
``InferenceEngine(aot_dir=...)``, ``vos-segment --aot-dir``): it gives the eager engine's results,
a second engine loads the package instead of compiling, other weights get their own package, and
bad requests are refused with the reason."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_engine_fast_paths import SMALL, probabilities, small_method, video
from vos_models import build_method
from vos_models.engine.aot_tracking import PackagedTracking, source_digest
from vos_models.engine.inference import InferenceEngine
from vos_models.errors import VOSInputError

torch.set_num_threads(1)


def _video_with_a_correction():
    frames, masks = video(frames=6)
    corrected = masks[frames[0][0]].copy()
    # a correction of object 1 on frame 3: that frame runs the eager step, the others the package
    return frames, {frames[0][0]: corrected, frames[3][0]: np.where(corrected == 1, 1, 0).astype(np.uint8)}


@pytest.mark.slow
def test_packaged_step_gives_the_eager_results_and_is_loaded_next_time(tmp_path):
    frames, masks = _video_with_a_correction()
    method = small_method("ttvos")
    eager = probabilities(InferenceEngine(method, keep_probabilities=True), frames, masks)
    engine = InferenceEngine(method, keep_probabilities=True, compile=True, aot_dir=tmp_path)
    assert isinstance(engine.tracking, PackagedTracking)
    packaged = probabilities(engine, frames, masks)
    assert engine.tracking.calls == len(frames) - 2  # every frame but the two with masks
    # one package for the whole video: the state enters in one dtype and layout on every frame
    (package, how), = engine.tracking.packages.items()
    assert how == "compiled" and package.parent == tmp_path and package.suffix == ".pt2"
    key = json.loads(package.with_suffix(".json").read_text())
    assert key["method"] == "ttvos" and key["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert key["code"] == source_digest() and len(key["code"]) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([package.name, package.with_suffix(".json").name])
    # frozen float32 weights, Inductor's reordered sums: rounding only, as for the in-process compile
    assert (eager - packaged).abs().max() < 1e-3
    # a second engine (as a second process would) loads the package: the same results, no compile
    stamp = package.stat().st_mtime_ns
    again_engine = InferenceEngine(method, keep_probabilities=True, compile=True, aot_dir=tmp_path)
    again = probabilities(again_engine, frames, masks)
    assert again_engine.tracking.packages == {package: "loaded"} and package.stat().st_mtime_ns == stamp
    assert torch.equal(again, packaged)
    # other weights never reuse it: a package of their own
    other = small_method("ttvos")
    with torch.no_grad():
        next(other.parameters()).add_(0.5)
    third = InferenceEngine(other, keep_probabilities=True, compile=True, aot_dir=tmp_path)
    probabilities(third, frames[:3], {frames[0][0]: masks[frames[0][0]]})
    (other_package, how), = third.tracking.packages.items()
    assert how == "compiled" and other_package != package


def test_bad_aot_requests_name_the_reason(tmp_path):
    method = small_method("ttvos")
    with pytest.raises(VOSInputError, match="needs compile=True"):
        InferenceEngine(method, aot_dir=tmp_path)
    with pytest.raises(VOSInputError, match="pcvos has none"):
        InferenceEngine(small_method("pcvos"), compile=True, aot_dir=tmp_path)
    multi_scale_rgmp = build_method("rgmp", **{**SMALL["rgmp"], "scales": (0.5, 1.0)})
    with pytest.raises(VOSInputError, match="rgmp has none"):
        InferenceEngine(multi_scale_rgmp, compile=True, aot_dir=tmp_path)
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("")
    with pytest.raises(VOSInputError, match="expected a folder"):
        InferenceEngine(method, compile=True, aot_dir=a_file)
    if torch.cuda.is_available():
        with pytest.raises(VOSInputError, match="for the CPU path"):
            InferenceEngine(method, device="cuda", compile=True, aot_dir=tmp_path)


def test_the_key_follows_the_source_code(tmp_path, monkeypatch):
    # A package traced from other code (an upgrade, a local edit) is never reused: the source
    # digest is part of the key, and it covers both packages' Python files.
    import vos_kernels

    from vos_models.engine import aot_tracking

    frame = torch.zeros(1, 3, 16, 16)
    runner = PackagedTracking(small_method("ttvos"), tmp_path)
    before = runner.key(frame, [])
    assert before["code"] == aot_tracking.source_digest()
    kernels_file = sorted(Path(vos_kernels.__file__).resolve().parent.rglob("*.py"))[0]
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda path: read_bytes(path) + (b"#" if path == kernels_file else b""))
    aot_tracking.source_digest.cache_clear()
    try:
        assert runner.key(frame, [])["code"] != before["code"]
    finally:
        monkeypatch.undo()
        aot_tracking.source_digest.cache_clear()
    assert runner.key(frame, [])["code"] == before["code"]
