"""RGMP against the public implementation's own outputs (../shared/parity/rgmp).

The weights are rebuilt from the fixture's manifest (``make_weights.fill``), converted with
``convert_public_state_dict`` and run through ``RGMP.step`` on the fixture's frames, following
the protocol in the fixture's README (padding, OpenCV resizes, soft guidance, aggregation).
Probabilities must match to 1e-4; labels must match wherever the top two probabilities are
more than 1e-4 apart (random weights leave a few near-ties).

Runtime: ResNet-50 at 256 x 448 with 3 encoder passes per frame. The multi-scale check runs
the first 3 frames by default (2 propagations, the second guided by soft outputs); the full
6 frames are in the ``slow`` test.
"""
import json
import sys

import pytest
import torch
import vos_kernels
from conftest import require_shared

from vos_models.methods.rgmp import PAPER_SCALES, RGMP
from vos_models.methods.rgmp.convert import convert_public_state_dict

PROB_TOL = 1e-4
MARGIN = 1e-4


@pytest.fixture(scope="module")
def parity():
    manifest = require_shared("parity", "rgmp", "manifest.json")
    folder = manifest.parent
    sys.path.insert(0, str(folder.parent))
    try:
        from make_weights import fill
    finally:
        sys.path.remove(str(folder.parent))
    spec = json.loads(manifest.read_text())
    public_state = fill(spec["keys"], seed=spec["seed"], gain=spec["gain"])
    model = RGMP(resizer="opencv").eval()
    model.load_state_dict(convert_public_state_dict(public_state), strict=True)
    inputs = torch.load(folder / "inputs.pt", weights_only=True)
    outputs = torch.load(folder / "outputs.pt", weights_only=True)
    return {"model": model, "inputs": inputs, "outputs": outputs, "cache": {}}


def run_rgmp(parity, scales, num_frames):
    """Probabilities (num_frames, 3, 240, 432) from RGMP.step on the fixture's frames."""
    model, inputs = parity["model"], parity["inputs"]
    model.scales = tuple(scales)
    frames = inputs["frames"][:num_frames].float() / 255
    first = inputs["first_mask"]
    masks = torch.stack([(first == i + 1).float() for i in range(inputs["num_objects"])])
    ids = list(range(1, inputs["num_objects"] + 1))
    state = model.new_video()
    probs = [model.step(state, frames[t:t + 1], masks if t == 0 else None, ids if t == 0 else [])[0]
             for t in range(num_frames)]
    return torch.stack(probs)


def top_two_margin(prob):
    top = prob.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def assert_labels_match(ours, expected_labels, margin_source):
    apart = top_two_margin(margin_source) > MARGIN
    labels = ours.argmax(1).to(torch.uint8)
    wrong = (labels != expected_labels) & apart
    assert int(wrong.sum()) == 0, f"{int(wrong.sum())} labels differ where the top two are > {MARGIN} apart"
    assert float(apart.float().mean()) > 0.99  # the exemption covers only a few near-ties


def test_single_scale_matches_public(parity):
    ours = run_rgmp(parity, [1.0], 6)
    parity["cache"]["single"] = ours
    out = parity["outputs"]
    stride = out["single_scale_stride"]
    diff = (ours[:, :, ::stride, ::stride] - out["prob_single_scale_stride3"]).abs()
    assert float(diff.max()) < PROB_TOL, f"max |difference| {float(diff.max()):.3g}"
    # Propagated frames really moved away from the given mask (the test is not vacuous).
    assert float((ours[1:] - ours[:1]).abs().max()) > 0.5
    assert_labels_match(ours, out["labels_single_scale"], ours)


def _check_multiscale(parity, num_frames):
    ours = run_rgmp(parity, PAPER_SCALES, num_frames)
    out = parity["outputs"]
    expected = out["prob_multiscale"][:num_frames]
    diff = (ours - expected).abs()
    assert float(diff.max()) < PROB_TOL, f"max |difference| {float(diff.max()):.3g}"
    assert_labels_match(ours, out["labels_multiscale"][:num_frames], expected)


def test_multiscale_matches_public(parity):
    assert list(PAPER_SCALES) == parity["outputs"]["scales_multiscale"]
    _check_multiscale(parity, 3)


@pytest.mark.slow
def test_multiscale_matches_public_all_frames(parity):
    _check_multiscale(parity, 6)


def test_reference_kernels_give_the_same_results(parity):
    """The vos_kernels backend changes speed, not results: rerun with the eager reference."""
    num_frames = 3
    default = parity["cache"].get("single")
    if default is None:
        default = run_rgmp(parity, [1.0], num_frames)
    with vos_kernels.use_backend("reference"):
        reference = run_rgmp(parity, [1.0], num_frames)
    assert float((reference - default[:num_frames]).abs().max()) < 1e-5
    out = parity["outputs"]
    stride = out["single_scale_stride"]
    diff = (reference[:, :, ::stride, ::stride] - out["prob_single_scale_stride3"][:num_frames]).abs()
    assert float(diff.max()) < PROB_TOL
