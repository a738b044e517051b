"""CRVOS unit tests: the step contract, the Clue, the aggregation, training, the converter.

Small models (ResNet-18 trunk, narrow decoder) and small frames keep this file fast on CPU;
the paper model is exercised by tests/test_crvos_parity.py.
"""
import pytest
import torch

from converter_checks import assert_converter_is_strict

import vos_kernels

from vos_models.registry import build_method, load_method, save_checkpoint
from vos_models.methods.crvos.aggregate import aggregate_objects, min_background_aggregate
from vos_models.methods.crvos.clue import CLUE_STRIDE, build_clue, coarse_mask, coordinate_channels
from vos_models.methods.crvos.convert import (convert_public_state_dict, export_public_state_dict,
                                              load_public_checkpoint)
from vos_models.methods.crvos import CRVOS
from vos_models.methods.padding import stride_padding

TINY = dict(backbone="resnet18", s16_width=32, width=16)


def tiny_model(**overrides):
    torch.manual_seed(0)
    return build_method("crvos", **{**TINY, **overrides}).eval()


def two_object_masks(height, width):
    masks = torch.zeros(2, height, width)
    masks[0, 5:20, 4:30] = 1
    masks[1, 25:40, 35:60] = 1
    return masks


# ----------------------------------------------------------------------------- Clue, padding
def test_coordinate_channels_match_the_public_definition():
    coords = coordinate_channels(3, 5)
    assert coords.shape == (3, 3, 5)
    torch.testing.assert_close(coords[0, :, 0], torch.tensor([-1.0, 0.0, 1.0]))   # row, down the rows
    torch.testing.assert_close(coords[1, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))  # column
    torch.testing.assert_close(coords[2], (coords[0] ** 2 + coords[1] ** 2).sqrt())
    with pytest.raises(ValueError, match="at least 2 x 2"):
        coordinate_channels(1, 5)


def test_coarse_mask_is_the_cell_average_of_both_channels():
    prob = torch.zeros(1, 32, 48)
    prob[0, :16, :8] = 1  # half of cell (0, 0)
    mask = coarse_mask(prob)
    assert mask.shape == (1, 2, 2, 3)
    assert mask[0, 1, 0, 0] == 0.5 and mask[0, 1].sum() == 0.5
    torch.testing.assert_close(mask[:, 0], 1 - mask[:, 1])
    clue = build_clue(mask)
    assert clue.shape == (1, 5, 2, 3)


def test_required_padding_puts_the_odd_pixel_left_and_top():
    assert stride_padding(240, 432, CLUE_STRIDE) == (0, 0, 0, 0)
    assert stride_padding(50, 71, CLUE_STRIDE) == (5, 4, 7, 7)


# ------------------------------------------------------------------------------ aggregation
def test_min_background_aggregate_formula():
    q1 = torch.tensor([0.9, 0.2, 0.5]).view(1, 3)
    q2 = torch.tensor([0.3, 0.1, 0.5]).view(1, 3)
    q = torch.stack([torch.stack([1 - q1, q1], 1), torch.stack([1 - q2, q2], 1)], dim=1)  # (1, 2, 2, 3)
    out = min_background_aggregate(q)
    b = torch.minimum(1 - q1, 1 - q2)
    odds = torch.cat([b / (1 - b), q1 / (1 - q1), q2 / (1 - q2)])
    torch.testing.assert_close(out[0], odds / odds.sum(0), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out.sum(1), torch.ones(1, 3))


def test_min_background_differs_from_rgmp_soft_aggregation():
    vos_kernels = pytest.importorskip("vos_kernels")
    q = torch.rand(1, 3, 2, 4, 5).softmax(dim=2)
    public = aggregate_objects(q, "public")
    rgmp = aggregate_objects(q, "soft_aggregate")
    torch.testing.assert_close(rgmp, vos_kernels.soft_aggregate(q[:, :, 1]))
    assert (public - rgmp).abs().max() > 1e-3  # the public rule is not RGMP's Eq. 1


def test_unknown_aggregation_is_refused():
    with pytest.raises(ValueError, match="aggregation must be one of"):
        CRVOS(**TINY, aggregation="mean")


# ------------------------------------------------------------------------------- inference
def test_step_contract_with_padding_and_a_late_object():
    model = tiny_model()
    height, width = 50, 71  # not multiples of 16: reflect padding and cropping
    frames = torch.rand(4, 3, height, width)
    masks = two_object_masks(height, width)
    state = model.new_video(3)
    with torch.no_grad():
        out0 = model.step(state, frames[0:1], masks, [1, 2])
        out1 = model.step(state, frames[1:2], None, [])
        late = torch.zeros(1, height, width)
        late[0, 42:48, 2:12] = 1
        out2 = model.step(state, frames[2:3], late, [3])
        out3 = model.step(state, frames[3:4], None, [])
    assert out0.shape == (1, 3, height, width) and out1.shape == (1, 3, height, width)
    assert out2.shape == (1, 4, height, width) and out3.shape == (1, 4, height, width)
    # The given frame is the one-hot of the masks.
    expected0 = torch.cat([1 - masks.sum(0, keepdim=True), masks])[None]
    torch.testing.assert_close(out0, expected0, atol=0, rtol=0)
    # The late object's channel is its mask; the others are squeezed out where it lies.
    torch.testing.assert_close(out2[0, 3], late[0], atol=0, rtol=0)
    assert out2[0, :3][:, late[0] > 0].abs().max() == 0
    for out in (out1, out2, out3):
        assert (out >= 0).all() and torch.isfinite(out).all()
        torch.testing.assert_close(out.sum(1), torch.ones(1, height, width), atol=1e-5, rtol=0)
    assert state.num_objects == 3 and state.clue_mask.shape == (3, 2, 4, 5)


def test_step_rejects_bad_input():
    model = tiny_model()
    state = model.new_video()
    frame = torch.rand(1, 3, 48, 64)
    with pytest.raises(ValueError, match="first frame must bring masks"):
        model.step(state, frame, None, [])
    with pytest.raises(ValueError, match=r"frame must be a \(1, 3, H, W\)"):
        model.step(state, frame[0], None, [])
    with pytest.raises(ValueError, match="new_masks must be"):
        model.step(state, frame, torch.ones(1, 40, 64), [1])
    with pytest.raises(ValueError, match="new objects must continue the object numbering"):
        model.step(state, frame, torch.ones(1, 48, 64), [2])
    with pytest.raises(ValueError, match="at least 32 x 32"):
        model.step(model.new_video(), torch.rand(1, 3, 20, 64), torch.ones(1, 20, 64), [1])
    model.step(state, frame, torch.ones(1, 48, 64), [1])
    with pytest.raises(ValueError, match="differs from the video's first frame"):
        model.step(state, torch.rand(1, 3, 64, 64), None, [])


def test_objects_are_batched_like_separate_runs():
    """Running the decoder over O objects at once equals running it per object (public loop)."""
    model = tiny_model()
    frame = torch.rand(1, 3, 48, 64)
    masks = two_object_masks(48, 64)
    with torch.no_grad():
        images, _ = model.prepare(frame)
        from vos_models.methods.crvos.network import encoder_features
        feats = encoder_features(model.backbone, images)
        clue_mask = coarse_mask(masks)
        together = model._object_scores(feats, clue_mask)
        apart = torch.cat([model._object_scores(feats, clue_mask[k:k + 1]) for k in range(2)])
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------------------- training
def synthetic_batch(b=2, t=3, o=2, height=48, width=64):
    torch.manual_seed(1)
    frames = torch.rand(b, t, 3, height, width)
    masks = torch.zeros(b, t, o, height, width)
    for step in range(t):
        masks[:, step, 0, 4:20, 4 + 2 * step:30 + 2 * step] = 1
        masks[:, step, 1, 14:30, 36:60] = 1
    return {"frames": frames, "masks": masks, "num_objects": torch.tensor([2, 1])[:b]}


def test_training_loss_backpropagates_through_time_and_respects_frozen_layers():
    model = tiny_model(finetune_layers=("layer4",)).train()
    assert not model.backbone.layer1.training and model.backbone.layer4.training
    loss, logs = model.training_loss(synthetic_batch())
    assert loss.dim() == 0 and torch.isfinite(loss) and set(logs) == {"loss", "iou"}
    loss.backward()
    assert model.refine.blend_s16.weight.grad.abs().sum() > 0
    assert model.backbone.layer4[0].conv1.weight.grad.abs().sum() > 0
    assert model.backbone.layer1[0].conv1.weight.grad is None  # frozen, as the public trunk


def test_training_reduces_the_loss_on_a_fixed_batch():
    model = tiny_model(finetune_layers="all").train()
    batch = synthetic_batch(height=32, width=64)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    torch.manual_seed(0)
    first, _ = model.training_loss(batch)
    for _ in range(4):
        optimizer.zero_grad()
        loss, _ = model.training_loss(batch)
        loss.backward()
        optimizer.step()
    torch.manual_seed(0)
    last, _ = model.training_loss(batch)
    assert last.item() < 0.95 * first.item(), (first.item(), last.item())


def test_training_loss_rejects_bad_batches():
    model = tiny_model()
    batch = synthetic_batch(t=3)
    with pytest.raises(ValueError, match="T>=2"):
        model.training_loss({**batch, "frames": batch["frames"][:, :1], "masks": batch["masks"][:, :1]})
    with pytest.raises(ValueError, match="counts >= 0"):
        model.training_loss({**batch, "num_objects": torch.tensor([2, -1])})


def test_training_loss_accepts_a_clip_without_objects():
    # (an object can leave a crop or an augmented frame): its target is all background
    model = tiny_model()
    batch = synthetic_batch(t=3)
    empty = {**batch, "masks": torch.zeros_like(batch["masks"]), "num_objects": torch.tensor([0, 0])}
    loss, logs = model.training_loss(empty)
    assert torch.isfinite(loss) and 0.0 <= logs["iou"] <= 1.0
    loss.backward()


# ------------------------------------------------------------------ checkpoints, converter
def test_own_checkpoint_round_trip(tmp_path):
    model = tiny_model()
    path = save_checkpoint(tmp_path / "crvos.pt", model, {"step": 3})
    loaded = load_method(path, expected_method="crvos").eval()
    assert loaded.build_config == model.build_config
    frame, masks = torch.rand(1, 3, 48, 64), two_object_masks(48, 64)
    with torch.no_grad():
        outs = []
        for m in (model, loaded):
            state = m.new_video()
            m.step(state, frame, masks, [1, 2])
            outs.append(m.step(state, frame, None, []))
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


def test_public_state_dict_round_trip(tmp_path):
    model = tiny_model()
    public = export_public_state_dict(model)
    assert "vos.refine.blend_s16.conv.weight" in public and "vos.refine.predictor.weight" in public
    assert "vos.backbone.layer4.2.conv2.weight" not in public  # ResNet-18 has 2 blocks per layer
    converted = convert_public_state_dict(public, **TINY)
    assert converted.keys() == model.state_dict().keys()
    torch.save(public, tmp_path / "public.tar")
    loaded = load_public_checkpoint(tmp_path / "public.tar", **TINY)
    torch.save({"net": public}, tmp_path / "wrapped.tar")  # the agame-vos trainer's layout
    wrapped = load_public_checkpoint(tmp_path / "wrapped.tar", **TINY)
    for other in (loaded, wrapped):
        for name, tensor in model.state_dict().items():
            assert torch.equal(other.state_dict()[name], tensor), name


def test_converter_refuses_wrong_state_dicts(tmp_path):
    public = export_public_state_dict(tiny_model())
    assert_converter_is_strict(convert_public_state_dict, public, missing="vos.refine.deconv3.bias",
                               misshaped="vos.refine.deconv3.weight", expected_shape=[16, 2, 3, 3], **TINY)
    # Our own (unprefixed) names are not the public layout: everything is reported, nothing loads.
    with pytest.raises(ValueError, match="not a public CRVOS"):
        convert_public_state_dict(tiny_model().state_dict(), **TINY)
    # A ResNet-18 state dict is not the paper's ResNet-50 model.
    with pytest.raises(ValueError, match="backbone 'resnet50'.*misshaped"):
        convert_public_state_dict(public)
    with pytest.raises(TypeError, match="expected a state dict"):
        convert_public_state_dict([1, 2])
    with pytest.raises(ValueError, match=r"deconv3\.weight \(expected \[16, 2, 3, 3\], got a str\)"):
        convert_public_state_dict({**public, "vos.refine.deconv3.weight": "oops"}, **TINY)
    save_checkpoint(tmp_path / "ours.pt", tiny_model())
    with pytest.raises(ValueError, match="vos_models checkpoint, not a public CRVOS one"):
        load_public_checkpoint(tmp_path / "ours.pt", **TINY)
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.tar")
    with pytest.raises(ValueError, match="not a public CRVOS"):
        load_public_checkpoint(tmp_path / "other.tar", **TINY)


def test_interface_conformance():
    from vos_models.engine.conformance import check_vos_method

    check_vos_method(tiny_model(), height=48, width=72)


def test_trunk_starts_from_a_torchvision_weight_file_that_checkpoints_do_not_need(tmp_path):
    from vos_models.backbones.resnet import ResNet

    torch.manual_seed(1)
    imagenet = ResNet("resnet18", with_fc=True).state_dict()   # torchvision layout, with the classifier
    torch.save(imagenet, tmp_path / "resnet18.pth")
    model = build_method("crvos", **TINY, backbone_weights=str(tmp_path / "resnet18.pth"))
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, imagenet[name]), name
    assert "backbone_weights" not in model.build_config
    save_checkpoint(tmp_path / "ours.pt", model)
    (tmp_path / "resnet18.pth").unlink()                        # the file is not needed to load
    loaded = load_method(tmp_path / "ours.pt")
    assert torch.equal(loaded.backbone.conv1.weight, imagenet["conv1.weight"])
    torch.save({k: v for k, v in imagenet.items() if k != "layer1.0.conv1.weight"}, tmp_path / "cut.pth")
    with pytest.raises(ValueError, match="layer1.0.conv1.weight"):
        build_method("crvos", **TINY, backbone_weights=str(tmp_path / "cut.pth"))


def test_public_aggregation_is_the_fused_op_and_eager_under_the_reference_backend():
    q = torch.rand(1, 2, 2, 4, 5).softmax(dim=2).requires_grad_()
    fused = aggregate_objects(q, "public")
    assert "DivBackward" not in type(fused.grad_fn).__name__  # the custom op, not the eager formula
    with vos_kernels.use_backend("reference"):
        eager = aggregate_objects(q, "public")
    assert "DivBackward" in type(eager.grad_fn).__name__
    torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-6)
