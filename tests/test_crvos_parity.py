"""CRVOS against the public implementation's own outputs (../shared/parity/crvos).

The weights are rebuilt from the fixture's manifest (public state-dict names and shapes) with
``make_weights.fill``, converted with our public-checkpoint converter, and the fixture's six
blackswan frames are run through ``CRVOS.step`` exactly as the public test loop runs them
(see the fixture README). Probabilities must match to 1e-4; labels are compared only where the
stored top-two probabilities are at least 1e-4 apart (elsewhere float rounding decides).
"""
import json
import sys

import pytest
import torch

from tests.conftest import require_shared
from tests.tolerances import F32_LIBRARY_ULPS
from vos_models.methods.crvos.convert import model_from_public_state_dict

PROB_ATOL = 1e-4
LABEL_GAP = 1e-4


@pytest.fixture(scope="module")
def fixture():
    folder = require_shared("parity", "crvos", "manifest.json").parent
    sys.path.insert(0, str(folder.parent))
    try:
        from make_weights import fill
    finally:
        sys.path.remove(str(folder.parent))
    spec = json.loads((folder / "manifest.json").read_text())
    public_state = fill(spec["keys"], seed=spec["seed"], gain=spec["gain"])
    model = model_from_public_state_dict(public_state)
    inputs = torch.load(folder / "inputs.pt", weights_only=True)
    outputs = torch.load(folder / "outputs.pt", weights_only=True)
    return model, inputs, outputs


def run_fixture(model, inputs):
    """Frames 0..5 through ``step``; frame 0 brings the two objects (ids in label order)."""
    frames = inputs["frames"].float() / 255  # the public ToTensor: u8 / 255 in float32
    label = inputs["first_mask"].long()
    ids = sorted(i for i in label.unique().tolist() if i != 0)
    assert ids == list(range(1, inputs["num_objects"] + 1))
    masks = torch.stack([(label == i).float() for i in ids])
    state = model.new_video(len(ids))
    probs = []
    with torch.no_grad():
        for t in range(frames.shape[0]):
            given = (masks, ids) if t == 0 else (None, [])
            probs.append(model.step(state, frames[t:t + 1], *given)[0])
    return torch.stack(probs), state


def compare(model, inputs, outputs):
    probs, _ = run_fixture(model, inputs)
    expected = outputs["prob"]
    assert probs.shape == expected.shape
    torch.testing.assert_close(probs[0], expected[0], atol=0, rtol=0)  # the given frame, one-hot
    diff = (probs - expected).abs().amax(dim=(1, 2, 3))
    assert diff.max() <= PROB_ATOL, f"per-frame max |prob diff| {diff.tolist()}"

    top2 = expected.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) >= LABEL_GAP
    labels = outputs["labels"].long()
    ours = probs.argmax(dim=1)  # channel index == object id here
    assert decided[1:].float().mean() > 0.3, "too few decided pixels to test labels"
    mismatched = ((ours != labels) & decided).sum().item()
    assert mismatched == 0, f"{mismatched} labels differ where the top two are >= {LABEL_GAP} apart"


def test_parity_probabilities_and_labels(fixture):
    compare(*fixture)


def test_parity_reference_backend(fixture):
    vos_kernels = pytest.importorskip("vos_kernels")
    with vos_kernels.use_backend("reference"):
        compare(*fixture)


def test_parity_intermediates(fixture):
    """The frame-1 decoder logits and the Clue, to localise any mismatch."""
    model, inputs, outputs = fixture
    from vos_models.methods.crvos.clue import build_clue, coarse_mask
    from vos_models.methods.crvos.network import encoder_features

    label = inputs["first_mask"].long()
    masks = torch.stack([(label == i).float() for i in outputs["object_ids"]])
    clue_mask = coarse_mask(masks)
    # avg_pool2d and the coordinate channels run through ATen's per-CPU vectorised kernels.
    torch.testing.assert_close(clue_mask, outputs["clue_prev_seg"][0], **F32_LIBRARY_ULPS)
    torch.testing.assert_close(build_clue(clue_mask), outputs["frame1_clue"], **F32_LIBRARY_ULPS)
    with torch.no_grad():
        images, _ = model.prepare(inputs["frames"][1:2].float() / 255)
        feats = encoder_features(model.backbone, images)
        for name, stats in outputs["backbone_stats"].items():
            f = feats[name]
            ours = torch.stack([f.mean(), f.std(), f.abs().mean()])
            torch.testing.assert_close(ours, stats[0], atol=1e-4, rtol=1e-4, msg=f"backbone {name}")
        logits = model._object_scores(feats, clue_mask)
    torch.testing.assert_close(logits, outputs["frame1_object_logits"], atol=1e-4, rtol=0)
