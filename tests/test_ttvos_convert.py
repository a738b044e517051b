"""Public TTVOS checkpoint conversion: strict, with errors that name the offending keys."""
import json

import pytest
import torch

from conftest import require_shared
from vos_models.methods.ttvos import TTVOS, convert_public_state_dict, load_public_checkpoint
from vos_models.methods.ttvos.convert import PUBLIC_TO_OURS, detect_backbone


def _public_state_dict(model: TTVOS) -> dict:
    """Our model's weights under the public key names (inverse of the conversion table)."""
    inverse = sorted(((ours, public) for public, ours in PUBLIC_TO_OURS.items()), key=lambda p: -len(p[0]))
    out = {}
    for key, value in model.state_dict().items():
        ours, public = next(p for p in inverse if key.startswith(p[0]))
        out[public + key[len(ours):]] = value.clone()
    return out


@pytest.fixture(scope="module")
def public_resnet18():
    torch.manual_seed(0)
    return _public_state_dict(TTVOS(backbone="resnet18"))


def test_manifest_keys_convert_exactly():
    """Every key and shape of the real public state dict (fixture manifest) maps one to one."""
    spec = json.loads(require_shared("parity", "ttvos", "manifest.json").read_text())
    state = {name: torch.zeros(shape, dtype=getattr(torch, dtype)) for name, shape, dtype in spec["keys"]}
    converted = convert_public_state_dict(state)
    model = TTVOS(backbone="resnet18")
    assert set(converted) == set(model.state_dict())
    model.load_state_dict(converted, strict=True)


def test_round_trip_and_wrappers(public_resnet18, tmp_path):
    converted = convert_public_state_dict(public_resnet18)
    assert converted.keys() == TTVOS().state_dict().keys()
    # The public trainer saves {"epoch", "net": state_dict, ...}; DataParallel adds "module.".
    wrapped = {"epoch": 100, "net": {"module." + k: v for k, v in public_resnet18.items()}}
    again = convert_public_state_dict(wrapped)
    assert all(torch.equal(again[k], converted[k]) for k in converted)
    path = tmp_path / "ttvos_public.pth.tar"
    torch.save({"epoch": 3, "net": public_resnet18}, path)
    model = load_public_checkpoint(path)
    assert not model.training and model.build_config["backbone"] == "resnet18"
    assert torch.equal(model.state_dict()["head.decoder.up_s4.weight"], public_resnet18["vos.refine.deconv3.weight"])


def test_missing_key_is_named(public_resnet18):
    state = dict(public_resnet18)
    del state["vos.gcq.blend.1.bias"]
    with pytest.raises(ValueError, match=r"1 missing keys: vos\.gcq\.blend\.1\.bias"):
        convert_public_state_dict(state)


def test_unexpected_key_is_named(public_resnet18):
    state = dict(public_resnet18, **{"vos.refine.extra_head.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"1 unexpected keys: vos\.refine\.extra_head\.weight"):
        convert_public_state_dict(state)
    state = dict(public_resnet18, **{"vos.backbone.fc.weight": torch.zeros(1000, 512)})
    with pytest.raises(ValueError, match=r"unexpected keys: vos\.backbone\.fc\.weight"):
        convert_public_state_dict(state)


def test_misshaped_key_is_named(public_resnet18):
    state = dict(public_resnet18)
    state["vos.gcm.conv_key.0.weight"] = torch.zeros(128, 136, 1, 1)
    with pytest.raises(ValueError, match=r"misshaped keys: vos\.gcm\.conv_key\.0\.weight \(expected "
                                         r"\[128, 137, 1, 1\], got \[128, 136, 1, 1\]\)"):
        convert_public_state_dict(state)


def test_wrong_models_are_refused(public_resnet18):
    with pytest.raises(ValueError, match="HRNet"):
        convert_public_state_dict({"vos.backbone.stage2.0.weight": torch.zeros(1), "vos.gcm.x": torch.zeros(1)})
    with pytest.raises(ValueError, match="not a public TTVOS state dict"):
        convert_public_state_dict({"encoder.conv1.weight": torch.zeros(1)})  # e.g. another method
    with pytest.raises(ValueError, match="requested but the checkpoint holds a resnet18"):
        convert_public_state_dict(public_resnet18, backbone="resnet50")
    with pytest.raises(TypeError):
        convert_public_state_dict([1, 2])


def test_resnet50_layout_matches_the_public_formulas():
    """resnet50s16: s16 = layer3 (1024 ch, no layer4), s8 = 512, s4 = 256 channels."""
    state = _public_state_dict(TTVOS(backbone="resnet50"))
    assert detect_backbone(state) == "resnet50"
    assert not any(k.startswith("vos.backbone.layer4") for k in state)
    expected = {
        "vos.refine.conv_s16.conv.weight": (256, 6 + 1024, 3, 3),
        "vos.refine.blend_s16.conv.weight": (128, 256 + 1024, 3, 3),
        "vos.refine.cal_UpW.0.conv.weight": (65, 130, 3, 3),
        "vos.refine.deconv3.weight": (132, 8, 4, 4),
        "vos.refine.predictor_Tmp.weight": (1, 512, 3, 3),
        "vos.gcm.conv_key.0.weight": (512, 521, 1, 1),
        "vos.gcm.conv_key.1.weight": (512, 4, 5, 5),
        "vos.gcq.blend.0.weight": (1024, 4, 5, 5),
        "vos.gcq.blend.1.weight": (512, 1024, 1, 1),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert convert_public_state_dict(state).keys() == TTVOS(backbone="resnet50").state_dict().keys()


#: The public MobileNetV3Seg stage slices of ``features`` (models/backbones/mobileNetV3.py).
PUBLIC_MOBILENET_SLICES = {
    "mobilenetv3_large": {"layer0": range(0, 2), "layer1": range(2, 4), "layer2": range(4, 7),
                          "layer3": range(7, 13), "layer4": range(13, 17)},
    "mobilenetv3_small": {"layer0": 0, "layer1": 1, "layer2": range(2, 4), "layer3": range(4, 9),
                          "layer4": range(9, 13)},
}


def _public_mobilenet_state_dict(backbone: str) -> dict:
    """A public-named MobileNetV3 TTVOS state dict: head keys by the table, trunk keys by slicing
    (a slice keeps torchvision's index in the key, a single entry has none)."""
    torch.manual_seed(0)
    model = TTVOS(backbone=backbone)
    out = _public_state_dict_head(model)
    for key, value in model.state_dict().items():
        if key.startswith("trunk."):
            index, rest = key[len("trunk.mobilenet.features."):].split(".", 1)
            for stage, where in PUBLIC_MOBILENET_SLICES[backbone].items():
                if isinstance(where, int) and where == int(index):
                    out[f"vos.backbone.{stage}.{rest}"] = value.clone()
                elif not isinstance(where, int) and int(index) in where:
                    out[f"vos.backbone.{stage}.{index}.{rest}"] = value.clone()
    return out


def _public_state_dict_head(model: TTVOS) -> dict:
    """The head's weights under the public names (the conversion table read backwards)."""
    inverse = sorted(((ours, public) for public, ours in PUBLIC_TO_OURS.items() if ours != "trunk.resnet."),
                     key=lambda p: -len(p[0]))
    out = {}
    for key, value in model.state_dict().items():
        if not key.startswith("trunk."):
            ours, public = next(p for p in inverse if key.startswith(p[0]))
            out[public + key[len(ours):]] = value.clone()
    return out


@pytest.mark.parametrize("backbone, expected", [
    ("mobilenetv3_large", {
        "vos.backbone.layer0.0.0.weight": (16, 3, 3, 3),
        "vos.backbone.layer0.1.block.0.0.weight": (16, 1, 3, 3),
        "vos.backbone.layer2.4.block.2.fc1.weight": (24, 72, 1, 1),
        "vos.backbone.layer4.13.block.1.0.weight": (672, 1, 5, 5),
        "vos.backbone.layer4.16.0.weight": (960, 160, 1, 1),
        "vos.refine.conv_s16.conv.weight": (48, 6 + 960, 3, 3),
        "vos.refine.conv_s4.conv.weight": (24, 24, 1, 1),
        "vos.gcm.conv_key.0.weight": (40, 40 + 9, 1, 1),
        "vos.gcm.conv_key.1.weight": (40, 4, 5, 5),
    }),
    ("mobilenetv3_small", {
        "vos.backbone.layer0.0.weight": (16, 3, 3, 3),
        "vos.backbone.layer1.block.1.fc1.weight": (8, 16, 1, 1),
        "vos.backbone.layer4.12.0.weight": (576, 96, 1, 1),
        "vos.refine.conv_s16.conv.weight": (32, 6 + 576, 3, 3),
        "vos.gcm.conv_key.0.weight": (24, 24 + 9, 1, 1),
    }),
])
def test_mobilenet_layouts_convert_strictly(backbone, expected, tmp_path):
    state = _public_mobilenet_state_dict(backbone)
    assert detect_backbone(state) == backbone
    assert {k: tuple(state[k].shape) for k in expected} == expected
    converted = convert_public_state_dict(state)
    model = TTVOS(backbone=backbone)
    model.load_state_dict(converted, strict=True)
    path = tmp_path / "public.pth.tar"
    torch.save({"epoch": 1, "net": state}, path)
    loaded = load_public_checkpoint(path)
    assert loaded.build_config["backbone"] == backbone
    assert torch.equal(loaded.state_dict()["trunk.mobilenet.features.1.block.0.0.weight"],
                       state["vos.backbone.layer0.1.block.0.0.weight" if backbone.endswith("large")
                             else "vos.backbone.layer1.block.0.0.weight"])
    broken = dict(state)
    extra = next(k for k in broken if k.startswith("vos.backbone.layer3."))
    broken[extra.replace("layer3.", "layer3.99.", 1)] = broken.pop(extra)
    with pytest.raises(ValueError, match=r"1 missing keys: vos\.backbone\.layer3.*1 unexpected keys: vos\.backbone\.layer3\.99"):
        convert_public_state_dict(broken)
