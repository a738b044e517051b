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
    assert not model.training and model.config["backbone"] == "resnet18"
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
