"""RGMP unit tests: public resizing rules, aggregation, the step contract, training losses.

A small non-paper configuration (ResNet-18 trunk, 32 decoder channels) keeps these fast;
the paper configuration is exercised by test_rgmp_parity.py.
"""
import pytest
import torch
import vos_kernels

from vos_models import VideoSession, build_method, load_method, save_checkpoint
from vos_models.methods.rgmp import RGMP, aggregate_with_background
from vos_models.methods.rgmp import resize as rs
from vos_models.methods.padding import crop, pad
from vos_models.methods.rgmp.pairs import make_pairs
from vos_models.methods.rgmp.training import pick_one_object

SMALL = dict(backbone="resnet18", decoder_channels=32)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build_method("rgmp", **SMALL).eval()


def masks_of(height, width, boxes):
    masks = torch.zeros(len(boxes), height, width)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = 1
    return masks


# ---------------------------------------------------------------- public rules
def test_public_padding_and_scale_sizes():
    assert rs.round_up_past_32(240) == 256 and rs.round_up_past_32(256) == 288  # always adds
    assert rs.padding_for(240, 432) == (8, 8, 8, 8)
    assert rs.padding_for(37, 64) == (16, 16, 13, 14)   # (left, right, top, bottom)
    assert rs.scaled_size(256, 448, 0.5) == (160, 256)
    assert rs.scaled_size(256, 448, 0.75) == (224, 352)
    assert rs.scaled_size(256, 448, 1.0) == (256, 448)
    x = torch.rand(2, 3, 37, 64)
    assert torch.equal(crop(pad(x, rs.padding_for(37, 64)), rs.padding_for(37, 64)), x)


def test_opencv_and_torch_resizers_agree():
    pytest.importorskip("cv2")
    x = torch.rand(3, 1, 61, 90)
    for size in [(32, 64), (97, 130)]:
        a = rs.resize_bilinear(x, size, "opencv")
        b = rs.resize_bilinear(x, size, "torch")
        assert a.shape == (3, 1, *size)
        assert float((a - b).abs().max()) < 5e-5
    with pytest.raises(ValueError, match="resizer must be one of"):
        rs.resize_bilinear(x, (8, 8), "pillow")


@pytest.mark.parametrize("backend", ["reference", None])
def test_aggregation_with_network_background_is_eq1(backend):
    torch.manual_seed(1)
    bg = torch.rand(2, 1, 5, 7, dtype=torch.float64)
    objects = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    objects[0, 0, 0, 0] = 0.0  # clamped to eps
    objects[1, 1, 1, 1] = 1.0  # clamped to 1 - eps
    q = torch.cat([bg, objects], 1).clamp(1e-7, 1 - 1e-7)
    expected = torch.softmax(torch.log(q / (1 - q)), dim=1)
    if backend is None:
        out = aggregate_with_background(bg, objects)
    else:
        with vos_kernels.use_backend(backend):
            out = aggregate_with_background(bg, objects)
    assert out.shape == (2, 4, 5, 7)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- inference contract
def test_step_contract_multi_object(small):
    torch.manual_seed(2)
    height, width = 45, 70  # not multiples of 32
    frames = torch.rand(4, 1, 3, height, width)
    masks = masks_of(height, width, [(5, 20, 5, 30), (25, 40, 35, 65)])
    session = VideoSession(small)
    state = session.state
    out0 = session.step(frames[0], masks, [1, 2])
    assert out0.shape == (1, 3, height, width)
    assert torch.equal(out0[0, 1:], masks)
    assert torch.equal(out0[0, 0], 1 - masks.sum(0))
    out1 = session.step(frames[1], None, [])
    assert out1.shape == (1, 3, height, width)
    torch.testing.assert_close(out1.sum(1), torch.ones(1, height, width), rtol=0, atol=1e-5)
    assert float(out1.min()) >= 0 and not torch.equal(out1, out0)
    # An object that arrives later gets its given mask; the others keep summing to one.
    late = masks_of(height, width, [(30, 44, 0, 10)])
    out2 = session.step(frames[2], late, [3])
    assert out2.shape == (1, 4, height, width)
    assert torch.equal(out2[0, 3], late[0])
    torch.testing.assert_close(out2.sum(1), torch.ones(1, height, width), rtol=0, atol=1e-5)
    assert session.step(frames[3], None, []).shape == (1, 4, height, width)
    assert state.frame_index == 4 and state.num_objects == 3
    assert state.object_refs[1.0].shape[0] == 3 and state.union_ref[1.0].shape[0] == 1


def test_interface_conformance(small):
    from vos_models.engine.conformance import check_vos_method

    check_vos_method(small, height=40, width=56, frames=4, long_frames=8)


def test_single_object_uses_the_public_single_object_path(small):
    torch.manual_seed(3)
    frames = torch.rand(2, 1, 3, 40, 50)
    mask = masks_of(40, 50, [(10, 30, 10, 40)])
    state = small.new_video()
    small.step(state, frames[0], mask, [1])
    out = small.step(state, frames[1], None, [])
    # Infer_SO: [1 - p, p], no aggregation, no union reference.
    torch.testing.assert_close(out[0, 0], 1 - out[0, 1])
    assert state.union_ref == {}


def test_frames_before_any_object_are_background(small):
    state = small.new_video()
    out = small.step(state, torch.rand(1, 3, 33, 40), None, [])
    assert out.shape == (1, 1, 33, 40) and bool((out == 1).all())


def test_multiscale_and_resizers(small):
    torch.manual_seed(4)
    frames = torch.rand(2, 1, 3, 64, 96)
    masks = masks_of(64, 96, [(10, 40, 10, 40), (20, 60, 50, 90)])
    results = {}
    for resizer in ("opencv", "torch"):
        model = build_method("rgmp", **SMALL, scales=(0.5, 0.75, 1.0), resizer=resizer).eval()
        model.load_state_dict(small.state_dict())
        state = model.new_video()
        model.step(state, frames[0], masks, [1, 2])
        results[resizer] = model.step(state, frames[1], None, [])
        assert set(state.object_refs) == {0.5, 0.75, 1.0}
    assert float((results["opencv"] - results["torch"]).abs().max()) < 1e-4


def test_bad_inputs_are_refused_with_clear_errors(small):
    state = small.new_video()
    with pytest.raises(ValueError, match=r"frame must be float \(1, 3, H, W\)"):
        small.step(state, torch.rand(3, 40, 40), None, [])
    with pytest.raises(ValueError, match="new_masks must be"):
        small.step(state, torch.rand(1, 3, 40, 40), torch.ones(1, 30, 40), [1])
    small.step(state, torch.rand(1, 3, 40, 40), torch.ones(1, 40, 40), [1])
    with pytest.raises(ValueError, match="this video's frames are"):
        small.step(state, torch.rand(1, 3, 41, 40), None, [])
    with pytest.raises(ValueError, match="scales must be"):
        RGMP(**SMALL, scales=(0.5, 1.5))
    with pytest.raises(ValueError, match="backbone must be one of"):
        RGMP(backbone="vgg16")
    with pytest.raises(ValueError, match="train_stage must be one of"):
        RGMP(**SMALL, train_stage="online")


def test_checkpoint_round_trip(tmp_path, small):
    path = save_checkpoint(tmp_path / "rgmp.pt", small)
    loaded = load_method(path, expected_method="rgmp")
    assert loaded.build_config == SMALL
    for key, value in small.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


# ---------------------------------------------------------------- training
def clip_batch(batch_size=2, length=3, height=64, width=64, objects=2):
    torch.manual_seed(5)
    frames = torch.rand(batch_size, length, 3, height, width)
    masks = torch.zeros(batch_size, length, objects, height, width)
    for t in range(length):
        masks[:, t, 0, 8 + t:30 + t, 10:40] = 1
        masks[:, t, 1, 40:60, 30 + 2 * t:50 + 2 * t] = 1
    return {"frames": frames, "masks": masks, "num_objects": torch.tensor([2, 1][:batch_size])}


def test_pick_one_object_respects_num_objects():
    masks = torch.stack([torch.full((2, 3, 4, 4), float(i + 1)) for i in range(3)], dim=2)  # (B=2,T=3,O=3,4,4)
    torch.manual_seed(0)
    for _ in range(10):
        chosen = pick_one_object(masks, torch.tensor([3, 1]))
        assert chosen.shape == (2, 3, 4, 4)
        assert float(chosen[1].unique()) == 1.0  # only object 0 exists in sample 1
    assert float(pick_one_object(masks, torch.tensor([0, 0])).abs().sum()) == 0.0


def test_finetune_loss_unrolls_with_soft_differentiable_guidance():
    model = build_method("rgmp", **SMALL, train_stage="finetune").train()
    guidance_inputs = []
    stem = model.network.encoder.backbone.conv1_extra
    handle = stem.register_forward_hook(lambda module, args, out: guidance_inputs.append(args[0]))
    loss, logs = model.training_loss(clip_batch(length=4, height=50, width=70))
    handle.remove()
    # Calls: reference, then steps 1..3. Step 1 is guided by the ground truth; steps 2 and 3
    # by the previous softmax output, still attached to the graph (BPTT).
    assert len(guidance_inputs) == 4
    assert guidance_inputs[1].grad_fn is None
    for guidance in guidance_inputs[2:]:
        assert guidance.grad_fn is not None
        assert float(guidance.detach().min()) > 0 and float(guidance.detach().max()) < 1  # soft
    assert loss.dim() == 0 and torch.isfinite(loss) and set(logs) >= {"loss", "iou"}
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert float(model.network.encoder.backbone.conv1_extra.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="T >= 2"):
        model.training_loss(clip_batch(length=1))


def test_pretrain_loss_and_pairs():
    torch.manual_seed(6)
    images = torch.rand(8, 3, 64, 64)
    masks = masks_of(64, 64, [(16, 48, 16, 48)] * 8)[:, None]
    pair = make_pairs(images, masks)
    for name in ("ref_frame", "frame"):
        value = getattr(pair, name)
        assert value.shape == (8, 3, 64, 64) and float(value.min()) >= 0 and float(value.max()) <= 1
    for name in ("ref_mask", "mask"):
        assert set(getattr(pair, name).unique().tolist()) <= {0.0, 1.0}
    assert pair.guidance.shape == (8, 1, 64, 64)
    assert set(pair.strategy.tolist()) == {1, 2}
    # At least half of the object stays in view in the reference (never occluded).
    assert bool((pair.ref_mask.flatten(1).sum(1) >= 0.5 * 32 * 32 * 0.8 ** 2 - 64).all())
    model = build_method("rgmp", **SMALL, train_stage="pretrain").train()
    loss, logs = model.training_loss(clip_batch(batch_size=2, length=1, height=48, width=48))
    loss.backward()
    assert torch.isfinite(loss) and "strategy2_fraction" in logs
    assert float(model.network.decoder.predict.weight.grad.abs().sum()) > 0


def test_backbone_weights_start_the_trunk_from_a_torchvision_file_and_stay_out_of_checkpoints(tmp_path):
    from vos_models.backbones import ResNet

    imagenet = ResNet("resnet18", with_fc=True).state_dict()   # torchvision layout, with the classifier
    torch.save(imagenet, tmp_path / "resnet18.pth")
    torch.manual_seed(0)
    plain = build_method("rgmp", **SMALL)
    torch.manual_seed(0)
    model = build_method("rgmp", **SMALL, backbone_weights=str(tmp_path / "resnet18.pth"))
    trunk = model.network.encoder.backbone.state_dict()
    for name, tensor in imagenet.items():
        if name in trunk:
            assert torch.equal(trunk[name], tensor), name
    # the mask stem is not in a torchvision file: it keeps its initialisation
    assert torch.equal(trunk["conv1_extra.weight"], plain.network.encoder.backbone.state_dict()["conv1_extra.weight"])
    assert "backbone_weights" not in model.build_config
    save_checkpoint(tmp_path / "ours.pt", model)
    (tmp_path / "resnet18.pth").unlink()                          # the file is not needed to load
    loaded = load_method(tmp_path / "ours.pt")
    assert torch.equal(loaded.network.encoder.backbone.conv1.weight, imagenet["conv1.weight"])
    torch.save({k: v for k, v in imagenet.items() if k != "layer2.0.conv1.weight"}, tmp_path / "cut.pth")
    with pytest.raises(ValueError, match="layer2.0.conv1.weight"):
        build_method("rgmp", **SMALL, backbone_weights=str(tmp_path / "cut.pth"))
