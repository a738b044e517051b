"""HRNetV2-W18-Small-v1 trunk (public ``hrnetv2Sv1``) and the TTVOS option / converter built on it."""
import pytest
import torch
from torch import nn

from vos_models.backbones.hrnet import W18_SMALL_V1, HRNet, hrnetv2_w18_small_v1, load_hrnet_weights
from vos_models.methods.ttvos import TTVOS, convert_public_state_dict, load_public_checkpoint
from vos_models.methods.ttvos.backbone import BACKBONES
from vos_models.methods.ttvos.convert import PUBLIC_TO_OURS, detect_backbone

BACKBONE = "hrnetv2_w18_small"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TTVOS(backbone=BACKBONE).eval()


def _public_state_dict(model: TTVOS) -> dict:
    """Our weights under the public names: head by the prefix table, trunk ``trunk.hrnet.X`` ->
    ``vos.backbone.X`` (written here independently of the converter's mapping function)."""
    inverse = sorted(((ours, public) for public, ours in PUBLIC_TO_OURS.items() if ours != "trunk.resnet."),
                     key=lambda p: -len(p[0]))
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("trunk.hrnet."):
            out["vos.backbone." + key[len("trunk.hrnet."):]] = value.clone()
        else:
            ours, public = next(p for p in inverse if key.startswith(p[0]))
            out[public + key[len(ours):]] = value.clone()
    return out


@pytest.mark.parametrize("size", [(64, 96), (48, 80)])
def test_trunk_strides_and_channels(size):
    net = hrnetv2_w18_small_v1().eval()
    h, w = size
    with torch.no_grad():
        feats = net(torch.randn(2, 3, h, w))
    assert net.feature_channels == BACKBONES[BACKBONE][1] == (192, 32, 16)
    assert tuple(feats["s16"].shape) == (2, 192, h // 16, w // 16)
    assert tuple(feats["s8"].shape) == (2, 32, h // 8, w // 8)
    assert tuple(feats["s4"].shape) == (2, 16, h // 4, w // 4)


def test_public_state_dict_names():
    keys = set(hrnetv2_w18_small_v1().state_dict())
    for name in ("conv1.weight", "bn2.running_var", "layer1.0.downsample.0.weight", "layer1.0.conv3.weight",
                 "transition1.0.0.weight", "transition1.1.0.0.weight", "transition2.2.0.1.weight",
                 "transition3.3.0.0.weight", "stage2.0.branches.1.1.conv2.weight",
                 "stage3.0.fuse_layers.0.2.1.weight", "stage4.0.fuse_layers.3.0.2.0.weight",
                 "stage4.0.fuse_layers.3.0.1.1.num_batches_tracked", "stage4.0.branches.3.1.bn2.weight"):
        assert name in keys, name
    # same-width transitions and the diagonal of the fuse layers hold nothing (public None entries)
    assert not any(k.startswith(("transition2.0.", "transition2.1.", "transition3.2.")) for k in keys)
    assert not any(k.startswith("stage4.0.fuse_layers.2.2.") for k in keys)
    assert not any(k.startswith(("incre_modules", "final_layer", "last_layer")) for k in keys)


def _closed_form_conv_weights() -> int:
    """Conv weight count of HRNetV2-W18-Small-v1 derived from the config by hand."""
    total = 3 * 64 * 9 + 64 * 64 * 9                                   # stem
    total += 64 * 32 + 32 * 32 * 9 + 32 * 128 + 64 * 128              # layer1: one bottleneck + downsample
    total += 9 * (128 * 16 + 128 * 32) + 9 * 32 * 64 + 9 * 64 * 128   # transition1..3
    for stage in ("stage2", "stage3", "stage4"):
        blocks, ws = W18_SMALL_V1[stage]
        total += sum(b * 2 * 9 * w * w for b, w in zip(blocks, ws))   # BasicBlocks
        for i, wi in enumerate(ws):
            for j, wj in enumerate(ws):
                if j > i:
                    total += wj * wi
                elif j < i:
                    total += (i - j - 1) * 9 * wj * wj + 9 * wj * wi
    return total


def test_parameter_count():
    net = HRNet()
    conv = sum(m.weight.numel() for m in net.modules() if isinstance(m, nn.Conv2d))
    assert conv == _closed_form_conv_weights() == 1_471_168
    bn = sum(m.weight.numel() + m.bias.numel() for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert sum(p.numel() for p in net.parameters()) == conv + bn == 1_477_920
    # HRNet-Semantic-Segmentation lists HRNetV2-W18-Small-v1 at 1.5M parameters with its 270-channel
    # head (1x1 conv 270->270 + BN + 1x1 conv 270->19 for Cityscapes); the trunk is the rest.
    head = 270 * 270 + 2 * 270 + 270 * 19 + 19
    assert 1.5e6 <= conv + bn + head < 1.6e6
    ttvos = TTVOS(backbone=BACKBONE, frozen_bn=False)
    total = sum(p.numel() for p in ttvos.parameters())
    assert total == 1_605_830
    # The TTVOS paper's Table 6: the HRNet model has 1.61 M parameters.
    assert round(total / 1e6, 2) == 1.61


def test_ttvos_step_and_trainable_stage(model):
    frame = torch.rand(1, 3, 64, 96)
    mask = torch.zeros(1, 64, 96)
    mask[0, 16:40, 24:60] = 1
    state = model.new_video()
    with torch.no_grad():
        first = model.step(state, frame, mask, [1])
        second = model.step(state, torch.rand(1, 3, 64, 96), None, [])
    assert first.shape == second.shape == (1, 2, 64, 96)
    assert torch.isfinite(second).all()
    assert torch.allclose(second.sum(1), torch.ones(1, 64, 96), atol=1e-5)
    trainable = {n.split(".")[1] for n, p in TTVOS(backbone=BACKBONE, frozen_bn=False).trunk.named_parameters()
                 if p.requires_grad}
    assert trainable == {"stage4"}  # public finetune_layers=('stage4',)


def test_converter_round_trip(model, tmp_path):
    state = _public_state_dict(model)
    assert detect_backbone(state) == BACKBONE
    assert tuple(state["vos.refine.conv_s16.conv.weight"].shape)[1] == 6 + 192
    converted = convert_public_state_dict({"epoch": 3, "net": {"module." + k: v for k, v in state.items()}})
    fresh = TTVOS(backbone=BACKBONE).eval()
    fresh.load_state_dict(converted, strict=True)
    frame = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model.encode(frame, (0, 0, 0, 0)),
                                                       fresh.encode(frame, (0, 0, 0, 0))))
    path = tmp_path / "ttvos_hrnet.pth.tar"
    torch.save({"epoch": 1, "net": state}, path)
    loaded = load_public_checkpoint(path)
    assert loaded.build_config["backbone"] == BACKBONE
    mask = torch.zeros(1, 64, 96)
    mask[0, 10:30, 20:50] = 1
    outs = []
    for net in (model, loaded):
        video = net.new_video()
        with torch.no_grad():
            net.step(video, frame, mask, [1])
            outs.append(net.step(video, frame.flip(-1), None, []))
    assert torch.equal(outs[0], outs[1])


def test_converter_refuses_wrong_keys(model):
    state = _public_state_dict(model)
    broken = dict(state)
    broken["vos.backbone.stage4.0.branches.0.9.conv1.weight"] = broken.pop("vos.backbone.stage4.0.branches.0.1.conv1.weight")
    with pytest.raises(ValueError, match=r"1 missing keys: vos\.backbone\.stage4\.0\.branches\.0\.1\.conv1\.weight; "
                                         r"1 unexpected keys: vos\.backbone\.stage4\.0\.branches\.0\.9"):
        convert_public_state_dict(broken)
    misshaped = dict(state)
    misshaped["vos.backbone.transition3.3.0.0.weight"] = torch.zeros(64, 64, 3, 3)
    with pytest.raises(ValueError, match=r"misshaped keys: vos\.backbone\.transition3\.3\.0\.0\.weight "
                                         r"\(expected \[128, 64, 3, 3\]"):
        convert_public_state_dict(misshaped)
    with pytest.raises(ValueError, match="holds a hrnetv2_w18_small backbone"):
        convert_public_state_dict(state, backbone="resnet18")
    three_branch = {k: v for k, v in state.items() if ".branches.3." not in k}
    with pytest.raises(ValueError, match="HRNetV2-W18-Small-v1"):
        convert_public_state_dict(three_branch)
    small_v2 = dict(state, **{"vos.backbone.stage4.1.branches.0.0.conv1.weight": torch.zeros(16, 16, 3, 3)})
    with pytest.raises(ValueError, match="HRNetV2-W18-Small-v1"):
        convert_public_state_dict(small_v2)


def test_load_hrnet_weights(tmp_path):
    torch.manual_seed(1)
    source = hrnetv2_w18_small_v1()
    state = dict(source.state_dict())
    state["classifier.weight"] = torch.zeros(1000, 2048)
    state["incre_modules.0.0.conv1.weight"] = torch.zeros(32, 16, 1, 1)
    torch.save(state, tmp_path / "hrnet.pth")
    target = TTVOS(backbone=BACKBONE, backbone_weights=str(tmp_path / "hrnet.pth"))
    assert torch.equal(target.trunk.hrnet.state_dict()["stage3.0.fuse_layers.2.0.1.0.weight"],
                       state["stage3.0.fuse_layers.2.0.1.0.weight"])
    del state["conv1.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing \['conv1.weight'\]"):
        load_hrnet_weights(hrnetv2_w18_small_v1(), tmp_path / "bad.pth")
