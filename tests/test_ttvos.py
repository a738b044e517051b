"""TTVOS as a VOSMethod: object handling, padding, errors, training loss and BPTT."""
import contextlib

import pytest
import torch

import vos_kernels
from vos_models.methods.ttvos import TTVOS
from vos_models.engine.session import VideoSession
from vos_models.methods.padding import stride_padding
from vos_models.methods.ttvos.layers import PAD_MULTIPLE, aggregate_objects, coordinate_channels
from vos_models.registry import build_method, load_method, save_checkpoint


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TTVOS().eval()


def _blob(h, w, top, left, size):
    m = torch.zeros(h, w)
    m[top:top + size, left:left + size] = 1
    return m


def test_registry_builds_and_checkpoints_round_trip(tmp_path):
    method = build_method("ttvos", backbone="resnet18", transition_loss_weight=0.5)
    assert isinstance(method, TTVOS) and method.name == "ttvos"
    path = save_checkpoint(tmp_path / "ttvos.pt", method, {"step": 3})
    again = load_method(path, expected_method="ttvos")
    assert again.build_config["transition_loss_weight"] == 0.5 and again.loss_weights.transition == 0.5
    assert all(torch.equal(a, b) for a, b in zip(method.state_dict().values(), again.state_dict().values()))


def test_odd_size_and_an_object_that_appears_later(model):
    h, w = 45, 70  # not multiples of 16: reflect padding, then cropped back
    assert stride_padding(h, w, PAD_MULTIPLE) == (5, 5, 2, 1)  # odd pixel left / top
    frames = torch.rand(4, 3, h, w, generator=torch.Generator().manual_seed(1))
    first, second = _blob(h, w, 5, 5, 12), _blob(h, w, 20, 40, 15)
    session = VideoSession(model)
    state = session.state
    with torch.inference_mode():
        p0 = session.step(frames[0:1], first[None], [1])
        p1 = session.step(frames[1:2])
        p2 = session.step(frames[2:3], second[None], [2])
        p3 = session.step(frames[3:4])
    assert p0.shape == (1, 2, h, w) and p1.shape == (1, 2, h, w)
    assert p2.shape == (1, 3, h, w) and p3.shape == (1, 3, h, w)
    assert torch.equal(p0[0, 1], first) and torch.equal(p0[0, 0], 1 - first)
    assert torch.equal(p2[0, 2], second)  # the given mask wins on its own frame
    for p in (p1, p2, p3):
        torch.testing.assert_close(p.sum(dim=1), torch.ones(1, h, w), atol=1e-5, rtol=0)
        assert p.min() >= 0
    assert state.num_objects == 2 and state.frame_index == 4
    assert state.template.shape == (2, 128, 128) and state.history.shape == (2, 6, 6, 10)


def test_frames_before_the_first_object_are_background(model):
    state = model.new_video()
    frame = torch.rand(1, 3, 32, 48)
    with torch.inference_mode():
        p = model.step(state, frame, None, [])
        q = model.step(state, frame, _blob(32, 48, 4, 4, 8)[None], [1])
    assert torch.equal(p, torch.ones(1, 1, 32, 48)) and q.shape == (1, 2, 32, 48)


def test_bad_inputs_are_named(model):
    state = model.new_video()
    with pytest.raises(ValueError, match="frame must be"):
        model.step(state, torch.rand(3, 32, 32), None, [])
    with pytest.raises(ValueError, match="new objects must continue the object numbering"):
        model.step(state, torch.rand(1, 3, 32, 32), torch.ones(1, 32, 32), [2])
    state = model.new_video()
    with torch.inference_mode():
        model.step(state, torch.rand(1, 3, 32, 32), torch.ones(1, 32, 32), [1])
    with pytest.raises(ValueError, match="differs from the video's first frame"):
        model.step(state, torch.rand(1, 3, 32, 48), None, [])
    with pytest.raises(ValueError, match="backbone must be one of"):
        TTVOS(backbone="hrnet")


def test_aggregation_is_the_public_formula():
    """bg = min_k bg_k; odds c(fg_k)/c(bg_k); not vos_kernels.soft_aggregate's product."""
    g = torch.Generator().manual_seed(0)
    fg = torch.rand(3, 5, 7, generator=g, dtype=torch.float64)
    prob = aggregate_objects(torch.stack([1 - fg, fg], dim=1))
    c = lambda x: x.clamp(1e-7, 1 - 1e-7)  # noqa: E731
    b = (1 - fg).min(dim=0).values
    odds = torch.cat([(c(b) / c(1 - b))[None], c(fg) / c(1 - fg)])
    torch.testing.assert_close(prob[0], odds / odds.sum(0), rtol=1e-12, atol=0)
    kernel = vos_kernels.soft_aggregate(fg[None].float())
    assert (kernel[0].double() - prob[0]).abs().max() > 1e-3  # genuinely different rules


def test_coordinates():
    c = coordinate_channels(3, 5)
    assert torch.equal(c[0, :, 0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(c[1, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    torch.testing.assert_close(c[2], (c[0] ** 2 + c[1] ** 2).sqrt())


def _batch(b=2, t=3, h=48, w=64, objects=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(b, t, 3, h, w, generator=g)
    masks = torch.zeros(b, t, objects, h, w)
    for i in range(t):
        masks[:, i, 0, 8 + i:24 + i, 8:24] = 1
        masks[:, i, 1, 20:36, 30 + 2 * i:46 + 2 * i] = 1
    return {"frames": frames, "masks": masks, "num_objects": torch.tensor([2, 1])}


def test_training_loss_backpropagates_through_template_updates():
    torch.manual_seed(0)
    method = TTVOS(train_backbone="none").train()
    loss, logs = method.training_loss(_batch())
    assert torch.isfinite(loss) and set(logs) >= {"loss", "ce", "transition", "iou"}
    loss.backward()
    # The adaptive weight reaches the loss only through the template update after frame 1,
    # which shapes frame 2's prediction: a gradient here proves BPTT through template_update.
    grad = method.head.decoder.adaptive_weight[2].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert method.head.decoder.transition.weight.grad.abs().sum() > 0
    assert method.head.template_encoder.key[0].weight.grad.abs().sum() > 0
    assert method.head.decoder.template_mask.weight.grad is None  # weight 0: not in the graph
    assert all(p.grad is None for p in method.trunk.parameters())


def test_training_loss_options_and_backends():
    torch.manual_seed(0)
    method = TTVOS(train_backbone="last", transition_loss_weight=0.0, template_mask_loss_weight=1.0).train()
    assert [n for n, p in method.trunk.named_parameters() if p.requires_grad][0].startswith("resnet.layer4")
    assert not method.trunk.resnet.layer1.training and method.trunk.resnet.layer4.training
    batch = _batch(t=2)
    results = []
    for backend in (None, "reference"):
        with (vos_kernels.use_backend(backend) if backend else contextlib.nullcontext()):
            loss, logs = method.training_loss(batch)
        results.append(loss.detach())
    assert "transition" not in logs and "template_mask" in logs
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2 frames"):
        method.training_loss(_batch(t=1))
    with pytest.raises(KeyError, match="num_objects"):
        method.training_loss({"frames": batch["frames"], "masks": batch["masks"]})


def test_resnet50_trunk_is_stride_16():
    method = TTVOS(backbone="resnet50").eval()
    assert method.trunk.resnet.layer3[4].conv2.dilation == (2, 2)
    assert not hasattr(method.trunk.resnet, "layer4")
    with torch.inference_mode():
        s16, s8c, s4 = method.encode(torch.rand(1, 3, 32, 48), (0, 0, 0, 0))
    assert s16.shape == (1, 1024, 2, 3) and s8c.shape == (1, 515, 4, 6) and s4.shape == (1, 256, 8, 12)


def test_interface_conformance(model):
    from vos_models.engine.conformance import check_vos_method
    check_vos_method(model, height=48, width=64, frames=5, long_frames=12)


@pytest.mark.parametrize("backbone, channels", [("mobilenetv3_large", (960, 40, 24)),
                                                ("mobilenetv3_small", (576, 24, 16))])
def test_mobilenet_trunks_are_stride_16_and_train_only_the_last_stage(backbone, channels):
    method = TTVOS(backbone=backbone).train()
    with torch.inference_mode():
        s16, s8c, s4 = method.encode(torch.rand(1, 3, 32, 48), (0, 0, 0, 0))
    assert (s16.shape, s8c.shape, s4.shape) == ((1, channels[0], 2, 3), (1, channels[1] + 3, 4, 6),
                                                (1, channels[2], 8, 12))
    trainable = {n.split(".")[2] for n, p in method.trunk.named_parameters() if p.requires_grad}
    last = {"mobilenetv3_large": {"13", "14", "15", "16"}, "mobilenetv3_small": {"9", "10", "11", "12"}}[backbone]
    assert trainable == last
    loss, _ = method.training_loss(_batch(t=3))
    loss.backward()
    assert method.trunk.mobilenet.features[-1][0].weight.grad is not None


def test_aggregation_is_the_fused_op_and_eager_under_the_reference_backend():
    fg = torch.rand(2, 6, 7)
    object_prob = torch.stack([1 - fg, fg], dim=1).requires_grad_()
    fused = aggregate_objects(object_prob)
    assert "DivBackward" not in type(fused.grad_fn).__name__  # the custom op, not the eager formula
    with vos_kernels.use_backend("reference"):
        eager = aggregate_objects(object_prob)
    assert "DivBackward" in type(eager.grad_fn).__name__
    torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-6)
