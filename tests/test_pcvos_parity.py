"""PCVOS against the public implementation's own outputs (../shared/parity/pcvos).

Protocol (fixture README section 5): weights = make_weights.fill(manifest), converted with our
strict converter; frame 0 with its two masks, then clips [1..5] and [6..10], clip length 5,
top-k 20, memory every 5 frames, PMM on (a no-op at clip length 5). We compare the float32
intermediates and decoder logits at 1e-4, the probabilities against the float32 values rebuilt
from the stored logits (the stored `prob` is float16), and labels where the top-two margin
exceeds 1e-3. Run once with the default backends and once with the reference backend.
"""
import contextlib
import json
import sys

import pytest
import torch
import torch.nn.functional as F

import vos_kernels
from tests.conftest import require_shared
from vos_models.engine.session import VideoSession

ATOL = 1e-4


@pytest.fixture(scope="module")
def fixture():
    folder = require_shared("parity", "pcvos", "manifest.json").parent
    sys.path.insert(0, str(folder.parent))
    from make_weights import fill
    from vos_models.methods.pcvos import PCVOS
    from vos_models.methods.pcvos.convert import convert_public_state_dict

    spec = json.loads((folder / "manifest.json").read_text())
    model = PCVOS(clip_length=5, top_k=20, pmm_interval=5)
    model.load_state_dict(convert_public_state_dict(fill(spec["keys"], seed=spec["seed"], gain=spec["gain"])),
                          strict=True)
    model.eval()
    inputs = torch.load(folder / "inputs.pt", weights_only=True)
    outputs = torch.load(folder / "outputs.pt", weights_only=True)
    return model, inputs, outputs


def _record(module, store, name):
    """Forward hook appending (inputs, output) of every call to store[name]."""
    return module.register_forward_hook(lambda m, args, out: store.setdefault(name, []).append((args, out)))


def run_protocol(model, inputs, clips):
    frames = inputs["frames"].float() / 255
    first = inputs["first_mask"]
    masks = torch.stack([(first == i).float() for i in (1, 2)])
    net, seen, logits = model.network, {}, []
    hooks = [_record(net.key_proj, seen, "key"), _record(net.value_encoder, seen, "value"),
             _record(net.refine_transformer, seen, "icr")]
    try:
        session = VideoSession(model, 2)
        state = session.state
        probs = [session.step_clip(frames[:1].unsqueeze(0), [masks], [[1, 2]])]
        for clip in clips:
            probs.append(session.step_clip(frames[clip].unsqueeze(0), [None] * len(clip), [[]] * len(clip)))
            logits.append(state.last_logits)
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(probs), torch.cat(logits), seen, state


def rebuild_prob(logits_s4):
    """float32 prob of frames 1..10 from the stored float32 decoder logits (README section 6)."""
    p = torch.sigmoid(F.interpolate(logits_s4, scale_factor=4, mode="bilinear", align_corners=False))
    bg = torch.prod(1 - p, 1, keepdim=True)
    q = torch.cat([bg, p], 1).clamp(1e-7, 1 - 1e-7)
    return torch.softmax(torch.log(q / (1 - q)), 1)


@pytest.mark.parametrize("backend", [None, "reference"], ids=["default", "reference"])
def test_pcvos_matches_public_outputs(fixture, backend):
    model, inputs, outputs = fixture
    with vos_kernels.use_backend(backend) if backend else contextlib.nullcontext():
        prob, logits, seen, state = run_protocol(model, inputs, outputs["clips"])

    def close(name, ours, ref, atol=ATOL):
        err = (ours - ref).abs().max().item()
        assert err <= atol, f"{name}: max abs error {err:.3g} > {atol:g}"

    # keys: frame 0 alone, then the clip-1 batch
    k16 = torch.cat([seen["key"][0][1], seen["key"][1][1]])
    close("key_k16", k16, outputs["key_k16"])
    value0 = seen["value"][0][1][0]                                # (2 objects, 512, 15, 27)
    close("mem_value_f0_c64", value0[:, :64], outputs["mem_value_f0_c64"])
    close("mem_value_f0_mean", value0.mean((2, 3)), outputs["mem_value_f0_mean"])
    (key_in, readout), icr = seen["icr"][0]                       # value (1, O, L, h, w, C)
    readout, icr = readout[0].permute(0, 1, 4, 2, 3), icr[0].permute(0, 1, 4, 2, 3)
    close("readout_clip1_c64", readout[:, :, :64], outputs["readout_clip1_c64"])
    close("readout_clip1_mean", readout.mean((3, 4)), outputs["readout_clip1_mean"])
    close("icr_clip1_c64", icr[:, :, :64], outputs["icr_clip1_c64"])
    close("icr_clip1_mean", icr.mean((3, 4)), outputs["icr_clip1_mean"])
    close("decoder_logits_s4", logits, outputs["decoder_logits_s4"])
    assert state.memory.frames == outputs["memory_frames"]

    reference = rebuild_prob(outputs["decoder_logits_s4"])
    close("prob frames 1..10 (vs float32 rebuilt)", prob[1:], reference)
    close("prob (vs stored float16)", prob, outputs["prob"].float(), atol=2.5e-4)
    assert torch.allclose(prob.sum(1), torch.ones(()), atol=1e-5)
    top2 = reference.topk(2, dim=1).values
    sure = (top2[:, 0] - top2[:, 1]) > 1e-3
    labels = prob[1:].argmax(1)
    wrong = (labels != outputs["labels"][1:].long()) & sure
    assert sure.float().mean() > 0.95
    assert int(wrong.sum()) == 0, f"{int(wrong.sum())} labels differ where the margin exceeds 1e-3"
    assert torch.equal(prob[0].argmax(0), outputs["labels"][0].long())
