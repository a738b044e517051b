"""Backbones: torchvision names and shapes, output strides, frozen BN, extra stem channels."""
import json

import pytest
import torch

from tests.conftest import require_shared
from vos_models.backbones import FrozenBatchNorm2d, freeze_batch_norms, load_backbone_weights, resnet18, resnet50


def torchvision_keys(arch):
    """torchvision's ResNet state-dict keys and shapes, written out from its architecture."""
    bottleneck = arch == "resnet50"
    blocks = (3, 4, 6, 3) if bottleneck else (2, 2, 2, 2)
    exp = 4 if bottleneck else 1
    keys = {}

    def bn(prefix, c):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.{leaf}"] = (c,)
        keys[f"{prefix}.num_batches_tracked"] = ()

    keys["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    cin = 64
    for s, n in enumerate(blocks):
        planes = 64 * 2 ** s
        for b in range(n):
            p = f"layer{s + 1}.{b}"
            if bottleneck:
                keys[f"{p}.conv1.weight"] = (planes, cin, 1, 1); bn(f"{p}.bn1", planes)
                keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3); bn(f"{p}.bn2", planes)
                keys[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1); bn(f"{p}.bn3", planes * 4)
            else:
                keys[f"{p}.conv1.weight"] = (planes, cin, 3, 3); bn(f"{p}.bn1", planes)
                keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3); bn(f"{p}.bn2", planes)
            if b == 0 and (s > 0 or cin != planes * exp):
                keys[f"{p}.downsample.0.weight"] = (planes * exp, cin, 1, 1)
                bn(f"{p}.downsample.1", planes * exp)
            cin = planes * exp
    keys["fc.weight"] = (1000, 512 * exp)
    keys["fc.bias"] = (1000,)
    return keys


@pytest.mark.parametrize("factory,arch,params", [(resnet18, "resnet18", 11689512), (resnet50, "resnet50", 25557032)])
def test_torchvision_names_shapes_and_strict_load(tmp_path, factory, arch, params):
    model = factory(with_fc=True)
    expected = torchvision_keys(arch)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert list(got) == list(expected)  # same order as torchvision
    assert sum(p.numel() for p in model.parameters()) == params
    # A "torchvision file": random tensors with torchvision's keys, loaded strictly and unchanged.
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=g) if s else torch.tensor(7)) for k, s in expected.items()}
    path = tmp_path / f"{arch}.pth"
    torch.save(state, path)
    frozen = factory(with_fc=True, frozen_bn=True)
    frozen.load_state_dict(torch.load(path, weights_only=True), strict=True)
    for k, v in frozen.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_public_resnet50_keys_match_crvos_manifest():
    """The CRVOS fixture's backbone is a torchvision-named ResNet-50 (with fc)."""
    spec = json.loads(require_shared("parity", "crvos", "manifest.json").read_text())
    prefix = "vos.backbone."
    public = {k[len(prefix):]: tuple(s) for k, s, _ in spec["keys"] if k.startswith(prefix)}
    ours = {k: tuple(v.shape) for k, v in resnet50(with_fc=True, output_stride=16).state_dict().items()}
    assert public == ours


def test_output_strides_and_dilation_layout():
    x = torch.randn(1, 3, 64, 96)
    for factory in (resnet18, resnet50):
        for stride in (32, 16, 8):
            model = factory(output_stride=stride).eval()
            with torch.no_grad():
                out = model(x)
            assert list(out) == ["stem", "layer1", "layer2", "layer3", "layer4"]
            assert out["stem"].shape[-2:] == (32, 48)
            assert out["layer1"].shape[-2:] == (16, 24)
            assert out["layer2"].shape[-2:] == (8, 12)
            assert out["layer4"].shape[-2:] == (64 // stride, 96 // stride)
    # torchvision's replace_stride_with_dilation: first block of a dilated stage keeps the old dilation.
    m = resnet50(output_stride=16)
    assert m.layer4[0].conv2.stride == (1, 1) and m.layer4[0].conv2.dilation == (1, 1)
    assert m.layer4[0].downsample[0].stride == (1, 1)
    assert m.layer4[1].conv2.dilation == (2, 2) and m.layer4[1].conv2.padding == (2, 2)
    m8 = resnet50(output_stride=8)
    assert m8.layer3[1].conv2.dilation == (2, 2) and m8.layer4[0].conv2.dilation == (2, 2)
    assert m8.layer4[1].conv2.dilation == (4, 4)
    # TTVOS's ResNet-18: only conv2 of the later blocks is dilated.
    t = resnet18(output_stride=16, basic_block_dilation="conv2")
    assert t.layer4[1].conv1.dilation == (1, 1) and t.layer4[1].conv2.dilation == (2, 2)
    assert t.layer4[0].conv1.stride == (1, 1) and t.layer4[0].conv2.dilation == (1, 1)


def test_frozen_bn_matches_batchnorm_eval_and_state_dict_roundtrip():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(5)
    bn.running_mean.normal_(); bn.running_var.uniform_(0.5, 2); bn.weight.data.normal_(); bn.bias.data.normal_()
    bn.num_batches_tracked.fill_(3)
    frozen = FrozenBatchNorm2d.from_batch_norm(bn)
    x = torch.randn(2, 5, 4, 3)
    assert torch.allclose(frozen(x), bn.eval()(x), atol=1e-6)
    assert list(frozen.state_dict()) == list(bn.state_dict())
    sd = bn.state_dict(); del sd["num_batches_tracked"]
    FrozenBatchNorm2d(5).load_state_dict(sd, strict=True)  # old torchvision files lack the counter
    assert not any(p.requires_grad for p in frozen.parameters())
    model = freeze_batch_norms(resnet18())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_extra_stem_channels_separate_and_concat(tmp_path):
    torch.manual_seed(0)
    rgb, mask = torch.randn(1, 3, 32, 32), torch.rand(1, 1, 32, 32)
    plain = resnet50().eval()
    path = tmp_path / "tv.pth"
    torch.save(plain.state_dict(), path)
    sep = resnet50(extra_in_channels=1).eval()  # RGMP: conv1(rgb) + conv1_extra(mask) before bn1
    load_backbone_weights(sep, path)
    with torch.no_grad():
        # zero-initialised extra stem: same features as the plain trunk
        assert torch.allclose(sep(rgb, mask)["layer4"], plain(rgb)["layer4"], atol=1e-5)
        sep.conv1_extra.weight.normal_()
        expected_stem = torch.relu(sep.bn1(sep.conv1(rgb) + sep.conv1_extra(mask)))
        assert torch.allclose(sep(rgb, mask)["stem"], expected_stem)
    cat = resnet18(extra_in_channels=2, extra_stem="concat", conv_bias=True, num_stages=3).eval()
    torch.save(resnet18(with_fc=True).state_dict(), path)
    report = load_backbone_weights(cat, path)
    assert report["widened"] == ["conv1.weight"] and "fc.weight" in report["dropped"]
    assert any(k.startswith("layer4") for k in report["dropped"])
    assert cat.conv1.weight.shape == (64, 5, 7, 7) and cat.conv1.bias is not None
    assert "layer4" not in cat(rgb, torch.rand(1, 2, 32, 32))
    with pytest.raises(ValueError, match="extra"):
        cat(rgb)


def test_load_backbone_weights_rejects_mismatch(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), path)
    with pytest.raises(ValueError, match="does not fit resnet50"):
        load_backbone_weights(resnet50(), path)
    with pytest.raises(FileNotFoundError):
        load_backbone_weights(resnet50(), tmp_path / "absent.pth")
