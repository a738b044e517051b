"""MobileNetV3 (vos_models.backbones.mobilenetv3): torchvision's layout, dilated stride-16 option,
frozen batch norms and weight-file loading, checked against torchvision's published facts."""
import pytest
import torch

from vos_models.backbones import FrozenBatchNorm2d
from vos_models.backbones.mobilenetv3 import MobileNetV3, load_mobilenet_weights, make_divisible


@pytest.mark.parametrize("arch, parameters, widths", [
    # torchvision's documented parameter counts of mobilenet_v3_large / _small (with classifier)
    ("large", 5_483_032, [16, 16, 24, 24, 40, 40, 40, 80, 80, 80, 80, 112, 112, 160, 160, 160, 960]),
    ("small", 2_542_856, [16, 16, 24, 24, 40, 40, 40, 48, 48, 96, 96, 96, 576]),
])
def test_layout_matches_torchvision(arch, parameters, widths):
    model = MobileNetV3(arch)
    assert sum(p.numel() for p in model.parameters()) == parameters
    with torch.inference_mode():
        outputs = model.eval()(torch.rand(1, 3, 64, 96))
        assert model.classify(torch.rand(2, 3, 64, 96)).shape == (2, 1000)
    assert [o.shape[1] for o in outputs] == widths
    assert outputs[-1].shape[-2:] == (2, 3)  # stride 32
    dilated = MobileNetV3(arch, dilated=True, with_classifier=False, frozen_bn=True).eval()
    with torch.inference_mode():
        assert dilated(torch.rand(1, 3, 64, 96))[-1].shape[-2:] == (4, 6)  # stride 16
    assert all(m.eps == 1e-3 for m in dilated.modules() if isinstance(m, FrozenBatchNorm2d))
    assert dilated.features[-2].block[1][0].dilation == (2, 2)


def test_make_divisible_is_torchvisions_rounding():
    assert [make_divisible(v) for v in (18, 4, 30, 57.6, 7)] == [24, 8, 32, 56, 8]


def test_weight_files_load_strictly(tmp_path):
    source = MobileNetV3("large")
    path = tmp_path / "mobilenet_v3_large.pth"
    torch.save(source.state_dict(), path)
    target = MobileNetV3("large", dilated=True, with_classifier=False, frozen_bn=True)
    dropped = load_mobilenet_weights(target, path)
    assert dropped and all(k.startswith("classifier.") for k in dropped)
    assert torch.equal(target.features[5].block[2].fc1.weight, source.features[5].block[2].fc1.weight)
    torch.save(MobileNetV3("small").state_dict(), path)
    with pytest.raises(ValueError, match="not a torchvision mobilenet_v3_large file"):
        load_mobilenet_weights(target, path)
    with pytest.raises(FileNotFoundError):
        load_mobilenet_weights(target, tmp_path / "absent.pth")
